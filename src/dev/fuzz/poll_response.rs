//! Fuzz target `poll_response`: a transmitter's poll answer (RFC 8936), then every SET in it as
//! push would check it.

use serde_json::json;

use super::common::{set_base, set_fixture};
use super::set_push::check_set;

/// Fuzz target `poll_response`: a transmitter's poll answer, then every SET in it as push would.
pub fn poll_response(data: &[u8]) {
    let Ok(resp) = crate::signals::poll::parse_response(data) else {
        return;
    };
    for compact in resp.sets.values() {
        check_set(compact);
    }
}

/// Seeds for `poll_response` (one valid signed SET, RFC 8936 shapes).
pub fn seed_poll_response() -> Vec<Vec<u8>> {
    let fx = set_fixture();
    let good = fx.keys[0].sign_raw(
        &json!({"typ": "secevent+jwt", "alg": "RS256", "kid": "tx-rsa"}),
        &set_base(),
    );
    vec![
        json!({"sets": {"24c63fb56e5a2d77a6b512616ca9fa24": good}, "moreAvailable": true})
            .to_string()
            .into_bytes(),
        br#"{"sets":{},"moreAvailable":false}"#.to_vec(),
        br#"{}"#.to_vec(),
        br#"{"sets":{"a":"x.y.z","b":""}}"#.to_vec(),
        br#"{"sets":[],"moreAvailable":"yes"}"#.to_vec(),
    ]
}

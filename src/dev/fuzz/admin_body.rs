//! Fuzz target `admin_body`: the admin API's JSON bodies.

use serde_json::{json, Value};

use super::common::{check_change, seed, Input, NOW};
use crate::store::Change;

const ADMIN_PATHS: [&str; 7] = [
    "/admin/revoke",
    "/admin/block",
    "/admin/unblock",
    "/admin/bind",
    "/admin/unbind",
    "/admin/delete",
    "/admin/other",
];

/// Fuzz target `admin_body`: first byte picks the endpoint, the rest is the body. An accepted body
/// gives a well-formed change that survives the JSON round trip the API answers with; a refused
/// one is a 4xx.
pub fn admin_body(data: &[u8]) {
    let mut inp = Input(data);
    let path = ADMIN_PATHS[usize::from(inp.byte()) % ADMIN_PATHS.len()];
    match crate::admin::change_from_body(path, inp.rest(), NOW) {
        Ok(c) => {
            check_change(&c);
            let kind = match &c {
                Change::Revoke { .. } => "/admin/revoke",
                Change::Block { .. } => "/admin/block",
                Change::Unblock { .. } => "/admin/unblock",
                Change::Bind { .. } => "/admin/bind",
                Change::Unbind { .. } => "/admin/unbind",
                Change::Delete { .. } => "/admin/delete",
            };
            assert_eq!(kind, path, "the change matches its endpoint");
        }
        Err(e) => {
            assert!(e.status().is_client_error(), "{}: {e}", e.status());
        }
    }
}

/// Seeds for `admin_body`.
pub fn seed_admin_body() -> Vec<Vec<u8>> {
    let b = |i: u8, body: Value| seed(i, &[body.to_string().as_bytes()]);
    vec![
        b(
            0,
            json!({"key":{"type":"subject","iss":"https://idp/","sub":"alice"},"at":1700000000}),
        ),
        b(
            1,
            json!({"key":{"type":"email","email":"Alice@Example.com"}}),
        ),
        b(2, json!({"key":{"type":"tenant","tid":"t"},"at":-1})),
        b(
            3,
            json!({"key":{"type":"session","iss":"https://idp","sid":"s1"},"nets":["10.0.0.0/8","192.0.2.1","::1"]}),
        ),
        b(
            3,
            json!({"key":{"type":"device","id":"d"},"nets":["10.0.0.0/8"]}),
        ),
        b(
            3,
            json!({"key":{"type":"subject","iss":"i","sub":"s"},"nets":[]}),
        ),
        b(4, json!({"key":{"type":"token","iss":"i","jti":"j"}})),
        b(
            5,
            json!({"table":"bindings","key":{"type":"subject","iss":"i","sub":"s"}}),
        ),
        b(
            0,
            json!({"key":{"type":"subject","iss":"i","sub":"s"},"extra":1}),
        ),
        seed(6, &[b"{}"]),
    ]
}

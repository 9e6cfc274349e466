//! The copy-paste commands printed after the narration (`cae-proxy demo` without `--once`).

use std::io::Write;

use super::style::{print_commands, Out, Style};
use super::Demo;

/// The copy-paste commands printed after the narration (`cae-proxy demo` without `--once`).
pub fn print_try_it(demo: &Demo, w: &mut dyn Write, style: Style) {
    let out = &mut Out { w, s: style };
    let issuer = demo.issuer.issuer_url();
    let token_url = demo.issuer.token_url();
    let proxy = demo.proxy_url();
    let admin = demo.admin_url();
    let api = &demo.plan.api_path;
    let step_up = &demo.plan.admin_path;
    let events = format!("{}/dev/events", demo.transmitter.issuer_url());
    let push_to = match &demo.plan.push_authorization {
        Some(a) => format!(
            "{{\"endpoint_url\":\"{}\",\"authorization_header\":\"{a}\"}}",
            demo.push_url()
        ),
        None => format!("{{\"endpoint_url\":\"{}\"}}", demo.push_url()),
    };
    out.title("", "try it yourself (Ctrl-C stops the demo)");
    let cmds = [
        ("# a token for alice, session s1, issued to 127.0.0.1 (form-encoded, like an OAuth client)".to_string(),
         format!("TOKEN=$(curl -s {token_url} -d sub=alice -d sid=s1 -d ipaddr=127.0.0.1 -d xms_cc=cp1 | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')")),
        ("# call the API through the proxy (200, the echo shows the identity headers)".to_string(),
         format!("curl -i {proxy}{api}/orders -H \"Authorization: Bearer $TOKEN\"")),
        ("# revoke session s1 with a signed CAEP session-revoked SET: the transmitter signs it and\n# pushes it to the proxy's signals listener (202), then call again: 401 insufficient_claims".to_string(),
         format!("curl -s {events} -H 'content-type: application/json' -d '{{\"event\":\"session-revoked\",\"sub\":\"alice\",\"sid\":\"s1\",\"push_to\":{push_to}}}'")),
        ("# or revoke it through the admin API".to_string(),
         format!("curl -i {admin}/admin/revoke -H 'content-type: application/json' -d '{{\"key\":{{\"type\":\"session\",\"iss\":\"{issuer}\",\"sid\":\"s1\"}}}}'")),
        ("# answer the challenge: paste its claims value, get a new token, call again (200)".to_string(),
         format!("TOKEN=$(curl -s {token_url} -d sub=alice -d sid=s1 -d ipaddr=127.0.0.1 -d xms_cc=cp1 --data-urlencode claims=PASTE_CLAIMS | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')")),
        ("# step-up route: 401 with an acrs challenge; a token with -d acrs=c1 passes".to_string(),
         format!("curl -i {proxy}{step_up}/settings -H \"Authorization: Bearer $TOKEN\"")),
        ("# disable the account with a RISC account-disabled SET: every token of alice is refused until\n# an account-enabled event (or an unblock through the admin API)".to_string(),
         format!("curl -s {events} -H 'content-type: application/json' -d '{{\"event\":\"account-disabled\",\"sub\":\"alice\",\"push_to\":{push_to}}}'")),
        ("# or block it through the admin API; list the revocations made so far".to_string(),
         format!("curl -i {admin}/admin/block -H 'content-type: application/json' -d '{{\"key\":{{\"type\":\"subject\",\"iss\":\"{issuer}\",\"sub\":\"alice\"}}}}'\ncurl -s {admin}/admin/entries/revocations")),
        ("# the transmitter's SSF metadata and keys (the proxy verifies pushed SETs with them)".to_string(),
         format!("curl -s {}\ncurl -s {}", demo.transmitter.configuration_url(), demo.transmitter.jwks_url())),
    ];
    print_commands(out, &cmds);
    out.blank();
    out.explain(&format!(
        "POST {events} takes event = one of {}; sub (with iss, default the demo issuer), sid, \
         device, tid or email, or a full RFC 9493 subject; event_timestamp; event_fields; \
         push_to. It answers with the signed SET and each receiver's status.",
        event_name_list()
    ));
}

/// The event names `POST /dev/events` takes, comma-separated.
pub(super) fn event_name_list() -> String {
    crate::dev::emit::event_names()
        .collect::<Vec<_>>()
        .join(", ")
}

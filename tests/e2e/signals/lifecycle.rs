//! The SSF stream lifecycle (SSF 1.0 §8.1; the receiver actions of the OpenID SSF receiver test
//! plan) against the development transmitter, which records every management request: each
//! admin action (read, update, replace, status, subjects, delete, re-create, re-verify) sends
//! exactly the request the spec prescribes and its effect shows afterwards; a reload reconciles
//! the stream (`PATCH`, or `PUT` where the transmitter lacks `PATCH`) and rotates the push secret
//! without a refused event; a removed transmitter's stream is deleted (also when the process is
//! stopped right after the reload) unless `on_remove = "keep"`; a foreign-`iss` stream in the list
//! is skipped; a missing verification event shows in metrics and readiness; push and poll
//! delivery; the `cae-proxy stream` commands.

use std::time::Duration;

use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{
    iss_sub, DevTransmitter, ManagementRequest, TransmitterOptions, CAEP, POLL_METHOD, PUSH_METHOD,
};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;

/// The management bearer the development transmitters of this module require.
const MGMT: &str = "mgmt-token";

fn events() -> Value {
    json!([
        format!("{CAEP}credential-change"),
        format!("{CAEP}session-revoked")
    ])
}

/// `[[transmitter]]` lines of a transmitter of `tx` with a managed stream: push at
/// `/ssf/<name>` (when `push_url` is given) or poll, the management bearer [`MGMT`], the
/// events of [`events`]; `stream_extra`: more `[transmitter.stream]` lines.
fn managed_lines(
    name: &str,
    tx: &DevTransmitter,
    push_url: Option<&str>,
    stream_extra: &str,
) -> String {
    let push = match push_url {
        Some(url) => format!(
            "[transmitter.push]\npath = \"/ssf/{name}\"\nauthorization = \"{PUSH_AUTH}\"\n[transmitter.stream]\ndelivery = \"push\"\nendpoint_url = \"{url}\"\n"
        ),
        None => "[transmitter.stream]\ndelivery = \"poll\"\n".to_string(),
    };
    format!(
        "issuer = \"{iss}\"\ndiscovery = \"{disc}\"\naudiences = [\"{AUD}\"]\n{push}bearer = \"{MGMT}\"\nevents_requested = {events}\n{stream_extra}",
        iss = tx.issuer_url(),
        disc = tx.configuration_url(),
        events = events(),
    )
}

/// A proxy with one managed transmitter, `managed`, and the development transmitter behind it.
struct Managed {
    site: Site,
    tx: DevTransmitter,
    /// Our push URL (push delivery).
    push_url: String,
    /// The stream created at start.
    stream_id: String,
    _signals: ReservedPort,
}

impl std::ops::Deref for Managed {
    type Target = Site;

    fn deref(&self) -> &Site {
        &self.site
    }
}

/// Starts [`Managed`] (push delivery unless `poll`), ready: stream created and verified.
async fn managed(opts: TransmitterOptions, poll: bool, stream_extra: &str) -> Managed {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(MGMT.into()),
            ..opts
        },
    )
    .unwrap();
    let port = ReservedPort::new();
    let push_url = format!("http://{}/ssf/managed", port.addr());
    let base = base(&idp.issuer_url(), &up.url()).signals_at(&port.addr().to_string());
    let lines = managed_lines(
        "managed",
        &tx,
        (!poll).then_some(push_url.as_str()),
        stream_extra,
    );
    let h = Harness::start(&base.transmitter("managed", &lines).build()).await;
    h.wait_ready().await;
    // Ready means the verification push was accepted; wait until the transmitter recorded it
    // too, so that the tests' push counts start from a settled one.
    if !poll {
        push_accepted(&tx, &push_url).await;
    }
    let streams = tx.streams();
    assert_eq!(streams.len(), 1, "{streams:?}");
    let stream_id = streams[0]["stream_id"].as_str().unwrap().to_string();
    Managed {
        site: Site { h, idp, _up: up },
        tx,
        push_url,
        stream_id,
        _signals: port,
    }
}

/// One expected management request.
fn mr(
    method: &str,
    path: &str,
    stream_id: Option<&str>,
    body: Value,
    status: u16,
) -> ManagementRequest {
    ManagementRequest {
        method: method.into(),
        path: path.into(),
        stream_id: stream_id.map(str::to_string),
        body,
        status,
    }
}

/// The management requests `tx` received after the first `mark`.
fn since(tx: &DevTransmitter, mark: usize) -> Vec<ManagementRequest> {
    tx.management_requests().into_iter().skip(mark).collect()
}

/// The `state` of a recorded verification request: 24 random bytes, base64url.
fn state_of(r: &ManagementRequest) -> String {
    let s = r.body["state"].as_str().expect("a state").to_string();
    assert_eq!(s.len(), 32, "{s}");
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{s}"
    );
    s
}

/// An admin API call with the admin token.
async fn admin(h: &Harness, method: Method, path: &str, body: Option<Value>) -> Reply {
    let mut headers = vec![("authorization", ADMIN)];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    send(&client(), method, &h.admin_url(path), &headers, body).await
}

async fn admin_ok(h: &Harness, method: Method, path: &str, body: Option<Value>) -> Value {
    let r = admin(h, method, path, body).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

fn series(name: &str, labels: &str) -> String {
    format!("{name}{{{labels}}}")
}

/// `cae_stream_status` of `transmitter`: the value of each status.
async fn stream_status_metric(h: &Harness, transmitter: &str) -> (f64, f64, f64) {
    let m = h.metrics().await;
    let v = |status: &str| {
        metric(
            &m,
            &series(
                "cae_stream_status",
                &format!(r#"transmitter="{transmitter}",status="{status}""#),
            ),
        )
        .unwrap_or(-1.0)
    };
    (v("enabled"), v("paused"), v("disabled"))
}

/// Waits until `tx` made `n` pushes in all (its own, asynchronous ones: stream-updated,
/// verification, what a paused stream held), each answered.
async fn pushes_reach(tx: &DevTransmitter, n: usize) {
    eventually(Duration::from_secs(10), &format!("{n} pushes"), || async {
        tx.pushes().len() >= n
    })
    .await;
    assert_eq!(tx.pushes().len(), n, "{:?}", tx.pushes());
}

fn revoke_event(m: &Managed, sub: &str, at: i64) -> String {
    m.tx.sign_set(DevTransmitter::credential_change(
        user(m, sub),
        "password",
        "update",
        Some(at),
    ))
}

#[tokio::test]
async fn read_and_status_update_with_events_held_while_paused() {
    let m = managed(TransmitterOptions::default(), false, "").await;
    let (h, tx, id) = (&m.h, &m.tx, m.stream_id.as_str());

    // Read (SSF §8.1.1.2, §8.1.2.1): the configuration and the status, read live.
    let mark = tx.management_requests().len();
    let v = admin_ok(h, Method::GET, "/admin/streams/managed", None).await;
    assert_eq!(
        since(tx, mark),
        vec![
            mr("GET", "/ssf/stream", Some(id), Value::Null, 200),
            mr("GET", "/ssf/status", Some(id), Value::Null, 200),
        ]
    );
    assert_eq!(v["transmitter"], "managed");
    assert_eq!(v["stream_id"], id);
    assert_eq!(v["status"], json!({"status": "enabled", "reason": null}));
    assert_eq!(v["differs_from_configuration"], json!([]));
    let conf = &v["configuration"];
    assert_eq!(conf["iss"], tx.issuer_url());
    assert_eq!(conf["events_requested"], events());
    assert_eq!(conf["description"], "cae-proxy receiver managed");
    // The push secret is never shown.
    assert_eq!(
        conf["delivery"],
        json!({"method": PUSH_METHOD, "endpoint_url": m.push_url, "authorization_header": "[redacted]"})
    );
    assert!(!v.to_string().contains("push-secret"), "{v}");
    assert_eq!(v["receiver"]["status"], "enabled");
    assert_eq!(v["receiver"]["verification"]["result"], "verified");
    assert_eq!(v["receiver"]["deleted_by_operator"], false);
    let list = admin_ok(h, Method::GET, "/admin/streams", None).await;
    assert_eq!(list["streams"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["streams"][0]["stream_id"], id);
    assert_eq!(list["streams"][0]["delivery"], "push");
    assert_eq!(stream_status_metric(h, "managed").await, (1.0, 0.0, 0.0));

    // Pause (SSF §8.1.2.2): exactly one status update, then readiness and the metric say so.
    let mark = tx.management_requests().len();
    let pushed = tx.pushes().len();
    let v = admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/status",
        Some(json!({"status": "paused", "reason": "maintenance"})),
    )
    .await;
    assert_eq!(
        v,
        json!({"transmitter": "managed", "stream_id": id, "status": "paused", "reason": "maintenance", "pending": false})
    );
    assert_eq!(
        since(tx, mark),
        vec![mr(
            "POST",
            "/ssf/status",
            None,
            json!({"stream_id": id, "status": "paused", "reason": "maintenance"}),
            200
        )]
    );
    assert_eq!(tx.stream_status(id).as_deref(), Some("paused"));
    // The transmitter announced it with a stream-updated event, which we accepted.
    pushes_reach(tx, pushed + 1).await;
    assert_eq!(tx.pushes().last().unwrap().status, Some(202));
    let r = readyz(h).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["transmitter managed stream is not active (paused)"]})
    );
    assert_eq!(stream_status_metric(h, "managed").await, (0.0, 1.0, 0.0));

    // The transmitter holds its events while paused.
    let at = now_secs() - 10;
    let alice = token(&m, "alice", 100, json!({}));
    tx.deliver(&revoke_event(&m, "alice", at)).await;
    assert_eq!(tx.held(id).len(), 1);
    assert_eq!(tx.pushes().len(), pushed + 1, "nothing pushed while paused");
    assert_passes(&m, &alice, "held by the paused stream").await;
    // A SET that still arrives while we consider the stream paused is applied.
    let bob = token(&m, "bob", 100, json!({}));
    let (status, _, body) = tx
        .push(&m.push_url, Some(PUSH_AUTH), &revoke_event(&m, "bob", at))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (202, ""));
    assert_revoked(&m, &bob, at, "pushed while paused").await;

    // Resume: the held event follows the stream-updated event and takes effect.
    let mark = tx.management_requests().len();
    let v = admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/status",
        Some(json!({"status": "enabled"})),
    )
    .await;
    assert_eq!(v["status"], "enabled");
    assert_eq!(
        since(tx, mark),
        vec![mr(
            "POST",
            "/ssf/status",
            None,
            json!({"stream_id": id, "status": "enabled"}),
            200
        )]
    );
    // stream-updated, then the held event.
    pushes_reach(tx, pushed + 3).await;
    assert!(tx.held(id).is_empty());
    ready_eventually(h, StatusCode::OK, "enabled again").await;
    assert_revoked(&m, &alice, at, "held, then delivered").await;
    assert_eq!(stream_status_metric(h, "managed").await, (1.0, 0.0, 0.0));
    // A stream-updated event naming another stream: accepted and ignored.
    let other = tx.sign_set(DevTransmitter::stream_updated(
        "another-stream",
        "disabled",
        Some("not ours"),
    ));
    let (status, _, _) = tx.push(&m.push_url, Some(PUSH_AUTH), &other).await.unwrap();
    assert_eq!(status, 202);
    assert_eq!(readyz(h).await.status, StatusCode::OK);
    assert_eq!(stream_status_metric(h, "managed").await, (1.0, 0.0, 0.0));

    // The transmitter disables the stream on its own (stream-updated with a reason): readiness,
    // the metric and the stream view follow.
    let r = send(
        &client(),
        Method::POST,
        &format!("{}/ssf/status", tx.issuer_url()),
        &[
            ("authorization", &format!("Bearer {MGMT}")),
            ("content-type", "application/json"),
        ],
        Bytes::from(
            json!({"stream_id": id, "status": "disabled", "reason": "tenant suspended"})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = ready_eventually(
        h,
        StatusCode::SERVICE_UNAVAILABLE,
        "disabled by the transmitter",
    )
    .await;
    assert_eq!(
        r.json()["missing"],
        json!(["transmitter managed stream is not active (disabled)"])
    );
    assert_eq!(stream_status_metric(h, "managed").await, (0.0, 0.0, 1.0));
    let list = admin_ok(h, Method::GET, "/admin/streams", None).await;
    assert_eq!(list["streams"][0]["status"], "disabled");
    assert_eq!(list["streams"][0]["reason"], "tenant suspended");
    // Disabled: events are dropped, not held.
    let carol = token(&m, "carol", 100, json!({}));
    tx.deliver(&revoke_event(&m, "carol", at)).await;
    assert!(tx.held(id).is_empty());
    assert_passes(&m, &carol, "dropped by the disabled stream").await;

    // A bad status is refused before anything is sent.
    let mark = tx.management_requests().len();
    let r = admin(
        h,
        Method::POST,
        "/admin/streams/managed/status",
        Some(json!({"status": "stopped"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "bad_request");
    assert_eq!(
        r.json()["message"],
        "status must be enabled, paused or disabled"
    );
    assert!(since(tx, mark).is_empty());
    let r = admin(h, Method::GET, "/admin/streams/nobody", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["message"], "no transmitter named \"nobody\"");
}

#[tokio::test]
async fn removed_subject_gets_no_more_events_until_added_again() {
    let m = managed(TransmitterOptions::default(), false, "").await;
    let (h, tx, id) = (&m.h, &m.tx, m.stream_id.as_str());
    let bob_subject = user(&m, "bob");

    // Remove (SSF §8.1.3.3): exactly one request; bob's events are no longer sent.
    let mark = tx.management_requests().len();
    let v = admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/subjects:remove",
        Some(json!({"subject": bob_subject})),
    )
    .await;
    assert_eq!(
        v,
        json!({"transmitter": "managed", "stream_id": id, "subject": bob_subject, "action": "removed"})
    );
    assert_eq!(
        since(tx, mark),
        vec![mr(
            "POST",
            "/ssf/subjects:remove",
            None,
            json!({"stream_id": id, "subject": bob_subject}),
            204
        )]
    );
    assert_eq!(tx.removed_subjects(id), vec![bob_subject.clone()]);
    let at = now_secs() - 10;
    let bob = token(&m, "bob", 100, json!({}));
    let carol = token(&m, "carol", 100, json!({}));
    let pushed = tx.pushes().len();
    tx.deliver(&revoke_event(&m, "bob", at)).await;
    assert_eq!(tx.pushes().len(), pushed, "nothing sent about bob");
    assert_passes(&m, &bob, "subject removed").await;
    // Others' events still flow.
    tx.deliver(&revoke_event(&m, "carol", at)).await;
    assert_eq!(tx.pushes().len(), pushed + 1);
    assert_revoked(&m, &carol, at, "carol").await;

    // Add (SSF §8.1.3.2), with `verified`: bob's events flow again.
    let mark = tx.management_requests().len();
    let v = admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/subjects:add",
        Some(json!({"subject": bob_subject, "verified": true})),
    )
    .await;
    assert_eq!(v["action"], "added");
    assert_eq!(
        since(tx, mark),
        vec![mr(
            "POST",
            "/ssf/subjects:add",
            None,
            json!({"stream_id": id, "subject": bob_subject, "verified": true}),
            200
        )]
    );
    assert_eq!(tx.subjects(id), vec![bob_subject.clone()]);
    tx.deliver(&revoke_event(&m, "bob", at)).await;
    assert_revoked(&m, &bob, at, "subject added again").await;

    // Bad subjects never reach the transmitter.
    let mark = tx.management_requests().len();
    for (body, message) in [
        (
            json!({"subject": {"email": "x@example.com"}}),
            "subject must be an RFC 9493 subject identifier with a format",
        ),
        (
            json!({"subject": {"format": "iss_sub", "iss": "https://idp"}}),
            "invalid subject: subject format iss_sub lacks the string member sub",
        ),
        (
            json!({"subject": {"format": "nonsense", "id": "1"}}),
            "unknown subject format \"nonsense\"",
        ),
        (
            json!({"subject": {"format": "opaque", "id": "1"}, "verified": true}),
            "verified applies to subjects:add only",
        ),
    ] {
        let r = admin(
            h,
            Method::POST,
            "/admin/streams/managed/subjects:remove",
            Some(body),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
        assert_eq!(r.json()["message"], message);
    }
    assert!(since(tx, mark).is_empty());
}

#[tokio::test]
async fn reverify_update_and_replace_send_what_the_spec_prescribes() {
    let m = managed(TransmitterOptions::default(), false, "").await;
    let (h, tx, id) = (&m.h, &m.tx, m.stream_id.as_str());
    let verified = series(
        "cae_stream_verifications_total",
        r#"transmitter="managed",result="verified""#,
    );
    assert_eq!(metric(&h.metrics().await, &verified), Some(1.0), "at start");

    // Re-verify (SSF §8.1.4.2): a new random state; the answer says the event arrived.
    let mark = tx.management_requests().len();
    let v = admin_ok(h, Method::POST, "/admin/streams/managed/verify", None).await;
    assert_eq!(v["verified"], true);
    assert_eq!(v["stream_id"], id);
    assert!(v["waited_ms"].as_u64().unwrap() < 10_000, "{v}");
    let reqs = since(tx, mark);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let state = state_of(&reqs[0]);
    assert_eq!(
        reqs,
        vec![mr(
            "POST",
            "/ssf/verify",
            None,
            json!({"stream_id": id, "state": state}),
            204
        )]
    );
    assert_eq!(metric(&h.metrics().await, &verified), Some(2.0));
    let at = metric(
        &h.metrics().await,
        r#"cae_stream_last_verified_timestamp_seconds{transmitter="managed"}"#,
    )
    .unwrap();
    assert!((now_secs() - at as i64).abs() <= 5, "{at}");

    // Update (SSF §8.1.1.3) when nothing differs: read, nothing sent.
    let mark = tx.management_requests().len();
    let v = admin_ok(h, Method::POST, "/admin/streams/managed/update", None).await;
    assert_eq!(v["method"], Value::Null);
    assert_eq!(v["differed"], json!([]));
    assert_eq!(
        since(tx, mark),
        vec![mr("GET", "/ssf/stream", Some(id), Value::Null, 200)]
    );

    // Replace (SSF §8.1.1.4): the whole receiver-supplied configuration with PUT.
    let mark = tx.management_requests().len();
    let v = admin_ok(h, Method::POST, "/admin/streams/managed/replace", None).await;
    assert_eq!(v["method"], "PUT");
    assert_eq!(
        v["configuration"]["delivery"]["authorization_header"],
        "[redacted]"
    );
    let full = json!({
        "stream_id": id,
        "delivery": {"method": PUSH_METHOD, "endpoint_url": m.push_url, "authorization_header": PUSH_AUTH},
        "events_requested": events(),
        "description": "cae-proxy receiver managed",
    });
    assert_eq!(
        since(tx, mark),
        vec![
            mr("GET", "/ssf/stream", Some(id), Value::Null, 200),
            mr("PUT", "/ssf/stream", None, full, 200),
        ]
    );
    // The stream still delivers.
    let at = now_secs() - 10;
    let dan = token(&m, "dan", 100, json!({}));
    tx.deliver(&revoke_event(&m, "dan", at)).await;
    assert_revoked(&m, &dan, at, "after the replacement").await;
}

#[tokio::test]
async fn delete_stops_delivery_until_recreate_makes_a_new_verified_stream() {
    let m = managed(TransmitterOptions::default(), false, "").await;
    let (h, tx, id) = (&m.h, &m.tx, m.stream_id.as_str());

    // Delete (SSF §8.1.1.5).
    let mark = tx.management_requests().len();
    let v = admin_ok(h, Method::DELETE, "/admin/streams/managed", None).await;
    assert_eq!(
        v,
        json!({"transmitter": "managed", "stream_id": id, "deleted": true})
    );
    assert_eq!(
        since(tx, mark),
        vec![mr("DELETE", "/ssf/stream", Some(id), Value::Null, 204)]
    );
    assert!(tx.streams().is_empty());
    let r = readyz(h).await;
    assert_eq!(
        r.json(),
        json!({"ready": false, "missing": ["transmitter managed stream is not active (deleted by an operator)"]})
    );
    // Nothing to act on now: 409, and nothing is sent.
    let mark = tx.management_requests().len();
    for (method, path) in [
        (Method::GET, "/admin/streams/managed"),
        (Method::POST, "/admin/streams/managed/verify"),
        (Method::DELETE, "/admin/streams/managed"),
    ] {
        let r = admin(h, method, path, None).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "conflict");
        assert_eq!(
            r.json()["message"],
            "the stream was deleted by an operator (re-create it with POST /admin/streams/NAME/recreate)"
        );
    }
    assert!(since(tx, mark).is_empty());
    // A reload does not bring it back (only an operator does): the manager checks and sends
    // nothing.
    let checked = |v: &Value| v["streams"][0]["checked_at_ms"].as_i64().unwrap();
    let before = checked(&admin_ok(h, Method::GET, "/admin/streams", None).await);
    admin_ok(h, Method::POST, "/reload", None).await;
    wait_for(
        Duration::from_secs(10),
        "the manager's check after the reload",
        || async {
            let v = admin_ok(h, Method::GET, "/admin/streams", None).await;
            (checked(&v) > before).then_some(())
        },
    )
    .await;
    assert!(since(tx, mark).is_empty());
    let at = now_secs() - 10;
    let erin = token(&m, "erin", 100, json!({}));
    let pushed = tx.pushes().len();
    tx.deliver(&revoke_event(&m, "erin", at)).await;
    assert_eq!(tx.pushes().len(), pushed, "no stream, nothing pushed");
    assert_passes(&m, &erin, "no stream").await;

    // Re-create: discover again, create (iss checked), read the status, verify.
    let mark = tx.management_requests().len();
    let v = admin_ok(h, Method::POST, "/admin/streams/managed/recreate", None).await;
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["previous"], Value::Null);
    let new_id = v["stream_id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    let reqs = since(tx, mark);
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    let state = state_of(&reqs[2]);
    assert_eq!(
        reqs,
        vec![
            mr(
                "POST",
                "/ssf/stream",
                None,
                json!({"delivery": {"method": PUSH_METHOD, "endpoint_url": m.push_url, "authorization_header": PUSH_AUTH},
                       "events_requested": events(), "description": "cae-proxy receiver managed"}),
                201
            ),
            mr("GET", "/ssf/status", Some(&new_id), Value::Null, 200),
            mr(
                "POST",
                "/ssf/verify",
                None,
                json!({"stream_id": new_id, "state": state}),
                204
            ),
        ]
    );
    ready_eventually(h, StatusCode::OK, "re-created and verified").await;
    tx.deliver(&revoke_event(&m, "erin", at)).await;
    assert_revoked(&m, &erin, at, "the new stream delivers").await;

    // Re-create with a stream in place deletes it first.
    let mark = tx.management_requests().len();
    let v = admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/recreate",
        Some(json!({"timeout_seconds": 10})),
    )
    .await;
    assert_eq!(v["previous"], new_id.as_str());
    assert_eq!(v["verified"], true);
    let reqs = since(tx, mark);
    assert_eq!(
        reqs[0],
        mr("DELETE", "/ssf/stream", Some(&new_id), Value::Null, 204)
    );
    assert_eq!(
        reqs.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ["DELETE", "POST", "GET", "POST"]
    );
    assert_eq!(tx.streams().len(), 1);
}

#[tokio::test]
async fn verification_timeout_shows_in_metrics_readiness_and_the_answer() {
    // `managed` verifies every 2 s. The misses below come from the transmitter not sending the
    // events, so the timeout need not be short: with 500 ms, a verification round trip on a
    // loaded machine outlasted it and counted as missing.
    let m = managed(
        TransmitterOptions::default(),
        false,
        "verify_interval = \"2s\"\nverify_timeout = \"2s\"",
    )
    .await;
    let h = &m.h;
    let verified = series(
        "cae_stream_verifications_total",
        r#"transmitter="managed",result="verified""#,
    );
    let missing = series(
        "cae_stream_verifications_total",
        r#"transmitter="managed",result="missing""#,
    );
    // Periodic verification runs.
    eventually(
        Duration::from_secs(20),
        "periodic verifications",
        || async { metric(&h.metrics().await, &verified).unwrap_or(0.0) >= 3.0 },
    )
    .await;
    assert_eq!(metric(&h.metrics().await, &missing), Some(0.0));

    // The transmitter stops sending verification events: counted, and readiness says why.
    m.tx.set_verification_delivery(false);
    eventually(
        Duration::from_secs(15),
        "a missing verification",
        || async { metric(&h.metrics().await, &missing).unwrap_or(0.0) >= 1.0 },
    )
    .await;
    let r = ready_eventually(h, StatusCode::SERVICE_UNAVAILABLE, "verification missing").await;
    let why = r.json()["missing"][0].as_str().unwrap().to_string();
    let prefix = "transmitter managed stream is not active (verification event missing: none within 2s of the request at ";
    assert!(why.starts_with(prefix), "{why}");
    let asked: i64 = why[prefix.len()..why.len() - 1].parse().unwrap();
    assert!((now_secs() - asked).abs() <= 10, "{why}");

    // An operator's verification says so too: 504 verification_timeout.
    let r = admin(
        h,
        Method::POST,
        "/admin/streams/managed/verify",
        Some(json!({"timeout_seconds": 0.3})),
    )
    .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "verification_timeout");
    assert_eq!(v["verified"], false);
    assert_eq!(v["stream_id"], m.stream_id);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("the transmitter accepted the verification request, but no verification event with its state arrived within "),
        "{v}"
    );
    let r = admin(
        h,
        Method::POST,
        "/admin/streams/managed/verify",
        Some(json!({"timeout_seconds": 0})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["message"],
        "timeout_seconds must be above 0 and at most 300"
    );

    // Verification events flow again: ready again.
    m.tx.set_verification_delivery(true);
    ready_eventually(h, StatusCode::OK, "verified again").await;
}

#[tokio::test]
async fn missing_verification_holds_readiness_back_only_when_configured() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(MGMT.into()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    tx.set_verification_delivery(false);
    let port = ReservedPort::new();
    let push_url = format!("http://{}/ssf/lenient", port.addr());
    let toml = base(&idp.issuer_url(), &up.url())
        .signals_at(&port.addr().to_string())
        .transmitter(
            "lenient",
            &managed_lines(
                "lenient",
                &tx,
                Some(&push_url),
                "verify_timeout = \"300ms\"\nready_needs_verification = false",
            ),
        )
        .build();
    let h = Harness::start(&toml).await;
    let missing = series(
        "cae_stream_verifications_total",
        r#"transmitter="lenient",result="missing""#,
    );
    eventually(
        Duration::from_secs(10),
        "the first verification missing",
        || async { metric(&h.metrics().await, &missing) == Some(1.0) },
    )
    .await;
    h.wait_ready().await;
    let v = admin_ok(&h, Method::GET, "/admin/streams", None).await;
    assert_eq!(v["streams"][0]["verification"]["result"], "missing");
    assert_eq!(v["streams"][0]["verified_at"], Value::Null);
}

#[tokio::test]
async fn reload_reconciles_with_patch_or_with_put_where_patch_is_missing() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let start = |patch_supported| async move {
        DevTransmitter::start(
            listener().await,
            TransmitterOptions {
                management_token: Some(MGMT.into()),
                patch_supported,
                ..TransmitterOptions::default()
            },
        )
        .unwrap()
    };
    let (patch, put) = (start(true).await, start(false).await);
    let port = ReservedPort::new();
    let url = |name: &str| format!("http://{}/ssf/{name}", port.addr());
    let base = base(&idp.issuer_url(), &up.url()).signals_at(&port.addr().to_string());
    let config = |extra: &str| {
        base.clone()
            .transmitter(
                "patch",
                &managed_lines("patch", &patch, Some(&url("patch")), extra),
            )
            .transmitter("put", &managed_lines("put", &put, Some(&url("put")), extra))
            .build()
    };
    let h = Harness::start(&config("")).await;
    h.wait_ready().await;
    let id = |tx: &DevTransmitter| tx.streams()[0]["stream_id"].as_str().unwrap().to_string();
    let (patch_id, put_id) = (id(&patch), id(&put));

    // A reload with nothing changed reads the stream and its status, and sends nothing.
    let marks = (
        patch.management_requests().len(),
        put.management_requests().len(),
    );
    admin_ok(&h, Method::POST, "/reload", None).await;
    for (tx, mark, sid) in [(&patch, marks.0, &patch_id), (&put, marks.1, &put_id)] {
        let reqs = wait_for(
            Duration::from_secs(10),
            "the reconcile after the reload",
            || {
                let r = since(tx, mark);
                async move { (r.len() >= 2).then_some(r) }
            },
        )
        .await;
        assert_eq!(
            reqs,
            vec![
                mr("GET", "/ssf/stream", Some(sid), Value::Null, 200),
                mr("GET", "/ssf/status", Some(sid), Value::Null, 200),
            ]
        );
    }

    // events_requested and description change: PATCH of exactly those members; where PATCH
    // answers 405, PUT of the whole configuration.
    let more = json!([
        format!("{CAEP}credential-change"),
        format!("{CAEP}session-revoked"),
        format!("{CAEP}token-claims-change")
    ]);
    h.write_config(&config("").replace(
        &format!("events_requested = {}", events()),
        &format!("events_requested = {more}\ndescription = \"CAE gateway (eu)\""),
    ));
    let marks = (
        patch.management_requests().len(),
        put.management_requests().len(),
    );
    admin_ok(&h, Method::POST, "/reload", None).await;
    let reqs = wait_for(Duration::from_secs(10), "PATCH and the status read", || {
        let r = since(&patch, marks.0);
        async move { (r.len() >= 3).then_some(r) }
    })
    .await;
    assert_eq!(
        reqs,
        vec![
            mr("GET", "/ssf/stream", Some(&patch_id), Value::Null, 200),
            mr(
                "PATCH",
                "/ssf/stream",
                None,
                json!({"stream_id": patch_id, "events_requested": more, "description": "CAE gateway (eu)"}),
                200
            ),
            mr("GET", "/ssf/status", Some(&patch_id), Value::Null, 200),
        ]
    );
    assert_eq!(patch.streams()[0]["events_requested"], more);
    assert_eq!(patch.streams()[0]["description"], "CAE gateway (eu)");
    let reqs = wait_for(
        Duration::from_secs(10),
        "PATCH, PUT and the status read",
        || {
            let r = since(&put, marks.1);
            async move { (r.len() >= 4).then_some(r) }
        },
    )
    .await;
    assert_eq!(
        reqs,
        vec![
            mr("GET", "/ssf/stream", Some(&put_id), Value::Null, 200),
            mr(
                "PATCH",
                "/ssf/stream",
                None,
                json!({"stream_id": put_id, "events_requested": more, "description": "CAE gateway (eu)"}),
                405
            ),
            mr(
                "PUT",
                "/ssf/stream",
                None,
                json!({"stream_id": put_id,
                       "delivery": {"method": PUSH_METHOD, "endpoint_url": url("put"), "authorization_header": PUSH_AUTH},
                       "events_requested": more, "description": "CAE gateway (eu)"}),
                200
            ),
            mr("GET", "/ssf/status", Some(&put_id), Value::Null, 200),
        ]
    );
    assert_eq!(put.streams()[0]["events_requested"], more);
    // Neither stream was replaced by a new one.
    assert_eq!((id(&patch), id(&put)), (patch_id, put_id));
}

#[tokio::test]
async fn push_secret_rotation_refuses_no_event() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(MGMT.into()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let port = ReservedPort::new();
    let push_url = format!("http://{}/ssf/managed", port.addr());
    let base = base(&idp.issuer_url(), &up.url()).signals_at(&port.addr().to_string());
    let old = "Bearer old-secret";
    let new = "Bearer new-secret";
    let config = |push: &str| {
        base.clone()
            .transmitter(
                "managed",
                &managed_lines("managed", &tx, Some(&push_url), "")
                    .replace(&format!("authorization = \"{PUSH_AUTH}\""), push),
            )
            .build()
    };
    let h = Harness::start(&config(&format!("authorization = \"{old}\""))).await;
    h.wait_ready().await;
    let id = tx.streams()[0]["stream_id"].as_str().unwrap().to_string();
    assert_eq!(tx.streams()[0]["delivery"]["authorization_header"], old);
    let site = Site { h, idp, _up: up };
    let push_with = |auth: &'static str, sub: &'static str| {
        let set = tx.sign_set(DevTransmitter::session_revoked(
            iss_sub(&site.idp.issuer_url(), sub),
            Some(now_secs() - 5),
        ));
        let url = push_url.clone();
        async move {
            cae_proxy::dev::transmitter::push(&url, Some(auth), &set)
                .await
                .unwrap()
                .0
        }
    };

    // Step 1: the new secret, the old one still accepted; the reload moves the transmitter.
    site.h.write_config(&config(&format!(
        "authorization = \"{new}\"\nprevious_authorization = \"{old}\""
    )));
    let mark = tx.management_requests().len();
    admin_ok(&site.h, Method::POST, "/reload", None).await;
    let patch = wait_for(Duration::from_secs(10), "the delivery PATCH", || {
        let r = since(&tx, mark);
        async move { r.into_iter().find(|r| r.method == "PATCH") }
    })
    .await;
    assert_eq!(
        patch,
        mr(
            "PATCH",
            "/ssf/stream",
            None,
            json!({"stream_id": id, "delivery": {"method": PUSH_METHOD, "endpoint_url": push_url, "authorization_header": new}}),
            200
        )
    );
    assert_eq!(tx.streams()[0]["delivery"]["authorization_header"], new);
    // A push still in flight with the old secret, and the new ones, are accepted.
    assert_eq!(push_with(old, "u1").await, 202);
    assert_eq!(push_with(new, "u2").await, 202);
    let at = now_secs() - 10;
    let t = mint(&site.idp, "u3", 100, json!({}));
    tx.deliver(&tx.sign_set(DevTransmitter::credential_change(
        iss_sub(&site.idp.issuer_url(), "u3"),
        "password",
        "update",
        Some(at),
    )))
    .await;
    assert_eq!(tx.pushes().last().unwrap().status, Some(202));
    assert_revoked(&site, &t, at, "pushed with the new secret").await;

    // Step 2: the old secret retired; nothing differs, nothing is sent; the old one is refused.
    site.h
        .write_config(&config(&format!("authorization = \"{new}\"")));
    let mark = tx.management_requests().len();
    admin_ok(&site.h, Method::POST, "/reload", None).await;
    let reqs = wait_for(Duration::from_secs(10), "the reconcile", || {
        let r = since(&tx, mark);
        async move { (r.len() >= 2).then_some(r) }
    })
    .await;
    assert!(reqs.iter().all(|r| r.method == "GET"), "{reqs:?}");
    assert_eq!(push_with(old, "u4").await, 400);
    assert_eq!(push_with(new, "u5").await, 202);
}

#[tokio::test]
async fn a_foreign_iss_stream_in_the_list_is_skipped() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let tx = DevTransmitter::start(
        listener().await,
        TransmitterOptions {
            management_token: Some(MGMT.into()),
            ..TransmitterOptions::default()
        },
    )
    .unwrap();
    let port = ReservedPort::new();
    let push_url = format!("http://{}/ssf/managed", port.addr());
    // Another tenant's stream at the same transmitter, with the same push URL as ours: it would
    // be reused if its `iss` were not checked.
    let foreign = tx.insert_stream(json!({
        "stream_id": "foreign-1",
        "iss": "https://other-tenant.example.com",
        "aud": "someone-else",
        "delivery": {"method": PUSH_METHOD, "endpoint_url": push_url},
        "events_requested": events(),
    }));
    let toml = base(&idp.issuer_url(), &up.url())
        .signals_at(&port.addr().to_string())
        .transmitter(
            "managed",
            &managed_lines("managed", &tx, Some(&push_url), ""),
        )
        .build();
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    let reqs = tx.management_requests();
    let methods: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("GET", "/ssf/stream"),
            ("POST", "/ssf/stream"),
            ("GET", "/ssf/status"),
            ("POST", "/ssf/verify")
        ]
    );
    let ours = reqs[2].stream_id.clone().unwrap();
    assert_ne!(ours, foreign);
    assert!(
        reqs.iter()
            .all(|r| r.stream_id.as_deref() != Some(foreign.as_str())
                && r.body.get("stream_id") != Some(&json!(foreign))),
        "{reqs:?}"
    );
    assert_eq!(tx.streams().len(), 2);
    let v = admin_ok(&h, Method::GET, "/admin/streams", None).await;
    assert_eq!(v["streams"][0]["stream_id"], ours.as_str());
}

#[tokio::test]
async fn managed_poll_stream_is_polled_at_once_and_steered_like_push() {
    let m = managed(TransmitterOptions::default(), true, "").await;
    // Ready means the verification event came through a poll (there is no push endpoint). That
    // the first poll is not delayed by the poll interval is not timed here (tests assert no
    // wall-clock times): the poller waits on the stream's endpoint being supplied, not a timer.
    assert!(m.tx.polls() >= 1, "ready without a poll");
    assert!(m.tx.pushes().is_empty(), "{:?}", m.tx.pushes());
    let (h, tx, id) = (&m.h, &m.tx, m.stream_id.as_str());
    assert_eq!(tx.streams()[0]["delivery"]["method"], POLL_METHOD);
    let list = admin_ok(h, Method::GET, "/admin/streams", None).await;
    assert_eq!(list["streams"][0]["delivery"], "poll");
    assert_eq!(list["streams"][0]["poll_endpoint"], tx.poll_url());

    // Pause: held at the transmitter; resume: polled and applied. (The stream-updated event of
    // the pause is polled and acknowledged before the resume: in one poll answer, events of the
    // same second have no order.)
    let acked = tx.acks().len();
    admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/status",
        Some(json!({"status": "paused"})),
    )
    .await;
    ready_eventually(h, StatusCode::SERVICE_UNAVAILABLE, "paused").await;
    eventually(
        Duration::from_secs(10),
        "the pause event acknowledged",
        || async { tx.acks().len() > acked },
    )
    .await;
    let at = now_secs() - 10;
    let alice = token(&m, "alice", 100, json!({}));
    tx.deliver(&revoke_event(&m, "alice", at)).await;
    assert_eq!(tx.held(id).len(), 1);
    admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/status",
        Some(json!({"status": "enabled"})),
    )
    .await;
    ready_eventually(h, StatusCode::OK, "enabled").await;
    eventually(Duration::from_secs(10), "the held event polled", || async {
        call(&m, &alice).await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_revoked(&m, &alice, at, "held, then polled").await;

    // A removed subject's events are not queued.
    admin_ok(
        h,
        Method::POST,
        "/admin/streams/managed/subjects:remove",
        Some(json!({"subject": user(&m, "bob")})),
    )
    .await;
    let set = revoke_event(&m, "bob", at);
    tx.deliver(&set).await;
    let jti = jti_of(&set);
    assert!(tx.queued().iter().all(|(j, _)| *j != jti));
    assert!(tx.acks().iter().all(|j| *j != jti));

    // Verification through the poll.
    let v = admin_ok(h, Method::POST, "/admin/streams/managed/verify", None).await;
    assert_eq!(v["verified"], true);

    // Delete and re-create: the new stream is polled and verified at once.
    admin_ok(h, Method::DELETE, "/admin/streams/managed", None).await;
    let v = admin_ok(h, Method::GET, "/admin/streams", None).await;
    assert_eq!(v["streams"][0]["poll_endpoint"], Value::Null);
    let v = admin_ok(h, Method::POST, "/admin/streams/managed/recreate", None).await;
    assert_eq!(v["verified"], true, "{v}");
    ready_eventually(h, StatusCode::OK, "re-created").await;
    let carol = token(&m, "carol", 100, json!({}));
    tx.deliver(&revoke_event(&m, "carol", at)).await;
    eventually(
        Duration::from_secs(10),
        "polled from the new stream",
        || async { call(&m, &carol).await.status == StatusCode::UNAUTHORIZED },
    )
    .await;
}

#[tokio::test]
async fn removed_transmitter_stream_is_deleted_even_when_stopped_right_after_the_reload() {
    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    let start = || async {
        DevTransmitter::start(
            listener().await,
            TransmitterOptions {
                management_token: Some(MGMT.into()),
                ..TransmitterOptions::default()
            },
        )
        .unwrap()
    };
    let (gone, kept) = (start().await, start().await);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cae-proxy.toml");
    let base = base(&idp.issuer_url(), &up.url())
        .log_level("info")
        .store(&redb_store(dir.path()))
        .signals();
    let with = base
        .clone()
        .transmitter("gone", &managed_lines("gone", &gone, None, ""))
        .transmitter(
            "kept",
            &managed_lines("kept", &kept, None, "on_remove = \"keep\""),
        )
        .build();
    std::fs::write(&cfg, with).unwrap();
    let mut bin = Binary::start(&cfg, 3);
    bin.wait_ready().await;
    let gone_id = gone.streams()[0]["stream_id"].as_str().unwrap().to_string();
    let kept_id = kept.streams()[0]["stream_id"].as_str().unwrap().to_string();
    let (gone_mark, kept_mark) = (
        gone.management_requests().len(),
        kept.management_requests().len(),
    );

    // Both leave the file; SIGTERM as soon as the reload is done, while the (slow) transmitter
    // has not answered the deletion yet: the stop waits for it.
    gone.set_management_delay(Duration::from_millis(1500));
    std::fs::write(&cfg, base.build()).unwrap();
    bin.signal(libc::SIGHUP);
    bin.wait_message("configuration reloaded").await;
    bin.signal(libc::SIGTERM);
    assert_eq!(bin.wait_exit(Duration::from_secs(30)).await, Some(0));

    assert_eq!(
        since(&gone, gone_mark),
        vec![mr(
            "DELETE",
            "/ssf/stream",
            Some(&gone_id),
            Value::Null,
            204
        )]
    );
    assert!(gone.streams().is_empty());
    assert!(since(&kept, kept_mark).is_empty());
    assert_eq!(kept.streams()[0]["stream_id"], kept_id.as_str());
    let log = bin.json_log();
    assert!(
        log.iter().any(|l| l["message"]
            == "the transmitter was removed from the configuration; its SSF stream is deleted"
            && l["transmitter"] == "gone"
            && l["stream_id"] == gone_id.as_str()),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l["transmitter"] == "kept"
            && l["message"]
                == "the transmitter was removed from the configuration; its SSF stream is kept (on_remove = \"keep\")"),
        "{log:#?}"
    );
}

#[tokio::test]
async fn stream_cli_commands_drive_the_admin_api() {
    let m = managed(TransmitterOptions::default(), false, "").await;
    let (h, tx) = (&m.h, &m.tx);
    let admin_url = format!("http://{}", h.proxy.admin_addr().unwrap());
    let run = |args: Vec<String>| {
        let admin_url = admin_url.clone();
        async move {
            let mut all: Vec<&str> = vec!["stream"];
            all.extend(args.iter().map(String::as_str));
            all.extend(["--admin", admin_url.as_str()]);
            cli(&all, Some(ADMIN_TOKEN)).await
        }
    };
    let ok = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let run = &run;
        async move {
            let (code, out, err) = run(args.clone()).await;
            assert_eq!(code, Some(0), "{args:?}: stdout {out:?} stderr {err:?}");
            assert_eq!(err, "", "{args:?}");
            assert!(out.ends_with('\n'));
            serde_json::from_str::<Value>(out.trim()).unwrap()
        }
    };
    let last = |tx: &DevTransmitter| tx.management_requests().last().cloned().unwrap();

    let v = ok(&["list"]).await;
    assert_eq!(v["streams"][0]["stream_id"], m.stream_id.as_str());
    let v = ok(&["show", "managed"]).await;
    assert_eq!(v["status"]["status"], "enabled");
    assert_eq!(
        v["configuration"]["delivery"]["authorization_header"],
        "[redacted]"
    );

    // Each change is announced by a stream-updated event; the next command waits for it, as a
    // transmitter delivers them in order.
    let pushed = tx.pushes().len();
    let v = ok(&["pause", "managed", "--reason", "upgrade"]).await;
    assert_eq!(v["status"], "paused");
    assert_eq!(
        last(tx).body,
        json!({"stream_id": m.stream_id, "status": "paused", "reason": "upgrade"})
    );
    assert_eq!(tx.stream_status(&m.stream_id).as_deref(), Some("paused"));
    pushes_reach(tx, pushed + 1).await;
    ok(&["disable", "managed"]).await;
    assert_eq!(tx.stream_status(&m.stream_id).as_deref(), Some("disabled"));
    pushes_reach(tx, pushed + 2).await;
    ok(&["resume", "managed"]).await;
    assert_eq!(
        last(tx).body,
        json!({"stream_id": m.stream_id, "status": "enabled"})
    );
    pushes_reach(tx, pushed + 3).await;
    ready_eventually(h, StatusCode::OK, "resumed").await;

    let subject = json!({"format": "email", "email": "alice@example.com"});
    let v = ok(&["remove-subject", "managed", &subject.to_string()]).await;
    assert_eq!(v["action"], "removed");
    assert_eq!(tx.removed_subjects(&m.stream_id), vec![subject.clone()]);
    ok(&["add-subject", "managed", &subject.to_string(), "--verified"]).await;
    assert_eq!(
        last(tx).body,
        json!({"stream_id": m.stream_id, "subject": subject, "verified": true})
    );
    assert!(tx.removed_subjects(&m.stream_id).is_empty());

    let v = ok(&["verify", "managed", "--timeout", "10"]).await;
    assert_eq!(v["verified"], true);
    assert_eq!(last(tx).path, "/ssf/verify");
    let v = ok(&["update", "managed"]).await;
    assert_eq!(v["method"], Value::Null);
    let v = ok(&["replace", "managed"]).await;
    assert_eq!(v["method"], "PUT");
    assert_eq!(last(tx).method, "PUT");

    let v = ok(&["delete", "managed"]).await;
    assert_eq!(v["deleted"], true);
    assert!(tx.streams().is_empty());
    let v = ok(&["recreate", "managed"]).await;
    assert_eq!(v["verified"], true);
    assert_eq!(tx.streams().len(), 1);
    assert_eq!(tx.streams()[0]["stream_id"], v["stream_id"]);

    // Failures: exit 1 with the admin API's answer, or a usage message without a call.
    let (code, out, err) = run(vec!["show".into(), "nobody".into()]).await;
    assert_eq!((code, out.as_str()), (Some(1), ""));
    let answer = err
        .strip_prefix("stream show failed: the admin API answered 404: ")
        .unwrap_or_else(|| panic!("{err}"));
    let answer: Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(answer["error"], "not_found");
    assert_eq!(answer["message"], "no transmitter named \"nobody\"");
    let mark = tx.management_requests().len();
    let (code, _, err) = run(vec!["add-subject".into(), "managed".into(), "alice".into()]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "stream add-subject failed: \"alice\" is not a subject identifier: give an RFC 9493 JSON object such as '{\"format\":\"email\",\"email\":\"alice@example.com\"}'\n"
    );
    assert_eq!(tx.management_requests().len(), mark);
    tx.set_verification_delivery(false);
    let (code, out, err) = run(vec![
        "verify".into(),
        "managed".into(),
        "--timeout".into(),
        "0.2".into(),
    ])
    .await;
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert!(
        err.starts_with("stream verify failed: the admin API answered 504: "),
        "{err}"
    );
    let (code, _, err) = cli(
        &[
            "stream",
            "list",
            "--admin",
            &admin_url,
            "--admin-token",
            "wrong",
        ],
        None,
    )
    .await;
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "stream list failed: the admin API answered 401: {\"error\":\"unauthorized\",\"message\":\"the admin API needs the configured bearer token\"}\n"
    );
}

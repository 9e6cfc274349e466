//! Property tests (proptest) of the pure CAE decision: `decide` and `check_grants` against
//! generated principals, table histories, client addresses and route policies. Each property is an
//! invariant from issue 11 / docs/protocols.md §5, plus a reference model of the whole CAE part
//! written from the specification, independent of the implementation's key encoding. Report-only
//! mode is checked through the one decision function the pipeline calls
//! (`cae_proxy::auth::decide::decide`), with the route flag and the global `server.report_only`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::IpAddr;

use cae_proxy::auth::decide::{check_grants, Credential, Decision, DenyReason, IpRule};
use cae_proxy::auth::token::{Principal, Rejected, TokenError, TokenIp};
use cae_proxy::config::{AuthMode, CaePolicy, ClaimRule, MatchMode, Route};
use cae_proxy::store::keys::{normalize_iss, ANY_ISSUER};
use cae_proxy::store::{Change, SubjectKey, Tables};
use ipnet::IpNet;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

const ISSUERS: &[&str] = &["https://idp.example.com/", "https://other.example.com"];
const NOW: i64 = 10_000;

// ------------------------------------------------------------------------------------------
// Generators over a small universe, so that keys of changes and claims of tokens collide often.

fn arb_iss() -> impl Strategy<Value = String> {
    prop_oneof![
        select(ISSUERS).prop_map(str::to_string),
        // With and without the trailing slash, and the "any issuer" wildcard.
        Just("https://idp.example.com".to_string()),
        Just(ANY_ISSUER.to_string()),
    ]
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    select(vec![
        "192.0.2.1",
        "192.0.2.77",
        "198.51.100.7",
        "::ffff:192.0.2.1",
        "2001:db8::1",
        "2001:db8:ffff::9",
        "10.1.2.3",
    ])
    .prop_map(|s| s.parse().unwrap())
}

fn arb_net() -> impl Strategy<Value = IpNet> {
    select(vec![
        "192.0.2.0/24",
        "192.0.2.1/32",
        "2001:db8::/32",
        "10.0.0.0/8",
        "198.51.100.7/32",
    ])
    .prop_map(|s| s.parse().unwrap())
}

fn arb_key() -> impl Strategy<Value = SubjectKey> {
    let name = || select(vec!["alice", "bob", "oid-1"]).prop_map(str::to_string);
    prop_oneof![
        (arb_iss(), name()).prop_map(|(iss, sub)| SubjectKey::Subject { iss, sub }),
        (arb_iss(), select(vec!["s1", "s2"])).prop_map(|(iss, sid)| SubjectKey::Session {
            iss,
            sid: sid.into()
        }),
        (arb_iss(), select(vec!["t1", "t2"])).prop_map(|(iss, jti)| SubjectKey::Token {
            iss,
            jti: jti.into()
        }),
        select(vec!["tenant-a", "tenant-b"]).prop_map(|t| SubjectKey::Tenant { tid: t.into() }),
        select(vec!["dev-1", "dev-2"]).prop_map(|d| SubjectKey::Device { id: d.into() }),
        select(vec![
            "alice@example.com",
            "Alice@Example.com",
            "bob@example.com"
        ])
        .prop_map(|e| SubjectKey::Email { email: e.into() }),
    ]
}

fn arb_time() -> impl Strategy<Value = i64> {
    // Mostly a few shared instants, so that iat and event times collide (ties are the edge cases).
    prop_oneof![3 => select(vec![0i64, 100, 1_000, 1_500, 2_999]), 1 => 0i64..3_000]
}

fn arb_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        3 => (arb_key(), arb_time()).prop_map(|(key, at)| Change::Revoke { key, at }),
        2 => (arb_key(), arb_time()).prop_map(|(key, at)| Change::Block { key, at }),
        2 => (arb_key(), arb_time()).prop_map(|(key, at)| Change::Unblock { key, at }),
        2 => (arb_key(), proptest::collection::vec(arb_net(), 1..3), arb_time())
            .prop_map(|(key, nets, at)| Change::Bind { key, nets, at }),
        1 => (arb_key(), arb_time()).prop_map(|(key, at)| Change::Unbind { key, at }),
    ]
    // The admin API and the signal mapping store normalised keys.
    .prop_map(|c| match c {
        Change::Revoke { key, at } => Change::Revoke {
            key: key.normalized(),
            at,
        },
        Change::Block { key, at } => Change::Block {
            key: key.normalized(),
            at,
        },
        Change::Unblock { key, at } => Change::Unblock {
            key: key.normalized(),
            at,
        },
        Change::Bind { key, nets, at } => Change::Bind {
            key: key.normalized(),
            nets,
            at,
        },
        Change::Unbind { key, at } => Change::Unbind {
            key: key.normalized(),
            at,
        },
        other => other,
    })
}

fn arb_principal() -> impl Strategy<Value = Principal> {
    (
        select(ISSUERS),
        select(vec!["alice", "bob"]),
        proptest::option::of(Just("oid-1")),
        proptest::option::of(select(vec!["s1", "s2"])),
        proptest::option::of(select(vec!["t1", "t2"])),
        proptest::option::of(select(vec!["tenant-a", "tenant-b"])),
        proptest::option::of(select(vec!["dev-1", "dev-2"])),
        subsequence(vec!["alice@example.com", "bob@example.com"], 0..=2),
        proptest::option::of(arb_time()),
        proptest::option::of(arb_ip()),
        subsequence(vec!["read", "write"], 0..=2),
    )
        .prop_map(
            |(iss, sub, oid, sid, jti, tid, device, emails, iat, ipaddr, scopes)| Principal {
                issuer: "idp".into(),
                iss: iss.to_string(),
                subjects: std::iter::once(sub)
                    .chain(oid)
                    .map(str::to_string)
                    .collect(),
                sid: sid.map(str::to_string),
                jti: jti.map(str::to_string),
                tid: tid.map(str::to_string),
                device: device.map(str::to_string),
                emails: emails.into_iter().map(str::to_string).collect(),
                iat,
                exp: NOW + 3600,
                ipaddr: ipaddr.map_or(TokenIp::Absent, TokenIp::Addr),
                scopes: scopes.into_iter().map(str::to_string).collect(),
                ..Default::default()
            },
        )
}

fn route(cae: CaePolicy, scopes: Vec<String>, report_only: bool) -> Route {
    Route {
        name: "r".into(),
        hosts: vec![],
        path_prefix: "/".into(),
        methods: vec![],
        upstream: Some("u".into()),
        strip_prefix: false,
        auth: AuthMode::Required,
        issuers: vec![],
        scopes,
        roles: vec![],
        match_mode: MatchMode::Any,
        claims: vec![],
        identity_headers: vec![],
        forward_authorization: true,
        report_only,
        upgrades: vec![],
        cae,
        sender: Default::default(),
    }
}

fn arb_route() -> impl Strategy<Value = Route> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(arb_net(), 0..2),
        proptest::option::of(Just("c1".to_string())),
        subsequence(vec!["read", "write"], 0..=1),
        any::<bool>(),
    )
        .prop_map(
            |(revocation, token_ip, signal_ip, allow, ctx, scopes, report_only)| {
                route(
                    CaePolicy {
                        revocation,
                        token_ip,
                        signal_ip,
                        allow_locations: allow,
                        auth_context: ctx,
                        ..Default::default()
                    },
                    scopes.into_iter().map(str::to_string).collect(),
                    report_only,
                )
            },
        )
}

/// Only revocations and blocks on: isolates the revocation rules.
fn revocation_route() -> Route {
    route(
        CaePolicy {
            revocation: true,
            ..Default::default()
        },
        vec![],
        false,
    )
}

fn tables(changes: &[Change]) -> Tables {
    let t = Tables::default();
    for c in changes {
        t.apply(c);
    }
    t
}

// ------------------------------------------------------------------------------------------
// A reference model from docs/protocols.md §5, on `SubjectKey` values rather than encoded strings.

/// Whether a stored key names the principal (docs/protocols.md §4 mapping).
fn names(key: &SubjectKey, p: &Principal) -> bool {
    let iss_ok = |iss: &str| iss == ANY_ISSUER || normalize_iss(iss) == normalize_iss(&p.iss);
    match key {
        SubjectKey::Subject { iss, sub } => iss_ok(iss) && p.subjects.contains(sub),
        SubjectKey::Session { iss, sid } => iss_ok(iss) && p.sid.as_ref() == Some(sid),
        SubjectKey::Token { iss, jti } => iss_ok(iss) && p.jti.as_ref() == Some(jti),
        SubjectKey::Tenant { tid } => p.tid.as_ref() == Some(tid),
        SubjectKey::Device { id } => p.device.as_ref() == Some(id),
        SubjectKey::Email { email } => p.emails.contains(&email.to_lowercase()),
    }
}

#[derive(Default)]
struct Model {
    revoked: HashMap<SubjectKey, i64>,
    /// Latest block/unblock event: (time, blocked); a block wins a tie.
    blocks: HashMap<SubjectKey, (i64, bool)>,
    /// Latest (or equal-time) bind/unbind: (time, nets).
    bindings: HashMap<SubjectKey, (i64, Vec<IpNet>)>,
}

impl Model {
    fn new(changes: &[Change]) -> Model {
        let mut m = Model::default();
        for c in changes {
            match c {
                Change::Revoke { key, at } => {
                    let e = m.revoked.entry(key.clone()).or_insert(*at);
                    *e = (*e).max(*at);
                }
                Change::Block { key, at } | Change::Unblock { key, at } => {
                    let blocked = matches!(c, Change::Block { .. });
                    let e = m.blocks.entry(key.clone()).or_insert((*at, blocked));
                    if *at > e.0 || (*at == e.0 && blocked) {
                        *e = (*at, blocked);
                    }
                }
                Change::Bind { key, at, .. } | Change::Unbind { key, at } => {
                    let nets = match c {
                        Change::Bind { nets, .. } => nets.clone(),
                        _ => vec![],
                    };
                    let e = m.bindings.entry(key.clone()).or_insert((*at, nets.clone()));
                    if *at >= e.0 {
                        *e = (*at, nets);
                    }
                }
                Change::Delete { .. } => unreachable!("not generated"),
            }
        }
        m
    }

    /// The CAE part of the decision (blocks, revocations, IP rules), as the spec states it.
    fn cae(&self, r: &Route, p: &Principal, ip: IpAddr) -> Result<(), DenyReason> {
        if r.cae.revocation {
            let since = self
                .blocks
                .iter()
                .filter(|(k, (_, blocked))| *blocked && names(k, p))
                .map(|(_, (at, _))| *at)
                .max();
            if let Some(since) = since {
                return Err(DenyReason::AccountBlocked { since });
            }
            let iat = p.iat.unwrap_or(i64::MIN);
            let worst = self
                .revoked
                .iter()
                .filter(|(k, at)| names(k, p) && iat < **at)
                .map(|(_, at)| *at)
                .max();
            if let Some(revoked_at) = worst {
                return Err(revoked(revoked_at));
            }
        }
        let ip = ip.to_canonical();
        let other_address = match p.ipaddr {
            TokenIp::Absent => false,
            TokenIp::Addr(a) => a.to_canonical() != ip,
            TokenIp::Unreadable => true,
        };
        if r.cae.token_ip && other_address {
            return Err(DenyReason::IpNotAllowed {
                rule: IpRule::TokenAddress,
            });
        }
        if r.cae.signal_ip
            && self.bindings.iter().any(|(k, (_, nets))| {
                matches!(k, SubjectKey::Subject { .. } | SubjectKey::Session { .. })
                    && names(k, p)
                    && !nets.is_empty()
                    && !nets.iter().any(|n| n.contains(&ip))
            })
        {
            return Err(DenyReason::IpNotAllowed {
                rule: IpRule::Binding,
            });
        }
        if !r.cae.allow_locations.is_empty()
            && !r.cae.allow_locations.iter().any(|n| n.contains(&ip))
        {
            return Err(DenyReason::IpNotAllowed {
                rule: IpRule::Location,
            });
        }
        Ok(())
    }
}

/// A `Revoked` reason with the entry kind blanked (which key wins a tie is not specified).
fn revoked(revoked_at: i64) -> DenyReason {
    DenyReason::Revoked {
        by: cae_proxy::auth::decide::RevokedBy::Subject,
        revoked_at,
    }
}

fn blank_by(r: Result<(), DenyReason>) -> Result<(), DenyReason> {
    r.map_err(|e| match e {
        DenyReason::Revoked { revoked_at, .. } => revoked(revoked_at),
        other => other,
    })
}

/// The decision on a valid token with report-only off (the route's flag and the global one).
fn decide(r: &Route, p: &Principal, t: &Tables, ip: IpAddr, now: i64) -> Result<(), DenyReason> {
    let mut enforced = r.clone();
    enforced.report_only = false;
    match cae_proxy::auth::decide::decide(&enforced, false, Credential::Valid(p), t, ip, now) {
        Decision::Allow => Ok(()),
        Decision::Deny(refusal) => Err(refusal.reason),
        Decision::ReportOnly(r) => panic!("report-only while it is off: {r:?}"),
    }
}

/// The response the proxy gives, through the decision function the pipeline calls: `Ok`
/// forwarded to the upstream (allowed, or refused in report-only mode), `Err` the refusal
/// answered with that reason's challenge. `global` is `server.report_only`.
fn outcome(
    r: &Route,
    global: bool,
    presented: Credential<'_>,
    t: &Tables,
    ip: IpAddr,
) -> Result<(), DenyReason> {
    match cae_proxy::auth::decide::decide(r, global, presented, t, ip, NOW) {
        Decision::Allow | Decision::ReportOnly(_) => Ok(()),
        Decision::Deny(refusal) => Err(refusal.reason),
    }
}

/// The route with every CAE check off (scopes, roles and claim rules kept): the decision a
/// request gets when the CAE part allows it.
fn cae_allows(r: &Route) -> Route {
    let mut open = r.clone();
    open.cae = CaePolicy::default();
    open
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The implementation agrees with the reference model on every CAE refusal.
    #[test]
    fn decide_matches_the_reference_model(
        changes in proptest::collection::vec(arb_change(), 0..12),
        p in arb_principal(),
        mut r in arb_route(),
        ip in arb_ip(),
    ) {
        r.cae.auth_context = None;
        r.scopes.clear();
        let got = blank_by(decide(&r, &p, &tables(&changes), ip, NOW));
        let want = blank_by(Model::new(&changes).cae(&r, &p, ip));
        prop_assert_eq!(got, want);
    }

    /// Adding a revocation (or a block) never turns a refusal into an allow, and never turns a
    /// refusal for one reason into an allow for another.
    #[test]
    fn adding_a_revocation_or_block_is_monotonic(
        changes in proptest::collection::vec(arb_change(), 0..10),
        extra_key in arb_key(),
        at in arb_time(),
        block in any::<bool>(),
        p in arb_principal(),
        r in arb_route(),
        ip in arb_ip(),
    ) {
        let before = decide(&r, &p, &tables(&changes), ip, NOW);
        let mut more = changes.clone();
        let key = extra_key.normalized();
        more.push(if block { Change::Block { key, at } } else { Change::Revoke { key, at } });
        let after = decide(&r, &p, &tables(&more), ip, NOW);
        if before.is_err() {
            prop_assert!(after.is_err(), "{:?} became an allow", before);
        }
        // Order of application does not matter either: the revocation first gives the same answer.
        let mut first = vec![more.last().cloned().unwrap()];
        first.extend(changes);
        prop_assert_eq!(blank_by(after), blank_by(decide(&r, &p, &tables(&first), ip, NOW)));
    }

    /// A token issued at or after every revocation time that names it is allowed, unless blocked;
    /// issued one second before the latest one, it is refused.
    #[test]
    fn tokens_issued_after_the_revocation_pass_unless_blocked(
        keys in proptest::collection::vec(arb_key(), 1..5),
        times in proptest::collection::vec(arb_time(), 5),
        mut p in arb_principal(),
    ) {
        let changes: Vec<Change> = keys.iter().zip(&times)
            .map(|(k, at)| Change::Revoke { key: k.clone().normalized(), at: *at })
            .collect();
        let t = tables(&changes);
        let r = revocation_route();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let latest = changes.iter().filter_map(|c| match c {
            Change::Revoke { key, at } if names(key, &p) => Some(*at),
            _ => None,
        }).max();
        match latest {
            None => {
                prop_assert_eq!(decide(&r, &p, &t, ip, NOW), Ok(()));
            }
            Some(latest) => {
                p.iat = Some(latest);
                prop_assert_eq!(decide(&r, &p, &t, ip, NOW), Ok(()), "issued at the revocation time");
                p.iat = Some(latest + 1);
                prop_assert_eq!(decide(&r, &p, &t, ip, NOW), Ok(()));
                p.iat = Some(latest - 1);
                prop_assert_eq!(blank_by(decide(&r, &p, &t, ip, NOW)), Err(revoked(latest)));
                // No iat at all: fail closed.
                p.iat = None;
                prop_assert!(decide(&r, &p, &t, ip, NOW).is_err());
                // A block refuses even the freshest token.
                let mut blocked = changes.clone();
                blocked.push(Change::Block { key: keys[0].clone().normalized(), at: 0 });
                p.iat = Some(NOW);
                let d = decide(&r, &p, &tables(&blocked), ip, NOW);
                if names(&keys[0].clone().normalized(), &p) {
                    prop_assert_eq!(d, Err(DenyReason::AccountBlocked { since: 0 }));
                } else {
                    prop_assert_eq!(d, Ok(()));
                }
            }
        }
    }

    /// Blocks and unblocks follow event time, not arrival: any order of the same events gives the
    /// same answer; the latest event decides; on equal times the block wins.
    #[test]
    fn block_and_unblock_follow_event_time(
        events in proptest::collection::vec((any::<bool>(), arb_time()), 1..8),
        seed in any::<u64>(),
        iat in arb_time(),
    ) {
        let p = Principal {
            iss: ISSUERS[0].into(),
            subjects: vec!["alice".into()],
            iat: Some(iat),
            exp: NOW + 60,
            ..Default::default()
        };
        let key = SubjectKey::Subject { iss: ISSUERS[0].into(), sub: "alice".into() }.normalized();
        let changes: Vec<Change> = events.iter().map(|(block, at)| if *block {
            Change::Block { key: key.clone(), at: *at }
        } else {
            Change::Unblock { key: key.clone(), at: *at }
        }).collect();
        // A deterministic shuffle of the same events.
        let mut shuffled = changes.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let r = revocation_route();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = decide(&r, &p, &tables(&changes), ip, NOW);
        let b = decide(&r, &p, &tables(&shuffled), ip, NOW);
        prop_assert_eq!(&a, &b);
        let latest = events.iter().map(|(_, at)| *at).max().unwrap();
        let blocked = events.iter().any(|(block, at)| *block && *at == latest);
        if blocked {
            prop_assert_eq!(a, Err(DenyReason::AccountBlocked { since: latest }), "whatever the token's iat");
        } else {
            prop_assert_eq!(a, Ok(()), "a later unblock lifts the block");
        }
    }

    /// IP bindings: with `signal_ip`, a bound subject or session is allowed exactly from its
    /// networks (IPv4-mapped addresses count as IPv4); without it, bindings are ignored. The
    /// token's own `ipaddr` binds only with `token_ip`.
    #[test]
    fn ip_bindings_allow_exactly_the_bound_networks(
        nets in proptest::collection::vec(arb_net(), 1..3),
        session in any::<bool>(),
        ip in arb_ip(),
        token_ip in arb_ip(),
        signal_ip in any::<bool>(),
        check_token_ip in any::<bool>(),
    ) {
        let p = Principal {
            iss: ISSUERS[0].into(),
            subjects: vec!["alice".into()],
            sid: Some("s1".into()),
            iat: Some(100),
            exp: NOW + 60,
            ipaddr: TokenIp::Addr(token_ip),
            ..Default::default()
        };
        let key = if session {
            SubjectKey::Session { iss: ANY_ISSUER.into(), sid: "s1".into() }
        } else {
            SubjectKey::Subject { iss: ISSUERS[0].into(), sub: "alice".into() }.normalized()
        };
        let t = tables(&[Change::Bind { key, nets: nets.clone(), at: 5 }]);
        let r = route(CaePolicy { revocation: true, signal_ip, token_ip: check_token_ip, ..Default::default() }, vec![], false);
        let d = decide(&r, &p, &t, ip, NOW);
        let token_ok = !check_token_ip || token_ip.to_canonical() == ip.to_canonical();
        let bound_ok = !signal_ip || nets.iter().any(|n| n.contains(&ip.to_canonical()));
        match (token_ok, bound_ok) {
            (true, true) => prop_assert_eq!(d, Ok(())),
            (false, _) => prop_assert_eq!(d, Err(DenyReason::IpNotAllowed { rule: IpRule::TokenAddress })),
            (true, false) => prop_assert_eq!(d, Err(DenyReason::IpNotAllowed { rule: IpRule::Binding })),
        }
        // An unbind at a later time lifts the binding; an older one does not.
        let later = tables(&[
            Change::Bind { key: SubjectKey::Session { iss: ANY_ISSUER.into(), sid: "s1".into() }, nets: nets.clone(), at: 5 },
            Change::Unbind { key: SubjectKey::Session { iss: ANY_ISSUER.into(), sid: "s1".into() }, at: 6 },
        ]);
        let r2 = route(CaePolicy { revocation: true, signal_ip: true, ..Default::default() }, vec![], false);
        prop_assert_eq!(decide(&r2, &p, &later, ip, NOW), Ok(()));
    }

    /// Report-only never changes the response: with it on (the route's `report_only`, the
    /// global `server.report_only`, or both) the forwarded/denied outcome equals the one the
    /// request gets when the CAE checks allow it, for every input; with it off the outcome is the
    /// decision. What report-only forwards is reported with the decision's own CAE reason; a
    /// missing or invalid token and a scope/role/claim refusal are answered in every mode.
    #[test]
    fn report_only_never_changes_the_response(
        changes in proptest::collection::vec(arb_change(), 0..10),
        mut p in arb_principal(),
        mut r in arb_route(),
        global in any::<bool>(),
        ip in arb_ip(),
        (want_role, has_role, claim_rule, all) in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
    ) {
        // Roles and a claim rule as well as scopes, so that grant refusals meet CAE ones.
        if want_role {
            r.roles = vec!["admin".into()];
        }
        if has_role {
            p.roles = vec!["admin".into()];
        }
        if claim_rule {
            r.claims = vec![ClaimRule { claim: "tid".into(), allowed: vec!["tenant-a".into()] }];
        }
        if let Some(tid) = &p.tid {
            let mut claims = serde_json::Map::new();
            claims.insert("tid".into(), serde_json::Value::String(tid.clone()));
            p.claims = claims.into();
        }
        if all {
            r.match_mode = MatchMode::All;
        }
        let t = tables(&changes);
        let d = decide(&r, &p, &t, ip, NOW);
        let allowed_by_cae = decide(&cae_allows(&r), &p, &t, ip, NOW);
        prop_assert_eq!(&allowed_by_cae, &check_grants(&r, &p));
        let got = outcome(&r, global, Credential::Valid(&p), &t, ip);
        if r.report_only || global {
            prop_assert_eq!(&got, &allowed_by_cae, "report-only changed the response (route {}, global {})", r.report_only, global);
        } else {
            prop_assert_eq!(&got, &d, "enforcement changed the decision");
        }
        // What is forwarded in report-only mode is logged with the decision's CAE reason.
        match cae_proxy::auth::decide::decide(&r, global, Credential::Valid(&p), &t, ip, NOW) {
            Decision::Allow => prop_assert_eq!(&d, &Ok(())),
            Decision::ReportOnly(logged) => {
                prop_assert!(r.report_only || global);
                prop_assert!(logged.is_cae());
                prop_assert_eq!(Err(logged), d.clone());
            }
            Decision::Deny(answered) => {
                prop_assert_eq!(Err(answered.reason), if r.report_only || global { allowed_by_cae.clone() } else { d.clone() });
            }
        }
        // No valid token: refused in every mode, principal or not.
        let expired = Rejected::from(TokenError::Expired);
        prop_assert_eq!(outcome(&r, global, Credential::Invalid(&expired), &t, ip), Err(DenyReason::InvalidToken(TokenError::Expired)));
        if r.auth == AuthMode::Required {
            prop_assert_eq!(outcome(&r, global, Credential::Absent, &t, ip), Err(DenyReason::MissingToken));
        }
        // A scope/role/claim refusal is answered in every mode.
        if check_grants(&r, &p).is_err() {
            prop_assert!(outcome(&r, global, Credential::Valid(&p), &t, ip).is_err());
        }
    }
}

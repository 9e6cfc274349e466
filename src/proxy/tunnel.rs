//! Upgraded connections (WebSocket tunnels): bytes relayed both ways until a side closes, or —
//! for a tunnel opened with a token — until that token expires or the request path's decision,
//! run again after every change to the tables, refuses it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use crate::auth::decide::{self, Credential, Decision};
use crate::auth::token::Principal;
use crate::config::Route;
use crate::metrics::ReasonLabel;
use crate::state::Shared;

/// What a tunnel opened with a token stays subject to: the decision of the request that opened
/// it, for the same route, principal and client address.
pub(super) struct Grant {
    pub route: Route,
    pub principal: Arc<Principal>,
    pub client_ip: IpAddr,
}

/// Joins the client's and the upstream's upgraded connections and relays bytes until one side
/// ends; with a `grant`, also until its token expires (RFC 7519 §4.1.4: at `exp`) or is refused
/// (`tunnels_closed{reason}` counts why each tunnel ended).
pub(super) fn spawn(
    shared: Arc<Shared>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    grant: Option<Grant>,
    request_id: String,
) {
    tokio::spawn(async move {
        let (c, u) = match tokio::try_join!(client, upstream) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %crate::errors::Chain(&e), "upgrade failed");
                return;
            }
        };
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        let m = &shared.metrics;
        m.tunnels_open.inc();
        let reason = tokio::select! {
            r = tokio::io::copy_bidirectional(&mut c, &mut u) => if r.is_ok() { "closed" } else { "error" },
            reason = held_to(&shared, grant.as_ref()) => reason,
        };
        m.tunnels_open.dec();
        m.tunnels_closed
            .get_or_create(&ReasonLabel { reason })
            .inc();
        if let (Some(g), false) = (&grant, matches!(reason, "closed" | "error")) {
            tracing::info!(
                request_id,
                route = %g.route.name,
                reason,
                "tunnel closed: its token is no longer accepted"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = c.shutdown().await;
                let _ = u.shutdown().await;
            })
            .await;
        }
    });
}

/// Resolves, with the reason, once the grant's token has expired or is refused; never without a
/// grant. Wakes on every change to the tables (a revocation, block or binding takes effect within
/// the time the decision takes), at `exp`, and when an RFC 9470 `max_age` runs out.
async fn held_to(shared: &Shared, grant: Option<&Grant>) -> &'static str {
    let Some(g) = grant else {
        return std::future::pending().await;
    };
    // Subscribed before the first decision: a change made since the request's decision is seen.
    let mut changes = shared.store.tables().subscribe();
    let exp = g.principal.exp;
    let aged = g
        .route
        .cae
        .max_age
        .zip(g.principal.auth_time)
        .map(|(age, at)| {
            at.saturating_add(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
                .saturating_add(1)
        });
    loop {
        let now = crate::store::now_secs();
        if now >= exp {
            return "token_expired";
        }
        if let Some(reason) = refused(shared, g, now) {
            return reason;
        }
        let wake = aged.filter(|t| *t > now).map_or(exp, |t| t.min(exp));
        tokio::select! {
            _ = tokio::time::sleep(until(wake)) => {}
            r = changes.changed() => {
                if r.is_err() {
                    // The store is gone (shutdown): only expiry is left to wait for.
                    tokio::time::sleep(until(exp)).await;
                }
            }
        }
    }
}

/// The request path's decision for the grant now, report-only included: the label of a refusal.
fn refused(shared: &Shared, g: &Grant, now: i64) -> Option<&'static str> {
    let report_only = shared.snapshot.load().config.server.report_only;
    match decide::decide(
        &g.route,
        report_only,
        Credential::Valid(&g.principal),
        shared.store.tables(),
        g.client_ip,
        now,
    ) {
        Decision::Allow => None,
        Decision::Deny(r) => Some(r.reason.label()),
        Decision::ReportOnly(r) => {
            tracing::warn!(route = %g.route.name, reason = r.label(), "report-only: this tunnel would have been closed");
            None
        }
    }
}

/// Time from now until epoch second `t` (at least a millisecond, so a loop never spins).
fn until(t: i64) -> Duration {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    at.duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(Duration::from_millis(1))
}

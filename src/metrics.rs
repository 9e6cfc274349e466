//! Prometheus metrics: stable names, low-cardinality labels, one registry per proxy instance.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::keys::KeySets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Shared with the route's [`RouteMetrics`]: labelling a request allocates nothing.
    pub route: Arc<String>,
    pub status: u16,
    /// `allow`, `deny`, `report_only` or `none` (no auth on the route / no route).
    pub decision: &'static str,
    pub reason: &'static str,
    /// The listener role that answered: `proxy` or `authz` (a gateway's authorization check).
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteRoleLabels {
    pub route: Arc<String>,
    /// `proxy` or `authz`.
    pub role: &'static str,
}

/// The metric handles of one route (or of "no route"), looked up once per configuration snapshot
/// instead of once per request.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    pub route: Arc<String>,
    /// The request counters of this route used so far, by status, decision, reason and role.
    pub requests: Arc<CounterCache<(u16, &'static str, &'static str, &'static str)>>,
    /// Proxy listeners: request head to response head.
    pub request_duration: Histogram,
    /// Authorization listeners: check request to answer (same family, `role="authz"`).
    pub check_duration: Histogram,
    pub upstream_duration: Histogram,
}

impl RouteMetrics {
    /// Handles registered in `m` under `route`; the `role="authz"` series only when `authz`
    /// (the configuration has an authorization listener).
    pub fn new(m: &Metrics, route: &str, authz: bool) -> RouteMetrics {
        let route = Arc::new(route.to_string());
        let by_role = |role| RouteRoleLabels {
            route: route.clone(),
            role,
        };
        // One statement per handle: `get_or_create` returns a read guard of its family, which a
        // second call on the same family (write lock) would wait for while it lives.
        let request_duration = m.request_duration.get_or_create(&by_role("proxy")).clone();
        let check_duration = match authz {
            true => m.request_duration.get_or_create(&by_role("authz")).clone(),
            false => latency(),
        };
        let upstream_duration = m
            .upstream_duration
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .clone();
        RouteMetrics {
            request_duration,
            check_duration,
            upstream_duration,
            route,
            requests: Arc::default(),
        }
    }

    /// Handles that no registry exports (routers built outside a running proxy).
    pub fn detached(route: &str) -> RouteMetrics {
        RouteMetrics {
            route: Arc::new(route.to_string()),
            request_duration: latency(),
            check_duration: latency(),
            upstream_duration: latency(),
            requests: Arc::default(),
        }
    }

    /// Counts one request of this route in `family` (the proxy's `requests`).
    pub fn count_request(
        &self,
        family: &Family<RequestLabels, Counter>,
        status: u16,
        decision: &'static str,
        reason: &'static str,
        role: &'static str,
    ) {
        self.requests
            .inc(family, (status, decision, reason, role), || RequestLabels {
                route: self.route.clone(),
                status,
                decision,
                reason,
                role,
            });
    }
}

/// The counters of one family already looked up, by a key that is cheap to compare (static
/// strings, numbers): a request finds its series by scanning a few entries under a read lock
/// instead of hashing its whole label set (SipHash, strings included) into the family. Holds the
/// first [`CounterCache::MAX`] label sets used; the rest go to the family every time. Series are
/// still created in the family on first use, as before: the exposition is the same.
///
/// Keys compare their strings by address ([`CacheKey`]): the labels are literals, so a request
/// compares a few words instead of calling `memcmp` per label. Two equal literals at different
/// addresses only take two entries, both holding the family's one counter.
#[derive(Debug)]
pub struct CounterCache<K> {
    entries: std::sync::RwLock<Vec<(K, Counter)>>,
}

impl<K> Default for CounterCache<K> {
    fn default() -> Self {
        CounterCache {
            entries: std::sync::RwLock::new(Vec::new()),
        }
    }
}

/// A [`CounterCache`] key: `same` is equality with static strings compared by address.
pub trait CacheKey: Copy {
    fn same(&self, other: &Self) -> bool;
}

/// The same static string: same address and length (never a byte comparison).
fn same_str(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

impl CacheKey for (&'static str, &'static str) {
    fn same(&self, o: &Self) -> bool {
        same_str(self.0, o.0) && same_str(self.1, o.1)
    }
}

impl CacheKey for (&'static str, &'static str, &'static str) {
    fn same(&self, o: &Self) -> bool {
        same_str(self.0, o.0) && same_str(self.1, o.1) && same_str(self.2, o.2)
    }
}

impl CacheKey for (u16, &'static str, &'static str, &'static str) {
    fn same(&self, o: &Self) -> bool {
        self.0 == o.0 && same_str(self.1, o.1) && same_str(self.2, o.2) && same_str(self.3, o.3)
    }
}

impl<K: CacheKey> CounterCache<K> {
    pub const MAX: usize = 32;

    /// Increments the counter of `key` in `family` (labels built by `labels` on a miss). A cache
    /// serves one family only.
    pub fn inc<S>(&self, family: &Family<S, Counter>, key: K, labels: impl FnOnce() -> S)
    where
        S: Clone + std::hash::Hash + Eq,
    {
        if let Ok(entries) = self.entries.read() {
            if let Some((_, c)) = entries.iter().find(|(k, _)| k.same(&key)) {
                c.inc();
                return;
            }
        }
        // One statement: the family's read guard must be gone before the write lock below.
        let counter = family.get_or_create(&labels()).clone();
        counter.inc();
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() < Self::MAX && !entries.iter().any(|(k, _)| k.same(&key)) {
                entries.push((key, counter));
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
    pub reason: &'static str,
}

/// A sender-constraint check: how the token was held to its sender (`dpop`, `certificate`,
/// `none`), `ok` or `refused`, and the refusal's cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderLabels {
    pub method: &'static str,
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SetLabels {
    pub transmitter: String,
    pub event: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransmitterLabel {
    pub transmitter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransmitterResultLabels {
    pub transmitter: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamStatusLabels {
    pub transmitter: String,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub result: &'static str,
}

/// Fleet mode (`[store] backend = "redis"`) metrics; cheap clones sharing the registered series.
#[derive(Clone, Debug)]
pub struct FleetMetrics {
    /// Redis failures by operation (`append`, `connect`, `read`, `lease`, `trim`, `decode`).
    pub redis_errors: Family<OpLabel, Counter>,
    /// Commits through the fleet log by result (`appended`, `duplicate`, `failed`).
    pub commits: Family<OutcomeLabel, Counter>,
    /// Fleet-log entries applied by this replica (its own included).
    pub applied: Counter,
    /// Entry time (in the log) to applied here, per entry.
    pub replication_delay: Histogram,
    /// Now minus the entry time of the last applied entry (refreshed at least every second).
    pub last_applied_age: Gauge<f64, AtomicU64>,
    /// 1 once the retained log was replayed since start.
    pub caught_up: Gauge<i64, AtomicI64>,
    /// 1 while this replica holds the poll lease of a transmitter.
    pub poll_lease_held: Family<TransmitterLabel, Gauge<i64, AtomicI64>>,
    /// Age of the oldest fleet-log entry that may not be applied here yet (0 while following
    /// the log's end); set at scrape time.
    pub lag: Gauge<f64, AtomicU64>,
    /// 1 while a change would be acknowledged (the last commit or heartbeat went through,
    /// replicas included with `min_replicas_acked`).
    pub writable: Gauge<i64, AtomicI64>,
    /// 1 for Redis's persistence (`state`: `aof_always`, `aof_everysec`, `aof_no`, `no_aof`,
    /// `unknown`) as read from its primary.
    pub persistence: Family<StateLabel, Gauge<i64, AtomicI64>>,
    /// Replicas whose heartbeat Redis got within the last few seconds (this one included).
    pub replicas_live: Gauge<i64, AtomicI64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

impl Default for FleetMetrics {
    fn default() -> Self {
        FleetMetrics {
            redis_errors: Family::default(),
            commits: Family::default(),
            applied: Counter::default(),
            replication_delay: latency(),
            last_applied_age: Gauge::default(),
            caught_up: Gauge::default(),
            poll_lease_held: Family::default(),
            lag: Gauge::default(),
            writable: Gauge::default(),
            persistence: Family::default(),
            replicas_live: Gauge::default(),
        }
    }
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn lag() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 20))
}

/// Every metric the proxy exports.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteRoleLabels, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub token_validations: Family<ResultLabels, Counter>,
    pub token_cache_hits: Counter,
    pub token_cache_misses: Counter,
    pub sender_checks: Family<SenderLabels, Counter>,
    /// `token_validations` by result and reason, looked up once.
    pub token_validations_by: CounterCache<(&'static str, &'static str)>,
    /// `sender_checks` by method, result and reason, looked up once.
    pub sender_checks_by: CounterCache<(&'static str, &'static str, &'static str)>,
    pub table_entries: Family<TableLabel, Gauge<i64, AtomicI64>>,
    pub sets_received: Family<SetLabels, Counter>,
    pub set_enforce_latency: Family<TransmitterLabel, Histogram, fn() -> Histogram>,
    pub set_event_lag: Family<TransmitterLabel, Histogram, fn() -> Histogram>,
    pub reloads: Family<ResultLabels, Counter>,
    pub config_generation: Gauge<i64, AtomicI64>,
    pub store_write_duration: Histogram,
    pub upstream_errors: Family<KindLabel, Counter>,
    pub open_connections: Family<ListenerLabel, Gauge<i64, AtomicI64>>,
    /// Management tokens dropped and fetched again because a transmitter answered 401.
    pub management_token_refetches: Family<TransmitterLabel, Counter>,
    /// Table entries enforced here whose durable write failed (fail closed, not acknowledged).
    pub local_only_entries: Gauge<i64, AtomicI64>,
    /// Upgraded connections (WebSocket tunnels) open now.
    pub tunnels_open: Gauge<i64, AtomicI64>,
    /// Tunnels closed, by reason: `closed` (a side ended), `error`, `token_expired`, or the
    /// refusal (`revoked`, `account_blocked`, `ip_not_allowed`, …) that ended a tunnel.
    pub tunnels_closed: Family<ReasonLabel, Counter>,
    /// RFC 8936 polls by transmitter and result (`ok` or the failure).
    pub polls: Family<PollLabels, Counter>,
    /// Push requests refused before their SET was read: transmitter authentication failed.
    pub push_auth_failures: Family<TransmitterReasonLabels, Counter>,
    /// Unix time of the last SET received per transmitter (any result).
    pub set_last_received: Family<TransmitterLabel, Gauge<f64, AtomicU64>>,
    /// 1 for the status a managed SSF stream has now (set at scrape time).
    pub stream_status: Family<StreamStatusLabels, Gauge<i64, AtomicI64>>,
    /// Outcomes of the verifications this receiver asked for.
    pub stream_verifications: Family<TransmitterResultLabels, Counter>,
    /// Unix time of the last accepted verification event (set at scrape time).
    pub stream_last_verified: Family<TransmitterLabel, Gauge<i64, AtomicI64>>,
    pub fleet: FleetMetrics,
    /// Held by a scrape while it refreshes the scrape-time gauges and encodes.
    pub scrape: std::sync::Mutex<()>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub transmitter: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransmitterReasonLabels {
    pub transmitter: String,
    pub reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&KeySets::default())
    }
}

impl Metrics {
    /// `key_sets`: exported at scrape time (fetch and failure counters, key age per name).
    pub fn new(key_sets: &KeySets) -> Metrics {
        let mut r = Registry::with_prefix("cae");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            upstream_duration: Family::new_with_constructor(latency),
            token_validations: Family::default(),
            token_cache_hits: Counter::default(),
            token_cache_misses: Counter::default(),
            sender_checks: Family::default(),
            token_validations_by: CounterCache::default(),
            sender_checks_by: CounterCache::default(),
            table_entries: Family::default(),
            sets_received: Family::default(),
            set_enforce_latency: Family::new_with_constructor(latency),
            set_event_lag: Family::new_with_constructor(lag),
            reloads: Family::default(),
            config_generation: Gauge::default(),
            store_write_duration: latency(),
            upstream_errors: Family::default(),
            open_connections: Family::default(),
            management_token_refetches: Family::default(),
            local_only_entries: Gauge::default(),
            tunnels_open: Gauge::default(),
            tunnels_closed: Family::default(),
            polls: Family::default(),
            push_auth_failures: Family::default(),
            set_last_received: Family::default(),
            stream_status: Family::default(),
            stream_verifications: Family::default(),
            stream_last_verified: Family::default(),
            fleet: FleetMetrics::default(),
            scrape: std::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        r.register(
            "requests",
            "Requests and authorization checks by route, status, decision, deny reason and listener role",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request head to response head (role=\"authz\": check request to answer)",
            m.request_duration.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time waiting for the upstream response head",
            m.upstream_duration.clone(),
        );
        r.register(
            "token_validations",
            "Token validations by result and reason",
            m.token_validations.clone(),
        );
        r.register(
            "token_cache_hits",
            "Verified-token cache hits",
            m.token_cache_hits.clone(),
        );
        r.register(
            "token_cache_misses",
            "Verified-token cache misses",
            m.token_cache_misses.clone(),
        );
        r.register(
            "sender_checks",
            "Sender-constraint checks (DPoP proof, client certificate) of valid tokens by method, result and reason",
            m.sender_checks.clone(),
        );
        r.register_collector(Box::new(key_sets.clone()));
        r.register(
            "table_entries",
            "Entries in the revocation, block and binding tables",
            m.table_entries.clone(),
        );
        r.register(
            "sets_received",
            "Security event tokens received by transmitter, event type and result",
            m.sets_received.clone(),
        );
        r.register(
            "set_enforce_latency_seconds",
            "SET arrival to enforceable (durable and applied)",
            m.set_enforce_latency.clone(),
        );
        r.register(
            "set_event_lag_seconds",
            "SET event_timestamp to enforceable",
            m.set_event_lag.clone(),
        );
        r.register(
            "reloads",
            "Configuration reloads by result",
            m.reloads.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the configuration in use",
            m.config_generation.clone(),
        );
        r.register(
            "store_write_duration_seconds",
            "Durable store commit latency",
            m.store_write_duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Upstream failures by kind",
            m.upstream_errors.clone(),
        );
        r.register(
            "open_connections",
            "Open client connections per listener",
            m.open_connections.clone(),
        );
        r.register(
            "management_token_refetches",
            "Stream management tokens dropped and fetched again because the transmitter answered 401",
            m.management_token_refetches.clone(),
        );
        r.register(
            "store_local_only_entries",
            "Table entries enforced on this replica only: the durable write failed (not acknowledged; gone at restart unless redelivered)",
            m.local_only_entries.clone(),
        );
        r.register(
            "tunnels_open",
            "Upgraded connections (WebSocket tunnels) open now",
            m.tunnels_open.clone(),
        );
        r.register(
            "tunnels_closed",
            "Tunnels closed by reason: closed, error, token_expired, or the refusal that ended them",
            m.tunnels_closed.clone(),
        );
        r.register(
            "polls",
            "RFC 8936 polls by transmitter and result: ok (answered, or a long poll that ended with nothing), or the failure",
            m.polls.clone(),
        );
        r.register(
            "push_auth_failures",
            "Push requests refused because the transmitter was not authenticated, by reason",
            m.push_auth_failures.clone(),
        );
        r.register(
            "set_last_received_timestamp_seconds",
            "Unix time of the last SET received from a transmitter (any result)",
            m.set_last_received.clone(),
        );
        r.register(
            "stream_status",
            "1 for the status (enabled, paused, disabled) a managed SSF stream has now, as the transmitter reports or announces it",
            m.stream_status.clone(),
        );
        r.register(
            "stream_verifications",
            "Verifications asked of a transmitter by outcome: verified, missing (no event within verify_timeout), failed (request refused)",
            m.stream_verifications.clone(),
        );
        r.register(
            "stream_last_verified_timestamp_seconds",
            "Unix time of the last verification event accepted for a managed SSF stream",
            m.stream_last_verified.clone(),
        );
        let f = &m.fleet;
        r.register(
            "fleet_redis_errors",
            "Fleet mode: Redis failures by operation",
            f.redis_errors.clone(),
        );
        r.register(
            "fleet_commits",
            "Fleet mode: changes offered to the fleet log by result",
            f.commits.clone(),
        );
        r.register(
            "fleet_applied_entries",
            "Fleet mode: fleet-log entries applied by this replica",
            f.applied.clone(),
        );
        r.register(
            "fleet_replication_delay_seconds",
            "Fleet mode: time from an entry's append to its application here",
            f.replication_delay.clone(),
        );
        r.register(
            "fleet_last_applied_age_seconds",
            "Fleet mode: age of the last fleet-log entry applied here",
            f.last_applied_age.clone(),
        );
        r.register(
            "fleet_caught_up",
            "Fleet mode: 1 once the retained fleet log was replayed since start",
            f.caught_up.clone(),
        );
        r.register(
            "fleet_poll_lease_held",
            "Fleet mode: 1 while this replica holds a transmitter's poll lease",
            f.poll_lease_held.clone(),
        );
        r.register(
            "fleet_lag_seconds",
            "Fleet mode: age of the oldest fleet-log entry that may not be applied here yet (0 while following the log's end)",
            f.lag.clone(),
        );
        r.register(
            "fleet_writable",
            "Fleet mode: 1 while changes can be acknowledged (Redis takes writes, with the replicas store.min_replicas_acked asks for)",
            f.writable.clone(),
        );
        r.register(
            "fleet_redis_persistence",
            "Fleet mode: 1 for the persistence Redis reports (aof_always keeps every acknowledged change across a crash; the others may lose some; unknown: CONFIG refused)",
            f.persistence.clone(),
        );
        r.register(
            "fleet_replicas_live",
            "Fleet mode: replicas whose heartbeat reached Redis within the last 5 s",
            f.replicas_live.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text exposition (what Prometheus asks for first).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The classic Prometheus text format 0.0.4, for scrapers and tools (`promtool check
    /// metrics`, older Prometheus, most agents) that do not ask for OpenMetrics.
    pub fn encode_prometheus(&self) -> String {
        openmetrics_to_prometheus(&self.encode())
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4. The two differ, for the metric types used
/// here, only in that a counter family is named with its `_total` suffix and that there is no
/// `# EOF` (nor `# UNIT`) line. `# HELP` precedes `# TYPE` in both.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut help: Option<&str> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = match kind {
                "counter" if !name.ends_with("_total") => format!("{name}_total"),
                _ => name.to_string(),
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map(|(_, t)| t).unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Per key set name: (fetches, failures, newest load time in epoch seconds, 0 = never).
fn key_set_totals(key_sets: &KeySets) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    let mut out = std::collections::BTreeMap::<String, (u64, u64, u64)>::new();
    for ks in key_sets.lock().values() {
        let e = out.entry(ks.name.clone()).or_default();
        e.0 += ks.stats.fetches.load(Ordering::Relaxed);
        e.1 += ks.stats.failures.load(Ordering::Relaxed);
        e.2 = e.2.max(ks.stats.loaded_at.load(Ordering::Relaxed));
    }
    out
}

impl Collector for KeySets {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = key_set_totals(self);
        let now = crate::store::now_secs() as f64;
        let mut fetches = encoder.encode_descriptor(
            "key_fetches",
            "Key set (JWKS) fetches per issuer or transmitter",
            None,
            MetricType::Counter,
        )?;
        for (name, (n, _, _)) in &totals {
            let label = NameLabel { name: name.clone() };
            ConstCounter::new(*n).encode(fetches.encode_family(&label)?)?;
        }
        let mut failures = encoder.encode_descriptor(
            "key_fetch_failures",
            "Failed key set fetches per issuer or transmitter (the last good keys keep serving)",
            None,
            MetricType::Counter,
        )?;
        for (name, (_, n, _)) in &totals {
            let label = NameLabel { name: name.clone() };
            ConstCounter::new(*n).encode(failures.encode_family(&label)?)?;
        }
        let mut age = encoder.encode_descriptor(
            "key_set_age_seconds",
            "Seconds since the keys in use were loaded, per issuer or transmitter",
            None,
            MetricType::Gauge,
        )?;
        for (name, (_, _, at)) in totals.iter().filter(|(_, t)| t.2 > 0) {
            let label = NameLabel { name: name.clone() };
            ConstGauge::new((now - *at as f64).max(0.0)).encode(age.encode_family(&label)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_cache_counts_equal_labels_at_other_addresses_into_one_series() {
        let family: Family<ResultLabels, Counter> = Family::default();
        let cache: CounterCache<(&'static str, &'static str)> = CounterCache::default();
        // Equal text at three addresses: a literal and two leaked copies.
        let texts: [&'static str; 3] = [
            "expired",
            String::from("expired").leak(),
            String::from("expired").leak(),
        ];
        for reason in texts {
            cache.inc(&family, ("invalid", reason), || ResultLabels {
                result: "invalid",
                reason,
            });
        }
        cache.inc(&family, ("valid", ""), || ResultLabels {
            result: "valid",
            reason: "",
        });
        let count = |result, reason| family.get_or_create(&ResultLabels { result, reason }).get();
        assert_eq!(count("invalid", "expired"), 3);
        assert_eq!(count("valid", ""), 1);
    }
}

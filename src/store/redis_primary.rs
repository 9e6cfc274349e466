//! Which Redis server takes the fleet's writes: `redis_url`'s server, the primary the sentinels
//! name (Sentinel), or the node serving the fleet's hash slot (Redis Cluster: every key of a
//! fleet is hash-tagged with its prefix, so one node holds them all). Found again after the node
//! failed or answered that it is not (or no longer) the one.
//!
//! The redis crate's own Sentinel client is not used: its discovery connections have no connect
//! or read timeout, so one unreachable sentinel would hold a commit for the operating system's
//! TCP timeout. Here every step shares one deadline (`store.redis_timeout`).
//!
//! Locks: `current` (a `Mutex<Option<Arc<Node>>>`) is held to read or replace the node only;
//! `resolving` serialises discoveries (one at a time; the others then use its result) and is
//! held across the blocking discovery, never on the request path (commits run on the blocking
//! pool, async callers go through `spawn_blocking`).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisError};

use crate::config::{RedisTopology, Secret};

/// A Redis server believed to be the fleet's primary.
pub struct Node {
    pub client: redis::Client,
    /// `host:port`, for logs and the admin view (never credentials).
    pub addr: String,
    /// Bumped by every discovery: connections of an older node are not reused.
    pub generation: u64,
}

/// Finds the fleet's primary and remembers it until told it failed.
pub struct Primary {
    topology: RedisTopology,
    /// `redis_url`, parsed (it may hold a password: never printed).
    url: url::Url,
    tls: Option<redis::TlsCertificates>,
    timeout: Duration,
    /// A key of the fleet (`CLUSTER KEYSLOT` finds the fleet's slot from it).
    slot_key: String,
    current: Mutex<Option<Arc<Node>>>,
    resolving: Mutex<()>,
    generation: AtomicU64,
    /// Index of the sentinel or seed that answered last (asked first next time).
    last_good: AtomicUsize,
}

/// True when `e` says the node may not be the primary any more (it failed, timed out, is
/// loading, or answered that it is a replica or does not serve the slot): discover it again.
pub fn wrong_node(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            Some(
                "READONLY"
                    | "MOVED"
                    | "ASK"
                    | "MASTERDOWN"
                    | "CLUSTERDOWN"
                    | "LOADING"
                    | "TRYAGAIN"
            )
        )
}

fn no_primary(detail: String) -> RedisError {
    RedisError::from((
        ErrorKind::MasterNameNotFoundBySentinel,
        "no primary",
        detail,
    ))
}

/// The parts of a Redis error that are safe to log (no URL, no credentials).
fn brief(e: &RedisError) -> String {
    super::redis_store::describe(e)
}

impl Primary {
    /// `url` and `tls` as in the configuration. No connection is made here.
    pub fn new(
        url: &Secret,
        tls: Option<redis::TlsCertificates>,
        topology: RedisTopology,
        timeout: Duration,
        slot_key: String,
    ) -> Result<Primary, String> {
        let url = url::Url::parse(url.expose())
            .map_err(|_| "invalid Redis URL (value not shown)".to_string())?;
        let p = Primary {
            topology,
            url,
            tls,
            timeout,
            slot_key,
            current: Mutex::new(None),
            resolving: Mutex::new(()),
            generation: AtomicU64::new(0),
            last_good: AtomicUsize::new(0),
        };
        if p.topology == RedisTopology::Standalone {
            let client = p.client_for_url(p.url.as_str())?;
            let addr = host_port_of(&p.url);
            *p.lock() = Some(Arc::new(Node {
                client,
                addr,
                generation: 0,
            }));
        }
        Ok(p)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Node>>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `standalone`, `sentinel` or `cluster`.
    pub fn mode(&self) -> &'static str {
        match self.topology {
            RedisTopology::Standalone => "standalone",
            RedisTopology::Sentinel { .. } => "sentinel",
            RedisTopology::Cluster { .. } => "cluster",
        }
    }

    /// The node in use, if one is known (no discovery).
    pub fn known(&self) -> Option<Arc<Node>> {
        self.lock().clone()
    }

    /// Blocking: the primary, discovered first if none is known (bounded by the timeout).
    pub fn node(&self) -> Result<Arc<Node>, RedisError> {
        if let Some(n) = self.known() {
            return Ok(n);
        }
        let _one = self.resolving.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have found it while this one waited.
        if let Some(n) = self.known() {
            return Ok(n);
        }
        let (client, addr) = match &self.topology {
            RedisTopology::Standalone => {
                return Err(no_primary("no Redis client".into()));
            }
            RedisTopology::Sentinel {
                sentinels,
                master,
                password,
            } => self.ask_sentinels(sentinels, master, password.as_ref())?,
            RedisTopology::Cluster { nodes } => self.ask_cluster(nodes)?,
        };
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let node = Arc::new(Node {
            client,
            addr,
            generation,
        });
        tracing::info!(mode = self.mode(), primary = %node.addr, "Redis primary found");
        *self.lock() = Some(node.clone());
        Ok(node)
    }

    /// Async callers: [`Primary::node`] on the blocking pool when a discovery is needed.
    pub async fn node_async(self: &Arc<Self>) -> Result<Arc<Node>, RedisError> {
        if let Some(n) = self.known() {
            return Ok(n);
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.node())
            .await
            .map_err(|e| no_primary(format!("discovery task failed: {e}")))?
    }

    /// The node of `generation` failed in a way that says it may not be the primary: the next
    /// caller discovers it again (Sentinel, Cluster; a fixed URL stays).
    pub fn forget(&self, generation: u64) {
        if self.topology == RedisTopology::Standalone {
            return;
        }
        let mut cur = self.lock();
        if cur.as_ref().is_some_and(|n| n.generation == generation) {
            *cur = None;
        }
    }

    /// A client of `host:port` with `redis_url`'s scheme, credentials and database.
    fn client_at(&self, host: &str, port: u16) -> Result<redis::Client, RedisError> {
        let mut u = self.url.clone();
        let h = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        u.set_host(Some(&h))
            .and_then(|_| {
                u.set_port(Some(port))
                    .map_err(|_| url::ParseError::InvalidPort)
            })
            .map_err(|_| no_primary(format!("unusable address {host}:{port}")))?;
        self.client_for_url(u.as_str())
            .map_err(|e| no_primary(format!("{host}:{port}: {e}")))
    }

    fn client_for_url(&self, url: &str) -> Result<redis::Client, String> {
        match &self.tls {
            None => redis::Client::open(url),
            Some(t) => redis::Client::build_with_tls(url, t.clone()),
        }
        // The error may quote the URL; keep only its kind.
        .map_err(|e| format!("invalid Redis URL or TLS settings ({:?})", e.kind()))
    }

    /// A blocking connection with every step bounded by `deadline`.
    fn connect_until(
        client: &redis::Client,
        deadline: Instant,
    ) -> Result<redis::Connection, RedisError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RedisError::from((
                ErrorKind::Io,
                "timed out",
                "discovery deadline passed".to_string(),
            )));
        }
        let c = client.get_connection_with_timeout(left)?;
        c.set_read_timeout(Some(left))?;
        c.set_write_timeout(Some(left))?;
        Ok(c)
    }

    /// Whether the server says it is a primary (`ROLE`).
    fn is_primary(c: &mut redis::Connection) -> Result<bool, RedisError> {
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(c)?;
        let first: Option<String> = role
            .into_iter()
            .next()
            .and_then(|v| redis::from_redis_value(v).ok());
        Ok(first.as_deref() == Some("master"))
    }

    /// The order to ask `n` servers in: the last one that answered first.
    fn order(&self, n: usize) -> impl Iterator<Item = usize> {
        let start = self.last_good.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(move |i| (start + i) % n)
    }

    /// Sentinel client protocol (redis.io, "Sentinel client spec"): ask each sentinel in turn
    /// for the primary's address (`SENTINEL GET-MASTER-ADDR-BY-NAME`), then confirm with `ROLE`
    /// on that server that it is a primary (a sentinel may not have seen a failover yet).
    fn ask_sentinels(
        &self,
        sentinels: &[(String, u16)],
        master: &str,
        password: Option<&Secret>,
    ) -> Result<(redis::Client, String), RedisError> {
        let deadline = Instant::now() + self.timeout;
        let scheme = self.url.scheme();
        let mut why = Vec::new();
        for i in self.order(sentinels.len()) {
            let (host, port) = &sentinels[i];
            let h = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let mut u = url::Url::parse(&format!("{scheme}://{h}:{port}"))
                .map_err(|_| no_primary(format!("unusable sentinel address {host}:{port}")))?;
            if let Some(p) = password {
                let _ = u.set_password(Some(p.expose()));
            }
            let asked = self
                .client_for_url(u.as_str())
                .map_err(no_primary)
                .and_then(|client| {
                    let mut c = Self::connect_until(&client, deadline)?;
                    redis::cmd("SENTINEL")
                        .arg("GET-MASTER-ADDR-BY-NAME")
                        .arg(master)
                        .query::<Option<(String, u16)>>(&mut c)
                });
            let (ip, p) = match asked {
                Ok(Some(a)) => a,
                Ok(None) => {
                    why.push(format!(
                        "sentinel {host}:{port} does not monitor {master:?}"
                    ));
                    continue;
                }
                Err(e) => {
                    why.push(format!("sentinel {host}:{port}: {}", brief(&e)));
                    continue;
                }
            };
            let named = format!("sentinel {host}:{port} names {ip}:{p}");
            match self.confirm(i, &ip, p, deadline, &named)? {
                Ok(found) => return Ok(found),
                Err(reason) => why.push(reason),
            }
        }
        Err(no_primary(format!(
            "no sentinel named a reachable primary for {master:?}: {}",
            why.join("; ")
        )))
    }

    /// Whether the server at `ip:p`, which candidate `i` named (`named` says who and how), is a
    /// primary: its client and address (remembering `i` as the last good candidate), or why not.
    fn confirm(
        &self,
        i: usize,
        ip: &str,
        p: u16,
        deadline: Instant,
        named: &str,
    ) -> Result<Result<(redis::Client, String), String>, RedisError> {
        let client = self.client_at(ip, p)?;
        Ok(
            match Self::connect_until(&client, deadline).and_then(|mut c| Self::is_primary(&mut c))
            {
                Ok(true) => {
                    self.last_good.store(i, Ordering::Relaxed);
                    Ok((client, format!("{ip}:{p}")))
                }
                Ok(false) => Err(format!(
                    "{named}, which is not a primary (a failover or a slot migration in progress)"
                )),
                Err(e) => Err(format!("{named}: {}", brief(&e))),
            },
        )
    }

    /// Redis Cluster: the fleet's slot (`CLUSTER KEYSLOT` of a fleet key) and the primary that
    /// serves it (`CLUSTER SLOTS`), asked of each seed in turn.
    fn ask_cluster(&self, seeds: &[(String, u16)]) -> Result<(redis::Client, String), RedisError> {
        let deadline = Instant::now() + self.timeout;
        let mut why = Vec::new();
        for i in self.order(seeds.len()) {
            let (host, port) = &seeds[i];
            let found = self.client_at(host, *port).and_then(|client| {
                let mut c = Self::connect_until(&client, deadline)?;
                let slot: i64 = redis::cmd("CLUSTER")
                    .arg("KEYSLOT")
                    .arg(&self.slot_key)
                    .query(&mut c)?;
                let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c)?;
                Ok(slot_owner(slots, slot))
            });
            let (ip, p) = match found {
                Ok(Some((ip, p))) => {
                    // An empty or "?" endpoint: the node answering on the seed's address.
                    let ip = if ip.is_empty() || ip == "?" {
                        host.clone()
                    } else {
                        ip
                    };
                    (ip, p)
                }
                Ok(None) => {
                    why.push(format!(
                        "node {host}:{port}: no node serves the fleet's slot"
                    ));
                    continue;
                }
                Err(e) => {
                    why.push(format!("node {host}:{port}: {}", brief(&e)));
                    continue;
                }
            };
            let named = format!("node {host}:{port} names {ip}:{p} for the fleet's slot");
            match self.confirm(i, &ip, p, deadline, &named)? {
                Ok(found) => return Ok(found),
                Err(reason) => why.push(reason),
            }
        }
        Err(RedisError::from((
            ErrorKind::ClusterConnectionNotFound,
            "no primary",
            format!(
                "no cluster node named a reachable primary for the fleet's slot: {}",
                why.join("; ")
            ),
        )))
    }
}

/// The primary `(ip, port)` of the `CLUSTER SLOTS` range holding `slot`.
fn slot_owner(slots: redis::Value, slot: i64) -> Option<(String, u16)> {
    let redis::Value::Array(ranges) = slots else {
        return None;
    };
    for r in ranges {
        let redis::Value::Array(r) = r else {
            continue;
        };
        let mut it = r.into_iter();
        let (Some(start), Some(end), Some(primary)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let start: i64 = redis::from_redis_value(start).ok()?;
        let end: i64 = redis::from_redis_value(end).ok()?;
        if !(start..=end).contains(&slot) {
            continue;
        }
        let redis::Value::Array(p) = primary else {
            return None;
        };
        let mut p = p.into_iter();
        let ip: String = redis::from_redis_value(p.next()?).ok()?;
        let port: u16 = redis::from_redis_value(p.next()?).ok()?;
        return Some((ip, port));
    }
    None
}

/// `host:port` of a URL (no credentials).
fn host_port_of(u: &url::Url) -> String {
    format!(
        "{}:{}",
        u.host_str().unwrap_or("?"),
        u.port()
            .unwrap_or(if u.scheme() == "rediss" { 6380 } else { 6379 })
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_range_holding_the_slot_names_its_primary() {
        let slots = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7000), bulk("id1")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7001), bulk("id2")]),
                Value::Array(vec![bulk("10.0.0.3"), Value::Int(7002), bulk("id3")]),
            ]),
        ]);
        assert_eq!(
            slot_owner(slots.clone(), 12),
            Some(("10.0.0.1".into(), 7000))
        );
        assert_eq!(slot_owner(slots.clone(), 9000), Some(("".into(), 7001)));
        assert_eq!(slot_owner(Value::Array(vec![]), 9000), None);
        assert_eq!(slot_owner(Value::Nil, 1), None);
    }

    #[test]
    fn errors_that_call_for_a_new_discovery() {
        let readonly = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "READONLY",
            "You can't write against a read only replica.".to_string(),
        ));
        assert!(wrong_node(&readonly));
        let moved = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::Moved),
            "MOVED",
            "3999 127.0.0.1:6381".to_string(),
        ));
        assert!(wrong_node(&moved));
        let script = RedisError::from((
            ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "ERR",
            "bad".to_string(),
        ));
        assert!(!wrong_node(&script));
    }
}

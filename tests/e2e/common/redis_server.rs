//! A private `redis-server` per test (fleet mode tests): a loopback port reserved for it, files in
//! its own temp dir, optional AOF with an fsync per write, optional TLS with client certificates,
//! more settings on its command line (a replica, a renamed command, another bind address); and
//! Redis Sentinels (`redis-server <file> --sentinel`) watching such servers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{certs, poll_until_blocking, Certs, ReservedPort};

/// A `redis-server` of this test, on a loopback port reserved for it, its files in `dir`; with
/// `tls`, it listens only on a TLS port and requires client certificates of the test CA.
///
/// `redis-server` cannot be handed a listening socket, and a restart must come back on the same
/// port (the replicas' `redis_url` names it). So the port is reserved for the server's whole life
/// ([`ReservedPort`]: bound without listening, `SO_REUSEADDR`, which `redis-server` sets too): no
/// port-0 bind anywhere takes it while the test holds it, before the first start or between a
/// stop and a restart.
pub struct Redis {
    child: Option<Child>,
    port: ReservedPort,
    dir: PathBuf,
    appendonly: bool,
    pub tls: Option<Certs>,
    /// More `redis-server` arguments, given at every (re)start.
    pub args: Vec<String>,
    /// A cluster node's bus port, held like `port`.
    bus: Option<ReservedPort>,
    _tmp: tempfile::TempDir,
}

impl Redis {
    /// Starts a fresh server; `appendonly`: AOF persistence with an fsync per write.
    pub fn start(appendonly: bool) -> Redis {
        Redis::start_with(appendonly, false)
    }

    /// A fresh server with more command-line settings (`["--replicaof", "127.0.0.1", "6379"]`,
    /// `["--rename-command", "CONFIG", ""]`).
    pub fn start_args(appendonly: bool, args: &[&str]) -> Redis {
        let mut r = Redis::unstarted(appendonly, false);
        r.args = args.iter().map(|a| a.to_string()).collect();
        r.spawn();
        r
    }

    /// `tls`: certificates made in the server's temp dir (CA, server, two clients).
    pub fn start_with(appendonly: bool, tls: bool) -> Redis {
        let mut r = Redis::unstarted(appendonly, tls);
        r.spawn();
        r
    }

    fn unstarted(appendonly: bool, tls: bool) -> Redis {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let tls = tls.then(|| {
            let d = dir.join("certs");
            std::fs::create_dir(&d).unwrap();
            certs(&d)
        });
        Redis {
            child: None,
            port: ReservedPort::new(),
            dir,
            appendonly,
            tls,
            args: Vec::new(),
            bus: None,
            _tmp: tmp,
        }
    }

    /// A Redis Cluster node (not in a cluster yet: see [`create_cluster`]); its bus port is
    /// reserved too.
    pub fn start_cluster_node() -> Redis {
        let mut r = Redis::unstarted(false, false);
        let bus = ReservedPort::new();
        r.args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &bus.port().to_string(),
            "--cluster-node-timeout",
            "2000",
        ]
        .map(String::from)
        .to_vec();
        r.bus = Some(bus);
        r.spawn();
        r
    }

    /// `CLUSTER MYID`.
    pub fn node_id(&self) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.conn())
            .unwrap()
    }

    pub fn port(&self) -> u16 {
        self.port.port()
    }

    pub fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        let port = self.port.port().to_string();
        match &self.tls {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(c) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .args(["--tls-cert-file", &c.cert.display().to_string()])
                    .args(["--tls-key-file", &c.key.display().to_string()])
                    .args(["--tls-ca-cert-file", &c.ca.display().to_string()])
                    .args(["--tls-auth-clients", "yes"]);
            }
        }
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--dir", &self.dir.display().to_string()])
            .args(["--save", ""])
            .args(["--daemonize", "no"]);
        if self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.args);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let client = self.client();
        let pong = poll_until_blocking(Duration::from_secs(10), || {
            let mut c = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .ok()?;
            redis::cmd("PING").query::<String>(&mut c).ok()
        });
        assert!(pong.is_some(), "redis-server did not start");
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://{}", self.port.addr()),
            Some(_) => format!("rediss://{}", self.port.addr()),
        }
    }

    /// A client of this server (with TLS: the test CA and the first client certificate).
    pub fn client(&self) -> redis::Client {
        match &self.tls {
            None => redis::Client::open(self.url()).unwrap(),
            Some(c) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: std::fs::read(&c.client_cert).unwrap(),
                        client_key: std::fs::read(&c.client_key).unwrap(),
                    }),
                    root_cert: Some(std::fs::read(&c.ca).unwrap()),
                },
            )
            .unwrap(),
        }
    }

    /// Whether this server is a replica whose link to its primary is up (`INFO replication`).
    pub fn replicating(&self) -> bool {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut self.conn())
            .unwrap_or_default();
        info.contains("role:slave") && info.contains("master_link_status:up")
    }

    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// SIGTERM (Redis flushes its AOF and exits) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections and port but answers nothing (a hung Redis).
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Redis::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Same port, same directory (so the same AOF).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// SIGKILL: no shutdown, no final AOF rewrite or flush; wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A Redis Sentinel of this test (`redis-server <file> --sentinel`) on a reserved loopback port,
/// watching the primary `master` at `127.0.0.1:<port>`, its configuration file (which Sentinel
/// rewrites) in its own temp dir. Quick to act: a primary is down after 1 s without answers.
pub struct Sentinel {
    child: Option<Child>,
    port: ReservedPort,
    _tmp: tempfile::TempDir,
}

impl Sentinel {
    pub fn start(master: &str, primary_port: u16, quorum: u32) -> Sentinel {
        let tmp = tempfile::tempdir().expect("tempdir");
        let port = ReservedPort::new();
        let conf = tmp.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 10000\n\
                 sentinel parallel-syncs {master} 1\n",
                port = port.port(),
                dir = tmp.path().display(),
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (it runs as a sentinel too)");
        let s = Sentinel {
            child: Some(child),
            port,
            _tmp: tmp,
        };
        let pong = poll_until_blocking(Duration::from_secs(10), || {
            redis::cmd("PING").query::<String>(&mut s.try_conn()?).ok()
        });
        assert!(pong.is_some(), "the sentinel did not start");
        s
    }

    /// `127.0.0.1:<port>`, as `store.redis_sentinels` lists it.
    pub fn addr(&self) -> String {
        self.port.addr().to_string()
    }

    fn try_conn(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(format!("redis://{}", self.addr())).ok()?;
        let c = c
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(c)
    }

    /// The primary's port as this sentinel names it now.
    pub fn primary_port(&self, master: &str) -> Option<u16> {
        let mut c = self.try_conn()?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(master)
            .query::<Option<(String, u16)>>(&mut c)
            .ok()??;
        Some(port)
    }

    /// Whether this sentinel knows enough sentinels to agree on and authorise a failover
    /// (`SENTINEL CKQUORUM`) and knows `replicas` replicas of the primary.
    pub fn ready_for_failover(&self, master: &str, replicas: usize) -> bool {
        let Some(mut c) = self.try_conn() else {
            return false;
        };
        let quorum = redis::cmd("SENTINEL")
            .arg("CKQUORUM")
            .arg(master)
            .query::<String>(&mut c)
            .is_ok();
        let known: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(master)
            .query(&mut c)
            .unwrap_or_default();
        quorum && known.len() >= replicas
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes a cluster of `nodes` (primaries only; `redis-cli --cluster create` spreads the slots)
/// and waits (bounded) until every node says the cluster is ok.
pub fn create_cluster(nodes: &[&Redis]) {
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli is installed (it comes with redis-server)");
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = poll_until_blocking(Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut n.conn())
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            })
            .then_some(())
    });
    assert!(ok.is_some(), "the cluster did not become ok");
}

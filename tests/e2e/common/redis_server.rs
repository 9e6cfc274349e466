//! A private `redis-server` per test (fleet mode tests): a loopback port reserved for it, files in
//! its own temp dir, optional AOF with an fsync per write, optional TLS with client certificates.

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
    _tmp: tempfile::TempDir,
}

impl Redis {
    /// Starts a fresh server; `appendonly`: AOF persistence with an fsync per write.
    pub fn start(appendonly: bool) -> Redis {
        Redis::start_with(appendonly, false)
    }

    /// `tls`: certificates made in the server's temp dir (CA, server, two clients).
    pub fn start_with(appendonly: bool, tls: bool) -> Redis {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let tls = tls.then(|| {
            let d = dir.join("certs");
            std::fs::create_dir(&d).unwrap();
            certs(&d)
        });
        let mut r = Redis {
            child: None,
            port: ReservedPort::new(),
            dir,
            appendonly,
            tls,
            _tmp: tmp,
        };
        r.spawn();
        r
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

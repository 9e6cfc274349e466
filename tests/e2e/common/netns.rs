//! A network namespace of a test (`ip netns add`) joined to this host by two veth pairs: a
//! service link (clients, the upstream) and a Redis link, each a /30 of its own in 10.0.0.0/8.
//! Cutting the Redis link (its host side down) is a partition: packets to Redis vanish, the
//! connections hang until their timeouts, nothing is refused. Everything is removed on drop,
//! also when the test fails.

use std::net::Ipv4Addr;
use std::process::Command;

/// A namespace and its two links.
pub struct Netns {
    pub name: String,
    /// This host's side of the service link, and the namespace's.
    pub service_host: Ipv4Addr,
    pub service_ns: Ipv4Addr,
    /// This host's side of the Redis link (where Redis listens), and the namespace's.
    pub redis_host: Ipv4Addr,
    pub redis_ns: Ipv4Addr,
    service_if: String,
    redis_if: String,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (is iproute2 installed?)", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Makes the namespace and its links, or says why it cannot (not root, no `ip`, no
    /// namespaces in this container).
    pub fn create() -> Result<Netns, String> {
        let tag = format!(
            "{:x}{:03x}",
            std::process::id(),
            rand::random::<u16>() & 0xfff
        );
        // Two free /30s: 10.<a>.<b>.0/30 and 10.<a>.<b>.4/30, not on any interface here.
        let used = ip(&["-4", "-o", "addr", "show"])?;
        let (a, b) = (0..64)
            .map(|_| (200 + rand::random::<u8>() % 50, rand::random::<u8>()))
            .find(|(a, b)| !used.contains(&format!("10.{a}.{b}.")))
            .ok_or("no free 10.x.y.0/29 found")?;
        let addr = |last: u8| Ipv4Addr::new(10, a, b, last);
        let ns = Netns {
            name: format!("cae{tag}"),
            service_host: addr(1),
            service_ns: addr(2),
            redis_host: addr(5),
            redis_ns: addr(6),
            service_if: format!("cae{tag}s"),
            redis_if: format!("cae{tag}r"),
        };
        ip(&["netns", "add", &ns.name])?;
        // From here on, Drop cleans up whatever was made.
        for (host_if, host, inside) in [
            (&ns.service_if, ns.service_host, ns.service_ns),
            (&ns.redis_if, ns.redis_host, ns.redis_ns),
        ] {
            let peer = format!("{host_if}n");
            ip(&[
                "link", "add", host_if, "type", "veth", "peer", "name", &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &ns.name])?;
            ip(&["addr", "add", &format!("{host}/30"), "dev", host_if])?;
            ip(&["link", "set", host_if, "up"])?;
            ns.exec_ip(&["addr", "add", &format!("{inside}/30"), "dev", &peer])?;
            ns.exec_ip(&["link", "set", &peer, "up"])?;
        }
        ns.exec_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The command prefix that runs a program inside the namespace.
    pub fn exec_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .map(String::from)
            .to_vec()
    }

    /// The partition: the Redis link goes down (packets to Redis vanish).
    pub fn cut_redis(&self) {
        ip(&["link", "set", &self.redis_if, "down"]).expect("cut the Redis link");
    }

    /// The partition heals.
    pub fn heal_redis(&self) {
        ip(&["link", "set", &self.redis_if, "up"]).expect("heal the Redis link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the peers inside, and with them the host sides; the
        // explicit deletes cover a half-made setup.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.service_if]);
        let _ = ip(&["link", "del", &self.redis_if]);
    }
}

/// A namespace, or `None` with a message when this machine cannot make one; with
/// `CAE_REQUIRE_NETNS=1` (set by `.ci/run`) that is a failure instead.
pub fn netns_or_skip(test: &str) -> Option<Netns> {
    match Netns::create() {
        Ok(n) => Some(n),
        Err(why) if std::env::var("CAE_REQUIRE_NETNS").as_deref() == Ok("1") => {
            panic!("{test}: network namespaces are required (CAE_REQUIRE_NETNS=1) but cannot be made: {why}")
        }
        Err(why) => {
            eprintln!("{test}: skipped, network namespaces cannot be made here ({why}); it needs root and iproute2 (CAE_REQUIRE_NETNS=1 makes this a failure)");
            None
        }
    }
}

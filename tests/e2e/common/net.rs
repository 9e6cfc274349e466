//! Loopback sockets for the tests: listeners bound on port 0 and passed on, and ports held for a
//! server that must bind them itself.

use std::net::SocketAddr;

/// A loopback listener on a port the kernel picked, to pass to a server.
pub async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// A loopback port held by this test without listening on it: bound with `SO_REUSEADDR`, never
/// `listen`ed. While it is held, connections to it are refused, the kernel gives it to no
/// port-0 bind (of this or another process), and a server that sets `SO_REUSEADDR` itself (the
/// proxy's listeners, `redis-server`) can bind and listen on it, again after a restart. For an
/// address that must be written into a configuration before the server that listens on it
/// starts, and for an address that refuses connections; never "a port that was free a moment
/// ago".
pub struct ReservedPort {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let addr = socket
            .local_addr()
            .expect("local address")
            .as_socket()
            .expect("an IP address");
        ReservedPort {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

//! A bench for the hostile-client tests (`adversarial.rs` here, `tests/process_bounds/`): the
//! proxy with a cleartext listener (HTTP/1.1 and h2c) and a TLS listener (ALPN `h2`) in front of
//! the echo upstream, an `h2` library client, and a raw HTTP/2 frame writer for what a
//! well-behaved client library will not send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cae_proxy::dev::upstream::EchoUpstream;
use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{certs, listener, Certs, Harness, Toml};

pub const MAX_H2_STREAMS: u32 = 8;

/// A cleartext listener (`public`, HTTP/1.1 and h2c) and a TLS listener (`tls`, ALPN `h2` and
/// `http/1.1`) in front of one route to the echo upstream.
pub fn config(up: &str, certs: &Certs) -> String {
    Toml::new()
        .log_level("error")
        .server(&format!(
            "max_header_bytes = 8192\nmax_h2_streams = {MAX_H2_STREAMS}\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\""
        ))
        .public()
        .tls_listener("tls", certs, false, "")
        .upstream(
            "app",
            up,
            "# Pooled upstream connections close soon, so descriptor counts settle within the tests.\nidle_timeout = \"1s\"",
        )
        .route(
            "app",
            "/",
            "hosts = [\"app.test\", \"127.0.0.1\"]\nauth = \"none\"",
        )
        .build()
}

/// How a test reaches the HTTP/2 server: cleartext with prior knowledge, or TLS where ALPN
/// selected `h2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    H2c,
    Tls,
}

impl Transport {
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::H2c => "http",
            Transport::Tls => "https",
        }
    }
}

/// A client connection of either transport.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Conn = Box<dyn Io>;

pub struct Env {
    pub up: EchoUpstream,
    pub h: Harness,
    /// Trusts the test CA; offers only `h2` by ALPN.
    tls: tokio_rustls::TlsConnector,
}

impl Env {
    pub async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let c = certs(dir.path());
        let up = EchoUpstream::start(listener().await).unwrap();
        let h = Harness::start_in(dir, &config(&up.url(), &c)).await;
        let mut roots = rustls::RootCertStore::empty();
        for cert in cae_proxy::tls::load_certs(&c.ca).unwrap() {
            roots.add(cert).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Env {
            up,
            h,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.h.proxy.addr("public").unwrap()
    }

    /// A connection ready for the HTTP/2 preface: plain TCP to the cleartext listener, or a TLS
    /// session with the TLS listener that verified its certificate and negotiated `h2`.
    pub async fn connect(&self, t: Transport) -> Conn {
        match t {
            Transport::H2c => Box::new(TcpStream::connect(self.addr()).await.unwrap()),
            Transport::Tls => {
                let tcp = TcpStream::connect(self.h.proxy.addr("tls").unwrap())
                    .await
                    .unwrap();
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let tls = self.tls.connect(name, tcp).await.unwrap();
                assert_eq!(
                    tls.get_ref().1.alpn_protocol(),
                    Some(&b"h2"[..]),
                    "ALPN did not select h2"
                );
                Box::new(tls)
            }
        }
    }

    /// Upstream requests counted after in-flight ones have landed. The pause is the point: the
    /// tests count what did NOT reach the upstream, which no condition can signal.
    pub async fn upstream_requests(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.up.requests()
    }
}

pub async fn h2_client(env: &Env, t: Transport) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(env.connect(t).await).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

pub async fn h2_get(
    send: h2::client::SendRequest<Bytes>,
    uri: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value), String> {
    let mut send = send.ready().await.map_err(|e| e.to_string())?;
    let mut req = http::Request::builder().uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (resp, _) = send
        .send_request(req.body(()).unwrap(), true)
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Raw HTTP/2 frames, for what a well-behaved client library will not send.
pub struct RawH2 {
    s: Conn,
    scheme: &'static str,
}

pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_HEADERS: u8 = 0x4;

impl RawH2 {
    pub async fn connect(env: &Env, t: Transport) -> RawH2 {
        let mut s = env.connect(t).await;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut r = RawH2 {
            s,
            scheme: t.scheme(),
        };
        r.frame(SETTINGS, 0, 0, &[]).await.unwrap();
        r
    }

    pub async fn frame(
        &mut self,
        ty: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.s.write_all(&f).await?;
        self.s.flush().await
    }

    /// HPACK: literal fields without indexing, new names, no Huffman.
    pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
        fn int(out: &mut Vec<u8>, mut n: usize) {
            if n < 127 {
                out.push(n as u8);
                return;
            }
            out.push(127);
            n -= 127;
            while n >= 128 {
                out.push((n % 128 + 128) as u8);
                n /= 128;
            }
            out.push(n as u8);
        }
        let mut out = Vec::new();
        for (k, v) in fields {
            out.push(0);
            int(&mut out, k.len());
            out.extend_from_slice(k.as_bytes());
            int(&mut out, v.len());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    pub fn request(&self, path: &str) -> Vec<u8> {
        RawH2::block(&[
            (":method", "POST"),
            (":scheme", self.scheme),
            (":authority", "app.test"),
            (":path", path),
        ])
    }

    /// Reads frames until the peer closes or `wait` passes: (type, flags, stream, payload).
    pub async fn read_frames(&mut self, wait: Duration) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
        let mut buf = Vec::new();
        let deadline = Instant::now() + wait;
        let mut closed = false;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        let mut frames = Vec::new();
        let mut i = 0;
        while i + 9 <= buf.len() {
            let len = (usize::from(buf[i]) << 16)
                | (usize::from(buf[i + 1]) << 8)
                | usize::from(buf[i + 2]);
            if i + 9 + len > buf.len() {
                break;
            }
            let stream =
                u32::from_be_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]]) & 0x7fff_ffff;
            frames.push((
                buf[i + 3],
                buf[i + 4],
                stream,
                buf[i + 9..i + 9 + len].to_vec(),
            ));
            i += 9 + len;
        }
        (frames, closed)
    }
}

pub fn goaway_code(frames: &[(u8, u8, u32, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY && f.3.len() >= 8)
        .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
}

/// CANCEL (RFC 9113 §7).
pub const CANCEL: u32 = 0x8;
/// ENHANCE_YOUR_CALM (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

//! The only place that accepts sockets: TLS handshake, HTTP/1.1 + HTTP/2 (auto), connection limit,
//! header-read and idle timeouts, graceful drain on shutdown.

pub mod conn;

use conn::ConnInfo;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::state::Shared;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Proxy,
    Signals,
    /// Authorization checks of gateways (`crate::authz`).
    Authz,
    Admin,
}

/// Accepts connections until shutdown; each connection holds a permit of `conns`.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    role: Role,
    tls_required: bool,
    shared: Arc<Shared>,
    conns: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::warn!(listener = %name, %peer, "connection limit reached; closing the new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (name, shared, shutdown) = (name.clone(), shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(tcp, peer, name, role, tls_required, shared, shutdown).await;
            drop(permit);
        });
    }
    tracing::info!(listener = %name, "stopped accepting");
}

/// Decrements the open-connection gauge when dropped.
struct ConnGuard(Arc<Shared>, Arc<str>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .metrics
            .open_connections
            .get_or_create(&crate::metrics::ListenerLabel {
                listener: self.1.to_string(),
            })
            .dec();
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    name: Arc<str>,
    role: Role,
    tls_required: bool,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    shared
        .metrics
        .open_connections
        .get_or_create(&crate::metrics::ListenerLabel {
            listener: name.to_string(),
        })
        .inc();
    let _guard = ConnGuard(shared.clone(), name.clone());
    let snap = shared.snapshot.load_full();
    let tls = match role {
        Role::Admin => snap.admin_tls.clone(),
        _ => snap.tls.get(&*name).cloned(),
    };
    let limits = snap.config.server.clone();
    drop(snap);
    if tls_required && tls.is_none() {
        // The listener was bound with TLS; a reload that dropped its TLS section must not
        // turn it into plain text (fail closed until a restart rebinds it).
        tracing::error!(listener = %name, %peer, "listener has no TLS configuration any more; refusing the connection");
        return;
    }
    let activity = Arc::new(Activity::new());
    let info = Arc::new(ConnInfo::new(peer, tls.is_some(), name));
    match tls {
        Some(cfg) => {
            let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp);
            match tokio::time::timeout(limits.header_read_timeout, accept).await {
                Ok(Ok(stream)) => {
                    if let Some(leaf) = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                    {
                        info.set_client_cert(leaf);
                    }
                    serve_io(
                        ActivityIo {
                            inner: stream,
                            activity: activity.clone(),
                        },
                        info,
                        role,
                        shared,
                        &limits,
                        shutdown,
                        activity,
                    )
                    .await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        None => {
            serve_io(
                ActivityIo {
                    inner: tcp,
                    activity: activity.clone(),
                },
                info,
                role,
                shared,
                &limits,
                shutdown,
                activity,
            )
            .await
        }
    }
}

async fn serve_io<I>(
    io: I,
    info: Arc<ConnInfo>,
    role: Role,
    shared: Arc<Shared>,
    limits: &crate::config::Server,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Twice the limit: a head just over `max_header_bytes` reaches the service, which answers
        // 431 with a JSON body and the request id; beyond this the HTTP layer's bare 431 answers.
        .max_buf_size(limits.max_header_bytes.saturating_mul(2).max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_h2_streams)
        .max_header_list_size(
            u32::try_from(limits.max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(Some(50))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let act = activity.clone();
    let limits_head = limits.max_header_bytes;
    // The gRPC Check service of an authorization listener, one per connection.
    let grpc = (role == Role::Authz).then(|| crate::authz::grpc::service(&shared, &info));
    let svc = service_fn(move |req| {
        let (shared, info, act, grpc) = (shared.clone(), info.clone(), act.clone(), grpc.clone());
        async move {
            let _busy = Busy::new(act);
            match role {
                Role::Signals | Role::Admin
                    if crate::proxy::headers::head_size(&req) > limits_head =>
                {
                    let id = crate::proxy::headers::request_id(req.headers());
                    let id = id.to_str().unwrap_or_default();
                    tracing::warn!(target: "access", listener = %info.listener, request_id = id, status = 431, error = "the request head exceeds server.max_header_bytes");
                    Ok(crate::reply::json_error(
                        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "headers_too_large",
                        "the request head exceeds the limit",
                        id,
                    ))
                }
                Role::Proxy => crate::proxy::handle(shared, info, req).await,
                Role::Authz => Ok(crate::authz::handle(&shared, &info, grpc, req).await),
                Role::Signals => {
                    let snap = shared.snapshot.load_full();
                    let cert = info.client_cert_sha256.get();
                    Ok(
                        crate::signals::push::serve(&snap.signals.push, &shared.store, cert, req)
                            .await,
                    )
                }
                Role::Admin => crate::admin::handle(shared, info, req).await,
            }
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // Idle means: no I/O and no request in flight across whole ticks since `quiet_since`.
    let mut seen = activity.events();
    let mut quiet_since = Instant::now();
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if !draining => {
                let now = activity.events();
                if now != seen || activity.busy() {
                    seen = now;
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= idle {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// I/O events and requests in flight on one connection, for the idle timeout. Counting events
/// instead of reading the clock on every read and write keeps the hot path free of clock calls.
struct Activity {
    events: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            events: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }
}

/// Marks a request in flight for its lifetime.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// An I/O wrapper that records activity on every read and write.
struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

//! The only place that accepts sockets: TLS handshake, HTTP/1.1 + HTTP/2 (auto), connection limit,
//! header-read and idle timeouts, graceful drain on shutdown.
//!
//! Timeouts of a connection, enforced by one watcher per connection (`serve_io`) from counters
//! its I/O wrapper keeps (`Activity`), never by a clock read per read or write: a request head
//! must arrive within `header_read_timeout` of its first byte (a new connection's first head,
//! of the start of HTTP serving); a connection with no request in flight, no head pending and
//! no I/O for `idle_timeout` is closed. hyper's own HTTP/1.1 head timer is off: it starts when
//! the connection begins waiting for the next head, so it cut idle keep-alive connections at
//! `header_read_timeout`.

pub mod conn;
pub mod workers;

use conn::ConnInfo;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::reply::BoxedBody;
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

/// One listener's accepting side: what every connection it accepts is served with.
pub struct Accept {
    pub name: Arc<str>,
    pub role: Role,
    /// Bound with TLS: a reload that removes its TLS section must not make it plain text.
    pub tls_required: bool,
    pub shared: Arc<Shared>,
    /// The connection budget; each connection holds a permit for its life.
    pub conns: Arc<Semaphore>,
}

impl Accept {
    /// Accepts on `listener` in every worker: each worker registers its own handle of the one
    /// listening socket with its runtime and runs its own accept loop, so a connection stays on
    /// the worker that accepted it. Returns once every worker has registered the socket.
    pub async fn spawn_on_workers(
        self: Arc<Self>,
        listener: TcpListener,
        workers: &workers::Workers,
    ) -> std::io::Result<()> {
        let listener = listener.into_std()?;
        let mut registered = Vec::new();
        for worker in workers.handles() {
            let socket = listener.try_clone()?;
            let (accept, shutdown) = (self.clone(), self.shared.shutdown.subscribe());
            let (tx, rx) = tokio::sync::oneshot::channel();
            worker.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        accept.run(l, shutdown).await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
            registered.push(rx);
        }
        for r in registered {
            r.await
                .map_err(|_| std::io::Error::other("the worker stopped before accepting"))??;
        }
        Ok(())
    }

    /// Accepts connections until `shutdown` fires, each served on a task of the current
    /// runtime. `shutdown` is subscribed before the task starts, so a shutdown sent before its
    /// first poll is not missed.
    pub async fn run(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %self.name, error = %crate::errors::Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = self.conns.clone().try_acquire_owned() else {
                tracing::warn!(listener = %self.name, %peer, "connection limit reached; closing the new connection");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (name, shared, shutdown) =
                (self.name.clone(), self.shared.clone(), shutdown.clone());
            let (role, tls_required) = (self.role, self.tls_required);
            tokio::spawn(async move {
                serve_connection(tcp, peer, name, role, tls_required, shared, shutdown).await;
                drop(permit);
            });
        }
        tracing::info!(listener = %self.name, "stopped accepting");
    }
}

/// What a connection needs of `[server]` for its whole life: copied, so that an idle connection
/// holds no clone of the configuration (its lists and strings).
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
    max_h2_streams: u32,
}

impl Limits {
    fn of(s: &crate::config::Server) -> Limits {
        Limits {
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            max_header_bytes: s.max_header_bytes,
            max_h2_streams: s.max_h2_streams,
        }
    }
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
    let limits = Limits::of(&snap.config.server);
    drop(snap);
    if tls_required && tls.is_none() {
        // The listener was bound with TLS; a reload that dropped its TLS section must not
        // turn it into plain text (fail closed until a restart rebinds it).
        tracing::error!(listener = %name, %peer, "listener has no TLS configuration any more; refusing the connection");
        return;
    }
    let activity = Arc::new(Activity::new(peer));
    let info = Arc::new(ConnInfo::new(peer, tls.is_some(), name));
    match tls {
        // Boxed: the handshake (a whole rustls connection inline) and the state of a TLS
        // connection would otherwise size the task of every connection, plain ones included
        // (7.6 KB instead of 2.4 KB per idle plain connection).
        Some(cfg) => {
            Box::pin(async move {
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
                        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                            activity.set_http2();
                        }
                        serve_io(
                            ActivityIo {
                                inner: stream,
                                activity: activity.clone(),
                            },
                            info,
                            role,
                            shared,
                            limits,
                            shutdown,
                            activity,
                        )
                        .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %crate::errors::Chain(&e), "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            })
            .await
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
                limits,
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
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Off: its timer starts when the connection waits for a head, idle keep-alive included;
        // `serve_io` times heads from their first byte instead.
        .header_read_timeout(None)
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
            if req.version() == http::Version::HTTP_2 {
                act.set_http2();
            }
            let busy = Busy::new(act);
            let resp: Result<http::Response<BoxedBody>, Infallible> = match role {
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
            };
            // In flight until hyper has sent (or dropped) the whole response body.
            resp.map(|r| r.map(|body| InFlight { body, _busy: busy }))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let (idle, head) = (limits.idle_timeout, limits.header_read_timeout);
    // A quarter of the shorter timeout: a pending head is noticed well before its deadline
    // (then timed exactly by `head_timer`), an idle connection closed at most that late.
    let mut tick = tokio::time::interval((idle.min(head) / 4).max(Duration::from_millis(50)));
    // Armed for the pending head seen at the last tick (`armed_for`: when that head began).
    let head_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(head_timer);
    let mut armed_for: Option<Instant> = None;
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // Made once and kept registered with the watch: a future made anew at every wake-up of the
    // connection would register and deregister a waiter each time.
    let shutdown_changed = shutdown.changed();
    tokio::pin!(shutdown_changed);
    // The first request head is due `header_read_timeout` after serving starts.
    activity.head_starts_now();
    // Idle means: no I/O, no request in flight and no head pending across whole ticks since
    // `quiet_since`.
    let mut seen = activity.events();
    let mut quiet_since = Instant::now();
    loop {
        tokio::select! {
            // In this order, without drawing a random branch order at every wake-up.
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %crate::errors::Chain(&*e), "connection ended with an error");
                }
                break;
            }
            _ = &mut shutdown_changed, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut head_timer, if armed_for.is_some() => {
                let pending = activity.head_pending_since();
                if pending.is_some() && pending == armed_for && !activity.busy() {
                    // Part of a head (or none, on a new connection) for too long: drop the
                    // connection, as hyper's own head timeout would (no answer is owed).
                    tracing::debug!(peer = %activity.peer, "no complete request head within server.header_read_timeout; closing");
                    break;
                }
                armed_for = None;
            }
            _ = tick.tick() => {
                if activity.busy() {
                    seen = activity.events();
                    quiet_since = Instant::now();
                } else if let Some(since) = activity.head_pending_since() {
                    if armed_for != Some(since) {
                        armed_for = Some(since);
                        head_timer.as_mut().reset((since + head).into());
                    }
                } else if draining {
                    // Graceful shutdown waits for in-flight work; nothing else to watch.
                } else if activity.events() != seen {
                    seen = activity.events();
                    quiet_since = Instant::now();
                } else if quiet_since.elapsed() >= idle {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// No request head pending (`Activity::head_since`).
const NO_HEAD: u64 = u64::MAX;

/// I/O events, requests in flight and the pending request head of one connection, for the idle
/// and header-read timeouts. Counting events instead of reading the clock on every read and
/// write keeps the hot path free of clock calls; the clock is read once per request head, at
/// its first byte.
struct Activity {
    events: AtomicU64,
    in_flight: AtomicUsize,
    /// Nanoseconds after `born` at which the pending HTTP/1.1 request head began, or `NO_HEAD`.
    head_since: AtomicU64,
    /// HTTP/2 (ALPN `h2`, or the h2c preface): no request heads to time.
    http2: AtomicBool,
    /// Whether no byte was read yet (the first read is checked for the h2c preface).
    first_read: AtomicBool,
    born: Instant,
    peer: SocketAddr,
}

impl Activity {
    fn new(peer: SocketAddr) -> Activity {
        Activity {
            events: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            head_since: AtomicU64::new(NO_HEAD),
            http2: AtomicBool::new(false),
            first_read: AtomicBool::new(true),
            born: Instant::now(),
            peer,
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

    fn set_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
        self.head_since.store(NO_HEAD, Ordering::Relaxed);
    }

    /// A request head is due from now (the first one of a connection).
    fn head_starts_now(&self) {
        if !self.http2.load(Ordering::Relaxed) {
            self.head_since
                .store(self.nanos_since_born(), Ordering::Relaxed);
        }
    }

    fn nanos_since_born(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(NO_HEAD - 1)
    }

    /// Bytes were read. Between requests on HTTP/1.1, the first byte starts the next head's
    /// clock (the only clock read: one per head).
    fn read(&self, bytes: &[u8]) {
        self.touch();
        if self.first_read.load(Ordering::Relaxed) {
            self.first_read.store(false, Ordering::Relaxed);
            if bytes.starts_with(b"PRI * HTTP/2") {
                self.set_http2();
            }
        }
        if self.head_since.load(Ordering::Relaxed) == NO_HEAD
            && !self.busy()
            && !self.http2.load(Ordering::Relaxed)
        {
            self.head_since
                .store(self.nanos_since_born(), Ordering::Relaxed);
        }
    }

    /// When the pending request head began, if one is pending.
    fn head_pending_since(&self) -> Option<Instant> {
        match self.head_since.load(Ordering::Relaxed) {
            NO_HEAD => None,
            n => Some(self.born + Duration::from_nanos(n)),
        }
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct InFlight {
    body: BoxedBody,
    _busy: Busy,
}

impl hyper::body::Body for InFlight {
    type Data = bytes::Bytes;
    type Error = crate::reply::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Marks a request in flight for its lifetime; its head is complete.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.head_since.store(NO_HEAD, Ordering::Relaxed);
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
            self.activity.read(&buf.filled()[before..]);
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

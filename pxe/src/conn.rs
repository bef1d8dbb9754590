//! Serving HTTP/1 connections so that slow, idle and greedy clients cannot take a server down.
//! The HTTP boot server, the appliance's HTTPS API and its admin socket all accept through
//! [`serve`]:
//!
//! - **Connection caps** at accept, per listener ([`crate::conn_limit`]): per source address, in
//!   total, with slots kept for the management overlay. Over a cap a connection is closed at once
//!   (or an idle one makes room), counted in [`ConnMetrics`], and logged at a limited rate.
//! - **Handshake timeout**: a TLS client must finish its handshake in [`HANDSHAKE_TIMEOUT`].
//! - **Header timeout**: hyper's `header_read_timeout` on every request head (on tokio's clock,
//!   through a timer that counts the timeouts that fire); the same timer runs while a kept-alive
//!   connection waits for its next request, so it is the idle timeout too.
//! - **Body timeout**: a request body must arrive whole within [`BODY_TIMEOUT`] of its head.
//! - **Send-side guard**: while the server has bytes waiting for a client, the client must take at
//!   least [`WRITE_MIN_PROGRESS`] per [`WRITE_STALL_TIMEOUT`] of waiting, or the connection ends.
//!
//! Every timeout is a field of [`Timeouts`], chosen when the server is built, so tests use short
//! ones and production the constants below.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::conn_limit::{Busy, Caps, Limiter, Refusal};
use crate::http::LogLimit;
use crate::metrics::Metrics;

/// A TLS handshake is a few round trips; ten seconds covers any real client on a LAN or over
/// WireGuard many times over, and bounds how long a silent connection holds a slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request head is a few hundred bytes that iPXE, UEFI HTTP boot, the agent and the CLI send at
/// once. Ten seconds is generous for any of them and is how long a slow-header (slowloris)
/// connection can hold a slot. Also the keep-alive idle time: iPXE asks for the initrd right
/// after the kernel on the same connection, well within it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies (registrations, heartbeats) are at most `oasis_proto::MAX_BODY_BYTES` (64 KiB):
/// fifteen seconds allows them at under 5 KiB/s, and ends a client that sends a head and then
/// trickles or withholds the body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a client may leave the server's sends waiting (its receive window shut) before it
/// must have taken [`WRITE_MIN_PROGRESS`]. Thirty seconds rides out a firmware client that pauses
/// between reads; a client that stopped reading a kernel frees its slot after it.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// What a client must take per [`WRITE_STALL_TIMEOUT`] of waiting: 64 KiB, about 2 KiB/s. A
/// client that opens its window a crack now and then (a trickle reader) is ended too, while any
/// real boot client reads megabytes per second.
pub const WRITE_MIN_PROGRESS: u64 = 64 * 1024;
/// The largest request head accepted (hyper answers 431 beyond it). Boot, API and admin requests
/// are well under 2 KiB; hyper's own limit (its 400 KiB read buffer) would let a thousand slow
/// clients hold 400 MB of memory.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long the accept loop pauses when accepting fails for lack of descriptors or memory, so it
/// does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The timeouts of one listener. `Default` is the production values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub handshake: Duration,
    pub header: Duration,
    pub body: Duration,
    pub write_stall: Duration,
    pub write_min_progress: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            handshake: HANDSHAKE_TIMEOUT,
            header: HEADER_TIMEOUT,
            body: BODY_TIMEOUT,
            write_stall: WRITE_STALL_TIMEOUT,
            write_min_progress: WRITE_MIN_PROGRESS,
        }
    }
}

/// The listeners, as labelled in the metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The HTTP boot server.
    HttpBoot,
    /// The appliance's HTTPS API.
    Api,
    /// The appliance's admin socket.
    Admin,
}

impl Listener {
    const ALL: [Self; 3] = [Self::HttpBoot, Self::Api, Self::Admin];

    fn label(self) -> &'static str {
        match self {
            Self::HttpBoot => "http",
            Self::Api => "api",
            Self::Admin => "admin",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HttpBoot => "HTTP boot",
            Self::Api => "API",
            Self::Admin => "admin socket",
        })
    }
}

/// What happens to connections, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// Let in.
    Accepted,
    /// Closed at accept: its address held its per-source cap.
    RefusedSource,
    /// Closed at accept: the listener was at its cap with every connection busy.
    RefusedFull,
    /// Closed to make room for a newer one while it had no request in flight.
    Evicted,
    /// Its TLS handshake did not finish in time.
    HandshakeTimeout,
    /// A request head did not arrive whole in time (or it sat idle too long between requests).
    HeaderTimeout,
    /// A request body did not arrive whole in time.
    BodyTimeout,
    /// It left the server's sends waiting too long.
    WriteTimeout,
}

impl ConnEvent {
    const ALL: [Self; 8] = [
        Self::Accepted,
        Self::RefusedSource,
        Self::RefusedFull,
        Self::Evicted,
        Self::HandshakeTimeout,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::WriteTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::RefusedSource => "refused_per_source",
            Self::RefusedFull => "refused_full",
            Self::Evicted => "evicted",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::WriteTimeout => "write_timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

const LISTENERS: usize = Listener::ALL.len();
const EVENTS: usize = ConnEvent::ALL.len();

/// Connection counters for every listener; part of [`Metrics`].
#[derive(Debug, Default)]
pub struct ConnMetrics {
    events: [[AtomicU64; EVENTS]; LISTENERS],
    requests: [AtomicU64; LISTENERS],
    open: [AtomicI64; LISTENERS],
    peak: [AtomicI64; LISTENERS],
}

impl ConnMetrics {
    pub fn count(&self, listener: Listener, event: ConnEvent) {
        self.events[listener.index()][event.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, listener: Listener, event: ConnEvent) -> u64 {
        self.events[listener.index()][event.index()].load(Ordering::Relaxed)
    }

    /// Requests received on `listener`'s connections.
    pub fn requests(&self, listener: Listener) -> u64 {
        self.requests[listener.index()].load(Ordering::Relaxed)
    }

    /// Connections `listener` holds now.
    pub fn open(&self, listener: Listener) -> i64 {
        self.open[listener.index()].load(Ordering::Relaxed)
    }

    /// The most connections `listener` has held at once.
    pub fn peak(&self, listener: Listener) -> i64 {
        self.peak[listener.index()].load(Ordering::Relaxed)
    }

    fn request(&self, listener: Listener) {
        self.requests[listener.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn opened(&self, listener: Listener) {
        let now = self.open[listener.index()].fetch_add(1, Ordering::Relaxed) + 1;
        self.peak[listener.index()].fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self, listener: Listener) {
        self.open[listener.index()].fetch_sub(1, Ordering::Relaxed);
    }

    /// Appends the Prometheus text of every counter to `out`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP oasis_connections_total Connections, by listener and what happened to them.\n\
             # TYPE oasis_connections_total counter"
        );
        for listener in Listener::ALL {
            for event in ConnEvent::ALL {
                let _ = writeln!(
                    out,
                    "oasis_connections_total{{listener=\"{}\",event=\"{}\"}} {}",
                    listener.label(),
                    event.label(),
                    self.get(listener, event)
                );
            }
        }
        let mut series = |name: &str, help: &str, kind: &str, value: &dyn Fn(Listener) -> i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for listener in Listener::ALL {
                let _ = writeln!(out, "{name}{{listener=\"{}\"}} {}", listener.label(), value(listener));
            }
        };
        series("oasis_connections_open", "Connections held now.", "gauge", &|l| self.open(l));
        series("oasis_connections_peak", "Most connections held at once.", "gauge", &|l| self.peak(l));
        series("oasis_listener_requests_total", "Requests received, by listener.", "counter", &|l| {
            self.requests(l) as i64
        });
    }
}

/// What one listener enforces: its caps, its timeouts, and where it counts.
#[derive(Debug, Clone)]
pub struct Guard {
    listener: Listener,
    limiter: Arc<Limiter>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    log: Arc<LogLimit>,
}

impl Guard {
    pub fn new(listener: Listener, caps: Caps, timeouts: Timeouts, metrics: Arc<Metrics>) -> Self {
        Self {
            listener,
            limiter: Limiter::new(caps),
            timeouts,
            metrics,
            log: Arc::new(LogLimit::new(10, Duration::from_secs(10))),
        }
    }

    pub fn caps(&self) -> &Caps {
        self.limiter.caps()
    }

    fn count(&self, event: ConnEvent) {
        self.metrics.connections.count(self.listener, event);
    }
}

/// A listening socket [`serve`] accepts from.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its peer's address (`None` on a Unix socket).
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, Option<SocketAddr>)>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<(Self::Io, Option<SocketAddr>)> {
        let (stream, peer) = tokio::net::TcpListener::accept(self).await?;
        // Responses are written whole; Nagle would only delay the last segment of each.
        let _ = stream.set_nodelay(true);
        Ok((stream, Some(peer)))
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<(Self::Io, Option<SocketAddr>)> {
        let (stream, _) = tokio::net::UnixListener::accept(self).await?;
        Ok((stream, None))
    }
}

/// The handshake of a plain (not TLS) listener: none.
pub fn plain<T>(io: T) -> std::future::Ready<io::Result<T>> {
    std::future::ready(Ok(io))
}

/// Serves `router` on every connection `listener` accepts, under `guard`, until the task is
/// dropped. `handshake` turns each accepted connection into the stream HTTP runs on ([`plain`],
/// or a TLS acceptor's `accept`). Handlers see the peer's address as `ConnectInfo<SocketAddr>`
/// (not on a Unix socket).
pub async fn serve<L, H, F, S>(listener: L, guard: Guard, handshake: H, router: Router)
where
    L: Accept,
    H: Fn(Guarded<L::Io>) -> F + Clone + Send + 'static,
    F: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    loop {
        // While too many evicted connections are still closing, new ones wait in the kernel's
        // queue (see `Limiter::ready`).
        guard.limiter.ready().await;
        let (io, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&guard, &e).await;
                continue;
            }
        };
        let admitted = match guard.limiter.admit(peer.map(|p| p.ip())) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                refused(&guard, peer.map(|p| p.ip()), refusal);
                drop(io);
                continue;
            }
        };
        guard.count(ConnEvent::Accepted);
        if admitted.evicted {
            guard.count(ConnEvent::Evicted);
        }
        let connection = Connection { guard: guard.clone(), permit: admitted.permit, peer };
        tokio::spawn(connection.run(io, handshake.clone(), router.clone()));
    }
}

async fn accept_failed(guard: &Guard, e: &io::Error) {
    // Out of descriptors or memory: wait for connections to close rather than spin. Anything
    // else (a connection reset before it was accepted) concerns that one connection only.
    let exhausted = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM));
    if guard.log.allow() {
        if exhausted {
            tracing::error!(
                "{}: cannot accept connections: {e}; the caps should keep this from happening: \
                 raise the descriptor limit (LimitNOFILE) or report it",
                guard.listener
            );
        } else {
            tracing::debug!("{}: accept failed: {e}", guard.listener, e = oasis_proto::error_chain(e));
        }
    }
    if exhausted {
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }
}

fn refused(guard: &Guard, source: Option<IpAddr>, refusal: Refusal) {
    guard.count(match refusal {
        Refusal::SourceFull => ConnEvent::RefusedSource,
        Refusal::Full => ConnEvent::RefusedFull,
    });
    if guard.log.allow() {
        let from = source.map(|ip| format!(" from {ip}")).unwrap_or_default();
        tracing::warn!(
            "{}: closed a new connection{from} at once: {refusal} ({}); \
             the counts are in /metrics (oasis_connections_total)",
            guard.listener,
            guard.caps()
        );
    }
}

/// One admitted connection.
struct Connection {
    guard: Guard,
    permit: crate::conn_limit::Permit,
    peer: Option<SocketAddr>,
}

impl Connection {
    async fn run<I, H, F, S>(self, io: I, handshake: H, router: Router)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Guarded<I>) -> F,
        F: Future<Output = io::Result<S>>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = &self.guard.metrics.connections;
        let listener = self.guard.listener;
        metrics.opened(listener);
        let io = Guarded::new(io, &self.guard);
        tokio::select! {
            () = self.serve(io, handshake, router) => {}
            () = self.permit.evicted() => {
                tracing::debug!(peer = ?self.peer, "{listener}: closed an idle connection to make room for a new one");
            }
        }
        metrics.closed(listener);
    }

    async fn serve<I, H, F, S>(&self, io: Guarded<I>, handshake: H, router: Router)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Guarded<I>) -> F,
        F: Future<Output = io::Result<S>>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (guard, peer) = (&self.guard, self.peer);
        let stream = match tokio::time::timeout(guard.timeouts.handshake, handshake(io)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(?peer, "{}: handshake failed: {e}", guard.listener, e = oasis_proto::error_chain(&e));
                return;
            }
            Err(_) => {
                guard.count(ConnEvent::HandshakeTimeout);
                tracing::debug!(?peer, "{}: handshake timed out", guard.listener);
                return;
            }
        };
        let service_guard = guard.clone();
        let permit = &self.permit;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = permit.busy();
            let guard = &service_guard;
            guard.metrics.connections.request(guard.listener);
            let mut request = TimedBody::wrap(guard, request);
            if let Some(peer) = peer {
                request.extensions_mut().insert(ConnectInfo(peer));
            }
            let router = router.clone();
            async move {
                let response = router.oneshot(request).await.unwrap_or_else(|never: Infallible| match never {});
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(HeaderTimer(guard.clone()))
            .header_read_timeout(guard.timeouts.header)
            .max_header_size(MAX_HEADER_BYTES);
        if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
            tracing::debug!(?peer, "{}: connection ended: {e}", guard.listener, e = oasis_proto::error_chain(&e));
        }
    }
}

/// hyper's timer on tokio's clock, counting the timeouts that fire. The header read timeout is
/// the only timer an HTTP/1 server connection runs, and hyper closes the connection when it fires,
/// in some cases (an idle or silent connection) without returning an error that would say so.
#[derive(Debug, Clone)]
struct HeaderTimer(Guard);

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let sleep = Box::pin(tokio::time::sleep_until(deadline.into()));
        Box::pin(CountedSleep { sleep, guard: self.0.clone(), fired: false })
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

struct CountedSleep {
    sleep: Pin<Box<Sleep>>,
    guard: Guard,
    fired: bool,
}

impl Future for CountedSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.sleep.as_mut().poll(cx));
        if !std::mem::replace(&mut self.fired, true) {
            self.guard.count(ConnEvent::HeaderTimeout);
        }
        Poll::Ready(())
    }
}

impl hyper::rt::Sleep for CountedSleep {}

/// The error a request body gives when it does not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the client did not send the request body within {0:?}")]
pub struct BodyTimedOut(Duration);

/// A request body that must arrive whole by a deadline set when its head arrived.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    guard: Guard,
}

impl TimedBody {
    fn wrap(guard: &Guard, request: hyper::Request<Incoming>) -> hyper::Request<Self> {
        let timeout = guard.timeouts.body;
        let deadline = Instant::now() + timeout;
        request.map(|inner| Self { inner, deadline, timeout, sleep: None, guard: guard.clone() })
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // The timer exists only for bodies that keep the handler waiting.
        let deadline = this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        this.guard.count(ConnEvent::BodyTimeout);
        Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its connection marked busy until it is written (or dropped).
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: HttpBody + Unpin> HttpBody for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The send-side rule as a pure function of time: while sends wait, at least `min_progress`
/// bytes must go out per `window` of waiting. Time without waiting sends does not count.
#[derive(Debug, Clone)]
struct WriteWatch {
    window: Duration,
    min_progress: u64,
    /// Waiting time since the client last took `min_progress`.
    waited: Duration,
    /// Bytes sent since then.
    progress: u64,
    /// When the current wait began, if a send is waiting now.
    waiting_since: Option<Instant>,
}

impl WriteWatch {
    fn new(window: Duration, min_progress: u64) -> Self {
        Self { window, min_progress, waited: Duration::ZERO, progress: 0, waiting_since: None }
    }

    /// `n` bytes went out at `now`.
    fn sent(&mut self, n: usize, now: Instant) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
        self.progress += n as u64;
        if self.progress >= self.min_progress {
            self.waited = Duration::ZERO;
            self.progress = 0;
        }
    }

    /// A send had to wait at `now`; returns the moment the connection is out of patience.
    fn blocked(&mut self, now: Instant) -> Instant {
        let since = *self.waiting_since.get_or_insert(now);
        since + self.window.saturating_sub(self.waited)
    }
}

/// An accepted stream with the send-side guard: a client that leaves sends waiting too long gets
/// a `TimedOut` error on the write, which ends the connection.
pub struct Guarded<T> {
    inner: T,
    watch: WriteWatch,
    sleep: Option<Pin<Box<Sleep>>>,
    guard: Guard,
}

impl<T> fmt::Debug for Guarded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded").field("watch", &self.watch).finish_non_exhaustive()
    }
}

impl<T> Guarded<T> {
    fn new(inner: T, guard: &Guard) -> Self {
        let t = &guard.timeouts;
        Self { inner, watch: WriteWatch::new(t.write_stall, t.write_min_progress), sleep: None, guard: guard.clone() }
    }

    /// Accounts for one write attempt's outcome.
    fn after_write(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                self.watch.sent(n, Instant::now());
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let deadline = self.watch.blocked(Instant::now());
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.guard.count(ConnEvent::WriteTimeout);
                let window = self.watch.window;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client took under {} bytes in {window:?} of waiting sends", self.watch.min_progress),
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_that_keeps_up_is_never_out_of_patience() {
        let start = Instant::now();
        let mut w = WriteWatch::new(Duration::from_secs(30), 64 * 1024);
        let mut now = start;
        for _ in 0..100 {
            // Waits 20 s each time (longer than the window in total), but takes 64 KiB after each.
            assert_eq!(w.blocked(now), now + Duration::from_secs(30));
            now += Duration::from_secs(20);
            w.sent(64 * 1024, now);
        }
    }

    #[test]
    fn a_trickle_reader_runs_out_of_patience() {
        let start = Instant::now();
        let mut w = WriteWatch::new(Duration::from_secs(30), 64 * 1024);
        assert_eq!(w.blocked(start), start + Duration::from_secs(30));
        w.sent(1000, start + Duration::from_secs(10));
        // The waiting so far counts: 20 s of patience left.
        let again = start + Duration::from_secs(10);
        assert_eq!(w.blocked(again), again + Duration::from_secs(20));
        // Asked again during the same wait, the deadline does not move.
        assert_eq!(w.blocked(again + Duration::from_secs(5)), again + Duration::from_secs(20));
    }

    #[test]
    fn time_without_waiting_sends_does_not_count() {
        let start = Instant::now();
        let mut w = WriteWatch::new(Duration::from_secs(30), 64 * 1024);
        w.blocked(start);
        w.sent(100, start + Duration::from_secs(5));
        // An hour idle between responses, then a send waits again: 25 s of patience left.
        let later = start + Duration::from_secs(3600);
        assert_eq!(w.blocked(later), later + Duration::from_secs(25));
    }

    #[test]
    fn metrics_render_every_listener() {
        let m = ConnMetrics::default();
        m.count(Listener::Api, ConnEvent::RefusedSource);
        m.opened(Listener::HttpBoot);
        m.opened(Listener::HttpBoot);
        m.closed(Listener::HttpBoot);
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("oasis_connections_total{listener=\"api\",event=\"refused_per_source\"} 1\n"), "{text}");
        assert!(text.contains("oasis_connections_open{listener=\"http\"} 1\n"), "{text}");
        assert!(text.contains("oasis_connections_peak{listener=\"http\"} 2\n"), "{text}");
        assert!(text.contains("oasis_listener_requests_total{listener=\"admin\"} 0\n"), "{text}");
    }
}

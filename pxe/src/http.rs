//! HTTP boot: per-machine iPXE scripts, kernels and initramfs images from the boot root, and
//! `/metrics`.
//!
//! | request                  | answer                                                             |
//! |--------------------------|--------------------------------------------------------------------|
//! | `GET /boot.ipxe?mac=M`   | the boot script for `M`, or the local-disk script if `M` is marked;|
//! |                          | 403 to a peer the [`MachineDirectory`] does not admit for `M`      |
//! | `GET /boot.ipxe`         | the chain script, which asks again with iPXE's `${mac:hexhyp}`     |
//! | `GET`/`HEAD /boot/PATH`  | `PATH` under the boot root, with single byte ranges                |
//! | `GET /metrics`           | every counter, Prometheus text format 0.0.4                        |
//! | anything else            | 404                                                                |
//!
//! Files are opened with [`BootRoot::open`]; every refusal is a 404 (see [`path_error_status`]),
//! so a probe learns nothing about what lies outside the root.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio::net::TcpListener;

use crate::boot_root::{BootRoot, PathError};
use crate::conn::{self, Guard};
use crate::metrics::{ErrorKind, Metrics};
use crate::script::{BootFiles, ScriptRenderer};
use oasis_proto::MacAddr;

/// Bytes read from a file per chunk handed to the connection. Large enough that the per-chunk
/// costs (a blocking-pool hop, an allocation, a `writev`) vanish next to the copy itself.
pub const CHUNK_SIZE: usize = 256 * 1024;

/// What a machine that asks for its boot script should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootTarget {
    /// Boot the node kernel and initramfs over the network.
    Network,
    /// Boot from its own disk: it is installed, and netbooting again would loop.
    LocalDisk,
}

/// Why a boot script is not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptRefusal {
    /// This peer may not have this machine's script (403). The message says why, for whoever
    /// fetched it by hand.
    #[error("{0}")]
    Forbidden(String),
    /// What the script would carry could not be recorded (503); the machine asks again.
    #[error("{0}")]
    Unavailable(String),
}

/// What HTTP boot needs to know about machines. The appliance implements it on its store.
///
/// Every method is called on tokio's blocking pool, so an implementation may commit to disk. For
/// one request for `mac`'s script: [`admit`](Self::admit), then [`boot_target`](Self::boot_target)
/// and [`record_boot`](Self::record_boot), then, for a network boot, [`boot_args`](Self::boot_args).
pub trait MachineDirectory: Send + Sync + 'static {
    /// Where `mac` should boot from.
    fn boot_target(&self, mac: MacAddr) -> BootTarget;
    /// `mac` fetched its boot script (either kind).
    fn record_boot(&self, mac: MacAddr);
    /// Whether `peer` (the request's source; `None` when the router runs without [`serve`]) may
    /// have `mac`'s boot script. The default admits everyone: a directory that knows which address
    /// each machine holds should admit only that address.
    fn admit(&self, mac: MacAddr, peer: Option<IpAddr>) -> Result<(), ScriptRefusal> {
        let _ = (mac, peer);
        Ok(())
    }
    /// Kernel arguments for this one network boot of `mac`, served to `peer`, added after the
    /// profile's (a per-boot token, say). Whatever they grant must be committed before this
    /// returns: the machine may use them as soon as the script reaches it. The default adds none.
    fn boot_args(&self, mac: MacAddr, peer: Option<IpAddr>) -> Result<String, ScriptRefusal> {
        let _ = (mac, peer);
        Ok(String::new())
    }
    /// The kernel and initramfs `mac`'s network boot script names instead of the profile's (the
    /// node generation chosen for it); `None`, the default: the profile's.
    fn boot_files(&self, mac: MacAddr) -> Result<Option<BootFiles>, ScriptRefusal> {
        let _ = mac;
        Ok(None)
    }
}

/// A [`MachineDirectory`] in memory: every machine boots from the network unless marked. For tests,
/// benchmarks and a bare `pxe` deployment with no store behind it.
#[derive(Debug, Default)]
pub struct StaticDirectory {
    local: Mutex<HashSet<MacAddr>>,
    boots: Mutex<HashMap<MacAddr, u64>>,
}

impl StaticDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `mac` to boot from its local disk from now on.
    pub fn mark_local(&self, mac: MacAddr) {
        lock(&self.local).insert(mac);
    }

    /// How many times `mac` has fetched its boot script.
    pub fn boots(&self, mac: MacAddr) -> u64 {
        lock(&self.boots).get(&mac).copied().unwrap_or(0)
    }
}

impl MachineDirectory for StaticDirectory {
    fn boot_target(&self, mac: MacAddr) -> BootTarget {
        if lock(&self.local).contains(&mac) {
            BootTarget::LocalDisk
        } else {
            BootTarget::Network
        }
    }

    fn record_boot(&self, mac: MacAddr) {
        *lock(&self.boots).entry(mac).or_default() += 1;
    }
}

/// A poisoned lock here only means another request panicked mid-update of a plain set or counter,
/// which leaves nothing half-done worth refusing service over.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the HTTP boot service serves from.
pub struct HttpBoot {
    root: BootRoot,
    /// Other directories served beneath `/boot/NAME/`, each opened beneath its own descriptor.
    mounts: Vec<(String, BootRoot)>,
    scripts: ScriptRenderer,
    machines: Arc<dyn MachineDirectory>,
    metrics: Arc<Metrics>,
    warn_limit: LogLimit,
}

impl HttpBoot {
    pub fn new(
        root: BootRoot,
        scripts: ScriptRenderer,
        machines: Arc<dyn MachineDirectory>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            root,
            mounts: vec![],
            scripts,
            machines,
            metrics,
            warn_limit: LogLimit::new(10, Duration::from_secs(10)),
        }
    }

    /// Serves the files beneath `root` as `/boot/NAME/...` (`NAME` one plain path component),
    /// in place of whatever the boot root holds under `NAME`.
    pub fn with_mount(mut self, name: &str, root: BootRoot) -> Self {
        self.mounts.push((name.to_string(), root));
        self
    }

    /// The root `name` is opened beneath, and its name there.
    fn root_of(&self, name: Vec<u8>) -> (BootRoot, Vec<u8>) {
        for (mount, root) in &self.mounts {
            if let Some(rest) = name.strip_prefix(mount.as_bytes()).and_then(|r| r.strip_prefix(b"/")) {
                return (root.clone(), rest.to_vec());
            }
        }
        (self.root.clone(), name)
    }
}

impl fmt::Debug for HttpBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBoot").field("root", &self.root).field("scripts", &self.scripts).finish_non_exhaustive()
    }
}

/// The HTTP boot routes, ready for [`serve`].
pub fn router(state: HttpBoot) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route("/boot/{*path}", get(boot_file))
        .route("/metrics", get(metrics))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state)
}

/// Serves `router` on `listener` under `guard` (connection caps and timeouts, see
/// [`crate::conn`]) until the task is dropped. Handlers see each peer's address (for logs)
/// through `ConnectInfo`.
pub async fn serve(listener: TcpListener, router: Router, guard: Guard) {
    conn::serve(listener, guard, conn::plain, router).await
}

async fn count_request(State(state): State<Arc<HttpBoot>>, request: Request, next: Next) -> Response {
    Metrics::add(&state.metrics.http_requests, 1);
    next.run(request).await
}

/// The client's address, for logs. Absent when the router runs without [`serve`] (in tests).
fn peer(request: &Request) -> String {
    match request.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => addr.to_string(),
        None => "unknown peer".to_string(),
    }
}

/// The client's IP address, as IPv4 when it is an IPv4-mapped IPv6 address.
fn peer_ip(request: &Request) -> Option<IpAddr> {
    let ConnectInfo(addr) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
    Some(match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

#[derive(Debug, serde::Deserialize)]
struct BootQuery {
    mac: Option<String>,
}

fn script_response(script: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        script,
    )
        .into_response()
}

async fn boot_script(State(state): State<Arc<HttpBoot>>, request: Request) -> Response {
    // A query that does not even parse (say, `mac` twice) is treated like one with no `mac`.
    let query = Query::<BootQuery>::try_from_uri(request.uri()).ok().and_then(|Query(q)| q.mac);
    let Some(raw) = query else {
        return script_response(state.scripts.render_chain());
    };
    let mac = match raw.parse::<MacAddr>() {
        Ok(mac) => mac,
        Err(e) => {
            // Debug, not warn: anyone can send this, and the counter tells the operator it happens.
            tracing::debug!(peer = %peer(&request), "boot script request with a bad mac parameter: {e}");
            state.metrics.error(ErrorKind::HttpBadMac);
            return script_response(state.scripts.render_chain());
        }
    };
    let machines = state.machines.clone();
    let from = peer_ip(&request);
    let decided = tokio::task::spawn_blocking(move || {
        machines.admit(mac, from)?;
        let target = machines.boot_target(mac);
        machines.record_boot(mac);
        let (args, files) = match target {
            BootTarget::Network => (machines.boot_args(mac, from)?, machines.boot_files(mac)?),
            BootTarget::LocalDisk => (String::new(), None),
        };
        Ok::<_, ScriptRefusal>((target, args, files))
    })
    .await;
    let (target, args, files) = match decided {
        Ok(Ok(decided)) => decided,
        Ok(Err(ScriptRefusal::Forbidden(why))) => {
            // Anyone can send this: counted, and logged at a limited rate.
            state.metrics.error(ErrorKind::HttpForbidden);
            if state.warn_limit.allow() {
                tracing::warn!(%mac, peer = %peer(&request), "boot script refused: {why}");
            }
            return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
        }
        Ok(Err(ScriptRefusal::Unavailable(why))) => {
            tracing::error!(%mac, "boot script not served: {why}");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
        }
        Err(e) => {
            tracing::error!(%mac, "the machine directory failed while looking up the boot target: {e}", e = oasis_proto::error_chain(&e));
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    tracing::info!(%mac, peer = %peer(&request), ?target, "serving boot script");
    match target {
        BootTarget::Network => match state.scripts.render_boot_files(mac, &args, files.as_ref()) {
            Ok(script) => script_response(script),
            Err(e) => {
                tracing::error!(%mac, "the boot script's per-boot arguments are unusable: {e}", e = oasis_proto::error_chain(&e));
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        },
        BootTarget::LocalDisk => script_response(state.scripts.render_local(mac)),
    }
}

async fn metrics(State(state): State<Arc<HttpBoot>>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], state.metrics.render())
        .into_response()
}

/// The status each refusal of a file name maps to. Traversal attempts get the same 404 as a
/// missing file, so the answer says nothing about what exists outside the root.
pub fn path_error_status(err: &PathError) -> StatusCode {
    match err {
        PathError::Empty
        | PathError::TooLong { .. }
        | PathError::NulByte
        | PathError::Absolute(_)
        | PathError::ParentDir(_)
        | PathError::Escapes(_)
        | PathError::Symlink(_)
        | PathError::NotFound(_)
        | PathError::NotAFile(_) => StatusCode::NOT_FOUND,
        PathError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A file opened for serving.
struct Opened {
    file: File,
    len: u64,
    modified: Option<SystemTime>,
}

/// Opens `name` under the root (beneath its descriptor, following no symlink). Blocking: run it
/// on the blocking pool.
fn open_in_root(root: &BootRoot, name: &[u8]) -> Result<Opened, PathError> {
    let opened = root.open(name)?;
    Ok(Opened { file: opened.file, len: opened.len, modified: opened.modified })
}

async fn boot_file(State(state): State<Arc<HttpBoot>>, request: Request) -> Response {
    let peer = peer(&request);
    // The raw path, decoded here rather than by an extractor: names need not be UTF-8, and every
    // refusal must be our 404, not an extractor's 400.
    let raw = request.uri().path().strip_prefix("/boot/").unwrap_or_default();
    let Some(name) = percent_decode(raw) else {
        state.metrics.error(ErrorKind::HttpNotFound);
        tracing::debug!(%peer, path = raw, "refused a file name with a malformed percent escape");
        return StatusCode::NOT_FOUND.into_response();
    };
    let (root, name) = state.root_of(name);
    let opened = match tokio::task::spawn_blocking(move || open_in_root(&root, &name)).await {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(%peer, path = raw, "opening a boot file panicked: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let opened = match opened {
        Ok(opened) => opened,
        Err(err) => {
            let status = path_error_status(&err);
            if status == StatusCode::NOT_FOUND {
                state.metrics.error(ErrorKind::HttpNotFound);
            }
            if err.is_traversal() {
                if state.warn_limit.allow() {
                    tracing::warn!(%peer, "refused a file name to keep the request inside the boot root: {err}");
                }
            } else if status == StatusCode::NOT_FOUND {
                tracing::debug!(%peer, "file not served: {}", oasis_proto::error_chain(&err));
            } else {
                tracing::error!(%peer, "cannot serve a boot file: {}", oasis_proto::error_chain(&err));
            }
            return status.into_response();
        }
    };
    file_response(&state.metrics, request.method(), request.headers(), opened)
}

fn file_response(metrics: &Arc<Metrics>, method: &Method, headers: &HeaderMap, opened: Opened) -> Response {
    let Opened { mut file, len, modified } = opened;
    let last_modified = modified.map(httpdate::fmt_http_date);
    // Range applies to GET only (RFC 9110 section 14.2): a HEAD gets the whole file's headers.
    let range = if method == Method::GET {
        let if_range_ok = match (headers.get(header::IF_RANGE), &last_modified) {
            (None, _) => true,
            (Some(value), Some(lm)) => value.as_bytes() == lm.as_bytes(),
            (Some(_), None) => false,
        };
        if if_range_ok {
            parse_range(headers.get(header::RANGE), len)
        } else {
            ByteRange::Full
        }
    } else {
        ByteRange::Full
    };

    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some(lm) = &last_modified {
        builder = builder.header(header::LAST_MODIFIED, lm.as_str());
    }
    let (status, start, count) = match range {
        ByteRange::Full => (StatusCode::OK, 0, len),
        ByteRange::Partial { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        ByteRange::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, count);
    let body = if method == Method::HEAD || count == 0 {
        Body::empty()
    } else {
        if start > 0 {
            if let Err(e) = file.seek(SeekFrom::Start(start)) {
                tracing::error!("cannot seek to byte {start} of a boot file: {e}", e = oasis_proto::error_chain(&e));
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
        Metrics::add(&metrics.http_transfers, 1);
        file_body(file, count, metrics.clone())
    };
    builder.body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Streams `count` bytes from the file's current position, in [`CHUNK_SIZE`] reads on the
/// blocking pool, counting each chunk in `http_bytes_sent` as it is handed to the connection.
fn file_body(file: File, count: u64, metrics: Arc<Metrics>) -> Body {
    let file = Arc::new(file);
    let stream = futures::stream::try_unfold((file, count), move |(file, remaining)| {
        let metrics = metrics.clone();
        async move {
            if remaining == 0 {
                return Ok(None);
            }
            let want = remaining.min(CHUNK_SIZE as u64);
            let reader = file.clone();
            let chunk =
                tokio::task::spawn_blocking(move || read_chunk(&reader, want)).await.map_err(io::Error::other)??;
            let got = chunk.len() as u64;
            Metrics::add(&metrics.http_bytes_sent, got);
            Ok::<_, io::Error>(Some((chunk, (file, remaining - got))))
        }
    });
    Body::from_stream(stream)
}

/// Reads exactly `want` bytes, straight into fresh (not zeroed) memory.
fn read_chunk(file: &File, want: u64) -> io::Result<Bytes> {
    let mut buf = Vec::with_capacity(want as usize);
    let mut reader = file.take(want);
    reader.read_to_end(&mut buf)?;
    if (buf.len() as u64) < want {
        // The headers promised more: end the response early rather than pad it.
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was being served"));
    }
    Ok(Bytes::from(buf))
}

/// What a `Range` header asks of a file of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable range: send the whole file with 200.
    Full,
    /// Bytes `start..=end`, both inside the file: send them with 206.
    Partial { start: u64, end: u64 },
    /// A well-formed range that lies wholly past the end: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 section 14) for a file of `len` bytes.
pub fn parse_range(value: Option<&HeaderValue>, len: u64) -> ByteRange {
    let Some(spec) = value.and_then(|v| v.to_str().ok()) else {
        return ByteRange::Full;
    };
    let Some((unit, set)) = spec.split_once('=') else {
        return ByteRange::Full;
    };
    // An unknown unit, or a header that does not parse, is ignored: the client gets the whole file,
    // which is always a correct answer to a GET.
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return ByteRange::Full;
    }
    // Several ranges would need a multipart/byteranges body. Boot clients (iPXE, UEFI HTTP boot,
    // curl resuming) only ever ask for one, and RFC 9110 lets a server ignore Range and send the
    // whole representation, so that is what several ranges get: 200 and every byte once.
    if set.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let number = |s: &str| if s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    if first.is_empty() {
        // `-n`: the last n bytes.
        let Some(n) = number(last) else { return ByteRange::Full };
        if n == 0 || len == 0 {
            return ByteRange::Unsatisfiable;
        }
        return ByteRange::Partial { start: len.saturating_sub(n), end: len - 1 };
    }
    let Some(start) = number(first) else { return ByteRange::Full };
    let end = if last.is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(end) if end >= start => end,
            // `b-a` with b > a is not a valid range at all, so the header is ignored.
            _ => return ByteRange::Full,
        }
    };
    if start >= len {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Partial { start, end: end.min(len - 1) }
}

/// Decodes `%XX` escapes into bytes; `None` for a `%` not followed by two hex digits.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// At most `burst` log lines per `window`: for warnings a flood can trigger. What is not logged is
/// still counted in the metrics.
#[derive(Debug)]
pub(crate) struct LogLimit {
    burst: u32,
    window: Duration,
    state: Mutex<(Instant, u32)>,
}

impl LogLimit {
    pub(crate) fn new(burst: u32, window: Duration) -> Self {
        Self { burst, window, state: Mutex::new((Instant::now(), 0)) }
    }

    pub(crate) fn allow(&self) -> bool {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if now.duration_since(state.0) >= self.window {
            *state = (now, 0);
        }
        state.1 += 1;
        state.1 <= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, len: u64) -> ByteRange {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn parses_single_ranges() {
        use ByteRange::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(range("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(range("bytes=10-", 100), Partial { start: 10, end: 99 });
        assert_eq!(range("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(range("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(range("BYTES = 5-5", 100), Partial { start: 5, end: 5 });
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        use ByteRange::*;
        assert_eq!(range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(range("bytes=9-1", 100), Full);
        assert_eq!(range("bytes=0-1,5-6", 100), Full);
        assert_eq!(range("items=0-1", 100), Full);
        assert_eq!(range("bytes=a-b", 100), Full);
        assert_eq!(range("bytes=+1-2", 100), Full);
        assert_eq!(range("bytes=5", 100), Full);
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%2e%2E/b%00").unwrap(), b"a../b\0");
        assert_eq!(percent_decode("%2F").unwrap(), b"/");
        assert!(percent_decode("a%2").is_none());
        assert!(percent_decode("a%zz").is_none());
    }

    #[test]
    fn log_limit_allows_a_burst_per_window() {
        let limit = LogLimit::new(2, Duration::from_secs(3600));
        assert!(limit.allow());
        assert!(limit.allow());
        assert!(!limit.allow());
    }
}

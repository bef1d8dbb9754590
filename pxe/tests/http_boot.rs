//! HTTP boot over a real socket on 127.0.0.1: scripts, files with Range and HEAD, traversal, metrics.
//!
//! The client is a few lines of raw HTTP/1.1 so that request targets such as `/boot/../x` reach the
//! server exactly as written, with no client-side normalization.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use oasis_proto::MacAddr;
use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::conn::{Guard, Listener, Timeouts};
use oasis_pxe::conn_limit::Caps;
use oasis_pxe::http::{
    router, serve, BootTarget, HttpBoot, MachineDirectory, ScriptRefusal, StaticDirectory, CHUNK_SIZE,
};
use oasis_pxe::metrics::{ErrorKind, Metrics};
use oasis_pxe::script::{BootProfile, ScriptRenderer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-ROOT";

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    machines: Arc<StaticDirectory>,
    scripts: ScriptRenderer,
    kernel: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// A kernel that spans several chunks and is not a multiple of the chunk size, with no run of
/// repeated bytes that would hide an offset error.
fn kernel_bytes() -> Vec<u8> {
    (0..(2 * CHUNK_SIZE + 12_345)).map(|i| (i % 251) as u8).collect()
}

async fn start() -> Server {
    let machines = Arc::new(StaticDirectory::new());
    start_with(machines.clone(), machines).await
}

/// A server whose scripts are decided by `directory`; `machines` is what it delegates to.
async fn start_with(machines: Arc<StaticDirectory>, directory: Arc<dyn MachineDirectory>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("node")).unwrap();
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    let kernel = kernel_bytes();
    std::fs::write(root.join("node/vmlinuz"), &kernel).unwrap();
    std::fs::write(root.join("node/initrd.img"), b"initrd").unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    std::fs::write(dir.path().join("outside/secret"), SECRET).unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("outdir")).unwrap();

    let profile = BootProfile {
        kernel: "node/vmlinuz".into(),
        initrd: Some("node/initrd.img".into()),
        cmdline: "console=ttyS0".into(),
    };
    profile.validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scripts = ScriptRenderer::new(format!("http://{addr}"), profile);
    let metrics = Arc::new(Metrics::default());
    let state = HttpBoot::new(BootRoot::new(&root).unwrap(), scripts.clone(), directory, metrics.clone());
    let guard = Guard::new(Listener::HttpBoot, Caps::new(1024, 64), Timeouts::default(), metrics.clone());
    tokio::spawn(serve(listener, router(state), guard));
    Server { addr, metrics, machines, scripts, kernel, _dir: dir }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

async fn send(addr: SocketAddr, method: &str, target: &str, extra: &[(&str, &str)]) -> Reply {
    send_from([127, 0, 0, 1].into(), addr, method, target, extra).await
}

/// [`send`] from the local address `source` (anything in 127/8 is this host's).
async fn send_from(source: IpAddr, addr: SocketAddr, method: &str, target: &str, extra: &[(&str, &str)]) -> Reply {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: oasis\r\nConnection: close\r\n");
    for (name, value) in extra {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply { status, headers, body: raw[split + 4..].to_vec() }
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    send(addr, "GET", target, &[]).await
}

async fn get_range(addr: SocketAddr, target: &str, range: &str) -> Reply {
    send(addr, "GET", target, &[("Range", range)]).await
}

fn mac() -> MacAddr {
    "52:54:00:12:34:56".parse().unwrap()
}

#[tokio::test]
async fn boot_script_per_mac() {
    let s = start().await;
    for target in ["/boot.ipxe?mac=52-54-00-12-34-56", "/boot.ipxe?mac=52:54:00:12:34:56"] {
        let r = get(s.addr, target).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(String::from_utf8(r.body).unwrap(), s.scripts.render_boot(mac()));
    }
    assert_eq!(s.machines.boots(mac()), 2);
    let other: MacAddr = "52:54:00:00:00:01".parse().unwrap();
    let r = get(s.addr, "/boot.ipxe?mac=52-54-00-00-00-01").await;
    assert_eq!(String::from_utf8(r.body).unwrap(), s.scripts.render_boot(other));
    assert!(s.scripts.render_boot(other).contains("BOOTIF=01-52-54-00-00-00-01"));
}

#[tokio::test]
async fn local_disk_machines_get_the_local_script() {
    let s = start().await;
    s.machines.mark_local(mac());
    let r = get(s.addr, "/boot.ipxe?mac=52-54-00-12-34-56").await;
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8(r.body).unwrap(), s.scripts.render_local(mac()));
    assert_eq!(s.machines.boots(mac()), 1, "a local boot is still a boot");
}

/// A directory that knows which address each machine holds, as the appliance's does in full DHCP
/// mode: it admits only that address, and gives each network boot a fresh argument.
struct Gated {
    machines: Arc<StaticDirectory>,
    holder: Vec<(MacAddr, IpAddr)>,
    issued: AtomicU32,
    broken: AtomicBool,
}

impl MachineDirectory for Gated {
    fn boot_target(&self, mac: MacAddr) -> BootTarget {
        self.machines.boot_target(mac)
    }

    fn record_boot(&self, mac: MacAddr) {
        self.machines.record_boot(mac)
    }

    fn admit(&self, mac: MacAddr, peer: Option<IpAddr>) -> Result<(), ScriptRefusal> {
        match self.holder.iter().find(|(m, _)| *m == mac) {
            Some((_, ip)) if Some(*ip) == peer => Ok(()),
            _ => Err(ScriptRefusal::Forbidden(format!("{mac} is not leased to {peer:?}"))),
        }
    }

    fn boot_args(&self, _mac: MacAddr, _peer: Option<IpAddr>) -> Result<String, ScriptRefusal> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(ScriptRefusal::Unavailable("the store is gone".into()));
        }
        Ok(format!("oasis.token=t{}", self.issued.fetch_add(1, Ordering::Relaxed)))
    }
}

#[tokio::test]
async fn a_gated_directory_serves_each_script_to_its_holder_only_with_its_own_arguments() {
    let machines = Arc::new(StaticDirectory::new());
    let other: MacAddr = "52:54:00:00:00:02".parse().unwrap();
    let (holder, stranger): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    let gated = Arc::new(Gated {
        machines: machines.clone(),
        holder: vec![(mac(), holder), (other, stranger)],
        issued: AtomicU32::new(0),
        broken: AtomicBool::new(false),
    });
    let s = start_with(machines.clone(), gated.clone()).await;
    let target = "/boot.ipxe?mac=52-54-00-12-34-56";

    let r = send_from(stranger, s.addr, "GET", target, &[]).await;
    assert_eq!(r.status, 403);
    let body = String::from_utf8(r.body).unwrap();
    assert!(body.contains("is not leased to"), "the refusal says why: {body}");
    assert!(!body.contains("oasis.token"), "{body}");
    assert_eq!(s.metrics.error_count(ErrorKind::HttpForbidden), 1);
    assert_eq!(s.machines.boots(mac()), 0, "a refused request is no boot");

    // The holder gets its script, with a fresh argument each time.
    for n in 0..2 {
        let r = send_from(holder, s.addr, "GET", target, &[]).await;
        assert_eq!(r.status, 200);
        let want = s.scripts.render_boot_with(mac(), &format!("oasis.token=t{n}")).unwrap();
        assert_eq!(String::from_utf8(r.body).unwrap(), want);
    }
    let theirs = send_from(stranger, s.addr, "GET", "/boot.ipxe?mac=52-54-00-00-00-02", &[]).await;
    assert_eq!((theirs.status, String::from_utf8(theirs.body).unwrap().contains("oasis.token=t2")), (200, true));
    assert_eq!(send_from(holder, s.addr, "GET", "/boot.ipxe?mac=52-54-00-00-00-02", &[]).await.status, 403);

    // A local boot carries nothing for this boot; the chain script names no machine.
    s.machines.mark_local(mac());
    let local = send_from(holder, s.addr, "GET", target, &[]).await;
    assert_eq!(String::from_utf8(local.body).unwrap(), s.scripts.render_local(mac()));
    assert_eq!(send_from(stranger, s.addr, "GET", target, &[]).await.status, 403);
    assert_eq!(send_from(stranger, s.addr, "GET", "/boot.ipxe", &[]).await.status, 200);

    // What cannot be recorded is not served: the machine asks again.
    gated.broken.store(true, Ordering::Relaxed);
    let r = send_from(stranger, s.addr, "GET", "/boot.ipxe?mac=52-54-00-00-00-02", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(s.metrics.error_count(ErrorKind::HttpForbidden), 3);
}

#[tokio::test]
async fn chain_script_when_the_mac_is_missing_or_garbage() {
    let s = start().await;
    let chain = s.scripts.render_chain();
    for target in
        ["/boot.ipxe", "/boot.ipxe?other=1", "/boot.ipxe?mac=", "/boot.ipxe?mac=zz:zz", "/boot.ipxe?mac=%FF%00"]
    {
        let r = get(s.addr, target).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(String::from_utf8(r.body).unwrap(), chain, "{target}");
    }
    assert_eq!(s.metrics.error_count(ErrorKind::HttpBadMac), 3);
}

#[tokio::test]
async fn serves_whole_files_with_their_headers() {
    let s = start().await;
    let r = get(s.addr, "/boot/node/vmlinuz").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(s.kernel.len().to_string().as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some_and(|v| v.ends_with(" GMT")));
    assert!(r.body == s.kernel, "the body is the file, byte for byte");

    let r = get(s.addr, "/boot/empty").await;
    assert_eq!((r.status, r.header("content-length"), r.body.len()), (200, Some("0"), 0));
}

#[tokio::test]
async fn single_ranges_get_206() {
    let s = start().await;
    let len = s.kernel.len();
    let cases = [
        ("bytes=0-99".to_string(), 0, 99),
        (format!("bytes={}-", CHUNK_SIZE - 10), CHUNK_SIZE - 10, len - 1),
        ("bytes=-50".to_string(), len - 50, len - 1),
        (format!("bytes={}-{}", len - 5, len + 1000), len - 5, len - 1),
        (format!("bytes=-{}", len * 2), 0, len - 1),
    ];
    for (range, start, end) in cases {
        let r = get_range(s.addr, "/boot/node/vmlinuz", &range).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{end}/{len}").as_str()), "{range}");
        assert_eq!(r.header("content-length"), Some((end - start + 1).to_string().as_str()), "{range}");
        assert!(r.body == s.kernel[start..=end], "{range}: wrong bytes");
    }
}

#[tokio::test]
async fn unsatisfiable_ranges_get_416() {
    let s = start().await;
    let len = s.kernel.len();
    for range in [format!("bytes={len}-"), format!("bytes={}-{}", len + 1, len + 9), "bytes=-0".to_string()] {
        let r = get_range(s.addr, "/boot/node/vmlinuz", &range).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}").as_str()), "{range}");
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn multiple_or_malformed_ranges_get_the_whole_file() {
    let s = start().await;
    for range in ["bytes=0-1,5-6", "bytes=0-1, -5", "bytes=9-1", "bytes=x-y", "pages=1-2"] {
        let r = get_range(s.addr, "/boot/node/vmlinuz", range).await;
        assert_eq!(r.status, 200, "{range}");
        assert!(r.header("content-range").is_none());
        assert!(r.body == s.kernel, "{range}: not the whole file");
    }
}

#[tokio::test]
async fn if_range_with_another_date_gets_the_whole_file() {
    let s = start().await;
    let extra = [("Range", "bytes=0-9"), ("If-Range", "Thu, 01 Jan 1970 00:00:00 GMT")];
    let r = send(s.addr, "GET", "/boot/node/vmlinuz", &extra).await;
    assert_eq!(r.status, 200);
    let lm = r.header("last-modified").unwrap().to_string();
    let r = send(s.addr, "GET", "/boot/node/vmlinuz", &[("Range", "bytes=0-9"), ("If-Range", &lm)]).await;
    assert_eq!(r.status, 206);
    assert!(r.body == s.kernel[..10]);
}

#[tokio::test]
async fn head_has_the_headers_and_no_body() {
    let s = start().await;
    let transfers_before = s.metrics.http_transfers.load(Ordering::Relaxed);
    for extra in [&[][..], &[("Range", "bytes=0-9")][..]] {
        let r = send(s.addr, "HEAD", "/boot/node/vmlinuz", extra).await;
        assert_eq!(r.status, 200, "HEAD ignores Range");
        assert_eq!(r.header("content-length"), Some(s.kernel.len().to_string().as_str()));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        assert!(r.header("last-modified").is_some());
        assert!(r.body.is_empty(), "HEAD sent {} body bytes", r.body.len());
    }
    assert_eq!(s.metrics.http_transfers.load(Ordering::Relaxed), transfers_before);
    let r = send(s.addr, "HEAD", "/boot/missing", &[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn every_way_out_of_the_root_is_404() {
    let s = start().await;
    let long = format!("/boot/{}", "a".repeat(300));
    let targets = [
        "/boot/../secret",
        "/boot/node/../../secret",
        "/boot/%2e%2e/secret",
        "/boot/%2E%2E%2Fsecret",
        "/boot/..%2fsecret",
        "/boot/node%2F..%2F..%2Fsecret",
        "/boot/..%5Csecret",
        "/boot/%2Fetc%2Fpasswd",
        "/boot//etc/passwd",
        "/boot/node/vmlinuz%00",
        "/boot/node/vmlinuz%00.txt",
        "/boot/leak",
        "/boot/outdir/secret",
        "/boot/outdir%2Fsecret",
        "/boot/%",
        "/boot/%zz",
        long.as_str(),
    ];
    for target in targets {
        for method in ["GET", "HEAD"] {
            let r = send(s.addr, method, target, &[]).await;
            assert_eq!(r.status, 404, "{method} {target}");
            assert!(!r.body.windows(SECRET.len()).any(|w| w == SECRET), "{method} {target} leaked the secret");
            assert!(!r.body.starts_with(&s.kernel[..16]), "{method} {target} served the kernel");
        }
    }
    assert_eq!(s.metrics.error_count(ErrorKind::HttpNotFound), 2 * targets.len() as u64);
}

#[tokio::test]
async fn missing_files_and_unknown_paths_are_404() {
    let s = start().await;
    for target in ["/boot/missing.efi", "/boot/node", "/boot/", "/nothing", "/", "/boot", "/boot.ipxe/x"] {
        let r = get(s.addr, target).await;
        assert_eq!(r.status, 404, "{target}");
    }
    // A known path with a method it does not serve is 405 (with Allow), as HTTP has it.
    let r = send(s.addr, "POST", "/boot.ipxe?mac=52-54-00-12-34-56", &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(s.machines.boots(mac()), 0);
    // `missing.efi` and `node` (a directory) are the file service's own 404s and are counted; the
    // rest never named a file (an empty wildcard does not match `/boot/{*path}`).
    assert_eq!(s.metrics.error_count(ErrorKind::HttpNotFound), 2);
}

#[tokio::test]
async fn metrics_count_requests_transfers_and_bytes() {
    let s = start().await;
    get(s.addr, "/boot.ipxe?mac=52-54-00-12-34-56").await;
    get(s.addr, "/boot/node/vmlinuz").await;
    get_range(s.addr, "/boot/node/vmlinuz", "bytes=0-99").await;
    get(s.addr, "/boot/missing").await;
    let r = get(s.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = String::from_utf8(r.body).unwrap();
    let bytes = s.kernel.len() + 100;
    for line in [
        "oasis_http_requests_total 5\n".to_string(),
        "oasis_http_transfers_total 2\n".to_string(),
        format!("oasis_http_bytes_sent_total {bytes}\n"),
        "oasis_errors_total{kind=\"http_not_found\"} 1\n".to_string(),
    ] {
        assert!(text.contains(&line), "/metrics lacks {line:?}:\n{text}");
    }
}

#[tokio::test]
async fn file_names_are_percent_decoded() {
    let s = start().await;
    let dir = Path::new(s._dir.path()).join("root");
    std::fs::write(dir.join("with space.img"), b"spaced").unwrap();
    let r = get(s.addr, "/boot/with%20space.img").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"spaced"[..]));
}

//! Slow, idle and greedy clients against the real HTTP boot server on loopback (issue 13, defect
//! 4): connections that never finish their request head are closed after the header timeout,
//! connections over the caps are closed at accept (or an idle one makes room), a client that
//! stops reading a large file is cut off, and a real client is served throughout.
//!
//! Clients bind their own loopback source address (127.0.0.2, .3, …) because the caps count per
//! source. No test asserts a duration: each waits for the server to act, with a generous bound
//! that only a server that never acts runs into.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::conn::{ConnEvent, Guard, Listener, Timeouts};
use oasis_pxe::conn_limit::Caps;
use oasis_pxe::http::{router, serve, HttpBoot, StaticDirectory};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::script::{BootProfile, ScriptRenderer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long a test waits for something the server must do before calling it a failure. Far
/// longer than any timeout the tests configure; reached only when the server never acts.
const PATIENCE: Duration = Duration::from_secs(30);
/// Timeouts that never fire during a test.
const NEVER: Duration = Duration::from_secs(3600);
/// Large enough that neither side's socket buffers hold it, so a client that stops reading
/// leaves the server's sends waiting.
const BIG: usize = 16 << 20;
const KERNEL: &[u8] = b"a small kernel";

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn count(&self, event: ConnEvent) -> u64 {
        self.metrics.connections.get(Listener::HttpBoot, event)
    }

    /// Waits until the server has done `what`.
    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        let waited = tokio::time::timeout(PATIENCE, async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the server never {what}:\n{}", self.metrics.render());
    }
}

fn timeouts() -> Timeouts {
    Timeouts { handshake: NEVER, header: NEVER, body: NEVER, write_stall: NEVER, write_min_progress: 64 * 1024 }
}

async fn start(caps: Caps, timeouts: Timeouts) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("node")).unwrap();
    std::fs::write(root.join("node/vmlinuz"), KERNEL).unwrap();
    std::fs::write(root.join("big"), (0..BIG).map(|i| (i % 253) as u8).collect::<Vec<u8>>()).unwrap();
    let profile = BootProfile { kernel: "node/vmlinuz".into(), initrd: None, cmdline: String::new() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scripts = ScriptRenderer::new(format!("http://{addr}"), profile);
    let metrics = Arc::new(Metrics::default());
    let state =
        HttpBoot::new(BootRoot::new(&root).unwrap(), scripts, Arc::new(StaticDirectory::new()), metrics.clone());
    let guard = Guard::new(Listener::HttpBoot, caps, timeouts, metrics.clone());
    tokio::spawn(serve(listener, router(state), guard));
    Server { addr, metrics, _dir: dir }
}

/// A connection from `127.0.0.LAST`.
async fn connect_from(last: u8, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    // A small receive buffer: a client that stops reading stops the server's sends quickly.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A connection that starts a request head and never finishes it.
async fn slow_header(last: u8, addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(last, addr).await;
    stream.write_all(b"GET /boot/node/vmlinuz HTTP/1.1\r\nHost: oasis\r\nX-Slow: ").await.unwrap();
    stream
}

/// Whether the server closes `stream` (EOF or reset) within [`PATIENCE`]; what it sent is dropped.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let drain = async {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, drain).await.is_ok()
}

/// `GET target` from `127.0.0.LAST`: the status and the body.
async fn get_from(last: u8, addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let mut stream = connect_from(last, addr).await;
    let request = format!("GET {target} HTTP/1.1\r\nHost: oasis\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw)).await.expect("an answer in time").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let status = std::str::from_utf8(&raw[..split]).unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

#[tokio::test]
async fn slow_headers_silent_and_idle_connections_are_closed_by_the_header_timeout() {
    let s = start(Caps::new(1024, 64), Timeouts { header: Duration::from_millis(200), ..timeouts() }).await;
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(slow_header(3, s.addr).await);
    }
    for _ in 0..10 {
        // Connects and says nothing at all.
        held.push(connect_from(4, s.addr).await);
    }
    // A kept-alive connection that asked once and then sits idle.
    let mut idle = connect_from(5, s.addr).await;
    idle.write_all(b"GET /boot/node/vmlinuz HTTP/1.1\r\nHost: oasis\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let mut got = 0;
    while !answer[..got].ends_with(KERNEL) {
        got += idle.read(&mut answer[got..]).await.unwrap();
    }
    held.push(idle);

    for (i, stream) in held.iter_mut().enumerate() {
        assert!(closed_by_server(stream).await, "connection {i} was never closed by the server");
    }
    s.wait_for("counted 51 header timeouts", |s| s.count(ConnEvent::HeaderTimeout) == 51).await;
    assert_eq!(s.metrics.connections.open(Listener::HttpBoot), 0);
    assert_eq!(get_from(2, s.addr, "/boot/node/vmlinuz").await, (200, KERNEL.to_vec()));
}

#[tokio::test]
async fn connections_over_the_caps_are_closed_at_accept_and_idle_ones_make_room() {
    let s = start(Caps::new(12, 4), timeouts()).await;
    // Connected one after another, so accepted (and admitted) in this order: the kernel's accept
    // queue is first in, first out.
    let mut held = Vec::new();
    for last in [3, 4, 5] {
        for _ in 0..4 {
            held.push(slow_header(last, s.addr).await);
        }
    }

    // Over the per-source cap: closed at once, and nobody else is evicted for it.
    let mut fifth = slow_header(3, s.addr).await;
    assert!(closed_by_server(&mut fifth).await, "a fifth connection from one address was let in");
    assert_eq!((s.count(ConnEvent::RefusedSource), s.count(ConnEvent::Evicted)), (1, 0));

    // At the total cap a real client is still served: the oldest slow connection makes room.
    assert_eq!(get_from(2, s.addr, "/boot/node/vmlinuz").await, (200, KERNEL.to_vec()));
    assert_eq!(s.count(ConnEvent::Evicted), 1);
    assert!(closed_by_server(&mut held[0]).await, "the oldest idle connection was not the one evicted");
    assert_eq!(s.metrics.connections.open(Listener::HttpBoot), 11);

    // Every slot busy with a download nobody reads: a newcomer cannot displace any of them.
    drop(held);
    s.wait_for("released the slow connections", |s| s.metrics.connections.open(Listener::HttpBoot) == 0).await;
    let before = s.metrics.connections.requests(Listener::HttpBoot);
    let mut busy = Vec::new();
    for last in [3, 4, 5] {
        for _ in 0..4 {
            let mut stream = connect_from(last, s.addr).await;
            stream.write_all(b"GET /boot/big HTTP/1.1\r\nHost: oasis\r\n\r\n").await.unwrap();
            busy.push(stream);
        }
    }
    s.wait_for("took the 12 downloads", |s| s.metrics.connections.requests(Listener::HttpBoot) == before + 12).await;
    let mut newcomer = connect_from(2, s.addr).await;
    assert!(closed_by_server(&mut newcomer).await, "a connection over the total cap was let in");
    assert_eq!(s.count(ConnEvent::RefusedFull), 1);
    assert_eq!(s.metrics.connections.open(Listener::HttpBoot), 12);
    // The downloads were not disturbed: each still delivers its whole file.
    let mut whole = busy.pop().unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = vec![0u8; 1 << 20];
        while raw.len() < BIG + 100 {
            let n = whole.read(&mut buf).await.unwrap();
            assert!(n > 0, "the download ended early");
            raw.extend_from_slice(&buf[..n]);
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                if raw.len() - split - 4 == BIG {
                    return;
                }
            }
        }
    })
    .await
    .expect("the download completes");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_large_file_is_cut_off() {
    let s = start(Caps::new(1024, 64), Timeouts { write_stall: Duration::from_millis(300), ..timeouts() }).await;
    let mut stalled = connect_from(3, s.addr).await;
    stalled.write_all(b"GET /boot/big HTTP/1.1\r\nHost: oasis\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1024];
    assert!(stalled.read(&mut first).await.unwrap() > 0);
    // Stops reading; the server's sends wait until it gives up on the client.
    s.wait_for("gave up on a client that stopped reading", |s| s.count(ConnEvent::WriteTimeout) == 1).await;
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest).await;
    assert!(rest.len() < BIG, "the whole file went out to a client that stopped reading");
    s.wait_for("released the stalled connection", |s| s.metrics.connections.open(Listener::HttpBoot) == 0).await;
    // A client that reads gets the whole file.
    let (status, body) = get_from(2, s.addr, "/boot/big").await;
    assert_eq!((status, body.len()), (200, BIG));
    assert_eq!(s.count(ConnEvent::WriteTimeout), 1);
}

//! End-to-end tests: a real server on 127.0.0.1 and the client, or hand-written clients over a
//! raw socket for the misbehaving cases. They check behaviour, never timings; the waits below are
//! only guards against a hang.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::client::{fetch, ClientError, ClientOptions};
use super::config::TftpConfig;
use super::packet::{ack_bytes, ErrorCode, Mode, Packet, Request};
use super::server::TftpServer;
use crate::boot_root::BootRoot;
use crate::metrics::{ErrorKind, Metrics};

/// Longest wait for any one packet before a test fails instead of hanging.
const GUARD: Duration = Duration::from_secs(20);

struct Fixture {
    _dir: tempfile::TempDir,
    outside: PathBuf,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    task: JoinHandle<()>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes that differ from block to block, so a misplaced block shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 8) ^ (i >> 16)) as u8).collect()
}

async fn start(config: TftpConfig, files: &[(&str, usize)]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    for (name, len) in files {
        std::fs::write(root.join(name), pattern(*len)).unwrap();
    }
    let outside = dir.path().join("secret");
    std::fs::write(&outside, b"the secret outside the root").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("leak")).unwrap();
    let metrics = Arc::new(Metrics::default());
    let server =
        TftpServer::bind("127.0.0.1:0".parse().unwrap(), BootRoot::new(&root).unwrap(), config, metrics.clone())
            .await
            .unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.run());
    Fixture { _dir: dir, outside, addr, metrics, task }
}

fn options(blksize: Option<u16>, windowsize: Option<u16>) -> ClientOptions {
    ClientOptions { blksize, windowsize, tsize: true, ..ClientOptions::default() }
}

async fn raw_client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

fn rrq(name: &[u8], options: &[(&str, &str)]) -> Vec<u8> {
    let options = options.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    Packet::Rrq(Request { filename: name.to_vec(), mode: Mode::Octet, options }).to_bytes()
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(GUARD, socket.recv_from(&mut buf)).await.expect("a packet in time").unwrap();
    buf.truncate(n);
    (buf, from)
}

/// Expects DATA and returns its block number and payload.
async fn recv_data(socket: &UdpSocket) -> (u16, Vec<u8>, SocketAddr) {
    let (packet, from) = recv(socket).await;
    match Packet::parse(&packet) {
        Ok(Packet::Data { block, data }) => (block, data.to_vec(), from),
        other => panic!("expected DATA, got {other:?}"),
    }
}

/// Expects an ERROR and returns its code.
async fn recv_error(socket: &UdpSocket) -> (ErrorCode, String) {
    let (packet, _) = recv(socket).await;
    match Packet::parse(&packet) {
        Ok(Packet::Error { code, message }) => (code, message),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counter(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn every_blksize_and_windowsize_gives_identical_bytes() {
    let size = 300_001;
    let fx = start(TftpConfig::default(), &[("ipxe/kernel", size)]).await;
    for blksize in [512u16, 1468, 8192] {
        for windowsize in [1u16, 4, 16] {
            let (data, stats) =
                fetch(fx.addr, b"ipxe/kernel", &options(Some(blksize), Some(windowsize))).await.unwrap();
            assert!(data == pattern(size), "blksize {blksize} windowsize {windowsize}: bytes differ");
            assert_eq!((stats.blksize, stats.windowsize, stats.tsize), (blksize, windowsize, Some(size as u64)));
            assert!(stats.oack);
        }
    }
    eventually("completed counters", || counter(&fx.metrics.tftp_transfers_completed) == 9).await;
    assert_eq!(counter(&fx.metrics.tftp_bytes_sent), 9 * size as u64);
    assert_eq!(counter(&fx.metrics.tftp_transfers_failed), 0);
}

#[tokio::test]
async fn exact_multiple_of_blksize_ends_with_an_empty_block() {
    let fx = start(TftpConfig::default(), &[("multiple", 8192 * 10), ("small", 512 * 3), ("empty", 0)]).await;
    for windowsize in [1u16, 4] {
        let (data, stats) = fetch(fx.addr, b"multiple", &options(Some(8192), Some(windowsize))).await.unwrap();
        assert!(data == pattern(8192 * 10));
        assert_eq!(stats.bytes, 8192 * 10);
    }
    let (data, stats) = fetch(fx.addr, b"small", &ClientOptions::default()).await.unwrap();
    assert!(data == pattern(512 * 3));
    assert!(!stats.oack);
    let (data, _) = fetch(fx.addr, b"empty", &options(Some(1468), Some(4))).await.unwrap();
    assert!(data.is_empty());

    // On the wire: blocks 1..=3 full, then block 4 empty.
    let socket = raw_client().await;
    socket.send_to(&rrq(b"small", &[]), fx.addr).await.unwrap();
    for want in 1..=4u16 {
        let (block, data, from) = recv_data(&socket).await;
        assert_eq!((block, data.len()), (want, if want == 4 { 0 } else { 512 }));
        socket.send_to(&ack_bytes(block), from).await.unwrap();
    }
}

#[tokio::test]
async fn block_numbers_roll_over() {
    // blksize 8: more than 65536 blocks in half a megabyte.
    let size = 65536 * 8 + 100;
    let fx = start(TftpConfig::default(), &[("big", size)]).await;
    for windowsize in [16u16, 1] {
        let (data, stats) = fetch(fx.addr, b"big", &options(Some(8), Some(windowsize))).await.unwrap();
        assert_eq!(stats.blksize, 8);
        assert!(data == pattern(size), "windowsize {windowsize}: bytes differ after rollover");
    }
}

#[tokio::test]
async fn servers_without_options_get_plain_transfers() {
    // no_blksize drops the only option asked for: no OACK, so RFC 1350 with 512-byte blocks.
    let config = TftpConfig { no_blksize: true, ..TftpConfig::default() };
    let fx = start(config, &[("kernel", 5000)]).await;
    let asked = ClientOptions { blksize: Some(1468), ..ClientOptions::default() };
    let (data, stats) = fetch(fx.addr, b"kernel", &asked).await.unwrap();
    assert!(data == pattern(5000));
    assert_eq!((stats.oack, stats.blksize, stats.windowsize), (false, 512, 1));
}

#[tokio::test]
async fn lost_data_and_lost_acks_are_retransmitted() {
    let config = TftpConfig { timeout: Duration::from_millis(50), ..TftpConfig::default() };
    let fx = start(config, &[("file", 512 * 4 + 10)]).await;
    let socket = raw_client().await;
    socket.send_to(&rrq(b"file", &[]), fx.addr).await.unwrap();
    let mut received = Vec::new();
    let mut ignored_first = false;
    let mut dropped_ack = false;
    let mut next = 1u16;
    loop {
        let (block, data, from) = recv_data(&socket).await;
        if block != next {
            continue;
        }
        if !ignored_first {
            // Pretend the first DATA was lost.
            ignored_first = true;
            continue;
        }
        if block == 3 && !dropped_ack {
            // Pretend our ACK of block 3 was lost: the server must send block 3 again.
            dropped_ack = true;
            continue;
        }
        received.extend_from_slice(&data);
        next += 1;
        socket.send_to(&ack_bytes(block), from).await.unwrap();
        if data.len() < 512 {
            break;
        }
    }
    assert!(received == pattern(512 * 4 + 10));
    eventually("a completed transfer", || counter(&fx.metrics.tftp_transfers_completed) == 1).await;
}

#[tokio::test]
async fn a_partial_ack_slides_the_window() {
    let config = TftpConfig { timeout: Duration::from_secs(5), ..TftpConfig::default() };
    let fx = start(config, &[("file", 512 * 10 + 1)]).await;
    let socket = raw_client().await;
    socket.send_to(&rrq(b"file", &[("windowsize", "4")]), fx.addr).await.unwrap();
    let (oack, from) = recv(&socket).await;
    assert!(matches!(Packet::parse(&oack), Ok(Packet::Oack { .. })));
    socket.send_to(&ack_bytes(0), from).await.unwrap();
    let mut blocks = Vec::new();
    for _ in 0..4 {
        blocks.push(recv_data(&socket).await.0);
    }
    assert_eq!(blocks, [1, 2, 3, 4]);
    // Block 2 "was lost": acknowledge block 1 only. The window restarts at 2.
    socket.send_to(&ack_bytes(1), from).await.unwrap();
    let mut blocks = Vec::new();
    for _ in 0..4 {
        blocks.push(recv_data(&socket).await.0);
    }
    assert_eq!(blocks, [2, 3, 4, 5]);
    // Duplicate and old ACKs are ignored: no block is sent because of them.
    socket.send_to(&ack_bytes(1), from).await.unwrap();
    socket.send_to(&ack_bytes(0), from).await.unwrap();
    socket.send_to(&ack_bytes(5), from).await.unwrap();
    let mut blocks = Vec::new();
    for _ in 0..4 {
        blocks.push(recv_data(&socket).await.0);
    }
    assert_eq!(blocks, [6, 7, 8, 9], "an old ACK made the server send again");
    socket.send_to(&ack_bytes(9), from).await.unwrap();
    let (b10, _, _) = recv_data(&socket).await;
    let (b11, last, _) = recv_data(&socket).await;
    assert_eq!((b10, b11, last.len()), (10, 11, 1));
    socket.send_to(&ack_bytes(11), from).await.unwrap();
    eventually("a completed transfer", || counter(&fx.metrics.tftp_transfers_completed) == 1).await;
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let config = TftpConfig { timeout: Duration::from_millis(10), retries: 2, ..TftpConfig::default() };
    let fx = start(config, &[("file", 100_000)]).await;
    let socket = raw_client().await;
    socket.send_to(&rrq(b"file", &[("blksize", "1468"), ("windowsize", "8")]), fx.addr).await.unwrap();
    eventually("a timeout", || fx.metrics.error_count(ErrorKind::TftpTimeout) == 1).await;
    eventually("a failed transfer", || counter(&fx.metrics.tftp_transfers_failed) == 1).await;
    // The OACK was sent three times (once, then two retries), then an ERROR.
    let mut oacks = 0;
    loop {
        let (packet, _) = recv(&socket).await;
        match Packet::parse(&packet) {
            Ok(Packet::Oack { .. }) => oacks += 1,
            Ok(Packet::Error { .. }) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(oacks, 3);
}

#[tokio::test]
async fn a_client_error_ends_the_transfer_quietly() {
    // EDK2: asks for tsize, reads the OACK, sends ERROR, asks again.
    let fx = start(TftpConfig::default(), &[("ipxe.efi", 4000)]).await;
    let socket = raw_client().await;
    socket.send_to(&rrq(b"ipxe.efi", &[("tsize", "0")]), fx.addr).await.unwrap();
    let (oack, from) = recv(&socket).await;
    let Ok(Packet::Oack { options }) = Packet::parse(&oack) else { panic!("expected an OACK") };
    assert_eq!(options, [("tsize".to_string(), "4000".to_string())]);
    let abort = Packet::Error { code: ErrorCode::OptionRefused, message: "only wanted the size".into() };
    socket.send_to(&abort.to_bytes(), from).await.unwrap();
    eventually("the transfer to end", || counter(&fx.metrics.tftp_transfers_failed) == 1).await;
    assert_eq!(fx.metrics.error_count(ErrorKind::TftpTimeout), 0);
    let (data, _) = fetch(fx.addr, b"ipxe.efi", &options_blk(1468)).await.unwrap();
    assert!(data == pattern(4000));
}

fn options_blk(blksize: u16) -> ClientOptions {
    options(Some(blksize), None)
}

#[tokio::test]
async fn two_hundred_concurrent_transfers_complete() {
    let size = 100_000;
    let fx = start(TftpConfig::default(), &[("initrd", size)]).await;
    let mut tasks = Vec::new();
    for i in 0..200u16 {
        let addr = fx.addr;
        let opts = options(Some([512, 1468, 8192][usize::from(i % 3)]), Some([1, 4, 16][usize::from(i % 3)]));
        tasks.push(tokio::spawn(async move { fetch(addr, b"initrd", &opts).await }));
    }
    let want = pattern(size);
    for task in tasks {
        let (data, _) = task.await.unwrap().unwrap();
        assert!(data == want);
    }
    eventually("200 completed", || counter(&fx.metrics.tftp_transfers_completed) == 200).await;
}

#[tokio::test]
async fn traversal_attempts_are_refused_and_the_server_keeps_serving() {
    let fx = start(TftpConfig::default(), &[("ipxe/undionly.kpxe", 3000)]).await;
    let secret = std::fs::read(&fx.outside).unwrap();
    let long = vec![b'a'; 300];
    let names: [&[u8]; 6] = [b"../secret", b"/etc/passwd", b"..\\secret", b"ipxe/../../secret", &long, b"leak"];
    for name in names {
        let socket = raw_client().await;
        socket.send_to(&rrq(name, &[("blksize", "1468")]), fx.addr).await.unwrap();
        let (code, message) = recv_error(&socket).await;
        assert_eq!((code, message.as_str()), (ErrorCode::AccessViolation, "access violation"), "{name:?}");
    }
    // A NUL byte ends the name on the wire; what follows is not a mode, so the request is refused
    // as malformed before any file is looked at.
    let socket = raw_client().await;
    socket.send_to(b"\x00\x01ipxe/undionly.kpxe\x00../secret\x00octet\x00", fx.addr).await.unwrap();
    let (code, _) = recv_error(&socket).await;
    assert_eq!(code, ErrorCode::IllegalOperation);

    assert_eq!(fx.metrics.error_count(ErrorKind::TftpTraversal), 6);
    assert_eq!(counter(&fx.metrics.tftp_transfers_started), 0);
    assert_eq!(counter(&fx.metrics.tftp_bytes_sent), 0);
    let (data, _) = fetch(fx.addr, b"ipxe/undionly.kpxe", &options_blk(1468)).await.unwrap();
    assert!(data == pattern(3000));
    assert!(!data.windows(secret.len()).any(|w| w == secret.as_slice()));
}

#[tokio::test]
async fn missing_files_get_file_not_found() {
    let fx = start(TftpConfig::default(), &[("present", 10)]).await;
    let err = fetch(fx.addr, b"pxelinux.cfg/01-52-54-00-12-34-56", &ClientOptions::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Server { code: ErrorCode::FileNotFound, .. }), "{err:?}");
    let err = fetch(fx.addr, b"ipxe", &ClientOptions::default()).await.unwrap_err();
    assert!(matches!(err, ClientError::Server { code: ErrorCode::FileNotFound, .. }), "a directory: {err:?}");
    assert_eq!(fx.metrics.error_count(ErrorKind::TftpNotFound), 2);
}

#[tokio::test]
async fn write_requests_are_refused() {
    let fx = start(TftpConfig::default(), &[("present", 10)]).await;
    let socket = raw_client().await;
    let wrq = Packet::Wrq(Request { filename: b"present".to_vec(), mode: Mode::Octet, options: vec![] });
    socket.send_to(&wrq.to_bytes(), fx.addr).await.unwrap();
    assert_eq!(recv_error(&socket).await, (ErrorCode::AccessViolation, "read-only server".to_string()));
    assert_eq!(std::fs::read(fx._dir.path().join("root/present")).unwrap(), pattern(10));
}

#[tokio::test]
async fn garbage_gets_an_error_and_the_server_keeps_serving() {
    let fx = start(TftpConfig::default(), &[("kernel", 2000)]).await;
    let socket = raw_client().await;
    let garbage: [&[u8]; 6] =
        [b"", b"\x00", b"\x00\x09hello", b"\x00\x01no-terminator", b"\x00\x04\x00\x01", b"\x00\x03\x00\x01data"];
    for datagram in garbage {
        socket.send_to(datagram, fx.addr).await.unwrap();
        let (code, _) = recv_error(&socket).await;
        assert_eq!(code, ErrorCode::IllegalOperation, "{datagram:?}");
    }
    // An ERROR to the request port is not answered (no error ping-pong); the next request is.
    socket
        .send_to(&Packet::Error { code: ErrorCode::NotDefined, message: "x".into() }.to_bytes(), fx.addr)
        .await
        .unwrap();
    socket.send_to(&rrq(b"kernel", &[]), fx.addr).await.unwrap();
    let (block, _, _) = recv_data(&socket).await;
    assert_eq!(block, 1);
    assert_eq!(fx.metrics.error_count(ErrorKind::TftpMalformed), 6);
    let (data, _) = fetch(fx.addr, b"kernel", &options_blk(1468)).await.unwrap();
    assert!(data == pattern(2000));
}

#[tokio::test]
async fn requests_beyond_max_transfers_are_told_the_server_is_busy() {
    let config = TftpConfig { max_transfers: 1, timeout: Duration::from_secs(10), ..TftpConfig::default() };
    let fx = start(config, &[("kernel", 2000)]).await;
    // The first transfer is held open: its client never acknowledges.
    let holder = raw_client().await;
    holder.send_to(&rrq(b"kernel", &[]), fx.addr).await.unwrap();
    let _ = recv_data(&holder).await;
    let socket = raw_client().await;
    socket.send_to(&rrq(b"kernel", &[]), fx.addr).await.unwrap();
    assert_eq!(recv_error(&socket).await, (ErrorCode::NotDefined, "server busy".to_string()));
}

#[tokio::test]
async fn bind_refuses_a_config_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = BootRoot::new(dir.path()).unwrap();
    for config in [
        TftpConfig { max_blksize: 7, ..TftpConfig::default() },
        TftpConfig { max_windowsize: 0, ..TftpConfig::default() },
        TftpConfig { timeout: Duration::ZERO, ..TftpConfig::default() },
        TftpConfig { max_transfers: 0, ..TftpConfig::default() },
    ] {
        let result = TftpServer::bind("127.0.0.1:0".parse().unwrap(), root.clone(), config, Arc::default()).await;
        assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
    }
}

#[tokio::test]
async fn netascii_is_served_as_bytes_and_timeout_is_granted() {
    let fx = start(TftpConfig::default(), &[("pxelinux.cfg", 700)]).await;
    let socket = raw_client().await;
    let request = Packet::Rrq(Request { filename: b"pxelinux.cfg".to_vec(), mode: Mode::Netascii, options: vec![] });
    socket.send_to(&request.to_bytes(), fx.addr).await.unwrap();
    let mut received = Vec::new();
    loop {
        let (block, data, from) = recv_data(&socket).await;
        received.extend_from_slice(&data);
        socket.send_to(&ack_bytes(block), from).await.unwrap();
        if data.len() < 512 {
            break;
        }
    }
    assert!(received == pattern(700));
    let asked = ClientOptions { timeout: Some(2), ..options(Some(1468), Some(4)) };
    let (data, stats) = fetch(fx.addr, b"pxelinux.cfg", &asked).await.unwrap();
    assert!(data == pattern(700));
    assert_eq!((stats.timeout, stats.tsize), (Some(2), Some(700)));
}

/// A hand-written server that loses packets, to check the client's side of recovery.
#[tokio::test]
async fn the_client_recovers_from_lost_packets() {
    let listener = raw_client().await;
    let server = listener.local_addr().unwrap();
    let file = pattern(512 * 4 + 7);
    let expected = file.clone();
    let client = tokio::spawn(async move {
        let asked = ClientOptions {
            blksize: Some(512),
            windowsize: Some(4),
            resend_after: Duration::from_millis(50),
            retries: 50,
            ..ClientOptions::default()
        };
        fetch(server, b"f", &asked).await
    });
    let (request, peer) = recv(&listener).await;
    assert!(matches!(Packet::parse(&request), Ok(Packet::Rrq(_))));
    let tid = raw_client().await;
    let oack = Packet::Oack { options: vec![("blksize".into(), "512".into()), ("windowsize".into(), "4".into())] };
    tid.send_to(&oack.to_bytes(), peer).await.unwrap();
    // The first ACK 0 "is lost": the client must send it again when nothing comes.
    assert_eq!(next_ack(&tid).await, 0);
    assert_eq!(next_ack(&tid).await, 0);
    let block = |n: usize| {
        let data = &file[(n - 1) * 512..(n * 512).min(file.len())];
        Packet::Data { block: n as u16, data }.to_bytes()
    };
    // Block 2 "is lost": the client acknowledges block 1, and the window restarts there.
    for n in [1, 3, 4] {
        tid.send_to(&block(n), peer).await.unwrap();
    }
    ack_reaching(&tid, 1).await;
    for n in [2, 3, 4, 5] {
        tid.send_to(&block(n), peer).await.unwrap();
    }
    ack_reaching(&tid, 5).await;
    let (data, stats) = client.await.unwrap().unwrap();
    assert!(data == expected);
    assert!(stats.resends >= 2, "{stats:?}");
}

/// The next ACK's block number, skipping anything else.
async fn next_ack(socket: &UdpSocket) -> u16 {
    loop {
        let (packet, _) = recv(socket).await;
        if let Ok(Packet::Ack { block }) = Packet::parse(&packet) {
            return block;
        }
    }
}

/// Waits for an ACK of `want`. Repeats of earlier ACKs (the client's timer may fire on a slow
/// machine) are skipped; an ACK past `want` is a bug.
async fn ack_reaching(socket: &UdpSocket, want: u16) {
    loop {
        let block = next_ack(socket).await;
        assert!(block <= want, "ACK {block} while waiting for {want}");
        if block == want {
            return;
        }
    }
}

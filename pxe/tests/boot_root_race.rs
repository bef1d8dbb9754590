//! Regression (issue 13): the boot root was checked by canonicalizing a name and then opening it
//! again by path, so a directory swapped for a symlink between the two served a file from outside
//! the root (51 of 472 HTTP requests in the report; TFTP had the same pattern). Here a thread
//! swaps a directory inside the root for a symlink to a directory outside, over and over, while
//! real HTTP and TFTP servers on 127.0.0.1 are asked for a file under it. No answer may ever carry
//! the outside file.

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::http::{router, serve, HttpBoot, StaticDirectory};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::script::{BootProfile, ScriptRenderer};
use oasis_pxe::tftp::{fetch, ClientError, ClientOptions, TftpConfig, TftpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const INSIDE: &[u8] = b"the kernel inside the boot root";
const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-BOOT-ROOT";
/// Requests per client, and clients at once.
const REQUESTS: usize = 250;
const CLIENTS: usize = 8;
/// Directories below the swapped one: the deeper the file, the longer the old code took between
/// its check of the path and its open, and the likelier a swap fell in between.
const DEPTH: usize = 110;

/// `node/d/d/.../vmlinuz`, relative to the root.
fn file_name() -> String {
    let mut name = "node".to_string();
    for _ in 0..DEPTH {
        name.push_str("/d");
    }
    name.push_str("/vmlinuz");
    name
}

struct Race {
    /// Holds the directories until the race is dropped.
    _dir: tempfile::TempDir,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    swapper: Option<JoinHandle<u64>>,
}

impl Race {
    /// A root with `node/vmlinuz`, a directory outside it with its own `vmlinuz`, and a thread
    /// that keeps swapping `node` for a symlink to the outside directory and back.
    fn start() -> Race {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let inside = root.join(file_name());
        std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
        std::fs::write(&inside, INSIDE).unwrap();
        let outside = dir.path().join("outside");
        let secret = outside.join(file_name().strip_prefix("node/").unwrap());
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(&secret, SECRET).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (node, link, stop) = (root.join("node"), root.join("node.link"), stop.clone());
            std::os::unix::fs::symlink(&outside, &link).unwrap();
            std::thread::spawn(move || swap_until(&node, &link, &stop))
        };
        Race { _dir: dir, root, stop, swapper: Some(swapper) }
    }

    /// Stops the swapper, with the real directory back in place; returns how often it swapped.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.swapper.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Race {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Exchanges `node` (the real directory) and `link` (the symlink to the outside) atomically
/// until told to stop, ending with the real directory back at `node`.
fn swap_until(node: &Path, link: &Path, stop: &AtomicBool) -> u64 {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let (node, link) = (c(node), c(link));
    let exchange = || {
        // SAFETY: both paths are NUL-terminated and outlive the call.
        let rc = unsafe {
            libc::renameat2(libc::AT_FDCWD, node.as_ptr(), libc::AT_FDCWD, link.as_ptr(), libc::RENAME_EXCHANGE)
        };
        assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
    };
    let mut swaps = 0;
    while !stop.load(Ordering::Relaxed) {
        exchange();
        exchange();
        swaps += 1;
    }
    swaps
}

/// One `GET` over a fresh connection: the status and the body.
async fn get(addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: oasis\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_never_serves_a_file_outside_the_root_while_a_directory_is_swapped_for_a_symlink() {
    let mut race = Race::start();
    let profile = BootProfile { kernel: "node/vmlinuz".into(), initrd: None, cmdline: "console=ttyS0".into() };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scripts = ScriptRenderer::new(format!("http://{addr}"), profile);
    let state =
        HttpBoot::new(BootRoot::new(&race.root).unwrap(), scripts, Arc::new(StaticDirectory::new()), Arc::default());
    tokio::spawn(serve(listener, router(state)));

    let target = format!("/boot/{}", file_name());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..REQUESTS {
                    answers.push(get(addr, &target).await);
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.extend(client.await.unwrap());
    }
    assert!(race.stop() > 0, "the swapper never ran");
    let leaks = answers.iter().filter(|(_, body)| contains(body, SECRET)).count();
    assert_eq!(leaks, 0, "{leaks} of {} HTTP responses carried the file outside the root", answers.len());
    for (status, body) in answers {
        // The file inside, or a 404 while the directory is away or a symlink.
        assert!(status == 200 && body == INSIDE || status == 404, "{status}: {}", String::from_utf8_lossy(&body));
    }
    // With the directory back, the file inside is served.
    assert_eq!(get(addr, &target).await, (200, INSIDE.to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_never_serves_a_file_outside_the_root_while_a_directory_is_swapped_for_a_symlink() {
    let mut race = Race::start();
    let metrics = Arc::new(Metrics::default());
    let server = TftpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        BootRoot::new(&race.root).unwrap(),
        TftpConfig::default(),
        metrics,
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let (name, options) = (file_name(), ClientOptions::default());
                let mut leaks = 0;
                for _ in 0..REQUESTS {
                    match fetch(addr, name.as_bytes(), &options).await {
                        Ok((data, _)) if contains(&data, SECRET) => leaks += 1,
                        Ok((data, _)) => assert_eq!(data, INSIDE),
                        // Refused: missing at that moment, or a symlink.
                        Err(ClientError::Server { .. }) => {}
                        Err(e) => panic!("the TFTP server failed: {e}"),
                    }
                }
                leaks
            })
        })
        .collect();
    let mut leaks = 0;
    for client in clients {
        leaks += client.await.unwrap();
    }
    assert!(race.stop() > 0, "the swapper never ran");
    assert_eq!(leaks, 0, "{leaks} of {} TFTP transfers carried the file outside the root", CLIENTS * REQUESTS);
    assert_eq!(fetch(addr, file_name().as_bytes(), &ClientOptions::default()).await.unwrap().0, INSIDE);
}

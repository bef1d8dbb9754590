//! A real `oasis serve` under a slow-client attack from the rack (issue 13, defect 4): about
//! 1,500 connections to the HTTP boot port and as many to the API port, each dribbling a request
//! head (or a TLS ClientHello) a byte at a time and never finishing it, reconnecting when the
//! server closes it, from 50 rack addresses, plus one greedy address that tries for more than
//! its per-source cap. While the attack runs, a machine at another rack address fetches its boot
//! script and boot files without pause, a real agent registers, and `oasis events` answers through
//! the admin socket. The server must hold no more than its caps, and every real request must be
//! answered.
//!
//! `oasis serve` is started with the descriptor limit the appliance image's init leaves it (the
//! kernel's 1,024 soft, 4,096 hard): before the fix, the attack used up those 1,024 descriptors
//! and the boot server, the API and the admin socket all failed until it ended.
//!
//! The figures (connections held, requests served) are printed; run with `--nocapture` to see
//! them. Needs root and the boot assets (the assets step of `scripts/test`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oasis_agent::client::ApiClient;
use oasis_appliance::limits::plan;
use oasis_core::config::Config;
use oasis_e2e::appliance::{boot_root, join_args, write_config, Appliance};
use oasis_e2e::{assets, Netns};
use oasis_proto::{Inventory, RegisterRequest, System};
use oasis_pxe::conn_limit::Prefix;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

const APPLIANCE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The machine that boots during the attack; the agent registers from here too.
const MACHINE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The greedy attacker, which tries for [`GREEDY`] connections per port.
const GREEDY_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const GREEDY: usize = 60;
/// Attackers at 10.0.0.100 and up, [`PER_ADDRESS`] connections per port each.
const ATTACKERS: u8 = 50;
const PER_ADDRESS: usize = 30;
const HTTP_PORT: u16 = 80;
const API_PORT: u16 = oasis_proto::API_PORT;
/// How long the attack goes on once the server is full, well past the header and handshake
/// timeouts (10 s), so that every slot turns over several times.
const ATTACK: Duration = Duration::from_secs(30);
/// How long an attacker waits before connecting again after the server closed it.
const RECONNECT: Duration = Duration::from_secs(1);
/// How long a real request may wait for its answer before it counts as failed: far longer than
/// any answer takes on a server that is serving.
const ANSWER: Duration = Duration::from_secs(30);
/// How often an attacker sends its next byte.
const DRIBBLE: Duration = Duration::from_secs(2);

/// A request head that never ends: its last header's value grows by a byte per [`DRIBBLE`].
const HTTP_OPENING: &[u8] = b"GET /boot/node/vmlinuz HTTP/1.1\r\nHost: 10.0.0.1\r\nX-Dribble: ";
/// The start of a TLS ClientHello announcing 512 bytes, of which a byte per [`DRIBBLE`] follows.
const TLS_OPENING: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];

#[derive(Debug, Default)]
struct AttackStats {
    /// Connections tried (not necessarily established: a server that stops accepting leaves
    /// them waiting in its queue or dropped).
    attempts: AtomicU64,
    connects: AtomicU64,
    closed_by_server: AtomicU64,
    connect_errors: AtomicU64,
}

/// One attacker slot: connect from `from`, send `opening`, dribble, and start over when the
/// server closes the connection, until `stop`.
async fn attacker(
    from: Ipv4Addr,
    to: SocketAddr,
    opening: &'static [u8],
    stats: Arc<AttackStats>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let mut stream = match socket.connect(to).await {
            Ok(stream) => stream,
            Err(_) => {
                stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        stats.connects.fetch_add(1, Ordering::Relaxed);
        if stream.write_all(opening).await.is_ok() {
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    read = stream.read(&mut buf) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            break;
                        }
                    }
                    () = tokio::time::sleep(DRIBBLE) => {
                        if stream.write_all(b"a").await.is_err() {
                            break;
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        }
        stats.closed_by_server.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            () = tokio::time::sleep(RECONNECT) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The attackers of each port.
const ATTACKERS_PER_PORT: u64 = ATTACKERS as u64 * PER_ADDRESS as u64 + GREEDY as u64;

/// Runs every attacker until `stop`, counting in `http` and `api`.
fn attack(http: Arc<AttackStats>, api: Arc<AttackStats>, stop: watch::Receiver<bool>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let sources = (0..ATTACKERS)
            .flat_map(|i| std::iter::repeat_n(Ipv4Addr::new(10, 0, 0, 100 + i), PER_ADDRESS))
            .chain(std::iter::repeat_n(GREEDY_ADDRESS, GREEDY));
        for from in sources {
            for (port, opening, stats) in [(HTTP_PORT, HTTP_OPENING, &http), (API_PORT, TLS_OPENING, &api)] {
                let to = SocketAddr::from((APPLIANCE, port));
                tasks.spawn(attacker(from, to, opening, stats.clone(), stop.clone()));
            }
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// Tells the attack and the booting machine to stop when dropped, also while a check panics
/// (the scoped threads would otherwise never end).
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// `oasis ARGS --data-dir DIR`: its output, or why it failed (also when it gets no answer from
/// the admin socket within [`ANSWER`]).
fn cli(appliance: &Appliance, args: &[&str]) -> Result<String, String> {
    let mut child = std::process::Command::new(oasis_e2e::oasis_bin())
        .args(args)
        .args(["--data-dir", appliance.data_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + ANSWER;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("oasis {args:?}: no answer from the admin socket in {ANSWER:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!("oasis {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

/// `GET target` from `from` on the boot port: status and body, or what went wrong (also no
/// answer within [`ANSWER`]).
async fn get(from: Ipv4Addr, target: &str) -> Result<(u16, Vec<u8>), String> {
    tokio::time::timeout(ANSWER, get_unbounded(from, target))
        .await
        .unwrap_or_else(|_| Err(format!("no answer in {ANSWER:?}")))
}

async fn get_unbounded(from: Ipv4Addr, target: &str) -> Result<(u16, Vec<u8>), String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::from((from, 0))).map_err(|e| e.to_string())?;
    let mut stream: TcpStream =
        socket.connect(SocketAddr::from((APPLIANCE, HTTP_PORT))).await.map_err(|e| format!("connect: {e}"))?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: 10.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(|e| format!("receive: {e}"))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("the connection closed without an answer")?;
    let status = String::from_utf8_lossy(&raw[..split]).split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, raw[split + 4..].to_vec()))
}

/// What the booting machine saw during the attack.
#[derive(Debug, Default)]
struct Booted {
    served: u64,
    failures: Vec<String>,
}

/// A machine at [`MACHINE`] fetching its boot script and the kernel and initrd, over and over,
/// each checked against what it must be, until `stop`.
fn boot_repeatedly(kernel: Vec<u8>, initrd: Vec<u8>, mut stop: watch::Receiver<bool>) -> Booted {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut booted = Booted::default();
        let files = [("/boot/node/vmlinuz", &kernel), ("/boot/node/initrd.img", &initrd)];
        while !*stop.borrow_and_update() {
            match get(MACHINE, "/boot.ipxe?mac=52-54-00-00-00-02").await {
                Ok((200, body)) if String::from_utf8_lossy(&body).contains("initrd") => booted.served += 1,
                other => booted.failures.push(format!("boot script: {:?}", other.map(|(s, b)| (s, b.len())))),
            }
            for (path, want) in files {
                match get(MACHINE, path).await {
                    Ok((200, body)) if &body == want => booted.served += 1,
                    other => booted.failures.push(format!("{path}: {:?}", other.map(|(s, b)| (s, b.len())))),
                }
            }
        }
        booted
    })
}

/// One value from the server's /metrics, fetched from the appliance's own address (no attacker's).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

fn metrics(ns: &Netns) -> String {
    ns.exec(&["busybox", "wget", "-q", "-O", "-", "http://10.0.0.1/metrics"]).expect("/metrics answers")
}

fn conn(listener: &str, event: &str) -> String {
    format!("oasis_connections_total{{listener=\"{listener}\",event=\"{event}\"}}")
}

/// The process id of `oasis serve` in `ns`.
fn serve_pid(ns: &Netns) -> u32 {
    let pids = std::process::Command::new("ip").args(["netns", "pids", ns.name()]).output().unwrap();
    String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "oasis"))
        .expect("oasis serve runs in the namespace")
}

fn set_nofile(soft: u64, hard: u64) {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit(2) only reads the valid `limit`. This test binary runs one test, so no
    // other test sees the change.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn registration(token: &str) -> RegisterRequest {
    RegisterRequest {
        token: token.into(),
        nonce: format!("{:032x}", 7),
        boot_mac: "52:54:00:00:00:02".into(),
        wireguard_key: "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=".into(),
        agent_version: "test".into(),
        inventory: Inventory {
            system: System { uuid: Some("4c4c4544-0000-4000-8000-000000000002".into()), ..Default::default() },
            cpus: 2,
            memory_bytes: 1 << 30,
            ..Default::default()
        },
    }
}

#[test]
fn slow_clients_from_the_rack_do_not_take_the_appliance_down() {
    let ns = Netns::create("oasis-hostile").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let rack = Netns::create("oasis-hrack").unwrap();
    ns.add_veth_to("vrack", &rack, "eth0").unwrap();
    ns.attach("vrack", "br0").unwrap();
    rack.add_address("eth0", "10.0.0.2/24").unwrap();
    let extra = (0..ATTACKERS).map(|i| 100 + i).chain([99]);
    let batch: String = extra.map(|i| format!("addr add 10.0.0.{i}/24 dev eth0\n")).collect();
    let batch_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(batch_file.path(), batch).unwrap();
    rack.ip(&["-batch", batch_file.path().to_str().unwrap()]).unwrap();

    let dir = tempfile::tempdir().unwrap();
    // The node profile (so the boot script carries the agent's arguments), with the test
    // payload's kernel and initrd standing in for the node image's.
    let root = boot_root(dir.path());
    let assets = assets().unwrap();
    let kernel = std::fs::read(assets.payload.join("vmlinuz")).unwrap();
    let initrd = std::fs::read(assets.payload.join("initrd.img")).unwrap();
    std::fs::create_dir_all(root.join("node")).unwrap();
    std::fs::write(root.join("node/vmlinuz"), &kernel).unwrap();
    std::fs::write(root.join("node/initrd.img"), &initrd).unwrap();
    let config = write_config(dir.path(), "mode = \"off\"", &root, "");

    // Started with the descriptor limit the appliance image's init leaves it: 1,024 soft, 4,096
    // hard. `serve` raises the hard limit to 65,536 where it may (CAP_SYS_RESOURCE), else takes
    // the 4,096; the caps follow from what it got. This process keeps the 4,096 hard limit (it
    // could not raise it again without that capability either), enough for the attack's sockets.
    // The agent registers with the join token, as boot media carry it: the machine below boots
    // over and over, and each boot script it fetches replaces the per-boot token before it.
    let args = join_args(&config);
    set_nofile(1024, 4096);
    let appliance = Appliance::start(&ns, &config, &dir.path().join("oasis.log"));
    set_nofile(4096, 4096);
    let pid = serve_pid(&ns);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let nofile: u64 = open_files.split_whitespace().nth(3).and_then(|n| n.parse().ok()).unwrap();
    assert!(nofile >= 4096, "the descriptor limit was not raised: {open_files}");
    let checked = Config::load(&config).unwrap();
    let tftp = checked.tftp.as_ref().map_or(0, |(_, t)| t.max_transfers);
    let overlay = Prefix::new(checked.wireguard.address, checked.wireguard.prefix_len);
    let caps = plan(nofile, tftp, overlay);
    assert!(
        caps.http.total < ATTACKERS as usize * PER_ADDRESS && caps.api.total < ATTACKERS as usize * PER_ADDRESS,
        "the attack must be larger than the caps: {caps:?}"
    );

    let before = metrics(&ns);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (http_attack, api_attack) = (Arc::new(AttackStats::default()), Arc::new(AttackStats::default()));
    let started = Instant::now();
    let (booted, checks, fds_peak, samples, held_for) = std::thread::scope(|scope| {
        let stop = StopOnDrop(stop_tx);
        let (rx, h, a) = (stop_rx.clone(), http_attack.clone(), api_attack.clone());
        scope.spawn(|| rack.run_inside(move || attack(h, a, rx)));
        // Full strength: every attacker has tried to connect.
        let all_in = |stats: &AttackStats| stats.attempts.load(Ordering::Relaxed) >= ATTACKERS_PER_PORT;
        while !(all_in(&http_attack) && all_in(&api_attack)) {
            assert!(started.elapsed() < Duration::from_secs(120), "the attackers never all started");
            std::thread::sleep(Duration::from_millis(200));
        }
        let full = Instant::now();
        let (rx, k, i) = (stop_rx.clone(), kernel.clone(), initrd.clone());
        let boots = scope.spawn(|| rack.run_inside(move || boot_repeatedly(k, i, rx)));

        // Meanwhile: the admin socket answers, and an agent registers.
        let mut checks = vec![cli(&appliance, &["events", "--limit", "5"]).map(|_| "events".to_string())];
        let (api, pin, token) = (args.api.clone(), args.pin.clone(), args.token.clone());
        let registered = rack.run_inside(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { ApiClient::new(&api, &pin)?.register(&registration(&token)).await })
        });
        checks.push(match registered {
            Ok(r) if r.credential.is_some() => Ok("registered".into()),
            other => Err(format!("registration: {other:?}")),
        });
        checks.push(match cli(&appliance, &["machines", "--json"]) {
            Ok(list) if list.contains("4c4c4544-0000-4000-8000-000000000002") => Ok("machines".into()),
            other => Err(format!("the registered machine is not listed: {other:?}")),
        });

        // Hold the attack, sampling the descriptors the server holds.
        let (mut fds_peak, mut samples) = (0, 0);
        while full.elapsed() < ATTACK {
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
            fds_peak = fds_peak.max(fds);
            samples += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        checks.push(cli(&appliance, &["events", "--limit", "5"]).map(|_| "events at the end".to_string()));
        drop(stop);
        let booted = boots.join().unwrap();
        (booted, checks, fds_peak, samples, full.elapsed())
    });

    // What a machine, an agent and an operator saw: everything answered.
    let mut failed: Vec<String> = checks.into_iter().filter_map(Result::err).collect();
    if !booted.failures.is_empty() {
        let total = booted.failures.len() as u64 + booted.served;
        let some = &booted.failures[..booted.failures.len().min(3)];
        failed.push(format!("{} of {total} boot requests failed, among them {some:?}", booted.failures.len()));
    }
    if booted.served < 3 {
        failed.push("the machine never completed a boot".into());
    }
    assert!(failed.is_empty(), "failed during the attack: {failed:#?}\n{}", oasis_e2e::tail(&appliance.log(), 20));

    // After the attack, below the total caps, nothing is evicted: one address that tries for 8
    // more than its per-source cap gets those 8 closed at once, and the header and handshake
    // timeouts (the production ones, 10 s) close the others by themselves.
    let (http_each, api_each) = (caps.http.per_source + 8, caps.api.per_source + 8);
    let lingered = rack.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut slow = Vec::new();
            for (port, opening, count) in [(HTTP_PORT, HTTP_OPENING, http_each), (API_PORT, TLS_OPENING, api_each)] {
                for _ in 0..count {
                    let socket = TcpSocket::new_v4().unwrap();
                    socket.bind(SocketAddr::from((GREEDY_ADDRESS, 0))).unwrap();
                    let mut stream = socket.connect(SocketAddr::from((APPLIANCE, port))).await.unwrap();
                    stream.write_all(opening).await.unwrap();
                    slow.push(stream);
                }
            }
            let mut open = 0;
            for mut stream in slow {
                let mut buf = [0u8; 512];
                let closed = tokio::time::timeout(Duration::from_secs(60), async {
                    while let Ok(1..) = stream.read(&mut buf).await {}
                });
                open += usize::from(closed.await.is_err());
            }
            open
        })
    });
    assert_eq!(lingered, 0, "slow connections below the caps were never closed by the server");

    let after = metrics(&ns);
    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    let peak = |listener: &str| metric(&after, &format!("oasis_connections_peak{{listener=\"{listener}\"}}"));
    println!(
        "slow-client attack on oasis serve: {} s in all, {} s with every attacker in",
        started.elapsed().as_secs(),
        held_for.as_secs()
    );
    for (listener, attack) in [("http", &http_attack), ("api", &api_attack)] {
        println!(
            "  {listener:>4}: attackers made {} connections ({} closed by the server, {} connect errors); \
             server held at most {} at once; accepted {}, evicted {}, refused {} per-source + {} full; \
             timeouts: {} header, {} handshake; requests received {}",
            attack.connects.load(Ordering::Relaxed),
            attack.closed_by_server.load(Ordering::Relaxed),
            attack.connect_errors.load(Ordering::Relaxed),
            peak(listener),
            delta(&conn(listener, "accepted")),
            delta(&conn(listener, "evicted")),
            delta(&conn(listener, "refused_per_source")),
            delta(&conn(listener, "refused_full")),
            delta(&conn(listener, "header_timeout")),
            delta(&conn(listener, "handshake_timeout")),
            delta(&format!("oasis_listener_requests_total{{listener=\"{listener}\"}}")),
        );
    }
    println!(
        "  boots during the attack: {} requests served (script, kernel, initrd), {} failed; \
         oasis serve held at most {fds_peak} descriptors ({samples} samples) of {nofile}; caps: HTTP {}, API {}",
        booted.served,
        booted.failures.len(),
        caps.http,
        caps.api
    );

    // Sockets held: the admitted connections, and evicted ones whose close is pending.
    let (http_cap, api_cap) = (&caps.http, &caps.api);
    let http_most = http_cap.total + http_cap.closing_max();
    assert!(peak("http") <= http_most as u64, "HTTP boot held more than its cap {http_cap}");
    let rack_most = api_cap.ordinary_total() + api_cap.closing_max();
    assert!(peak("api") <= rack_most as u64, "the rack took API slots kept for the overlay: {api_cap}");
    for (listener, timeout, per_source) in
        [("http", "header_timeout", caps.http.per_source), ("api", "handshake_timeout", caps.api.per_source)]
    {
        assert!(delta(&conn(listener, "refused_per_source")) >= 8, "{listener}: one address held more than its cap");
        // A slow connection ends by its timeout or, at the cap, evicted for a newcomer: which of
        // the two takes more of them depends on the machine's speed, so the timer is required to
        // fire and the two together to end at least one address's worth.
        let (timed_out, evicted) = (delta(&conn(listener, timeout)), delta(&conn(listener, "evicted")));
        assert!(timed_out > 0, "{listener}: slow connections never timed out");
        assert!(timed_out + evicted >= per_source as u64, "{listener}: slow connections neither timed out nor evicted");
    }
    assert!(delta(&conn("http", "evicted")) > 0 && delta(&conn("api", "evicted")) > 0);
    assert!((fds_peak as u64) <= caps.need(tftp), "more descriptors than the caps allow for: {fds_peak}");
}

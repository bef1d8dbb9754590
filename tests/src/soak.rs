//! The soak (issue 13): a few hundred simulated machines do, for a bounded time, what real ones
//! do against a real `oasis serve`, while the appliance's memory, descriptors, threads and store
//! are sampled; at the end, the slope of each. `scripts/soak` builds and runs it (the example
//! `soak` is its `main`).
//!
//! The rack: namespace `…-rack` with bridge `br0` at 10.0.0.1/16 and the appliance in full DHCP
//! mode (pool 10.0.1.1-10.0.4.254, a short lease so that renewals are many, `[registration]
//! policy = "auto"`). Each machine has its own namespace with `eth0` (its own MAC) on a veth into
//! the bridge, so it answers ARP for its address from its own hardware address, and its HTTP,
//! TFTP and API connections leave from its leased address as a real machine's do. Each machine
//! runs on its own thread (entered into its namespace) with its own Tokio runtime. A boot is
//! what a real one is:
//!
//! 1. the firmware's PXE DHCP (BIOS or x86-64 UEFI, alternately), then its boot file (the iPXE
//!    binary the answer names) over TFTP;
//! 2. iPXE's DHCP, then the per-machine script the answer names over HTTP, and the kernel and
//!    initramfs the script names (checked byte for byte against the boot root);
//! 3. the OS's DHCP, then registration with the agent's own pinned client
//!    (`oasis_agent::client::ApiClient`), with the token, API address and pin from the script's
//!    kernel line, a fresh WireGuard key, from the leased address.
//!
//! Then the machine renews its lease at every T1 until it reboots (after about
//! `--reboot-minutes`, give or take half), which is a new boot with a new key; half the reboots
//! are clean shutdowns that release the lease first, and a linked machine stays off for longer
//! than its link's silence, as a real one does (else it is refused as an impostor of itself). A subset of the
//! machines (`--linked`, default 24) also bring up their management link and, through it,
//! heartbeat every [`oasis_proto::HEARTBEAT_SECS`] and hold the desired-state watch, as the agent
//! does. Not all of them: this host's kernel has no WireGuard, so each link is a userspace
//! boringtun device (a thread and a tun queue per machine, see [`crate::wireguard`]), and a few
//! dozen show what the heartbeat path does over time as well as three hundred would while leaving
//! the two cores to the appliance. The heartbeat API refuses calls from the rack network, so the
//! other machines do not heartbeat at all.
//!
//! Cluster assembly is held off (`[cluster] min_machines` above the machine count): the simulated
//! machines run no etcd or k3s, and the soak is about the rack network, boot and registration.
//!
//! Every wait is bounded: DHCP tries [`crate::dhcp_client::TRIES`] times, HTTP and TFTP and the
//! API have timeouts, machines are stopped and joined within [`STOP_WAIT`]. A failed step is
//! counted and the machine boots again after [`RETRY_PAUSE`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oasis_agent::client::{ApiClient, Endpoint};
use oasis_proto::{Heartbeat, Inventory, KernelArgs, LinkConfig, MachineState, RegisterRequest, System};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use crate::dhcp_client::{mac_text, DhcpClient, Lease, Role};
use crate::wireguard::UserspaceLink;
use crate::{io_error, Appliance, HarnessError, Netns};

/// The appliance's address on the rack network.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// The DHCP pool: 1022 addresses.
const POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 0, 1, 1), Ipv4Addr::new(10, 0, 4, 254)];
/// A Linux bridge takes at most 1024 ports; the pool holds 1022.
pub const MAX_MACHINES: usize = 1000;
/// How long a failed machine waits before it boots again, as firmware retries.
pub const RETRY_PAUSE: Duration = Duration::from_secs(10);
/// How long the machines have to stop at the end.
pub const STOP_WAIT: Duration = Duration::from_secs(30);
/// The longest HTTP download, connect to last byte.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// The management interface of a linked machine.
const LINK_NAME: &str = "oasis0";
/// The boot root's files (path, size): the iPXE builds the policy names and the node's kernel
/// and initramfs. Their contents are pseudo-random bytes: nothing boots them, every download is
/// compared with them.
const BOOT_FILES: [(&str, usize); 5] = [
    ("ipxe/undionly.kpxe", 72 << 10),
    ("ipxe/ipxe.efi", 512 << 10),
    ("ipxe/snp.efi", 256 << 10),
    ("node/vmlinuz", 1 << 20),
    ("node/initrd.img", 2 << 20),
];

/// What to run, from the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub duration: Duration,
    pub machines: usize,
    /// Machines with a management link (heartbeats, the desired-state watch).
    pub linked: usize,
    /// Mean time between a machine's reboots.
    pub reboot_mean: Duration,
    pub sample_every: Duration,
    /// Samples before this are left out of the slopes.
    pub warmup: Duration,
    /// Initial boots are spread over this.
    pub stagger: Duration,
    pub lease_secs: u32,
    /// An operation kind failing more often than this fails the soak.
    pub max_failed_percent: f64,
    /// Where the boot root, the data directory and the log go.
    pub dir: PathBuf,
    /// Namespaces are named `PREFIX-…`, so that a wrapper can find what a killed run left.
    pub ns_prefix: String,
}

pub const USAGE: &str = "usage: soak --dir DIR [--minutes 10] [--machines 300] [--linked 24] [--reboot-minutes 5] \
[--lease-secs 60] [--sample-secs 5] [--warmup-secs 60] [--max-failed-percent 1] [--ns-prefix oasis-soak]";

impl Settings {
    /// Reads `--name value` pairs; see [`USAGE`].
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
        let mut values: HashMap<String, String> = HashMap::new();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let Some(name) = flag.strip_prefix("--") else { return Err(format!("unexpected argument {flag:?}")) };
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            values.insert(name.to_string(), value);
        }
        fn take(values: &mut HashMap<String, String>, name: &str, default: f64) -> Result<f64, String> {
            match values.remove(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .ok_or_else(|| format!("--{name} {v:?} is not a non-negative number")),
            }
        }
        let minutes = take(&mut values, "minutes", 10.0)?;
        let machines = take(&mut values, "machines", 300.0)? as usize;
        let linked = take(&mut values, "linked", 24.0)? as usize;
        let reboot_minutes = take(&mut values, "reboot-minutes", 5.0)?;
        let lease_secs = take(&mut values, "lease-secs", 60.0)? as u32;
        let sample_secs = take(&mut values, "sample-secs", 5.0)?;
        let duration = Duration::from_secs_f64(minutes * 60.0);
        // By default a minute, or a quarter of a short run.
        let warmup = Duration::from_secs_f64(take(
            &mut values,
            "warmup-secs",
            Duration::from_secs(60).min(duration / 4).as_secs_f64(),
        )?);
        let max_failed_percent = take(&mut values, "max-failed-percent", 1.0)?;
        let dir = values.remove("dir").map(PathBuf::from).ok_or("--dir is required")?;
        let ns_prefix = values.remove("ns-prefix").unwrap_or_else(|| "oasis-soak".into());
        if let Some(unknown) = values.keys().next() {
            return Err(format!("unknown option --{unknown}"));
        }
        if !(1..=MAX_MACHINES).contains(&machines) {
            return Err(format!("--machines must be 1 to {MAX_MACHINES} (one bridge port and address each)"));
        }
        if linked > machines {
            return Err(format!("--linked {linked} is more than --machines {machines}"));
        }
        if lease_secs < 60 {
            return Err("--lease-secs must be at least 60, the appliance's minimum".into());
        }
        if sample_secs < 1.0 || duration < Duration::from_secs(30) || reboot_minutes <= 0.0 {
            return Err("--sample-secs must be at least 1, --minutes at least 0.5, --reboot-minutes above 0".into());
        }
        Ok(Settings {
            duration,
            machines,
            linked,
            reboot_mean: Duration::from_secs_f64(reboot_minutes * 60.0),
            sample_every: Duration::from_secs_f64(sample_secs),
            warmup,
            stagger: Duration::from_secs(30).min(duration / 4),
            lease_secs,
            max_failed_percent,
            dir,
            ns_prefix,
        })
    }
}

/// The kinds of operation the machines do, each counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Dhcp,
    Renewal,
    Release,
    Tftp,
    Http,
    Registration,
    Link,
    Heartbeat,
    Watch,
}

impl Op {
    pub const ALL: [Op; 9] =
        [Op::Dhcp, Op::Renewal, Op::Release, Op::Tftp, Op::Http, Op::Registration, Op::Link, Op::Heartbeat, Op::Watch];

    pub fn name(self) -> &'static str {
        match self {
            Op::Dhcp => "DHCP exchanges (DORA)",
            Op::Renewal => "DHCP renewals",
            Op::Release => "DHCP releases (sent)",
            Op::Tftp => "TFTP downloads",
            Op::Http => "HTTP downloads",
            Op::Registration => "registrations",
            Op::Link => "WireGuard links up",
            Op::Heartbeat => "heartbeats",
            Op::Watch => "desired-state watches",
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the report.
    examples: Mutex<Vec<String>>,
}

/// How many of each operation succeeded and failed.
#[derive(Debug, Default)]
pub struct Counters {
    tallies: [Tally; 9],
}

impl Counters {
    fn tally(&self, op: Op) -> &Tally {
        &self.tallies[op as usize]
    }

    pub fn ok(&self, op: Op) {
        self.tally(op).ok.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, op: Op, what: String) {
        let tally = self.tally(op);
        tally.failed.fetch_add(1, Ordering::Relaxed);
        let mut examples = tally.examples.lock().unwrap_or_else(|e| e.into_inner());
        if examples.len() < 3 {
            examples.push(what);
        }
    }

    /// Counts `result`; `Err(())` (already counted) when it failed.
    fn record<T, E: Into<Box<dyn std::error::Error>>>(&self, op: Op, who: &str, result: Result<T, E>) -> Result<T, ()> {
        match result {
            Ok(value) => {
                self.ok(op);
                Ok(value)
            }
            Err(e) => {
                self.failed(op, format!("{who}: {}", chain(e)));
                Err(())
            }
        }
    }

    /// Counts `result` only if it failed: for a step of an operation counted elsewhere.
    fn check<T, E: Into<Box<dyn std::error::Error>>>(&self, op: Op, who: &str, result: Result<T, E>) -> Result<T, ()> {
        result.map_err(|e| self.failed(op, format!("{who}: {}", chain(e))))
    }

    /// (succeeded, failed).
    pub fn get(&self, op: Op) -> (u64, u64) {
        let tally = self.tally(op);
        (tally.ok.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed))
    }

    fn examples(&self, op: Op) -> Vec<String> {
        self.tally(op).examples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The least-squares slope of `points` (x, y); `None` without two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// One look at the appliance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Since the machines started.
    pub at: Duration,
    pub rss_kib: u64,
    pub fds: u64,
    pub threads: u64,
    pub store_bytes: u64,
    /// The newest event's sequence number (events are never removed), if the admin socket answered.
    pub events: Option<u64>,
}

/// The series the slopes are taken of: name, unit, value of a sample.
type Series = (&'static str, &'static str, fn(&Sample) -> Option<f64>);
const SERIES: [Series; 5] = [
    ("RSS", "MiB", |s| Some(s.rss_kib as f64 / 1024.0)),
    ("open descriptors", "", |s| Some(s.fds as f64)),
    ("threads", "", |s| Some(s.threads as f64)),
    ("store file", "MiB", |s| Some(s.store_bytes as f64 / 1048576.0)),
    ("events", "", |s| s.events.map(|e| e as f64)),
];

/// The value of `key:` in `/proc/PID/status`, without its unit.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse().ok())
}

/// Reads the appliance's process and store; `None` once the process is gone.
fn sample(pid: u32, data_dir: &Path, at: Duration) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    if status.lines().any(|l| l.starts_with("State:") && l.contains("zombie")) {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let store_bytes = std::fs::metadata(data_dir.join("oasis.redb")).map(|m| m.len()).unwrap_or(0);
    Some(Sample {
        at,
        rss_kib: status_field(&status, "VmRSS")?,
        fds,
        threads: status_field(&status, "Threads")?,
        store_bytes,
        events: newest_event(data_dir),
    })
}

/// `oasis events --json --limit 1` through the admin socket: the newest event's number.
fn newest_event(data_dir: &Path) -> Option<u64> {
    let out = crate::oasis(&["events", "--json", "--limit", "1", "--data-dir", data_dir.to_str()?]);
    let events: Vec<crate::json::Event> = serde_json::from_slice(&out.stdout).ok()?;
    Some(events.last().map_or(0, |e| e.seq))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pseudo-random bytes from a fixed seed per file: the same boot root every run.
fn file_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn config_text(settings: &Settings) -> String {
    let dir = &settings.dir;
    format!(
        r#"data_dir = "{data}"

[network]
interface = "br0"
address = "{SERVER}"
netmask = "255.255.0.0"

[dhcp]
range = ["{start}", "{end}"]
lease_time = {lease}

[boot]
root = "{root}"

[registration]
policy = "auto"

[wireguard]
interface = "{wg}"

# Held off: the simulated machines run no etcd or k3s.
[cluster]
min_machines = {never}
"#,
        data = dir.join("data").display(),
        start = POOL[0],
        end = POOL[1],
        lease = settings.lease_secs,
        root = dir.join("boot").display(),
        wg = crate::appliance::unique_wireguard_name(),
        never = settings.machines + 1,
    )
}

/// One simulated machine.
#[derive(Debug, Clone)]
struct Machine {
    index: usize,
    mac: [u8; 6],
    /// Its namespace.
    ns: String,
    /// RFC 4578 architecture its firmware reports.
    arch: u16,
    linked: bool,
    start_after: Duration,
}

/// What every machine shares.
#[derive(Debug)]
struct Shared {
    counters: Arc<Counters>,
    /// The boot root's files by path, to check downloads against.
    files: HashMap<String, Vec<u8>>,
    reboot_mean: Duration,
    started: Instant,
}

/// A machine after its boot: its lease, its API client and, if linked, its link.
struct Booted {
    lease: Lease,
    client: ApiClient,
    credential: String,
    link: LinkConfig,
    /// Kept for as long as the machine runs: dropping it takes the link down.
    wireguard: Option<UserspaceLink>,
}

/// Runs `f` unless `stop` turns true first.
async fn until_stopped<F: std::future::Future>(stop: &mut watch::Receiver<bool>, f: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => None,
        out = f => Some(out),
    }
}

/// `ip -n NS ARGS…`.
fn ip(ns: &str, args: &[&str]) -> crate::Result<String> {
    crate::run(Command::new("ip").args(["-n", ns]).args(args))
}

impl Machine {
    fn who(&self) -> String {
        format!("machine {} ({})", self.index, mac_text(self.mac))
    }

    /// Boots, serves and reboots until stopped.
    async fn run(self, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(self.index as u64);
        if until_stopped(&mut stop, tokio::time::sleep(self.start_after)).await.is_none() {
            return;
        }
        loop {
            let life = shared.reboot_mean.mul_f64(rng.random_range(0.5..1.5));
            let reboot_at = tokio::time::Instant::now() + life;
            let outcome = until_stopped(&mut stop, self.life(&shared, &mut rng, reboot_at)).await;
            // A reboot: the machine forgets its address.
            let _ = ip(&self.ns, &["address", "flush", "dev", "eth0"]);
            match outcome {
                None => return,
                Some(Ok(())) => {}
                Some(Err(())) => {
                    if until_stopped(&mut stop, tokio::time::sleep(RETRY_PAUSE)).await.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// One boot and the time until `reboot_at`. `Err` when a step failed (it was counted).
    async fn life(
        &self,
        shared: &Shared,
        rng: &mut rand::rngs::StdRng,
        reboot_at: tokio::time::Instant,
    ) -> Result<(), ()> {
        let booted = self.boot(shared, rng).await?;
        let Booted { mut lease, client, credential, link, wireguard } = booted;
        let counters = &shared.counters;
        let who = self.who();
        let renewals = async {
            loop {
                tokio::time::sleep(lease.renew_after).await;
                let renewed = match DhcpClient::bind_device(self.mac, "eth0") {
                    Ok(mut dhcp) => dhcp.renew(&lease, Role::Os).await,
                    Err(e) => Err(e),
                };
                match counters.record(Op::Renewal, &who, renewed) {
                    Ok(renewed) => lease = renewed,
                    // A lease not renewed is a machine that starts over.
                    Err(()) => return Err::<(), ()>(()),
                }
            }
        };
        let overlay = Endpoint::overlay(link.appliance_address);
        let booted_at = Instant::now();
        let heartbeats = async {
            let mut tick = tokio::time::interval(Duration::from_secs(oasis_proto::HEARTBEAT_SECS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let beat = Heartbeat {
                    phase: "linked".into(),
                    uptime_secs: booted_at.elapsed().as_secs(),
                    ..Heartbeat::default()
                };
                let _ = counters.record(Op::Heartbeat, &who, client.heartbeat(&overlay, &credential, &beat).await);
            }
        };
        let watches = async {
            let mut after = 0;
            loop {
                match counters.record(Op::Watch, &who, client.desired(&overlay, &credential, after).await) {
                    Ok(desired) => after = desired.revision,
                    Err(()) => tokio::time::sleep(Duration::from_secs(oasis_proto::HEARTBEAT_SECS)).await,
                }
            }
        };
        let linked = wireguard.is_some();
        let result = tokio::select! {
            _ = tokio::time::sleep_until(reboot_at) => Ok(()),
            renewed = renewals => renewed,
            _ = heartbeats, if linked => Ok(()),
            _ = watches, if linked => Ok(()),
        };
        drop(wireguard);
        // Half the reboots are clean shutdowns, which release the lease (udhcpc -R).
        if result.is_ok() && rng.random_bool(0.5) {
            let released = match DhcpClient::bind_device(self.mac, "eth0") {
                Ok(mut dhcp) => dhcp.release(&lease).await,
                Err(e) => Err(e),
            };
            let _ = counters.record(Op::Release, &who, released);
        }
        // A real machine is off for longer than its link's silence (firmware, kernel, agent) before
        // its new boot registers with a new key; a linked machine that came back sooner would be
        // refused as the impostor of a live one (registry::LINK_SILENCE_SECS).
        if linked {
            tokio::time::sleep(Duration::from_secs(oasis_core::registry::LINK_SILENCE_SECS + 2)).await;
        }
        result
    }

    /// Puts the lease's address on `eth0` (replacing another one).
    fn use_address(&self, shared: &Shared, lease: &Lease) -> Result<(), ()> {
        let cidr = format!("{}/{}", lease.ip, lease.prefix_len);
        let present = ip(&self.ns, &["-4", "-o", "address", "show", "dev", "eth0"])
            .map(|out| out.split_whitespace().any(|w| w == cidr))
            .unwrap_or(false);
        if present {
            return Ok(());
        }
        let _ = ip(&self.ns, &["address", "flush", "dev", "eth0"]);
        shared.counters.check(Op::Dhcp, &self.who(), ip(&self.ns, &["address", "add", &cidr, "dev", "eth0"])).map(drop)
    }

    async fn dhcp(&self, shared: &Shared, role: Role) -> Result<Lease, ()> {
        let lease = match DhcpClient::bind_device(self.mac, "eth0") {
            Ok(mut dhcp) => dhcp.dora(role).await,
            Err(e) => Err(e),
        }
        .map_err(|e| format!("as {role:?}: {}", chain(e)));
        let lease = shared.counters.record(Op::Dhcp, &self.who(), lease)?;
        self.use_address(shared, &lease)?;
        Ok(lease)
    }

    /// Downloads `url` from the machine's address and, for a boot root file, checks it.
    async fn http(&self, shared: &Shared, from: Ipv4Addr, url: &str) -> Result<Vec<u8>, ()> {
        let got = http_get(from, url).await.and_then(|body| {
            match url.split_once("/boot/").and_then(|(_, path)| shared.files.get(path)) {
                Some(expected) if *expected != body => {
                    Err(format!("{url}: {} bytes that differ from the boot root's {}", body.len(), expected.len()))
                }
                _ => Ok(body),
            }
        });
        shared.counters.record(Op::Http, &self.who(), got)
    }

    async fn tftp(&self, shared: &Shared, server: Ipv4Addr, name: &str) -> Result<(), ()> {
        let options = oasis_pxe::tftp::ClientOptions {
            blksize: Some(1468),
            tsize: true,
            ..oasis_pxe::tftp::ClientOptions::default()
        };
        let server = SocketAddr::V4(SocketAddrV4::new(server, 69));
        let got = oasis_pxe::tftp::fetch(server, name.as_bytes(), &options)
            .await
            .map_err(|e| format!("{name}: {}", chain(e)));
        let got = got.and_then(|(data, _)| match shared.files.get(name) {
            Some(expected) if *expected == data => Ok(()),
            _ => Err(format!("{name}: {} bytes that are not the boot root's file", data.len())),
        });
        shared.counters.record(Op::Tftp, &self.who(), got)
    }

    /// Firmware, iPXE, kernel, agent: see the module comment.
    async fn boot(&self, shared: &Shared, rng: &mut rand::rngs::StdRng) -> Result<Booted, ()> {
        let counters = &shared.counters;
        let who = self.who();
        let no_file = |what: &str| {
            counters.failed(Op::Dhcp, format!("{who}: the {what}'s answer named no boot file"));
            Err(())
        };

        let lease = self.dhcp(shared, Role::PxeFirmware { arch: self.arch }).await?;
        let Some(file) = lease.boot_file.clone() else { return no_file("firmware") };
        self.tftp(shared, lease.next_server, &file).await?;

        let lease = self.dhcp(shared, Role::Ipxe { arch: self.arch }).await?;
        let Some(url) = lease.boot_file.clone() else { return no_file("iPXE") };
        let script = self.http(shared, lease.ip, &url).await?;
        let script = String::from_utf8_lossy(&script).into_owned();
        let (kernel, initrds, args) =
            counters.check(Op::Http, &who, parse_script(&script).map_err(|e| format!("{url}: {e}")))?;
        self.http(shared, lease.ip, &kernel).await?;
        for initrd in initrds {
            self.http(shared, lease.ip, &initrd).await?;
        }

        let lease = self.dhcp(shared, Role::Os).await?;
        // The agent's own key: a new one every boot.
        let key = oasis_agent::link::WireGuardLink::new(LINK_NAME).expect("a valid interface name").private_key();
        let client = counters.check(Op::Registration, &who, ApiClient::new(&args.api, &args.pin))?;
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let request = RegisterRequest {
            token: args.token.clone(),
            nonce: hex(&nonce),
            boot_mac: mac_text(self.mac),
            wireguard_key: key.get_public().to_base64(),
            agent_version: "soak".into(),
            inventory: Inventory {
                system: System {
                    uuid: Some(format!("50a50a50-0000-4000-8000-{:012x}", self.index)),
                    serial: Some(format!("SOAK-{}", self.index)),
                    ..System::default()
                },
                cpus: 4,
                memory_bytes: 8 << 30,
                ..Inventory::default()
            },
        };
        let accepted =
            client.register(&request).await.map_err(chain).and_then(|r| match (r.state, r.credential, r.link) {
                (MachineState::Accepted, Some(credential), Some(link)) => Ok((credential, link)),
                (state, ..) => Err(format!("registration answered {state:?}: {}", r.message)),
            });
        let (credential, link) = counters.record(Op::Registration, &who, accepted)?;
        let wireguard = if self.linked {
            let up = UserspaceLink::up(&self.ns, LINK_NAME, key.as_bytes(), &link);
            Some(counters.record(Op::Link, &who, up)?)
        } else {
            None
        };
        Ok(Booted { lease, client, credential, link, wireguard })
    }
}

/// A failure as the soak's report shows it: an error with each of its causes once
/// ([`oasis_proto::error_chain`]), or a text as it is.
fn chain(error: impl Into<Box<dyn std::error::Error>>) -> String {
    oasis_proto::error_chain(&*error.into())
}

/// The kernel URL, the initrd URLs and the agent's arguments from an oasis boot script.
pub fn parse_script(script: &str) -> Result<(String, Vec<String>, KernelArgs), String> {
    // `kernel URL ARGS… || goto failed`
    let command = |line: &str| line.split(" || ").next().unwrap_or(line).to_string();
    let kernel =
        script.lines().find(|l| l.starts_with("kernel ")).map(command).ok_or("the script has no kernel line")?;
    let url = kernel.split_whitespace().nth(1).ok_or("the kernel line names no kernel")?.to_string();
    let args = KernelArgs::parse(&kernel).map_err(|e| e.to_string())?;
    let initrds = script
        .lines()
        .filter(|l| l.starts_with("initrd "))
        .filter_map(|l| command(l).split_whitespace().find(|w| w.starts_with("http://")).map(str::to_string))
        .collect();
    Ok((url, initrds, args))
}

/// `GET url` (`http://HOST[:PORT]/PATH`) over a TCP connection from `from`; the body of a 200.
pub async fn http_get(from: Ipv4Addr, url: &str) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("{url}: {what}");
    let rest = url.strip_prefix("http://").ok_or_else(|| fail("not an http:// URL".into()))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let to: SocketAddrV4 = match host.parse() {
        Ok(addr) => addr,
        Err(_) => SocketAddrV4::new(host.parse().map_err(|_| fail(format!("{host} is not an address")))?, 80),
    };
    let fetch = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::V4(SocketAddrV4::new(from, 0)))?;
        let mut stream = socket.connect(SocketAddr::V4(to)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: iPXE/1.21.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .map_err(|_| fail(format!("no complete answer within {} s", HTTP_TIMEOUT.as_secs())))?
        .map_err(|e| fail(e.to_string()))?;
    let split =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| fail("no complete response head".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(fail(format!("HTTP {status}")));
    }
    let body = raw[split + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
    });
    match length {
        Some(n) if n != body.len() => Err(fail(format!("{} of {n} bytes", body.len()))),
        _ => Ok(body),
    }
}

/// How long registrations may fail without one succeeding before the appliance's threads are
/// dumped (once).
pub const STALL: Duration = Duration::from_secs(60);

/// Notices registrations that keep failing without one succeeding: the API is stuck.
#[derive(Debug, Default)]
struct StallWatch {
    /// (succeeded, failed) at the last success, and when.
    last: (u64, u64),
    since: Duration,
    reported: bool,
}

impl StallWatch {
    /// True once, when `counts` (succeeded, failed) show only failures for [`STALL`].
    fn stalled(&mut self, counts: (u64, u64), at: Duration) -> bool {
        if counts.0 != self.last.0 {
            (self.last, self.since) = (counts, at);
            return false;
        }
        let stalled = !self.reported && counts.1 > self.last.1 && at.saturating_sub(self.since) >= STALL;
        self.reported |= stalled;
        stalled
    }
}

/// Every thread's stack of process `pid` (gdb, if installed) into `file`; says where it went.
fn dump_stacks(pid: u32, file: &Path) -> String {
    // Bounded: coreutils' timeout stops a gdb that hangs.
    let out = Command::new("timeout")
        .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.code() == Some(127) => "not taken: install gdb to get them".to_string(),
        Ok(out) => match std::fs::write(file, [out.stdout, out.stderr].concat()) {
            Ok(()) => file.display().to_string(),
            Err(e) => format!("not written to {}: {e}", file.display()),
        },
        Err(e) => format!("not taken ({e})"),
    }
}

/// `GET /metrics` from inside the rack, with a plain blocking connection.
fn metrics(rack: &Netns) -> Option<String> {
    rack.run_inside(|| {
        let mut stream = std::net::TcpStream::connect((SERVER, 80)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(stream, "GET /metrics HTTP/1.1\r\nHost: {SERVER}\r\nConnection: close\r\n\r\n").ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).ok()?;
        Some(raw.split_once("\r\n\r\n")?.1.to_string())
    })
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
    Interrupted,
}

/// Makes the machines' namespaces, each with `eth0` (its MAC) on a veth into the rack's bridge;
/// four at a time.
fn machine_namespaces(rack: &Netns, settings: &Settings) -> crate::Result<Vec<Netns>> {
    let rack_name = rack.name().to_string();
    let make = |i: usize| -> crate::Result<Netns> {
        let ns = Netns::create(&format!("{}-m{i}", settings.ns_prefix))?;
        let port = format!("m{i}");
        crate::run(Command::new("ip").args(["-n", &rack_name, "link", "add", &port, "type", "veth"]).args([
            "peer",
            "name",
            "eth0",
            "address",
            &mac_text(machine_mac(i)),
            "netns",
            ns.name(),
        ]))?;
        ip(&rack_name, &["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(ns)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made: Mutex<Vec<(usize, crate::Result<Netns>)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= settings.machines {
                    return;
                }
                let ns = make(i);
                made.lock().unwrap_or_else(|e| e.into_inner()).push((i, ns));
            });
        }
    });
    let mut made = made.into_inner().unwrap_or_else(|e| e.into_inner());
    made.sort_by_key(|(i, _)| *i);
    made.into_iter().map(|(_, ns)| ns).collect()
}

fn machine_mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x5a, (i >> 8) as u8, i as u8]
}

/// Lets this process hold a descriptor or more per machine (sockets, runtimes, tun devices).
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Runs the soak and prints its report; see the module comment.
pub fn run(settings: &Settings) -> crate::Result<Outcome> {
    // Caught from the start, so that a Ctrl-C during the set-up also ends in the clean stop below.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| HarnessError::Io { path: PathBuf::from("(tokio runtime)"), source })?;
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _entered = runtime.enter();
        let caught = |source| HarnessError::Io { path: PathBuf::from("(SIGINT and SIGTERM handlers)"), source };
        (signal(SignalKind::interrupt()).map_err(caught)?, signal(SignalKind::terminate()).map_err(caught)?)
    };
    let (files, config) = write_boot_root(settings)?;
    let rack = Netns::create(&format!("{}-rack", settings.ns_prefix))?;
    rack.add_bridge("br0", Some(&format!("{SERVER}/16")))?;
    let log = settings.dir.join("oasis.log");
    // The level the appliance ships with.
    let mut appliance = Appliance::start_logging(&rack, &config, &log, "info");
    let pid = appliance.pid().expect("a started appliance has a process");
    raise_descriptor_limit();
    print_banner(settings, pid);

    let setup = Instant::now();
    let namespaces = machine_namespaces(&rack, settings)?;
    println!("   {} machine namespaces in {:.1} s", namespaces.len(), setup.elapsed().as_secs_f64());
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        counters: counters.clone(),
        files,
        reboot_mean: settings.reboot_mean,
        started: Instant::now(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let threads = start_machines(settings, &namespaces, &shared, &stop_rx);
    let watched = runtime.block_on(watch_appliance(settings, &mut appliance, &shared, signals));

    // Stop the machines, bounded, before anything else.
    let _ = stop_tx.send(true);
    let stuck = stop_machines(threads, &counters);
    let metrics = if watched.died.is_none() { metrics(&rack) } else { None };
    appliance.stop();
    let log_text = appliance.log();

    let report = report(settings, &watched.samples, &counters, metrics.as_deref(), &log_text, stuck);
    print!("{report}");
    let outcome = verdict(settings, &watched, &counters, metrics.as_deref(), &log_text, stuck);
    // Machines' namespaces go before the rack's (their veths are in it).
    drop(namespaces);
    drop(rack);
    Ok(outcome)
}

/// Writes the boot root (the boot files, the iPXE builds' manifest) and the appliance's
/// configuration into the work directory: the boot files' bytes by name, and the configuration's
/// path.
fn write_boot_root(settings: &Settings) -> crate::Result<(HashMap<String, Vec<u8>>, PathBuf)> {
    let dir = &settings.dir;
    let root = dir.join("boot");
    let mut files = HashMap::new();
    for (seed, (name, len)) in BOOT_FILES.iter().enumerate() {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("a boot file has a directory")).map_err(io_error(&path))?;
        let data = file_bytes(seed as u64, *len);
        std::fs::write(&path, &data).map_err(io_error(&path))?;
        files.insert(name.to_string(), data);
    }
    // The manifest the appliance checks its iPXE builds against at start-up, as shipped.
    let sums: String = BOOT_FILES
        .iter()
        .filter_map(|(name, _)| name.strip_prefix("ipxe/").map(|file| (file, &files[*name])))
        .map(|(file, data)| format!("{}  {file}\n", hex(&Sha256::digest(data))))
        .collect();
    let manifest = root.join("ipxe/SHA256SUMS");
    std::fs::write(&manifest, sums).map_err(io_error(&manifest))?;
    let config = dir.join("oasis.toml");
    std::fs::write(&config, config_text(settings)).map_err(io_error(&config))?;
    Ok((files, config))
}

/// What the soak runs, against which appliance, printed before it starts.
fn print_banner(settings: &Settings, pid: u32) {
    println!(
        "== oasis soak: {} machines ({} with a management link) for {:.1} min against {} (pid {pid})",
        settings.machines,
        settings.linked,
        settings.duration.as_secs_f64() / 60.0,
        crate::oasis_bin().display(),
    );
    println!(
        "   lease {} s (renewal every {} s), a reboot every {:.1} min on average, a sample every {} s, \
         slopes after a {} s warm-up; work directory {}",
        settings.lease_secs,
        settings.lease_secs / 2,
        settings.reboot_mean.as_secs_f64() / 60.0,
        settings.sample_every.as_secs_f64(),
        settings.warmup.as_secs(),
        settings.dir.display()
    );
}

/// One thread per machine, each inside its namespace on its own runtime, until `stop` says so.
fn start_machines(
    settings: &Settings,
    namespaces: &[Netns],
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let linked_every = settings.machines.checked_div(settings.linked).unwrap_or(usize::MAX);
    let mut threads = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        let machine = Machine {
            index: i,
            mac: machine_mac(i),
            ns: ns.name().to_string(),
            arch: if i % 2 == 0 { 0 } else { 7 },
            linked: linked_every != usize::MAX && i % linked_every == 0 && i / linked_every < settings.linked,
            start_after: settings.stagger.mul_f64(i as f64 / settings.machines as f64),
        };
        let (shared, stop) = (shared.clone(), stop.clone());
        threads.push(ns.spawn_inside(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            match runtime {
                Ok(runtime) => runtime.block_on(machine.run(shared, stop)),
                Err(e) => shared.counters.failed(Op::Dhcp, format!("no runtime for machine {i}: {e}")),
            }
        }));
    }
    threads
}

/// What [`watch_appliance`] saw: the samples, and how the watch ended.
struct Watched {
    samples: Vec<Sample>,
    /// The appliance died (with this status, if known).
    died: Option<Option<std::process::ExitStatus>>,
    /// SIGINT or SIGTERM ended the soak early.
    interrupted: bool,
}

/// Samples the appliance until the end, an interruption or the appliance's death, printing a row
/// now and then and the appliance's stacks if registrations stall.
async fn watch_appliance(
    settings: &Settings,
    appliance: &mut Appliance,
    shared: &Shared,
    (mut int, mut term): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> Watched {
    let pid = appliance.pid().expect("a started appliance has a process");
    let counters = &shared.counters;
    let total = (settings.duration.as_secs_f64() / settings.sample_every.as_secs_f64()).ceil() as usize;
    let stride = total.div_ceil(40).max(1);
    println!(
        "\n{:>7} {:>8} {:>5} {:>7} {:>9} {:>7} | {:>6} {:>8} {:>8} {:>10} {:>6}",
        "time", "RSS MiB", "fds", "threads", "store MiB", "events", "DHCP", "renewals", "regs", "heartbeats", "failed"
    );
    let mut watched = Watched { samples: Vec::new(), died: None, interrupted: false };
    let mut tick = tokio::time::interval(settings.sample_every);
    let mut stall = StallWatch::default();
    for n in 0..=total {
        tokio::select! {
            _ = int.recv() => { watched.interrupted = true; break }
            _ = term.recv() => { watched.interrupted = true; break }
            _ = tick.tick() => {}
        }
        let at = shared.started.elapsed();
        let Some(s) = sample(pid, &appliance.data_dir, at) else {
            watched.died = Some(appliance.exited());
            break;
        };
        if n % stride == 0 || n == total {
            println!("{}", row(&s, counters));
        }
        if stall.stalled(counters.get(Op::Registration), at) {
            let file = settings.dir.join("appliance-stacks.txt");
            println!(
                "== registrations stopped {} s ago while machines kept trying; the appliance's threads: {}",
                STALL.as_secs(),
                dump_stacks(pid, &file)
            );
        }
        watched.samples.push(s);
    }
    watched
}

/// Waits, bounded, for the machines' threads (already told to stop); how many are stuck.
fn stop_machines(threads: Vec<std::thread::JoinHandle<()>>, counters: &Counters) -> usize {
    let deadline = Instant::now() + STOP_WAIT;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stuck = threads.iter().filter(|t| !t.is_finished()).count();
    for thread in threads.into_iter().filter(|t| t.is_finished()) {
        if thread.join().is_err() {
            counters.failed(Op::Dhcp, "a machine's thread panicked".into());
        }
    }
    stuck
}

/// The soak's outcome, printed as its last line.
fn verdict(
    settings: &Settings,
    watched: &Watched,
    counters: &Counters,
    metrics: Option<&str>,
    log_text: &str,
    stuck: usize,
) -> Outcome {
    if watched.interrupted {
        let covered = watched.samples.last().map_or(0.0, |s| s.at.as_secs_f64());
        println!("== interrupted: the figures above cover {covered:.0} s");
        Outcome::Interrupted
    } else if let Some(status) = watched.died {
        println!(
            "== FAILED: the appliance died ({}); its log ends:\n{}",
            status.map_or("exit status unknown".into(), |s| s.to_string()),
            crate::tail(log_text, 30)
        );
        Outcome::Failed
    } else {
        let problems = problems(settings, counters, metrics, stuck);
        if problems.is_empty() {
            println!("== PASSED");
            Outcome::Passed
        } else {
            println!("== FAILED: {}\nthe appliance's log ends:\n{}", problems.join("; "), crate::tail(log_text, 20));
            Outcome::Failed
        }
    }
}

fn row(s: &Sample, counters: &Counters) -> String {
    let secs = s.at.as_secs();
    let failed: u64 = Op::ALL.iter().map(|op| counters.get(*op).1).sum();
    format!(
        "{:>4}:{:02} {:>8.1} {:>5} {:>7} {:>9.2} {:>7} | {:>6} {:>8} {:>8} {:>10} {:>6}",
        secs / 60,
        secs % 60,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.store_bytes as f64 / 1048576.0,
        s.events.map_or("?".into(), |e| e.to_string()),
        counters.get(Op::Dhcp).0,
        counters.get(Op::Renewal).0,
        counters.get(Op::Registration).0,
        counters.get(Op::Heartbeat).0,
        failed,
    )
}

/// Slopes, totals, the appliance's own counters and log levels.
fn report(
    settings: &Settings,
    samples: &[Sample],
    counters: &Counters,
    metrics: Option<&str>,
    log: &str,
    stuck: usize,
) -> String {
    let mut out = String::new();
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= settings.warmup).collect();
    let _ = writeln!(
        out,
        "\n== slopes: least squares over {} samples from {} s to {} s, per hour",
        steady.len(),
        steady.first().map_or(0, |s| s.at.as_secs()),
        steady.last().map_or(0, |s| s.at.as_secs())
    );
    for (name, unit, value) in SERIES {
        let points: Vec<(f64, f64)> =
            steady.iter().filter_map(|s| Some((s.at.as_secs_f64() / 3600.0, value(s)?))).collect();
        let (first, last) = (points.first().map(|p| p.1), points.last().map(|p| p.1));
        match (slope(&points), first, last) {
            (Some(per_hour), Some(first), Some(last)) => {
                let _ = writeln!(out, "   {name:<17} {per_hour:>+12.2} {unit}/h   ({first:.2} -> {last:.2} {unit})",);
            }
            _ => {
                let _ = writeln!(out, "   {name:<17} (too few samples)");
            }
        }
    }
    if let Some(highest) = samples.iter().map(|s| s.rss_kib).max() {
        let _ = writeln!(out, "   highest RSS sampled {:>10.1} MiB", highest as f64 / 1024.0);
    }
    let _ = writeln!(out, "\n== operations{:>31} {:>8} {:>8}", "succeeded", "failed", "failed %");
    for op in Op::ALL {
        let (ok, failed) = counters.get(op);
        let percent = if ok + failed == 0 { 0.0 } else { 100.0 * failed as f64 / (ok + failed) as f64 };
        let _ = writeln!(out, "   {:<30} {ok:>10} {failed:>8} {percent:>8.2}", op.name());
        for example in counters.examples(op) {
            let _ = writeln!(out, "      e.g. {example}");
        }
    }
    if stuck > 0 {
        let _ = writeln!(out, "   {stuck} machines did not stop within {} s", STOP_WAIT.as_secs());
    }
    if let Some(text) = metrics {
        let _ = writeln!(out, "\n== the appliance's counters (/metrics, non-zero)");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let wanted = ["oasis_dhcp_", "oasis_tftp_transfers", "oasis_http_requests", "oasis_errors_total"];
            if wanted.iter().any(|w| line.starts_with(w)) && !line.ends_with(" 0") {
                let _ = writeln!(out, "   {line}");
            }
        }
    }
    let lines: Vec<String> = log.lines().map(plain).collect();
    let level = |line: &str| line.split_whitespace().nth(1).map(str::to_string);
    let count = |wanted: &str| lines.iter().filter(|l| level(l).as_deref() == Some(wanted)).count();
    let _ = writeln!(
        out,
        "\n== the appliance's log: {} lines, {} WARN, {} ERROR, {} panics",
        lines.len(),
        count("WARN"),
        count("ERROR"),
        lines.iter().filter(|l| l.contains("panicked")).count()
    );
    // Each distinct warning and error once (without its time), with how often it came.
    let mut distinct: Vec<(String, usize)> = Vec::new();
    for line in &lines {
        if matches!(level(line).as_deref(), Some("WARN" | "ERROR")) || line.contains("panicked") {
            let text = line.split_once(' ').map_or(line.as_str(), |(_, rest)| rest.trim_start()).to_string();
            match distinct.iter_mut().find(|(t, _)| *t == text) {
                Some((_, n)) => *n += 1,
                None => distinct.push((text, 1)),
            }
        }
    }
    for (text, n) in distinct.iter().take(8) {
        let _ = writeln!(out, "   {n:>5} x {text}");
    }
    out
}

/// The non-zero `oasis_errors_total{kind="…"}` counters.
fn appliance_errors(metrics: &str) -> Vec<(String, u64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("oasis_errors_total{kind=\"")?;
            let (kind, value) = rest.split_once("\"} ")?;
            Some((kind.to_string(), value.trim().parse().ok()?))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// A log line without its terminal colours (the appliance colours its log, even into a file).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Why the run fails, if it does: an operation kind failing too often, or not happening at all,
/// or the appliance counting errors.
fn problems(settings: &Settings, counters: &Counters, metrics: Option<&str>, stuck: usize) -> Vec<String> {
    let mut problems = Vec::new();
    match metrics {
        None => problems.push("the appliance's /metrics did not answer at the end".to_string()),
        // Well-behaved clients only: every error the appliance counts is one too many.
        Some(text) => problems.extend(
            appliance_errors(text).into_iter().map(|(kind, n)| format!("the appliance counted {n} {kind} errors")),
        ),
    }
    for op in Op::ALL {
        let (ok, failed) = counters.get(op);
        // Releases come with reboots, which a short run may not see.
        let expected = match op {
            Op::Link | Op::Heartbeat | Op::Watch => settings.linked > 0,
            Op::Release => false,
            _ => true,
        };
        if ok + failed == 0 {
            if expected {
                problems.push(format!("no {} at all", op.name()));
            }
        } else if 100.0 * failed as f64 / (ok + failed) as f64 > settings.max_failed_percent {
            problems.push(format!("{failed} of {} {} failed", ok + failed, op.name()));
        }
    }
    if stuck > 0 {
        problems.push(format!("{stuck} machines did not stop"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_is_least_squares() {
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), Some(2.0));
        // Noise around a flat line is flat.
        let flat = slope(&[(0.0, 10.0), (1.0, 12.0), (2.0, 8.0), (3.0, 10.0)]).unwrap();
        assert!(flat.abs() < 0.5, "{flat}");
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(slope(&[]), None);
    }

    #[test]
    fn proc_status_fields_are_read_without_units() {
        let status = "Name:\toasis\nState:\tS (sleeping)\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        assert_eq!(status_field(status, "VmRSS"), Some(10240));
        assert_eq!(status_field(status, "Threads"), Some(7));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[test]
    fn the_boot_script_gives_its_files_and_the_agent_arguments() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let script = format!(
            "#!ipxe\nkernel http://10.0.0.1/boot/node/vmlinuz initrd=initrd.img oasis.api=https://10.0.0.1:9443 \
             oasis.token=t0k3n oasis.pin={pin} BOOTIF=01-52-54-00-5a-00-01 || goto failed\n\
             initrd --name initrd.img http://10.0.0.1/boot/node/initrd.img || goto failed\nboot || goto failed\n"
        );
        let (kernel, initrds, args) = parse_script(&script).unwrap();
        assert_eq!(kernel, "http://10.0.0.1/boot/node/vmlinuz");
        assert_eq!(initrds, ["http://10.0.0.1/boot/node/initrd.img"]);
        assert_eq!(
            (args.api.as_str(), args.token.as_str(), args.pin.as_str()),
            ("https://10.0.0.1:9443", "t0k3n", pin.as_str())
        );
        assert!(parse_script("#!ipxe\nexit\n").is_err());
    }

    #[test]
    fn the_appliance_errors_are_read_from_its_metrics() {
        let text = "# HELP oasis_errors_total Errors, by kind.\noasis_errors_total{kind=\"dhcp_malformed\"} 0\n\
                    oasis_errors_total{kind=\"dhcp_release_ignored\"} 3\noasis_http_requests_total 9\n";
        assert_eq!(appliance_errors(text), [("dhcp_release_ignored".to_string(), 3)]);
    }

    #[test]
    fn a_stall_is_failures_without_a_success_for_a_minute() {
        let mut watch = StallWatch::default();
        let secs = Duration::from_secs;
        assert!(!watch.stalled((10, 0), secs(10)));
        // No registrations at all (no machine rebooting) is quiet, not stuck.
        assert!(!watch.stalled((10, 0), secs(100)));
        assert!(!watch.stalled((10, 5), secs(60)));
        assert!(watch.stalled((10, 9), secs(71)));
        assert!(!watch.stalled((10, 20), secs(200)), "reported once");
        let mut watch = StallWatch::default();
        assert!(!watch.stalled((10, 0), secs(10)));
        assert!(!watch.stalled((11, 5), secs(80)), "a success in between");
    }

    #[test]
    fn log_lines_lose_their_colours() {
        let line = "\x1b[2m2026-12-06T14:13:55.313627Z\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2moasis_appliance::serve\x1b[0m\x1b[2m:\x1b[0m iPXE";
        assert_eq!(plain(line), "2026-12-06T14:13:55.313627Z  WARN oasis_appliance::serve: iPXE");
        assert_eq!(plain("no colour"), "no colour");
    }

    #[test]
    fn settings_have_defaults_and_refuse_nonsense() {
        let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        let s = Settings::from_args(args("--dir /tmp/x")).unwrap();
        assert_eq!((s.duration, s.machines, s.linked, s.lease_secs), (Duration::from_secs(600), 300, 24, 60));
        assert_eq!((s.warmup, s.stagger), (Duration::from_secs(60), Duration::from_secs(30)));
        let short = Settings::from_args(args("--dir /tmp/x --minutes 1 --machines 50 --linked 8")).unwrap();
        assert_eq!(
            (short.duration, short.warmup, short.machines, short.linked),
            (Duration::from_secs(60), Duration::from_secs(15), 50, 8)
        );
        for bad in [
            "",
            "--dir /x --machines 0",
            "--dir /x --machines 5000",
            "--dir /x --linked 400",
            "--dir /x --lease-secs 30",
            "--dir /x --bogus 1",
            "--dir /x --minutes ten",
            "--dir",
        ] {
            assert!(Settings::from_args(args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_config_holds_the_pool_and_the_lease() {
        let s = Settings::from_args(["--dir".to_string(), "/tmp/soak".to_string()]).unwrap();
        let text = config_text(&s);
        assert!(text.contains("range = [\"10.0.1.1\", \"10.0.4.254\"]\nlease_time = 60\n"), "{text}");
        assert!(text.contains("policy = \"auto\"") && text.contains("min_machines = 301"), "{text}");
    }
}

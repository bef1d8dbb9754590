//! The store against hostile clients and a broken disk, on a real `oasis serve` in a network
//! namespace (issue 13): refused registrations in bulk, a full data partition (a small
//! loop-mounted ext4), a damaged and a truncated store. Each checks that the service still
//! answers its real clients and that nothing committed is lost. Needs root (namespaces, loop
//! devices, mount) and the boot assets.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dhcproto::v4::MessageType;
use oasis_agent::client::{ApiClient, ApiError};
use oasis_e2e::appliance::{
    agent_args, boot_root, join_args, oasis, oasis_bin, register_request as request, write_config, Appliance,
};
use oasis_e2e::dhcp_client::{DhcpClient, Role};
use oasis_e2e::json::{parse, Event};
use oasis_e2e::{tail, Netns};
use oasis_proto::{RegisterRequest, RegisterResponse};

const API: &str = "https://10.0.0.1:9443";
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// `oasis`'s exit code for a store that needs its operator (appliance/src/exit.rs).
const EXIT_STORE: i32 = 5;
const DHCP_FULL: &str = "range = [\"10.0.0.100\", \"10.0.0.199\"]\nconflict_check = \"off\"";
const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x01];
const MAC_B: [u8; 6] = [0x52, 0x54, 0x00, 0xaa, 0x00, 0x02];

/// The test rack's configuration, with the node image's place in the boot root (its boot
/// script carries the join token; it is fetched, never booted, here).
fn rack(dir: &Path, dhcp: &str) -> PathBuf {
    let root = boot_root(dir);
    std::fs::create_dir_all(root.join("node")).unwrap();
    std::fs::write(root.join("node/vmlinuz"), b"kernel").unwrap();
    std::fs::write(root.join("node/initrd.img"), b"initrd").unwrap();
    write_config(dir, dhcp, &root, "")
}

fn appliance_ns(prefix: &str) -> Netns {
    let ns = Netns::create(prefix).unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    ns
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until the appliance's log says `what`.
fn wait_for_log(appliance: &Appliance, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !appliance.log().contains(what) {
        assert!(Instant::now() < deadline, "the log never said {what:?}:\n{}", tail(&appliance.log(), 40));
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- registrations ----

/// Sends each request from inside `ns`; the status of each refusal, `None` for an answer.
fn register_all(ns: &Netns, pin: &str, requests: Vec<RegisterRequest>) -> Vec<Result<RegisterResponse, u16>> {
    let pin = pin.to_string();
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let client = ApiClient::new(API, &pin).unwrap();
            let mut out = vec![];
            for req in &requests {
                out.push(match client.register(req).await {
                    Ok(response) => Ok(response),
                    Err(ApiError::Refused { status, .. }) => Err(status),
                    Err(e) => panic!("not an answer: {e}"),
                });
            }
            out
        })
    })
}

fn events_json(out: &Output) -> Vec<Event> {
    assert!(out.status.success(), "oasis events failed: {}", stderr(out));
    parse("oasis events --json", &String::from_utf8_lossy(&out.stdout))
}

#[test]
fn refused_registrations_in_bulk_cost_a_few_events_and_lose_nothing() {
    let ns = appliance_ns("oasis-hreg");
    let dir = tempfile::tempdir().unwrap();
    let config = rack(dir.path(), "mode = \"off\"");
    let log = dir.path().join("oasis.log");
    // DHCP is off, so the machines carry the join token, as boot media would.
    let args = join_args(&config);
    let mut appliance = Appliance::start(&ns, &config, &log);
    let (token, pin) = (args.token.clone(), args.pin.clone());

    let first = request(&token, "4c4c4544-0000-4000-8000-000000000001", "52:54:00:00:00:01", 1, 1);
    assert!(register_all(&ns, &pin, vec![first])[0].is_ok(), "a real machine registers");
    let store = appliance.data_dir.join("oasis.redb");
    let before = std::fs::metadata(&store).unwrap().len();

    // 500 refusals: wrong tokens with plausible fields, wrong tokens with hostile ones (a 32 KiB
    // boot MAC with terminal escapes and quotes), and malformed ones with the right token.
    let huge = format!("\u{1b}[31m{}\"}}\n", "A".repeat(32 << 10));
    let hostile: Vec<RegisterRequest> = (0..500u32)
        .map(|i| {
            let uuid = format!("4c4c4544-0000-4000-8000-{:012x}", 0x1000 + i);
            let mut r = request("wrong-token", &uuid, &format!("52:54:00:00:10:{:02x}", i % 256), 2, i);
            match i % 5 {
                0 | 1 => {}
                2 | 3 => {
                    r.boot_mac = huge.clone();
                    r.agent_version = "\u{0}\u{7f}".repeat(100);
                }
                _ => {
                    r.token = token.clone();
                    r.inventory.system.vendor = Some("v".repeat(300));
                }
            }
            r
        })
        .collect();
    let answers = register_all(&ns, &pin, hostile);
    assert_eq!(answers.iter().filter(|a| matches!(a, Err(401))).count(), 400);
    assert_eq!(answers.iter().filter(|a| matches!(a, Err(400))).count(), 100);

    // Still answering its real clients.
    let second = request(&token, "4c4c4544-0000-4000-8000-000000000002", "52:54:00:00:00:02", 3, 1);
    assert!(register_all(&ns, &pin, vec![second])[0].is_ok(), "a real machine registers after the flood");
    let after = std::fs::metadata(&store).unwrap().len();
    eprintln!("500 refused registrations: the store went from {before} to {after} bytes");
    assert!(after <= before + (1 << 20), "the store grew from {before} to {after} bytes");
    let data_dir = appliance.data_dir.to_str().unwrap().to_string();
    let running = events_json(&oasis(&["events", "--json", "--limit", "1000", "--data-dir", &data_dir]));
    let refusals = |events: &[Event]| -> Vec<String> {
        events.iter().filter(|e| e.kind.starts_with("registration-")).map(|e| e.message.clone()).collect()
    };
    assert_eq!(refusals(&running).len(), 2, "one event per source and kind: {:?}", refusals(&running));

    // A clean stop writes the counts; nothing committed is lost.
    appliance.stop();
    let stopped = events_json(&oasis(&["events", "--json", "--limit", "1000", "--data-dir", &data_dir]));
    let messages = refusals(&stopped);
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("399 more like this from 10.0.0.1")), "{messages:?}");
    assert!(messages.iter().any(|m| m.starts_with("99 more like this from 10.0.0.1")), "{messages:?}");
    assert!(stopped.iter().all(|e| e.message.len() < 400), "no event quotes the flood");
    let text = appliance.log();
    assert!(!text.contains(&"A".repeat(100)), "the log does not quote the flood either");
    assert!(text.len() < 64 << 10, "the log stays small: {} bytes", text.len());

    let appliance = Appliance::start(&ns, &config, &log);
    let machines = appliance.machines();
    assert_eq!(machines.iter().filter(|m| m.registration.is_some()).count(), 2, "{machines:?}");
}

// ---- DHCP, from a client namespace ----

/// A DHCP client (the harness's) in its own namespace, on a veth whose other end is on the
/// appliance's bridge.
struct RackClient {
    ns: Netns,
}

/// A current-thread runtime for the harness's DHCP client.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

impl RackClient {
    fn new(appliance: &Netns) -> RackClient {
        let ns = Netns::create("oasis-dhcpc").unwrap();
        appliance.add_veth_to("vc0", &ns, "c0").unwrap();
        appliance.attach("vc0", "br0").unwrap();
        RackClient { ns }
    }

    /// DISCOVER, OFFER, REQUEST, ACK: the address acknowledged to `mac`, if the ACK came. On an
    /// ACK the address goes on `c0`, for the renewal's unicast.
    fn lease(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let acked = self.ns.run_inside(move || {
            block_on(async { DhcpClient::bind_device(mac, "c0")?.dora(Role::Os).await }).ok().map(|l| l.ip)
        })?;
        let cidr = format!("{acked}/24");
        if !self.ns.ip(&["-4", "addr", "show", "dev", "c0"]).unwrap().contains(&cidr) {
            self.ns.add_address("c0", &cidr).unwrap();
        }
        Some(acked)
    }

    /// A renewal (RENEWING: ciaddr set, unicast to the server): whether it was acknowledged.
    fn renew(&self, mac: [u8; 6], ip: Ipv4Addr) -> bool {
        self.ns.run_inside(move || {
            let answer =
                block_on(async { DhcpClient::bind_device(mac, "c0")?.renew_message(ip, SERVER, Role::Os).await });
            answer.is_ok_and(|m| m.opts().msg_type() == Some(MessageType::Ack))
        })
    }
}

/// A small ext4 filesystem in a file, loop-mounted; unmounted and detached on drop, also when the
/// test fails.
struct LoopMount {
    device: String,
    mount: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, mount: &Path, mib: u64) -> LoopMount {
        std::fs::File::create(image).unwrap().set_len(mib << 20).unwrap();
        let run = |cmd: &mut Command| oasis_e2e::run(cmd).unwrap_or_else(|e| panic!("{e}"));
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(image));
        let device = run(Command::new("losetup").args(["-f", "--show"]).arg(image)).trim().to_string();
        let guard = LoopMount { device, mount: mount.to_path_buf() };
        std::fs::create_dir_all(mount).unwrap();
        run(Command::new("mount").arg(&guard.device).arg(mount));
        guard
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn a_full_data_partition_keeps_renewals_going_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _disk = LoopMount::new(&dir.path().join("data.img"), &data, 64);
    let ns = appliance_ns("oasis-hfull");
    let client = RackClient::new(&ns);
    let config = rack(dir.path(), DHCP_FULL);
    let appliance = Appliance::start(&ns, &config, &dir.path().join("oasis.log"));
    let a = client.lease(MAC_A).expect("a lease before the partition fills");
    // In full DHCP mode a boot script, and a registration, come from the machine's own lease.
    let args = agent_args(&client.ns, "52-54-00-aa-00-01");

    // Something else fills the partition, to the last block.
    let fillers: Vec<PathBuf> = ["1M", "64K", "4K", "1K"]
        .iter()
        .map(|bs| {
            let filler = data.join(format!("filler-{bs}"));
            let _ = Command::new("dd")
                .arg("if=/dev/zero")
                .arg(format!("of={}", filler.display()))
                .arg(format!("bs={bs}"))
                .output();
            filler
        })
        .collect();
    Command::new("sync").status().unwrap();

    // A machine goes on registering (each attempt a record and events to commit)...
    let joining: Vec<RegisterRequest> = (0..200u32)
        .map(|i| {
            let uuid = format!("4c4c4544-0000-4000-8000-{:012x}", 0x2000 + i);
            request(&args.token, &uuid, "52:54:00:aa:00:01", i as u8, i)
        })
        .collect();
    let answers = register_all(&client.ns, &args.pin, joining);
    let df = Command::new("df").arg("-B1").arg(&data).output().unwrap();
    eprintln!("filled up:\n{}", String::from_utf8_lossy(&df.stdout));
    // ...and the lease held still renews.
    assert!(client.renew(MAC_A, a), "the lease held renews:\n{}", tail(&appliance.log(), 30));
    assert!(answers.iter().all(|a| matches!(a, Err(507))), "registrations are refused: {answers:?}");
    assert_eq!(client.lease(MAC_B), None, "a new lease is not acknowledged when it cannot be committed");
    wait_for_log(&appliance, "is full");
    let out = oasis(&["machine", "boot", "52:54:00:aa:00:01", "local", "--data-dir", data.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("is full"), "a write refused clearly: {}", stderr(&out));
    assert_eq!(appliance.address_of("52:54:00:aa:00:01"), Some(a.to_string()), "reads go on");

    for filler in fillers {
        std::fs::remove_file(filler).unwrap();
    }
    wait_for_log(&appliance, "has space again");
    let b = client.lease(MAC_B).expect("a new lease once space returned");
    assert_ne!(a, b);
    assert_eq!(appliance.address_of("52:54:00:aa:00:01"), Some(a.to_string()), "nothing committed is lost");
    assert_eq!(appliance.address_of("52:54:00:aa:00:02"), Some(b.to_string()));
    assert!(client.renew(MAC_A, a));
}

// ---- a damaged store ----

/// Runs `oasis serve`, which must refuse to start (within 60 s; it is killed if it runs on).
fn serve_refused(ns: &Netns, config: &Path, store: &Path) -> String {
    let mut child = ns
        .command(oasis_bin().to_str().unwrap())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("oasis serve started on the store {}:\n{}", store.display(), tail(&stderr(&out), 20));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_STORE), "{err}");
    assert!(err.contains(&store.display().to_string()), "the message names the store: {err}");
    assert!(err.contains("restore") && err.contains("--new-store"), "and what to do: {err}");
    err
}

#[test]
fn a_damaged_or_emptied_store_is_refused_unchanged_and_new_store_starts_afresh_keeping_it() {
    let ns = appliance_ns("oasis-hdmg");
    let client = RackClient::new(&ns);
    let dir = tempfile::tempdir().unwrap();
    let config = rack(dir.path(), DHCP_FULL);
    let log = dir.path().join("oasis.log");
    let mut appliance = Appliance::start(&ns, &config, &log);
    let a = client.lease(MAC_A).expect("a lease");
    let data = appliance.data_dir.clone();
    let old_token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    appliance.stop();

    let store = data.join("oasis.redb");
    let good = std::fs::read(&store).unwrap();
    // One bit of the lease's address, which stays valid JSON.
    let needle = format!("\"ip\":\"{a}\"");
    let mut damaged = good.clone();
    let found: Vec<usize> =
        good.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle.as_bytes()).map(|(i, _)| i).collect();
    assert!(!found.is_empty(), "the lease is in the file");
    for i in found {
        damaged[i + needle.len() - 2] ^= 0x01;
    }
    std::fs::write(&store, &damaged).unwrap();
    let err = serve_refused(&ns, &config, &store);
    assert!(err.contains("damaged"), "{err}");
    assert_eq!(std::fs::read(&store).unwrap(), damaged, "the refused store is left byte for byte");
    let out = oasis(&["leases", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(EXIT_STORE), "the CLI refuses it too: {}", stderr(&out));
    assert_eq!(std::fs::read(&store).unwrap(), damaged);

    std::fs::write(&store, b"").unwrap();
    let err = serve_refused(&ns, &config, &store);
    assert!(err.contains("missing or empty"), "{err}");
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 0, "not made into a new appliance");
    std::fs::write(&store, &good[..good.len() / 2]).unwrap();
    serve_refused(&ns, &config, &store);
    assert_eq!(std::fs::read(&store).unwrap(), &good[..good.len() / 2]);

    // The operator chooses to start afresh: the remains are kept aside.
    std::fs::write(&store, &damaged).unwrap();
    let appliance = Appliance::start_with(&ns, &config, &log, &["--new-store"]);
    let aside = |prefix: &str| -> PathBuf {
        std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}* in {}", data.display()))
    };
    assert_eq!(std::fs::read(aside("oasis.redb.old-")).unwrap(), damaged, "kept byte for byte");
    assert_eq!(std::fs::read_to_string(aside("admin-token.old-")).unwrap(), old_token);
    assert_ne!(std::fs::read_to_string(data.join("admin-token")).unwrap(), old_token, "a new appliance");
    assert!(appliance.log().contains("kept aside"), "{}", tail(&appliance.log(), 20));
    let b = client.lease(MAC_B).expect("it serves its clients again");
    assert_eq!(appliance.address_of("52:54:00:aa:00:02"), Some(b.to_string()));
}

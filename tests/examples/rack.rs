//! A simulated rack on this machine, as root (run by `scripts/rack`): a network namespace with a
//! bridge (the rack network), `oasis serve` on it, and N QEMU machines (alternately BIOS and UEFI,
//! software emulation) that power on, network-boot the node image, register with the appliance,
//! are accepted and bring up their WireGuard management links; the appliance then assembles them
//! into a cluster. Shows each machine's progress until all are linked, then the cluster's assembly
//! until it is healthy, its status and the time from power-on, then the appliance's machines,
//! leases and events.
//!
//! Every wait is bounded and says what it waited for; a QEMU or `oasis serve` that dies is
//! reported at once with the end of its log. Ctrl-C stops it: everything it made (namespace,
//! bridge, taps, processes, work directory) is removed once, and it exits with 130. Otherwise the
//! logs are kept in the work directory it names.
//!
//!   rack [MACHINES]     (default 3; OASIS_BIN, OASIS_ASSETS with ipxe/, payload/ and node/)

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use oasis_e2e::appliance::{node_boot_root, oasis, oasis_bin, write_config, Appliance};
use oasis_e2e::interrupt::{self, failed, Stop};
use oasis_e2e::json::{voters, MachineEntry, MachineState};
use oasis_e2e::{tail, Firmware, Machine, MachineSpec, Netns};

/// The rack while it runs; dropped (machines, then the appliance, then the namespace) on any end.
struct Rack {
    machines: Vec<(String, Firmware, Machine)>,
    appliance: Appliance,
    start: Instant,
    work: std::path::PathBuf,
    // Last: the namespace goes after everything that runs in it.
    _ns: Netns,
}

fn mac(i: usize) -> String {
    format!("52:54:00:aa:00:{i:02x}")
}

fn config(count: usize) -> String {
    format!(
        "# No [profile]: machines boot the node image and its agent registers.\n[registration]\npolicy = \"auto\"\n\n\
         # Choose roles once all the rack's machines are up (so power-on order does not matter).\n\
         [cluster]\nname = \"rack\"\nmin_machines = {count}\nsettle_secs = 10\n"
    )
}

impl Rack {
    fn build(count: usize, work: &Path) -> Result<Rack, Stop> {
        let ns = Netns::create("oasis-rack").map_err(failed("making the rack's network namespace"))?;
        ns.add_bridge("br0", Some("10.0.0.1/24")).map_err(failed("making the rack's bridge"))?;
        let dhcp = "range = [\"10.0.0.100\", \"10.0.0.199\"]";
        let config = write_config(work, dhcp, &node_boot_root(work), &config(count));
        let check = oasis(&["config", "check", config.to_str().expect("a UTF-8 path")]);
        print!("{}", String::from_utf8_lossy(&check.stdout));
        if !check.status.success() {
            return Err(Stop::Failed(format!("oasis config check: {}", String::from_utf8_lossy(&check.stderr))));
        }
        let appliance = Appliance::start_logging(&ns, &config, &work.join("oasis.log"), "info");
        println!(
            "== oasis serve is up on 10.0.0.1 (log: {}); powering on {count} machines",
            work.join("oasis.log").display()
        );
        let mut machines = Vec::new();
        for i in 1..=count {
            let (tap, mac) = (format!("tap{i}"), mac(i));
            ns.add_tap(&tap, "br0").map_err(failed("adding a tap"))?;
            let firmware = if i % 2 == 1 { Firmware::Bios } else { Firmware::Uefi };
            let spec = MachineSpec::new(&ns, &tap, &mac, firmware, work.join(format!("machine{i}.log")));
            machines.push((mac.clone(), firmware, Machine::start(spec).map_err(failed("starting QEMU"))?));
            println!("   machine {i} ({mac}, {}) powered on", if i % 2 == 1 { "BIOS" } else { "UEFI" });
        }
        Ok(Rack { machines, appliance, start: Instant::now(), work: work.to_path_buf(), _ns: ns })
    }

    fn secs(&self) -> u64 {
        self.start.elapsed().as_secs()
    }

    /// Fails at once if `oasis serve` or a QEMU is gone (or stops if Ctrl-C came: the terminal's
    /// SIGINT reaches them too).
    fn check(&mut self) -> Result<(), Stop> {
        if interrupt::interrupted() {
            return Err(Stop::Interrupted);
        }
        let dead = if let Some(status) = self.appliance.exited() {
            Some(format!("oasis serve exited ({status}); its log ends:\n{}", tail(&self.appliance.log(), 30)))
        } else {
            self.machines.iter_mut().enumerate().find_map(|(i, (_, _, m))| {
                let status = m.exited()?;
                let log = self.work.join(format!("machine{}.qemu-stderr", i + 1));
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                Some(format!("machine {} (QEMU) exited ({status}):\n{}\n{}", i + 1, tail(&m.serial(), 20), stderr))
            })
        };
        interrupt::stop_if_dead(dead)
    }

    /// Sleeps `d`, checking every 200 ms that everything is alive and no Ctrl-C came.
    fn pause(&mut self, d: Duration) -> Result<(), Stop> {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.check()?;
            std::thread::sleep(Duration::from_millis(200));
        }
        self.check()
    }

    /// Fails with what was awaited if `limit` has passed since power-on.
    fn bounded(&self, limit: Duration, what: &str) -> Result<(), Stop> {
        if self.start.elapsed() > limit {
            return Err(Stop::Failed(format!(
                "{what} within {} minutes; logs in {}",
                limit.as_secs() / 60,
                self.work.display()
            )));
        }
        Ok(())
    }
}

/// Machine `i`'s furthest step: from its serial console until its agent registers, then from the
/// appliance's own view.
fn progress(entries: &[MachineEntry], mac: &str, machine: &Machine) -> String {
    let registration = entries.iter().find(|e| e.netboot.mac.to_string() == mac).and_then(|e| e.registration.as_ref());
    if let Some(r) = registration {
        let linked =
            r.record.state == MachineState::Accepted && r.handshake_age_secs.is_some() && r.last_heartbeat.is_some();
        return match (linked, r.record.overlay) {
            (true, Some(overlay)) => format!("linked {overlay}"),
            _ => r.record.state.to_string(),
        };
    }
    let serial = machine.serial();
    if serial.contains("boot done") {
        "agent up, registering".into()
    } else if serial.contains("Linux version") {
        "kernel starting".into()
    } else {
        "firmware/netboot".into()
    }
}

/// Seconds from power-on to when a machine registered and to when it linked.
type Times = Vec<(Option<u64>, Option<u64>)>;

/// Each machine's progress every 3 s until all are linked; when each registered and linked.
fn until_linked(rack: &mut Rack) -> Result<Times, Stop> {
    let mut at = vec![(None, None); rack.machines.len()];
    loop {
        rack.pause(Duration::from_secs(3))?;
        let entries = rack.appliance.machines();
        let now = rack.secs();
        let mut line = String::new();
        for (i, (mac, _, machine)) in rack.machines.iter().enumerate() {
            let state = progress(&entries, mac, machine);
            if state.starts_with("linked") {
                at[i].1.get_or_insert(now);
            }
            if state.starts_with("linked") || ["pending", "accepted", "rejected"].contains(&state.as_str()) {
                at[i].0.get_or_insert(now);
            }
            line.push_str(&format!("  m{}: {state}", i + 1));
        }
        println!("[{now}s]{line}");
        if at.iter().all(|(_, linked)| linked.is_some()) {
            return Ok(at);
        }
        rack.bounded(Duration::from_secs(900), "the machines did not all link")?;
    }
}

fn stats(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    format!("p50 {} s, max {} s", v[(v.len() - 1) / 2], v[v.len() - 1])
}

fn report_links(rack: &Rack, at: &[(Option<u64>, Option<u64>)]) {
    println!("== every machine registered and is on its management link, {} s after power-on", rack.secs());
    let entries = rack.appliance.machines();
    for (i, (mac, firmware, _)) in rack.machines.iter().enumerate() {
        let rss = entries
            .iter()
            .find(|e| e.netboot.mac.to_string() == *mac)
            .and_then(|e| e.registration.as_ref()?.last_heartbeat.as_ref()?.heartbeat.rss_bytes)
            .map_or("unknown".to_string(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0));
        let (registered, linked) = (at[i].0.unwrap_or_default(), at[i].1.unwrap_or_default());
        let fw = if *firmware == Firmware::Bios { "BIOS" } else { "UEFI" };
        println!(
            "   machine {} ({fw}): registered {registered} s, linked {linked} s after power-on; agent RSS {rss}",
            i + 1
        );
    }
    let registered = at.iter().map(|a| a.0.unwrap_or_default()).collect();
    let linked = at.iter().map(|a| a.1.unwrap_or_default()).collect();
    println!("   power-on to registered: {}; to linked: {} (checked every 3 s)", stats(registered), stats(linked));
}

/// The cluster's assembly, a line whenever it changes, until it is healthy.
fn until_healthy(rack: &mut Rack) -> Result<(), Stop> {
    println!("== assembling the cluster");
    let mut last = String::new();
    loop {
        let s = rack.appliance.cluster_status();
        let voting = voters(&s).len();
        let line = format!(
            "{} - {voting} voter(s), {} learner(s) - {}",
            s.health.as_str(),
            s.members.len() - voting,
            s.progress
        );
        if line != last {
            println!("[{}s] {line}", rack.secs());
            last = line;
        }
        if s.health == oasis_e2e::json::Health::Healthy {
            return Ok(());
        }
        rack.bounded(Duration::from_secs(1800), "the cluster did not form")?;
        rack.pause(Duration::from_secs(2))?;
    }
}

fn run(count: usize, work: &Path) -> Result<(), Stop> {
    let mut rack = Rack::build(count, work)?;
    let at = until_linked(&mut rack)?;
    report_links(&rack, &at);
    until_healthy(&mut rack)?;
    println!("== cluster healthy {} s after power-on", rack.secs());
    for view in [&["cluster", "status"][..], &["machines"], &["leases"], &["events"]] {
        print!("{}", rack.appliance.cli(view));
        println!();
    }
    Ok(())
}

fn main() -> ExitCode {
    let count = match interrupt::machine_count("rack") {
        Ok(count) => count,
        Err(usage) => return usage,
    };
    interrupt::catch();
    let _ = oasis_bin(); // fails here, before anything is made, if there is no oasis binary
    let work = tempfile::Builder::new().prefix("oasis-rack.").tempdir().expect("a work directory in /tmp");
    let outcome = run(count, work.path()); // the rack is removed when `run` returns
    match outcome {
        Ok(()) => {
            // The boot root is a copy of the assets; the logs are what is worth keeping.
            let _ = std::fs::remove_dir_all(work.path().join("boot"));
            println!("== rack removed (logs kept in {})", work.keep().display());
            ExitCode::SUCCESS
        }
        Err(Stop::Interrupted) => {
            drop(work);
            println!("== interrupted: rack removed (namespace, taps, QEMU, oasis serve, work directory)");
            ExitCode::from(130)
        }
        Err(Stop::Failed(message)) => {
            eprintln!("{message}");
            println!("== rack removed (logs kept in {})", work.keep().display());
            ExitCode::FAILURE
        }
    }
}

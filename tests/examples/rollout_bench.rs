//! Node rollout figures under TCG, printed as one table (run by `scripts/bench-rollout`, as root,
//! with `$OASIS_ASSETS/node` (Debian 12) and `node-trixie` (Debian 13) built). Each rack is real:
//! QEMU machines booting from `oasis serve` through BIOS iPXE, a data disk each, assembled into an
//! etcd cluster on Debian 12, a writer putting a key every 200 ms through the cluster, then the
//! signed Debian 13 bundle applied and rolled out one machine at a time.
//!
//! - `kexec3`: 3 machines, kexec: the whole rollout, each machine's time (its `rollout-reboot`
//!   event to its `rollout-confirmed` event), the longest write outage; then a signed bundle whose
//!   etcd cannot start (sequence 2): its `rollout-failed` event to the machine's
//!   `rollout-confirmed` back on the previous generation, and the bundle's apply to that;
//! - `reboot3`: the same with `kexec = false` (every machine reboots through its firmware's
//!   network boot);
//! - `kexec5`: 5 machines, kexec.
//!
//! Event times have a resolution of one second. Ctrl-C removes everything (namespaces, taps,
//! QEMU, `oasis serve`) and exits 130.
//!
//!   rollout_bench [kexec3] [reboot3] [kexec5]     (default: all three, in that order)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oasis_core::rollout::RolloutState;
use oasis_e2e::interrupt::{self, Stop};
use oasis_e2e::json::{Event, UpdateStatus};
use oasis_e2e::rack::{healthy_with, Rack};
use oasis_e2e::writer::{longest_outage, Writer};
use oasis_e2e::{bundles, node_image, tail, trixie_node_image};

/// The signed bundles every rack takes, and the key the appliances trust.
struct Bundles {
    debian13: PathBuf,
    broken: PathBuf,
    public: PathBuf,
}

/// What one rollout measured.
struct Rollout {
    name: String,
    machines: usize,
    assembled: f64,
    /// From `oasis update apply` to the rollout's end.
    whole: f64,
    /// Each machine's `rollout-reboot` to its `rollout-confirmed`, in seconds, in the order they moved.
    per_node: Vec<f64>,
    outage: f64,
    /// Of the rollout's `rollout-reboot` events, those that say "by kexec", and all of them.
    by_kexec: (usize, usize),
    writes: usize,
    refused: usize,
}

/// What the failing bundle measured.
struct Failback {
    machine: String,
    gate: String,
    /// `rollout-failed` to `rollout-confirmed` back on the previous generation.
    failed_to_back: f64,
    /// `oasis update apply` to that `rollout-confirmed`.
    apply_to_back: f64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Waits until `probe` gives a value, checking every 2 s (and Ctrl-C every 200 ms); past
/// `timeout` fails with what is worth reading.
fn wait_for<T>(rack: &Rack, timeout: Duration, what: &str, probe: impl Fn() -> Option<T>) -> Result<T, Stop> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(Stop::Failed(format!(
                "{what}: not within {timeout:?}\n{}\n--- cluster ---\n{}\n--- events ---\n{}\n--- appliance ---\n{}",
                rack.appliance.cli(&["update", "status"]),
                rack.appliance.cli(&["cluster", "status"]),
                rack.appliance.cli(&["events", "--limit", "60"]),
                tail(&rack.appliance.log(), 60)
            )));
        }
        for _ in 0..10 {
            if interrupt::interrupted() {
                return Err(Stop::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The rollout to `target` has ended (done, failed with nobody on the way back, or cancelled).
fn ended(status: &UpdateStatus, target: u64) -> bool {
    status.rollout.as_ref().is_some_and(|r| r.target == target && !r.active())
}

/// Events after `after` (a sequence number), in order.
fn events_after(rack: &Rack, after: u64) -> Vec<Event> {
    let mut events: Vec<Event> = rack.appliance.events(5000).into_iter().filter(|e| e.seq > after).collect();
    events.sort_by_key(|e| e.seq);
    events
}

fn last_seq(rack: &Rack) -> u64 {
    rack.appliance.events(1).into_iter().map(|e| e.seq).max().unwrap_or(0)
}

/// Each machine's time from a `rollout-reboot` event to its next `rollout-confirmed` event.
fn per_node(events: &[Event]) -> Vec<f64> {
    let mut rebooted = BTreeMap::new();
    let mut times = vec![];
    for e in events {
        let mac = e.mac.map(|m| m.to_string()).unwrap_or_default();
        match e.kind.as_str() {
            "rollout-reboot" => {
                rebooted.entry(mac).or_insert(e.at);
            }
            "rollout-confirmed" => {
                if let Some(at) = rebooted.remove(&mac) {
                    times.push(e.at.saturating_sub(at) as f64);
                }
            }
            _ => {}
        }
    }
    times
}

/// Every machine an etcd voter (`control_plane` = the rack's size), so each machine's time is
/// that of a member moving and the racks compare.
fn config(public: &Path, count: usize, kexec: bool) -> String {
    format!(
        "[cluster]\ncontrol_plane = {count}\nmin_machines = {count}\nsettle_secs = 2\ndead_after_secs = 30\n\n\
         [update]\ntrusted_keys = [\"{}\"]\nrollout_timeout_secs = 900\nkexec = {kexec}\n",
        public.display()
    )
}

/// A rack of `count` netbooted machines with data disks, assembled on Debian 12: (rack, seconds).
fn assemble(name: &str, count: usize, config: &str) -> Result<(Rack, f64), Stop> {
    let node = node_image().map_err(|e| Stop::Failed(format!("{e}")))?;
    let started = Instant::now();
    let rack = Rack::netbooted(name, count, config, &(0..count).collect::<Vec<_>>(), &node);
    let all: Vec<usize> = (0..count).collect();
    wait_for(&rack, Duration::from_secs(1800), "the cluster healthy on Debian 12", || {
        healthy_with(&rack.status(), &all).then_some(())
    })?;
    let assembled = started.elapsed().as_secs_f64();
    println!("   {name}: {count} machines healthy on Debian 12 in {assembled:.0} s");
    Ok((rack, assembled))
}

/// Applies `bundle` (sequence `target`) with the writer running and waits for its rollout's end.
fn roll(rack: &Rack, bundle: &Path, target: u64, timeout: Duration) -> Result<(UpdateStatus, Rollout), Stop> {
    let since = last_seq(rack);
    let writer = Writer::start(&rack.appliance.data_dir);
    let (applied_at, started) = (unix_now(), Instant::now());
    let applied = rack.appliance.cli(&["update", "apply", bundle.to_str().expect("a UTF-8 path")]);
    if !applied.contains(&format!("installed as node generation {target}")) {
        writer.finish();
        return Err(Stop::Failed(format!("oasis update apply: {applied}")));
    }
    let status = wait_for(rack, timeout, "the rollout's end", || {
        let status = rack.appliance.update_status();
        ended(&status, target).then_some(status)
    });
    let writes = writer.finish();
    let status = status?;
    let finished = status.rollout.as_ref().and_then(|r| r.finished_at);
    let whole = finished.map_or(started.elapsed().as_secs_f64(), |at| at.saturating_sub(applied_at) as f64);
    let events = events_after(rack, since);
    let reboots: Vec<&Event> = events.iter().filter(|e| e.kind == "rollout-reboot").collect();
    let rollout = Rollout {
        name: String::new(),
        machines: 0,
        assembled: 0.0,
        whole,
        per_node: per_node(&events),
        outage: longest_outage(&writes, None).as_secs_f64(),
        by_kexec: (reboots.iter().filter(|e| e.message.contains("by kexec")).count(), reboots.len()),
        writes: writes.len(),
        refused: writes.iter().filter(|w| !w.ok).count(),
    };
    Ok((status, rollout))
}

/// A rack of `count` machines rolled from Debian 12 to 13; with the failing bundle after it when
/// `failing`.
fn scenario(
    name: &str,
    count: usize,
    kexec: bool,
    bundles: &Bundles,
    failing: bool,
) -> Result<(Rollout, Option<Failback>), Stop> {
    let label = format!("{count} machines, {}", if kexec { "kexec" } else { "firmware reboot" });
    println!("== {label}");
    let (rack, assembled) = assemble(name, count, &config(&bundles.public, count, kexec))?;
    let timeout = Duration::from_secs(600 * count as u64);
    let (status, mut rollout) = roll(&rack, &bundles.debian13, 1, timeout)?;
    if status.rollout.as_ref().is_none_or(|r| r.state != RolloutState::Done) {
        let human = rack.appliance.cli(&["update", "status"]);
        return Err(Stop::Failed(format!("the Debian 13 rollout did not end done:\n{human}")));
    }
    (rollout.name, rollout.machines, rollout.assembled) = (label, count, assembled);
    println!("   rolled in {:.0} s; per node {:?} s", rollout.whole, rollout.per_node);
    let failback = if failing { Some(fail_and_back(&rack, &bundles.broken)?) } else { None };
    Ok((rollout, failback))
}

/// Applies the bundle whose etcd cannot start and measures the failed machine's way back.
fn fail_and_back(rack: &Rack, broken: &Path) -> Result<Failback, Stop> {
    println!("== the failing bundle (etcd cannot start), sequence 2");
    let since = last_seq(rack);
    let applied_at = unix_now();
    let applied = rack.appliance.cli(&["update", "apply", broken.to_str().expect("a UTF-8 path")]);
    if !applied.contains("installed as node generation 2") {
        return Err(Stop::Failed(format!("oasis update apply: {applied}")));
    }
    let status = wait_for(rack, Duration::from_secs(1800), "the failed machine back", || {
        let status = rack.appliance.update_status();
        ended(&status, 2).then_some(status)
    })?;
    let failure = status.rollout.and_then(|r| r.failure).filter(|f| f.back && !f.back_failed);
    let Some(failure) = failure else {
        return Err(Stop::Failed(format!("not failed and back: {}", rack.appliance.cli(&["update", "status"]))));
    };
    let events = events_after(rack, since);
    let failed = events.iter().find(|e| e.kind == "rollout-failed");
    let back =
        failed.and_then(|f| events.iter().find(|e| e.seq > f.seq && e.kind == "rollout-confirmed" && e.mac == f.mac));
    let (Some(failed), Some(back)) = (failed, back) else {
        return Err(Stop::Failed(format!("no rollout-failed and rollout-confirmed events: {events:#?}")));
    };
    let failback = Failback {
        machine: failure.machine,
        gate: failure.gate.to_string(),
        failed_to_back: back.at.saturating_sub(failed.at) as f64,
        apply_to_back: back.at.saturating_sub(applied_at) as f64,
    };
    println!("   {} failed gate '{}', back {:.0} s later", failback.machine, failback.gate, failback.failed_to_back);
    Ok(failback)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

fn print_table(rollouts: &[Rollout], failback: Option<&Failback>, command: &str) {
    println!(
        "\n== node rollouts, Debian 12 -> 13 (QEMU TCG, BIOS iPXE netboot, 512 MiB, data disks, every machine an etcd voter; a writer every 200 ms)"
    );
    println!(
        "{:<28} {:>9} {:>9} {:>13} {:>9} {:>9}  {:<24} {:>15}",
        "rollout", "assembly", "whole", "per machine", "median", "max", "each (s)", "longest outage"
    );
    for r in rollouts {
        let each: Vec<String> = r.per_node.iter().map(|t| format!("{t:.0}")).collect();
        println!(
            "{:<28} {:>7.0} s {:>7.0} s {:>11.0} s {:>7.0} s {:>7.0} s  {:<24} {:>13.1} s   ({} writes, {} refused; {} of {} boots by kexec)",
            r.name,
            r.assembled,
            r.whole,
            r.whole / r.machines as f64,
            median(&r.per_node),
            max(&r.per_node),
            each.join(", "),
            r.outage,
            r.writes,
            r.refused,
            r.by_kexec.0,
            r.by_kexec.1
        );
    }
    if let Some(f) = failback {
        println!(
            "failing bundle (etcd cannot start), 3 machines, kexec: {} failed gate '{}'; rollout-failed -> \
             healthy on its previous generation {:.0} s; apply -> that {:.0} s",
            f.machine, f.gate, f.failed_to_back, f.apply_to_back
        );
    }
    print_ratios(rollouts);
    println!("command: {command}");
}

fn print_ratios(rollouts: &[Rollout]) {
    let find = |name: &str| rollouts.iter().find(|r| r.name == name);
    if let (Some(k), Some(b)) = (find("3 machines, kexec"), find("3 machines, firmware reboot")) {
        println!(
            "firmware reboot / kexec, 3 machines: per machine (median) {:.2}x, whole rollout {:.2}x",
            median(&b.per_node) / median(&k.per_node),
            b.whole / k.whole
        );
    }
    if let (Some(three), Some(five)) = (find("3 machines, kexec"), find("5 machines, kexec")) {
        println!(
            "5 / 3 machines, kexec: whole rollout {:.2}x, per machine (median) {:.2}x",
            five.whole / three.whole,
            median(&five.per_node) / median(&three.per_node)
        );
    }
    let kexec: Vec<f64> =
        rollouts.iter().filter(|r| r.name.ends_with("kexec")).flat_map(|r| r.per_node.clone()).collect();
    let outage = rollouts.iter().map(|r| r.outage).fold(0.0, f64::max);
    if !kexec.is_empty() {
        let ok = |yes: bool| if yes { "met" } else { "MISSED" };
        println!(
            "goals: under 90 s per machine with kexec: {} (slowest {:.0} s); no write outage over 5 s: {} (longest {:.1} s)",
            ok(max(&kexec) < 90.0),
            max(&kexec),
            ok(outage <= 5.0),
            outage
        );
    }
}

fn bundles(dir: &Path) -> Result<Bundles, Stop> {
    let trixie = trixie_node_image().map_err(|e| Stop::Failed(format!("{e}")))?;
    let (private, public) = bundles::keygen(dir);
    let (debian13, broken) = (dir.join("debian13.bundle"), dir.join("broken.bundle"));
    println!("== building the signed bundles (Debian 13, and one whose etcd cannot start)");
    bundles::build(&trixie, 1, &private, &debian13);
    bundles::build(&bundles::with_broken_etcd(&trixie, dir), 2, &private, &broken);
    Ok(Bundles { debian13, broken, public })
}

fn run(which: &[String], dir: &Path, command: &str) -> Result<(), Stop> {
    let bundles = bundles(dir)?;
    let (mut rollouts, mut failback) = (vec![], None);
    for name in which {
        let (rollout, failed) = match name.as_str() {
            "kexec3" => scenario("oasis-rb-k3", 3, true, &bundles, true)?,
            "reboot3" => scenario("oasis-rb-r3", 3, false, &bundles, false)?,
            _ => scenario("oasis-rb-k5", 5, true, &bundles, false)?,
        };
        rollouts.push(rollout);
        failback = failback.or(failed);
    }
    print_table(&rollouts, failback.as_ref(), command);
    Ok(())
}

fn main() -> ExitCode {
    let mut which: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bad) = which.iter().find(|a| !["kexec3", "reboot3", "kexec5"].contains(&a.as_str())) {
        eprintln!("rollout_bench: unknown rollout '{bad}'\nusage: rollout_bench [kexec3] [reboot3] [kexec5]   (default: all three)");
        return ExitCode::from(2);
    }
    if which.is_empty() {
        which = ["kexec3", "reboot3", "kexec5"].map(String::from).to_vec();
    }
    let command =
        std::env::var("OASIS_BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    interrupt::catch();
    let dir = tempfile::Builder::new().prefix("oasis-rollout-bench.").tempdir().expect("a work directory in /tmp");
    // A panic (a CLI call failing) unwinds through the racks' Drops, which remove them.
    let outcome = std::panic::catch_unwind(|| run(&which, dir.path(), &command));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        _ if interrupt::interrupted() => {
            println!("== interrupted: every rack removed (namespaces, taps, QEMU, oasis serve)");
            ExitCode::from(130)
        }
        Ok(Err(Stop::Interrupted)) => ExitCode::from(130),
        Ok(Err(Stop::Failed(message))) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
        Err(_) => ExitCode::FAILURE,
    }
}

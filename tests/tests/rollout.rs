//! An in-place rolling upgrade of a shipped rack, on real machines: three machines (QEMU TCG,
//! BIOS network boot, a data disk each) assembled on the Debian 12 node generation (kernel 6.1,
//! etcd 3.4), a writer putting a key every 200 ms through the cluster, and the Debian 13 bundle
//! (kernel 6.12, etcd 3.5) applied: the machines move one at a time, the appliance is killed with
//! SIGKILL in the middle and resumes, the rollout is paused (nothing moves) and resumed, and all
//! three end on Debian 13 with the same etcd members and every key. Then a properly signed bundle whose etcd cannot start: the first machine fails
//! its gate and goes back, the others are never touched, and it is not tried again. Last, a good
//! bundle cancelled after its first machine: the machines that moved go back.
//!
//! One booted rack serves every check in sequence. Needs root, QEMU and `$OASIS_ASSETS/node` and
//! `node-trixie` (scripts/test builds both).

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oasis_core::rollout::{Gate, RolloutState};
use oasis_e2e::appliance::oasis;
use oasis_e2e::json::UpdateStatus;
use oasis_e2e::rack::{healthy_with, Rack};
use oasis_e2e::writer::{longest_outage, Write, Writer};
use oasis_e2e::{bundles, node_image, tail, trixie_node_image};

fn update_status(rack: &Rack) -> UpdateStatus {
    rack.appliance.update_status()
}

/// Waits until `ok` holds for `oasis update status`, or fails with everything worth reading.
fn wait_rollout(rack: &Rack, timeout: Duration, what: &str, ok: impl Fn(&UpdateStatus) -> bool) -> UpdateStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let status = update_status(rack);
        if ok(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}\n--- cluster ---\n{}\n--- events ---\n{}\n--- consoles ---\n{}\n--- appliance ---\n{}",
            rack.appliance.cli(&["update", "status"]),
            rack.appliance.cli(&["cluster", "status"]),
            rack.appliance.cli(&["events", "--limit", "60"]),
            (0..3).map(|i| tail(&rack.console(i), 25)).collect::<Vec<_>>().join("\n-----\n"),
            tail(&rack.appliance.log(), 60)
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// The etcd member id of each machine.
fn member_ids(rack: &Rack) -> BTreeMap<String, String> {
    rack.status().members.into_iter().filter_map(|m| Some((m.machine?, m.id))).collect()
}

/// How many times each machine was told to reboot, from the events.
fn reboots(rack: &Rack) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for e in rack.appliance.events(2000).into_iter().filter(|e| e.kind == "rollout-reboot") {
        *count.entry(e.mac.map(|m| m.to_string()).unwrap_or_default()).or_default() += 1;
    }
    count
}

/// Every key the writer wrote, read back through the cluster (eight readers at a time): what is
/// wrong with each that is not there. A read that fails (the CLI timing out on a loaded machine)
/// is tried again, twice; a key that reads empty or another value is lost at once.
fn unreadable(rack: &Rack, writes: &[Write]) -> Vec<String> {
    let data = rack.appliance.data_dir.to_str().unwrap().to_string();
    let numbers: Vec<u64> = writes.iter().filter(|w| w.ok).map(|w| w.n).collect();
    let chunks: Vec<Vec<u64>> = numbers.chunks(numbers.len().div_ceil(8).max(1)).map(<[u64]>::to_vec).collect();
    let readers: Vec<JoinHandle<Vec<String>>> = chunks
        .into_iter()
        .map(|chunk| {
            let data = data.clone();
            std::thread::spawn(move || chunk.into_iter().filter_map(|n| wrong_key(&data, n)).collect())
        })
        .collect();
    readers.into_iter().flat_map(|r| r.join().unwrap()).collect()
}

/// What is wrong with key `/rollout/N` (`None`: it reads `N`).
fn wrong_key(data: &str, n: u64) -> Option<String> {
    let mut failed = String::new();
    for _ in 0..3 {
        let out = oasis(&["cluster", "get", &format!("/rollout/{n}"), "--data-dir", data]);
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match out.status.success() {
            true if value == n.to_string() => return None,
            true => return Some(format!("{n}: reads {value:?}")),
            false => failed = String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }
    Some(format!("{n}: could not be read three times: {failed}"))
}

#[test]
fn a_rack_rolls_from_debian_12_to_13_one_machine_at_a_time_and_a_failing_bundle_goes_back() {
    let (node, trixie) = (node_image().unwrap(), trixie_node_image().unwrap_or_else(|e| panic!("{e}")));
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = bundles::keygen(dir.path());
    let (debian13, broken) = (dir.path().join("debian13.bundle"), dir.path().join("broken.bundle"));
    bundles::build(&trixie, 1, &private, &debian13);
    bundles::build(&bundles::with_broken_etcd(&trixie, dir.path()), 2, &private, &broken);
    let again = dir.path().join("again.bundle");
    bundles::build(&trixie, 3, &private, &again);

    let config = format!(
        "[cluster]\nsettle_secs = 2\ndead_after_secs = 30\n\n[update]\ntrusted_keys = [\"{}\"]\nrollout_timeout_secs = 900\n",
        public.display()
    );
    let started = Instant::now();
    let mut rack = Rack::netbooted("oasis-roll", 3, &config, &[0, 1, 2], &node);
    rack.wait(Duration::from_secs(1200), "three members on Debian 12", |s| healthy_with(s, &[0, 1, 2]));
    eprintln!("assembled on Debian 12 in {:.0} s", started.elapsed().as_secs_f64());
    let ids = member_ids(&rack);
    assert!(rack.status().cluster_version.is_some_and(|v| v.starts_with("3.4.")));
    assert!(rack.status().members.iter().all(|m| m.version.as_deref().is_some_and(|v| v.starts_with("3.4."))));
    for n in 0..10 {
        rack.put(&format!("/before/{n}"), &n.to_string(), 0);
    }

    // The Debian 13 bundle: installed, then rolled out by itself, one machine at a time.
    let writer = Writer::start(&rack.appliance.data_dir);
    let rollout_started = Instant::now();
    let applied = rack.appliance.cli(&["update", "apply", debian13.to_str().unwrap()]);
    assert!(applied.contains("installed as node generation 1"), "{applied}");
    // Killed once the first machine is through and the second is on its way: it resumes.
    wait_rollout(&rack, Duration::from_secs(1200), "the first machine on Debian 13", |s| {
        s.rollout.as_ref().is_some_and(|r| r.done.len() == 1 && !r.in_flight.is_empty())
    });
    let killed = Instant::now();
    rack.kill_and_restart_appliance();
    let back = Instant::now();
    // Paused: the machine in flight finishes its gates, and no other starts until resumed.
    let paused = rack.appliance.cli(&["update", "pause"]);
    assert!(paused.contains("paused"), "{paused}");
    let held = wait_rollout(&rack, Duration::from_secs(900), "the machine in flight to finish", |s| {
        s.rollout.as_ref().is_some_and(|r| r.in_flight.is_empty())
    });
    let done_when_paused = held.rollout.as_ref().unwrap().done.len();
    std::thread::sleep(Duration::from_secs(20));
    let still = update_status(&rack);
    let rollout = still.rollout.as_ref().unwrap();
    assert_eq!(rollout.state, RolloutState::Paused);
    assert!(rollout.in_flight.is_empty() && rollout.done.len() == done_when_paused, "nothing moved while paused");
    assert!(still.progress.contains("paused by the operator"), "{}", still.progress);
    let resumed = rack.appliance.cli(&["update", "resume"]);
    assert!(resumed.contains("goes on"), "{resumed}");
    let done = wait_rollout(&rack, Duration::from_secs(1800), "every machine on Debian 13", |s| {
        s.rollout.as_ref().is_some_and(|r| r.state != RolloutState::Running)
    });
    let rolled_in = rollout_started.elapsed();
    let writes = writer.finish();
    let rollout = done.rollout.clone().unwrap();
    assert_eq!(rollout.state, RolloutState::Done, "{}", rack.appliance.cli(&["update", "status"]));
    assert_eq!((done.current, done.previous), (1, Some(0)));

    let status = rack.wait(Duration::from_secs(300), "healthy on Debian 13", |s| healthy_with(s, &[0, 1, 2]));
    assert!(status.machines.iter().all(|m| m.generation == Some(1)), "{status:#?}");
    assert!(status.members.iter().all(|m| m.version.as_deref() == Some("3.5.16")), "{status:#?}");
    // The cluster speaks 3.5 once every member runs it (etcd raises it by itself).
    rack.wait(Duration::from_secs(120), "cluster version 3.5", |s| {
        s.cluster_version.as_deref().is_some_and(|v| v.starts_with("3.5."))
    });
    assert_eq!(member_ids(&rack), ids, "the same etcd members came back with their data");
    let told = reboots(&rack);
    assert_eq!(told.len(), 3, "every machine: {told:?}");
    assert!(told.values().all(|n| *n == 1), "no machine moved twice, even across the kill: {told:?}");
    for i in 0..3 {
        let console = rack.console(i);
        assert!(console.contains("Linux version 6.12."), "machine {i} booted Debian 13's kernel");
    }
    for n in 0..10 {
        assert_eq!(rack.get(&format!("/before/{n}"), 0), n.to_string(), "a key written before the rollout");
    }
    let lost = unreadable(&rack, &writes);
    assert!(lost.is_empty(), "keys written during the rollout and not readable: {lost:?}");
    let outage = longest_outage(&writes, Some((killed, back + Duration::from_secs(5))));
    let failed = writes.iter().filter(|w| !w.ok).count();
    eprintln!(
        "rolled 3 machines from Debian 12 to 13 in {:.0} s; {} writes ({failed} refused); longest write outage {:.1} s \
         (the appliance's own restart left out: {:.1} s with it)",
        rolled_in.as_secs_f64(),
        writes.len(),
        outage.as_secs_f64(),
        longest_outage(&writes, None).as_secs_f64()
    );

    // A bundle whose etcd cannot start: the first machine fails its gate and goes back.
    let failing_started = Instant::now();
    let applied = rack.appliance.cli(&["update", "apply", broken.to_str().unwrap()]);
    assert!(applied.contains("installed as node generation 2"), "{applied}");
    let stopped = wait_rollout(&rack, Duration::from_secs(1800), "the failed machine back on Debian 13", |s| {
        s.rollout.as_ref().is_some_and(|r| r.target == 2 && !r.active())
    });
    let back_in = failing_started.elapsed();
    let rollout = stopped.rollout.clone().unwrap();
    assert_eq!(rollout.state, RolloutState::Failed);
    let failure = rollout.failure.clone().unwrap();
    assert_eq!(failure.gate, Gate::Services, "{failure:?}");
    assert!(failure.detail.contains("etcd"), "the status names what failed: {failure:?}");
    assert!(failure.back && !failure.back_failed, "{failure:?}");
    let human = rack.appliance.cli(&["update", "status"]);
    assert!(human.contains("failed") && human.contains(&failure.machine), "{human}");
    assert!(stopped.generations.iter().any(|g| g.sequence == 2 && g.state.to_string() == "failed"), "{human}");
    let told_after = reboots(&rack);
    let moved: Vec<(&String, usize)> = told_after
        .iter()
        .map(|(mac, n)| (mac, n - told.get(mac).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert_eq!(moved.len(), 1, "only the first machine was touched: {moved:?}");
    assert_eq!(moved[0].1, 2, "it went and came back");
    let status = rack.wait(Duration::from_secs(300), "healthy on Debian 13 again", |s| healthy_with(s, &[0, 1, 2]));
    assert!(status.machines.iter().all(|m| m.generation == Some(1)), "{status:#?}");
    assert_eq!(member_ids(&rack), ids);
    // Never tried again by itself, and not when asked.
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(reboots(&rack), told_after);
    let resume = oasis(&["update", "resume", "--data-dir", rack.appliance.data_dir.to_str().unwrap()]);
    assert_eq!(resume.status.code(), Some(2), "{resume:?}");
    assert!(String::from_utf8_lossy(&resume.stderr).contains("install a newer bundle"), "{resume:?}");
    eprintln!(
        "the failing bundle: {} failed gate '{}' and was healthy on its previous generation {:.0} s after the bundle was applied",
        failure.machine,
        failure.gate,
        back_in.as_secs_f64()
    );

    // A good bundle, cancelled once its first machine is through: the machines that moved go
    // back, last first, and the rack ends where it was.
    let before_cancel = reboots(&rack);
    let applied = rack.appliance.cli(&["update", "apply", again.to_str().unwrap()]);
    assert!(applied.contains("installed as node generation 3"), "{applied}");
    wait_rollout(&rack, Duration::from_secs(900), "the first machine on generation 3", |s| {
        s.rollout.as_ref().is_some_and(|r| r.target == 3 && !r.done.is_empty())
    });
    let cancelled = rack.appliance.cli(&["update", "cancel"]);
    assert!(cancelled.contains("go back"), "{cancelled}");
    let ended = wait_rollout(&rack, Duration::from_secs(1200), "every machine back on generation 1", |s| {
        s.rollout.as_ref().is_some_and(|r| r.target == 3 && !r.active())
    });
    assert_eq!(
        ended.rollout.as_ref().unwrap().state,
        RolloutState::Cancelled,
        "{}",
        rack.appliance.cli(&["update", "status"])
    );
    assert_eq!(ended.current, 1);
    let status = rack
        .wait(Duration::from_secs(300), "healthy on generation 1 after the cancel", |s| healthy_with(s, &[0, 1, 2]));
    assert!(status.machines.iter().all(|m| m.generation == Some(1)), "{status:#?}");
    assert_eq!(member_ids(&rack), ids);
    let moved: Vec<usize> = reboots(&rack)
        .iter()
        .map(|(mac, n)| n - before_cancel.get(mac).copied().unwrap_or(0))
        .filter(|n| *n > 0)
        .collect();
    assert!(!moved.is_empty() && moved.iter().all(|n| *n == 2), "each machine that went came back, once: {moved:?}");
    let refused = oasis(&["update", "cancel", "--data-dir", rack.appliance.data_dir.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2), "nothing to cancel is said, not ignored: {refused:?}");
}

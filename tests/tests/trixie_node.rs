//! The second node generation, built from Debian 13 (trixie) parts on this Debian 12 host: a
//! single-member cluster shipped on Debian 12 is upgraded to it in place, its kernel 6.12 boots,
//! the agent (built here, carrying this host's libraries) registers and heartbeats, and the
//! machine runs trixie's etcd 3.5 on its disk, with the data it had.
//! Needs root, QEMU and the image in `$OASIS_ASSETS/node-trixie` (scripts/test builds it with
//! `oasis image build node --suite trixie`); the apt test needs Debian's archive.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oasis_e2e::json::MachineState;
use oasis_e2e::rack::{healthy_with, role, Rack};
use oasis_e2e::{bundles, node_image, trixie_node_image};
use oasis_image::artifacts::ArtifactEntry;

/// Every path under the host's apt directories with its modification time and size.
fn host_apt_state() -> BTreeMap<String, (std::time::SystemTime, u64)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<std::path::PathBuf> =
        ["/etc/apt", "/var/lib/apt", "/var/cache/apt"].iter().map(Into::into).collect();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().filter_map(|e| e.ok()).map(|e| e.path()));
        }
        out.insert(path.display().to_string(), (meta.modified().unwrap(), meta.len()));
    }
    out
}

/// A cache for another suite fetches that suite's lists and packages into its own apt state,
/// and the host's apt directories are exactly as they were.
#[test]
fn another_suite_is_fetched_without_touching_the_hosts_apt() {
    let dir = tempfile::tempdir().unwrap();
    let before = host_apt_state();
    let cache = oasis_image::debian::DebianCache::with_suite(dir.path(), Some("trixie")).unwrap();
    let etcd = cache.candidate_version("etcd-server").unwrap();
    let busybox = cache.fetch("busybox-static").unwrap();
    assert!(etcd.starts_with("3.5."), "trixie's etcd-server is 3.5, apt says {etcd}");
    assert!(busybox.file("/bin/busybox").is_ok(), "merged-/usr busybox is found at /bin");
    let lists = dir.path().join("apt/trixie/state/lists");
    let fetched: Vec<String> =
        std::fs::read_dir(&lists).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(fetched.iter().any(|n| n.ends_with("_dists_trixie_InRelease")), "{fetched:?}");
    assert_eq!(host_apt_state(), before, "the host's /etc/apt, /var/lib/apt or /var/cache/apt changed");
}

/// A single-member cluster with its data on a disk, shipped on Debian 12, takes the Debian 13
/// bundle: the rollout announces the downtime, the machine boots the new generation (through its
/// firmware's network boot: `kexec = false`, the path for hardware where kexec hangs),
/// runs trixie's kernel and etcd 3.5, and its member comes back with the same id and its data.
#[test]
fn a_single_node_cluster_with_a_data_disk_is_upgraded_to_debian_13_and_keeps_its_data() {
    let node = trixie_node_image().unwrap_or_else(|e| panic!("{e}"));
    let artifacts: Vec<ArtifactEntry> =
        serde_json::from_slice(&std::fs::read(node.join("artifacts.json")).unwrap()).unwrap();
    let etcd = artifacts.iter().find(|a| a.name == "etcd").expect("the image lists etcd");
    assert!(etcd.version.as_deref().is_some_and(|v| v.starts_with("3.5.16")), "{etcd:?}");
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = bundles::keygen(dir.path());
    let bundle = dir.path().join("debian13.bundle");
    bundles::build(&node, 1, &private, &bundle);

    let started = Instant::now();
    let cluster = format!(
        "[cluster]\nsettle_secs = 2\ndead_after_secs = 30\n\n[update]\ntrusted_keys = [\"{}\"]\nrollout_timeout_secs = 900\nkexec = false\n",
        public.display()
    );
    let rack = Rack::netbooted("oasis-single", 1, &cluster, &[0], &node_image().unwrap());
    let status = rack.wait(Duration::from_secs(900), "a single healthy member", |s| healthy_with(s, &[0]));
    eprintln!("single machine on Debian 12 in {:.0} s", started.elapsed().as_secs_f64());
    assert_eq!(role(&status, 0), "control-plane");
    assert!(status.machines[0].data_disk.as_deref().is_some_and(|d| d.contains("mounted")), "{status:#?}");
    let member = status.members[0].id.clone();
    rack.put("/oasis/generation", "debian-12", 0);

    let upgrade = Instant::now();
    let applied = rack.appliance.cli(&["update", "apply", bundle.to_str().unwrap()]);
    assert!(applied.contains("installed as node generation 1"), "{applied}");
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let update = rack.appliance.update_status();
        if update.rollout.as_ref().is_some_and(|r| !r.active()) {
            assert_eq!(update.current, 1, "{}", rack.appliance.cli(&["update", "status"]));
            break;
        }
        assert!(Instant::now() < deadline, "not upgraded:\n{}", rack.appliance.cli(&["update", "status"]));
        std::thread::sleep(Duration::from_secs(3));
    }
    let status = rack.wait(Duration::from_secs(300), "the member back on Debian 13", |s| healthy_with(s, &[0]));
    eprintln!("single machine upgraded to Debian 13 in {:.0} s", upgrade.elapsed().as_secs_f64());
    let events = rack.appliance.cli(&["events", "--limit", "200"]);
    assert!(
        events.contains("single-member cluster: etcd is unavailable while"),
        "the downtime is announced:\n{events}"
    );
    assert!(events.contains("by a reboot through the network boot path"), "{events}");
    assert_eq!(status.members[0].id, member, "the same member, its data kept");
    assert_eq!(status.members[0].version.as_deref(), Some("3.5.16"), "the member runs trixie's etcd: {status:#?}");
    assert_eq!(status.machines[0].generation, Some(1));
    assert_eq!(rack.get("/oasis/generation", 0), "debian-12", "written before the upgrade, read after it");
    rack.put("/oasis/generation", "debian-13", 0);
    assert_eq!(rack.get("/oasis/generation", 0), "debian-13");

    let reg = rack.appliance.registrations().into_iter().next().expect("the machine registered");
    assert_eq!(reg.record.state, MachineState::Accepted, "{reg:#?}");
    let kernel = reg.last_heartbeat.as_ref().and_then(|h| h.heartbeat.kernel.clone()).unwrap_or_default();
    assert!(
        kernel.starts_with("6.12.") && kernel.contains("deb13"),
        "the agent heartbeats from trixie's kernel: {reg:#?}"
    );
    // The kernel that runs is trixie's. Its modules are the image's: the data disk (virtio_blk,
    // ext4) mounted and the management link (wireguard) is up, and a kernel refuses a module built
    // for another version.
    let console = rack.console(0);
    let booted = console.lines().rfind(|l| l.contains("Linux version")).unwrap_or_else(|| panic!("{console}"));
    assert!(booted.contains(&format!("Linux version {kernel} ")), "{booted}");
}

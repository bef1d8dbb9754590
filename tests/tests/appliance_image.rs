//! The appliance as the site gets it: its disk image booting in a VM (BIOS or UEFI), configured
//! by a USB stick or at its serial console, serving a rack of machines that netboot from it with
//! their real firmware, in a namespace with no route anywhere else (the rack needs nothing beyond
//! itself). Needs root, QEMU, and the assets `scripts/test` builds (the appliance image included).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use oasis_boot::usb::signature;
use oasis_e2e::appliance_vm::{appliance_disk, appliance_image, build_image, ApplianceVm, ApplianceVmSpec};
use oasis_e2e::json::{parse, MachineView};
use oasis_e2e::{oasis_bin, Firmware, Machine, MachineSpec, Netns};
use oasis_image::appliance;
use oasis_image::gpt::SECTOR;
use oasis_image::partition::Slice;
use oasis_image::usb_stick;

const RACK_CONFIG: &str = r#"[network]
interface = "eth0"
address = "10.0.0.1"

[dhcp]
range = ["10.0.0.100", "10.0.0.199"]
"#;

/// A stick built by `oasis image build usb-stick`: `config`, signed with `key`, and `bundle` beside it.
fn stick(work: &Path, name: &str, config: &str, key: Option<&Path>, bundle: Option<&Path>) -> std::path::PathBuf {
    let config_path = work.join(format!("{name}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let out = work.join(format!("{name}.img"));
    let mut cmd = Command::new(oasis_bin());
    cmd.args(["image", "build", "usb-stick", "--config"]).arg(&config_path).arg("--out").arg(&out);
    if let Some(key) = key {
        cmd.arg("--key").arg(key);
    }
    if let Some(bundle) = bundle {
        cmd.arg("--bundle").arg(bundle).args(["--size-mib", "256"]);
    }
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "building the stick: {}", String::from_utf8_lossy(&output.stderr));
    out
}

fn report_file(stick: &Path, name: &str) -> Option<String> {
    usb_stick::read_file(stick, &format!("{}/{name}", usb_stick::REPORT_DIR))
        .unwrap()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A node machine netbooting (BIOS, QEMU's iPXE ROM) from the appliance VM.
fn node(ns: &Netns, work: &Path, i: usize) -> Machine {
    let tap = format!("tap{}", i + 1);
    ns.add_tap(&tap, "br0").unwrap();
    let mut spec = MachineSpec::new(
        ns,
        &tap,
        &format!("52:54:00:0e:01:{:02x}", i + 1),
        Firmware::Bios,
        work.join(format!("node{i}.log")),
    );
    spec.memory_mb = 512;
    spec.extra_args =
        vec!["-smbios".into(), format!("type=1,serial=SN-{}", i + 1), "-uuid".into(), oasis_e2e::rack::uuid(i + 10)];
    Machine::start(spec).unwrap()
}

/// `GET /v1/machines` of the appliance's HTTPS admin API, with the admin `token`.
fn machine_views(ns: &Netns, token: &str) -> Vec<MachineView> {
    let out = ns
        .command("curl")
        .args(["-sk", "--max-time", "10", "-H", &format!("Authorization: Bearer {}", token.trim())])
        .arg("https://10.0.0.1:9443/v1/machines")
        .output()
        .unwrap();
    parse("GET /v1/machines", &String::from_utf8_lossy(&out.stdout))
}

/// The machines the appliance knows, by id, with when each first registered and its overlay address, through its HTTPS
/// admin API with the token from the stick's report.
fn machines_via_api(ns: &Netns, token: &str) -> Vec<(String, String)> {
    let body = machine_views(ns, token);
    let mut machines: Vec<(String, String)> = body
        .iter()
        .map(|m| (m.record.id.clone(), format!("{} {:?}", m.record.first_registered, m.record.overlay)))
        .collect();
    machines.sort();
    machines
}

/// The versions the self-update steps build their appliance images with.
const NEXT: &str = "9.0.0-next";
const BROKEN: &str = "9.0.0-broken";

/// A stick configures the appliance at first boot; three machines netboot from it and form a
/// cluster; the stick gets the report (applied config, inventory, admin token, cluster status).
/// Rebooted from its console, updated (the image written over its disk) and its disk grown, the
/// appliance comes back from its data partition: same machines, none new, healthy. Then it
/// updates itself from sticks with bundles, on its two boot slots (see
/// [`updates_itself_from_sticks`]).
#[test]
fn stick_configured_appliance_assembles_the_rack_and_keeps_it_across_a_reboot_and_an_update() {
    let ns = Netns::create("oasis-img").unwrap();
    // The test's own address on the rack, to reach the admin API; no route anywhere else.
    ns.add_bridge("br0", Some("10.0.0.254/24")).unwrap();
    ns.add_tap("tap0", "br0").unwrap();
    let work = tempfile::Builder::new().prefix("oasis-img-").tempdir().unwrap();
    let (private, public) = oasis_e2e::bundles::keygen(work.path());
    let image = work.path().join("appliance-signed.img");
    build_image(&image, Some(&public), &[]);
    let config = format!(
        "{RACK_CONFIG}\n[cluster]\ncontrol_plane = 3\nmin_machines = 3\nsettle_secs = 5\n\n[update]\napply_from_stick = true\n"
    );
    let stick = stick(work.path(), "stick", &config, Some(&private), None);
    // Built before anything boots, so that a build that fails fails first.
    let sticks = UpdateSticks::build(work.path(), &config, &private, &public);
    let disk = work.path().join("appliance-disk.img");
    appliance_disk(&image, &disk, 4);
    let spec = ApplianceVmSpec {
        disk: disk.clone(),
        stick: Some(stick.clone()),
        firmware: Firmware::Bios,
        mac: "52:54:00:0a:00:01".into(),
        reboots: false,
    };
    let mut appliance = ApplianceVm::start(&ns, "tap0", &spec, work.path(), "appliance");
    appliance.expect("oasis boot: created the data partition", Duration::from_secs(180));
    appliance.expect("configuration is valid", Duration::from_secs(60));
    appliance.expect("oasis boot: serving", Duration::from_secs(120));
    appliance.expect("report written to the USB stick", Duration::from_secs(60));

    let _nodes: Vec<Machine> = (0..3).map(|i| node(&ns, work.path(), i)).collect();
    appliance.expect("oasis boot: the cluster is healthy", Duration::from_secs(600));
    appliance.expect("report written to the USB stick", Duration::from_secs(60));

    let result = report_file(&stick, "result.txt").expect("result.txt on the stick");
    assert!(result.contains("applied"), "{result}");
    assert!(result.contains("appliance: oasis ") && result.contains(" in boot slot A (committed)"), "{result}");
    assert_eq!(report_file(&stick, "applied.toml").as_deref(), Some(config.as_str()));
    let inventory = report_file(&stick, "inventory.txt").expect("inventory.txt");
    for i in 1..=3 {
        assert!(inventory.contains(&format!("SN-{i}")), "{inventory}");
    }
    let status = report_file(&stick, "cluster-status.txt").expect("cluster-status.txt");
    assert!(status.contains("healthy"), "{status}");
    let token = report_file(&stick, "admin-token").expect("the first boot's report carries the admin token");
    let before = machines_via_api(&ns, &token);
    assert_eq!(before.len(), 3, "{before:?}");

    // Reboot from the console's menu (QEMU runs with -no-reboot: the VM stops). While it is off,
    // an update: the image written again over the disk, which also grew by 2 GiB. Powered on
    // without the stick, the appliance finds its store beyond the image, keeps it and grows it,
    // and brings everything back.
    appliance.type_line("r");
    appliance.answer("Reboot the appliance, yes or no [no]: ", "yes", Duration::from_secs(60));
    appliance.machine.wait_exit(Duration::from_secs(120)).unwrap();
    drop(appliance);
    let status = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "conv=notrunc", "status=none"])
        .status()
        .unwrap();
    assert!(status.success(), "writing the image over the disk");
    std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(6 << 30).unwrap();
    // From here the VM reboots in place, as hardware does.
    let spec = ApplianceVmSpec { stick: None, reboots: true, ..spec };
    let mut appliance = ApplianceVm::start(&ns, "tap0", &spec, work.path(), "appliance-updated");
    let boot = appliance.expect("oasis boot: serving", Duration::from_secs(300));
    assert!(!boot.contains("created the data partition"), "formatted again:\n{boot}");
    assert!(boot.contains("found the store of an earlier image on /dev/vda3 and kept it (4.0 GiB)"), "{boot}");
    appliance.expect("oasis boot: the cluster is healthy", Duration::from_secs(300));
    assert_eq!(machines_via_api(&ns, &token), before, "machines changed across the reboot");

    updates_itself_from_sticks(&mut appliance, &sticks, &Rack { ns: &ns, token: &token, machines: &before });
}

/// Sticks with the same configuration as the running one and a bundle each: one whose appliance
/// part cannot start `oasis serve` (version [`BROKEN`]), one with a working new version ([`NEXT`]).
struct UpdateSticks {
    broken: std::path::PathBuf,
    next: std::path::PathBuf,
}

impl UpdateSticks {
    fn build(work: &Path, config: &str, private: &Path, public: &Path) -> UpdateSticks {
        let node = oasis_e2e::assets().unwrap().node;
        let mut made = vec![];
        for (sequence, version, name) in [(1, BROKEN, "broken"), (2, NEXT, "next")] {
            let image = work.join(format!("appliance-{name}.img"));
            let mut extra = vec!["--version", version];
            if version == BROKEN {
                extra.extend(["--test-fault", "failing-serve"]);
            }
            build_image(&image, Some(public), &extra);
            let bundle = work.join(format!("{name}.bundle"));
            oasis_e2e::bundles::build_with_appliance(&node, &image, sequence, private, &bundle);
            made.push(stick(work, name, config, Some(private), Some(&bundle)));
        }
        let next = made.pop().unwrap();
        UpdateSticks { broken: made.pop().unwrap(), next }
    }
}

/// What the self-update steps check the rack with: its namespace, the admin token, and the
/// machines it had.
struct Rack<'a> {
    ns: &'a Netns,
    token: &'a str,
    machines: &'a [(String, String)],
}

impl Rack<'_> {
    /// The same machines as before: none registered anew, none gone.
    fn same_machines(&self) {
        assert_eq!(machines_via_api(self.ns, self.token), self.machines, "a machine registered anew or went");
    }

    /// Waits until every machine has heartbeated within the last 20 s (by this host's clock,
    /// which the appliance VM's follows).
    fn all_heartbeating(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            let views = machine_views(self.ns, self.token);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            let fresh = views.iter().filter(|m| m.last_heartbeat.as_ref().is_some_and(|h| h.at + 20 >= now)).count();
            if fresh == self.machines.len() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{fresh} of {} machines heartbeat", self.machines.len());
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// Plugs `stick` in, waits for its report, and pulls it out; returns the report's `result.txt`.
fn report_via(appliance: &mut ApplianceVm, stick: &Path) -> String {
    let id = appliance.plug(stick);
    appliance.expect("report written to the USB stick", Duration::from_secs(180));
    appliance.unplug(&id);
    report_file(stick, "result.txt").expect("result.txt on the stick")
}

/// The appliance (committed on slot A, its rack healthy) updates itself from sticks:
/// 1. a bundle whose appliance's `oasis serve` refuses to start: installed as a generation, its
///    slot written to B while the rack is served, a trial boot of B fails its health check, and
///    the appliance falls back to A by itself and says why (console, stick); the node rollout
///    to that generation is held;
/// 2. a bundle with a working new appliance: written to B, booted on trial, committed once the
///    rack's services answer and the three machines are linked again; the stick's report names
///    the version. After each, the rack has the same machines (none registered anew).
fn updates_itself_from_sticks(appliance: &mut ApplianceVm, sticks: &UpdateSticks, rack: &Rack<'_>) {
    let t = Duration::from_secs(300);
    let id = appliance.plug(&sticks.broken);
    let applied = std::time::Instant::now();
    appliance.expect("installed as node generation 1", t);
    appliance.expect("report written to the USB stick", t);
    appliance.unplug(&id);
    let written = appliance.expect(&format!("rebooting into oasis {BROKEN} now"), t);
    assert!(written.contains(&format!("writing oasis {BROKEN} (generation 1) to slot B")), "{written}");
    let failing = appliance.expect(&format!("slot B (oasis {BROKEN}) is on trial"), t);
    assert!(failing.contains("oasis: booting slot B (trial"), "{failing}");
    let failed = appliance.expect("FAILED its health check: ", t);
    let failed_at = std::time::Instant::now();
    appliance.expect("rebooting into the slot before", t);
    let back = appliance.expect("oasis boot: serving", t);
    let (fallback_secs, broken_secs) = (failed_at.elapsed().as_secs(), applied.elapsed().as_secs());
    assert!(back.contains("oasis: booting slot A (good; fell back from B"), "{back}");
    assert!(
        back.contains("THE APPLIANCE UPDATE FELL BACK: ") && back.contains("did not pass its health check"),
        "{back}"
    );
    assert!(!failed.contains("oasis boot: serving"), "the broken slot's serve never served:\n{failed}");
    appliance.expect("oasis boot: the cluster is healthy", Duration::from_secs(600));
    appliance.machine.wait_for_serial("rollout: the node rollout is held", t).unwrap();
    rack.same_machines();
    let result = report_via(appliance, &sticks.broken);
    assert!(result.contains(&format!("appliance update: to oasis {BROKEN} FELL BACK: ")), "{result}");
    assert!(result.contains("in boot slot A (committed)"), "{result}");

    // Every machine is linked again before the next update is armed, which waits for them all.
    rack.all_heartbeating();
    let id = appliance.plug(&sticks.next);
    let applied_next = std::time::Instant::now();
    appliance.expect("installed as node generation 2", t);
    appliance.expect("report written to the USB stick", t);
    appliance.unplug(&id);
    let armed = appliance.expect(&format!("rebooting into oasis {NEXT} now"), t);
    let rebooting = std::time::Instant::now();
    assert!(armed.contains("3 machine(s) linked must come back"), "{armed}");
    appliance.expect(&format!("slot B (oasis {NEXT}) is on trial"), t);
    appliance.expect("oasis boot: serving", t);
    let outage_secs = rebooting.elapsed().as_secs();
    appliance.expect(&format!("slot B (oasis {NEXT}) passed its health check: committed"), Duration::from_secs(600));
    let commit_secs = applied_next.elapsed().as_secs();
    rack.same_machines();
    let result = report_via(appliance, &sticks.next);
    assert!(result.contains(&format!("appliance: oasis {NEXT} in boot slot B (committed)")), "{result}");
    assert!(result.contains(&format!(" to {NEXT}, committed")), "{result}");
    println!(
        "figures: the failing update from plugging its stick to serving again on slot A: {broken_secs} s; from its failed health check to serving on slot A: {fallback_secs} s; the good update from plugging its stick to committed: {commit_secs} s; the rack services' outage (serve stopped to serving again): {outage_secs} s"
    );
}

/// What the test fault `slow-slot-arm` says between the two sectors of the arm's write.
const HALF_WRITTEN_ARM: &str = "the arm of slot B is half written in GRUB's block";

/// The appliance's update survives power cuts and a hang (UEFI, no machines):
/// 1. a bundle whose appliance hangs its trial boot: written to slot B and armed; each trial boot
///    arms the watchdog (QEMU's i6300esb) and hangs, the watchdog resets the VM, GRUB spends a
///    try each time and then falls back to slot A by itself, which says why;
/// 2. a bundle with a working appliance: QEMU is killed (a power cut) at 10 random moments while
///    slot B is written, the first right as the write starts (the environment block is rewritten
///    then); every time the appliance comes back on a working slot with its store (serving, its
///    generations kept) and starts the write again; then once more inside the write of GRUB's
///    block that arms slot B, between its two sectors (the image is built with the test fault
///    `slow-slot-arm`, which pauses there): slot B boots as a trial; it passes and commits.
#[test]
fn appliance_update_survives_power_cuts_and_falls_back_from_a_hang() {
    let ns = Netns::create("oasis-cut").unwrap();
    ns.add_bridge("br0", None).unwrap();
    ns.add_tap("tap0", "br0").unwrap();
    let work = tempfile::Builder::new().prefix("oasis-cut-").tempdir().unwrap();
    let (private, public) = oasis_e2e::bundles::keygen(work.path());
    let node = oasis_e2e::assets().unwrap().node;
    let image = work.path().join("appliance-signed.img");
    build_image(&image, Some(&public), &["--test-fault", "slow-slot-arm"]);
    let config = format!("{RACK_CONFIG}\n[cluster]\ncontrol_plane = 1\n\n[update]\napply_from_stick = true\n");
    let mut bundles = vec![];
    for (sequence, version, fault) in [(1, "9.0.0-hang", Some("hanging-trial")), (2, NEXT, None)] {
        let slot_image = work.path().join(format!("appliance-{version}.img"));
        let mut extra = vec!["--version", version];
        extra.extend(fault.map(|f| ["--test-fault", f]).into_iter().flatten());
        build_image(&slot_image, Some(&public), &extra);
        let bundle = work.path().join(format!("{version}.bundle"));
        oasis_e2e::bundles::build_with_appliance(&node, &slot_image, sequence, &private, &bundle);
        bundles.push(stick(work.path(), version, &config, Some(&private), Some(&bundle)));
    }
    let disk = work.path().join("appliance-disk.img");
    appliance_disk(&image, &disk, 4);
    let t = Duration::from_secs(300);
    let spec = ApplianceVmSpec {
        disk: disk.clone(),
        stick: Some(bundles[0].clone()),
        firmware: Firmware::Uefi,
        mac: "52:54:00:0a:00:04".into(),
        reboots: true,
    };
    let mut appliance = ApplianceVm::start(&ns, "tap0", &spec, work.path(), "appliance");
    appliance.expect("installed as node generation 1", t);
    appliance.expect("rebooting into oasis 9.0.0-hang now", t);
    for try_text in ["trial; tries left after this one: t", "trial, its last try"] {
        appliance.expect(&format!("oasis: booting slot B ({try_text})"), t);
        appliance.expect("the watchdog is armed for the trial (30 s)", t);
        appliance.expect("built to hang its trial", t);
    }
    appliance.expect("oasis: booting slot A (good; fell back from B: not good, no tries left)", t);
    let back = appliance.expect("oasis boot: serving", t);
    assert!(
        back.contains(
            "THE APPLIANCE UPDATE FELL BACK: the update to oasis 9.0.0-hang in slot B did not finish booting"
        ),
        "{back}"
    );
    // The stick, still plugged in, gets this boot's report: it says why the update fell back.
    appliance.expect("report written to the USB stick", t);
    let report = report_file(&bundles[0], "result.txt").unwrap();
    assert!(report.contains("appliance update: to oasis 9.0.0-hang FELL BACK: "), "{report}");
    assert!(report.contains("in boot slot A (committed)"), "{report}");

    // The working update, cut short by power cuts while slot B is written.
    let id = appliance.plug(&bundles[1]);
    appliance.expect("installed as node generation 2", t);
    appliance.unplug(&id);
    let spec = ApplianceVmSpec { stick: None, ..spec };
    let mut rng = rand::rng();
    // Ten cuts at random moments of the write, then one inside the write of GRUB's block that
    // arms slot B (this image pauses 5 s between the block's two sectors: `slow-slot-arm`).
    let (mut cuts_in_write, mut cut_in_arm) = (0, false);
    let mut cut_log = work.path().join("appliance.log");
    for boot in 0.. {
        appliance.expect(&format!("writing oasis {NEXT} (generation 2) to slot B"), t);
        let until = match cuts_in_write {
            0 => Duration::ZERO,
            1..10 => Duration::from_millis(rand::Rng::random_range(&mut rng, 0..2500)),
            _ => t,
        };
        match appliance.wait_any(&[HALF_WRITTEN_ARM], until) {
            Some(_) => cut_in_arm = true,
            None => cuts_in_write += 1,
        }
        drop(appliance);
        let env = read_grubenv(&disk);
        assert_eq!(env.get("A_OK"), Some("1"), "slot A stays committed: {env:?}");
        let cut_text = std::fs::read_to_string(&cut_log).unwrap_or_default();
        appliance = ApplianceVm::start(&ns, "tap0", &spec, work.path(), &format!("cut-{boot}"));
        cut_log = work.path().join(format!("cut-{boot}.log"));
        let (armed, text) = appliance.expect_any(&["oasis boot: running slot A\r", "running slot B (a trial boot)"], t);
        if armed == 1 {
            // The arm reached the block's first sector before the cut: only a cut inside the
            // arm's pause gets here (its message on the console, if perhaps after the last look).
            assert!(cut_in_arm || cut_text.contains(HALF_WRITTEN_ARM), "{env:?}");
            assert_eq!((env.get("ORDER"), env.get("B_LEFT")), (Some("B A"), Some("tt")), "{env:?}");
            println!("power cut {boot} came inside the arm's write, after {cuts_in_write} cut(s) in the slot's write");
            break;
        }
        assert!(!cut_in_arm, "a cut inside the arm's write finds slot B armed: {env:?}");
        assert!(text.contains("booting slot A (committed good)"), "{text}");
        let serving = appliance.expect("oasis boot: serving", t);
        assert!(
            !serving.contains("created the data partition") && !serving.contains("cannot use its store"),
            "{serving}"
        );
    }
    assert_eq!(cuts_in_write, 10, "every cut in the slot's write left slot B unarmed");
    appliance.expect(&format!("slot B (oasis {NEXT}) passed its health check: committed"), Duration::from_secs(600));
    appliance.expect("the watchdog is disarmed", t);
    let env = read_grubenv(&disk);
    assert_eq!((env.get("ORDER"), env.get("B_OK")), (Some("B A"), Some("1")), "{env:?}");
}

/// An image built with a trusted key boots (UEFI) with no stick: the console asks its questions
/// and the operator answers them over the serial port; one machine netboots and becomes a
/// single-node cluster. Then sticks are plugged in: a malformed config (signed) is refused with
/// its line, an unsigned one is refused as unsigned, each with the reason on the console and on
/// the stick; a signed one is applied. Last, a stick with an update bundle signed by the same key:
/// verified and shown on the console, installed once the menu's `[u]` is confirmed, its fate in
/// the stick's report; the single member has no data disk, so the rollout says that is what holds
/// it rather than reboot the only copy of the cluster's data.
#[test]
fn console_setup_and_refused_then_signed_usb_configs() {
    let ns = Netns::create("oasis-con").unwrap();
    ns.add_bridge("br0", None).unwrap();
    ns.add_tap("tap0", "br0").unwrap();
    let work = tempfile::Builder::new().prefix("oasis-con-").tempdir().unwrap();
    let keys = work.path().join("keys");
    let out = Command::new(oasis_bin()).args(["config", "keygen", "--out"]).arg(&keys).output().unwrap();
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let (private, public) = (keys.join("oasis-config.key"), keys.join("oasis-config.pub"));
    let image = work.path().join("appliance-signed.img");
    build_image(&image, Some(&public), &[]);
    let assets = oasis_e2e::assets().unwrap();

    // Signed, so that what is refused is the file itself; written without `oasis image build
    // usb-stick`, which checks a configuration before putting it on a stick.
    let bad = b"[network]\ninterface = \"eth0\"\naddress = \"10.0.0.300\"\n";
    let key = signature::load_private_key(&private).unwrap();
    let sig = signature::signature_file(&key, bad);
    let malformed = work.path().join("malformed.img");
    usb_stick::build_usb_stick(
        &[(usb_stick::CONFIG_FILE, bad), (usb_stick::SIGNATURE_FILE, sig.as_bytes())],
        &malformed,
        64,
    )
    .unwrap();
    let disk = work.path().join("appliance-disk.img");
    appliance_disk(&image, &disk, 4);
    let spec = ApplianceVmSpec {
        disk,
        stick: None,
        firmware: Firmware::Uefi,
        mac: "52:54:00:0a:00:02".into(),
        reboots: false,
    };
    let mut appliance = ApplianceVm::start(&ns, "tap0", &spec, work.path(), "appliance");
    appliance.expect("no configuration yet: answer the questions", Duration::from_secs(240));

    let t = Duration::from_secs(60);
    appliance.answer("Rack interface [", "", Duration::from_secs(60));
    appliance.answer("Appliance address on eth0 [", "10.0.0.1", t);
    appliance.answer("Netmask [", "", t);
    appliance.expect("no other DHCP server answered", t);
    appliance.answer("DHCP mode, full or proxy [", "full", t);
    appliance.answer("DHCP range, first-last [", "", t);
    appliance.answer("Cluster name [", "desert", t);
    appliance.answer("Control-plane machines, 1, 3 or 5 [", "1", t);
    appliance.answer("Acceptance policy, auto, allowlist or manual [", "auto", t);
    appliance.answer("Save this setup, yes or redo [", "yes", t);
    appliance.expect("oasis: setup saved", t);
    appliance.expect("oasis boot: serving", Duration::from_secs(120));

    let _node = node(&ns, work.path(), 0);
    appliance.expect("oasis boot: the cluster is healthy", Duration::from_secs(600));
    // The status view redraws on its own clock: its healthy block may come before or after the
    // supervisor's line, so it is looked for in the whole console.
    appliance.machine.wait_for_serial("oasis status: cluster desert healthy", Duration::from_secs(60)).unwrap();

    // Hot-plugged: a malformed config is refused with its line; the report says so on the stick.
    let id = appliance.plug(&malformed);
    let refused = appliance.expect("keeping the last good configuration", Duration::from_secs(60));
    assert!(refused.contains("REFUSED") && refused.contains("line 3"), "{refused}");
    appliance.expect("report written to the USB stick", t);
    appliance.unplug(&id);
    let result = report_file(&malformed, "result.txt").unwrap();
    assert!(result.contains("refused") && result.contains("line 3"), "{result}");
    assert!(report_file(&malformed, "applied.toml").is_none());

    // An unsigned config is refused, a signed one applied (and serve restarted).
    let config = format!("{RACK_CONFIG}\n[cluster]\nname = \"desert\"\ncontrol_plane = 1\n");
    let unsigned = stick(work.path(), "unsigned", &config, None, None);
    let id = appliance.plug(&unsigned);
    let refused = appliance.expect("keeping the last good configuration", Duration::from_secs(60));
    assert!(refused.contains("REFUSED") && refused.contains("unsigned"), "{refused}");
    appliance.expect("report written to the USB stick", t);
    appliance.unplug(&id);
    let result = report_file(&unsigned, "result.txt").unwrap();
    assert!(result.contains("refused") && result.contains("unsigned"), "{result}");

    let signed = stick(work.path(), "signed", &config, Some(&private), None);
    appliance.plug(&signed);
    appliance.expect("configuration is valid and signed", Duration::from_secs(60));
    appliance.expect("report written to the USB stick", Duration::from_secs(120));
    assert_eq!(report_file(&signed, "applied.toml").as_deref(), Some(config.as_str()));

    let bundle = work.path().join("node-1.bundle");
    oasis_e2e::bundles::build(&assets.node, 1, &private, &bundle);
    let with_bundle = stick(work.path(), "with-bundle", &config, Some(&private), Some(&bundle));
    let id = appliance.plug(&with_bundle);
    appliance.expect("update bundle node-1.bundle on the USB stick verified", Duration::from_secs(120));
    appliance.expect("choose [u] on the menu to install it", t);
    appliance.expect("report written to the USB stick", t);
    let result = report_file(&with_bundle, "result.txt").unwrap();
    assert!(result.contains("bundle: verified, waiting for confirmation"), "{result}");
    appliance.type_line("u");
    appliance.answer("Install it as a new node generation", "yes", t);
    // The report is rewritten (to the stick it came from) before the menu says what happened.
    appliance.expect("oasis: installed as node generation 1", Duration::from_secs(120));
    appliance.unplug(&id);
    let result = report_file(&with_bundle, "result.txt").unwrap();
    assert!(result.contains("bundle: installed as node generation 1"), "{result}");
    appliance.machine.wait_for_serial("a data disk on", Duration::from_secs(120)).unwrap();
}

/// Reads GRUB's environment block from the EFI system partition of the disk file `disk`.
fn read_grubenv(disk: &Path) -> oasis_image::grubenv::GrubEnv {
    use std::io::Read;
    let file = std::fs::File::open(disk).unwrap();
    let esp = Slice::new(file, appliance::ESP_FIRST * SECTOR, appliance::ESP_SECTORS * SECTOR);
    let fat = fatfs::FileSystem::new(esp, fatfs::FsOptions::new()).unwrap();
    let mut bytes = Vec::new();
    fat.root_dir().open_file(appliance::GRUBENV_PATH).unwrap().read_to_end(&mut bytes).unwrap();
    oasis_image::grubenv::GrubEnv::parse(&bytes).unwrap()
}

/// Rewrites GRUB's environment block in place (same size, same clusters), as the appliance will.
fn write_grubenv(disk: &Path, vars: &[(&str, &str)]) {
    use std::io::{Seek, Write};
    let mut env = read_grubenv(disk);
    for (name, value) in vars {
        env.set(name, value).unwrap();
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(disk).unwrap();
    let esp = Slice::new(file, appliance::ESP_FIRST * SECTOR, appliance::ESP_SECTORS * SECTOR);
    let fat = fatfs::FileSystem::new(esp, fatfs::FsOptions::new()).unwrap();
    let mut f = fat.root_dir().open_file(appliance::GRUBENV_PATH).unwrap();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.write_all(&env.render().unwrap()).unwrap();
    f.flush().unwrap();
    drop(f);
    fat.unmount().unwrap();
}

/// Boots the appliance disk once, up to its setup questions (its slot's files are mounted by
/// then), and powers it off (QEMU's `quit`: a power cut after QEMU has written what the guest
/// wrote). Returns the console.
fn boot_once(
    ns: &Netns,
    spec: &ApplianceVmSpec,
    work: &Path,
    name: &str,
    expect_grub: &str,
    expect_boot: &str,
) -> String {
    let mut vm = ApplianceVm::start(ns, "tap0", spec, work, name);
    vm.expect(expect_grub, Duration::from_secs(240));
    vm.expect(expect_boot, Duration::from_secs(240));
    vm.expect("no configuration yet: answer the questions", Duration::from_secs(120));
    vm.monitor("quit");
    vm.machine.wait_exit(Duration::from_secs(60)).unwrap();
    vm.serial()
}

/// GRUB's choice of slot on the real image: slot A boots; with slot A copied into slot B and
/// grubenv armed for one trial of B (ORDER="B A", B_OK=0, B_LEFT=t), GRUB boots slot B as a
/// trial and spends the try in grubenv (save_env, in place); never committed, the next boot
/// falls back to slot A.
fn slots_fall_back(firmware: Firmware, prefix: &str) {
    let ns = Netns::create(prefix).unwrap();
    ns.add_bridge("br0", None).unwrap();
    ns.add_tap("tap0", "br0").unwrap();
    let work = tempfile::Builder::new().prefix(&format!("{prefix}-")).tempdir().unwrap();
    let disk = work.path().join("appliance-disk.img");
    appliance_disk(&appliance_image(), &disk, 4);
    let spec =
        ApplianceVmSpec { disk: disk.clone(), stick: None, firmware, mac: "52:54:00:0a:00:03".into(), reboots: false };

    let first =
        boot_once(&ns, &spec, work.path(), "boot-a", "oasis: booting slot A (committed good)", "running slot A");
    assert!(!first.contains("a trial boot"), "{first}");
    assert!(first.contains("oasis.slot=A oasis.trial=0"), "the kernel command line names the slot:\n{first}");

    // With the VM off: slot A's bytes over slot B's partition, and grubenv armed for one try of B.
    let mib = |sectors: u64| (sectors * SECTOR) >> 20;
    let status = Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", disk.display()))
        .arg("bs=1M")
        .arg(format!("skip={}", mib(appliance::SLOT_A_FIRST)))
        .arg(format!("seek={}", mib(appliance::SLOT_B_FIRST)))
        .arg(format!("count={}", mib(appliance::SLOT_SECTORS)))
        .args(["conv=notrunc", "status=none"])
        .status()
        .unwrap();
    assert!(status.success(), "copying slot A over slot B");
    write_grubenv(&disk, &[("ORDER", "B A"), ("B_OK", "0"), ("B_LEFT", "t")]);

    let trial = boot_once(
        &ns,
        &spec,
        work.path(),
        "boot-b",
        "oasis: booting slot B (trial, its last try)",
        "oasis boot: running slot B (a trial boot)",
    );
    assert!(trial.contains("oasis.slot=B oasis.trial=1"), "{trial}");
    let env = read_grubenv(&disk);
    assert_eq!(env.get("B_LEFT").unwrap_or(""), "", "GRUB spent the try in grubenv: {env:?}");
    assert_eq!((env.get("ORDER"), env.get("B_OK"), env.get("A_OK")), (Some("B A"), Some("0"), Some("1")));

    // Not committed, no tries left: back to slot A, by itself. `oasis boot` says so (the try was
    // armed by hand here, so there is no trial record to say which version) and acknowledges
    // the fallback: slot A first again, B not good, so it is said once.
    let back = boot_once(
        &ns,
        &spec,
        work.path(),
        "boot-back",
        "booting slot A (good; fell back from B: not good, no tries left)",
        "THE APPLIANCE UPDATE FELL BACK: the update in slot B did not finish booting",
    );
    assert!(!back.contains("a trial boot") && back.contains("oasis.slot=A oasis.trial=0"), "{back}");
    let env = read_grubenv(&disk);
    assert_eq!(
        (env.get("ORDER"), env.get("B_OK"), env.get("B_LEFT").unwrap_or("")),
        (Some("A B"), Some("0"), ""),
        "{env:?}"
    );
}

/// [`slots_fall_back`] under UEFI (OVMF).
#[test]
fn grub_boots_a_trial_slot_once_then_falls_back_uefi() {
    slots_fall_back(Firmware::Uefi, "oasis-slu");
}

/// [`slots_fall_back`] under BIOS (SeaBIOS).
#[test]
fn grub_boots_a_trial_slot_once_then_falls_back_bios() {
    slots_fall_back(Firmware::Bios, "oasis-slb");
}

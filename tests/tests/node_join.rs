//! Machines that boot join the appliance: real firmware netboots the node image from `oasis serve`,
//! the agent registers over pinned HTTPS, is accepted, and brings up its WireGuard management
//! link (kernel WireGuard in the guest, boringtun on the appliance side, since this host's kernel
//! has none). Needs root, QEMU and the node image in `$OASIS_ASSETS/node` (scripts/test builds it).

use std::time::{Duration, Instant};

use oasis_e2e::appliance::{join_args, node_boot_root, write_config, Appliance};
use oasis_e2e::json::{MachineState, MachineView};
use oasis_e2e::{tail, DirectKernel, Firmware, Machine, MachineSpec, Netns};
use oasis_proto::BootMode;

fn registrations(appliance: &Appliance) -> Vec<MachineView> {
    appliance.registrations()
}

/// The registration's boot MAC, as text.
fn mac(r: &MachineView) -> String {
    r.record.boot_mac.to_string()
}

/// Waits until `ok` holds for the registrations, or fails with the machines' consoles.
fn wait_until(
    appliance: &Appliance,
    machines: &[Machine],
    timeout: Duration,
    what: &str,
    ok: impl Fn(&[MachineView]) -> bool,
) -> Vec<MachineView> {
    let deadline = Instant::now() + timeout;
    loop {
        let regs = registrations(appliance);
        if ok(&regs) {
            return regs;
        }
        if Instant::now() > deadline {
            let consoles: Vec<String> = machines.iter().map(|m| tail(&m.serial(), 40)).collect();
            panic!(
                "{what}: not within {timeout:?}\nregistrations: {regs:#?}\n--- consoles ---\n{}\n--- appliance ---\n{}",
                consoles.join("\n-----\n"),
                tail(&appliance.log(), 60)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn linked(r: &MachineView) -> bool {
    r.record.state == MachineState::Accepted
        && r.handshake_age_secs.is_some_and(|a| a < 180)
        && r.last_heartbeat.is_some()
}

#[test]
fn three_machines_netboot_register_link_and_reconnect_after_a_restart() {
    let ns = Netns::create("oasis-join").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let work = tempfile::Builder::new().prefix("oasis-join-").tempdir().unwrap();
    let root = node_boot_root(work.path());
    let config = write_config(work.path(), "range = [\"10.0.0.100\", \"10.0.0.199\"]", &root, "");
    let mut appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));

    let guests = [
        ("52:54:00:0c:00:01", Firmware::Bios, "virtio-net-pci"),
        ("52:54:00:0c:00:02", Firmware::Bios, "e1000"),
        ("52:54:00:0c:00:03", Firmware::Uefi, "virtio-net-pci"),
    ];
    let mut machines = Vec::new();
    for (i, (mac, firmware, nic)) in guests.iter().enumerate() {
        let tap = format!("tap{i}");
        ns.add_tap(&tap, "br0").unwrap();
        let mut spec = MachineSpec::new(&ns, &tap, mac, *firmware, work.path().join(format!("machine{i}.log")));
        spec.nic_model = nic.to_string();
        spec.memory_mb = 512;
        // The first is power-cycled through its agent at the end: its reboot resets it, as
        // hardware does.
        spec.reboots = i == 0;
        machines.push(Machine::start(spec).unwrap());
    }

    let regs = wait_until(&appliance, &machines, Duration::from_secs(600), "3 machines linked", |regs| {
        regs.len() == 3 && regs.iter().all(linked)
    });
    for (mac, _, _) in guests {
        let r = regs.iter().find(|r| self::mac(r) == mac).unwrap_or_else(|| panic!("{mac} not registered"));
        assert!(r.record.inventory.memory_bytes > 256 << 20, "{r:?}");
        assert!(!r.record.inventory.nics.is_empty(), "{r:?}");
        // The overlay carries traffic: the appliance reaches the machine inside its link.
        let overlay = r.record.overlay.expect("an accepted machine has an overlay address").to_string();
        ns.exec(&["busybox", "ping", "-c", "2", "-W", "5", &overlay])
            .unwrap_or_else(|e| panic!("{overlay} does not answer over the management link: {e}"));
    }
    let uefi = regs.iter().find(|r| mac(r) == guests[2].0).unwrap();
    assert_eq!(uefi.record.inventory.boot_mode, BootMode::Uefi, "{uefi:?}");

    // Restart the appliance: every machine reconnects, with no new records.
    appliance.stop();
    let restarted = Instant::now();
    let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let regs = wait_until(&appliance, &machines, Duration::from_secs(180), "reconnect after restart", |regs| {
        regs.len() == 3 && regs.iter().all(|r| linked(r) && r.last_heartbeat.as_ref().is_some_and(|h| h.at >= after))
    });
    eprintln!("all 3 machines back on their links {:.1} s after the restart", restarted.elapsed().as_secs_f64());
    let events = appliance.cli(&["events", "--limit", "500"]);
    assert_eq!(events.matches("machine-registered").count(), 3, "no machine registered twice:\n{events}");
    assert_eq!(regs.len(), 3);

    power_through_agents(&appliance, &mut machines, &regs, &guests.map(|g| g.0));
}

/// Machines without a BMC: `oasis machine power cycle` reboots the first through its agent (it
/// comes back, the same machine, in a new boot), `off` powers the second off (its QEMU ends),
/// `on` and `pxe` are refused in words.
fn power_through_agents(appliance: &Appliance, machines: &mut [Machine], regs: &[MachineView], macs: &[&str]) {
    let id_of = |mac: &str| regs.iter().find(|r| self::mac(r) == mac).unwrap().record.id.clone();
    let (first, second) = (id_of(macs[0]), id_of(macs[1]));
    let old_key = regs.iter().find(|r| r.record.id == first).unwrap().record.wireguard_key.clone();
    let power = |op: &str, id: &str| {
        let data = appliance.data_dir.to_str().unwrap().to_string();
        oasis_e2e::oasis(&["machine", "power", op, id, "--data-dir", &data])
    };
    let out = power("cycle", &first);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent (no BMC)"), "{out:?}");
    let regs = wait_until(appliance, machines, Duration::from_secs(300), "the cycled machine back", |regs| {
        regs.iter().any(|r| r.record.id == first && r.record.wireguard_key != old_key && linked(r))
    });
    assert_eq!(regs.len(), 3, "the same machine, not a new one");
    assert!(machines[0].serial().contains("rebooting into generation"), "its agent rebooted it");

    let out = power("off", &second);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    machines[1].wait_exit(Duration::from_secs(120)).expect("the machine powers off");
    assert!(machines[1].serial().contains("powering off"), "{}", tail(&machines[1].serial(), 20));

    for (op, says) in [("on", "press its power button"), ("pxe", "its next boot is what its firmware boots first")] {
        let out = power(op, &first);
        assert!(!out.status.success(), "{op}");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(said.contains(says), "{op}: {said}");
    }
    let events = appliance.cli(&["events", "--limit", "500"]);
    assert!(events.contains("asked through its agent (no BMC) to power off (an operator)"), "{events}");
}

#[test]
fn a_wrong_token_never_joins_and_manual_acceptance_waits_for_an_operator() {
    let ns = Netns::create("oasis-manual").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let work = tempfile::Builder::new().prefix("oasis-manual-").tempdir().unwrap();
    let root = node_boot_root(work.path());
    let config = write_config(
        work.path(),
        "range = [\"10.0.0.100\", \"10.0.0.199\"]",
        &root,
        "[registration]\npolicy = \"manual\"\n",
    );
    // The agent arguments as boot media carry them (with the join token: these machines boot the
    // node image directly), once with the token replaced.
    let args = join_args(&config);
    let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));
    let append = |token: &str| {
        format!("console=ttyS0 panic=-1 oasis.api={} oasis.token={token} oasis.pin={}", args.api, args.pin)
    };

    let node = root.join("node");
    let mut machines = Vec::new();
    for (i, (mac, token)) in
        [("52:54:00:0d:00:01", args.token.as_str()), ("52:54:00:0d:00:02", "not-the-token")].into_iter().enumerate()
    {
        let tap = format!("tap{i}");
        ns.add_tap(&tap, "br0").unwrap();
        let mut spec = MachineSpec::new(&ns, &tap, mac, Firmware::Bios, work.path().join(format!("machine{i}.log")));
        spec.direct_kernel =
            Some(DirectKernel { kernel: node.join("vmlinuz"), initrd: node.join("initrd.img"), append: append(token) });
        machines.push(Machine::start(spec).unwrap());
    }

    let regs = wait_until(&appliance, &machines, Duration::from_secs(300), "the right-token machine pending", |regs| {
        regs.iter().any(|r| mac(r) == "52:54:00:0d:00:01" && r.record.state == MachineState::Pending)
    });
    assert!(regs.iter().all(|r| mac(r) != "52:54:00:0d:00:02"), "a wrong token makes no record: {regs:#?}");
    // The wrong-token machine keeps being refused, and says why on its console.
    let deadline = Instant::now() + Duration::from_secs(120);
    // The agent's own words: a bare "401" also matches a kernel timestamp such as [    1.401234].
    while !machines[1].serial().contains("(HTTP 401)") {
        assert!(Instant::now() < deadline, "no refusal on the console:\n{}", tail(&machines[1].serial(), 40));
        std::thread::sleep(Duration::from_secs(2));
    }
    // The refusal's event is written by the store's writer after the answer went out.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = appliance.cli(&["events"]);
        if events.contains("registration-refused") {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal among the events:\n{events}");
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(10));
    let still = registrations(&appliance);
    assert!(
        still.iter().all(|r| r.record.state == MachineState::Pending),
        "nothing is accepted without an operator: {still:#?}"
    );

    let id = still[0].record.id.clone();
    appliance.cli(&["machine", "accept", &id]);
    wait_until(&appliance, &machines, Duration::from_secs(180), "accepted machine linked", |regs| {
        regs.iter().any(|r| r.record.id == id && linked(r))
    });
    assert!(registrations(&appliance).iter().all(|r| mac(r) != "52:54:00:0d:00:02"));
}

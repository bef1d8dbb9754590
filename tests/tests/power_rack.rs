//! A rack whose machines have BMCs, powered and repaired by the appliance alone: four machines
//! (QEMU TCG, BIOS network boot, a data disk each), each with a simulated BMC (OpenIPMI's
//! `ipmi_sim`, its chassis the machine's QEMU process) in the appliance's `[[power.bmc]]`. They
//! start off; the appliance powers them on and they assemble (three voters, a spare). A voter
//! hangs (its CPU stopped through QEMU's monitor): the appliance fences it, a power cycle into a
//! network boot, and it comes back as the same member with its data. A voter dies for good (its
//! QEMU ends and its BMC refuses to power it on): it is given up and the spare takes its place,
//! three healthy voters again. Powered on later, it rejoins as a spare. An operator then
//! reprovisions a voter: its member leaves, the spare takes its place, its agent wipes its data
//! disk and reboots it, and it comes back as a fresh spare; powered off by an operator, the
//! status says so.
//!
//! Each machine's agent reads its BMC's network address through the system interface. The
//! fourth machine's BMC is not in the config (its only user is the factory's): the config lets
//! agents make a user (`agent_creates_user`), so its agent makes `oasis` there with a random
//! password and gives it to the appliance, which powers that machine through it from then on.
//!
//! One booted rack serves every check in sequence. Needs root, QEMU, `ipmi_sim` (Debian package
//! `openipmi`) and `$OASIS_ASSETS/node` (scripts/test builds it).

use std::time::{Duration, Instant};

use oasis_e2e::ipmi_sim::SimFault;
use oasis_e2e::json::{ClusterStatus, Health};
use oasis_e2e::node_image;
use oasis_e2e::rack::{bmc_address, bmc_mac, healthy_with, mac, role, Rack, FACTORY_PASSWORD, FACTORY_USER};

const CONFIG: &str = "[cluster]\nname = \"rack\"\nmin_machines = 4\nsettle_secs = 2\ndead_after_secs = 15\n\n\
                      [power]\npower_on_at_start = true\nfence_after_secs = 60\nfence_boot_secs = 420\n\
                      agent_creates_user = true\n";

/// Machine `i`'s power in the cluster status (`on`, `off`, `unknown`; empty without one).
fn power(status: &ClusterStatus, i: usize) -> String {
    let id = Rack::id(i);
    status.machines.iter().find(|m| m.id == id).and_then(|m| m.power.clone()).unwrap_or_default()
}

fn alive(status: &ClusterStatus, i: usize) -> bool {
    let id = Rack::id(i);
    status.machines.iter().any(|m| m.id == id && m.alive)
}

/// Machine `i`'s etcd member id, if it has one.
fn member(status: &ClusterStatus, i: usize) -> Option<String> {
    let id = Rack::id(i);
    status.members.iter().find(|m| m.machine.as_deref() == Some(id.as_str())).map(|m| m.id.clone())
}

/// The events of `kind` so far, their messages.
fn events(rack: &Rack, kind: &str) -> Vec<String> {
    rack.appliance.events(2000).into_iter().filter(|e| e.kind == kind).map(|e| e.message).collect()
}

#[test]
fn the_appliance_powers_on_its_rack_fences_a_hung_voter_and_replaces_a_dead_one() {
    let node = node_image().unwrap_or_else(|e| panic!("{e}"));
    // Machine 3's BMC is found by its agent.
    let rack = Rack::with_bmcs("oasis-prk", 4, CONFIG, &[0, 1, 2, 3], &[0, 1, 2], &node);
    let started = Instant::now();

    // Off, until the appliance powers them on; then they assemble by themselves.
    let status = rack.wait(Duration::from_secs(1200), "3 healthy voters and a spare, all powered on at start", |s| {
        healthy_with(s, &[0, 1, 2]) && alive(s, 3) && (0..4).all(|i| power(s, i) == "on")
    });
    eprintln!("assembled {:.0} s after the appliance started, the machines off", started.elapsed().as_secs_f64());
    assert_eq!(role(&status, 3), "worker", "the fourth is the spare: {status:#?}");
    let on = events(&rack, "power-on");
    assert_eq!(on.len(), 3, "each machine of the config powered on once: {on:#?}");
    assert!(on.iter().all(|m| m.contains("power_on_at_start")), "{on:#?}");
    // Each agent read its machine's BMC through the system interface (`/dev/ipmi0`, no
    // credentials): where it answers on the network, as its LAN channel says.
    // The config's BMC and the one each machine reads as its own agree: each machine is linked
    // to its BMC. Machine 3's agent made a user on its BMC, an Operator, beside the factory's.
    for entry in rack.appliance.machines() {
        let link = entry.bmc.unwrap_or_default();
        let i = (0..4).find(|i| mac(*i) == entry.netboot.mac.to_string()).expect("a machine of the rack");
        let made = if i == 3 { " (user made by its agent)" } else { "" };
        assert_eq!(link, format!("ipmi {}:623{made}", bmc_address(i)), "{i}");
    }
    let made = events(&rack, "bmc-user-made");
    assert!(made.len() == 1 && made[0].starts_with(&Rack::id(3)), "{made:#?}");
    let users = rack.bmc(3).ipmitool(Some(&rack.ns), FACTORY_USER, FACTORY_PASSWORD, &["user", "list", "1"]).unwrap();
    assert!(users.lines().any(|l| l.contains("oasis") && l.contains("OPERATOR")), "{users}");
    for r in rack.appliance.registrations() {
        let i = (0..4).find(|i| Rack::id(*i) == r.record.id).expect("a machine of the rack");
        let bmc = r.record.inventory.bmc.unwrap_or_else(|| panic!("machine {i} reported no BMC:\n{}", rack.console(i)));
        assert_eq!((bmc.lan_channel, bmc.address, bmc.mac), (Some(1), Some(bmc_address(i)), Some(bmc_mac(i))), "{i}");
        assert_eq!(
            (bmc.ipmi_version.as_str(), bmc.address_source.as_deref(), bmc.error),
            ("2.0", Some("static"), None)
        );
    }
    rack.put("/oasis/power", "written-before-the-hang", 0);

    // A voter hangs: silent, fenced (a network boot, a power cycle), back as the same member.
    let before = member(&status, 1).expect("machine 1 is a member");
    let hung = Instant::now();
    let out = rack.monitor(1, "stop");
    assert!(!out.contains("rror"), "stop: {out}");
    rack.wait(Duration::from_secs(300), "machine 1 silent", |s| !alive(s, 1) && s.health == Health::Degraded);
    let status = rack.wait(Duration::from_secs(900), "healthy again with machine 1 back", |s| {
        healthy_with(s, &[0, 1, 2]) && alive(s, 1)
    });
    let hung_to_healthy = hung.elapsed().as_secs_f64();
    eprintln!("hung voter to healthy cluster: {hung_to_healthy:.0} s (fence_after_secs 60, dead_after_secs 15)");
    assert_eq!(member(&status, 1), Some(before), "the same member, its data kept on its disk");
    assert_eq!(rack.get("/oasis/power", 1), "written-before-the-hang");
    let fenced = events(&rack, "machine-fenced");
    assert!(fenced.iter().any(|m| m.starts_with(&Rack::id(1)) && m.contains("power-cycled once")), "{fenced:#?}");
    assert!(!events(&rack, "power-cycle").is_empty(), "the cycle is an event");
    let chassis = rack.bmc(1).chassis_log();
    assert!(chassis.contains("set boot pxe") && chassis.contains("this boot is from the network, once"), "{chassis}");

    // A voter dies for good: its QEMU ends and its BMC cannot power it on. Given up, the spare
    // takes its place: three healthy voters again.
    rack.bmc(2).set_fault(Some(SimFault::RefusePowerOn)).unwrap();
    let died = Instant::now();
    rack.monitor(2, "quit");
    let status = rack.wait(Duration::from_secs(900), "healthy with the spare in the dead voter's place", |s| {
        healthy_with(s, &[0, 1, 3])
    });
    eprintln!("dead voter to healthy cluster with the spare: {:.0} s", died.elapsed().as_secs_f64());
    assert_eq!(member(&status, 2), None, "the dead voter's member is removed: {status:#?}");
    assert_eq!(power(&status, 2), "off");
    let given_up = events(&rack, "machine-given-up");
    assert!(
        given_up.iter().any(|m| m.starts_with(&Rack::id(2)) && m.contains("could not be powered on")),
        "{given_up:#?}"
    );
    assert_eq!(rack.get("/oasis/power", 3), "written-before-the-hang", "the spare has the data");

    // Repaired and powered on by an operator, it rejoins as a spare (its old data never started).
    rack.bmc(2).set_fault(None).unwrap();
    let out = rack.appliance.cli(&["machine", "power", "on", &Rack::id(2)]);
    assert!(out.contains("on"), "{out}");
    let status = rack.wait(Duration::from_secs(600), "machine 2 back as a spare", |s| {
        healthy_with(s, &[0, 1, 3]) && alive(s, 2) && role(s, 2) == "worker"
    });
    assert_eq!(member(&status, 2), None);

    // An operator reprovisions machine 3 (a voter, its BMC found by its agent): its member
    // leaves, machine 2 takes its place, its agent wipes its data disk and reboots it through the
    // network, and it comes back as a fresh spare.
    let disk = rack.work.path().join("disk3.img");
    // The ext superblock's volume label (at 1024 + 120), where the agent's mkfs put `oasis-data`.
    let label_at = |disk: &std::path::Path| {
        use std::os::unix::fs::FileExt;
        let mut label = [0u8; 16];
        std::fs::File::open(disk).and_then(|f| f.read_exact_at(&mut label, 1024 + 120)).unwrap();
        label
    };
    assert!(label_at(&disk).starts_with(b"oasis-data"), "machine 3's data disk holds etcd's data");
    let asked = Instant::now();
    let out = rack.appliance.cli(&["machine", "reprovision", &Rack::id(3)]);
    assert!(out.contains("is being reprovisioned"), "{out}");
    // Its next boot's registration ends the reprovisioning.
    let deadline = Instant::now() + Duration::from_secs(900);
    while events(&rack, "machine-reprovisioned").is_empty() {
        assert!(Instant::now() < deadline, "not reprovisioned: {:#?}", rack.appliance.events(50));
        std::thread::sleep(Duration::from_secs(2));
    }
    let status = rack.wait(Duration::from_secs(600), "machine 3 back as a spare", |s| {
        healthy_with(s, &[0, 1, 2]) && alive(s, 3) && role(s, 3) == "worker"
    });
    assert_eq!(member(&status, 3), None);
    let wiped = events(&rack, "machine-wiped");
    assert!(wiped.iter().any(|m| m.starts_with(&Rack::id(3))), "{wiped:#?}");
    assert!(label_at(&disk).iter().all(|b| *b == 0), "its data disk was wiped");
    assert_eq!(rack.get("/oasis/power", 2), "written-before-the-hang", "the data is in the cluster still");
    eprintln!("reprovision of a voter to a fresh spare: {:.0} s", asked.elapsed().as_secs_f64());

    // An operator powers the spare off, through the user its agent made: the status says so,
    // and oasis leaves it off.
    let out = rack.appliance.cli(&["machine", "power", "off", &Rack::id(3)]);
    assert!(out.contains(&format!("ipmi {}:623", bmc_address(3))) && out.contains("off"), "{out}");
    let status = rack.status();
    assert_eq!(power(&status, 3), "off", "{}", rack.appliance.cli(&["cluster", "status"]));
    assert!(rack.bmc(3).machine().is_none(), "its QEMU ended");
    let text = rack.appliance.cli(&["cluster", "status"]);
    let row = text.lines().find(|l| l.starts_with(&Rack::id(3))).unwrap_or_default();
    assert!(row.split_whitespace().any(|w| w == "off"), "{text}");
}

//! The rack assembles itself: machines boot the node image, register, and the appliance turns
//! them into an etcd cluster over the WireGuard mesh: real etcd (Debian's), real kernel WireGuard
//! in the guests, membership changed by the appliance one step at a time. Needs root, QEMU and the
//! node image in `$OASIS_ASSETS/node` (scripts/test builds it).

use std::time::{Duration, Instant};

use oasis_e2e::json::Health;
use oasis_e2e::rack::{healthy_with, role, voters, Rack};

/// Five machines, three control-plane places: the second in order dies while joining and the
/// appliance restarts right after; the fourth takes the place, the fifth is a worker. Then a
/// voter powers off (degraded, quorum kept) and comes back (healthy, joined again).
#[test]
fn the_rack_assembles_through_a_death_mid_join_a_restart_and_a_power_cycle() {
    let cluster = "[cluster]\nname = \"rack\"\nmin_machines = 5\nsettle_secs = 5\ndead_after_secs = 15\n";
    let mut rack = Rack::new("oasis-cl5", 5, cluster);
    let started = Instant::now();

    let status = rack.wait(Duration::from_secs(900), "machine 2 joining as a learner", |s| {
        s.members.iter().any(|m| m.learner && m.machine.as_deref() == Some(Rack::id(1).as_str()))
    });
    assert_eq!(voters(&status), [Rack::id(0)], "the first in serial order bootstraps");
    rack.power_off(1);
    rack.restart_appliance();

    let status =
        rack.wait(Duration::from_secs(900), "3 healthy voters without machine 2", |s| healthy_with(s, &[0, 2, 3]));
    eprintln!("assembled in {:.0} s from power-on", started.elapsed().as_secs_f64());
    assert_eq!(status.members.len(), 3, "no duplicate or leftover member: {status:#?}");
    assert_eq!(role(&status, 4), "worker");
    assert_eq!(role(&status, 1), "worker", "the machine that died mid-join is passed over");
    assert_eq!(status.kubernetes, "not bundled");
    let events = rack.appliance.cli(&["events", "--limit", "500"]);
    assert!(events.contains("died while joining"), "{events}");
    assert_eq!(events.matches("etcd starts a new cluster").count(), 1, "one bootstrap only:\n{events}");

    // Data written through one member is read through another: replicated over the mesh.
    rack.put("/oasis/test", "written-via-first", 0);
    assert_eq!(rack.get("/oasis/test", 3), "written-via-first");

    // A voter powers off: degraded, with quorum; the cluster still takes writes.
    rack.power_off(2);
    let status = rack.wait(Duration::from_secs(300), "degraded with 2 of 3", |s| s.health == Health::Degraded);
    assert_eq!(voters(&status).len(), 3, "a voter down is not removed");
    rack.put("/oasis/test", "written-while-degraded", 3);
    assert_eq!(rack.get("/oasis/test", 0), "written-while-degraded");

    // It comes back with its memory wiped: it is replaced by itself and the cluster is healthy.
    let back = Instant::now();
    rack.power_on(2);
    rack.wait(Duration::from_secs(900), "healthy again with machine 3 back", |s| healthy_with(s, &[0, 2, 3]));
    eprintln!("member back and healthy {:.0} s after its power-on", back.elapsed().as_secs_f64());
    assert_eq!(rack.get("/oasis/test", 2), "written-while-degraded");
    let mesh = rack.status().mesh;
    assert!(
        mesh.iter().any(|p| p.from == Rack::id(2) && p.handshake_age_secs.is_some()),
        "the returning machine is on the mesh: {mesh:#?}"
    );
}

/// One machine alone is a single-node cluster. Its blank disk is formatted and keeps etcd's
/// data: powered off and on again, it is the same member with the same data.
#[test]
fn one_machine_is_a_single_node_cluster_whose_data_survives_a_power_cycle_on_its_disk() {
    let mut rack = Rack::with_disks("oasis-cl1", 1, "[cluster]\nsettle_secs = 2\ndead_after_secs = 15\n", &[0]);
    let status = rack.wait(Duration::from_secs(600), "a single healthy member", |s| healthy_with(s, &[0]));
    assert_eq!(status.control_plane_target, 1);
    assert_eq!(role(&status, 0), "control-plane");
    assert!(status.machines[0].data_disk.as_deref().is_some_and(|d| d.contains("mounted")), "{status:#?}");
    let member = status.members[0].id.clone();
    rack.put("k", "v", 0);
    assert_eq!(rack.get("k", 0), "v");

    rack.power_off(0);
    rack.wait(Duration::from_secs(300), "the only member down", |s| s.health == Health::QuorumLost);
    rack.power_on(0);
    let status = rack.wait(Duration::from_secs(600), "healthy again", |s| healthy_with(s, &[0]));
    assert_eq!(status.members[0].id, member, "the same member, started again from its disk");
    assert_eq!(rack.get("k", 0), "v");
    let events = rack.appliance.cli(&["events", "--limit", "500"]);
    assert_eq!(events.matches("formatted its disk").count(), 1, "formatted once, mounted as it was after:\n{events}");
    assert!(!events.contains("etcd-removed"), "{events}");
}

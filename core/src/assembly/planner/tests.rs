//! The planner against a model of a rack and of etcd's membership rules: examples, then random
//! sequences of joins, deaths, reboots and appliance restarts.

use proptest::prelude::*;

use super::*;
use crate::assembly::bookkeeping::{apply_step, Context, Outcome};

/// One simulated machine.
#[derive(Debug, Clone)]
struct Machine {
    id: String,
    powered: bool,
    boot: u32,
}

/// One simulated etcd member: its data lives in the boot it started in.
#[derive(Debug, Clone)]
struct SimMember {
    id: u64,
    machine: usize,
    learner: bool,
    /// The boot its etcd started in; `None` until started.
    started_in: Option<u32>,
    /// The etcd it runs (the artifact's hash), once started.
    version: Option<String>,
    /// Its agent is restarting it with another etcd: down until the next round.
    restarting: bool,
}

/// A rack, etcd as its members see it, and the appliance's persisted state.
#[derive(Debug, Clone)]
struct World {
    settings: Settings,
    machines: Vec<Machine>,
    members: Vec<SimMember>,
    next_member: u64,
    assembly: Assembly,
    changes: usize,
    /// Unix time as the bookkeeping sees it: one second per executed step.
    clock: u64,
    /// The etcd the node image carries.
    image: Artifact,
    powered_off_since_tick: bool,
    /// Machines the controller gave up (dead, fenced or silent too long).
    given_up: BTreeSet<usize>,
    /// Machines an operator is reprovisioning, with the boot they were asked in.
    leaving: BTreeMap<usize, u32>,
}

fn image(version: u32) -> Artifact {
    Artifact { sha256: format!("etcd-v{version}"), size: 1, path: "etcd".into(), mode: 0o755 }
}

fn peer_url(i: usize) -> String {
    format!("https://10.98.0.{}:2380", i + 2)
}

impl World {
    fn new(count: usize, control_plane: usize) -> World {
        let machines = (0..count).map(|i| Machine { id: format!("m{i}"), powered: true, boot: 0 }).collect();
        World {
            settings: Settings { control_plane, min_machines: 1, etcd_sha256: Some(image(0).sha256) },
            machines,
            members: vec![],
            next_member: 1,
            assembly: Assembly::default(),
            changes: 0,
            clock: 0,
            image: image(0),
            powered_off_since_tick: false,
            given_up: BTreeSet::new(),
            leaving: Default::default(),
        }
    }

    fn healthy(&self, m: &SimMember) -> bool {
        let machine = &self.machines[m.machine];
        machine.powered && m.started_in == Some(machine.boot) && !m.restarting
    }

    fn voters(&self) -> usize {
        self.members.iter().filter(|m| !m.learner).count()
    }

    fn healthy_voters(&self) -> usize {
        self.members.iter().filter(|m| !m.learner && self.healthy(m)).count()
    }

    fn has_quorum(&self) -> bool {
        self.voters() > 0 && self.healthy_voters() >= quorum(self.voters())
    }

    fn nodes(&self) -> Vec<Node> {
        let alive: BTreeSet<String> = self.machines.iter().filter(|m| m.powered).map(|m| m.id.clone()).collect();
        self.machines
            .iter()
            .enumerate()
            .map(|(i, m)| Node {
                id: m.id.clone(),
                alive: m.powered,
                boot: format!("boot{}", m.boot),
                peer_url: peer_url(i),
                etcd_ready: m.powered && self.assembly.roles.get(&m.id) == Some(&Role::ControlPlane),
                volatile: true,
                meshed_with: if m.powered { alive.clone() } else { BTreeSet::new() },
                etcd_current: self.etcd_current(i),
                given_up: self.given_up.contains(&i),
                leaving: self.leaving.get(&i) == Some(&m.boot),
            })
            .collect()
    }

    /// The machine's member runs the etcd of its plan.
    fn etcd_current(&self, machine: usize) -> bool {
        let m = &self.machines[machine];
        let plan = self.assembly.members.get(&m.id).and_then(|p| p.etcd.as_ref()).map(|a| &a.sha256);
        self.members.iter().filter(|s| s.machine == machine).all(|s| self.healthy(s) && s.version.as_ref() == plan)
    }

    /// A new node image with another etcd.
    fn new_image(&mut self) {
        let next = self.image.sha256.trim_start_matches("etcd-v").parse::<u32>().unwrap() + 1;
        self.image = image(next);
        self.settings.etcd_sha256 = Some(self.image.sha256.clone());
    }

    fn observed(&self) -> Option<Vec<Member>> {
        if !self.members.iter().any(|m| self.healthy(m)) {
            return None;
        }
        Some(
            self.members
                .iter()
                .map(|m| Member {
                    id: m.id,
                    name: if m.started_in.is_some() { self.machines[m.machine].id.clone() } else { String::new() },
                    peer_url: peer_url(m.machine),
                    learner: m.learner,
                    healthy: self.healthy(m),
                })
                .collect(),
        )
    }

    /// Agents start etcd where a plan says so (a joining member needs a leader to join).
    fn agents_act(&mut self) {
        let quorum_now = self.has_quorum();
        for i in 0..self.members.len() {
            let machine = &self.machines[self.members[i].machine];
            let plan = self.assembly.members.get(&machine.id).filter(|p| p.boot == format!("boot{}", machine.boot));
            let told = plan.and_then(|p| p.etcd.as_ref()).map(|a| a.sha256.clone());
            if machine.powered && plan.is_some() && self.members[i].started_in.is_none() && quorum_now {
                self.members[i].started_in = Some(machine.boot);
                self.members[i].version = told;
            } else if machine.powered
                && self.members[i].started_in == Some(machine.boot)
                && self.members[i].version != told
                && plan.is_some()
            {
                // Told another etcd: down for a round, then back on it.
                if self.members[i].restarting {
                    self.members[i].restarting = false;
                    self.members[i].version = told;
                } else {
                    self.members[i].restarting = true;
                }
            } else {
                self.members[i].restarting = false;
            }
        }
        // One restart at a time (a machine may die meanwhile: that is not the planner's doing).
        assert!(self.members.iter().filter(|m| m.restarting).count() <= 1, "two restarts at once: {:?}", self.members);
        if self.voters() > 1 && quorum_now && !self.powered_off_since_tick {
            assert!(self.has_quorum(), "a restart lost quorum: {:?} {:?}", self.members, self.machines);
        }
        self.powered_off_since_tick = false;
        // A bootstrap plan starts a new one-member cluster.
        if self.members.is_empty() {
            if let Some((id, plan)) = self.assembly.members.iter().find(|(_, p)| p.state == InitialState::New) {
                let i = self.machines.iter().position(|m| m.id == *id).unwrap();
                let m = &self.machines[i];
                if m.powered && plan.boot == format!("boot{}", m.boot) {
                    self.members.push(SimMember {
                        id: self.next_member,
                        machine: i,
                        learner: false,
                        started_in: Some(m.boot),
                        version: plan.etcd.as_ref().map(|a| a.sha256.clone()),
                        restarting: false,
                    });
                    self.next_member += 1;
                }
            }
        }
    }

    /// Checks the invariants around one etcd change.
    fn change(&mut self, apply: impl FnOnce(&mut World) -> Result<(), &'static str>) -> Result<(), &'static str> {
        let had_quorum = self.has_quorum();
        let before = self.members.clone();
        apply(self)?;
        self.changes += 1;
        assert!(self.members.iter().filter(|m| m.learner).count() <= 1, "two learners: {:?}", self.members);
        if had_quorum {
            assert!(self.has_quorum(), "a change lost quorum: {before:?} -> {:?}", self.members);
        }
        Ok(())
    }

    /// Executes one step as the controller does: the etcd call on the simulated etcd, then the
    /// controller's own bookkeeping; `interrupted` drops the store write that follows an etcd
    /// change, as an appliance restart between the two would.
    fn execute(&mut self, step: &Step, interrupted: bool) {
        let outcome = match step {
            Step::AddLearner { machine, .. } => {
                let i = self.machines.iter().position(|m| m.id == *machine).unwrap();
                let id = self.next_member;
                let added = self.change(|w| {
                    if w.members.iter().any(|m| m.learner) {
                        return Err("too many learner members");
                    }
                    if !w.has_quorum() {
                        return Err("no leader");
                    }
                    w.members.push(SimMember {
                        id,
                        machine: i,
                        learner: true,
                        started_in: None,
                        version: None,
                        restarting: false,
                    });
                    w.next_member += 1;
                    Ok(())
                });
                added.ok().map(|()| Outcome::Added { member_id: id })
            }
            Step::Promote { member_id, .. } => {
                let promoted = self.change(|w| {
                    let Some(i) = w.members.iter().position(|m| m.id == *member_id) else { return Err("no member") };
                    if !w.healthy(&w.members[i]) || !w.has_quorum() {
                        return Err("learner not ready");
                    }
                    w.members[i].learner = false;
                    Ok(())
                });
                promoted.ok().map(|()| Outcome::Done)
            }
            Step::Remove { member_id, .. } => {
                let removed = self.change(|w| {
                    if !w.has_quorum() {
                        return Err("no leader");
                    }
                    let before = w.members.len();
                    w.members.retain(|m| m.id != *member_id);
                    if w.members.len() == before {
                        return Err("no member");
                    }
                    Ok(())
                });
                match removed {
                    Ok(()) => Some(Outcome::Done),
                    // etcd's "member not found": the controller takes it as removed.
                    Err("no member") => Some(Outcome::AlreadyGone),
                    Err(_) => None,
                }
            }
            Step::Reset { .. } => {
                // Every member lost its data: the new cluster starts from nothing.
                self.members.clear();
                Some(Outcome::Done)
            }
            _ => Some(Outcome::Done),
        };
        let etcd_change = matches!(step, Step::AddLearner { .. } | Step::Promote { .. } | Step::Remove { .. });
        let Some(outcome) = outcome else { return };
        if interrupted && etcd_change {
            return;
        }
        self.clock += 1;
        let machines = self.machines.clone();
        let boot_of = |id: &str| machines.iter().find(|m| m.id == id).map(|m| format!("boot{}", m.boot)).unwrap();
        let image = self.image.clone();
        let ctx = Context { cluster: "rack", now: self.clock, boot_of: &boot_of, etcd: Some(&image) };
        apply_step(&mut self.assembly, step, outcome, &ctx);
    }

    fn tick(&mut self, interrupted: bool) -> Step {
        self.agents_act();
        let observed = self.observed();
        let step = plan(&self.settings, &self.nodes(), &self.assembly, observed.as_deref(), true);
        self.execute(&step, interrupted);
        step
    }

    /// Ticks until the planner settles or has nothing to do twice in a row.
    fn run(&mut self, limit: usize) -> Step {
        let mut last = Step::Wait(String::new());
        for _ in 0..limit {
            let step = self.tick(false);
            if step == Step::Settled || (matches!(step, Step::Wait(_)) && step == last) {
                return step;
            }
            last = step;
        }
        panic!("no settling after {limit} ticks: {last:?}\n{self:#?}");
    }

    fn voter_machines(&self) -> BTreeSet<String> {
        self.members.iter().filter(|m| !m.learner).map(|m| self.machines[m.machine].id.clone()).collect()
    }
}

#[test]
fn four_machines_make_three_voters_and_a_worker() {
    let mut w = World::new(4, 3);
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!(w.voter_machines(), ["m0", "m1", "m2"].map(String::from).into());
    assert_eq!(w.assembly.roles["m3"], Role::Worker);
    assert!(w.members.iter().all(|m| !m.learner));
}

#[test]
fn one_machine_is_a_single_node_cluster_and_two_make_one_voter() {
    let mut w = World::new(1, 3);
    assert_eq!(w.run(50), Step::Settled);
    assert_eq!(w.voters(), 1);
    let mut w = World::new(2, 3);
    assert_eq!(w.run(50), Step::Settled);
    assert_eq!(w.voters(), 1);
    assert_eq!(w.assembly.roles["m1"], Role::Worker);
}

#[test]
fn nothing_is_chosen_before_the_rack_settles_or_min_machines_are_there() {
    let w = World::new(3, 3);
    let settings = Settings { control_plane: 3, min_machines: 4, etcd_sha256: None };
    assert!(matches!(plan(&settings, &w.nodes(), &w.assembly, None, true), Step::Wait(m) if m.contains("3 of 4")));
    assert!(
        matches!(plan(&w.settings, &w.nodes(), &w.assembly, None, false), Step::Wait(m) if m.contains("settle time"))
    );
}

#[test]
fn the_choice_follows_the_order_not_the_arrival() {
    let mut w = World::new(5, 3);
    w.machines.reverse();
    w.run(200);
    assert_eq!(w.voter_machines(), ["m2", "m3", "m4"].map(String::from).into(), "the first three in choice order");
}

#[test]
fn a_learner_that_dies_is_removed_and_the_next_machine_takes_its_place() {
    let mut w = World::new(4, 3);
    // Run until m1 is a learner, then power it off.
    for _ in 0..100 {
        let step = w.tick(false);
        if matches!(step, Step::AddLearner { ref machine, .. } if machine == "m1") {
            break;
        }
    }
    w.machines[1].powered = false;
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!(w.voter_machines(), ["m0", "m2", "m3"].map(String::from).into());
    assert_eq!(w.assembly.roles["m1"], Role::Worker);
    // It comes back (a new boot): it stays a worker, the cluster has its three.
    w.machines[1].powered = true;
    w.machines[1].boot += 1;
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!(w.voters(), 3);
}

#[test]
fn a_voter_down_is_degraded_and_rejoins_when_it_returns_without_its_data() {
    let mut w = World::new(3, 3);
    assert_eq!(w.run(100), Step::Settled);
    w.machines[2].powered = false;
    let step = w.run(20);
    assert!(matches!(&step, Step::Wait(m) if m.contains("degraded: 2 of 3")), "{step:?}");
    assert_eq!(w.voters(), 3, "a voter is not removed for being down");
    w.machines[2].powered = true;
    w.machines[2].boot += 1;
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!(w.voters(), 3);
    assert_eq!(w.healthy_voters(), 3);
}

#[test]
fn a_given_up_voter_is_replaced_by_the_spare_and_comes_back_as_a_spare() {
    let mut w = World::new(4, 3);
    assert_eq!(w.run(100), Step::Settled);
    let voters = w.voter_machines();
    let gone = w.machines.iter().position(|m| voters.contains(&m.id)).unwrap();
    w.machines[gone].powered = false;
    let step = w.run(20);
    assert!(matches!(&step, Step::Wait(m) if m.contains("degraded: 2 of 3")), "{step:?}");
    // The controller gives it up: the spare joins, the cluster is whole again.
    w.given_up.insert(gone);
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!((w.voters(), w.healthy_voters()), (3, 3));
    let spare = w.machines.iter().position(|m| !voters.contains(&m.id)).unwrap();
    assert!(w.voter_machines().contains(&w.machines[spare].id), "the spare is a voter");
    // It comes back (a new boot): a spare, the voters unchanged.
    w.machines[gone].powered = true;
    w.machines[gone].boot += 1;
    w.given_up.remove(&gone);
    assert_eq!(w.run(100), Step::Settled);
    assert!(!w.voter_machines().contains(&w.machines[gone].id));
    assert_eq!(w.assembly.roles.get(&w.machines[gone].id), Some(&Role::Worker));
}

/// An operator reprovisions a live voter: its member leaves first (quorum kept), the spare takes
/// its place, and once it has booted again (wiped) it is a spare itself.
#[test]
fn a_voter_being_reprovisioned_leaves_alive_and_comes_back_as_a_spare() {
    let mut w = World::new(4, 3);
    assert_eq!(w.run(100), Step::Settled);
    let voters = w.voter_machines();
    let leaving = w.machines.iter().position(|m| voters.contains(&m.id)).unwrap();
    w.leaving.insert(leaving, w.machines[leaving].boot);
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!((w.voters(), w.healthy_voters()), (3, 3));
    assert!(!w.voter_machines().contains(&w.machines[leaving].id), "its member left while it was alive");
    assert_eq!(w.assembly.roles.get(&w.machines[leaving].id), Some(&Role::Worker));
    // Wiped, it boots again: a spare, the voters unchanged.
    w.machines[leaving].boot += 1;
    assert_eq!(w.run(100), Step::Settled);
    assert!(!w.voter_machines().contains(&w.machines[leaving].id));
    assert_eq!(w.voters(), 3);
}

/// A spare being reprovisioned is no candidate, even for a place that opens.
#[test]
fn a_machine_being_reprovisioned_is_not_chosen_for_a_place() {
    let mut w = World::new(4, 3);
    assert_eq!(w.run(100), Step::Settled);
    let voters = w.voter_machines();
    let spare = w.machines.iter().position(|m| !voters.contains(&m.id)).unwrap();
    w.leaving.insert(spare, w.machines[spare].boot);
    let gone = w.machines.iter().position(|m| voters.contains(&m.id)).unwrap();
    w.machines[gone].powered = false;
    w.given_up.insert(gone);
    let step = w.run(100);
    assert!(!w.voter_machines().contains(&w.machines[spare].id), "{step:?}");
    assert_eq!(w.voters() % 2, 1, "an odd number of voters from the two machines left");
}

#[test]
fn a_given_up_voter_without_a_quorum_left_waits() {
    let mut w = World::new(3, 3);
    assert_eq!(w.run(100), Step::Settled);
    w.machines[1].powered = false;
    w.machines[2].powered = false;
    w.given_up.extend([1, 2]);
    let changes = w.changes;
    let step = w.run(20);
    assert!(matches!(&step, Step::Wait(_)), "{step:?}");
    assert_eq!(w.changes, changes, "nothing is removed without a quorum");
}

#[test]
fn a_learner_the_appliance_forgot_to_record_is_started_not_added_twice() {
    let mut w = World::new(3, 3);
    loop {
        if let Step::AddLearner { .. } = w.tick(false) {
            break;
        }
    }
    // The plan write after the add never happened; the learner is in etcd.
    let step = w.tick(false);
    assert!(matches!(step, Step::Start { ref machine, .. } if machine == "m1"), "{step:?}");
    assert_eq!(w.run(100), Step::Settled);
    assert_eq!(w.members.len(), 3);
}

#[test]
fn a_learner_is_not_promoted_while_the_voters_have_no_quorum() {
    let mut w = World::new(3, 3);
    // Run until the third machine's learner has started: two voters and a ready learner.
    for _ in 0..100 {
        w.tick(false);
        w.agents_act();
        if w.voters() == 2 && w.members.iter().any(|m| m.learner && w.healthy(m)) {
            break;
        }
    }
    assert_eq!(w.voters(), 2, "{:?}", w.members);
    // A voter reboots and loses its data: one of two voters is healthy, there is no leader.
    w.machines[0].boot += 1;
    let step = plan(&w.settings, &w.nodes(), &w.assembly, w.observed().as_deref(), true);
    assert!(matches!(&step, Step::Wait(m) if m.contains("quorum to promote")), "{step:?}");
}

/// What happens between two ticks.
#[derive(Debug, Clone)]
enum Event {
    Tick,
    /// The appliance restarts between an etcd change and its store write.
    InterruptedTick,
    PowerOff(usize),
    PowerOn(usize),
    /// The controller gives a dead machine up.
    GiveUp(usize),
    /// The appliance comes back with a node image that carries another etcd.
    NewImage,
}

fn event(count: usize) -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::Tick),
        1 => Just(Event::InterruptedTick),
        1 => (0..count).prop_map(Event::PowerOff),
        1 => (0..count).prop_map(Event::PowerOn),
        1 => (0..count).prop_map(Event::GiveUp),
        1 => Just(Event::NewImage),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, usize, Vec<Event>)> {
    (1usize..=6, prop_oneof![Just(1usize), Just(3), Just(5)])
        .prop_flat_map(|(count, cp)| (Just(count), Just(cp), proptest::collection::vec(event(count), 0..120)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random joins, deaths, reboots and restarts: no change loses quorum, never two learners
    /// (both asserted inside `change`); once every machine is up and stays up, the cluster
    /// settles with an odd number of healthy voters, as many as the rack allows - unless a
    /// majority lost its data, when it waits and changes nothing.
    #[test]
    fn membership_stays_safe_and_settles_odd((count, cp, events) in scenario()) {
        let mut w = World::new(count, cp);
        for e in events {
            match e {
                Event::Tick => { w.tick(false); }
                Event::InterruptedTick => { w.tick(true); }
                Event::NewImage => w.new_image(),
                Event::PowerOff(i) => { w.machines[i].powered = false; w.powered_off_since_tick = true; }
                Event::PowerOn(i) => if !w.machines[i].powered {
                    w.machines[i].powered = true;
                    w.machines[i].boot += 1;
                    w.given_up.remove(&i);
                },
                Event::GiveUp(i) => if !w.machines[i].powered {
                    w.given_up.insert(i);
                },
            }
        }
        for m in &mut w.machines {
            if !m.powered {
                m.powered = true;
                m.boot += 1;
            }
        }
        w.given_up.clear();
        let majority_lost = w.voters() > 0 && !w.has_quorum();
        let changes_before = w.changes;
        let last = w.run(400);
        if majority_lost && w.voters() > 0 && !w.has_quorum() {
            prop_assert!(matches!(last, Step::Wait(_)), "{last:?}");
            prop_assert_eq!(w.changes, changes_before, "no change without quorum");
        } else {
            prop_assert_eq!(&last, &Step::Settled);
            let voters = w.voters();
            prop_assert!(voters % 2 == 1, "settled with {} voters", voters);
            prop_assert_eq!(w.healthy_voters(), voters);
            prop_assert!(w.assembly.members.values().all(|p| p.etcd.as_ref() == Some(&w.image)), "settled on an old etcd");
            prop_assert!(w.members.iter().all(|m| m.version.as_ref() == Some(&w.image.sha256)), "a member runs an old etcd");
            let pool = w.machines.len() - w.assembly.passed_over.iter().filter(|(id, boot)| w.machines.iter().any(|m| m.id == **id && format!("boot{}", m.boot) == **boot)).count();
            prop_assert_eq!(voters, odd_floor(cp.min(pool).max(1)));
        }
    }
}

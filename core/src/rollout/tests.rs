//! The rollout against a model of a rack: machines that reboot into the generation their boot
//! script names, an etcd leader, generations whose etcd never starts; examples, then random
//! power losses, appliance restarts (the record through its serialized form, sometimes losing the
//! step of the tick it died in), time jumps past the timeout, pauses and cancels.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::generations::Generation;

const SETTINGS: RolloutSettings = RolloutSettings { timeout_secs: 120, workers_at_once: 1 };
/// Seconds per simulated tick.
const TICK: u64 = 5;

/// One simulated machine.
#[derive(Debug, Clone)]
struct Machine {
    mac: MacAddr,
    control_plane: bool,
    data_on_disk: bool,
    /// Up and heartbeating.
    up: bool,
    boot: u32,
    generation: u64,
    /// Ticks until it is up again after a reboot or a power loss.
    down_for: u32,
    /// Hung in a boot that never comes up, until it is power-cycled.
    hung: bool,
    /// When it last heartbeated.
    heard_at: u64,
}

/// A rack of machines, the appliance's record, and etcd's leader.
#[derive(Debug, Clone)]
struct Sim {
    machines: Vec<Machine>,
    generations: Generations,
    /// Generations whose etcd and services never start.
    bad: BTreeSet<u64>,
    leader: Option<usize>,
    now: u64,
    settings: RolloutSettings,
    /// Every step taken, for the checks and for failures' messages.
    steps: Vec<RolloutStep>,
    /// A bad generation's etcd crash-loops on every machine (else on every other one).
    crash_loops: bool,
    /// Failures recorded since the rollout last started (or was started again): on the way to
    /// the target, and on the way back. A step lost with the appliance never happened.
    failures: Failures,
    /// A failure on the way to the target was ever recorded: the target is never tried again.
    target_failed: bool,
    /// Every machine has a BMC.
    bmcs: bool,
    /// A generation whose boot hangs before its agent starts (the machine stays silent).
    hangs: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    forward: usize,
    back: usize,
}

fn generation(sequence: u64) -> Generation {
    Generation {
        sequence,
        version: format!("0.{sequence}.0"),
        kernel: "6.12".into(),
        agent: "a".into(),
        etcd: "3.5.16".into(),
        k3s: None,
        key_id: "k".into(),
        installed_at: 1,
        failed: false,
    }
}

impl Sim {
    /// `control_plane` members and `workers`, all on the shipped generation, generation 1
    /// installed (and bad when `bad`).
    fn new(control_plane: usize, workers: usize, bad: bool) -> Sim {
        let machines = (0..control_plane + workers)
            .map(|i| Machine {
                mac: MacAddr([0x52, 0x54, 0, 0, 0, i as u8 + 1]),
                control_plane: i < control_plane,
                data_on_disk: true,
                up: true,
                boot: 1,
                generation: 0,
                down_for: 0,
                hung: false,
                heard_at: 1_000,
            })
            .collect();
        let (generations, _) = Generations::default().with_installed(generation(1));
        Sim {
            machines,
            generations,
            bad: if bad { BTreeSet::from([1]) } else { BTreeSet::new() },
            leader: Some(0),
            now: 1_000,
            settings: SETTINGS,
            steps: vec![],
            crash_loops: false,
            failures: Failures::default(),
            target_failed: false,
            bmcs: false,
            hangs: None,
        }
    }

    fn id(i: usize) -> String {
        format!("m{}", i + 1)
    }

    /// Its etcd answers: up, on a generation whose etcd starts.
    fn healthy(&self, i: usize) -> bool {
        let m = &self.machines[i];
        m.up && !self.bad.contains(&m.generation)
    }

    fn voters(&self) -> usize {
        self.machines.iter().filter(|m| m.control_plane).count()
    }

    fn has_quorum(&self) -> bool {
        let healthy = (0..self.machines.len()).filter(|i| self.machines[*i].control_plane && self.healthy(*i)).count();
        healthy >= quorum(self.voters())
    }

    fn view(&self) -> RackView {
        let quorum = self.has_quorum();
        let machines = self
            .machines
            .iter()
            .enumerate()
            .map(|(i, m)| MachineView {
                mac: m.mac,
                id: Sim::id(i),
                alive: m.up,
                boot: format!("{}-boot{}", Sim::id(i), m.boot),
                generation: m.up.then_some(m.generation),
                control_plane: m.control_plane,
                member: m.control_plane.then(|| MemberView {
                    id: i as u64 + 100,
                    voter: true,
                    healthy: self.healthy(i),
                    leader: self.leader == Some(i) && quorum,
                    lag: (self.healthy(i) && quorum).then_some(0),
                }),
                services_ready: self.healthy(i),
                quorum_read: self.healthy(i) && quorum,
                data_on_disk: m.data_on_disk,
                kexec: i % 2 == 0,
                last_error: (!self.healthy(i) && m.up).then(|| "etcd exited with status 1".to_string()),
                bmc: self.bmcs,
                heard_at: m.heard_at,
                // A bad generation's etcd crash-loops on half the machines; on the others it
                // just never answers (the timeout catches it).
                crash_loop: (!self.healthy(i) && m.up && (self.crash_loops || i % 2 == 1)).then(|| "etcd".to_string()),
            })
            .collect();
        RackView { machines, learner_pending: false, settled: true }
    }

    /// Time passes: machines come back (on the generation their boot script names now), agents
    /// act on the reboots asked of their boot, etcd elects a leader.
    fn world_turns(&mut self) {
        self.now += TICK;
        for i in 0..self.machines.len() {
            let served = self.generations.served(self.machines[i].mac);
            let m = &mut self.machines[i];
            if !m.up && !m.hung {
                m.down_for = m.down_for.saturating_sub(1);
                if m.down_for == 0 {
                    m.boot += 1;
                    m.generation = served;
                    m.hung = self.hangs == Some(served);
                    m.up = !m.hung;
                }
            }
            if m.up {
                m.heard_at = self.now;
            }
        }
        for (mac, _, boot) in reboots(&self.generations) {
            let i = self.machines.iter().position(|m| m.mac == mac).expect("in the rack");
            if self.machines[i].up && format!("{}-boot{}", Sim::id(i), self.machines[i].boot) == boot {
                self.machines[i].up = false;
                self.machines[i].down_for = 2;
            }
        }
        if !self.leader.is_some_and(|l| self.healthy(l)) {
            self.leader = None;
            if self.has_quorum() {
                self.leader = (0..self.machines.len()).find(|i| self.machines[*i].control_plane && self.healthy(*i));
            }
        }
    }

    /// One controller tick: ask, check the step against the invariants, carry it out, record it.
    /// `lost` models an appliance killed after the step's effect and before its record.
    fn tick(&mut self, lost: bool) {
        let view = self.view();
        let step = next(&self.generations, &view, &self.settings, self.now);
        self.check(&view, &step);
        if let RolloutStep::MoveLeader { to, .. } = &step {
            let to = (*to - 100) as usize;
            if self.healthy(to) {
                self.leader = Some(to);
            }
        }
        if let RolloutStep::PowerCycle { mac, .. } = &step {
            let m = self.machines.iter_mut().find(|m| m.mac == *mac).expect("in the rack");
            (m.up, m.hung, m.down_for) = (false, false, 2);
        }
        if !lost {
            self.count(&step);
            apply(&mut self.generations, &step, self.now);
        }
        self.steps.push(step);
        self.world_turns();
    }

    /// Counts a failure about to be recorded, by the way its machine was going.
    fn count(&mut self, step: &RolloutStep) {
        match step {
            RolloutStep::Start { .. } => self.failures = Failures::default(),
            RolloutStep::Fail { mac, .. } => {
                let rollout = self.rollout();
                if rollout.in_flight.iter().any(|f| f.mac == *mac && f.to == rollout.target) {
                    self.failures.forward += 1;
                    self.target_failed = true;
                } else {
                    self.failures.back += 1;
                }
            }
            _ => {}
        }
    }

    /// An appliance restart: the record as the store gives it back.
    fn restart(&mut self) {
        let json = serde_json::to_string(&self.generations).expect("serializes");
        self.generations = serde_json::from_str(&json).expect("reads back");
    }

    fn check(&self, view: &RackView, step: &RolloutStep) {
        match step {
            RolloutStep::Reboot { mac, to, .. } => {
                let i = self.machines.iter().position(|m| m.mac == *mac).unwrap();
                let rollout = self.generations.rollout.as_ref().unwrap();
                if *to == rollout.target {
                    assert!(!self.target_failed, "a failed generation is never tried again: {:?}", self.last_steps());
                    assert!(
                        !self.generations.installed.iter().any(|g| g.sequence == *to && g.failed),
                        "never a failed generation"
                    );
                }
                if self.machines[i].control_plane {
                    let others_down = (0..self.machines.len())
                        .filter(|j| *j != i && self.machines[*j].control_plane && !self.healthy(*j))
                        .count();
                    let going_back = *to == rollout.from;
                    if !going_back {
                        assert_eq!(others_down, 0, "a member goes only while every other is healthy");
                        let voters = self.voters();
                        assert!(voters == 1 || voters > quorum(voters), "quorum kept without it");
                    }
                    let flying_members = rollout
                        .in_flight
                        .iter()
                        .filter(|f| view.machine(f.mac).is_some_and(|m| m.control_plane))
                        .count();
                    assert!(flying_members <= 1, "one control-plane machine at a time");
                }
            }
            RolloutStep::Begin { to, .. } => {
                let rollout = self.generations.rollout.as_ref().unwrap();
                assert!(
                    *to == rollout.from || !self.generations.installed.iter().any(|g| g.sequence == *to && g.failed),
                    "never towards a failed generation"
                );
            }
            _ => {}
        }
        // A machine's boot script names the rack's current generation or the rollout's target.
        for m in &self.machines {
            let served = self.generations.served(m.mac);
            let allowed: BTreeSet<u64> = self
                .generations
                .rollout
                .iter()
                .flat_map(|r| [r.from, r.target])
                .chain([self.generations.current])
                .collect();
            assert!(allowed.contains(&served), "{} served {served}, outside {allowed:?}", m.mac);
        }
    }

    /// Ticks until nothing moves any more.
    fn run(&mut self, ticks: usize) {
        for _ in 0..ticks {
            if self.generations.rollout.as_ref().is_some_and(|r| !r.active()) {
                return;
            }
            self.tick(false);
        }
    }

    fn rollout(&self) -> &Rollout {
        self.generations.rollout.as_ref().expect("a rollout started")
    }
}

#[test]
fn three_members_and_a_worker_move_one_at_a_time_and_the_target_becomes_current() {
    let mut sim = Sim::new(3, 1, false);
    sim.run(200);
    assert_eq!(sim.rollout().state, RolloutState::Done, "{:#?}", sim.last_steps());
    assert!(sim.machines.iter().all(|m| m.generation == 1 && m.up));
    assert_eq!((sim.generations.current, sim.generations.previous), (1, Some(0)));
    // Members first, in choice order, then the worker.
    let order: Vec<&str> = sim
        .steps
        .iter()
        .filter_map(|s| match s {
            RolloutStep::Begin { machine, .. } => Some(machine.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["m1", "m2", "m3", "m4"]);
    // m1 led: its leadership moved before it rebooted.
    let moved = sim.steps.iter().position(|s| matches!(s, RolloutStep::MoveLeader { machine, .. } if machine == "m1"));
    let rebooted = sim.steps.iter().position(|s| matches!(s, RolloutStep::Reboot { machine, .. } if machine == "m1"));
    assert!(moved.unwrap() < rebooted.unwrap());
    // After the rollout everyone is served the new current generation by default.
    assert!(sim.generations.machines.values().all(|m| m.desired.is_none() && m.confirmed == Some(1)));
}

#[test]
fn a_generation_whose_etcd_never_starts_fails_on_the_first_member_which_goes_back_and_is_never_retried() {
    let mut sim = Sim::new(3, 0, true);
    sim.run(300);
    let rollout = sim.rollout().clone();
    assert_eq!(rollout.state, RolloutState::Failed);
    let failure = rollout.failure.expect("a failure");
    assert_eq!(failure.machine, "m1");
    assert!(failure.back, "m1 is back on its previous generation: {:#?}", sim.last_steps());
    assert_eq!(failure.gate, Gate::Voter, "the gate that held it is named");
    assert_eq!(failure.last_error.as_deref(), Some("etcd exited with status 1"));
    assert!(sim.machines.iter().all(|m| m.generation == 0 && m.up), "the others were never touched");
    assert!(sim.generations.get(1).unwrap().failed);
    assert_eq!(sim.generations.current, 0);
    // Nothing starts again by itself, even after a restart, nor when asked.
    sim.restart();
    let view = sim.view();
    assert!(matches!(next(&sim.generations, &view, &SETTINGS, sim.now), RolloutStep::Idle(_)));
    let refused = command(&mut sim.generations, Command::Resume, sim.now).unwrap_err();
    assert_eq!(refused, CommandError::GenerationFailed { target: 1, machine: "m1".into() });
    assert!(refused.to_string().contains("install a newer bundle"));
}

/// A machine that hangs booting the new generation never hears that it should go back: with a
/// BMC it is power-cycled, once, and boots the generation it came from; without one it stays
/// silent and the rollout stops for an operator.
#[test]
fn a_machine_hung_in_a_failed_generation_is_power_cycled_back_once_through_its_bmc() {
    let mut sim = Sim::new(3, 0, false);
    (sim.bmcs, sim.hangs) = (true, Some(1));
    sim.run(300);
    let rollout = sim.rollout().clone();
    assert_eq!(rollout.state, RolloutState::Failed);
    let failure = rollout.failure.expect("a failure");
    assert_eq!((failure.machine.as_str(), failure.gate), ("m1", Gate::Booted));
    assert!(failure.back, "m1 is back on its previous generation: {:#?}", sim.last_steps());
    assert!(sim.machines.iter().all(|m| m.generation == 0 && m.up), "{:#?}", sim.machines);
    let cycles: Vec<&RolloutStep> = sim.steps.iter().filter(|s| matches!(s, RolloutStep::PowerCycle { .. })).collect();
    assert_eq!(cycles, [&RolloutStep::PowerCycle { mac: sim.machines[0].mac, machine: "m1".into(), to: 0 }]);

    let mut sim = Sim::new(3, 0, false);
    sim.hangs = Some(1);
    sim.run(300);
    assert!(!sim.steps.iter().any(|s| matches!(s, RolloutStep::PowerCycle { .. })), "no BMC, no cycle");
    assert!(!sim.machines[0].up, "still hung");
    assert!(!sim.rollout().failure.as_ref().expect("a failure").back, "{:#?}", sim.last_steps());
}

#[test]
fn a_crash_looping_service_fails_the_generation_at_once_without_waiting_for_the_timeout() {
    let mut sim = Sim::new(3, 0, true);
    sim.crash_loops = true;
    let started = sim.now;
    sim.run(300);
    let failure = sim.rollout().failure.clone().expect("failed");
    assert_eq!((failure.machine.as_str(), failure.gate), ("m1", Gate::Services));
    assert!(failure.detail.contains("keeps exiting"), "{failure:?}");
    assert!(failure.at - started < SETTINGS.timeout_secs, "failed before the timeout: {failure:?}");
    assert!(failure.back);
}

#[test]
fn two_members_are_refused_and_a_single_member_needs_its_data_on_a_disk() {
    let mut two = Sim::new(2, 0, false);
    two.run(20);
    let held = next(&two.generations, &two.view(), &SETTINGS, two.now);
    assert!(
        matches!(&held, RolloutStep::Wait { gate: Some(Gate::Quorum), message } if message.contains("two-member")),
        "{held:?}"
    );
    assert!(two.machines.iter().all(|m| m.generation == 0));

    let mut single = Sim::new(1, 0, false);
    single.machines[0].data_on_disk = false;
    single.run(20);
    let held = next(&single.generations, &single.view(), &SETTINGS, single.now);
    assert!(
        matches!(&held, RolloutStep::Wait { gate: Some(Gate::Quorum), message } if message.contains("data disk")),
        "{held:?}"
    );

    let mut single = Sim::new(1, 0, false);
    let announced = next(&single.generations, &single.view(), &SETTINGS, single.now);
    assert!(
        matches!(&announced, RolloutStep::Start { announce: Some(a), .. } if a.contains("unavailable")),
        "{announced:?}"
    );
    single.run(100);
    assert_eq!(single.rollout().state, RolloutState::Done);
}

#[test]
fn pause_holds_before_the_next_machine_and_cancel_sends_the_moved_ones_back_last_first() {
    let mut sim = Sim::new(3, 0, false);
    // Until m1 is confirmed.
    while sim.rollout_done_count() < 1 {
        sim.tick(false);
    }
    let paused = command(&mut sim.generations, Command::Pause, sim.now).unwrap();
    assert!(paused.message.contains("paused"), "{paused:?}");
    assert_eq!(command(&mut sim.generations, Command::Pause, sim.now), Err(CommandError::NothingToPause));
    for _ in 0..20 {
        sim.tick(false);
    }
    assert_eq!(sim.rollout_done_count(), 1, "nothing moved while paused");
    let held = next(&sim.generations, &sim.view(), &SETTINGS, sim.now);
    assert!(matches!(&held, RolloutStep::Wait { message, .. } if message.contains("paused")));
    command(&mut sim.generations, Command::Cancel, sim.now).unwrap();
    sim.run(200);
    assert_eq!(sim.rollout().state, RolloutState::Cancelled);
    assert!(sim.machines.iter().all(|m| m.generation == 0 && m.up));
    assert_eq!(sim.generations.current, 0);
    assert!(!sim.generations.get(1).unwrap().failed, "a cancelled generation did not fail");
    let view = sim.view();
    assert!(matches!(next(&sim.generations, &view, &SETTINGS, sim.now), RolloutStep::Idle(m) if m.contains("resume")));
    assert_eq!(command(&mut sim.generations, Command::Cancel, sim.now), Err(CommandError::NothingToCancel));
    // Resumed, it starts again from where the rack is, and goes through.
    command(&mut sim.generations, Command::Resume, sim.now).unwrap();
    sim.run(300);
    assert_eq!(sim.rollout().state, RolloutState::Done);
    assert!(sim.machines.iter().all(|m| m.generation == 1));
}

impl Sim {
    fn last_steps(&self) -> &[RolloutStep] {
        &self.steps[self.steps.len().saturating_sub(12)..]
    }

    fn rollout_done_count(&self) -> usize {
        self.generations.rollout.as_ref().map_or(0, |r| r.done.len())
    }
}

/// Something that happens to the rack or the appliance at a tick.
#[derive(Debug, Clone)]
enum Fault {
    /// Machine `i` loses power for `ticks`.
    PowerLoss(usize, u32),
    /// The appliance restarts; with `lost`, the tick's step was carried out but not recorded.
    Restart {
        lost: bool,
    },
    /// The clock jumps (a slow machine, a suspended appliance).
    TimeJump(u64),
    Pause,
    Resume,
    Cancel,
}

fn fault(machines: usize) -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0..machines, 1u32..40).prop_map(|(i, t)| Fault::PowerLoss(i, t)),
        any::<bool>().prop_map(|lost| Fault::Restart { lost }),
        (1u64..300).prop_map(Fault::TimeJump),
        Just(Fault::Pause),
        Just(Fault::Resume),
        Just(Fault::Cancel),
    ]
}

fn rack() -> impl Strategy<Value = (usize, usize, bool, usize, Vec<(usize, Fault)>)> {
    (prop_oneof![Just(1usize), Just(3), Just(5)], 0usize..3, any::<bool>(), 1usize..3).prop_flat_map(
        |(cp, workers, bad, at_once)| {
            let faults = proptest::collection::vec((0usize..120, fault(cp + workers)), 0..8);
            (Just(cp), Just(workers), Just(bad), Just(at_once), faults)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Whatever happens, the checks of every step hold, and once the faults stop the rollout
    /// ends: every machine on the new generation, or stopped with the failed machine back on the
    /// one it came from (or cancelled with everyone back), never a failed generation retried.
    #[test]
    fn a_rollout_never_costs_quorum_never_retries_and_always_ends((cp, workers, bad, at_once, faults) in rack()) {
        let mut sim = Sim::new(cp, workers, bad);
        sim.settings.workers_at_once = at_once;
        let by_tick: BTreeMap<usize, Vec<Fault>> = faults.into_iter().fold(BTreeMap::new(), |mut m, (t, f)| {
            m.entry(t).or_insert_with(Vec::new).push(f);
            m
        });
        // Time jumps and long power losses may fail a good generation; nothing else may.
        let mut disrupted = false;
        let mut cancelled = false;
        for t in 0..120 {
            let mut lost = false;
            for f in by_tick.get(&t).into_iter().flatten() {
                match f {
                    Fault::PowerLoss(i, ticks) => {
                        // Long enough, with the reboot, to reach the timeout.
                        disrupted |= u64::from(*ticks) * TICK >= SETTINGS.timeout_secs / 2;
                        sim.machines[*i].up = false;
                        sim.machines[*i].down_for = *ticks;
                    }
                    Fault::Restart { lost: l } => {
                        sim.restart();
                        lost = *l;
                    }
                    Fault::TimeJump(secs) => {
                        sim.now += secs;
                        disrupted = true;
                    }
                    Fault::Pause | Fault::Resume | Fault::Cancel => {
                        let asked = match f {
                            Fault::Pause => Command::Pause,
                            Fault::Resume => Command::Resume,
                            _ => Command::Cancel,
                        };
                        let was_active = sim.generations.rollout.as_ref().is_some_and(Rollout::active);
                        // Refused commands say why and change nothing.
                        let before = sim.generations.clone();
                        match command(&mut sim.generations, asked, sim.now) {
                            Ok(_) if asked == Command::Cancel => cancelled |= was_active,
                            // A stopped rollout started again: its failures are behind it.
                            Ok(_) if asked == Command::Resume && !was_active => {
                                prop_assert!(!sim.target_failed, "a failed generation is never resumed");
                                sim.failures = Failures::default();
                            }
                            Ok(_) => {}
                            Err(_) => prop_assert_eq!(&sim.generations, &before),
                        }
                    }
                }
            }
            sim.tick(lost);
        }
        // The operator resumes a paused rollout; then nothing else happens.
        if sim.generations.rollout.as_ref().is_some_and(|r| r.state == RolloutState::Paused) {
            command(&mut sim.generations, Command::Resume, sim.now).unwrap();
        }
        sim.run(600);
        // Machines that lost power after the end come back (on the generation their script names).
        for _ in 0..60 {
            sim.tick(false);
        }
        let rollout = sim.rollout().clone();
        prop_assert!(!rollout.active(), "the rollout ends: {:?}", rollout);
        match rollout.state {
            RolloutState::Done => {
                prop_assert!(!bad);
                prop_assert!(sim.machines.iter().all(|m| m.up && m.generation == 1));
                prop_assert_eq!(sim.generations.current, 1);
            }
            RolloutState::Cancelled => {
                prop_assert!(sim.machines.iter().all(|m| m.up && m.generation == 0));
                prop_assert_eq!(sim.generations.current, 0);
            }
            RolloutState::Failed => {
                let failure = rollout.failure.clone().expect("a failed rollout says why");
                prop_assert!(bad || disrupted, "a good generation fails only when disrupted: {:?}", failure);
                let i = sim.machines.iter().position(|m| format!("m{}", m.mac.0[5]) == failure.machine).unwrap();
                if failure.back_failed {
                    prop_assert!(disrupted, "going back fails only when disrupted");
                } else {
                    prop_assert!(failure.back);
                    prop_assert_eq!(sim.machines[i].generation, 0, "the failed machine is back where it came from");
                    prop_assert!(sim.machines[i].up);
                }
                // Failing on the way back from a cancel does not fail the generation.
                prop_assert!(cancelled || sim.generations.get(1).is_some_and(|g| g.failed));
                // One failure forward; on the way back, at most one per machine moving at once.
                let Failures { forward, back } = sim.failures;
                prop_assert!(forward <= 1 && back <= at_once, "{} forward, {} back", forward, back);
            }
            other => prop_assert!(false, "ended {other}"),
        }
    }
}

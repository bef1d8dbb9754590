//! The node rollout: moves every machine from the rack's current node generation to the target
//! one (the newest installed, [`Generations::target`]), one machine at a time, and never leaves a
//! machine on a generation that failed. No I/O and no clock: the controller observes the rack
//! ([`RackView`]), asks [`next`] for one step, carries it out (an etcd leadership move, a reboot
//! request in the machine's desired state, nothing), records it with [`apply`], and asks again.
//! Everything lives in the store's [`Generations`] record, so an appliance restarted between any
//! two steps continues where it was, without repeating, skipping or mixing a machine.
//!
//! The rules, in the order they are checked:
//! - A rollout starts once the cluster is settled and a target exists; it is one record,
//!   [`Rollout`], with the machines already done and the ones in flight.
//! - A machine in flight goes through phases: the etcd leader moves off it, it is told to boot
//!   the target generation (its boot script names that generation from then on, so a machine that
//!   reboots by itself gets the same), it comes back on that generation in a new boot, then its
//!   gates hold: a healthy voter in sync, a quorum read through it, its services running. Then it
//!   is confirmed and the next one goes.
//! - Control-plane machines (those with an etcd member) go first, one at a time, each only while
//!   every member is healthy and in sync, no learner is pending and the voters keep a quorum
//!   without it (a single member restarts alone only with its data on a disk; two members are
//!   refused). Workers follow, `workers_at_once` at a time.
//! - A machine that does not pass a gate within the timeout fails it: the generation is marked
//!   failed (never tried again by itself), the rollout stops, and that machine is sent back to the
//!   generation it came from, through the same gates. A machine that fails its way back stops
//!   everything for an operator: nothing is retried blindly.
//! - Pause stops before the next machine (the one in flight finishes its gates); cancel also
//!   sends the machines already moved back, last first.

use std::collections::BTreeSet;

use oasis_proto::MacAddr;
use serde::{Deserialize, Serialize};

use crate::assembly::planner::quorum;
use crate::generations::Generations;
use crate::registry::Happening;

/// A member further behind its leader than this many raft entries is not in sync.
pub const MAX_LAG: u64 = 64;

/// What a rollout is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    Running,
    /// The operator paused it: no machine starts; the one in flight finishes.
    Paused,
    /// The operator cancelled it: the machines already moved go back, last first.
    Cancelling,
    /// Every machine runs the target; it is the rack's current generation.
    Done,
    /// A machine failed a gate; the rollout stopped and that machine went back.
    Failed,
    /// Cancelled, and every machine is back on the generation it came from.
    Cancelled,
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Cancelling => "cancelling",
            RolloutState::Done => "done",
            RolloutState::Failed => "failed",
            RolloutState::Cancelled => "cancelled",
        })
    }
}

/// A check a machine must pass before it goes (the first four) or after it came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// Every etcd member answers, and the machine is heard from.
    MembersHealthy,
    /// No learner is being added.
    NoLearner,
    /// The voters keep a quorum with this member down.
    Quorum,
    /// etcd's leader moved off the machine.
    Leader,
    /// The machine came back in a new boot on the generation it was sent to.
    Booted,
    /// Its etcd member is a healthy voter.
    Voter,
    /// Its etcd member is in sync with the leader.
    InSync,
    /// A linearizable read through its member succeeds.
    QuorumRead,
    /// Its agent reports every service it is told running its spec.
    Services,
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Gate::MembersHealthy => "every member healthy",
            Gate::NoLearner => "no learner pending",
            Gate::Quorum => "quorum without it",
            Gate::Leader => "leadership moved off it",
            Gate::Booted => "back on its new generation",
            Gate::Voter => "a healthy voter",
            Gate::InSync => "in sync with the leader",
            Gate::QuorumRead => "a quorum read through it",
            Gate::Services => "its services running",
        })
    }
}

/// Where a machine in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// etcd's leadership is being moved off it.
    MovingLeader,
    /// Told to boot its new generation; not back yet.
    Rebooting,
    /// Back on its new generation; its gates are checked.
    Checking,
}

/// One machine being moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InFlight {
    pub mac: MacAddr,
    pub machine: String,
    /// The generation it goes to: the target, or the one it came from when going back.
    pub to: u64,
    pub phase: Phase,
    /// When it was told to reboot (before: when it started): from then, its gates must hold
    /// within the timeout.
    pub since: u64,
    /// The boot it was in when it started, then when it was told to reboot (its WireGuard key);
    /// the reboot request is addressed to that boot only.
    pub boot: String,
    /// Power-cycled through its BMC because it never heard its reboot request (once per flight).
    #[serde(default)]
    pub power_cycled: bool,
}

/// Why a rollout stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failure {
    pub machine: String,
    pub gate: Gate,
    pub detail: String,
    /// The last error the machine's agent reported.
    #[serde(default)]
    pub last_error: Option<String>,
    pub at: u64,
    /// Whether the machine is back, healthy, on the generation it came from; `false` while it
    /// is on its way, and for good when going back failed too (an operator must look).
    #[serde(default)]
    pub back: bool,
    /// Going back failed too.
    #[serde(default)]
    pub back_failed: bool,
}

/// The rollout record, kept in [`Generations::rollout`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    pub target: u64,
    /// The rack's current generation when it started: where machines go back to.
    pub from: u64,
    pub started_at: u64,
    pub state: RolloutState,
    /// Machines confirmed on the target.
    #[serde(default)]
    pub done: BTreeSet<MacAddr>,
    #[serde(default)]
    pub in_flight: Vec<InFlight>,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(default)]
    pub finished_at: Option<u64>,
}

impl Rollout {
    /// Whether it still moves machines: running, paused or cancelling, or a machine still on its
    /// way back.
    pub fn active(&self) -> bool {
        matches!(self.state, RolloutState::Running | RolloutState::Paused | RolloutState::Cancelling)
            || !self.in_flight.is_empty()
    }
}

/// The settings the rollout needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutSettings {
    /// How long a machine has, from the moment it starts, to pass every gate.
    pub timeout_secs: u64,
    /// Workers moved at the same time (control-plane machines always go one at a time).
    pub workers_at_once: usize,
}

/// One etcd member as observed this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: u64,
    pub voter: bool,
    /// Its own status endpoint answered this tick.
    pub healthy: bool,
    pub leader: bool,
    /// Raft entries behind the leader (`None`: unknown, e.g. no leader answered).
    pub lag: Option<u64>,
}

/// One accepted machine as observed this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub mac: MacAddr,
    pub id: String,
    pub alive: bool,
    /// Its current boot (WireGuard key).
    pub boot: String,
    /// The generation its agent reports running in this boot.
    pub generation: Option<u64>,
    /// Whether it holds an etcd member (control plane), and that member as observed.
    pub control_plane: bool,
    pub member: Option<MemberView>,
    /// Its agent reports every service it is told running its spec.
    pub services_ready: bool,
    /// A linearizable read through its member succeeded this tick.
    pub quorum_read: bool,
    /// Its etcd data is on a disk (survives a reboot).
    pub data_on_disk: bool,
    /// kexec is allowed on it.
    pub kexec: bool,
    pub last_error: Option<String>,
    /// It has a BMC the appliance can power-cycle it through.
    pub bmc: bool,
    /// When it was last heard from (a heartbeat or a registration; Unix seconds).
    pub heard_at: u64,
    /// A service of its current boot that keeps exiting ([`CRASH_LOOP_RESTARTS`] times or
    /// more), with what it said: its generation fails at once, without waiting for the timeout.
    pub crash_loop: Option<String>,
}

/// Restarts of a service in one boot after which it is crash-looping.
pub const CRASH_LOOP_RESTARTS: u32 = 3;

/// The rack as observed this tick, machines in choice order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackView {
    pub machines: Vec<MachineView>,
    /// etcd has a learner.
    pub learner_pending: bool,
    /// Assembly has nothing to do.
    pub settled: bool,
}

impl RackView {
    fn machine(&self, mac: MacAddr) -> Option<&MachineView> {
        self.machines.iter().find(|m| m.mac == mac)
    }

    fn voters(&self) -> impl Iterator<Item = &MemberView> {
        self.machines.iter().filter_map(|m| m.member.as_ref()).filter(|m| m.voter)
    }
}

/// The one thing to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutStep {
    /// No rollout to run or move; says why.
    Idle(String),
    /// Held by a gate (or the operator); says which and why.
    Wait { gate: Option<Gate>, message: String },
    /// Start rolling the rack from `from` to `target`; `announce` when it costs downtime.
    Start { target: u64, from: u64, announce: Option<String> },
    /// Put `mac` in flight towards `to`.
    Begin { mac: MacAddr, machine: String, to: u64, boot: String },
    /// Ask etcd's leader (member `from`, on `machine`) to hand leadership to member `to`.
    MoveLeader { machine: String, from: u64, to: u64 },
    /// Tell `mac`'s current boot (`boot`) to boot generation `to`; its boot script names `to`
    /// from now on.
    Reboot { mac: MacAddr, machine: String, to: u64, kexec: bool, boot: String },
    /// `mac` is back on its new generation: check its gates.
    Rebooted { mac: MacAddr, machine: String },
    /// `mac` passed every gate on its new generation.
    Confirm { mac: MacAddr, machine: String },
    /// `mac` never heard its request to boot generation `to` (silent since before it was asked):
    /// power-cycle it through its BMC into a network boot, which boots what its boot script
    /// names, `to`.
    PowerCycle { mac: MacAddr, machine: String, to: u64 },
    /// `mac` did not pass `gate` in time; `boot` is the boot it is in now (the one told to go
    /// back when it was going forward).
    Fail { mac: MacAddr, gate: Gate, detail: String, last_error: Option<String>, boot: String },
    /// Every machine runs the target: it becomes the rack's current generation.
    Finish,
    /// Every machine moved back after a cancel.
    Cancelled,
}

impl std::fmt::Display for RolloutStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutStep::Idle(why) => f.write_str(why),
            RolloutStep::Wait { message, .. } => write!(f, "waiting: {message}"),
            RolloutStep::Start { target, from, .. } => {
                write!(f, "starting the rollout from generation {from} to {target}")
            }
            RolloutStep::Begin { machine, to, .. } => write!(f, "moving {machine} to generation {to}"),
            RolloutStep::MoveLeader { machine, .. } => write!(f, "moving etcd's leadership off {machine}"),
            RolloutStep::Reboot { machine, to, kexec, .. } => {
                write!(f, "{machine} boots generation {to} ({})", if *kexec { "kexec" } else { "reboot" })
            }
            RolloutStep::Rebooted { machine, .. } => write!(f, "{machine} is back: checking its gates"),
            RolloutStep::PowerCycle { machine, to, .. } => {
                write!(f, "{machine} does not answer: power-cycled through its BMC to boot generation {to}")
            }
            RolloutStep::Confirm { machine, .. } => write!(f, "{machine} passed its gates"),
            RolloutStep::Fail { gate, detail, .. } => write!(f, "gate '{gate}' failed: {detail}"),
            RolloutStep::Finish => f.write_str("every machine runs the new generation"),
            RolloutStep::Cancelled => f.write_str("cancelled: every machine is back"),
        }
    }
}

fn wait(gate: Gate, message: String) -> RolloutStep {
    RolloutStep::Wait { gate: Some(gate), message }
}

/// The next step of the rollout in `generations`, or of a new one.
pub fn next(generations: &Generations, rack: &RackView, settings: &RolloutSettings, now: u64) -> RolloutStep {
    let Some(rollout) = generations.rollout.as_ref().filter(|r| r.active()) else {
        return start(generations, rack);
    };
    // The first machine in flight that has something to do goes; else the first one's gate is
    // what holds the rollout.
    let mut waiting = None;
    for f in &rollout.in_flight {
        match in_flight(f, rollout, rack, settings, now) {
            step @ RolloutStep::Wait { .. } => {
                waiting.get_or_insert(step);
            }
            step => return step,
        }
    }
    // Control-plane machines go alone; workers up to `workers_at_once` together.
    let workers_only = rollout.in_flight.iter().all(|f| rack.machine(f.mac).is_some_and(|m| !m.control_plane));
    let room =
        rollout.in_flight.is_empty() || (workers_only && rollout.in_flight.len() < settings.workers_at_once.max(1));
    let step = match rollout.state {
        _ if !room => None,
        RolloutState::Running => Some(forward(rollout, rack)),
        RolloutState::Cancelling => Some(back(rollout, rack)),
        RolloutState::Paused => Some(RolloutStep::Wait { gate: None, message: "paused by the operator".into() }),
        RolloutState::Done | RolloutState::Failed | RolloutState::Cancelled => None,
    };
    match (step, waiting) {
        (Some(step @ RolloutStep::Begin { .. }), _) | (Some(step), None) | (None, Some(step)) => step,
        (Some(_), Some(waiting)) => waiting,
        (None, None) => RolloutStep::Idle(format!("the rollout to generation {} is {}", rollout.target, rollout.state)),
    }
}

/// No rollout is active: start one when there is a target.
fn start(generations: &Generations, rack: &RackView) -> RolloutStep {
    let Some(target) = generations.target().map(|g| g.sequence) else {
        let current = generations.current;
        return RolloutStep::Idle(match generations.rollout.as_ref() {
            Some(r) if r.state == RolloutState::Failed => {
                let (machine, gate, back) = match &r.failure {
                    Some(f) if f.back_failed => (f.machine.as_str(), f.gate, "; it did not come back: repair it"),
                    Some(f) if f.back => (f.machine.as_str(), f.gate, "; it is back"),
                    Some(f) => (f.machine.as_str(), f.gate, ""),
                    None => ("a machine", Gate::Booted, ""),
                };
                format!(
                    "the rack runs generation {current}; generation {} failed on {machine} (gate '{gate}'){back}",
                    r.target
                )
            }
            Some(r) => format!(
                "no newer node generation to roll out: the rack runs generation {current} (last rollout: {} to {})",
                r.state, r.target
            ),
            None => format!("no newer node generation to roll out: the rack runs generation {current}"),
        });
    };
    if let Some(last) = generations.rollout.as_ref().filter(|r| r.target == target) {
        // A stopped rollout is never started again by itself.
        match last.state {
            RolloutState::Cancelled => {
                return RolloutStep::Idle(format!(
                    "the rollout to generation {target} was cancelled; `oasis update resume` starts it again"
                ))
            }
            RolloutState::Failed => {
                return RolloutStep::Idle(format!(
                    "the rollout to generation {target} stopped: a machine failed on its way back; \
                     repair it, then `oasis update resume` starts the rollout again"
                ))
            }
            _ => {}
        }
    }
    if !rack.settled {
        return RolloutStep::Wait {
            gate: None,
            message: format!("the cluster to settle before rolling out generation {target}"),
        };
    }
    let voters: Vec<&MachineView> =
        rack.machines.iter().filter(|m| m.member.as_ref().is_some_and(|v| v.voter)).collect();
    let announce = match voters.as_slice() {
        [single] if single.data_on_disk => {
            Some(format!("a single-member cluster: etcd is unavailable while {} boots its new generation", single.id))
        }
        _ => None,
    };
    RolloutStep::Start { target, from: generations.current, announce }
}

/// Running: the next machine towards the target, or the end.
fn forward(rollout: &Rollout, rack: &RackView) -> RolloutStep {
    let flying: BTreeSet<MacAddr> = rollout.in_flight.iter().map(|f| f.mac).collect();
    // Control-plane machines first, then workers, each in choice order.
    let pending = rack
        .machines
        .iter()
        .filter(|m| m.control_plane)
        .chain(rack.machines.iter().filter(|m| !m.control_plane))
        .find(|m| !rollout.done.contains(&m.mac) && !flying.contains(&m.mac));
    match pending {
        None if rollout.in_flight.is_empty() => RolloutStep::Finish,
        None => RolloutStep::Wait { gate: None, message: "the machines in flight".into() },
        Some(m) => ready(rollout, m, rack, rollout.target),
    }
}

/// Cancelling: the last machine moved goes back first; then the end.
fn back(rollout: &Rollout, rack: &RackView) -> RolloutStep {
    let moved = rack.machines.iter().rev().find(|m| rollout.done.contains(&m.mac));
    match moved {
        None if rollout.in_flight.is_empty() => RolloutStep::Cancelled,
        None => RolloutStep::Wait { gate: None, message: "the machines in flight".into() },
        Some(m) => ready(rollout, m, rack, rollout.from),
    }
}

/// `m` may start towards `to` once the gates before it hold.
fn ready(rollout: &Rollout, m: &MachineView, rack: &RackView, to: u64) -> RolloutStep {
    if !rollout.in_flight.is_empty() && m.control_plane {
        return RolloutStep::Wait { gate: None, message: "the machines in flight".into() };
    }
    if let Some(step) = before(m, rack) {
        return step;
    }
    RolloutStep::Begin { mac: m.mac, machine: m.id.clone(), to, boot: m.boot.clone() }
}

/// The gates before `m` goes: `None` when they hold.
fn before(m: &MachineView, rack: &RackView) -> Option<RolloutStep> {
    if !m.alive {
        return Some(wait(Gate::MembersHealthy, format!("{} to be heard from", m.id)));
    }
    let members: Vec<&MachineView> = rack.machines.iter().filter(|x| x.control_plane).collect();
    if let Some(down) = members.iter().find(|x| !x.alive || !x.member.as_ref().is_some_and(|v| v.healthy)) {
        return Some(wait(Gate::MembersHealthy, format!("the etcd member on {} to answer", down.id)));
    }
    if rack.learner_pending {
        return Some(wait(Gate::NoLearner, "the learner being added to finish joining".into()));
    }
    if let Some(behind) = members.iter().find(|x| x.member.as_ref().is_some_and(|v| v.lag.is_none_or(|l| l > MAX_LAG)))
    {
        return Some(wait(Gate::InSync, format!("the etcd member on {} to catch up with the leader", behind.id)));
    }
    if !m.control_plane {
        return None;
    }
    let voters = rack.voters().count();
    let healthy = rack.voters().filter(|v| v.healthy).count();
    match voters {
        1 if m.data_on_disk => None,
        1 => Some(wait(
            Gate::Quorum,
            format!(
                "a data disk on {}: a single-member cluster keeps its data across the reboot only on a disk \
                 (add one and set [cluster] data_disk, then the rollout goes on)",
                m.id
            ),
        )),
        2 => Some(wait(
            Gate::Quorum,
            "a third member: a two-member cluster loses its quorum while either member reboots".into(),
        )),
        _ if healthy.saturating_sub(1) >= quorum(voters) => None,
        _ => Some(wait(Gate::Quorum, format!("quorum without {}: {healthy} of {voters} voters healthy", m.id))),
    }
}

/// A machine in flight: its next phase, its failure, or what it waits for.
fn in_flight(f: &InFlight, rollout: &Rollout, rack: &RackView, settings: &RolloutSettings, now: u64) -> RolloutStep {
    let timed_out = now.saturating_sub(f.since) > settings.timeout_secs;
    let Some(m) = rack.machine(f.mac) else {
        // Removed from the rack while in flight: nothing to move, nothing to check.
        return RolloutStep::Fail {
            mac: f.mac,
            gate: Gate::Booted,
            detail: format!("{} was removed from the rack while it was moving", f.machine),
            last_error: None,
            boot: f.boot.clone(),
        };
    };
    let fail = |gate: Gate, detail: String| RolloutStep::Fail {
        mac: f.mac,
        gate,
        detail,
        last_error: m.last_error.clone(),
        boot: m.boot.clone(),
    };
    let within = |secs: u64| format!("within {secs} s");
    match f.phase {
        // The gates before it are checked again right before it goes: the rack may have changed
        // since it started. Waiting here costs nothing and does not time out.
        Phase::MovingLeader if f.to == rollout.target => match before(m, rack) {
            Some(held) => held,
            None => leave(f, m, rack, &rollout.done),
        },
        Phase::MovingLeader => leave(f, m, rack, &rollout.done),
        Phase::Rebooting => {
            let new_boot = m.alive && m.boot != f.boot;
            if unreachable_by_its_agent(f, m, now) {
                return RolloutStep::PowerCycle { mac: f.mac, machine: m.id.clone(), to: f.to };
            }
            match m.generation {
                Some(g) if new_boot && g == f.to => RolloutStep::Rebooted { mac: f.mac, machine: m.id.clone() },
                Some(g) if new_boot => fail(Gate::Booted, format!("{} booted generation {g}, not {}", m.id, f.to)),
                _ if timed_out => fail(
                    Gate::Booted,
                    format!("{} did not come back on generation {} {}", m.id, f.to, within(settings.timeout_secs)),
                ),
                _ => wait(Gate::Booted, format!("{} to come back on generation {}", m.id, f.to)),
            }
        }
        Phase::Checking => match after(m, f) {
            // Conclusive: waiting out the timeout would only delay going back.
            Some(_) if m.crash_loop.is_some() && m.generation == Some(f.to) => fail(
                Gate::Services,
                format!("{} on {} keeps exiting", m.crash_loop.as_deref().unwrap_or_default(), m.id),
            ),
            None => RolloutStep::Confirm { mac: f.mac, machine: m.id.clone() },
            Some((gate, detail)) if timed_out => fail(gate, format!("{detail} {}", within(settings.timeout_secs))),
            Some((gate, detail)) => wait(gate, detail),
        },
    }
}

/// Seconds after its reboot request that a machine silent since before it is power-cycled.
pub const POWER_CYCLE_AFTER_SECS: u64 = 60;

/// Whether `m`, told to reboot by flight `f`, cannot hear it: silent since before the request,
/// still silent [`POWER_CYCLE_AFTER_SECS`] later (a machine hung in a generation that failed
/// it, or dead in its reboot). With a BMC it is power-cycled, once per flight: a machine that
/// misses its gate on the way out goes back this way, into the generation it came from.
fn unreachable_by_its_agent(f: &InFlight, m: &MachineView, now: u64) -> bool {
    m.bmc
        && !m.alive
        && !f.power_cycled
        && m.heard_at < f.since
        && now.saturating_sub(f.since) >= POWER_CYCLE_AFTER_SECS
}

/// Leadership off `m` first, then the reboot. It goes to a healthy voter already moved when
/// there is one (so the machines after this one need no move: one election fewer each), the
/// one most in sync among them.
fn leave(f: &InFlight, m: &MachineView, rack: &RackView, done: &BTreeSet<MacAddr>) -> RolloutStep {
    match &m.member {
        Some(own) if own.leader => {
            let to = rack
                .machines
                .iter()
                .filter(|x| x.mac != m.mac)
                .filter_map(|x| Some((x.mac, x.member.as_ref()?)))
                .filter(|(_, v)| v.voter && v.healthy)
                .min_by_key(|(mac, v)| (!done.contains(mac), v.lag.unwrap_or(u64::MAX)))
                .map(|(_, v)| v);
            match to {
                Some(to) => RolloutStep::MoveLeader { machine: m.id.clone(), from: own.id, to: to.id },
                // A single member leads alone.
                None => reboot(f, m),
            }
        }
        _ => reboot(f, m),
    }
}

fn reboot(f: &InFlight, m: &MachineView) -> RolloutStep {
    RolloutStep::Reboot { mac: f.mac, machine: m.id.clone(), to: f.to, kexec: m.kexec, boot: m.boot.clone() }
}

/// The first gate `m` does not pass on its new generation, with what it lacks.
fn after(m: &MachineView, f: &InFlight) -> Option<(Gate, String)> {
    if !m.alive || m.generation != Some(f.to) {
        return Some((Gate::Booted, format!("{} to run generation {}", m.id, f.to)));
    }
    if m.control_plane {
        let member = m.member.as_ref();
        if !member.is_some_and(|v| v.voter && v.healthy) {
            return Some((Gate::Voter, format!("the etcd member on {} to answer as a voter", m.id)));
        }
        if member.is_some_and(|v| v.lag.is_none_or(|l| l > MAX_LAG)) {
            return Some((Gate::InSync, format!("the etcd member on {} to catch up with the leader", m.id)));
        }
        if !m.quorum_read {
            return Some((Gate::QuorumRead, format!("a quorum read through {}", m.id)));
        }
    }
    if !m.services_ready {
        return Some((Gate::Services, format!("the services on {} to run", m.id)));
    }
    None
}

/// Records what `step` changed in `generations` (its effect, if any, done): the events to keep.
pub fn apply(generations: &mut Generations, step: &RolloutStep, now: u64) -> Vec<Happening> {
    let event = |kind: &'static str, mac: Option<MacAddr>, message: String| Happening { kind, mac, message };
    match step {
        RolloutStep::Idle(_) | RolloutStep::Wait { .. } | RolloutStep::MoveLeader { .. } => vec![],
        RolloutStep::Start { target, from, announce } => {
            generations.rollout = Some(fresh(generations, *target, *from, now));
            let mut message = format!("rolling the rack out from node generation {from} to {target}");
            if let Some(announce) = announce {
                message.push_str(&format!(": {announce}"));
            }
            vec![event("rollout-started", None, message)]
        }
        RolloutStep::Begin { mac, machine, to, boot } => {
            let Some(rollout) = generations.rollout.as_mut() else { return vec![] };
            rollout.in_flight.push(InFlight {
                mac: *mac,
                machine: machine.clone(),
                to: *to,
                phase: Phase::MovingLeader,
                since: now,
                boot: boot.clone(),
                power_cycled: false,
            });
            vec![event("rollout-machine", Some(*mac), format!("{machine} starts moving to node generation {to}"))]
        }
        RolloutStep::Reboot { mac, machine, to, kexec, boot } => {
            let Some(f) = flight(generations, *mac) else { return vec![] };
            f.phase = Phase::Rebooting;
            // The boot it is in now is the one asked: it may have rebooted since it started.
            f.boot = boot.clone();
            // The timeout counts from here: waiting for its turn costs it nothing.
            f.since = now;
            let machine_record = generations.machines.entry(*mac).or_default();
            machine_record.desired = Some(*to);
            machine_record.attempted = Some(*to);
            machine_record.attempts += 1;
            let how = if *kexec { "by kexec" } else { "by a reboot through the network boot path" };
            vec![event("rollout-reboot", Some(*mac), format!("{machine} boots node generation {to} {how}"))]
        }
        RolloutStep::Rebooted { mac, .. } => {
            let Some(f) = flight(generations, *mac) else { return vec![] };
            f.phase = Phase::Checking;
            let message = format!("{} is back on node generation {}", f.machine, f.to);
            vec![event("rollout-booted", Some(*mac), message)]
        }
        RolloutStep::PowerCycle { mac, machine, to } => {
            let Some(f) = flight(generations, *mac) else { return vec![] };
            f.power_cycled = true;
            let message = format!(
                "{machine} did not answer its request to boot node generation {to}: power-cycled through its \
                 BMC into a network boot of generation {to} (once)"
            );
            vec![event("rollout-power-cycle", Some(*mac), message)]
        }
        RolloutStep::Confirm { mac, .. } => confirm(generations, *mac, now),
        RolloutStep::Fail { mac, gate, detail, last_error, boot } => {
            fail(generations, *mac, (*gate, detail), (last_error, boot), now)
        }
        RolloutStep::Finish => {
            let Some((target, from)) = end(generations, RolloutState::Done, now) else { return vec![] };
            generations.previous = Some(from);
            generations.current = target;
            vec![event(
                "rollout-done",
                None,
                format!("every machine runs node generation {target}; {from} is kept for rollback"),
            )]
        }
        RolloutStep::Cancelled => {
            let Some((_, from)) = end(generations, RolloutState::Cancelled, now) else { return vec![] };
            vec![event(
                "rollout-cancelled",
                None,
                format!("rollout cancelled: every machine is back on node generation {from}"),
            )]
        }
    }
}

/// A rollout to `target` starting now. Machines a stopped rollout to the same target left on it
/// (desired and confirmed there) count as done: they need not move again.
fn fresh(generations: &Generations, target: u64, from: u64, now: u64) -> Rollout {
    let done = generations
        .machines
        .iter()
        .filter(|(_, m)| m.desired == Some(target) && m.confirmed == Some(target))
        .map(|(mac, _)| *mac)
        .collect();
    Rollout {
        target,
        from,
        started_at: now,
        state: RolloutState::Running,
        done,
        in_flight: vec![],
        failure: None,
        finished_at: None,
    }
}

/// Ends the rollout in `state` (every machine where it should be, so none is desired anywhere
/// any more): its (target, from).
fn end(generations: &mut Generations, state: RolloutState, now: u64) -> Option<(u64, u64)> {
    let rollout = generations.rollout.as_mut()?;
    rollout.state = state;
    rollout.finished_at = Some(now);
    let ends = (rollout.target, rollout.from);
    for m in generations.machines.values_mut() {
        m.desired = None;
    }
    Some(ends)
}

/// What an operator asks of the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    Pause,
    Resume,
    Cancel,
}

/// Why an operator's command does nothing: said, never silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no rollout is running to pause (oasis update status shows the last one)")]
    NothingToPause,
    #[error("no rollout is paused, cancelled or stopped to resume (oasis update status shows the last one)")]
    NothingToResume,
    #[error("no rollout is running or paused to cancel (oasis update status shows the last one)")]
    NothingToCancel,
    #[error("node generation {target} failed its gates on {machine} and is never tried again; install a newer bundle")]
    GenerationFailed { target: u64, machine: String },
}

/// Carries out an operator's `command` on the rollout in `generations`: the event to record, or
/// why it does nothing. Pause and cancel act on the next step (the machine in flight finishes its
/// gates); resume continues a paused rollout, or starts a cancelled or stopped one again from
/// where the rack is, unless its generation failed.
pub fn command(generations: &mut Generations, command: Command, now: u64) -> Result<Happening, CommandError> {
    let event = |kind: &'static str, message: String| Happening { kind, mac: None, message };
    let target_failed =
        generations.rollout.as_ref().is_some_and(|r| generations.get(r.target).is_some_and(|g| g.failed));
    let rollout = generations.rollout.as_mut();
    match (command, rollout) {
        (Command::Pause, Some(r)) if r.state == RolloutState::Running => {
            r.state = RolloutState::Paused;
            let flying: Vec<&str> = r.in_flight.iter().map(|f| f.machine.as_str()).collect();
            let finishing = match flying.as_slice() {
                [] => String::new(),
                list => format!("; {} finishes its gates first", list.join(", ")),
            };
            Ok(event("rollout-paused", format!("the rollout to generation {} is paused{finishing}", r.target)))
        }
        (Command::Pause, _) => Err(CommandError::NothingToPause),
        (Command::Cancel, Some(r)) if matches!(r.state, RolloutState::Running | RolloutState::Paused) => {
            r.state = RolloutState::Cancelling;
            let moved = r.done.len();
            Ok(event(
                "rollout-cancelling",
                format!(
                    "the rollout to generation {} is cancelled: {moved} machine(s) already moved go back to generation {}, last first",
                    r.target, r.from
                ),
            ))
        }
        (Command::Cancel, _) => Err(CommandError::NothingToCancel),
        (Command::Resume, Some(r)) if r.state == RolloutState::Paused => {
            r.state = RolloutState::Running;
            Ok(event("rollout-resumed", format!("the rollout to generation {} goes on", r.target)))
        }
        (Command::Resume, Some(r))
            if matches!(r.state, RolloutState::Cancelled | RolloutState::Failed) && r.in_flight.is_empty() =>
        {
            let (target, from) = (r.target, r.from);
            if let Some(failure) = r.failure.as_ref().filter(|_| target_failed) {
                return Err(CommandError::GenerationFailed { target, machine: failure.machine.clone() });
            }
            // Started again from where the rack is, in the same write: the machines a stopped
            // rollout left on the target stay named by a rollout (and served the target).
            generations.rollout = Some(fresh(generations, target, from, now));
            Ok(event("rollout-resumed", format!("the rollout to generation {target} starts again")))
        }
        (Command::Resume, _) => Err(CommandError::NothingToResume),
    }
}

/// The reboots the machines in flight are asked for: (machine, generation, the boot asked).
pub fn reboots(generations: &Generations) -> Vec<(MacAddr, u64, String)> {
    let flying = generations.rollout.iter().flat_map(|r| &r.in_flight);
    flying.filter(|f| f.phase == Phase::Rebooting).map(|f| (f.mac, f.to, f.boot.clone())).collect()
}

fn flight(generations: &mut Generations, mac: MacAddr) -> Option<&mut InFlight> {
    generations.rollout.as_mut()?.in_flight.iter_mut().find(|f| f.mac == mac)
}

fn confirm(generations: &mut Generations, mac: MacAddr, now: u64) -> Vec<Happening> {
    let Some(rollout) = generations.rollout.as_mut() else { return vec![] };
    let Some(i) = rollout.in_flight.iter().position(|f| f.mac == mac) else { return vec![] };
    let f = rollout.in_flight.remove(i);
    let mut message = format!("{} passed its gates on node generation {}", f.machine, f.to);
    if f.to == rollout.target {
        rollout.done.insert(mac);
    } else {
        rollout.done.remove(&mac);
        message = format!("{} is back on node generation {}, healthy", f.machine, f.to);
        if let Some(failure) = rollout.failure.as_mut().filter(|x| x.machine == f.machine) {
            failure.back = true;
        }
    }
    if rollout.in_flight.is_empty() && rollout.state == RolloutState::Failed {
        rollout.finished_at = Some(now);
    }
    let record = generations.machines.entry(mac).or_default();
    record.confirmed = Some(f.to);
    record.attempts = 0;
    vec![Happening { kind: "rollout-confirmed", mac: Some(mac), message }]
}

fn fail(
    generations: &mut Generations,
    mac: MacAddr,
    (gate, detail): (Gate, &String),
    (last_error, boot): (&Option<String>, &String),
    now: u64,
) -> Vec<Happening> {
    let Some(rollout) = generations.rollout.as_mut() else { return vec![] };
    let Some(i) = rollout.in_flight.iter().position(|f| f.mac == mac) else { return vec![] };
    let f = rollout.in_flight.remove(i);
    let (target, from) = (rollout.target, rollout.from);
    let said = last_error.as_ref().map(|e| format!("; its agent's last error: {e}")).unwrap_or_default();
    if f.to != target {
        // It failed on its way back: nothing more is tried by itself.
        rollout.state = RolloutState::Failed;
        rollout.finished_at = Some(now);
        if let Some(failure) = rollout.failure.as_mut() {
            failure.back_failed = true;
        } else {
            rollout.failure = Some(Failure {
                machine: f.machine.clone(),
                gate,
                detail: detail.clone(),
                last_error: last_error.clone(),
                at: now,
                back: false,
                back_failed: true,
            });
        }
        let message = format!(
            "{} did not come back on node generation {}: gate '{gate}' failed: {detail}{said}; \
             the rollout stopped: power-cycle or repair the machine",
            f.machine, f.to
        );
        return vec![Happening { kind: "rollout-back-failed", mac: Some(mac), message }];
    }
    rollout.state = RolloutState::Failed;
    rollout.failure = Some(Failure {
        machine: f.machine.clone(),
        gate,
        detail: detail.clone(),
        last_error: last_error.clone(),
        at: now,
        back: false,
        back_failed: false,
    });
    // Other machines on their way to the target go back too: those not rebooted yet never left
    // (they are dropped), the others are sent back like this one.
    let others = std::mem::take(&mut rollout.in_flight);
    for mut other in others {
        if other.to == target && other.phase != Phase::MovingLeader {
            other.to = from;
            other.phase = Phase::MovingLeader;
            other.since = now;
            other.power_cycled = false;
        }
        if other.to == from {
            rollout.in_flight.push(other);
        }
    }
    // It goes back to where it came from, through the same gates; the reboot request is for the
    // boot it is in now.
    rollout.in_flight.push(InFlight {
        mac,
        machine: f.machine.clone(),
        to: from,
        phase: Phase::MovingLeader,
        since: now,
        boot: boot.clone(),
        power_cycled: false,
    });
    if let Some(g) = generations.installed.iter_mut().find(|g| g.sequence == target) {
        g.failed = true;
    }
    generations.machines.entry(mac).or_default().failed.insert(target);
    let message = format!(
        "{} failed gate '{gate}' on node generation {target}: {detail}{said}; the rollout stopped, \
         {} goes back to generation {from}, and generation {target} is not tried again",
        f.machine, f.machine
    );
    vec![Happening { kind: "rollout-failed", mac: Some(mac), message }]
}

#[cfg(test)]
mod tests;

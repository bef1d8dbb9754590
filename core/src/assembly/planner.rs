//! The membership planner: given what the appliance knows (the machines, the persisted
//! [`Assembly`], etcd's members as observed this tick), the one next change to make. No I/O and no
//! clock: the controller observes, asks, executes the one [`Step`], and asks again, so an appliance
//! restarted between any two steps continues where it was.
//!
//! The rules, in the order they are checked:
//! - Nothing is chosen before `min_machines` machines are alive and none has joined for the settle
//!   time, so powering the rack on in any order gives the same choice.
//! - The control plane has `K` members, `K` the largest odd number no greater than the configured
//!   count and the number of machines that can serve (alive and not passed over, or already a
//!   member). Members keep their role; open places go to machines in choice order.
//! - etcd changes one member at a time: bootstrap one member; add a learner only when its machine is
//!   alive, has etcd ready and a mesh handshake with every member's machine; promote it once it
//!   answers (etcd itself refuses a learner that is not in sync, and the controller retries); at
//!   most one learner; quorum checked before every change.
//! - A learner whose machine dies is removed and its machine passed over (a worker until it boots
//!   again): its place goes to the next machine. A voter is never removed for being down (that is
//!   "degraded", and quorum holds) - until the controller gives its machine up (fenced off, or
//!   silent too long): then it is removed and its machine passed over, and the open place goes
//!   to a spare, so the cluster is back to full strength by itself; the machine, if it returns,
//!   is a spare. A voter whose machine came back with its data gone (volatile storage, new boot)
//!   is removed and joins again as a learner.
//! - More voters than `K` (a learner died and the pool shrank): the newest voter leaves. So the
//!   cluster never settles with an even number of voters.
//! - A node image with another etcd reaches the members by restarts, one member at a time: the
//!   next only once the last runs its new spec, and only while the voters keep a quorum with that
//!   member down (a member already down goes first; a single member restarts alone).

use std::collections::{BTreeMap, BTreeSet};

use oasis_proto::{Artifact, Role};
use serde::{Deserialize, Serialize};

/// What the planner is told about one accepted machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: String,
    /// It heartbeated recently.
    pub alive: bool,
    /// Identifies the machine's current boot (its WireGuard key: netbooted machines make a new
    /// one every boot).
    pub boot: String,
    /// `https://MESH_ADDRESS:2380`.
    pub peer_url: String,
    /// Its agent reports etcd prepared or running in the current spec.
    pub etcd_ready: bool,
    /// Its etcd data does not survive a power cycle.
    pub volatile: bool,
    /// Machines it has a recent mesh handshake with.
    pub meshed_with: BTreeSet<String>,
    /// Its agent reports etcd running the spec it is told (no restart under way).
    pub etcd_current: bool,
    /// The controller gave the machine up while it is dead: fenced off through its BMC, or
    /// silent past `[cluster] replace_after_secs`. A voter on it is replaced by a spare.
    pub given_up: bool,
    /// An operator asked for the machine to be reprovisioned (`oasis machine reprovision`) in
    /// this boot: its member leaves (quorum kept) while it is alive, and it is no candidate for
    /// a place until it has booted again.
    pub leaving: bool,
}

/// One etcd member as observed this tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty until the member has started (etcd learns the name from the member itself).
    pub name: String,
    pub peer_url: String,
    pub learner: bool,
    /// Its own status endpoint answered this tick.
    pub healthy: bool,
}

/// How a member's etcd starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitialState {
    New,
    Existing,
}

/// The start parameters of one member, fixed when it is added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPlan {
    /// The boot the member was added in: another boot with volatile data means the data is gone.
    pub boot: String,
    pub state: InitialState,
    /// etcd's `--initial-cluster`, `NAME=PEER_URL,...`.
    pub initial_cluster: String,
    /// Counts every plan made, so each has its own data directory (a removed member's data must
    /// never be reused).
    pub serial: u64,
    /// The etcd the member runs; `None` in plans stored before restarts were planned (the node
    /// image's etcd). A new node image's etcd reaches members one [`Step::Restart`] at a time.
    #[serde(default)]
    pub etcd: Option<Artifact>,
}

/// What the controller persists between ticks and restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Assembly {
    pub roles: BTreeMap<String, Role>,
    /// etcd's `--initial-cluster-token` once a bootstrap is chosen.
    pub token: Option<String>,
    /// etcd has answered at least once since the bootstrap.
    pub formed: bool,
    pub members: BTreeMap<String, MemberPlan>,
    /// Machines that died while joining, with the boot they died in: workers until they boot again.
    pub passed_over: BTreeMap<String, String>,
    /// How many member plans have been made.
    pub plans_made: u64,
    /// Where each machine's mesh interface listens, as its agent last reported: kept so that a
    /// restarted appliance tells every node the same peers before the first heartbeats arrive.
    pub endpoints: BTreeMap<String, std::net::SocketAddrV4>,
    /// Unix time the cluster first settled.
    pub assembled_at: Option<u64>,
    /// Control-plane machines power-cycled through their BMC for falling silent, by id.
    pub fencing: BTreeMap<String, super::fence::Fence>,
}

/// The settings the planner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// 1, 3 or 5.
    pub control_plane: usize,
    pub min_machines: usize,
    /// The SHA-256 of the etcd the node image carries: members running another are restarted
    /// with it, one at a time.
    pub etcd_sha256: Option<String>,
}

/// The one change to make next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do until something changes; says what is awaited.
    Wait(String),
    /// Assembled as configured; nothing to do.
    Settled,
    /// New roles for these machines, each with its reason.
    SetRoles(Vec<(String, Role, String)>),
    PassOver {
        machine: String,
        reason: String,
    },
    /// Start a new cluster with this one member.
    Bootstrap {
        machine: String,
    },
    MarkFormed,
    AddLearner {
        machine: String,
        peer_url: String,
    },
    /// Record the start parameters of a member added to etcd.
    Start {
        machine: String,
        initial_cluster: String,
    },
    Promote {
        machine: String,
        member_id: u64,
    },
    /// Remove the member; then forget the machine's plan, and pass the machine over if asked.
    Remove {
        member_id: u64,
        machine: Option<String>,
        pass_over: bool,
        reason: String,
    },
    /// Forget a plan whose member etcd no longer has.
    Forget {
        machine: String,
    },
    /// Every member is gone with its data: start again from a bootstrap.
    Reset {
        reason: String,
    },
    /// Give the member the node image's etcd: its agent restarts it with the new spec.
    Restart {
        machine: String,
        reason: String,
    },
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Wait(what) => write!(f, "waiting for {what}"),
            Step::Settled => f.write_str("assembled"),
            Step::SetRoles(changes) => {
                let list: Vec<String> = changes.iter().map(|(id, role, _)| format!("{id} {role}")).collect();
                write!(f, "roles: {}", list.join(", "))
            }
            Step::PassOver { machine, reason } => write!(f, "passing over {machine}: {reason}"),
            Step::Bootstrap { machine } => write!(f, "starting a new etcd cluster on {machine}"),
            Step::MarkFormed => f.write_str("etcd answers"),
            Step::AddLearner { machine, .. } => write!(f, "adding {machine} to etcd as a learner"),
            Step::Start { machine, .. } => write!(f, "starting etcd on {machine} to join"),
            Step::Promote { machine, .. } => write!(f, "promoting {machine} to voter"),
            Step::Remove { member_id, reason, .. } => write!(f, "removing etcd member {member_id:x}: {reason}"),
            Step::Forget { machine } => write!(f, "forgetting the etcd plan of {machine}"),
            Step::Reset { reason } => f.write_str(reason),
            Step::Restart { machine, reason } => write!(f, "restarting etcd on {machine}: {reason}"),
        }
    }
}

/// Votes needed for a decision among `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Control-plane places for a pool of machines that can serve: the largest odd number no
/// greater than both the configured count and the pool.
pub fn places(control_plane: usize, pool: usize) -> usize {
    odd_floor(control_plane.min(pool))
}

/// The largest odd number no greater than `n` (0 for 0).
fn odd_floor(n: usize) -> usize {
    if n == 0 {
        0
    } else if n % 2 == 1 {
        n
    } else {
        n - 1
    }
}

/// The next step. `nodes` are the accepted machines in choice order; `members` is `None` when no
/// member answered this tick; `settled` says the settle time has passed since the last machine
/// was accepted.
///
/// The phases, in the rule order above: [`roles`] (nothing before the rack settles; the
/// control plane's places), [`bootstrap`] (the first member, until etcd answers), [`membership`]
/// (strays, forgotten plans, the learner, lost voters, shrinking and growing), [`rollout`] (a new
/// etcd, one member at a time), then [`settle`].
/// Each phase either has the step or passes to the next.
pub fn plan(
    settings: &Settings,
    nodes: &[Node],
    assembly: &Assembly,
    members: Option<&[Member]>,
    settled: bool,
) -> Step {
    if let Some(wait) = arrival(settings, nodes, assembly, settled) {
        return wait;
    }
    let rack = Rack::new(settings, nodes, assembly, members);
    roles(&rack)
        .or_else(|| bootstrap(&rack))
        .or_else(|| membership(&rack))
        .or_else(|| rollout(settings, &rack))
        .unwrap_or_else(|| settle(&rack))
}

/// Before any role is chosen: enough machines, and none arriving any more.
fn arrival(settings: &Settings, nodes: &[Node], assembly: &Assembly, settled: bool) -> Option<Step> {
    if !assembly.roles.is_empty() {
        return None;
    }
    let alive = nodes.iter().filter(|n| n.alive).count();
    if alive < settings.min_machines.max(1) {
        return Some(Step::Wait(format!(
            "{alive} of {} machines needed before choosing roles",
            settings.min_machines.max(1)
        )));
    }
    if !settled {
        return Some(Step::Wait("the settle time to pass: machines are still arriving".into()));
    }
    None
}

/// What every phase reads: the machines, the assembly, etcd's members, and the control plane
/// the rules give.
struct Rack<'a> {
    nodes: &'a [Node],
    assembly: &'a Assembly,
    observed: Vec<&'a Member>,
    /// Control-plane places.
    k: usize,
    /// The machines that hold them, members first.
    control: Vec<&'a str>,
}

impl<'a> Rack<'a> {
    fn new(settings: &Settings, nodes: &'a [Node], assembly: &'a Assembly, members: Option<&'a [Member]>) -> Self {
        let observed: Vec<&Member> = members.map(|m| m.iter().collect()).unwrap_or_default();
        let by_peer = |url: &str| nodes.iter().find(|n| n.peer_url == url);
        // Which machines are members now, as far as we can tell.
        let member_machines: BTreeSet<&str> = observed
            .iter()
            .filter_map(|m| by_peer(&m.peer_url).map(|n| n.id.as_str()))
            .chain(assembly.members.keys().map(String::as_str))
            .collect();
        let passed_over = |n: &Node| passed_over(assembly, n);
        let pool =
            nodes.iter().filter(|n| member_machines.contains(n.id.as_str()) || (n.alive && !passed_over(n))).count();
        let k = places(settings.control_plane, pool);
        // Members stay control plane; open places go to alive machines in order.
        let mut control: Vec<&str> =
            nodes.iter().filter(|n| member_machines.contains(n.id.as_str())).map(|n| n.id.as_str()).collect();
        for n in nodes {
            let kept = assembly.roles.get(&n.id) == Some(&Role::ControlPlane) && n.alive && !passed_over(n);
            if kept && !control.contains(&n.id.as_str()) && control.len() < k {
                control.push(&n.id);
            }
        }
        for n in nodes {
            if control.len() >= k {
                break;
            }
            if n.alive && !passed_over(n) && !control.contains(&n.id.as_str()) {
                control.push(&n.id);
            }
        }
        Rack { nodes, assembly, observed, k, control }
    }

    fn node(&self, id: &str) -> Option<&'a Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn machine_of(&self, m: &Member) -> Option<String> {
        self.nodes.iter().find(|n| n.peer_url == m.peer_url).map(|n| n.id.clone())
    }

    /// [`passed_over`] in this rack's assembly.
    fn passed_over(&self, n: &Node) -> bool {
        passed_over(self.assembly, n)
    }

    fn voters(&self) -> Vec<&'a Member> {
        self.observed.iter().copied().filter(|m| !m.learner).collect()
    }

    fn healthy_voters(&self) -> usize {
        self.observed.iter().filter(|m| !m.learner && m.healthy).count()
    }

    /// Every change is committed by a leader, which needs a quorum now.
    fn has_quorum(&self) -> bool {
        self.healthy_voters() >= quorum(self.voters().len())
    }
}

/// Whether `n` is passed over in this boot (it died while joining, was given up, or is
/// leaving): no candidate for a place until it boots again.
fn passed_over(assembly: &Assembly, n: &Node) -> bool {
    n.leaving || assembly.passed_over.get(&n.id).is_some_and(|boot| *boot == n.boot)
}

/// Roles: the control plane's places, members first, then alive machines in choice order.
fn roles(rack: &Rack<'_>) -> Option<Step> {
    let k = rack.k;
    let mut changes = Vec::new();
    for n in rack.nodes {
        let current = rack.assembly.roles.get(&n.id).copied().unwrap_or(Role::Unassigned);
        let wanted = if rack.control.contains(&n.id.as_str()) {
            Role::ControlPlane
        } else if n.alive || current != Role::Unassigned {
            Role::Worker
        } else {
            Role::Unassigned
        };
        if wanted != current {
            let reason = match wanted {
                Role::ControlPlane => format!(
                    "control-plane place {} of {k}, next in choice order",
                    rack.control.iter().position(|c| *c == n.id).unwrap_or(0) + 1
                ),
                Role::Worker if n.leaving => "being reprovisioned, as an operator asked".to_string(),
                Role::Worker if rack.passed_over(n) => {
                    "passed over: died while joining; a worker until it boots again".to_string()
                }
                Role::Worker => format!("the control plane's {k} places are taken"),
                Role::Unassigned => String::new(),
            };
            changes.push((n.id.clone(), wanted, reason));
        }
    }
    (!changes.is_empty()).then_some(Step::SetRoles(changes))
}

/// Bootstrap: the first member on the first ready control-plane machine, until etcd answers.
fn bootstrap(rack: &Rack<'_>) -> Option<Step> {
    let assembly = rack.assembly;
    if assembly.token.is_none() {
        let first = rack.nodes.iter().find(|n| rack.control.contains(&n.id.as_str()));
        return Some(match first {
            None => Step::Wait("a machine for the control plane".into()),
            Some(n) if n.alive && n.etcd_ready => Step::Bootstrap { machine: n.id.clone() },
            Some(n) => Step::Wait(format!("etcd to be ready on {}", n.id)),
        });
    }
    if rack.observed.is_empty() {
        // Nothing answers. Before formation the bootstrap member may just be starting; a member
        // whose machine came back with its data gone cannot come back.
        let lost = |id: &String, plan: &MemberPlan| {
            rack.node(id).is_some_and(|n| n.alive && n.volatile && n.boot != plan.boot)
                || (!assembly.formed && rack.node(id).is_none_or(|n| !n.alive))
        };
        if !assembly.members.is_empty() && assembly.members.iter().all(|(id, p)| lost(id, p)) {
            return Some(Step::Reset {
                reason: if assembly.formed {
                    "every etcd member lost its data (volatile storage, power cycled): starting a new cluster".into()
                } else {
                    "the bootstrap member died before etcd formed: choosing again".into()
                },
            });
        }
        if assembly.members.is_empty() {
            return Some(Step::Reset { reason: "no etcd member is planned".into() });
        }
        return Some(Step::Wait(if assembly.formed {
            "an etcd member to answer".into()
        } else {
            "etcd to start on the bootstrap member".into()
        }));
    }
    (!assembly.formed).then_some(Step::MarkFormed)
}

/// Membership: one change at a time, quorum checked before each.
fn membership(rack: &Rack<'_>) -> Option<Step> {
    strays(rack)
        .or_else(|| learner(rack))
        .or_else(|| {
            let voters = rack.voters();
            (!rack.has_quorum()).then(|| {
                Step::Wait(format!(
                    "quorum, lost with {} of {} voters healthy: members that lost their data cannot \
                     return, and etcd needs a disaster recovery (--force-new-cluster on a survivor) if they do not",
                    rack.healthy_voters(),
                    voters.len()
                ))
            })
        })
        .or_else(|| lost_voter(rack))
        .or_else(|| given_up_voter(rack))
        .or_else(|| shrink(rack))
        .or_else(|| grow(rack))
}

/// A member of no known machine, or a plan whose member is gone.
fn strays(rack: &Rack<'_>) -> Option<Step> {
    let (voters, healthy_voters) = (rack.voters(), rack.healthy_voters());
    if let Some(stray) = rack.observed.iter().find(|m| rack.machine_of(m).is_none()) {
        let healthy_after = healthy_voters - usize::from(!stray.learner && stray.healthy);
        let voters_after = voters.len() - usize::from(!stray.learner);
        if rack.has_quorum() && healthy_after >= quorum(voters_after.max(1)) {
            return Some(Step::Remove {
                member_id: stray.id,
                machine: None,
                pass_over: false,
                reason: format!("member {} belongs to no accepted machine", stray.peer_url),
            });
        }
        return Some(Step::Wait("quorum to remove an unknown member".into()));
    }
    // Plans whose member is gone (removed before the plan was forgotten).
    let forgotten = rack
        .assembly
        .members
        .keys()
        .find(|id| !rack.observed.iter().any(|m| rack.machine_of(m).as_ref() == Some(*id)))?;
    Some(Step::Forget { machine: forgotten.clone() })
}

/// The learner, if any: start it, promote it, or remove it.
fn learner(rack: &Rack<'_>) -> Option<Step> {
    let learner = rack.observed.iter().find(|m| m.learner)?;
    let (voters, healthy_voters, has_quorum) = (rack.voters(), rack.healthy_voters(), rack.has_quorum());
    let machine = rack.machine_of(learner).expect("strays handled before");
    let n = rack.node(&machine).expect("mapped by peer URL");
    let plan = rack.assembly.members.get(&machine);
    let gone = !n.alive || n.leaving || plan.is_some_and(|p| p.boot != n.boot && n.volatile);
    if gone {
        if has_quorum {
            return Some(Step::Remove {
                member_id: learner.id,
                machine: Some(machine.clone()),
                pass_over: !n.alive || n.leaving,
                reason: if n.leaving {
                    format!("learner {machine} is being reprovisioned (an operator asked)")
                } else if n.alive {
                    format!("learner {machine} rebooted and lost its data")
                } else {
                    format!("learner {machine} died while joining")
                },
            });
        }
        return Some(Step::Wait(format!("quorum to remove the dead learner {machine}")));
    }
    if plan.is_none() {
        let mut cluster: Vec<String> = rack
            .observed
            .iter()
            .map(|m| format!("{}={}", rack.machine_of(m).expect("strays handled before"), m.peer_url))
            .collect();
        cluster.sort();
        return Some(Step::Start { machine, initial_cluster: cluster.join(",") });
    }
    if !learner.healthy || learner.name.is_empty() {
        return Some(Step::Wait(format!("learner {machine} to start")));
    }
    // A promotion is committed by a leader (quorum now) and must leave a quorum after.
    if has_quorum && healthy_voters + 1 >= quorum(voters.len() + 1) {
        return Some(Step::Promote { machine, member_id: learner.id });
    }
    Some(Step::Wait(format!("quorum to promote {machine}: {healthy_voters} of {} voters healthy", voters.len())))
}

/// A voter that came back without its data: take it out so it can join again.
fn lost_voter(rack: &Rack<'_>) -> Option<Step> {
    let (voters, healthy_voters) = (rack.voters(), rack.healthy_voters());
    for v in &voters {
        let machine = rack.machine_of(v).expect("strays handled before");
        let n = rack.node(&machine).expect("mapped by peer URL");
        let lost = rack.assembly.members.get(&machine).is_some_and(|p| p.boot != n.boot) && n.volatile && n.alive;
        if lost {
            let healthy_after = healthy_voters - usize::from(v.healthy);
            if rack.has_quorum() && voters.len() > 1 && healthy_after >= quorum(voters.len() - 1) {
                return Some(Step::Remove {
                    member_id: v.id,
                    machine: Some(machine.clone()),
                    pass_over: false,
                    reason: format!("voter {machine} rebooted and lost its data (volatile storage): it joins again"),
                });
            }
        }
    }
    None
}

/// A voter on a machine the controller gave up, or one an operator is reprovisioning: removed
/// (quorum kept), its machine passed over, so that `grow` gives the place to a spare.
fn given_up_voter(rack: &Rack<'_>) -> Option<Step> {
    let (voters, healthy_voters) = (rack.voters(), rack.healthy_voters());
    let (v, machine, leaving) = voters.iter().find_map(|v| {
        let machine = rack.machine_of(v)?;
        let n = rack.node(&machine)?;
        (n.leaving || (n.given_up && !n.alive)).then_some((v, machine, n.leaving))
    })?;
    let healthy_after = healthy_voters - usize::from(v.healthy);
    if rack.has_quorum() && voters.len() > 1 && healthy_after >= quorum(voters.len() - 1) {
        let reason = if leaving {
            format!("voter {machine} is being reprovisioned (an operator asked): a spare takes its place")
        } else {
            format!("voter {machine} was given up (fenced off, or silent too long): a spare takes its place")
        };
        return Some(Step::Remove { member_id: v.id, machine: Some(machine.clone()), pass_over: true, reason });
    }
    let what = if leaving { "the voter being reprovisioned" } else { "the given-up voter" };
    Some(Step::Wait(format!("quorum to replace {what} {machine}")))
}

/// Too many voters: the newest leaves (the plan serials say who is newest).
fn shrink(rack: &Rack<'_>) -> Option<Step> {
    let (voters, healthy_voters, k) = (rack.voters(), rack.healthy_voters(), rack.k);
    if voters.len() <= k.max(1) {
        return None;
    }
    let (_, machine, id) = voters
        .iter()
        .filter_map(|v| {
            let m = rack.machine_of(v)?;
            Some((rack.assembly.members.get(&m).map_or(u64::MAX, |p| p.serial), m, v.id))
        })
        .max()?;
    let healthy_after = healthy_voters - usize::from(voters.iter().any(|v| v.id == id && v.healthy));
    if rack.has_quorum() && healthy_after >= quorum(voters.len() - 1) {
        return Some(Step::Remove {
            member_id: id,
            machine: Some(machine.clone()),
            pass_over: false,
            reason: format!("{} voters for {k} places: {machine} leaves to keep the count odd", voters.len()),
        });
    }
    Some(Step::Wait("quorum to shrink the control plane".into()))
}

/// Grow: the next control-plane machine that is not a member yet.
fn grow(rack: &Rack<'_>) -> Option<Step> {
    let (voters, healthy_voters, k) = (rack.voters(), rack.healthy_voters(), rack.k);
    if voters.len() >= k {
        return None;
    }
    let members_now: BTreeSet<String> = rack.observed.iter().filter_map(|m| rack.machine_of(m)).collect();
    let candidate = rack.nodes.iter().find(|n| rack.control.contains(&n.id.as_str()) && !members_now.contains(&n.id));
    let Some(c) = candidate else {
        return Some(Step::Wait(format!("a machine for control-plane place {} of {k}", voters.len() + 1)));
    };
    if !c.etcd_ready {
        return Some(Step::Wait(format!("etcd to be ready on {}", c.id)));
    }
    if let Some(missing) = members_now.iter().find(|m| !c.meshed_with.contains(*m)) {
        return Some(Step::Wait(format!("a mesh handshake between {} and {missing}", c.id)));
    }
    if !rack.has_quorum() {
        return Some(Step::Wait(format!(
            "quorum to add a member: {healthy_voters} of {} voters healthy",
            voters.len()
        )));
    }
    Some(Step::AddLearner { machine: c.id.clone(), peer_url: c.peer_url.clone() })
}

/// Rollout: members whose etcd is not the node image's are restarted with it, one at a time (a
/// member that is down first, then in choice order): only once every earlier restart runs its new spec, and only while the voters
/// keep a quorum with that member down (a single member has nothing to carry it and restarts).
fn rollout(settings: &Settings, rack: &Rack<'_>) -> Option<Step> {
    let wanted = settings.etcd_sha256.as_deref()?;
    let outdated =
        |id: &str| rack.assembly.members.get(id).is_some_and(|p| p.etcd.as_ref().is_none_or(|a| a.sha256 != wanted));
    let members: Vec<&Node> = rack.nodes.iter().filter(|n| rack.assembly.members.contains_key(&n.id)).collect();
    let answering =
        |id: &str| rack.observed.iter().any(|m| !m.learner && m.healthy && rack.machine_of(m).as_deref() == Some(id));
    // A member that is down already costs nothing to restart: it goes first.
    let next = members.iter().filter(|n| outdated(&n.id)).min_by_key(|n| answering(&n.id))?;
    if let Some(busy) = members.iter().find(|n| !outdated(&n.id) && n.alive && !n.etcd_current) {
        return Some(Step::Wait(format!("etcd on {} to run its new spec before the next restart", busy.id)));
    }
    let (voters, healthy_voters) = (rack.voters().len(), rack.healthy_voters());
    let healthy = answering(&next.id);
    if voters <= 1 || healthy_voters - usize::from(healthy) >= quorum(voters) {
        return Some(Step::Restart { machine: next.id.clone(), reason: "the node image carries another etcd".into() });
    }
    Some(Step::Wait(format!("quorum to restart etcd on {}: {healthy_voters} of {voters} voters healthy", next.id)))
}

/// Settle: all places filled; wait for voters that are down, else nothing to do.
fn settle(rack: &Rack<'_>) -> Step {
    let (voters, healthy_voters) = (rack.voters().len(), rack.healthy_voters());
    if healthy_voters < voters {
        return Step::Wait(format!("the voters that are down (degraded: {healthy_voters} of {voters} voters healthy)"));
    }
    Step::Settled
}

#[cfg(test)]
mod tests;

//! What a step changes in the persisted [`Assembly`] once its effect (if any) has happened: one
//! pure function, shared by the controller and the planner's simulation, so the simulation
//! exercises the bookkeeping that ships.

use oasis_proto::Artifact;

use super::planner::{Assembly, InitialState, MemberPlan, Step};
use crate::registry::Happening;

/// What the step's etcd call (if it has one) did. The controller calls [`apply_step`] only once
/// the call is done: a call etcd refused for now is asked again on a later tick, and a failed one
/// changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The step needs no etcd call, or its call succeeded.
    Done,
    /// etcd added a learner with this id.
    Added { member_id: u64 },
    /// etcd no longer had the member a `Remove` named: as good as removed.
    AlreadyGone,
}

/// What the bookkeeping needs of the world outside the assembly.
pub struct Context<'a> {
    /// The cluster's name, in the bootstrap token and the assembled event.
    pub cluster: &'a str,
    /// Unix time now.
    pub now: u64,
    /// A machine's current boot (its WireGuard key).
    pub boot_of: &'a dyn Fn(&str) -> String,
    /// The etcd the node image carries: new members and restarted ones run it.
    pub etcd: Option<&'a Artifact>,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("cluster", &self.cluster).field("now", &self.now).finish_non_exhaustive()
    }
}

fn event(kind: &'static str, message: String) -> Happening {
    Happening { kind, mac: None, message }
}

/// Applies `step` to `assembly` and says what happened. An empty list means nothing changed
/// and nothing needs to be stored.
pub fn apply_step(assembly: &mut Assembly, step: &Step, outcome: Outcome, ctx: &Context<'_>) -> Vec<Happening> {
    let boot_of = ctx.boot_of;
    match step {
        Step::Wait(_) => vec![],
        Step::Settled => {
            if assembly.assembled_at.is_some() {
                return vec![];
            }
            assembly.assembled_at = Some(ctx.now);
            let voters = assembly.members.len();
            let msg = format!("cluster {} assembled: {voters} etcd member(s), all healthy", ctx.cluster);
            vec![event("cluster-assembled", msg)]
        }
        Step::SetRoles(changes) => changes
            .iter()
            .map(|(id, role, reason)| {
                assembly.roles.insert(id.clone(), *role);
                event("role", format!("{id} is {role}: {reason}"))
            })
            .collect(),
        Step::PassOver { machine, reason } => {
            assembly.passed_over.insert(machine.clone(), boot_of(machine));
            vec![event("passed-over", format!("{machine}: {reason}"))]
        }
        Step::Bootstrap { machine } => {
            assembly.plans_made += 1;
            assembly.token = Some(format!("{}-{}", ctx.cluster, ctx.now));
            let plan = MemberPlan {
                boot: boot_of(machine),
                state: InitialState::New,
                initial_cluster: String::new(),
                serial: assembly.plans_made,
                etcd: ctx.etcd.cloned(),
            };
            assembly.members.insert(machine.clone(), plan);
            vec![event("etcd-bootstrap", format!("etcd starts a new cluster on {machine}"))]
        }
        Step::MarkFormed => {
            assembly.formed = true;
            vec![event("etcd-formed", "etcd answers: the cluster exists".into())]
        }
        Step::AddLearner { machine, peer_url } => {
            let id = match outcome {
                Outcome::Added { member_id } => format!(" {member_id:x}"),
                _ => String::new(),
            };
            vec![event("etcd-learner", format!("{machine} added to etcd as learner{id} ({peer_url})"))]
        }
        Step::Start { machine, initial_cluster } => {
            assembly.plans_made += 1;
            let plan = MemberPlan {
                boot: boot_of(machine),
                state: InitialState::Existing,
                initial_cluster: initial_cluster.clone(),
                serial: assembly.plans_made,
                etcd: ctx.etcd.cloned(),
            };
            assembly.members.insert(machine.clone(), plan);
            vec![event("etcd-start", format!("{machine} starts etcd to join the cluster"))]
        }
        Step::Promote { machine, member_id } => {
            vec![event("etcd-promoted", format!("{machine} ({member_id:x}) is a voter"))]
        }
        Step::Remove { member_id, machine, pass_over, reason } => {
            if let Some(machine) = machine {
                assembly.members.remove(machine);
                if *pass_over {
                    assembly.passed_over.insert(machine.clone(), boot_of(machine));
                }
            }
            vec![event("etcd-removed", format!("member {member_id:x} removed: {reason}"))]
        }
        Step::Forget { machine } => {
            assembly.members.remove(machine);
            vec![event("etcd-forget", format!("{machine} is no longer an etcd member"))]
        }
        Step::Restart { machine, reason } => {
            let Some(plan) = assembly.members.get_mut(machine) else { return vec![] };
            plan.etcd = ctx.etcd.cloned();
            vec![event("etcd-restart", format!("{machine} restarts etcd: {reason}"))]
        }
        Step::Reset { reason } => {
            assembly.token = None;
            assembly.formed = false;
            assembly.members.clear();
            assembly.assembled_at = None;
            vec![event("etcd-reset", reason.clone())]
        }
    }
}

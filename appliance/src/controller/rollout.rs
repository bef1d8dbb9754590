//! The node rollout's side of the controller ([`oasis_core::rollout`] decides): what it observes
//! each tick, the one step it carries out, and what machines are told because of it: the reboot
//! a machine in flight is asked for, and the etcd of the generation each machine runs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use oasis_core::assembly::planner::{Assembly, Node};
use oasis_core::generations::{Generations, SHIPPED};
use oasis_core::rollout::{self, MachineView, MemberView, Phase, RackView, RolloutStep};
use oasis_proto::{Artifact, RebootRequest, ServiceState, ETCD_CLIENT_PORT};

use super::world::{Clock, Etcd};
use super::{Controller, ControllerError, Observation, Seen};

/// What the rollout saw and did in one tick.
pub(super) struct RolloutTick {
    /// The generations record after the step.
    pub record: Generations,
    /// The step and, if its etcd call failed (asked again next tick), why.
    pub progress: String,
}

/// What the rollout reads of one tick.
pub(super) struct RolloutInputs<'a> {
    pub seen: &'a [Seen],
    pub nodes: &'a [Node],
    pub assembly: &'a Assembly,
    pub observation: &'a Observation,
    /// Assembly has nothing to do.
    pub settled: bool,
}

fn client_endpoint(s: &Seen) -> Option<SocketAddr> {
    Some(SocketAddr::new(IpAddr::V4(s.record.overlay?), ETCD_CLIENT_PORT))
}

/// The machine's last heartbeat if it came from its current boot (the one before a
/// registration is another boot's).
fn this_boot(s: &Seen) -> Option<&oasis_proto::Heartbeat> {
    s.heartbeat.as_ref().filter(|h| h.at >= s.record.last_registered).map(|h| &h.heartbeat)
}

/// The generation the machine's agent reports running in its current boot: `None` before this
/// boot's first heartbeat.
pub(super) fn running_generation(s: &Seen) -> Option<u64> {
    this_boot(s)?.generation
}

/// The generation a machine's services are made for: the one it reports running, else the one
/// its boot script names now (what it booted, unless it is about to reboot).
fn services_generation(s: &Seen, record: &Generations) -> u64 {
    running_generation(s).unwrap_or_else(|| record.served(s.record.boot_mac))
}

/// Whether every service the agent reports runs (and, for a member, etcd in its told spec).
fn services_ready(s: &Seen, node: &Node, control_plane: bool) -> bool {
    let services = s.heartbeat.as_ref().map(|h| &h.heartbeat.services);
    let running = services.is_some_and(|list| list.iter().all(|x| x.state == ServiceState::Running));
    running && (!control_plane || node.etcd_current)
}

/// The agent's last error, else the message of a service that does not run.
fn last_error(s: &Seen) -> Option<String> {
    let h = &s.heartbeat.as_ref()?.heartbeat;
    h.last_error.clone().or_else(|| {
        h.services
            .iter()
            .find(|x| x.state != ServiceState::Running)
            .and_then(|x| x.message.as_ref().map(|m| format!("{}: {m}", x.name)))
    })
}

/// A service of the machine's current boot that keeps exiting, with what it last said.
fn crash_loop(s: &Seen) -> Option<String> {
    let looping = this_boot(s)?.services.iter().find(|x| {
        x.restarts >= rollout::CRASH_LOOP_RESTARTS && matches!(x.state, ServiceState::Exited | ServiceState::Failed)
    })?;
    Some(match &looping.message {
        Some(m) => format!("{} ({m})", looping.name),
        None => looping.name.clone(),
    })
}

impl<E: Etcd, C: Clock> Controller<E, C> {
    /// One rollout step: observe, ask, carry it out, record it.
    /// `record` is the generations record as the tick read it.
    pub(super) async fn roll(
        &mut self,
        inputs: &RolloutInputs<'_>,
        record: Generations,
        now: u64,
    ) -> Result<RolloutTick, ControllerError> {
        self.api.generations.announce_last_trial();
        if let Some(held) = self.api.generations.appliance_hold() {
            return Ok(RolloutTick { record, progress: held });
        }
        let reads = self.quorum_reads(inputs.seen, &record).await;
        let view = self.rack_view(inputs, &reads);
        let step = rollout::next(&record, &view, &self.rollout.settings(), now);
        if let RolloutStep::MoveLeader { machine, from, to } = &step {
            let leader = inputs.seen.iter().find(|s| s.record.id == *machine).and_then(client_endpoint);
            let moved = match leader {
                Some(ep) => self.etcd.move_leader(ep, *to).await.map_err(|source| ControllerError::Etcd {
                    what: format!("moving etcd's leadership from {from:x} to {to:x}"),
                    source,
                }),
                None => Err(ControllerError::NoVoter),
            };
            let progress = match moved {
                Ok(()) => step.to_string(),
                Err(e) => format!("{step} failed (asked again): {}", oasis_proto::error_chain(&e)),
            };
            return Ok(RolloutTick { record, progress });
        }
        if matches!(step, RolloutStep::Idle(_) | RolloutStep::Wait { .. }) {
            return Ok(RolloutTick { record, progress: step.to_string() });
        }
        let (recorded, at) = (step.clone(), now);
        self.api.store.update_generations(move |g| rollout::apply(g, &recorded, at)).await?;
        tracing::info!("rollout: {step}");
        if let RolloutStep::PowerCycle { mac, machine, .. } = &step {
            // Recorded first, so a restarted appliance does not cycle it twice. Beside the ticks:
            // the flight waits for the machine to come back either way (each action is an event).
            let (api, mac, id, why) = (Arc::clone(&self.api), *mac, Some(machine.clone()), format!("rollout: {step}"));
            self.power_tasks.spawn(async move {
                api.power.cycle_from_network(&api.store, mac, id, &why).await;
            });
        }
        // As committed: an install or an operator's command may have landed beside the step.
        let record = self.api.store.generations()?;
        Ok(RolloutTick { record, progress: step.to_string() })
    }

    /// A linearizable read through the member of each machine whose gates are being checked.
    async fn quorum_reads(&self, seen: &[Seen], record: &Generations) -> BTreeMap<String, bool> {
        let checking = record.rollout.iter().flat_map(|r| &r.in_flight).filter(|f| f.phase == Phase::Checking);
        let asked: Vec<(String, SocketAddr)> = checking
            .filter_map(|f| seen.iter().find(|s| s.record.boot_mac == f.mac))
            .filter_map(|s| Some((s.record.id.clone(), client_endpoint(s)?)))
            .collect();
        let answers = futures::future::join_all(asked.iter().map(|(_, ep)| self.etcd.quorum_read(*ep))).await;
        asked.into_iter().zip(answers).map(|((id, _), answer)| (id, answer.is_ok())).collect()
    }

    fn rack_view(&self, inputs: &RolloutInputs<'_>, reads: &BTreeMap<String, bool>) -> RackView {
        let RolloutInputs { seen, nodes, assembly, observation, settled } = inputs;
        let statuses = &observation.status;
        let leader = statuses.values().filter(|s| !s.is_learner && s.leader != 0).map(|s| s.leader).next();
        let leader_index = statuses.values().find(|s| Some(s.member_id) == leader).map(|s| s.raft_index);
        let members = observation.members.as_deref().unwrap_or_default();
        let machines = seen
            .iter()
            .zip(nodes.iter())
            .map(|(s, n)| {
                let id = &s.record.id;
                let control_plane = assembly.members.contains_key(id);
                let status = statuses.get(id);
                let member = members.iter().find(|m| m.peer_urls.first() == Some(&n.peer_url)).map(|m| MemberView {
                    id: m.id,
                    voter: !m.is_learner,
                    healthy: status.is_some_and(|st| st.member_id == m.id),
                    leader: Some(m.id) == leader,
                    lag: leader_index.zip(status).map(|(li, st)| li.saturating_sub(st.raft_index)),
                });
                MachineView {
                    mac: s.record.boot_mac,
                    id: id.clone(),
                    alive: n.alive,
                    boot: s.record.wireguard_key.clone(),
                    generation: running_generation(s),
                    control_plane,
                    member,
                    services_ready: services_ready(s, n, control_plane),
                    quorum_read: reads.get(id).copied().unwrap_or(false),
                    data_on_disk: super::disk_mounted(s),
                    kexec: self.rollout.kexec_for(id),
                    last_error: last_error(s),
                    bmc: self.api.power.has(s.record.boot_mac),
                    heard_at: super::fence::heard_at(s),
                    crash_loop: crash_loop(s),
                }
            })
            .collect();
        RackView { machines, learner_pending: members.iter().any(|m| m.is_learner), settled: *settled }
    }

    /// The etcd each control-plane machine runs: its generation's (installed generations are
    /// read once and kept), the node image's for the shipped one.
    pub(super) fn etcd_by_machine(&mut self, seen: &[Seen], record: &Generations) -> HashMap<String, Artifact> {
        let mut by_machine = HashMap::new();
        for s in seen {
            let generation = services_generation(s, record);
            let etcd = if generation == SHIPPED {
                self.etcd_artifact.clone()
            } else {
                if !self.generation_etcd.contains_key(&generation) {
                    let found = match self.api.generations.artifact(generation, oasis_image::node::ETCD_FILE) {
                        Ok(found) => found.map(|(artifact, _)| artifact),
                        Err(e) => {
                            tracing::warn!("{}", oasis_proto::error_chain(&e));
                            None
                        }
                    };
                    self.generation_etcd.insert(generation, found);
                }
                // A generation without etcd (or unreadable) keeps the node image's.
                self.generation_etcd[&generation].clone().or_else(|| self.etcd_artifact.clone())
            };
            by_machine.extend(etcd.map(|e| (s.record.id.clone(), e)));
        }
        by_machine
    }

    /// The reboot each machine in flight is asked for, by machine id: only its boot that was asked.
    pub(super) fn reboot_requests(&self, seen: &[Seen], record: &Generations) -> HashMap<String, RebootRequest> {
        rollout::reboots(record)
            .into_iter()
            .filter_map(|(mac, generation, boot)| {
                let s = seen.iter().find(|s| s.record.boot_mac == mac && s.record.wireguard_key == boot)?;
                let kexec = self.rollout.kexec_for(&s.record.id);
                Some((
                    s.record.id.clone(),
                    RebootRequest { generation, boot, kexec, power_off: false, wipe_data: false },
                ))
            })
            .collect()
    }
}

//! Cluster assembly: the controller that turns accepted machines into a cluster. What it decides
//! lives in [`oasis_core::assembly`] (planner, order, desired state, status, bookkeeping); this
//! module observes and acts.
//!
//! - [`world`]: etcd and the clock behind traits, chosen at construction (fakes in `tests.rs`).
//! - [`kubernetes`]: the k3s services, CAs and kubeconfig when a k3s bundle is given.
//!
//! The [`Controller`] is a reconcile loop: every tick it reads the store and the registry,
//! observes etcd through each control-plane machine's management address, asks the planner for
//! one step, executes it (an etcd membership call or a store write, each recorded as an event
//! with its reason) and publishes every machine's desired state. Nothing it knows lives only in
//! memory: a restarted appliance picks up where it was.

pub mod error;
mod fence;
pub mod kubernetes;
mod rollout;
pub mod world;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use oasis_proto::{
    Artifact, DataDisk, MachineState, RebootRequest, Role, ServiceSpec, ServiceState, ETCD_CLIENT_PORT, ETCD_PEER_PORT,
};
use tokio::sync::watch;

use crate::api::{Api, Published};
use crate::etcd::{EtcdClient, EtcdError};
use crate::pki::ClusterCa;
pub use error::ControllerError;
use kubernetes::Kubernetes;
use oasis_core::assembly::bookkeeping::{apply_step, Context, Outcome};
use oasis_core::assembly::desired::{MemberTls, MeshPlan, Placed};
use oasis_core::assembly::planner::{Assembly, Member, MemberPlan, Node, Settings, Step};
use oasis_core::assembly::status::MemberStatus;
use oasis_core::assembly::status::{ClusterStatus, MachineSeen, Observed};
use oasis_core::assembly::{desired, order, planner};
use oasis_core::config::{ClusterSettings, DataDiskPolicy, RolloutConfig};
use oasis_core::generations::Generations;
use oasis_core::k3s::{self, ClientCert};
use oasis_core::registry::{Happening, LastHeartbeat, MachineRecord};
use rollout::RolloutInputs;
use world::{Clock, Etcd, SystemClock};

/// Time between two reconcile ticks.
const TICK: Duration = Duration::from_secs(1);
/// After the appliance starts, how much longer than `dead_after` a machine not heard from yet is
/// still taken for alive: agents find a restarted appliance again within about 16 s (WireGuard
/// re-handshakes, or the agent registers again after three failed heartbeats).
const RECONNECT_GRACE_SECS: u64 = 30;
/// A mesh handshake older than this does not prove the path (WireGuard renews every 2 minutes
/// while traffic or keepalives flow).
const MESH_FRESH_SECS: u64 = 180;

/// Whether the machine's agent reports its data disk mounted (in this boot).
fn disk_mounted(s: &Seen) -> bool {
    s.heartbeat.as_ref().and_then(|h| h.heartbeat.data_disk.as_ref()).is_some_and(|d| d.mounted)
}

/// The state a machine's agent last reported for one of its services.
fn service_state(seen: &[Seen], id: &str, service: &str) -> Option<ServiceState> {
    let s = seen.iter().find(|s| s.record.id == id)?;
    s.heartbeat.as_ref()?.heartbeat.services.iter().find(|x| x.name == service).map(|x| x.state)
}

/// etcd's answers that mean "not now": the change is asked for again on a later tick, never
/// given up. One learner at a time, a learner not yet in sync, voters connected for less than 5 s
/// (after every promotion), members not started yet.
fn retried(e: &EtcdError) -> bool {
    matches!(
        e,
        EtcdError::TooManyLearners | EtcdError::LearnerNotReady | EtcdError::Unhealthy | EtcdError::NotEnoughStarted
    )
}

fn event(kind: &'static str, message: String) -> Happening {
    Happening { kind, mac: None, message }
}

/// What one tick sees of etcd.
#[derive(Debug, Default)]
struct Observation {
    /// Status by machine, for the machines whose etcd answered.
    status: HashMap<String, MemberStatus>,
    /// The member list, from a member that answered.
    members: Option<Vec<crate::etcd::Member>>,
    /// The cluster version, from the same member.
    cluster_version: Option<String>,
}

/// The assembly controller, with etcd and the clock chosen at construction.
pub struct Controller<E: Etcd = EtcdClient, C: Clock = SystemClock> {
    settings: ClusterSettings,
    mesh: MeshPlan,
    api: Arc<Api>,
    ca: ClusterCa,
    etcd: E,
    clock: C,
    /// etcd as the node image carries it; `None` when the image has none.
    etcd_artifact: Option<Artifact>,
    /// k3s and its secrets when the node image carries a k3s bundle, with the admin credential
    /// the kubeconfig is written for.
    kubernetes: Option<(Kubernetes, ClientCert)>,
    /// The admin kubeconfig once a k3s server has a rack address.
    kubeconfig: watch::Sender<Option<String>>,
    status: watch::Sender<Arc<ClusterStatus>>,
    /// The last step's description, to log changes only.
    last_progress: String,
    /// The last rollout step's, likewise.
    last_rollout: String,
    /// Boots (machine, key) whose disk formatting is already an event.
    formatted: std::collections::HashSet<(String, String)>,
    /// When this controller started: heartbeats are kept in memory only, so until a full
    /// `dead_after` has passed, a machine not heard from yet is not taken for dead.
    started_at: u64,
    /// How node rollouts go.
    rollout: RolloutConfig,
    /// The etcd of each installed generation, read once (`None`: it carries none).
    generation_etcd: HashMap<u64, Option<Artifact>>,
    /// Power actions fencing and the rollout started (a cycle waits up to a minute for the
    /// machine to read on): they run beside the ticks, never inside one.
    power_tasks: tokio::task::JoinSet<()>,
    /// What those tasks found that the next tick must act on.
    fence_outcomes: Arc<std::sync::Mutex<Vec<fence::CycleFailed>>>,
}

impl<E: Etcd, C: Clock> std::fmt::Debug for Controller<E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("cluster", &self.settings.name).finish_non_exhaustive()
    }
}

/// Where the controller publishes what it knows.
#[derive(Debug)]
pub struct Outputs {
    pub status: watch::Sender<Arc<ClusterStatus>>,
    /// The admin kubeconfig once k3s from a bundle has a server.
    pub kubeconfig: watch::Sender<Option<String>>,
}

/// What the controller works with: the registry and store (through the API), etcd and the clock.
pub struct World<E: Etcd = EtcdClient, C: Clock = SystemClock> {
    pub api: Arc<Api>,
    pub etcd: E,
    pub clock: C,
}

/// What the controller hands to machines: the CA that signs etcd members' certificates, and
/// etcd and k3s as the node image carries them.
pub struct Provisions {
    pub ca: ClusterCa,
    /// `None` when the node image has no etcd.
    pub etcd_artifact: Option<Artifact>,
    /// k3s and its secrets when the node image carries a k3s bundle, with the admin credential.
    pub kubernetes: Option<(Kubernetes, ClientCert)>,
}

impl<E: Etcd, C: Clock> std::fmt::Debug for World<E, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Provisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provisions").field("etcd_artifact", &self.etcd_artifact).finish_non_exhaustive()
    }
}

/// What one tick saw and told, for its status.
struct TickSeen<'a> {
    seen: &'a [Seen],
    nodes: &'a [Node],
    assembly: &'a Assembly,
    observation: &'a Observation,
    members: Option<&'a [Member]>,
    told: &'a BTreeMap<String, (u64, bool)>,
}

/// What machines are told because of the generation they run or go to.
struct Told {
    /// The etcd each machine runs, by id.
    etcd: HashMap<String, Artifact>,
    /// The reboot a machine in flight is asked for, by id.
    reboots: HashMap<String, RebootRequest>,
}

/// One accepted machine with what the registry last heard from it.
struct Seen {
    record: MachineRecord,
    heartbeat: Option<LastHeartbeat>,
}

impl<E: Etcd, C: Clock> Controller<E, C> {
    pub fn new(settings: ClusterSettings, world: World<E, C>, provisions: Provisions, outputs: Outputs) -> Self {
        let Outputs { status, kubeconfig } = outputs;
        let World { api, etcd, clock } = world;
        let Provisions { ca, etcd_artifact, kubernetes } = provisions;
        let started_at = clock.now();
        let mesh = MeshPlan {
            network: settings.mesh_network,
            prefix_len: settings.mesh_prefix_len,
            keepalive: settings.mesh_keepalive,
        };
        Controller {
            settings,
            mesh,
            api,
            ca,
            etcd,
            clock,
            etcd_artifact,
            kubernetes,
            kubeconfig,
            status,
            last_progress: String::new(),
            last_rollout: String::new(),
            formatted: Default::default(),
            started_at,
            rollout: RolloutConfig::default(),
            generation_etcd: HashMap::new(),
            power_tasks: tokio::task::JoinSet::new(),
            fence_outcomes: Default::default(),
        }
    }

    /// Waits for the power actions under way (tests: a tick's actions done before its checks).
    #[cfg(test)]
    async fn power_settled(&mut self) {
        while self.power_tasks.join_next().await.is_some() {}
    }

    /// Node rollouts as `[update]` configures them (the default otherwise).
    pub fn with_rollout(mut self, rollout: RolloutConfig) -> Self {
        self.rollout = rollout;
        self
    }

    /// Reconciles until the process ends; a failed tick is logged and the next one tries again.
    pub async fn run(mut self) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!("assembly tick failed: {}", oasis_proto::error_chain(&e));
            }
            tokio::time::sleep(TICK).await;
        }
    }

    async fn accepted(&self) -> Vec<Seen> {
        let registry = self.api.registry.lock().await;
        let mut seen: Vec<Seen> = registry
            .records()
            .filter(|r| r.state == MachineState::Accepted && r.overlay.is_some())
            .map(|r| Seen { record: r.clone(), heartbeat: registry.heartbeat_of(&r.id).cloned() })
            .collect();
        drop(registry);
        seen.sort_by(|a, b| {
            order::choice_order(
                &self.settings.prefer,
                (&a.record.id, &a.record.inventory),
                (&b.record.id, &b.record.inventory),
            )
        });
        seen
    }

    fn mesh_ip(&self, s: &Seen) -> Ipv4Addr {
        self.mesh.address_of(s.record.overlay.expect("accepted machines have an overlay address"))
    }

    /// Heard from within `dead_after`: a heartbeat, or a registration (a machine that just booted
    /// again registers before its first heartbeat, and the last heartbeat of its previous boot
    /// says nothing about this one).
    fn alive(&self, s: &Seen, now: u64) -> bool {
        let dead_after = self.settings.dead_after.as_secs();
        let heard = fence::heard_at(s);
        if now.saturating_sub(heard) <= dead_after {
            return true;
        }
        s.heartbeat.is_none() && now.saturating_sub(self.started_at) <= dead_after + RECONNECT_GRACE_SECS
    }

    /// Whether the machine is given up: fenced off through its BMC, or silent past `[cluster]
    /// replace_after_secs` (0: never).
    fn given_up(&self, s: &Seen, now: u64, assembly: &Assembly) -> bool {
        if self.alive(s, now) {
            return false;
        }
        let after = self.settings.replace_after.as_secs();
        let fenced = assembly.fencing.get(&s.record.id).is_some_and(oasis_core::assembly::fence::Fence::given_up);
        fenced || (after > 0 && now.saturating_sub(fence::heard_at(s)) > after)
    }

    /// `running` holds the etcd spec each machine is told for the stored assembly.
    fn nodes(
        &self,
        seen: &[Seen],
        now: u64,
        running: &BTreeMap<String, ServiceSpec>,
        assembly: &Assembly,
    ) -> Vec<Node> {
        let by_key: HashMap<&str, &str> =
            seen.iter().map(|s| (s.record.wireguard_key.as_str(), s.record.id.as_str())).collect();
        seen.iter()
            .map(|s| {
                let hb = s.heartbeat.as_ref().map(|h| &h.heartbeat);
                let etcd = hb.and_then(|h| h.services.iter().find(|x| x.name == "etcd"));
                Node {
                    id: s.record.id.clone(),
                    alive: self.alive(s, now),
                    boot: s.record.wireguard_key.clone(),
                    peer_url: format!("https://{}:{ETCD_PEER_PORT}", self.mesh_ip(s)),
                    // With a data disk asked for, etcd is ready only once the disk's fate is known:
                    // the data directory (disk or memory) is fixed when the member is planned.
                    etcd_ready: etcd.is_some_and(|e| matches!(e.state, ServiceState::Prepared | ServiceState::Running))
                        && (self.data_disk_for(s, &Assembly::default()).is_none()
                            || hb.is_some_and(|h| h.data_disk.is_some())),
                    // Unknown until this boot's first heartbeat: judged then, never before.
                    volatile: hb.is_some() && !disk_mounted(s),
                    meshed_with: hb
                        .map(|h| {
                            h.mesh
                                .iter()
                                .filter(|p| p.handshake_age_secs.is_some_and(|a| a <= MESH_FRESH_SECS))
                                .filter_map(|p| by_key.get(p.key.as_str()).map(|id| id.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    etcd_current: etcd.is_some_and(|e| {
                        e.state == ServiceState::Running
                            && running.get(&s.record.id).is_some_and(|spec| spec.generation == e.generation)
                    }),
                    given_up: self.given_up(s, now, assembly),
                    leaving: reprovisioning(s),
                }
            })
            .collect()
    }

    /// The disk a control-plane machine keeps etcd's data on: its largest of at least 1 GiB, as
    /// `[cluster] data_disk` allows. `assembly` gives the roles (the default: as if it were one).
    fn data_disk_for(&self, s: &Seen, assembly: &Assembly) -> Option<DataDisk> {
        let role = assembly.roles.get(&s.record.id).copied();
        if role.is_some() && role != Some(Role::ControlPlane) || self.settings.data_disk == DataDiskPolicy::Off {
            return None;
        }
        let disk = s.record.inventory.disks.iter().filter(|d| d.size_bytes >= 1 << 30).max_by_key(|d| d.size_bytes)?;
        Some(DataDisk { device: disk.name.clone(), wipe: self.settings.data_disk == DataDiskPolicy::Wipe })
    }

    /// Asks every machine that may run etcd for its status, all at once, and one of them for
    /// the member list.
    async fn observe(&self, seen: &[Seen], assembly: &Assembly) -> Observation {
        let asked: Vec<(String, SocketAddr)> = seen
            .iter()
            .filter(|s| {
                assembly.members.contains_key(&s.record.id)
                    || assembly.roles.get(&s.record.id) == Some(&Role::ControlPlane)
            })
            .filter_map(|s| {
                Some((s.record.id.clone(), SocketAddr::new(IpAddr::V4(s.record.overlay?), ETCD_CLIENT_PORT)))
            })
            .collect();
        let answers = futures::future::join_all(asked.iter().map(|(_, ep)| self.etcd.status(*ep))).await;
        let mut observation = Observation::default();
        for ((id, _), answer) in asked.iter().zip(answers) {
            if let Ok(status) = answer {
                observation.status.insert(id.clone(), status);
            }
        }
        // A voter's list first: it is the one that knows the committed membership.
        let mut askable: Vec<&(String, SocketAddr)> =
            asked.iter().filter(|(id, _)| observation.status.contains_key(id)).collect();
        askable.sort_by_key(|(id, _)| observation.status[id].is_learner);
        for (_, ep) in askable {
            if let Ok(members) = self.etcd.members(*ep).await {
                observation.members = Some(members);
                observation.cluster_version = self.etcd.cluster_version(*ep).await.ok();
                break;
            }
        }
        observation
    }

    /// An endpoint to send a membership change to: the leader if known, else any voter.
    fn change_endpoint(&self, seen: &[Seen], observation: &Observation) -> Option<SocketAddr> {
        let ep = |id: &str| {
            seen.iter()
                .find(|s| s.record.id == id)
                .and_then(|s| Some(SocketAddr::new(IpAddr::V4(s.record.overlay?), ETCD_CLIENT_PORT)))
        };
        let voters: Vec<(&String, &MemberStatus)> = observation.status.iter().filter(|(_, s)| !s.is_learner).collect();
        voters.iter().find(|(_, s)| s.leader == s.member_id).or_else(|| voters.first()).and_then(|(id, _)| ep(id))
    }

    async fn tick(&mut self) -> Result<(), ControllerError> {
        let now = self.clock.now();
        while self.power_tasks.try_join_next().is_some() {}
        let seen = self.accepted().await;
        let mut assembly = self.api.store.assembly()?;

        let mut endpoints_changed = false;
        for s in &seen {
            if let Some(ep) = s.heartbeat.as_ref().and_then(|h| h.heartbeat.mesh_endpoint) {
                if assembly.endpoints.get(&s.record.id) != Some(&ep) {
                    assembly.endpoints.insert(s.record.id.clone(), ep);
                    endpoints_changed = true;
                }
            }
        }
        if endpoints_changed {
            self.api.store.save_assembly(assembly.clone(), vec![]).await?;
        }

        for s in &seen {
            let disk = s.heartbeat.as_ref().and_then(|h| h.heartbeat.data_disk.as_ref());
            if let Some(d) = disk.filter(|d| d.formatted) {
                if self.formatted.insert((s.record.id.clone(), s.record.wireguard_key.clone())) {
                    let msg = format!("{} formatted its disk {} for etcd's data", s.record.id, d.device);
                    self.api.store.record_event(event("disk-formatted", msg));
                }
            }
        }
        let record = self.api.store.generations()?;
        let generations = self.told(&seen, &record, &assembly);
        let placed = self.placed(&seen, &assembly, &generations);
        let told_before = self.etcd_specs(&seen, &placed, &assembly, &generations)?;
        let in_rollout: Vec<oasis_proto::MacAddr> =
            record.rollout.iter().flat_map(|r| &r.in_flight).map(|f| f.mac).collect();
        self.fence(&seen, &mut assembly, &in_rollout, now).await?;
        let nodes = self.nodes(&seen, now, &told_before, &assembly);
        let observation = self.observe(&seen, &assembly).await;
        let members: Option<Vec<Member>> = observation.members.as_ref().map(|list| {
            list.iter()
                .map(|m| Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
                    learner: m.is_learner,
                    healthy: observation.status.values().any(|s| s.member_id == m.id),
                })
                .collect()
        });
        let newest_acceptance = seen.iter().map(|s| s.record.first_registered).max().unwrap_or(0);
        let settled = now.saturating_sub(newest_acceptance) >= self.settings.settle.as_secs();
        let settings = Settings {
            control_plane: self.settings.control_plane,
            min_machines: self.settings.min_machines,
            etcd_sha256: self.etcd_artifact.as_ref().map(|a| a.sha256.clone()),
        };
        let step = if self.etcd_artifact.is_none() {
            Step::Wait("etcd is not in the node image: rebuild it with `oasis image build node`".into())
        } else {
            planner::plan(&settings, &nodes, &assembly, members.as_deref(), settled)
        };
        // A failed step is tried again next tick; the machines still get their desired states.
        let failed = self.execute(&step, &mut assembly, &seen, &observation, now).await.err();
        if failed.is_some() {
            // What was changed in memory may not be committed: publish only what the store holds.
            assembly = self.api.store.assembly()?;
        }
        let progress = match &failed {
            Some(e) => format!("{step} failed (retrying): {}", oasis_proto::error_chain(e)),
            None => step.to_string(),
        };
        if progress != self.last_progress {
            tracing::info!(cluster = %self.settings.name, "assembly: {progress}");
            self.last_progress = progress.clone();
        }
        let inputs = RolloutInputs {
            seen: &seen,
            nodes: &nodes,
            assembly: &assembly,
            observation: &observation,
            settled: step == Step::Settled,
        };
        let (record, rollout) = match self.roll(&inputs, record.clone(), now).await {
            Ok(rolled) => (rolled.record, rolled.progress),
            Err(e) => (record, format!("rollout step failed (asked again): {}", oasis_proto::error_chain(&e))),
        };
        if rollout != self.last_rollout {
            tracing::info!(cluster = %self.settings.name, "rollout: {rollout}");
            self.last_rollout = rollout.clone();
        }
        let generations = self.told(&seen, &record, &assembly);
        let told = self.publish(&seen, &assembly, &generations).await?;
        let tick = TickSeen {
            seen: &seen,
            nodes: &nodes,
            assembly: &assembly,
            observation: &observation,
            members: members.as_deref(),
            told: &told,
        };
        self.publish_status(tick, &step, progress, rollout);
        Ok(())
    }

    /// What machines are told because of their generations, and of operators.
    fn told(&mut self, seen: &[Seen], record: &Generations, assembly: &Assembly) -> Told {
        let mut reboots = self.reboot_requests(seen, record);
        // An operator's power request through a machine's agent, unless a rollout reboots it.
        for s in seen {
            if let Some(request) = self.api.agent_power.request_for(&s.record.id, &s.record.wireguard_key) {
                reboots.entry(s.record.id.clone()).or_insert(request);
            }
        }
        // A machine being reprovisioned, once it has no member: wipe its data disk and reboot
        // (through the firmware: the network boot of the generation its script names).
        for s in seen.iter().filter(|s| reprovisioning(s) && !assembly.members.contains_key(&s.record.id)) {
            let generation = s.heartbeat.as_ref().and_then(|h| h.heartbeat.generation).unwrap_or(0);
            let boot = s.record.wireguard_key.clone();
            let wipe = RebootRequest { generation, boot, kexec: false, power_off: false, wipe_data: true };
            reboots.insert(s.record.id.clone(), wipe);
        }
        Told { etcd: self.etcd_by_machine(seen, record), reboots }
    }

    async fn save(&self, assembly: &Assembly, happenings: Vec<Happening>) -> Result<(), ControllerError> {
        for h in &happenings {
            tracing::info!(kind = h.kind, "{}", h.message);
        }
        Ok(self.api.store.save_assembly(assembly.clone(), happenings).await?)
    }

    /// Makes the step's etcd call, if it has one, then records what it changed.
    async fn execute(
        &self,
        step: &Step,
        assembly: &mut Assembly,
        seen: &[Seen],
        observation: &Observation,
        now: u64,
    ) -> Result<(), ControllerError> {
        let Some(outcome) = self.call_etcd(step, seen, observation).await? else {
            return Ok(());
        };
        let happenings = {
            let boot_of = |id: &str| {
                seen.iter().find(|s| s.record.id == id).map(|s| s.record.wireguard_key.clone()).unwrap_or_default()
            };
            let ctx =
                Context { cluster: &self.settings.name, now, boot_of: &boot_of, etcd: self.etcd_artifact.as_ref() };
            apply_step(assembly, step, outcome, &ctx)
        };
        if happenings.is_empty() {
            return Ok(());
        }
        self.save(assembly, happenings).await
    }

    /// The etcd call a step makes, if any: `None` when etcd said "not now" (asked again next tick).
    async fn call_etcd(
        &self,
        step: &Step,
        seen: &[Seen],
        observation: &Observation,
    ) -> Result<Option<Outcome>, ControllerError> {
        let change_ep = || self.change_endpoint(seen, observation).ok_or(ControllerError::NoVoter);
        let (what, answer) = match step {
            Step::AddLearner { machine, peer_url } => {
                let answer = self.etcd.add_learner(change_ep()?, peer_url).await;
                (format!("adding {machine} as a learner"), answer.map(|m| Outcome::Added { member_id: m.id }))
            }
            Step::Promote { machine, member_id } => {
                let answer = self.etcd.promote(change_ep()?, *member_id).await;
                (format!("promoting {machine}"), answer.map(|()| Outcome::Done))
            }
            Step::Remove { member_id, .. } => {
                let answer = match self.etcd.remove(change_ep()?, *member_id).await {
                    Err(EtcdError::MemberNotFound) => Ok(Outcome::AlreadyGone),
                    other => other.map(|()| Outcome::Done),
                };
                (format!("removing member {member_id:x}"), answer)
            }
            _ => return Ok(Some(Outcome::Done)),
        };
        match answer {
            Ok(outcome) => Ok(Some(outcome)),
            Err(e) if retried(&e) => {
                tracing::info!("{what} again next tick: {}", oasis_proto::error_chain(&e));
                Ok(None)
            }
            Err(source) => Err(ControllerError::Etcd { what, source }),
        }
    }

    /// The TLS material of a control-plane machine's etcd: issued once, kept in the store.
    fn member_tls(&self, s: &Seen) -> Result<MemberTls, ControllerError> {
        let (cert, key): (String, String) =
            self.api.store.kept_secret(&format!("etcd-member/{}", s.record.id), || {
                let overlay = s.record.overlay.expect("accepted");
                let ips = [IpAddr::V4(self.mesh_ip(s)), IpAddr::V4(overlay)];
                let issued = self
                    .ca
                    .issue(&s.record.id, &ips)
                    .map_err(|source| ControllerError::MemberCertificate { machine: s.record.id.clone(), source })?;
                Ok::<_, ControllerError>((issued.cert_pem, issued.key_pem))
            })?;
        Ok(MemberTls { ca: self.ca.ca_pem().to_string(), cert, key })
    }

    /// The etcd service each control-plane machine is told to run for `assembly`, with the etcd
    /// of the generation it runs (`told`).
    fn etcd_specs(
        &self,
        seen: &[Seen],
        placed: &[Placed],
        assembly: &Assembly,
        told: &Told,
    ) -> Result<BTreeMap<String, ServiceSpec>, ControllerError> {
        let mut specs = BTreeMap::new();
        for (s, p) in seen.iter().zip(placed) {
            let Some(etcd) = told.etcd.get(&s.record.id).filter(|_| p.role == Role::ControlPlane) else { continue };
            // A plan made in another boot of a machine whose data was in memory cannot run:
            // the planner removes that member and adds the machine again. With the data on
            // its disk, the member simply starts again.
            let plan =
                assembly.members.get(&s.record.id).filter(|plan| plan.boot == s.record.wireguard_key || p.disk_mounted);
            // A machine on an installed generation runs that generation's etcd, whatever etcd
            // its member was planned with: it came with the boot.
            let plan = plan.map(|plan| match Some(etcd) != self.etcd_artifact.as_ref() {
                true => MemberPlan { etcd: Some(etcd.clone()), ..plan.clone() },
                false => plan.clone(),
            });
            let tls = self.member_tls(s)?;
            let spec = desired::etcd_service(p, &self.mesh, etcd, &tls, assembly.token.as_deref(), plan.as_ref());
            specs.insert(s.record.id.clone(), spec);
        }
        Ok(specs)
    }

    fn placed(&self, seen: &[Seen], assembly: &Assembly, told: &Told) -> Vec<Placed> {
        seen.iter()
            .map(|s| Placed {
                id: s.record.id.clone(),
                role: assembly.roles.get(&s.record.id).copied().unwrap_or(Role::Unassigned),
                key: s.record.wireguard_key.clone(),
                overlay: s.record.overlay.expect("accepted"),
                mesh_endpoint: assembly.endpoints.get(&s.record.id).copied(),
                data_disk: self.data_disk_for(s, assembly),
                disk_mounted: disk_mounted(s),
                reboot: told.reboots.get(&s.record.id).cloned(),
            })
            .collect()
    }

    /// Computes every machine's desired state and publishes it when anything changed; says which
    /// etcd spec (generation, runs) each machine is told.
    async fn publish(
        &self,
        seen: &[Seen],
        assembly: &Assembly,
        generations: &Told,
    ) -> Result<BTreeMap<String, (u64, bool)>, ControllerError> {
        let placed = self.placed(seen, assembly, generations);
        let mut told = BTreeMap::new();
        let mut services: BTreeMap<String, Vec<ServiceSpec>> = BTreeMap::new();
        for (id, spec) in self.etcd_specs(seen, &placed, assembly, generations)? {
            told.insert(id.clone(), (spec.generation, spec.run));
            services.entry(id).or_default().push(spec);
        }
        if let (Some((kubernetes, admin)), Some(_)) = (&self.kubernetes, assembly.assembled_at) {
            let members: Vec<&str> = assembly.members.keys().map(String::as_str).collect();
            let rack: HashMap<String, Ipv4Addr> =
                assembly.endpoints.iter().map(|(id, ep)| (id.clone(), *ep.ip())).collect();
            let first_server = placed.iter().find(|p| p.role == Role::ControlPlane && members.contains(&p.id.as_str()));
            let first_running = first_server
                .is_some_and(|f| service_state(seen, &f.id, k3s::SERVICE_NAME) == Some(ServiceState::Running));
            let k3s = kubernetes::k3s_services(kubernetes, &placed, &members, &rack, &self.mesh, first_running)
                .map_err(ControllerError::K3s)?;
            for (id, spec) in k3s {
                services.entry(id).or_default().push(spec);
            }
            let config = first_server
                .and_then(|f| rack.get(&f.id))
                .map(|address| k3s::kubeconfig(&self.settings.name, *address, &kubernetes.cas, admin));
            self.kubeconfig.send_if_modified(|current| {
                let changed = *current != config;
                *current = config;
                changed
            });
        }
        let keys: HashMap<&str, &str> = placed.iter().map(|p| (p.id.as_str(), p.key.as_str())).collect();
        let states: BTreeMap<String, (String, oasis_proto::DesiredState)> =
            desired::desired_states(&self.settings.name, &placed, &self.mesh, &services)
                .into_iter()
                .map(|(id, state)| (id.clone(), (keys[id.as_str()].to_string(), state)))
                .collect();
        let changed = self.api.desired.borrow().states != states;
        if changed {
            let revision = self.api.desired.borrow().revision + 1;
            self.api.desired.send_replace(Arc::new(Published { revision, states }));
        }
        Ok(told)
    }

    /// Publishes the status of what this tick observed and told the machines.
    fn publish_status(&self, tick: TickSeen<'_>, step: &Step, progress: String, rollout: String) {
        let TickSeen { seen, nodes, assembly, observation, members, told } = tick;
        let machines = seen
            .iter()
            .zip(nodes)
            .map(|(s, n)| MachineSeen {
                id: &s.record.id,
                key: &s.record.wireguard_key,
                role: assembly.roles.get(&s.record.id).copied().unwrap_or(Role::Unassigned),
                alive: n.alive,
                mesh_address: self.mesh_ip(s),
                peer_url: &n.peer_url,
                volatile: n.volatile,
                heartbeat: s.heartbeat.as_ref().map(|h| &h.heartbeat),
                etcd_told: told.get(&s.record.id).copied(),
            })
            .collect();
        let observed = Observed {
            cluster: &self.settings.name,
            control_plane: self.settings.control_plane,
            machines,
            assembly,
            members,
            statuses: &observation.status,
            settled: *step == Step::Settled,
            progress,
            etcd_bundled: self.etcd_artifact.is_some(),
            kubernetes_bundled: self.kubernetes.is_some(),
        };
        let status = ClusterStatus {
            rollout,
            cluster_version: observation.cluster_version.clone(),
            ..ClusterStatus::observe(&observed)
        };
        self.status.send_replace(Arc::new(status));
    }
}

/// Whether an operator asked for `s`'s current boot to be reprovisioned.
fn reprovisioning(s: &Seen) -> bool {
    s.record.reprovision.as_ref().is_some_and(|r| r.boot == s.record.wireguard_key)
}

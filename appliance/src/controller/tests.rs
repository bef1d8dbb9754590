//! The controller with a recording fake etcd and a fake clock: real registry, real store, real
//! desired-state publication; every step kind the planner asks for, executed for real.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use oasis_proto::{Heartbeat, Inventory, MeshPeerStatus, ServiceStatus};

use super::*;
use oasis_core::assembly::status;
use oasis_core::registry::Policy;

/// A membership change the controller asked etcd for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    AddLearner(SocketAddr, String),
    Promote(SocketAddr, u64),
    Remove(SocketAddr, u64),
    MoveLeader(SocketAddr, u64),
}

#[derive(Debug, Clone)]
struct SimMember {
    id: u64,
    name: String,
    peer_url: String,
    learner: bool,
    /// Its etcd runs and answers.
    up: bool,
}

#[derive(Debug, Default)]
struct EtcdSim {
    members: Vec<SimMember>,
    calls: Vec<Call>,
    /// What the next membership changes answer instead of doing them.
    refusals: VecDeque<EtcdError>,
    next_id: u64,
    /// The leader a move handed leadership to, while it is up.
    moved_to: Option<u64>,
}

impl EtcdSim {
    /// The member that leads: the one leadership moved to while it is up, else the lowest id up.
    fn leader(&self) -> u64 {
        let up = |id: u64| self.members.iter().any(|v| v.id == id && v.up && !v.learner);
        match self.moved_to {
            Some(id) if up(id) => id,
            _ => self.members.iter().filter(|v| v.up && !v.learner).map(|v| v.id).min().unwrap_or(0),
        }
    }

    fn has_quorum(&self) -> bool {
        let voters = self.members.iter().filter(|v| !v.learner);
        let (all, up) = voters.fold((0, 0), |(all, up), v| (all + 1, up + usize::from(v.up)));
        up > all / 2
    }
}

/// A recording fake of etcd's membership API. Members are found by client address: the
/// overlay address with the mesh address's host part (10.98.x.y -> 10.99.x.y).
#[derive(Debug, Clone, Default)]
struct FakeEtcd(Arc<Mutex<EtcdSim>>);

fn client_of(peer_url: &str) -> SocketAddr {
    let host = peer_url.trim_start_matches("https://").split(':').next().unwrap();
    let mesh: Ipv4Addr = host.parse().unwrap();
    let [_, _, c, d] = mesh.octets();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 99, c, d)), ETCD_CLIENT_PORT)
}

impl FakeEtcd {
    fn sim(&self) -> std::sync::MutexGuard<'_, EtcdSim> {
        self.0.lock().unwrap()
    }

    fn answering(&self, ep: SocketAddr) -> Option<SimMember> {
        self.sim().members.iter().find(|m| m.up && client_of(&m.peer_url) == ep).cloned()
    }

    /// A member started by its agent: it publishes its name and answers.
    fn start(&self, machine: &str, peer_url: &str) {
        let mut sim = self.sim();
        if let Some(m) = sim.members.iter_mut().find(|m| m.peer_url == peer_url) {
            m.up = true;
            m.name = machine.to_string();
            return;
        }
        sim.next_id += 1;
        let id = 0x100 + sim.next_id;
        sim.members.push(SimMember { id, name: machine.into(), peer_url: peer_url.into(), learner: false, up: true });
    }

    fn set_up(&self, peer_url: &str, up: bool) {
        self.sim().members.iter_mut().filter(|m| m.peer_url == peer_url).for_each(|m| m.up = up);
    }

    fn calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.sim().calls)
    }

    fn refuse(&self, error: EtcdError) {
        self.sim().refusals.push_back(error);
    }

    fn change(&self, call: Call) -> Result<(), EtcdError> {
        let mut sim = self.sim();
        sim.calls.push(call);
        sim.refusals.pop_front().map_or(Ok(()), Err)
    }
}

impl Etcd for FakeEtcd {
    async fn status(&self, ep: SocketAddr) -> Result<MemberStatus, EtcdError> {
        let m = self.answering(ep).ok_or_else(|| EtcdError::Unreachable {
            endpoint: ep,
            stage: "connecting",
            source: None,
        })?;
        let leader = self.sim().leader();
        Ok(MemberStatus {
            member_id: m.id,
            cluster_id: 1,
            leader,
            raft_index: 10,
            raft_term: 2,
            revision: 5,
            db_size: 20480,
            is_learner: m.learner,
            version: "3.4.23".into(),
            errors: vec![],
        })
    }

    async fn members(&self, ep: SocketAddr) -> Result<Vec<crate::etcd::Member>, EtcdError> {
        self.answering(ep).ok_or_else(|| EtcdError::Unreachable { endpoint: ep, stage: "connecting", source: None })?;
        Ok(self
            .sim()
            .members
            .iter()
            .map(|m| crate::etcd::Member {
                id: m.id,
                name: m.name.clone(),
                peer_urls: vec![m.peer_url.clone()],
                client_urls: vec![],
                is_learner: m.learner,
            })
            .collect())
    }

    async fn add_learner(&self, ep: SocketAddr, peer_url: &str) -> Result<crate::etcd::Member, EtcdError> {
        self.change(Call::AddLearner(ep, peer_url.into()))?;
        let mut sim = self.sim();
        sim.next_id += 1;
        let id = 0x100 + sim.next_id;
        sim.members.push(SimMember { id, name: String::new(), peer_url: peer_url.into(), learner: true, up: false });
        Ok(crate::etcd::Member {
            id,
            name: String::new(),
            peer_urls: vec![peer_url.into()],
            client_urls: vec![],
            is_learner: true,
        })
    }

    async fn promote(&self, ep: SocketAddr, id: u64) -> Result<(), EtcdError> {
        self.change(Call::Promote(ep, id))?;
        let mut sim = self.sim();
        let m = sim.members.iter_mut().find(|m| m.id == id).ok_or(EtcdError::MemberNotFound)?;
        m.learner = false;
        Ok(())
    }

    async fn remove(&self, ep: SocketAddr, id: u64) -> Result<(), EtcdError> {
        self.change(Call::Remove(ep, id))?;
        let mut sim = self.sim();
        let before = sim.members.len();
        sim.members.retain(|m| m.id != id);
        if sim.members.len() == before {
            return Err(EtcdError::MemberNotFound);
        }
        Ok(())
    }

    async fn move_leader(&self, ep: SocketAddr, to: u64) -> Result<(), EtcdError> {
        self.change(Call::MoveLeader(ep, to))?;
        let mut sim = self.sim();
        let leader = sim.leader();
        if sim.members.iter().all(|m| m.id != leader || client_of(&m.peer_url) != ep) {
            return Err(EtcdError::Refused { code: Some(9), message: "etcdserver: not leader".into() });
        }
        sim.moved_to = Some(to);
        Ok(())
    }

    async fn cluster_version(&self, ep: SocketAddr) -> Result<String, EtcdError> {
        self.answering(ep).ok_or(EtcdError::Timeout)?;
        Ok("3.4.0".into())
    }

    async fn quorum_read(&self, ep: SocketAddr) -> Result<(), EtcdError> {
        self.answering(ep).ok_or(EtcdError::Timeout)?;
        if self.sim().has_quorum() {
            Ok(())
        } else {
            Err(EtcdError::Timeout)
        }
    }
}

/// A clock the test moves.
#[derive(Debug, Clone, Default)]
struct FakeClock(Arc<AtomicU64>);

impl Clock for FakeClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

const START: u64 = 1_000_000;

/// Accepted machines `m1`..`mN` (overlay 10.99.0.N+1), a fake etcd, a fake clock and the
/// controller over them.
struct Rack {
    _dir: tempfile::TempDir,
    api: Arc<Api>,
    etcd: FakeEtcd,
    clock: FakeClock,
    controller: Controller<FakeEtcd, FakeClock>,
    status: watch::Receiver<Arc<ClusterStatus>>,
    /// The node generation each machine's agent reports (none: the agent says nothing).
    running: HashMap<String, u64>,
    /// Agents report their data disk mounted.
    disks: bool,
    /// The node image carries k3s (agents report a rack address).
    kubernetes: bool,
    /// Machines whose k3s is still starting (reported fetching), for so many more ticks.
    starting: HashMap<String, u32>,
    /// The rollout's progress lines as they changed.
    progress_log: Vec<String>,
}

fn settings() -> ClusterSettings {
    ClusterSettings {
        name: "rack".into(),
        control_plane: 3,
        min_machines: 1,
        settle: Duration::ZERO,
        prefer: vec![],
        mesh_network: Ipv4Addr::new(10, 98, 0, 0),
        mesh_prefix_len: 16,
        mesh_keepalive: 15,
        dead_after: Duration::from_secs(30),
        replace_after: Duration::from_secs(600),
        data_disk: DataDiskPolicy::Off,
    }
}

fn etcd_artifact() -> Artifact {
    Artifact { sha256: "ab".repeat(32), size: 10, path: "etcd".into(), mode: 0o755 }
}

fn peer_url(machine: &str) -> String {
    format!("https://10.98.0.{}:2380", machine[1..].parse::<u8>().unwrap() + 1)
}

fn ep(machine: &str) -> SocketAddr {
    client_of(&peer_url(machine))
}

impl Rack {
    async fn new(count: u8) -> Rack {
        Rack::build(count, false).await
    }

    /// `count` machines whose node image carries a k3s bundle: servers on the control plane,
    /// agents on the others. Their agents report a rack address, which k3s needs.
    async fn with_kubernetes(count: u8) -> Rack {
        Rack::build(count, true).await
    }

    async fn build(count: u8, kubernetes: bool) -> Rack {
        Rack::build_with_power(count, kubernetes, crate::power::PowerControl::default()).await
    }

    /// Machines `m1`..`mN` whose BMCs are `bmcs` (by machine number), fenced as `settings` says.
    async fn with_bmcs(count: u8, bmcs: &[(u8, Arc<FakeBmc>)]) -> Rack {
        let drivers = bmcs
            .iter()
            .map(|(n, bmc)| {
                let driver: Arc<dyn oasis_power::PowerDriver> = bmc.clone();
                (oasis_proto::MacAddr([2, 0, 0, 0, 0, *n]), format!("fake bmc-m{n}"), driver)
            })
            .collect();
        let policy =
            oasis_core::config::power::FencePolicy { after: Duration::from_secs(120), boot: Duration::from_secs(600) };
        Rack::build_with_power(count, false, crate::power::PowerControl::with_drivers(drivers, Some(policy))).await
    }

    async fn build_with_power(count: u8, kubernetes: bool, power: crate::power::PowerControl) -> Rack {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::api::test_api_with_power(dir.path(), Policy::Auto, power);
        {
            let mut registry = api.registry.lock().await;
            for n in 1..=count {
                registry.apply(MachineRecord {
                    id: format!("m{n}"),
                    state: MachineState::Accepted,
                    boot_mac: oasis_proto::MacAddr([2, 0, 0, 0, 0, n]),
                    wireguard_key: format!("key-m{n}-0"),
                    inventory: Inventory::default(),
                    agent_version: "test".into(),
                    overlay: Some(Ipv4Addr::new(10, 99, 0, n + 1)),
                    credential_sha256: None,
                    first_registered: START - 100,
                    last_registered: START - 100,
                    reason: String::new(),
                    recent_nonces: vec![],
                    reprovision: None,
                });
            }
        }
        let ca = ClusterCa::load_or_create(&api.store).unwrap();
        let kubernetes_on = kubernetes;
        let kubernetes = kubernetes.then(|| {
            let entry = |name: &str, file: &str| oasis_image::artifacts::ArtifactEntry {
                name: name.into(),
                file: file.into(),
                sha256: "cd".repeat(32),
                size: 1,
                version: Some("v1.31.4+k3s1".into()),
            };
            let artifacts = k3s::K3sArtifacts {
                k3s: entry("k3s", "k3s"),
                airgap_images: entry("k3s-airgap-images", oasis_image::k3s_bundle::AIRGAP_FILES[0]),
            };
            Kubernetes::load_or_create(&api.store, &ca, "rack", artifacts).unwrap()
        });
        let etcd = FakeEtcd::default();
        let clock = FakeClock(Arc::new(AtomicU64::new(START)));
        let (status_tx, status) = watch::channel(Arc::default());
        let (kubeconfig, _) = watch::channel(None);
        let controller = Controller::new(
            settings(),
            World { api: api.clone(), etcd: etcd.clone(), clock: clock.clone() },
            Provisions { ca, etcd_artifact: Some(etcd_artifact()), kubernetes },
            Outputs { status: status_tx, kubeconfig },
        );
        let rack = Rack {
            _dir: dir,
            api,
            etcd,
            clock,
            controller,
            status,
            running: Default::default(),
            disks: false,
            kubernetes: kubernetes_on,
            starting: HashMap::new(),
            progress_log: vec![],
        };
        for n in 1..=count {
            rack.heartbeat(&format!("m{n}")).await;
        }
        rack
    }

    /// Every service the machine is told to run now.
    fn told_services(&self, machine: &str) -> Vec<ServiceSpec> {
        let published = self.api.desired.borrow();
        published.states.get(machine).map(|(_, state)| state.services.clone()).unwrap_or_default()
    }

    /// The etcd spec the machine is told to run now, if any.
    fn etcd_spec(&self, machine: &str) -> Option<ServiceSpec> {
        let published = self.api.desired.borrow();
        let (_, state) = published.states.get(machine)?;
        state.services.iter().find(|s| s.name == "etcd").cloned()
    }

    /// A heartbeat as an up-to-date agent sends it: its etcd prepared or running as told, and a
    /// fresh mesh handshake with every other machine.
    async fn heartbeat(&self, machine: &str) {
        let mut registry = self.api.registry.lock().await;
        let mut keys: Vec<String> =
            registry.records().filter(|r| r.id != machine).map(|r| r.wireguard_key.clone()).collect();
        keys.sort();
        // Every service it is told: etcd prepared or running as told; k3s running unless this
        // machine's k3s is still starting.
        let told = self.told_services(machine);
        let services = told
            .into_iter()
            .map(|spec| ServiceStatus {
                state: match spec.name.as_str() {
                    "etcd" if !spec.run => ServiceState::Prepared,
                    "etcd" => ServiceState::Running,
                    _ if self.starting.contains_key(machine) => ServiceState::Fetching,
                    _ => ServiceState::Running,
                },
                name: spec.name,
                generation: spec.generation,
                restarts: 0,
                message: None,
                volatile_data: true,
            })
            .collect();
        let n: u8 = machine[1..].parse().unwrap_or(0);
        let mesh_endpoint =
            self.kubernetes.then(|| std::net::SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100 + n), 51821));
        let heartbeat = Heartbeat {
            mesh: keys.into_iter().map(|key| MeshPeerStatus { key, handshake_age_secs: Some(5) }).collect(),
            services,
            generation: self.running.get(machine).copied(),
            mesh_endpoint,
            data_disk: self.disks.then(|| oasis_proto::DataDiskStatus {
                device: "vdb".into(),
                mounted: true,
                formatted: false,
                message: None,
            }),
            ..Heartbeat::default()
        };
        registry.record_heartbeat(machine, heartbeat, self.clock.now());
    }

    /// Every machine's agent acts on what it is told: etcd starts where a plan says so.
    async fn agents_act(&self) {
        let ids: Vec<String> = self.api.registry.lock().await.records().map(|r| r.id.clone()).collect();
        for id in ids {
            if self.etcd_spec(&id).is_some_and(|s| s.run) {
                self.etcd.start(&id, &peer_url(&id));
            }
            self.heartbeat(&id).await;
        }
    }

    /// One tick at the next second: the step it took and how it went.
    async fn tick(&mut self) -> String {
        self.clock.0.fetch_add(1, Ordering::SeqCst);
        self.controller.tick().await.unwrap();
        self.controller.power_settled().await;
        self.status.borrow().progress.clone()
    }

    fn assembly(&self) -> Assembly {
        self.api.store.assembly().unwrap()
    }

    fn event_kinds(&self) -> Vec<String> {
        let mut events = self.api.store.events(1000).unwrap();
        events.sort_by_key(|e| e.seq);
        events.into_iter().map(|e| e.kind).collect()
    }

    /// Ticks (with agents acting) until the controller reports `assembled`.
    async fn assemble(&mut self) {
        for _ in 0..40 {
            self.agents_act().await;
            if self.tick().await == "assembled" {
                return;
            }
        }
        panic!("not assembled: {:?} {:?}", self.status.borrow().progress, self.etcd.sim());
    }
}

#[tokio::test]
async fn three_machines_assemble_one_step_at_a_time() {
    let mut rack = Rack::new(3).await;
    assert_eq!(rack.tick().await, "roles: m1 control-plane, m2 control-plane, m3 control-plane");
    assert_eq!(rack.assembly().roles.len(), 3);

    rack.agents_act().await;
    assert_eq!(rack.tick().await, "starting a new etcd cluster on m1");
    let assembly = rack.assembly();
    assert_eq!(assembly.token.as_deref(), Some("rack-1000002"), "the token is the cluster and the clock's time");
    assert_eq!(assembly.members["m1"].state, planner::InitialState::New);
    assert!(rack.etcd_spec("m1").unwrap().run, "m1 is told to run etcd");
    assert!(!rack.etcd_spec("m2").unwrap().run, "m2 only prepares");

    rack.agents_act().await;
    assert_eq!(rack.tick().await, "etcd answers");
    assert!(rack.assembly().formed);

    assert_eq!(rack.tick().await, "adding m2 to etcd as a learner");
    assert_eq!(rack.etcd.calls(), [Call::AddLearner(ep("m1"), peer_url("m2"))], "asked of the leader");
    assert!(!rack.assembly().members.contains_key("m2"), "no plan until the learner is in etcd");

    assert_eq!(rack.tick().await, "starting etcd on m2 to join");
    let plan = &rack.assembly().members["m2"];
    assert_eq!(plan.state, planner::InitialState::Existing);
    assert_eq!(plan.initial_cluster, format!("m1={},m2={}", peer_url("m1"), peer_url("m2")));

    rack.agents_act().await;
    assert_eq!(rack.tick().await, "promoting m2 to voter");
    let learner = rack.etcd.sim().members[1].id;
    assert_eq!(rack.etcd.calls(), [Call::Promote(ep("m1"), learner)]);

    rack.assemble().await;
    let assembly = rack.assembly();
    assert_eq!(assembly.assembled_at, Some(rack.clock.now()), "assembled at the clock's time");
    assert_eq!(assembly.members.len(), 3);
    assert_eq!(
        rack.event_kinds().iter().filter(|k| k.starts_with("etcd") || k.starts_with("cluster")).collect::<Vec<_>>(),
        [
            "etcd-bootstrap",
            "etcd-formed",
            "etcd-learner",
            "etcd-start",
            "etcd-promoted",
            "etcd-learner",
            "etcd-start",
            "etcd-promoted",
            "cluster-assembled"
        ]
    );
    // Settled again: nothing more is stored.
    let events = rack.event_kinds().len();
    assert_eq!(rack.tick().await, "assembled");
    assert_eq!(rack.event_kinds().len(), events);
    assert_eq!(rack.status.borrow().health, status::Health::Healthy);
}

#[tokio::test]
async fn a_refused_change_is_asked_again_and_a_failed_one_changes_nothing() {
    let mut rack = Rack::new(3).await;
    for _ in 0..3 {
        rack.agents_act().await;
        rack.tick().await;
    }
    assert!(rack.assembly().formed);
    rack.etcd.refuse(EtcdError::Unhealthy);
    assert_eq!(rack.tick().await, "adding m2 to etcd as a learner", "etcd's 'not now' is no failure");
    rack.etcd.refuse(EtcdError::PeerUrlExists);
    let progress = rack.tick().await;
    assert!(progress.starts_with("adding m2 to etcd as a learner failed (retrying): adding m2"), "{progress}");
    assert_eq!(rack.etcd.calls().len(), 2);
    assert!(!rack.event_kinds().contains(&"etcd-learner".to_string()));
    assert_eq!(rack.tick().await, "adding m2 to etcd as a learner");
    assert_eq!(rack.etcd.calls().len(), 1);
    assert_eq!(rack.event_kinds().iter().filter(|k| *k == "etcd-learner").count(), 1);
}

#[tokio::test]
async fn a_learner_whose_machine_dies_is_removed_and_passed_over_even_if_etcd_lost_it_already() {
    let mut rack = Rack::new(4).await;
    for _ in 0..4 {
        rack.agents_act().await;
        rack.tick().await;
    }
    assert_eq!(rack.tick().await, "starting etcd on m2 to join");
    // m2 dies before it starts; etcd answers the removal with "member not found".
    rack.clock.0.fetch_add(60, Ordering::SeqCst);
    for id in ["m1", "m3", "m4"] {
        rack.heartbeat(id).await;
    }
    rack.etcd.refuse(EtcdError::MemberNotFound);
    rack.etcd.calls();
    let progress = rack.tick().await;
    assert!(progress.starts_with("removing etcd member"), "{progress}");
    assert!(matches!(rack.etcd.calls()[..], [Call::Remove(_, _)]));
    let assembly = rack.assembly();
    assert!(!assembly.members.contains_key("m2"), "MemberNotFound counts as removed: the plan is forgotten");
    assert_eq!(assembly.passed_over.get("m2").map(String::as_str), Some("key-m2-0"));
    // The list that named it was a step behind the leader's.
    rack.etcd.sim().members.retain(|m| m.peer_url != peer_url("m2"));
    assert_eq!(rack.tick().await, "roles: m2 worker, m4 control-plane");
}

#[tokio::test]
async fn a_plan_whose_member_is_gone_is_forgotten() {
    let mut rack = Rack::new(3).await;
    rack.assemble().await;
    // m3's member was removed by hand; its plan remains.
    let m3 = rack.etcd.sim().members.iter().find(|m| m.name == "m3").unwrap().id;
    rack.etcd.sim().members.retain(|m| m.id != m3);
    assert_eq!(rack.tick().await, "forgetting the etcd plan of m3");
    assert!(!rack.assembly().members.contains_key("m3"));
    assert!(rack.event_kinds().contains(&"etcd-forget".to_string()));
}

#[tokio::test]
async fn a_bootstrap_member_that_dies_before_etcd_answers_resets_the_choice() {
    let mut rack = Rack::new(1).await;
    rack.tick().await;
    rack.agents_act().await;
    assert_eq!(rack.tick().await, "starting a new etcd cluster on m1");
    // m1 is not heard from again and etcd never answered.
    rack.clock.0.fetch_add(60, Ordering::SeqCst);
    assert_eq!(rack.tick().await, "the bootstrap member died before etcd formed: choosing again");
    let assembly = rack.assembly();
    assert!(assembly.token.is_none() && assembly.members.is_empty() && !assembly.formed);
    assert!(rack.event_kinds().contains(&"etcd-reset".to_string()));
}

#[tokio::test]
async fn a_voter_down_is_waited_for_and_reported_degraded() {
    let mut rack = Rack::new(3).await;
    rack.assemble().await;
    rack.etcd.set_up(&peer_url("m3"), false);
    rack.etcd.calls();
    let progress = rack.tick().await;
    assert!(progress.starts_with("waiting for the voters that are down"), "{progress}");
    assert_eq!(rack.status.borrow().health, status::Health::Degraded);
    assert!(rack.etcd.calls().is_empty(), "a voter is not removed for being down");
}

/// Silent past `replace_after`, a voter's machine is given up: the member is removed (with an
/// event saying why) and the spare takes its place, so three voters are healthy again.
#[tokio::test]
async fn a_voter_silent_past_replace_after_is_replaced_by_the_spare() {
    let mut rack = Rack::new(4).await;
    rack.assemble().await;
    let voters: Vec<String> = rack.assembly().members.keys().cloned().collect();
    assert_eq!(voters.len(), 3);
    let gone = voters[2].clone();
    let spare = ["m1", "m2", "m3", "m4"].into_iter().find(|m| !voters.iter().any(|v| v == m)).unwrap();
    rack.etcd.set_up(&peer_url(&gone), false);
    // Degraded, not replaced, while within replace_after.
    let alive: Vec<String> = ["m1", "m2", "m3", "m4"].iter().filter(|m| **m != gone).map(|m| m.to_string()).collect();
    rack.clock.0.fetch_add(settings().dead_after.as_secs() + 60, Ordering::SeqCst);
    for id in &alive {
        rack.heartbeat(id).await;
    }
    let progress = rack.tick().await;
    assert!(progress.starts_with("waiting for the voters that are down"), "{progress}");
    // Past replace_after: removed, the spare joins and is promoted.
    rack.clock.0.fetch_add(settings().replace_after.as_secs(), Ordering::SeqCst);
    for _ in 0..40 {
        for id in &alive {
            if rack.etcd_spec(id).is_some_and(|s| s.run) {
                rack.etcd.start(id, &peer_url(id));
            }
            rack.heartbeat(id).await;
        }
        if rack.tick().await == "assembled" {
            break;
        }
    }
    let members: Vec<String> = rack.assembly().members.keys().cloned().collect();
    assert!(members.contains(&spare.to_string()) && !members.contains(&gone), "{members:?}");
    assert!(rack.assembly().passed_over.contains_key(&gone));
    let events = rack.api.store.events(1000).unwrap();
    assert!(events.iter().any(|e| e.message.contains(&format!("voter {gone} was given up"))), "{events:?}");
}

/// A BMC that does what it is told at once, and remembers what that was.
#[derive(Debug)]
struct FakeBmc {
    on: Mutex<bool>,
    calls: Mutex<Vec<String>>,
    /// Power on (and the on of a cycle) fails, as with a dead power supply.
    dead_supply: std::sync::atomic::AtomicBool,
    /// A power action does not return until this is cleared, as a slow BMC's.
    slow: std::sync::atomic::AtomicBool,
}

impl FakeBmc {
    fn new() -> Arc<FakeBmc> {
        Arc::new(FakeBmc {
            on: Mutex::new(true),
            calls: Default::default(),
            dead_supply: Default::default(),
            slow: Default::default(),
        })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl oasis_power::PowerDriver for FakeBmc {
    fn kind(&self) -> &'static str {
        "fake"
    }
    fn address(&self) -> String {
        "fake".into()
    }
    fn status(&self) -> Result<oasis_power::PowerState, oasis_power::PowerError> {
        Ok(if *self.on.lock().unwrap() { oasis_power::PowerState::On } else { oasis_power::PowerState::Off })
    }
    fn power(&self, action: oasis_power::PowerAction) -> Result<(), oasis_power::PowerError> {
        self.calls.lock().unwrap().push(action.to_string());
        while self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let on = action != oasis_power::PowerAction::Off;
        if on && self.dead_supply.load(Ordering::SeqCst) {
            *self.on.lock().unwrap() = false;
            let detail = "unspecified error".to_string();
            return Err(oasis_power::PowerError::Refused {
                address: "fake".into(),
                action: action.to_string(),
                detail,
            });
        }
        *self.on.lock().unwrap() = on;
        Ok(())
    }
    fn pxe_once(&self) -> Result<(), oasis_power::PowerError> {
        self.calls.lock().unwrap().push("pxe".into());
        Ok(())
    }
}

/// The rack of four with a BMC each, assembled; `gone` (a voter) stops answering and
/// heartbeating. Returns the rack, the voters and `gone`'s BMC.
async fn fenced_rack() -> (Rack, Vec<String>, String, Arc<FakeBmc>) {
    let bmcs: Vec<(u8, Arc<FakeBmc>)> = (1..=4).map(|n| (n, FakeBmc::new())).collect();
    let mut rack = Rack::with_bmcs(4, &bmcs).await;
    rack.assemble().await;
    let voters: Vec<String> = rack.assembly().members.keys().cloned().collect();
    let gone = voters[2].clone();
    let bmc = bmcs[gone[1..].parse::<usize>().unwrap() - 1].1.clone();
    rack.etcd.set_up(&peer_url(&gone), false);
    (rack, voters, gone, bmc)
}

/// Heartbeats from every machine but `silent`, with etcd started where told, then `secs` later a
/// tick.
async fn after(rack: &mut Rack, secs: u64, silent: &str) -> String {
    rack.clock.0.fetch_add(secs, Ordering::SeqCst);
    heard_from_all_but(rack, silent).await;
    rack.tick().await
}

/// Heartbeats from every machine but `silent`, with etcd started where told.
async fn heard_from_all_but(rack: &mut Rack, silent: &str) {
    let ids: Vec<String> = (1..=4).map(|n| format!("m{n}")).filter(|m| m != silent).collect();
    for id in &ids {
        if rack.etcd_spec(id).is_some_and(|s| s.run) {
            rack.etcd.start(id, &peer_url(id));
        }
        rack.heartbeat(id).await;
    }
}

/// Ticks until assembly is done again, then checks that the spare (the machine that was not a
/// voter) has a member and `gone` has none.
async fn spare_takes_the_place_of(rack: &mut Rack, voters: &[String], gone: &str) {
    for _ in 0..40 {
        if after(rack, 1, gone).await == "assembled" {
            break;
        }
    }
    let members: Vec<String> = rack.assembly().members.keys().cloned().collect();
    let spare = (1..=4).map(|n| format!("m{n}")).find(|m| !voters.contains(m)).unwrap();
    assert!(members.contains(&spare) && !members.contains(&gone.to_string()), "{members:?}");
}

/// Fencing: a voter silent past `fence_after` is power-cycled once into a network boot; not
/// back within its boot time, it is powered off and given up, and the spare takes its place.
#[tokio::test]
async fn a_silent_voter_is_cycled_once_then_fenced_and_replaced_by_the_spare() {
    let (mut rack, voters, gone, bmc) = fenced_rack().await;
    after(&mut rack, 60, &gone).await;
    assert!(bmc.calls().is_empty(), "not before fence_after: {:?}", bmc.calls());
    after(&mut rack, 70, &gone).await;
    assert_eq!(bmc.calls(), ["pxe", "cycle"]);
    assert!(rack.assembly().fencing.contains_key(&gone));
    for _ in 0..3 {
        after(&mut rack, 100, &gone).await;
    }
    assert_eq!(bmc.calls(), ["pxe", "cycle"], "cycled once, given its boot time");
    after(&mut rack, 400, &gone).await;
    assert_eq!(bmc.calls(), ["pxe", "cycle", "off"]);
    spare_takes_the_place_of(&mut rack, &voters, &gone).await;
    let kinds = rack.event_kinds();
    for kind in ["machine-fenced", "power-pxe", "power-cycle", "power-off", "machine-given-up"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert_eq!(bmc.calls().len(), 3, "nothing more once given up");
}

/// A cycle that takes its time (a BMC waiting for the machine to read on) does not hold the
/// controller: ticks go on beside it, and none cycles the machine again.
#[tokio::test]
async fn a_slow_cycle_runs_beside_the_ticks() {
    let (mut rack, _, gone, bmc) = fenced_rack().await;
    bmc.slow.store(true, Ordering::SeqCst);
    rack.clock.0.fetch_add(130, Ordering::SeqCst);
    for _ in 0..3 {
        rack.clock.0.fetch_add(1, Ordering::SeqCst);
        heard_from_all_but(&mut rack, &gone).await;
        let tick = tokio::time::timeout(Duration::from_secs(20), rack.controller.tick());
        tick.await.expect("a tick ends while the BMC is busy").unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while bmc.calls() != ["pxe", "cycle"] {
        assert!(std::time::Instant::now() < deadline, "{:?}", bmc.calls());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rack.assembly().fencing.contains_key(&gone));
    bmc.slow.store(false, Ordering::SeqCst);
    after(&mut rack, 1, &gone).await;
    assert_eq!(bmc.calls(), ["pxe", "cycle"], "cycled once");
}

/// A voter that comes back after its cycle is not powered off; falling silent again within the
/// hour, it is not cycled again (said once).
#[tokio::test]
async fn a_voter_back_from_its_cycle_stays_and_is_not_cycled_in_a_loop() {
    let (mut rack, voters, gone, bmc) = fenced_rack().await;
    after(&mut rack, 130, &gone).await;
    assert_eq!(bmc.calls(), ["pxe", "cycle"]);
    // Back: heartbeats again (the fake etcd member answers again too).
    rack.etcd.set_up(&peer_url(&gone), true);
    after(&mut rack, 200, "none").await;
    assert!(rack.assembly().fencing.get(&gone).is_some_and(|f| f.back_at.is_some()));
    rack.etcd.set_up(&peer_url(&gone), false);
    for _ in 0..4 {
        after(&mut rack, 100, &gone).await;
    }
    assert_eq!(bmc.calls(), ["pxe", "cycle"], "not cycled again within the hour");
    assert!(rack.event_kinds().iter().filter(|k| *k == "machine-fenced").count() == 2, "{:?}", rack.event_kinds());
    let members: Vec<String> = rack.assembly().members.keys().cloned().collect();
    assert_eq!(members, voters, "not given up by fencing");
    // Past replace_after (600 s here) it is given up like a machine without a BMC.
    for _ in 0..40 {
        if after(&mut rack, 30, &gone).await == "assembled" && !rack.assembly().members.contains_key(&gone) {
            break;
        }
    }
    assert!(!rack.assembly().members.contains_key(&gone), "{:?}", rack.assembly().members.keys());
    assert_eq!(bmc.calls(), ["pxe", "cycle"], "and never powered off by fencing");
}

/// A voter whose BMC cannot power it on again (and that reads off) is given up at its cycle,
/// without waiting its boot time, and the spare takes its place.
#[tokio::test]
async fn a_voter_its_bmc_cannot_power_on_is_given_up_at_its_cycle() {
    let (mut rack, voters, gone, bmc) = fenced_rack().await;
    bmc.dead_supply.store(true, Ordering::SeqCst);
    after(&mut rack, 130, &gone).await;
    assert_eq!(bmc.calls(), ["pxe", "cycle"]);
    // The cycle ran beside that tick; the next one gives the machine up.
    after(&mut rack, 1, &gone).await;
    assert!(rack.assembly().fencing[&gone].given_up(), "{:?}", rack.assembly().fencing);
    spare_takes_the_place_of(&mut rack, &voters, &gone).await;
    let events = rack.api.store.events(1000).unwrap();
    assert!(events.iter().any(|e| e.kind == "machine-given-up" && e.message.contains("could not be powered on")));
    assert_eq!(bmc.calls(), ["pxe", "cycle"], "nothing more once given up");
}

/// A voter an operator powered off is not fenced: oasis does not power it on behind their back.
#[tokio::test]
async fn a_voter_an_operator_powered_off_is_left_off() {
    let (mut rack, _, gone, bmc) = fenced_rack().await;
    let mac = oasis_proto::MacAddr([2, 0, 0, 0, 0, gone[1..].parse().unwrap()]);
    let op = crate::power::PowerOp::Off;
    let off = rack.api.power.act(&rack.api.store, mac, Some(gone.clone()), op, crate::power::OPERATOR).await;
    assert_eq!(off.error, None);
    for _ in 0..4 {
        after(&mut rack, 100, &gone).await;
    }
    assert_eq!(bmc.calls(), ["off"], "never cycled");
    assert!(!rack.assembly().fencing.contains_key(&gone));
}

/// A BMC that another machine's agent reads as its own BMC is not acted through (the config gave
/// it to the wrong machine: a cycle would hit a healthy machine); the refusal says whose it is.
/// Once that machine reads another address, it is used again.
#[tokio::test]
async fn a_bmc_another_machine_reads_as_its_own_is_not_used() {
    let bmc = FakeBmc::new();
    let driver: Arc<dyn oasis_power::PowerDriver> = bmc.clone();
    let m1 = oasis_proto::MacAddr([2, 0, 0, 0, 0, 1]);
    let power = crate::power::PowerControl::with_drivers(vec![(m1, "ipmi 10.0.2.7".into(), driver)], None);
    let rack = Rack::build_with_power(2, false, power).await;
    let own_bmc = |address: [u8; 4]| {
        let mut m2 = rack.api.registry.try_lock().unwrap().get("m2").unwrap().clone();
        m2.inventory.bmc = Some(oasis_proto::LocalBmc { address: Some(address.into()), ..Default::default() });
        m2
    };
    let cycle = crate::power::PowerOp::Cycle;

    rack.api.store.save_record(own_bmc([10, 0, 2, 7]), vec![]).await.unwrap();
    let refused = rack.api.power.act(&rack.api.store, m1, Some("m1".into()), cycle, crate::power::OPERATOR).await;
    let why = refused.error.unwrap_or_default();
    assert!(why.contains("machine m2 reads as its own") && why.contains("02:00:00:00:00:02"), "{why}");
    assert!(bmc.calls().is_empty(), "nothing was sent: {:?}", bmc.calls());
    let m2 = own_bmc([10, 0, 2, 7]);
    assert_eq!(rack.api.power.link(m1, None).as_deref(), Some("ipmi 10.0.2.7"));
    assert_eq!(rack.api.power.link(m1, m2.inventory.bmc.as_ref()).as_deref(), Some("ipmi 10.0.2.7"));
    let m2_link = rack.api.power.link(m2.boot_mac, m2.inventory.bmc.as_ref());
    assert_eq!(m2_link.as_deref(), Some("10.0.2.7 (its own; no credentials)"));
    let elsewhere = oasis_proto::LocalBmc { address: Some([10, 0, 2, 9].into()), ..Default::default() };
    assert_eq!(rack.api.power.link(m1, Some(&elsewhere)).as_deref(), Some("ipmi 10.0.2.7 (its own reads 10.0.2.9)"));

    rack.api.store.save_record(own_bmc([10, 0, 2, 8]), vec![]).await.unwrap();
    let done = rack.api.power.act(&rack.api.store, m1, Some("m1".into()), cycle, crate::power::OPERATOR).await;
    assert_eq!(done.error, None);
    assert_eq!(bmc.calls(), ["cycle"]);
}

/// `oasis machine reprovision` of a live voter: refused for a silent machine; asked, the voter's
/// member leaves while it is alive (quorum kept), the spare takes its place, and only then is the
/// machine's boot told to wipe its data disk and reboot.
#[tokio::test]
async fn a_voter_being_reprovisioned_leaves_then_is_told_to_wipe_and_reboot() {
    use crate::operator::{Action, Decision, Operator};
    let mut rack = Rack::new(4).await;
    rack.assemble().await;
    let voters: Vec<String> = rack.assembly().members.keys().cloned().collect();
    let leaving = voters[0].clone();
    let operator = Operator { api: rack.api.clone(), cluster: None };
    let ask = |machine: &str| Action::Decide { machine: machine.into(), decision: Decision::Reprovision };
    let wipe_told = |rack: &Rack| {
        let published = rack.api.desired.borrow();
        published.states.get(&leaving).and_then(|(_, s)| s.reboot.clone()).filter(|r| r.wipe_data)
    };
    // The operator judges silence by the wall clock, as heartbeats are stamped in service.
    rack.clock.0.store(crate::store::now() - 100, Ordering::SeqCst);
    after(&mut rack, 0, "none").await;
    after(&mut rack, 100, &voters[1]).await;
    let silent = operator.handle(ask(&voters[1])).await.unwrap_err().to_string();
    assert!(silent.contains("not heard from for") && silent.contains("power it on"), "{silent}");

    after(&mut rack, 1, "none").await;
    operator.handle(ask(&leaving)).await.unwrap();
    assert!(wipe_told(&rack).is_none(), "not before its member has left");
    spare_takes_the_place_of(&mut rack, &voters, &leaving).await;
    after(&mut rack, 1, "none").await;
    let wipe = wipe_told(&rack).expect("told to wipe and reboot once its member left");
    let key = rack.api.registry.lock().await.get(&leaving).unwrap().wireguard_key.clone();
    assert_eq!((wipe.boot, wipe.power_off, wipe.kexec), (key, false, false));
    let kinds = rack.event_kinds();
    assert!(kinds.iter().any(|k| k == "machine-reprovision"), "{kinds:?}");
}

#[test]
fn pass_over_records_the_machines_boot() {
    let mut assembly = Assembly::default();
    let boot_of = |id: &str| format!("{id}-boot");
    let ctx = Context { cluster: "rack", now: 5, boot_of: &boot_of, etcd: None };
    let step = Step::PassOver { machine: "m2".into(), reason: "died".into() };
    let happenings = apply_step(&mut assembly, &step, Outcome::Done, &ctx);
    assert_eq!(assembly.passed_over["m2"], "m2-boot");
    assert_eq!(happenings[0].message, "m2: died");
}

#[test]
fn reset_forgets_the_cluster_and_when_it_was_assembled() {
    let boot_of = |id: &str| format!("{id}-boot");
    let ctx = Context { cluster: "rack", now: 5, boot_of: &boot_of, etcd: None };
    let mut assembly = Assembly { assembled_at: Some(3), formed: true, token: Some("t".into()), ..Assembly::default() };
    apply_step(&mut assembly, &Step::Bootstrap { machine: "m1".into() }, Outcome::Done, &ctx);
    apply_step(&mut assembly, &Step::Reset { reason: "gone".into() }, Outcome::Done, &ctx);
    assert_eq!(assembly.assembled_at, None);
    assert!(assembly.members.is_empty() && assembly.token.is_none() && !assembly.formed);
    assert_eq!(assembly.plans_made, 1, "serials keep counting: a removed member's data is never reused");
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/assembly");

fn golden(name: &str, actual: &str) {
    oasis_testkit::assert_golden(std::path::Path::new(GOLDEN).join(name), actual);
}

/// A heartbeat a step behind: etcd prepared for a spec the machine is no longer told.
async fn stale_heartbeat(rack: &Rack, machine: &str) {
    prepared_heartbeat(rack, machine, 1).await;
}

/// A heartbeat whose etcd is prepared for spec `generation`, the agent says why not started.
async fn prepared_heartbeat(rack: &Rack, machine: &str, generation: u64) {
    let mut registry = rack.api.registry.lock().await;
    let mut heartbeat = registry.heartbeat_of(machine).unwrap().heartbeat.clone();
    heartbeat.services = vec![ServiceStatus {
        name: "etcd".into(),
        generation,
        state: ServiceState::Prepared,
        restarts: 0,
        message: Some("prepared; not started: the appliance says not to run it yet".into()),
        volatile_data: true,
    }];
    registry.record_heartbeat(machine, heartbeat, rack.clock.now());
}

fn etcd_column(rack: &Rack, machine: &str) -> Option<String> {
    rack.status.borrow().machines.iter().find(|m| m.id == machine).unwrap().etcd.clone()
}

#[tokio::test]
async fn a_healthy_status_never_shows_a_voter_as_told_not_to_run() {
    let mut rack = Rack::new(3).await;
    rack.assemble().await;
    // m3's last heartbeat is from before it was told to run; its member answers this tick.
    stale_heartbeat(&rack, "m3").await;
    assert_eq!(rack.tick().await, "assembled");
    let status = rack.status.borrow().clone();
    assert_eq!(status.health, status::Health::Healthy);
    assert_eq!(etcd_column(&rack, "m3").as_deref(), Some("running"), "its member answered this tick");
    let text = status.render();
    assert!(!text.contains("not to run") && !text.contains("prepared"), "{text}");
    golden("status-healthy.txt", &text);
}

#[tokio::test]
async fn a_member_told_to_run_and_not_answering_yet_is_starting() {
    let mut rack = Rack::new(3).await;
    for _ in 0..4 {
        rack.agents_act().await;
        rack.tick().await;
    }
    assert_eq!(rack.tick().await, "starting etcd on m2 to join");
    stale_heartbeat(&rack, "m2").await;
    rack.tick().await;
    assert_eq!(etcd_column(&rack, "m2").as_deref(), Some("starting"), "not the refusal of the spec before");
    // An up-to-date report says it in one word, not two.
    let told = rack.etcd_spec("m3").unwrap().generation;
    prepared_heartbeat(&rack, "m3", told).await;
    rack.tick().await;
    assert_eq!(
        etcd_column(&rack, "m3").as_deref(),
        Some("prepared; not started: the appliance says not to run it yet")
    );
    golden("status-joining.txt", &rack.status.borrow().render());
}

#[test]
fn health_words_are_the_ones_scripts_read() {
    let words: Vec<String> = [
        status::Health::Starting,
        status::Health::Waiting,
        status::Health::Assembling,
        status::Health::Healthy,
        status::Health::Degraded,
        status::Health::QuorumLost,
    ]
    .iter()
    .map(|h| {
        let json = serde_json::to_value(h).unwrap();
        assert_eq!(json.as_str(), Some(h.as_str()));
        h.to_string()
    })
    .collect();
    assert_eq!(words, ["starting", "waiting", "assembling", "healthy", "degraded", "quorum lost"]);
}

/// A heartbeat whose etcd is in `state` for spec `generation`.
async fn etcd_report(rack: &Rack, machine: &str, generation: u64, state: ServiceState) {
    let mut registry = rack.api.registry.lock().await;
    let mut heartbeat = registry.heartbeat_of(machine).unwrap().heartbeat.clone();
    heartbeat.services =
        vec![ServiceStatus { name: "etcd".into(), generation, state, restarts: 0, message: None, volatile_data: true }];
    registry.record_heartbeat(machine, heartbeat, rack.clock.now());
}

#[tokio::test]
async fn a_new_etcd_reaches_every_member_one_restart_at_a_time() {
    let mut rack = Rack::new(3).await;
    rack.assemble().await;
    let old = etcd_artifact();
    assert!(["m1", "m2", "m3"].iter().all(|m| rack.etcd_spec(m).unwrap().artifacts[0].sha256 == old.sha256));
    // The appliance comes back with a node image that carries another etcd.
    let new = Artifact { sha256: "cd".repeat(32), size: 11, ..old.clone() };
    let (status_tx, status) = watch::channel(Arc::default());
    let (kubeconfig, _) = watch::channel(None);
    rack.controller = Controller::new(
        settings(),
        World { api: rack.api.clone(), etcd: rack.etcd.clone(), clock: rack.clock.clone() },
        Provisions {
            ca: ClusterCa::load_or_create(&rack.api.store).unwrap(),
            etcd_artifact: Some(new.clone()),
            kubernetes: None,
        },
        Outputs { status: status_tx, kubeconfig },
    );
    rack.status = status;
    rack.etcd.calls();
    // Agents as they are: a member told another spec than it runs goes down for a round and
    // comes back on it.
    let mut running: HashMap<String, u64> =
        ["m1", "m2", "m3"].iter().map(|m| (m.to_string(), rack.etcd_spec(m).unwrap().generation)).collect();
    let mut restarting: Option<String> = None;
    let mut progress = String::new();
    for _ in 0..40 {
        for m in ["m1", "m2", "m3"] {
            let told = rack.etcd_spec(m).unwrap().generation;
            if restarting.as_deref() == Some(m) {
                rack.etcd.set_up(&peer_url(m), true);
                etcd_report(&rack, m, told, ServiceState::Running).await;
                restarting = None;
            } else if running[m] != told {
                rack.etcd.set_up(&peer_url(m), false);
                etcd_report(&rack, m, told, ServiceState::Fetching).await;
                running.insert(m.to_string(), told);
                restarting = Some(m.to_string());
            } else {
                etcd_report(&rack, m, told, ServiceState::Running).await;
            }
        }
        let down = rack.etcd.sim().members.iter().filter(|m| !m.up).count();
        assert!(down <= 1, "{down} members down at once: {:?}", rack.etcd.sim().members);
        progress = rack.tick().await;
        if progress == "assembled" && restarting.is_none() {
            break;
        }
    }
    assert_eq!(progress, "assembled");
    for m in ["m1", "m2", "m3"] {
        assert_eq!(rack.etcd_spec(m).unwrap().artifacts[0].sha256, new.sha256, "{m} runs the new etcd");
    }
    assert_eq!(rack.event_kinds().iter().filter(|k| *k == "etcd-restart").count(), 3);
    assert!(rack.etcd.calls().is_empty(), "a restart changes no membership");
}

#[test]
fn a_restart_waits_for_a_quorum_without_the_member() {
    let node = |id: &str, current: bool| Node {
        id: id.into(),
        alive: true,
        boot: "b".into(),
        peer_url: format!("https://{id}:2380"),
        etcd_ready: true,
        volatile: false,
        meshed_with: ["m1", "m2", "m3"].map(String::from).into(),
        etcd_current: current,
        given_up: false,
        leaving: false,
    };
    let old = Some(etcd_artifact());
    let plan = |serial| MemberPlan {
        boot: "b".into(),
        state: planner::InitialState::Existing,
        initial_cluster: String::new(),
        serial,
        etcd: old.clone(),
    };
    let nodes = vec![node("m1", true), node("m2", true), node("m3", true)];
    let assembly = Assembly {
        roles: nodes.iter().map(|n| (n.id.clone(), Role::ControlPlane)).collect(),
        token: Some("t".into()),
        formed: true,
        members: nodes.iter().zip(1..).map(|(n, i)| (n.id.clone(), plan(i))).collect(),
        ..Assembly::default()
    };
    let member = |i: u64, healthy: bool| Member {
        id: i,
        name: format!("m{i}"),
        peer_url: format!("https://m{i}:2380"),
        learner: false,
        healthy,
    };
    let settings = Settings { control_plane: 3, min_machines: 1, etcd_sha256: Some("cd".repeat(32)) };
    // m3 is down: it goes first (restarting it costs nothing); m1 then waits for m3 to be back.
    let members = [member(1, true), member(2, true), member(3, false)];
    let step = planner::plan(&settings, &nodes, &assembly, Some(&members), true);
    assert!(matches!(&step, Step::Restart { machine, .. } if machine == "m3"), "{step:?}");
    let mut rolled = assembly.clone();
    rolled.members.get_mut("m3").unwrap().etcd = Some(Artifact { sha256: "cd".repeat(32), ..etcd_artifact() });
    let nodes_m3_back = vec![node("m1", true), node("m2", true), node("m3", true)];
    let step = planner::plan(&settings, &nodes_m3_back, &rolled, Some(&members), true);
    assert!(matches!(&step, Step::Wait(w) if w.starts_with("quorum to restart etcd on m1")), "{step:?}");
    // A restart under way (m1 not yet on its new spec) holds the next one back.
    let mut busy = assembly.clone();
    busy.members.get_mut("m1").unwrap().etcd = Some(Artifact { sha256: "cd".repeat(32), ..etcd_artifact() });
    let nodes = vec![node("m1", false), node("m2", true), node("m3", true)];
    let all_up = [member(1, true), member(2, true), member(3, true)];
    let step = planner::plan(&settings, &nodes, &busy, Some(&all_up), true);
    assert!(matches!(&step, Step::Wait(w) if w.starts_with("etcd on m1 to run its new spec")), "{step:?}");
}

#[tokio::test]
async fn a_machine_not_heard_from_since_the_appliance_started_is_alive_for_the_grace_only() {
    let mut rack = Rack::new(1).await;
    // A new boot registered long ago, and no heartbeat since this appliance started.
    {
        let mut registry = rack.api.registry.lock().await;
        let mut record = registry.get("m1").unwrap().clone();
        record.wireguard_key = "key-m1-1".into();
        registry.apply(record);
        assert!(registry.heartbeat_of("m1").is_none());
    }
    rack.tick().await;
    assert!(rack.status.borrow().machines[0].alive, "within dead_after + the reconnect grace of the start");
    let grace = settings().dead_after.as_secs() + RECONNECT_GRACE_SECS;
    rack.clock.0.store(START + grace, Ordering::SeqCst);
    rack.tick().await;
    assert!(!rack.status.borrow().machines[0].alive, "not heard from for longer than the grace");
}

mod rollout;

//! The session against fakes: scripted appliance answers, a link that records what it was told,
//! a clock that records sleeps instead of sleeping.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use oasis_proto::{MeshConfig, MeshPeer, MeshPeerStatus, ServiceSpec, ServiceStatus};

use super::*;
use crate::link::LinkError;
use crate::mesh::{MeshError, MeshReport};

#[derive(Debug, Clone)]
enum Call {
    Register(Box<RegisterRequest>),
    Heartbeat(Ipv4Addr, String, Box<Heartbeat>),
    Desired(u64),
}

/// Answers from scripts; when the register or heartbeat script runs out, it signals `done` and
/// never answers again, which ends the test.
#[derive(Default)]
struct FakeApi {
    registers: Mutex<VecDeque<Result<RegisterResponse, ApiError>>>,
    heartbeats: Mutex<VecDeque<Result<(), ApiError>>>,
    desired: Mutex<VecDeque<Result<DesiredState, ApiError>>>,
    calls: Mutex<Vec<Call>>,
    done: Notify,
}

impl FakeApi {
    async fn end(&self) -> ! {
        self.done.notify_one();
        std::future::pending().await
    }

    fn registrations(&self) -> Vec<RegisterRequest> {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter_map(|c| if let Call::Register(r) = c { Some(*r.clone()) } else { None }).collect()
    }

    fn heartbeats(&self) -> Vec<(Ipv4Addr, String, Heartbeat)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter_map(|c| if let Call::Heartbeat(a, c, h) = c { Some((*a, c.clone(), (**h).clone())) } else { None })
            .collect()
    }
}

impl Api for Arc<FakeApi> {
    async fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, ApiError> {
        self.calls.lock().unwrap().push(Call::Register(Box::new(request.clone())));
        let next = self.registers.lock().unwrap().pop_front();
        match next {
            Some(answer) => answer,
            None => self.end().await,
        }
    }

    async fn heartbeat(&self, appliance: Ipv4Addr, credential: &str, heartbeat: &Heartbeat) -> Result<(), ApiError> {
        self.calls.lock().unwrap().push(Call::Heartbeat(appliance, credential.into(), Box::new(heartbeat.clone())));
        let next = self.heartbeats.lock().unwrap().pop_front();
        match next {
            Some(answer) => answer,
            None => self.end().await,
        }
    }

    async fn desired(&self, _appliance: Ipv4Addr, _credential: &str, after: u64) -> Result<DesiredState, ApiError> {
        self.calls.lock().unwrap().push(Call::Desired(after));
        let next = self.desired.lock().unwrap().pop_front();
        match next {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }
}

#[derive(Default)]
struct FakeLink {
    configured: Mutex<Vec<LinkConfig>>,
    failures_left: Mutex<u32>,
}

impl Link for Arc<FakeLink> {
    async fn configure(&self, config: &LinkConfig) -> Result<(), LinkError> {
        let mut failures = self.failures_left.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(LinkError::BadPrefix(config.prefix_len));
        }
        self.configured.lock().unwrap().push(config.clone());
        Ok(())
    }

    fn handshake_age(&self) -> Option<Duration> {
        Some(Duration::from_secs(3))
    }
}

/// Records what it was told, in one list with the services' calls, so the order shows.
#[derive(Default)]
struct FakeMesh {
    calls: Arc<Mutex<Vec<String>>>,
    failures_left: Mutex<u32>,
    /// Fail as the kernel does, with the refusal as the netlink error's cause.
    netlink_refuses: Mutex<bool>,
}

impl Mesh for Arc<FakeMesh> {
    async fn apply(&self, config: Option<&MeshConfig>) -> Result<(), MeshError> {
        self.calls.lock().unwrap().push(format!("mesh {:?}", config.map(|c| c.peers.len())));
        let mut failures = self.failures_left.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            if *self.netlink_refuses.lock().unwrap() {
                let source = rtnetlink::Error::NamespaceError("Operation not permitted (os error 1)".into());
                let what = "adding address 10.1.0.4/16 to oasis-mesh".into();
                return Err(MeshError::Network(crate::network::NetworkError::Netlink { what, source }));
            }
            return Err(MeshError::BadPrefix(40));
        }
        Ok(())
    }

    async fn report(&self) -> MeshReport {
        MeshReport {
            endpoint: Some("10.0.0.23:51821".parse().unwrap()),
            peers: vec![
                MeshPeerStatus { key: "peer-a".into(), handshake_age_secs: Some(4) },
                MeshPeerStatus { key: "peer-b".into(), handshake_age_secs: None },
            ],
        }
    }
}

#[derive(Default)]
struct FakeServices {
    calls: Arc<Mutex<Vec<String>>>,
    access: Mutex<Option<Access>>,
    listed: Mutex<Vec<ServiceSpec>>,
}

impl Services for Arc<FakeServices> {
    fn set_access(&self, access: Access) {
        *self.access.lock().unwrap() = Some(access);
    }

    fn apply(&self, specs: &[ServiceSpec]) {
        self.calls.lock().unwrap().push(format!("services {}", specs.len()));
        *self.listed.lock().unwrap() = specs.to_vec();
    }

    async fn halt(&self) {
        self.calls.lock().unwrap().push("services halt".into());
        self.listed.lock().unwrap().clear();
    }

    fn status(&self) -> Vec<ServiceStatus> {
        let listed = self.listed.lock().unwrap();
        listed
            .iter()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                generation: s.generation,
                state: ServiceState::Running,
                restarts: 1,
                message: None,
                volatile_data: true,
            })
            .collect()
    }
}

/// A data disk that records its release in the shared call list.
#[derive(Default)]
struct FakeDisks {
    calls: Arc<Mutex<Vec<String>>>,
}

impl crate::disk::DataDisks for FakeDisks {
    fn apply(&self, wanted: Option<&oasis_proto::DataDisk>) {
        if wanted.is_some() {
            self.calls.lock().unwrap().push("disk apply".into());
        }
    }

    fn status(&self) -> Option<oasis_proto::DataDiskStatus> {
        None
    }

    fn release(&self) -> Result<(), crate::disk::DiskError> {
        self.calls.lock().unwrap().push("disk release".into());
        Ok(())
    }

    fn wipe(&self) -> Result<Option<String>, crate::disk::DiskError> {
        self.calls.lock().unwrap().push("disk wipe".into());
        Ok(Some("vdb".into()))
    }
}

/// The kernel, initramfs and command line a load got.
type Loaded = (Vec<u8>, Option<Vec<u8>>, String);

/// Serves files by URL and records downloads, loads and reboots in the shared call list; every
/// reboot is refused (EPERM), so the session goes on and shows what it did.
#[derive(Default)]
struct FakePower {
    calls: Arc<Mutex<Vec<String>>>,
    files: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    /// The kernel, initramfs and command line loaded.
    loaded: Mutex<Option<Loaded>>,
}

impl crate::reboot::Power for FakePower {
    fn fetch<'a>(
        &'a self,
        url: &'a str,
        dest: &'a std::path::Path,
    ) -> crate::reboot::BoxFuture<'a, Result<u64, crate::reboot::FetchError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(format!("fetch {url}"));
            let Some(bytes) = self.files.lock().unwrap().get(url).cloned() else {
                return Err(crate::reboot::FetchError::Status { url: url.into(), status: 404 });
            };
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, &bytes).unwrap();
            Ok(bytes.len() as u64)
        })
    }

    fn load(&self, kernel: &std::path::Path, initrd: Option<&std::path::Path>, cmdline: &str) -> std::io::Result<()> {
        self.calls.lock().unwrap().push("kexec load".into());
        let initrd = initrd.map(|p| std::fs::read(p).unwrap());
        *self.loaded.lock().unwrap() = Some((std::fs::read(kernel).unwrap(), initrd, cmdline.into()));
        Ok(())
    }

    fn power_off(&self) -> std::io::Error {
        self.calls.lock().unwrap().push("power off".into());
        std::io::Error::from_raw_os_error(libc::EPERM)
    }

    fn reboot(&self, kexec: bool) -> std::io::Error {
        self.calls.lock().unwrap().push(if kexec { "reboot kexec" } else { "reboot firmware" }.into());
        std::io::Error::from_raw_os_error(libc::EPERM)
    }
}

#[derive(Default)]
struct FakeClock {
    sleeps: Mutex<Vec<Duration>>,
}

impl Clock for Arc<FakeClock> {
    async fn sleep(&self, duration: Duration) {
        self.sleeps.lock().unwrap().push(duration);
        tokio::task::yield_now().await;
    }

    fn uptime(&self) -> Duration {
        self.sleeps.lock().unwrap().iter().sum()
    }
}

#[derive(Default)]
struct FakeConsole {
    blocks: Mutex<Vec<String>>,
}

impl Console for Arc<FakeConsole> {
    fn show(&self, block: &str) {
        self.blocks.lock().unwrap().push(block.to_string());
    }
}

struct Fakes {
    api: Arc<FakeApi>,
    link: Arc<FakeLink>,
    mesh: Arc<FakeMesh>,
    services: Arc<FakeServices>,
    clock: Arc<FakeClock>,
    console: Arc<FakeConsole>,
    disks: Arc<FakeDisks>,
    power: Arc<FakePower>,
    /// The kernel command line the session's [`Rebooter`] reads `oasis.boot=` from.
    cmdline: String,
    downloads: tempfile::TempDir,
    /// The machine's BMC as its inventory says, and its users.
    own_bmc: Option<oasis_proto::LocalBmc>,
    bmc_users: Arc<FakeBmcUsers>,
}

/// A BMC whose users are made at once (or refused), each call recorded.
#[derive(Debug, Default)]
struct FakeBmcUsers {
    made: Mutex<Vec<(u8, String)>>,
    refuse: Option<String>,
}

impl crate::bmc::BmcUsers for FakeBmcUsers {
    fn make(&self, channel: u8, user: &str) -> Result<String, String> {
        self.made.lock().unwrap().push((channel, user.to_string()));
        match &self.refuse {
            Some(why) => Err(why.clone()),
            None => Ok("pw-0123456789abc".into()),
        }
    }
}

impl Fakes {
    fn new(registers: Vec<Result<RegisterResponse, ApiError>>, heartbeats: Vec<Result<(), ApiError>>) -> Fakes {
        let api = FakeApi::default();
        *api.registers.lock().unwrap() = registers.into();
        *api.heartbeats.lock().unwrap() = heartbeats.into();
        let calls = Arc::new(Mutex::new(Vec::new()));
        Fakes {
            api: Arc::new(api),
            link: Arc::default(),
            mesh: Arc::new(FakeMesh { calls: calls.clone(), ..FakeMesh::default() }),
            services: Arc::new(FakeServices { calls: calls.clone(), ..FakeServices::default() }),
            clock: Arc::default(),
            console: Arc::default(),
            disks: Arc::new(FakeDisks { calls: calls.clone() }),
            power: Arc::new(FakePower { calls, ..FakePower::default() }),
            cmdline: String::new(),
            downloads: tempfile::tempdir().unwrap(),
            own_bmc: None,
            bmc_users: Arc::default(),
        }
    }

    /// Runs a session until a script runs out.
    async fn run(&self) {
        let identity = Identity {
            token: "join".into(),
            boot_mac: "52:54:00:12:34:56".into(),
            wireguard_key: "machine-key".into(),
            inventory: Inventory { bmc: self.own_bmc.clone(), ..Inventory::default() },
        };
        let session = Session::new(
            self.api.clone(),
            self.link.clone(),
            Cluster {
                mesh: self.mesh.clone(),
                services: self.services.clone(),
                disks: self.disks.clone(),
                reboot: Rebooter::new(
                    self.power.clone(),
                    &self.cmdline,
                    "52:54:00:12:34:56",
                    self.downloads.path().to_path_buf(),
                ),
                bmc_users: self.bmc_users.clone(),
            },
            self.clock.clone(),
            identity,
            Screen { console: self.console.clone(), address: "ens3 10.0.0.23/24".into() },
        );
        tokio::select! {
            _ = session.run() => {}
            () = self.api.done.notified() => {}
        }
    }

    fn sleeps(&self) -> Vec<Duration> {
        self.clock.sleeps.lock().unwrap().clone()
    }

    fn console(&self) -> String {
        self.console.blocks.lock().unwrap().concat()
    }
}

fn config(endpoint: &str) -> LinkConfig {
    LinkConfig {
        appliance_key: "appliance-key".into(),
        endpoint: endpoint.parse().unwrap(),
        address: "10.99.0.5".parse().unwrap(),
        prefix_len: 16,
        appliance_address: "10.99.0.1".parse().unwrap(),
        keepalive_secs: 15,
    }
}

fn answer(state: MachineState, link: Option<LinkConfig>) -> Result<RegisterResponse, ApiError> {
    Ok(RegisterResponse {
        machine_id: "m-1".into(),
        state,
        message: format!("you are {state}"),
        credential: link.as_ref().map(|_| "cred".to_string()),
        link,
        bmc_user: None,
    })
}

fn unreachable() -> ApiError {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    ApiError::Unreachable { url: "https://10.0.0.1:9443".into(), stage: "connecting", source: refused.into() }
}

fn within(d: Duration, secs: f64) -> bool {
    let s = d.as_secs_f64();
    s >= secs * 0.8 - 1e-9 && s <= secs * 1.2 + 1e-9
}

#[tokio::test]
async fn pending_machines_ask_again_with_growing_delays_and_fresh_nonces() {
    let fakes = Fakes::new(
        vec![
            answer(MachineState::Pending, None),
            answer(MachineState::Pending, None),
            answer(MachineState::Accepted, Some(config("10.0.0.1:51820"))),
        ],
        vec![Ok(())],
    );
    fakes.run().await;

    let registrations = fakes.api.registrations();
    assert_eq!(registrations.len(), 3);
    let nonces: std::collections::HashSet<_> = registrations.iter().map(|r| r.nonce.clone()).collect();
    assert_eq!(nonces.len(), 3, "every attempt needs a new nonce");
    assert!(registrations.iter().all(|r| r.wireguard_key == "machine-key" && r.token == "join"));

    let sleeps = fakes.sleeps();
    assert!(within(sleeps[0], 1.0) && within(sleeps[1], 2.0), "{sleeps:?}");
    assert_eq!(*fakes.link.configured.lock().unwrap(), vec![config("10.0.0.1:51820")]);
    let heartbeats = fakes.api.heartbeats();
    assert_eq!(heartbeats[0].0, Ipv4Addr::new(10, 99, 0, 1), "heartbeats go through the link");
    assert_eq!(heartbeats[0].1, "cred");
    let console = fakes.console();
    assert!(console.contains("state      pending: waiting for acceptance"), "{console}");
    assert!(console.contains("state      linked") && console.contains("machine    m-1"), "{console}");
}

#[tokio::test]
async fn a_rejected_machine_keeps_asking_slowly() {
    let fakes = Fakes::new(
        vec![answer(MachineState::Rejected, None), answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))],
        vec![Ok(())],
    );
    fakes.run().await;
    assert!(within(fakes.sleeps()[0], 60.0), "{:?}", fakes.sleeps());
    assert!(fakes.console().contains("REJECTED by the appliance"));
    assert!(fakes.console().contains("last error you are rejected"));
}

#[tokio::test]
async fn registration_errors_are_shown_and_retried() {
    let pin = ApiError::PinMismatch {
        url: "https://10.0.0.1:9443".into(),
        expected: "sha256:aa".into(),
        found: "sha256:bb".into(),
    };
    let refused = ApiError::Refused { status: 401, message: "wrong join token".into() };
    let fakes = Fakes::new(
        vec![
            Err(unreachable()),
            Err(pin),
            Err(refused),
            answer(MachineState::Accepted, Some(config("10.0.0.1:51820"))),
        ],
        vec![Ok(())],
    );
    fakes.run().await;
    let console = fakes.console();
    assert!(console.contains("appliance  UNREACHABLE"), "{console}");
    assert!(console.contains("connection refused"), "{console}");
    assert!(console.contains("is not the appliance this machine was booted from"), "{console}");
    assert!(console.contains("(HTTP 401): wrong join token"), "{console}");
    let sleeps = fakes.sleeps();
    assert!(within(sleeps[0], 1.0) && within(sleeps[1], 2.0) && within(sleeps[2], 4.0), "{sleeps:?}");
    assert_eq!(fakes.api.registrations().len(), 4);
}

#[tokio::test]
async fn a_lost_appliance_is_found_again_with_the_same_key_and_the_link_follows_it() {
    let fakes = Fakes::new(
        vec![
            answer(MachineState::Accepted, Some(config("10.0.0.1:51820"))),
            answer(MachineState::Accepted, Some(config("10.0.0.2:51820"))),
        ],
        vec![Ok(()), Err(unreachable()), Err(unreachable()), Err(unreachable()), Ok(())],
    );
    fakes.run().await;
    let registrations = fakes.api.registrations();
    assert_eq!(registrations.len(), 2, "one re-registration, no more");
    assert_eq!(registrations[0].wireguard_key, registrations[1].wireguard_key);
    assert_ne!(registrations[0].nonce, registrations[1].nonce);
    assert_eq!(*fakes.link.configured.lock().unwrap(), vec![config("10.0.0.1:51820"), config("10.0.0.2:51820")]);
    assert_eq!(fakes.api.heartbeats().len(), 6, "the last heartbeat runs after the re-registration");
}

#[tokio::test]
async fn two_failed_heartbeats_are_not_yet_a_lost_appliance() {
    let fakes = Fakes::new(
        vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))],
        vec![Err(unreachable()), Err(unreachable()), Ok(()), Err(unreachable()), Err(unreachable()), Ok(())],
    );
    fakes.run().await;
    assert_eq!(fakes.api.registrations().len(), 1);
    assert_eq!(fakes.api.heartbeats().len(), 7);
}

#[tokio::test]
async fn a_refused_credential_registers_again_without_touching_an_unchanged_link() {
    let fakes = Fakes::new(
        vec![
            answer(MachineState::Accepted, Some(config("10.0.0.1:51820"))),
            answer(MachineState::Accepted, Some(config("10.0.0.1:51820"))),
        ],
        vec![Err(ApiError::Refused { status: 401, message: "unknown credential".into() }), Ok(())],
    );
    fakes.run().await;
    assert_eq!(fakes.api.registrations().len(), 2);
    assert_eq!(fakes.link.configured.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_link_that_fails_is_retried() {
    let fakes = Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(())]);
    *fakes.link.failures_left.lock().unwrap() = 2;
    fakes.run().await;
    assert_eq!(fakes.link.configured.lock().unwrap().len(), 1);
    assert!(fakes.console().contains("invalid overlay prefix length"), "{}", fakes.console());
    assert_eq!(fakes.api.heartbeats().len(), 2, "the scripted one and the one that ends the test");
}

#[tokio::test]
async fn desired_state_revisions_are_reported_in_heartbeats() {
    let fakes = Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(())]);
    *fakes.api.desired.lock().unwrap() =
        vec![Err(unreachable()), Ok(DesiredState { revision: 4, ..DesiredState::default() })].into();
    fakes.run().await;
    let heartbeats = fakes.api.heartbeats();
    assert_eq!(heartbeats.last().unwrap().2.applied_revision, 4);
    let watches: Vec<u64> = fakes
        .api
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| if let Call::Desired(after) = c { Some(*after) } else { None })
        .collect();
    assert_eq!(watches, vec![0, 0, 4]);
    assert!(fakes.sleeps().contains(&WATCH_RETRY_DELAY), "a failed watch pauses before the next");
}

fn cluster_state(revision: u64) -> DesiredState {
    DesiredState {
        revision,
        role: Role::ControlPlane,
        cluster: Some("rack".into()),
        mesh: Some(MeshConfig {
            address: "10.98.0.5".parse().unwrap(),
            prefix_len: 16,
            keepalive_secs: 25,
            peers: vec![MeshPeer {
                machine_id: "m-2".into(),
                key: "peer-a".into(),
                endpoint: "10.0.0.24:51821".parse().unwrap(),
                address: "10.98.0.6".parse().unwrap(),
            }],
        }),
        services: vec![ServiceSpec {
            name: "etcd".into(),
            generation: 3,
            artifacts: vec![],
            files: vec![],
            data_dirs: vec![],
            args: vec![],
            env: vec![],
            run: true,
        }],
        data_disk: None,
        reboot: None,
    }
}

#[tokio::test]
async fn desired_state_is_applied_mesh_first_and_reported_in_heartbeats() {
    let fakes = Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(())]);
    *fakes.api.desired.lock().unwrap() = vec![Ok(cluster_state(4))].into();
    fakes.run().await;
    assert_eq!(*fakes.mesh.calls.lock().unwrap(), ["mesh Some(1)", "services 1"]);
    let access = fakes.services.access.lock().unwrap().clone().unwrap();
    assert_eq!(access, Access { appliance: Ipv4Addr::new(10, 99, 0, 1), credential: "cred".into() });

    let heartbeat = fakes.api.heartbeats()[0].2.clone();
    assert_eq!(heartbeat.applied_revision, 4);
    assert_eq!(heartbeat.mesh_endpoint, Some("10.0.0.23:51821".parse().unwrap()));
    assert_eq!(heartbeat.mesh.len(), 2);
    assert_eq!(heartbeat.services.len(), 1);
    assert_eq!((heartbeat.services[0].name.as_str(), heartbeat.services[0].generation), ("etcd", 3));
    assert_eq!(heartbeat.last_error, None);
    let console = fakes.console();
    assert!(
        console.contains("role       control-plane\nmesh       1/2 peers up\nservice    etcd running (restarts 1)\n"),
        "{console}"
    );
}

#[tokio::test]
async fn a_netlink_refusal_reaches_the_heartbeat_with_its_cause() {
    let fakes =
        Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(()), Ok(())]);
    *fakes.mesh.failures_left.lock().unwrap() = 2;
    *fakes.mesh.netlink_refuses.lock().unwrap() = true;
    *fakes.api.desired.lock().unwrap() = vec![Ok(cluster_state(4))].into();
    fakes.run().await;
    let heartbeats: Vec<Heartbeat> = fakes.api.heartbeats().into_iter().map(|h| h.2).collect();
    let reported = heartbeats[0].last_error.as_deref().unwrap();
    assert_eq!(
        reported,
        "configuring oasis-mesh failed: adding address 10.1.0.4/16 to oasis-mesh failed: Namespace error Operation \
         not permitted (os error 1)",
        "the kernel's refusal is reported once, after what was asked"
    );
}

#[tokio::test]
async fn a_mesh_that_fails_is_reported_and_retried_and_the_session_goes_on() {
    let fakes =
        Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(()), Ok(())]);
    *fakes.mesh.failures_left.lock().unwrap() = 2;
    *fakes.api.desired.lock().unwrap() = vec![Ok(cluster_state(4))].into();
    fakes.run().await;
    // Tried on arrival and at the first heartbeat; the services wait for the mesh.
    assert_eq!(*fakes.mesh.calls.lock().unwrap(), ["mesh Some(1)", "mesh Some(1)", "mesh Some(1)", "services 1"]);
    let heartbeats: Vec<Heartbeat> = fakes.api.heartbeats().into_iter().map(|h| h.2).collect();
    assert_eq!(heartbeats[0].applied_revision, 0);
    assert!(heartbeats[0].last_error.as_deref().unwrap().contains("invalid mesh prefix length /40"));
    assert_eq!(heartbeats[1].applied_revision, 4);
    assert_eq!(heartbeats[1].last_error, None);
    assert_eq!(fakes.api.registrations().len(), 1, "a failed apply never costs the link");
    let watches = fakes.api.calls.lock().unwrap().iter().filter(|c| matches!(c, Call::Desired(_))).count();
    assert_eq!(watches, 2, "the watch moves on while the apply is retried");
    assert!(fakes.console().contains("last error the appliance sent an invalid mesh prefix length /40"));
}

#[tokio::test]
async fn the_same_revision_is_applied_once() {
    let fakes = Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(())]);
    *fakes.api.desired.lock().unwrap() = vec![Ok(cluster_state(4)), Ok(cluster_state(4))].into();
    fakes.run().await;
    assert_eq!(*fakes.mesh.calls.lock().unwrap(), ["mesh Some(1)", "services 1"]);
}

#[test]
fn backoff_doubles_to_its_cap_with_bounded_jitter() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut backoff = Backoff::new(REGISTER_FIRST_DELAY, REGISTER_MAX_DELAY);
    for expected in [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0] {
        let delay = backoff.next_delay(&mut rng);
        assert!(within(delay, expected), "{delay:?} vs {expected}");
    }
    backoff.reset();
    assert!(within(backoff.next_delay(&mut rng), 1.0));
    let delays: std::collections::HashSet<_> = (0..20).map(|_| jitter(Duration::from_secs(10), &mut rng)).collect();
    assert!(delays.len() > 1, "jitter must vary");
}

#[test]
fn the_generation_is_read_from_the_kernel_command_line() {
    assert_eq!(generation_of("console=ttyS0 oasis.token=abc oasis.generation=7 quiet"), Some(7));
    assert_eq!(generation_of("oasis.generation=1 oasis.generation=2"), Some(2), "the last one wins");
    assert_eq!(generation_of("console=ttyS0 oasis.generations=3 oasis.generation=x"), None);
}

fn reboot_state(revision: u64, boot: &str, kexec: bool) -> DesiredState {
    DesiredState {
        reboot: Some(RebootRequest { generation: 2, boot: boot.into(), kexec, power_off: false, wipe_data: false }),
        ..cluster_state(revision)
    }
}

fn calls(fakes: &Fakes) -> Vec<String> {
    fakes.mesh.calls.lock().unwrap().clone()
}

#[tokio::test]
async fn a_reboot_request_for_another_boot_is_ignored() {
    let fakes = Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(())]);
    *fakes.api.desired.lock().unwrap() = vec![Ok(reboot_state(4, "an-earlier-boot", false))].into();
    fakes.run().await;
    assert_eq!(calls(&fakes), ["mesh Some(1)", "services 1"], "applied like any desired state");
    assert!(fakes.api.heartbeats().iter().all(|h| h.2.phase == "linked"));
}

#[tokio::test]
async fn a_reboot_stops_the_services_before_the_disk_is_released_before_the_machine_reboots() {
    let fakes =
        Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(()), Ok(())]);
    *fakes.api.desired.lock().unwrap() = vec![Ok(reboot_state(4, "machine-key", false))].into();
    fakes.run().await;
    let heartbeats = fakes.api.heartbeats();
    assert_eq!(heartbeats[0].2.phase, "rebooting into generation 2", "said before anything is stopped");
    assert_eq!(
        calls(&fakes),
        ["services halt", "disk release", "reboot firmware", "mesh Some(1)", "services 1"],
        "nothing of the state is applied before the reboot; the refused reboot leaves it to the next heartbeat"
    );
    assert_eq!(heartbeats[1].2.phase, "reboot into generation 2 refused");
    assert!(heartbeats[1].2.last_error.as_deref().unwrap().contains("the kernel refused to reboot into generation 2"));
    assert!(heartbeats[1].2.services.is_empty(), "stopped");
    assert_eq!((heartbeats[2].2.phase.as_str(), heartbeats[2].2.applied_revision), ("linked", 4));
    let console = fakes.console();
    assert!(console.contains("rebooting into generation 2"), "{console}");
}

/// A reprovision: the services stopped, the disk released, then wiped, the wipe told to the
/// appliance before the reboot.
#[tokio::test]
async fn a_wipe_request_wipes_the_released_disk_and_says_so_before_the_reboot() {
    let fakes =
        Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(()), Ok(())]);
    let mut state = reboot_state(4, "machine-key", false);
    if let Some(request) = &mut state.reboot {
        request.wipe_data = true;
    }
    *fakes.api.desired.lock().unwrap() = vec![Ok(state)].into();
    fakes.run().await;
    assert_eq!(calls(&fakes)[..4], ["services halt", "disk release", "disk wipe", "reboot firmware"]);
    let heartbeats = fakes.api.heartbeats();
    assert!(!heartbeats[0].2.data_disk_wiped, "not before the wipe");
    assert_eq!((heartbeats[1].2.phase.as_str(), heartbeats[1].2.data_disk_wiped), ("data disk wiped; rebooting", true));
}

#[tokio::test]
async fn a_power_off_request_stops_the_services_and_the_disk_then_powers_off() {
    let fakes =
        Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(()), Ok(())]);
    let mut state = reboot_state(4, "machine-key", false);
    state.reboot.as_mut().unwrap().power_off = true;
    *fakes.api.desired.lock().unwrap() = vec![Ok(state)].into();
    fakes.run().await;
    let heartbeats = fakes.api.heartbeats();
    assert_eq!(heartbeats[0].2.phase, "powering off (asked by an operator)", "said before anything is stopped");
    assert_eq!(
        calls(&fakes),
        ["services halt", "disk release", "power off", "mesh Some(1)", "services 1"],
        "a refused power-off leaves the state to the next heartbeat"
    );
    assert_eq!(heartbeats[1].2.phase, "power off refused");
    assert!(heartbeats[1].2.last_error.as_deref().unwrap().contains("the kernel refused to power off"));
}

/// A boot script as the appliance serves it for this machine, with a fresh token and the
/// generation it boots.
fn served_script(initrd: bool) -> String {
    let profile = oasis_pxe::script::BootProfile {
        kernel: "node/vmlinuz".into(),
        initrd: Some("node/initrd.img".into()),
        cmdline: "console=ttyS0 oasis.api=https://10.0.0.1:9443 oasis.pin=sha256:00 oasis.boot=http://10.0.0.1:8080"
            .into(),
    };
    let files = oasis_pxe::script::BootFiles {
        kernel: "generations/2/vmlinuz".into(),
        initrd: initrd.then(|| "generations/2/initrd.img".into()),
    };
    let renderer = oasis_pxe::script::ScriptRenderer::new("http://10.0.0.1:8080".into(), profile);
    let mac = oasis_proto::MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    renderer.render_boot_files(mac, "oasis.token=fresh oasis.generation=2", Some(&files)).unwrap()
}

fn kexec_fakes(kernel: &[u8]) -> Fakes {
    let mut fakes =
        Fakes::new(vec![answer(MachineState::Accepted, Some(config("10.0.0.1:51820")))], vec![Ok(()), Ok(()), Ok(())]);
    fakes.cmdline = "console=ttyS0 oasis.generation=1 oasis.boot=http://10.0.0.1:8080".into();
    let served = [
        ("http://10.0.0.1:8080/boot.ipxe?mac=52-54-00-12-34-56", served_script(true).into_bytes()),
        ("http://10.0.0.1:8080/boot/generations/2/vmlinuz", kernel.to_vec()),
        ("http://10.0.0.1:8080/boot/generations/2/initrd.img", b"initramfs 2".to_vec()),
    ];
    *fakes.power.files.lock().unwrap() = served.into_iter().map(|(u, b)| (u.to_string(), b)).collect();
    *fakes.api.desired.lock().unwrap() = vec![Ok(reboot_state(4, "machine-key", true))].into();
    fakes
}

#[tokio::test]
async fn kexec_loads_what_the_boot_script_names_and_a_refused_jump_falls_back_to_a_reboot() {
    let fakes = kexec_fakes(b"kernel 2");
    fakes.run().await;
    assert_eq!(
        calls(&fakes)[..8],
        [
            "services halt",
            "disk release",
            "fetch http://10.0.0.1:8080/boot.ipxe?mac=52-54-00-12-34-56",
            "fetch http://10.0.0.1:8080/boot/generations/2/vmlinuz",
            "fetch http://10.0.0.1:8080/boot/generations/2/initrd.img",
            "kexec load",
            "reboot kexec",
            "reboot firmware",
        ]
    );
    let (kernel, initrd, cmdline) = fakes.power.loaded.lock().unwrap().clone().unwrap();
    assert_eq!((kernel.as_slice(), initrd.as_deref()), (&b"kernel 2"[..], Some(&b"initramfs 2"[..])));
    assert!(cmdline.starts_with("initrd=initrd.img console=ttyS0 "), "{cmdline}");
    assert!(cmdline.ends_with(" oasis.token=fresh oasis.generation=2 BOOTIF=01-52-54-00-12-34-56"), "{cmdline}");
    assert!(
        fakes.console().contains(
            "kexec into generation 2 failed, rebooting through the firmware instead: the kernel refused the jump"
        ),
        "{}",
        fakes.console()
    );
}

#[tokio::test]
async fn an_empty_kernel_or_no_boot_url_falls_back_to_a_reboot_with_the_reason_kept() {
    let fakes = kexec_fakes(b"");
    fakes.run().await;
    let done = calls(&fakes);
    assert_eq!(done[3..5], ["fetch http://10.0.0.1:8080/boot/generations/2/vmlinuz", "reboot firmware"], "{done:?}");
    assert!(fakes.console().contains("is empty"), "{}", fakes.console());

    let mut fakes = kexec_fakes(b"kernel 2");
    fakes.cmdline = "console=ttyS0".into();
    fakes.run().await;
    assert_eq!(calls(&fakes)[..3], ["services halt", "disk release", "reboot firmware"]);
    assert!(fakes.console().contains("no oasis.boot="), "{}", fakes.console());
}

/// Asked for a BMC user when accepted: made once on the BMC's LAN channel, its password sent in
/// heartbeats until one is answered, then no more; asked again by a later registration of the
/// same boot, it is not made again.
#[tokio::test]
async fn a_bmc_user_asked_for_is_made_once_and_reported_until_answered() {
    let asked = || {
        let mut accepted = answer(MachineState::Accepted, Some(config("10.0.0.1:51820")));
        if let Ok(response) = &mut accepted {
            response.bmc_user = Some("oasis".into());
        }
        accepted
    };
    let mut fakes = Fakes::new(
        vec![asked(), asked()],
        vec![Err(unreachable()), Ok(()), Ok(()), Err(ApiError::Refused { status: 401, message: "who".into() }), Ok(())],
    );
    let address = Some(Ipv4Addr::new(10, 0, 2, 9));
    fakes.own_bmc = Some(oasis_proto::LocalBmc { lan_channel: Some(1), address, ..Default::default() });
    fakes.run().await;
    assert_eq!(*fakes.bmc_users.made.lock().unwrap(), [(1, "oasis".to_string())], "made once");
    let accounts: Vec<Option<BmcAccount>> = fakes.api.heartbeats().into_iter().map(|h| h.2.bmc_account).collect();
    let made = BmcAccount {
        user: "oasis".into(),
        address,
        password: Some(BmcPassword("pw-0123456789abc".into())),
        error: None,
    };
    // (The last heartbeat is the one the script ends on.)
    assert_eq!(accounts, [Some(made.clone()), Some(made), None, None, None, None], "until a heartbeat is answered");
    assert!(!format!("{:?}", fakes.api.heartbeats()).contains("pw-0123456789abc"), "no Debug output shows it");
}

/// A BMC that refuses is reported once, in words, and not asked again in this boot.
#[tokio::test]
async fn a_bmc_user_that_cannot_be_made_is_reported_not_retried() {
    let mut accepted = answer(MachineState::Accepted, Some(config("10.0.0.1:51820")));
    if let Ok(response) = &mut accepted {
        response.bmc_user = Some("oasis".into());
    }
    let mut fakes = Fakes::new(vec![accepted], vec![Ok(()), Ok(())]);
    fakes.own_bmc = Some(oasis_proto::LocalBmc { lan_channel: Some(1), ..Default::default() });
    fakes.bmc_users =
        Arc::new(FakeBmcUsers { refuse: Some("Set User Access: code 0xd4".into()), ..Default::default() });
    fakes.run().await;
    let accounts: Vec<Option<BmcAccount>> = fakes.api.heartbeats().into_iter().map(|h| h.2.bmc_account).collect();
    let failed = BmcAccount {
        user: "oasis".into(),
        address: None,
        password: None,
        error: Some("Set User Access: code 0xd4".into()),
    };
    assert_eq!(accounts, [Some(failed), None, None]);
}

//! The agent's life once its network is up: register until accepted, bring up the management
//! link, then heartbeat and watch desired state through it; when the appliance stops answering,
//! register again over the rack network with the same key and follow the link to wherever the
//! appliance now is. It never makes a second identity, and reboots only when the appliance asks
//! this very boot to (a [`RebootRequest`] carrying this boot's key; see [`crate::reboot`]).
//!
//! Each desired state is applied as it arrives: the cluster mesh first, then the services. What
//! fails is reported (heartbeat `last_error`, the console) and tried again at every heartbeat; it
//! never ends the session.
//!
//! Everything outside the agent goes through [`Api`], [`Link`], [`Mesh`], [`Services`], [`Clock`]
//! and [`Console`], so the logic is tested against fakes; the real parts are [`ApiClient`],
//! [`WireGuardLink`], [`WireGuardMesh`], [`Supervisor`], [`SystemClock`] and [`ConsoleFile`].
//!
//! [`WireGuardLink`]: crate::link::WireGuardLink
//! [`WireGuardMesh`]: crate::mesh::WireGuardMesh
//! [`Supervisor`]: crate::services::Supervisor

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use oasis_proto::{
    BmcAccount, BmcPassword, DesiredState, Heartbeat, Inventory, LinkConfig, MachineState, RebootRequest,
    RegisterRequest, RegisterResponse, Role, ServiceState, ServiceStatus, HEARTBEAT_SECS,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::client::{ApiClient, ApiError, Endpoint};
use crate::link::Link;
use crate::mesh::{Mesh, MeshReport};
use crate::reboot::Rebooter;
use crate::services::{Access, Services};
use crate::status::{self, Status};

/// Registration retries start here and double up to [`REGISTER_MAX_DELAY`].
pub const REGISTER_FIRST_DELAY: Duration = Duration::from_secs(1);
pub const REGISTER_MAX_DELAY: Duration = Duration::from_secs(30);
/// How often a rejected machine asks again (an operator may accept it later).
pub const REJECTED_DELAY: Duration = Duration::from_secs(60);
/// Heartbeats that may fail in a row before the agent registers again over the rack network.
pub const HEARTBEAT_FAILURES_BEFORE_REREGISTER: u32 = 3;
/// How long a failed desired-state watch waits before asking again.
pub const WATCH_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How often the status block is printed even when nothing changed.
pub const STATUS_REPRINT: Duration = Duration::from_secs(60);

/// The appliance's API as the session uses it.
pub trait Api: Send + Sync {
    /// Over the rack network.
    fn register(&self, request: &RegisterRequest) -> impl Future<Output = Result<RegisterResponse, ApiError>> + Send;
    /// To the appliance's overlay address, inside the management link.
    fn heartbeat(
        &self,
        appliance: Ipv4Addr,
        credential: &str,
        heartbeat: &Heartbeat,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn desired(
        &self,
        appliance: Ipv4Addr,
        credential: &str,
        after: u64,
    ) -> impl Future<Output = Result<DesiredState, ApiError>> + Send;
}

impl Api for ApiClient {
    async fn register(&self, request: &RegisterRequest) -> Result<RegisterResponse, ApiError> {
        ApiClient::register(self, request).await
    }

    async fn heartbeat(&self, appliance: Ipv4Addr, credential: &str, heartbeat: &Heartbeat) -> Result<(), ApiError> {
        ApiClient::heartbeat(self, &Endpoint::overlay(appliance), credential, heartbeat).await
    }

    async fn desired(&self, appliance: Ipv4Addr, credential: &str, after: u64) -> Result<DesiredState, ApiError> {
        ApiClient::desired(self, &Endpoint::overlay(appliance), credential, after).await
    }
}

/// Time as the session needs it.
pub trait Clock: Send + Sync {
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
    /// Time since the agent started.
    fn uptime(&self) -> Duration;
}

/// Tokio's timers and the monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock { start: Instant::now() }
    }
}

impl Clock for SystemClock {
    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }

    fn uptime(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Where the status block goes.
pub trait Console: Send + Sync {
    fn show(&self, block: &str);
}

/// A console device, `/dev/console` on a node.
#[derive(Debug)]
pub struct ConsoleFile(pub PathBuf);

impl Console for ConsoleFile {
    fn show(&self, block: &str) {
        status::print_to(&self.0, block)
    }
}

/// Who this machine is, as it registers.
#[derive(Debug, Clone)]
pub struct Identity {
    pub token: String,
    pub boot_mac: String,
    /// The WireGuard public key, base64: the same for the whole life of the agent.
    pub wireguard_key: String,
    pub inventory: Inventory,
}

/// Exponential back-off with +-20% jitter, so a rack of machines that lost the appliance
/// together do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max, next: first }
    }

    /// The next delay: the current base, jittered, and the base doubled for next time.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base, rng)
    }

    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

fn jitter(base: Duration, rng: &mut impl Rng) -> Duration {
    base.mul_f64(rng.random_range(0.8..=1.2))
}

/// Why the linked phase ended.
#[derive(Debug, PartialEq, Eq)]
enum LinkLost {
    HeartbeatsFailing,
    CredentialRefused,
    /// Not lost: the appliance asked this boot to boot again (the desired state carrying the
    /// request is pending, applied if the reboot is refused).
    RebootAsked(RebootRequest),
}

/// What makes a machine part of the cluster: its mesh, its services and its data disk, and how
/// it boots again into another node generation.
pub struct Cluster<M, V> {
    pub mesh: M,
    pub services: V,
    pub disks: std::sync::Arc<dyn crate::disk::DataDisks>,
    pub reboot: Rebooter,
    /// This machine's BMC, for the user a registration may ask for.
    pub bmc_users: std::sync::Arc<dyn crate::bmc::BmcUsers>,
}

impl<M: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for Cluster<M, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("mesh", &self.mesh).field("services", &self.services).finish_non_exhaustive()
    }
}

/// Where applying desired state stands.
#[derive(Default)]
struct Applied {
    /// The newest revision received: the next watch asks for anything after it.
    seen_revision: u64,
    /// The newest revision fully applied, as heartbeats report it.
    revision: u64,
    /// A desired state received but not yet applied (its mesh failed): retried every heartbeat.
    pending: Option<DesiredState>,
    /// Why `pending` could not be applied.
    error: Option<String>,
}

/// Without the pending state's files: they may be secrets (TLS keys).
impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field("seen_revision", &self.seen_revision)
            .field("revision", &self.revision)
            .field("pending", &self.pending.as_ref().map(|d| d.revision))
            .field("error", &self.error)
            .finish()
    }
}

impl<M: Mesh, V: Services> Cluster<M, V> {
    /// Applies the pending desired state, if there is one: the mesh first (the services may need
    /// it), then the data disk (their data may live on it), then the services, which go on in the
    /// background. Returns the role applied.
    async fn apply(&self, applied: &mut Applied) -> Option<Role> {
        let desired = applied.pending.as_ref()?;
        if let Err(error) = self.mesh.apply(desired.mesh.as_ref()).await {
            let error = oasis_proto::error_chain(&error);
            tracing::warn!(
                "cannot apply desired state {}: {error}; trying again at the next heartbeat",
                desired.revision
            );
            applied.error = Some(error);
            return None;
        }
        self.disks.apply(desired.data_disk.as_ref());
        self.services.apply(&desired.services);
        tracing::info!(
            "applied desired state {}: role {}, {} mesh peers, services [{}]",
            desired.revision,
            desired.role,
            desired.mesh.as_ref().map_or(0, |m| m.peers.len()),
            desired
                .services
                .iter()
                .map(|s| format!("{} generation {}", s.name, s.generation))
                .collect::<Vec<_>>()
                .join(", ")
        );
        applied.revision = desired.revision;
        applied.error = None;
        applied.pending.take().map(|d| d.role)
    }
}

/// The agent after its network is up. See the module comment.
#[derive(Debug)]
pub struct Session<A, L, M, V, C, S> {
    api: A,
    link: L,
    cluster: Cluster<M, V>,
    clock: C,
    identity: Identity,
    reporter: Reporter<S>,
    rng: StdRng,
    applied: Applied,
    /// The config the link was last configured with.
    configured: Option<LinkConfig>,
    /// The BMC user a registration asked for, made once per boot.
    bmc_account: BmcAccountStep,
    /// This boot wiped its data disk, as a reboot request asked: said in every heartbeat.
    data_disk_wiped: bool,
}

/// Where making the appliance's user on this machine's BMC stands, in this boot.
#[derive(Debug, Default)]
enum BmcAccountStep {
    #[default]
    NotAsked,
    /// Made (or failed), sent in every heartbeat until one is answered.
    ToReport(BmcAccount),
    Reported,
}

/// Where the session shows its status block.
#[derive(Debug)]
pub struct Screen<S> {
    pub console: S,
    /// What the status block shows for the boot interface, e.g. `ens3 10.0.0.23/24`.
    pub address: String,
}

impl<A: Api, L: Link, M: Mesh, V: Services, C: Clock, S: Console> Session<A, L, M, V, C, S> {
    pub fn new(api: A, link: L, cluster: Cluster<M, V>, clock: C, identity: Identity, screen: Screen<S>) -> Self {
        let Screen { console, address } = screen;
        let status = Status { address, state: "registering".into(), ..Status::default() };
        Session {
            api,
            link,
            cluster,
            clock,
            identity,
            reporter: Reporter { console, shown: None, shown_at: Duration::ZERO, status },
            rng: StdRng::from_os_rng(),
            applied: Applied::default(),
            configured: None,
            bmc_account: BmcAccountStep::NotAsked,
            data_disk_wiped: false,
        }
    }

    /// Runs for the life of the machine.
    pub async fn run(mut self) -> ! {
        loop {
            let (credential, config) = self.register_until_accepted().await;
            self.configure_link(&config).await;
            let why = loop {
                match self.stay_linked(&credential, &config).await {
                    LinkLost::HeartbeatsFailing => break "the appliance stopped answering heartbeats",
                    LinkLost::CredentialRefused => break "the appliance no longer accepts this machine's credential",
                    // Returns only when the kernel refused: the session goes on.
                    LinkLost::RebootAsked(request) => {
                        self.reboot(&request, &credential, config.appliance_address).await
                    }
                }
            };
            tracing::warn!("{why}: registering again over the rack network with the same key");
            self.reporter.update(self.clock.uptime(), |s| s.state = "re-registering".into());
        }
    }

    /// Registers (a new nonce each time) until accepted; returns the credential and link config.
    async fn register_until_accepted(&mut self) -> (String, LinkConfig) {
        let mut backoff = Backoff::new(REGISTER_FIRST_DELAY, REGISTER_MAX_DELAY);
        loop {
            let request = self.request();
            let delay = match self.api.register(&request).await {
                Ok(RegisterResponse {
                    state: MachineState::Accepted,
                    machine_id,
                    credential,
                    link,
                    message,
                    bmc_user,
                }) => match (credential, link) {
                    (Some(credential), Some(link)) => {
                        tracing::info!("accepted as {machine_id}: {message}");
                        if let Some(user) = bmc_user {
                            self.make_bmc_user(user).await;
                        }
                        self.reporter.update(self.clock.uptime(), |s| {
                            s.machine_id = Some(machine_id);
                            s.state = "accepted".into();
                            s.appliance_reachable = Some(true);
                            s.last_error = None;
                        });
                        return (credential, link);
                    }
                    _ => {
                        let error = "the appliance accepted this machine without a credential or link \
                                         configuration; the appliance may be a different version";
                        tracing::warn!("{error}");
                        self.reporter.update(self.clock.uptime(), |s| {
                            s.appliance_reachable = Some(true);
                            s.last_error = Some(error.into());
                        });
                        backoff.next_delay(&mut self.rng)
                    }
                },
                Ok(RegisterResponse { state: MachineState::Pending, machine_id, message, .. }) => {
                    let delay = backoff.next_delay(&mut self.rng);
                    tracing::info!("pending as {machine_id}: {message}; asking again in {} s", delay.as_secs());
                    self.reporter.update(self.clock.uptime(), |s| {
                        s.machine_id = Some(machine_id);
                        s.state = "pending: waiting for acceptance".into();
                        s.appliance_reachable = Some(true);
                        s.last_error = None;
                    });
                    delay
                }
                Ok(RegisterResponse { state: MachineState::Rejected, machine_id, message, .. }) => {
                    let delay = jitter(REJECTED_DELAY, &mut self.rng);
                    tracing::warn!(
                        "the appliance rejected this machine ({machine_id}): {message}; asking again in {} s \
                         in case an operator accepts it",
                        delay.as_secs()
                    );
                    self.reporter.update(self.clock.uptime(), |s| {
                        s.machine_id = Some(machine_id);
                        s.state = "REJECTED by the appliance".into();
                        s.appliance_reachable = Some(true);
                        s.last_error = Some(message);
                    });
                    delay
                }
                Err(error) => {
                    let delay = backoff.next_delay(&mut self.rng);
                    tracing::warn!(
                        "registration failed, trying again in {} s: {error}",
                        delay.as_secs(),
                        error = oasis_proto::error_chain(&error)
                    );
                    self.reporter.update(self.clock.uptime(), |s| {
                        s.appliance_reachable = Some(answered(&error));
                        s.last_error = Some(oasis_proto::error_chain(&error));
                    });
                    delay
                }
            };
            self.clock.sleep(delay).await;
        }
    }

    fn request(&mut self) -> RegisterRequest {
        let mut nonce = [0u8; 16];
        self.rng.fill_bytes(&mut nonce);
        RegisterRequest {
            token: self.identity.token.clone(),
            nonce: hex::encode(nonce),
            boot_mac: self.identity.boot_mac.clone(),
            wireguard_key: self.identity.wireguard_key.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            inventory: self.identity.inventory.clone(),
        }
    }

    /// Makes the link match `config` unless it already does; retries until it works, because
    /// without the link the machine is of no use to the appliance.
    async fn configure_link(&mut self, config: &LinkConfig) {
        if self.configured.as_ref() == Some(config) {
            return;
        }
        let mut backoff = Backoff::new(REGISTER_FIRST_DELAY, REGISTER_MAX_DELAY);
        loop {
            match self.link.configure(config).await {
                Ok(()) => {
                    tracing::info!(
                        "management link up: {}/{} via {}",
                        config.address,
                        config.prefix_len,
                        config.endpoint
                    );
                    self.configured = Some(config.clone());
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay(&mut self.rng);
                    let error = oasis_proto::error_chain(&error);
                    tracing::warn!(
                        "cannot bring up the management link, trying again in {} s: {error}",
                        delay.as_secs()
                    );
                    self.reporter.update(self.clock.uptime(), |s| s.last_error = Some(error));
                    self.clock.sleep(delay).await;
                }
            }
        }
    }

    /// Heartbeats and watches desired state until the appliance is lost.
    async fn stay_linked(&mut self, credential: &str, config: &LinkConfig) -> LinkLost {
        let appliance = config.appliance_address;
        let heartbeat_every = Duration::from_secs(HEARTBEAT_SECS);
        let mut failures = 0;
        let (api, clock, cluster) = (&self.api, &self.clock, &self.cluster);
        cluster.services.set_access(Access { appliance, credential: credential.to_string() });
        let mut watch = Box::pin(watch_desired(api, clock, appliance, credential, self.applied.seen_revision, false));
        self.reporter.update(clock.uptime(), |s| {
            s.state = "linked".into();
            s.handshake_age = self.link.handshake_age();
        });
        // The next heartbeat is due at a fixed time, not a fresh interval after whatever else
        // happened: desired states arriving every second must not starve the heartbeats.
        let mut next_beat = clock.uptime() + heartbeat_every;
        loop {
            tokio::select! {
                biased;
                answer = &mut watch => {
                    let failed = match answer {
                        Ok(desired) => {
                            if desired.revision != self.applied.seen_revision {
                                tracing::info!("desired state revision {}: role {}", desired.revision, desired.role);
                                self.applied.seen_revision = desired.revision;
                                let ours = self.addressed_to_us(desired.reboot.as_ref());
                                self.applied.pending = Some(desired);
                                if let Some(request) = ours {
                                    return LinkLost::RebootAsked(request);
                                }
                                let role = cluster.apply(&mut self.applied).await;
                                let error = self.applied.error.clone();
                                self.reporter.update(clock.uptime(), |s| {
                                    if role.is_some() {
                                        s.role = role;
                                    }
                                    s.last_error = error;
                                });
                            }
                            false
                        }
                        Err(error) => {
                            tracing::warn!("watching desired state failed: {error}", error = oasis_proto::error_chain(&error));
                            true
                        }
                    };
                    watch = Box::pin(watch_desired(api, clock, appliance, credential, self.applied.seen_revision, failed));
                }
                () = clock.sleep(next_beat.saturating_sub(clock.uptime())) => {
                    next_beat = clock.uptime() + heartbeat_every;
                    let retried = self.applied.pending.is_some();
                    let role = cluster.apply(&mut self.applied).await;
                    let mesh = cluster.mesh.report().await;
                    let services = cluster.services.status();
                    let apply_error = self.applied.error.clone();
                    self.reporter.update(clock.uptime(), |s| {
                        if role.is_some() {
                            s.role = role;
                        }
                        if retried {
                            s.last_error = apply_error.clone();
                        }
                        s.mesh = (!mesh.peers.is_empty()).then(|| mesh.peers_up());
                        s.services = services.iter().map(|v| (v.name.clone(), describe(v.state, v.restarts))).collect();
                    });
                    let heartbeat = self.heartbeat("linked", mesh, services);
                    let result = api.heartbeat(appliance, credential, &heartbeat).await;
                    let handshake_age = self.link.handshake_age();
                    match result {
                        Ok(()) => {
                            failures = 0;
                            if matches!(self.bmc_account, BmcAccountStep::ToReport(_)) {
                                self.bmc_account = BmcAccountStep::Reported;
                            }
                            self.reporter.update(clock.uptime(), |s| {
                                s.appliance_reachable = Some(true);
                                s.handshake_age = handshake_age;
                                s.last_error = apply_error;
                            });
                        }
                        Err(ApiError::Refused { status: 401 | 403, message }) => {
                            self.reporter.update(clock.uptime(), |s| {
                                s.appliance_reachable = Some(true);
                                s.last_error = Some(message);
                            });
                            return LinkLost::CredentialRefused;
                        }
                        Err(error) => {
                            failures += 1;
                            tracing::warn!(
                                "heartbeat {failures} of {HEARTBEAT_FAILURES_BEFORE_REREGISTER} failed: {}",
                                oasis_proto::error_chain(&error)
                            );
                            self.reporter.update(clock.uptime(), |s| {
                                s.appliance_reachable = Some(answered(&error));
                                s.handshake_age = handshake_age;
                                s.last_error = Some(oasis_proto::error_chain(&error));
                            });
                            if failures >= HEARTBEAT_FAILURES_BEFORE_REREGISTER {
                                return LinkLost::HeartbeatsFailing;
                            }
                        }
                    }
                }
            }
        }
    }
}

impl<A: Api, L: Link, M: Mesh, V: Services, C: Clock, S: Console> Session<A, L, M, V, C, S> {
    /// A heartbeat saying `phase`, with what the session knows now.
    fn heartbeat(&self, phase: &str, mesh: MeshReport, services: Vec<ServiceStatus>) -> Heartbeat {
        Heartbeat {
            phase: phase.into(),
            uptime_secs: self.clock.uptime().as_secs(),
            last_error: self.reporter.status.last_error.clone(),
            applied_revision: self.applied.revision,
            rss_bytes: own_rss_bytes(),
            mesh_endpoint: mesh.endpoint,
            mesh: mesh.peers,
            services,
            data_disk: self.cluster.disks.status(),
            kernel: kernel_release(),
            generation: running_generation(),
            bmc_account: match &self.bmc_account {
                BmcAccountStep::ToReport(account) => Some(account.clone()),
                _ => None,
            },
            data_disk_wiped: self.data_disk_wiped,
        }
    }

    /// Makes the user the appliance asked for on this machine's BMC, once in this boot (never
    /// again after a failure: the failure is reported, in words); what came of it goes in the
    /// heartbeats until one is answered.
    async fn make_bmc_user(&mut self, user: String) {
        if !matches!(self.bmc_account, BmcAccountStep::NotAsked) {
            return;
        }
        let own = self.identity.inventory.bmc.as_ref();
        let address = own.and_then(|b| b.address);
        let outcome = match own.and_then(|b| b.lan_channel) {
            None => Err("this machine's BMC has no LAN channel".to_string()),
            Some(channel) => {
                let (users, name) = (std::sync::Arc::clone(&self.cluster.bmc_users), user.clone());
                tokio::task::spawn_blocking(move || users.make(channel, &name))
                    .await
                    .unwrap_or_else(|e| Err(format!("making it stopped: {e}")))
            }
        };
        let (password, error) = match outcome {
            Ok(password) => {
                tracing::info!("made user {user:?} on this machine's BMC for the appliance");
                (Some(BmcPassword(password)), None)
            }
            Err(error) => {
                tracing::warn!("could not make user {user:?} on this machine's BMC for the appliance: {error}");
                (None, Some(error))
            }
        };
        self.bmc_account = BmcAccountStep::ToReport(BmcAccount { user, address, password, error });
    }

    /// Powers this machine off (an operator asked, through the appliance, for a machine without
    /// a BMC): says so, stops the services, unmounts the data disk, powers off. Returns only when
    /// the kernel refused; the services then start again at the next heartbeat.
    async fn power_off(&mut self, credential: &str, appliance: Ipv4Addr) {
        tracing::warn!("the appliance asked this boot to power off");
        self.wind_down("powering off (asked by an operator)", "powering off", credential, appliance).await;
        let refused = self.cluster.reboot.power_off();
        let error = format!(
            "the kernel refused to power off: {}; the services start again",
            oasis_proto::error_chain(&refused)
        );
        self.refused(error, "power off refused", credential, appliance).await;
    }

    /// What comes before a reboot or a power-off: `phase` said (console, heartbeat), the
    /// services stopped and waited for, the data disk unmounted. `going` ends the warnings of
    /// what could not be done ("rebooting" anyway).
    async fn wind_down(&mut self, phase: &str, going: &str, credential: &str, appliance: Ipv4Addr) {
        self.reporter.update(self.clock.uptime(), |s| s.state = phase.into());
        let mesh = self.cluster.mesh.report().await;
        let heartbeat = self.heartbeat(phase, mesh, self.cluster.services.status());
        if let Err(e) = self.api.heartbeat(appliance, credential, &heartbeat).await {
            tracing::warn!("could not tell the appliance: {}; {going} anyway", oasis_proto::error_chain(&e));
        }
        self.cluster.services.halt().await;
        if let Err(e) = self.cluster.disks.release() {
            // Synced already; the filesystem's journal covers the rest at the next mount.
            tracing::warn!("{}; {going} anyway", oasis_proto::error_chain(&e));
        }
    }

    /// The kernel refused a reboot or power-off: `error` on the console and told to the
    /// appliance at once (heartbeat phase `phase`); re-applying the desired state at the next
    /// heartbeat starts the services again and clears the error.
    async fn refused(&mut self, error: String, phase: &str, credential: &str, appliance: Ipv4Addr) {
        tracing::error!("{error}");
        self.reporter.update(self.clock.uptime(), |s| {
            s.state = "linked".into();
            s.last_error = Some(error);
        });
        let mesh = self.cluster.mesh.report().await;
        let heartbeat = self.heartbeat(phase, mesh, Vec::new());
        if let Err(e) = self.api.heartbeat(appliance, credential, &heartbeat).await {
            tracing::warn!("could not tell the appliance: {}", oasis_proto::error_chain(&e));
        }
    }

    /// `request`, if it is addressed to this boot (the key this agent registered with); a
    /// request for an earlier boot is what the appliance has not taken back yet, and is ignored.
    fn addressed_to_us(&self, request: Option<&RebootRequest>) -> Option<RebootRequest> {
        let request = request?;
        if request.boot == self.identity.wireguard_key {
            return Some(request.clone());
        }
        tracing::debug!(generation = request.generation, "a reboot request for an earlier boot: ignored");
        None
    }

    /// Wipes the released data disk (an operator's `oasis machine reprovision`) and tells the
    /// appliance before the reboot, asking up to three times: the appliance counts the
    /// reprovision done only when it heard this. Whether it was wiped; when not, the reboot is
    /// called off (the error on the console and to the appliance) and the services start again.
    async fn wipe_data_disk(&mut self, credential: &str, appliance: Ipv4Addr) -> bool {
        match self.cluster.disks.wipe() {
            Ok(wiped) => {
                tracing::warn!("data disk {} wiped, as the appliance asked", wiped.as_deref().unwrap_or("(none)"));
                self.data_disk_wiped = true;
                let mesh = self.cluster.mesh.report().await;
                let heartbeat = self.heartbeat("data disk wiped; rebooting", mesh, Vec::new());
                for attempt in 1..=3 {
                    match self.api.heartbeat(appliance, credential, &heartbeat).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(
                                "could not tell the appliance ({attempt} of 3): {}",
                                oasis_proto::error_chain(&e)
                            );
                            self.clock.sleep(Duration::from_secs(2)).await;
                        }
                    }
                }
                true
            }
            Err(error) => {
                let error = format!(
                    "the data disk could not be wiped: {}; not rebooting, the services start again",
                    oasis_proto::error_chain(&error)
                );
                self.refused(error, "wipe refused", credential, appliance).await;
                false
            }
        }
    }

    /// Boots again into generation `request.generation`: says so (console, heartbeat), stops
    /// the services and waits for them, unmounts the data disk, then jumps into the new kernel
    /// (`kexec`) or reboots through the firmware. Returns only when the kernel refused to reboot;
    /// the pending desired state then starts everything again at the next heartbeat.
    async fn reboot(&mut self, request: &RebootRequest, credential: &str, appliance: Ipv4Addr) {
        if request.power_off {
            return self.power_off(credential, appliance).await;
        }
        let generation = request.generation;
        let how = if request.kexec { "with kexec" } else { "through the firmware" };
        tracing::warn!("the appliance asked this boot to boot again into generation {generation}, {how}");
        self.wind_down(&format!("rebooting into generation {generation}"), "rebooting", credential, appliance).await;
        if request.wipe_data && !self.wipe_data_disk(credential, appliance).await {
            return;
        }
        if request.kexec {
            let error = match self.cluster.reboot.load().await {
                Ok(image) => {
                    tracing::info!("jumping into {} with arguments {:?}", image.kernel, image.cmdline);
                    self.cluster.reboot.jump()
                }
                Err(error) => error,
            };
            let error = format!(
                "kexec into generation {generation} failed, rebooting through the firmware instead: {}",
                oasis_proto::error_chain(&error)
            );
            tracing::warn!("{error}");
            self.reporter.update(self.clock.uptime(), |s| s.last_error = Some(error));
        }
        let refused = self.cluster.reboot.reboot();
        let error = format!(
            "the kernel refused to reboot into generation {generation}: {}; the services start again, \
             power-cycle this machine to boot it",
            oasis_proto::error_chain(&refused)
        );
        self.refused(error, &format!("reboot into generation {generation} refused"), credential, appliance).await;
    }
}

/// One desired-state watch, after a pause when the previous one failed.
async fn watch_desired<A: Api, C: Clock>(
    api: &A,
    clock: &C,
    appliance: Ipv4Addr,
    credential: &str,
    after: u64,
    pause_first: bool,
) -> Result<DesiredState, ApiError> {
    if pause_first {
        clock.sleep(WATCH_RETRY_DELAY).await;
    }
    api.desired(appliance, credential, after).await
}

/// A service's state for the status block: `running`, `exited (restarts 3)`.
fn describe(state: ServiceState, restarts: u32) -> String {
    let state = match state {
        ServiceState::Fetching => "fetching",
        ServiceState::Prepared => "prepared",
        ServiceState::Running => "running",
        ServiceState::Exited => "exited",
        ServiceState::Failed => "FAILED",
    };
    if restarts > 0 {
        format!("{state} (restarts {restarts})")
    } else {
        state.to_string()
    }
}

/// Whether the appliance answered at all (a refusal is an answer; a pin mismatch is not: that
/// server is not the appliance).
fn answered(error: &ApiError) -> bool {
    matches!(error, ApiError::Refused { .. } | ApiError::Malformed { .. })
}

/// Keeps the status and prints it when it changes, or every [`STATUS_REPRINT`].
#[derive(Debug)]
struct Reporter<S> {
    console: S,
    status: Status,
    /// What was printed last, without the handshake age (which changes on every heartbeat).
    shown: Option<Status>,
    shown_at: Duration,
}

impl<S: Console> Reporter<S> {
    fn update(&mut self, now: Duration, change: impl FnOnce(&mut Status)) {
        change(&mut self.status);
        let comparable = Status { handshake_age: None, ..self.status.clone() };
        if self.shown.as_ref() != Some(&comparable) || now.saturating_sub(self.shown_at) >= STATUS_REPRINT {
            self.console.show(&status::render(&self.status));
            self.shown = Some(comparable);
            self.shown_at = now;
        }
    }
}

#[cfg(test)]
mod tests;

/// The node generation this boot runs, as the boot script put it on the kernel command line.
fn running_generation() -> Option<u64> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    generation_of(&cmdline)
}

/// `oasis.generation=N` of a kernel command line; the last one wins, as the kernel's own do.
fn generation_of(cmdline: &str) -> Option<u64> {
    let prefix = format!("{}=", oasis_proto::GENERATION_ARG);
    cmdline.split_whitespace().filter_map(|arg| arg.strip_prefix(&prefix)?.parse().ok()).next_back()
}

/// The running kernel's release, as `uname -r` prints it.
fn kernel_release() -> Option<String> {
    nix::sys::utsname::uname().ok().map(|u| u.release().to_string_lossy().into_owned())
}

/// This process's resident memory (`VmRSS` in `/proc/self/status`).
fn own_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

//! The agent's life once its network is up: register until accepted, bring up the management
//! link, then heartbeat and watch desired state through it; when the appliance stops answering,
//! register again over the rack network with the same key and follow the link to wherever the
//! appliance now is. It never reboots and never makes a second identity.
//!
//! Everything outside the agent goes through [`Api`], [`Link`], [`Clock`] and [`Console`], so the
//! logic is tested against fakes; the real parts are [`ApiClient`], [`WireGuardLink`],
//! [`SystemClock`] and [`ConsoleFile`].
//!
//! [`WireGuardLink`]: crate::link::WireGuardLink

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use oasis_proto::{
    DesiredState, Heartbeat, Inventory, LinkConfig, MachineState, RegisterRequest, RegisterResponse, HEARTBEAT_SECS,
};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::client::{ApiClient, ApiError, Endpoint};
use crate::link::Link;
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
}

/// The agent after its network is up. See the module comment.
#[derive(Debug)]
pub struct Session<A, L, C, S> {
    api: A,
    link: L,
    clock: C,
    identity: Identity,
    reporter: Reporter<S>,
    rng: StdRng,
    applied_revision: u64,
    /// The config the link was last configured with.
    configured: Option<LinkConfig>,
}

impl<A: Api, L: Link, C: Clock, S: Console> Session<A, L, C, S> {
    /// `address` is what the status block shows for the boot interface, e.g. `ens3 10.0.0.23/24`.
    pub fn new(api: A, link: L, clock: C, console: S, identity: Identity, address: String) -> Self {
        let status = Status { address, state: "registering".into(), ..Status::default() };
        Session {
            api,
            link,
            clock,
            identity,
            reporter: Reporter { console, shown: None, shown_at: Duration::ZERO, status },
            rng: StdRng::from_os_rng(),
            applied_revision: 0,
            configured: None,
        }
    }

    /// Runs for the life of the machine.
    pub async fn run(mut self) -> ! {
        loop {
            let (credential, config) = self.register_until_accepted().await;
            self.configure_link(&config).await;
            let lost = self.stay_linked(&credential, &config).await;
            let why = match lost {
                LinkLost::HeartbeatsFailing => "the appliance stopped answering heartbeats",
                LinkLost::CredentialRefused => "the appliance no longer accepts this machine's credential",
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
                Ok(RegisterResponse { state: MachineState::Accepted, machine_id, credential, link, message }) => {
                    match (credential, link) {
                        (Some(credential), Some(link)) => {
                            tracing::info!("accepted as {machine_id}: {message}");
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
                    }
                }
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
                    tracing::warn!("registration failed, trying again in {} s: {error}", delay.as_secs());
                    self.reporter.update(self.clock.uptime(), |s| {
                        s.appliance_reachable = Some(answered(&error));
                        s.last_error = Some(error.to_string());
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
                    tracing::warn!(
                        "cannot bring up the management link, trying again in {} s: {error}",
                        delay.as_secs()
                    );
                    self.reporter.update(self.clock.uptime(), |s| s.last_error = Some(error.to_string()));
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
        let (api, clock) = (&self.api, &self.clock);
        let mut watch = Box::pin(watch_desired(api, clock, appliance, credential, self.applied_revision, false));
        self.reporter.update(clock.uptime(), |s| {
            s.state = "linked".into();
            s.handshake_age = self.link.handshake_age();
        });
        loop {
            tokio::select! {
                biased;
                answer = &mut watch => {
                    let failed = match answer {
                        Ok(desired) => {
                            if desired.revision != self.applied_revision {
                                tracing::info!("desired state revision {}: role {:?}", desired.revision, desired.role);
                            }
                            // Roles arrive with cluster assembly; an unassigned machine has nothing to apply.
                            self.applied_revision = desired.revision;
                            false
                        }
                        Err(error) => {
                            tracing::warn!("watching desired state failed: {error}");
                            true
                        }
                    };
                    watch = Box::pin(watch_desired(api, clock, appliance, credential, self.applied_revision, failed));
                }
                () = clock.sleep(heartbeat_every) => {
                    let heartbeat = Heartbeat {
                        phase: "linked".into(),
                        uptime_secs: clock.uptime().as_secs(),
                        last_error: self.reporter.status.last_error.clone(),
                        applied_revision: self.applied_revision,
                        rss_bytes: own_rss_bytes(),
                        ..Heartbeat::default()
                    };
                    let result = api.heartbeat(appliance, credential, &heartbeat).await;
                    let handshake_age = self.link.handshake_age();
                    match result {
                        Ok(()) => {
                            failures = 0;
                            self.reporter.update(clock.uptime(), |s| {
                                s.appliance_reachable = Some(true);
                                s.handshake_age = handshake_age;
                                s.last_error = None;
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
                                "heartbeat {failures} of {HEARTBEAT_FAILURES_BEFORE_REREGISTER} failed: {error}"
                            );
                            self.reporter.update(clock.uptime(), |s| {
                                s.appliance_reachable = Some(answered(&error));
                                s.handshake_age = handshake_age;
                                s.last_error = Some(error.to_string());
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

/// This process's resident memory (`VmRSS` in `/proc/self/status`).
fn own_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

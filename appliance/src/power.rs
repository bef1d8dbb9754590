//! Power control through the machines' BMCs (`[power]` in the config, issue 17).
//!
//! One driver per configured BMC, made once and kept for the run: a Redfish BMC with no pinned
//! fingerprint is trusted on its first certificate and stays pinned to it. Each action is one
//! request on tokio's blocking pool (drivers are blocking, with their own deadline), followed by
//! reading the state back until it is what was asked ([`oasis_power::confirm`]); nothing is
//! retried here. Every action that changes something is an event with its reason and outcome.
//! Credentials stay in the drivers: no report, event or error carries them.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oasis_core::config::power::{BmcEndpoint, BmcSettings, PowerSettings};
use oasis_core::registry::Happening;
use oasis_power::ipmi::IpmiLan;
use oasis_power::redfish::{Redfish, RedfishConfig, Tls};
use oasis_power::{PowerAction, PowerDriver, PowerState};
use oasis_proto::MacAddr;
use serde::{Deserialize, Serialize};

use crate::store::Store;

mod agent_user;
mod scan;
pub use agent_user::AGENT_USER;
use agent_user::{AgentAccount, AGENT_ACCOUNT};
pub use scan::SCAN_EVERY;

/// How long one request to a BMC may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a machine has to reach the state asked (BMCs apply power changes asynchronously).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);
const CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// What an operator (or the controller) asks of a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerOp {
    Status,
    On,
    Off,
    Cycle,
    /// The next boot, only the next, from the network.
    Pxe,
}

impl PowerOp {
    pub fn word(self) -> &'static str {
        match self {
            PowerOp::Status => "status",
            PowerOp::On => "on",
            PowerOp::Off => "off",
            PowerOp::Cycle => "cycle",
            PowerOp::Pxe => "pxe",
        }
    }

    pub fn parse(word: &str) -> Option<PowerOp> {
        [PowerOp::Status, PowerOp::On, PowerOp::Off, PowerOp::Cycle, PowerOp::Pxe]
            .into_iter()
            .find(|op| op.word() == word)
    }
}

impl fmt::Display for PowerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// What one power action on one machine came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerReport {
    /// The machine's boot MAC (its BMC is configured by it).
    pub machine: MacAddr,
    /// The machine's id, once it has registered.
    pub id: Option<String>,
    /// The BMC: `ipmi 10.0.1.2` or `redfish https://...`.
    pub bmc: String,
    pub op: PowerOp,
    /// The state read last (after the action, once it was confirmed or the wait ran out).
    pub state: Option<PowerState>,
    /// Set when the action was not done, or not confirmed: what went wrong and what to do.
    pub error: Option<String>,
    /// From the request to the state confirmed (or the error), in milliseconds.
    pub millis: u64,
}

/// How often serve reads every BMC's power state ([`PowerControl::watch`]).
pub const WATCH_EVERY: Duration = Duration::from_secs(30);

/// The configured BMCs and their drivers.
#[derive(Debug, Default)]
pub struct PowerControl {
    /// The config's, then those machines' agents made users on or the scan found, added as they
    /// are known.
    bmcs: std::sync::RwLock<Vec<Arc<Bmc>>>,
    /// `[power] agent_creates_user`.
    agent_creates_user: bool,
    /// `[[power.scan]]`: subnets of BMCs that take one user.
    scans: Vec<oasis_core::config::power::ScanSettings>,
    /// What the scans found answering, by address.
    found: std::sync::Mutex<std::collections::BTreeMap<Ipv4Addr, scan::Probe>>,
    /// `[power]`'s fencing of silent control-plane machines.
    fence: Option<oasis_core::config::power::FencePolicy>,
    /// The state each BMC read last, by machine.
    seen: std::sync::Mutex<std::collections::HashMap<MacAddr, PowerSeen>>,
    /// Machines an operator powered off, and nobody on since: oasis leaves them off (no power on
    /// at start, no fencing).
    kept_off: std::sync::Mutex<std::collections::HashSet<MacAddr>>,
}

/// The reason of an action an operator asked for (the CLI, the admin API), as its event says.
pub const OPERATOR: &str = "an operator";

/// A machine's power as its BMC read last: shown in `oasis machines`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerSeen {
    /// `None` when the BMC could not be read: then `error` says why.
    pub state: Option<PowerState>,
    pub error: Option<String>,
    /// When (Unix seconds).
    pub at: u64,
}

impl PowerSeen {
    /// The state as a word for a table (`on`, `off`), `unknown` when the BMC could not be read.
    pub fn word(&self) -> String {
        self.state.map_or_else(|| "unknown".into(), |s| s.to_string())
    }
}

#[derive(Debug)]
struct Bmc {
    /// Held from a request to its state remembered (and its event): the watch never reads a
    /// state half-way through an action and takes it for a change nobody asked for.
    turn: Arc<tokio::sync::Mutex<()>>,
    machine: MacAddr,
    /// `kind address`, for reports and events.
    name: String,
    /// Its address, when the config gives one: a machine whose agent reads this address from its
    /// own BMC owns it.
    ipv4: Option<Ipv4Addr>,
    /// A driver, or why none could be made from the config.
    driver: Result<Arc<dyn PowerDriver>, String>,
    origin: Origin,
}

/// Where oasis learnt a machine's BMC and its credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A `[[power.bmc]]`: always wins.
    Config,
    /// The user the machine's agent made (`[power] agent_creates_user`).
    Agent,
    /// A `[[power.scan]]` found it at the address the machine's agent reads from its own BMC.
    Scan,
}

impl Bmc {
    fn new(
        machine: MacAddr,
        name: String,
        ipv4: Option<Ipv4Addr>,
        driver: Result<Arc<dyn PowerDriver>, String>,
        origin: Origin,
    ) -> Arc<Bmc> {
        Arc::new(Bmc { turn: Default::default(), machine, name, ipv4, driver, origin })
    }
}

impl PowerControl {
    /// Makes a driver for each BMC of `settings` (nothing is sent yet).
    pub fn new(settings: &PowerSettings) -> PowerControl {
        let bmcs = settings
            .bmcs
            .iter()
            .map(|b| {
                let name = format!("{} {}", b.endpoint.kind(), b.endpoint.address());
                Bmc::new(b.machine, name, b.endpoint.ipv4(), driver(b), Origin::Config)
            })
            .collect();
        let mut power = PowerControl::from_bmcs(bmcs, settings.agent_creates_user, settings.fence);
        power.scans = settings.scans.clone();
        power
    }

    /// With drivers given (a fake BMC in the controller's tests): `(machine, name, driver)`, the
    /// name `kind address` as the config's are.
    pub fn with_drivers(
        drivers: Vec<(MacAddr, String, Arc<dyn PowerDriver>)>,
        fence: Option<oasis_core::config::power::FencePolicy>,
    ) -> PowerControl {
        let bmcs = drivers
            .into_iter()
            .map(|(machine, name, driver)| {
                let ipv4 = name.rsplit(' ').next().and_then(|address| address.parse().ok());
                Bmc::new(machine, name, ipv4, Ok(driver), Origin::Config)
            })
            .collect();
        PowerControl::from_bmcs(bmcs, false, fence)
    }

    fn from_bmcs(
        bmcs: Vec<Arc<Bmc>>,
        agent_creates_user: bool,
        fence: Option<oasis_core::config::power::FencePolicy>,
    ) -> PowerControl {
        PowerControl {
            bmcs: std::sync::RwLock::new(bmcs),
            agent_creates_user,
            scans: vec![],
            found: Default::default(),
            fence,
            seen: Default::default(),
            kept_off: Default::default(),
        }
    }

    /// When silent control-plane machines are fenced; `None`: never.
    pub fn fence_policy(&self) -> Option<oasis_core::config::power::FencePolicy> {
        self.fence
    }

    /// The power state `mac`'s BMC read last, if it has a BMC and was read.
    pub fn seen(&self, mac: MacAddr) -> Option<PowerSeen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).get(&mac).cloned()
    }

    /// Keeps what a report read; returns what was seen before.
    fn remember(&self, report: &PowerReport) -> Option<PowerSeen> {
        let seen = PowerSeen { state: report.state, error: report.error.clone(), at: crate::store::now() };
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(report.machine, seen)
    }

    /// serve's power work, until serve stops: the scans first (`[[power.scan]]`), then the rack
    /// powered on when `power_on_at_start`, then every [`WATCH_EVERY`] a round of
    /// [`PowerControl::watch`], and the scans again every [`SCAN_EVERY`].
    pub async fn run(&self, store: &Store, power_on_at_start: bool) {
        self.scan(store).await;
        if power_on_at_start {
            self.power_on_rack(store).await;
        }
        let mut scanned = Instant::now();
        loop {
            self.watch(store).await;
            tokio::time::sleep(WATCH_EVERY).await;
            if scanned.elapsed() >= SCAN_EVERY {
                self.scan(store).await;
                scanned = Instant::now();
            }
        }
    }

    /// Reads every BMC's power state, for `oasis machines`; a machine whose power changed
    /// without oasis asking (a button, a power cut, a BMC of its own mind) is an event,
    /// `power-changed`.
    async fn watch(&self, store: &Store) {
        let owners = BmcOwners::read(store);
        for mac in self.machines() {
            let _turn = self.turn_of(mac).await;
            let report = self.run_on(&owners, mac, None, PowerOp::Status).await;
            let before = self.remember(&report).and_then(|s| s.state);
            if let (Some(before), Some(now)) = (before, report.state) {
                if before != now {
                    if now == PowerState::On {
                        // Someone switched it on by hand: it is no longer kept off.
                        self.kept_off.lock().unwrap_or_else(|e| e.into_inner()).remove(&mac);
                    }
                    store.record_event(Happening {
                        kind: "power-changed",
                        mac: Some(mac),
                        message: format!(
                            "{mac} is {now}, was {before}, and oasis did not ask: its button, a power cut, or its BMC ({})",
                            report.bmc
                        ),
                    });
                }
            }
        }
    }

    /// Whether an operator powered `mac` off and nobody has powered it on since: oasis itself
    /// leaves it off.
    pub fn kept_off(&self, mac: MacAddr) -> bool {
        self.kept_off.lock().unwrap_or_else(|e| e.into_inner()).contains(&mac)
    }

    /// Reads from the store which machines an operator left off, so that a restarted appliance
    /// does not undo it, and the BMC users agents made. At start, before anything acts on a BMC.
    pub fn recall(&self, store: &Store) {
        *self.kept_off.lock().unwrap_or_else(|e| e.into_inner()) = operator_kept_off(store);
        match store.secrets_under(AGENT_ACCOUNT) {
            Err(error) => tracing::warn!(%error, "the BMC users agents made could not be read: not used"),
            Ok(accounts) => {
                for (name, bytes) in accounts {
                    let mac = name.strip_prefix(AGENT_ACCOUNT).and_then(|m| m.parse().ok());
                    match (mac, serde_json::from_slice::<AgentAccount>(&bytes)) {
                        (Some(mac), Ok(account)) => self.install(mac, &account),
                        _ => tracing::warn!(name, "a BMC user an agent made is not one this oasis reads: not used"),
                    }
                }
            }
        }
    }

    /// The machines with a BMC: the config's in its order, then those agents made users on.
    pub fn machines(&self) -> Vec<MacAddr> {
        self.all().iter().map(|b| b.machine).collect()
    }

    fn all(&self) -> Vec<Arc<Bmc>> {
        self.bmcs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `mac`'s BMC, if it has one.
    fn bmc(&self, mac: MacAddr) -> Option<Arc<Bmc>> {
        self.bmcs.read().unwrap_or_else(|e| e.into_inner()).iter().find(|b| b.machine == mac).cloned()
    }

    /// How machine `mac` and a BMC are linked, for `oasis machines`: the config's BMC (`ipmi
    /// 10.0.2.3`), with what its agent read from its own BMC when that differs, or only what its
    /// agent read (an address, no credentials to use it).
    pub fn link(&self, mac: MacAddr, own: Option<&oasis_proto::LocalBmc>) -> Option<String> {
        let read = own.and_then(|b| b.address);
        match (self.bmc(mac), read) {
            (Some(bmc), Some(read)) if bmc.ipv4.is_some_and(|configured| configured != read) => {
                Some(format!("{} (its own reads {read})", bmc.name))
            }
            (Some(bmc), _) if bmc.origin == Origin::Agent => Some(format!("{} (user made by its agent)", bmc.name)),
            (Some(bmc), _) if bmc.origin == Origin::Scan => Some(format!("{} (found by the scan)", bmc.name)),
            (Some(bmc), _) => Some(bmc.name.clone()),
            (None, Some(read)) => Some(format!("{read} (its own; no credentials)")),
            (None, None) => None,
        }
    }

    /// Whether `mac` has a BMC.
    pub fn has(&self, mac: MacAddr) -> bool {
        self.bmc(mac).is_some()
    }

    /// Runs `op` on the machine `mac` (which must have a BMC: [`PowerControl::has`]) and records
    /// what it did as an event, `reason` saying who or what asked.
    pub async fn act(&self, store: &Store, mac: MacAddr, id: Option<String>, op: PowerOp, reason: &str) -> PowerReport {
        let _turn = self.turn_of(mac).await;
        let report = self.run_on(&BmcOwners::read(store), mac, id, op).await;
        self.remember(&report);
        if report.error.is_none() {
            let mut kept_off = self.kept_off.lock().unwrap_or_else(|e| e.into_inner());
            match op {
                PowerOp::Off if reason == OPERATOR => kept_off.insert(mac),
                PowerOp::On | PowerOp::Cycle => kept_off.remove(&mac),
                _ => false,
            };
        }
        if op != PowerOp::Status {
            store.record_event(event(&report, reason));
        }
        report
    }

    /// A power cycle into a network boot, as fencing and the rollout do it: the one-time network
    /// boot first (a machine hung in its OS starts afresh from the appliance; a BMC that refuses
    /// it still gets the cycle), then the cycle. What the cycle came to.
    pub async fn cycle_from_network(
        &self,
        store: &Store,
        mac: MacAddr,
        id: Option<String>,
        reason: &str,
    ) -> PowerReport {
        self.act(store, mac, id.clone(), PowerOp::Pxe, reason).await;
        self.act(store, mac, id, PowerOp::Cycle, reason).await
    }

    /// `mac`'s BMC to itself until the guard drops (nothing, for a machine without one).
    async fn turn_of(&self, mac: MacAddr) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let turn = Arc::clone(&self.bmc(mac)?.turn);
        Some(turn.lock_owned().await)
    }

    /// Runs `op` through `mac`'s BMC, on the blocking pool; not at all when another machine reads
    /// that BMC as its own (`owners`).
    async fn run_on(&self, owners: &BmcOwners, mac: MacAddr, id: Option<String>, op: PowerOp) -> PowerReport {
        let Some(bmc) = self.bmc(mac) else {
            return PowerReport {
                machine: mac,
                id,
                bmc: String::new(),
                op,
                state: None,
                error: Some(format!("{mac} has no BMC in the config's [power]")),
                millis: 0,
            };
        };
        let started = Instant::now();
        let outcome = match (&bmc.driver, owners.other_than(mac, bmc.ipv4)) {
            (_, Some(owner)) => Err(format!(
                "not done: {} is the BMC that machine {} reads as its own, yet the config's [[power.bmc]] \
                 gives it to {mac}; through it oasis would power the wrong machine. Give that [[power.bmc]] \
                 the boot MAC of the machine it belongs to ({}), or {mac}'s own BMC, and restart oasis",
                bmc.name, owner.id, owner.boot_mac
            )),
            (Err(why), None) => Err(why.clone()),
            (Ok(driver), None) => {
                let driver = Arc::clone(driver);
                tokio::task::spawn_blocking(move || run(driver.as_ref(), op))
                    .await
                    .unwrap_or_else(|e| Err(format!("the power request stopped: {e}")))
            }
        };
        let millis = started.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        let (state, error) = match outcome {
            Ok(state) => (state, None),
            Err(error) => (None, Some(error)),
        };
        PowerReport { machine: mac, id, bmc: bmc.name.clone(), op, state, error, millis }
    }
}

/// Which registered machine reads which BMC address as its own (its agent asks the BMC through
/// the kernel: [`oasis_proto::LocalBmc`]), read from the store once per round of actions.
#[derive(Debug, Default)]
struct BmcOwners(std::collections::HashMap<Ipv4Addr, BmcOwner>);

#[derive(Debug, Clone)]
struct BmcOwner {
    id: String,
    boot_mac: MacAddr,
}

impl BmcOwners {
    fn read(store: &Store) -> BmcOwners {
        let records = store.records().unwrap_or_else(|error| {
            tracing::warn!(%error, "the machines' own BMC addresses could not be read: none is checked");
            vec![]
        });
        BmcOwners(
            records
                .into_iter()
                .filter_map(|r| {
                    let address = r.inventory.bmc.as_ref()?.address?;
                    Some((address, BmcOwner { id: r.id, boot_mac: r.boot_mac }))
                })
                .collect(),
        )
    }

    /// The machine other than `mac` whose own BMC answers at `address`.
    fn other_than(&self, mac: MacAddr, address: Option<Ipv4Addr>) -> Option<&BmcOwner> {
        self.0.get(&address?).filter(|owner| owner.boot_mac != mac)
    }
}

impl PowerControl {
    /// `[power] power_on_at_start`: once the appliance serves, every machine with a BMC that
    /// reads off is powered on, one after another in the config's order, then the BMCs the scans
    /// found off that no machine reads as its own yet. A machine an operator
    /// powered off (its newest power event is `power-off`) stays off: a restart of the appliance
    /// does not undo what an operator did.
    async fn power_on_rack(&self, store: &Store) {
        const REASON: &str = "the appliance came up; [power] power_on_at_start";
        for mac in self.machines() {
            if self.kept_off(mac) {
                tracing::info!(%mac, "left off at start: an operator powered it off");
                continue;
            }
            let status = self.act(store, mac, None, PowerOp::Status, REASON).await;
            match status.state {
                Some(PowerState::Off) => {
                    self.act(store, mac, None, PowerOp::On, REASON).await;
                }
                Some(PowerState::On) => {}
                None => store.record_event(event(&status, REASON)),
            }
        }
        self.power_on_found(store, REASON).await;
    }
}

/// The machines whose newest power event is an operator's `power-off`. The store keeps the
/// newest 10 000 events, which bounds this read.
fn operator_kept_off(store: &Store) -> std::collections::HashSet<MacAddr> {
    let Ok(events) = store.events(usize::MAX) else { return Default::default() };
    let mut newest: std::collections::HashMap<MacAddr, bool> = std::collections::HashMap::new();
    for e in events.iter().filter(|e| e.kind.starts_with("power-") && e.kind != "power-failed") {
        if let Some(mac) = e.mac {
            // Oldest first: the newest overwrites.
            newest.insert(mac, e.kind == "power-off" && e.message.contains("(an operator)"));
        }
    }
    newest.into_iter().filter_map(|(mac, off)| off.then_some(mac)).collect()
}

/// A driver for one configured BMC, or why the config cannot make one.
fn driver(bmc: &BmcSettings) -> Result<Arc<dyn PowerDriver>, String> {
    match &bmc.endpoint {
        BmcEndpoint::Ipmi { address } => ipmi_driver(address, &bmc.user, bmc.password.expose()),
        BmcEndpoint::Redfish { url, fingerprint } => Redfish::new(RedfishConfig {
            url: url.clone(),
            user: bmc.user.clone(),
            password: bmc.password.expose().to_string(),
            timeout: REQUEST_TIMEOUT,
            system: None,
            tls: fingerprint.map_or(Tls::TrustOnFirstUse, Tls::Pinned),
            accept_continuous_pxe: false,
        })
        .map(|d| Arc::new(d) as Arc<dyn PowerDriver>)
        .map_err(|e| e.to_string()),
    }
}

/// An IPMI-over-LAN driver for the BMC at `address` (`HOST[:PORT]`), or why none can be made:
/// the config's, the users agents made and the BMCs the scans found are all driven this way.
fn ipmi_driver(address: &str, user: &str, password: &str) -> Result<Arc<dyn PowerDriver>, String> {
    IpmiLan::new(address, user, password, REQUEST_TIMEOUT)
        .map(|d| Arc::new(d) as Arc<dyn PowerDriver>)
        .map_err(|e| e.to_string())
}

/// One action, then its state read back until it is what was asked (or the wait runs out,
/// which is an error: the BMC accepted and did not do it).
fn run(driver: &dyn PowerDriver, op: PowerOp) -> Result<Option<PowerState>, String> {
    let chain = |e: oasis_power::PowerError| oasis_proto::error_chain(&e);
    let (action, want) = match op {
        PowerOp::Status => return driver.status().map(Some).map_err(chain),
        PowerOp::Pxe => {
            driver.pxe_once().map_err(chain)?;
            return driver.status().map(Some).map_err(chain);
        }
        PowerOp::On => (PowerAction::On, PowerState::On),
        PowerOp::Off => (PowerAction::Off, PowerState::Off),
        PowerOp::Cycle => (PowerAction::Cycle, PowerState::On),
    };
    driver.power(action).map_err(chain)?;
    let state = oasis_power::confirm(driver, want, CONFIRM_TIMEOUT, CONFIRM_EVERY).map_err(chain)?;
    if state != want {
        return Err(format!(
            "the BMC {} accepted power {action} but the machine is still {state} after {} s: look at the machine",
            driver.address(),
            CONFIRM_TIMEOUT.as_secs()
        ));
    }
    Ok(Some(state))
}

/// The event of a power action: `power-on`, `power-off`, `power-cycle`, `power-pxe`, or
/// `power-failed`.
fn event(report: &PowerReport, reason: &str) -> Happening {
    let who = report.id.as_deref().map_or_else(|| report.machine.to_string(), str::to_string);
    match &report.error {
        None => Happening {
            kind: match report.op {
                PowerOp::On => "power-on",
                PowerOp::Off => "power-off",
                PowerOp::Cycle => "power-cycle",
                PowerOp::Pxe | PowerOp::Status => "power-pxe",
            },
            mac: Some(report.machine),
            message: match report.op {
                PowerOp::Pxe => format!("{who} boots from the network next, once, through {} ({reason})", report.bmc),
                op => format!(
                    "{who} power {op} through {} ({reason}): {} after {:.1} s",
                    report.bmc,
                    report.state.map_or("unknown".into(), |s| s.to_string()),
                    report.millis as f64 / 1000.0
                ),
            },
        },
        Some(error) => Happening {
            kind: "power-failed",
            mac: Some(report.machine),
            message: format!("{who} power {} through {} ({reason}) failed: {error}", report.op, report.bmc),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_read_and_write_their_words() {
        for op in [PowerOp::Status, PowerOp::On, PowerOp::Off, PowerOp::Cycle, PowerOp::Pxe] {
            assert_eq!(PowerOp::parse(op.word()), Some(op));
        }
        assert_eq!(PowerOp::parse("reboot"), None);
    }

    #[test]
    fn events_say_what_was_done_and_failures_why_without_credentials() {
        let machine: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let mut report = PowerReport {
            machine,
            id: Some("m1".into()),
            bmc: "ipmi 10.0.1.2".into(),
            op: PowerOp::Off,
            state: Some(PowerState::Off),
            error: None,
            millis: 1500,
        };
        let done = event(&report, "an operator");
        assert_eq!((done.kind, done.mac), ("power-off", Some(machine)));
        assert_eq!(done.message, "m1 power off through ipmi 10.0.1.2 (an operator): off after 1.5 s");
        report.error = Some("the BMC at 10.0.1.2 did not answer".into());
        let failed = event(&report, "an operator");
        assert_eq!(failed.kind, "power-failed");
        assert!(failed.message.ends_with("failed: the BMC at 10.0.1.2 did not answer"), "{}", failed.message);
    }
}

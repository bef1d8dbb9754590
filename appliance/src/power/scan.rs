//! `[[power.scan]]` (issue 17): the BMCs of a prepared rack known by a subnet and one user
//! instead of listed one by one. Every address of the subnet is tried with an RMCP+ login and a
//! Get Chassis Status, so a BMC found is one these credentials work on, its power known. A
//! machine is tied to the BMC whose address its own agent reads from its BMC ([`LocalBmc`],
//! through `/dev/ipmi0`): which BMC is which machine's is read, never guessed. Before any machine
//! has said which is its own (a rack that never booted), the BMCs found are still powered on at
//! start when `power_on_at_start` asks, in address order: that is how such a rack comes up.
//!
//! A scan sends the user name to every address of the subnet (RAKP message 1 carries it, and
//! message 3 a code keyed by the password): name only subnets that hold the rack's BMCs.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use oasis_core::config::power::ScanSettings;
use oasis_core::registry::Happening;
use oasis_power::ipmi::{IpmiLan, DEFAULT_PORT};
use oasis_power::{PowerDriver, PowerError, PowerState};
use oasis_proto::{LocalBmc, MacAddr};

use super::{ipmi_driver, Bmc, BmcOwners, Origin, PowerControl, PowerOp};
use crate::store::Store;

/// How often the subnets are scanned again: a BMC cabled or powered later is found then.
pub const SCAN_EVERY: Duration = Duration::from_secs(300);
/// How long an address has to answer a login. Silent addresses cost this much each, so they are
/// tried [`PROBES_AT_ONCE`] at a time: a /24 in about 25 s.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const PROBES_AT_ONCE: usize = 32;

/// What answered at an address of a scanned subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Probe {
    /// A BMC that took the scan's user: its power when it was tried.
    Usable(PowerState),
    /// Something that answered and cannot be used: why (wrong credentials, not IPMI).
    Unusable(String),
}

impl PowerControl {
    /// Tries every address of every `[[power.scan]]` subnet, then ties the BMCs found to the
    /// machines that read them as their own. A BMC found, or found unusable, for the first time is
    /// an event; an address that stops answering keeps what was found there (a BMC restarting
    /// is not forgotten).
    pub(super) async fn scan(&self, store: &Store) {
        if self.scans.is_empty() {
            return;
        }
        let tries: Vec<(Ipv4Addr, ScanSettings)> =
            self.scans.iter().flat_map(|scan| scan.addresses().map(move |address| (address, scan.clone()))).collect();
        let tried = tries.len();
        let probes: Vec<(Ipv4Addr, ScanSettings, Option<Probe>)> = futures::stream::iter(tries)
            .map(|(address, scan)| async move {
                let settings = scan.clone();
                let probe = tokio::task::spawn_blocking(move || probe(address, &settings)).await.unwrap_or(None);
                (address, scan, probe)
            })
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;
        let mut news = vec![];
        {
            let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            for (address, scan, probe) in probes {
                let Some(probe) = probe else { continue };
                let before = found.insert(address, probe.clone());
                let same_kind = before.is_some_and(|b| std::mem::discriminant(&b) == std::mem::discriminant(&probe));
                if !same_kind {
                    news.push(found_event(address, &scan, &probe));
                }
            }
            let usable = found.values().filter(|p| matches!(p, Probe::Usable(_))).count();
            tracing::info!(tried, usable, unusable = found.len() - usable, "scanned the [[power.scan]] subnets");
        }
        for happening in news {
            store.record_event(happening);
        }
        for (address, owner) in BmcOwners::read(store).0 {
            self.link_if_found(store, owner.boot_mac, &owner.id, address);
        }
    }

    /// At registration: ties machine `mac` (`id`) to the BMC a scan found at the address its
    /// agent reads from its own BMC (`own`), when it has no BMC yet.
    pub fn link_found(&self, store: &Store, mac: MacAddr, id: &str, own: Option<&LocalBmc>) {
        if let Some(address) = own.and_then(|b| b.address) {
            self.link_if_found(store, mac, id, address);
        }
    }

    fn link_if_found(&self, store: &Store, mac: MacAddr, id: &str, address: Ipv4Addr) {
        let usable =
            matches!(self.found.lock().unwrap_or_else(|e| e.into_inner()).get(&address), Some(Probe::Usable(_)));
        let Some(scan) = self.scans.iter().find(|scan| scan.contains(address)).filter(|_| usable) else { return };
        let endpoint = format!("{address}:{DEFAULT_PORT}");
        {
            let mut bmcs = self.bmcs.write().unwrap_or_else(|e| e.into_inner());
            // A machine with a BMC keeps it; a BMC the config gives another machine is not given
            // a second one (each action through it is refused: see `BmcOwners`).
            if bmcs.iter().any(|b| b.machine == mac || b.ipv4 == Some(address)) {
                return;
            }
            bmcs.push(Bmc::new(mac, format!("ipmi {endpoint}"), Some(address), driver(&endpoint, scan), Origin::Scan));
        }
        store.record_event(Happening {
            kind: "bmc-linked",
            mac: Some(mac),
            message: format!(
                "{id}'s agent reads {address} from its own BMC, where the scan of {} found a BMC taking user {:?}: \
                 oasis powers {id} through it",
                scan.subnet(),
                scan.user
            ),
        });
    }

    /// `power_on_at_start` for the BMCs the scans found off that no machine reads as its own
    /// yet: each powered on, one after another in address order, and said as an event.
    pub(super) async fn power_on_found(&self, store: &Store, reason: &str) {
        let linked: Vec<Option<Ipv4Addr>> = self.all().iter().map(|b| b.ipv4).collect();
        let off: Vec<Ipv4Addr> = {
            let found = self.found.lock().unwrap_or_else(|e| e.into_inner());
            found
                .iter()
                .filter(|(address, probe)| {
                    **probe == Probe::Usable(PowerState::Off) && !linked.contains(&Some(**address))
                })
                .map(|(address, _)| *address)
                .collect()
        };
        for address in off {
            let Some(scan) = self.scans.iter().find(|scan| scan.contains(address)) else { continue };
            let endpoint = format!("{address}:{DEFAULT_PORT}");
            let outcome = match driver(&endpoint, scan) {
                Err(why) => Err(why),
                Ok(driver) => tokio::task::spawn_blocking(move || super::run(driver.as_ref(), PowerOp::On))
                    .await
                    .unwrap_or_else(|e| Err(format!("the power request stopped: {e}"))),
            };
            let whose = format!("the BMC at {endpoint}, found by the scan of {} and no machine's yet", scan.subnet());
            store.record_event(match outcome {
                Ok(_) => {
                    self.found.lock().unwrap_or_else(|e| e.into_inner()).insert(address, Probe::Usable(PowerState::On));
                    Happening { kind: "power-on", mac: None, message: format!("{whose}: power on ({reason})") }
                }
                Err(error) => Happening {
                    kind: "power-failed",
                    mac: None,
                    message: format!("{whose}: power on ({reason}) failed: {error}"),
                },
            });
        }
    }
}

/// One address tried: `None` when nothing answered.
fn probe(address: Ipv4Addr, scan: &ScanSettings) -> Option<Probe> {
    let driver =
        match IpmiLan::new(&format!("{address}:{DEFAULT_PORT}"), &scan.user, scan.password.expose(), PROBE_TIMEOUT) {
            Ok(driver) => driver,
            Err(error) => return Some(Probe::Unusable(error.to_string())),
        };
    match driver.status() {
        Ok(state) => Some(Probe::Usable(state)),
        Err(PowerError::Unreachable { .. }) => None,
        Err(error) => Some(Probe::Unusable(oasis_proto::error_chain(&error))),
    }
}

/// The driver for a BMC found by `scan` at `endpoint`.
fn driver(endpoint: &str, scan: &ScanSettings) -> Result<Arc<dyn PowerDriver>, String> {
    ipmi_driver(endpoint, &scan.user, scan.password.expose())
}

/// The event of an address found answering, or answering differently than before.
fn found_event(address: Ipv4Addr, scan: &ScanSettings, probe: &Probe) -> Happening {
    let subnet = scan.subnet();
    match probe {
        Probe::Usable(state) => Happening {
            kind: "bmc-found",
            mac: None,
            message: format!(
                "the scan of {subnet} found a BMC at {address} taking user {:?} (power {state}); it is used for the \
                 machine whose agent reads {address} from its own BMC",
                scan.user
            ),
        },
        Probe::Unusable(why) => Happening {
            kind: "bmc-unusable",
            mac: None,
            message: format!(
                "the scan of {subnet} found something at {address} it cannot use: {why}. If it is a BMC of the rack, \
                 give it a [[power.bmc]] with its own credentials, or let its machine's agent make a user there \
                 ([power] agent_creates_user)"
            ),
        },
    }
}

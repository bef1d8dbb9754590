//! The agent's boot phase: drivers, then the boot link and its DHCP lease.
//!
//! [`boot`] is what runs before anything talks to the appliance; it returns [`BootNetwork`], what the
//! registration side needs to know about the node's network. The roots are parameters so the phase
//! can run against another sys tree or modules directory.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::dhcp::{self, ClientConfig, DhcpError};
use crate::drivers::{self, DriverError, DriverReport, KernelLoader, ModuleIndex};
use crate::network::{self, Netlink, NetworkError};

/// Where the boot phase reads and what it waits for.
#[derive(Debug, Clone)]
pub struct BootConfig {
    /// The sys root, `/sys`.
    pub sys: PathBuf,
    /// The modules directory, `/lib/modules/$(uname -r)`.
    pub modules: PathBuf,
    /// The kernel command line (for `BOOTIF=`).
    pub cmdline: String,
    /// How long to wait for carrier on a link.
    pub carrier_timeout: Duration,
    /// How long to wait for the first DHCP lease.
    pub dhcp_timeout: Duration,
    /// The DHCP client.
    pub dhcp: ClientConfig,
}

impl BootConfig {
    /// The node's own roots: `/sys`, `/lib/modules/$(uname -r)`, `/proc/cmdline`.
    pub fn node() -> BootConfig {
        let release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        BootConfig {
            sys: "/sys".into(),
            modules: PathBuf::from("/lib/modules").join(release),
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            carrier_timeout: Duration::from_secs(60),
            dhcp_timeout: Duration::from_secs(120),
            dhcp: ClientConfig::default(),
        }
    }
}

/// Errors of the boot phase.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The module index could not be read.
    #[error(transparent)]
    Drivers(#[from] DriverError),
    /// No usable link.
    #[error(transparent)]
    Network(#[from] NetworkError),
    /// No lease.
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
}

/// What the boot phase found: the node's network as the rest of the agent uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNetwork {
    /// The boot interface, e.g. `eth0`.
    pub interface: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The leased address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The default gateway, if the lease named one.
    pub gateway: Option<Ipv4Addr>,
    /// What driver loading did (drivers loaded, devices without one, WireGuard).
    pub drivers: DriverReport,
}

impl BootNetwork {
    /// The one-line summary printed on the console.
    pub fn summary(&self) -> String {
        format!(
            "oasis-agent: boot done: interface {} mac {} address {}/{} gateway {} wireguard {} drivers {}",
            self.interface,
            self.mac,
            self.address,
            self.prefix,
            self.gateway.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
            if self.drivers.wireguard { "loaded" } else { "MISSING" },
            if self.drivers.drivers.is_empty() { "none".to_string() } else { self.drivers.drivers.join(",") },
        )
    }
}

/// Loads drivers, brings up the boot link and gets its DHCP lease. udhcpc keeps running in a
/// background task afterwards, renewing the lease, so the caller must keep the runtime alive.
pub async fn boot(config: &BootConfig) -> Result<BootNetwork, BootError> {
    let index = ModuleIndex::read(&config.modules)?;
    let report = drivers::load_drivers(&config.sys, &index, &mut KernelLoader);
    tracing::info!(drivers = ?report.drivers, wireguard = report.wireguard, "kernel modules loaded");
    for alias in &report.unmatched {
        tracing::debug!(%alias, "no driver in the image for this device");
    }
    let net = Netlink::connect()?;
    let link = network::wait_for_boot_link(&net, &config.sys, &config.cmdline, config.carrier_timeout).await?;
    tracing::info!(interface = %link.name, mac = %link.mac, "boot link has carrier; asking DHCP");
    let lease = dhcp::start(config.dhcp.clone(), &link.name, config.dhcp_timeout).await?;
    Ok(BootNetwork {
        interface: link.name,
        mac: link.mac,
        address: lease.address,
        prefix: lease.prefix,
        gateway: lease.router,
        drivers: report,
    })
}

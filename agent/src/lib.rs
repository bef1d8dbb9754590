//! The node agent that every netbooted machine runs: inventory, registration, the WireGuard
//! management link.
//!
//! The boot phase ([`boot`]) comes first: kernel modules for the devices present ([`drivers`]), the
//! boot link through rtnetlink ([`network`]) and its DHCP lease ([`dhcp`]). Then [`run`] registers
//! the machine and keeps its management link, for the life of the machine ([`session`]), and
//! makes it what the appliance wants: a member of the cluster mesh ([`mesh`]) running the
//! cluster's services ([`services`]), booted into the node generation it names ([`reboot`]).

pub mod bmc;
pub mod boot;
pub mod client;
pub mod dhcp;
pub mod disk;
pub mod drivers;
pub mod inventory;
pub mod link;
pub mod mesh;
pub mod network;
pub mod reboot;
pub mod services;
pub mod session;
pub mod status;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use oasis_proto::KernelArgs;

use crate::client::ApiClient;
use crate::inventory::Roots;
use crate::link::{WireGuardLink, INTERFACE};
use crate::mesh::WireGuardMesh;
use crate::services::{Spawner, Supervisor};
use crate::session::{Cluster, ConsoleFile, Identity, Session, SystemClock};

/// Where the status block and fatal messages go on a node.
pub const CONSOLE: &str = "/dev/console";

/// What the boot phase found out about the network it brought up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    /// The interface the machine booted from, e.g. `ens3`.
    pub interface: String,
    /// Its MAC, `aa:bb:cc:dd:ee:ff`: the appliance knows the machine by it from DHCP.
    pub mac: String,
    /// The address DHCP gave it, with its prefix length.
    pub address: Option<(Ipv4Addr, u8)>,
}

impl BootInfo {
    /// The first hardware NIC with a carrier, address unknown: what `main` uses until the boot
    /// phase provides a `BootInfo` of its own.
    pub fn first_linked_nic(roots: &Roots) -> Option<BootInfo> {
        let inventory = inventory::read(roots);
        let nic = inventory.nics.iter().find(|n| n.link)?;
        Some(BootInfo { interface: nic.name.clone(), mac: nic.mac.clone(), address: None })
    }

    /// For the status block: `ens3 10.0.0.23/24`.
    pub fn describe(&self) -> String {
        match self.address {
            Some((ip, prefix)) => format!("{} {ip}/{prefix}", self.interface),
            None => format!("{} (address unknown)", self.interface),
        }
    }
}

/// Registers this machine with the appliance and keeps it linked, for the life of the machine.
pub async fn run(args: KernelArgs, boot: BootInfo, roots: Roots) -> ! {
    let console = Path::new(CONSOLE);
    let client = match ApiClient::new(&args.api, &args.pin) {
        Ok(client) => client,
        Err(e) => halt(console, &oasis_proto::error_chain(&e)).await,
    };
    let link = match WireGuardLink::new(INTERFACE) {
        Ok(link) => link,
        Err(e) => halt(console, &oasis_proto::error_chain(&e)).await,
    };
    let mut inventory = inventory::read(&roots);
    let sys = roots.sys.clone();
    inventory.bmc = tokio::task::spawn_blocking(move || bmc::read(&sys, Path::new(bmc::DEVICE))).await.unwrap_or(None);
    if let Some(found) = &inventory.bmc {
        tracing::info!(?found, "this machine's BMC, through its system interface");
    }
    let identity =
        Identity { token: args.token, boot_mac: boot.mac.clone(), wireguard_key: link.public_key(), inventory };
    let cluster = Cluster {
        mesh: WireGuardMesh::new(link.private_key(), &boot.interface),
        services: Supervisor::new("/".into(), client.clone(), Spawner),
        disks: std::sync::Arc::new(disk::LocalDisks::default()),
        reboot: reboot::Rebooter::new(
            std::sync::Arc::new(reboot::HostPower),
            &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            &boot.mac,
            reboot::KEXEC_DIR.into(),
        ),
        bmc_users: std::sync::Arc::new(bmc::SystemInterface(bmc::DEVICE.into())),
    };
    let screen = session::Screen { console: ConsoleFile(console.to_path_buf()), address: boot.describe() };
    Session::new(client, link, cluster, SystemClock::default(), identity, screen).run().await
}

/// Says what is wrong on the console (again every ten minutes, for whoever comes to look) and
/// keeps the machine up: exiting would panic the kernel and hide the message.
pub async fn halt(console: &Path, message: &str) -> ! {
    tracing::error!("{message}");
    loop {
        status::print_to(console, &format!("oasis node agent stopped: {message}\n"));
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_info_falls_back_to_the_first_nic_with_a_carrier() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qemu-guest");
        let roots = Roots { sys: base.join("sys"), proc: base.join("proc") };
        let boot = BootInfo::first_linked_nic(&roots).unwrap();
        assert_eq!(boot, BootInfo { interface: "ens3".into(), mac: "52:54:00:12:34:56".into(), address: None });
        assert_eq!(boot.describe(), "ens3 (address unknown)");
        let with = BootInfo { address: Some(("10.0.0.23".parse().unwrap(), 24)), ..boot };
        assert_eq!(with.describe(), "ens3 10.0.0.23/24");
    }
}

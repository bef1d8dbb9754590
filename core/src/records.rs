//! The records the store keeps besides machines' registrations ([`crate::registry::MachineRecord`])
//! and leases: machines seen network-booting, and events. Plain data; the store (redb, in
//! `oasis_appliance::store`) writes them as sealed JSON.

use std::net::Ipv4Addr;

use oasis_proto::MacAddr;
use serde::{Deserialize, Serialize};

/// A machine the appliance has seen network-boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub mac: MacAddr,
    /// Option 93 of its last boot request.
    pub arch: Option<u16>,
    pub vendor_class: Option<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Boot scripts served to it.
    pub boot_count: u64,
    pub last_ip: Option<Ipv4Addr>,
    /// Whether it is told to boot from the network or from its own disk.
    pub boot: BootMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Network,
    Local,
}

impl Machine {
    /// A readable name for option 93.
    pub fn firmware(&self) -> &'static str {
        use oasis_pxe::policy::arch;
        match self.arch {
            None => "unknown",
            Some(arch::BIOS_X86) => "bios",
            Some(arch::EFI_BC | arch::EFI_X86_64) => "uefi-x64",
            Some(arch::EFI_ARM64) => "uefi-arm64",
            Some(arch::EFI_X86_64_HTTP) => "uefi-x64-http",
            Some(arch::EFI_ARM64_HTTP) => "uefi-arm64-http",
            Some(_) => "other",
        }
    }
}

/// Something that happened, for `oasis events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: u64,
    pub kind: String,
    pub mac: Option<MacAddr>,
    pub message: String,
}

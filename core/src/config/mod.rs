//! `oasis.toml`: the appliance's configuration.
//!
//! Two layers, as in dora: [`RawConfig`] is what the file says (serde, defaults, unknown keys
//! refused with their name and line), and [`Config`] is what the rest of the code uses. Each
//! section is checked on its own by a `TryFrom` in [`sections`], then [`across`] checks what
//! involves several sections. Errors give the key and its line, from the parser's spans. What
//! `oasis serve` would refuse on the file alone is refused here, so `oasis config check` passes
//! nothing `serve` refuses; only what depends on the host (the interface exists, the address is
//! assigned, the boot root's files are there) is left to `serve`. `docs/oasis.toml` in the
//! repository documents every key with its default.

pub mod across;
pub mod power;
mod raw;
pub mod sections;
pub mod values;

use std::collections::HashSet;
use std::error::Error as _;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oasis_proto::MacAddr;
use oasis_pxe::dhcp::{NetworkOptions, Pool};
use oasis_pxe::script::BootProfile;
use oasis_pxe::tftp::TftpConfig;

pub use raw::{
    AcceptancePolicy, ConflictCheckKind, DataDiskPolicy, DhcpMode, RawApi, RawBoot, RawCluster, RawConfig, RawDhcp,
    RawEvents, RawHttp, RawNetwork, RawProfile, RawRegistration, RawReservation, RawTftp, RawWireguard,
};
use sections::{
    Allowlist, ClusterError, DhcpError, DhcpIn, EventsError, In, Line, Lines, NetworkError, NetworkSettings,
    ProfileSectionError, ProfileSettings, RegistrationError, TftpError, TftpSettings, UpdateError, WireguardError,
};

use crate::events::EventLimits;

/// The version of the configuration format this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Why a configuration file cannot be used. The path is in the message; what is wrong with the
/// file is the source, so print the chain (`{:#}` of an `anyhow::Error`, or [`ConfigError::problem`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}")]
    Parse { path: PathBuf, source: SyntaxError },
    #[error("{path}")]
    Invalid { path: PathBuf, source: Box<Invalid> },
}

impl ConfigError {
    /// What is wrong, without the path: the causes, each once, joined by ": "
    /// ([`oasis_proto::error_chain`] of the source).
    pub fn problem(&self) -> String {
        self.source().map(oasis_proto::error_chain).unwrap_or_default()
    }
}

/// The file is not TOML, or not of this schema (an unknown key, a value of the wrong type): the
/// parser's message, with the line and column.
#[derive(Debug)]
pub struct SyntaxError(pub Box<toml::de::Error>);

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.to_string().trim())
    }
}

impl std::error::Error for SyntaxError {}

/// A value, or a combination of values, that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("version = {found}{at} is not understood by this oasis, which reads version {CONFIG_VERSION}")]
    Version { found: u32, at: Line },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Dhcp(#[from] DhcpError),
    #[error(transparent)]
    Tftp(#[from] TftpError),
    #[error(transparent)]
    Profile(#[from] ProfileSectionError),
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    #[error(transparent)]
    Wireguard(#[from] WireguardError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Events(#[from] EventsError),
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Power(#[from] power::PowerConfigError),
    #[error(transparent)]
    Across(#[from] across::AcrossError),
}

/// Cluster assembly's settings, checked.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub name: String,
    pub control_plane: usize,
    pub min_machines: usize,
    pub settle: Duration,
    pub prefer: Vec<crate::assembly::order::Preference>,
    /// The mesh network; a node's mesh address has the host part of its overlay address.
    pub mesh_network: Ipv4Addr,
    pub mesh_prefix_len: u8,
    pub mesh_keepalive: u16,
    pub dead_after: Duration,
    /// Silent this long, a machine is given up and a voter on it replaced (zero: never).
    pub replace_after: Duration,
    pub data_disk: DataDiskPolicy,
}

/// The node image's profile, served when the file has no `[profile]`.
pub const NODE_KERNEL: &str = "node/vmlinuz";
pub const NODE_INITRD: &str = "node/initrd.img";

/// The management links' settings, checked.
#[derive(Debug, Clone)]
pub struct WireguardSettings {
    pub interface: String,
    pub port: u16,
    /// The appliance's overlay address.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub keepalive: u16,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub dhcp: Option<DhcpSettings>,
    pub tftp: Option<(u16, TftpConfig)>,
    pub http_port: u16,
    /// The directory TFTP and HTTP serve; relative paths in the file are relative to the file.
    pub boot_root: PathBuf,
    pub ipxe_dir: String,
    pub profile: BootProfile,
    /// Whether the profile boots the node agent, which then gets its arguments appended.
    pub profile_is_node: bool,
    pub policy: AcceptancePolicy,
    pub allow_serials: HashSet<String>,
    pub allow_macs: HashSet<MacAddr>,
    pub wireguard: WireguardSettings,
    pub api_port: u16,
    pub cluster: ClusterSettings,
    pub events: EventLimits,
    /// Public key files an update bundle may be signed with (`[update] trusted_keys`), besides
    /// the appliance image's trusted key; read when a bundle is applied and by `oasis config check`.
    pub update_trusted_keys: Vec<PathBuf>,
    /// `[update] apply_from_stick`: a verified bundle on the OASIS USB stick is installed at once
    /// rather than waiting for the console's confirmation.
    pub apply_from_stick: bool,
    pub rollout: RolloutConfig,
    /// `[power]`: the machines' BMCs.
    pub power: power::PowerSettings,
}

/// How node rollouts go (`[update]`), checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutConfig {
    pub timeout: Duration,
    pub workers_at_once: usize,
    pub kexec: bool,
    /// Machine ids that always reboot through the firmware.
    pub no_kexec: std::collections::BTreeSet<String>,
    /// When the appliance reboots into its own update once written; `None`: at once.
    pub appliance_reboot_at: Option<TimeOfDay>,
}

/// A time of day in UTC (`[update] appliance_reboot_at = "HH:MM"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl std::str::FromStr for TimeOfDay {
    type Err = ();

    fn from_str(s: &str) -> Result<TimeOfDay, ()> {
        let (h, m) = s.split_once(':').ok_or(())?;
        let digits =
            |t: &str| (t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse::<u8>().ok()).flatten();
        match (digits(h).ok_or(())?, digits(m).ok_or(())?) {
            (hour @ 0..=23, minute @ 0..=59) => Ok(TimeOfDay { hour, minute }),
            _ => Err(()),
        }
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02} UTC", self.hour, self.minute)
    }
}

impl TimeOfDay {
    /// The first moment at this time of day at or after `now` (Unix seconds).
    pub fn next_after(self, now: u64) -> u64 {
        let at = (now / 86_400) * 86_400 + u64::from(self.hour) * 3600 + u64::from(self.minute) * 60;
        if at >= now {
            at
        } else {
            at + 86_400
        }
    }
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            timeout: Duration::from_secs(1800),
            workers_at_once: 1,
            kexec: true,
            no_kexec: Default::default(),
            appliance_reboot_at: None,
        }
    }
}

impl RolloutConfig {
    /// The core rollout's settings.
    pub fn settings(&self) -> crate::rollout::RolloutSettings {
        crate::rollout::RolloutSettings { timeout_secs: self.timeout.as_secs(), workers_at_once: self.workers_at_once }
    }

    /// Whether machine `id` boots new generations by kexec.
    pub fn kexec_for(&self, id: &str) -> bool {
        self.kexec && !self.no_kexec.contains(id)
    }
}

#[derive(Debug, Clone)]
pub struct DhcpSettings {
    /// `None` in proxy mode.
    pub full: Option<(Pool, NetworkOptions, bool)>,
    pub conflict_check: ConflictCheckKind,
    pub conflict_timeout: Duration,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub reply_delay: Duration,
    pub tolerate_missing_uuid: bool,
    pub port: u16,
    pub client_port: u16,
    pub proxy_port: u16,
}

impl Config {
    /// The rack address with its prefix, e.g. `10.0.0.1/24` (the netmask was checked on load).
    pub fn rack_net(&self) -> ipnet::Ipv4Net {
        ipnet::Ipv4Net::with_netmask(self.address, self.netmask).unwrap_or_else(|_| self.address.into())
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.into(), source: SyntaxError(Box::new(e)) })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_raw(&raw, Lines(text), &base)
            .map_err(|e| ConfigError::Invalid { path: path.into(), source: Box::new(e) })
    }

    /// Checks each section, then what involves several.
    fn from_raw(raw: &RawConfig, lines: Lines<'_>, base: &Path) -> Result<Self, Invalid> {
        if *raw.version.get_ref() != CONFIG_VERSION {
            return Err(Invalid::Version { found: *raw.version.get_ref(), at: lines.of(&raw.version) });
        }
        let network = NetworkSettings::try_from(In { raw: &raw.network, lines })?;
        let dhcp = Option::<DhcpSettings>::try_from(DhcpIn { raw: &raw.dhcp, lines, network: &network })?;
        let TftpSettings(tftp) = In { raw: &raw.tftp, lines }.try_into()?;
        let ProfileSettings { profile, is_node } = In { raw: &raw.profile, lines }.try_into()?;
        let allow: Allowlist = In { raw: &raw.registration, lines }.try_into()?;
        let wireguard = WireguardSettings::try_from(In { raw: &raw.wireguard, lines })?;
        let cluster = ClusterSettings::try_from(In { raw: &raw.cluster, lines })?;
        let events = EventLimits::try_from(In { raw: &raw.events, lines })?;
        let rollout = RolloutConfig::try_from(In { raw: &raw.update, lines })?;
        let power = power::PowerSettings::try_from(In { raw: &raw.power, lines })?;
        across::check(raw, lines, &network, &wireguard, &cluster)?;
        let data_dir = base.join(raw.data_dir.get_ref());
        let boot_root = raw.boot.root.as_ref().map(|r| base.join(r)).unwrap_or_else(|| data_dir.join("boot"));
        Ok(Self {
            data_dir,
            interface: network.interface,
            address: network.address,
            netmask: network.netmask,
            dhcp,
            tftp,
            http_port: *raw.http.port.get_ref(),
            boot_root,
            ipxe_dir: raw.boot.ipxe_dir.clone(),
            profile,
            profile_is_node: is_node,
            policy: raw.registration.policy,
            allow_serials: allow.serials,
            allow_macs: allow.macs,
            wireguard,
            api_port: *raw.api.port.get_ref(),
            cluster,
            events,
            update_trusted_keys: raw.update.trusted_keys.iter().map(|p| base.join(p)).collect(),
            apply_from_stick: raw.update.apply_from_stick,
            rollout,
            power,
        })
    }
}

#[cfg(test)]
mod tests;

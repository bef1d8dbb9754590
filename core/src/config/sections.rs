//! Each section of the file checked on its own: `TryFrom` a raw section (with where it is in the
//! file) into the settings the rest of the code uses, or a typed error naming the key and its
//! line. Checks across sections are in [`super::across`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use oasis_proto::MacAddr;
use oasis_pxe::boot_root::PathError;
use oasis_pxe::dhcp::{NetworkOptions, Pool};
use oasis_pxe::script::{BootProfile, ProfileError};
use oasis_pxe::tftp::TftpConfig;
use toml::Spanned;

use super::raw::{
    DhcpMode, RawCluster, RawDhcp, RawEvents, RawNetwork, RawProfile, RawRegistration, RawTftp, RawUpdate, RawWireguard,
};
use super::values::{self, ClusterNameError, ControlPlaneError, InterfaceNameError, NetmaskError, Prefix};
use super::values::{PrefixError, RangeError};
use super::{ClusterSettings, DhcpSettings, RolloutConfig, TimeOfDay, WireguardSettings, NODE_INITRD, NODE_KERNEL};
use crate::events::EventLimits;

/// Where a value is in the file, shown as " (line N)"; nothing for a default, which is in no line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Line(pub Option<usize>);

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, " (line {n})"),
            None => Ok(()),
        }
    }
}

/// The file's text, to turn the parser's spans into line numbers.
#[derive(Debug, Clone, Copy)]
pub struct Lines<'a>(pub &'a str);

impl Lines<'_> {
    /// The line a value starts on.
    pub fn of<T>(&self, value: &Spanned<T>) -> Line {
        let span = value.span();
        if span.is_empty() {
            return Line(None);
        }
        let before = self.0.get(..span.start).unwrap_or(self.0);
        Line(Some(before.matches('\n').count() + 1))
    }
}

/// A raw section and where its file is, for the section's `TryFrom`.
#[derive(Debug, Clone, Copy)]
pub struct In<'a, T> {
    pub raw: &'a T,
    pub lines: Lines<'a>,
}

/// `[network]`, checked.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub interface: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network.interface{at}")]
    Interface { at: Line, source: InterfaceNameError },
    #[error("network.netmask{at}")]
    Netmask { at: Line, source: NetmaskError },
}

impl TryFrom<In<'_, RawNetwork>> for NetworkSettings {
    type Error = NetworkError;

    fn try_from(In { raw, lines }: In<'_, RawNetwork>) -> Result<Self, NetworkError> {
        values::interface_name(raw.interface.get_ref())
            .map_err(|source| NetworkError::Interface { at: lines.of(&raw.interface), source })?;
        values::netmask_len(*raw.netmask.get_ref())
            .map_err(|source| NetworkError::Netmask { at: lines.of(&raw.netmask), source })?;
        Ok(NetworkSettings {
            interface: raw.interface.get_ref().clone(),
            address: *raw.address.get_ref(),
            netmask: *raw.netmask.get_ref(),
        })
    }
}

/// `[dhcp]` and its reservations, on the checked network.
#[derive(Debug, Clone, Copy)]
pub struct DhcpIn<'a> {
    pub raw: &'a RawDhcp,
    pub lines: Lines<'a>,
    pub network: &'a NetworkSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error(
        "dhcp.range is required in full mode{at}: e.g. range = [\"10.0.0.100\", \"10.0.0.199\"], or set mode = \
         \"proxy\" beside a site DHCP server"
    )]
    NoRange { at: Line },
    #[error("dhcp.range{at}")]
    Range { at: Line, source: RangeError },
    #[error("dhcp.lease_time{at} is {secs} s; use at least 60")]
    LeaseTime { at: Line, secs: u32 },
    #[error("dhcp.reservation{at} for {mac} has address {address} outside the pool's subnet")]
    ReservationSubnet { at: Line, mac: MacAddr, address: Ipv4Addr },
    #[error("dhcp.reservation{at} for {mac} has the appliance's own address")]
    ReservationOwnAddress { at: Line, mac: MacAddr },
    #[error("dhcp.reservation{at}: {address} is reserved twice")]
    ReservedTwice { at: Line, address: Ipv4Addr },
    #[error("dhcp.reservation{at}: {mac} has two reservations")]
    TwoReservations { at: Line, mac: MacAddr },
    #[error("dhcp.rate_limit{at} must be at least 1 message per second")]
    RateLimit { at: Line },
}

impl TryFrom<DhcpIn<'_>> for Option<DhcpSettings> {
    type Error = DhcpError;

    fn try_from(input: DhcpIn<'_>) -> Result<Self, DhcpError> {
        let d = input.raw;
        let full = match d.mode.get_ref() {
            DhcpMode::Off => return Ok(None),
            DhcpMode::Proxy => None,
            DhcpMode::Full => Some(full_mode(input)?),
        };
        if *d.rate_limit.get_ref() == 0 {
            return Err(DhcpError::RateLimit { at: input.lines.of(&d.rate_limit) });
        }
        Ok(Some(DhcpSettings {
            full,
            conflict_check: d.conflict_check,
            conflict_timeout: Duration::from_millis(d.conflict_timeout_ms),
            rate_limit: *d.rate_limit.get_ref(),
            rate_burst: d.rate_burst,
            reply_delay: Duration::from_millis(d.reply_delay_ms),
            tolerate_missing_uuid: d.tolerate_missing_uuid,
            port: *d.port.get_ref(),
            client_port: d.client_port,
            proxy_port: *d.proxy_port.get_ref(),
        }))
    }
}

/// The pool, its reservations and the options a full-mode server hands out.
fn full_mode(DhcpIn { raw: d, lines, network: net }: DhcpIn<'_>) -> Result<(Pool, NetworkOptions, bool), DhcpError> {
    let Some(range) = &d.range else { return Err(DhcpError::NoRange { at: lines.of(&d.mode) }) };
    let [start, end] = *range.get_ref();
    values::range(start, end, net.netmask, net.address)
        .map_err(|source| DhcpError::Range { at: lines.of(range), source })?;
    if *d.lease_time.get_ref() < 60 {
        return Err(DhcpError::LeaseTime { at: lines.of(&d.lease_time), secs: *d.lease_time.get_ref() });
    }
    let subnet = |ip: Ipv4Addr| u32::from(ip) & u32::from(net.netmask);
    let mut reservations = HashMap::new();
    let mut taken = HashSet::new();
    for spanned in &d.reservation {
        let (r, at) = (spanned.get_ref(), lines.of(spanned));
        if subnet(r.address) != subnet(start) {
            return Err(DhcpError::ReservationSubnet { at, mac: r.mac, address: r.address });
        }
        if r.address == net.address {
            return Err(DhcpError::ReservationOwnAddress { at, mac: r.mac });
        }
        if !taken.insert(r.address) {
            return Err(DhcpError::ReservedTwice { at, address: r.address });
        }
        if reservations.insert(r.mac, r.address).is_some() {
            return Err(DhcpError::TwoReservations { at, mac: r.mac });
        }
    }
    let pool = Pool {
        start,
        end,
        netmask: net.netmask,
        reservations,
        lease_secs: *d.lease_time.get_ref(),
        probation_secs: d.probation,
    };
    let options = NetworkOptions {
        router: d.router,
        dns_servers: d.dns_servers.clone(),
        domain_name: d.domain_name.clone(),
        ntp_servers: d.ntp_servers.clone(),
    };
    Ok((pool, options, d.authoritative))
}

/// `[tftp]`, checked by the TFTP server's own check; `None` when TFTP is off.
#[derive(Debug, Clone)]
pub struct TftpSettings(pub Option<(u16, TftpConfig)>);

#[derive(Debug, thiserror::Error)]
#[error("[tftp]{at}")]
pub struct TftpError {
    pub at: Line,
    pub source: oasis_pxe::tftp::ConfigError,
}

impl TryFrom<In<'_, Spanned<RawTftp>>> for TftpSettings {
    type Error = TftpError;

    fn try_from(In { raw, lines }: In<'_, Spanned<RawTftp>>) -> Result<Self, TftpError> {
        let t = raw.get_ref();
        let config = TftpConfig {
            max_blksize: t.max_blksize,
            no_blksize: t.no_blksize,
            max_windowsize: t.max_windowsize,
            timeout: Duration::from_millis(t.timeout_ms.max(1)),
            retries: t.retries,
            max_transfers: t.max_transfers,
        };
        // The TFTP server's own check, so `config check` passes nothing `oasis serve` refuses.
        config.check().map_err(|source| TftpError { at: lines.of(raw), source })?;
        Ok(TftpSettings(t.enabled.then_some((*t.port.get_ref(), config))))
    }
}

/// The boot profile machines get, and whether it is the node image's (whose agent then gets its
/// arguments appended).
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    pub profile: BootProfile,
    pub is_node: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileSectionError {
    #[error("profile{at}")]
    Profile { at: Line, source: ProfileError },
    /// A name the boot root refuses whatever it holds, so `oasis serve` could never find it.
    #[error("profile.{what}{at}")]
    NotServable { what: &'static str, at: Line, source: PathError },
}

impl TryFrom<In<'_, Option<RawProfile>>> for ProfileSettings {
    type Error = ProfileSectionError;

    fn try_from(In { raw, lines }: In<'_, Option<RawProfile>>) -> Result<Self, ProfileSectionError> {
        let Some(p) = raw else {
            let profile = BootProfile {
                kernel: NODE_KERNEL.into(),
                initrd: Some(NODE_INITRD.into()),
                cmdline: "console=ttyS0,115200 console=tty0".into(),
            };
            return Ok(ProfileSettings { profile, is_node: true });
        };
        let profile = BootProfile {
            kernel: p.kernel.get_ref().clone(),
            initrd: p.initrd.as_ref().map(|i| i.get_ref().clone()),
            cmdline: p.cmdline.get_ref().clone(),
        };
        profile.validate().map_err(|source| {
            let at = match source {
                ProfileError::NoKernel | ProfileError::BadPath { field: "kernel", .. } => lines.of(&p.kernel),
                ProfileError::EmptyInitrd | ProfileError::BadPath { .. } => {
                    p.initrd.as_ref().map_or(Line(None), |i| lines.of(i))
                }
                _ => lines.of(&p.cmdline),
            };
            ProfileSectionError::Profile { at, source }
        })?;
        let files = [("kernel", Some(&p.kernel)), ("initrd", p.initrd.as_ref())];
        for (what, name) in files.into_iter().filter_map(|(what, name)| Some((what, name?))) {
            oasis_pxe::boot_root::check_name(name.get_ref().as_bytes())
                .map_err(|source| ProfileSectionError::NotServable { what, at: lines.of(name), source })?;
        }
        let is_node = profile.kernel == NODE_KERNEL;
        Ok(ProfileSettings { profile, is_node })
    }
}

/// `[registration]`'s allowlist: serial numbers (lowercase) and MACs.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    pub serials: HashSet<String>,
    pub macs: HashSet<MacAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("registration.allow{at} has an empty entry")]
pub struct RegistrationError {
    pub at: Line,
}

impl TryFrom<In<'_, RawRegistration>> for Allowlist {
    type Error = RegistrationError;

    fn try_from(In { raw, lines }: In<'_, RawRegistration>) -> Result<Self, RegistrationError> {
        let mut list = Allowlist::default();
        for entry in raw.allow.get_ref() {
            match entry.parse::<MacAddr>() {
                Ok(mac) => list.macs.insert(mac),
                Err(_) if !entry.trim().is_empty() => list.serials.insert(entry.trim().to_lowercase()),
                Err(_) => return Err(RegistrationError { at: lines.of(&raw.allow) }),
            };
        }
        Ok(list)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireguardError {
    #[error("wireguard.interface{at}")]
    Interface { at: Line, source: InterfaceNameError },
    #[error("wireguard.prefix{at}")]
    Prefix { at: Line, source: PrefixError },
}

impl TryFrom<In<'_, RawWireguard>> for WireguardSettings {
    type Error = WireguardError;

    fn try_from(In { raw: w, lines }: In<'_, RawWireguard>) -> Result<Self, WireguardError> {
        values::interface_name(w.interface.get_ref())
            .map_err(|source| WireguardError::Interface { at: lines.of(&w.interface), source })?;
        let prefix = Prefix::parse(w.prefix.get_ref())
            .map_err(|source| WireguardError::Prefix { at: lines.of(&w.prefix), source })?;
        Ok(WireguardSettings {
            interface: w.interface.get_ref().clone(),
            port: *w.port.get_ref(),
            address: Ipv4Addr::from(u32::from(prefix.network) + 1),
            prefix_len: prefix.len,
            keepalive: w.keepalive,
        })
    }
}

/// A `cluster.prefer` entry that is not a preference.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PreferenceError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.name{at}")]
    Name { at: Line, source: ClusterNameError },
    #[error("cluster.control_plane{at}")]
    ControlPlane { at: Line, source: ControlPlaneError },
    #[error("cluster.prefer{at}")]
    Prefer { at: Line, source: PreferenceError },
    #[error("cluster.mesh_prefix{at}")]
    MeshPrefix { at: Line, source: PrefixError },
    #[error("cluster.replace_after_secs{at} is {secs}; use 0 (never replace) or at least {least}: a machine rebooting is not gone")]
    ReplaceAfter { at: Line, secs: u64, least: u64 },
    #[error("cluster.dead_after_secs{at} is {secs}; use at least {} (three heartbeats)", 3 * oasis_proto::HEARTBEAT_SECS)]
    DeadAfter { at: Line, secs: u64 },
}

impl TryFrom<In<'_, RawCluster>> for ClusterSettings {
    type Error = ClusterError;

    fn try_from(In { raw: c, lines }: In<'_, RawCluster>) -> Result<Self, ClusterError> {
        values::cluster_name(c.name.get_ref())
            .map_err(|source| ClusterError::Name { at: lines.of(&c.name), source })?;
        values::control_plane(*c.control_plane.get_ref())
            .map_err(|source| ClusterError::ControlPlane { at: lines.of(&c.control_plane), source })?;
        let prefer = c
            .prefer
            .iter()
            .map(|p| {
                p.get_ref().parse().map_err(|e| ClusterError::Prefer { at: lines.of(p), source: PreferenceError(e) })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mesh = Prefix::parse(c.mesh_prefix.get_ref())
            .map_err(|source| ClusterError::MeshPrefix { at: lines.of(&c.mesh_prefix), source })?;
        let dead_after_secs = *c.dead_after_secs.get_ref();
        if dead_after_secs < 3 * oasis_proto::HEARTBEAT_SECS {
            return Err(ClusterError::DeadAfter { at: lines.of(&c.dead_after_secs), secs: dead_after_secs });
        }
        let replace_after_secs = *c.replace_after_secs.get_ref();
        if replace_after_secs != 0 && replace_after_secs < (dead_after_secs * 2).max(MIN_REPLACE_AFTER_SECS) {
            return Err(ClusterError::ReplaceAfter {
                at: lines.of(&c.replace_after_secs),
                secs: replace_after_secs,
                least: (dead_after_secs * 2).max(MIN_REPLACE_AFTER_SECS),
            });
        }
        Ok(ClusterSettings {
            name: c.name.get_ref().clone(),
            control_plane: *c.control_plane.get_ref(),
            min_machines: c.min_machines.max(1),
            settle: Duration::from_secs(c.settle_secs),
            prefer,
            mesh_network: mesh.network,
            mesh_prefix_len: mesh.len,
            mesh_keepalive: c.mesh_keepalive,
            dead_after: Duration::from_secs(dead_after_secs),
            replace_after: Duration::from_secs(replace_after_secs),
            data_disk: c.data_disk,
        })
    }
}

/// The shortest `[cluster] replace_after_secs` other than 0: a real server's firmware alone can
/// take minutes to boot.
const MIN_REPLACE_AFTER_SECS: u64 = 300;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(
        "update.rollout_timeout_secs{at} is {secs}; use 60 to 86400 (a machine must be able to reboot and catch up)"
    )]
    Timeout { at: Line, secs: u64 },
    #[error("update.workers_at_once{at} is {value}; use 1 to 100")]
    WorkersAtOnce { at: Line, value: usize },
    #[error("update.appliance_reboot_at{at} is {value:?}; give a time of day as \"HH:MM\", in UTC (the appliance has no time zone), e.g. \"02:30\"")]
    RebootAt { at: Line, value: String },
}

impl TryFrom<In<'_, RawUpdate>> for RolloutConfig {
    type Error = UpdateError;

    fn try_from(In { raw: u, lines }: In<'_, RawUpdate>) -> Result<Self, UpdateError> {
        let secs = *u.rollout_timeout_secs.get_ref();
        if !(60..=86_400).contains(&secs) {
            return Err(UpdateError::Timeout { at: lines.of(&u.rollout_timeout_secs), secs });
        }
        let value = *u.workers_at_once.get_ref();
        if !(1..=100).contains(&value) {
            return Err(UpdateError::WorkersAtOnce { at: lines.of(&u.workers_at_once), value });
        }
        let appliance_reboot_at = match &u.appliance_reboot_at {
            None => None,
            Some(text) => Some(
                text.get_ref()
                    .parse::<TimeOfDay>()
                    .map_err(|()| UpdateError::RebootAt { at: lines.of(text), value: text.get_ref().clone() })?,
            ),
        };
        Ok(RolloutConfig {
            timeout: Duration::from_secs(secs),
            workers_at_once: value,
            kexec: u.kexec,
            no_kexec: u.no_kexec.iter().cloned().collect(),
            appliance_reboot_at,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("events.max_count{at} is {value}; use 100 to 10000000")]
    MaxCount { at: Line, value: u64 },
    #[error("events.max_age_days{at} is {value}; use 1 to 3650")]
    MaxAgeDays { at: Line, value: u64 },
    #[error("events.max_mib{at} is {value}; use 1 to 1024 (MiB of the data partition)")]
    MaxMib { at: Line, value: u64 },
}

impl TryFrom<In<'_, RawEvents>> for EventLimits {
    type Error = EventsError;

    fn try_from(In { raw: e, lines }: In<'_, RawEvents>) -> Result<Self, EventsError> {
        let (count, age, mib) = (*e.max_count.get_ref(), *e.max_age_days.get_ref(), *e.max_mib.get_ref());
        if !(100..=10_000_000).contains(&count) {
            return Err(EventsError::MaxCount { at: lines.of(&e.max_count), value: count });
        }
        if !(1..=3650).contains(&age) {
            return Err(EventsError::MaxAgeDays { at: lines.of(&e.max_age_days), value: age });
        }
        if !(1..=1024).contains(&mib) {
            return Err(EventsError::MaxMib { at: lines.of(&e.max_mib), value: mib });
        }
        Ok(EventLimits { max_count: count, max_age: Duration::from_secs(age * 86_400), max_bytes: mib << 20 })
    }
}

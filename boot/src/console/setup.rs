//! The first-boot dialogue: a few questions, each with a default, then `oasis.toml` text of the
//! same schema as `--config` (see the prompt order in [`super`]).

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::nics::{Link, Nic};
use super::probe::DhcpProbe;
use super::terminal::Terminal;
use oasis_core::config::{values, AcceptancePolicy, Config, DhcpMode, CONFIG_VERSION};

/// The rack address proposed when the NIC has none.
pub const DEFAULT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// Where the supervisor keeps the file; only names it in error messages while checking.
const CONFIG_PATH: &str = "/var/lib/oasis/oasis.toml";
/// The default management overlay and cluster mesh (`docs/oasis.toml`): the rack network must
/// stay clear of both.
const RESERVED: [(Ipv4Addr, u8, &str); 2] = [
    (Ipv4Addr::new(10, 99, 0, 0), 16, "the management overlay 10.99.0.0/16"),
    (Ipv4Addr::new(10, 98, 0, 0), 16, "the cluster mesh 10.98.0.0/16"),
];

/// What the operator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answers {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub mode: DhcpMode,
    /// Full mode only.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub cluster_name: String,
    pub control_plane: usize,
    pub policy: AcceptancePolicy,
    /// Allowlist only: serial numbers and MACs.
    pub allow: Vec<String>,
}

/// `ip/prefix_len` (a length past 32 is taken as 32).
fn net(ip: Ipv4Addr, prefix_len: u8) -> Ipv4Net {
    Ipv4Net::new(ip, prefix_len.min(32)).unwrap_or_default()
}

fn netmask(prefix_len: u8) -> Ipv4Addr {
    net(Ipv4Addr::UNSPECIFIED, prefix_len).netmask()
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    net(a, prefix_len).contains(&b)
}

/// The network or broadcast address of the subnet, which no host may have.
fn not_a_host(ip: Ipv4Addr, prefix_len: u8) -> Option<&'static str> {
    let subnet = net(ip, prefix_len);
    if ip == subnet.network() {
        Some("the network address")
    } else if ip == subnet.broadcast() {
        Some("the broadcast address")
    } else {
        None
    }
}

/// The pool proposed for an address: .100-.199 of its /24, or another part of it that leaves
/// the address out; on a smaller subnet, the half of it without the address.
pub fn default_range(address: Ipv4Addr, prefix_len: u8) -> (Ipv4Addr, Ipv4Addr) {
    let ip = u32::from(address);
    if prefix_len <= 24 {
        let base = ip & 0xffff_ff00;
        let last_octet = ip & 0xff;
        let (start, end) = [(100, 199), (10, 99), (200, 254)]
            .into_iter()
            .find(|(s, e)| !(*s..=*e).contains(&last_octet))
            .unwrap_or((100, 199));
        return (Ipv4Addr::from(base + start), Ipv4Addr::from(base + end));
    }
    let subnet = net(address, prefix_len);
    let (first, last) = (u32::from(subnet.network()) + 1, u32::from(subnet.broadcast()) - 1);
    let middle = first + (last - first) / 2;
    if ip <= middle {
        (Ipv4Addr::from(middle + 1), Ipv4Addr::from(last))
    } else {
        (Ipv4Addr::from(first), Ipv4Addr::from(middle))
    }
}

fn parse_interface(answer: &str, nics: &[Nic]) -> Result<String, String> {
    if let Ok(n) = answer.parse::<usize>() {
        if (1..=nics.len()).contains(&n) {
            return Ok(nics[n - 1].name.clone());
        }
    }
    match nics.iter().find(|n| n.name == answer) {
        Some(nic) => Ok(nic.name.clone()),
        None => {
            let names: Vec<&str> = nics.iter().map(|n| n.name.as_str()).collect();
            Err(format!("{answer:?} is not one of the interfaces listed: {}", names.join(", ")))
        }
    }
}

fn parse_address(answer: &str) -> Result<Ipv4Addr, String> {
    let ip: Ipv4Addr = answer
        .parse()
        .map_err(|_| format!("{answer:?} is not an IPv4 address; type four numbers, e.g. {DEFAULT_ADDRESS}"))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() || ip.is_link_local() {
        return Err(format!("{ip} cannot be a rack address; use a private address such as {DEFAULT_ADDRESS}"));
    }
    if let Some((_, _, what)) = RESERVED.iter().find(|(net, len, _)| same_subnet(ip, *net, *len)) {
        return Err(format!("{ip} is inside {what}, which oasis uses itself; pick another address"));
    }
    Ok(ip)
}

fn parse_netmask(answer: &str, address: Ipv4Addr) -> Result<u8, String> {
    let bad = || format!("{answer:?} is not a netmask; type e.g. 255.255.255.0, /24 or 24");
    let len = match answer.parse::<Ipv4Addr>() {
        Ok(mask) => values::netmask_len(mask).map_err(|e| e.to_string())?,
        Err(_) => answer.trim_start_matches('/').parse::<u8>().map_err(|_| bad())?,
    };
    if !(8..=30).contains(&len) {
        return Err(format!("a /{len} network is not usable for a rack; use a length from 8 to 30, e.g. 24"));
    }
    if let Some(what) = not_a_host(address, len) {
        return Err(format!(
            "{address} is {what} of a /{len} network; pick another netmask, or redo to change the address"
        ));
    }
    if let Some((_, _, what)) =
        RESERVED.iter().find(|(net, reserved_len, _)| len <= *reserved_len && same_subnet(address, *net, len))
    {
        return Err(format!("a rack network {address}/{len} would contain {what}; use a longer netmask, e.g. 24"));
    }
    Ok(len)
}

fn parse_mode(answer: &str) -> Result<DhcpMode, String> {
    match answer.to_lowercase().as_str() {
        "full" => Ok(DhcpMode::Full),
        "proxy" => Ok(DhcpMode::Proxy),
        _ => Err(format!("{answer:?} is not a DHCP mode; type full (this appliance hands out addresses) or proxy (another server does)")),
    }
}

fn parse_range(answer: &str, address: Ipv4Addr, prefix_len: u8) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let bad = || format!("{answer:?} is not a range; type the first and last address, e.g. 10.0.0.100-10.0.0.199");
    let parts: Vec<&str> = answer.split(['-', ',', ' ']).filter(|p| !p.is_empty()).collect();
    let [first, last] = parts[..] else { return Err(bad()) };
    let first: Ipv4Addr = first.trim().parse().map_err(|_| bad())?;
    let last: Ipv4Addr = last.trim().parse().map_err(|_| bad())?;
    let subnet = net(address, prefix_len).network();
    for ip in [first, last] {
        if !same_subnet(ip, address, prefix_len) {
            return Err(format!("{ip} is not on the rack network {subnet}/{prefix_len}"));
        }
        if let Some(what) = not_a_host(ip, prefix_len) {
            return Err(format!("{ip} is {what} of the rack network {subnet}/{prefix_len}"));
        }
    }
    values::range(first, last, netmask(prefix_len), address).map_err(|e| e.to_string())?;
    Ok((first, last))
}

fn parse_cluster_name(answer: &str) -> Result<String, String> {
    values::cluster_name(answer).map_err(|e| e.to_string())?;
    Ok(answer.to_string())
}

fn parse_control_plane(answer: &str) -> Result<usize, String> {
    let count = answer
        .parse::<usize>()
        .map_err(|_| format!("{answer:?} is not 1, 3 or 5; an odd count keeps etcd's quorum meaningful"))?;
    values::control_plane(count).map_err(|e| e.to_string())?;
    Ok(count)
}

fn parse_policy(answer: &str) -> Result<AcceptancePolicy, String> {
    match answer.to_lowercase().as_str() {
        "auto" => Ok(AcceptancePolicy::Auto),
        "allowlist" => Ok(AcceptancePolicy::Allowlist),
        "manual" => Ok(AcceptancePolicy::Manual),
        _ => Err(format!(
            "{answer:?} is not a policy; type auto (every machine joins), allowlist (listed serials and MACs join) or manual (you accept each)"
        )),
    }
}

fn parse_allow(answer: &str) -> Result<Vec<String>, String> {
    let entries: Vec<String> = answer.split([' ', ',', '\t']).filter(|e| !e.is_empty()).map(str::to_string).collect();
    if entries.is_empty() {
        return Err("give at least one serial number or MAC, or redo and choose manual".into());
    }
    if let Some(bad) = entries.iter().find(|e| e.contains(['"', '\\']) || e.chars().any(char::is_control)) {
        return Err(format!("{bad:?} has characters a serial number or MAC never has"));
    }
    Ok(entries)
}

fn policy_word(policy: AcceptancePolicy) -> &'static str {
    match policy {
        AcceptancePolicy::Auto => "auto",
        AcceptancePolicy::Allowlist => "allowlist",
        AcceptancePolicy::Manual => "manual",
    }
}

fn mode_word(mode: DhcpMode) -> &'static str {
    match mode {
        DhcpMode::Full => "full",
        DhcpMode::Proxy => "proxy",
        DhcpMode::Off => "off",
    }
}

/// The questions, asked on one terminal.
struct Dialogue<'a> {
    term: &'a mut dyn Terminal,
}

impl Dialogue<'_> {
    fn say(&mut self, line: &str) -> io::Result<()> {
        self.term.write(&format!("{line}\n"))
    }

    /// Asks until `parse` accepts the answer; Enter takes the default.
    fn ask<T>(
        &mut self,
        question: &str,
        default: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> io::Result<T> {
        loop {
            match default {
                Some(d) => self.term.write(&format!("{question} [{d}]: "))?,
                None => self.term.write(&format!("{question}: "))?,
            }
            let Some(line) = self.term.read_line()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the console closed before setup was finished",
                ));
            };
            let answer = match (line.trim(), default) {
                ("", Some(d)) => d,
                ("", None) => {
                    self.say("error: this question has no default; type an answer")?;
                    continue;
                }
                (answer, _) => answer,
            };
            match parse(answer) {
                Ok(value) => return Ok(value),
                Err(why) => self.say(&format!("error: {why}"))?,
            }
        }
    }

    fn list_nics(&mut self, nics: &[Nic]) -> io::Result<()> {
        self.say("network interfaces:")?;
        let width = nics.iter().map(|n| n.name.len()).max().unwrap_or(0);
        for (i, nic) in nics.iter().enumerate() {
            let addresses = if nic.addresses.is_empty() {
                "no address".to_string()
            } else {
                nic.addresses.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>().join(" ")
            };
            self.say(&format!(
                "  {}) {:<width$}  {:<7}  {}  {addresses}",
                i + 1,
                nic.name,
                nic.link.to_string(),
                nic.mac
            ))?;
        }
        Ok(())
    }

    fn ask_all(&mut self, nics: &[Nic], probe: &dyn DhcpProbe, previous: Option<&Answers>) -> io::Result<Answers> {
        self.list_nics(nics)?;
        let default_nic = previous
            .map(|p| p.interface.clone())
            .filter(|name| nics.iter().any(|n| &n.name == name))
            .or_else(|| nics.iter().find(|n| n.link == Link::Up).or(nics.first()).map(|n| n.name.clone()))
            .unwrap_or_default();
        let interface = self.ask("Rack interface", Some(&default_nic), |a| parse_interface(a, nics))?;
        let nic = nics.iter().find(|n| n.name == interface).expect("parse_interface returns listed names");

        let (default_address, default_len) = match previous.filter(|p| p.interface == interface) {
            Some(p) => (p.address, p.prefix_len),
            None => nic.addresses.first().copied().unwrap_or((DEFAULT_ADDRESS, DEFAULT_PREFIX_LEN)),
        };
        let address =
            self.ask(&format!("Appliance address on {interface}"), Some(&default_address.to_string()), parse_address)?;
        let prefix_len = self.ask("Netmask", Some(&netmask(default_len).to_string()), |a| parse_netmask(a, address))?;

        self.say(&format!("oasis: looking for another DHCP server on {interface}"))?;
        let proposed_mode = match probe.other_servers(&interface) {
            Ok(servers) if servers.is_empty() => {
                self.say(&format!("oasis: no other DHCP server answered on {interface}"))?;
                DhcpMode::Full
            }
            Ok(servers) => {
                let list: Vec<String> = servers.iter().map(Ipv4Addr::to_string).collect();
                self.say(&format!(
                    "warning: another DHCP server answers on {interface}: {}; full mode would compete with it for every \
                     client, so proxy mode (boot information only) is proposed",
                    list.join(", ")
                ))?;
                DhcpMode::Proxy
            }
            Err(e) => {
                self.say(&format!(
                    "warning: could not look for another DHCP server on {interface}: {e}",
                    e = oasis_proto::error_chain(&e)
                ))?;
                DhcpMode::Full
            }
        };
        let default_mode =
            previous.map(|p| p.mode).filter(|_| proposed_mode == DhcpMode::Full).unwrap_or(proposed_mode);
        let mode = self.ask("DHCP mode, full or proxy", Some(mode_word(default_mode)), parse_mode)?;

        let range = if mode == DhcpMode::Full {
            let (first, last) = previous
                .and_then(|p| p.range)
                .filter(|r| parse_range(&format!("{}-{}", r.0, r.1), address, prefix_len).is_ok())
                .unwrap_or_else(|| default_range(address, prefix_len));
            Some(self.ask("DHCP range, first-last", Some(&format!("{first}-{last}")), |a| {
                parse_range(a, address, prefix_len)
            })?)
        } else {
            None
        };

        let default_name = previous.map(|p| p.cluster_name.clone()).unwrap_or_else(|| "oasis".into());
        let cluster_name = self.ask("Cluster name", Some(&default_name), parse_cluster_name)?;
        let default_cp = previous.map(|p| p.control_plane).unwrap_or(3).to_string();
        let control_plane = self.ask("Control-plane machines, 1, 3 or 5", Some(&default_cp), parse_control_plane)?;
        let default_policy = policy_word(previous.map(|p| p.policy).unwrap_or(AcceptancePolicy::Auto));
        let policy = self.ask("Acceptance policy, auto, allowlist or manual", Some(default_policy), parse_policy)?;
        let allow = if policy == AcceptancePolicy::Allowlist {
            let before = previous.map(|p| p.allow.join(" ")).filter(|a| !a.is_empty());
            self.ask("Allowed serial numbers and MACs, separated by spaces", before.as_deref(), parse_allow)?
        } else {
            vec![]
        };
        Ok(Answers { interface, address, prefix_len, mode, range, cluster_name, control_plane, policy, allow })
    }

    fn summary(&mut self, a: &Answers, nics: &[Nic]) -> io::Result<()> {
        self.say("oasis: setup summary")?;
        let nic = nics.iter().find(|n| n.name == a.interface);
        let nic_detail = nic.map(|n| format!(" ({}, {})", n.mac, n.link)).unwrap_or_default();
        self.say(&format!("  rack interface: {}{nic_detail}", a.interface))?;
        self.say(&format!("  address:        {}/{} (netmask {})", a.address, a.prefix_len, netmask(a.prefix_len)))?;
        match a.range {
            Some((first, last)) => self.say(&format!("  DHCP:           full, addresses {first} to {last}"))?,
            None => self.say("  DHCP:           proxy, boot information only beside the site's DHCP server")?,
        }
        self.say(&format!("  cluster:        {}, {} control-plane machine(s)", a.cluster_name, a.control_plane))?;
        match a.policy {
            AcceptancePolicy::Allowlist => self.say(&format!("  acceptance:     allowlist: {}", a.allow.join(", ")))?,
            AcceptancePolicy::Auto => {
                self.say("  acceptance:     auto: every machine booted from this appliance joins")?
            }
            AcceptancePolicy::Manual => self.say("  acceptance:     manual: you accept each machine")?,
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct SetupFile<'a> {
    version: u32,
    network: NetworkSection<'a>,
    dhcp: DhcpSection,
    registration: RegistrationSection<'a>,
    cluster: ClusterSection<'a>,
}

#[derive(Serialize)]
struct NetworkSection<'a> {
    interface: &'a str,
    address: Ipv4Addr,
    netmask: Ipv4Addr,
}

#[derive(Serialize)]
struct DhcpSection {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    range: Option<[Ipv4Addr; 2]>,
}

#[derive(Serialize)]
struct RegistrationSection<'a> {
    policy: &'static str,
    allow: &'a [String],
}

#[derive(Serialize)]
struct ClusterSection<'a> {
    name: &'a str,
    control_plane: usize,
}

/// The answers as `oasis.toml` text; every other key keeps its default.
pub fn to_toml(a: &Answers) -> String {
    let file = SetupFile {
        version: CONFIG_VERSION,
        network: NetworkSection { interface: &a.interface, address: a.address, netmask: netmask(a.prefix_len) },
        dhcp: DhcpSection { mode: mode_word(a.mode), range: a.range.map(|(first, last)| [first, last]) },
        registration: RegistrationSection { policy: policy_word(a.policy), allow: &a.allow },
        cluster: ClusterSection { name: &a.cluster_name, control_plane: a.control_plane },
    };
    let body = toml::to_string(&file).expect("plain strings, numbers and addresses serialize");
    format!(
        "# Written by the first-boot setup on the oasis console. Every key not here has its\n\
         # default; docs/oasis.toml documents them all.\n{body}"
    )
}

/// Checks that `text` is a valid configuration that says what the operator answered.
fn check(text: &str, a: &Answers) -> Result<(), String> {
    let c = Config::parse(text, Path::new(CONFIG_PATH)).map_err(|e| format!("{e}: {}", e.problem()))?;
    let range = c.dhcp.as_ref().and_then(|d| d.full.as_ref()).map(|(pool, _, _)| (pool.start, pool.end));
    let listed = |entry: &String| match entry.parse::<oasis_proto::MacAddr>() {
        Ok(mac) => c.allow_macs.contains(&mac),
        Err(_) => c.allow_serials.contains(&entry.to_lowercase()),
    };
    let same = c.interface == a.interface
        && c.address == a.address
        && c.netmask == netmask(a.prefix_len)
        && c.dhcp.is_some()
        && range == a.range
        && c.cluster.name == a.cluster_name
        && c.cluster.control_plane == a.control_plane
        && c.policy == a.policy
        && a.allow.iter().all(listed);
    if same {
        Ok(())
    } else {
        Err(format!("the written configuration reads back differently from the answers:\n{text}"))
    }
}

/// Asks the first-boot questions on `term` and returns the confirmed configuration as
/// `oasis.toml` text, already checked by [`Config::parse`]. `nics` are the candidates for the
/// rack interface ([`super::host_nics`]); `probe` looks for another DHCP server on the chosen one.
pub fn first_boot(term: &mut dyn Terminal, nics: &[Nic], probe: &dyn DhcpProbe) -> io::Result<String> {
    let mut dialogue = Dialogue { term };
    if nics.is_empty() {
        dialogue.say("error: this machine has no network interface to serve the rack on")?;
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no network interface found: check that the NIC's driver is loaded, then restart the setup",
        ));
    }
    dialogue.say("oasis: first-boot setup. Press Enter to take the default shown in [brackets].")?;
    let mut previous: Option<Answers> = None;
    loop {
        let answers = dialogue.ask_all(nics, probe, previous.as_ref())?;
        dialogue.summary(&answers, nics)?;
        let confirmed =
            dialogue.ask("Save this setup, yes or redo", Some("yes"), |a| match a.to_lowercase().as_str() {
                "yes" | "y" => Ok(true),
                "redo" | "r" | "no" | "n" => Ok(false),
                _ => Err(format!("{a:?}: type yes to save, or redo to answer again")),
            })?;
        if confirmed {
            let text = to_toml(&answers);
            match check(&text, &answers) {
                Ok(()) => {
                    dialogue.say("oasis: setup saved")?;
                    return Ok(text);
                }
                Err(why) => {
                    dialogue.say(&format!("error: this setup is not a valid configuration: {why}; answer again"))?
                }
            }
        } else {
            dialogue.say("oasis: asking again; Enter keeps each answer given before")?;
        }
        previous = Some(answers);
    }
}

#[cfg(test)]
mod tests;

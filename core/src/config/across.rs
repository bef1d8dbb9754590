//! Checks that involve several sections: the overlay and mesh networks against the rack network
//! and each other, the management interface against the rack interface, and the ports the
//! services listen on (two services on one port would stop `oasis serve` from starting).

use std::net::Ipv4Addr;

use toml::Spanned;

use super::raw::{DhcpMode, RawConfig};
use super::sections::{Line, Lines, NetworkSettings};
use super::values::Prefix;
use super::{ClusterSettings, WireguardSettings};

#[derive(Debug, thiserror::Error)]
pub enum AcrossError {
    #[error("wireguard.prefix{at} {prefix} overlaps the rack network address {address}: pick another range")]
    OverlayHasRackAddress { at: Line, prefix: String, address: Ipv4Addr },
    #[error(
        "cluster.mesh_prefix{at} {mesh} is smaller than wireguard.prefix {overlay}: every overlay address needs a \
         mesh address"
    )]
    MeshSmaller { at: Line, mesh: String, overlay: String },
    #[error("cluster.mesh_prefix{at} {mesh} overlaps the management overlay or the rack network: pick another range")]
    MeshOverlaps { at: Line, mesh: String },
    #[error(
        "wireguard.interface{at} {name:?} is the rack interface (network.interface): the management network needs \
         an interface of its own, e.g. \"oasis-wg\""
    )]
    SameInterface { at: Line, name: String },
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Two services on one port: the second could not listen, and `oasis serve` would stop there.
#[derive(Debug, thiserror::Error)]
#[error(
    "{key}{at} is {port}, which {other} also uses: the {what} and the {other_what} cannot share a {protocol} port; \
     give each its own"
)]
pub struct PortError {
    pub key: &'static str,
    pub at: Line,
    pub port: u16,
    pub other: &'static str,
    pub what: &'static str,
    pub other_what: &'static str,
    pub protocol: &'static str,
}

/// A port some service listens on: its key, where it is, what listens.
struct Listener<'a> {
    key: &'static str,
    port: &'a Spanned<u16>,
    what: &'static str,
}

pub(super) fn check(
    raw: &RawConfig,
    lines: Lines<'_>,
    network: &NetworkSettings,
    wireguard: &WireguardSettings,
    cluster: &ClusterSettings,
) -> Result<(), AcrossError> {
    let w = &raw.wireguard;
    let overlay = Prefix { network: Ipv4Addr::from(u32::from(wireguard.address) - 1), len: wireguard.prefix_len };
    if overlay.contains(network.address) {
        return Err(AcrossError::OverlayHasRackAddress {
            at: lines.of(&w.prefix),
            prefix: w.prefix.get_ref().clone(),
            address: network.address,
        });
    }
    let mesh_text = &raw.cluster.mesh_prefix;
    let mesh = Prefix { network: cluster.mesh_network, len: cluster.mesh_prefix_len };
    if mesh.len > overlay.len {
        return Err(AcrossError::MeshSmaller {
            at: lines.of(mesh_text),
            mesh: mesh_text.get_ref().clone(),
            overlay: w.prefix.get_ref().clone(),
        });
    }
    if mesh.overlaps(overlay) || mesh.contains(network.address) {
        return Err(AcrossError::MeshOverlaps { at: lines.of(mesh_text), mesh: mesh_text.get_ref().clone() });
    }
    if wireguard.interface == network.interface {
        return Err(AcrossError::SameInterface { at: lines.of(&w.interface), name: wireguard.interface.clone() });
    }
    ports(raw, lines)?;
    Ok(())
}

/// No two services on one port. The DHCP server's two sockets may share one (both allow it).
fn ports(raw: &RawConfig, lines: Lines<'_>) -> Result<(), PortError> {
    let tcp = [
        Listener { key: "http.port", port: &raw.http.port, what: "HTTP boot server" },
        Listener { key: "api.port", port: &raw.api.port, what: "API" },
    ];
    clash(&tcp, lines, "TCP")?;
    let mut udp = vec![Listener { key: "wireguard.port", port: &raw.wireguard.port, what: "management network" }];
    if raw.tftp.get_ref().enabled {
        udp.push(Listener { key: "tftp.port", port: &raw.tftp.get_ref().port, what: "TFTP server" });
    }
    if *raw.dhcp.mode.get_ref() != DhcpMode::Off {
        udp.push(Listener { key: "dhcp.port", port: &raw.dhcp.port, what: "DHCP server" });
        udp.push(Listener { key: "dhcp.proxy_port", port: &raw.dhcp.proxy_port, what: "DHCP server" });
    }
    clash(&udp, lines, "UDP")
}

/// The first two listeners of different services on one port. The one written later in the
/// file is named first: it is the one to change.
fn clash(listeners: &[Listener<'_>], lines: Lines<'_>, protocol: &'static str) -> Result<(), PortError> {
    for (i, a) in listeners.iter().enumerate() {
        for b in &listeners[i + 1..] {
            if a.what == b.what || a.port.get_ref() != b.port.get_ref() {
                continue;
            }
            let (later, earlier) = if b.port.span().start >= a.port.span().start { (b, a) } else { (a, b) };
            return Err(PortError {
                key: later.key,
                at: lines.of(later.port),
                port: *later.port.get_ref(),
                other: earlier.key,
                what: later.what,
                other_what: earlier.what,
                protocol,
            });
        }
    }
    Ok(())
}

//! The real cluster mesh, in a network namespace this test makes (and that ends with it), with one end
//! of a veth pair standing in for the boot NIC.
//!
//! This host's kernel has no WireGuard, so here the test checks that the mesh says so clearly,
//! leaves nothing behind, and still reports its endpoint; on a kernel with WireGuard it checks
//! the interface, its peers and address, a converging second config and the removal. Handshakes
//! between nodes are the cluster end-to-end test's (QEMU guests with Debian's kernel).

use std::process::Command;

use oasis_agent::link::WireGuardLink;
use oasis_agent::mesh::{Mesh, MeshError, MeshReport, WireGuardMesh};
use oasis_proto::{MeshConfig, MeshPeer, MESH_INTERFACE};
use oasis_testkit::netns::Netns;
use wireguard_control::{Backend, Device};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn peer(n: u8) -> MeshPeer {
    MeshPeer {
        machine_id: format!("m-{n}"),
        key: WireGuardLink::new("x").unwrap().public_key(),
        endpoint: format!("10.0.0.{n}:51821").parse().unwrap(),
        address: format!("10.98.0.{n}").parse().unwrap(),
    }
}

/// What one run saw.
#[derive(Debug)]
enum Seen {
    NoWireGuard { report: MeshReport, links: String, removed: bool },
    Mesh { first: Vec<(String, Option<u16>)>, second: Vec<(String, Option<u16>)>, address: String, gone: String },
}

#[test]
fn the_real_mesh_converges_or_says_the_kernel_lacks_wireguard() {
    let (a, b, c) = (peer(6), peer(7), peer(8));
    let first = MeshConfig {
        address: "10.98.0.5".parse().unwrap(),
        prefix_len: 16,
        keepalive_secs: 25,
        peers: vec![a.clone(), b.clone()],
    };
    let moved = MeshPeer { endpoint: "10.0.1.7:51821".parse().unwrap(), ..b.clone() };
    let second = MeshConfig { peers: vec![moved, c.clone()], ..first.clone() };
    let seen = Netns::create("oa-mesh").unwrap().run_inside(move || {
        ip(&["link", "add", "boot0", "type", "veth", "peer", "name", "boot1"]);
        ip(&["addr", "add", "10.0.0.5/24", "dev", "boot0"]);
        ip(&["link", "set", "boot0", "up"]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let link = WireGuardLink::new("oasis0").unwrap();
        let mesh = WireGuardMesh::new(link.private_key(), "boot0");
        let peers = || {
            let device = Device::get(&MESH_INTERFACE.parse().unwrap(), Backend::Kernel).unwrap();
            let mut peers: Vec<_> = device
                .peers
                .iter()
                .map(|p| (p.config.public_key.to_base64(), p.config.endpoint.map(|e| e.port())))
                .collect();
            peers.sort();
            peers
        };
        match runtime.block_on(mesh.apply(Some(&first))) {
            Err(MeshError::WireGuardUnavailable { .. }) => Seen::NoWireGuard {
                report: runtime.block_on(mesh.report()),
                links: ip(&["-o", "link", "show"]),
                removed: runtime.block_on(mesh.apply(None)).is_ok(),
            },
            Err(other) => panic!("unexpected: {other}"),
            Ok(()) => {
                let first_peers = peers();
                runtime.block_on(mesh.apply(Some(&second))).unwrap();
                let second_peers = peers();
                let address = ip(&["-o", "addr", "show", "dev", MESH_INTERFACE]);
                runtime.block_on(mesh.apply(None)).unwrap();
                Seen::Mesh { first: first_peers, second: second_peers, address, gone: ip(&["-o", "link", "show"]) }
            }
        }
    });
    match seen {
        Seen::NoWireGuard { report, links, removed } => {
            assert!(!links.contains(MESH_INTERFACE), "nothing may be left behind: {links}");
            assert_eq!(report.endpoint, Some("10.0.0.5:51821".parse().unwrap()), "the boot link's address");
            assert!(report.peers.is_empty());
            assert!(removed, "removing a mesh that is not there is fine");
        }
        Seen::Mesh { first, second, address, gone } => {
            let mut expected = vec![(a.key.clone(), Some(51821)), (b.key.clone(), Some(51821))];
            expected.sort();
            assert_eq!(first, expected);
            let mut expected = vec![(b.key.clone(), Some(51821)), (c.key.clone(), Some(51821))];
            expected.sort();
            assert_eq!(second, expected, "a removed, b updated, c added");
            assert!(address.contains("10.98.0.5/16"), "{address}");
            assert!(!gone.contains(MESH_INTERFACE), "{gone}");
        }
    }
}

//! What each machine is told: its role, its side of the mesh, and the etcd service with the
//! command line the appliance chose for it. Pure functions of the assembly, so the same state
//! always gives the same desired state (and the same service generation: no needless restarts).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use oasis_proto::{
    Artifact, DataDisk, DesiredState, FileSpec, MeshConfig, MeshPeer, RebootRequest, Role, ServiceSpec,
    DATA_DISK_MOUNT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, NODE_STATE_DIR,
};

use sha2::{Digest, Sha256};

use super::planner::{InitialState, MemberPlan};

/// Where etcd's files go on a node.
const ETCD_DIR: &str = "/var/lib/oasis/etcd";

/// The mesh addressing: a node's mesh address has the host part of its overlay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshPlan {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub keepalive: u16,
}

impl MeshPlan {
    pub fn address_of(&self, overlay: Ipv4Addr) -> Ipv4Addr {
        let host_mask = ipnet::Ipv4Net::new(self.network, self.prefix_len.min(32)).unwrap_or_default().hostmask();
        Ipv4Addr::from(u32::from(self.network) | (u32::from(overlay) & u32::from(host_mask)))
    }
}

/// A machine as desired-state generation needs it.
#[derive(Debug, Clone)]
pub struct Placed {
    pub id: String,
    pub role: Role,
    pub key: String,
    pub overlay: Ipv4Addr,
    pub mesh_endpoint: Option<SocketAddrV4>,
    /// The disk it is told to use for service data, if any.
    pub data_disk: Option<DataDisk>,
    /// Its agent reports that disk mounted: etcd's data goes there and survives a power cycle.
    pub disk_mounted: bool,
    /// A node rollout asks this boot of it to boot into another generation.
    pub reboot: Option<RebootRequest>,
}

/// A member's TLS material, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// The etcd service for a control-plane machine. Without a plan it only prepares (fetches and
/// verifies etcd, writes its certificates); with one it runs, in a data directory of its own for
/// that plan, because a removed member's data must never be started again.
pub fn etcd_service(
    machine: &Placed,
    mesh: &MeshPlan,
    etcd: &Artifact,
    tls: &MemberTls,
    token: Option<&str>,
    plan: Option<&MemberPlan>,
) -> ServiceSpec {
    let mesh_ip = mesh.address_of(machine.overlay);
    let peer_url = format!("https://{mesh_ip}:{ETCD_PEER_PORT}");
    let tls_dir = format!("{ETCD_DIR}/tls");
    let (ca, cert, key) =
        (format!("{tls_dir}/ca.pem"), format!("{tls_dir}/member.pem"), format!("{tls_dir}/member-key.pem"));
    let files = vec![
        FileSpec { path: ca.clone(), mode: 0o644, contents: tls.ca.clone() },
        FileSpec { path: cert.clone(), mode: 0o644, contents: tls.cert.clone() },
        FileSpec { path: key.clone(), mode: 0o600, contents: tls.key.clone() },
    ];
    let mut args = Vec::new();
    let mut data_dirs = Vec::new();
    if let (Some(plan), Some(token)) = (plan, token) {
        let data_root = if machine.disk_mounted { format!("{DATA_DISK_MOUNT}/etcd") } else { ETCD_DIR.to_string() };
        let data_dir = format!("{data_root}/member-{}", plan.serial);
        let initial_cluster = match plan.state {
            InitialState::New => format!("{}={peer_url}", machine.id),
            InitialState::Existing => plan.initial_cluster.clone(),
        };
        let state = match plan.state {
            InitialState::New => "new",
            InitialState::Existing => "existing",
        };
        let client_urls = format!(
            "https://{mesh_ip}:{ETCD_CLIENT_PORT},https://{}:{ETCD_CLIENT_PORT},https://127.0.0.1:{ETCD_CLIENT_PORT}",
            machine.overlay
        );
        for (flag, value) in [
            ("name", machine.id.clone()),
            ("data-dir", data_dir.clone()),
            ("listen-peer-urls", peer_url.clone()),
            ("initial-advertise-peer-urls", peer_url.clone()),
            ("listen-client-urls", client_urls),
            ("advertise-client-urls", format!("https://{mesh_ip}:{ETCD_CLIENT_PORT}")),
            ("initial-cluster", initial_cluster),
            ("initial-cluster-state", state.to_string()),
            ("initial-cluster-token", token.to_string()),
            ("cert-file", cert.clone()),
            ("key-file", key.clone()),
            ("trusted-ca-file", ca.clone()),
            ("client-cert-auth", "true".into()),
            ("peer-cert-file", cert.clone()),
            ("peer-key-file", key.clone()),
            ("peer-trusted-ca-file", ca.clone()),
            ("peer-client-cert-auth", "true".into()),
            // A rack's links and CPUs may be slow (and are, under emulation): ten times etcd's
            // LAN defaults keep leaders from flapping at the cost of slower failover.
            ("heartbeat-interval", "250".into()),
            ("election-timeout", "2500".into()),
            ("logger", "zap".into()),
        ] {
            args.push(format!("--{flag}={value}"));
        }
        data_dirs.push(data_dir);
    }
    let mut spec = ServiceSpec {
        name: "etcd".into(),
        generation: 0,
        // A member runs the etcd of its plan (restarts bring the node image's one, one at a time).
        artifacts: vec![Artifact {
            path: format!("{NODE_STATE_DIR}/bin/etcd"),
            mode: 0o755,
            ..plan.filter(|_| token.is_some()).and_then(|p| p.etcd.clone()).unwrap_or_else(|| etcd.clone())
        }],
        files,
        data_dirs,
        args,
        env: vec![],
        run: plan.is_some() && token.is_some(),
    };
    spec.generation = generation_of(&spec);
    spec
}

/// A hash of everything in a spec but its generation, stable across builds and restarts.
pub fn generation_of(spec: &ServiceSpec) -> u64 {
    let json = serde_json::to_vec(&ServiceSpec { generation: 0, ..spec.clone() }).expect("specs serialize");
    let digest = Sha256::digest(json);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The mesh side of one machine: every other placed machine with a known endpoint is a peer.
pub fn mesh_config(machine: &Placed, all: &[Placed], mesh: &MeshPlan) -> MeshConfig {
    let peers = all
        .iter()
        .filter(|m| m.id != machine.id && m.role != Role::Unassigned)
        .filter_map(|m| {
            Some(MeshPeer {
                machine_id: m.id.clone(),
                key: m.key.clone(),
                endpoint: m.mesh_endpoint?,
                address: mesh.address_of(m.overlay),
            })
        })
        .collect();
    MeshConfig {
        address: mesh.address_of(machine.overlay),
        prefix_len: mesh.prefix_len,
        keepalive_secs: mesh.keepalive,
        peers,
    }
}

/// Every machine's desired state (revision 0: the API stamps the current one).
pub fn desired_states(
    cluster: &str,
    placed: &[Placed],
    mesh: &MeshPlan,
    services: &BTreeMap<String, Vec<ServiceSpec>>,
) -> BTreeMap<String, DesiredState> {
    placed
        .iter()
        .map(|m| {
            let state = if m.role == Role::Unassigned {
                // Nothing to run yet; an operator's power request through its agent still goes.
                DesiredState { reboot: m.reboot.clone(), ..DesiredState::default() }
            } else {
                DesiredState {
                    revision: 0,
                    role: m.role,
                    cluster: Some(cluster.to_string()),
                    mesh: Some(mesh_config(m, placed, mesh)),
                    services: services.get(&m.id).cloned().unwrap_or_default(),
                    data_disk: m.data_disk.clone(),
                    reboot: m.reboot.clone(),
                }
            };
            (m.id.clone(), state)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: MeshPlan = MeshPlan { network: Ipv4Addr::new(10, 98, 0, 0), prefix_len: 16, keepalive: 15 };

    fn placed(n: u8, role: Role) -> Placed {
        Placed {
            id: format!("m{n}"),
            role,
            key: format!("key{n}"),
            overlay: Ipv4Addr::new(10, 99, 0, n),
            mesh_endpoint: Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 100 + n), 51821)),
            data_disk: None,
            disk_mounted: false,
            reboot: None,
        }
    }

    fn artifact() -> Artifact {
        Artifact { sha256: "ab".repeat(32), size: 10, path: "etcd".into(), mode: 0o755 }
    }

    fn tls() -> MemberTls {
        MemberTls { ca: "CA".into(), cert: "CERT".into(), key: "KEY".into() }
    }

    #[test]
    fn mesh_addresses_keep_the_overlay_host_part() {
        assert_eq!(MESH.address_of(Ipv4Addr::new(10, 99, 1, 7)), Ipv4Addr::new(10, 98, 1, 7));
    }

    #[test]
    fn every_assigned_machine_peers_with_every_other_and_unassigned_ones_get_nothing() {
        let all = vec![placed(2, Role::ControlPlane), placed(3, Role::Worker), placed(4, Role::Unassigned)];
        let states = desired_states("rack", &all, &MESH, &BTreeMap::new());
        let m2 = states["m2"].mesh.as_ref().unwrap();
        assert_eq!(m2.address, Ipv4Addr::new(10, 98, 0, 2));
        assert_eq!(m2.peers.iter().map(|p| p.machine_id.as_str()).collect::<Vec<_>>(), ["m3"]);
        assert_eq!(m2.peers[0].address, Ipv4Addr::new(10, 98, 0, 3));
        assert_eq!(states["m4"], DesiredState::default());
        // An operator's power request reaches an unassigned machine's agent all the same.
        let request =
            RebootRequest { generation: 0, boot: "key4".into(), kexec: false, power_off: true, wipe_data: false };
        let asked = vec![Placed { reboot: Some(request.clone()), ..placed(4, Role::Unassigned) }];
        let states = desired_states("rack", &asked, &MESH, &BTreeMap::new());
        assert_eq!(states["m4"], DesiredState { reboot: Some(request), ..DesiredState::default() });
    }

    #[test]
    fn etcd_prepares_without_a_plan_and_runs_with_one() {
        let m = placed(2, Role::ControlPlane);
        let prepare = etcd_service(&m, &MESH, &artifact(), &tls(), None, None);
        assert!(!prepare.run && prepare.args.is_empty() && prepare.data_dirs.is_empty());
        assert!(prepare.files.iter().all(|f| oasis_proto::is_node_state_path(&f.path)));
        let plan = MemberPlan {
            boot: "k".into(),
            state: InitialState::New,
            initial_cluster: String::new(),
            serial: 4,
            etcd: None,
        };
        let run = etcd_service(&m, &MESH, &artifact(), &tls(), Some("rack-1"), Some(&plan));
        assert!(run.run);
        assert_ne!(run.generation, prepare.generation);
        assert_eq!(run.data_dirs, ["/var/lib/oasis/etcd/member-4"]);
        for want in [
            "--initial-cluster=m2=https://10.98.0.2:2380",
            "--initial-cluster-state=new",
            "--listen-client-urls=https://10.98.0.2:2379,https://10.99.0.2:2379,https://127.0.0.1:2379",
            "--client-cert-auth=true",
            "--peer-client-cert-auth=true",
        ] {
            assert!(run.args.iter().any(|a| a == want), "{want} missing from {:?}", run.args);
        }
        let again = etcd_service(&m, &MESH, &artifact(), &tls(), Some("rack-1"), Some(&plan));
        let on_disk = Placed { disk_mounted: true, ..m.clone() };
        let disk = etcd_service(&on_disk, &MESH, &artifact(), &tls(), Some("rack-1"), Some(&plan));
        assert_eq!(disk.data_dirs, ["/var/lib/oasis/disk/etcd/member-4"]);
        assert_eq!(again.generation, run.generation, "the same state gives the same generation");
        let key = run.files.iter().find(|f| f.path.ends_with("member-key.pem")).unwrap();
        assert_eq!(key.mode, 0o600);
        assert!(run.artifacts.iter().all(|a| oasis_proto::is_node_state_path(&a.path)));
    }
}

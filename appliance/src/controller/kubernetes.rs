//! k3s on the assembled cluster, when the node image carries a k3s bundle: which machine runs
//! what, and when. Nothing starts before etcd has been healthy with all its places filled; the
//! first server starts alone (it writes k3s's shared bootstrap data into etcd, and two servers
//! starting at once could each write their own), the other servers and every agent once it runs.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use oasis_proto::{Role, ServiceSpec};

use crate::pki::ClusterCa;
use crate::store::Store;
use oasis_core::k3s::{self, ClientCert, EtcdClientTls, K3sArtifacts, K3sCas, K3sError, NodeInputs, ServerInputs};

use super::error::KubernetesError;
use oasis_core::assembly::desired::{MeshPlan, Placed};

/// What stays the same for the life of the cluster, made once and kept in the store
/// ([`Kubernetes::load_or_create`]).
#[derive(Debug, Clone)]
pub struct Kubernetes {
    pub artifacts: K3sArtifacts,
    pub token: String,
    pub cas: K3sCas,
    pub etcd_tls: EtcdClientTls,
}

impl Kubernetes {
    /// The cluster's Kubernetes secrets from the store, made at the first start with a bundle:
    /// the root and k3s's CAs, the admin credential, the join token, and k3s's etcd client
    /// certificate from the cluster CA.
    pub fn load_or_create(
        store: &Store,
        ca: &ClusterCa,
        cluster: &str,
        artifacts: K3sArtifacts,
    ) -> Result<(Kubernetes, ClientCert), KubernetesError> {
        let k3s = |what| move |source| KubernetesError::K3s { what, source };
        let cas: K3sCas = store.kept_secret("k3s-cas", || {
            let root = k3s::kubernetes_root_ca(cluster).map_err(k3s("Kubernetes root CA"))?;
            K3sCas::issue(&root).map_err(k3s("k3s CAs"))
        })?;
        let admin: ClientCert =
            store.kept_secret("k3s-admin", || k3s::admin_credential(&cas).map_err(k3s("k3s admin credential")))?;
        let token: String =
            store.kept_secret("k3s-token", || Ok::<_, KubernetesError>(crate::identity::random_token()))?;
        let (cert_pem, key_pem): (String, String) = store.kept_secret("k3s-etcd-client", || {
            let issued = ca.issue("k3s", &[]).map_err(KubernetesError::EtcdClient)?;
            Ok::<_, KubernetesError>((issued.cert_pem, issued.key_pem))
        })?;
        let etcd_tls = EtcdClientTls { ca_pem: ca.ca_pem().to_string(), cert_pem, key_pem };
        Ok((Kubernetes { artifacts, token, cas, etcd_tls }, admin))
    }
}

/// The k3s service of every machine that runs one now. `placed` is in choice order; `members`
/// are the machines with an etcd member; `rack_addresses` the machines' boot addresses (a server
/// without one waits); `first_server_running` whether the first server's agent reports k3s
/// running.
pub fn k3s_services(
    kubernetes: &Kubernetes,
    placed: &[Placed],
    members: &[&str],
    rack_addresses: &HashMap<String, Ipv4Addr>,
    mesh: &MeshPlan,
    first_server_running: bool,
) -> Result<BTreeMap<String, ServiceSpec>, K3sError> {
    let servers: Vec<&Placed> =
        placed.iter().filter(|p| p.role == Role::ControlPlane && members.contains(&p.id.as_str())).collect();
    let server_mesh: Vec<Ipv4Addr> = servers.iter().map(|s| mesh.address_of(s.overlay)).collect();
    let endpoints = k3s::etcd_endpoints(&server_mesh);
    let mut services = BTreeMap::new();
    for p in placed {
        let node = |run| NodeInputs {
            token: &kubernetes.token,
            node_name: &p.id,
            mesh_address: mesh.address_of(p.overlay),
            artifacts: &kubernetes.artifacts,
            run,
        };
        let spec = match servers.iter().position(|s| s.id == p.id) {
            Some(i) => {
                let Some(rack_address) = rack_addresses.get(&p.id) else { continue };
                k3s::server_service(&ServerInputs {
                    node: node(i == 0 || first_server_running),
                    rack_address: *rack_address,
                    etcd_endpoints: &endpoints,
                    etcd_tls: &kubernetes.etcd_tls,
                    cas: &kubernetes.cas,
                })?
            }
            None if p.role == Role::Worker && !server_mesh.is_empty() => {
                k3s::agent_service(&node(first_server_running), &server_mesh)?
            }
            None => continue,
        };
        services.insert(p.id.clone(), spec);
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use oasis_image::artifacts::ArtifactEntry;

    use super::*;

    fn entry(name: &str, file: &str) -> ArtifactEntry {
        ArtifactEntry { name: name.into(), file: file.into(), sha256: "cd".repeat(32), size: 1, version: None }
    }

    fn kubernetes() -> Kubernetes {
        let root = k3s::kubernetes_root_ca("rack").unwrap();
        Kubernetes {
            artifacts: K3sArtifacts {
                k3s: entry("k3s", "k3s"),
                airgap_images: entry("k3s-airgap-images", oasis_image::k3s_bundle::AIRGAP_FILES[0]),
            },
            token: "secret-token".into(),
            cas: K3sCas::issue(&root).unwrap(),
            etcd_tls: EtcdClientTls { ca_pem: "etcd-ca".into(), cert_pem: "cert".into(), key_pem: "key".into() },
        }
    }

    fn placed(n: u8, role: Role) -> Placed {
        Placed {
            id: format!("m{n}"),
            role,
            key: format!("k{n}"),
            overlay: Ipv4Addr::new(10, 99, 0, n),
            mesh_endpoint: None,
            data_disk: None,
            disk_mounted: false,
            reboot: None,
        }
    }

    #[test]
    fn the_secrets_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = ClusterCa::load_or_create(&store).unwrap();
        let artifacts = || kubernetes().artifacts;
        let (first, admin) = Kubernetes::load_or_create(&store, &ca, "rack", artifacts()).unwrap();
        let (again, admin_again) = Kubernetes::load_or_create(&store, &ca, "rack", artifacts()).unwrap();
        assert_eq!(
            (first.token, first.cas, first.etcd_tls, admin),
            (again.token, again.cas, again.etcd_tls, admin_again)
        );
    }

    #[test]
    fn a_damaged_secret_is_store_damage_that_names_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = ClusterCa::load_or_create(&store).unwrap();
        store.secret_or_create("k3s-cas", || b"not json".to_vec()).unwrap();
        let err = Kubernetes::load_or_create(&store, &ca, "rack", kubernetes().artifacts)
            .map_err(crate::serve::ServeError::Kubernetes)
            .unwrap_err();
        // `oasis serve` exits 5 and says how to recover, as for any other damaged record.
        assert_eq!(crate::exit::Exit::of(&err), crate::exit::Exit::StoreDamaged);
        let text = oasis_proto::error_chain(&err);
        assert!(text.contains("secrets record k3s-cas") && text.contains("--new-store"), "{text}");
    }

    #[test]
    fn a_secret_whose_maker_fails_is_not_kept_and_the_cause_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failing =
            || Err::<String, _>(KubernetesError::K3s { what: "k3s CAs", source: K3sError::Input("bad input".into()) });
        let err = store.kept_secret("k3s-token", failing).unwrap_err();
        assert_eq!(oasis_proto::error_chain(&err), "cannot make the k3s CAs: cannot configure k3s: bad input");
        assert_eq!(store.secret("k3s-token").unwrap(), None, "nothing committed");
        let kept: String = store.kept_secret("k3s-token", || Ok::<_, KubernetesError>("made".into())).unwrap();
        let again: String = store.kept_secret("k3s-token", || Ok::<_, KubernetesError>("other".into())).unwrap();
        assert_eq!((kept.as_str(), again.as_str()), ("made", "made"));
    }

    #[test]
    fn the_first_server_starts_alone_then_the_others_and_the_agents() {
        let k = kubernetes();
        let mesh = MeshPlan { network: Ipv4Addr::new(10, 98, 0, 0), prefix_len: 16, keepalive: 15 };
        let all = [
            placed(2, Role::ControlPlane),
            placed(3, Role::ControlPlane),
            placed(4, Role::Worker),
            placed(5, Role::Unassigned),
        ];
        let rack: HashMap<String, Ipv4Addr> =
            (2..=5).map(|n| (format!("m{n}"), Ipv4Addr::new(10, 0, 0, 100 + n))).collect();
        let first = k3s_services(&k, &all, &["m2", "m3"], &rack, &mesh, false).unwrap();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["m2", "m3", "m4"]);
        assert!(first["m2"].run && !first["m3"].run && !first["m4"].run);
        assert_eq!(first["m2"].args[0], "server");
        assert!(first["m2"]
            .args
            .join(" ")
            .contains("--datastore-endpoint https://10.98.0.2:2379,https://10.98.0.3:2379"));
        assert_eq!(first["m4"].args[0], "agent");
        let then = k3s_services(&k, &all, &["m2", "m3"], &rack, &mesh, true).unwrap();
        assert!(then.values().all(|s| s.run));
        assert_eq!(then["m2"].generation, first["m2"].generation, "so it is not restarted");
        let none = k3s_services(&k, &all, &[], &rack, &mesh, false).unwrap();
        assert!(none.is_empty(), "nothing without etcd members");
    }
}

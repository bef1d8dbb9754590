//! k3s on an oasis cluster: the service specs servers and agents run, the CAs k3s signs with, and
//! the kubeconfig the appliance hands out.
//!
//! Everything here is a pure function of its inputs, so the appliance can recompute a node's
//! desired state at any time and get the same bytes (and the same [`ServiceSpec::generation`]).
//! What must stay the same for the life of a cluster (the CAs, the admin credential, the token) is
//! made once by [`kubernetes_root_ca`], [`K3sCas::issue`] and [`admin_credential`] and kept by
//! the caller in its store.
//!
//! - Servers run `k3s server` on oasis's etcd (`--datastore-endpoint`, TLS with a client
//!   certificate for k3s), never `--cluster-init`: oasis grows and heals etcd itself.
//! - Agents run `k3s agent` against the first server's mesh address.
//! - Both keep their state in [`DATA_DIR`], use the mesh ([`oasis_proto::MESH_INTERFACE`]) for
//!   pod traffic (flannel's VXLAN then travels inside WireGuard) and take the airgap images from
//!   `DATA_DIR/agent/images/`, where k3s imports them at start.
//! - k3s's three CAs (server, client, request-header) are written into every server's
//!   `DATA_DIR/server/tls/` before k3s first starts; k3s then uses them instead of making its own
//!   (`pkg/daemons/control/deps` in k3s: it generates a CA only when the cert or key file is
//!   missing). So the appliance can sign an admin certificate and write a kubeconfig without asking
//!   the cluster, and every server has the same CAs from its first start.
//!
//! The CAs hang off a root that must not be the CA etcd trusts: k3s signs client certificates for
//! every node (kubelets on workers too), and etcd, with client-certificate auth and no RBAC, gives
//! full access to any client certificate that chains to its CA. [`server_service`] refuses CAs
//! that chain to the etcd CA.

use std::net::Ipv4Addr;

use base64::Engine as _;
use oasis_image::artifacts::ArtifactEntry;
use oasis_proto::{Artifact, FileSpec, ServiceSpec, MESH_INTERFACE};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// The service's name in desired state and heartbeats.
pub const SERVICE_NAME: &str = "k3s";
/// k3s's `--data-dir` on every node.
pub const DATA_DIR: &str = "/var/lib/oasis/k3s";
/// Where the k3s program goes.
pub const PROGRAM_PATH: &str = "/var/lib/oasis/k3s-bin/k3s";
/// The join token file (`--token-file`).
pub const TOKEN_PATH: &str = "/var/lib/oasis/k3s-config/token";
/// The etcd CA and k3s's etcd client certificate and key (`--datastore-*file`).
pub const ETCD_CA_PATH: &str = "/var/lib/oasis/k3s-etcd/ca.crt";
pub const ETCD_CERT_PATH: &str = "/var/lib/oasis/k3s-etcd/client.crt";
pub const ETCD_KEY_PATH: &str = "/var/lib/oasis/k3s-etcd/client.key";
/// The admin kubeconfig k3s writes on each server, for someone at a node's console.
pub const SERVER_KUBECONFIG_PATH: &str = "/var/lib/oasis/k3s/admin.kubeconfig";
/// The Kubernetes API port on servers.
pub const API_PORT: u16 = 6443;

/// Why k3s cannot be configured from the inputs given.
#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    /// rcgen could not make or sign a certificate.
    #[error("cannot make the k3s certificates")]
    Certificate(#[from] rcgen::Error),
    /// A CA given as PEM cannot be used.
    #[error(
        "the {what} is not a usable PEM certificate and key; it comes from the appliance's store, which may be damaged"
    )]
    BadCa {
        /// Which CA.
        what: &'static str,
        /// What failed.
        source: rcgen::Error,
    },
    /// A CA given as PEM holds no certificate.
    #[error("the {what} holds no PEM certificate; it comes from the appliance's store, which may be damaged")]
    NoCaCertificate {
        /// Which CA.
        what: &'static str,
    },
    /// The k3s CAs chain to the CA etcd trusts.
    #[error("the k3s CAs chain to the etcd CA: every certificate k3s signs (kubelets on workers too) would be a full etcd client; issue them from a separate root (kubernetes_root_ca)")]
    SharedWithEtcd,
    /// An input that k3s would reject or misread.
    #[error("cannot configure k3s: {0}")]
    Input(String),
}

/// A CA: its certificate chain (the CA first, then what signed it) and its private key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The three CAs k3s signs with. Each certificate field holds the CA and the root after it, as
/// k3s's own custom-CA script writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct K3sCas {
    /// Signs the API server's and kubelets' serving certificates; clients trust it.
    pub server: CaPem,
    /// Signs client certificates (admin, kubelets, controllers); the API server trusts it.
    pub client: CaPem,
    /// Signs the front-proxy client certificate the API server trusts for aggregated APIs.
    pub request_header: CaPem,
}

/// A client certificate and its key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What k3s needs to reach etcd: the CA etcd's certificates chain to and a client certificate
/// issued for k3s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdClientTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The bundle's artifacts as the image's `artifacts.json` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sArtifacts {
    pub k3s: ArtifactEntry,
    pub airgap_images: ArtifactEntry,
}

impl K3sArtifacts {
    /// The `k3s` and `k3s-airgap-images` entries of an image's artifacts; `None` when the image
    /// was built without a k3s bundle.
    pub fn from_entries(entries: &[ArtifactEntry]) -> Option<K3sArtifacts> {
        let find = |name| oasis_image::artifacts::find(entries, name).cloned();
        Some(K3sArtifacts {
            k3s: find(oasis_image::k3s_bundle::K3S_ARTIFACT)?,
            airgap_images: find(oasis_image::k3s_bundle::AIRGAP_ARTIFACT)?,
        })
    }
}

/// What every k3s node needs.
#[derive(Debug, Clone)]
pub struct NodeInputs<'a> {
    /// The join token, the same on every node (a secret).
    pub token: &'a str,
    /// The Kubernetes node name: unique in the cluster (the machine id does).
    pub node_name: &'a str,
    /// This node's mesh address.
    pub mesh_address: Ipv4Addr,
    pub artifacts: &'a K3sArtifacts,
    /// `false`: fetch and write everything, start nothing yet.
    pub run: bool,
}

/// What a server needs besides [`NodeInputs`].
#[derive(Debug, Clone)]
pub struct ServerInputs<'a> {
    pub node: NodeInputs<'a>,
    /// This node's address on the rack network: in the API server's certificate, so the
    /// kubeconfig can name it.
    pub rack_address: Ipv4Addr,
    /// etcd's client URLs, `https://MESH:2379` ([`etcd_endpoints`]).
    pub etcd_endpoints: &'a [String],
    pub etcd_tls: &'a EtcdClientTls,
    pub cas: &'a K3sCas,
}

/// etcd client URLs on the mesh, in the order given.
pub fn etcd_endpoints(mesh_addresses: &[Ipv4Addr]) -> Vec<String> {
    mesh_addresses.iter().map(|a| format!("https://{a}:{}", oasis_proto::ETCD_CLIENT_PORT)).collect()
}

/// A fresh self-signed root for the Kubernetes CAs, separate from the etcd CA. Made once per
/// cluster and kept by the appliance; its key never leaves the appliance.
pub fn kubernetes_root_ca(cluster: &str) -> Result<CaPem, K3sError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(&format!("oasis {cluster} kubernetes root CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok(CaPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// CA certificates are valid from 1975 to 4096 (rcgen's defaults): a disconnected rack's clocks
/// may be anywhere, and there is no renewal path yet; a CA is replaced by issuing new ones.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params
}

fn issuer_of<'a>(ca: &CaPem, what: &'static str) -> Result<Issuer<'a, KeyPair>, K3sError> {
    let bad = |source| K3sError::BadCa { what, source };
    let key = KeyPair::from_pem(&ca.key_pem).map_err(bad)?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(bad)
}

impl K3sCas {
    /// Issues k3s's server, client and request-header CAs from `root` (see
    /// [`kubernetes_root_ca`]). Each may sign only leaf certificates (path length 0).
    pub fn issue(root: &CaPem) -> Result<K3sCas, K3sError> {
        let issuer = issuer_of(root, "Kubernetes root CA")?;
        let root_cert =
            first_pem_block(&root.cert_pem).ok_or(K3sError::NoCaCertificate { what: "Kubernetes root CA" })?;
        let one = |name: &str| -> Result<CaPem, K3sError> {
            let key = KeyPair::generate()?;
            let mut params = ca_params(name);
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            let cert = params.signed_by(&key, &issuer)?;
            Ok(CaPem { cert_pem: format!("{}{root_cert}", cert.pem()), key_pem: key.serialize_pem() })
        };
        Ok(K3sCas {
            server: one("k3s-server-ca")?,
            client: one("k3s-client-ca")?,
            request_header: one("k3s-request-header-ca")?,
        })
    }
}

/// A cluster-admin client certificate (`O=system:masters`) signed by the client CA, for the
/// kubeconfig the appliance hands out. Valid from 1975 to 4096 like the CAs: no renewal path yet;
/// revoking it means issuing new k3s CAs.
pub fn admin_credential(cas: &K3sCas) -> Result<ClientCert, K3sError> {
    let issuer = issuer_of(&cas.client, "k3s client CA")?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "oasis-admin");
    params.distinguished_name.push(DnType::OrganizationName, "system:masters");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let chain = first_pem_block(&cas.client.cert_pem).unwrap_or_default();
    Ok(ClientCert { cert_pem: format!("{}{chain}", cert.pem()), key_pem: key.serialize_pem() })
}

/// The admin kubeconfig: the API server at `https://SERVER:6443` (a server's rack address: the
/// API server's certificate names it), trusting the server CA, as `admin`.
pub fn kubeconfig(cluster: &str, server: Ipv4Addr, cas: &K3sCas, admin: &ClientCert) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // JSON strings are YAML strings: the cluster name is quoted whatever it holds.
    let name = serde_json::to_string(cluster).expect("a string serializes");
    let user = serde_json::to_string(&format!("{cluster}-admin")).expect("a string serializes");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: https://{server}:{API_PORT}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {user}
current-context: {name}
",
        ca = b64(&cas.server.cert_pem),
        cert = b64(&admin.cert_pem),
        key = b64(&admin.key_pem),
    )
}

/// `k3s server` on oasis's etcd.
pub fn server_service(inputs: &ServerInputs<'_>) -> Result<ServiceSpec, K3sError> {
    let node = &inputs.node;
    check_node(node)?;
    if inputs.etcd_endpoints.is_empty() {
        return Err(K3sError::Input("no etcd endpoints: a server needs etcd running first".into()));
    }
    if let Some(bad) = inputs.etcd_endpoints.iter().find(|e| !e.starts_with("https://") || e.contains(',')) {
        return Err(K3sError::Input(format!("etcd endpoint {bad:?} is not one https:// URL")));
    }
    let etcd_certs = pem_blocks(&inputs.etcd_tls.ca_pem);
    let cas = [&inputs.cas.server, &inputs.cas.client, &inputs.cas.request_header];
    if cas.iter().flat_map(|ca| pem_blocks(&ca.cert_pem)).any(|block| etcd_certs.contains(&block)) {
        return Err(K3sError::SharedWithEtcd);
    }

    let mesh = node.mesh_address.to_string();
    let mut args = vec!["server".to_string()];
    args.extend(common_args(node));
    push(&mut args, "--datastore-endpoint", inputs.etcd_endpoints.join(","));
    push(&mut args, "--datastore-cafile", ETCD_CA_PATH);
    push(&mut args, "--datastore-certfile", ETCD_CERT_PATH);
    push(&mut args, "--datastore-keyfile", ETCD_KEY_PATH);
    push(&mut args, "--advertise-address", &mesh);
    push(&mut args, "--tls-san", inputs.rack_address.to_string());
    push(&mut args, "--write-kubeconfig", SERVER_KUBECONFIG_PATH);
    // The embedded cloud controller stays on (no --disable-cloud-controller): on bare machines it
    // is k3s's stub provider, which sets each node's addresses from --node-ip and lifts the
    // "uninitialized" taint, and runs the service load balancer; turned off, nothing would do
    // that on a rack with no cloud.

    let tls = format!("{DATA_DIR}/server/tls");
    let mut files = vec![token_file(node.token)];
    files.push(file(ETCD_CA_PATH, 0o644, &inputs.etcd_tls.ca_pem));
    files.push(file(ETCD_CERT_PATH, 0o644, &inputs.etcd_tls.cert_pem));
    files.push(file(ETCD_KEY_PATH, 0o600, &inputs.etcd_tls.key_pem));
    for (name, ca) in [
        ("server-ca", &inputs.cas.server),
        ("client-ca", &inputs.cas.client),
        ("request-header-ca", &inputs.cas.request_header),
    ] {
        files.push(file(&format!("{tls}/{name}.crt"), 0o644, &ca.cert_pem));
        files.push(file(&format!("{tls}/{name}.key"), 0o600, &ca.key_pem));
    }
    Ok(spec(node, args, files))
}

/// `k3s agent` joining the first of `servers` (mesh addresses, in the appliance's order). The
/// agent learns the other servers from the first once connected.
pub fn agent_service(node: &NodeInputs<'_>, servers: &[Ipv4Addr]) -> Result<ServiceSpec, K3sError> {
    check_node(node)?;
    let Some(first) = servers.first() else {
        return Err(K3sError::Input("no k3s server to join: agents start after the first server".into()));
    };
    let mut args = vec!["agent".to_string()];
    push(&mut args, "--server", format!("https://{first}:{API_PORT}"));
    args.extend(common_args(node));
    Ok(spec(node, args, vec![token_file(node.token)]))
}

fn check_node(node: &NodeInputs<'_>) -> Result<(), K3sError> {
    if node.token.is_empty() || node.token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(K3sError::Input("the join token is empty or holds whitespace".into()));
    }
    let name = node.node_name;
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(K3sError::Input(format!(
            "node name {name:?} is not a DNS name (lowercase letters, digits, '-' and '.'), as Kubernetes requires"
        )));
    }
    let images = &node.artifacts.airgap_images.file;
    if !oasis_image::k3s_bundle::AIRGAP_FILES.contains(&images.as_str()) {
        return Err(K3sError::Input(format!("airgap images file {images:?} is not one k3s imports")));
    }
    Ok(())
}

/// Flags servers and agents share.
fn common_args(node: &NodeInputs<'_>) -> Vec<String> {
    let mut args = Vec::new();
    push(&mut args, "--data-dir", DATA_DIR);
    push(&mut args, "--node-name", node.node_name);
    push(&mut args, "--token-file", TOKEN_PATH);
    push(&mut args, "--node-ip", node.mesh_address.to_string());
    push(&mut args, "--flannel-iface", MESH_INTERFACE);
    args
}

fn push(args: &mut Vec<String>, flag: &str, value: impl Into<String>) {
    args.push(flag.to_string());
    args.push(value.into());
}

fn file(path: &str, mode: u32, contents: &str) -> FileSpec {
    FileSpec { path: path.to_string(), mode, contents: contents.to_string() }
}

fn token_file(token: &str) -> FileSpec {
    file(TOKEN_PATH, 0o600, &format!("{token}\n"))
}

/// The spec, with a generation derived from everything in it: any change gives another number
/// (and restarts k3s), the same inputs give the same one.
fn spec(node: &NodeInputs<'_>, args: Vec<String>, files: Vec<FileSpec>) -> ServiceSpec {
    let artifact = |entry: &ArtifactEntry, path: String, mode| Artifact {
        sha256: entry.sha256.clone(),
        size: entry.size,
        path,
        mode,
    };
    let images = format!("{DATA_DIR}/agent/images/{}", node.artifacts.airgap_images.file);
    let mut spec = ServiceSpec {
        name: SERVICE_NAME.to_string(),
        generation: 0,
        artifacts: vec![
            artifact(&node.artifacts.k3s, PROGRAM_PATH.to_string(), 0o755),
            artifact(&node.artifacts.airgap_images, images, 0o644),
        ],
        files,
        data_dirs: vec![DATA_DIR.to_string()],
        args,
        env: vec![],
        run: node.run,
    };
    spec.generation = crate::assembly::desired::generation_of(&spec);
    spec
}

/// The PEM blocks of a text, each from its BEGIN line to its END line, with a final newline.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim_end) {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

fn first_pem_block(text: &str) -> Option<String> {
    pem_blocks(text).into_iter().next()
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;

    const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/k3s");

    fn pem(label: &str, body: &str) -> String {
        format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
    }

    /// Fixed test inputs: the PEMs are placeholders, not keys; the token is a test token.
    fn test_cas() -> K3sCas {
        let ca = |name: &str| CaPem {
            cert_pem: pem("CERTIFICATE", &format!("TEST-{name}-CA")) + &pem("CERTIFICATE", "TEST-KUBERNETES-ROOT"),
            key_pem: pem("PRIVATE KEY", &format!("TEST-{name}-CA-KEY")),
        };
        K3sCas { server: ca("SERVER"), client: ca("CLIENT"), request_header: ca("REQUEST-HEADER") }
    }

    fn test_etcd_tls() -> EtcdClientTls {
        EtcdClientTls {
            ca_pem: pem("CERTIFICATE", "TEST-ETCD-CA"),
            cert_pem: pem("CERTIFICATE", "TEST-K3S-ETCD-CLIENT"),
            key_pem: pem("PRIVATE KEY", "TEST-K3S-ETCD-CLIENT-KEY"),
        }
    }

    fn test_artifacts() -> K3sArtifacts {
        let entry = |name: &str, file: &str, fill: char, size| ArtifactEntry {
            name: name.into(),
            file: file.into(),
            sha256: fill.to_string().repeat(64),
            size,
            version: None,
        };
        K3sArtifacts {
            k3s: entry("k3s", "k3s", 'a', 70_000_000),
            airgap_images: entry("k3s-airgap-images", "k3s-airgap-images-amd64.tar.zst", 'b', 160_000_000),
        }
    }

    const TOKEN: &str = "test-join-token-0123456789";

    fn node<'a>(name: &'a str, host: u8, artifacts: &'a K3sArtifacts) -> NodeInputs<'a> {
        NodeInputs { token: TOKEN, node_name: name, mesh_address: Ipv4Addr::new(10, 98, 0, host), artifacts, run: true }
    }

    /// A spec as people read it: one argument per line, each file with its mode and contents.
    fn render(spec: &ServiceSpec) -> String {
        let mut out =
            format!("name: {}\ngeneration: {}\nrun: {}\nenv: {:?}\n", spec.name, spec.generation, spec.run, spec.env);
        out += &format!("data_dirs: {}\nartifacts:\n", spec.data_dirs.join(" "));
        for a in &spec.artifacts {
            out += &format!("  {} {:o} {} bytes sha256 {}\n", a.path, a.mode, a.size, a.sha256);
        }
        out += "args:\n";
        let mut args = spec.args.iter().peekable();
        while let Some(arg) = args.next() {
            match args.peek() {
                Some(value) if arg.starts_with("--") && !value.starts_with("--") => {
                    out += &format!("  {arg} {value}\n");
                    args.next();
                }
                _ => out += &format!("  {arg}\n"),
            }
        }
        for f in &spec.files {
            out += &format!("file {} {:o}:\n{}", f.path, f.mode, f.contents);
        }
        out
    }

    fn golden(name: &str, actual: &str) {
        oasis_testkit::assert_golden(Path::new(GOLDEN_DIR).join(name), actual);
    }

    /// A CA from the store that is not PEM keeps rcgen's error as the cause.
    #[test]
    fn a_ca_that_is_not_pem_keeps_rcgens_error() {
        let root = CaPem { cert_pem: "not a certificate".into(), key_pem: "not a key".into() };
        let err = K3sCas::issue(&root).unwrap_err();
        let cause = std::error::Error::source(&err).and_then(|c| c.downcast_ref::<rcgen::Error>());
        assert!(cause.is_some(), "{err:?}");
        let text = oasis_proto::error_chain(&err);
        assert!(text.starts_with("the Kubernetes root CA is not a usable PEM certificate and key; "), "{text}");
        assert!(text.ends_with(&format!(": {}", cause.unwrap())), "{text}");
    }

    #[test]
    fn three_servers_and_an_agent_match_the_golden_files() {
        let (cas, etcd_tls, artifacts) = (test_cas(), test_etcd_tls(), test_artifacts());
        let servers = [Ipv4Addr::new(10, 98, 0, 11), Ipv4Addr::new(10, 98, 0, 12), Ipv4Addr::new(10, 98, 0, 13)];
        let endpoints = etcd_endpoints(&servers);
        assert_eq!(endpoints[0], "https://10.98.0.11:2379");
        let mut generations = Vec::new();
        for (i, name) in ["node-a", "node-b", "node-c"].into_iter().enumerate() {
            let inputs = ServerInputs {
                node: node(name, 11 + i as u8, &artifacts),
                rack_address: Ipv4Addr::new(192, 168, 50, 11 + i as u8),
                etcd_endpoints: &endpoints,
                etcd_tls: &etcd_tls,
                cas: &cas,
            };
            let spec = server_service(&inputs).unwrap();
            assert_eq!(server_service(&inputs).unwrap(), spec, "the same inputs give the same spec");
            for path in spec.files.iter().map(|f| &f.path).chain(spec.artifacts.iter().map(|a| &a.path)) {
                assert!(oasis_proto::is_node_state_path(path), "{path}");
            }
            assert!(!spec.args.iter().any(|a| a == "--cluster-init" || a.contains(TOKEN)), "{:?}", spec.args);
            generations.push(spec.generation);
            golden(&format!("server-{}.txt", i + 1), &render(&spec));
        }
        let agent = agent_service(&node("node-d", 14, &artifacts), &servers).unwrap();
        generations.push(agent.generation);
        golden("agent.txt", &render(&agent));
        generations.sort();
        generations.dedup();
        assert_eq!(generations.len(), 4, "each node's spec has its own generation");

        let admin = ClientCert {
            cert_pem: pem("CERTIFICATE", "TEST-ADMIN") + &pem("CERTIFICATE", "TEST-CLIENT-CA"),
            key_pem: pem("PRIVATE KEY", "TEST-ADMIN-KEY"),
        };
        golden("kubeconfig.yaml", &kubeconfig("rack-1", Ipv4Addr::new(192, 168, 50, 11), &cas, &admin));
    }

    #[test]
    fn any_change_changes_the_generation_and_run_false_is_kept() {
        let (cas, etcd_tls, artifacts) = (test_cas(), test_etcd_tls(), test_artifacts());
        let endpoints = etcd_endpoints(&[Ipv4Addr::new(10, 98, 0, 11)]);
        let base = ServerInputs {
            node: node("node-a", 11, &artifacts),
            rack_address: Ipv4Addr::new(192, 168, 50, 11),
            etcd_endpoints: &endpoints,
            etcd_tls: &etcd_tls,
            cas: &cas,
        };
        let first = server_service(&base).unwrap().generation;
        let more = etcd_endpoints(&[Ipv4Addr::new(10, 98, 0, 11), Ipv4Addr::new(10, 98, 0, 12)]);
        assert_ne!(server_service(&ServerInputs { etcd_endpoints: &more, ..base.clone() }).unwrap().generation, first);
        let waiting =
            server_service(&ServerInputs { node: NodeInputs { run: false, ..base.node.clone() }, ..base.clone() });
        let waiting = waiting.unwrap();
        assert!(!waiting.run);
        assert_ne!(waiting.generation, first);
        let other_token = NodeInputs { token: "another-token", ..base.node.clone() };
        assert_ne!(server_service(&ServerInputs { node: other_token, ..base }).unwrap().generation, first);
    }

    #[test]
    fn unusable_inputs_are_refused_with_the_reason() {
        let (cas, etcd_tls, artifacts) = (test_cas(), test_etcd_tls(), test_artifacts());
        let endpoints = etcd_endpoints(&[Ipv4Addr::new(10, 98, 0, 11)]);
        let base = ServerInputs {
            node: node("node-a", 11, &artifacts),
            rack_address: Ipv4Addr::new(192, 168, 50, 11),
            etcd_endpoints: &endpoints,
            etcd_tls: &etcd_tls,
            cas: &cas,
        };
        let err = |inputs: ServerInputs<'_>| server_service(&inputs).unwrap_err().to_string();
        assert!(err(ServerInputs { etcd_endpoints: &[], ..base.clone() }).contains("etcd"));
        let plain = ["http://10.98.0.11:2379".to_string()];
        assert!(err(ServerInputs { etcd_endpoints: &plain, ..base.clone() }).contains("https://"));
        for name in ["Node_A", "", "-a", "a..b"] {
            let e = err(ServerInputs { node: NodeInputs { node_name: name, ..base.node.clone() }, ..base.clone() });
            assert!(e.contains("DNS name"), "{name}: {e}");
        }
        let e = err(ServerInputs { node: NodeInputs { token: "two words", ..base.node.clone() }, ..base.clone() });
        assert!(e.contains("token"), "{e}");
        let bad_images = K3sArtifacts {
            airgap_images: ArtifactEntry { file: "images.tar.xz".into(), ..artifacts.airgap_images.clone() },
            ..artifacts.clone()
        };
        let e = err(ServerInputs { node: NodeInputs { artifacts: &bad_images, ..base.node.clone() }, ..base.clone() });
        assert!(e.contains("images.tar.xz"), "{e}");

        // k3s CAs under the etcd CA would make every kubelet an etcd client.
        let shared = EtcdClientTls { ca_pem: pem("CERTIFICATE", "TEST-KUBERNETES-ROOT"), ..etcd_tls.clone() };
        let e = server_service(&ServerInputs { etcd_tls: &shared, ..base.clone() }).unwrap_err();
        assert!(matches!(e, K3sError::SharedWithEtcd), "{e}");

        assert!(agent_service(&base.node, &[]).unwrap_err().to_string().contains("first server"));
    }

    #[test]
    fn artifacts_are_found_in_the_image_list_or_absent() {
        let a = test_artifacts();
        let etcd = ArtifactEntry { name: "etcd".into(), file: "etcd".into(), ..a.k3s.clone() };
        let found = K3sArtifacts::from_entries(&[etcd.clone(), a.k3s.clone(), a.airgap_images.clone()]).unwrap();
        assert_eq!(found, a);
        assert_eq!(K3sArtifacts::from_entries(&[etcd]), None);
    }

    /// Writes PEM files for openssl.
    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn openssl(args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).output().expect("openssl runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "openssl {args:?}: {text}");
        text
    }

    /// Real certificates, checked by OpenSSL: the CAs chain to the root and may sign only leaves,
    /// the admin certificate is a TLS client certificate in system:masters that verifies through
    /// the client CA, and the kubeconfig carries exactly the server CA chain and the credential.
    #[test]
    fn generated_cas_and_admin_certificate_verify_with_openssl() {
        let root = kubernetes_root_ca("rack-1").unwrap();
        let cas = K3sCas::issue(&root).unwrap();
        let admin = admin_credential(&cas).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root_path = write(dir.path(), "root.pem", &root.cert_pem);
        let root_arg = root_path.to_str().unwrap();
        for (name, ca) in [("server", &cas.server), ("client", &cas.client), ("request-header", &cas.request_header)] {
            let blocks = pem_blocks(&ca.cert_pem);
            assert_eq!(blocks.len(), 2, "{name}: the CA then the root");
            assert_eq!(blocks[1], root.cert_pem, "{name}");
            let path = write(dir.path(), &format!("{name}.pem"), &blocks[0]);
            openssl(&["verify", "-CAfile", root_arg, path.to_str().unwrap()]);
            let text = openssl(&["x509", "-in", path.to_str().unwrap(), "-noout", "-text"]);
            assert!(text.contains("CA:TRUE, pathlen:0") && text.contains("Certificate Sign"), "{text}");
            assert!(text.contains(&format!("CN = k3s-{name}-ca")), "{text}");
            // The key is the CA's: k3s signs with it.
            let key = write(dir.path(), &format!("{name}.key"), &ca.key_pem);
            let from_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
            let from_cert = openssl(&["x509", "-in", path.to_str().unwrap(), "-noout", "-pubkey"]);
            assert_eq!(from_key, from_cert, "{name}");
        }

        let admin_blocks = pem_blocks(&admin.cert_pem);
        let leaf = write(dir.path(), "admin.pem", &admin_blocks[0]);
        let chain = write(dir.path(), "chain.pem", &admin_blocks[1]);
        let verified = openssl(&[
            "verify",
            "-CAfile",
            root_arg,
            "-untrusted",
            chain.to_str().unwrap(),
            "-purpose",
            "sslclient",
            leaf.to_str().unwrap(),
        ]);
        assert!(verified.contains(": OK"), "{verified}");
        let subject = openssl(&["x509", "-in", leaf.to_str().unwrap(), "-noout", "-subject"]);
        assert!(subject.contains("O = system:masters") && subject.contains("CN = oasis-admin"), "{subject}");
        // Not a server certificate, and not from the server CA.
        let server_chain = write(dir.path(), "server-chain.pem", &pem_blocks(&cas.server.cert_pem)[0]);
        let refused = Command::new("openssl")
            .args(["verify", "-CAfile", root_arg, "-untrusted", server_chain.to_str().unwrap()])
            .arg(&leaf)
            .output()
            .unwrap();
        assert!(!refused.status.success(), "the admin certificate verified without the client CA");

        let config = kubeconfig("rack-1", Ipv4Addr::new(192, 168, 50, 11), &cas, &admin);
        let field = |key: &str| {
            let line = config.lines().find_map(|l| l.trim().strip_prefix(key)).unwrap();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(line.trim()).unwrap()).unwrap()
        };
        assert_eq!(field("certificate-authority-data:"), cas.server.cert_pem);
        assert_eq!(field("client-certificate-data:"), admin.cert_pem);
        assert_eq!(field("client-key-data:"), admin.key_pem);
        assert!(config.contains("server: https://192.168.50.11:6443"), "{config}");

        // The real CAs pass the etcd guard when etcd has its own CA, and fail it when it shares the root.
        let artifacts = test_artifacts();
        let endpoints = etcd_endpoints(&[Ipv4Addr::new(10, 98, 0, 11)]);
        let etcd_tls = test_etcd_tls();
        let inputs = ServerInputs {
            node: node("node-a", 11, &artifacts),
            rack_address: Ipv4Addr::new(192, 168, 50, 11),
            etcd_endpoints: &endpoints,
            etcd_tls: &etcd_tls,
            cas: &cas,
        };
        server_service(&inputs).unwrap();
        let shared = EtcdClientTls { ca_pem: root.cert_pem.clone(), ..test_etcd_tls() };
        assert!(matches!(server_service(&ServerInputs { etcd_tls: &shared, ..inputs }), Err(K3sError::SharedWithEtcd)));
    }

    #[test]
    fn a_ca_that_is_not_pem_is_refused() {
        let bad = CaPem { cert_pem: "not a certificate".into(), key_pem: "not a key".into() };
        let err = K3sCas::issue(&bad).unwrap_err().to_string();
        assert!(err.contains("Kubernetes root CA") && err.contains("store"), "{err}");
    }
}

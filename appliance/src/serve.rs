//! `oasis serve`: DHCP, TFTP, HTTP boot and the admin socket, on one store, until stopped.
//!
//! The HTTP boot server, the API and the admin socket accept through [`oasis_pxe::conn::serve`],
//! each under its own connection caps, sized by [`limits::plan`] to fit in the descriptor limit
//! raised at start.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::conn::{self, Guard, Listener, Timeouts};
use oasis_pxe::conn_limit::Prefix;
use oasis_pxe::dhcp::conflict::{ArpCheck, ConflictCheck, IcmpCheck, NoCheck};
use oasis_pxe::dhcp::{DhcpConfig, DhcpServer, DhcpService, Mode};
use oasis_pxe::http::{self, HttpBoot};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::policy::BootPolicy;
use oasis_pxe::script::ScriptRenderer;
use oasis_pxe::tftp::TftpServer;
use tokio::task::JoinSet;

use oasis_proto::Artifact;

use crate::admin;
use crate::api::{self, Api, PeerDevice, PeerQueue, Published};
use crate::controller::kubernetes::Kubernetes;
use crate::controller::world::SystemClock;
use crate::controller::{Controller, Outputs, Provisions, World};
use crate::etcd::EtcdClient;
use crate::generations::{GenerationsError, NodeGenerations, UpdateKeys};
use crate::identity::Identity;
use crate::limits;
use crate::netboot::NetbootDirectory;
use crate::pki::ClusterCa;
use crate::store::{Store, StoreOptions};
use crate::wireguard::{self, ManagementInterface};
use oasis_core::config::{AcceptancePolicy, Config, ConflictCheckKind, DhcpSettings};
use oasis_core::k3s::K3sArtifacts;
use oasis_core::registry::{Overlay, Policy, Registry};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve the node generations in {path}; check the data directory and its permissions")]
    GenerationsRoot { path: PathBuf, source: oasis_pxe::boot_root::PathError },
    #[error("the node generations on the data partition cannot be checked")]
    Generations(#[source] GenerationsError),
    #[error("network interface {0:?} does not exist on this machine: check network.interface (`ip link` lists them)")]
    NoInterface(String),
    #[error("cannot read the hardware address of {interface} from {path}")]
    InterfaceUnreadable { interface: String, path: PathBuf, source: std::io::Error },
    #[error("address {address} is not assigned to this machine: add it, e.g. `ip addr add {address}/{prefix} dev {interface}`")]
    NoAddress { address: Ipv4Addr, prefix: u32, interface: String },
    #[error("the boot root {path} is unusable: create it and put the iPXE builds and the boot profile's files in it")]
    BootRoot { path: PathBuf, source: oasis_pxe::boot_root::PathError },
    #[error("the boot profile's {what} {name:?} is not in the boot root {root}{hint}")]
    ProfileFile {
        what: &'static str,
        name: String,
        root: PathBuf,
        source: oasis_pxe::boot_root::PathError,
        /// What to do about it, when we know.
        hint: String,
    },
    #[error("cannot start the {what} service on {addr}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the admin socket {path} (is another `oasis serve` running on this data directory?)")]
    AdminSocket { path: PathBuf, source: std::io::Error },
    #[error("cannot watch for SIGTERM, so `oasis serve` could not be stopped cleanly")]
    Signal { source: std::io::Error },
    #[error("cannot start the conflict check on {interface}")]
    ConflictCheck { interface: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Dhcp(#[from] oasis_pxe::dhcp::DhcpError),
    #[error("the {service} service stopped unexpectedly; restart `oasis serve`")]
    Stopped { service: &'static str },
    #[error("the {service} service failed; restart `oasis serve`, and report this")]
    Panicked { service: &'static str, source: tokio::task::JoinError },
    #[error("cannot load the appliance's identity")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("cannot bring up the management network")]
    Wireguard(#[from] wireguard::WireguardError),
    #[error("cluster assembly cannot start: the cluster CA is unusable")]
    ClusterCa(#[source] crate::pki::PkiError),
    #[error("cluster assembly cannot start: no etcd client")]
    Etcd(#[source] crate::pki::PkiError),
    #[error("cluster assembly cannot start: the cluster's Kubernetes secrets are unusable")]
    Kubernetes(#[source] crate::controller::error::KubernetesError),
    #[error("the API's TLS setup failed")]
    Tls(#[from] rustls::Error),
}

/// Checks the interface exists and carries the configured address.
fn check_host(config: &Config) -> Result<[u8; 6], ServeError> {
    let mac_path = Path::new("/sys/class/net").join(&config.interface).join("address");
    let mac_text = std::fs::read_to_string(&mac_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ServeError::NoInterface(config.interface.clone()),
        _ => ServeError::InterfaceUnreadable { interface: config.interface.clone(), path: mac_path.clone(), source },
    })?;
    let mac: oasis_proto::MacAddr =
        mac_text.trim().parse().map_err(|_| ServeError::NoInterface(config.interface.clone()))?;
    // Binding to an address succeeds only if the address is assigned here.
    if StdUdpSocket::bind(SocketAddrV4::new(config.address, 0)).is_err() {
        return Err(ServeError::NoAddress {
            address: config.address,
            prefix: config.rack_net().prefix_len().into(),
            interface: config.interface.clone(),
        });
    }
    Ok(mac.0)
}

/// Checks what the boot root must hold: the profile's files. Missing iPXE builds are only
/// warned about: a rack of BIOS machines needs no `ipxe.efi`.
fn check_boot_root(config: &Config) -> Result<BootRoot, ServeError> {
    let root = BootRoot::new(&config.boot_root)
        .map_err(|source| ServeError::BootRoot { path: config.boot_root.clone(), source })?;
    let profile = &config.profile;
    for (what, name) in [("kernel", Some(&profile.kernel)), ("initrd", profile.initrd.as_ref())] {
        let Some(name) = name else { continue };
        root.check(name.as_bytes()).map_err(|source| ServeError::ProfileFile {
            what,
            name: name.clone(),
            root: config.boot_root.clone(),
            source,
            hint: if config.profile_is_node {
                format!(
                    ". Without a [profile], machines boot the node image: build it with `oasis image build node \
                     --agent /usr/bin/oasis-agent --out {}/node`",
                    config.boot_root.display()
                )
            } else {
                String::new()
            },
        })?;
    }
    for binary in ["undionly.kpxe", "ipxe.efi", "snp.efi"] {
        let name = format!("{}/{binary}", config.ipxe_dir);
        if root.check(name.as_bytes()).is_err() {
            tracing::warn!("{name} is not in the boot root: clients that need it cannot boot");
        }
    }
    match oasis_image::manifest::verify(&root.path().join(&config.ipxe_dir)) {
        Ok(_) => {}
        Err(e) => tracing::warn!("iPXE builds not verified: {}", oasis_proto::error_chain(&e)),
    }
    Ok(root)
}

/// The artifacts beside the node image (`node/artifacts.json`), verified, by name, and the k3s
/// bundle among them if there is one. A missing or damaged set is logged and served as nothing:
/// assembly then says what is missing.
fn load_node_artifacts(config: &Config) -> (HashMap<String, (Artifact, PathBuf)>, Option<K3sArtifacts>) {
    let dir = config.boot_root.join("node");
    match oasis_image::artifacts::verify(&dir) {
        Ok(entries) => {
            let bundle = K3sArtifacts::from_entries(&entries);
            let by_name = entries
                .into_iter()
                .map(|e| {
                    let artifact = Artifact { sha256: e.sha256, size: e.size, path: e.file.clone(), mode: 0o644 };
                    (e.name, (artifact, dir.join(&e.file)))
                })
                .collect();
            (by_name, bundle)
        }
        Err(e) => {
            tracing::warn!("no node artifacts (etcd, k3s) to serve: {}", oasis_proto::error_chain(&e));
            (HashMap::new(), None)
        }
    }
}

/// Brings up the management interface with a peer for every accepted machine, and the registry.
async fn start_management(
    config: &Config,
    store: &Store,
    identity: Identity,
    artifacts: HashMap<String, PathBuf>,
) -> Result<Arc<Api>, ServeError> {
    let w = &config.wireguard;
    let interface =
        ManagementInterface::start(&w.interface, &identity.wireguard_private, w.port, w.address, w.prefix_len).await?;
    tracing::info!(interface = w.interface, implementation = ?interface.implementation(), address = %w.address, "management network up");
    let records = store.records()?;
    for record in records.iter().filter(|r| r.state == oasis_proto::MachineState::Accepted) {
        if let Some(overlay) = record.overlay {
            if let Err(e) = interface.add_peer(&record.wireguard_key, overlay) {
                tracing::error!(machine = %record.id, "WireGuard peer not restored: {}", oasis_proto::error_chain(&e));
            }
        }
    }
    let policy = match config.policy {
        AcceptancePolicy::Auto => Policy::Auto,
        AcceptancePolicy::Manual => Policy::Manual,
        AcceptancePolicy::Allowlist => {
            Policy::Allowlist { serials: config.allow_serials.clone(), macs: config.allow_macs.clone() }
        }
    };
    let overlay = Overlay {
        appliance: w.address,
        prefix_len: w.prefix_len,
        endpoint: SocketAddrV4::new(config.address, w.port),
        appliance_key: wireguard::public_key(&identity.wireguard_private),
        keepalive_secs: w.keepalive,
    };
    let (desired, _) = tokio::sync::watch::channel(Arc::new(Published::at_start()));
    let interface = Arc::new(interface);
    let generations = node_generations(config, store)?;
    Ok(Arc::new(Api {
        generations,
        registry: tokio::sync::Mutex::new(Registry::new(policy, overlay, records)),
        store: store.clone(),
        identity,
        wireguard: Some(interface.clone()),
        desired,
        artifacts,
        full_dhcp: full_dhcp(config),
        peers: PeerQueue::new(Some(interface as Arc<dyn PeerDevice>)),
        power: Arc::new(crate::power::PowerControl::new(&config.power)),
        agent_power: Default::default(),
    }))
}

/// `DATA_DIR/generations`, made if missing, as a root the HTTP boot serves beneath.
fn generations_root(config: &Config) -> Result<BootRoot, ServeError> {
    let path = config.data_dir.join(crate::generations::GENERATIONS_DIR);
    let made = std::fs::create_dir_all(&path)
        .map_err(|source| oasis_pxe::boot_root::PathError::Io { path: path.clone(), source });
    made.and_then(|()| BootRoot::new(&path)).map_err(|source| ServeError::GenerationsRoot { path, source })
}

/// The node generations on the data partition, with what a crash left behind removed.
fn node_generations(config: &Config, store: &Store) -> Result<Arc<NodeGenerations>, ServeError> {
    let keys = UpdateKeys {
        image_key: Some(PathBuf::from(oasis_image::appliance::TRUSTED_KEY_PATH)),
        configured: config.update_trusted_keys.clone(),
    };
    let generations = NodeGenerations::new(store.clone(), &config.data_dir, &config.boot_root.join("node"), keys);
    generations.reconcile().map_err(ServeError::Generations)?;
    generations.announce_last_trial();
    Ok(Arc::new(generations))
}

/// Raises the descriptor limit and sizes the listeners' connection caps to fit in it.
fn connection_caps(config: &Config) -> limits::Plan {
    let tftp_transfers = config.tftp.as_ref().map_or(0, |(_, tftp)| tftp.max_transfers);
    let nofile = match limits::raise_descriptor_limit() {
        Ok(limit) => {
            tracing::info!("descriptor limit {limit}");
            limit.soft
        }
        Err(e) => {
            // The caps are then sized for the kernel's default soft limit.
            tracing::warn!("{}; sizing the connection caps for 1024 descriptors", oasis_proto::error_chain(&e));
            1024
        }
    };
    let overlay = Prefix::new(config.wireguard.address, config.wireguard.prefix_len);
    let plan = limits::plan(nofile, tftp_transfers, overlay);
    if plan.scaled {
        tracing::warn!(
            "the descriptor limit {nofile} is too low for the full connection caps ({} needed with \
             tftp.max_transfers = {tftp_transfers}): they are scaled down, so fewer machines can boot at \
             once; raise the limit (LimitNOFILE= in the service, or `ulimit -Hn {}` as root before \
             starting oasis) or lower tftp.max_transfers",
            limits::full_need(tftp_transfers),
            limits::WANTED_NOFILE
        );
    }
    tracing::info!("connection caps: HTTP boot {}; API {}; admin socket {}", plan.http, plan.api, plan.admin.total);
    plan
}

/// Whether this appliance's DHCP hands out the rack's addresses, so it knows who holds which.
fn full_dhcp(config: &Config) -> bool {
    config.dhcp.as_ref().is_some_and(|d| d.full.is_some())
}

/// The running services, each under its name, so a stop or a panic says which one.
#[derive(Default)]
struct Services {
    tasks: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
}

impl Services {
    fn spawn(&mut self, name: &'static str, service: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(service);
        self.names.insert(handle.id(), name);
    }

    fn name(&self, id: tokio::task::Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("unnamed")
    }

    /// Waits for the first service to end, and says which and how: a service ends only on a
    /// failure, which it logged, or a panic, which is kept as the cause.
    async fn first_stop(&mut self) -> ServeError {
        match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => ServeError::Stopped { service: self.name(id) },
            Some(Err(source)) => ServeError::Panicked { service: self.name(source.id()), source },
            None => std::future::pending().await,
        }
    }
}

/// The DHCP service's configuration, from `[dhcp]` and the network the appliance serves.
fn dhcp_config(config: &Config, dhcp: &DhcpSettings, policy: &BootPolicy) -> DhcpConfig {
    let mode = match &dhcp.full {
        Some((pool, network, authoritative)) => {
            Mode::Full { pool: pool.clone(), authoritative: *authoritative, network: network.clone() }
        }
        None => Mode::Proxy,
    };
    DhcpConfig {
        mode,
        interface: config.interface.clone(),
        server: config.address,
        server_port: dhcp.port,
        client_port: dhcp.client_port,
        proxy_port: dhcp.proxy_port,
        policy: policy.clone(),
        rate_per_sec: dhcp.rate_limit,
        rate_burst: dhcp.rate_burst,
        reply_delay: dhcp.reply_delay,
        tolerate_missing_uuid: dhcp.tolerate_missing_uuid,
    }
}

/// The check that an address is free before it is offered (full mode only).
fn conflict_check(
    config: &Config,
    dhcp: &DhcpSettings,
    our_mac: [u8; 6],
) -> Result<Arc<dyn ConflictCheck>, ServeError> {
    let failed = |source| ServeError::ConflictCheck { interface: config.interface.clone(), source };
    Ok(match (dhcp.conflict_check, &dhcp.full) {
        (_, None) | (ConflictCheckKind::Off, _) => Arc::new(NoCheck),
        (ConflictCheckKind::Arp, Some(_)) => {
            Arc::new(ArpCheck::new(&config.interface, our_mac, dhcp.conflict_timeout).map_err(failed)?)
        }
        (ConflictCheckKind::Icmp, Some(_)) => {
            Arc::new(IcmpCheck::new(&config.interface, dhcp.conflict_timeout).map_err(failed)?)
        }
    })
}

/// Binds the admin socket in the data directory.
fn listen_admin(data_dir: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    admin::listen(data_dir).map_err(|source| ServeError::AdminSocket { path: admin::socket_path(data_dir), source })
}

/// What every service starts from, and the services started so far.
struct Launch<'a> {
    config: &'a Config,
    store: Store,
    metrics: Arc<Metrics>,
    root: BootRoot,
    policy: BootPolicy,
    caps: limits::Plan,
    services: Services,
}

impl Launch<'_> {
    fn start_dhcp(&mut self, our_mac: [u8; 6]) -> Result<(), ServeError> {
        let Some(d) = &self.config.dhcp else { return Ok(()) };
        let check = conflict_check(self.config, d, our_mac)?;
        let dhcp_config = dhcp_config(self.config, d, &self.policy);
        let service = DhcpService::new(dhcp_config, Arc::new(self.store.clone()), check, self.metrics.clone())?;
        let server = DhcpServer::bind(service)?;
        self.services.spawn("DHCP", server.run());
        let mode = if d.full.is_some() { "full" } else { "proxy" };
        tracing::info!(interface = %self.config.interface, mode, "DHCP serving");
        Ok(())
    }

    async fn start_tftp(&mut self) -> Result<(), ServeError> {
        let Some((port, tftp_config)) = &self.config.tftp else { return Ok(()) };
        let addr = SocketAddr::V4(SocketAddrV4::new(self.config.address, *port));
        let server = TftpServer::bind(addr, self.root.clone(), tftp_config.clone(), self.metrics.clone())
            .await
            .map_err(|source| ServeError::Listen { what: "TFTP", addr, source })?;
        self.services.spawn("TFTP", server.run());
        tracing::info!(%addr, "TFTP serving {}", self.root.path().display());
        Ok(())
    }

    async fn start_http(&mut self, profile: oasis_pxe::script::BootProfile) -> Result<(), ServeError> {
        let config = self.config;
        let addr = SocketAddr::V4(SocketAddrV4::new(config.address, config.http_port));
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen {
            what: "HTTP",
            addr,
            source,
        })?;
        let scripts = ScriptRenderer::new(self.policy.base_url(), profile);
        let directory = NetbootDirectory::new(self.store.clone(), full_dhcp(config), config.profile_is_node);
        let mut boot = HttpBoot::new(self.root.clone(), scripts, Arc::new(directory), self.metrics.clone());
        if config.profile_is_node {
            boot = boot.with_mount(crate::netboot::GENERATIONS_MOUNT, generations_root(config)?);
        }
        let guard = Guard::new(Listener::HttpBoot, self.caps.http.clone(), Timeouts::default(), self.metrics.clone());
        self.services.spawn("HTTP", http::serve(listener, http::router(boot), guard));
        tracing::info!(%addr, "HTTP boot serving");
        Ok(())
    }

    /// The cluster CA, the etcd client and the controller that assembles the cluster.
    async fn start_assembly(
        &mut self,
        api: &Arc<Api>,
        node_artifacts: &HashMap<String, (Artifact, PathBuf)>,
        k3s_bundle: Option<K3sArtifacts>,
    ) -> Result<admin::ClusterHandle, ServeError> {
        let ca = ClusterCa::load_or_create(&self.store).map_err(ServeError::ClusterCa)?;
        let etcd = EtcdClient::new(&ca).map_err(ServeError::Etcd)?;
        let (cluster_status, status) = tokio::sync::watch::channel(Arc::default());
        let (kubeconfig_tx, kubeconfig) = tokio::sync::watch::channel(None);
        let kubernetes = match k3s_bundle {
            Some(artifacts) => Some(
                Kubernetes::load_or_create(&self.store, &ca, &self.config.cluster.name, artifacts)
                    .map_err(ServeError::Kubernetes)?,
            ),
            None => None,
        };
        let controller = Controller::new(
            self.config.cluster.clone(),
            World { api: api.clone(), etcd: etcd.clone(), clock: SystemClock },
            Provisions { ca, etcd_artifact: node_artifacts.get("etcd").map(|(a, _)| a.clone()), kubernetes },
            Outputs { status: cluster_status, kubeconfig: kubeconfig_tx },
        )
        .with_rollout(self.config.rollout.clone());
        self.services.spawn("assembly", controller.run());
        Ok(admin::ClusterHandle { status, etcd, kubeconfig })
    }

    async fn start_api(&mut self, api: &Arc<Api>, cluster: &admin::ClusterHandle) -> Result<(), ServeError> {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, self.config.api_port));
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen {
            what: "API",
            addr,
            source,
        })?;
        let tls = api::tls_config(&api.identity)?;
        let guard = Guard::new(Listener::Api, self.caps.api.clone(), Timeouts::default(), self.metrics.clone());
        let operator = crate::operator::Operator { api: api.clone(), cluster: Some(cluster.clone()) };
        let fingerprint = api.identity.certificate_fingerprint();
        tracing::info!(%addr, %fingerprint, "API and web page serving (HTTPS)");
        let appliance =
            crate::web::Appliance { version: env!("CARGO_PKG_VERSION"), address: self.config.address, fingerprint };
        let router = api::router(api.clone()).merge(crate::web::router(crate::web::Web::new(operator, appliance)));
        self.services.spawn("API", api::serve(listener, tls, router, guard));
        Ok(())
    }

    fn start_admin(&mut self, api: &Arc<Api>, cluster: admin::ClusterHandle) -> Result<(), ServeError> {
        let listener = listen_admin(&self.config.data_dir)?;
        let router = admin::router(api.clone(), cluster);
        let guard = Guard::new(Listener::Admin, self.caps.admin.clone(), Timeouts::default(), self.metrics.clone());
        self.services.spawn("admin", conn::serve(listener, guard, conn::plain, router));
        Ok(())
    }
}

/// Runs every service until one fails or the process is told to stop. `new_store`: start afresh
/// if the store is damaged or lost (`oasis serve --new-store`).
pub async fn run(config: Config, new_store: bool) -> Result<(), ServeError> {
    let our_mac = check_host(&config)?;
    let root = check_boot_root(&config)?;
    let caps = connection_caps(&config);
    let metrics = Arc::new(Metrics::default());
    let options = StoreOptions { events: config.events, new_store, metrics: Some(metrics.clone()) };
    let store = Store::open_with(&config.data_dir, options)?;
    let identity = Identity::load_or_create(&store, &config.data_dir)?;
    tracing::info!(pin = %identity.pin, admin_token = %identity.admin_token_fingerprint(), "appliance identity loaded");
    let policy = BootPolicy { server: config.address, http_port: config.http_port, ipxe_dir: config.ipxe_dir.clone() };
    let mut profile = config.profile.clone();
    if config.profile_is_node {
        let agent = identity.agent_kernel_args(config.address, config.api_port);
        let boot = format!("{}={}", oasis_proto::BOOT_URL_ARG, policy.base_url());
        profile.cmdline = format!("{} {agent} {boot}", profile.cmdline).trim().to_string();
    }
    let mut launch =
        Launch { config: &config, store: store.clone(), metrics, root, policy, caps, services: Services::default() };
    launch.start_dhcp(our_mac)?;
    launch.start_tftp().await?;
    launch.start_http(profile).await?;
    let (node_artifacts, k3s_bundle) = load_node_artifacts(&config);
    let served: HashMap<String, PathBuf> =
        node_artifacts.values().map(|(a, path)| (a.sha256.clone(), path.clone())).collect();
    let api = start_management(&config, &store, identity, served).await?;
    api.power.recall(&api.store);
    let cluster = launch.start_assembly(&api, &node_artifacts, k3s_bundle).await?;
    launch.start_api(&api, &cluster).await?;
    launch.start_admin(&api, cluster)?;
    {
        // Always: BMCs may come from agents or scans as well as from the config.
        let (api, power_on_at_start) = (api.clone(), config.power.power_on_at_start);
        launch.services.spawn("power", async move { api.power.run(&api.store, power_on_at_start).await });
    }
    let mut services = launch.services;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ServeError::Signal { source })?;
    let result = tokio::select! {
        stopped = services.first_stop() => Err(stopped),
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; stopping");
            Ok(())
        }
    };
    // The counts of repeated refusals are written now, not lost with the process.
    if let Err(e) = store.flush().await {
        tracing::warn!("the last events were not written: {}", oasis_proto::error_chain(&e));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_service_is_named_and_its_panic_kept() {
        let mut services = Services::default();
        services.spawn("HTTP", std::future::pending());
        services.spawn("TFTP", async { panic!("the TFTP socket vanished") });
        let stopped = services.first_stop().await;
        assert!(matches!(stopped, ServeError::Panicked { service: "TFTP", .. }), "{stopped:?}");
        let text = oasis_proto::error_chain(&stopped);
        assert!(text.starts_with("the TFTP service failed"), "{text}");
        assert!(text.contains("the TFTP socket vanished"), "the panic is kept: {text}");
    }

    #[tokio::test]
    async fn a_service_that_returns_is_named() {
        let mut services = Services::default();
        services.spawn("HTTP", std::future::pending());
        services.spawn("DHCP", async {});
        let stopped = services.first_stop().await;
        assert_eq!(oasis_proto::error_chain(&stopped), "the DHCP service stopped unexpectedly; restart `oasis serve`");
    }

    #[tokio::test]
    async fn an_admin_socket_failure_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        // A directory with something in it where the socket goes: it cannot be replaced.
        let path = admin::socket_path(dir.path());
        std::fs::create_dir_all(path.join("x")).unwrap();
        let err = listen_admin(dir.path()).unwrap_err();
        assert!(matches!(&err, ServeError::AdminSocket { path: p, .. } if *p == path), "{err:?}");
        let text = oasis_proto::error_chain(&err);
        assert!(text.contains(&path.display().to_string()), "the socket's path is named: {text}");
        assert!(!text.contains("127.0.0.1"), "{text}");
    }
}

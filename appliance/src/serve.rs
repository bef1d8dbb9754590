//! `oasis serve`: DHCP, TFTP, HTTP boot and the admin socket, on one store, until stopped.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::dhcp::conflict::{ArpCheck, ConflictCheck, IcmpCheck, NoCheck};
use oasis_pxe::dhcp::{DhcpConfig, DhcpServer, DhcpService, Mode};
use oasis_pxe::http::{self, HttpBoot};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::policy::BootPolicy;
use oasis_pxe::script::ScriptRenderer;
use oasis_pxe::tftp::TftpServer;
use tokio::task::JoinSet;

use crate::admin;
use crate::config::{Config, ConflictCheckKind};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("network interface {0:?} does not exist on this machine: check network.interface (`ip link` lists them)")]
    NoInterface(String),
    #[error("address {address} is not assigned to this machine: add it, e.g. `ip addr add {address}/{prefix} dev {interface}`")]
    NoAddress { address: Ipv4Addr, prefix: u32, interface: String },
    #[error("the boot root {path} is unusable: {source}; create it and put the iPXE builds and the boot profile's files in it")]
    BootRoot { path: PathBuf, source: oasis_pxe::boot_root::PathError },
    #[error("the boot profile's {what} {name:?} is not in the boot root {root}: {source}")]
    ProfileFile { what: &'static str, name: String, root: PathBuf, source: oasis_pxe::boot_root::PathError },
    #[error("cannot start the {what} service on {addr}: {source}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the conflict check on {interface}: {source}")]
    ConflictCheck { interface: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Dhcp(#[from] oasis_pxe::dhcp::DhcpError),
    #[error("the {0} service stopped unexpectedly")]
    Stopped(&'static str),
}

/// Checks the interface exists and carries the configured address.
fn check_host(config: &Config) -> Result<[u8; 6], ServeError> {
    let mac_path = Path::new("/sys/class/net").join(&config.interface).join("address");
    let mac_text = std::fs::read_to_string(&mac_path).map_err(|_| ServeError::NoInterface(config.interface.clone()))?;
    let mac: oasis_pxe::mac::MacAddr =
        mac_text.trim().parse().map_err(|_| ServeError::NoInterface(config.interface.clone()))?;
    // Binding to an address succeeds only if the address is assigned here.
    if StdUdpSocket::bind(SocketAddrV4::new(config.address, 0)).is_err() {
        return Err(ServeError::NoAddress {
            address: config.address,
            prefix: u32::from(config.netmask).leading_ones(),
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
        root.resolve(name.as_bytes()).map_err(|source| ServeError::ProfileFile {
            what,
            name: name.clone(),
            root: config.boot_root.clone(),
            source,
        })?;
    }
    for binary in ["undionly.kpxe", "ipxe.efi", "snp.efi"] {
        let name = format!("{}/{binary}", config.ipxe_dir);
        if root.resolve(name.as_bytes()).is_err() {
            tracing::warn!("{name} is not in the boot root: clients that need it cannot boot");
        }
    }
    match oasis_image::manifest::verify(&root.path().join(&config.ipxe_dir)) {
        Ok(_) => {}
        Err(e) => tracing::warn!("iPXE builds not verified: {e}"),
    }
    Ok(root)
}

/// Runs every service until one fails or the process is told to stop.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let our_mac = check_host(&config)?;
    let root = check_boot_root(&config)?;
    let store = Store::open(&config.data_dir)?;
    let metrics = Arc::new(Metrics::default());
    let policy = BootPolicy { server: config.address, http_port: config.http_port, ipxe_dir: config.ipxe_dir.clone() };
    let mut tasks: JoinSet<&'static str> = JoinSet::new();

    if let Some(d) = &config.dhcp {
        let check: Arc<dyn ConflictCheck> = match (d.conflict_check, &d.full) {
            (_, None) | (ConflictCheckKind::Off, _) => Arc::new(NoCheck),
            (ConflictCheckKind::Arp, Some(_)) => Arc::new(
                ArpCheck::new(&config.interface, our_mac, d.conflict_timeout)
                    .map_err(|source| ServeError::ConflictCheck { interface: config.interface.clone(), source })?,
            ),
            (ConflictCheckKind::Icmp, Some(_)) => Arc::new(
                IcmpCheck::new(&config.interface, d.conflict_timeout)
                    .map_err(|source| ServeError::ConflictCheck { interface: config.interface.clone(), source })?,
            ),
        };
        let mode = match &d.full {
            Some((pool, network, authoritative)) => {
                Mode::Full { pool: pool.clone(), authoritative: *authoritative, network: network.clone() }
            }
            None => Mode::Proxy,
        };
        let dhcp_config = DhcpConfig {
            mode,
            interface: config.interface.clone(),
            server: config.address,
            server_port: d.port,
            client_port: d.client_port,
            proxy_port: d.proxy_port,
            policy: policy.clone(),
            rate_per_sec: d.rate_limit,
            rate_burst: d.rate_burst,
            reply_delay: d.reply_delay,
            tolerate_missing_uuid: d.tolerate_missing_uuid,
        };
        let service = DhcpService::new(dhcp_config, Arc::new(store.clone()), check, metrics.clone())?;
        let server = DhcpServer::bind(service)?;
        tasks.spawn(async move {
            server.run().await;
            "DHCP"
        });
        tracing::info!(interface = %config.interface, mode = if d.full.is_some() { "full" } else { "proxy" }, "DHCP serving");
    }

    if let Some((port, tftp_config)) = &config.tftp {
        let addr = SocketAddr::V4(SocketAddrV4::new(config.address, *port));
        let server = TftpServer::bind(addr, root.clone(), tftp_config.clone(), metrics.clone())
            .await
            .map_err(|source| ServeError::Listen { what: "TFTP", addr, source })?;
        tasks.spawn(async move {
            server.run().await;
            "TFTP"
        });
        tracing::info!(%addr, "TFTP serving {}", root.path().display());
    }

    let http_addr = SocketAddr::V4(SocketAddrV4::new(config.address, config.http_port));
    let listener = tokio::net::TcpListener::bind(http_addr).await.map_err(|source| ServeError::Listen {
        what: "HTTP",
        addr: http_addr,
        source,
    })?;
    let scripts = ScriptRenderer::new(policy.base_url(), config.profile.clone());
    let router = http::router(HttpBoot::new(root.clone(), scripts, Arc::new(store.clone()), metrics.clone()));
    tasks.spawn(async move {
        if let Err(e) = http::serve(listener, router).await {
            tracing::error!("HTTP server failed: {e}");
        }
        "HTTP"
    });
    tracing::info!(addr = %http_addr, "HTTP boot serving");

    let admin_listener = admin::listen(&config.data_dir).map_err(|source| ServeError::Listen {
        what: "admin",
        addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        source,
    })?;
    let admin_router = admin::router(store.clone());
    tasks.spawn(async move {
        if let Err(e) = axum::serve(admin_listener, admin_router).await {
            tracing::error!("admin socket failed: {e}");
        }
        "admin"
    });

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ServeError::Listen { what: "signal", addr: http_addr, source })?;
    tokio::select! {
        stopped = tasks.join_next() => {
            let name = stopped.and_then(Result::ok).unwrap_or("a");
            Err(ServeError::Stopped(name))
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
        _ = terminate.recv() => {
            tracing::info!("terminated; stopping");
            Ok(())
        }
    }
}

//! The TFTP server: one socket on the well-known port takes requests, and each read request
//! becomes a task with its own socket ([`super::transfer`]).
//!
//! The server is read-only. Every file is opened with [`BootRoot::open`]; what a client is
//! told when a request is refused, and what is counted, is decided in one place:
//! [`Refusal::outcome`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::TftpConfig;
use super::log_limit::LogLimit;
use super::options::negotiate;
use super::packet::{ErrorCode, Packet, PacketError, Request};
use super::transfer::{Transfer, TransferError};
use crate::boot_root::{BootRoot, PathError, RootFile};
use crate::metrics::{ErrorKind, Metrics};

/// Log lines per second from refusals and failed transfers; the rest are only counted.
const LOG_LINES_PER_SECOND: u32 = 20;

/// A read-only TFTP server bound to its socket. [`TftpServer::run`] serves until dropped.
#[derive(Debug)]
pub struct TftpServer {
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
}

/// What every transfer task needs.
#[derive(Debug)]
struct Shared {
    root: BootRoot,
    config: TftpConfig,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    log: LogLimit,
    /// The address transfer sockets bind to: the server's own, with port 0.
    local_ip: IpAddr,
}

/// Why a request was refused. [`Refusal::outcome`] maps each to the TFTP error the client gets,
/// the counter it bumps, and how loudly it is logged.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("malformed packet")]
    Malformed(#[from] PacketError),
    #[error("write request for {0:?} on a read-only server")]
    WriteRequest(String),
    #[error("{0} packet sent to the request port")]
    Unexpected(&'static str),
    #[error("{0} transfers already running")]
    Busy(usize),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("cannot open a transfer socket: {0}")]
    Socket(io::Error),
}

/// How a refusal is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loudness {
    Debug,
    Warn,
}

impl Refusal {
    /// The one table of refusals: (error code, message to the client, counter, log level).
    fn outcome(&self) -> (ErrorCode, &'static str, Option<ErrorKind>, Loudness) {
        use ErrorCode as C;
        use ErrorKind as K;
        match self {
            Self::Malformed(_) => (C::IllegalOperation, "malformed request", Some(K::TftpMalformed), Loudness::Debug),
            Self::WriteRequest(_) => (C::AccessViolation, "read-only server", Some(K::TftpMalformed), Loudness::Debug),
            Self::Unexpected(_) => {
                (C::IllegalOperation, "no transfer on this port", Some(K::TftpMalformed), Loudness::Debug)
            }
            Self::Busy(_) => (C::NotDefined, "server busy", None, Loudness::Warn),
            Self::Path(e) if e.is_traversal() => {
                (C::AccessViolation, "access violation", Some(K::TftpTraversal), Loudness::Warn)
            }
            Self::Path(PathError::NotFound(_) | PathError::NotAFile(_) | PathError::Empty) => {
                (C::FileNotFound, "file not found", Some(K::TftpNotFound), Loudness::Debug)
            }
            Self::Path(PathError::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
                (C::AccessViolation, "access violation", None, Loudness::Warn)
            }
            Self::Path(_) => (C::NotDefined, "cannot read the file", None, Loudness::Warn),
            Self::Socket(_) => (C::NotDefined, "server error", None, Loudness::Warn),
        }
    }
}

impl Shared {
    /// True when a line at this level would be written and the rate limit allows it. The level
    /// is checked first, so lines filtered out anyway do not use up the limit.
    fn may_log(&self, loudness: Loudness) -> bool {
        let enabled = match loudness {
            Loudness::Debug => tracing::enabled!(tracing::Level::DEBUG),
            Loudness::Warn => tracing::enabled!(tracing::Level::WARN),
        };
        enabled && self.log.allow()
    }
}

impl TftpServer {
    /// Binds the request socket. `addr` with port 0 picks a free port (see [`Self::local_addr`]).
    pub async fn bind(addr: SocketAddr, root: BootRoot, config: TftpConfig, metrics: Arc<Metrics>) -> io::Result<Self> {
        config.check().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = UdpSocket::bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind the TFTP socket to {addr}: {e}", e = oasis_proto::error_chain(&e)),
            )
        })?;
        let local_ip = socket.local_addr()?.ip();
        let permits = Arc::new(Semaphore::new(config.max_transfers));
        let shared =
            Shared { root, config, metrics, permits, log: LogLimit::new("tftp", LOG_LINES_PER_SECOND), local_ip };
        Ok(Self { socket: Arc::new(socket), shared: Arc::new(shared) })
    }

    /// The address the request socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Serves requests forever, one task per transfer.
    pub async fn run(self) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    if self.shared.may_log(Loudness::Warn) {
                        tracing::warn!(error = %e, "tftp: receive failed on the request socket");
                    }
                    // Errors here are transient (ICMP echoes, memory pressure); do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let refusal = match Packet::parse(&buf[..n]) {
                Ok(Packet::Rrq(request)) => match self.shared.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = self.shared.clone();
                        let socket = self.socket.clone();
                        tokio::spawn(serve_read(shared, socket, request, peer, permit));
                        continue;
                    }
                    Err(_) => Refusal::Busy(self.shared.config.max_transfers),
                },
                Ok(Packet::Wrq(request)) => {
                    Refusal::WriteRequest(String::from_utf8_lossy(&request.filename).into_owned())
                }
                // Never answer an ERROR: two confused peers would bounce errors forever.
                Ok(Packet::Error { .. }) => continue,
                Ok(Packet::Data { .. }) => Refusal::Unexpected("DATA"),
                Ok(Packet::Ack { .. }) => Refusal::Unexpected("ACK"),
                Ok(Packet::Oack { .. }) => Refusal::Unexpected("OACK"),
                Err(e) => Refusal::Malformed(e),
            };
            refuse(&self.shared, &self.socket, peer, &refusal).await;
        }
    }
}

/// Tells the client why, counts it, and logs it within the rate limit.
async fn refuse(shared: &Shared, socket: &UdpSocket, peer: SocketAddr, refusal: &Refusal) {
    let (code, message, kind, loudness) = refusal.outcome();
    if let Some(kind) = kind {
        shared.metrics.error(kind);
    }
    if shared.may_log(loudness) {
        match loudness {
            Loudness::Warn => {
                tracing::warn!(%peer, reason = %oasis_proto::error_chain(refusal), "tftp: request refused")
            }
            Loudness::Debug => {
                tracing::debug!(%peer, reason = %oasis_proto::error_chain(refusal), "tftp: request refused")
            }
        }
    }
    let packet = Packet::Error { code, message: message.into() }.to_bytes();
    // Best effort: an unreachable client is no reason to stop serving.
    let _ = socket.send_to(&packet, peer).await;
}

/// Resolves, opens and sends one file. Holds its permit until the transfer ends.
async fn serve_read(
    shared: Arc<Shared>,
    request_socket: Arc<UdpSocket>,
    request: Request,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let name = String::from_utf8_lossy(&request.filename).into_owned();
    let root = shared.root.clone();
    let filename = request.filename;
    // Opening touches the disk, so it runs off the async workers.
    let opened = tokio::task::spawn_blocking(move || root.open(&filename)).await;
    let RootFile { file, len: size, path, .. } = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return refuse(&shared, &request_socket, peer, &Refusal::Path(e)).await,
        Err(join) => {
            tracing::error!(%peer, error = %join, "tftp: the file lookup task failed");
            return;
        }
    };
    let socket = match transfer_socket(shared.local_ip, peer).await {
        Ok(socket) => socket,
        Err(e) => return refuse(&shared, &request_socket, peer, &Refusal::Socket(e)).await,
    };
    let negotiated = negotiate(&request.options, size, &shared.config);
    if shared.may_log(Loudness::Debug) {
        tracing::debug!(%peer, file = %name, size, ?negotiated, "tftp: transfer started");
    }
    let metrics = &shared.metrics;
    Metrics::add(&metrics.tftp_transfers_started, 1);
    let transfer = Transfer {
        socket,
        peer,
        path,
        file: tokio::fs::File::from_std(file),
        negotiated,
        retries: shared.config.retries,
        metrics: metrics.clone(),
    };
    match transfer.run().await {
        Ok(bytes) => {
            Metrics::add(&metrics.tftp_transfers_completed, 1);
            if shared.may_log(Loudness::Debug) {
                tracing::debug!(%peer, file = %name, bytes, "tftp: transfer completed");
            }
        }
        Err(e @ TransferError::ClientError { .. }) => {
            Metrics::add(&metrics.tftp_transfers_failed, 1);
            // Normal for some firmware: EDK2 asks for tsize alone, reads the OACK, answers with
            // an ERROR and asks again with the options it wants.
            if shared.may_log(Loudness::Debug) {
                tracing::debug!(%peer, file = %name, reason = %oasis_proto::error_chain(&e), "tftp: client ended the transfer");
            }
        }
        Err(e) => {
            Metrics::add(&metrics.tftp_transfers_failed, 1);
            if shared.may_log(Loudness::Warn) {
                tracing::warn!(%peer, file = %name, reason = %oasis_proto::error_chain(&e), "tftp: transfer failed");
            }
        }
    }
}

/// A socket for one transfer: the server's address, an ephemeral port, connected to the client.
async fn transfer_socket(local_ip: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await?;
    socket.connect(peer).await?;
    Ok(socket)
}

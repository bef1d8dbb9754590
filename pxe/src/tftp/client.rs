//! A TFTP read client, for tests and benchmarks against oasis and other servers.
//!
//! It asks for the options in [`ClientOptions`] and runs with what the server grants. A server
//! that answers the request with DATA instead of an OACK ignores options: the transfer is then
//! plain RFC 1350, 512-byte blocks and one block per ACK.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::packet::{ack_bytes, ErrorCode, Mode, Packet, Request, DEFAULT_BLKSIZE};

/// What the client asks for. `None` leaves an option out of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub blksize: Option<u16>,
    pub windowsize: Option<u16>,
    /// The timeout option (RFC 2349), in seconds, sent to the server.
    pub timeout: Option<u8>,
    /// Ask for the file size (tsize 0).
    pub tsize: bool,
    /// The client's own wait before it resends its last packet.
    pub resend_after: Duration,
    /// Resends without progress before the client gives up.
    pub retries: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            blksize: None,
            windowsize: None,
            timeout: None,
            tsize: false,
            resend_after: Duration::from_secs(1),
            retries: 5,
        }
    }
}

/// What a finished transfer looked like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// File bytes received.
    pub bytes: u64,
    pub elapsed: Duration,
    /// True when the server answered with an OACK.
    pub oack: bool,
    /// Block size and window the transfer ran with (granted, or the RFC 1350 defaults).
    pub blksize: u16,
    pub windowsize: u16,
    /// The size the server announced, when it granted tsize.
    pub tsize: Option<u64>,
    /// The timeout the server granted.
    pub timeout: Option<u8>,
    /// Packets the client sent again (request or ACK) after a timeout or a gap.
    pub resends: u64,
    /// The server's transfer address (its TID).
    pub server_tid: SocketAddr,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the server refused with error {code}: {message:?}")]
    Server { code: ErrorCode, message: String },
    #[error("no answer from {server} after {retries} resends")]
    Timeout { server: SocketAddr, retries: u32 },
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    #[error("socket error talking to {server}")]
    Socket { server: SocketAddr, source: io::Error },
    #[error("cannot write the received data")]
    Sink(io::Error),
}

/// Fetches `name` from `server` into memory.
pub async fn fetch(server: SocketAddr, name: &[u8], options: &ClientOptions) -> Result<(Vec<u8>, Stats), ClientError> {
    let mut data = Vec::new();
    let stats = fetch_into(server, name, options, &mut data).await?;
    Ok((data, stats))
}

/// Fetches `name` from `server`, writing the data to `sink` (`tokio::io::sink()` discards it).
pub async fn fetch_into<W: AsyncWrite + Unpin>(
    server: SocketAddr,
    name: &[u8],
    options: &ClientOptions,
    sink: &mut W,
) -> Result<Stats, ClientError> {
    let started = Instant::now();
    let socket = client_socket(server).map_err(|source| ClientError::Socket { server, source })?;
    let stats = Stats {
        bytes: 0,
        elapsed: Duration::ZERO,
        oack: false,
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        tsize: None,
        timeout: None,
        resends: 0,
        server_tid: server,
    };
    let mut transfer = Transfer {
        socket,
        server,
        options,
        resend_after: options.timeout.map_or(options.resend_after, |t| Duration::from_secs(t.into())),
        stats,
        buf: vec![0u8; 65536],
        receiver: Receiver { expected: 1, since_ack: 0, gap_acked: false },
        sink,
    };
    if !transfer.first_answer(&request_bytes(name, options)).await? {
        transfer.rest().await?;
        transfer.sink.flush().await.map_err(ClientError::Sink)?;
    }
    let mut stats = transfer.stats;
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// The read request for `name` with the options asked for.
fn request_bytes(name: &[u8], options: &ClientOptions) -> Vec<u8> {
    let mut requested = Vec::new();
    if let Some(blksize) = options.blksize {
        requested.push(("blksize".to_string(), blksize.to_string()));
    }
    if let Some(windowsize) = options.windowsize {
        requested.push(("windowsize".to_string(), windowsize.to_string()));
    }
    if let Some(timeout) = options.timeout {
        requested.push(("timeout".to_string(), timeout.to_string()));
    }
    if options.tsize {
        requested.push(("tsize".to_string(), "0".to_string()));
    }
    Packet::Rrq(Request { filename: name.to_vec(), mode: Mode::Octet, options: requested }).to_bytes()
}

/// One download in progress.
struct Transfer<'a, W> {
    socket: UdpSocket,
    server: SocketAddr,
    options: &'a ClientOptions,
    resend_after: Duration,
    stats: Stats,
    buf: Vec<u8>,
    receiver: Receiver,
    sink: &'a mut W,
}

impl<W: AsyncWrite + Unpin> Transfer<'_, W> {
    fn socket_error(&self, source: io::Error) -> ClientError {
        ClientError::Socket { server: self.server, source }
    }

    /// Sends the request until the server answers; the first answer fixes the server's TID and
    /// tells whether options were granted. Returns whether the file is complete already.
    async fn first_answer(&mut self, rrq: &[u8]) -> Result<bool, ClientError> {
        let server = self.server;
        self.socket.send_to(rrq, server).await.map_err(|e| self.socket_error(e))?;
        let mut attempts = 0;
        let (first_len, tid) = loop {
            match tokio::time::timeout(self.resend_after, self.socket.recv_from(&mut self.buf)).await {
                Ok(Ok((n, from))) if from.ip() == server.ip() => break (n, from),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.socket_error(e)),
                Err(_) => {
                    attempts += 1;
                    if attempts > self.options.retries {
                        return Err(ClientError::Timeout { server, retries: self.options.retries });
                    }
                    self.stats.resends += 1;
                    self.socket.send_to(rrq, server).await.map_err(|e| self.socket_error(e))?;
                }
            }
        };
        self.stats.server_tid = tid;
        self.socket.connect(tid).await.map_err(|e| self.socket_error(e))?;
        match Packet::parse(&self.buf[..first_len]) {
            Ok(Packet::Oack { options: granted }) => {
                self.stats.oack = true;
                apply_oack(&granted, self.options, &mut self.stats)?;
                self.socket.send(&ack_bytes(0)).await.map_err(|source| ClientError::Socket { server, source })?;
                Ok(false)
            }
            Ok(Packet::Data { block, data }) => {
                if block != 1 {
                    return Err(ClientError::Protocol(format!("the first DATA block is {block}, not 1")));
                }
                let done = self.receiver.accept(&self.socket, &self.stats, data, self.sink).await?;
                self.stats.bytes += data.len() as u64;
                Ok(done)
            }
            Ok(Packet::Error { code, message }) => Err(ClientError::Server { code, message }),
            Ok(other) => Err(ClientError::Protocol(format!("unexpected answer to the request: {other:?}"))),
            Err(e) => {
                Err(ClientError::Protocol(format!("malformed answer to the request: {}", oasis_proto::error_chain(&e))))
            }
        }
    }

    /// Receives the blocks after the first answer until the last one.
    async fn rest(&mut self) -> Result<(), ClientError> {
        let server = self.server;
        let socket_error = |source| ClientError::Socket { server, source };
        let mut attempts = 0;
        loop {
            let n = match tokio::time::timeout(self.resend_after, self.socket.recv(&mut self.buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(socket_error(e)),
                Err(_) => {
                    attempts += 1;
                    if attempts > self.options.retries {
                        return Err(ClientError::Timeout { server, retries: self.options.retries });
                    }
                    // Say again where we are; the server resends from there.
                    self.stats.resends += 1;
                    self.receiver.since_ack = 0;
                    let last = (self.receiver.expected - 1) as u16;
                    self.socket.send(&ack_bytes(last)).await.map_err(socket_error)?;
                    continue;
                }
            };
            match Packet::parse(&self.buf[..n]) {
                Ok(Packet::Data { block, data }) if block == self.receiver.expected as u16 => {
                    attempts = 0;
                    if data.len() > usize::from(self.stats.blksize) {
                        return Err(ClientError::Protocol(format!(
                            "block {block} carries {} bytes, more than the block size {}",
                            data.len(),
                            self.stats.blksize
                        )));
                    }
                    let done = self.receiver.accept(&self.socket, &self.stats, data, self.sink).await?;
                    self.stats.bytes += data.len() as u64;
                    if done {
                        return Ok(());
                    }
                }
                Ok(Packet::Data { .. }) => {
                    // A gap or a repeat: tell the server once where we are, so it resends from
                    // there (RFC 7440); repeating it for every stray block would flood it.
                    if !self.receiver.gap_acked {
                        self.receiver.gap_acked = true;
                        self.receiver.since_ack = 0;
                        self.stats.resends += 1;
                        let last = (self.receiver.expected - 1) as u16;
                        self.socket.send(&ack_bytes(last)).await.map_err(socket_error)?;
                    }
                }
                Ok(Packet::Error { code, message }) => return Err(ClientError::Server { code, message }),
                // A repeated OACK (our ACK 0 was lost): acknowledge it again.
                Ok(Packet::Oack { .. }) if self.receiver.expected == 1 => {
                    self.stats.resends += 1;
                    self.socket.send(&ack_bytes(0)).await.map_err(socket_error)?;
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
}

/// The receiving state: the next block expected and the acknowledgement rhythm.
struct Receiver {
    /// Absolute number of the next block (block numbers on the wire roll over to 0).
    expected: u64,
    /// In-order blocks since the last ACK.
    since_ack: u16,
    /// An ACK for the current gap has been sent.
    gap_acked: bool,
}

impl Receiver {
    /// Takes the expected block; returns true when it was the last.
    async fn accept<W: AsyncWrite + Unpin>(
        &mut self,
        socket: &UdpSocket,
        stats: &Stats,
        data: &[u8],
        sink: &mut W,
    ) -> Result<bool, ClientError> {
        sink.write_all(data).await.map_err(ClientError::Sink)?;
        let block = self.expected as u16;
        self.expected += 1;
        self.since_ack += 1;
        self.gap_acked = false;
        let last = data.len() < usize::from(stats.blksize);
        if last || self.since_ack >= stats.windowsize {
            self.since_ack = 0;
            socket
                .send(&ack_bytes(block))
                .await
                .map_err(|source| ClientError::Socket { server: stats.server_tid, source })?;
        }
        Ok(last)
    }
}

/// Checks the OACK against what was asked (RFC 2347: a server may lower, never raise, and never
/// add an option) and records what was granted.
fn apply_oack(granted: &[(String, String)], asked: &ClientOptions, stats: &mut Stats) -> Result<(), ClientError> {
    let bad = |what: &str| ClientError::Protocol(format!("the OACK {what}"));
    for (name, value) in granted {
        let name = name.to_ascii_lowercase();
        let number: u64 = value.trim().parse().map_err(|_| bad(&format!("has a non-numeric {name} {value:?}")))?;
        match name.as_str() {
            "blksize" => match asked.blksize {
                Some(max) if (8..=u64::from(max)).contains(&number) => stats.blksize = number as u16,
                _ => return Err(bad(&format!("grants blksize {number}, which was not asked for"))),
            },
            "windowsize" => match asked.windowsize {
                Some(max) if (1..=u64::from(max)).contains(&number) => stats.windowsize = number as u16,
                _ => return Err(bad(&format!("grants windowsize {number}, which was not asked for"))),
            },
            "timeout" => match asked.timeout {
                Some(t) if u64::from(t) == number => stats.timeout = Some(t),
                _ => return Err(bad(&format!("grants timeout {number}, which was not asked for"))),
            },
            "tsize" if asked.tsize => stats.tsize = Some(number),
            _ => return Err(bad(&format!("grants an option that was not asked for: {name}"))),
        }
    }
    Ok(())
}

/// An unconnected socket of the server's family, with a receive buffer large enough for a
/// window of big blocks (the kernel may cap it at `net.core.rmem_max`).
fn client_socket(server: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let (domain, any) = match server.ip() {
        IpAddr::V4(_) => (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        IpAddr::V6(_) => (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    };
    let socket = Socket::new(domain, Type::DGRAM, None)?;
    let _ = socket.set_recv_buffer_size(8 * 1024 * 1024);
    socket.bind(&SocketAddr::new(any, 0).into())?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

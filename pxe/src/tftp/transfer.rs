//! One read transfer: an OACK if options were granted, then windows of DATA blocks (RFC 7440)
//! until the client acknowledges the final, short block.
//!
//! The transfer has its own UDP socket (its TID) on the server's address with an ephemeral port,
//! connected to the client, so the kernel drops datagrams from anyone else.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::fs::File;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::gso;
use super::options::Negotiated;
use super::packet::{write_data_header, ErrorCode, Packet};
use crate::metrics::{ErrorKind, Metrics};

/// The longest single wait between retransmissions, as a multiple of the base timeout.
const MAX_BACKOFF: u32 = 8;

/// How a transfer ended early.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("the client stopped answering; gave up after {retries} retransmissions")]
    Timeout { retries: u32 },
    #[error("the client ended the transfer with error {code}: {message:?}")]
    ClientError { code: ErrorCode, message: String },
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot talk to the client: {0}")]
    Socket(io::Error),
}

/// Everything one transfer needs; [`Transfer::run`] consumes it.
#[derive(Debug)]
pub struct Transfer {
    pub socket: UdpSocket,
    pub peer: SocketAddr,
    pub path: PathBuf,
    pub file: File,
    pub negotiated: Negotiated,
    pub retries: u32,
    pub metrics: Arc<Metrics>,
}

/// A block in flight: its absolute number (block 1 is the first), and the DATA packet.
#[derive(Debug)]
struct Block {
    number: u64,
    packet: Vec<u8>,
}

impl Transfer {
    /// Runs the transfer to its end and returns the file bytes sent.
    pub async fn run(self) -> Result<u64, TransferError> {
        let Transfer { socket, peer, path, file, negotiated, retries, metrics } = self;
        let blksize = usize::from(negotiated.blksize);
        let windowsize = usize::from(negotiated.windowsize);
        // Large reads keep the disk out of the way: one read serves many blocks.
        let capacity = (blksize * windowsize * 8).clamp(256 * 1024, 1024 * 1024);
        let segment = blksize + 4;
        // Batching only pays when several blocks fit in one send.
        let gso = segment * 2 <= gso::MAX_BYTES && windowsize > 1 && gso::enable(&socket, segment as u16).is_ok();
        let mut sender = Sender {
            socket: &socket,
            gso,
            batch: Vec::new(),
            reader: BufReader::with_capacity(capacity, file),
            path: &path,
            blksize,
            windowsize,
            window: VecDeque::with_capacity(windowsize),
            spare: Vec::new(),
            next: 1,
            read_all: false,
            bytes: 0,
        };
        let mut waiter = Waiter {
            socket: &socket,
            base: negotiated.timeout,
            retries,
            buf: vec![0; 65536],
            peer,
            attempt: 0,
            deadline: Instant::now(),
        };

        if !negotiated.oack.is_empty() {
            let oack = Packet::Oack { options: negotiated.oack.clone() }.to_bytes();
            socket.send(&oack).await.map_err(TransferError::Socket)?;
            waiter.arm();
            loop {
                match waiter.wait_ack().await? {
                    Some(0) => break,
                    // Any other ACK before the OACK is acknowledged is stale.
                    Some(_) => {}
                    None => {
                        waiter.backoff(&metrics).await?;
                        socket.send(&oack).await.map_err(TransferError::Socket)?;
                        waiter.arm();
                    }
                }
            }
            waiter.attempt = 0;
        }

        sender.fill().await?;
        sender.send_window(0, &metrics).await?;
        waiter.arm();
        loop {
            let Some(ack) = waiter.wait_ack().await? else {
                waiter.backoff(&metrics).await?;
                sender.send_window(usize::MAX, &metrics).await?;
                waiter.arm();
                continue;
            };
            if sender.acknowledge(ack).is_none() {
                // A duplicate or old ACK. Answering it would start the Sorcerer's Apprentice
                // syndrome (every block sent twice from then on); the timer covers real loss.
                continue;
            }
            waiter.attempt = 0;
            if sender.window.is_empty() && sender.read_all {
                return Ok(sender.bytes);
            }
            // Blocks already in flight past the ACK are sent again (RFC 7440: the client dropped
            // everything after the gap), followed by the new blocks.
            let already_sent = sender.window.len();
            sender.fill().await?;
            sender.send_window(already_sent, &metrics).await?;
            waiter.arm();
        }
    }
}

/// The sending half: the window of unacknowledged blocks and the file behind it.
struct Sender<'a, R> {
    socket: &'a UdpSocket,
    /// The socket segments large sends (see [`gso`]): a window goes out in one send.
    gso: bool,
    /// The packets of one segmented send, back to back.
    batch: Vec<u8>,
    reader: BufReader<R>,
    path: &'a PathBuf,
    blksize: usize,
    windowsize: usize,
    window: VecDeque<Block>,
    /// Packet buffers of acknowledged blocks, reused so the steady state does not allocate.
    spare: Vec<Vec<u8>>,
    /// Absolute number of the next block to read.
    next: u64,
    /// The final (short, maybe empty) block has been read.
    read_all: bool,
    /// File bytes sent, each block counted once.
    bytes: u64,
}

impl<R: AsyncRead + Unpin> Sender<'_, R> {
    /// Reads blocks until the window is full or the file is exhausted.
    async fn fill(&mut self) -> Result<(), TransferError> {
        while self.window.len() < self.windowsize && !self.read_all {
            let mut packet = self.spare.pop().unwrap_or_default();
            packet.resize(4 + self.blksize, 0);
            let mut filled = 0;
            while filled < self.blksize {
                let n = self
                    .reader
                    .read(&mut packet[4 + filled..])
                    .await
                    .map_err(|source| TransferError::Read { path: self.path.clone(), source })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            packet.truncate(4 + filled);
            let header: &mut [u8; 4] = (&mut packet[..4]).try_into().expect("the packet has a 4-byte header");
            // Block numbers roll over from 65535 to 0, as tftpd-hpa, iPXE and EDK2 expect.
            write_data_header(header, self.next as u16);
            self.window.push_back(Block { number: self.next, packet });
            self.next += 1;
            if filled < self.blksize {
                self.read_all = true;
            }
        }
        Ok(())
    }

    /// Sends the window; blocks from `first_new` on are sent for the first time.
    async fn send_window(&mut self, first_new: usize, metrics: &Metrics) -> Result<(), TransferError> {
        if self.gso {
            match self.send_batched().await {
                Ok(()) => {}
                // The route cannot segment (no checksum offload, an MTU below the block): from
                // now on, one send per block.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)) => {
                    self.gso = false;
                    self.send_each().await?;
                }
                Err(e) => return Err(TransferError::Socket(e)),
            }
        } else {
            self.send_each().await?;
        }
        for block in self.window.iter().skip(first_new) {
            let len = (block.packet.len() - 4) as u64;
            self.bytes += len;
            Metrics::add(&metrics.tftp_bytes_sent, len);
        }
        Ok(())
    }

    async fn send_each(&self) -> Result<(), TransferError> {
        for block in &self.window {
            self.socket.send(&block.packet).await.map_err(TransferError::Socket)?;
        }
        Ok(())
    }

    /// Sends the window in as few sends as the segmentation limits allow. Every packet but the
    /// file's last is exactly one segment long, and the last is last in the window.
    async fn send_batched(&mut self) -> io::Result<()> {
        let segment = self.blksize + 4;
        let per_send = (gso::MAX_BYTES / segment).min(gso::MAX_SEGMENTS);
        let mut blocks = self.window.iter().peekable();
        while blocks.peek().is_some() {
            self.batch.clear();
            for block in blocks.by_ref().take(per_send) {
                self.batch.extend_from_slice(&block.packet);
            }
            self.socket.send(&self.batch).await?;
        }
        Ok(())
    }

    /// Slides the window past `ack` if it names a block in the window, returning the absolute
    /// block number acknowledged.
    fn acknowledge(&mut self, ack: u16) -> Option<u64> {
        let front = self.window.front()?.number;
        let offset = usize::from(ack.wrapping_sub(front as u16));
        if offset >= self.window.len() {
            return None;
        }
        for block in self.window.drain(..=offset) {
            self.spare.push(block.packet);
        }
        Some(front + offset as u64)
    }
}

/// The receiving half: waits for ACKs with the retransmission timer.
struct Waiter<'a> {
    socket: &'a UdpSocket,
    base: Duration,
    retries: u32,
    buf: Vec<u8>,
    peer: SocketAddr,
    /// Retransmissions since the last progress.
    attempt: u32,
    /// When the current wait for an ACK runs out. Stale ACKs do not move it.
    deadline: Instant,
}

impl Waiter<'_> {
    fn current_timeout(&self) -> Duration {
        self.base * (1u32 << self.attempt.min(31)).min(MAX_BACKOFF)
    }

    /// Starts the timer for the packets just sent.
    fn arm(&mut self) {
        self.deadline = Instant::now() + self.current_timeout();
    }

    /// The next ACK's block number, or `None` when the timer ran out. Other packets from the
    /// client are ignored; an ERROR ends the transfer.
    async fn wait_ack(&mut self) -> Result<Option<u16>, TransferError> {
        loop {
            let n = match tokio::time::timeout_at(self.deadline, self.socket.recv(&mut self.buf)).await {
                Err(_elapsed) => return Ok(None),
                // The client's host answered with ICMP port unreachable: it is gone.
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(TransferError::ClientError {
                        code: ErrorCode::NotDefined,
                        message: "port unreachable".into(),
                    })
                }
                Ok(Err(e)) => return Err(TransferError::Socket(e)),
                Ok(Ok(n)) => n,
            };
            match Packet::parse(&self.buf[..n]) {
                Ok(Packet::Ack { block }) => return Ok(Some(block)),
                Ok(Packet::Error { code, message }) => return Err(TransferError::ClientError { code, message }),
                // Anything else from the client (a repeated request, stray DATA, garbage) is
                // ignored without a log line: the client could send a flood of it.
                Ok(_) | Err(_) => {}
            }
        }
    }

    /// Called after a timeout: counts a retransmission, or gives up once they have run out.
    async fn backoff(&mut self, metrics: &Metrics) -> Result<(), TransferError> {
        if self.attempt >= self.retries {
            metrics.error(ErrorKind::TftpTimeout);
            let error = Packet::Error { code: ErrorCode::NotDefined, message: "timed out waiting for ACK".into() };
            // Best effort: the client is probably gone.
            let _ = self.socket.send(&error.to_bytes()).await;
            return Err(TransferError::Timeout { retries: self.retries });
        }
        self.attempt += 1;
        tracing::debug!(peer = %self.peer, attempt = self.attempt, "tftp: retransmitting");
        Ok(())
    }
}

//! The DHCP server: sockets, and the decision for each message.
//!
//! [`DhcpService::handle`] turns one request into the replies to send (and awaits the commits
//! they depend on); [`DhcpServer`] feeds it from the sockets. Full mode hands out addresses and
//! boot information; proxy mode answers network boot clients only, with boot information only,
//! beside a site's own DHCP server.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use super::conflict::{ConflictCheck, Probe};
use super::lease::{DeclineRefused, LeaseTable, OfferError, Pool, RequestKind, RequestOutcome};
use super::ratelimit::RateLimiter;
use super::reply::{self, NetworkOptions};
use super::store::{LeaseStore, Sighting, StoreError};
use crate::metrics::{DhcpKind, ErrorKind, Metrics};
use crate::policy::{BootClient, BootPolicy};
use crate::tftp::log_limit::LogLimit;
use oasis_proto::MacAddr;

/// How often the leases-in-use gauge is recomputed.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// How many addresses a DISCOVER may try when conflict checks find them taken.
const CONFLICT_RETRIES: usize = 4;

/// Log lines per second about ignored DECLINEs and RELEASEs; the rest are only counted.
const IGNORED_LOG_LINES_PER_SECOND: u32 = 10;

/// The current time in Unix seconds. The lease table takes time as a parameter; this is where
/// the service gets it, replaceable in tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Full server or ProxyDHCP.
#[derive(Debug, Clone)]
pub enum Mode {
    Full { pool: Pool, authoritative: bool, network: NetworkOptions },
    Proxy,
}

/// Everything the DHCP server is configured with.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub mode: Mode,
    /// The interface to serve on; its broadcasts are the only ones answered.
    pub interface: String,
    /// The appliance's address on that interface: server identifier, TFTP and HTTP server.
    pub server: Ipv4Addr,
    pub server_port: u16,
    pub client_port: u16,
    /// The PXE boot server port that ProxyDHCP clients ask on.
    pub proxy_port: u16,
    pub policy: BootPolicy,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// dnsmasq's `--dhcp-reply-delay`: wait before OFFERs and ProxyDHCP replies, for firmware
    /// that misses replies arriving too soon.
    pub reply_delay: Duration,
    /// Answer PXE firmware that leaves out option 97 (its UUID). Some Intel ROMs do; the PXE
    /// specification requires it.
    pub tolerate_missing_uuid: bool,
}

/// Where a request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The DHCP server port (67).
    Dhcp,
    /// The PXE boot server port (4011).
    Proxy,
}

/// A reply and where it goes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub message: Message,
    pub to: SocketAddrV4,
    pub port: Port,
    /// Hold the reply this long first (the reply-delay quirk).
    pub delay: Duration,
}

/// A failure to start the DHCP server.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("cannot load leases from the store")]
    LoadLeases(#[source] StoreError),
    #[error("cannot listen for DHCP on {interface} port {port}")]
    Bind { interface: String, port: u16, source: std::io::Error },
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn message_kind(msg: &Message) -> DhcpKind {
    match msg.opts().msg_type() {
        Some(MessageType::Discover) => DhcpKind::Discover,
        Some(MessageType::Offer) => DhcpKind::Offer,
        Some(MessageType::Request) => DhcpKind::Request,
        Some(MessageType::Decline) => DhcpKind::Decline,
        Some(MessageType::Ack) => DhcpKind::Ack,
        Some(MessageType::Nak) => DhcpKind::Nak,
        Some(MessageType::Release) => DhcpKind::Release,
        Some(MessageType::Inform) => DhcpKind::Inform,
        _ => DhcpKind::Other,
    }
}

fn requested_ip(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(msg: &Message) -> Option<Ipv4Addr> {
    match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// Parses a datagram. Options of a length dhcproto asserts on (a `debug_assert!`, so a panic in
/// debug builds) are refused first; anything else that panics in the parser is still caught and
/// counted as malformed, since a parser facing the network is the last place a panic may take
/// the server down.
pub fn decode(datagram: &[u8]) -> Option<Message> {
    if !option_lengths_fit(datagram) {
        return None;
    }
    std::panic::catch_unwind(|| Message::from_bytes(datagram).ok()).ok().flatten()
}

/// Where the options start: after the fixed BOOTP header and the magic cookie.
const OPTIONS_START: usize = 240;

/// True unless an option in the datagram has a length dhcproto 0.15 asserts on: rapid commit
/// (80) not empty, client FQDN (81) under 3 bytes, client network interface (94) not 3 bytes,
/// the bulk leasequery times (152 to 155) not 4 bytes. dhcproto joins consecutive instances of an
/// option (RFC 3396) before decoding, so the length checked is that of each run.
fn option_lengths_fit(datagram: &[u8]) -> bool {
    let fits = |code: u8, len: usize| match code {
        80 => len == 0,
        81 => len >= 3,
        94 => len == 3,
        152..=155 => len == 4,
        _ => true,
    };
    let mut run: Option<(u8, usize)> = None;
    let mut at = OPTIONS_START;
    while let Some(&code) = datagram.get(at) {
        if code == 0 || code == 255 {
            // Pad ends a run; End ends the options.
            if let Some((prev, len)) = run.take() {
                if !fits(prev, len) {
                    return false;
                }
            }
            if code == 255 {
                break;
            }
            at += 1;
            continue;
        }
        let Some(&len) = datagram.get(at + 1) else { break };
        let len = usize::from(len);
        if at + 2 + len > datagram.len() {
            // dhcproto stops at an option that runs past the end.
            break;
        }
        run = match run {
            Some((prev, total)) if prev == code => Some((prev, total + len)),
            Some((prev, total)) if !fits(prev, total) => return false,
            _ => Some((code, len)),
        };
        at += 2 + len;
    }
    run.is_none_or(|(code, len)| fits(code, len))
}

/// The decision logic of the DHCP server, independent of sockets.
pub struct DhcpService {
    config: DhcpConfig,
    table: Option<Mutex<LeaseTable>>,
    store: Arc<dyn LeaseStore>,
    check: Arc<dyn ConflictCheck>,
    limiter: Mutex<RateLimiter>,
    metrics: Arc<Metrics>,
    clock: Clock,
    ignored_log: LogLimit,
}

impl std::fmt::Debug for DhcpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhcpService").field("config", &self.config).finish_non_exhaustive()
    }
}

impl DhcpService {
    /// Restores the lease table from `store`.
    pub fn new(
        config: DhcpConfig,
        store: Arc<dyn LeaseStore>,
        check: Arc<dyn ConflictCheck>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DhcpError> {
        let table = match &config.mode {
            Mode::Full { pool, authoritative, .. } => {
                let leases = store.load_leases().map_err(DhcpError::LoadLeases)?;
                Some(Mutex::new(LeaseTable::new(pool.clone(), config.server, *authoritative, leases)))
            }
            Mode::Proxy => None,
        };
        let limiter = Mutex::new(RateLimiter::new(config.rate_per_sec, config.rate_burst));
        let clock: Clock = Arc::new(unix_now);
        let ignored_log = LogLimit::new("dhcp", IGNORED_LOG_LINES_PER_SECOND);
        let service = Self { config, table, store, check, limiter, metrics, clock, ignored_log };
        service.refresh_gauges();
        Ok(service)
    }

    /// Replaces the system clock (Unix seconds), for tests of what depends on time passing.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self.refresh_gauges();
        self
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn table(&self) -> Option<std::sync::MutexGuard<'_, LeaseTable>> {
        self.table.as_ref().map(|t| t.lock().expect("lease table lock"))
    }

    /// Recomputes the leases-in-use gauge. Counting walks the whole table, so the server does it
    /// on a timer (`GAUGE_PERIOD`) rather than per message: per message it took a third of the
    /// CPU at a few thousand exchanges per second.
    pub fn refresh_gauges(&self) {
        if let Some(table) = self.table() {
            self.metrics.leases_in_use.store(table.in_use(self.now()) as i64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Handles one datagram from `from`, arrived on `port`. Returns the replies to send; any
    /// store write a reply depends on has been committed by the time this returns.
    pub async fn handle(&self, datagram: &[u8], from: SocketAddrV4, port: Port) -> Vec<Outgoing> {
        let Some(msg) = decode(datagram) else {
            self.metrics.error(ErrorKind::DhcpMalformed);
            return vec![];
        };
        if msg.opcode() != dhcproto::v4::Opcode::BootRequest {
            return vec![];
        }
        if msg.opts().msg_type().is_none() {
            // Plain BOOTP, or options too broken to carry a message type: not served.
            self.metrics.error(ErrorKind::DhcpMalformed);
            return vec![];
        }
        let kind = message_kind(&msg);
        self.metrics.dhcp_received(kind);
        let Some(mac) = crate::mac::of_dhcp_client(&msg) else {
            // Not a 6-byte Ethernet address; an `hlen` over 16 lands here too.
            self.metrics.error(ErrorKind::DhcpMalformed);
            return vec![];
        };
        if !self.limiter.lock().expect("limiter lock").allow(mac, Instant::now()) {
            self.metrics.error(ErrorKind::DhcpRateLimited);
            return vec![];
        }
        let boot = BootClient::from_message(&msg).filter(|client| self.boot_allowed(client));
        if let Some(client) = &boot {
            let vendor_class = match msg.opts().get(OptionCode::ClassIdentifier) {
                Some(DhcpOption::ClassIdentifier(v)) => Some(String::from_utf8_lossy(v).into_owned()),
                _ => None,
            };
            let ip = Some(msg.ciaddr()).filter(|ip| !ip.is_unspecified());
            self.store.record_sighting(Sighting { mac, arch: client.arch, vendor_class, ip });
        }
        let replies = match (&self.config.mode, port) {
            (_, Port::Proxy) => self.boot_server_reply(&msg, from, boot.as_ref()),
            (Mode::Proxy, Port::Dhcp) => self.proxy_offer(&msg, kind, boot.as_ref()),
            (Mode::Full { .. }, Port::Dhcp) => self.full(&msg, from, kind, mac, boot.as_ref()).await,
        };
        for reply in &replies {
            self.metrics.dhcp_sent(message_kind(&reply.message));
        }
        replies
    }

    fn boot_allowed(&self, client: &BootClient) -> bool {
        if client.uuid.is_none() && client.kind != crate::policy::ClientKind::Ipxe && !self.config.tolerate_missing_uuid
        {
            tracing::debug!(mac = %client.mac, "PXE client sent no option 97 and tolerate_missing_uuid is off");
            return false;
        }
        true
    }

    /// Adds boot information for `client` to `reply`, if the policy has a file for it.
    fn add_boot(&self, reply: &mut Message, client: &BootClient, proxy: bool) -> bool {
        match self.config.policy.boot_file(client) {
            Ok(file) => {
                reply::add_boot(reply, self.config.server, client, &file, proxy);
                true
            }
            Err(why) => {
                tracing::info!(mac = %client.mac, "{why}");
                false
            }
        }
    }

    fn broadcast(&self) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, self.config.client_port)
    }

    /// Where a full-mode reply goes (RFC 2131 section 4.1): to the relay, to the client's
    /// address when it has one, otherwise broadcast.
    fn destination(&self, req: &Message, kind: MessageType) -> SocketAddrV4 {
        if !req.giaddr().is_unspecified() {
            SocketAddrV4::new(req.giaddr(), self.config.server_port)
        } else if kind != MessageType::Nak && !req.ciaddr().is_unspecified() {
            SocketAddrV4::new(req.ciaddr(), self.config.client_port)
        } else {
            self.broadcast()
        }
    }

    fn outgoing(&self, req: &Message, message: Message, delay: bool) -> Outgoing {
        let kind = message.opts().msg_type().unwrap_or(MessageType::Ack);
        let delay = if delay { self.config.reply_delay } else { Duration::ZERO };
        Outgoing { to: self.destination(req, kind), message, port: Port::Dhcp, delay }
    }

    /// ProxyDHCP on port 67: an OFFER with boot information and no address, to boot clients only.
    fn proxy_offer(&self, msg: &Message, kind: DhcpKind, boot: Option<&BootClient>) -> Vec<Outgoing> {
        let Some(client) = boot else { return vec![] };
        if kind != DhcpKind::Discover {
            return vec![];
        }
        let mut offer = reply::base(msg, client.mac, MessageType::Offer, self.config.server);
        if !self.add_boot(&mut offer, client, true) {
            return vec![];
        }
        vec![self.outgoing(msg, offer, true)]
    }

    /// The PXE boot server on port 4011: a client that already has an address asks for its boot
    /// file with a REQUEST (or INFORM); the ACK goes straight back to where it came from.
    fn boot_server_reply(&self, msg: &Message, from: SocketAddrV4, boot: Option<&BootClient>) -> Vec<Outgoing> {
        let Some(client) = boot else { return vec![] };
        if !matches!(msg.opts().msg_type(), Some(MessageType::Request | MessageType::Inform)) {
            return vec![];
        }
        let mut ack = reply::base(msg, client.mac, MessageType::Ack, self.config.server);
        ack.set_ciaddr(msg.ciaddr());
        if !self.add_boot(&mut ack, client, true) {
            return vec![];
        }
        vec![Outgoing { message: ack, to: from, port: Port::Proxy, delay: self.config.reply_delay }]
    }

    async fn full(
        &self,
        msg: &Message,
        from: SocketAddrV4,
        kind: DhcpKind,
        mac: MacAddr,
        boot: Option<&BootClient>,
    ) -> Vec<Outgoing> {
        let Mode::Full { pool, network, .. } = &self.config.mode else { return vec![] };
        let relayed = !msg.giaddr().is_unspecified();
        if relayed && !pool.on_subnet(msg.giaddr()) {
            tracing::debug!(giaddr = %msg.giaddr(), "relayed request for a subnet without a pool");
            return vec![];
        }
        let now = self.now();
        match kind {
            DhcpKind::Discover => {
                let Some(ip) = self.choose_free(mac, requested_ip(msg), now).await else { return vec![] };
                let mut offer = reply::base(msg, mac, MessageType::Offer, self.config.server);
                reply::add_lease(&mut offer, ip, pool.lease_secs, pool.netmask, network);
                if let Some(client) = boot {
                    self.add_boot(&mut offer, client, false);
                }
                vec![self.outgoing(msg, offer, true)]
            }
            DhcpKind::Request => {
                let request = match (server_id(msg), requested_ip(msg), msg.ciaddr()) {
                    (Some(server_id), requested, ciaddr) => {
                        let Some(requested) = requested.or(Some(ciaddr).filter(|c| !c.is_unspecified())) else {
                            return vec![];
                        };
                        RequestKind::Selecting { server_id, requested }
                    }
                    (None, _, ciaddr) if !ciaddr.is_unspecified() => RequestKind::Renewing { ciaddr },
                    (None, Some(requested), _) => RequestKind::InitReboot { requested },
                    (None, None, _) => return vec![],
                };
                let Some(outcome) = self.table().map(|mut table| table.request(mac, request, now)) else {
                    return vec![];
                };
                match outcome {
                    RequestOutcome::Ack(lease) => {
                        let ip = lease.ip;
                        if let Err(e) = self.store.save_lease(lease).await {
                            self.metrics.error(ErrorKind::StoreWrite);
                            tracing::error!(%mac, %ip, "lease not committed, ACK withheld: {}", oasis_proto::error_chain(&*e));
                            return vec![];
                        }
                        let mut ack = reply::base(msg, mac, MessageType::Ack, self.config.server);
                        ack.set_ciaddr(msg.ciaddr());
                        reply::add_lease(&mut ack, ip, pool.lease_secs, pool.netmask, network);
                        if let Some(client) = boot {
                            self.add_boot(&mut ack, client, false);
                        }
                        vec![self.outgoing(msg, ack, false)]
                    }
                    RequestOutcome::Nak(why) => {
                        tracing::debug!(%mac, "NAK: {why}");
                        let nak = reply::nak(msg, mac, self.config.server, why);
                        vec![self.outgoing(msg, nak, false)]
                    }
                    RequestOutcome::Silent => vec![],
                }
            }
            DhcpKind::Release => {
                if server_id(msg).is_some_and(|id| id != self.config.server) {
                    return vec![];
                }
                self.release(msg, from, mac, now).await;
                vec![]
            }
            DhcpKind::Decline => {
                if server_id(msg).is_some_and(|id| id != self.config.server) {
                    return vec![];
                }
                self.decline(msg, mac).await;
                vec![]
            }
            DhcpKind::Inform => {
                let mut ack = reply::base(msg, mac, MessageType::Ack, self.config.server);
                ack.set_ciaddr(msg.ciaddr());
                reply::add_network(&mut ack, pool.netmask, network);
                if let Some(client) = boot {
                    self.add_boot(&mut ack, client, false);
                }
                vec![self.outgoing(msg, ack, false)]
            }
            _ => vec![],
        }
    }

    /// A DHCPRELEASE. A client unicasts it from the address it gives back (RFC 2131 section
    /// 4.4.6), so it is honoured only from that address, or from a relay agent (the datagram's
    /// source is its `giaddr`), and only for the sender's own bound lease.
    async fn release(&self, msg: &Message, from: SocketAddrV4, mac: MacAddr, now: u64) {
        let ip = msg.ciaddr();
        let source = *from.ip();
        let relayed = !msg.giaddr().is_unspecified();
        if source != ip && !(relayed && source == msg.giaddr()) {
            return self.ignored(
                ErrorKind::DhcpReleaseIgnored,
                mac,
                ip,
                &format!("it came from {source}, neither the address itself nor the relay it names"),
            );
        }
        match self.table().map(|mut t| t.release(mac, ip, now)) {
            None => {}
            Some(Some(lease)) => self.commit_quietly(lease).await,
            Some(None) => {
                self.ignored(ErrorKind::DhcpReleaseIgnored, mac, ip, "the sender holds no bound lease of it");
            }
        }
    }

    /// A DHCPDECLINE: the client found its new address in use. Honoured only from the client
    /// that holds the address (or has an offer of it) right after its ACK
    /// ([`LeaseTable::may_decline`]); and then, where the conflict check can tell who answers
    /// (ARP), not when the address answers from the declining client's own hardware address: a
    /// client that declined does not use the address, so that DECLINE is someone else's forgery.
    async fn decline(&self, msg: &Message, mac: MacAddr) {
        let Some(ip) = requested_ip(msg) else {
            return self.ignored(ErrorKind::DhcpDeclineIgnored, mac, Ipv4Addr::UNSPECIFIED, "it names no address");
        };
        let now = self.now();
        match self.table().map(|t| t.may_decline(mac, ip, now)) {
            None => return,
            Some(Err(why)) => return self.declined_ignored(mac, ip, why),
            Some(Ok(())) => {}
        }
        if let Probe::InUse { by: Some(by) } = self.check.probe(ip).await {
            if by == mac {
                return self.ignored(
                    ErrorKind::DhcpDeclineIgnored,
                    mac,
                    ip,
                    "the address answers from the sender's own hardware address, so the sender uses it",
                );
            }
        }
        // Decided again: the table may have changed while the probe ran.
        match self.table().map(|mut t| t.decline(mac, ip, self.now())) {
            None => {}
            Some(Err(why)) => self.declined_ignored(mac, ip, why),
            Some(Ok(lease)) => {
                tracing::warn!(
                    %mac, %ip,
                    "client declined its address: something else on the network uses it; kept out of use for the \
                     probation period"
                );
                self.commit_quietly(lease).await;
            }
        }
    }

    fn declined_ignored(&self, mac: MacAddr, ip: Ipv4Addr, why: DeclineRefused) {
        self.ignored(ErrorKind::DhcpDeclineIgnored, mac, ip, &why.to_string());
    }

    /// Counts an ignored DECLINE or RELEASE and logs it at debug level within the rate limit:
    /// anyone on the network can send these.
    fn ignored(&self, kind: ErrorKind, mac: MacAddr, ip: Ipv4Addr, why: &str) {
        self.metrics.error(kind);
        if tracing::enabled!(tracing::Level::DEBUG) && self.ignored_log.allow() {
            let what = if kind == ErrorKind::DhcpReleaseIgnored { "RELEASE" } else { "DECLINE" };
            tracing::debug!(%mac, %ip, "{what} ignored: {why}");
        }
    }

    /// Picks an address for a DISCOVER and holds it as offered, checking addresses new to the
    /// client for conflicts first.
    async fn choose_free(&self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        for _ in 0..CONFLICT_RETRIES {
            let chosen = {
                let mut table = self.table()?;
                table.expire_offers(now);
                let chosen = table.choose(mac, requested, now);
                if let Ok((ip, _)) = chosen {
                    // Hold it while the check runs, so concurrent DISCOVERs pick other addresses.
                    table.offer(mac, ip, now);
                }
                chosen
            };
            let (ip, new_to_client) = match chosen {
                Ok(choice) => choice,
                Err(OfferError::PoolExhausted) => {
                    self.metrics.error(ErrorKind::DhcpPoolExhausted);
                    tracing::warn!(%mac, "no free address to offer: the pool is exhausted");
                    return None;
                }
            };
            if !new_to_client || !self.check.probe(ip).await.in_use() {
                return Some(ip);
            }
            self.metrics.error(ErrorKind::DhcpConflict);
            tracing::warn!(%ip, "address answered the conflict check; kept out of use for the probation period");
            let quarantined = self.table().map(|mut t| t.quarantine(mac, ip, now));
            if let Some(lease) = quarantined {
                self.commit_quietly(lease).await;
            }
        }
        None
    }

    /// Commits a record no reply depends on; a failure is counted and logged.
    async fn commit_quietly(&self, lease: super::lease::Lease) {
        let ip = lease.ip;
        if let Err(e) = self.store.save_lease(lease).await {
            self.metrics.error(ErrorKind::StoreWrite);
            tracing::error!(%ip, "lease change not committed: {}", oasis_proto::error_chain(&*e));
        }
    }
}

/// The DHCP server on its sockets.
#[derive(Debug)]
pub struct DhcpServer {
    service: Arc<DhcpService>,
    dhcp: Arc<UdpSocket>,
    proxy: Arc<UdpSocket>,
}

/// A UDP socket on `port` that receives broadcasts on `interface` only.
fn interface_socket(interface: &str, addr: SocketAddrV4) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.bind_device(Some(interface.as_bytes()))?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::V4(addr).into())?;
    UdpSocket::from_std(socket.into())
}

impl DhcpServer {
    /// Binds the DHCP port (all addresses, on the interface) and the PXE boot server port (the
    /// server address).
    pub fn bind(service: DhcpService) -> Result<Self, DhcpError> {
        let c = &service.config;
        let bind = |addr: SocketAddrV4| {
            interface_socket(&c.interface, addr).map_err(|source| DhcpError::Bind {
                interface: c.interface.clone(),
                port: addr.port(),
                source,
            })
        };
        let dhcp = bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, c.server_port))?;
        let proxy = bind(SocketAddrV4::new(c.server, c.proxy_port))?;
        Ok(Self { service: Arc::new(service), dhcp: Arc::new(dhcp), proxy: Arc::new(proxy) })
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        let proxy = tokio::spawn(Self::serve(self.service.clone(), self.proxy.clone(), self.dhcp.clone(), Port::Proxy));
        let service = self.service.clone();
        let gauges = tokio::spawn(async move {
            let mut tick = tokio::time::interval(GAUGE_PERIOD);
            loop {
                tick.tick().await;
                service.refresh_gauges();
            }
        });
        Self::serve(self.service, self.dhcp, self.proxy, Port::Dhcp).await;
        proxy.abort();
        gauges.abort();
    }

    async fn serve(service: Arc<DhcpService>, socket: Arc<UdpSocket>, other: Arc<UdpSocket>, port: Port) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    tracing::warn!("DHCP receive failed: {e}", e = oasis_proto::error_chain(&e));
                    continue;
                }
            };
            let SocketAddr::V4(from) = from else { continue };
            let datagram = buf[..n].to_vec();
            let (service, sockets) = (service.clone(), (socket.clone(), other.clone()));
            // Each message gets its own task: replies wait on conflict checks and commits, and
            // one slow client must not hold up the rest.
            tokio::spawn(async move {
                for out in service.handle(&datagram, from, port).await {
                    if !out.delay.is_zero() {
                        tokio::time::sleep(out.delay).await;
                    }
                    let socket = if out.port == port { &sockets.0 } else { &sockets.1 };
                    match out.message.to_vec() {
                        Ok(bytes) => {
                            if let Err(e) = socket.send_to(&bytes, out.to).await {
                                tracing::warn!(to = %out.to, "DHCP reply not sent: {e}", e = oasis_proto::error_chain(&e));
                            }
                        }
                        Err(e) => {
                            tracing::error!("DHCP reply could not be encoded: {e}", e = oasis_proto::error_chain(&e))
                        }
                    }
                }
            });
        }
    }
}

//! The lease table: which address belongs to which machine, as a state machine over DHCP
//! messages. Pure logic: no sockets, no clock (callers pass `now` in Unix seconds), no disk.
//! What must be persisted comes back from each call as a [`Lease`] for the caller to commit
//! before it answers.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use oasis_proto::MacAddr;

/// How long an OFFER holds its address for the client that was offered it.
pub const OFFER_HOLD_SECS: u64 = 60;

/// How long after the ACK that bound an address its holder may still decline it. A client
/// checks an address right after the ACK of a SELECTING or INIT-REBOOT request and declines at
/// once if something else answers for it (RFC 2131 sections 3.1 step 5 and 4.4.1); it does not
/// check again on renewal. A DECLINE from the holder later than this is someone else using the
/// holder's hardware address, and is ignored.
pub const DECLINE_WINDOW_SECS: u64 = 30;

/// A persisted lease record. There is at most one per address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    pub state: LeaseState,
    /// Unix seconds when the lease (or a decline's probation) ends.
    pub expires: u64,
    /// Unix seconds of the last change.
    pub updated: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// Acknowledged to the client; in use until `expires`.
    Bound,
    /// Given back by the client. The address stays associated with it, so it gets the same one
    /// next time unless the pool runs short.
    Released,
    /// Reported in use by someone else (DHCPDECLINE, or a conflict check answered). Not offered
    /// to anyone until `expires`.
    Declined,
}

impl Lease {
    /// True when the address is held against other clients at `now`.
    pub fn holds(&self, now: u64) -> bool {
        match self.state {
            LeaseState::Bound | LeaseState::Declined => self.expires > now,
            LeaseState::Released => false,
        }
    }
}

/// The address range and fixed assignments of one subnet.
#[derive(Debug, Clone)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub reservations: HashMap<MacAddr, Ipv4Addr>,
    pub lease_secs: u32,
    /// How long a declined or conflicting address is kept out of use.
    pub probation_secs: u32,
}

impl Pool {
    fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.start)..=u32::from(self.end)).contains(&u32::from(ip))
    }

    /// True for an address this server may hand out: in the range or reserved.
    pub fn serves(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) || self.reservations.values().any(|r| *r == ip)
    }

    /// True for an address on the subnet this server answers for.
    pub fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask);
        u32::from(ip) & mask == u32::from(self.start) & mask
    }
}

/// How a DHCPREQUEST is meant, from the fields the client set (RFC 2131 section 4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Answering an OFFER: server identifier present.
    Selecting { server_id: Ipv4Addr, requested: Ipv4Addr },
    /// Rebooted with a remembered address: option 50, no server identifier, no ciaddr.
    InitReboot { requested: Ipv4Addr },
    /// Extending a lease it holds: ciaddr set.
    Renewing { ciaddr: Ipv4Addr },
}

/// The answer to a DHCPREQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Acknowledge this lease once it is committed.
    Ack(Lease),
    /// Refuse: the client must start over.
    Nak(&'static str),
    /// Say nothing: the request is for another server, or about a lease we know nothing of.
    Silent,
}

/// Why a DHCPDECLINE was not honoured (RFC 2131 section 4.3.3: the address must be one the
/// sender holds or was offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeclineRefused {
    #[error("the address is not one this server hands out")]
    NotOurs,
    #[error("the sender neither holds the address nor has an offer of it")]
    NotHeld,
    #[error(
        "the sender's ACK for the address is more than {DECLINE_WINDOW_SECS} s old (or was lost in a restart); \
         clients decline only right after it"
    )]
    Stale,
}

/// Why no address could be offered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("the address pool is exhausted")]
    PoolExhausted,
}

#[derive(Debug, Clone, Copy)]
struct Offer {
    ip: Ipv4Addr,
    until: u64,
}

/// The lease state of one pool.
#[derive(Debug)]
pub struct LeaseTable {
    pool: Pool,
    server_id: Ipv4Addr,
    authoritative: bool,
    by_ip: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    offers: HashMap<MacAddr, Offer>,
    offered_ips: HashMap<Ipv4Addr, MacAddr>,
    /// When each address was last bound to its holder by a SELECTING or INIT-REBOOT request
    /// (not a renewal): the ACKs a client may answer with a DECLINE. In memory only; at most
    /// one entry per address the pool serves.
    bound_at: HashMap<Ipv4Addr, (MacAddr, u64)>,
    /// Where the search for a never-used address resumes, as an offset into the range.
    cursor: u32,
    /// The second of the last sweep of expired offers (they expire on whole seconds).
    swept_at: u64,
}

impl LeaseTable {
    /// A table over `pool`, restored from persisted leases. `authoritative` makes the server
    /// NAK requests for addresses it has no record of on its own subnet (right on a rack network
    /// it owns), instead of staying silent.
    pub fn new(pool: Pool, server_id: Ipv4Addr, authoritative: bool, restored: Vec<Lease>) -> Self {
        let mut table = Self {
            pool,
            server_id,
            authoritative,
            by_ip: HashMap::new(),
            by_mac: HashMap::new(),
            offers: HashMap::new(),
            offered_ips: HashMap::new(),
            bound_at: HashMap::new(),
            cursor: 0,
            swept_at: 0,
        };
        for lease in restored {
            table.put(lease);
        }
        table
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Leases bound and unexpired at `now`.
    pub fn in_use(&self, now: u64) -> usize {
        self.by_ip.values().filter(|l| l.state == LeaseState::Bound && l.expires > now).count()
    }

    /// The address this client holds or last held, if any.
    pub fn lease_of(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac).and_then(|ip| self.by_ip.get(ip))
    }

    fn put(&mut self, lease: Lease) {
        if lease.state != LeaseState::Declined {
            if let Some(old_ip) = self.by_mac.insert(lease.mac, lease.ip) {
                if old_ip != lease.ip
                    && self.by_ip.get(&old_ip).is_some_and(|l| l.mac == lease.mac && l.state != LeaseState::Declined)
                {
                    self.by_ip.remove(&old_ip);
                }
            }
        } else if self.by_mac.get(&lease.mac) == Some(&lease.ip) {
            self.by_mac.remove(&lease.mac);
        }
        if let Some(previous) = self.by_ip.insert(lease.ip, lease.clone()) {
            if previous.mac != lease.mac && self.by_mac.get(&previous.mac) == Some(&lease.ip) {
                self.by_mac.remove(&previous.mac);
            }
        }
    }

    /// True when `ip` may be given to `mac` at `now`.
    fn available_to(&self, ip: Ipv4Addr, mac: MacAddr, now: u64) -> bool {
        if self.pool.reservations.iter().any(|(owner, reserved)| *reserved == ip && *owner != mac) {
            return false;
        }
        if self
            .offered_ips
            .get(&ip)
            .is_some_and(|owner| *owner != mac && self.offers.get(owner).is_some_and(|o| o.until > now))
        {
            return false;
        }
        match self.by_ip.get(&ip) {
            None => true,
            Some(lease) if lease.mac == mac => lease.state != LeaseState::Declined || lease.expires <= now,
            Some(lease) => !lease.holds(now),
        }
    }

    /// Chooses the address to offer `mac`, in order: its reservation, the address it holds or
    /// held, the address it asked for, a never-used address, then the longest-expired one.
    /// Returns the address and whether it is new to this client (so worth a conflict check).
    pub fn choose(
        &mut self,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<(Ipv4Addr, bool), OfferError> {
        if let Some(&ip) = self.pool.reservations.get(&mac) {
            let known = self.by_ip.get(&ip).is_some_and(|l| l.mac == mac);
            return Ok((ip, !known));
        }
        if let Some(offer) = self.offers.get(&mac).filter(|o| o.until > now) {
            return Ok((offer.ip, false));
        }
        if let Some(&ip) = self.by_mac.get(&mac) {
            if self.pool.contains(ip) && self.available_to(ip, mac, now) {
                return Ok((ip, false));
            }
        }
        if let Some(ip) = requested.filter(|ip| self.pool.contains(*ip) && self.available_to(*ip, mac, now)) {
            return Ok((ip, true));
        }
        let start = u32::from(self.pool.start);
        let size = u32::from(self.pool.end) - start + 1;
        // First pass: addresses nobody has ever held. Second: anything free, oldest first.
        for i in 0..size {
            let offset = (self.cursor + i) % size;
            let ip = Ipv4Addr::from(start + offset);
            if !self.by_ip.contains_key(&ip) && self.available_to(ip, mac, now) {
                self.cursor = (offset + 1) % size;
                return Ok((ip, true));
            }
        }
        let oldest = self
            .by_ip
            .values()
            .filter(|l| self.pool.contains(l.ip) && self.available_to(l.ip, mac, now))
            .min_by_key(|l| l.updated)
            .map(|l| l.ip);
        oldest.map(|ip| (ip, true)).ok_or(OfferError::PoolExhausted)
    }

    /// Holds `ip` for `mac` for [`OFFER_HOLD_SECS`]. Offers are not persisted: an offer lost in
    /// a restart costs the client one more DISCOVER.
    pub fn offer(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) {
        if let Some(old) = self.offers.insert(mac, Offer { ip, until: now + OFFER_HOLD_SECS }) {
            self.offered_ips.remove(&old.ip);
        }
        self.offered_ips.insert(ip, mac);
    }

    /// Drops offers that ran out, so their addresses can go to others and memory stays bounded
    /// under a DISCOVER flood. Sweeps at most once per second: offers expire on whole seconds,
    /// and every lookup already ignores an offer past its time.
    pub fn expire_offers(&mut self, now: u64) {
        if self.swept_at == now {
            return;
        }
        self.swept_at = now;
        let offered_ips = &mut self.offered_ips;
        self.offers.retain(|_, o| {
            let keep = o.until > now;
            if !keep {
                offered_ips.remove(&o.ip);
            }
            keep
        });
    }

    /// Binds `ip` to `mac`. `probed` marks a binding the client checks before using (SELECTING,
    /// INIT-REBOOT): one it may decline for [`DECLINE_WINDOW_SECS`].
    fn bind(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64, probed: bool) -> Lease {
        if let Some(offer) = self.offers.remove(&mac) {
            self.offered_ips.remove(&offer.ip);
        }
        if probed {
            self.bound_at.insert(ip, (mac, now));
        }
        let lease =
            Lease { ip, mac, state: LeaseState::Bound, expires: now + u64::from(self.pool.lease_secs), updated: now };
        self.put(lease.clone());
        lease
    }

    /// Decides a DHCPREQUEST. An `Ack` has already been applied in memory; the caller commits
    /// it and only then sends the ACK.
    pub fn request(&mut self, mac: MacAddr, kind: RequestKind, now: u64) -> RequestOutcome {
        match kind {
            RequestKind::Selecting { server_id, requested } => {
                if server_id != self.server_id {
                    // The client took another server's offer: free ours.
                    if let Some(offer) = self.offers.remove(&mac) {
                        self.offered_ips.remove(&offer.ip);
                    }
                    return RequestOutcome::Silent;
                }
                if self.serves(requested) && self.available_to(requested, mac, now) && self.allowed(mac, requested) {
                    RequestOutcome::Ack(self.bind(mac, requested, now, true))
                } else {
                    RequestOutcome::Nak("requested address is not available")
                }
            }
            RequestKind::InitReboot { requested } | RequestKind::Renewing { ciaddr: requested } => {
                let ours = self.by_ip.get(&requested).is_some_and(|l| l.mac == mac && l.state != LeaseState::Declined);
                if ours && self.allowed(mac, requested) && self.available_to(requested, mac, now) {
                    let probed = matches!(kind, RequestKind::InitReboot { .. });
                    return RequestOutcome::Ack(self.bind(mac, requested, now, probed));
                }
                if !self.pool.on_subnet(requested) {
                    return RequestOutcome::Nak("address is not on this network");
                }
                if ours || self.authoritative {
                    RequestOutcome::Nak("address is not leased to this client")
                } else {
                    RequestOutcome::Silent
                }
            }
        }
    }

    fn serves(&self, ip: Ipv4Addr) -> bool {
        self.pool.serves(ip)
    }

    /// A machine with a reservation gets only its reserved address.
    fn allowed(&self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        self.pool.reservations.get(&mac).is_none_or(|reserved| *reserved == ip)
    }

    /// A DHCPRELEASE: the record to commit, if the client held `ip`.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Option<Lease> {
        let lease = self.by_ip.get(&ip).filter(|l| l.mac == mac && l.state == LeaseState::Bound)?;
        let released = Lease { state: LeaseState::Released, expires: now, updated: now, ..lease.clone() };
        self.bound_at.remove(&ip);
        self.put(released.clone());
        Some(released)
    }

    /// Whether a DHCPDECLINE of `ip` from `mac` at `now` may be honoured: `mac` has an
    /// outstanding offer of `ip`, or holds it bound by an ACK at most [`DECLINE_WINDOW_SECS`]
    /// old that the client checks before use (not a renewal's).
    pub fn may_decline(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<(), DeclineRefused> {
        if !self.serves(ip) {
            return Err(DeclineRefused::NotOurs);
        }
        if self.offers.get(&mac).is_some_and(|o| o.ip == ip && o.until > now) {
            return Ok(());
        }
        let held = self.by_ip.get(&ip).is_some_and(|l| l.mac == mac && l.state == LeaseState::Bound && l.expires > now);
        if !held {
            return Err(DeclineRefused::NotHeld);
        }
        match self.bound_at.get(&ip) {
            Some(&(holder, at)) if holder == mac && now.saturating_sub(at) <= DECLINE_WINDOW_SECS => Ok(()),
            _ => Err(DeclineRefused::Stale),
        }
    }

    /// A DHCPDECLINE: if [`Self::may_decline`] allows it, keeps the address out of use for the
    /// probation period and returns the record to commit.
    pub fn decline(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Result<Lease, DeclineRefused> {
        self.may_decline(mac, ip, now)?;
        Ok(self.quarantine(mac, ip, now))
    }

    /// A conflict check found `ip` in use: keeps the address out of use for the probation
    /// period, whoever asked. Returns the record to commit.
    pub fn quarantine(&mut self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> Lease {
        if let Some(offer) = self.offers.get(&mac).filter(|o| o.ip == ip).copied() {
            self.offers.remove(&mac);
            self.offered_ips.remove(&offer.ip);
        }
        self.bound_at.remove(&ip);
        let declined = Lease {
            ip,
            mac,
            state: LeaseState::Declined,
            expires: now + u64::from(self.pool.probation_secs),
            updated: now,
        };
        self.put(declined.clone());
        declined
    }

    /// Every lease record, for listing.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, last)
    }

    fn pool(start: u8, end: u8) -> Pool {
        Pool {
            start: ip(start),
            end: ip(end),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            reservations: HashMap::from([(mac(99), ip(50))]),
            lease_secs: 3600,
            probation_secs: 600,
        }
    }

    fn table(start: u8, end: u8) -> LeaseTable {
        LeaseTable::new(pool(start, end), SERVER, true, vec![])
    }

    /// DISCOVER, OFFER, REQUEST, ACK: returns the bound lease.
    fn dora(t: &mut LeaseTable, m: MacAddr, now: u64) -> Lease {
        let (addr, _) = t.choose(m, None, now).unwrap();
        t.offer(m, addr, now);
        match t.request(m, RequestKind::Selecting { server_id: SERVER, requested: addr }, now) {
            RequestOutcome::Ack(lease) => lease,
            other => panic!("expected ACK, got {other:?}"),
        }
    }

    #[test]
    fn a_client_keeps_its_address_across_renew_rebind_and_reboot() {
        let mut t = table(100, 110);
        let lease = dora(&mut t, mac(1), 1000);
        assert_eq!(lease.ip, ip(100));
        assert_eq!(lease.expires, 1000 + 3600);
        let renewed = t.request(mac(1), RequestKind::Renewing { ciaddr: ip(100) }, 2000);
        assert!(matches!(renewed, RequestOutcome::Ack(ref l) if l.expires == 2000 + 3600));
        let rebooted = t.request(mac(1), RequestKind::InitReboot { requested: ip(100) }, 3000);
        assert!(matches!(rebooted, RequestOutcome::Ack(_)));
        // Next DISCOVER, even after the lease ran out, offers the same address.
        assert_eq!(t.choose(mac(1), None, 100_000).unwrap(), (ip(100), false));
    }

    #[test]
    fn leases_restored_from_the_store_are_honoured() {
        let mut t = table(100, 110);
        let lease = dora(&mut t, mac(1), 1000);
        let mut restored = LeaseTable::new(pool(100, 110), SERVER, true, vec![lease]);
        assert_eq!(restored.choose(mac(2), None, 1001).unwrap().0, ip(101), "the restored lease is held");
        assert!(matches!(
            restored.request(mac(1), RequestKind::InitReboot { requested: ip(100) }, 1002),
            RequestOutcome::Ack(_)
        ));
    }

    #[test]
    fn offers_hold_addresses_and_expire() {
        let mut t = table(100, 101);
        t.offer(mac(1), ip(100), 0);
        assert_eq!(t.choose(mac(2), None, 1).unwrap().0, ip(101));
        t.offer(mac(2), ip(101), 1);
        assert_eq!(t.choose(mac(3), None, 2), Err(OfferError::PoolExhausted));
        t.expire_offers(OFFER_HOLD_SECS + 1);
        assert_eq!(t.choose(mac(3), None, OFFER_HOLD_SECS + 1).unwrap().0, ip(100));
    }

    #[test]
    fn requests_for_other_servers_or_bad_addresses() {
        let mut t = table(100, 110);
        let (addr, _) = t.choose(mac(1), None, 0).unwrap();
        t.offer(mac(1), addr, 0);
        let other = RequestKind::Selecting { server_id: ip(2), requested: addr };
        assert_eq!(t.request(mac(1), other, 0), RequestOutcome::Silent);
        assert_eq!(t.choose(mac(2), Some(ip(100)), 0).unwrap().0, ip(100), "the abandoned offer is free again");
        let outside = RequestKind::Selecting { server_id: SERVER, requested: Ipv4Addr::new(192, 168, 1, 5) };
        assert!(matches!(t.request(mac(1), outside, 0), RequestOutcome::Nak(_)));
        let foreign_net = RequestKind::InitReboot { requested: Ipv4Addr::new(192, 168, 1, 5) };
        assert!(matches!(t.request(mac(1), foreign_net, 0), RequestOutcome::Nak(_)));
        let unknown = RequestKind::InitReboot { requested: ip(105) };
        assert!(matches!(t.request(mac(1), unknown, 0), RequestOutcome::Nak(_)), "authoritative");
        let mut quiet = LeaseTable::new(pool(100, 110), SERVER, false, vec![]);
        assert_eq!(quiet.request(mac(1), unknown, 0), RequestOutcome::Silent, "not authoritative");
    }

    #[test]
    fn someone_elses_lease_cannot_be_taken() {
        let mut t = table(100, 110);
        dora(&mut t, mac(1), 0);
        let steal = RequestKind::Selecting { server_id: SERVER, requested: ip(100) };
        assert!(matches!(t.request(mac(2), steal, 10), RequestOutcome::Nak(_)));
        let renew = RequestKind::Renewing { ciaddr: ip(100) };
        assert!(matches!(t.request(mac(2), renew, 10), RequestOutcome::Nak(_)));
        assert_eq!(t.lease_of(mac(1)).unwrap().ip, ip(100));
    }

    #[test]
    fn reservations_are_kept_for_their_owner() {
        let mut t = table(48, 52);
        assert_eq!(t.choose(mac(99), None, 0).unwrap(), (ip(50), true));
        for n in 1..=4 {
            let lease = dora(&mut t, mac(n), 0);
            assert_ne!(lease.ip, ip(50), "reserved address given to {n}");
        }
        assert_eq!(dora(&mut t, mac(99), 0).ip, ip(50));
        let wrong = RequestKind::Selecting { server_id: SERVER, requested: ip(51) };
        assert!(matches!(t.request(mac(99), wrong, 0), RequestOutcome::Nak(_)));
    }

    #[test]
    fn release_keeps_the_association_decline_quarantines() {
        let mut t = table(100, 110);
        dora(&mut t, mac(1), 0);
        assert_eq!(t.release(mac(2), ip(100), 10), None, "only the holder may release");
        let released = t.release(mac(1), ip(100), 10).unwrap();
        assert_eq!(released.state, LeaseState::Released);
        assert_eq!(t.choose(mac(1), None, 20).unwrap().0, ip(100));

        dora(&mut t, mac(1), 20);
        let declined = t.decline(mac(1), ip(100), 30).unwrap();
        assert_eq!((declined.state, declined.expires), (LeaseState::Declined, 630));
        assert_ne!(t.choose(mac(1), None, 40).unwrap().0, ip(100), "declined address kept out of use");
        assert_ne!(t.choose(mac(2), Some(ip(100)), 40).unwrap().0, ip(100));
        assert_eq!(t.decline(mac(1), Ipv4Addr::new(8, 8, 8, 8), 40), Err(DeclineRefused::NotOurs));
    }

    /// Regression (issue 13): a DECLINE took any address out of use for any sender, so one
    /// datagram could take a machine's bound lease away.
    #[test]
    fn only_the_holder_may_decline_and_only_right_after_its_ack() {
        let mut t = table(100, 110);
        let lease = dora(&mut t, mac(1), 1000);
        // Someone else (their own hardware address) declines the holder's address.
        assert_eq!(t.decline(mac(2), lease.ip, 1001), Err(DeclineRefused::NotHeld));
        // The holder's hardware address, but long after the ACK: the holder would have declined
        // at once, so this is someone else using its address.
        let late = 1000 + DECLINE_WINDOW_SECS + 1;
        assert_eq!(t.decline(mac(1), lease.ip, late), Err(DeclineRefused::Stale));
        // A renewal is not checked by the client, so it opens no window.
        assert!(matches!(t.request(mac(1), RequestKind::Renewing { ciaddr: lease.ip }, late), RequestOutcome::Ack(_)));
        assert_eq!(t.decline(mac(1), lease.ip, late + 1), Err(DeclineRefused::Stale));
        // The lease is untouched: its holder renews it again.
        assert!(matches!(
            t.request(mac(1), RequestKind::Renewing { ciaddr: lease.ip }, late + 2),
            RequestOutcome::Ack(ref l) if l.ip == lease.ip
        ));
        // An INIT-REBOOT is checked by the client: it may decline right after.
        let reboot = late + 100;
        assert!(matches!(
            t.request(mac(1), RequestKind::InitReboot { requested: lease.ip }, reboot),
            RequestOutcome::Ack(_)
        ));
        assert_eq!(t.decline(mac(1), lease.ip, reboot + DECLINE_WINDOW_SECS).unwrap().state, LeaseState::Declined);
    }

    #[test]
    fn an_offered_address_may_be_declined_by_its_client_only() {
        let mut t = table(100, 110);
        t.offer(mac(1), ip(100), 0);
        assert_eq!(t.decline(mac(2), ip(100), 1), Err(DeclineRefused::NotHeld));
        assert_eq!(t.decline(mac(1), ip(100), OFFER_HOLD_SECS + 1), Err(DeclineRefused::NotHeld), "offer expired");
        t.offer(mac(1), ip(101), 100);
        assert_eq!(t.decline(mac(1), ip(101), 101).unwrap().state, LeaseState::Declined);
        assert_ne!(t.choose(mac(1), None, 102).unwrap().0, ip(101));
    }

    #[test]
    fn leases_restored_from_the_store_cannot_be_declined() {
        let mut t = table(100, 110);
        let lease = dora(&mut t, mac(1), 1000);
        let restored = LeaseTable::new(pool(100, 110), SERVER, true, vec![lease.clone()]);
        // When the ACK went out is not persisted: after a restart a DECLINE is ignored, which at
        // worst leaves a conflicting address in use until the client notices again.
        assert_eq!(restored.may_decline(mac(1), lease.ip, 1001), Err(DeclineRefused::Stale));
    }

    #[test]
    fn a_conflict_check_quarantines_whoever_asked() {
        let mut t = table(100, 110);
        t.offer(mac(1), ip(100), 0);
        let quarantined = t.quarantine(mac(1), ip(100), 0);
        assert_eq!((quarantined.state, quarantined.expires), (LeaseState::Declined, 600));
        assert_ne!(t.choose(mac(1), None, 1).unwrap().0, ip(100));
    }

    #[test]
    fn expired_leases_are_reused_oldest_first_when_the_pool_is_full() {
        let mut t = table(100, 102);
        for n in 1..=3 {
            dora(&mut t, mac(n), u64::from(n) * 10);
        }
        assert_eq!(t.choose(mac(4), None, 100), Err(OfferError::PoolExhausted));
        let later = 10_000;
        assert_eq!(t.choose(mac(4), None, later).unwrap().0, ip(100), "oldest expired lease");
        assert_eq!(t.in_use(100), 3);
        assert_eq!(t.in_use(later), 0);
    }

    #[test]
    fn a_requested_address_is_honoured_when_free() {
        let mut t = table(100, 110);
        assert_eq!(t.choose(mac(1), Some(ip(107)), 0).unwrap(), (ip(107), true));
        assert_eq!(t.choose(mac(1), Some(ip(200)), 0).unwrap().0, ip(100), "outside the range");
    }
}

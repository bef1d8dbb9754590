//! How many connections a listener holds: a cap per source address, a cap in total, and slots in
//! that total reserved for a trusted prefix (the appliance's management overlay), so that a flood
//! from the rack can never use the last of them.
//!
//! At the total cap a newcomer does not simply bounce: the oldest connection that has no request
//! in flight (one that has not finished sending its first request head, or sits idle between
//! requests) is evicted to make room. A slow-header attack from many addresses then only evicts
//! its own connections, while a real client, whose request head arrives within milliseconds of
//! its connection, gets served. A newcomer is refused only when every connection of its class is
//! busy with a request, and a per-source cap is never worked around by eviction: a source that
//! holds its share is refused. An evicted connection's socket closes when its task next runs;
//! [`Caps::closing_max`] bounds how many may be pending at once (the accept loop waits in
//! [`Limiter::ready`] rather than take a connection it could not make room for), so a listener
//! never holds more than `total + closing_max()` sockets.
//!
//! [`Limiter::admit`] decides; the [`Permit`] it hands out is the connection's slot, given back
//! when the permit is dropped (when the connection closes). Only bookkeeping lives here; the
//! accept loop in [`crate::conn`] acts on the decisions.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::Ipv4Net;
use tokio::sync::Notify;

/// An IPv4 prefix: the addresses whose connections may use the reserved slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix(Ipv4Net);

impl Prefix {
    /// The prefix `address/len`; host bits in `address` are ignored. `len` above 32 is taken as 32.
    pub fn new(address: Ipv4Addr, len: u8) -> Self {
        Self(Ipv4Net::new(address, len.min(32)).unwrap_or_default().trunc())
    }

    /// Whether `ip` lies inside (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return false,
            },
        };
        self.0.contains(&v4)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A listener's connection caps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Connections held at once, all sources together.
    pub total: usize,
    /// Connections held at once from one source address. Connections without an address (Unix
    /// sockets) are counted in the total only.
    pub per_source: usize,
    /// Slots of `total` that only sources in `priority` may use. Ignored without a prefix.
    pub reserved: usize,
    /// The sources that may use the reserved slots.
    pub priority: Option<Prefix>,
}

impl Caps {
    /// `total` connections, `per_source` of them from one address, nothing reserved.
    pub fn new(total: usize, per_source: usize) -> Self {
        Self { total, per_source, reserved: 0, priority: None }
    }

    /// Reserves `reserved` of the total for sources in `priority`.
    pub fn with_reserve(self, priority: Prefix, reserved: usize) -> Self {
        Self { reserved, priority: Some(priority), ..self }
    }

    /// How many evicted connections may be on their way out at once. An evicted connection's
    /// slot goes to its replacement at once, but its socket closes only when its task next runs;
    /// bounding those keeps the sockets a listener holds at most `total + closing_max()` however
    /// busy the runtime is. An eighth of the total is far more than a healthy runtime ever has.
    pub fn closing_max(&self) -> usize {
        (self.total / 8).max(1)
    }

    /// What sources outside the priority prefix may hold together.
    pub fn ordinary_total(&self) -> usize {
        if self.priority.is_some() {
            self.total.saturating_sub(self.reserved)
        } else {
            self.total
        }
    }
}

impl fmt::Display for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in total, {} per source address", self.total, self.per_source)?;
        if let Some(prefix) = self.priority {
            write!(f, ", {} of them kept for {prefix}", self.reserved)?;
        }
        Ok(())
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already holds its per-source cap.
    SourceFull,
    /// Its class (ordinary, or priority) is at its cap, and every connection it could displace is
    /// busy with a request or [`Caps::closing_max`] evicted ones have yet to close.
    Full,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::SourceFull => "its address already holds as many connections as one address may",
            Refusal::Full => "the listener is at its connection cap and cannot make room now",
        })
    }
}

/// One held connection's entry.
#[derive(Debug)]
struct Slot {
    seq: u64,
    source: Option<IpAddr>,
    priority: bool,
    /// Requests in flight: while above zero the connection is never evicted.
    busy: AtomicUsize,
    evict: Notify,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// Held connections by age (admission order), oldest first.
    held: BTreeMap<u64, Arc<Slot>>,
    by_source: HashMap<IpAddr, usize>,
    priority_held: usize,
    /// Evicted connections not closed yet.
    closing: usize,
}

impl State {
    fn ordinary_held(&self) -> usize {
        self.held.len() - self.priority_held
    }

    /// The oldest connection with no request in flight among the given class (`true` for
    /// priority), or the other class when `then_other`.
    fn idle_victim(&self, first: bool, then_other: bool) -> Option<u64> {
        let idle = |slot: &&Arc<Slot>| slot.busy.load(Ordering::Acquire) == 0;
        let of = |priority: bool| self.held.values().filter(|s| s.priority == priority).find(idle).map(|s| s.seq);
        of(first).or_else(|| if then_other { of(!first) } else { None })
    }

    fn remove(&mut self, seq: u64) -> Option<Arc<Slot>> {
        let slot = self.held.remove(&seq)?;
        if let Some(source) = slot.source {
            if let Some(count) = self.by_source.get_mut(&source) {
                *count -= 1;
                if *count == 0 {
                    self.by_source.remove(&source);
                }
            }
        }
        if slot.priority {
            self.priority_held -= 1;
        }
        Some(slot)
    }
}

/// The caps of one listener and the connections it holds.
#[derive(Debug)]
pub struct Limiter {
    caps: Caps,
    state: Mutex<State>,
    /// Signalled when an evicted connection closes.
    closed: Notify,
}

/// A connection let in.
#[derive(Debug)]
pub struct Admitted {
    /// Its slot.
    pub permit: Permit,
    /// Whether an idle connection was evicted to make room for it.
    pub evicted: bool,
}

impl Limiter {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self { caps, state: Mutex::new(State::default()), closed: Notify::new() })
    }

    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is counters and a map updated in single steps: a panic elsewhere while the
        // lock was held cannot have left it half-changed.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Completes when an eviction is possible: fewer than [`Caps::closing_max`] evicted
    /// connections are still closing. The accept loop waits here before accepting, so under a
    /// churn of evictions new connections wait in the kernel's queue (holding no descriptor)
    /// instead of being refused.
    pub async fn ready(&self) {
        loop {
            let closed = self.closed.notified();
            if self.lock().closing < self.caps.closing_max() {
                return;
            }
            closed.await;
        }
    }

    /// Decides on a new connection from `source` (`None` for a Unix socket): a permit, perhaps
    /// after evicting an idle connection, or a refusal.
    pub fn admit(self: &Arc<Self>, source: Option<IpAddr>) -> Result<Admitted, Refusal> {
        let caps = &self.caps;
        let priority = matches!((caps.priority, source), (Some(prefix), Some(ip)) if prefix.contains(ip));
        let mut state = self.lock();
        if let Some(ip) = source {
            if state.by_source.get(&ip).copied().unwrap_or(0) >= caps.per_source {
                return Err(Refusal::SourceFull);
            }
        }
        // Ordinary sources may hold `total - reserved`, priority ones anything up to `total`.
        // Who makes room: a priority newcomer displaces an idle ordinary connection first; an
        // ordinary one displaces its own kind when its share is used up, and otherwise (the
        // priority side has borrowed from the ordinary share) takes a borrowed slot back first.
        let victim = if priority {
            (state.held.len() >= caps.total).then(|| state.idle_victim(false, true))
        } else if state.ordinary_held() >= caps.ordinary_total() {
            Some(state.idle_victim(false, false))
        } else if state.held.len() >= caps.total {
            Some(state.idle_victim(true, true))
        } else {
            None
        };
        let mut evicted = false;
        if let Some(victim) = victim {
            let victim = victim.ok_or(Refusal::Full)?;
            if state.closing >= caps.closing_max() {
                return Err(Refusal::Full);
            }
            if let Some(slot) = state.remove(victim) {
                // notify_one keeps the wakeup if the connection's task is not waiting yet.
                slot.evict.notify_one();
                state.closing += 1;
                evicted = true;
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let slot = Arc::new(Slot { seq, source, priority, busy: AtomicUsize::new(0), evict: Notify::new() });
        state.held.insert(seq, slot.clone());
        if let Some(ip) = source {
            *state.by_source.entry(ip).or_default() += 1;
        }
        if priority {
            state.priority_held += 1;
        }
        Ok(Admitted { permit: Permit { limiter: self.clone(), slot }, evicted })
    }
}

/// A held connection's slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    slot: Arc<Slot>,
}

impl Permit {
    /// Marks a request in flight until the returned guard is dropped: the connection is not
    /// evicted meanwhile.
    pub fn busy(&self) -> Busy {
        self.slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.slot.clone())
    }

    /// Completes when the limiter evicts this connection to make room for a newer one.
    pub async fn evicted(&self) {
        self.slot.evict.notified().await;
    }

    /// Whether this connection came from the priority prefix.
    pub fn is_priority(&self) -> bool {
        self.slot.priority
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        if state.remove(self.slot.seq).is_none() {
            // Evicted: its slot was given to its replacement then; now it has closed.
            state.closing -= 1;
            self.limiter.closed.notify_one();
        }
    }
}

/// A request in flight on a connection (see [`Permit::busy`]).
#[derive(Debug)]
pub struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn overlay(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 99, 0, last)))
    }

    /// Whether `permit` has been told to go, without waiting for it.
    fn was_evicted(permit: &Permit) -> bool {
        let mut fut = pin!(permit.evicted());
        matches!(fut.as_mut().poll(&mut Context::from_waker(Waker::noop())), Poll::Ready(()))
    }

    #[test]
    fn prefixes_match_their_addresses() {
        let p = Prefix::new(Ipv4Addr::new(10, 99, 0, 1), 16);
        assert_eq!(p.to_string(), "10.99.0.0/16");
        assert!(p.contains("10.99.200.3".parse().unwrap()));
        assert!(p.contains("::ffff:10.99.0.9".parse().unwrap()));
        assert!(!p.contains("10.98.0.1".parse().unwrap()));
        assert!(!p.contains("fe80::1".parse().unwrap()));
        assert!(Prefix::new(Ipv4Addr::new(1, 2, 3, 4), 0).contains("9.9.9.9".parse().unwrap()));
        assert!(!Prefix::new(Ipv4Addr::new(1, 2, 3, 4), 40).contains("1.2.3.5".parse().unwrap()));
    }

    #[test]
    fn one_source_cannot_hold_more_than_its_cap() {
        let limiter = Limiter::new(Caps::new(10, 2));
        let a1 = limiter.admit(ip(1)).unwrap().permit;
        let _a2 = limiter.admit(ip(1)).unwrap().permit;
        assert_eq!(limiter.admit(ip(1)).unwrap_err(), Refusal::SourceFull);
        // Another address is unaffected, and an idle connection of the full source is not evicted.
        let _b = limiter.admit(ip(2)).unwrap();
        assert!(!was_evicted(&a1));
        drop(a1);
        assert!(limiter.admit(ip(1)).is_ok(), "a closed connection gives its slot back");
    }

    #[test]
    fn at_the_total_cap_the_oldest_idle_connection_makes_room() {
        let limiter = Limiter::new(Caps::new(3, 3));
        let first = limiter.admit(ip(1)).unwrap().permit;
        let second = limiter.admit(ip(2)).unwrap().permit;
        let third = limiter.admit(ip(3)).unwrap().permit;
        let _busy = first.busy();
        let fourth = limiter.admit(ip(4)).unwrap();
        assert!(fourth.evicted);
        assert!(!was_evicted(&first), "a connection with a request in flight stays");
        assert!(was_evicted(&second), "the oldest idle one goes");
        assert!(!was_evicted(&third));
        assert_eq!(limiter.held(), 3, "the evicted slot went to the newcomer");
        // The evicted connection closing later does not free a second slot.
        drop(second);
        assert_eq!(limiter.held(), 3);
        let fifth = limiter.admit(ip(5)).unwrap();
        assert!(fifth.evicted && was_evicted(&third));
    }

    #[test]
    fn when_every_connection_is_busy_a_newcomer_is_refused() {
        let limiter = Limiter::new(Caps::new(2, 2));
        let a = limiter.admit(ip(1)).unwrap().permit;
        let b = limiter.admit(ip(2)).unwrap().permit;
        let (busy_a, _busy_b) = (a.busy(), b.busy());
        assert_eq!(limiter.admit(ip(3)).unwrap_err(), Refusal::Full);
        drop(busy_a);
        let c = limiter.admit(ip(3)).unwrap();
        assert!(c.evicted && was_evicted(&a), "a finished request makes its connection idle again");
    }

    #[test]
    fn ordinary_sources_never_take_the_reserved_slots() {
        let caps = Caps::new(4, 4).with_reserve(Prefix::new(Ipv4Addr::new(10, 99, 0, 0), 16), 2);
        assert_eq!(caps.ordinary_total(), 2);
        let limiter = Limiter::new(caps);
        let rack1 = limiter.admit(ip(1)).unwrap().permit;
        let rack2 = limiter.admit(ip(2)).unwrap().permit;
        let busy = (rack1.busy(), rack2.busy());
        assert_eq!(limiter.admit(ip(3)).unwrap_err(), Refusal::Full, "two slots are left, but they are reserved");
        let agent1 = limiter.admit(overlay(1)).unwrap().permit;
        let agent2 = limiter.admit(overlay(2)).unwrap().permit;
        assert!(agent1.is_priority() && agent2.is_priority() && !rack1.is_priority());
        assert_eq!(limiter.held(), 4);
        // The overlay may also displace idle rack connections beyond its reserve.
        drop(busy);
        let agent3 = limiter.admit(overlay(3)).unwrap();
        assert!(agent3.evicted && was_evicted(&rack1) && !was_evicted(&agent1) && !was_evicted(&agent2));
        drop(rack1);
        // The overlay now holds three, one borrowed from the rack's share: a rack newcomer takes
        // that one back (the oldest idle agent connection), not the idle rack connection.
        let rack9 = limiter.admit(ip(9)).unwrap();
        assert!(rack9.evicted && was_evicted(&agent1) && !was_evicted(&rack2));
        drop(agent1);
        let _busy = [rack2.busy(), agent2.busy(), agent3.permit.busy(), rack9.permit.busy()];
        assert_eq!(limiter.admit(ip(10)).unwrap_err(), Refusal::Full);
        assert_eq!(limiter.admit(overlay(7)).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn a_priority_flood_still_leaves_the_rack_its_idle_share() {
        // Overlay connections beyond the reserve borrow ordinary slots, and give them back when idle.
        let caps = Caps::new(3, 3).with_reserve(Prefix::new(Ipv4Addr::new(10, 99, 0, 0), 16), 1);
        let limiter = Limiter::new(caps);
        let agents: Vec<Permit> = (1..=3).map(|i| limiter.admit(overlay(i)).unwrap().permit).collect();
        let rack = limiter.admit(ip(1)).unwrap();
        assert!(rack.evicted && was_evicted(&agents[0]), "no idle rack connection: the oldest idle agent's goes");
    }

    #[test]
    fn evictions_wait_while_too_many_evicted_connections_are_still_open() {
        let limiter = Limiter::new(Caps::new(8, 8));
        assert_eq!(limiter.caps().closing_max(), 1);
        let mut held: Vec<Permit> = (1..=8).map(|i| limiter.admit(ip(i)).unwrap().permit).collect();
        let ninth = limiter.admit(ip(9)).unwrap();
        assert!(ninth.evicted && was_evicted(&held[0]));
        assert_eq!(limiter.admit(ip(10)).unwrap_err(), Refusal::Full, "the first evicted one has not closed yet");
        let mut ready = pin!(limiter.ready());
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(ready.as_mut().poll(cx).is_pending(), "the accept loop waits");
        drop(held.remove(0));
        assert!(ready.as_mut().poll(cx).is_ready(), "until the evicted connection has closed");
        let tenth = limiter.admit(ip(10)).unwrap();
        assert!(tenth.evicted && was_evicted(&held[0]), "once it has, the next one can go");
    }

    #[test]
    fn unix_socket_peers_count_only_in_the_total() {
        let limiter = Limiter::new(Caps::new(2, 1));
        let a = limiter.admit(None).unwrap().permit;
        let _b = limiter.admit(None).unwrap().permit;
        assert!(limiter.admit(None).unwrap().evicted);
        assert!(was_evicted(&a));
    }
}

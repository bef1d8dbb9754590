//! What the DHCP server needs from persistent storage. The appliance implements it on its
//! store; tests use [`MemoryStore`].

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Mutex;

use super::lease::Lease;
use oasis_proto::MacAddr;

/// A store failure, boxed so the DHCP server does not depend on the store's error type.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// A future that resolves once a write is durable.
pub type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// A network boot client seen on the wire; the appliance keeps its inventory of machines from
/// these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    pub mac: MacAddr,
    /// Option 93, when the client sent it.
    pub arch: Option<u16>,
    /// Option 60, lossily decoded.
    pub vendor_class: Option<String>,
    /// The address it holds, once it has one.
    pub ip: Option<Ipv4Addr>,
}

pub trait LeaseStore: Send + Sync + 'static {
    /// Every lease record, at start-up.
    fn load_leases(&self) -> Result<Vec<Lease>, StoreError>;

    /// Persists a lease record. The DHCP server sends the reply that depends on it only after
    /// the returned future resolves `Ok`; implementations may batch several records into one
    /// commit (group commit) but must not resolve before the commit is durable.
    fn save_lease(&self, lease: Lease) -> Commit;

    /// Notes a boot client. Nothing waits on this; it may be batched and may be lost in a crash.
    fn record_sighting(&self, sighting: Sighting);
}

/// An in-memory store for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub leases: Mutex<Vec<Lease>>,
    pub sightings: Mutex<Vec<Sighting>>,
}

impl LeaseStore for MemoryStore {
    fn load_leases(&self) -> Result<Vec<Lease>, StoreError> {
        Ok(self.leases.lock().expect("store lock").clone())
    }

    fn save_lease(&self, lease: Lease) -> Commit {
        let mut leases = self.leases.lock().expect("store lock");
        leases.retain(|l| l.ip != lease.ip);
        leases.push(lease);
        Box::pin(async { Ok(()) })
    }

    fn record_sighting(&self, sighting: Sighting) {
        self.sightings.lock().expect("store lock").push(sighting);
    }
}

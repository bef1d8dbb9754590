//! The controller's outside world behind small traits, chosen at construction: etcd's membership
//! API and the clock. The real implementations wrap [`EtcdClient`] and the system clock; the
//! controller's unit tests use recording fakes (`controller/tests.rs`), and the real client is
//! exercised against a real etcd (`appliance/tests/etcd.rs`) and in the cluster end-to-end test.
//!
//! The controller asks nothing of WireGuard itself: what it knows of the management links and
//! the mesh comes from the registry (registrations and the agents' heartbeats).

use std::future::Future;
use std::net::SocketAddr;

use crate::etcd::{EtcdClient, EtcdError, Member};
use oasis_core::assembly::status::MemberStatus;

/// etcd's membership API as the controller uses it, one member at a time by its client address.
pub trait Etcd: Send + Sync {
    /// The status of the member at `ep`, as it sees itself.
    fn status(&self, ep: SocketAddr) -> impl Future<Output = Result<MemberStatus, EtcdError>> + Send;
    /// Every member, learners included, as the member at `ep` knows them.
    fn members(&self, ep: SocketAddr) -> impl Future<Output = Result<Vec<Member>, EtcdError>> + Send;
    /// Adds a learner with this peer URL.
    fn add_learner(&self, ep: SocketAddr, peer_url: &str) -> impl Future<Output = Result<Member, EtcdError>> + Send;
    /// Promotes learner `id` to a voter.
    fn promote(&self, ep: SocketAddr, id: u64) -> impl Future<Output = Result<(), EtcdError>> + Send;
    /// Removes member `id`.
    fn remove(&self, ep: SocketAddr, id: u64) -> impl Future<Output = Result<(), EtcdError>> + Send;
    /// Hands leadership to member `to`; `ep` is the leader's.
    fn move_leader(&self, ep: SocketAddr, to: u64) -> impl Future<Output = Result<(), EtcdError>> + Send;
    /// The cluster version the member at `ep` reports.
    fn cluster_version(&self, ep: SocketAddr) -> impl Future<Output = Result<String, EtcdError>> + Send;
    /// A linearizable read through the member at `ep` (it asks the leader, which needs a quorum).
    fn quorum_read(&self, ep: SocketAddr) -> impl Future<Output = Result<(), EtcdError>> + Send;
}

impl Etcd for EtcdClient {
    fn status(&self, ep: SocketAddr) -> impl Future<Output = Result<MemberStatus, EtcdError>> + Send {
        EtcdClient::status(self, ep)
    }

    fn members(&self, ep: SocketAddr) -> impl Future<Output = Result<Vec<Member>, EtcdError>> + Send {
        EtcdClient::members(self, ep)
    }

    fn add_learner(&self, ep: SocketAddr, peer_url: &str) -> impl Future<Output = Result<Member, EtcdError>> + Send {
        EtcdClient::add_learner(self, ep, peer_url)
    }

    async fn promote(&self, ep: SocketAddr, id: u64) -> Result<(), EtcdError> {
        EtcdClient::promote(self, ep, id).await.map(drop)
    }

    async fn remove(&self, ep: SocketAddr, id: u64) -> Result<(), EtcdError> {
        EtcdClient::remove(self, ep, id).await.map(drop)
    }

    fn move_leader(&self, ep: SocketAddr, to: u64) -> impl Future<Output = Result<(), EtcdError>> + Send {
        EtcdClient::move_leader(self, ep, to)
    }

    fn cluster_version(&self, ep: SocketAddr) -> impl Future<Output = Result<String, EtcdError>> + Send {
        EtcdClient::cluster_version(self, ep)
    }

    async fn quorum_read(&self, ep: SocketAddr) -> Result<(), EtcdError> {
        EtcdClient::get(self, ep, QUORUM_READ_KEY).await.map(drop)
    }
}

/// The key the rollout's quorum read asks for (it need not exist).
const QUORUM_READ_KEY: &[u8] = b"oasis/rollout/quorum-read";

/// Unix time in seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

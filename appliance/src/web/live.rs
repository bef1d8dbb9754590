//! What an open page follows: the store's commits and the cluster's picture, told at most every
//! [`AT_MOST_EVERY`], for as long as the page's session lives.

use std::sync::Arc;
use std::time::Duration;

use oasis_core::assembly::status::ClusterStatus;
use tokio::sync::watch;

use super::Web;

/// How often at most an open page is told something changed: a rack of hundreds of machines
/// commits several times a second (leases, heartbeats, events), and each telling makes the page
/// fetch itself again.
pub const AT_MOST_EVERY: Duration = Duration::from_secs(2);
/// How often a stream with nothing to tell checks that its session still lives.
const SESSION_CHECK: Duration = Duration::from_secs(30);

/// The changes one open page follows.
pub struct Changes {
    web: Web,
    session: String,
    commits: watch::Receiver<u64>,
    cluster: Option<watch::Receiver<Arc<ClusterStatus>>>,
    /// The cluster's picture as last told, without what changes on every tick.
    told: Option<ClusterStatus>,
    count: u64,
}

impl Changes {
    pub fn new(web: &Web, session: String) -> Changes {
        let mut commits = web.operator.api.store.commits();
        commits.mark_unchanged();
        let cluster = web.operator.cluster.as_ref().map(|c| c.status.clone());
        let told = cluster.as_ref().map(|c| settled(&c.borrow()));
        Changes { web: web.clone(), session, commits, cluster, told, count: 0 }
    }

    /// Waits for the next change worth telling (`None`: the session or the store has ended).
    pub async fn next(&mut self) -> Option<u64> {
        if self.count > 0 {
            tokio::time::sleep(AT_MOST_EVERY).await;
        }
        loop {
            let changed = tokio::select! {
                committed = self.commits.changed() => {
                    committed.ok()?;
                    true
                }
                Some(picture) = cluster_changed(&mut self.cluster) => {
                    let changed = self.told.as_ref() != Some(&picture);
                    self.told = Some(picture);
                    changed
                }
                () = tokio::time::sleep(SESSION_CHECK) => false,
            };
            self.web.sessions.get(&self.session)?;
            if changed {
                break;
            }
        }
        self.count += 1;
        Some(self.count)
    }
}

/// The cluster's next picture; never, when there is no cluster or it ended.
async fn cluster_changed(cluster: &mut Option<watch::Receiver<Arc<ClusterStatus>>>) -> Option<ClusterStatus> {
    let Some(status) = cluster else { return std::future::pending().await };
    match status.changed().await {
        Ok(()) => Some(settled(&status.borrow_and_update())),
        Err(_) => std::future::pending().await,
    }
}

/// The picture without what moves on every tick: the mesh's handshake ages are kept to the
/// minute, so a page is told when a link goes quiet, not each time a handshake ages a second.
fn settled(status: &ClusterStatus) -> ClusterStatus {
    let mut status = status.clone();
    for pair in &mut status.mesh {
        pair.handshake_age_secs = pair.handshake_age_secs.map(|secs| secs / 60);
    }
    status
}

//! Why a controller tick, or one of its steps, failed. Each keeps its cause; the tick's log line
//! and the progress `oasis cluster status` shows render the whole chain once
//! ([`oasis_proto::error_chain`]).

use crate::etcd::EtcdError;
use crate::pki::PkiError;
use crate::store::StoreError;
use oasis_core::k3s::K3sError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no etcd voter answers, so no membership change can be made; check the control-plane machines")]
    NoVoter,
    /// A membership change etcd refused: `what` names the step ("adding m1 as a learner").
    #[error("{what}")]
    Etcd { what: String, source: EtcdError },
    #[error("cannot issue {machine}'s etcd member certificate")]
    MemberCertificate { machine: String, source: PkiError },
    #[error("k3s cannot be configured")]
    K3s(#[source] K3sError),
}

/// Why the cluster's Kubernetes secrets cannot be made or read
/// ([`super::kubernetes::Kubernetes::load_or_create`]).
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make the {what}")]
    K3s { what: &'static str, source: K3sError },
    #[error("cannot issue k3s's etcd client certificate")]
    EtcdClient(#[source] PkiError),
}

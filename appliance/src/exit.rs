//! The exit codes of `oasis`, one table, read off the typed causes of an error.
//!
//! [`Exit::of`] walks the whole `source()` chain, so a store in use is 4 however many layers
//! (`serve`, the identity, the cluster CA) wrap it. `oasis --help` lists the codes
//! ([`EXIT_CODES_HELP`]).

use std::error::Error;

use crate::admin::AdminError;
use crate::controller::error::KubernetesError;
use crate::identity::IdentityError;
use crate::pki::PkiError;
use crate::serve::ServeError;
use crate::store::StoreError;
use oasis_core::config::ConfigError;
use oasis_core::update::UpdateRefusal;
use oasis_image::bundle::BundleError;

/// What `oasis` exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: any other failure; the message says what.
    Failure,
    /// 2: what was asked is wrong: the command line (clap exits with it before anything runs),
    /// or a request the running appliance refused as asked (an unknown or ambiguous machine, a
    /// bad MAC, no free overlay address: [`crate::operator::exit_code_of`]).
    Usage,
    /// 3: a configuration to fix: a bad file, or one this host does not match.
    Config,
    /// 4: the store is in use by another oasis process.
    StoreInUse,
    /// 5: the store is damaged, or missing where one existed: the operator must act.
    StoreDamaged,
}

/// The codes as `oasis --help` lists them.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  done
  1  any other failure (the message says what)
  2  usage: the command line is wrong, or the running appliance refused what was asked
  3  a configuration to fix: a bad file, or one this host does not match
  4  the store is in use by another oasis process (is `oasis serve` running?)
  5  the store is damaged or missing: restore it from a backup, or `oasis serve --new-store`";

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Config => 3,
            Exit::StoreInUse => 4,
            Exit::StoreDamaged => 5,
        }
    }

    /// The exit for an error: the first cause along its chain whose type says which, else
    /// [`Exit::Failure`].
    pub fn of(error: &(dyn Error + 'static)) -> Exit {
        let mut next = Some(error);
        while let Some(cause) = next {
            if let Some(exit) = classify(cause) {
                return exit;
            }
            next = cause.source();
        }
        Exit::Failure
    }
}

/// What one error says about the exit, looking through its `transparent` variants (whose inner
/// error is not in the `source()` chain: they forward to the inner error's own source).
fn classify(error: &(dyn Error + 'static)) -> Option<Exit> {
    if error.is::<ConfigError>() || error.is::<UpdateRefusal>() {
        return Some(Exit::Config);
    }
    if let Some(e) = error.downcast_ref::<BundleError>() {
        // A bad bundle is a bad file; failing to read or stage a good one is not.
        return e.is_input().then_some(Exit::Config);
    }
    if let Some(e) = error.downcast_ref::<StoreError>() {
        return of_store(e);
    }
    if let Some(e) = error.downcast_ref::<ServeError>() {
        return match e {
            ServeError::NoInterface(_)
            | ServeError::NoAddress { .. }
            | ServeError::BootRoot { .. }
            | ServeError::ProfileFile { .. } => Some(Exit::Config),
            ServeError::Store(e) => of_store(e),
            _ => None,
        };
    }
    if let Some(e) = error.downcast_ref::<AdminError>() {
        return match e.exit_code() {
            2 => Some(Exit::Usage),
            3 => Some(Exit::Config),
            _ => None,
        };
    }
    if let Some(IdentityError::Store(e)) = error.downcast_ref::<IdentityError>() {
        return of_store(e);
    }
    if let Some(PkiError::Store(e)) = error.downcast_ref::<PkiError>() {
        return of_store(e);
    }
    if let Some(KubernetesError::Store(e)) = error.downcast_ref::<KubernetesError>() {
        return of_store(e);
    }
    None
}

fn of_store(error: &StoreError) -> Option<Exit> {
    match error {
        StoreError::InUse { .. } => Some(Exit::StoreInUse),
        e if e.is_damage() => Some(Exit::StoreDamaged),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_use() -> StoreError {
        StoreError::InUse { path: "/var/lib/oasis/oasis.redb".into() }
    }

    #[test]
    fn a_store_in_use_is_4_however_deeply_it_is_wrapped() {
        let direct = anyhow::Error::from(in_use());
        assert_eq!(Exit::of(direct.as_ref()), Exit::StoreInUse);
        let served = anyhow::Error::from(ServeError::Store(in_use()));
        assert_eq!(Exit::of(served.as_ref()), Exit::StoreInUse);
        let identity = anyhow::Error::from(ServeError::Identity(IdentityError::Store(in_use())));
        assert_eq!(Exit::of(identity.as_ref()), Exit::StoreInUse);
        // The cluster CA's store is the same store: its being in use was a string, and exit 1.
        let ca = anyhow::Error::from(ServeError::ClusterCa(PkiError::Store(in_use())));
        assert_eq!(Exit::of(ca.as_ref()), Exit::StoreInUse);
        let context = anyhow::Error::from(in_use()).context("while listing the machines");
        assert_eq!(Exit::of(context.as_ref()), Exit::StoreInUse);
    }

    #[test]
    fn a_request_the_appliance_refused_as_asked_is_2_its_own_failure_1() {
        let refused = |status| AdminError::Refused { status, message: "no machine matches m9".into() };
        let asked = anyhow::Error::from(refused(axum::http::StatusCode::NOT_FOUND)).context("accepting m9");
        assert_eq!(Exit::of(asked.as_ref()), Exit::Usage);
        assert_eq!(Exit::of(&refused(axum::http::StatusCode::SERVICE_UNAVAILABLE)), Exit::Failure);
    }

    #[test]
    fn a_refused_bundle_is_3_and_failing_to_read_one_1() {
        let refused = anyhow::Error::from(BundleError::Unsigned).context("verifying u.bundle");
        assert_eq!(Exit::of(refused.as_ref()), Exit::Config);
        let rule = UpdateRefusal::NotNewer { installed: 5, offered: 5, version: "0.16.0".into() };
        assert_eq!(Exit::of(&BundleError::Refused(Box::new(rule))), Exit::Config);
        let unreadable = BundleError::Read(std::io::Error::other("disk gone"));
        assert_eq!(Exit::of(&unreadable), Exit::Failure);
    }

    #[test]
    fn damage_is_5_configuration_3_and_the_rest_1() {
        let damaged = StoreError::Lost { path: "/d/oasis.redb".into(), evidence: "the marker".into() };
        assert_eq!(Exit::of(&ServeError::Store(damaged)), Exit::StoreDamaged);
        assert_eq!(Exit::of(&ServeError::NoInterface("br0".into())), Exit::Config);
        assert_eq!(Exit::of(&ServeError::Stopped { service: "HTTP" }), Exit::Failure);
        assert_eq!(Exit::of(&StoreError::WriterGone), Exit::Failure);
        let codes: Vec<i32> =
            [Exit::Ok, Exit::Failure, Exit::Usage, Exit::Config, Exit::StoreInUse, Exit::StoreDamaged]
                .into_iter()
                .map(Exit::code)
                .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5]);
        for code in codes {
            assert!(EXIT_CODES_HELP.contains(&format!("\n  {code}  ")), "--help lists {code}");
        }
    }
}

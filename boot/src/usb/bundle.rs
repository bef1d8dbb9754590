//! An update bundle on the stick: one `*.bundle` file at its root, beside or instead of
//! `oasis.toml`.
//!
//! [`take_bundle`] copies it to the data partition while verifying it completely (signature by
//! a trusted key, every member's hash: the same [`oasis_image::bundle::read_bundle`] the
//! appliance installs with), so the stick can be unmounted and pulled at once: the operator may
//! take minutes to confirm on the console, and a vfat stick pulled while mounted may lose the
//! report. The copy is what [`install`] hands to `oasis serve` (`Action::UpdateApply` over the
//! admin socket, which verifies it again and checks it against what is installed), and is
//! removed once installed or refused.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oasis_appliance::admin;
use oasis_appliance::generations::{Applied, UpdateStatus};
use oasis_appliance::operator::Action;
use oasis_core::update::{self, Installed};
use oasis_image::bundle::{self, Sink, VerifyOptions};
use oasis_image::signing::VerifyingKey;

/// What a bundle file on the stick is called: `NAME.bundle`.
pub const BUNDLE_SUFFIX: &str = ".bundle";
/// The verified copies on the data partition waiting to be installed are `PENDING_PREFIX*.bundle`
/// (each its own file: one being installed is never overwritten by the next stick's).
pub const PENDING_PREFIX: &str = "stick-update-";
/// How long `oasis serve` may take to install a bundle (it streams and hashes gigabytes).
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What became of the bundle on a stick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOutcome {
    /// Installed as node generation `sequence`.
    Installed { sequence: u64, summary: String },
    /// Verified, waiting for the console's confirmation.
    Pending { summary: String },
    /// Not installed: `reason` says what to do.
    Refused { reason: String },
}

impl BundleOutcome {
    /// The line of the stick's `result.txt`.
    pub fn line(&self) -> String {
        match self {
            BundleOutcome::Installed { sequence, summary } => {
                format!("bundle: installed as node generation {sequence}: {summary}")
            }
            BundleOutcome::Pending { summary } => format!(
                "bundle: verified, waiting for confirmation on the appliance console ([u] on its menu): {summary}"
            ),
            BundleOutcome::Refused { reason } => {
                format!("bundle: refused, nothing installed: {}", reason.replace('\n', "\n     "))
            }
        }
    }
}

/// A bundle verified and copied off a stick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its name on the stick.
    pub name: String,
    /// The copy on the data partition.
    pub copy: PathBuf,
    /// One line saying what it is.
    pub summary: String,
}

/// The one bundle at the root of the stick mounted at `root`: `Ok(None)` when there is none;
/// an error (the reason) when there are several or the root cannot be listed.
pub fn find_bundle(root: &Path) -> Result<Option<PathBuf>, String> {
    let entries = fs::read_dir(root).map_err(|e| {
        format!("cannot list the stick: {e}; the stick may be damaged", e = oasis_proto::error_chain(&e))
    })?;
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            name.ends_with(BUNDLE_SUFFIX) && !name.starts_with('.')
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let names: Vec<String> =
                found.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            Err(format!(
                "the stick carries {} update bundles ({}): leave exactly one *{BUNDLE_SUFFIX} at its root",
                names.len(),
                names.join(", ")
            ))
        }
    }
}

/// Copies what it reads into `copy`.
struct Tee<R, W> {
    reader: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.reader.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// What the running appliance has installed, as the rules of a bundle see it (`oasis_core::update`):
/// a bundle they refuse is refused before the operator is asked. `oasis serve` checks again,
/// against its rollout's target too.
pub fn installed_of(status: &UpdateStatus) -> Vec<Installed> {
    let etcd = status.generations.iter().find(|g| g.sequence == status.current).and_then(|g| g.etcd.clone());
    etcd.map(|etcd_version| Installed {
        sequence: status.highest_sequence,
        etcd_version,
        architecture: bundle::ARCHITECTURE.into(),
    })
    .into_iter()
    .collect()
}

/// A new path for a copy in `data_dir`.
pub fn copy_path(data_dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    data_dir.join(format!("{PENDING_PREFIX}{nanos}{BUNDLE_SUFFIX}"))
}

/// Removes the copies (and partial copies) in `data_dir`: at boot, none is pending any more.
pub fn remove_copies(data_dir: &Path) {
    for entry in fs::read_dir(data_dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(PENDING_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Verifies the bundle at `path` with `trusted` (and the rules against each of `installed`) while copying it to `copy` (written aside, synced
/// and renamed); the copy is removed on any error.
pub fn verify_and_copy(
    path: &Path,
    trusted: &[VerifyingKey],
    installed: &[Installed],
    copy: &Path,
) -> Result<Verified, String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let file = fs::File::open(path).map_err(|e| {
        format!("{name} cannot be read: {e}; the stick may be damaged", e = oasis_proto::error_chain(&e))
    })?;
    let partial = copy.with_extension("partial");
    let out = fs::File::create(&partial)
        .map_err(|e| format!("cannot copy {name} to {}: {e}", partial.display(), e = oasis_proto::error_chain(&e)))?;
    let options =
        VerifyOptions { trusted, architecture: bundle::ARCHITECTURE, max_total_bytes: bundle::DEFAULT_MAX_TOTAL_BYTES };
    let mut tee = Tee { reader: io::BufReader::new(file), copy: io::BufWriter::new(out) };
    let accept = |manifest: &bundle::BundleManifest| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        for rules in installed {
            update::check_update(rules, manifest)?;
        }
        Ok(())
    };
    let verified = bundle::read_bundle(&mut tee, &options, &accept, Sink::Discard)
        .map_err(|e| format!("{name}: {e}", e = oasis_proto::error_chain(&e)));
    let copied = verified.and_then(|v| {
        let file = tee.copy.into_inner().map_err(|e| e.into_error().to_string())?;
        file.sync_all().and_then(|()| fs::rename(&partial, copy)).map_err(|e| {
            format!(
                "cannot copy {name} to {}: {e}; free space on the data partition",
                copy.display(),
                e = oasis_proto::error_chain(&e)
            )
        })?;
        Ok(v)
    });
    match copied {
        Ok(v) => Ok(Verified { name, copy: copy.to_path_buf(), summary: v.manifest.summary() }),
        Err(reason) => {
            let _ = fs::remove_file(&partial);
            Err(reason)
        }
    }
}

/// The stick's bundle, if it has one: verified with `trusted` (or the reason there are no keys)
/// and against `installed`, and copied to `copy`; the reason when it is refused.
pub fn take_bundle(
    root: &Path,
    trusted: Result<Vec<VerifyingKey>, String>,
    installed: &[Installed],
    copy: &Path,
) -> Option<Result<Verified, String>> {
    let path = match find_bundle(root) {
        Ok(None) => return None,
        Ok(Some(path)) => path,
        Err(reason) => return Some(Err(reason)),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Some(
        trusted.map_err(|why| format!("{name}: {why}")).and_then(|keys| verify_and_copy(&path, &keys, installed, copy)),
    )
}

/// Installs a bundle file on the running appliance.
pub trait Installer {
    /// Installs the bundle at `path`; why not, as the operator should read it.
    fn install(&self, path: &Path) -> Result<Applied, String>;
}

/// `oasis serve`'s admin socket in a data directory: `Action::UpdateApply`, as `oasis update
/// apply` asks it.
#[derive(Debug, Clone)]
pub struct AdminInstaller {
    pub data_dir: PathBuf,
}

impl Installer for AdminInstaller {
    fn install(&self, path: &Path) -> Result<Applied, String> {
        let (method, request) = Action::UpdateApply { path: path.to_path_buf() }.request();
        match admin::request_within(&self.data_dir, method, &request, INSTALL_TIMEOUT) {
            Ok(Some(body)) => serde_json::from_slice(&body)
                .map_err(|e| format!("the answer of oasis serve was not understood: {e}; see `oasis update status`")),
            Ok(None) => Err("oasis serve is not running: plug the stick in again once it runs".into()),
            Err(e) => Err(oasis_proto::error_chain(&e)),
        }
    }
}

/// Installs `verified` through `installer` and removes the copy, whatever the outcome.
pub fn install(verified: &Verified, installer: &dyn Installer) -> BundleOutcome {
    let outcome = match installer.install(&verified.copy) {
        Ok(applied) => BundleOutcome::Installed { sequence: applied.generation.sequence, summary: applied.summary },
        Err(why) => BundleOutcome::Refused { reason: format!("{}: {why}", verified.name) },
    };
    let _ = fs::remove_file(&verified.copy);
    outcome
}

/// What the supervisor does with a stick's bundle: [`take_bundle`] (while the stick is mounted),
/// then [`settle`].
pub fn offer(
    root: &Path,
    trusted: Result<Vec<VerifyingKey>, String>,
    installed: &[Installed],
    copy: &Path,
    at_once: bool,
    installer: &dyn Installer,
) -> Option<(BundleOutcome, Option<Verified>)> {
    Some(settle(take_bundle(root, trusted, installed, copy)?, at_once, installer))
}

/// A taken bundle installed at once when `at_once`, else left pending (returned) for the
/// console to confirm.
pub fn settle(
    taken: Result<Verified, String>,
    at_once: bool,
    installer: &dyn Installer,
) -> (BundleOutcome, Option<Verified>) {
    match taken {
        Err(reason) => (BundleOutcome::Refused { reason }, None),
        Ok(verified) if at_once => (install(&verified, installer), None),
        Ok(verified) => (BundleOutcome::Pending { summary: verified.summary.clone() }, Some(verified)),
    }
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;

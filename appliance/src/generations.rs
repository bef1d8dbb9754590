//! Node generations on the data partition: `DATA_DIR/generations/<sequence>/` holds each
//! installed generation as a node image directory (kernel, initrd, the members a node fetches,
//! `artifacts.json`) with the bundle's verified manifest ([`MANIFEST_FILE`]). Generation 0 is the
//! boot root's `node/`, never copied. The store's [`oasis_core::generations::Generations`] record says which are installed
//! and what each is to the rack (`oasis_core::generations`).
//!
//! Installing a bundle ([`NodeGenerations::apply`]), one at a time:
//! 1. verify it as it streams into `generations/.staging-<n>` (signature by a trusted key, the
//!    rules of `oasis_core::update` against what is installed, every member's hash), write its
//!    `artifacts.json` and manifest there, fsync;
//! 2. rename the staging directory to `generations/<sequence>` and fsync the directory;
//! 3. commit the new record (the generation added, the ones no longer kept dropped) with an event;
//! 4. remove the dropped generations' directories.
//!
//! A crash at any moment leaves the old set or the new one: at start, [`NodeGenerations::reconcile`]
//! removes every staging directory and every generation directory the record does not list (a
//! crash after 2 and before 3 leaves the old record; after 3 and before 4, the new one).

use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oasis_core::generations::{Generation, GenerationState, MachineGenerations, SHIPPED};
use oasis_core::registry::Happening;
use oasis_core::update;
use oasis_image::artifacts::{self, ArtifactsError};
use oasis_image::bundle::{self, BundleError, BundleManifest, Sink, VerifyOptions};
use oasis_image::manifest::{write_atomic, ManifestError};
use oasis_image::node::ETCD_FILE;
use oasis_image::signing::{self, SigningError, VerifyingKey};
use oasis_proto::{Artifact, MacAddr};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The directory under the data directory.
pub const GENERATIONS_DIR: &str = "generations";
/// The verified bundle manifest, kept beside a generation's files.
pub const MANIFEST_FILE: &str = "bundle-manifest.json";
const STAGING_PREFIX: &str = ".staging-";
/// What `oasis boot` says of the appliance disk (`oasis_core::update::ApplianceHere`), in the
/// data directory.
pub const APPLIANCE_FILE: &str = "appliance.json";

/// Why a bundle was not installed, or the generations not read.
#[derive(Debug, thiserror::Error)]
pub enum GenerationsError {
    #[error(transparent)]
    Bundle(Box<BundleError>),
    #[error("no key to verify update bundles with: this appliance image has no trusted key and oasis.toml names none; add `[update] trusted_keys = [\"PUBLIC_KEY_FILE\"]` and restart oasis serve")]
    NoTrustedKey,
    #[error(
        "the update key {path} named in oasis.toml does not exist; give the public key `oasis config keygen` wrote"
    )]
    KeyMissing { path: PathBuf },
    #[error("cannot read an update key")]
    Key(#[from] SigningError),
    #[error("cannot open the bundle {path}; give the path of a bundle file on the appliance")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read the shipped node image's etcd version from {path}: the rules for a bundle need it; check the boot root")]
    Shipped { path: PathBuf, source: Option<Box<ArtifactsError>> },
    #[error("cannot install the generation in {path}; free space on the data partition and apply the bundle again")]
    Install { path: PathBuf, source: io::Error },
    #[error("cannot write {path}; free space on the data partition and apply the bundle again")]
    Write { path: PathBuf, source: Box<ManifestError> },
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("the installer stopped unexpectedly; apply the bundle again")]
    Stopped,
    #[error("cannot read the artifacts of node generation {sequence} in {path}; apply its bundle again")]
    Artifacts { sequence: u64, path: PathBuf, source: Box<ArtifactsError> },
}

impl From<BundleError> for GenerationsError {
    fn from(e: BundleError) -> Self {
        GenerationsError::Bundle(Box::new(e))
    }
}

impl From<StoreError> for GenerationsError {
    fn from(e: StoreError) -> Self {
        GenerationsError::Store(Box::new(e))
    }
}

impl GenerationsError {
    /// Whether the bundle (or what it asked) was refused, as opposed to this appliance failing.
    pub fn is_refusal(&self) -> bool {
        match self {
            GenerationsError::Bundle(e) => e.is_input(),
            GenerationsError::Open { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Where the keys an update bundle may be signed with come from.
#[derive(Debug, Clone, Default)]
pub struct UpdateKeys {
    /// The appliance image's trusted key, used when the file exists.
    pub image_key: Option<PathBuf>,
    /// `[update] trusted_keys`: each must exist.
    pub configured: Vec<PathBuf>,
}

impl UpdateKeys {
    /// The keys, read now.
    pub fn load(&self) -> Result<Vec<VerifyingKey>, GenerationsError> {
        let mut keys = vec![];
        if let Some(path) = &self.image_key {
            keys.extend(signing::load_trusted_key(path)?);
        }
        for path in &self.configured {
            keys.push(
                signing::load_trusted_key(path)?.ok_or_else(|| GenerationsError::KeyMissing { path: path.clone() })?,
            );
        }
        if keys.is_empty() {
            return Err(GenerationsError::NoTrustedKey);
        }
        Ok(keys)
    }
}

/// What an installed bundle became.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub generation: Generation,
    /// One line saying what the bundle is.
    pub summary: String,
    /// Generations removed from the data partition because they are no longer kept.
    pub pruned: Vec<u64>,
}

/// One generation as `oasis update status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GenerationView {
    pub sequence: u64,
    pub state: GenerationState,
    /// `shipped` for generation 0.
    pub version: String,
    pub kernel: Option<String>,
    pub etcd: Option<String>,
    pub k3s: Option<String>,
    pub installed_at: Option<u64>,
    /// Its node image directory.
    pub path: PathBuf,
}

/// One machine's generations as `oasis update status` shows them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MachineView {
    pub mac: MacAddr,
    /// What its boot script serves now.
    pub served: u64,
    #[serde(flatten)]
    pub generations: MachineGenerations,
}

/// What `oasis update status` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpdateStatus {
    pub current: u64,
    pub previous: Option<u64>,
    /// The highest sequence ever installed: a bundle must be above it.
    pub highest_sequence: u64,
    pub generations: Vec<GenerationView>,
    pub machines: Vec<MachineView>,
    /// The last rollout, running or ended.
    #[serde(default)]
    pub rollout: Option<oasis_core::rollout::Rollout>,
    /// What the rollout did last or waits for, as the controller last said (empty where the
    /// controller does not run).
    #[serde(default)]
    pub progress: String,
    /// The newest generation's appliance part, if it has one, and where the appliance's own
    /// update to it stands.
    #[serde(default)]
    pub appliance: Option<crate::appliance_update::ApplianceUpdateView>,
}

/// The node generations of one appliance.
#[derive(Debug)]
pub struct NodeGenerations {
    store: Store,
    /// `DATA_DIR/generations`.
    dir: PathBuf,
    /// The boot root's `node/`: generation 0.
    shipped: PathBuf,
    keys: UpdateKeys,
    max_total_bytes: u64,
    /// One install at a time.
    installing: tokio::sync::Mutex<()>,
    /// What `oasis boot` last said of the appliance, as announced in the events.
    pub(crate) announced: std::sync::Mutex<Option<update::ApplianceHere>>,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn install_error(path: &Path) -> impl FnOnce(io::Error) -> GenerationsError + '_ {
    move |source| GenerationsError::Install { path: path.to_path_buf(), source }
}

/// fsyncs the directory `dir`.
fn sync_dir(dir: &Path) -> Result<(), GenerationsError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(install_error(dir))
}

impl NodeGenerations {
    /// The generations kept under `data_dir`, generation 0 being `shipped` (the boot root's `node/`).
    pub fn new(store: Store, data_dir: &Path, shipped: &Path, keys: UpdateKeys) -> NodeGenerations {
        NodeGenerations {
            store,
            dir: data_dir.join(GENERATIONS_DIR),
            shipped: shipped.to_path_buf(),
            keys,
            max_total_bytes: bundle::DEFAULT_MAX_TOTAL_BYTES,
            installing: tokio::sync::Mutex::new(()),
            announced: std::sync::Mutex::new(None),
        }
    }

    /// The largest total of member sizes a bundle may have.
    pub fn with_max_total_bytes(mut self, limit: u64) -> NodeGenerations {
        self.max_total_bytes = limit;
        self
    }

    /// The largest upload a bundle can be: its header, the largest manifest and the members.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_total_bytes + bundle::HEADER_BYTES as u64 + u64::from(bundle::MAX_MANIFEST_BYTES)
    }

    /// The store the generations are recorded in.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The directory of generation `sequence`.
    pub fn path_of(&self, sequence: u64) -> PathBuf {
        match sequence {
            SHIPPED => self.shipped.clone(),
            n => self.dir.join(n.to_string()),
        }
    }

    /// Removes what a crash left behind: staging directories, and generation directories the
    /// store's record does not list. Returns what it removed. Run at start, before any install.
    pub fn reconcile(&self) -> Result<Vec<PathBuf>, GenerationsError> {
        let record = self.store.generations()?;
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(GenerationsError::Install { path: self.dir.clone(), source }),
        };
        let mut removed = vec![];
        for entry in entries {
            let entry = entry.map_err(install_error(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let listed = name.parse::<u64>().is_ok_and(|n| n != SHIPPED && record.get(n).is_some());
            if name.starts_with(STAGING_PREFIX) || (name.parse::<u64>().is_ok() && !listed) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(install_error(&path))?;
                tracing::info!("removed {}, left by an interrupted install or prune", path.display());
                removed.push(path);
            }
        }
        for generation in &record.installed {
            let path = self.path_of(generation.sequence);
            if !path.is_dir() {
                tracing::warn!(
                    "generation {} is recorded but {} is missing: it cannot be served; apply its bundle again",
                    generation.sequence,
                    path.display()
                );
            }
        }
        Ok(removed)
    }

    /// The etcd package version of the shipped node image.
    fn shipped_etcd(&self) -> Result<String, GenerationsError> {
        let entries = artifacts::read(&self.shipped)
            .map_err(|e| GenerationsError::Shipped { path: self.shipped.clone(), source: Some(Box::new(e)) })?;
        artifacts::find(&entries, ETCD_FILE)
            .and_then(|e| e.version.clone())
            .ok_or_else(|| GenerationsError::Shipped { path: self.shipped.clone(), source: None })
    }

    /// Installs the bundle in the file `path` (streamed; see the module documentation).
    pub async fn apply_file(&self, path: &Path) -> Result<Applied, GenerationsError> {
        let file = fs::File::open(path).map_err(|source| GenerationsError::Open { path: path.into(), source })?;
        self.apply(file).await
    }

    /// The appliance disk this `oasis serve` runs from, as `oasis boot` wrote it at boot
    /// ([`APPLIANCE_FILE`] in the data directory); none off an appliance. An unreadable file is
    /// treated as none (a bundle's appliance part is then refused) and said in the log.
    pub(crate) fn appliance_here(&self) -> Option<update::ApplianceHere> {
        let path = self.dir.parent()?.join(APPLIANCE_FILE);
        let bytes = fs::read(&path).ok()?;
        serde_json::from_slice(&bytes)
            .map_err(|e| tracing::warn!("{} cannot be read ({e}); appliance updates are refused", path.display()))
            .ok()
    }

    /// Installs the bundle read from `reader` (see the module documentation).
    pub async fn apply(&self, reader: impl Read + Send + 'static) -> Result<Applied, GenerationsError> {
        let _one = self.installing.lock().await;
        let trusted = self.keys.load()?;
        let record = self.store.generations()?;
        let shipped_etcd = self.shipped_etcd()?;
        let rules = Rules { installed: record.installed_for_check(&shipped_etcd), appliance: self.appliance_here() };
        let (dir, limit) = (self.dir.clone(), self.max_total_bytes);
        let staged = tokio::task::spawn_blocking(move || stage(&dir, reader, &trusted, limit, &rules))
            .await
            .map_err(|_| GenerationsError::Stopped)??;
        let (manifest, key_id) = staged;
        let generation = Generation::of(&manifest, &key_id, now());
        // Installed into the record as it is when written: a rollout step since it was read
        // stays.
        let pruned_by_install = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (installed, summary, pruned_out) = (generation.clone(), manifest.summary(), pruned_by_install.clone());
        let change = move |record: &mut oasis_core::generations::Generations| {
            let (next, pruned) = record.with_installed(installed.clone());
            *record = next;
            let message = format!(
                "node generation {} installed from a bundle signed by key {}: {summary}{}",
                installed.sequence,
                installed.key_id,
                match pruned.is_empty() {
                    true => String::new(),
                    false => format!("; removed generations no longer kept: {pruned:?}"),
                }
            );
            *pruned_out.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = pruned;
            vec![Happening { kind: "generation-installed", mac: None, message }]
        };
        if let Err(e) = self.store.update_generations(change).await {
            // Not recorded: the old set stays; the directory goes (or at the next start).
            let _ = fs::remove_dir_all(self.path_of(manifest.sequence));
            return Err(e.into());
        }
        let pruned = std::mem::take(&mut *pruned_by_install.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for sequence in &pruned {
            let path = self.path_of(*sequence);
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!("cannot remove {} (removed at the next start): {e}", path.display());
            }
        }
        Ok(Applied { generation, summary: manifest.summary(), pruned })
    }

    /// The generations and each machine's, as the operator sees them.
    pub fn status(&self) -> Result<UpdateStatus, GenerationsError> {
        let record = self.store.generations()?;
        let shipped = GenerationView {
            sequence: SHIPPED,
            state: record.state(SHIPPED),
            version: "shipped".into(),
            kernel: bundle::bzimage_version(&self.shipped.join(oasis_image::payload::KERNEL)).ok().flatten(),
            etcd: self.shipped_etcd().ok(),
            k3s: None,
            installed_at: None,
            path: self.shipped.clone(),
        };
        let mut generations = vec![shipped];
        generations.extend(record.installed.iter().map(|g| GenerationView {
            sequence: g.sequence,
            state: record.state(g.sequence),
            version: g.version.clone(),
            kernel: Some(g.kernel.clone()),
            etcd: Some(g.etcd.clone()),
            k3s: g.k3s.clone(),
            installed_at: Some(g.installed_at),
            path: self.path_of(g.sequence),
        }));
        let mut machines: Vec<MachineView> = self
            .store
            .machines()?
            .into_iter()
            .map(|m| MachineView {
                mac: m.mac,
                served: record.served(m.mac),
                generations: record.machines.get(&m.mac).cloned().unwrap_or_default(),
            })
            .collect();
        machines.sort_by_key(|m| m.mac);
        Ok(UpdateStatus {
            current: record.current,
            previous: record.previous,
            highest_sequence: record.highest_sequence,
            generations,
            machines,
            rollout: record.rollout,
            progress: String::new(),
            appliance: self.appliance_update(),
        })
    }

    /// The artifact called `name` (e.g. `etcd`) of generation `sequence` as agents fetch it, with
    /// its file; `None` when the generation carries none. Read from its `artifacts.json`,
    /// verified when it was installed (and the agent checks every file's hash).
    pub fn artifact(&self, sequence: u64, name: &str) -> Result<Option<(Artifact, PathBuf)>, GenerationsError> {
        let dir = self.path_of(sequence);
        let entries = artifacts::read(&dir).map_err(|source| GenerationsError::Artifacts {
            sequence,
            path: dir.clone(),
            source: Box::new(source),
        })?;
        Ok(artifacts::find(&entries, name).map(|e| {
            let artifact = Artifact { sha256: e.sha256.clone(), size: e.size, path: e.file.clone(), mode: 0o644 };
            (artifact, dir.join(&e.file))
        }))
    }

    /// The file of an installed generation's artifact with this SHA-256, if any.
    pub fn artifact_file(&self, sha256: &str) -> Option<PathBuf> {
        let record = self.store.generations().ok()?;
        record.installed.iter().find_map(|g| {
            let dir = self.path_of(g.sequence);
            let entries = artifacts::read(&dir).ok()?;
            entries.into_iter().find(|e| e.sha256 == sha256).map(|e| dir.join(e.file))
        })
    }
}

/// Step 1 and 2: verifies the bundle from `reader` into a staging directory under `dir`, checked
/// against each of `rules`, completes it as a node image directory and renames it into place.
/// What a bundle is checked against: each installed generation a machine may run, and the
/// appliance disk `oasis serve` runs from (for a bundle's appliance part).
struct Rules {
    installed: Vec<update::Installed>,
    appliance: Option<update::ApplianceHere>,
}

fn stage(
    dir: &Path,
    reader: impl Read,
    trusted: &[VerifyingKey],
    max_total_bytes: u64,
    rules: &Rules,
) -> Result<(BundleManifest, String), GenerationsError> {
    fs::create_dir_all(dir).map_err(install_error(dir))?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let staging = dir.join(format!("{STAGING_PREFIX}{}-{nanos}", std::process::id()));
    let options = VerifyOptions { trusted, architecture: bundle::ARCHITECTURE, max_total_bytes };
    let accept = |manifest: &BundleManifest| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        for installed in &rules.installed {
            update::check_update(installed, manifest)?;
        }
        update::check_appliance(manifest, rules.appliance.as_ref())?;
        Ok(())
    };
    let verified = bundle::read_bundle(BufReader::new(reader), &options, &accept, Sink::Staging(&staging))?;
    let manifest = verified.manifest;
    let complete = || -> Result<PathBuf, GenerationsError> {
        artifacts::write(&staging, &manifest.artifact_entries()).map_err(|e| match e {
            ArtifactsError::Io(source) => GenerationsError::Write { path: staging.clone(), source: Box::new(source) },
            other => GenerationsError::Install { path: staging.clone(), source: io::Error::other(other.to_string()) },
        })?;
        let text = serde_json::to_vec_pretty(&manifest).expect("a bundle manifest serializes");
        let path = staging.join(MANIFEST_FILE);
        write_atomic(&path, &text).map_err(|source| GenerationsError::Write { path, source: Box::new(source) })?;
        let target = dir.join(manifest.sequence.to_string());
        if target.exists() {
            // Not in the record (its sequence is above every installed one): a crash's leftover.
            fs::remove_dir_all(&target).map_err(install_error(&target))?;
        }
        fs::rename(&staging, &target).map_err(install_error(&target))?;
        sync_dir(dir)?;
        Ok(target)
    };
    if let Err(e) = complete() {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok((manifest, verified.key_id))
}

#[cfg(test)]
#[path = "generations_tests.rs"]
pub(crate) mod tests;

//! The appliance's store: everything it knows, in one redb file in the data directory.
//!
//! Tables (schema version [`SCHEMA_VERSION`], kept in `meta`):
//! - `leases`: IPv4 address (u32) → [`Lease`] as JSON;
//! - `machines`: MAC (text) → [`Machine`] as JSON;
//! - `events`: sequence number → [`Event`] as JSON;
//! - `registry`: machine id → [`MachineRecord`] as JSON (registered machines; version 2);
//! - `secrets`: name → bytes (the appliance's keys and tokens, made at first start; version 2);
//! - `assembly`: `"assembly"` → the controller's [`Assembly`] as JSON (version 3);
//! - `boot_tokens`: MAC (text) → the [`BootToken`] its last boot script carried, as JSON (version 4);
//! - `generations`: `"generations"` → the node [`Generations`] installed and each machine's, as
//!   JSON (version 5).
//!
//! Since version 4 every value is sealed ([`seal`]): a checksum of its key and bytes, checked at
//! every read. Older stores are upgraded when opened: the newer tables made, every value sealed.
//!
//! Opening never writes before it has read and checked ([`check`]): the file is checked by redb
//! (every page's checksum) and every record's seal verified, on an overlay that leaves the file
//! untouched, and a damaged store is refused with its path and what to do. A missing or empty
//! store where one existed before (the marker [`STORE_MARKER`] or the admin token says so) is
//! refused too, never silently replaced by a new appliance. `oasis serve --new-store` starts
//! afresh and keeps what was there aside.
//!
//! All writes go through one writer thread that drains every write waiting, applies them in one
//! transaction and commits once (group commit, two-phase so a torn commit cannot be mistaken for
//! a good one), and only then tells each waiting caller its write is durable. Reads run
//! concurrently on read transactions. The writer keeps the events within [`EventLimits`],
//! aggregates events caused by unauthenticated clients per source ([`events::Tally`]), and
//! watches the data partition's free space ([`space`]): when it fills, lease renewals still
//! commit and everything else is refused with [`StoreError::Full`] until space returns.

mod check;
pub mod schema_copy;
mod seal;
pub mod space;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oasis_proto::MacAddr;
use oasis_pxe::dhcp::store::{Commit, LeaseStore, Sighting, StoreError as DhcpStoreError};
use oasis_pxe::dhcp::{Lease, LeaseState};
use oasis_pxe::http::{BootTarget, MachineDirectory};
use oasis_pxe::metrics::{ErrorKind, Metrics};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

pub use oasis_core::events::EventLimits;
use oasis_core::events::{self, Tally, TALLY_WINDOW};
pub use oasis_core::records::{BootMode, Event, Machine};
use space::{Change, DataPartition, Partition, Space};

use oasis_core::assembly::planner::Assembly;
use oasis_core::generations::Generations;
use oasis_core::registry::{BootToken, Happening, MachineRecord};

/// The version of the table layout and record formats this build reads and writes.
pub const SCHEMA_VERSION: u64 = 5;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const REGISTRY: TableDefinition<&str, &[u8]> = TableDefinition::new("registry");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const ASSEMBLY: TableDefinition<&str, &[u8]> = TableDefinition::new("assembly");
const ASSEMBLY_KEY: &str = "assembly";
const BOOT_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("boot_tokens");
const GENERATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("generations");
const GENERATIONS_KEY: &str = "generations";
/// `meta` keys beside the schema version: the bytes of the event records (kept so pruning by
/// size needs no scan) and the next event's sequence number (kept when pruning empties the table).
const EVENTS_BYTES: &str = "events_bytes";
const NEXT_EVENT: &str = "next_event";

/// Most writes folded into one commit.
const MAX_BATCH: usize = 4096;
/// Most machines kept: a machine record is made for every MAC seen network-booting, and MACs are
/// the client's to choose.
pub const MAX_MACHINES: u64 = 50_000;
/// How often the writer looks at the free space while nothing is written.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// At most one log line per this period about unreadable records.
const READ_ERROR_LOG_PERIOD: Duration = Duration::from_secs(60);

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "oasis.redb";
/// Written beside the store when it is made: without it, a missing store would look like a
/// first start.
pub const STORE_MARKER: &str = "oasis.redb.created";

/// What the operator does about a store that cannot be used.
const NEXT_STEP: &str = "restore it from a backup (with oasis stopped), or start afresh with `oasis serve \
                         --new-store`, which keeps what is there aside";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the store {path} is in use by another oasis process (is `oasis serve` running?)")]
    InUse { path: PathBuf },
    #[error("cannot open the store {path}")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("cannot open the store {path} (is the data partition mounted read-only?)")]
    Access { path: PathBuf, source: std::io::Error },
    #[error(
        "the store {path} has schema version {found}; this oasis understands up to {SCHEMA_VERSION}: run a newer oasis"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("the store {path} is damaged ({reason}); it was not opened and nothing in it was changed: {NEXT_STEP}")]
    Damaged { path: PathBuf, reason: String },
    #[error("the store {path} is missing or empty, but {evidence} shows this appliance had one: {NEXT_STEP}")]
    Lost { path: PathBuf, evidence: String },
    #[error("the store {path} is damaged: {table} record {key} is unreadable ({fault}): {NEXT_STEP}")]
    Record { path: PathBuf, table: &'static str, key: String, fault: String },
    #[error("the store {path} cannot be read ({reason}); it may be damaged: {NEXT_STEP}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "the data partition holding {dir} is full: new leases, registrations and events are refused until space \
         is freed there (lease renewals go on)"
    )]
    Full { dir: PathBuf },
    #[error("the store {path} is being reopened after a failed write; try again")]
    Reopening { path: PathBuf },
    #[error("cannot move {path} aside; check that the data partition is writable")]
    SetAside { path: PathBuf, source: std::io::Error },
    #[error("the store's database refused the operation")]
    Db(#[from] redb::Error),
    #[error("a record could not be encoded")]
    Encode(#[from] serde_json::Error),
    #[error("the store {path} could not record this{}", commit_next_step(source))]
    Commit { path: PathBuf, source: Arc<StoreError> },
    #[error("the store's writer has stopped")]
    WriterGone,
}

/// What to do about a failed commit, unless its cause says it already (damage does).
fn commit_next_step(cause: &StoreError) -> &'static str {
    if cause.is_damage() {
        ""
    } else {
        ": if the data partition is full, free space on it; otherwise check the disk (`dmesg`) and restart oasis"
    }
}

impl StoreError {
    /// Whether the store's file is at fault (damaged, lost, unreadable): the operator must act.
    pub fn is_damage(&self) -> bool {
        matches!(self, Self::Damaged { .. } | Self::Lost { .. } | Self::Record { .. } | Self::Unreadable { .. })
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                Self::Db(e.into())
            }
        }
    )*};
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A key as a person reads it in a message.
trait KeyText: redb::Key + 'static {
    fn text(key: &Self::SelfType<'_>) -> String;
}

impl KeyText for u32 {
    fn text(key: &u32) -> String {
        Ipv4Addr::from(*key).to_string()
    }
}

impl KeyText for u64 {
    fn text(key: &u64) -> String {
        format!("#{key}")
    }
}

impl KeyText for &'static str {
    fn text(key: &&str) -> String {
        format!("{:?}", events::truncate(key, 80))
    }
}

/// The bytes of a stored value under `key`, if its seal holds.
fn unseal<'v, K: KeyText>(
    path: &Path,
    table: &'static str,
    key: &K::SelfType<'_>,
    stored: &'v [u8],
) -> Result<&'v [u8], StoreError> {
    seal::unseal(K::as_bytes(key).as_ref(), stored).map_err(|fault| StoreError::Record {
        path: path.to_path_buf(),
        table,
        key: K::text(key),
        fault: fault.to_string(),
    })
}

/// A stored JSON record under `key`.
fn decode<K: KeyText, T: DeserializeOwned>(
    path: &Path,
    table: &'static str,
    key: &K::SelfType<'_>,
    stored: &[u8],
) -> Result<T, StoreError> {
    let bytes = unseal::<K>(path, table, key, stored)?;
    serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
        path: path.to_path_buf(),
        table,
        key: K::text(key),
        fault: format!("not a record this oasis reads: {e}"),
    })
}

/// Seals and stores `value` under `key`; returns the stored size.
fn put<K: redb::Key + 'static>(
    table: &mut redb::Table<K, &'static [u8]>,
    key: K::SelfType<'_>,
    value: &[u8],
) -> Result<u64, StoreError> {
    let sealed = seal::seal(K::as_bytes(&key).as_ref(), value);
    table.insert(key, sealed.as_slice())?;
    Ok(sealed.len() as u64)
}

/// Why a write was not committed, as its caller is told.
#[derive(Debug, Clone)]
enum Refused {
    Full,
    Failed(Arc<StoreError>),
}

type Reply = oneshot::Sender<Result<(), Refused>>;

/// A change of the node generations record and the events explaining it. `Fn`, not `FnOnce`: a
/// batch that fails to commit is written again one write at a time, from the record as it is.
type GenerationsChange = Box<dyn Fn(&mut Generations) -> Vec<Happening> + Send>;

enum Write {
    Lease(Lease, Reply),
    Sighting(Sighting),
    Boot(MacAddr),
    SetBoot(MacAddr, BootMode, Reply),
    Record(Box<MachineRecord>, Vec<Happening>, Reply),
    RemoveRecord(String, Happening, Reply),
    Event(Happening),
    /// An event caused by an unauthenticated client at this address: tallied.
    Untrusted(IpAddr, Happening),
    Assembly(Box<Assembly>, Vec<Happening>, Reply),
    BootToken(MacAddr, BootToken, Reply),
    Generations(Box<Generations>, Vec<Happening>, Reply),
    /// Change the node generations record as it is in the write's own transaction.
    UpdateGenerations(GenerationsChange, Reply),
    /// Write what the tally holds now (before a shutdown).
    Flush(Reply),
}

impl Write {
    fn reply(self, result: Result<(), Refused>) {
        match self {
            Write::Lease(_, reply)
            | Write::SetBoot(_, _, reply)
            | Write::Record(_, _, reply)
            | Write::RemoveRecord(_, _, reply)
            | Write::Assembly(_, _, reply)
            | Write::BootToken(_, _, reply)
            | Write::Generations(_, _, reply)
            | Write::UpdateGenerations(_, reply)
            | Write::Flush(reply) => {
                let _ = reply.send(result);
            }
            Write::Sighting(_) | Write::Boot(_) | Write::Event(_) | Write::Untrusted(..) => {}
        }
    }
}

/// How a store is opened.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub events: EventLimits,
    /// Start afresh if the store is damaged or lost, moving what is there aside.
    pub new_store: bool,
    /// Where unreadable records and writes refused for space are counted.
    pub metrics: Option<Arc<Metrics>>,
}

/// What the readers and the writer share.
#[derive(Debug)]
struct Shared {
    path: PathBuf,
    data_dir: PathBuf,
    /// `None` while the writer reopens the database after a failed write.
    db: RwLock<Option<Arc<Database>>>,
    /// Whether the data partition is full (the writer's [`Space`] decides).
    full: AtomicBool,
    /// Made by this open (a first start, or `--new-store`).
    new: bool,
    metrics: Option<Arc<Metrics>>,
    /// When an unreadable record was last logged.
    read_error_logged: Mutex<Option<Instant>>,
    /// Counts the commits: what follows the store live (the web page) waits on it.
    commits: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn count(&self, kind: ErrorKind) {
        if let Some(m) = &self.metrics {
            m.error(kind);
        }
    }

    /// A read failed: a storage error gets the path; damage is counted and logged, at most once
    /// a minute.
    fn read_failed(&self, e: StoreError) -> StoreError {
        let e = match e {
            StoreError::Db(source) => StoreError::Unreadable { path: self.path.clone(), reason: source.to_string() },
            other => other,
        };
        if e.is_damage() {
            self.count(ErrorKind::StoreRead);
            let mut logged = self.read_error_logged.lock().unwrap_or_else(|p| p.into_inner());
            if logged.is_none_or(|at| at.elapsed() >= READ_ERROR_LOG_PERIOD) {
                *logged = Some(Instant::now());
                tracing::error!("{e}", e = oasis_proto::error_chain(&e));
            }
        }
        e
    }
}

/// The store. Cheap to clone; all clones share one database and one writer.
///
/// Field order matters: when the last clone drops, its sender goes first, which ends the writer
/// thread, then the guard joins it, and only then is the database closed, so the file can be
/// opened again as soon as the last clone is gone.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<Write>,
    _writer: Arc<WriterThread>,
    shared: Arc<Shared>,
}

/// Joins the writer thread when the last [`Store`] clone is dropped.
struct WriterThread(Option<std::thread::JoinHandle<()>>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// What the check at open found in the data directory.
#[derive(Debug)]
enum Found {
    /// No store, and nothing saying there was one: a first start.
    New,
    /// A sound store of this schema version (`None`: nothing committed in it yet), with the
    /// events whose seals failed (dropped, and said so, once it is open).
    Existing { schema: Option<u64>, damaged_events: Vec<u64> },
}

/// Files saying a store existed in `data_dir`, if any.
fn evidence_of_a_store(data_dir: &Path) -> Option<String> {
    [STORE_MARKER, crate::identity::ADMIN_TOKEN_FILE]
        .iter()
        .map(|name| data_dir.join(name))
        .find(|p| p.exists())
        .map(|p| format!("{}", p.display()))
}

/// Checks the store in `data_dir` without writing to it.
fn inspect(data_dir: &Path, path: &Path) -> Result<Found, StoreError> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(source) => return Err(StoreError::Access { path: path.into(), source }),
    };
    if len == 0 {
        return match evidence_of_a_store(data_dir) {
            Some(evidence) => Err(StoreError::Lost { path: path.into(), evidence }),
            None => Ok(Found::New),
        };
    }
    let damaged = |reason: String| StoreError::Damaged { path: path.into(), reason };
    let db = match check::open_checked(path) {
        Ok(check::Checked::Sound(db)) => db,
        Ok(check::Checked::InUse) => return Err(StoreError::InUse { path: path.into() }),
        Ok(check::Checked::Damaged(reason)) => return Err(damaged(reason)),
        Err(source) => return Err(StoreError::Access { path: path.into(), source }),
    };
    scan(&db, path).map_err(|e| match e {
        StoreError::Db(source) => damaged(source.to_string()),
        other => other,
    })
}

/// Reads the schema version and verifies every record's seal (version 4 and later).
fn scan(db: &Database, path: &Path) -> Result<Found, StoreError> {
    let txn = db.begin_read()?;
    let schema = match txn.open_table(META) {
        Ok(meta) => meta.get("schema_version")?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut damaged_events = vec![];
    match schema {
        Some(found) if found > SCHEMA_VERSION => return Err(StoreError::TooNew { path: path.into(), found }),
        Some(found) if found >= 4 => {
            verify_seals::<u32>(&txn, LEASES, "leases", path, &mut |e| Err(e))?;
            for (table, name) in [
                (MACHINES, "machines"),
                (REGISTRY, "registry"),
                (SECRETS, "secrets"),
                (ASSEMBLY, "assembly"),
                (BOOT_TOKENS, "boot_tokens"),
                (GENERATIONS, "generations"),
            ] {
                verify_seals::<&str>(&txn, table, name, path, &mut |e| Err(e))?;
            }
            verify_seals::<u64>(&txn, EVENTS, "events", path, &mut |e| {
                if let StoreError::Record { key, .. } = &e {
                    if let Ok(seq) = key.trim_start_matches('#').parse() {
                        damaged_events.push(seq);
                        return Ok(());
                    }
                }
                Err(e)
            })?;
        }
        _ => {}
    }
    Ok(Found::Existing { schema, damaged_events })
}

/// Unseals every value of `table`; `bad` decides what a broken one means.
fn verify_seals<K: KeyText>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, &[u8]>,
    name: &'static str,
    path: &Path,
    bad: &mut dyn FnMut(StoreError) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for row in table.iter()? {
        let (k, v) = row?;
        let key = k.value();
        if let Err(e) = unseal::<K>(path, name, &key, v.value()) {
            bad(e)?;
        }
    }
    Ok(())
}

/// Moves the remains of a store aside (`NAME.old-UNIXTIME`), for `--new-store`.
fn set_aside(data_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let suffix = format!("old-{}", now());
    let mut moved = vec![];
    for name in [STORE_FILE, STORE_MARKER, crate::identity::ADMIN_TOKEN_FILE] {
        let from = data_dir.join(name);
        if !from.exists() {
            continue;
        }
        let to = data_dir.join(format!("{name}.{suffix}"));
        std::fs::rename(&from, &to).map_err(|source| StoreError::SetAside { path: from.clone(), source })?;
        moved.push(to);
    }
    Ok(moved)
}

/// Writes the marker that says a store exists here.
fn write_marker(data_dir: &Path) {
    let text = format!(
        "The store {STORE_FILE} was made here at {} (unix time). While this file is here, oasis refuses to start \
         without the store instead of starting as a new appliance: see `oasis serve --new-store`.\n",
        now()
    );
    if let Err(e) = oasis_image::manifest::write_atomic(&data_dir.join(STORE_MARKER), text.as_bytes()) {
        tracing::warn!("cannot write {}: {e}", data_dir.join(STORE_MARKER).display(), e = oasis_proto::error_chain(&e));
    }
}

/// Makes the tables of this schema in a new store.
fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    meta.insert("schema_version", SCHEMA_VERSION)?;
    txn.open_table(LEASES)?;
    txn.open_table(MACHINES)?;
    txn.open_table(EVENTS)?;
    txn.open_table(REGISTRY)?;
    txn.open_table(SECRETS)?;
    txn.open_table(ASSEMBLY)?;
    txn.open_table(BOOT_TOKENS)?;
    txn.open_table(GENERATIONS)?;
    Ok(())
}

/// Seals the values of a table written by a store before version 4, checking each parses.
fn reseal<K: KeyText>(
    txn: &redb::WriteTransaction,
    def: TableDefinition<K, &[u8]>,
    path: &Path,
    name: &'static str,
    check: fn(&[u8]) -> Result<(), serde_json::Error>,
) -> Result<u64, StoreError> {
    let mut table = txn.open_table(def)?;
    let mut rows = vec![];
    for row in table.iter()? {
        let (k, v) = row?;
        rows.push((K::as_bytes(&k.value()).as_ref().to_vec(), v.value().to_vec()));
    }
    let mut bytes = 0;
    for (key, value) in rows {
        check(&value).map_err(|e| StoreError::Record {
            path: path.into(),
            table: name,
            key: K::text(&K::from_bytes(&key)),
            fault: format!("not a record this oasis reads: {e}"),
        })?;
        bytes += put(&mut table, K::from_bytes(&key), &value)?;
    }
    Ok(bytes)
}

fn parses<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<T>(bytes).map(|_| ())
}

/// Upgrades a store of an older schema (or one with nothing committed) to this one.
fn upgrade(db: &Database, path: &Path, from: Option<u64>) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    if from.is_some_and(|v| v < 4) {
        reseal::<u32>(&txn, LEASES, path, "leases", parses::<Lease>)?;
        reseal::<&str>(&txn, MACHINES, path, "machines", parses::<Machine>)?;
        let events = reseal::<u64>(&txn, EVENTS, path, "events", parses::<Event>)?;
        reseal::<&str>(&txn, REGISTRY, path, "registry", parses::<MachineRecord>)?;
        reseal::<&str>(&txn, SECRETS, path, "secrets", |_| Ok(()))?;
        reseal::<&str>(&txn, ASSEMBLY, path, "assembly", parses::<Assembly>)?;
        let next = txn.open_table(EVENTS)?.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
        let mut meta = txn.open_table(META)?;
        meta.insert(EVENTS_BYTES, events)?;
        meta.insert(NEXT_EVENT, next)?;
    }
    create_tables(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Drops events whose seals failed, with an event saying so.
fn drop_damaged_events(db: &Database, damaged: &[u64]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    {
        let mut events = txn.open_table(EVENTS)?;
        let mut meta = txn.open_table(META)?;
        let mut bytes = meta.get(EVENTS_BYTES)?.map(|v| v.value()).unwrap_or(0);
        for seq in damaged {
            if let Some(v) = events.remove(*seq)? {
                bytes = bytes.saturating_sub(v.value().len() as u64);
            }
        }
        let list: Vec<String> = damaged.iter().take(20).map(|s| format!("#{s}")).collect();
        let message = format!(
            "{} damaged events were dropped when the store was opened: {}{}",
            damaged.len(),
            list.join(", "),
            if damaged.len() > 20 { ", …" } else { "" }
        );
        tracing::warn!("{message}");
        let last = events.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
        let seq = meta.get(NEXT_EVENT)?.map(|v| v.value()).unwrap_or(last).max(last);
        let e = Event { seq, at: now(), kind: "store-repaired".into(), mac: None, message };
        bytes += put(&mut events, seq, &serde_json::to_vec(&e)?)?;
        meta.insert(NEXT_EVENT, seq + 1)?;
        meta.insert(EVENTS_BYTES, bytes)?;
    }
    txn.commit()?;
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `data_dir` with default event limits.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `data_dir` and starts its writer thread. The file is
    /// checked before anything is written to it; see the module documentation.
    pub fn open_with(data_dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        Self::open_on(data_dir, options, DataPartition::new(data_dir))
    }

    /// [`Store::open_with`] on the data partition `partition` (a fake one in tests).
    pub(crate) fn open_on<P: Partition>(
        data_dir: &Path,
        options: StoreOptions,
        partition: P,
    ) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(STORE_FILE);
        // A store too new for this oasis, beside the copy made before a newer oasis upgraded it:
        // that version did not stay (its update fell back), and the copy is taken back.
        let mut taken_back = None;
        let inspected = match inspect(data_dir, &path) {
            Err(StoreError::TooNew { found, .. }) => {
                match schema_copy::take_back(data_dir, &path, found, SCHEMA_VERSION)? {
                    Some(message) => {
                        tracing::warn!("{message}");
                        taken_back = Some(message);
                        inspect(data_dir, &path)
                    }
                    None => Err(StoreError::TooNew { path: path.clone(), found }),
                }
            }
            other => other,
        };
        let found = match inspected {
            Err(refused @ (StoreError::Damaged { .. } | StoreError::Lost { .. } | StoreError::Record { .. }))
                if options.new_store =>
            {
                tracing::warn!("{refused}");
                let moved = set_aside(data_dir)?;
                let list: Vec<String> = moved.iter().map(|p| p.display().to_string()).collect();
                tracing::warn!("--new-store: starting afresh; kept aside: {}", list.join(", "));
                Found::New
            }
            other => other?,
        };
        if options.new_store && !matches!(found, Found::New) {
            tracing::info!("--new-store: the store {} is sound and is kept", path.display());
        }
        let open_err = |source| match source {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            source => StoreError::Open { path: path.clone(), source },
        };
        let new = matches!(found, Found::New);
        let db = match found {
            Found::New => {
                let db = Database::create(&path).map_err(open_err)?;
                let mut txn = db.begin_write()?;
                txn.set_two_phase_commit(true);
                create_tables(&txn)?;
                txn.commit()?;
                write_marker(data_dir);
                db
            }
            Found::Existing { schema, damaged_events } => {
                if let Some(older) = schema.filter(|s| *s != SCHEMA_VERSION) {
                    let copy = schema_copy::keep_before_upgrade(data_dir, &path, older)?;
                    tracing::info!(
                        "the store of schema version {older} is kept as {} before its upgrade",
                        copy.display()
                    );
                }
                let db = Database::open(&path).map_err(open_err)?;
                if schema != Some(SCHEMA_VERSION) {
                    upgrade(&db, &path, schema)?;
                    tracing::info!(
                        "the store {} was upgraded from schema version {} to {SCHEMA_VERSION}",
                        path.display(),
                        schema.unwrap_or(0)
                    );
                }
                if !damaged_events.is_empty() {
                    drop_damaged_events(&db, &damaged_events)?;
                }
                if !data_dir.join(STORE_MARKER).exists() {
                    write_marker(data_dir);
                }
                db
            }
        };
        let (space, change) = Space::new(partition);
        let shared = Arc::new(Shared {
            path,
            data_dir: data_dir.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            full: AtomicBool::new(space.is_full()),
            new,
            metrics: options.metrics.clone(),
            read_error_logged: Mutex::new(None),
            commits: tokio::sync::watch::channel(0).0,
        });
        let writer = Writer { shared: shared.clone(), limits: options.events, tally: Tally::new(TALLY_WINDOW), space };
        if let Some(change) = change {
            writer.announce(change);
        }
        let (writes, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|source| StoreError::DataDir { path: data_dir.to_path_buf(), source })?;
        let store = Self { writes, _writer: Arc::new(WriterThread(Some(thread))), shared };
        if let Some(message) = taken_back {
            store.record_event(Happening { kind: "store-taken-back", mac: None, message });
        }
        Ok(store)
    }

    /// Changes each time a batch of writes is committed (the number of commits so far): for
    /// what follows the store live, without reading it again and again.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Whether this open made the store (a first start, or `--new-store`).
    pub fn is_new(&self) -> bool {
        self.shared.new
    }

    /// Whether the data partition is full: only lease renewals are committed.
    pub fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let db = self.shared.db.read().unwrap_or_else(|p| p.into_inner());
        db.clone().ok_or_else(|| StoreError::Reopening { path: self.shared.path.clone() })
    }

    /// Runs `f` on a read transaction; failures get the store's path and damage is logged.
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = self.db().and_then(|db| {
            let txn = db.begin_read()?;
            f(&txn)
        });
        result.map_err(|e| self.shared.read_failed(e))
    }

    /// Every record of a JSON-valued table, in key order.
    fn all<K: KeyText, T: DeserializeOwned>(
        &self,
        def: TableDefinition<K, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(def)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                out.push(decode::<K, T>(&self.shared.path, name, &k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.all(LEASES, "leases")
    }

    pub fn machines(&self) -> Result<Vec<Machine>, StoreError> {
        self.all(MACHINES, "machines")
    }

    pub fn machine(&self, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
        let key = mac.to_string();
        self.read(|txn| match txn.open_table(MACHINES)?.get(key.as_str())? {
            Some(v) => Ok(Some(decode::<&str, _>(&self.shared.path, "machines", &key.as_str(), v.value())?)),
            None => Ok(None),
        })
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            for row in table.iter()?.rev().take(limit) {
                let (k, v) = row?;
                out.push(decode::<u64, Event>(&self.shared.path, "events", &k.value(), v.value())?);
            }
            out.reverse();
            Ok(out)
        })
    }

    pub fn records(&self) -> Result<Vec<MachineRecord>, StoreError> {
        self.all(REGISTRY, "registry")
    }

    /// The secret `name`, made by `make` and committed if the store has none yet. For startup,
    /// before anything else writes.
    pub fn secret_or_create(&self, name: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.secret_or_try_create(name, || Ok::<_, StoreError>(make()))
    }

    /// The secret `name`, or the one `make` makes, committed before it is returned. The one way
    /// to keep every secret made once (the identity, the cluster CA, and through
    /// [`Store::kept_secret`] the controller's certificates and k3s's secrets; a first write
    /// blocks for its commit): a maker that fails commits nothing (no empty secret that every
    /// later start would find unreadable), and the next start makes it again. A secret missing
    /// from a store that existed before this start is warned about: the appliance's own keys are
    /// made at its first start.
    pub fn secret_or_try_create<E: From<StoreError>>(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Vec<u8>, E> {
        self.secret_or_make(name, make, true)
    }

    /// [`Store::secret_or_try_create`]; `first_start` says the secret is made at the store's
    /// first start, so that its absence from an older store is worth a warning.
    fn secret_or_make<E: From<StoreError>>(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<Vec<u8>, E>,
        first_start: bool,
    ) -> Result<Vec<u8>, E> {
        if let Some(value) = self.secret(name)? {
            return Ok(value);
        }
        if self.is_full() {
            return Err(StoreError::Full { dir: self.shared.data_dir.clone() }.into());
        }
        if first_start && !self.is_new() {
            tracing::warn!("the store {} had no secret {name:?}: made a new one", self.shared.path.display());
        }
        let value = make()?;
        let commit = || -> Result<(), StoreError> {
            let db = self.db()?;
            let mut txn = db.begin_write()?;
            txn.set_two_phase_commit(true);
            put(&mut txn.open_table(SECRETS)?, name, &value)?;
            txn.commit()?;
            Ok(())
        };
        commit()?;
        Ok(value)
    }

    /// [`Store::secret_or_try_create`] for a secret kept as JSON: read back, or made by `make`
    /// and committed before it is used (a maker that fails commits nothing). A stored value
    /// this oasis cannot read is damage ([`StoreError::Record`]). For secrets made while the
    /// appliance runs (the cluster's), so one made on a store from an earlier start is no news.
    pub fn kept_secret<T: serde::Serialize + DeserializeOwned, E: From<StoreError>>(
        &self,
        name: &str,
        make: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut made = None;
        let make_json = || {
            let value = make()?;
            let bytes = serde_json::to_vec(&value).map_err(StoreError::from)?;
            made = Some(value);
            Ok::<_, E>(bytes)
        };
        let bytes = self.secret_or_make(name, make_json, false)?;
        if let Some(value) = made {
            return Ok(value);
        }
        let damaged = |e: serde_json::Error| StoreError::Record {
            path: self.shared.path.clone(),
            table: "secrets",
            key: name.to_string(),
            fault: format!("not a secret this oasis reads: {e}"),
        };
        Ok(serde_json::from_slice(&bytes).map_err(|e| self.shared.read_failed(damaged(e)))?)
    }

    /// Sets the secret `name` to `value`, committed before it returns: for a secret that changes
    /// while the appliance runs (a BMC user a machine's agent made). Blocks for the commit.
    pub fn replace_secret(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        if self.is_full() {
            return Err(StoreError::Full { dir: self.shared.data_dir.clone() });
        }
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_two_phase_commit(true);
        put(&mut txn.open_table(SECRETS)?, name, value)?;
        txn.commit()?;
        Ok(())
    }

    /// The secrets whose names start with `prefix`, with their names.
    pub fn secrets_under(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(SECRETS)?;
            let mut out = Vec::new();
            for row in table.range(prefix..)? {
                let (k, v) = row?;
                let name = k.value();
                if !name.starts_with(prefix) {
                    break;
                }
                out.push((name.to_string(), unseal::<&str>(&self.shared.path, "secrets", &name, v.value())?.to_vec()));
            }
            Ok(out)
        })
    }

    /// A secret, if the store has it.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| match txn.open_table(SECRETS)?.get(name)? {
            Some(v) => Ok(Some(unseal::<&str>(&self.shared.path, "secrets", &name, v.value())?.to_vec())),
            None => Ok(None),
        })
    }

    /// The lease record of `ip`, if the lease table has one.
    pub fn lease_at(&self, ip: Ipv4Addr) -> Result<Option<Lease>, StoreError> {
        let key = u32::from(ip);
        self.read(|txn| match txn.open_table(LEASES)?.get(key)? {
            Some(v) => Ok(Some(decode::<u32, _>(&self.shared.path, "leases", &key, v.value())?)),
            None => Ok(None),
        })
    }

    /// The address bound to `mac` at `now` (unix seconds) in the lease table, if it holds one.
    /// `likely` is looked at first (one read: the address a request came from, which is the
    /// answer whenever the request is honest); only otherwise is the whole table walked.
    pub fn bound_address(
        &self,
        mac: MacAddr,
        likely: Option<Ipv4Addr>,
        now: u64,
    ) -> Result<Option<Ipv4Addr>, StoreError> {
        let bound = |l: &Lease| l.mac == mac && l.state == LeaseState::Bound && l.expires > now;
        if let Some(ip) = likely {
            if self.lease_at(ip)?.is_some_and(|l| bound(&l)) {
                return Ok(Some(ip));
            }
        }
        Ok(self.leases()?.into_iter().find(bound).map(|l| l.ip))
    }

    /// The per-boot token `mac`'s last boot script carried, if one was issued.
    pub fn boot_token(&self, mac: MacAddr) -> Result<Option<BootToken>, StoreError> {
        let key = mac.to_string();
        self.read(|txn| match txn.open_table(BOOT_TOKENS)?.get(key.as_str())? {
            Some(v) => Ok(Some(decode::<&str, _>(&self.shared.path, "boot_tokens", &key.as_str(), v.value())?)),
            None => Ok(None),
        })
    }

    /// Commits the per-boot token of `mac`'s newest boot script (replacing the one before) and
    /// returns once it is durable. Blocks: for the HTTP boot directory, on the blocking pool.
    pub fn save_boot_token_blocking(&self, mac: MacAddr, token: BootToken) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(Write::BootToken(mac, token, tx)).map_err(|_| StoreError::WriterGone)?;
        self.outcome(rx.blocking_recv().map_err(|_| StoreError::WriterGone)?)
    }

    /// The controller's persisted state; the default before the first assembly step.
    pub fn assembly(&self) -> Result<Assembly, StoreError> {
        self.read(|txn| match txn.open_table(ASSEMBLY)?.get(ASSEMBLY_KEY)? {
            Some(v) => decode::<&str, _>(&self.shared.path, "assembly", &ASSEMBLY_KEY, v.value()),
            None => Ok(Assembly::default()),
        })
    }

    /// The node generations record; the default (only the shipped generation) before the first
    /// bundle is installed.
    pub fn generations(&self) -> Result<Generations, StoreError> {
        self.read(|txn| match txn.open_table(GENERATIONS)?.get(GENERATIONS_KEY)? {
            Some(v) => decode::<&str, _>(&self.shared.path, "generations", &GENERATIONS_KEY, v.value()),
            None => Ok(Generations::default()),
        })
    }

    /// Commits the node generations record and the events explaining the change; resolves once
    /// durable.
    pub async fn save_generations(
        &self,
        generations: Generations,
        happenings: Vec<Happening>,
    ) -> Result<(), StoreError> {
        self.send(|reply| Write::Generations(Box::new(generations), happenings, reply)).await
    }

    /// Changes the node generations record as it is when the write happens (not as it was read
    /// earlier: an install and a rollout step never undo each other) and commits it with the
    /// events `change` returns; resolves once durable.
    pub async fn update_generations(
        &self,
        change: impl Fn(&mut Generations) -> Vec<Happening> + Send + 'static,
    ) -> Result<(), StoreError> {
        self.send(|reply| Write::UpdateGenerations(Box::new(change), reply)).await
    }

    /// Commits the controller's state and the events explaining the change; resolves once durable.
    pub async fn save_assembly(&self, assembly: Assembly, happenings: Vec<Happening>) -> Result<(), StoreError> {
        self.send(|reply| Write::Assembly(Box::new(assembly), happenings, reply)).await
    }

    async fn send(&self, write: impl FnOnce(Reply) -> Write) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(write(tx)).map_err(|_| StoreError::WriterGone)?;
        self.outcome(rx.await.map_err(|_| StoreError::WriterGone)?)
    }

    /// What the writer's answer means to the caller.
    fn outcome(&self, answer: Result<(), Refused>) -> Result<(), StoreError> {
        match answer {
            Ok(()) => Ok(()),
            Err(Refused::Full) => Err(StoreError::Full { dir: self.shared.data_dir.clone() }),
            Err(Refused::Failed(source)) => Err(StoreError::Commit { path: self.shared.path.clone(), source }),
        }
    }

    /// Commits a machine record and the events about it; resolves once durable.
    pub async fn save_record(&self, record: MachineRecord, happenings: Vec<Happening>) -> Result<(), StoreError> {
        self.send(|reply| Write::Record(Box::new(record), happenings, reply)).await
    }

    /// Forgets a registered machine; resolves once durable.
    pub async fn remove_record(&self, id: String, happening: Happening) -> Result<(), StoreError> {
        self.send(|reply| Write::RemoveRecord(id, happening, reply)).await
    }

    /// Records an event without waiting for its commit.
    pub fn record_event(&self, happening: Happening) {
        let _ = self.writes.send(Write::Event(happening));
    }

    /// Records an event caused by an unauthenticated client at `source` (a refused registration,
    /// say), without waiting. The first of each kind from a source is recorded and logged; the
    /// repeats within [`TALLY_WINDOW`] are counted and written as one event when it ends (or
    /// when the store closes). Such events keep only [`events::MAX_MESSAGE`] bytes of message.
    pub fn record_untrusted(&self, source: IpAddr, happening: Happening) {
        let _ = self.writes.send(Write::Untrusted(source, happening));
    }

    /// Writes the counts of repeated events from unauthenticated sources now, rather than when
    /// their window ends; for a clean shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.send(Write::Flush).await
    }

    /// Commits a lease; resolves once durable.
    pub async fn save_lease(&self, lease: Lease) -> Result<(), StoreError> {
        self.send(|reply| Write::Lease(lease, reply)).await
    }

    /// Marks a machine to boot from the network or from its disk; resolves once durable.
    pub async fn set_boot_mode(&self, mac: MacAddr, mode: BootMode) -> Result<(), StoreError> {
        self.send(|reply| Write::SetBoot(mac, mode, reply)).await
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::DataDir { path: dir.to_path_buf(), source })
}

/// The writer thread's state.
struct Writer<P: Partition> {
    shared: Arc<Shared>,
    limits: EventLimits,
    tally: Tally,
    space: Space<P>,
}

impl<P: Partition> Writer<P> {
    /// One transaction and one commit per batch of waiting writes, until every sender is gone;
    /// then what the tally still holds is written.
    fn run(mut self, queue: mpsc::Receiver<Write>) {
        loop {
            let wait = match self.tally.next_due() {
                Some(due) => due.saturating_duration_since(Instant::now()).min(IDLE_CHECK),
                None => IDLE_CHECK,
            };
            let mut batch = match queue.recv_timeout(wait) {
                Ok(first) => vec![first],
                Err(mpsc::RecvTimeoutError::Timeout) => vec![],
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            self.commit(batch, Some(Instant::now()));
        }
        self.commit(vec![], None);
    }

    fn announce(&self, change: Change) {
        let dir = self.space.dir().display();
        match change {
            Change::Filled { available } => {
                self.shared.full.store(true, Ordering::Relaxed);
                tracing::error!(
                    "the data partition holding {dir} is full ({available} bytes free): lease renewals go on; new \
                     leases, registrations and events are refused until space is freed there"
                );
            }
            Change::Recovered { available } => {
                self.shared.full.store(false, Ordering::Relaxed);
                tracing::warn!(
                    "the data partition holding {dir} has space again ({available} bytes free): every write is \
                     accepted again"
                );
            }
        }
    }

    /// Applies `batch` (and the tally's due events; all of them when `now` is `None`).
    fn commit(&mut self, batch: Vec<Write>, now: Option<Instant>) {
        let flush = batch.iter().any(|w| matches!(w, Write::Flush(_)));
        let now = now.filter(|_| !flush);
        let mut events = vec![];
        let mut writes = vec![];
        for write in batch {
            match write {
                Write::Untrusted(source, h) => {
                    if let Some(first) = self.tally.note(source, h, now.unwrap_or_else(Instant::now)) {
                        tracing::warn!(kind = first.kind, "{}", first.message);
                        events.push(first);
                    }
                }
                other => writes.push(other),
            }
        }
        for aggregate in self.tally.due(now) {
            tracing::warn!(kind = aggregate.kind, "{}", aggregate.message);
            events.push(aggregate);
        }
        if let Some(change) = self.space.check() {
            self.announce(change);
        }
        if writes.is_empty() && events.is_empty() {
            return;
        }
        let db = match self.database() {
            Ok(db) => db,
            Err(e) => {
                let why = Arc::new(e);
                for w in writes {
                    w.reply(Err(Refused::Failed(why.clone())));
                }
                return;
            }
        };
        let full = self.space.is_full();
        match apply(&db, &self.shared.path, Group { writes: &writes, untrusted: &events, full }, &self.limits) {
            Ok(applied) => self.reply(writes, &applied, Ok(())),
            Err(e) if no_space(&e) => {
                tracing::error!(
                    "a commit of {} writes failed for lack of space: {}",
                    writes.len(),
                    oasis_proto::error_chain(&e)
                );
                drop(db);
                if let Some(change) = self.space.no_space() {
                    self.announce(change);
                }
                self.reopen();
                // Renewals only, now that the reserve is free.
                let renewals = Group { writes: &writes, untrusted: &[], full: true };
                match self.database().and_then(|db| apply(&db, &self.shared.path, renewals, &self.limits)) {
                    Ok(applied) => self.reply(writes, &applied, Ok(())),
                    Err(why) => {
                        tracing::error!(
                            "the renewals could not be committed either: {}",
                            oasis_proto::error_chain(&why)
                        );
                        self.reopen();
                        self.reply(writes, &[], Err(Refused::Failed(Arc::new(why))));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    "store commit of {} writes failed: {}; committing each alone",
                    writes.len(),
                    oasis_proto::error_chain(&e)
                );
                drop(db);
                // redb fails every call after a failed write until the database is reopened.
                self.reopen();
                self.commit_each(writes, events, full);
            }
        }
    }

    /// Commits the writes of a failed group one by one, so a write that fails fails alone and
    /// its caller is told why; the failure is recorded as an event when the store can take one.
    fn commit_each(&mut self, writes: Vec<Write>, events: Vec<Happening>, full: bool) {
        if !events.is_empty() {
            if let Err(e) = self.commit_alone(&[], &events, full) {
                tracing::error!("the tallied events were not written: {}", oasis_proto::error_chain(&e));
            }
        }
        for write in writes {
            let result = match self.commit_alone(std::slice::from_ref(&write), &[], full) {
                Ok(applied) if applied.first().copied().unwrap_or(true) => Ok(()),
                Ok(_) => {
                    self.shared.count(ErrorKind::StoreFull);
                    Err(Refused::Full)
                }
                Err(e) => {
                    let message = format!("a write was refused: {}", oasis_proto::error_chain(&e));
                    tracing::error!("{message}");
                    let event = Happening { kind: "store-write-failed", mac: None, message };
                    if let Err(e) = self.commit_alone(&[], &[event], full) {
                        tracing::error!("the failure could not be recorded: {}", oasis_proto::error_chain(&e));
                    }
                    Err(Refused::Failed(Arc::new(e)))
                }
            };
            write.reply(result);
        }
    }

    /// One transaction of `writes` and `events`; a failure reopens the database for the next.
    fn commit_alone(&self, writes: &[Write], events: &[Happening], full: bool) -> Result<Vec<bool>, StoreError> {
        let group = Group { writes, untrusted: events, full };
        let result = self.database().and_then(|db| apply(&db, &self.shared.path, group, &self.limits));
        if result.is_err() {
            self.reopen();
        }
        result
    }

    /// Tells each caller: `result` to the applied ones, `Full` to the ones refused for space.
    fn reply(&self, writes: Vec<Write>, applied: &[bool], result: Result<(), Refused>) {
        if result.is_ok() {
            self.shared.commits.send_modify(|n| *n += 1);
        }
        for (i, write) in writes.into_iter().enumerate() {
            if result.is_ok() && !applied.get(i).copied().unwrap_or(false) {
                self.shared.count(ErrorKind::StoreFull);
                write.reply(Err(Refused::Full));
            } else {
                write.reply(result.clone());
            }
        }
    }

    /// The database, reopened first if a failed write closed it.
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.shared.db.read().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(db);
        }
        self.reopen();
        self.shared
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Reopening { path: self.shared.path.clone() })
    }

    /// Closes the database and opens it again. Readers get `Reopening` meanwhile; the close
    /// waits for the reads in progress to finish (they hold the database for one read each).
    fn reopen(&self) {
        let old = self.shared.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
        let path = &self.shared.path;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Database::open(path) {
                Ok(db) => {
                    *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
                    tracing::info!("the store {} was reopened", path.display());
                    return;
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    let e = oasis_proto::error_chain(&e);
                    tracing::error!("cannot reopen the store {}: {e}; retrying at the next write", path.display());
                    return;
                }
            }
        }
    }
}

/// Whether a write failed for lack of space.
fn no_space(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(redb::Error::Io(io)) if space::is_no_space(io))
}

/// Whether a lease write renews a lease the client already holds: the same address, the same
/// client, bound before and after. The record is rewritten at the same size.
fn renews(previous: Option<&Lease>, lease: &Lease) -> bool {
    previous.is_some_and(|p| p.mac == lease.mac && p.state == LeaseState::Bound && lease.state == LeaseState::Bound)
}

/// The tables of one write transaction, and the events it adds.
struct Tables<'t> {
    leases: redb::Table<'t, u32, &'static [u8]>,
    machines: redb::Table<'t, &'static str, &'static [u8]>,
    events: redb::Table<'t, u64, &'static [u8]>,
    registry: redb::Table<'t, &'static str, &'static [u8]>,
    assembly: redb::Table<'t, &'static str, &'static [u8]>,
    boot_tokens: redb::Table<'t, &'static str, &'static [u8]>,
    generations: redb::Table<'t, &'static str, &'static [u8]>,
    meta: redb::Table<'t, &'static str, u64>,
    next_seq: u64,
    /// Bytes of the events added.
    added: u64,
    /// Only lease renewals are written, and no event.
    full: bool,
    /// The store's file, named by the errors.
    path: &'t Path,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t redb::WriteTransaction, full: bool, path: &'t Path) -> Result<Tables<'t>, StoreError> {
        let meta = txn.open_table(META)?;
        let events = txn.open_table(EVENTS)?;
        let next_seq = match meta.get(NEXT_EVENT)? {
            Some(v) => v.value(),
            None => events.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1),
        };
        Ok(Tables {
            leases: txn.open_table(LEASES)?,
            machines: txn.open_table(MACHINES)?,
            events,
            registry: txn.open_table(REGISTRY)?,
            assembly: txn.open_table(ASSEMBLY)?,
            boot_tokens: txn.open_table(BOOT_TOKENS)?,
            generations: txn.open_table(GENERATIONS)?,
            meta,
            next_seq,
            added: 0,
            full,
            path,
        })
    }

    fn event(&mut self, kind: &str, mac: Option<MacAddr>, message: String) -> Result<(), StoreError> {
        if self.full {
            return Ok(());
        }
        let e = Event { seq: self.next_seq, at: now(), kind: kind.to_string(), mac, message };
        self.added += put(&mut self.events, self.next_seq, &serde_json::to_vec(&e)?)?;
        self.next_seq += 1;
        Ok(())
    }

    fn happenings(&mut self, happenings: &[Happening]) -> Result<(), StoreError> {
        for h in happenings {
            self.event(h.kind, h.mac, h.message.clone())?;
        }
        Ok(())
    }

    /// Applies one write; returns whether it was (when full, only a renewal is).
    fn write(&mut self, write: &Write) -> Result<bool, StoreError> {
        match write {
            Write::Lease(lease, _) => return self.lease(lease),
            _ if self.full => return Ok(false),
            Write::Sighting(s) => self.sighting(s)?,
            Write::Boot(mac) => self.update_machine(*mac, |m| {
                m.boot_count += 1;
                m.last_seen = now();
            })?,
            Write::SetBoot(mac, mode, _) => {
                self.update_machine(*mac, |m| m.boot = *mode)?;
                self.event("boot-mode", Some(*mac), format!("{mac} will boot from {mode:?}").to_lowercase())?;
            }
            Write::Record(record, happenings, _) => {
                put(&mut self.registry, record.id.as_str(), &serde_json::to_vec(record)?)?;
                self.happenings(happenings)?;
            }
            Write::RemoveRecord(id, h, _) => {
                self.registry.remove(id.as_str())?;
                self.happenings(std::slice::from_ref(h))?;
            }
            Write::Event(h) => self.happenings(std::slice::from_ref(h))?,
            Write::Untrusted(..) | Write::Flush(_) => {}
            Write::Assembly(a, happenings, _) => {
                put(&mut self.assembly, ASSEMBLY_KEY, &serde_json::to_vec(a)?)?;
                self.happenings(happenings)?;
            }
            Write::BootToken(mac, token, _) => {
                put(&mut self.boot_tokens, mac.to_string().as_str(), &serde_json::to_vec(token)?)?;
            }
            Write::Generations(g, happenings, _) => {
                put(&mut self.generations, GENERATIONS_KEY, &serde_json::to_vec(g)?)?;
                self.happenings(happenings)?;
            }
            Write::UpdateGenerations(change, _) => {
                let mut record = match self.generations.get(GENERATIONS_KEY)? {
                    Some(v) => decode::<&str, Generations>(self.path, "generations", &GENERATIONS_KEY, v.value())?,
                    None => Generations::default(),
                };
                let happenings = change(&mut record);
                put(&mut self.generations, GENERATIONS_KEY, &serde_json::to_vec(&record)?)?;
                self.happenings(&happenings)?;
            }
        }
        Ok(true)
    }

    /// A lease, and the event of its change. When full, only a renewal is written.
    fn lease(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let key = u32::from(lease.ip);
        // The DHCP server decided this address's lease; an unreadable old one is replaced.
        let previous: Option<Lease> = match self.leases.get(key)? {
            Some(v) => decode::<u32, Lease>(self.path, "leases", &key, v.value()).ok(),
            None => None,
        };
        if self.full {
            let renewal = renews(previous.as_ref(), lease);
            if renewal {
                put(&mut self.leases, key, &serde_json::to_vec(lease)?)?;
            }
            return Ok(renewal);
        }
        put(&mut self.leases, key, &serde_json::to_vec(lease)?)?;
        let changed = previous.as_ref().is_none_or(|p| p.mac != lease.mac || p.state != lease.state);
        if changed {
            let (kind, what) = match lease.state {
                LeaseState::Bound => ("lease-bound", "leased"),
                LeaseState::Released => ("lease-released", "released"),
                LeaseState::Declined => ("lease-declined", "declined (in use elsewhere)"),
            };
            self.event(kind, Some(lease.mac), format!("{} {what} {}", lease.mac, lease.ip))?;
        }
        if lease.state == LeaseState::Bound {
            self.update_machine(lease.mac, |m| m.last_ip = Some(lease.ip))?;
        }
        Ok(true)
    }

    /// The machine stored under `mac`; an unreadable record is an error, never replaced.
    fn machine(&self, key: &str) -> Result<Option<Machine>, StoreError> {
        match self.machines.get(key)? {
            Some(v) => Ok(Some(decode::<&str, Machine>(self.path, "machines", &key, v.value())?)),
            None => Ok(None),
        }
    }

    fn sighting(&mut self, s: &Sighting) -> Result<(), StoreError> {
        let key = s.mac.to_string();
        let t = now();
        let machine = match self.machine(&key)? {
            Some(mut m) => {
                m.last_seen = t;
                m.arch = s.arch.or(m.arch);
                m.vendor_class = s.vendor_class.clone().or(m.vendor_class);
                m.last_ip = s.ip.or(m.last_ip);
                m
            }
            None if self.machines.len()? >= MAX_MACHINES => return Ok(()),
            None => {
                self.event("machine-seen", Some(s.mac), format!("new machine {} network-booting", s.mac))?;
                Machine {
                    mac: s.mac,
                    arch: s.arch,
                    vendor_class: s.vendor_class.clone(),
                    first_seen: t,
                    last_seen: t,
                    boot_count: 0,
                    last_ip: s.ip,
                    boot: BootMode::Network,
                }
            }
        };
        put(&mut self.machines, key.as_str(), &serde_json::to_vec(&machine)?)?;
        Ok(())
    }

    /// Changes the machine under `mac`, made first if there is none (and room for it).
    fn update_machine(&mut self, mac: MacAddr, change: impl FnOnce(&mut Machine)) -> Result<(), StoreError> {
        let key = mac.to_string();
        let existing = self.machine(&key)?;
        if existing.is_none() && self.machines.len()? >= MAX_MACHINES {
            return Ok(());
        }
        let t = now();
        let mut machine = existing.unwrap_or(Machine {
            mac,
            arch: None,
            vendor_class: None,
            first_seen: t,
            last_seen: t,
            boot_count: 0,
            last_ip: None,
            boot: BootMode::Network,
        });
        change(&mut machine);
        put(&mut self.machines, key.as_str(), &serde_json::to_vec(&machine)?)?;
        Ok(())
    }

    /// Prunes the events to `limits` and keeps the counters.
    fn finish(mut self, limits: &EventLimits) -> Result<(), StoreError> {
        if !self.full {
            let bytes = self.meta.get(EVENTS_BYTES)?.map(|v| v.value()).unwrap_or(0) + self.added;
            let bytes = prune(&mut self.events, bytes, limits)?;
            self.meta.insert(EVENTS_BYTES, bytes)?;
            self.meta.insert(NEXT_EVENT, self.next_seq)?;
        }
        Ok(())
    }
}

/// What one group commit writes.
struct Group<'a> {
    writes: &'a [Write],
    untrusted: &'a [Happening],
    full: bool,
}

/// Applies the writes and `untrusted` events in one transaction; returns which writes were
/// applied. When `full`, only lease renewals are, and no event is written.
fn apply(db: &Database, path: &Path, group: Group<'_>, limits: &EventLimits) -> Result<Vec<bool>, StoreError> {
    let Group { writes, untrusted, full } = group;
    if full && !writes.iter().any(|w| matches!(w, Write::Lease(..))) {
        return Ok(vec![false; writes.len()]);
    }
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    let mut applied = Vec::with_capacity(writes.len());
    {
        let mut tables = Tables::open(&txn, full, path)?;
        for write in writes {
            applied.push(tables.write(write)?);
        }
        tables.happenings(untrusted)?;
        tables.finish(limits)?;
    }
    txn.commit()?;
    Ok(applied)
}

/// Removes the oldest events until the table is within `limits`; returns the bytes left.
fn prune(
    events: &mut redb::Table<u64, &'static [u8]>,
    mut bytes: u64,
    limits: &EventLimits,
) -> Result<u64, StoreError> {
    let oldest_kept = now().saturating_sub(limits.max_age.as_secs());
    loop {
        let over = events.len()? > limits.max_count || bytes > limits.max_bytes;
        let too_old = match events.first()? {
            None => return Ok(0),
            Some((k, v)) => match decode::<u64, Event>(Path::new(""), "events", &k.value(), v.value()) {
                Ok(e) => e.at < oldest_kept,
                // A damaged event is the first to go.
                Err(_) => true,
            },
        };
        if !(over || too_old) {
            return Ok(bytes);
        }
        if let Some((_, v)) = events.pop_first()? {
            bytes = bytes.saturating_sub(v.value().len() as u64);
        }
    }
}

impl LeaseStore for Store {
    fn load_leases(&self) -> Result<Vec<Lease>, DhcpStoreError> {
        Ok(self.leases()?)
    }

    fn save_lease(&self, lease: Lease) -> Commit {
        let store = self.clone();
        Box::pin(async move { Ok(Store::save_lease(&store, lease).await?) })
    }

    fn record_sighting(&self, sighting: Sighting) {
        let _ = self.writes.send(Write::Sighting(sighting));
    }
}

impl MachineDirectory for Store {
    fn boot_target(&self, mac: MacAddr) -> BootTarget {
        match self.machine(mac) {
            Ok(Some(m)) if m.boot == BootMode::Local => BootTarget::LocalDisk,
            Ok(_) => BootTarget::Network,
            Err(e) => {
                tracing::debug!(%mac, "cannot read the machine's boot mode, booting it from the network: {e}", e = oasis_proto::error_chain(&e));
                BootTarget::Network
            }
        }
    }

    fn record_boot(&self, mac: MacAddr) {
        let _ = self.writes.send(Write::Boot(mac));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(last: u8, mac_last: u8, state: LeaseState) -> Lease {
        Lease {
            ip: Ipv4Addr::new(10, 0, 0, last),
            mac: MacAddr([0x52, 0x54, 0, 0, 0, mac_last]),
            state,
            expires: 5000,
            updated: 1000,
        }
    }

    fn sha(path: &Path) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
    }

    /// Where `needle` is in `haystack`, every time.
    fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
        haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).collect()
    }

    fn happening(message: &str) -> Happening {
        Happening { kind: "registration-refused", mac: None, message: message.into() }
    }

    /// The machines record of `mac`, as stored (sealed).
    fn raw_machine(store: &Store, mac: MacAddr) -> Vec<u8> {
        let db = store.db().unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(MACHINES).unwrap();
        let value = table.get(mac.to_string().as_str()).unwrap().unwrap().value().to_vec();
        value
    }

    /// Issue 14: a machine record that could not be read was replaced by a new one (its history
    /// lost without a word), and one failing write failed every write committed with it.
    #[tokio::test]
    async fn an_unreadable_record_is_kept_and_its_write_alone_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let damaged_mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        {
            let db = store.db().unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            {
                let mut machines = txn.open_table(MACHINES).unwrap();
                let key = damaged_mac.to_string();
                let mut value = machines.get(key.as_str()).unwrap().unwrap().value().to_vec();
                let last = value.len() - 1;
                value[last] ^= 0x01;
                machines.insert(key.as_str(), value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let damaged = raw_machine(&store, damaged_mac);
        // Sent together, so the writer may take them in one group.
        let (refused, other) = tokio::join!(
            store.set_boot_mode(damaged_mac, BootMode::Local),
            store.save_lease(lease(101, 2, LeaseState::Bound))
        );
        other.expect("an unrelated write is committed");
        let err = refused.expect_err("the write on the unreadable record fails");
        let text = oasis_proto::error_chain(&err);
        let path = dir.path().join(STORE_FILE).display().to_string();
        assert!(text.starts_with(&format!("the store {path} could not record this")), "{text}");
        assert!(text.contains(&format!("machines record \"{damaged_mac}\" is unreadable")), "{text}");
        assert_eq!(raw_machine(&store, damaged_mac), damaged, "the unreadable record is kept as it was");
        assert!(store.leases().unwrap().iter().any(|l| l.ip == Ipv4Addr::new(10, 0, 0, 101)));
        let events = store.events(100).unwrap();
        let failed: Vec<&Event> = events.iter().filter(|e| e.kind == "store-write-failed").collect();
        assert_eq!(failed.len(), 1, "{events:?}");
        assert!(failed[0].message.contains(&format!("machines record \"{damaged_mac}\"")), "{}", failed[0].message);
    }

    #[tokio::test]
    async fn committed_leases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
            store.save_lease(lease(101, 2, LeaseState::Bound)).await.unwrap();
            store.save_lease(lease(101, 2, LeaseState::Released)).await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut leases = store.leases().unwrap();
        leases.sort_by_key(|l| l.ip);
        assert_eq!(leases, vec![lease(100, 1, LeaseState::Bound), lease(101, 2, LeaseState::Released)]);
        let kinds: Vec<String> = store.events(10).unwrap().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["lease-bound", "lease-bound", "lease-released"]);
    }

    #[tokio::test]
    async fn concurrent_writes_are_grouped_and_all_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let writes = (0..200u32).map(|i| {
            let store = store.clone();
            let l = Lease { ip: Ipv4Addr::from(0x0a00_0000 + i), ..lease(0, (i % 250) as u8, LeaseState::Bound) };
            tokio::spawn(async move { store.save_lease(l).await })
        });
        for w in writes {
            w.await.unwrap().unwrap();
        }
        assert_eq!(store.leases().unwrap().len(), 200);
    }

    #[tokio::test]
    async fn machines_are_recorded_and_can_be_told_to_boot_locally() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 9]);
        store.record_sighting(Sighting { mac, arch: Some(7), vendor_class: Some("PXEClient".into()), ip: None });
        store.record_boot(mac);
        store.record_boot(mac);
        assert_eq!(store.boot_target(mac), BootTarget::Network);
        store.set_boot_mode(mac, BootMode::Local).await.unwrap();
        let m = store.machine(mac).unwrap().unwrap();
        assert_eq!((m.arch, m.boot_count, m.boot, m.firmware()), (Some(7), 2, BootMode::Local, "uefi-x64"));
        assert_eq!(store.boot_target(mac), BootTarget::LocalDisk);
    }

    #[tokio::test]
    async fn boot_tokens_are_kept_per_mac_and_bound_addresses_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (one, two) = (MacAddr([0x52, 0x54, 0, 0, 0, 1]), MacAddr([0x52, 0x54, 0, 0, 0, 2]));
        let token =
            |n: &str| BootToken { sha256: n.into(), issued_to: Some(Ipv4Addr::new(10, 0, 0, 100)), issued_at: 1 };
        let writer = store.clone();
        tokio::task::spawn_blocking(move || {
            writer.save_boot_token_blocking(one, token("a")).unwrap();
            writer.save_boot_token_blocking(one, token("b")).unwrap();
        })
        .await
        .unwrap();
        assert_eq!(store.boot_token(one).unwrap(), Some(token("b")), "the newest replaces the one before");
        assert_eq!(store.boot_token(two).unwrap(), None);

        store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        store.save_lease(lease(101, 2, LeaseState::Released)).await.unwrap();
        let (at_100, at_101) = (Some(Ipv4Addr::new(10, 0, 0, 100)), Some(Ipv4Addr::new(10, 0, 0, 101)));
        assert_eq!(store.bound_address(one, at_100, 4999).unwrap(), at_100);
        assert_eq!(store.bound_address(one, at_101, 4999).unwrap(), at_100, "found when asked from elsewhere");
        assert_eq!(store.bound_address(one, None, 4999).unwrap(), at_100);
        assert_eq!(store.bound_address(one, at_100, 5000).unwrap(), None, "expired");
        assert_eq!(store.bound_address(two, at_101, 1).unwrap(), None, "released");
    }

    #[test]
    fn a_second_process_is_told_the_store_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::InUse { .. })));
    }

    /// Issue 13, defect 6: the old open committed before it read anything, so even a refused
    /// start changed the file.
    #[test]
    fn a_newer_schema_is_refused_without_a_byte_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema_version", SCHEMA_VERSION + 1).unwrap();
            txn.commit().unwrap();
        }
        let before = sha(&path);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("run a newer oasis"), "{err}");
        assert_eq!(sha(&path), before, "the refused store is left as it was");
    }

    /// Issue 13, defect 6: one flipped bit inside a lease record that stays valid JSON was served
    /// as true.
    #[tokio::test]
    async fn a_flipped_bit_in_a_stored_lease_is_refused_at_open_and_the_file_left_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(151, 1, LeaseState::Bound)).await.unwrap();
        }
        let path = dir.path().join(STORE_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = find_all(&bytes, br#""ip":"10.0.0.151""#);
        assert!(!at.is_empty(), "the lease is in the file");
        for i in at {
            // '1' → '0': one bit, and the record is still valid JSON (10.0.0.150).
            bytes[i + 15] ^= 0x01;
        }
        std::fs::write(&path, &bytes).unwrap();
        let before = sha(&path);
        match Store::open(dir.path()) {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains(&path.display().to_string()), "names the file: {text}");
                assert!(text.contains("--new-store") && text.contains("restore"), "says what to do: {text}");
            }
            Ok(store) => panic!("the damaged store was opened; its leases: {:?}", store.leases()),
        }
        assert_eq!(sha(&path), before, "the refused store is left as it was");
    }

    /// A record changed underneath redb's page checksums (a rotted byte copied into a new page
    /// by a write, say) is caught by its seal, named by table and key.
    #[tokio::test]
    async fn a_lease_changed_under_valid_page_checksums_is_caught_by_its_seal() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(151, 1, LeaseState::Bound)).await.unwrap();
        }
        {
            let db = Database::open(dir.path().join(STORE_FILE)).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            {
                let mut leases = txn.open_table(LEASES).unwrap();
                let key = u32::from(Ipv4Addr::new(10, 0, 0, 151));
                let mut value = leases.get(key).unwrap().unwrap().value().to_vec();
                let at = find_all(&value, b"10.0.0.151")[0];
                value[at + 9] ^= 0x01;
                leases.insert(key, value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        match Store::open(dir.path()) {
            Err(StoreError::Record { table, key, .. }) => assert_eq!((table, key.as_str()), ("leases", "10.0.0.151")),
            Err(e) => panic!("{e}"),
            Ok(store) => panic!("the changed store was opened; its leases: {:?}", store.leases()),
        }
    }

    /// Issue 13, defect 6: a few flipped bytes elsewhere made reads fail while serve ran as if
    /// nothing happened.
    #[tokio::test]
    async fn flipped_bytes_in_any_page_refuse_the_open_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for i in 0..300u32 {
                let l = Lease { ip: Ipv4Addr::from(0x0a00_0000 + i), ..lease(0, (i % 250) as u8, LeaseState::Bound) };
                store.save_lease(l).await.unwrap();
            }
        }
        let path = dir.path().join(STORE_FILE);
        let good = std::fs::read(&path).unwrap();
        let mut refused = 0;
        // Bytes flipped in live pages: the leases' and events' leaves.
        for needle in [&b"\"ip\":\"10.0.0.7\""[..], b"leased 10.0.0.200"] {
            let at = find_all(&good, needle);
            assert!(!at.is_empty());
            let mut bad = good.clone();
            for i in at {
                bad[i + needle.len() - 3] ^= 0x10;
            }
            std::fs::write(&path, &bad).unwrap();
            match Store::open(dir.path()) {
                Err(e) => {
                    assert!(e.is_damage(), "{e}");
                    refused += 1;
                }
                Ok(store) => panic!("opened; events: {:?}", store.events(5).map(|e| e.len())),
            }
            assert_eq!(std::fs::read(&path).unwrap(), bad, "left as it was");
        }
        assert_eq!(refused, 2);
        std::fs::write(&path, &good).unwrap();
        assert_eq!(Store::open(dir.path()).unwrap().leases().unwrap().len(), 300, "the sound file opens");
    }

    /// Issue 13, defect 6: a store truncated to zero bytes started as a new appliance.
    #[test]
    fn an_emptied_or_missing_store_is_refused_where_one_existed() {
        let dir = tempfile::tempdir().unwrap();
        let admin_token = {
            let store = Store::open(dir.path()).unwrap();
            crate::identity::Identity::load_or_create(&store, dir.path()).unwrap().admin_token
        };
        let path = dir.path().join(STORE_FILE);
        std::fs::File::create(&path).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()) && text.contains("--new-store"), "{text}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "left as it was");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Lost { .. })), "a missing one too");
        let token = std::fs::read_to_string(dir.path().join(crate::identity::ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(token.trim(), admin_token, "the admin token file is untouched");
    }

    #[tokio::test]
    async fn new_store_starts_afresh_and_keeps_the_remains_aside_but_never_replaces_a_sound_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(151, 1, LeaseState::Bound)).await.unwrap();
        }
        let path = dir.path().join(STORE_FILE);
        let fresh = StoreOptions { new_store: true, ..StoreOptions::default() };
        {
            let kept = Store::open_with(dir.path(), fresh.clone()).unwrap();
            assert_eq!(kept.leases().unwrap().len(), 1, "a sound store is kept");
            assert!(!kept.is_new());
        }
        let mut damaged = std::fs::read(&path).unwrap();
        let half = damaged.len() / 2;
        damaged.truncate(half);
        std::fs::write(&path, &damaged).unwrap();
        let store = Store::open_with(dir.path(), fresh).unwrap();
        assert!(store.is_new() && store.leases().unwrap().is_empty());
        let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("oasis.redb.old-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), damaged, "the remains, byte for byte");
        assert!(dir.path().join(STORE_MARKER).exists());
    }

    /// A record that goes bad while the store is open (here: rewritten behind the store's back
    /// with a broken seal) is found when it is read: the error names the file, the table and the
    /// key, and what to do, and it is counted.
    #[tokio::test]
    async fn a_record_damaged_while_open_is_reported_with_its_file_table_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let options = StoreOptions { metrics: Some(metrics.clone()), ..StoreOptions::default() };
        let store = Store::open_with(dir.path(), options).unwrap();
        store.record_event(happening("a findable event message"));
        store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        {
            let db = store.db().unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            {
                let mut events = txn.open_table(EVENTS).unwrap();
                let mut value = events.get(1).unwrap().unwrap().value().to_vec();
                let at = find_all(&value, b"findable")[0];
                value[at] ^= 0x20;
                events.insert(1, value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = store.events(10).unwrap_err();
        let text = err.to_string();
        let path = dir.path().join(STORE_FILE);
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("events record #1") && text.contains("--new-store"), "{text}");
        assert!(err.is_damage());
        store.events(10).unwrap_err();
        assert_eq!(metrics.error_count(ErrorKind::StoreRead), 2);
        assert_eq!(store.leases().unwrap().len(), 1, "the rest reads on");
    }

    /// Issue 13, defect 5: events were never pruned.
    #[test]
    fn events_are_kept_within_the_default_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..10_050 {
            store.record_event(happening(&format!("event {i}")));
        }
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let events = store.events(20_000).unwrap();
        assert_eq!(events.len(), 10_000);
        assert_eq!(events[0].message, "event 50", "the oldest went first");
    }

    #[tokio::test]
    async fn events_are_kept_within_bytes_and_age_and_numbering_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let limits = EventLimits { max_count: 1_000_000, max_age: Duration::from_secs(86_400), max_bytes: 20_000 };
        let store = Store::open_with(dir.path(), StoreOptions { events: limits, ..Default::default() }).unwrap();
        for i in 0..1000 {
            store.record_event(happening(&format!("event {i} {}", "x".repeat(100))));
        }
        store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        let events = store.events(2000).unwrap();
        let bytes: usize = events.iter().map(|e| serde_json::to_vec(e).unwrap().len() + seal::SEAL_LEN).sum();
        assert!(bytes <= 20_000 && bytes > 15_000, "{bytes} bytes in {} events", events.len());
        assert_eq!(events.last().unwrap().seq, 1001);
        drop(store);

        // Age: events from before `max_age` go at the next write.
        {
            let db = Database::open(dir.path().join(STORE_FILE)).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            {
                let mut table = txn.open_table(EVENTS).unwrap();
                let old = Event { seq: 0, at: 1000, kind: "old".into(), mac: None, message: "from 1970".into() };
                put(&mut table, 0, &serde_json::to_vec(&old).unwrap()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open_with(dir.path(), StoreOptions { events: limits, ..Default::default() }).unwrap();
        assert_eq!(store.events(1).unwrap_or_default().len(), 1);
        store.save_lease(lease(101, 2, LeaseState::Bound)).await.unwrap();
        let events = store.events(2000).unwrap();
        assert!(events.iter().all(|e| e.kind != "old"), "the old event was pruned");
        assert_eq!(events.last().unwrap().seq, 1002, "numbering goes on");
    }

    #[test]
    fn refusals_from_one_source_cost_one_event_and_one_aggregate() {
        let dir = tempfile::tempdir().unwrap();
        let source: IpAddr = "10.0.0.9".parse().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            for _ in 0..500 {
                store.record_untrusted(source, happening(&format!("wrong join token {}", "y".repeat(60_000))));
            }
        }
        let size = std::fs::metadata(dir.path().join(STORE_FILE)).unwrap().len();
        let store = Store::open(dir.path()).unwrap();
        let events = store.events(100).unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events[0].message.starts_with("from 10.0.0.9: wrong join token"), "{}", events[0].message);
        assert!(
            events[1].message.starts_with("499 more like this from 10.0.0.9 within 10 min"),
            "{}",
            events[1].message
        );
        assert!(events.iter().all(|e| e.message.len() < 400));
        assert!(size < 2 << 20, "the store is {size} bytes");
    }

    #[tokio::test]
    async fn a_flush_writes_the_tally_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let source: IpAddr = "10.0.0.9".parse().unwrap();
        for _ in 0..3 {
            store.record_untrusted(source, happening("wrong join token"));
        }
        store.flush().await.unwrap();
        let messages: Vec<String> = store.events(10).unwrap().into_iter().map(|e| e.message).collect();
        assert_eq!(
            messages,
            ["from 10.0.0.9: wrong join token", "2 more like this from 10.0.0.9 within 10 min: wrong join token"]
        );
    }

    /// What the writer does after a failed write (redb fails every call until the database is
    /// reopened): close and open again, readers told `Reopening` meanwhile, and every clone of
    /// the store working on the reopened database after.
    #[tokio::test]
    async fn the_writer_reopens_the_database_under_readers_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        let (space, _) = Space::new(space::fake::FakePartition::new(1 << 30));
        let writer = Writer {
            shared: store.shared.clone(),
            limits: EventLimits::default(),
            tally: Tally::new(TALLY_WINDOW),
            space,
        };
        let held = store.db().unwrap();
        let reader = std::thread::spawn(move || {
            // Held across the reopen, as a long read would be: the reopen waits for it.
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        writer.reopen();
        reader.join().unwrap();
        assert_eq!(store.leases().unwrap().len(), 1);
        let before = Arc::as_ptr(&store.db().unwrap());
        store.shared.db.write().unwrap().take();
        assert!(matches!(store.leases(), Err(StoreError::Reopening { .. })));
        let _ = writer.database().unwrap();
        assert_ne!(Arc::as_ptr(&store.db().unwrap()), before);
        store.save_lease(lease(101, 2, LeaseState::Bound)).await.unwrap();
        assert_eq!(store.leases().unwrap().len(), 2);
    }

    fn open_on(dir: &Path, partition: space::fake::FakePartition) -> Store {
        Store::open_on(dir, StoreOptions::default(), partition).unwrap()
    }

    #[tokio::test]
    async fn on_a_full_partition_renewals_commit_new_writes_are_refused_and_space_returning_heals_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk = space::fake::FakePartition::new(1 << 30);
        let store = open_on(dir.path(), disk.clone());
        store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();

        disk.set_free(0);
        let renewed = Lease { expires: 9000, updated: 2000, ..lease(100, 1, LeaseState::Bound) };
        store.save_lease(renewed.clone()).await.expect("a renewal commits on a full partition");
        assert!(store.is_full());
        let err = store.save_lease(lease(101, 2, LeaseState::Bound)).await.unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        assert!(err.to_string().contains("full") && err.to_string().contains(&dir.path().display().to_string()));
        let mac = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        assert!(matches!(store.set_boot_mode(mac, BootMode::Local).await, Err(StoreError::Full { .. })));
        store.record_event(happening("dropped while full"));
        let stolen = Lease { mac: MacAddr([0x52, 0x54, 0, 0, 0, 7]), ..renewed.clone() };
        assert!(matches!(store.save_lease(stolen).await, Err(StoreError::Full { .. })), "only the holder renews");
        assert_eq!(store.leases().unwrap(), vec![renewed.clone()], "reads go on");

        disk.set_free(1 << 30);
        store.save_lease(lease(101, 2, LeaseState::Bound)).await.expect("space returned: accepted again");
        assert!(!store.is_full());
        let events = store.events(100).unwrap();
        assert!(events.iter().all(|e| e.message != "dropped while full"));
        assert_eq!(store.leases().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_store_from_schema_3_is_upgraded_and_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let db = Database::create(&path).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            txn.open_table(META).unwrap().insert("schema_version", 3).unwrap();
            let l = serde_json::to_vec(&lease(100, 1, LeaseState::Bound)).unwrap();
            txn.open_table(LEASES).unwrap().insert(u32::from(Ipv4Addr::new(10, 0, 0, 100)), l.as_slice()).unwrap();
            let e = Event { seq: 7, at: now(), kind: "k".into(), mac: None, message: "m".into() };
            txn.open_table(EVENTS).unwrap().insert(7, serde_json::to_vec(&e).unwrap().as_slice()).unwrap();
            txn.open_table(SECRETS).unwrap().insert("join_token", b"abc".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        std::fs::write(dir.path().join(crate::identity::ADMIN_TOKEN_FILE), "x\n").unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.leases().unwrap(), vec![lease(100, 1, LeaseState::Bound)]);
            assert_eq!(store.secret("join_token").unwrap().unwrap(), b"abc");
            store.record_event(happening("after the upgrade"));
        }
        let store = Store::open(dir.path()).unwrap();
        let seqs: Vec<u64> = store.events(10).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [7, 8]);
        assert!(dir.path().join(STORE_MARKER).exists());
        // The store as it was before the upgrade is kept beside it, for an older oasis to take back.
        let copy = Database::open(dir.path().join(schema_copy::copy_name(3))).unwrap();
        let txn = copy.begin_read().unwrap();
        assert_eq!(txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), 3);
    }

    /// Issue 16: a newer oasis upgraded the store's schema, then its update fell back; this oasis
    /// takes back the copy kept before the upgrade and keeps the newer store aside.
    #[tokio::test]
    async fn a_store_upgraded_by_a_version_that_fell_back_is_taken_back_from_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        }
        let path = dir.path().join(STORE_FILE);
        // What the newer oasis did: a copy before its upgrade, then writes in the newer schema.
        std::fs::copy(&path, dir.path().join(schema_copy::copy_name(SCHEMA_VERSION))).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(101, 2, LeaseState::Bound)).await.unwrap();
        }
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema_version", SCHEMA_VERSION + 1).unwrap();
            txn.commit().unwrap();
        }
        let newer = sha(&path);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.leases().unwrap(), vec![lease(100, 1, LeaseState::Bound)], "the copy's records");
        store.flush().await.unwrap();
        let events = store.events(10).unwrap();
        let said = events.iter().find(|e| e.kind == "store-taken-back").expect("an event says so");
        assert!(said.message.contains(&format!("schema version {}", SCHEMA_VERSION + 1)), "{}", said.message);
        let aside: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".from-schema-"))
            .collect();
        assert_eq!(aside.len(), 1, "the newer store is kept aside");
        assert_eq!(sha(&aside[0]), newer);
        assert!(said.message.contains(&aside[0].display().to_string()), "{}", said.message);
        assert!(!dir.path().join(schema_copy::copy_name(SCHEMA_VERSION)).exists(), "the copy is the store now");
    }

    #[tokio::test]
    async fn a_damaged_event_is_dropped_at_open_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.record_event(happening("first"));
            store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
        }
        {
            let db = Database::open(dir.path().join(STORE_FILE)).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            {
                let mut events = txn.open_table(EVENTS).unwrap();
                let mut value = events.get(1).unwrap().unwrap().value().to_vec();
                let last = value.len() - 3;
                value[last] ^= 0x01;
                events.insert(1, value.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let events = store.events(10).unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["lease-bound", "store-repaired"]);
        assert!(events[1].message.contains("#1"), "{}", events[1].message);
    }

    /// Measures the check at open on a store with 100,000 leases (and 10,000 events):
    /// `cargo test -p oasis-appliance --lib store::tests::integrity_check_cost -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn integrity_check_cost_at_open_with_100k_leases() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let writes: Vec<_> = (0..100_000u32)
                .map(|i| {
                    let store = store.clone();
                    let mac = MacAddr([0x52, 0x54, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                    let l = Lease { ip: Ipv4Addr::from(0x0a00_0000 + i), mac, ..lease(0, 0, LeaseState::Bound) };
                    tokio::spawn(async move { store.save_lease(l).await })
                })
                .collect();
            for w in writes {
                w.await.unwrap().unwrap();
            }
        }
        let path = dir.path().join(STORE_FILE);
        let size = std::fs::metadata(&path).unwrap().len();
        let started = Instant::now();
        let checked = check::open_checked(&path).unwrap();
        let check_only = started.elapsed();
        let check::Checked::Sound(db) = checked else { panic!("sound") };
        let scanned = Instant::now();
        scan(&db, &path).unwrap();
        let seals = scanned.elapsed();
        drop(db);
        let started = Instant::now();
        let store = Store::open(dir.path()).unwrap();
        let open = started.elapsed();
        let started = Instant::now();
        let plain = Database::open(&path);
        let plain_open = started.elapsed();
        assert!(matches!(plain, Err(redb::DatabaseError::DatabaseAlreadyOpen)));
        drop(store);
        let started = Instant::now();
        drop(Database::open(&path).unwrap());
        let plain_open_alone = started.elapsed();
        let leases = {
            let store = Store::open(dir.path()).unwrap();
            let started = Instant::now();
            assert_eq!(store.leases().unwrap().len(), 100_000);
            started.elapsed()
        };
        println!(
            "store of 100,000 leases: {:.1} MiB; redb integrity check {check_only:?}, seal scan {seals:?}, \
             Store::open in all {open:?} (a plain redb open {plain_open_alone:?}, {plain_open:?} to be refused); \
             reading every lease {leases:?}",
            size as f64 / (1 << 20) as f64
        );
    }
}

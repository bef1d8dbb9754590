//! The appliance's store: everything it knows, in one redb file in the data directory.
//!
//! Tables (schema version [`SCHEMA_VERSION`], kept in `meta`):
//! - `leases`: IPv4 address (u32) → [`Lease`] as JSON;
//! - `machines`: MAC (text) → [`Machine`] as JSON;
//! - `events`: sequence number → [`Event`] as JSON;
//! - `registry`: machine id → [`MachineRecord`] as JSON (registered machines; version 2);
//! - `secrets`: name → bytes (the appliance's keys and tokens, made at first start; version 2);
//! - `assembly`: `"assembly"` → the controller's [`Assembly`] as JSON (version 3);
//! - `boot_tokens`: MAC (text) → the [`BootToken`] its last boot script carried, as JSON (version 4).
//!
//! Older stores are upgraded in place by creating the newer tables.
//!
//! All writes go through one writer thread that drains every write waiting, applies them in one
//! transaction and commits once (group commit, two-phase so a torn commit cannot be mistaken for
//! a good one), and only then tells each waiting caller its write is durable. Reads run
//! concurrently on read transactions.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use oasis_pxe::dhcp::store::{Commit, LeaseStore, Sighting, StoreError as DhcpStoreError};
use oasis_pxe::dhcp::{Lease, LeaseState};
use oasis_pxe::http::{BootTarget, MachineDirectory};
use oasis_pxe::mac::MacAddr;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::assembly::planner::Assembly;
use crate::registry::{BootToken, Happening, MachineRecord};

/// The version of the table layout and record formats this build reads and writes.
pub const SCHEMA_VERSION: u64 = 4;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
const MACHINES: TableDefinition<&str, &[u8]> = TableDefinition::new("machines");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const REGISTRY: TableDefinition<&str, &[u8]> = TableDefinition::new("registry");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const ASSEMBLY: TableDefinition<&str, &[u8]> = TableDefinition::new("assembly");
const ASSEMBLY_KEY: &str = "assembly";
const BOOT_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("boot_tokens");

/// Most writes folded into one commit.
const MAX_BATCH: usize = 4096;

/// File name of the store inside the data directory.
pub const STORE_FILE: &str = "oasis.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("the store {path} is in use by another oasis process (is `oasis serve` running?)")]
    InUse { path: PathBuf },
    #[error("cannot open the store {path}: {source}")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error(
        "the store {path} has schema version {found}; this oasis understands up to {SCHEMA_VERSION}: run a newer oasis"
    )]
    TooNew { path: PathBuf, found: u64 },
    #[error("store operation failed: {0}")]
    Db(#[from] redb::Error),
    #[error("a stored record is unreadable: {0}")]
    Record(#[from] serde_json::Error),
    #[error("the commit failed: {0}")]
    Commit(String),
    #[error("the store's writer has stopped")]
    WriterGone,
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

/// A machine the appliance has seen network-boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub mac: MacAddr,
    /// Option 93 of its last boot request.
    pub arch: Option<u16>,
    pub vendor_class: Option<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Boot scripts served to it.
    pub boot_count: u64,
    pub last_ip: Option<Ipv4Addr>,
    /// Whether it is told to boot from the network or from its own disk.
    pub boot: BootMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Network,
    Local,
}

impl Machine {
    /// A readable name for option 93.
    pub fn firmware(&self) -> &'static str {
        use oasis_pxe::policy::arch;
        match self.arch {
            None => "unknown",
            Some(arch::BIOS_X86) => "bios",
            Some(arch::EFI_BC | arch::EFI_X86_64) => "uefi-x64",
            Some(arch::EFI_ARM64) => "uefi-arm64",
            Some(arch::EFI_X86_64_HTTP) => "uefi-x64-http",
            Some(arch::EFI_ARM64_HTTP) => "uefi-arm64-http",
            Some(_) => "other",
        }
    }
}

/// Something that happened, for `oasis events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: u64,
    pub kind: String,
    pub mac: Option<MacAddr>,
    pub message: String,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

type Reply = oneshot::Sender<Result<(), String>>;

enum Write {
    Lease(Lease, Reply),
    Sighting(Sighting),
    Boot(MacAddr),
    SetBoot(MacAddr, BootMode, Reply),
    Record(Box<MachineRecord>, Vec<Happening>, Reply),
    RemoveRecord(String, Happening, Reply),
    Event(Happening),
    Assembly(Box<Assembly>, Vec<Happening>, Reply),
    Secret(String, Vec<u8>, Reply),
    BootToken(MacAddr, BootToken, Reply),
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
    db: Arc<Database>,
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

impl Store {
    /// Opens (or creates) the store in `data_dir` and starts its writer thread.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        create_private_dir(data_dir)?;
        let path = data_dir.join(STORE_FILE);
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { path }),
            Err(source) => return Err(StoreError::Open { path, source }),
        };
        let mut txn = db.begin_write()?;
        txn.set_two_phase_commit(true);
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::TooNew { path, found: v }),
                Some(v) if v < SCHEMA_VERSION => {
                    // Every upgrade so far only adds tables, which the opens below create.
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(_) => {}
            }
            txn.open_table(LEASES)?;
            txn.open_table(MACHINES)?;
            txn.open_table(EVENTS)?;
            txn.open_table(REGISTRY)?;
            txn.open_table(SECRETS)?;
            txn.open_table(ASSEMBLY)?;
            txn.open_table(BOOT_TOKENS)?;
        }
        txn.commit()?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel();
        let writer_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, queue))
            .map_err(|source| StoreError::DataDir { path: data_dir.to_path_buf(), source })?;
        Ok(Self { writes, _writer: Arc::new(WriterThread(Some(thread))), db })
    }

    /// Every record of a JSON-valued table, in key order.
    fn all<K: redb::Key + 'static, T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(table)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        self.all(LEASES)
    }

    pub fn machines(&self) -> Result<Vec<Machine>, StoreError> {
        self.all(MACHINES)
    }

    pub fn machine(&self, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(MACHINES)?;
        let found = table.get(mac.to_string().as_str())?;
        Ok(match found {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    pub fn records(&self) -> Result<Vec<MachineRecord>, StoreError> {
        self.all(REGISTRY)
    }

    /// The secret `name`, made by `make` and committed if the store has none yet. For startup,
    /// before anything else writes.
    pub fn secret_or_create(&self, name: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        {
            let txn = self.db.begin_read()?;
            if let Some(v) = txn.open_table(SECRETS)?.get(name)? {
                return Ok(v.value().to_vec());
            }
        }
        let value = make();
        let mut txn = self.db.begin_write()?;
        txn.set_two_phase_commit(true);
        txn.open_table(SECRETS)?.insert(name, value.as_slice())?;
        txn.commit()?;
        Ok(value)
    }

    /// A secret, if the store has it.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(SECRETS)?.get(name)?.map(|v| v.value().to_vec()))
    }

    /// The address bound to `mac` at `now` (unix seconds) in the lease table, if it holds one.
    pub fn bound_address(&self, mac: MacAddr, now: u64) -> Result<Option<Ipv4Addr>, StoreError> {
        let leases: Vec<Lease> = self.all(LEASES)?;
        Ok(leases.into_iter().find(|l| l.mac == mac && l.state == LeaseState::Bound && l.expires > now).map(|l| l.ip))
    }

    /// The per-boot token `mac`'s last boot script carried, if one was issued.
    pub fn boot_token(&self, mac: MacAddr) -> Result<Option<BootToken>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BOOT_TOKENS)?;
        let found = table.get(mac.to_string().as_str())?;
        Ok(match found {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Commits the per-boot token of `mac`'s newest boot script (replacing the one before) and
    /// returns once it is durable. Blocks: for the HTTP boot directory, on the blocking pool.
    pub fn save_boot_token_blocking(&self, mac: MacAddr, token: BootToken) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(Write::BootToken(mac, token, tx)).map_err(|_| StoreError::WriterGone)?;
        rx.blocking_recv().map_err(|_| StoreError::WriterGone)?.map_err(StoreError::Commit)
    }

    /// Commits a secret (replacing one of that name); resolves once durable.
    pub async fn save_secret(&self, name: String, value: Vec<u8>) -> Result<(), StoreError> {
        self.send(|reply| Write::Secret(name, value, reply)).await
    }

    /// The controller's persisted state; the default before the first assembly step.
    pub fn assembly(&self) -> Result<Assembly, StoreError> {
        let txn = self.db.begin_read()?;
        match txn.open_table(ASSEMBLY)?.get(ASSEMBLY_KEY)? {
            Some(v) => Ok(serde_json::from_slice(v.value())?),
            None => Ok(Assembly::default()),
        }
    }

    /// Commits the controller's state and the events explaining the change; resolves once durable.
    pub async fn save_assembly(&self, assembly: Assembly, happenings: Vec<Happening>) -> Result<(), StoreError> {
        self.send(|reply| Write::Assembly(Box::new(assembly), happenings, reply)).await
    }

    async fn send(&self, write: impl FnOnce(Reply) -> Write) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(write(tx)).map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?.map_err(StoreError::Commit)
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

    /// Commits a lease; resolves once durable.
    pub async fn save_lease(&self, lease: Lease) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(Write::Lease(lease, tx)).map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?.map_err(StoreError::Commit)
    }

    /// Marks a machine to boot from the network or from its disk; resolves once durable.
    pub async fn set_boot_mode(&self, mac: MacAddr, mode: BootMode) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes.send(Write::SetBoot(mac, mode, tx)).map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?.map_err(StoreError::Commit)
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

/// The writer thread: one transaction and one commit per batch of waiting writes.
fn writer(db: Arc<Database>, queue: mpsc::Receiver<Write>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = apply(&db, &batch).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!("store commit of {} writes failed: {e}", batch.len());
        }
        for write in batch {
            if let Write::Lease(_, reply)
            | Write::SetBoot(_, _, reply)
            | Write::Record(_, _, reply)
            | Write::RemoveRecord(_, _, reply)
            | Write::Assembly(_, _, reply)
            | Write::Secret(_, _, reply)
            | Write::BootToken(_, _, reply) = write
            {
                let _ = reply.send(result.clone());
            }
        }
    }
}

fn apply(db: &Database, batch: &[Write]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    {
        let mut leases = txn.open_table(LEASES)?;
        let mut machines = txn.open_table(MACHINES)?;
        let mut events = txn.open_table(EVENTS)?;
        let mut registry = txn.open_table(REGISTRY)?;
        let mut assembly = txn.open_table(ASSEMBLY)?;
        let mut secrets = txn.open_table(SECRETS)?;
        let mut boot_tokens = txn.open_table(BOOT_TOKENS)?;
        let mut next_seq = events.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
        let mut event = |kind: &str, mac: Option<MacAddr>, message: String| -> Result<(), StoreError> {
            let e = Event { seq: next_seq, at: now(), kind: kind.to_string(), mac, message };
            events.insert(next_seq, serde_json::to_vec(&e)?.as_slice())?;
            next_seq += 1;
            Ok(())
        };
        for write in batch {
            match write {
                Write::Lease(lease, _) => {
                    let key = u32::from(lease.ip);
                    let previous: Option<Lease> = match leases.get(key)? {
                        Some(v) => serde_json::from_slice(v.value()).ok(),
                        None => None,
                    };
                    leases.insert(key, serde_json::to_vec(lease)?.as_slice())?;
                    let changed = previous.as_ref().is_none_or(|p| p.mac != lease.mac || p.state != lease.state);
                    if changed {
                        let (kind, what) = match lease.state {
                            LeaseState::Bound => ("lease-bound", "leased"),
                            LeaseState::Released => ("lease-released", "released"),
                            LeaseState::Declined => ("lease-declined", "declined (in use elsewhere)"),
                        };
                        event(kind, Some(lease.mac), format!("{} {what} {}", lease.mac, lease.ip))?;
                    }
                    if lease.state == LeaseState::Bound {
                        update_machine(&mut machines, lease.mac, |m| m.last_ip = Some(lease.ip))?;
                    }
                }
                Write::Sighting(s) => {
                    let key = s.mac.to_string();
                    let existing: Option<Machine> = match machines.get(key.as_str())? {
                        Some(v) => serde_json::from_slice(v.value()).ok(),
                        None => None,
                    };
                    let t = now();
                    let machine = match existing {
                        Some(mut m) => {
                            m.last_seen = t;
                            m.arch = s.arch.or(m.arch);
                            m.vendor_class = s.vendor_class.clone().or(m.vendor_class);
                            m.last_ip = s.ip.or(m.last_ip);
                            m
                        }
                        None => {
                            event("machine-seen", Some(s.mac), format!("new machine {} network-booting", s.mac))?;
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
                    machines.insert(key.as_str(), serde_json::to_vec(&machine)?.as_slice())?;
                }
                Write::Boot(mac) => {
                    update_machine(&mut machines, *mac, |m| {
                        m.boot_count += 1;
                        m.last_seen = now();
                    })?;
                }
                Write::SetBoot(mac, mode, _) => {
                    update_machine(&mut machines, *mac, |m| m.boot = *mode)?;
                    event("boot-mode", Some(*mac), format!("{mac} will boot from {mode:?}").to_lowercase())?;
                }
                Write::Record(record, happenings, _) => {
                    registry.insert(record.id.as_str(), serde_json::to_vec(record)?.as_slice())?;
                    for h in happenings {
                        event(h.kind, h.mac, h.message.clone())?;
                    }
                }
                Write::RemoveRecord(id, h, _) => {
                    registry.remove(id.as_str())?;
                    event(h.kind, h.mac, h.message.clone())?;
                }
                Write::Event(h) => event(h.kind, h.mac, h.message.clone())?,
                Write::Assembly(a, happenings, _) => {
                    assembly.insert(ASSEMBLY_KEY, serde_json::to_vec(a)?.as_slice())?;
                    for h in happenings {
                        event(h.kind, h.mac, h.message.clone())?;
                    }
                }
                Write::Secret(name, value, _) => {
                    secrets.insert(name.as_str(), value.as_slice())?;
                }
                Write::BootToken(mac, token, _) => {
                    boot_tokens.insert(mac.to_string().as_str(), serde_json::to_vec(token)?.as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Applies `change` to a machine's record, creating the record if the machine is new.
fn update_machine(
    machines: &mut redb::Table<&str, &[u8]>,
    mac: MacAddr,
    change: impl FnOnce(&mut Machine),
) -> Result<(), StoreError> {
    let key = mac.to_string();
    let existing: Option<Machine> = match machines.get(key.as_str())? {
        Some(v) => serde_json::from_slice(v.value()).ok(),
        None => None,
    };
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
    machines.insert(key.as_str(), serde_json::to_vec(&machine)?.as_slice())?;
    Ok(())
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
                tracing::error!(%mac, "cannot read the machine's boot mode, booting it from the network: {e}");
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

    #[tokio::test]
    async fn committed_leases_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_lease(lease(100, 1, LeaseState::Bound)).await.unwrap();
            store.save_lease(lease(101, 2, LeaseState::Bound)).await.unwrap();
            store.save_lease(lease(101, 2, LeaseState::Released)).await.unwrap();
        }
        // The writer thread still holds the database until its channel closes; wait for it.
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(StoreError::InUse { .. }) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        };
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
        assert_eq!(store.bound_address(one, 4999).unwrap(), Some(Ipv4Addr::new(10, 0, 0, 100)));
        assert_eq!(store.bound_address(one, 5000).unwrap(), None, "expired");
        assert_eq!(store.bound_address(two, 1).unwrap(), None, "released");
    }

    #[test]
    fn a_second_process_is_told_the_store_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StoreError::InUse { .. })));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema_version", SCHEMA_VERSION + 1).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("run a newer oasis"), "{err}");
    }
}

//! The check of a store file before it is opened for use, without writing to it.
//!
//! redb's integrity check ([`redb::Builder::set_check_integrity_on_open`]) verifies the checksum
//! of every page of the committed trees, but it runs on an open, writable database and commits
//! (the open writes the header, the check rewrites the allocator state). So the check runs on
//! [`Overlay`]: a redb storage backend that reads the store file and keeps every write in memory.
//! The file is read once and never written; a refused store stays byte for byte what it was, for
//! the operator to restore or send to someone. The overlay takes the file's locks, so a store in
//! use by another process is told apart from a damaged one.
//!
//! Every store writes with two-phase commit, so redb never falls back to an older commit: a
//! primary commit that fails its checksums is damage, not a rollback to report.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Mutex;

use redb::backends::FileBackend;
use redb::{Database, DatabaseError, StorageBackend};

/// Page granularity of the overlay (redb's page size).
const PAGE: u64 = 4096;

/// Reads from the store file, keeps writes in memory.
#[derive(Debug)]
pub struct Overlay {
    file: FileBackend,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    len: u64,
    /// Below this, bytes not written come from the file; above it, they are zeros (the length
    /// was cut and grown again).
    file_valid: u64,
    pages: HashMap<u64, Vec<u8>>,
}

impl Overlay {
    /// An overlay on `file`, opened read-write only so that its locks can be taken exclusively.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let file = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Overlay { file, state: Mutex::new(OverlayState { len, file_valid: len, pages: HashMap::new() }) })
    }

    fn page(&self, state: &OverlayState, number: u64) -> io::Result<Vec<u8>> {
        if let Some(page) = state.pages.get(&number) {
            return Ok(page.clone());
        }
        let mut page = vec![0u8; PAGE as usize];
        let start = number * PAGE;
        let from_file = state.file_valid.saturating_sub(start).min(PAGE) as usize;
        if from_file > 0 {
            self.file.read(start, &mut page[..from_file])?;
        }
        Ok(page)
    }
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.state.lock().map_err(|_| io::Error::other("overlay lock"))?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.state.lock().map_err(|_| io::Error::other("overlay lock"))?;
        if offset + out.len() as u64 > state.len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the store"));
        }
        let mut done = 0usize;
        while done < out.len() {
            let at = offset + done as u64;
            let (number, within) = (at / PAGE, (at % PAGE) as usize);
            let take = (PAGE as usize - within).min(out.len() - done);
            if let Some(page) = state.pages.get(&number) {
                out[done..done + take].copy_from_slice(&page[within..within + take]);
            } else {
                let from_file = state.file_valid.saturating_sub(at).min(take as u64) as usize;
                if from_file > 0 {
                    self.file.read(at, &mut out[done..done + from_file])?;
                }
                out[done + from_file..done + take].fill(0);
            }
            done += take;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.state.lock().map_err(|_| io::Error::other("overlay lock"))?;
        if len < state.len {
            state.file_valid = state.file_valid.min(len);
            let last = len.div_ceil(PAGE);
            state.pages.retain(|number, _| *number < last);
            if !len.is_multiple_of(PAGE) {
                let number = len / PAGE;
                let mut page = self.page(&state, number)?;
                page[(len % PAGE) as usize..].fill(0);
                state.pages.insert(number, page);
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.state.lock().map_err(|_| io::Error::other("overlay lock"))?;
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let (number, within) = (at / PAGE, (at % PAGE) as usize);
            let take = (PAGE as usize - within).min(data.len() - done);
            let mut page = self.page(&state, number)?;
            page[within..within + take].copy_from_slice(&data[done..done + take]);
            state.pages.insert(number, page);
            done += take;
        }
        state.len = state.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.file.query_lock_range(start, end)
    }
}

/// What opening the file for the check found.
#[derive(Debug)]
pub enum Checked {
    /// redb verified every page; the database (on the overlay) is open for the caller to read.
    Sound(Database),
    /// Another process has the store open.
    InUse,
    /// Why the file is not a sound store.
    Damaged(String),
}

/// Opens `path` on an [`Overlay`] with redb's integrity check. A panic inside redb on a file
/// damaged in a way it did not foresee is damage too.
pub fn open_checked(path: &Path) -> io::Result<Checked> {
    let file = File::options().read(true).write(true).open(path)?;
    let overlay = Overlay::new(file)?;
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| {
        redb::Builder::new()
            .set_check_integrity_on_open(true)
            // What the check reads is read once: no need for redb's default 1 GiB cache.
            .set_cache_size(64 << 20)
            .create_with_backend(overlay)
    }));
    Ok(match opened {
        Ok(Ok(db)) => Checked::Sound(db),
        Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => Checked::InUse,
        Ok(Err(e)) => Checked::Damaged(e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Checked::Damaged(format!("reading it failed inside redb ({what})"))
        }
    })
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn sha(path: &Path) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(path).unwrap()).to_vec()
    }

    #[test]
    fn a_sound_file_is_checked_without_a_byte_written_and_its_contents_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = Database::create(&path).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            for i in 0..2000u64 {
                txn.open_table(T).unwrap().insert(i, vec![i as u8; 300].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let before = sha(&path);
        let Checked::Sound(db) = open_checked(&path).unwrap() else { panic!("a sound file") };
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(T).unwrap().get(1999).unwrap().unwrap().value(), vec![207u8; 300].as_slice());
        assert_eq!(txn.open_table(T).unwrap().iter().unwrap().count(), 2000);
        drop(txn);
        drop(db);
        assert_eq!(sha(&path), before, "the check wrote nothing to the file");

        // Held by another open: in use, not damaged.
        let _held = Database::open(&path).unwrap();
        assert!(matches!(open_checked(&path).unwrap(), Checked::InUse));
    }

    #[test]
    fn flipped_bytes_and_truncation_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let db = Database::create(&path).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_two_phase_commit(true);
            txn.open_table(T).unwrap().insert(7, b"the value seven, findable".as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let good = std::fs::read(&path).unwrap();
        let at = good.windows(9).position(|w| w == b"value sev").expect("the value is in the file");
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        match open_checked(&path).unwrap() {
            Checked::Damaged(why) => assert!(!why.is_empty()),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), bad, "left as it was");

        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(matches!(open_checked(&path).unwrap(), Checked::Damaged(_)));
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        assert!(matches!(open_checked(&path).unwrap(), Checked::Damaged(_)));
    }
}

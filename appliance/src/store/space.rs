//! The data partition's free space, and the reserve that keeps lease renewals committing when it
//! is full.
//!
//! redb treats a failed write as fatal to the open database (every later call, reads included,
//! fails until it is reopened), so the store must not run into a full disk blindly. Before each
//! commit the writer asks [`Space::check`]: with less than [`FULL_BELOW`] bytes free the partition
//! is full. Then the reserve file ([`RESERVE_FILE`], [`RESERVE_BYTES`] preallocated beside the
//! store) is deleted, which gives lease renewals (records rewritten at the same size) room to
//! commit, while everything new is refused with `StoreError::Full`. Once [`RECOVER_AT`] bytes
//! are free again the reserve is made again and every write is accepted: no restart needed.

use std::io;
use std::path::{Path, PathBuf};

/// The reserve, in the data directory.
pub const RESERVE_FILE: &str = "oasis.reserve";
/// How much space the reserve holds for renewals once the partition is full.
pub const RESERVE_BYTES: u64 = 8 << 20;
/// Free space (beside the reserve) under which the partition counts as full.
pub const FULL_BELOW: u64 = 2 << 20;
/// Free space needed, once full, to make the reserve again and accept everything: the reserve
/// and twice the margin, so that the store does not flap between full and not.
pub const RECOVER_AT: u64 = RESERVE_BYTES + 2 * FULL_BELOW;

/// What the store needs of the partition. [`DataPartition`] is the real one.
pub trait Partition: Send + 'static {
    /// Bytes free for unprivileged writers (what `df` shows).
    fn available(&self) -> io::Result<u64>;
    fn reserve_present(&self) -> bool;
    /// Makes the reserve; on failure leaves none.
    fn make_reserve(&self) -> io::Result<()>;
    fn release_reserve(&self) -> io::Result<()>;
    /// The directory, for messages.
    fn dir(&self) -> &Path;
}

/// The partition holding the data directory.
#[derive(Debug)]
pub struct DataPartition {
    dir: PathBuf,
}

impl DataPartition {
    pub fn new(dir: &Path) -> Self {
        DataPartition { dir: dir.to_path_buf() }
    }

    fn reserve(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }
}

impl Partition for DataPartition {
    fn available(&self) -> io::Result<u64> {
        oasis_host::sys::available_bytes(&self.dir)
    }

    fn reserve_present(&self) -> bool {
        std::fs::metadata(self.reserve()).is_ok_and(|m| m.len() == RESERVE_BYTES)
    }

    fn make_reserve(&self) -> io::Result<()> {
        let tmp = self.dir.join(format!("{RESERVE_FILE}.tmp"));
        let made = (|| {
            let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            allocate(&file, RESERVE_BYTES)?;
            file.sync_all()?;
            std::fs::rename(&tmp, self.reserve())
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made
    }

    fn release_reserve(&self) -> io::Result<()> {
        match std::fs::remove_file(self.reserve()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Gives `file` `len` bytes of real blocks (not a sparse length): fallocate(2), or zeros written
/// where the filesystem has no fallocate.
fn allocate(file: &std::fs::File, len: u64) -> io::Result<()> {
    let Err(err) = oasis_host::sys::allocate(file, len) else { return Ok(()) };
    if err.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(err);
    }
    use std::io::Write;
    let zeros = vec![0u8; 1 << 20];
    let mut writer = file;
    for _ in 0..len.div_ceil(zeros.len() as u64) {
        writer.write_all(&zeros)?;
    }
    file.set_len(len)
}

/// Whether an I/O error is a lack of space.
pub fn is_no_space(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::StorageFull || matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// A change of state worth a console line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Filled { available: u64 },
    Recovered { available: u64 },
}

/// Full or not, and the reserve that goes with it.
#[derive(Debug)]
pub struct Space<P: Partition> {
    partition: P,
    full: bool,
}

impl<P: Partition> Space<P> {
    /// Makes the reserve if it is missing and there is room; starts full if there is none.
    pub fn new(partition: P) -> (Self, Option<Change>) {
        let mut space = Space { partition, full: false };
        if !space.partition.reserve_present() {
            let room = space.partition.available().is_ok_and(|a| a >= RESERVE_BYTES + FULL_BELOW);
            if !(room && space.partition.make_reserve().is_ok()) {
                let available = space.partition.available().unwrap_or(0);
                space.full = true;
                return (space, Some(Change::Filled { available }));
            }
        }
        let change = space.check();
        (space, change)
    }

    pub fn is_full(&self) -> bool {
        self.full
    }

    pub fn dir(&self) -> &Path {
        self.partition.dir()
    }

    /// Looks at the free space; before a commit, and now and then while full.
    pub fn check(&mut self) -> Option<Change> {
        // A partition whose free space cannot be read is taken as not full: the commit will tell.
        let Ok(available) = self.partition.available() else { return None };
        if !self.full {
            return (available < FULL_BELOW).then(|| self.fill());
        }
        if available < RECOVER_AT || self.partition.make_reserve().is_err() {
            return None;
        }
        self.full = false;
        Some(Change::Recovered { available: self.partition.available().unwrap_or(available) })
    }

    /// A commit failed for lack of space, whatever the free space looked like before it.
    pub fn no_space(&mut self) -> Option<Change> {
        (!self.full).then(|| self.fill())
    }

    fn fill(&mut self) -> Change {
        self.full = true;
        if let Err(e) = self.partition.release_reserve() {
            tracing::error!(
                "cannot delete the reserve {}: {e}",
                self.partition.dir().join(RESERVE_FILE).display(),
                e = oasis_proto::error_chain(&e)
            );
        }
        Change::Filled { available: self.partition.available().unwrap_or(0) }
    }
}

#[cfg(test)]
pub mod fake {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A partition whose free space a test sets; the reserve takes its bytes from it.
    #[derive(Debug, Clone)]
    pub struct FakePartition {
        pub state: Arc<Mutex<(u64, bool)>>,
        dir: PathBuf,
    }

    impl FakePartition {
        pub fn new(free: u64) -> Self {
            FakePartition { state: Arc::new(Mutex::new((free, false))), dir: PathBuf::from("/fake") }
        }

        pub fn set_free(&self, free: u64) {
            self.state.lock().unwrap().0 = free;
        }
    }

    impl Partition for FakePartition {
        fn available(&self) -> io::Result<u64> {
            Ok(self.state.lock().unwrap().0)
        }
        fn reserve_present(&self) -> bool {
            self.state.lock().unwrap().1
        }
        fn make_reserve(&self) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            if s.1 {
                return Ok(());
            }
            if s.0 < RESERVE_BYTES {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            *s = (s.0 - RESERVE_BYTES, true);
            Ok(())
        }
        fn release_reserve(&self) -> io::Result<()> {
            let mut s = self.state.lock().unwrap();
            if s.1 {
                *s = (s.0 + RESERVE_BYTES, false);
            }
            Ok(())
        }
        fn dir(&self) -> &Path {
            &self.dir
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakePartition;
    use super::*;

    #[test]
    fn fills_releases_the_reserve_and_recovers_without_flapping() {
        let disk = FakePartition::new(100 << 20);
        let (mut space, change) = Space::new(disk.clone());
        assert_eq!(change, None);
        assert!(disk.reserve_present() && !space.is_full());

        disk.set_free(FULL_BELOW - 1);
        assert!(matches!(space.check(), Some(Change::Filled { .. })));
        assert!(space.is_full() && !disk.reserve_present(), "the reserve is given to renewals");
        // The reserve's bytes are free now, but not enough to go back: no flapping.
        assert_eq!(disk.available().unwrap(), FULL_BELOW - 1 + RESERVE_BYTES);
        assert_eq!(space.check(), None);
        assert!(space.is_full());

        disk.set_free(RECOVER_AT);
        assert!(matches!(space.check(), Some(Change::Recovered { .. })));
        assert!(!space.is_full() && disk.reserve_present());
        assert_eq!(space.check(), None, "the remade reserve leaves it above the line");
    }

    #[test]
    fn a_failed_commit_fills_it_and_a_start_on_a_full_disk_starts_full() {
        let disk = FakePartition::new(100 << 20);
        let (mut space, _) = Space::new(disk.clone());
        assert!(matches!(space.no_space(), Some(Change::Filled { .. })));
        assert_eq!(space.no_space(), None, "said once");

        let (space, change) = Space::new(FakePartition::new(1 << 20));
        assert!(space.is_full());
        assert!(matches!(change, Some(Change::Filled { .. })));
    }

    #[test]
    fn the_real_partition_makes_and_releases_a_reserve_of_real_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = DataPartition::new(dir.path());
        assert!(p.available().unwrap() > 0);
        p.make_reserve().unwrap();
        assert!(p.reserve_present());
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap().blocks() * 512;
        assert!(blocks >= RESERVE_BYTES, "allocated, not sparse: {blocks}");
        p.release_reserve().unwrap();
        assert!(!p.reserve_present());
        p.release_reserve().unwrap();
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(is_no_space(&full));
        assert!(!is_no_space(&io::Error::other("other")));
    }
}

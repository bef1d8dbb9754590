//! The data disk: a local disk mounted at [`DATA_DISK_MOUNT`] so that service data (etcd's)
//! survives a power cycle, which the netboot root (memory) cannot give.
//!
//! What is on the disk decides what happens, read from its first bytes:
//! - an ext2/3/4 filesystem labelled [`DATA_DISK_LABEL`]: made by oasis in an earlier boot,
//!   mounted as it is;
//! - all zeros (a new disk): formatted (busybox `mke2fs`), then mounted;
//! - anything else: left alone unless the desired state says `wipe` (the operator allowed it),
//!   with a message saying so. Formatting is always logged.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use oasis_proto::{DataDisk, DataDiskStatus, DATA_DISK_LABEL, DATA_DISK_MOUNT};

/// Bytes read to judge a disk: the ext superblock sits at 1024..2048; partition tables and most
/// filesystem signatures lie within the first 64 KiB.
const PROBE_BYTES: usize = 64 * 1024;

/// What a disk holds, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The filesystem oasis made.
    Oasis,
    Blank,
    Other,
}

/// Judges a disk by its first [`PROBE_BYTES`].
pub fn content_of(head: &[u8]) -> Content {
    if oasis_host::ext::label_in(head).flatten().as_deref() == Some(DATA_DISK_LABEL) {
        return Content::Oasis;
    }
    if head.iter().all(|b| *b == 0) {
        Content::Blank
    } else {
        Content::Other
    }
}

/// The data disk as the session uses it.
pub trait DataDisks: Send + Sync {
    /// Makes the data disk what `wanted` says (idempotent; `None` leaves a mounted disk alone:
    /// data is never unmounted under a running service).
    fn apply(&self, wanted: Option<&DataDisk>);
    fn status(&self) -> Option<DataDiskStatus>;
    /// Flushes and unmounts the data disk if it is mounted (its services are stopped: the
    /// machine reboots). A later [`apply`](Self::apply) mounts it again.
    fn release(&self) -> Result<(), DiskError>;
    /// Wipes the released data disk (`oasis machine reprovision`): its first and last MiB
    /// zeroed and flushed, so the next boot finds it blank. Returns the device wiped, `None`
    /// when this boot has no data disk.
    fn wipe(&self) -> Result<Option<String>, DiskError>;
}

/// The real disks, under `/dev`.
#[derive(Debug, Default)]
pub struct LocalDisks {
    status: Mutex<Option<DataDiskStatus>>,
}

impl LocalDisks {
    fn prepare(&self, wanted: &DataDisk) -> DataDiskStatus {
        let mut status =
            DataDiskStatus { device: wanted.device.clone(), mounted: false, formatted: false, message: None };
        let valid = !wanted.device.is_empty() && wanted.device.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            status.message = Some(format!("{:?} is not a disk name", wanted.device));
            return status;
        }
        let device = PathBuf::from("/dev").join(&wanted.device);
        let mut head = vec![0u8; PROBE_BYTES];
        if let Err(e) = std::fs::File::open(&device).and_then(|mut f| f.read_exact(&mut head)) {
            status.message = Some(format!("cannot read {}: {e}", device.display(), e = oasis_proto::error_chain(&e)));
            return status;
        }
        match (content_of(&head), wanted.wipe) {
            (Content::Oasis, _) => {}
            (Content::Blank, _) | (Content::Other, true) => {
                tracing::warn!(device = %device.display(), "formatting the data disk ({DATA_DISK_LABEL})");
                if let Err(e) = oasis_host::command::run(
                    Command::new("mke2fs").args(["-q", "-F", "-L", DATA_DISK_LABEL]).arg(&device),
                ) {
                    let e = oasis_proto::error_chain(&e);
                    status.message = Some(format!("formatting {} failed: {e}", device.display()));
                    return status;
                }
                status.formatted = true;
            }
            (Content::Other, false) => {
                status.message = Some(format!(
                    "{} holds other data and is left alone; allow wiping it with `data_disk = \"wipe\"` in the appliance's [cluster]",
                    device.display()
                ));
                return status;
            }
        }
        match mount(&device, Path::new(DATA_DISK_MOUNT)) {
            Ok(()) => status.mounted = true,
            Err(e) => status.message = Some(oasis_proto::error_chain(&e)),
        }
        status
    }
}

impl DataDisks for LocalDisks {
    fn apply(&self, wanted: Option<&DataDisk>) {
        let Some(wanted) = wanted else { return };
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.as_ref().is_some_and(|s| s.mounted && s.device == wanted.device) {
            return;
        }
        let now = self.prepare(wanted);
        match &now.message {
            Some(m) => tracing::warn!("data disk: {m}"),
            None => {
                tracing::info!(device = %now.device, formatted = now.formatted, "data disk mounted at {DATA_DISK_MOUNT}")
            }
        }
        *status = Some(now);
    }

    fn status(&self) -> Option<DataDiskStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn release(&self) -> Result<(), DiskError> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let target = Path::new(DATA_DISK_MOUNT);
        if oasis_host::mount::is_mount_point(&oasis_host::mount::mount_table(), target) {
            oasis_host::mount::unmount(target)
                .map_err(|source| DiskError::Unmount { target: target.to_path_buf(), source })?;
            tracing::info!("data disk unmounted from {DATA_DISK_MOUNT}");
        }
        if let Some(status) = status.as_mut() {
            status.mounted = false;
        }
        Ok(())
    }

    fn wipe(&self) -> Result<Option<String>, DiskError> {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        // Only a disk this boot made its data disk (no message): never one it left alone.
        let Some(status) = status.as_ref().filter(|s| s.message.is_none()) else {
            return Ok(None);
        };
        if status.mounted {
            return Err(DiskError::StillMounted { device: status.device.clone() });
        }
        let device = PathBuf::from("/dev").join(&status.device);
        wipe_ends(&device).map_err(|source| DiskError::Wipe { device: device.clone(), source })?;
        tracing::warn!(device = %device.display(), "data disk wiped");
        Ok(Some(status.device.clone()))
    }
}

/// How much of each end of a disk a wipe zeroes: every filesystem's and partition table's
/// signatures live there (ext's superblock at 1 KiB, GPT's backup header in the last sector).
const WIPE_BYTES: u64 = 1 << 20;

/// Zeroes the first and last [`WIPE_BYTES`] of `device` (a whole disk or a file) and flushes.
pub fn wipe_ends(device: &Path) -> std::io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut disk = std::fs::OpenOptions::new().write(true).open(device)?;
    let size = disk.seek(SeekFrom::End(0))?;
    let zeros = vec![0u8; WIPE_BYTES.min(size) as usize];
    disk.seek(SeekFrom::Start(0))?;
    disk.write_all(&zeros)?;
    disk.seek(SeekFrom::Start(size - zeros.len() as u64))?;
    disk.write_all(&zeros)?;
    disk.sync_all()
}

/// Why mounting or unmounting the data disk failed; the heartbeat's message is its chain.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot create the mount point {}", path.display())]
    MountPoint { path: PathBuf, source: std::io::Error },
    #[error("mounting {} at {} failed", device.display(), target.display())]
    Mount { device: PathBuf, target: PathBuf, source: std::io::Error },
    #[error("unmounting the data disk at {} failed; something still uses it", target.display())]
    Unmount { target: PathBuf, source: std::io::Error },
    #[error("the data disk {device} is still mounted: it is not wiped under a filesystem")]
    StillMounted { device: String },
    #[error("wiping the data disk {} failed", device.display())]
    Wipe { device: PathBuf, source: std::io::Error },
}

/// Mounts `device` (ext2, through the ext4 driver) at `target`, unless something is mounted there.
fn mount(device: &Path, target: &Path) -> Result<(), DiskError> {
    use oasis_host::mount;
    if mount::is_mount_point(&mount::mount_table(), target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|source| DiskError::MountPoint { path: target.to_path_buf(), source })?;
    mount::mount(device, target, "ext4", mount::MsFlags::MS_NOATIME, "").map_err(|source| DiskError::Mount {
        device: device.to_path_buf(),
        target: target.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_with_label(label: &str) -> Vec<u8> {
        // The superblock at 1024: its magic at 56, its label at 120.
        let mut head = vec![0u8; PROBE_BYTES];
        head[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
        head[1024 + 120..1024 + 120 + label.len()].copy_from_slice(label.as_bytes());
        head
    }

    #[test]
    fn disks_are_judged_by_their_first_bytes() {
        assert_eq!(content_of(&vec![0u8; PROBE_BYTES]), Content::Blank);
        assert_eq!(content_of(&ext_with_label(DATA_DISK_LABEL)), Content::Oasis);
        assert_eq!(content_of(&ext_with_label("home")), Content::Other, "someone else's filesystem");
        let mut mbr = vec![0u8; PROBE_BYTES];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(content_of(&mbr), Content::Other, "a partition table");
    }

    #[test]
    fn a_bad_name_is_refused_before_any_device_is_touched() {
        let disks = LocalDisks::default();
        disks.apply(Some(&DataDisk { device: "../sda".into(), wipe: true }));
        let status = disks.status().unwrap();
        assert!(!status.mounted && !status.formatted);
        assert!(status.message.unwrap().contains("not a disk name"));
    }

    #[test]
    fn a_wipe_zeroes_both_ends_and_leaves_a_blank_disk() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let mut bytes = ext_with_label(DATA_DISK_LABEL);
        bytes.resize(4 << 20, 0xff);
        std::fs::write(&disk, &bytes).unwrap();
        wipe_ends(&disk).unwrap();
        let after = std::fs::read(&disk).unwrap();
        assert_eq!(after.len(), 4 << 20, "nothing added or cut");
        assert_eq!(content_of(&after[..PROBE_BYTES]), Content::Blank);
        assert!(after[..1 << 20].iter().chain(&after[3 << 20..]).all(|b| *b == 0));
        assert!(after[1 << 20..3 << 20].iter().all(|b| *b == 0xff), "the middle is left");
        let small = dir.path().join("small");
        std::fs::write(&small, [0xffu8; 1000]).unwrap();
        wipe_ends(&small).unwrap();
        assert_eq!(std::fs::read(&small).unwrap(), [0u8; 1000]);
    }

    #[test]
    fn a_disk_left_alone_or_never_prepared_is_not_wiped() {
        let disks = LocalDisks::default();
        assert!(disks.wipe().unwrap().is_none(), "no data disk in this boot");
        disks.apply(Some(&DataDisk { device: "../sda".into(), wipe: true }));
        assert!(disks.wipe().unwrap().is_none(), "a disk it refused");
    }
}

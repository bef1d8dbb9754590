//! The USB configuration stick: a FAT volume labelled [`LABEL`] holding `oasis.toml` (and, for an
//! appliance built with a trusted key, `oasis.toml.sig`). The appliance reads it at boot and on
//! hot-plug and writes its report back under [`REPORT_DIR`].
//!
//! The image is partitioned like a stick from a shop: an MBR with one FAT partition from 1 MiB to
//! the end (type 0x0c for FAT32, 0x0e for FAT16). The volume label is in the boot sector and in
//! the root directory (where Windows and `blkid` look first), as fatfs formats it. Files carry a fixed timestamp and
//! the volume a serial derived from the contents, so the same inputs give the same image.
//!
//! [`read_file`] and [`list_dir`] read such an image, partitioned or not (a superfloppy), without
//! mounting it: how tests read the report an appliance wrote to its stick.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{write_atomic_with, ManifestError};
use crate::partition::{Slice, FIXED_TIME};

/// The volume label the appliance looks for.
pub const LABEL: &str = "OASIS";
/// The configuration's file name in the stick's root directory.
pub const CONFIG_FILE: &str = "oasis.toml";
/// Its detached signature (see `oasis config sign`).
pub const SIGNATURE_FILE: &str = "oasis.toml.sig";
/// The directory the appliance writes its report to.
pub const REPORT_DIR: &str = "oasis-report";
/// The image size when none is given.
pub const DEFAULT_SIZE_MIB: u64 = 64;
/// Smallest and largest image this builder makes: FAT16 needs a few MiB; a config stick needs
/// no more than a few hundred.
pub const MIN_SIZE_MIB: u64 = 8;
pub const MAX_SIZE_MIB: u64 = 4096;

const SECTOR: u64 = 512;
/// FAT32 needs at least 65525 clusters: 512-byte clusters from about 33 MiB.
const FAT32_FROM_MIB: u64 = 48;
/// The partition starts at 1 MiB, as partitioning tools align it.
const PARTITION_START: u64 = 1 << 20;

/// Errors building or reading a stick image.
#[derive(Debug, thiserror::Error)]
pub enum UsbStickError {
    #[error("a USB stick image is {MIN_SIZE_MIB} to {MAX_SIZE_MIB} MiB, not {0} MiB: give another --size-mib")]
    Size(u64),
    #[error("{name} ({size} bytes) does not fit on a {size_mib} MiB stick: give a larger --size-mib")]
    TooLarge { name: String, size: usize, size_mib: u64 },
    #[error(transparent)]
    Write(#[from] ManifestError),
    #[error("cannot write {path}")]
    Io { path: PathBuf, source: io::Error },
}

/// Writes a stick image of `size_mib` MiB to `out` (crash-safely: aside, fsynced, renamed) with
/// `files` (name, contents) in the root directory of its FAT partition labelled [`LABEL`].
pub fn build_usb_stick(files: &[(&str, &[u8])], out: &Path, size_mib: u64) -> Result<(), UsbStickError> {
    if !(MIN_SIZE_MIB..=MAX_SIZE_MIB).contains(&size_mib) {
        return Err(UsbStickError::Size(size_mib));
    }
    let total = size_mib << 20;
    let room = total - PARTITION_START;
    for (name, contents) in files {
        // Leave room for the FATs and the directory.
        if contents.len() as u64 > room / 2 {
            return Err(UsbStickError::TooLarge { name: name.to_string(), size: contents.len(), size_mib });
        }
    }
    let mut serial = Sha256::new();
    for (name, contents) in files {
        serial.update(name.as_bytes());
        serial.update((contents.len() as u64).to_le_bytes());
        serial.update(contents);
    }
    let serial = serial.finalize();
    let volume_id = u32::from_le_bytes([serial[0], serial[1], serial[2], serial[3]]);
    write_atomic_with(out, |file| {
        file.set_len(total)?;
        let mut label = [b' '; 11];
        label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
        let mut options = fatfs::FormatVolumeOptions::new().volume_label(label).volume_id(volume_id);
        // FAT32, as sticks from a shop are, wherever it has enough clusters; FAT16 below.
        if size_mib >= FAT32_FROM_MIB {
            options = options.fat_type(fatfs::FatType::Fat32).bytes_per_cluster(512);
        }
        fatfs::format_volume(Slice::new(&mut *file, PARTITION_START, room), options)?;
        let fs = fatfs::FileSystem::new(
            Slice::new(&mut *file, PARTITION_START, room),
            fatfs::FsOptions::new().time_provider(&FIXED_TIME),
        )?;
        for (name, contents) in files {
            let mut f = fs.root_dir().create_file(name)?;
            f.truncate()?;
            f.write_all(contents)?;
            f.flush()?;
        }
        let fat32 = fs.fat_type() == fatfs::FatType::Fat32;
        fs.unmount()?;
        write_mbr(file, total, fat32, volume_id)
    })?;
    Ok(())
}

/// The contents of the file at `path` (`/`-separated, from the root directory) on the FAT volume
/// of a stick image; `None` when there is no such file.
pub fn read_file(image: &Path, path: &str) -> io::Result<Option<Vec<u8>>> {
    with_volume(image, |fs| {
        let mut file = match fs.root_dir().open_file(path.trim_start_matches('/')) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut contents = Vec::new();
        file.read_to_end(&mut contents)?;
        Ok(Some(contents))
    })
}

/// One entry of [`list_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

/// The entries of the directory at `path` (`""` or `/` for the root) on a stick image, sorted by
/// name, without `.` and `..`; `None` when there is no such directory.
pub fn list_dir(image: &Path, path: &str) -> io::Result<Option<Vec<StickEntry>>> {
    with_volume(image, |fs| {
        let path = path.trim_matches('/');
        let dir = if path.is_empty() {
            fs.root_dir()
        } else {
            match fs.root_dir().open_dir(path) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        };
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            entries.push(StickEntry { is_dir: entry.is_dir(), size: entry.len(), name });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(entries))
    })
}

/// Opens the FAT volume of an image: the first MBR partition of a FAT type, or the whole image
/// when its first sector is a FAT boot sector itself.
fn with_volume<T>(
    image: &Path,
    read: impl FnOnce(&fatfs::FileSystem<Slice<&mut File>>) -> io::Result<T>,
) -> io::Result<T> {
    let mut file = File::open(image)?;
    let len = file.metadata()?.len();
    let mut sector = [0u8; 512];
    file.read_exact(&mut sector)?;
    let (start, size) = fat_partition(&sector).map(|(s, n)| (s * SECTOR, n * SECTOR)).unwrap_or((0, len));
    let fs = fatfs::FileSystem::new(
        Slice::new(&mut file, start, size.min(len.saturating_sub(start))),
        fatfs::FsOptions::new(),
    )
    .map_err(|e| io::Error::new(e.kind(), format!("{}: no FAT volume: {e}", image.display())))?;
    read(&fs)
}

/// The first FAT partition (start sector, sectors) of an MBR, unless the sector is itself a FAT
/// boot sector (which carries the same 0x55AA signature).
fn fat_partition(sector: &[u8; 512]) -> Option<(u64, u64)> {
    if sector[510..512] != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = u16::from_le_bytes([sector[11], sector[12]]);
    if matches!(sector[0], 0xEB | 0xE9) && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    (0..4).map(|i| &sector[446 + 16 * i..462 + 16 * i]).find_map(|entry| {
        let start = u32::from_le_bytes(entry[8..12].try_into().unwrap()) as u64;
        let sectors = u32::from_le_bytes(entry[12..16].try_into().unwrap()) as u64;
        matches!(entry[4], 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e).then_some((start, sectors)).filter(|_| start > 0)
    })
}

/// An MBR with one partition from [`PARTITION_START`] to the end of the disk.
fn write_mbr(file: &mut File, total: u64, fat32: bool, disk_id: u32) -> io::Result<()> {
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&disk_id.to_le_bytes());
    let entry = &mut mbr[446..462];
    entry[0] = 0x00; // not bootable
                     // CHS fields: the "use LBA" values partitioning tools write for anything past 8 GiB.
    entry[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[4] = if fat32 { 0x0c } else { 0x0e };
    entry[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    entry[8..12].copy_from_slice(&((PARTITION_START / SECTOR) as u32).to_le_bytes());
    entry[12..16].copy_from_slice(&(((total - PARTITION_START) / SECTOR) as u32).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&mbr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_stick_is_partitioned_labelled_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("stick.img");
        let config = b"[network]\ninterface = \"eth0\"\n";
        build_usb_stick(&[(CONFIG_FILE, config), (SIGNATURE_FILE, b"sig")], &image, DEFAULT_SIZE_MIB).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), DEFAULT_SIZE_MIB << 20);
        let bytes = std::fs::read(&image).unwrap();
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        assert_eq!(bytes[446 + 4], 0x0c, "a 64 MiB stick is FAT32");
        assert_eq!(u32::from_le_bytes(bytes[454..458].try_into().unwrap()), 2048);

        assert_eq!(read_file(&image, CONFIG_FILE).unwrap().as_deref(), Some(&config[..]));
        assert_eq!(read_file(&image, "/oasis.toml.sig").unwrap().as_deref(), Some(&b"sig"[..]));
        assert_eq!(read_file(&image, "missing.txt").unwrap(), None);
        let names: Vec<String> = list_dir(&image, "/").unwrap().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, [CONFIG_FILE, SIGNATURE_FILE]);
        assert_eq!(list_dir(&image, REPORT_DIR).unwrap(), None);

        // Both labels say OASIS.
        let volume = Slice::new(File::open(&image).unwrap(), PARTITION_START, 63 << 20);
        let fs = fatfs::FileSystem::new(volume, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), LABEL);
        assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some(LABEL));

        // The same inputs give the same bytes.
        let again = dir.path().join("again.img");
        build_usb_stick(&[(CONFIG_FILE, config), (SIGNATURE_FILE, b"sig")], &again, DEFAULT_SIZE_MIB).unwrap();
        assert!(std::fs::read(&again).unwrap() == bytes, "two builds differ");
    }

    #[test]
    fn small_sticks_are_fat16_and_sizes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("stick.img");
        build_usb_stick(&[(CONFIG_FILE, b"x")], &image, 16).unwrap();
        assert_eq!(std::fs::read(&image).unwrap()[446 + 4], 0x0e);
        assert_eq!(read_file(&image, CONFIG_FILE).unwrap().as_deref(), Some(&b"x"[..]));
        for size in [0, 4, MAX_SIZE_MIB + 1] {
            let err = build_usb_stick(&[], &dir.path().join("bad.img"), size).unwrap_err();
            assert!(err.to_string().contains("--size-mib"), "{err}");
        }
        assert!(!dir.path().join("bad.img").exists());
        let big = vec![0u8; 5 << 20];
        let err = build_usb_stick(&[(CONFIG_FILE, &big)], &dir.path().join("bad.img"), 8).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn a_superfloppy_reads_too() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("floppy.img");
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&image).unwrap();
        file.set_len(8 << 20).unwrap();
        fatfs::format_volume(&mut file, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).unwrap();
            fs.root_dir()
                .create_dir(REPORT_DIR)
                .unwrap()
                .create_file("result.txt")
                .unwrap()
                .write_all(b"applied")
                .unwrap();
        }
        assert_eq!(read_file(&image, "oasis-report/result.txt").unwrap().as_deref(), Some(&b"applied"[..]));
        let entries = list_dir(&image, "").unwrap().unwrap();
        assert_eq!(entries, [StickEntry { name: REPORT_DIR.into(), is_dir: true, size: 0 }]);
    }
}

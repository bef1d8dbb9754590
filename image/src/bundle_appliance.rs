//! The appliance part of an update bundle: slot A of an appliance disk image, as the bytes of its
//! FAT filesystem.
//!
//! A slot is a partition of fixed size holding the appliance's kernel, initramfs and the boot
//! files it serves. The bundle carries the slot's filesystem image itself, not the files in it, so
//! the appliance writes it over its inactive slot as it is and then checks the slot byte for byte
//! against the signed hash: what it verifies is exactly what GRUB will read. The image is carried
//! up to its last used MiB (the rest of a fresh filesystem is zeros the FAT marks free), and the
//! manifest records the slot size it was made for, which the appliance compares with its own.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::gpt::{Gpt, GptError, SECTOR};

/// The name of the slot image member in a bundle.
pub const SLOT_MEMBER: &str = "appliance-slot.img";
/// The GPT name of the slot a freshly built appliance image fills.
pub const IMAGE_SLOT: &str = crate::appliance::SLOT_A_NAME;
/// The slot image is carried up to a multiple of this.
const TRIM_UNIT: u64 = 1 << 20;

/// What the appliance part of a bundle is, in its signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceChanges {
    /// The appliance version the slot holds.
    pub version: String,
    /// The size of the slot partition the image was made for, in bytes.
    pub slot_bytes: u64,
}

/// Where the slot's filesystem lies in an appliance image, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotImage {
    pub path: PathBuf,
    /// Its first byte in the image.
    pub offset: u64,
    /// The bytes carried: up to the last MiB that is not all zeros.
    pub size: u64,
    /// The whole partition's size.
    pub slot_bytes: u64,
    pub sha256: String,
    /// The appliance version the slot says it holds (its `oasis/slot.json`), if it says one.
    pub version: Option<String>,
}

/// Why an appliance image cannot give its slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotImageError {
    #[error("cannot read the appliance image {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} has no readable partition table; give a disk image `oasis image build appliance` wrote")]
    Table { path: PathBuf, source: GptError },
    #[error("{path} has no partition {IMAGE_SLOT}: it is not a two-slot appliance image; build it with `oasis image build appliance` of this release")]
    NoSlot { path: PathBuf },
    #[error("{path} holds an empty slot {IMAGE_SLOT}; build the appliance image again")]
    Empty { path: PathBuf },
}

/// Slot A of the appliance image at `path`, measured.
pub fn slot_image(path: &Path) -> Result<SlotImage, SlotImageError> {
    let read = |source| SlotImageError::Read { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(read)?;
    let sectors = file.metadata().map_err(read)?.len() / SECTOR;
    let (table, _) =
        Gpt::read(&mut file, sectors).map_err(|source| SlotImageError::Table { path: path.to_path_buf(), source })?;
    let (_, slot) = table.find(IMAGE_SLOT).ok_or_else(|| SlotImageError::NoSlot { path: path.to_path_buf() })?;
    let (offset, slot_bytes) = (slot.first_lba * SECTOR, slot.sectors() * SECTOR);
    let size = used_bytes(&mut file, offset, slot_bytes).map_err(read)?;
    if size == 0 {
        return Err(SlotImageError::Empty { path: path.to_path_buf() });
    }
    let sha256 = sha256_of(&mut file, offset, size).map_err(read)?;
    let version = slot_version(file, offset, slot_bytes);
    Ok(SlotImage { path: path.to_path_buf(), offset, size, slot_bytes, sha256, version })
}

/// The version in the slot's [`SLOT_INFO_PATH`](crate::appliance::SLOT_INFO_PATH), read through
/// its FAT filesystem; `None` when there is no such file to read.
fn slot_version(file: File, offset: u64, slot_bytes: u64) -> Option<String> {
    let fat =
        fatfs::FileSystem::new(crate::partition::Slice::new(file, offset, slot_bytes), fatfs::FsOptions::new()).ok()?;
    let mut json = Vec::new();
    fat.root_dir().open_file(crate::appliance::SLOT_INFO_PATH).ok()?.read_to_end(&mut json).ok()?;
    serde_json::from_slice::<crate::appliance::SlotInfo>(&json).ok().map(|info| info.version)
}

/// The bytes of the region `offset..offset + len` of `file` up to the end of its last
/// [`TRIM_UNIT`] that is not all zeros.
fn used_bytes(file: &mut File, offset: u64, len: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; TRIM_UNIT as usize];
    let mut end = len.div_ceil(TRIM_UNIT) * TRIM_UNIT;
    while end > 0 {
        let start = end - TRIM_UNIT;
        let want = (len.min(end) - start) as usize;
        file.seek(SeekFrom::Start(offset + start))?;
        file.read_exact(&mut buf[..want])?;
        if buf[..want].iter().any(|b| *b != 0) {
            return Ok(len.min(end));
        }
        end = start;
    }
    Ok(0)
}

/// The lowercase hex SHA-256 of `len` bytes of `reader` from `offset`.
pub fn sha256_of(reader: &mut (impl Read + Seek), offset: u64, len: u64) -> io::Result<String> {
    reader.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let copied = io::copy(&mut reader.take(len), &mut hasher)?;
    if copied != len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{copied} of {len} bytes")));
    }
    Ok(hex::encode(hasher.finalize()))
}

/// A disk image under `dir` with one partition named `name` (4 MiB at sector 64) holding `data`.
#[cfg(test)]
pub(crate) fn test_image(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    use crate::gpt::{Guid, Partition};
    use std::io::Write;
    let path = dir.join("disk.img");
    let sectors = 64 + 8192 + 64;
    let mut file = File::create(&path).unwrap();
    file.set_len(sectors * SECTOR).unwrap();
    let mut table = Gpt::new(Guid::from_display_bytes([1; 16]));
    table.partitions[3] = Some(Partition {
        type_guid: Guid::from_display_bytes([2; 16]),
        unique_guid: Guid::from_display_bytes([3; 16]),
        first_lba: 64,
        last_lba: 64 + 8191,
        attributes: 0,
        name: name.into(),
    });
    table.write(&mut file, sectors).unwrap();
    file.seek(SeekFrom::Start(64 * SECTOR)).unwrap();
    file.write_all(data).unwrap();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        test_image(dir, name, data)
    }

    #[test]
    fn the_slot_is_carried_up_to_its_last_used_mib_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![7u8; 1000];
        data.extend(vec![0u8; (1 << 20) + 10]);
        data.push(9);
        let path = image(dir.path(), IMAGE_SLOT, &data);
        let slot = slot_image(&path).unwrap();
        assert_eq!((slot.offset, slot.slot_bytes), (64 * SECTOR, 8192 * SECTOR));
        assert_eq!(slot.size, 2 << 20, "the second MiB holds the 9");
        let mut expected = data.clone();
        expected.resize(2 << 20, 0);
        assert_eq!(slot.sha256, hex::encode(Sha256::digest(&expected)));
    }

    #[test]
    fn an_image_without_a_slot_or_with_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), "OASIS-BOOT", b"x");
        assert!(matches!(slot_image(&path), Err(SlotImageError::NoSlot { .. })));
        let path = image(dir.path(), IMAGE_SLOT, &[]);
        assert!(matches!(slot_image(&path), Err(SlotImageError::Empty { .. })));
        let junk = dir.path().join("junk");
        std::fs::write(&junk, vec![0u8; 4096]).unwrap();
        assert!(matches!(slot_image(&junk), Err(SlotImageError::Table { .. })));
    }
}

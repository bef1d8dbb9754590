//! The volume label of an ext2/3/4 filesystem, read from its superblock.

use std::io::{self, Read, Seek, SeekFrom};

/// Where the superblock starts, from the filesystem's first byte.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// The superblock's magic (`s_magic`, little-endian at byte 56).
const MAGIC: u16 = 0xEF53;
const MAGIC_AT: usize = 56;
/// `s_volume_name`: 16 bytes at byte 120, NUL-padded.
const LABEL_AT: usize = 120;
const LABEL_LEN: usize = 16;
/// The bytes of the superblock this module reads.
pub const SUPERBLOCK_BYTES: usize = LABEL_AT + LABEL_LEN;

/// What a superblock says: `None` when `superblock` (its first [`SUPERBLOCK_BYTES`] or more) is
/// not an ext superblock; `Some(None)` for an ext filesystem without a label.
pub fn label_of_superblock(superblock: &[u8]) -> Option<Option<String>> {
    let magic = superblock.get(MAGIC_AT..MAGIC_AT + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
        return None;
    }
    let raw = superblock.get(LABEL_AT..LABEL_AT + LABEL_LEN)?;
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches([' ', '\0']);
    Some((!text.is_empty()).then(|| text.to_string()))
}

/// The label of the filesystem whose first bytes are `head` (as [`label_of_superblock`]).
pub fn label_in(head: &[u8]) -> Option<Option<String>> {
    label_of_superblock(head.get(SUPERBLOCK_OFFSET as usize..)?)
}

/// The label of the ext filesystem starting at byte `offset` of `dev` (as
/// [`label_of_superblock`]); a device too short for a superblock holds none.
pub fn label<R: Read + Seek>(dev: &mut R, offset: u64) -> io::Result<Option<Option<String>>> {
    let mut superblock = [0u8; SUPERBLOCK_BYTES];
    // Past the largest offset there is no device, and so no filesystem.
    let Some(at) = offset.checked_add(SUPERBLOCK_OFFSET) else { return Ok(None) };
    dev.seek(SeekFrom::Start(at))?;
    match dev.read_exact(&mut superblock) {
        Ok(()) => Ok(label_of_superblock(&superblock)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// A crafted filesystem head: an ext superblock with `label` at `offset`.
    fn image(offset: usize, label: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; offset + 4096];
        let sb = offset + SUPERBLOCK_OFFSET as usize;
        image[sb + MAGIC_AT..sb + MAGIC_AT + 2].copy_from_slice(&MAGIC.to_le_bytes());
        image[sb + LABEL_AT..sb + LABEL_AT + label.len()].copy_from_slice(label);
        image
    }

    #[test]
    fn labels_are_read_from_a_crafted_superblock_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::write(&path, image(4096, b"oasis-data")).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        assert_eq!(label(&mut file, 4096).unwrap(), Some(Some("oasis-data".into())));
        assert_eq!(label(&mut file, 0).unwrap(), None, "no superblock at the start");
        assert_eq!(label(&mut file, 1 << 20).unwrap(), None, "past the end: nothing");
        assert_eq!(label(&mut file, u64::MAX - 10).unwrap(), None, "past any device: nothing, not a panic");
    }

    #[test]
    fn padding_is_trimmed_and_no_label_is_none() {
        assert_eq!(label_in(&image(0, b"sixteen-chars-ok")), Some(Some("sixteen-chars-ok".into())));
        assert_eq!(label_in(&image(0, b"OASIS   ")), Some(Some("OASIS".into())));
        assert_eq!(label_in(&image(0, b"")), Some(None));
        assert_eq!(label_in(&vec![0u8; 4096]), None);
        assert_eq!(label_in(&[0u8; 100]), None, "too short is not a superblock, not a panic");
        assert_eq!(label(&mut Cursor::new(image(0, b"x")), 0).unwrap(), Some(Some("x".into())));
    }
}

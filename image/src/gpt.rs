//! GUID partition tables (UEFI specification, chapter 5), read and written without any tool.
//!
//! The appliance image is written with it at build time, and the appliance edits its own disk
//! with it at run time (adding the data partition, moving the backup table to the end of a larger
//! disk). Sectors are 512 bytes: the image is built for 512-byte disks, and the appliance refuses
//! others. A table is written whole: the protective MBR's partition record (bytes 446..512 of
//! sector 0; the boot code before it is left as it is), the primary header and entries at sectors
//! 1..=33, and the backup entries and header at the end of the disk.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Partition entries in a table, and bytes per entry (the usual, and only, layout we write).
pub const ENTRIES: usize = 128;
const ENTRY_SIZE: usize = 128;
/// Sectors the entry array takes.
const ENTRY_SECTORS: u64 = (ENTRIES * ENTRY_SIZE) as u64 / SECTOR;
/// The first sector a partition may start at.
pub const FIRST_USABLE: u64 = 2 + ENTRY_SECTORS;

/// Errors reading a table.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading or writing the disk failed.
    #[error("reading or writing the disk failed")]
    Io(#[from] io::Error),
    /// No valid GPT header at sector 1, nor at the end (`backup`: `None` when the disk has no
    /// sector to hold one).
    #[error(
        "no GUID partition table: the primary header is unusable ({}); {}",
        oasis_proto::error_chain(primary),
        if backup.is_some() { "so is the backup at the disk's end" } else { "no backup: the disk has no sectors" }
    )]
    NoTable {
        /// Why the primary header at sector 1 is unusable.
        primary: HeaderError,
        /// Why the backup header is.
        #[source]
        backup: Option<HeaderError>,
    },
    /// The disk is too small for what was asked.
    #[error("the disk has {sectors} sectors of 512 bytes, too few: {what}")]
    TooSmall {
        /// Sectors on the disk.
        sectors: u64,
        /// What did not fit.
        what: String,
    },
    /// A partition does not fit between the tables or overlaps another.
    #[error("partition {index} ({name}) at sectors {first}..={last} {problem}")]
    BadPartition {
        /// Its slot.
        index: usize,
        /// Its name.
        name: String,
        /// First sector.
        first: u64,
        /// Last sector.
        last: u64,
        /// What is wrong.
        problem: String,
    },
}

/// A GUID as stored on disk: the first three fields little-endian, the rest as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Parses the usual text form, `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
    pub const fn parse(text: &str) -> Guid {
        let t = text.as_bytes();
        assert!(t.len() == 36, "a GUID has 36 characters");
        const fn hex(c: u8) -> u8 {
            match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => panic!("not a hex digit"),
            }
        }
        // Text positions of the 16 bytes in display order.
        const POS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut display = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            display[i] = hex(t[POS[i]]) << 4 | hex(t[POS[i] + 1]);
            i += 1;
        }
        Guid::from_display_bytes(display)
    }

    /// The GUID whose text form, read as 16 bytes, is `display` (used for generated GUIDs).
    pub const fn from_display_bytes(d: [u8; 16]) -> Guid {
        Guid([d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]])
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02X}"))
    }
}

/// The partition types the appliance uses.
pub const BIOS_BOOT: Guid = Guid::parse("21686148-6449-6E6F-744E-656564454649");
/// EFI system partition.
pub const EFI_SYSTEM: Guid = Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
/// Linux filesystem data.
pub const LINUX_DATA: Guid = Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4");

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// What it is ([`EFI_SYSTEM`], …).
    pub type_guid: Guid,
    /// Its own GUID.
    pub unique_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Its name (at most 36 UTF-16 units).
    pub name: String,
}

impl Partition {
    /// Its size in sectors.
    pub fn sectors(&self) -> u64 {
        self.last_lba + 1 - self.first_lba
    }
}

/// A partition table: the disk's GUID and [`ENTRIES`] slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// The disk's GUID.
    pub disk_guid: Guid,
    /// Slot `i` is partition number `i + 1` (`/dev/vda1` is slot 0).
    pub partitions: Vec<Option<Partition>>,
}

impl Gpt {
    /// An empty table.
    pub fn new(disk_guid: Guid) -> Gpt {
        Gpt { disk_guid, partitions: vec![None; ENTRIES] }
    }

    /// The first partition with this name, with its slot.
    pub fn find(&self, name: &str) -> Option<(usize, &Partition)> {
        self.partitions.iter().enumerate().find_map(|(i, p)| p.as_ref().filter(|p| p.name == name).map(|p| (i, p)))
    }

    /// The last sector a partition may use on a disk of `sectors` sectors.
    pub fn last_usable(sectors: u64) -> u64 {
        sectors - 2 - ENTRY_SECTORS
    }

    /// Checks that every partition lies between the tables of a disk of `sectors` sectors and that
    /// none overlap.
    pub fn check(&self, sectors: u64) -> Result<(), GptError> {
        if sectors < 2 * (FIRST_USABLE + 1) {
            return Err(GptError::TooSmall { sectors, what: "two partition tables".into() });
        }
        let last_usable = Gpt::last_usable(sectors);
        let used: Vec<(usize, &Partition)> =
            self.partitions.iter().enumerate().filter_map(|(i, p)| p.as_ref().map(|p| (i, p))).collect();
        for &(i, p) in &used {
            let bad = |problem: &str| GptError::BadPartition {
                index: i + 1,
                name: p.name.clone(),
                first: p.first_lba,
                last: p.last_lba,
                problem: problem.to_string(),
            };
            // A table read from another tool's layout may have more slots than we write.
            if i >= ENTRIES {
                return Err(bad(&format!("is past the {ENTRIES} entries this table is written with")));
            }
            if p.first_lba < FIRST_USABLE || p.last_lba > last_usable || p.first_lba > p.last_lba {
                return Err(bad(&format!("is outside the usable sectors {FIRST_USABLE}..={last_usable}")));
            }
            if p.name.encode_utf16().count() > 36 {
                return Err(bad("has a name longer than 36 characters"));
            }
            if let Some((j, _)) =
                used.iter().find(|&&(j, q)| j != i && p.first_lba <= q.last_lba && q.first_lba <= p.last_lba)
            {
                return Err(bad(&format!("overlaps partition {}", j + 1)));
            }
        }
        Ok(())
    }

    fn entries_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; ENTRIES * ENTRY_SIZE];
        for (slot, p) in self.partitions.iter().enumerate().take(ENTRIES) {
            let Some(p) = p else { continue };
            let e = &mut out[slot * ENTRY_SIZE..(slot + 1) * ENTRY_SIZE];
            e[0..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.unique_guid.0);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (k, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * k..58 + 2 * k].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    fn header(&self, sectors: u64, primary: bool, entries_crc: u32) -> [u8; SECTOR as usize] {
        let last = sectors - 1;
        let (current, backup, entries_lba) = if primary { (1, last, 2) } else { (last, 1, last - ENTRY_SECTORS) };
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&FIRST_USABLE.to_le_bytes());
        h[48..56].copy_from_slice(&Gpt::last_usable(sectors).to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Writes the protective MBR's partition record, both headers and both entry arrays to a disk
    /// of `sectors` sectors. Bytes 0..446 of sector 0 (boot code) are not touched.
    pub fn write(&self, disk: &mut (impl Write + Seek), sectors: u64) -> Result<(), GptError> {
        self.check(sectors)?;
        let mut record = [0u8; 66];
        // One partition of type 0xEE covering the disk from sector 1; CHS fields as the spec says.
        record[0..8].copy_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF]);
        record[8..12].copy_from_slice(&1u32.to_le_bytes());
        record[12..16].copy_from_slice(&u32::try_from(sectors - 1).unwrap_or(u32::MAX).to_le_bytes());
        record[64..66].copy_from_slice(&[0x55, 0xAA]);
        disk.seek(SeekFrom::Start(446))?;
        disk.write_all(&record)?;

        let entries = self.entries_bytes();
        let entries_crc = crc32(&entries);
        disk.seek(SeekFrom::Start(SECTOR))?;
        disk.write_all(&self.header(sectors, true, entries_crc))?;
        disk.write_all(&entries)?;
        disk.seek(SeekFrom::Start((sectors - 1 - ENTRY_SECTORS) * SECTOR))?;
        disk.write_all(&entries)?;
        disk.write_all(&self.header(sectors, false, entries_crc))?;
        disk.flush()?;
        Ok(())
    }

    /// Reads the primary table of a disk of `sectors` sectors, or the backup at `backup_lba` when
    /// the primary is damaged. Returns the table and where its backup header says it lies (the
    /// backup of an image written to a larger disk is not at the disk's end).
    pub fn read(disk: &mut (impl Read + Seek), sectors: u64) -> Result<(Gpt, u64), GptError> {
        match read_at(disk, 1) {
            Ok(found) => Ok(found),
            Err(primary) => {
                let Some(last) = sectors.checked_sub(1) else {
                    return Err(GptError::NoTable { primary, backup: None });
                };
                read_at(disk, last).map_err(|backup| GptError::NoTable { primary, backup: Some(backup) })
            }
        }
    }
}

/// Why the GPT header at one sector, or its entries, cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Sectors as large as the fields allow lie past any disk; their byte offsets overflow.
    #[error("the {what} at sector {lba} lie past the end of any disk")]
    PastTheEnd {
        /// The header or its entries.
        what: &'static str,
        /// Where they would be.
        lba: u64,
    },
    /// Reading the header or its entries failed.
    #[error("cannot read the {what} at sector {lba}")]
    Read {
        /// The header or its entries.
        what: &'static str,
        /// Where they are.
        lba: u64,
        /// The disk's error.
        source: io::Error,
    },
    /// Anything else wrong in the header or the entries.
    #[error("{0}")]
    Invalid(String),
}

/// Reads the header at `lba` and its entries; returns the table and the other header's sector.
fn read_at(disk: &mut (impl Read + Seek), lba: u64) -> Result<(Gpt, u64), HeaderError> {
    let past_the_end = |what, lba| HeaderError::PastTheEnd { what, lba };
    let read = |what, lba| move |source| HeaderError::Read { what, lba, source };
    let mut h = [0u8; SECTOR as usize];
    let at = lba.checked_mul(SECTOR).ok_or_else(|| past_the_end("header", lba))?;
    disk.seek(SeekFrom::Start(at)).map_err(read("header", lba))?;
    disk.read_exact(&mut h).map_err(read("header", lba))?;
    if &h[0..8] != b"EFI PART" {
        return Err(HeaderError::Invalid(format!("no GPT signature at sector {lba}")));
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or_default());
    let size = u32_at(12) as usize;
    if !(92..=SECTOR as usize).contains(&size) {
        return Err(HeaderError::Invalid(format!("header size {size} at sector {lba}")));
    }
    let mut zeroed = h;
    zeroed[16..20].fill(0);
    if crc32(&zeroed[..size]) != u32_at(16) {
        return Err(HeaderError::Invalid(format!("header checksum mismatch at sector {lba}")));
    }
    let (count, entry_size) = (u32_at(80) as usize, u32_at(84) as usize);
    if count == 0 || count > 1024 || !(128..=1024).contains(&entry_size) || entry_size % 8 != 0 {
        return Err(HeaderError::Invalid(format!("{count} entries of {entry_size} bytes")));
    }
    let mut entries = vec![0u8; count * entry_size];
    let entries_at = u64_at(72).checked_mul(SECTOR).ok_or_else(|| past_the_end("partition entries", u64_at(72)))?;
    disk.seek(SeekFrom::Start(entries_at)).map_err(read("partition entries", u64_at(72)))?;
    disk.read_exact(&mut entries).map_err(read("partition entries", u64_at(72)))?;
    if crc32(&entries) != u32_at(88) {
        return Err(HeaderError::Invalid("partition entries checksum mismatch".into()));
    }
    let mut gpt = Gpt::new(Guid(h[56..72].try_into().unwrap_or_default()));
    gpt.partitions = vec![None; count.max(ENTRIES)];
    for (slot, e) in entries.chunks(entry_size).enumerate() {
        let type_guid = Guid(e[0..16].try_into().unwrap_or_default());
        if type_guid == Guid::default() {
            continue;
        }
        let units: Vec<u16> =
            e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
        gpt.partitions[slot] = Some(Partition {
            type_guid,
            unique_guid: Guid(e[16..32].try_into().unwrap_or_default()),
            first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap_or_default()),
            last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap_or_default()),
            attributes: u64::from_le_bytes(e[48..56].try_into().unwrap_or_default()),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok((gpt, u64_at(32)))
}

/// CRC-32 (IEEE), as GPT uses.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn table() -> Gpt {
        let mut gpt = Gpt::new(Guid::parse("11111111-2222-3333-4444-555555555555"));
        gpt.partitions[0] = Some(Partition {
            type_guid: BIOS_BOOT,
            unique_guid: Guid::parse("AAAAAAAA-0000-0000-0000-000000000001"),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 0,
            name: "BIOS boot".into(),
        });
        gpt.partitions[1] = Some(Partition {
            type_guid: EFI_SYSTEM,
            unique_guid: Guid::parse("AAAAAAAA-0000-0000-0000-000000000002"),
            first_lba: 4096,
            last_lba: 8191,
            attributes: 0,
            name: "OASIS-BOOT".into(),
        });
        gpt
    }

    #[test]
    fn guid_text_round_trips_in_mixed_endian_form() {
        let g = EFI_SYSTEM;
        assert_eq!(g.to_string(), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(g.0[..4], [0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(g.0[8..10], [0xBA, 0x4B]);
    }

    #[test]
    fn written_table_reads_back_and_keeps_boot_code() {
        let sectors = 16384;
        let mut disk = Cursor::new(vec![0xAB; (sectors * SECTOR) as usize]);
        table().write(&mut disk, sectors).unwrap();
        let bytes = disk.get_ref();
        assert!(bytes[..446].iter().all(|&b| b == 0xAB), "boot code overwritten");
        assert_eq!(bytes[450], 0xEE);
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        let (read, backup) = Gpt::read(&mut disk, sectors).unwrap();
        assert_eq!(read, table());
        assert_eq!(backup, sectors - 1);
    }

    #[test]
    fn damaged_primary_falls_back_to_the_backup() {
        let sectors = 16384;
        let mut disk = Cursor::new(vec![0; (sectors * SECTOR) as usize]);
        table().write(&mut disk, sectors).unwrap();
        disk.get_mut()[SECTOR as usize + 100] ^= 0xFF; // a bit flip in the primary entries' region
        disk.get_mut()[(2 * SECTOR) as usize] ^= 0xFF;
        let (read, _) = Gpt::read(&mut disk, sectors).unwrap();
        assert_eq!(read, table());
        disk.get_mut()[((sectors - 1) * SECTOR) as usize] ^= 0xFF;
        let err = Gpt::read(&mut disk, sectors).unwrap_err().to_string();
        assert!(err.contains("primary") && err.contains("backup"), "{err}");
    }

    #[test]
    fn overlapping_or_outside_partitions_are_refused() {
        let mut gpt = table();
        gpt.partitions[1].as_mut().unwrap().first_lba = 4000;
        let err = gpt.check(16384).unwrap_err().to_string();
        assert!(err.contains("overlaps partition"), "{err}");
        let mut gpt = table();
        gpt.partitions[1].as_mut().unwrap().last_lba = 16384 - 10;
        assert!(gpt.check(16384).unwrap_err().to_string().contains("outside"));
    }

    /// Found by the `gpt` fuzz target (at once): a disk too small to hold a sector (a card reader
    /// with no card reports size 0) overflowed `sectors - 1` looking for the backup table: a panic
    /// in a debug build, a read at a wrapped offset in a release build.
    #[test]
    fn gpt_read_of_a_disk_without_sectors_is_an_error_not_a_panic() {
        let err = Gpt::read(&mut Cursor::new(Vec::new()), 0).unwrap_err();
        assert!(matches!(err, GptError::NoTable { .. }), "{err}");
        let err = Gpt::read(&mut Cursor::new(vec![0; 100]), 0).unwrap_err();
        assert!(err.to_string().contains("no backup"), "{err}");
    }

    /// A disk that cannot be read keeps the disk's error as the cause of the backup's failure,
    /// and says the primary's once.
    #[test]
    fn an_unreadable_disk_keeps_its_read_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(5))
            }
        }
        impl Seek for Broken {
            fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
                Ok(0)
            }
        }
        let err = Gpt::read(&mut Broken, 100).unwrap_err();
        let eio = io::Error::from_raw_os_error(5).to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause.filter(|c| !c.is::<io::Error>()) {
            cause = c.source();
        }
        assert_eq!(cause.map(ToString::to_string), Some(eio.clone()), "{err:?}");
        let text = oasis_proto::error_chain(&err);
        assert_eq!(
            text,
            format!(
                "no GUID partition table: the primary header is unusable (cannot read the header at sector 1: \
                 {eio}); so is the backup at the disk's end: cannot read the header at sector 99: {eio}"
            )
        );
    }

    /// Sets field `at` of the header at `lba` and makes its checksum right again.
    fn patch_header(disk: &mut [u8], lba: u64, at: usize, value: &[u8]) {
        let h = &mut disk[(lba * SECTOR) as usize..((lba + 1) * SECTOR) as usize];
        h[at..at + value.len()].copy_from_slice(value);
        h[16..20].fill(0);
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    /// Found by the `gpt` fuzz target (in seconds): a header (checksum right) whose entry array
    /// starts at a sector past any disk overflowed `lba * 512`; the table at the other end is used
    /// instead.
    #[test]
    fn gpt_entries_past_any_disk_are_an_error_not_a_panic() {
        let sectors = 16384;
        let mut disk = Cursor::new(vec![0; (sectors * SECTOR) as usize]);
        table().write(&mut disk, sectors).unwrap();
        patch_header(disk.get_mut(), 1, 72, &(u64::MAX / 256).to_le_bytes());
        let (read, _) = Gpt::read(&mut disk, sectors).unwrap();
        assert_eq!(read, table(), "the backup table, not a panic");
        patch_header(disk.get_mut(), sectors - 1, 72, &u64::MAX.to_le_bytes());
        let err = Gpt::read(&mut disk, sectors).unwrap_err().to_string();
        assert!(err.contains("past the end"), "{err}");
    }

    /// Seen writing the `gpt` fuzz target's round trip (the fuzzer did not reach it in 5 million
    /// runs): a table read with more than 128 entries (another tool's layout) passed `check` with a
    /// partition in slot 129 or later, and `write`, which writes 128 entries, dropped it without a
    /// word.
    #[test]
    fn gpt_partition_past_the_written_entries_is_refused_not_dropped() {
        let mut gpt = table();
        gpt.partitions.resize(256, None);
        gpt.partitions[200] = Some(Partition { first_lba: 9000, last_lba: 9999, ..gpt.partitions[1].clone().unwrap() });
        let err = gpt.check(16384).unwrap_err().to_string();
        assert!(err.contains("partition 201") && err.contains("128 entries"), "{err}");
        let mut disk = Cursor::new(vec![0; (16384 * SECTOR) as usize]);
        assert!(gpt.write(&mut disk, 16384).is_err());
    }

    #[test]
    fn sfdisk_reads_what_we_write() {
        // util-linux is on every Debian; it is the second opinion on our tables.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let sectors = 16384;
        let mut file = std::fs::File::create(&path).unwrap();
        file.set_len(sectors * SECTOR).unwrap();
        table().write(&mut file, sectors).unwrap();
        let out = std::process::Command::new("sfdisk").arg("--dump").arg(&path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("label: gpt"), "{text}");
        assert!(
            text.contains("start=        4096, size=        4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{text}"
        );
        assert!(text.contains("name=\"OASIS-BOOT\""), "{text}");
    }
}

//! Which filesystem a block device holds and its label, read from the superblock ourselves: no
//! blkid in the initramfs, and nothing is mounted that is not the stick.
//!
//! Probed in this order, so a stick reformatted over an older filesystem is seen as what it is
//! now (each formatter overwrites what the later probes would find, but not the reverse):
//! - FAT12/16/32: a valid BIOS parameter block at sector 0; the label from the volume label
//!   entry of the root directory (what Windows changes and `blkid` prefers), else the one in the
//!   extended boot record.
//! - ext2/3/4: magic 0xEF53 at 1024 + 56, `s_volume_name` at 1024 + 120 (16 bytes).
//! - ISO 9660: the primary volume descriptor in the descriptor set from sector 16 (2048-byte
//!   sectors), its volume identifier at offset 40 (32 bytes).

use std::io::{self, Read, Seek, SeekFrom};

/// A filesystem the appliance can read a configuration from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum FsType {
    Vfat,
    /// ext2, ext3 or ext4 (the ext4 driver mounts all three).
    Ext4,
    Iso9660,
}

impl FsType {
    /// The type name mount(2) takes.
    pub fn mount_type(self) -> &'static str {
        match self {
            FsType::Vfat => "vfat",
            FsType::Ext4 => "ext4",
            FsType::Iso9660 => "iso9660",
        }
    }

    /// ISO 9660 is read-only: such a stick can offer a configuration but take no report.
    pub fn read_only(self) -> bool {
        self == FsType::Iso9660
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.mount_type())
    }
}

/// What a device holds: a filesystem and its label, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub fs: FsType,
    pub label: Option<String>,
}

/// Identifies the filesystem on `dev`; `None` when it is none of FAT, ext or ISO 9660.
pub fn identify<R: Read + Seek>(dev: &mut R) -> io::Result<Option<Volume>> {
    if let Some(label) = fat_label(dev)? {
        return Ok(Some(Volume { fs: FsType::Vfat, label }));
    }
    if let Some(label) = ext_label(dev)? {
        return Ok(Some(Volume { fs: FsType::Ext4, label }));
    }
    if let Some(label) = iso9660_label(dev)? {
        return Ok(Some(Volume { fs: FsType::Iso9660, label }));
    }
    Ok(None)
}

/// Reads `buf.len()` bytes at `offset`; `false` when the device is shorter.
fn read_at<R: Read + Seek>(dev: &mut R, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
    dev.seek(SeekFrom::Start(offset))?;
    match dev.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// A label as stored: padding (spaces or NULs) trimmed; empty is none.
fn label_text(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end_matches([' ', '\0']);
    (!text.is_empty()).then(|| text.to_string())
}

/// `Some(label)` when sector 0 is a FAT boot sector.
fn fat_label<R: Read + Seek>(dev: &mut R) -> io::Result<Option<Option<String>>> {
    let mut boot = [0u8; 512];
    if !read_at(dev, 0, &mut boot)? {
        return Ok(None);
    }
    let bytes_per_sector = u16_at(&boot, 11) as u64;
    let per_cluster = boot[13] as u64;
    let reserved = u16_at(&boot, 14) as u64;
    let fats = boot[16] as u64;
    let root_entries = u16_at(&boot, 17) as u64;
    let media = boot[21];
    let fat_size16 = u16_at(&boot, 22) as u64;
    let valid = matches!(boot[0], 0xEB | 0xE9)
        && boot[510..512] == [0x55, 0xAA]
        && matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && per_cluster.is_power_of_two()
        && reserved >= 1
        && (1..=4).contains(&fats)
        && (media == 0xF0 || media >= 0xF8);
    if !valid {
        return Ok(None);
    }
    let fat32 = fat_size16 == 0;
    let (boot_label, root_label) = if fat32 {
        let fat_size = u32_at(&boot, 36) as u64;
        let root_cluster = u32_at(&boot, 44) as u64;
        if fat_size == 0 {
            return Ok(None);
        }
        let data_start = (reserved + fats * fat_size) * bytes_per_sector;
        let fat_start = reserved * bytes_per_sector;
        let cluster_bytes = per_cluster * bytes_per_sector;
        let label = (boot[66] == 0x29).then(|| &boot[71..82]);
        let mut root_label = None;
        let mut cluster = root_cluster;
        // The root directory's cluster chain, bounded: a damaged FAT must not loop forever.
        for _ in 0..256 {
            if !(2..0x0FFF_FFF7).contains(&cluster) {
                break;
            }
            let mut dir = vec![0u8; cluster_bytes as usize];
            if !read_at(dev, data_start + (cluster - 2) * cluster_bytes, &mut dir)? {
                break;
            }
            match volume_entry(&dir) {
                DirScan::Found(l) => {
                    root_label = Some(l);
                    break;
                }
                DirScan::End => break,
                DirScan::More => {}
            }
            let mut next = [0u8; 4];
            if !read_at(dev, fat_start + cluster * 4, &mut next)? {
                break;
            }
            cluster = (u32::from_le_bytes(next) & 0x0FFF_FFFF) as u64;
        }
        (label, root_label)
    } else {
        let label = (boot[38] == 0x29).then(|| &boot[43..54]);
        let mut dir = vec![0u8; (root_entries * 32) as usize];
        let root_start = (reserved + fats * fat_size16) * bytes_per_sector;
        let root_label = match read_at(dev, root_start, &mut dir)? {
            true => match volume_entry(&dir) {
                DirScan::Found(l) => Some(l),
                _ => None,
            },
            false => None,
        };
        (label, root_label)
    };
    let label = match root_label {
        Some(raw) => label_text(&raw),
        None => boot_label.and_then(label_text),
    };
    // "NO NAME" is what formatters write for no label.
    Ok(Some(label.filter(|l| l != "NO NAME")))
}

enum DirScan {
    Found([u8; 11]),
    End,
    More,
}

/// The volume label entry among 32-byte directory entries.
fn volume_entry(dir: &[u8]) -> DirScan {
    for entry in dir.chunks_exact(32) {
        match entry[0] {
            0x00 => return DirScan::End,
            0xE5 => continue,
            _ => {}
        }
        let attr = entry[11];
        // 0x0F marks a long-name entry; a directory is never the label.
        if attr != 0x0F && attr & 0x08 != 0 && attr & 0x10 == 0 {
            let mut name = [0u8; 11];
            name.copy_from_slice(&entry[..11]);
            if name[0] == 0x05 {
                name[0] = 0xE5;
            }
            return DirScan::Found(name);
        }
    }
    DirScan::More
}

/// `Some(label)` when the ext superblock's magic is there.
pub fn ext_label<R: Read + Seek>(dev: &mut R) -> io::Result<Option<Option<String>>> {
    oasis_host::ext::label(dev, 0)
}

/// `Some(label)` when an ISO 9660 volume descriptor set holds a primary volume descriptor.
fn iso9660_label<R: Read + Seek>(dev: &mut R) -> io::Result<Option<Option<String>>> {
    let mut sector = [0u8; 2048];
    for n in 16..16 + 32 {
        if !read_at(dev, n * 2048, &mut sector)? || &sector[1..6] != b"CD001" {
            return Ok(None);
        }
        match sector[0] {
            1 => return Ok(Some(label_text(&sector[40..72]))),
            255 => return Ok(None),
            // A boot record (El Torito) or a supplementary descriptor (Joliet) may come first.
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};
    use std::process::Command;

    use super::*;

    fn fat(size: u64, fat_type: fatfs::FatType, label: Option<&str>) -> Vec<u8> {
        let mut image = Cursor::new(vec![0u8; size as usize]);
        let mut options = fatfs::FormatVolumeOptions::new().fat_type(fat_type);
        if fat_type == fatfs::FatType::Fat32 {
            options = options.bytes_per_cluster(512);
        }
        if let Some(label) = label {
            let mut raw = [b' '; 11];
            raw[..label.len()].copy_from_slice(label.as_bytes());
            options = options.volume_label(raw);
        }
        fatfs::format_volume(&mut image, options).unwrap();
        image.into_inner()
    }

    fn volume(image: &[u8]) -> Option<Volume> {
        identify(&mut Cursor::new(image)).unwrap()
    }

    fn vfat(label: &str) -> Option<Volume> {
        Some(Volume { fs: FsType::Vfat, label: Some(label.into()) })
    }

    #[test]
    fn fat12_16_32_boot_sector_labels() {
        for (size, fat_type) in
            [(2 << 20, fatfs::FatType::Fat12), (16 << 20, fatfs::FatType::Fat16), (40 << 20, fatfs::FatType::Fat32)]
        {
            assert_eq!(volume(&fat(size, fat_type, Some("OASIS"))), vfat("OASIS"), "{fat_type:?}");
            let unlabelled = volume(&fat(size, fat_type, None)).unwrap();
            assert_eq!((unlabelled.fs, unlabelled.label), (FsType::Vfat, None), "{fat_type:?}: NO NAME is no label");
        }
    }

    /// Like Windows after renaming a volume: the root directory's label entry is what counts,
    /// wherever it is in the directory.
    #[test]
    fn the_root_directory_label_wins_over_the_boot_sector() {
        for (size, fat_type) in [(16 << 20, fatfs::FatType::Fat16), (40 << 20, fatfs::FatType::Fat32)] {
            let mut image = fat(size, fat_type, Some("OLD"));
            {
                let fs = fatfs::FileSystem::new(Cursor::new(&mut image), fatfs::FsOptions::new()).unwrap();
                // For FAT32 past the first cluster of the root directory (16 entries of 32
                // bytes with 512-byte clusters).
                for i in 0..20 {
                    fs.root_dir().create_file(&format!("F{i}.TXT")).unwrap().write_all(b"x").unwrap();
                }
            }
            let find = |image: &[u8], name: &[u8]| image.windows(name.len()).position(|w| w == name).unwrap();
            // The formatter's root directory entry (attribute 0x08) says OLD, as the boot
            // sector (and FAT32's backup of it) does.
            let root_entry = find(&image, b"OLD        \x08");

            let mut renamed = image.clone();
            renamed[root_entry..root_entry + 11].copy_from_slice(b"OASIS      ");
            assert_eq!(volume(&renamed), vfat("OASIS"), "{fat_type:?}: renamed in the root directory only");

            // The label entry deleted and a later entry made the label.
            let mut moved = image.clone();
            moved[root_entry] = 0xE5;
            let last = find(&moved, b"F19     TXT");
            moved[last..last + 11].copy_from_slice(b"OASIS      ");
            moved[last + 11] = 0x08;
            assert_eq!(volume(&moved), vfat("OASIS"), "{fat_type:?}: a label entry after deleted and file entries");
        }
    }

    #[test]
    fn the_stick_image_builder_is_recognised_through_its_partition() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stick.img");
        oasis_image::usb_stick::build_usb_stick(&[("oasis.toml", b"x")], &path, 64).unwrap();
        let image = std::fs::read(&path).unwrap();
        assert_eq!(volume(&image), None, "an MBR is not a FAT boot sector");
        assert_eq!(volume(&image[1 << 20..]), vfat("OASIS"));
    }

    #[test]
    fn ext4_labels_from_mke2fs() {
        let dir = tempfile::tempdir().unwrap();
        for (label, want) in
            [(Some("OASIS"), Some("OASIS")), (Some("sixteen-chars-ok"), Some("sixteen-chars-ok")), (None, None)]
        {
            let path = dir.path().join("ext4.img");
            let _ = std::fs::remove_file(&path);
            let mut cmd = Command::new("mke2fs");
            cmd.args(["-q", "-F", "-t", "ext4"]);
            if let Some(label) = label {
                cmd.args(["-L", label]);
            }
            let out = cmd.arg(&path).arg("8M").output().expect("mke2fs (e2fsprogs) is installed");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let image = std::fs::read(&path).unwrap();
            assert_eq!(volume(&image), Some(Volume { fs: FsType::Ext4, label: want.map(String::from) }));
        }
    }

    /// A minimal ISO 9660 descriptor set: `first` at sector 16, then a primary volume descriptor
    /// with `label`, then the terminator.
    fn iso(first: Option<u8>, label: &str) -> Vec<u8> {
        let mut image = vec![0u8; 20 * 2048];
        let mut sector = 16;
        let mut descriptor = |kind: u8, image: &mut Vec<u8>| {
            let d = &mut image[sector * 2048..(sector + 1) * 2048];
            d[0] = kind;
            d[1..6].copy_from_slice(b"CD001");
            d[6] = 1;
            sector += 1;
            sector - 1
        };
        if let Some(kind) = first {
            descriptor(kind, &mut image);
        }
        let pvd = descriptor(1, &mut image);
        let mut id = [b' '; 32];
        id[..label.len()].copy_from_slice(label.as_bytes());
        image[pvd * 2048 + 40..pvd * 2048 + 72].copy_from_slice(&id);
        descriptor(255, &mut image);
        image
    }

    #[test]
    fn iso9660_primary_volume_descriptor() {
        let want = Some(Volume { fs: FsType::Iso9660, label: Some("OASIS".into()) });
        assert_eq!(volume(&iso(None, "OASIS")), want);
        assert_eq!(volume(&iso(Some(0), "OASIS")), want, "after an El Torito boot record");
        let mut no_pvd = iso(None, "OASIS");
        no_pvd[16 * 2048] = 255;
        assert_eq!(volume(&no_pvd), None);
        assert_eq!(volume(&iso(None, "OASIS")[..17 * 2048 - 1]), None, "truncated");
    }

    #[test]
    fn other_contents_are_nothing() {
        assert_eq!(volume(&[]), None);
        assert_eq!(volume(&vec![0u8; 1 << 20]), None);
        // A GRUB-style MBR: a jump, then no parameter block.
        let mut mbr = vec![0u8; 64 << 10];
        mbr[..3].copy_from_slice(&[0xEB, 0x63, 0x90]);
        mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(volume(&mbr), None);
        let mut garbage = vec![0xA5u8; 64 << 10];
        garbage[1024 + 56..1024 + 58].copy_from_slice(&[0, 0]);
        assert_eq!(volume(&garbage), None);
    }
}

//! Finding configuration sticks: every block device in `/sys/class/block` (whole disks and
//! partitions) whose filesystem carries the label `OASIS`, read from its device node.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::label::{self, FsType};

/// The label a configuration stick carries (compared without regard to case: FAT tools
/// upper-case labels, others keep what was typed).
pub const LABEL: &str = oasis_image::usb_stick::LABEL;

/// Where block devices are listed and where their nodes are: `/sys` and `/dev` on a machine,
/// temporary directories in tests.
#[derive(Debug, Clone)]
pub struct Scanner {
    pub sys_root: PathBuf,
    pub dev_root: PathBuf,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner { sys_root: PathBuf::from("/sys"), dev_root: PathBuf::from("/dev") }
    }
}

/// A block device holding a filesystem labelled `OASIS`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stick {
    /// Kernel name: `sdb1`, `sdc`, `loop0p1`.
    pub name: String,
    /// Its device node.
    pub device: PathBuf,
    pub fs: FsType,
    pub label: String,
    pub size_bytes: u64,
    /// The disk's sequence number (`diskseq`, Linux 5.15 and later): a new number for every
    /// disk attached, so a stick pulled and plugged back in is a new stick.
    pub diskseq: Option<u64>,
}

impl std::fmt::Display for Stick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {} label {}, {} MiB)",
            self.name,
            self.device.display(),
            self.fs,
            self.label,
            self.size_bytes >> 20
        )
    }
}

/// The configuration sticks present now, with the default roots.
pub fn scan() -> Vec<Stick> {
    Scanner::default().scan()
}

impl Scanner {
    /// Every block device labelled `OASIS`, by name. A whole disk that is itself the volume (a
    /// superfloppy, an ISO image) hides its partitions: an ISO hybrid's first partition is the
    /// same volume again. Devices that cannot be read (an empty card reader, a drive without a
    /// disc) are skipped.
    pub fn scan(&self) -> Vec<Stick> {
        let class = self.sys_root.join("class/block");
        let Ok(entries) = std::fs::read_dir(&class) else {
            tracing::warn!("{} cannot be read: no USB sticks can be found", class.display());
            return vec![];
        };
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let mut found: Vec<(Stick, Option<String>)> = vec![];
        for name in names {
            let sys = class.join(&name);
            let sectors: u64 = read_trimmed(&sys.join("size")).and_then(|s| s.parse().ok()).unwrap_or(0);
            if sectors == 0 {
                continue;
            }
            // A partition's directory sits inside its disk's.
            let disk = sys.join("partition").exists().then(|| sys.canonicalize().ok()).flatten().and_then(|p| {
                let parent = p.parent()?.to_path_buf();
                Some((parent.file_name()?.to_string_lossy().into_owned(), parent))
            });
            let diskseq_dir = disk.as_ref().map(|(_, dir)| dir.clone()).unwrap_or_else(|| sys.clone());
            let device = self.dev_root.join(&name);
            let volume = match File::open(&device).and_then(|mut f| label::identify(&mut f)) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(device = %device.display(), "not probed: {e}", e = oasis_proto::error_chain(&e));
                    continue;
                }
            };
            let Some(label) = volume.label.filter(|l| l.eq_ignore_ascii_case(LABEL)) else { continue };
            let stick = Stick {
                name,
                device,
                fs: volume.fs,
                label,
                size_bytes: sectors * 512,
                diskseq: read_trimmed(&diskseq_dir.join("diskseq")).and_then(|s| s.parse().ok()),
            };
            found.push((stick, disk.map(|(name, _)| name)));
        }
        let whole: Vec<String> = found.iter().filter(|(_, disk)| disk.is_none()).map(|(s, _)| s.name.clone()).collect();
        found.into_iter().filter(|(_, disk)| disk.as_ref().is_none_or(|d| !whole.contains(d))).map(|(s, _)| s).collect()
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::fake_system::{fat, stick_image, FakeSystem};
    use super::*;

    #[test]
    fn partitions_and_superfloppies_labelled_oasis_are_found() {
        let sys = FakeSystem::new();
        let image = stick_image(sys.dir.path());
        // A partitioned stick (as `oasis image build usb-stick` makes), a superfloppy with a
        // lower-case label, an unrelated FAT disk, an empty card reader, a disk without a node.
        sys.add("sdb", 7, &image, &[("sdb1", &image[1 << 20..])]);
        sys.add("sdc", 9, &fat(b"oasis      "), &[]);
        sys.add("sdd", 10, &fat(b"BACKUP     "), &[]);
        sys.add("sde", 11, &[], &[]);
        sys.add("sda", 1, &vec![0u8; 1 << 20], &[("sda1", &vec![0u8; 1 << 20])]);
        std::fs::remove_file(sys.dir.path().join("dev/sda1")).unwrap();

        let sticks = sys.scanner().scan();
        let summary: Vec<(&str, FsType, &str, Option<u64>)> =
            sticks.iter().map(|s| (s.name.as_str(), s.fs, s.label.as_str(), s.diskseq)).collect();
        assert_eq!(summary, [("sdb1", FsType::Vfat, "OASIS", Some(7)), ("sdc", FsType::Vfat, "oasis", Some(9))]);
        assert_eq!(sticks[0].device, sys.dir.path().join("dev/sdb1"));
        assert_eq!(sticks[0].size_bytes, 47 << 20);
    }

    #[test]
    fn an_iso_hybrid_is_found_once_as_its_whole_disk() {
        let sys = FakeSystem::new();
        let mut iso = vec![0u8; 20 * 2048];
        for (sector, kind) in [(16, 1u8), (17, 255)] {
            let d = &mut iso[sector * 2048..];
            d[0] = kind;
            d[1..6].copy_from_slice(b"CD001");
            d[6] = 1;
        }
        iso[16 * 2048 + 40..16 * 2048 + 72].copy_from_slice(b"OASIS                           ");
        sys.add("sr0", 3, &iso, &[("sr0p1", &iso)]);
        let names: Vec<String> = sys.scanner().scan().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["sr0"]);
    }

    #[test]
    fn no_sysfs_is_no_sticks() {
        let scanner = Scanner { sys_root: "/nonexistent".into(), dev_root: "/nonexistent".into() };
        assert!(scanner.scan().is_empty());
    }
}

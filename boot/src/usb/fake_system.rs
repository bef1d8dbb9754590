//! A fake `/sys` and `/dev` for the scanner's and the watcher's tests.

use std::os::unix::fs::symlink;
use std::path::Path;

use super::devices::Scanner;

/// A fake `/sys` and `/dev`: `disk` with the given image, and partitions (name, image) as
/// the kernel lays them out (class/block links into the device tree, partitions inside
/// their disk's directory).
#[derive(Debug)]
pub struct FakeSystem {
    pub dir: tempfile::TempDir,
}

impl FakeSystem {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/class/block")).unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        FakeSystem { dir }
    }

    pub fn scanner(&self) -> Scanner {
        Scanner { sys_root: self.dir.path().join("sys"), dev_root: self.dir.path().join("dev") }
    }

    pub fn add(&self, disk: &str, seq: u64, image: &[u8], partitions: &[(&str, &[u8])]) {
        let root = self.dir.path();
        let disk_dir = root.join("sys/devices/usb1/block").join(disk);
        std::fs::create_dir_all(&disk_dir).unwrap();
        std::fs::write(disk_dir.join("size"), format!("{}\n", image.len() / 512)).unwrap();
        std::fs::write(disk_dir.join("diskseq"), format!("{seq}\n")).unwrap();
        symlink(&disk_dir, root.join("sys/class/block").join(disk)).unwrap();
        std::fs::write(root.join("dev").join(disk), image).unwrap();
        for (i, (name, image)) in partitions.iter().enumerate() {
            let part_dir = disk_dir.join(name);
            std::fs::create_dir_all(&part_dir).unwrap();
            std::fs::write(part_dir.join("size"), format!("{}\n", image.len() / 512)).unwrap();
            std::fs::write(part_dir.join("partition"), format!("{}\n", i + 1)).unwrap();
            symlink(&part_dir, root.join("sys/class/block").join(name)).unwrap();
            std::fs::write(root.join("dev").join(name), image).unwrap();
        }
    }

    /// Removes a disk and its partitions, as pulling the stick does.
    pub fn remove(&self, disk: &str) {
        let root = self.dir.path();
        let class = root.join("sys/class/block");
        for entry in std::fs::read_dir(&class).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(disk) {
                std::fs::remove_file(entry.path()).unwrap();
                let _ = std::fs::remove_file(root.join("dev").join(&name));
            }
        }
        std::fs::remove_dir_all(root.join("sys/devices/usb1/block").join(disk)).unwrap();
    }
}

pub fn stick_image(dir: &Path) -> Vec<u8> {
    let path = dir.join("stick.img");
    oasis_image::usb_stick::build_usb_stick(&[("oasis.toml", b"x")], &path, 48).unwrap();
    std::fs::read(path).unwrap()
}

pub fn fat(label: &[u8; 11]) -> Vec<u8> {
    let mut image = std::io::Cursor::new(vec![0u8; 4 << 20]);
    fatfs::format_volume(&mut image, fatfs::FormatVolumeOptions::new().volume_label(*label)).unwrap();
    image.into_inner()
}

//! The appliance's own disk: the EFI system partition GRUB booted from, the slot holding the
//! running system's files ([`BootDisk::boot_files`]; which slot runs is `crate::slots::Boot`),
//! and the data partition where the store lives.
//!
//! The image ([`oasis_image::appliance`]) has no data partition; the first boot adds it from
//! [`DATA_FIRST`] to the end of the disk and formats it ext4 (label [`DATA_NAME`]). Later boots
//! check it (`e2fsck -p`) and mount it. When the table lacks it but its filesystem is there (a
//! newer image was written over the disk: an update), the entry is added back over the same
//! sectors and nothing is formatted. When the disk is larger than the partition (the image was
//! written to a larger disk, or a VM disk grew), the partition and its filesystem are grown.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;

use oasis_host::command::CommandError;
use oasis_host::mount::MsFlags;
use std::time::{Duration, Instant};

use oasis_image::appliance::{Slot, DATA_FIRST, DATA_NAME, ESP_NAME};
use oasis_image::gpt::{self, Gpt, Guid, Partition, SECTOR};

/// Errors finding or preparing the disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No disk holds a partition table with the appliance's EFI system partition.
    #[error("no disk with the oasis boot partition ({ESP_NAME}) was found after {0:?}; the appliance must boot from a disk written with `oasis image build appliance`")]
    NoBootDisk(Duration),
    /// The disk is too small for a data partition.
    #[error(
        "the appliance disk {disk} has {gib:.1} GiB; it needs at least 3 GiB (the data partition starts at 2 GiB)"
    )]
    TooSmall {
        /// The disk.
        disk: String,
        /// Its size.
        gib: f64,
    },
    /// The disk's sectors are not 512 bytes.
    #[error("the appliance disk {disk} has {size}-byte sectors; oasis images are for 512-byte disks")]
    SectorSize {
        /// The disk.
        disk: String,
        /// Its logical block size.
        size: u64,
    },
    /// Reading or editing the partition table failed.
    #[error("cannot read or change the partition table of {disk}")]
    Table {
        /// The disk.
        disk: String,
        /// What failed.
        source: gpt::GptError,
    },
    /// A command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A filesystem could not be mounted.
    #[error("cannot mount {device} on {target}")]
    Mount {
        /// The device (or, for a bind mount, the directory).
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A device or file could not be used.
    #[error("cannot use {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DiskError + '_ {
    move |source| DiskError::Io { path: path.to_path_buf(), source }
}

/// The disk the appliance booted from.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Its size in 512-byte sectors.
    pub sectors: u64,
    /// The EFI system partition's device.
    pub esp: PathBuf,
    /// The devices of slots A and B (by GPT name), when the table has them: an image made before
    /// the two slots has neither, and its EFI system partition holds what a slot does.
    pub slots: [Option<PathBuf>; 2],
}

impl BootDisk {
    /// The device of `slot`'s partition, if the table has it.
    pub fn slot(&self, slot: Slot) -> Option<&Path> {
        self.slots[slot as usize].as_deref()
    }

    /// What to mount to get the running slot's files: its partition, or the EFI system partition
    /// of an image made before the two slots (which boots the same files as slot A).
    pub fn boot_files(&self, slot: Slot) -> &Path {
        self.slot(slot).unwrap_or(&self.esp)
    }
}

/// The device of partition `number` (1-based) of disk `name`: `vda3`, `nvme0n1p3`.
pub fn partition_device(name: &str, number: usize) -> PathBuf {
    let sep = if name.ends_with(|c: char| c.is_ascii_digit()) { "p" } else { "" };
    PathBuf::from(format!("/dev/{name}{sep}{number}"))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits up to `timeout` for a disk (under `sys_block`, e.g. `/sys/block`) whose table has the
/// appliance's EFI system partition.
pub fn find_boot_disk(sys_block: &Path, timeout: Duration) -> Result<BootDisk, DiskError> {
    let start = Instant::now();
    loop {
        let mut names: Vec<String> = fs::read_dir(sys_block)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        for name in names.into_iter().filter(|n| !n.starts_with("loop") && !n.starts_with("ram")) {
            let Some(sectors) = read_u64(&sys_block.join(&name).join("size")) else { continue };
            let Ok(mut file) = File::open(format!("/dev/{name}")) else { continue };
            let Ok((table, _)) = Gpt::read(&mut file, sectors) else { continue };
            if let Some((slot, _)) = table.find(ESP_NAME).filter(|(_, p)| p.type_guid == gpt::EFI_SYSTEM) {
                let size = read_u64(&sys_block.join(&name).join("queue/logical_block_size")).unwrap_or(SECTOR);
                if size != SECTOR {
                    return Err(DiskError::SectorSize { disk: name, size });
                }
                let slots =
                    Slot::ALL.map(|s| table.find(s.partition_name()).map(|(i, _)| partition_device(&name, i + 1)));
                return Ok(BootDisk { esp: partition_device(&name, slot + 1), name, sectors, slots });
            }
        }
        if start.elapsed() > timeout {
            return Err(DiskError::NoBootDisk(timeout));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What [`plan_data_partition`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataPlan {
    /// The partition is there and fills the disk: nothing to do.
    Ready {
        /// Its slot.
        slot: usize,
    },
    /// The table changes (`table` is the new one); then the filesystem is formatted (`format`:
    /// new partition) or grown (`grow`: larger partition, or an entry added back after an
    /// update, which may be larger than before too).
    Change {
        /// The new table.
        table: Gpt,
        /// The data partition's slot.
        slot: usize,
        /// A new, empty partition: format it.
        format: bool,
        /// The partition is larger than its filesystem may be: grow the filesystem.
        grow: bool,
    },
}

/// Decides what the table of a disk of `sectors` sectors needs for the data partition.
/// `backup_lba` is where the table says its backup lies; `data_fs_label` is the ext4 label found at
/// [`DATA_FIRST`] (if any).
pub fn plan_data_partition(
    table: &Gpt,
    sectors: u64,
    backup_lba: u64,
    data_fs_label: Option<&str>,
    disk: &str,
) -> Result<DataPlan, DiskError> {
    if sectors < DATA_FIRST + (1 << 30) / SECTOR {
        return Err(DiskError::TooSmall {
            disk: disk.to_string(),
            gib: (sectors * SECTOR) as f64 / (1u64 << 30) as f64,
        });
    }
    let last = Gpt::last_usable(sectors);
    let mut table = table.clone();
    if let Some((slot, p)) = table.find(DATA_NAME).map(|(s, p)| (s, p.clone())) {
        if p.last_lba == last && backup_lba == sectors - 1 {
            return Ok(DataPlan::Ready { slot });
        }
        let grow = p.last_lba < last;
        if let Some(p) = table.partitions[slot].as_mut() {
            p.last_lba = last;
        }
        return Ok(DataPlan::Change { table, slot, format: false, grow });
    }
    let slot = (2..gpt::ENTRIES).find(|&s| table.partitions[s].is_none()).unwrap_or(gpt::ENTRIES - 1);
    let kept = data_fs_label == Some(DATA_NAME);
    let mut seed = table.disk_guid.0;
    seed[0] ^= 0xDA;
    table.partitions[slot] = Some(Partition {
        type_guid: gpt::LINUX_DATA,
        unique_guid: Guid(seed),
        first_lba: DATA_FIRST,
        last_lba: last,
        attributes: 0,
        name: DATA_NAME.to_string(),
    });
    Ok(DataPlan::Change { table, slot, format: !kept, grow: kept })
}

/// The ext4 (or ext2/3) volume label of the filesystem starting at byte `offset`, if any: the
/// superblock read as the USB stick scan reads it, on a window of the disk from `offset`.
pub fn ext_label(dev: &mut (impl Read + Seek), offset: u64) -> io::Result<Option<String>> {
    Ok(oasis_host::ext::label(dev, offset)?.flatten())
}

fn run(program: &str, args: &[&str]) -> Result<std::process::Output, DiskError> {
    Ok(oasis_host::command::output(Command::new(program).args(args))?)
}

fn run_ok(program: &str, args: &[&str]) -> Result<(), DiskError> {
    oasis_host::command::run(Command::new(program).args(args))?;
    Ok(())
}

/// What [`prepare_data_partition`] did, for the console and the events.
#[derive(Debug, Clone)]
pub struct DataPartition {
    /// Its device.
    pub device: PathBuf,
    /// Formatted now (first boot: the store is new).
    pub created: bool,
    /// Added back to the table over the filesystem already there (after an update).
    pub restored: bool,
    /// Partition and filesystem grown to the disk's end.
    pub grown: bool,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Makes sure the data partition exists and fills the disk, then checks or formats its filesystem.
/// Must run before anything on the disk is mounted (the kernel re-reads the table).
pub fn prepare_data_partition(disk: &BootDisk) -> Result<DataPartition, DiskError> {
    let dev_path = PathBuf::from(format!("/dev/{}", disk.name));
    let mut dev = OpenOptions::new().read(true).write(true).open(&dev_path).map_err(io_err(&dev_path))?;
    let table_err = |source| DiskError::Table { disk: disk.name.clone(), source };
    let (table, backup_lba) = Gpt::read(&mut dev, disk.sectors).map_err(table_err)?;
    let label = ext_label(&mut dev, DATA_FIRST * SECTOR).map_err(io_err(&dev_path))?;
    let plan = plan_data_partition(&table, disk.sectors, backup_lba, label.as_deref(), &disk.name)?;
    let (slot, format, grow, restored) = match plan {
        DataPlan::Ready { slot } => (slot, false, false, false),
        DataPlan::Change { table: new, slot, format, grow } => {
            let restored = table.find(DATA_NAME).is_none() && !format;
            new.write(&mut dev, disk.sectors).map_err(table_err)?;
            dev.sync_all().map_err(io_err(&dev_path))?;
            reread_partitions(&dev, &dev_path)?;
            (slot, format, grow, restored)
        }
    };
    drop(dev);
    let device = partition_device(&disk.name, slot + 1);
    wait_for(&device, Duration::from_secs(10))?;
    let dev_str = device.to_string_lossy().into_owned();
    if in_mount_table(&device, 0) {
        // `oasis boot` started again after an error: the partition is in use as it was.
        return Ok(DataPartition { device, created: false, restored: false, grown: false, bytes: 0 });
    }
    if format {
        run_ok("mke2fs", &["-q", "-F", "-t", "ext4", "-L", DATA_NAME, &dev_str])?;
    } else {
        // Preen: fix what is safe to fix without asking. Exit codes 0-2 mean the filesystem is
        // usable; worse is reported but the mount is still tried (the operator sees why it fails).
        // Before growing, a full check: resize2fs refuses a filesystem not checked since mounted.
        let args: &[&str] = if grow { &["-f", "-p", &dev_str] } else { &["-p", &dev_str] };
        let out = run("e2fsck", args)?;
        if out.status.code().is_none_or(|c| c >= 4) {
            let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
            eprintln!("oasis boot: e2fsck found errors it could not fix on {dev_str}: {}", text.trim());
        }
    }
    if grow {
        run_ok("resize2fs", &[&dev_str])?;
    }
    let bytes = read_u64(&PathBuf::from(format!(
        "/sys/class/block/{}/size",
        device.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    )))
    .unwrap_or(0)
        * SECTOR;
    Ok(DataPartition { device, created: format, restored, grown: grow && !restored, bytes })
}

/// Asks the kernel to re-read the disk's partition table (BLKRRPART).
fn reread_partitions(dev: &File, path: &Path) -> Result<(), DiskError> {
    oasis_host::sys::reread_partitions(dev).map_err(io_err(path))
}

fn wait_for(path: &Path, timeout: Duration) -> Result<(), DiskError> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            return Err(DiskError::Io { path: path.to_path_buf(), source: io::ErrorKind::NotFound.into() });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Whether `path` is in the mount table as a mount point (`field` 1) or a device (`field` 0).
fn in_mount_table(path: &Path, field: usize) -> bool {
    let table = oasis_host::mount::mount_table();
    match field {
        0 => oasis_host::mount::is_mounted_device(&table, path),
        _ => oasis_host::mount::is_mount_point(&table, path),
    }
}

/// Mounts `device` (of filesystem `fstype`) at `target` with `flags`, creating `target`. Already
/// mounted there (`oasis boot` started again after an error): nothing to do.
pub fn mount(device: &Path, target: &Path, fstype: &str, flags: MsFlags) -> Result<(), DiskError> {
    if in_mount_table(target, 1) {
        return Ok(());
    }
    fs::create_dir_all(target).map_err(io_err(target))?;
    oasis_host::mount::mount(device, target, fstype, flags, "").map_err(|source| DiskError::Mount {
        device: device.into(),
        target: target.into(),
        source,
    })
}

/// Bind-mounts `source` over `target`, read-only (unless it is already).
pub fn bind_read_only(source: &Path, target: &Path) -> Result<(), DiskError> {
    if in_mount_table(target, 1) {
        return Ok(());
    }
    fs::create_dir_all(target).map_err(io_err(target))?;
    oasis_host::mount::bind_read_only(source, target).map_err(|source_error| DiskError::Mount {
        device: source.into(),
        target: target.into(),
        source: source_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_image::appliance::ESP_FIRST;

    const SECTORS: u64 = 8 * 1024 * 1024 * 1024 / SECTOR;

    fn image_table() -> Gpt {
        let mut t = Gpt::new(Guid::parse("11111111-2222-3333-4444-555555555555"));
        t.partitions[1] = Some(Partition {
            type_guid: gpt::EFI_SYSTEM,
            unique_guid: Guid::default(),
            first_lba: ESP_FIRST,
            last_lba: ESP_FIRST + 1000,
            attributes: 0,
            name: ESP_NAME.into(),
        });
        t
    }

    #[test]
    fn an_old_image_boots_its_files_from_the_esp_and_a_new_one_from_its_slot() {
        let mut disk = BootDisk { name: "vda".into(), sectors: SECTORS, esp: "/dev/vda2".into(), slots: [None, None] };
        assert_eq!(disk.boot_files(Slot::A), Path::new("/dev/vda2"));
        disk.slots = [Some("/dev/vda4".into()), Some("/dev/vda5".into())];
        assert_eq!(disk.boot_files(Slot::B), Path::new("/dev/vda5"));
        assert_eq!(disk.slot(Slot::A), Some(Path::new("/dev/vda4")));
    }

    #[test]
    fn first_boot_adds_and_formats_a_partition_to_the_disk_end() {
        let DataPlan::Change { table, slot, format, grow } =
            plan_data_partition(&image_table(), SECTORS, ESP_FIRST + 1034, None, "vda").unwrap()
        else {
            panic!("no change planned")
        };
        assert_eq!((slot, format, grow), (2, true, false));
        let p = table.partitions[2].as_ref().unwrap();
        assert_eq!((p.first_lba, p.last_lba, p.name.as_str()), (DATA_FIRST, Gpt::last_usable(SECTORS), DATA_NAME));
        table.check(SECTORS).unwrap();
        // Written and read back, the next boot finds it ready.
        let plan = plan_data_partition(&table, SECTORS, SECTORS - 1, Some(DATA_NAME), "vda").unwrap();
        assert_eq!(plan, DataPlan::Ready { slot: 2 });
    }

    #[test]
    fn an_update_gets_its_store_back_without_formatting() {
        let plan = plan_data_partition(&image_table(), SECTORS, ESP_FIRST + 1034, Some(DATA_NAME), "vda").unwrap();
        assert!(matches!(plan, DataPlan::Change { slot: 2, format: false, grow: true, .. }), "{plan:?}");
        // Some other filesystem there is not ours: formatted.
        let plan = plan_data_partition(&image_table(), SECTORS, ESP_FIRST + 1034, Some("home"), "vda").unwrap();
        assert!(matches!(plan, DataPlan::Change { format: true, .. }), "{plan:?}");
    }

    #[test]
    fn a_larger_disk_grows_the_partition() {
        let DataPlan::Change { table, .. } =
            plan_data_partition(&image_table(), SECTORS, SECTORS - 1, None, "vda").unwrap()
        else {
            panic!()
        };
        let bigger = SECTORS * 2;
        let plan = plan_data_partition(&table, bigger, SECTORS - 1, Some(DATA_NAME), "vda").unwrap();
        let DataPlan::Change { table, format: false, grow: true, .. } = plan else { panic!("{plan:?}") };
        assert_eq!(table.partitions[2].as_ref().unwrap().last_lba, Gpt::last_usable(bigger));
    }

    #[test]
    fn a_small_disk_is_refused_with_its_size() {
        let err = plan_data_partition(&image_table(), DATA_FIRST + 100, 0, None, "vda").unwrap_err().to_string();
        assert!(err.contains("at least 3 GiB"), "{err}");
    }

    /// Seen writing the `gpt` fuzz target: a disk smaller than its own partition tables (a few
    /// sectors with a valid GPT, as a USB stick may carry) overflowed `Gpt::last_usable` before
    /// the size check (a panic in a debug build; a release build wrapped, then refused it).
    #[test]
    fn a_disk_smaller_than_its_tables_is_refused_not_a_panic() {
        for sectors in [0, 3, 33] {
            let err = plan_data_partition(&image_table(), sectors, 0, None, "sdb").unwrap_err();
            assert!(matches!(err, DiskError::TooSmall { .. }), "{sectors} sectors: {err}");
        }
    }

    #[test]
    fn ext4_label_is_read_from_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        File::create(&path).unwrap().set_len(16 << 20).unwrap();
        run_ok("mke2fs", &["-q", "-F", "-t", "ext4", "-L", DATA_NAME, &path.to_string_lossy()]).unwrap();
        let mut f = File::open(&path).unwrap();
        assert_eq!(ext_label(&mut f, 0).unwrap().as_deref(), Some(DATA_NAME));
        assert_eq!(ext_label(&mut f, 4096).unwrap(), None);
    }

    #[test]
    fn partition_devices_follow_kernel_naming() {
        assert_eq!(partition_device("vda", 3), PathBuf::from("/dev/vda3"));
        assert_eq!(partition_device("nvme0n1", 2), PathBuf::from("/dev/nvme0n1p2"));
    }
}

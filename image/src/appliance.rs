//! The appliance disk image: what the appliance machine boots, under BIOS or UEFI.
//!
//! [`build_appliance_image`] writes one raw disk image (write it to the appliance's disk, or boot
//! it in a VM) laid out as (layout v2, two boot slots):
//!
//! | sectors (512 B) | partition | contents |
//! |---|---|---|
//! | 0 | (MBR) | GRUB's boot.img and the GPT's protective record |
//! | 1..=33 | (GPT) | the partition table |
//! | [`BIOS_BOOT_FIRST`].. (1 MiB, 1 MiB long) | 1, BIOS boot | GRUB's core.img |
//! | [`ESP_FIRST`].. (2 MiB, [`ESP_SECTORS`]: 64 MiB) | 2, EFI system, FAT32 labelled `OASIS-BOOT` | GRUB for UEFI, `grub.cfg`, and `grubenv` ([`GRUBENV_PATH`]), which chooses the slot |
//! | [`SLOT_A_FIRST`].. (512 MiB, [`SLOT_SECTORS`]: 736 MiB) | 4, `oasis-a`, FAT32 labelled `OASIS-A` | slot A: the kernel and initramfs, the boot files served to the rack under `oasis/boot/`, `oasis/slot.json` |
//! | [`SLOT_B_FIRST`].. (1248 MiB, 736 MiB) | 5, `oasis-b`, FAT32 labelled `OASIS-B` | slot B: formatted empty in a new image (never bootable until written) |
//! | [`DATA_FIRST`]..end of disk (2 GiB) | 3, `oasis-store` | not in the image: the appliance creates it on first boot |
//!
//! GRUB reads `grubenv` and boots the first slot in its `ORDER` that is committed good or has
//! tries left ([`grub::grub_cfg`]); the kernel gets `oasis.slot=A|B` and `oasis.trial=0|1`. A
//! slot holds what the single EFI system partition held before layout v2; [`write_slot`] writes
//! one slot's filesystem into any region (the running appliance writes slot B on its own disk).
//! Slot A starts at 512 MiB, beyond the end of any single-slot image's EFI system partition, so
//! such a disk can be converted in place.
//!
//! The data partition starts at a fixed sector beyond any image, so writing a newer image over the
//! disk (an update) leaves the store where it was: the new table lacks partition 3 and the
//! appliance adds it back over the same sectors when it finds its filesystem there.
//!
//! The initramfs ([`appliance_initramfs`]) holds static busybox, the `oasis` binary that built the
//! image (with its libraries), e2fsprogs for the data partition, the kernel modules the appliance
//! needs ([`MODULES`], loaded in dependency order by `/init` from [`MODULE_ORDER_FILE`]), the
//! trusted key for signed USB configurations when one is given, and the files of
//! `buildroot-overlay/appliance-overlay` (its `/init` runs `oasis boot`) over those of
//! `buildroot-overlay/rootfs-overlay`. The bulky boot files stay in the slot, which the appliance
//! mounts read-only, so GRUB loads a small initramfs.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::cpio::{Archive, CpioError};
use crate::debian::{DebianCache, DebianError};
use crate::elf::{self, ElfError};
use crate::gpt::{self, Gpt, GptError, Guid, Partition, SECTOR};
use crate::grub::{self, GrubError, GrubImages};
use crate::kmod::{self, KmodError};
use crate::manifest::{self, ManifestError};
use crate::node::{add_overlay, kernel_files, NodeImageError};
use crate::partition::{Slice, FIXED_TIME};
use crate::payload::{BUSYBOX_PACKAGE, KERNEL_METAPACKAGE};

/// First sector of the BIOS boot partition (1 MiB), and its length (1 MiB).
pub const BIOS_BOOT_FIRST: u64 = 2048;
/// See [`BIOS_BOOT_FIRST`].
pub const BIOS_BOOT_SECTORS: u64 = 2048;
/// First sector of the EFI system partition (2 MiB).
pub const ESP_FIRST: u64 = BIOS_BOOT_FIRST + BIOS_BOOT_SECTORS;
/// The EFI system partition's length: 64 MiB, only GRUB and its files.
pub const ESP_SECTORS: u64 = 64 * 1024 * 1024 / SECTOR;
/// First sector of the data partition (2 GiB): both slots end before it.
pub const DATA_FIRST: u64 = 2 * 1024 * 1024 * 1024 / SECTOR;
/// First sector of slot A (512 MiB).
pub const SLOT_A_FIRST: u64 = 512 * 1024 * 1024 / SECTOR;
/// Each slot's length (736 MiB).
pub const SLOT_SECTORS: u64 = 736 * 1024 * 1024 / SECTOR;
/// First sector of slot B, right after slot A (1248 MiB); it ends at 1984 MiB.
pub const SLOT_B_FIRST: u64 = SLOT_A_FIRST + SLOT_SECTORS;
/// Slot A's GPT name; see [`Slot`].
pub const SLOT_A_NAME: &str = "oasis-a";
/// Slot B's GPT name.
pub const SLOT_B_NAME: &str = "oasis-b";
/// Slot A's FAT label.
pub const SLOT_A_LABEL: &str = "OASIS-A";
/// Slot B's FAT label.
pub const SLOT_B_LABEL: &str = "OASIS-B";
/// GRUB's environment block on the EFI system partition ([`crate::grubenv`]): which slot boots.
pub const GRUBENV_PATH: &str = "boot/grub/grubenv";
/// What a slot holds about itself: [`SlotInfo`] as JSON.
pub const SLOT_INFO_PATH: &str = "oasis/slot.json";

const _: () = assert!(ESP_FIRST + ESP_SECTORS <= SLOT_A_FIRST && SLOT_B_FIRST + SLOT_SECTORS <= DATA_FIRST);

/// One of the appliance disk's two boot slots (in JSON, its letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Slot {
    /// Partition 4, filled in a new image.
    A,
    /// Partition 5, empty in a new image.
    B,
}

impl Slot {
    /// Both, in partition order.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// Its letter, as on the kernel command line (`oasis.slot=A`) and in `grubenv`.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// The slot of a letter (`A` or `B`).
    pub fn from_letter(letter: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|s| s.letter() == letter)
    }

    /// Its GPT partition name.
    pub fn partition_name(self) -> &'static str {
        match self {
            Slot::A => SLOT_A_NAME,
            Slot::B => SLOT_B_NAME,
        }
    }

    /// Its FAT volume label.
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => SLOT_A_LABEL,
            Slot::B => SLOT_B_LABEL,
        }
    }

    /// Its partition number in a new image (1-based: `gpt4`, `/dev/vda4`).
    pub fn partition_number(self) -> usize {
        match self {
            Slot::A => 4,
            Slot::B => 5,
        }
    }

    /// Its first sector.
    pub fn first_sector(self) -> u64 {
        match self {
            Slot::A => SLOT_A_FIRST,
            Slot::B => SLOT_B_FIRST,
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Its FAT volume id (fixed, so that the same files give the same bytes).
    fn volume_id(self) -> u32 {
        match self {
            Slot::A => 0x0A515A0A,
            Slot::B => 0x0A515A0B,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// What a slot holds about itself ([`SLOT_INFO_PATH`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotInfo {
    /// The appliance version (of the `oasis` that built it).
    pub version: String,
    /// Every other file of the slot, by path, with its SHA-256 (hex).
    pub files: std::collections::BTreeMap<String, String>,
}

/// The variables of a new image's `grubenv`: slot A committed good and first, slot B not good
/// and with no tries left.
pub fn initial_grubenv() -> Result<Vec<u8>, crate::grubenv::GrubEnvError> {
    let mut env = crate::grubenv::GrubEnv::default();
    for (name, value) in [("ORDER", "A B"), ("A_OK", "1"), ("B_OK", "0"), ("A_LEFT", ""), ("B_LEFT", "")] {
        env.set(name, value)?;
    }
    env.render()
}
/// The data partition's GPT name and ext4 label.
pub const DATA_NAME: &str = "oasis-store";
/// The EFI system partition's GPT name (its FAT label is [`grub::ESP_LABEL`] too).
pub const ESP_NAME: &str = grub::ESP_LABEL;
/// Where the boot files served to the rack (node image, iPXE) lie on the EFI system partition.
pub const ESP_BOOT_ROOT: &str = "oasis/boot";
/// Where the trusted public key for signed USB configurations lies in the initramfs.
pub const TRUSTED_KEY_PATH: &str = "/etc/oasis/trusted-key.pub";
/// Where `oasis` lies in the initramfs.
pub const OASIS_PATH: &str = "/usr/bin/oasis";
/// The modules `/init` loads, one path per line (relative to `/lib/modules/VERSION`), dependencies
/// first.
pub const MODULE_ORDER_FILE: &str = "oasis-load-order";
/// The kernel command line: the console on the screen and on the first serial port (the last
/// `console=` is where the kernel's own messages go).
pub const CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=10";
/// The overlay with the appliance's `/init`, applied over [`crate::node::DEFAULT_OVERLAY`].
pub const DEFAULT_APPLIANCE_OVERLAY: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../buildroot-overlay/appliance-overlay");

/// The kernel modules of the appliance (dependencies are added): NICs, disks and USB sticks,
/// their filesystems, WireGuard for the management links.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "wireguard",
    "virtio_blk",
    "virtio_scsi",
    "ahci",
    "nvme",
    "sd_mod",
    "sr_mod",
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_utf8",
    "nls_ascii",
    // Hardware watchdogs, armed during a trial boot of an update: QEMU's, and Intel's.
    "i6300esb",
    "iTCO_wdt",
    "isofs",
];

/// busybox applets in `/bin`.
pub const APPLETS: &[&str] = &[
    "cat", "dmesg", "echo", "insmod", "ip", "ls", "mkdir", "mount", "poweroff", "ps", "reboot", "sh", "sleep", "stty",
    "sync", "umount", "uname",
];

/// e2fsprogs' programs the appliance runs on its data partition, from the package of that name.
pub const E2FSPROGS: &[&str] = &["/sbin/mke2fs", "/sbin/e2fsck", "/sbin/resize2fs"];

/// Errors building the appliance image.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceImageError {
    /// Fetching a package failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// Assembling the initramfs failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Resolving kernel modules failed.
    #[error(transparent)]
    Kmod(#[from] KmodError),
    /// Finding a program's libraries failed.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The overlay is unreadable, or the kernel package is not as expected.
    #[error(transparent)]
    Node(#[from] NodeImageError),
    /// GRUB could not be made.
    #[error(transparent)]
    Grub(#[from] GrubError),
    /// The partition table is wrong (a bug) or the contents are too large.
    #[error(transparent)]
    Gpt(#[from] GptError),
    /// A boot directory's SHA256SUMS does not match its files.
    #[error("the boot directory {dir} does not check against its SHA256SUMS; rebuild it with `oasis image build`")]
    BootDir {
        /// The directory.
        dir: PathBuf,
        /// What does not match.
        source: ManifestError,
    },
    /// An input is missing or unreadable.
    #[error("cannot read {path}")]
    Input {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the image failed.
    #[error("cannot write {path}")]
    Output {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The files do not fit in their partition.
    #[error("the {what} need {mib} MiB, more than the {max} MiB there is; leave out what the rack does not need")]
    TooLarge {
        /// Which files.
        what: &'static str,
        /// What is needed.
        mib: u64,
        /// What fits.
        max: u64,
    },
    /// A FAT filesystem (the EFI system partition or a slot) could not be written.
    #[error("cannot write a FAT filesystem of the appliance disk")]
    Fat(#[source] io::Error),
    /// The GRUB environment block could not be made (a bug).
    #[error(transparent)]
    GrubEnv(#[from] crate::grubenv::GrubEnvError),
}

/// What the appliance image is made of, on the build host.
#[derive(Debug, Clone)]
pub struct ApplianceInputs {
    /// The `oasis` binary to ship (normally the one running the build).
    pub oasis: PathBuf,
    /// The node image directory (`oasis image build node`), served to the rack.
    pub node: PathBuf,
    /// The iPXE directory (`oasis image build ipxe`), served to the rack.
    pub ipxe: PathBuf,
    /// `buildroot-overlay/rootfs-overlay`.
    pub overlay: PathBuf,
    /// `buildroot-overlay/appliance-overlay`.
    pub appliance_overlay: PathBuf,
    /// A public key: USB configurations must then be signed by its private key.
    pub trusted_key: Option<PathBuf>,
    /// The version the slot says it holds ([`SlotInfo::version`]); `None`: this `oasis`'s own.
    pub version: Option<String>,
    /// For tests of the appliance's update: a fault the slot has on purpose.
    pub test_fault: Option<TestFault>,
}

/// A fault an appliance slot is built with, for tests of the appliance's update: a file in the
/// slot ([`TestFault::path`]) that `oasis boot` looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFault {
    /// `oasis serve` refuses to start: a trial boot fails its health check.
    FailingServe,
    /// A trial boot hangs: no health check, and the watchdog is not fed.
    HangingTrial,
    /// Arming the other slot writes GRUB's block in two halves, 5 s apart, so that a test can cut
    /// the power inside that write.
    SlowSlotArm,
}

impl std::str::FromStr for TestFault {
    type Err = String;

    fn from_str(s: &str) -> Result<TestFault, String> {
        match s {
            "failing-serve" => Ok(TestFault::FailingServe),
            "hanging-trial" => Ok(TestFault::HangingTrial),
            "slow-slot-arm" => Ok(TestFault::SlowSlotArm),
            other => Err(format!("{other:?} is not a test fault: failing-serve, hanging-trial or slow-slot-arm")),
        }
    }
}

impl TestFault {
    /// The file in the slot that says so.
    pub fn path(self) -> &'static str {
        match self {
            TestFault::FailingServe => "oasis/test-fault-failing-serve",
            TestFault::HangingTrial => "oasis/test-fault-hanging-trial",
            TestFault::SlowSlotArm => "oasis/test-fault-slow-slot-arm",
        }
    }
}

/// What was built.
#[derive(Debug, Clone)]
pub struct ApplianceImage {
    /// The image file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The EFI system partition's size in bytes.
    pub esp_bytes: u64,
    /// The initramfs, compressed and not.
    pub initrd_bytes: u64,
    /// See [`ApplianceImage::initrd_bytes`].
    pub initrd_uncompressed_bytes: u64,
    /// The kernel version.
    pub kernel_version: String,
    /// The GRUB version.
    pub grub_version: String,
    /// Every file on the EFI system partition with its SHA-256 (GRUB's).
    pub esp_files: Vec<(String, String)>,
    /// Every file in slot A with its SHA-256, sorted by path (but `oasis/slot.json`, which lists them).
    pub slot_files: Vec<(String, String)>,
}

/// The parts of the initramfs, on the build host.
#[derive(Debug, Clone)]
pub struct ApplianceParts {
    /// Static busybox.
    pub busybox: PathBuf,
    /// The kernel's `lib/modules/VERSION`.
    pub modules_dir: PathBuf,
    /// The kernel version.
    pub kernel_version: String,
    /// e2fsprogs unpacked (its root).
    pub e2fsprogs_root: PathBuf,
    /// Host library directories where the libraries of `oasis` and e2fsprogs are found.
    pub library_dirs: Vec<String>,
}

/// Builds the appliance initramfs.
pub fn appliance_initramfs(parts: &ApplianceParts, inputs: &ApplianceInputs) -> Result<Archive, ApplianceImageError> {
    let mut a = Archive::new();
    for (dir, mode) in [("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755), ("tmp", 0o1777)] {
        a.dir(dir, mode)?;
    }
    a.dir("root", 0o700)?;
    a.dir("var/lib/oasis", 0o700)?;
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.char_device("dev/null", 0o666, 1, 3)?;
    a.file_from("bin/busybox", 0o755, &parts.busybox)?;
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }

    let modules = kmod::resolve(&parts.modules_dir, MODULES)?;
    let base = format!("lib/modules/{}", parts.kernel_version);
    for module in &modules {
        a.file(&format!("{base}/{}", module.path), 0o644, module.data.clone())?;
    }
    let order: String = kmod::load_sequence(&modules).iter().map(|m| format!("{}\n", m.path)).collect();
    a.file(&format!("{base}/{MODULE_ORDER_FILE}"), 0o644, order)?;

    let dirs: Vec<&str> = parts.library_dirs.iter().map(String::as_str).collect();
    let mut programs = vec![(OASIS_PATH.to_string(), inputs.oasis.clone())];
    for program in E2FSPROGS {
        programs.push((program.to_string(), parts.e2fsprogs_root.join(program.trim_start_matches('/'))));
    }
    for (image_path, host_path) in &programs {
        a.file_from(image_path, 0o755, host_path)?;
        for file in elf::runtime_files(host_path, &dirs)? {
            if !a.contains(&file.image_path) {
                a.file_from(&file.image_path, 0o755, &file.host_path)?;
            }
        }
    }
    a.file_from("etc/mke2fs.conf", 0o644, &parts.e2fsprogs_root.join("etc/mke2fs.conf"))?;
    if let Some(key) = &inputs.trusted_key {
        a.file_from(TRUSTED_KEY_PATH, 0o644, key)?;
    }
    add_overlay(&mut a, &inputs.appliance_overlay)?;
    add_overlay(&mut a, &inputs.overlay)?;
    Ok(a)
}

/// A file to put on the EFI system partition or in a slot.
#[derive(Debug, Clone)]
pub enum FileSource {
    /// Copied from the build host.
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

impl FileSource {
    fn len(&self) -> Result<u64, ApplianceImageError> {
        match self {
            FileSource::File(p) => fs::metadata(p)
                .map(|m| m.len())
                .map_err(|source| ApplianceImageError::Input { path: p.clone(), source }),
            FileSource::Bytes(b) => Ok(b.len() as u64),
        }
    }

    /// Its SHA-256, in hex.
    pub fn sha256(&self) -> Result<String, ApplianceImageError> {
        match self {
            FileSource::File(p) => {
                let input = |source| ApplianceImageError::Input { path: p.clone(), source };
                let mut file = fs::File::open(p).map_err(input)?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = file.read(&mut buf).map_err(input)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                Ok(hex::encode(hasher.finalize()))
            }
            FileSource::Bytes(b) => Ok(hex::encode(Sha256::digest(b))),
        }
    }
}

/// Every file of a boot directory (its SHA256SUMS checked first), under `esp_dir` on the ESP.
fn boot_dir_files(dir: &Path, esp_dir: &str) -> Result<Vec<(String, FileSource)>, ApplianceImageError> {
    let manifest =
        manifest::verify(dir).map_err(|source| ApplianceImageError::BootDir { dir: dir.to_path_buf(), source })?;
    let mut files: Vec<(String, FileSource)> = manifest
        .entries()
        .iter()
        .map(|e| (format!("{esp_dir}/{}", e.name), FileSource::File(dir.join(&e.name))))
        .collect();
    files.push((format!("{esp_dir}/{}", manifest::MANIFEST_NAME), FileSource::File(manifest.path())));
    Ok(files)
}

/// Refuses `files` when they do not fit in `sectors` (in 4 KiB clusters, with 16 MiB for FAT32's
/// own tables and some room).
fn check_fits(what: &'static str, files: &[(String, FileSource)], sectors: u64) -> Result<(), ApplianceImageError> {
    let mut bytes = 16u64 << 20;
    for (_, source) in files {
        bytes += source.len()?.div_ceil(4096) * 4096 + 4096;
    }
    let max = sectors * SECTOR;
    if bytes > max {
        return Err(ApplianceImageError::TooLarge { what, mib: bytes.div_ceil(1 << 20), max: max >> 20 });
    }
    Ok(())
}

/// `files` with the slot's [`SlotInfo`] added ([`SLOT_INFO_PATH`]: `version` and each file's
/// SHA-256), sorted by path; and that info.
pub fn with_slot_info(
    mut files: Vec<(String, FileSource)>,
    version: &str,
) -> Result<(Vec<(String, FileSource)>, SlotInfo), ApplianceImageError> {
    files.retain(|(path, _)| path != SLOT_INFO_PATH);
    let mut info = SlotInfo { version: version.to_string(), files: Default::default() };
    for (path, source) in &files {
        info.files.insert(path.clone(), source.sha256()?);
    }
    let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
    files.push((SLOT_INFO_PATH.to_string(), FileSource::Bytes(json)));
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((files, info))
}

/// Formats all of `region` as FAT32 labelled `label` and writes `files` into it, in their order,
/// each in one go: on a fresh filesystem every file is contiguous.
fn write_fat<R: Read + Write + Seek>(
    region: &mut R,
    label: &str,
    volume_id: u32,
    bytes_per_cluster: u32,
    files: &[(String, FileSource)],
) -> Result<(), ApplianceImageError> {
    let fat = ApplianceImageError::Fat;
    let mut label_bytes = [b' '; 11];
    label_bytes[..label.len()].copy_from_slice(label.as_bytes());
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .volume_label(label_bytes)
        .volume_id(volume_id)
        .bytes_per_cluster(bytes_per_cluster);
    region.seek(SeekFrom::Start(0)).map_err(fat)?;
    fatfs::format_volume(&mut *region, options).map_err(fat)?;
    region.seek(SeekFrom::Start(0)).map_err(fat)?;
    let fs = fatfs::FileSystem::new(&mut *region, fatfs::FsOptions::new().time_provider(&FIXED_TIME)).map_err(fat)?;
    for (path, source) in files {
        let root = fs.root_dir();
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => {
                let mut d = root.clone();
                for part in dir.split('/') {
                    d = match d.open_dir(part) {
                        Ok(d) => d,
                        Err(_) => d.create_dir(part).map_err(fat)?,
                    };
                }
                (d, name)
            }
            None => (root, path.as_str()),
        };
        let mut out = dir.create_file(name).map_err(fat)?;
        out.truncate().map_err(fat)?;
        match source {
            FileSource::File(p) => {
                let mut input =
                    fs::File::open(p).map_err(|source| ApplianceImageError::Input { path: p.clone(), source })?;
                io::copy(&mut input, &mut out).map_err(fat)?;
            }
            FileSource::Bytes(b) => out.write_all(b).map_err(fat)?,
        }
        out.flush().map_err(fat)?;
    }
    fs.unmount().map_err(fat)?;
    Ok(())
}

/// Writes the EFI system partition's filesystem (FAT32 labelled [`grub::ESP_LABEL`]) with
/// `files` over all of `region`. Its clusters are 512 bytes, as 64 MiB holds too few 4 KiB
/// clusters for FAT32.
pub fn write_esp<R: Read + Write + Seek>(
    region: &mut R,
    files: &[(String, FileSource)],
) -> Result<(), ApplianceImageError> {
    write_fat(region, grub::ESP_LABEL, 0x0A515B00, 512, files)
}

/// Writes slot `slot`'s filesystem (FAT32 labelled [`Slot::label`]) with `files` (see
/// [`with_slot_info`]) over all of `region`: a slot's partition in an image file, or on the
/// running appliance's disk. The region's length (where it seeks to at its end) is the
/// filesystem's size; what it held is lost. The same files give the same bytes.
pub fn write_slot<R: Read + Write + Seek>(
    region: &mut R,
    slot: Slot,
    files: &[(String, FileSource)],
) -> Result<(), ApplianceImageError> {
    write_fat(region, slot.label(), slot.volume_id(), 4096, files)
}

/// A GUID derived from the image's contents, so the same inputs give the same image.
fn derived_guid(seed: &[u8], what: &str) -> Guid {
    let digest = Sha256::new().chain_update(seed).chain_update(what.as_bytes()).finalize();
    let mut d: [u8; 16] = digest[..16].try_into().unwrap_or_default();
    d[6] = (d[6] & 0x0F) | 0x40; // version 4 layout, as random GUIDs have
    d[8] = (d[8] & 0x3F) | 0x80;
    Guid::from_display_bytes(d)
}

/// The partition type of the slots: Microsoft basic data, the usual type of a FAT partition
/// that is not an EFI system partition (firmware looks for bootloaders on the ESP only).
pub const SLOT_TYPE: Guid = Guid::parse("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");

/// The partition table of an image whose files give `seed`.
fn image_table(seed: &[u8]) -> Gpt {
    let mut table = Gpt::new(derived_guid(seed, "disk"));
    let mut add = |index: usize, type_guid, first_lba, sectors, name: &str| {
        table.partitions[index] = Some(Partition {
            type_guid,
            unique_guid: derived_guid(seed, name),
            first_lba,
            last_lba: first_lba + sectors - 1,
            attributes: 0,
            name: name.into(),
        });
    };
    add(0, gpt::BIOS_BOOT, BIOS_BOOT_FIRST, BIOS_BOOT_SECTORS, "BIOS boot");
    add(1, gpt::EFI_SYSTEM, ESP_FIRST, ESP_SECTORS, ESP_NAME);
    // Index 2 (partition 3) is the data partition's, added by the appliance.
    for slot in Slot::ALL {
        add(slot.partition_number() - 1, SLOT_TYPE, slot.first_sector(), SLOT_SECTORS, slot.partition_name());
    }
    table
}

/// Writes the disk image `out`: GRUB, `esp_files` on the EFI system partition, `slot_files` in
/// slot A, slot B empty. Returns the image's size in bytes.
pub fn write_disk(
    out: &Path,
    grub: &GrubImages,
    esp_files: &[(String, FileSource)],
    slot_files: &[(String, FileSource)],
) -> Result<u64, ApplianceImageError> {
    check_fits("files of the EFI system partition", esp_files, ESP_SECTORS)?;
    check_fits("files of the boot slot", slot_files, SLOT_SECTORS)?;
    let sectors = SLOT_B_FIRST + SLOT_SECTORS + gpt::FIRST_USABLE - 1;
    let mut seed = Vec::new();
    for (path, source) in esp_files.iter().chain(slot_files) {
        seed.extend_from_slice(path.as_bytes());
        seed.extend_from_slice(&source.len()?.to_le_bytes());
    }
    seed.extend_from_slice(&grub.efi_img);
    let table = image_table(&seed);

    let mut core = grub.core_img.clone();
    if core.len() as u64 > BIOS_BOOT_SECTORS * SECTOR {
        return Err(GrubError::Unexpected {
            path: "core.img".into(),
            reason: "larger than the BIOS boot partition".into(),
        }
        .into());
    }
    grub::patch_core_blocklist(&mut core, BIOS_BOOT_FIRST)
        .map_err(|reason| GrubError::Unexpected { path: "core.img".into(), reason })?;
    let boot_sector = grub::bios_boot_sector(&grub.boot_img, BIOS_BOOT_FIRST);

    let output = |source| ApplianceImageError::Output { path: out.to_path_buf(), source };
    let tmp = out.with_extension("img.tmp");
    let mut file =
        fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(output)?;
    // Sparse: the slots' free space takes no room on the build host.
    file.set_len(sectors * SECTOR).map_err(output)?;
    file.write_all(&boot_sector[..grub::BOOT_CODE_END]).map_err(output)?;
    table.write(&mut file, sectors)?;
    file.seek(SeekFrom::Start(BIOS_BOOT_FIRST * SECTOR)).map_err(output)?;
    file.write_all(&core).map_err(output)?;
    write_esp(&mut Slice::new(&mut file, ESP_FIRST * SECTOR, ESP_SECTORS * SECTOR), esp_files)?;
    for (slot, files) in [(Slot::A, slot_files), (Slot::B, &[][..])] {
        let mut region = Slice::new(&mut file, slot.first_sector() * SECTOR, SLOT_SECTORS * SECTOR);
        write_slot(&mut region, slot, files)?;
    }
    file.sync_all().map_err(output)?;
    drop(file);
    fs::rename(&tmp, out).map_err(output)?;
    Ok(sectors * SECTOR)
}

/// The EFI system partition's files: GRUB for UEFI, its menu and its environment block (last, so
/// that GRUB's `save_env` finds it in one piece: written in one go on a fresh filesystem, it is
/// contiguous, and GRUB rewrites it in place through its block list without moving it).
fn esp_files(grub: &GrubImages) -> Result<Vec<(String, FileSource)>, ApplianceImageError> {
    Ok(vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), FileSource::Bytes(grub.efi_img.clone())),
        (grub::CFG_PATH.into(), FileSource::Bytes(grub::grub_cfg(CMDLINE).into_bytes())),
        (GRUBENV_PATH.into(), FileSource::Bytes(initial_grubenv()?)),
    ])
}

/// Fetches Debian's kernel, busybox, e2fsprogs and GRUB through the cache at `cache` and writes
/// the appliance disk image `out`.
pub fn build_appliance_image(
    cache: &Path,
    inputs: &ApplianceInputs,
    out: &Path,
) -> Result<ApplianceImage, ApplianceImageError> {
    for path in
        [&inputs.oasis, &inputs.overlay, &inputs.appliance_overlay].into_iter().chain(inputs.trusted_key.as_ref())
    {
        fs::metadata(path).map_err(|source| ApplianceImageError::Input { path: path.clone(), source })?;
    }
    let mut files = boot_dir_files(&inputs.node, &format!("{ESP_BOOT_ROOT}/node"))?;
    files.extend(boot_dir_files(&inputs.ipxe, &format!("{ESP_BOOT_ROOT}/ipxe"))?);

    let cache = DebianCache::new(cache)?;
    let kernel_package = cache.resolve_dependency(KERNEL_METAPACKAGE, "linux-image-")?;
    let kernel = cache.fetch(&kernel_package)?;
    let busybox = cache.fetch(BUSYBOX_PACKAGE)?;
    let e2fsprogs = cache.fetch("e2fsprogs")?;
    let (vmlinuz, version) = kernel_files(&kernel)?;
    let parts = ApplianceParts {
        busybox: busybox.file("/bin/busybox")?,
        modules_dir: kernel.file(&format!("/lib/modules/{version}"))?,
        kernel_version: version.clone(),
        e2fsprogs_root: e2fsprogs.root.clone(),
        library_dirs: elf::HOST_LIBRARY_DIRS.iter().map(|d| d.to_string()).collect(),
    };
    let archive = appliance_initramfs(&parts, inputs)?;
    let initrd = archive.to_gzip_bytes();
    let initrd_uncompressed_bytes = archive.to_bytes().len() as u64;
    let initrd_bytes = initrd.len() as u64;

    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|source| ApplianceImageError::Output { path: parent.to_path_buf(), source })?;
    // A work directory of this build's own: two builds sharing a cache must not mix their files.
    let work = cache.dir().join(format!("grub-work-{}", std::process::id()));
    let grub = grub::build(&cache, &work);
    let _ = fs::remove_dir_all(&work);
    let grub = grub?;
    files.push((grub::KERNEL_PATH.into(), FileSource::File(kernel.file(&format!("/boot/{vmlinuz}"))?)));
    files.push((grub::INITRD_PATH.into(), FileSource::Bytes(initrd)));
    if let Some(fault) = inputs.test_fault {
        let why = format!("built with --test-fault {fault:?}, for tests of the appliance's update\n");
        files.push((fault.path().into(), FileSource::Bytes(why.into_bytes())));
    }
    let slot_version = inputs.version.as_deref().unwrap_or(env!("CARGO_PKG_VERSION"));
    let (slot_files, info) = with_slot_info(files, slot_version)?;
    let esp = esp_files(&grub)?;

    let bytes = write_disk(out, &grub, &esp, &slot_files)?;
    let mut esp_digests = Vec::new();
    for (path, source) in &esp {
        esp_digests.push((path.clone(), source.sha256()?));
    }
    Ok(ApplianceImage {
        path: out.to_path_buf(),
        bytes,
        esp_bytes: ESP_SECTORS * SECTOR,
        initrd_bytes,
        initrd_uncompressed_bytes,
        kernel_version: version,
        grub_version: grub.version,
        esp_files: esp_digests,
        slot_files: info.files.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::grubenv::GrubEnv;

    fn fake_grub() -> GrubImages {
        let mut core_img = vec![0u8; 1024];
        core_img[508..510].copy_from_slice(&1u16.to_le_bytes());
        GrubImages { boot_img: vec![0xEB; 512], core_img, efi_img: vec![1; 100], version: "test".into() }
    }

    /// Whether two (large, sparse) files hold the same bytes, compared a chunk at a time.
    fn same_bytes(a: &Path, b: &Path) -> bool {
        let (mut a, mut b) = (fs::File::open(a).unwrap(), fs::File::open(b).unwrap());
        let (mut x, mut y) = (vec![0u8; 16 << 20], vec![0u8; 16 << 20]);
        loop {
            let n = a.read(&mut x).unwrap();
            b.read_exact(&mut y[..n]).unwrap();
            if x[..n] != y[..n] {
                return false;
            }
            if n == 0 {
                return b.read(&mut y).unwrap() == 0;
            }
        }
    }

    fn read_fat_file(disk: &Path, first: u64, sectors: u64, path: &str) -> (String, Vec<u8>) {
        let file = fs::File::open(disk).unwrap();
        let fat = fatfs::FileSystem::new(Slice::new(file, first * SECTOR, sectors * SECTOR), fatfs::FsOptions::new())
            .unwrap();
        let mut data = Vec::new();
        if !path.is_empty() {
            fat.root_dir().open_file(path).unwrap().read_to_end(&mut data).unwrap();
        }
        assert_eq!(fat.fat_type(), fatfs::FatType::Fat32);
        (fat.volume_label().trim_end().to_string(), data)
    }

    #[test]
    fn the_disk_is_reproducible_with_grub_on_the_esp_slot_a_filled_and_slot_b_empty() {
        let dir = tempfile::tempdir().unwrap();
        let grub = fake_grub();
        let esp = esp_files(&grub).unwrap();
        let files = vec![
            ("oasis/vmlinuz".to_string(), FileSource::Bytes(vec![3; 5000])),
            ("oasis/boot/node/initrd.img".to_string(), FileSource::Bytes(vec![7; 300_000])),
        ];
        let (slot, info) = with_slot_info(files, "9.9.9").unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_disk(&a, &grub, &esp, &slot).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100)); // FAT times have 2 s steps
        write_disk(&b, &grub, &esp, &slot).unwrap();
        assert!(same_bytes(&a, &b), "two builds of the same inputs differ");
        // A bundle's appliance part carries slot A and says the version the slot holds.
        let part = crate::bundle_appliance::slot_image(&a).unwrap();
        assert_eq!((part.version.as_deref(), part.slot_bytes), (Some("9.9.9"), SLOT_SECTORS * SECTOR));

        let mut file = fs::File::open(&a).unwrap();
        let mut head = vec![0u8; (BIOS_BOOT_FIRST * SECTOR) as usize + 1024];
        file.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0xEB, "boot code");
        assert_eq!(&head[0x5c..0x64], &BIOS_BOOT_FIRST.to_le_bytes());
        let core = (BIOS_BOOT_FIRST * SECTOR) as usize;
        assert_eq!(&head[core + 500..core + 508], &(BIOS_BOOT_FIRST + 1).to_le_bytes());

        let sectors = fs::metadata(&a).unwrap().len() / SECTOR;
        assert_eq!(sectors, SLOT_B_FIRST + SLOT_SECTORS + 33);
        let (table, _) = Gpt::read(&mut file, sectors).unwrap();
        let (index, p) = table.find(ESP_NAME).unwrap();
        assert_eq!((index, p.first_lba, p.sectors(), p.type_guid), (1, ESP_FIRST, ESP_SECTORS, gpt::EFI_SYSTEM));
        assert!(table.partitions[2].is_none(), "partition 3 is the data partition's");
        for s in Slot::ALL {
            let (index, p) = table.find(s.partition_name()).unwrap();
            assert_eq!(
                (index + 1, p.first_lba, p.sectors(), p.type_guid),
                (s.partition_number(), s.first_sector(), SLOT_SECTORS, SLOT_TYPE)
            );
        }
        assert_eq!(SLOT_A_FIRST * SECTOR, 512 << 20);
        assert_eq!((SLOT_B_FIRST + SLOT_SECTORS) * SECTOR, 1984 << 20);

        let (label, env) = read_fat_file(&a, ESP_FIRST, ESP_SECTORS, GRUBENV_PATH);
        assert_eq!(label, grub::ESP_LABEL);
        let env = GrubEnv::parse(&env).unwrap();
        let vars: Vec<_> = ["ORDER", "A_OK", "B_OK", "A_LEFT", "B_LEFT"].iter().map(|n| env.get(n).unwrap()).collect();
        assert_eq!(vars, ["A B", "1", "0", "", ""]);
        let (_, cfg) = read_fat_file(&a, ESP_FIRST, ESP_SECTORS, grub::CFG_PATH);
        assert!(String::from_utf8(cfg).unwrap().contains("load_env"));

        let (label, data) = read_fat_file(&a, SLOT_A_FIRST, SLOT_SECTORS, "oasis/boot/node/initrd.img");
        assert_eq!((label.as_str(), data), (SLOT_A_LABEL, vec![7; 300_000]));
        let (_, json) = read_fat_file(&a, SLOT_A_FIRST, SLOT_SECTORS, SLOT_INFO_PATH);
        let read: SlotInfo = serde_json::from_slice(&json).unwrap();
        assert_eq!(read, info);
        assert_eq!(read.version, "9.9.9");
        assert_eq!(read.files["oasis/vmlinuz"], hex::encode(Sha256::digest(vec![3u8; 5000])));
        assert_eq!(read.files.len(), 2);

        let (label, _) = read_fat_file(&a, SLOT_B_FIRST, SLOT_SECTORS, "");
        assert_eq!(label, SLOT_B_LABEL);
        let file = fs::File::open(&a).unwrap();
        let fat = fatfs::FileSystem::new(
            Slice::new(file, SLOT_B_FIRST * SECTOR, SLOT_SECTORS * SECTOR),
            fatfs::FsOptions::new(),
        )
        .unwrap();
        assert_eq!(fat.root_dir().iter().count(), 0, "slot B is empty");
    }

    #[test]
    fn a_slot_is_written_into_any_region_and_too_much_is_refused() {
        let mut region = io::Cursor::new(vec![0u8; 300 << 20]);
        let files = vec![("oasis/vmlinuz".to_string(), FileSource::Bytes(b"kernel".to_vec()))];
        write_slot(&mut region, Slot::B, &files).unwrap();
        region.set_position(0);
        let fat = fatfs::FileSystem::new(&mut region, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fat.volume_label().trim_end(), "OASIS-B");
        let mut data = String::new();
        fat.root_dir().open_file("oasis/vmlinuz").unwrap().read_to_string(&mut data).unwrap();
        assert_eq!(data, "kernel");

        let big = vec![("a".to_string(), FileSource::Bytes(vec![0; 60 << 20]))];
        let err = check_fits("files of the EFI system partition", &big, ESP_SECTORS).unwrap_err();
        assert!(err.to_string().contains("need 77 MiB, more than the 64 MiB"), "{err}");
    }

    #[test]
    fn slots_have_their_names_labels_and_letters() {
        assert_eq!(Slot::from_letter("B"), Some(Slot::B));
        assert_eq!(Slot::from_letter("C"), None);
        assert_eq!((Slot::A.partition_name(), Slot::A.label(), Slot::A.other()), ("oasis-a", "OASIS-A", Slot::B));
        assert_eq!(Slot::B.first_sector(), SLOT_A_FIRST + SLOT_SECTORS);
        assert_eq!(initial_grubenv().unwrap().len(), crate::grubenv::SIZE);
    }
}

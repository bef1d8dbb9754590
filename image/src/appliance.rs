//! The appliance disk image: what the appliance machine boots, under BIOS or UEFI.
//!
//! [`build_appliance_image`] writes one raw disk image (write it to the appliance's disk, or boot
//! it in a VM) laid out as:
//!
//! | sectors (512 B) | partition | contents |
//! |---|---|---|
//! | 0 | (MBR) | GRUB's boot.img and the GPT's protective record |
//! | 1..=33 | (GPT) | the partition table |
//! | [`BIOS_BOOT_FIRST`].. (1 MiB) | 1, BIOS boot | GRUB's core.img |
//! | [`ESP_FIRST`].. (as large as needed) | 2, EFI system, FAT32 labelled `OASIS-BOOT` | GRUB for UEFI, `grub.cfg`, the kernel and initramfs, the boot files served to the rack under `oasis/boot/` |
//! | [`DATA_FIRST`]..end of disk | 3, `oasis-store` | not in the image: the appliance creates it on first boot |
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
//! `buildroot-overlay/rootfs-overlay`. The bulky boot files stay on the EFI system partition, which
//! the appliance mounts read-only, so GRUB loads a small initramfs.

use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
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
/// First sector of the data partition (2 GiB): the EFI system partition must end before it.
pub const DATA_FIRST: u64 = 2 * 1024 * 1024 * 1024 / SECTOR;
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
    /// The EFI system partition would reach the data partition.
    #[error("the boot files need {mib} MiB, more than the {max} MiB before the data partition; leave out what the rack does not need")]
    TooLarge {
        /// What is needed.
        mib: u64,
        /// What fits.
        max: u64,
    },
    /// The FAT filesystem could not be written.
    #[error("cannot write the EFI system partition")]
    Fat(#[source] io::Error),
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
    /// Every file on the EFI system partition with its SHA-256, sorted by path.
    pub esp_files: Vec<(String, String)>,
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

/// A file to put on the EFI system partition.
#[derive(Debug, Clone)]
pub enum EspSource {
    /// Copied from the build host.
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

impl EspSource {
    fn len(&self) -> Result<u64, ApplianceImageError> {
        match self {
            EspSource::File(p) => fs::metadata(p)
                .map(|m| m.len())
                .map_err(|source| ApplianceImageError::Input { path: p.clone(), source }),
            EspSource::Bytes(b) => Ok(b.len() as u64),
        }
    }
}

/// Every file of a boot directory (its SHA256SUMS checked first), under `esp_dir` on the ESP.
fn boot_dir_files(dir: &Path, esp_dir: &str) -> Result<Vec<(String, EspSource)>, ApplianceImageError> {
    let manifest =
        manifest::verify(dir).map_err(|source| ApplianceImageError::BootDir { dir: dir.to_path_buf(), source })?;
    let mut files: Vec<(String, EspSource)> = manifest
        .entries()
        .iter()
        .map(|e| (format!("{esp_dir}/{}", e.name), EspSource::File(dir.join(&e.name))))
        .collect();
    files.push((format!("{esp_dir}/{}", manifest::MANIFEST_NAME), EspSource::File(manifest.path())));
    Ok(files)
}

/// The EFI system partition's size for these files: room for FAT32's minimum, the files (in 4 KiB
/// clusters) and a quarter more, in whole MiB.
fn esp_sectors(files: &[(String, EspSource)]) -> Result<u64, ApplianceImageError> {
    let mut bytes = 0u64;
    for (_, source) in files {
        bytes += source.len()?.div_ceil(4096) * 4096 + 4096;
    }
    let mib = (bytes + bytes / 4).div_ceil(1 << 20) + 40;
    Ok(mib * (1 << 20) / SECTOR)
}

/// Writes the FAT32 filesystem with `files` into the partition at `first` sectors.
fn write_esp(
    file: &mut fs::File,
    first: u64,
    sectors: u64,
    files: &[(String, EspSource)],
) -> Result<(), ApplianceImageError> {
    let fat = ApplianceImageError::Fat;
    let mut region = Slice::new(file, first * SECTOR, sectors * SECTOR);
    let mut label = [b' '; 11];
    label[..grub::ESP_LABEL.len()].copy_from_slice(grub::ESP_LABEL.as_bytes());
    let options = fatfs::FormatVolumeOptions::new()
        .fat_type(fatfs::FatType::Fat32)
        .volume_label(label)
        .volume_id(0x0A515B00)
        .bytes_per_cluster(4096);
    fatfs::format_volume(&mut region, options).map_err(fat)?;
    let fs = fatfs::FileSystem::new(&mut region, fatfs::FsOptions::new().time_provider(&FIXED_TIME)).map_err(fat)?;
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
            EspSource::File(p) => {
                let mut input =
                    fs::File::open(p).map_err(|source| ApplianceImageError::Input { path: p.clone(), source })?;
                io::copy(&mut input, &mut out).map_err(fat)?;
            }
            EspSource::Bytes(b) => out.write_all(b).map_err(fat)?,
        }
        out.flush().map_err(fat)?;
    }
    fs.unmount().map_err(fat)?;
    Ok(())
}

/// A GUID derived from the image's contents, so the same inputs give the same image.
fn derived_guid(seed: &[u8], what: &str) -> Guid {
    let digest = Sha256::new().chain_update(seed).chain_update(what.as_bytes()).finalize();
    let mut d: [u8; 16] = digest[..16].try_into().unwrap_or_default();
    d[6] = (d[6] & 0x0F) | 0x40; // version 4 layout, as random GUIDs have
    d[8] = (d[8] & 0x3F) | 0x80;
    Guid::from_display_bytes(d)
}

/// Writes the disk image `out` with GRUB and `files` on its EFI system partition.
pub fn write_disk(
    out: &Path,
    grub: &GrubImages,
    files: &[(String, EspSource)],
) -> Result<(u64, u64), ApplianceImageError> {
    let esp = esp_sectors(files)?;
    if ESP_FIRST + esp > DATA_FIRST {
        return Err(ApplianceImageError::TooLarge {
            mib: (esp * SECTOR) >> 20,
            max: ((DATA_FIRST - ESP_FIRST) * SECTOR) >> 20,
        });
    }
    let sectors = ESP_FIRST + esp + gpt::FIRST_USABLE - 1;
    let mut seed = Vec::new();
    for (path, source) in files {
        seed.extend_from_slice(path.as_bytes());
        seed.extend_from_slice(&source.len()?.to_le_bytes());
    }
    seed.extend_from_slice(&grub.efi_img);
    let mut table = Gpt::new(derived_guid(&seed, "disk"));
    table.partitions[0] = Some(Partition {
        type_guid: gpt::BIOS_BOOT,
        unique_guid: derived_guid(&seed, "bios"),
        first_lba: BIOS_BOOT_FIRST,
        last_lba: BIOS_BOOT_FIRST + BIOS_BOOT_SECTORS - 1,
        attributes: 0,
        name: "BIOS boot".into(),
    });
    table.partitions[1] = Some(Partition {
        type_guid: gpt::EFI_SYSTEM,
        unique_guid: derived_guid(&seed, "esp"),
        first_lba: ESP_FIRST,
        last_lba: ESP_FIRST + esp - 1,
        attributes: 0,
        name: ESP_NAME.into(),
    });

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
    file.set_len(sectors * SECTOR).map_err(output)?;
    file.write_all(&boot_sector[..grub::BOOT_CODE_END]).map_err(output)?;
    table.write(&mut file, sectors)?;
    file.seek(SeekFrom::Start(BIOS_BOOT_FIRST * SECTOR)).map_err(output)?;
    file.write_all(&core).map_err(output)?;
    write_esp(&mut file, ESP_FIRST, esp, files)?;
    file.sync_all().map_err(output)?;
    drop(file);
    fs::rename(&tmp, out).map_err(output)?;
    Ok((sectors * SECTOR, esp * SECTOR))
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
    files.push(("EFI/BOOT/BOOTX64.EFI".into(), EspSource::Bytes(grub.efi_img.clone())));
    files.push((grub::CFG_PATH.into(), EspSource::Bytes(grub::grub_cfg(CMDLINE).into_bytes())));
    files.push((grub::KERNEL_PATH.into(), EspSource::File(kernel.file(&format!("/boot/{vmlinuz}"))?)));
    files.push((grub::INITRD_PATH.into(), EspSource::Bytes(initrd)));
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let (bytes, esp_bytes) = write_disk(out, &grub, &files)?;
    let mut esp_files = Vec::new();
    for (path, source) in &files {
        let digest = match source {
            EspSource::File(p) => {
                manifest::sha256_file(p).map_err(|source| ApplianceImageError::BootDir { dir: p.clone(), source })?
            }
            EspSource::Bytes(b) => hex::encode(Sha256::digest(b)),
        };
        esp_files.push((path.clone(), digest));
    }
    Ok(ApplianceImage {
        path: out.to_path_buf(),
        bytes,
        esp_bytes,
        initrd_bytes,
        initrd_uncompressed_bytes,
        kernel_version: version,
        grub_version: grub.version,
        esp_files,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn the_disk_is_reproducible_and_its_esp_holds_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut core_img = vec![0u8; 1024];
        core_img[508..510].copy_from_slice(&1u16.to_le_bytes());
        let grub = GrubImages { boot_img: vec![0xEB; 512], core_img, efi_img: vec![1; 100], version: "test".into() };
        let files = vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), EspSource::Bytes(vec![1; 100])),
            ("oasis/boot/node/initrd.img".to_string(), EspSource::Bytes(vec![7; 300_000])),
        ];
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        write_disk(&a, &grub, &files).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100)); // FAT times have 2 s steps
        write_disk(&b, &grub, &files).unwrap();
        assert!(fs::read(&a).unwrap() == fs::read(&b).unwrap(), "two builds of the same inputs differ");

        let bytes = fs::read(&a).unwrap();
        assert_eq!(bytes[0], 0xEB, "boot code");
        assert_eq!(&bytes[0x5c..0x64], &BIOS_BOOT_FIRST.to_le_bytes());
        let core = (BIOS_BOOT_FIRST * SECTOR) as usize;
        assert_eq!(&bytes[core + 500..core + 508], &(BIOS_BOOT_FIRST + 1).to_le_bytes());
        let mut file = fs::File::open(&a).unwrap();
        let sectors = bytes.len() as u64 / SECTOR;
        let (table, _) = Gpt::read(&mut file, sectors).unwrap();
        let (slot, esp) = table.find(ESP_NAME).unwrap();
        assert_eq!((slot, esp.first_lba, esp.type_guid), (1, ESP_FIRST, gpt::EFI_SYSTEM));
        let region = Slice::new(file, esp.first_lba * SECTOR, esp.sectors() * SECTOR);
        let fat = fatfs::FileSystem::new(region, fatfs::FsOptions::new()).unwrap();
        assert_eq!(fat.volume_label().trim_end(), grub::ESP_LABEL);
        let mut data = Vec::new();
        fat.root_dir().open_file("oasis/boot/node/initrd.img").unwrap().read_to_end(&mut data).unwrap();
        assert_eq!(data, vec![7; 300_000]);
    }

    #[test]
    fn esp_leaves_room_and_is_fat32_sized() {
        let files = vec![("a".to_string(), EspSource::Bytes(vec![0; 10 << 20]))];
        let sectors = esp_sectors(&files).unwrap();
        assert!(sectors * SECTOR >= 50 << 20, "{sectors}");
        assert_eq!(sectors * SECTOR % (1 << 20), 0);
    }
}

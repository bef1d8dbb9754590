//! The Buildroot tree's board files, run for real without Buildroot: GRUB images made from
//! Debian's GRUB exactly as Buildroot's grub2 package makes them (grub-mkimage with the modules,
//! prefix and built-in config the appliance defconfig names), the netboot test payload as the
//! kernel and initramfs, then `board/oasis/post-image.sh` with the real genimage. The disk it
//! writes must have the appliance layout and boot the payload under SeaBIOS and under OVMF.
//!
//! Needs genimage, mtools, dosfstools, grub-mkimage (grub-common), sfdisk and QEMU (scripts/test
//! installs them). Uses the Debian cache in `OASIS_DEBIAN_CACHE` if set.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oasis_image::buildroot_tree::{parse_defconfig_line, OASIS_TREE};
use oasis_image::{payload, DebianCache};

mod common;

const SECTOR: u64 = 512;
const CORE_LBA: u64 = 2048;
const ESP_LBA: u64 = 4096;
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// A generous bound for one TCG boot to the payload's marker (about 30 s here): only there so
/// that a disk that never boots fails the test instead of hanging it.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);

fn require(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "{program} is not installed: apt-get install {package}");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn defconfig() -> BTreeMap<String, String> {
    let text = fs::read_to_string(Path::new(OASIS_TREE).join("configs/oasis_appliance_defconfig")).unwrap();
    text.lines()
        .filter(|l| l.starts_with("BR2_"))
        .map(|l| parse_defconfig_line(l).unwrap())
        .map(|(k, v)| (k, v.replace("$(BR2_EXTERNAL_OASIS_PATH)", OASIS_TREE)))
        .collect()
}

/// What grub2.mk runs for one platform: grub-mkimage with the defconfig's modules and built-in config.
fn grub_mkimage(modules_dir: &Path, format: &str, out: &Path, prefix: &str, config: &str, modules: &str) {
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    run(Command::new("grub-mkimage")
        .arg("-d")
        .arg(modules_dir)
        .args(["-O", format, "-o"])
        .arg(out)
        .args(["-p", prefix, "-c", config])
        .args(modules.split_whitespace()));
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A file read from the FAT filesystem at `offset` in `image`, with mtools.
fn fat_file(image: &Path, offset: u64, path: &str) -> Vec<u8> {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()))
        .arg(format!("::{path}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{path} is not on the EFI system partition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Qemu(Child, PathBuf);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `disk` (a throw-away snapshot of it) and waits for the payload's marker on the serial console.
fn boot(disk: &Path, uefi: bool, dir: &Path) -> String {
    // The console is not UTF-8 throughout (firmware menus): read it lossily.
    let read = |path: &Path| String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned();
    let name = if uefi { "uefi" } else { "bios" };
    let serial = dir.join(format!("{name}-serial.log"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-m", "512", "-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio,snapshot=on", disk.display()));
    if uefi {
        let vars = dir.join("OVMF_VARS.fd");
        fs::copy(OVMF_VARS, &vars).unwrap();
        cmd.arg("-drive").arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
        cmd.arg("-drive").arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    let mut qemu = Qemu(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap(), serial);
    let start = Instant::now();
    loop {
        let log = read(&qemu.1);
        if log.contains(payload::BOOTED_MARKER) && log.lines().any(|l| l.starts_with("cmdline:")) {
            return log;
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(qemu.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            let log = read(&qemu.1);
            if log.contains(payload::BOOTED_MARKER) {
                return log;
            }
            panic!("{name}: QEMU exited ({status}) before the payload booted:\n{stderr}\nserial:\n{log}");
        }
        assert!(start.elapsed() < BOOT_DEADLINE, "{name}: the payload did not boot; serial console:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn post_image_writes_the_appliance_disk_and_it_boots_under_bios_and_uefi() {
    for (program, package) in [
        ("genimage", "genimage"),
        ("mcopy", "mtools"),
        ("mkdosfs", "dosfstools"),
        ("grub-mkimage", "grub-common"),
        ("sfdisk", "fdisk"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        require(program, package);
    }
    let config = defconfig();
    let (cache_dir, _cache_tmp) = common::cache();
    let cache = DebianCache::new(&cache_dir).unwrap();
    let grub_pc = cache.fetch("grub-pc-bin").unwrap().file("/usr/lib/grub/i386-pc").unwrap();
    let grub_efi = cache.fetch("grub-efi-amd64-bin").unwrap().file("/usr/lib/grub/x86_64-efi").unwrap();

    // The images and build directories as Buildroot leaves them before its post-image scripts.
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let build = work.path().join("build");
    let payload_dir = work.path().join("payload");
    payload::build_test_payload(&cache_dir, &payload_dir).unwrap();
    fs::create_dir_all(&images).unwrap();
    fs::copy(payload_dir.join(payload::KERNEL), images.join("bzImage")).unwrap();
    fs::copy(payload_dir.join(payload::INITRD), images.join("rootfs.cpio.gz")).unwrap();
    let boot_partition = &config["BR2_TARGET_GRUB2_BOOT_PARTITION"];
    grub_mkimage(
        &grub_pc,
        "i386-pc",
        &images.join("grub.img"),
        &format!("({boot_partition})/boot/grub"),
        &config["BR2_TARGET_GRUB2_BUILTIN_CONFIG_PC"],
        &config["BR2_TARGET_GRUB2_BUILTIN_MODULES_PC"],
    );
    grub_mkimage(
        &grub_efi,
        "x86_64-efi",
        &images.join("efi-part/EFI/BOOT/bootx64.efi"),
        "/EFI/BOOT",
        &config["BR2_TARGET_GRUB2_BUILTIN_CONFIG_EFI"],
        &config["BR2_TARGET_GRUB2_BUILTIN_MODULES_EFI"],
    );
    let grub_build = build.join("grub2-2.06/build-i386-pc/grub-core");
    fs::create_dir_all(&grub_build).unwrap();
    fs::copy(grub_pc.join("boot.img"), grub_build.join("boot.img")).unwrap();
    let boot_root = work.path().join("boot-root");
    fs::create_dir_all(boot_root.join("node")).unwrap();
    fs::write(boot_root.join("undionly.kpxe"), b"stand-in for iPXE").unwrap();
    fs::write(boot_root.join("node/initrd.img"), b"stand-in for the node image").unwrap();

    let script = Path::new(OASIS_TREE).join("board/oasis/post-image.sh");
    assert_eq!(config["BR2_ROOTFS_POST_IMAGE_SCRIPT"], script.to_str().unwrap());
    run(Command::new(&script)
        .arg(&images)
        .env("BINARIES_DIR", &images)
        .env("BUILD_DIR", &build)
        .env("OASIS_BOOT_DIR", &boot_root)
        .env_remove("HOST_DIR"));
    let disk = images.join("oasis-appliance.img");

    // The partition table.
    let table: serde_json::Value = serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&disk))).unwrap();
    let table = &table["partitiontable"];
    assert_eq!(table["label"], "gpt");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{table}");
    assert_eq!(parts[0]["type"], "21686148-6449-6E6F-744E-656564454649");
    assert_eq!((parts[0]["start"].as_u64(), parts[0]["size"].as_u64()), (Some(CORE_LBA), Some(2048)));
    assert_eq!(parts[1]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[1]["start"].as_u64(), Some(ESP_LBA));
    let esp_end = (ESP_LBA + parts[1]["size"].as_u64().unwrap()) * SECTOR;
    assert!(
        esp_end <= 1 << 30,
        "the EFI system partition ends at {esp_end}, past 1 GiB where the data partition starts"
    );

    // GRUB's boot code, set up as grub-bios-setup would.
    let bytes = fs::read(&disk).unwrap();
    let boot_img = fs::read(grub_pc.join("boot.img")).unwrap();
    assert_eq!(le64(&bytes, 0x5c), CORE_LBA, "boot.img must read core.img from the BIOS boot partition");
    assert_eq!(&bytes[0x66..0x68], [0x90, 0x90], "boot.img's floppy check must be off");
    assert_eq!(bytes[..0x5c], boot_img[..0x5c]);
    assert_eq!(bytes[0x68..440], boot_img[0x68..440]);
    assert_eq!(&bytes[510..512], [0x55, 0xaa], "the protective MBR's signature");
    let core = fs::read(images.join("grub.img")).unwrap();
    let core_at = (CORE_LBA * SECTOR) as usize;
    assert_eq!(le64(&bytes, core_at + 0x1f4), CORE_LBA + 1, "diskboot.img must read the rest of core.img after itself");
    assert_eq!(bytes[core_at..core_at + 0x1f4], core[..0x1f4]);
    assert_eq!(bytes[core_at + 0x1fc..core_at + core.len()], core[0x1fc..]);

    // The EFI system partition: FAT32 labelled OASIS-BOOT, with the files the layout names.
    let esp = ESP_LBA * SECTOR;
    let info =
        run(Command::new("minfo").env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(format!("{}@@{esp}", disk.display())));
    assert!(info.contains("OASIS-BOOT"), "{info}");
    assert!(info.contains("FAT32"), "{info}");
    let tree = Path::new(OASIS_TREE);
    assert_eq!(
        fat_file(&disk, esp, "/EFI/BOOT/BOOTX64.EFI"),
        fs::read(images.join("efi-part/EFI/BOOT/bootx64.efi")).unwrap()
    );
    assert_eq!(fat_file(&disk, esp, "/boot/grub/grub.cfg"), fs::read(tree.join("board/oasis/grub.cfg")).unwrap());
    assert_eq!(fat_file(&disk, esp, "/oasis/vmlinuz"), fs::read(images.join("bzImage")).unwrap());
    assert_eq!(fat_file(&disk, esp, "/oasis/initrd.img"), fs::read(images.join("rootfs.cpio.gz")).unwrap());
    assert_eq!(fat_file(&disk, esp, "/oasis/boot/undionly.kpxe"), b"stand-in for iPXE");
    assert_eq!(fat_file(&disk, esp, "/oasis/boot/node/initrd.img"), b"stand-in for the node image");

    // It boots: GRUB finds OASIS-BOOT, reads grub.cfg, and starts the kernel with the menu's
    // command line, from BIOS and from UEFI.
    for uefi in [false, true] {
        let log = boot(&disk, uefi, work.path());
        let cmdline = log.lines().find(|l| l.starts_with("cmdline:")).unwrap();
        assert!(cmdline.contains("console=tty0 console=ttyS0,115200"), "{cmdline}");
    }
}

#[test]
fn post_image_without_a_boot_root_says_what_to_do() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    fs::create_dir_all(images.join("efi-part/EFI/BOOT")).unwrap();
    for file in ["bzImage", "rootfs.cpio.gz", "grub.img", "efi-part/EFI/BOOT/bootx64.efi"] {
        fs::write(images.join(file), b"x").unwrap();
    }
    let build = work.path().join("build/grub2-2.12/build-i386-pc/grub-core");
    fs::create_dir_all(&build).unwrap();
    fs::write(build.join("boot.img"), [0u8; 512]).unwrap();
    let out = Command::new(Path::new(OASIS_TREE).join("board/oasis/post-image.sh"))
        .arg(&images)
        .env("BUILD_DIR", work.path().join("build"))
        .env_remove("OASIS_BOOT_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OASIS_BOOT_DIR is not set") && stderr.contains("oasis image build node"), "{stderr}");
    assert!(!images.join("oasis-appliance.img").exists());

    fs::remove_file(images.join("grub.img")).unwrap();
    let out = Command::new(Path::new(OASIS_TREE).join("board/oasis/post-image.sh")).arg(&images).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("enable BR2_TARGET_GRUB2_I386_PC"), "{stderr}");
}

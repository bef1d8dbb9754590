//! GRUB for the appliance disk: one bootloader, one menu, for BIOS and UEFI.
//!
//! GRUB rather than systemd-boot because the appliance must boot on BIOS machines too, and
//! systemd-boot is UEFI-only; with GRUB both firmwares read the same `grub.cfg` from the EFI system
//! partition. The modules come from Debian's `grub-pc-bin` and `grub-efi-amd64-bin` (downloaded,
//! not installed); `grub-mkimage` (package `grub-common` on the build host) links them into
//!
//! - `core.img` for BIOS, written into the BIOS boot partition, with Debian's `boot.img` in the
//!   MBR pointing at it ([`bios_boot_sector`], [`patch_core_blocklist`]: what `grub-bios-setup`
//!   does for a device, done here for an image file, so no loop device or root is needed);
//! - `BOOTX64.EFI` for UEFI, at the removable-media path `/EFI/BOOT/` of the EFI system partition.
//!
//! Both carry every module they need and an early configuration that finds the EFI system
//! partition by its label ([`ESP_LABEL`]), whatever disk number the firmware gives it, and reads
//! `/boot/grub/grub.cfg` there ([`grub_cfg`]), which chooses a boot slot from `grubenv` and loads
//! the kernel from that slot's partition on the same disk. Not signed: machines with Secure Boot enabled
//! must have it turned off (a shim signed by a vendor key is out of reach here).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debian::{DebianCache, DebianError};

/// The FAT label of the EFI system partition, by which GRUB finds it.
pub const ESP_LABEL: &str = "OASIS-BOOT";
/// The GRUB packages, for BIOS and for 64-bit UEFI.
pub const BIOS_PACKAGE: &str = "grub-pc-bin";
/// See [`BIOS_PACKAGE`].
pub const EFI_PACKAGE: &str = "grub-efi-amd64-bin";
/// Where `grub.cfg` lives on the EFI system partition.
pub const CFG_PATH: &str = "boot/grub/grub.cfg";
/// The kernel and initramfs in a slot.
pub const KERNEL_PATH: &str = "oasis/vmlinuz";
/// See [`KERNEL_PATH`].
pub const INITRD_PATH: &str = "oasis/initrd.img";

/// Modules built into both images (dependencies are added by grub-mkimage).
const COMMON_MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "search",
    "search_label",
    "normal",
    "linux",
    "echo",
    "configfile",
    "test",
    "serial",
    "terminal",
    "sleep",
    "reboot",
    "halt",
    "loadenv",
    "regexp",
];
/// Modules only the BIOS image needs.
const BIOS_MODULES: &[&str] = &["biosdisk"];
/// Modules only the UEFI image needs (a text console on the screen).
const EFI_MODULES: &[&str] = &["efi_gop", "efi_uga"];

/// Errors making the GRUB images.
#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    /// Fetching a GRUB package failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// grub-mkimage is missing: install it with `apt-get install grub-common`.
    #[error("cannot run grub-mkimage ({format}); install it with `apt-get install grub-common` (it installs no bootloader on this machine)")]
    NoMkimage {
        /// The image format.
        format: &'static str,
        /// Why it could not be started.
        source: std::io::Error,
    },
    /// grub-mkimage failed.
    #[error("grub-mkimage ({format}) failed: {reason}; install it with `apt-get install grub-common` (it installs no bootloader on this machine)")]
    Mkimage {
        /// The image format.
        format: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A GRUB file is not what the code expects.
    #[error("{path}: {reason}")]
    Unexpected {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("cannot read or write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The GRUB images for one appliance disk.
#[derive(Debug)]
pub struct GrubImages {
    /// Debian's `boot.img` (one sector, for the MBR).
    pub boot_img: Vec<u8>,
    /// `core.img` for the BIOS boot partition (its blocklist not yet patched).
    pub core_img: Vec<u8>,
    /// `BOOTX64.EFI`.
    pub efi_img: Vec<u8>,
    /// The GRUB version (Debian's).
    pub version: String,
}

/// The early configuration built into both images: find the EFI system partition by label and
/// read the menu from it.
fn early_cfg() -> String {
    format!("search --no-floppy --set=root --label {ESP_LABEL}\nset prefix=($root)/boot/grub\nconfigfile ($root)/{CFG_PATH}\n")
}

/// Where GRUB's environment block lies on the EFI system partition (from `/`); see
/// [`crate::appliance::GRUBENV_PATH`].
const ENV_FILE: &str = "/boot/grub/grubenv";

/// The choice of slot, RAUC-style, from the environment block at `$envfile`: the one script
/// `grub.cfg` runs, and the one the appliance's model of it (`oasis_boot::slots::grub_choice`) is
/// tested against in GRUB itself (`grub-emu`, `boot/src/slots/grub_emu.rs`). Keep the two in step.
///
/// - Defaults, then `load_env` of the five names only (when the file exists): a missing one keeps
///   its default (`ORDER="A B"`, `A_OK=1`, `B_OK=0`, no tries).
/// - `for s in $ORDER`: its words in order; words other than `A` and `B` are skipped.
/// - A slot is taken when its `OK` is exactly `1` (a normal boot), or else when its `LEFT`
///   starts with `t` and the block saved with one `t` fewer (a trial boot). GRUB's `save_env`
///   rewrites the file in place through its block list (it was written in one piece on a fresh
///   filesystem and is never moved); a trial that cannot be counted is never booted, so an
///   unwritable block can never loop on a bad slot.
/// - Nothing taken: slot A, not a trial.
///
/// It leaves `oasis_slot` (`A` or `B`) and `oasis_trial` (`0` or `1`), and says on the console
/// which slot boots and why.
pub const SLOT_CHOICE_SCRIPT: &str = r#"set ORDER="A B"
set A_OK=1
set B_OK=0
set A_LEFT=
set B_LEFT=
if [ -f "$envfile" ]; then
  load_env --file "$envfile" ORDER A_OK B_OK A_LEFT B_LEFT
else
  echo "oasis: no boot/grub/grubenv on the boot partition: the defaults choose"
fi
set oasis_slot=
set oasis_trial=0
set oasis_skipped=
for s in $ORDER; do
  if [ -z "$oasis_slot" -a "$s" = A ]; then
    if [ "$A_OK" = 1 ]; then
      set oasis_slot=A
    elif regexp --set=1:A_LEFT '^t(.*)$' "$A_LEFT"; then
      if save_env --file "$envfile" A_LEFT; then
        set oasis_slot=A
        set oasis_trial=1
        if [ -z "$A_LEFT" ]; then
          echo "oasis: booting slot A (trial, its last try)"
        else
          echo "oasis: booting slot A (trial; tries left after this one: $A_LEFT)"
        fi
      else
        echo "oasis: slot A has a try left, but grubenv is not writable: not tried"
      fi
    fi
    if [ -z "$oasis_slot" ]; then set oasis_skipped="$oasis_skipped A"; fi
  fi
  if [ -z "$oasis_slot" -a "$s" = B ]; then
    if [ "$B_OK" = 1 ]; then
      set oasis_slot=B
    elif regexp --set=1:B_LEFT '^t(.*)$' "$B_LEFT"; then
      if save_env --file "$envfile" B_LEFT; then
        set oasis_slot=B
        set oasis_trial=1
        if [ -z "$B_LEFT" ]; then
          echo "oasis: booting slot B (trial, its last try)"
        else
          echo "oasis: booting slot B (trial; tries left after this one: $B_LEFT)"
        fi
      else
        echo "oasis: slot B has a try left, but grubenv is not writable: not tried"
      fi
    fi
    if [ -z "$oasis_slot" ]; then set oasis_skipped="$oasis_skipped B"; fi
  fi
done
if [ -z "$oasis_slot" ]; then
  set oasis_slot=A
  echo "oasis: booting slot A (no slot in ORDER=$ORDER is good or has tries left)"
elif [ "$oasis_trial" = 0 ]; then
  if [ -n "$oasis_skipped" ]; then
    echo "oasis: booting slot $oasis_slot (good; fell back from$oasis_skipped: not good, no tries left)"
  else
    echo "oasis: booting slot $oasis_slot (committed good)"
  fi
fi
"#;

/// The menu: the slot chosen from the environment block ([`SLOT_CHOICE_SCRIPT`]), then one entry, on
/// the serial port (115200 8N1) and the screen, booting after 2 s. The slot is partition 4 (A) or
/// 5 (B) of the disk GRUB found the EFI system partition on (by its label): the same disk, even
/// when a stick with another appliance image is plugged in. The kernel gets
/// `oasis.slot=A|B oasis.trial=0|1` after `cmdline`.
pub fn grub_cfg(cmdline: &str) -> String {
    format!(
        "# oasis appliance: written by `oasis image build appliance`.\n\
         serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=2\n\
         set default=0\n\
         set envfile=\"($root){ENV_FILE}\"\n\
         {SLOT_CHOICE_SCRIPT}\
         regexp --set=1:oasis_disk '^(.*),gpt[0-9]+$' \"$root\"\n\
         if [ \"$oasis_slot\" = B ]; then set oasis_part=gpt5; else set oasis_part=gpt4; fi\n\
         set oasis_dev=\"($oasis_disk,$oasis_part)\"\n\
         export oasis_dev oasis_slot oasis_trial\n\
         menuentry \"oasis appliance (slot $oasis_slot)\" {{\n\
         \x20   echo \"oasis: loading the appliance kernel and initramfs from slot $oasis_slot ($oasis_dev)\"\n\
         \x20   linux $oasis_dev/{KERNEL_PATH} {cmdline} oasis.slot=$oasis_slot oasis.trial=$oasis_trial\n\
         \x20   initrd $oasis_dev/{INITRD_PATH}\n\
         }}\n",
    )
}

/// Fetches the GRUB packages and links both images.
pub fn build(cache: &DebianCache, work: &Path) -> Result<GrubImages, GrubError> {
    let bios = cache.fetch(BIOS_PACKAGE)?;
    let efi = cache.fetch(EFI_PACKAGE)?;
    let bios_dir = bios.file("/usr/lib/grub/i386-pc")?;
    let efi_dir = efi.file("/usr/lib/grub/x86_64-efi")?;
    fs::create_dir_all(work).map_err(|source| GrubError::Io { path: work.to_path_buf(), source })?;
    let early = work.join("early.cfg");
    fs::write(&early, early_cfg()).map_err(|source| GrubError::Io { path: early.clone(), source })?;

    let mkimage = |format: &'static str, dir: &Path, extra: &[&str], out: &Path| -> Result<Vec<u8>, GrubError> {
        let failed = |reason: String| GrubError::Mkimage { format, reason };
        let output = Command::new("grub-mkimage")
            .arg("--directory")
            .arg(dir)
            .args(["--format", format, "--prefix", "/boot/grub", "--compression", "auto"])
            .arg("--config")
            .arg(&early)
            .arg("--output")
            .arg(out)
            .args(COMMON_MODULES)
            .args(extra)
            .output()
            .map_err(|source| GrubError::NoMkimage { format, source })?;
        if !output.status.success() {
            return Err(failed(String::from_utf8_lossy(&output.stderr).trim().to_string()));
        }
        fs::read(out).map_err(|source| GrubError::Io { path: out.to_path_buf(), source })
    };
    let core_img = mkimage("i386-pc", &bios_dir, BIOS_MODULES, &work.join("core.img"))?;
    let efi_img = mkimage("x86_64-efi", &efi_dir, EFI_MODULES, &work.join("BOOTX64.EFI"))?;
    let boot_path = bios_dir.join("boot.img");
    let boot_img = fs::read(&boot_path).map_err(|source| GrubError::Io { path: boot_path.clone(), source })?;
    if boot_img.len() != 512 {
        return Err(GrubError::Unexpected {
            path: boot_path,
            reason: format!("{} bytes, expected 512", boot_img.len()),
        });
    }
    Ok(GrubImages { boot_img, core_img, efi_img, version: bios.version })
}

// Offsets in boot.img (grub's include/grub/i386/pc/boot.h).
/// Where boot.img keeps the sector of core.img's first sector (8 bytes, little-endian).
const KERNEL_SECTOR: usize = 0x5c;
/// A jump that trusts the BIOS's boot drive number only for floppies; grub-bios-setup replaces it
/// with two NOPs for hard disks, as buggy BIOSes pass 0x00 even when booting from 0x80.
const DRIVE_CHECK: usize = 0x66;
/// Boot code ends here; the disk signature and partition table follow.
pub const BOOT_CODE_END: usize = 0x1b8;

/// The MBR's boot code for a disk whose core.img starts at sector `core_sector`: Debian's boot.img
/// with the sector patched in (the caller writes bytes `0..BOOT_CODE_END` of it; the partition
/// table stays the GPT's protective record).
pub fn bios_boot_sector(boot_img: &[u8], core_sector: u64) -> Vec<u8> {
    let mut sector = boot_img.to_vec();
    sector[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_sector.to_le_bytes());
    sector[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    sector
}

/// Points core.img's first sector (diskboot.img) at the rest of core.img, which follows it on
/// disk from `core_sector + 1`. grub-mkimage has filled in the length; the start sector is only
/// known once the image is placed. The blocklist is the last 12 bytes of the first sector:
/// start (8 bytes), length in sectors (2), load segment (2).
pub fn patch_core_blocklist(core_img: &mut [u8], core_sector: u64) -> Result<(), String> {
    if core_img.len() < 1024 {
        return Err(format!("core.img is {} bytes, too small to be GRUB's", core_img.len()));
    }
    let block = &mut core_img[500..512];
    let len = u16::from_le_bytes([block[8], block[9]]) as usize;
    let rest = core_img.len().div_ceil(512) - 1;
    if len != rest {
        return Err(format!("core.img's blocklist says {len} sectors follow, the file has {rest}"));
    }
    core_img[500..508].copy_from_slice(&(core_sector + 1).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_parses_the_menu() {
        // grub-script-check (package grub-common, which the image builds need anyway) parses
        // with GRUB's own parser: an `elif` or a quote GRUB does not take fails here, not at boot.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grub.cfg");
        fs::write(&path, grub_cfg("console=ttyS0")).unwrap();
        let out = Command::new("grub-script-check").arg(&path).output();
        let out = out.expect("grub-script-check (apt-get install grub-common)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn boot_sector_points_at_core_and_skips_the_drive_check() {
        let boot = vec![0xEEu8; 512];
        let sector = bios_boot_sector(&boot, 2048);
        assert_eq!(&sector[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&sector[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(sector[0x5b], 0xEE);
    }

    #[test]
    fn core_blocklist_start_follows_its_first_sector() {
        let mut core = vec![0u8; 512 * 5];
        core[508..510].copy_from_slice(&4u16.to_le_bytes());
        patch_core_blocklist(&mut core, 2048).unwrap();
        assert_eq!(&core[500..508], &2049u64.to_le_bytes());
        core[508..510].copy_from_slice(&3u16.to_le_bytes());
        assert!(patch_core_blocklist(&mut core, 2048).unwrap_err().contains("3 sectors"));
    }

    #[test]
    fn menu_boots_the_appliance_on_serial_and_screen() {
        let cfg = grub_cfg("console=tty0 console=ttyS0,115200");
        assert!(
            cfg.contains(
                "linux $oasis_dev/oasis/vmlinuz console=tty0 console=ttyS0,115200 oasis.slot=$oasis_slot oasis.trial=$oasis_trial\n"
            ),
            "{cfg}"
        );
        assert!(cfg.contains("initrd $oasis_dev/oasis/initrd.img\n"), "{cfg}");
        assert!(cfg.contains("set envfile=\"($root)/boot/grub/grubenv\"\n"), "{cfg}");
        assert!(cfg.contains(SLOT_CHOICE_SCRIPT), "{cfg}");
        assert!(cfg.contains("terminal_output serial console"), "{cfg}");
        assert!(early_cfg().contains("--label OASIS-BOOT"));
    }
}

//! The netboot test payload: a Debian kernel and a tiny busybox initramfs that proves a machine booted.
//!
//! [`build_test_payload`] writes `vmlinuz` (from the package `linux-image-amd64` depends on) and
//! `initrd.img` (gzip cpio: static busybox, `/dev/console`, `/dev/null` and [`INIT_SCRIPT`] as `/init`)
//! plus `SHA256SUMS`. Booted with `console=ttyS0`, the guest prints [`BOOTED_MARKER`] and a line
//! `cmdline: …` with its kernel command line on the serial console, then powers off; under QEMU with
//! `-no-reboot` that ends the QEMU process. The initramfs is byte-identical from run to run for the
//! same busybox package.

use std::fs;
use std::path::Path;

use crate::cpio::{Archive, CpioError};
use crate::debian::{DebianCache, DebianError};
use crate::manifest::{copy_atomic, write_atomic, Manifest, ManifestError};

/// The metapackage naming the current kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// The package busybox comes from.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The kernel's file name in the output directory.
pub const KERNEL: &str = "vmlinuz";
/// The initramfs's file name in the output directory.
pub const INITRD: &str = "initrd.img";
/// The line the payload prints on the console once its init runs.
pub const BOOTED_MARKER: &str = "OASIS-PAYLOAD-BOOTED";

/// busybox applets linked in `/bin`.
pub const APPLETS: &[&str] = &[
    "cat", "dmesg", "echo", "ip", "ls", "mkdir", "mount", "poweroff", "reboot", "sh", "sleep", "sync", "udhcpc",
    "umount", "uname",
];

/// The payload's `/init`.
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
# oasis netboot test payload: prove the kernel and this initramfs arrived, then power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "OASIS-PAYLOAD-BOOTED" > /dev/console
echo "cmdline: $(cat /proc/cmdline)" > /dev/console
sync
poweroff -f
"#;

/// Errors building the payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Fetching a package failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// Assembling the initramfs failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Writing the output failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The kernel package holds no (or more than one) `/boot/vmlinuz-*`.
    #[error("package {package} has {count} /boot/vmlinuz-* files, expected one; check `dpkg-deb -c` of it")]
    Kernel {
        /// The kernel package.
        package: String,
        /// How many were found.
        count: usize,
    },
    /// The output directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds the test payload's initramfs from a busybox binary.
pub fn test_initramfs(busybox: Vec<u8>) -> Result<Archive, CpioError> {
    let mut a = Archive::new();
    for dir in ["bin", "dev", "proc", "sys", "tmp", "run"] {
        a.dir(dir, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    a.dir("proc", 0o555)?;
    a.dir("sys", 0o555)?;
    a.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.char_device("dev/null", 0o666, 1, 3)?;
    a.file("init", 0o755, INIT_SCRIPT)?;
    Ok(a)
}

/// Builds `out/vmlinuz`, `out/initrd.img` and `out/SHA256SUMS` from Debian packages fetched through
/// the cache at `cache`.
pub fn build_test_payload(cache: &Path, out: &Path) -> Result<Manifest, PayloadError> {
    let cache = DebianCache::new(cache)?;
    let kernel_package = cache.resolve_dependency(KERNEL_METAPACKAGE, "linux-image-")?;
    let kernel = cache.fetch(&kernel_package)?;
    let busybox = cache.fetch(BUSYBOX_PACKAGE)?;
    fs::create_dir_all(out).map_err(|source| PayloadError::CreateDir { path: out.to_path_buf(), source })?;

    let vmlinuz = kernel.list("/boot", "vmlinuz-")?;
    let [vmlinuz] = vmlinuz.as_slice() else {
        return Err(PayloadError::Kernel { package: kernel.name, count: vmlinuz.len() });
    };
    copy_atomic(&kernel.file(&format!("/boot/{vmlinuz}"))?, &out.join(KERNEL), 0o644)?;

    let busybox_path = busybox.file("/bin/busybox")?;
    let busybox_bytes =
        fs::read(&busybox_path).map_err(|source| ManifestError::Io { path: busybox_path.clone(), source })?;
    let initrd = test_initramfs(busybox_bytes)?.to_gzip_bytes();
    write_atomic(&out.join(INITRD), &initrd)?;

    let manifest = Manifest::for_files(out, &[KERNEL, INITRD])?;
    manifest.write()?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_has_init_busybox_links_and_console() {
        let a = test_initramfs(b"not really busybox".to_vec()).unwrap();
        let bytes = a.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["bin/busybox", "bin/sh\0", "bin/poweroff\0", "dev/console\0", "init\0", BOOTED_MARKER] {
            assert!(text.contains(needle), "missing {needle}");
        }
        assert_eq!(a.to_gzip_bytes(), test_initramfs(b"not really busybox".to_vec()).unwrap().to_gzip_bytes());
    }

    #[test]
    fn init_script_is_valid_shell() {
        let status = std::process::Command::new("sh").args(["-n", "-c", INIT_SCRIPT]).status().unwrap();
        assert!(status.success());
    }
}

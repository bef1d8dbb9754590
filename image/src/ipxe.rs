//! The iPXE binaries oasis hands to network-booting firmware, taken from Debian's `ipxe` package.
//!
//! [`build_ipxe`] writes into its output directory:
//!
//! | file | for | what it is |
//! |---|---|---|
//! | `undionly.kpxe` | BIOS PXE (client arch 0) | iPXE using the NIC's own PXE/UNDI stack |
//! | `ipxe.efi` | x86-64 UEFI (client arch 7, 9) | iPXE with its own NIC drivers |
//! | `snponly.efi` | x86-64 UEFI, fallback | iPXE using the firmware's SNP driver (for NICs iPXE has no driver for) |
//! | `SHA256SUMS` | | the manifest |
//!
//! The EFI binaries are checked to be x86-64 PE images before they are copied.
//!
//! **ARM64 (client arch 11): there is no `snp.efi` here.** No Debian 12 package for amd64 ships an
//! ARM64 iPXE EFI binary: `ipxe` holds only x86 builds (`ipxe.efi`, `snponly.efi`, `undionly.kpxe`,
//! `ipxe.lkrn`, …), `ipxe-qemu` only x86 option ROMs, and neither `qemu-efi-aarch64` nor
//! `debian-installer-12-netboot-arm64` contains iPXE (checked with `apt-get download` and `dpkg -c`,
//! bookworm, 2026-11). An operator with ARM64 machines drops an ARM64 `snp.efi` (built from the iPXE
//! sources with `make bin-arm64-efi/snp.efi`) into the iPXE directory and re-runs the manifest; until
//! then oasis cannot offer ARM64 clients anything to boot.

use std::fs;
use std::path::Path;

use crate::debian::{DebianCache, DebianError};
use crate::manifest::{copy_atomic, Manifest, ManifestError};

/// The Debian package the binaries come from.
pub const IPXE_PACKAGE: &str = "ipxe";

/// BIOS iPXE (chainloaded by PXE firmware).
pub const BIOS: &str = "undionly.kpxe";
/// x86-64 UEFI iPXE with its own drivers.
pub const UEFI_X64: &str = "ipxe.efi";
/// x86-64 UEFI iPXE on the firmware's SNP driver.
pub const UEFI_X64_SNP: &str = "snponly.efi";
/// ARM64 UEFI iPXE: not in Debian, supplied by the operator (see the module docs).
pub const UEFI_ARM64: &str = "snp.efi";

/// PE/COFF machine type of x86-64 images.
pub const PE_MACHINE_X86_64: u16 = 0x8664;
/// PE/COFF machine type of ARM64 images.
pub const PE_MACHINE_ARM64: u16 = 0xaa64;

/// Errors building the iPXE directory.
#[derive(Debug, thiserror::Error)]
pub enum IpxeError {
    /// Fetching the package failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// Writing the output failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The output directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An EFI binary is not a PE image for the expected architecture.
    #[error("{path} is not an EFI image for machine {expected:#06x} (found {found}); the Debian package changed, check it by hand")]
    WrongArch {
        /// The file.
        path: std::path::PathBuf,
        /// The expected PE machine type.
        expected: u16,
        /// What was found.
        found: String,
    },
}

/// Copies the iPXE binaries from Debian's `ipxe` package (fetched through the cache at `cache`) into
/// `out`, writes `out/SHA256SUMS` and returns the manifest.
pub fn build_ipxe(cache: &Path, out: &Path) -> Result<Manifest, IpxeError> {
    let cache = DebianCache::new(cache)?;
    let pkg = cache.fetch(IPXE_PACKAGE)?;
    fs::create_dir_all(out).map_err(|source| IpxeError::CreateDir { path: out.to_path_buf(), source })?;
    let files = [
        ("/usr/lib/ipxe/undionly.kpxe", BIOS, None),
        ("/usr/lib/ipxe/ipxe.efi", UEFI_X64, Some(PE_MACHINE_X86_64)),
        ("/usr/lib/ipxe/snponly.efi", UEFI_X64_SNP, Some(PE_MACHINE_X86_64)),
    ];
    let mut names = Vec::new();
    for (src, name, machine) in files {
        let src = pkg.file(src)?;
        if let Some(expected) = machine {
            let bytes = fs::read(&src).map_err(|source| ManifestError::Io { path: src.clone(), source })?;
            match pe_machine(&bytes) {
                Some(m) if m == expected => {}
                other => {
                    let found = other.map_or("no PE header".to_string(), |m| format!("{m:#06x}"));
                    return Err(IpxeError::WrongArch { path: src, expected, found });
                }
            }
        }
        copy_atomic(&src, &out.join(name), 0o644)?;
        names.push(name);
    }
    // An operator-supplied ARM64 binary is kept and listed.
    if out.join(UEFI_ARM64).is_file() {
        names.push(UEFI_ARM64);
    }
    let manifest = Manifest::for_files(out, &names)?;
    manifest.write()?;
    Ok(manifest)
}

/// The PE/COFF machine type of an EFI image, or `None` if `image` is not a PE image.
pub fn pe_machine(image: &[u8]) -> Option<u16> {
    if image.get(..2)? != b"MZ" {
        return None;
    }
    let offset = u32::from_le_bytes(image.get(0x3c..0x40)?.try_into().ok()?) as usize;
    if image.get(offset..offset.checked_add(4)?)? != b"PE\0\0" {
        return None;
    }
    Some(u16::from_le_bytes(image.get(offset + 4..offset + 6)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pe_machine_reads_the_coff_header() {
        let mut image = vec![0u8; 0x90];
        image[..2].copy_from_slice(b"MZ");
        image[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        image[0x80..0x84].copy_from_slice(b"PE\0\0");
        image[0x84..0x86].copy_from_slice(&PE_MACHINE_ARM64.to_le_bytes());
        assert_eq!(pe_machine(&image), Some(PE_MACHINE_ARM64));
        assert_eq!(pe_machine(b"MZ"), None);
        assert_eq!(pe_machine(b"\x7fELF"), None);
        image[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pe_machine(&image), None);
    }
}

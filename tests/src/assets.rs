//! Where the built boot assets are.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

/// The directories `scripts/build-assets` fills.
#[derive(Debug, Clone)]
pub struct Assets {
    /// iPXE binaries: `undionly.kpxe`, `ipxe.efi`, `snponly.efi`, `SHA256SUMS`.
    pub ipxe: PathBuf,
    /// Test payload: `vmlinuz`, `initrd.img`, `SHA256SUMS`.
    pub payload: PathBuf,
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Finds the assets in `$OASIS_ASSETS` or `.cache/assets` at the workspace root, and checks every
/// file against its `SHA256SUMS`.
pub fn assets() -> Result<Assets> {
    let dir =
        std::env::var_os("OASIS_ASSETS").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".cache/assets"));
    let assets = Assets { ipxe: dir.join("ipxe"), payload: dir.join("payload") };
    for (sub, names) in [
        (&assets.ipxe, &["undionly.kpxe", "ipxe.efi", "snponly.efi"][..]),
        (&assets.payload, &["vmlinuz", "initrd.img"][..]),
    ] {
        for name in names {
            if !sub.join(name).is_file() {
                return Err(HarnessError::Assets {
                    dir: dir.clone(),
                    reason: format!("{} is missing", sub.join(name).display()),
                });
            }
        }
        oasis_image::manifest::verify(sub)
            .map_err(|e| HarnessError::Assets { dir: dir.clone(), reason: e.to_string() })?;
    }
    Ok(assets)
}

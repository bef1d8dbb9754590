//! Where the built boot assets are.

use std::path::{Path, PathBuf};

use crate::{HarnessError, Result};

/// The directories the assets step of `scripts/test` fills (`oasis image build ...`).
#[derive(Debug, Clone)]
pub struct Assets {
    /// iPXE binaries: `undionly.kpxe`, `ipxe.efi`, `snponly.efi`, `SHA256SUMS`.
    pub ipxe: PathBuf,
    /// Test payload: `vmlinuz`, `initrd.img`, `SHA256SUMS`.
    pub payload: PathBuf,
    /// Node image (`oasis image build node`): `vmlinuz`, `initrd.img`, `SHA256SUMS`.
    pub node: PathBuf,
}

/// `$OASIS_ASSETS`, or `.cache/assets` at the workspace root.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("OASIS_ASSETS").map(PathBuf::from).unwrap_or_else(|| workspace_root().join(".cache/assets"))
}

fn check(dir: &Path, sub: &Path, names: &[&str]) -> Result<()> {
    for name in names {
        if !sub.join(name).is_file() {
            return Err(HarnessError::Assets {
                dir: dir.to_path_buf(),
                reason: format!("{} is missing", sub.join(name).display()),
            });
        }
    }
    oasis_image::manifest::verify(sub)
        .map_err(|e| HarnessError::Assets { dir: dir.to_path_buf(), reason: e.to_string() })?;
    Ok(())
}

/// The node image in `$OASIS_ASSETS/node` (or `.cache/assets/node`), checked against its
/// `SHA256SUMS`. Build it with `oasis image build node --agent target/release/oasis-agent --out DIR/node`.
pub fn node_image() -> Result<PathBuf> {
    let dir = assets_dir();
    let node = dir.join("node");
    check(&dir, &node, &["vmlinuz", "initrd.img"])?;
    Ok(node)
}

/// The second node generation, built from Debian 13 (trixie) parts, in `$OASIS_ASSETS/node-trixie`
/// (or `.cache/assets/node-trixie`), checked against its `SHA256SUMS`. Build it with `oasis image
/// build node --suite trixie --agent target/release/oasis-agent --out DIR/node-trixie`.
pub fn trixie_node_image() -> Result<PathBuf> {
    let dir = assets_dir();
    let node = dir.join("node-trixie");
    check(&dir, &node, &["vmlinuz", "initrd.img", "etcd", "artifacts.json"])?;
    Ok(node)
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Finds the iPXE and payload assets in `$OASIS_ASSETS` or `.cache/assets` at the workspace root, and checks every
/// file against its `SHA256SUMS`.
pub fn assets() -> Result<Assets> {
    let dir = assets_dir();
    let assets = Assets { ipxe: dir.join("ipxe"), payload: dir.join("payload"), node: dir.join("node") };
    check(&dir, &assets.ipxe, &["undionly.kpxe", "ipxe.efi", "snponly.efi"])?;
    check(&dir, &assets.payload, &["vmlinuz", "initrd.img"])?;
    Ok(assets)
}

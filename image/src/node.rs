//! The node image: Debian's kernel and an initramfs that runs the oasis node agent.
//!
//! [`build_node_image`] writes `vmlinuz`, `initrd.img` (gzip cpio, by our reproducible writer), the
//! artifacts the appliance serves to some nodes only, `artifacts.json` listing them
//! ([`crate::artifacts`]) and `SHA256SUMS` of everything. The artifacts are `etcd` (Debian's
//! `etcd-server`, for control-plane nodes) and, with a k3s bundle ([`crate::k3s_bundle`]), `k3s` and
//! its airgap images tarball. They stay out of the initramfs: every node boots it, few need them.
//! etcd must run on the libraries the initramfs carries for the agent; the build checks that, down
//! to the C library's symbol versions ([`elf::check_versions`]).
//!
//! The Debian parts come from the build host's suite, or from another one (`--suite trixie`: a
//! second node generation, kernel 6.12 and etcd 3.5) through [`build_node_image_from`] with a
//! [`DebianCache::with_suite`]; the agent and its libraries always come from the build host.
//!
//! The initramfs holds:
//!
//! - static busybox at `/bin/busybox` with the [`APPLETS`] `/init` and the agent use (`udhcpc` is the
//!   agent's DHCP client);
//! - the kernel modules [`MODULES`] with every dependency, uncompressed, under
//!   `/lib/modules/VERSION/`, with `modules.dep` and `modules.alias` for exactly those ([`crate::kmod`]);
//! - the agent at [`AGENT_PATH`], every shared library it links and the dynamic loader
//!   ([`crate::elf`]), and [`DHCP_HOOK_PATH`], a link to the agent that udhcpc runs on lease events;
//! - the files of `buildroot-overlay/rootfs-overlay/` (`/init`, `/etc/hosts`, …), the same overlay
//!   the Buildroot build uses.
//!
//! The same inputs give the same bytes: the archive is sorted, every timestamp and owner is zero,
//! and overlay modes are normalised to 0755 (executable) or 0644.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::artifacts::{self, ArtifactEntry, ArtifactsError};
use crate::cpio::{Archive, CpioError};
use crate::debian::{DebianCache, DebianError, UnpackedPackage};
use crate::elf::{self, ElfError};
use crate::k3s_bundle::{self, K3sBundle, K3sBundleError};
use crate::kmod::{self, KmodError};
use crate::manifest::{copy_atomic, write_atomic_with, Manifest, ManifestError};
use crate::payload::{BUSYBOX_PACKAGE, INITRD, KERNEL, KERNEL_METAPACKAGE};

/// The kernel modules the node image carries (dependencies are added): NIC drivers for the
/// hardware racks have, the virtio transport, WireGuard for the management link and the mesh,
/// disk drivers with ext4 for the data disk, and IPMI's system interface for the machine's BMC.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "mlx5_core",
    "wireguard",
    "virtio_blk",
    "ahci",
    "nvme",
    "sd_mod",
    "crc32c_generic",
    "ext4",
    "ipmi_si",
    "ipmi_devintf",
];

/// busybox applets in `/bin`.
pub const APPLETS: &[&str] = &[
    "cat", "dmesg", "echo", "ip", "ls", "mkdir", "mke2fs", "mount", "poweroff", "ps", "reboot", "sh", "sleep", "sync",
    "udhcpc", "umount", "uname",
];

/// Where the agent lives in the image.
pub const AGENT_PATH: &str = "/usr/bin/oasis-agent";
/// The link to the agent that udhcpc runs as its script; the agent knows it by this name.
pub const DHCP_HOOK_PATH: &str = "/usr/libexec/oasis-dhcp-event";
/// The Debian package etcd comes from, and the program's path in it.
pub const ETCD_PACKAGE: &str = "etcd-server";
pub const ETCD_PROGRAM: &str = "/usr/bin/etcd";
/// etcd's file and artifact name in the output directory.
pub const ETCD_FILE: &str = "etcd";
/// The overlay in the source tree (used when no other overlay is given).
pub const DEFAULT_OVERLAY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../buildroot-overlay/rootfs-overlay");

/// Errors building the node image.
#[derive(Debug, thiserror::Error)]
pub enum NodeImageError {
    /// Fetching a package failed.
    #[error(transparent)]
    Debian(#[from] DebianError),
    /// Assembling the initramfs failed.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// Writing the output failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Resolving kernel modules failed.
    #[error(transparent)]
    Kmod(#[from] KmodError),
    /// Finding the agent's libraries failed, or etcd needs one the initramfs lacks.
    #[error(transparent)]
    Elf(#[from] ElfError),
    /// The k3s bundle is not usable.
    #[error(transparent)]
    K3sBundle(#[from] K3sBundleError),
    /// Writing or hashing `artifacts.json` failed.
    #[error(transparent)]
    Artifacts(#[from] ArtifactsError),
    /// The kernel package does not have exactly one kernel and one modules directory.
    #[error("package {package} has {count} {what}, expected one; check `dpkg-deb -c` of it")]
    Kernel {
        /// The kernel package.
        package: String,
        /// What was counted.
        what: &'static str,
        /// How many were found.
        count: usize,
    },
    /// The overlay directory is missing or unreadable.
    #[error("cannot read the root filesystem overlay at {path}; pass --overlay with the buildroot-overlay/rootfs-overlay directory of the oasis sources")]
    Overlay {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The agent binary is missing or unreadable.
    #[error("cannot read the agent binary {path}; build it with `cargo build --release -p oasis-agent` and pass target/release/oasis-agent to --agent")]
    Agent {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The output directory could not be created.
    #[error("cannot create {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The parts of a node initramfs, all on the build host.
#[derive(Debug, Clone)]
pub struct NodeParts {
    /// The static busybox binary.
    pub busybox: PathBuf,
    /// The kernel's `lib/modules/VERSION` directory.
    pub modules_dir: PathBuf,
    /// The kernel version (`VERSION` above, what `uname -r` prints on the node).
    pub kernel_version: String,
    /// The agent binary.
    pub agent: PathBuf,
    /// Where the agent's shared libraries are looked up.
    pub library_dirs: Vec<String>,
    /// The root filesystem overlay.
    pub overlay: PathBuf,
}

/// What [`build_node_image`] wrote.
#[derive(Debug, Clone)]
pub struct NodeImage {
    /// The manifest of every file written (`SHA256SUMS`).
    pub manifest: Manifest,
    /// What `artifacts.json` lists.
    pub artifacts: Vec<ArtifactEntry>,
    /// The kernel version.
    pub kernel_version: String,
    /// Size of `vmlinuz`.
    pub kernel_bytes: u64,
    /// Size of `initrd.img` (compressed).
    pub initrd_bytes: u64,
    /// Size of the initramfs uncompressed.
    pub initrd_uncompressed_bytes: u64,
    /// Modules included, by name.
    pub modules: Vec<String>,
}

/// Builds the node initramfs from its parts; also returns the names of the modules it holds.
pub fn node_initramfs(parts: &NodeParts) -> Result<(Archive, Vec<String>), NodeImageError> {
    let mut a = Archive::new();
    for (dir, mode) in [("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755), ("tmp", 0o1777)] {
        a.dir(dir, mode)?;
    }
    a.dir("root", 0o700)?;
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
    a.file(&format!("{base}/modules.dep"), 0o644, kmod::modules_dep(&modules))?;
    a.file(&format!("{base}/modules.alias"), 0o644, kmod::modules_alias(&modules))?;

    a.file_from(AGENT_PATH, 0o755, &parts.agent)?;
    a.symlink(DHCP_HOOK_PATH, AGENT_PATH)?;
    let dirs: Vec<&str> = parts.library_dirs.iter().map(String::as_str).collect();
    for file in elf::runtime_files(&parts.agent, &dirs)? {
        a.file_from(&file.image_path, 0o755, &file.host_path)?;
    }

    add_overlay(&mut a, &parts.overlay)?;
    Ok((a, modules.into_iter().map(|m| m.name).collect()))
}

/// Adds every file, directory and symlink under `overlay` at the same path in the archive. A file
/// or link already in the archive is kept: an overlay added first overrides those added after it.
pub(crate) fn add_overlay(a: &mut Archive, overlay: &Path) -> Result<(), NodeImageError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeImageError::Overlay { path, source }
    };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = overlay.join(&rel);
        let mut entries: Vec<_> =
            fs::read_dir(&dir).map_err(err(&dir))?.collect::<Result<_, _>>().map_err(err(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = rel.join(entry.file_name());
            let archive_path = name.to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).map_err(err(&path))?;
            if !meta.is_dir() && a.contains(&archive_path) {
                continue;
            }
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).map_err(err(&path))?;
                a.symlink(&archive_path, &target.to_string_lossy())?;
            } else if meta.is_dir() {
                a.dir(&archive_path, 0o755)?;
                stack.push(name);
            } else {
                let mode = if meta.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 };
                a.file_from(&archive_path, mode, &path)?;
            }
        }
    }
    Ok(())
}

/// The kernel package's one `/boot/vmlinuz-*` file name and its one `/lib/modules/*` version.
pub(crate) fn kernel_files(kernel: &UnpackedPackage) -> Result<(String, String), NodeImageError> {
    let one = |names: Vec<String>, what: &'static str| match <[String; 1]>::try_from(names) {
        Ok([name]) => Ok(name),
        Err(names) => Err(NodeImageError::Kernel { package: kernel.name.clone(), what, count: names.len() }),
    };
    Ok((
        one(kernel.list("/boot", "vmlinuz-")?, "/boot/vmlinuz-* files")?,
        one(kernel.list("/lib/modules", "")?, "/lib/modules/* directories")?,
    ))
}

/// Fetches Debian's kernel, busybox and etcd through the cache at `cache` and writes into `out`:
/// `vmlinuz`, `initrd.img` (with `agent` as the node agent and `overlay` as the root filesystem
/// overlay), `etcd`, with `k3s_bundle` also `k3s` and its airgap images tarball, then
/// `artifacts.json` and `SHA256SUMS`. The bundle is checked before anything is fetched.
pub fn build_node_image(
    cache: &Path,
    agent: &Path,
    overlay: &Path,
    k3s_bundle: Option<&Path>,
    out: &Path,
) -> Result<NodeImage, NodeImageError> {
    build_node_image_from(&DebianCache::new(cache)?, agent, overlay, k3s_bundle, out)
}

/// [`build_node_image`] from the packages of `cache`'s suite ([`DebianCache::with_suite`]): the
/// kernel, its modules, busybox and etcd all come from that suite; the agent and the libraries it
/// links come from the build host, and etcd must run on those (checked).
pub fn build_node_image_from(
    cache: &DebianCache,
    agent: &Path,
    overlay: &Path,
    k3s_bundle: Option<&Path>,
    out: &Path,
) -> Result<NodeImage, NodeImageError> {
    // Check the local inputs before fetching anything.
    fs::File::open(agent).map_err(|source| NodeImageError::Agent { path: agent.to_path_buf(), source })?;
    fs::read_dir(overlay).map_err(|source| NodeImageError::Overlay { path: overlay.to_path_buf(), source })?;
    let bundle = k3s_bundle.map(k3s_bundle::validate).transpose()?;
    let kernel_package = cache.resolve_dependency(KERNEL_METAPACKAGE, "linux-image-")?;
    let kernel = cache.fetch(&kernel_package)?;
    let busybox = cache.fetch(BUSYBOX_PACKAGE)?;
    let etcd = cache.fetch(ETCD_PACKAGE)?;
    fs::create_dir_all(out).map_err(|source| NodeImageError::CreateDir { path: out.to_path_buf(), source })?;

    let (vmlinuz, version) = kernel_files(&kernel)?;
    let parts = NodeParts {
        busybox: busybox.file("/bin/busybox")?,
        modules_dir: kernel.file(&format!("/lib/modules/{version}"))?,
        kernel_version: version.clone(),
        agent: agent.to_path_buf(),
        library_dirs: elf::HOST_LIBRARY_DIRS.iter().map(|d| d.to_string()).collect(),
        overlay: overlay.to_path_buf(),
    };
    let (archive, modules) = node_initramfs(&parts)?;
    let etcd_program = etcd.file(ETCD_PROGRAM)?;
    elf::check_carried(&etcd_program, archive.paths())?;
    elf::check_versions(&etcd_program, &elf::runtime_files(agent, elf::HOST_LIBRARY_DIRS)?)?;

    copy_atomic(&kernel.file(&format!("/boot/{vmlinuz}"))?, &out.join(KERNEL), 0o644)?;
    let uncompressed = archive.to_bytes().len() as u64;
    write_atomic_with(&out.join(INITRD), |file| {
        let mut buffered = std::io::BufWriter::new(file);
        archive.write_gzip(&mut buffered)?;
        buffered.flush()
    })?;
    let artifacts = write_artifacts(out, &etcd_program, &etcd.version, bundle.as_ref())?;

    let mut names = vec![KERNEL.to_string(), INITRD.to_string(), artifacts::ARTIFACTS_FILE.to_string()];
    names.extend(artifacts.iter().map(|a| a.file.clone()));
    let manifest = Manifest::for_files(out, &names)?;
    manifest.write()?;
    let size = |name: &str| fs::metadata(out.join(name)).map(|m| m.len()).unwrap_or(0);
    Ok(NodeImage {
        kernel_bytes: size(KERNEL),
        initrd_bytes: size(INITRD),
        initrd_uncompressed_bytes: uncompressed,
        kernel_version: version,
        modules,
        manifest,
        artifacts,
    })
}

/// Copies etcd (and the k3s bundle's files) into `out` and writes `artifacts.json`. Bundle files
/// left from an earlier build with a bundle are removed when this one has none (or another
/// tarball), so the directory holds exactly what the manifests list.
fn write_artifacts(
    out: &Path,
    etcd_program: &Path,
    etcd_version: &str,
    bundle: Option<&K3sBundle>,
) -> Result<Vec<ArtifactEntry>, NodeImageError> {
    copy_atomic(etcd_program, &out.join(ETCD_FILE), 0o755)?;
    let mut entries = vec![ArtifactEntry::of_file(out, ETCD_FILE, ETCD_FILE, Some(etcd_version.to_string()))?];
    if let Some(bundle) = bundle {
        copy_atomic(&bundle.program, &out.join(k3s_bundle::K3S_FILE), 0o755)?;
        copy_atomic(&bundle.images, &out.join(&bundle.images_file), 0o644)?;
        entries.push(ArtifactEntry::of_file(out, k3s_bundle::K3S_ARTIFACT, k3s_bundle::K3S_FILE, None)?);
        entries.push(ArtifactEntry::of_file(out, k3s_bundle::AIRGAP_ARTIFACT, &bundle.images_file, None)?);
    }
    for stale in std::iter::once(k3s_bundle::K3S_FILE).chain(k3s_bundle::AIRGAP_FILES.iter().copied()) {
        if !entries.iter().any(|e| e.file == stale) {
            match fs::remove_file(out.join(stale)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ManifestError::Io { path: out.join(stale), source: e }.into())
                }
                _ => {}
            }
        }
    }
    artifacts::write(out, &entries)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The sorted paths of an archive with the kernel version replaced by `KVER`: the golden file list.
pub fn normalized_file_list(archive: &Archive, kernel_version: &str) -> Vec<String> {
    let mut paths: Vec<String> = archive.paths().map(|p| p.replace(kernel_version, "KVER")).collect();
    paths.sort();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_is_valid_shell_and_execs_the_agent() {
        let init = Path::new(DEFAULT_OVERLAY).join("init");
        let text = fs::read_to_string(&init).unwrap();
        assert!(text.contains(AGENT_PATH), "{text}");
        let status = std::process::Command::new("sh").arg("-n").arg(&init).status().unwrap();
        assert!(status.success());
        let hosts = fs::read_to_string(Path::new(DEFAULT_OVERLAY).join("etc/hosts")).unwrap();
        assert!(hosts.lines().any(|l| l.starts_with("127.0.0.1") && l.contains("localhost")), "{hosts}");
    }

    #[test]
    fn overlay_modes_are_normalised_and_symlinks_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("init"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(dir.path().join("init"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.path().join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
        fs::set_permissions(dir.path().join("etc/hosts"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/proc/mounts", dir.path().join("etc/mtab")).unwrap();
        let mut a = Archive::new();
        add_overlay(&mut a, dir.path()).unwrap();
        assert_eq!(a.paths().collect::<Vec<_>>(), ["etc", "etc/hosts", "etc/mtab", "init"]);
        let text = String::from_utf8_lossy(&a.to_bytes()).into_owned();
        // newc mode fields: 0100755 for init, 0100644 for hosts.
        assert!(text.contains("000081ED"), "init is not 0755");
        assert!(text.contains("000081A4"), "hosts is not 0644");
        let missing = add_overlay(&mut Archive::new(), &dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("--overlay"), "{missing}");
    }
}

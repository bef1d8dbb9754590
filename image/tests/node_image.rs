//! The node image from real Debian packages: its file list against a golden list, and the same bytes
//! from two builds. The agent here is the host's `/bin/true` (a small dynamically linked program, so
//! the loader and libc are pulled in as for the real agent). Uses the cache in `OASIS_DEBIAN_CACHE`
//! if set, else a temporary one. Update the golden lists with `OASIS_UPDATE_GOLDEN=1`.
//!
//! The k3s bundle here is a fixture, not k3s: `/bin/true` named `k3s` and an empty tar archive. It
//! proves the bundle's files are checked, copied and listed; nothing here runs them.

use std::io::Read;
use std::path::Path;

use oasis_image::node::{self, NodeParts};
use oasis_image::{artifacts, k3s_bundle, manifest, DebianCache};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/node-initramfs.txt");
/// The output directory's files and the artifacts listed, with the fixture bundle.
const GOLDEN_OUTPUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/node-output.txt");
const AGENT: &str = "/bin/true";

mod common;

use common::cache;

#[test]
fn node_initramfs_file_list_matches_the_golden_list() {
    let (dir, _tmp) = cache();
    let cache = DebianCache::new(&dir).unwrap();
    let kernel = cache.fetch(&cache.resolve_dependency("linux-image-amd64", "linux-image-").unwrap()).unwrap();
    let busybox = cache.fetch("busybox-static").unwrap();
    let version = kernel.list("/lib/modules", "").unwrap().remove(0);
    let parts = NodeParts {
        busybox: busybox.file("/bin/busybox").unwrap(),
        modules_dir: kernel.file(&format!("/lib/modules/{version}")).unwrap(),
        kernel_version: version.clone(),
        agent: AGENT.into(),
        library_dirs: oasis_image::elf::HOST_LIBRARY_DIRS.iter().map(|d| d.to_string()).collect(),
        overlay: node::DEFAULT_OVERLAY.into(),
    };
    let (archive, modules) = node::node_initramfs(&parts).unwrap();
    let list = node::normalized_file_list(&archive, &version).join("\n") + "\n";
    oasis_testkit::assert_golden(GOLDEN, &list);
    for wanted in node::MODULES {
        assert!(modules.iter().any(|m| m == wanted), "{wanted} missing from {modules:?}");
    }

    // modules.dep covers exactly the included modules, and every dependency it names is included.
    let dep = String::from_utf8(extract(&archive.to_bytes(), &format!("lib/modules/{version}/modules.dep"))).unwrap();
    assert_eq!(dep.lines().count(), modules.len());
    for path in dep.split_whitespace().map(|w| w.trim_end_matches(':')) {
        assert!(list.contains(&format!("lib/modules/KVER/{path}\n")), "{path} in modules.dep is not in the image");
    }
    let alias =
        String::from_utf8(extract(&archive.to_bytes(), &format!("lib/modules/{version}/modules.alias"))).unwrap();
    assert!(alias.lines().any(|l| l.starts_with("alias virtio:d00000001v") && l.ends_with(" virtio_net")), "{alias}");
    assert!(alias.lines().any(|l| l.starts_with("alias pci:v00008086d0000100E") && l.ends_with(" e1000")));
}

/// The data of `name` in an uncompressed newc archive.
fn extract(archive: &[u8], name: &str) -> Vec<u8> {
    let mut at = 0;
    let field = |at: usize, i: usize| {
        usize::from_str_radix(std::str::from_utf8(&archive[at + 6 + i * 8..at + 14 + i * 8]).unwrap(), 16).unwrap()
    };
    loop {
        let (size, namesize) = (field(at, 6), field(at, 11));
        let name_start = at + 110;
        let entry = std::str::from_utf8(&archive[name_start..name_start + namesize - 1]).unwrap();
        let data_start = (name_start + namesize).div_ceil(4) * 4;
        if entry == name {
            return archive[data_start..data_start + size].to_vec();
        }
        assert_ne!(entry, "TRAILER!!!", "{name} not in the archive");
        at = (data_start + size).div_ceil(4) * 4;
    }
}

/// A k3s bundle of fixtures: `/bin/true` as `k3s` and an empty tar archive made by tar(1).
fn fixture_bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/true", dir.path().join("k3s")).unwrap();
    let status = std::process::Command::new("tar")
        .args(["-cf", "k3s-airgap-images-amd64.tar", "-T", "/dev/null"])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

fn read_dir_sorted(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn node_image_builds_are_byte_identical_and_initramfs_unpacks() {
    let (dir, _tmp) = cache();
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let overlay = Path::new(node::DEFAULT_OVERLAY);
    let first = node::build_node_image(&dir, Path::new(AGENT), overlay, None, one.path()).unwrap();
    let second = node::build_node_image(&dir, Path::new(AGENT), overlay, None, two.path()).unwrap();
    assert_eq!(first.manifest.entries(), second.manifest.entries());
    for name in read_dir_sorted(one.path()) {
        let (a, b) = (std::fs::read(one.path().join(&name)).unwrap(), std::fs::read(two.path().join(&name)).unwrap());
        assert!(a == b, "{name} differs between two builds");
    }
    manifest::verify(one.path()).unwrap();
    assert!(first.initrd_bytes < 30 << 20, "initramfs is {} bytes, over the 30 MiB target", first.initrd_bytes);
    assert!(first.initrd_uncompressed_bytes > first.initrd_bytes);

    // The kernel unpacks gzip: so must flate2, and what comes out is our archive with /init in it.
    let gz = std::fs::read(one.path().join("initrd.img")).unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
    assert_eq!(plain.len() as u64, first.initrd_uncompressed_bytes);
    assert!(String::from_utf8_lossy(&extract(&plain, "init")).contains("/usr/bin/oasis-agent"));
    assert_eq!(extract(&plain, "usr/bin/oasis-agent"), std::fs::read(AGENT).unwrap());

    // etcd is served beside the image, not in it, and is Debian's etcd-server program.
    let listed = artifacts::verify(one.path()).unwrap();
    assert_eq!(listed, first.artifacts);
    let [etcd] = listed.as_slice() else { panic!("{listed:?}") };
    assert_eq!((etcd.name.as_str(), etcd.file.as_str()), ("etcd", "etcd"));
    let package = DebianCache::new(&dir).unwrap().fetch(node::ETCD_PACKAGE).unwrap();
    assert_eq!(etcd.version.as_deref(), Some(package.version.as_str()));
    assert!(package.version.starts_with("3.4."), "{}", package.version);
    assert_eq!(
        std::fs::read(one.path().join("etcd")).unwrap(),
        std::fs::read(package.file("/usr/bin/etcd").unwrap()).unwrap()
    );
    assert!(!archive_has(&plain, "usr/bin/etcd"));
}

#[test]
fn a_k3s_bundle_is_copied_listed_and_dropped_again_without_one() {
    let (dir, _tmp) = cache();
    let out = tempfile::tempdir().unwrap();
    let bundle = fixture_bundle();
    let overlay = Path::new(node::DEFAULT_OVERLAY);
    let image = node::build_node_image(&dir, Path::new(AGENT), overlay, Some(bundle.path()), out.path()).unwrap();
    manifest::verify(out.path()).unwrap();
    assert_eq!(artifacts::verify(out.path()).unwrap(), image.artifacts);

    let files = read_dir_sorted(out.path());
    let listed: Vec<String> =
        image.artifacts.iter().map(|a| format!("{} {} {}", a.name, a.file, a.version.is_some())).collect();
    let text = format!("files:\n{}\nartifacts (name file has-version):\n{}\n", files.join("\n"), listed.join("\n"));
    oasis_testkit::assert_golden(GOLDEN_OUTPUT, &text);
    let k3s = artifacts::find(&image.artifacts, k3s_bundle::K3S_ARTIFACT).unwrap();
    assert_eq!(std::fs::read(out.path().join(&k3s.file)).unwrap(), std::fs::read(bundle.path().join("k3s")).unwrap());
    let manifest_names: Vec<&str> = image.manifest.entries().iter().map(|e| e.name.as_str()).collect();
    assert!(manifest_names.contains(&"k3s-airgap-images-amd64.tar") && manifest_names.contains(&"artifacts.json"));

    // A bundle that is not one is refused before anything is fetched or written.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("k3s"), "#!/bin/sh\n").unwrap();
    let empty_out = tempfile::tempdir().unwrap();
    let err = node::build_node_image(&dir, Path::new(AGENT), overlay, Some(bad.path()), empty_out.path()).unwrap_err();
    assert!(err.to_string().contains("not an x86-64 Linux program"), "{err}");
    assert!(read_dir_sorted(empty_out.path()).is_empty());

    // Rebuilt into the same directory without a bundle: the bundle's files go.
    let again = node::build_node_image(&dir, Path::new(AGENT), overlay, None, out.path()).unwrap();
    assert_eq!(again.artifacts.len(), 1);
    assert_eq!(read_dir_sorted(out.path()), ["SHA256SUMS", "artifacts.json", "etcd", "initrd.img", "vmlinuz"]);
    artifacts::verify(out.path()).unwrap();
}

fn archive_has(archive: &[u8], name: &str) -> bool {
    let mut child = std::process::Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), archive).unwrap();
    let listing = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(listing.lines().any(|l| l == "init"), "cpio could not list the archive");
    listing.lines().any(|l| l == name)
}

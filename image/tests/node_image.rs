//! The node image from real Debian packages: its file list against a golden list, and the same bytes
//! from two builds. The agent here is the host's `/bin/true` (a small dynamically linked program, so
//! the loader and libc are pulled in as for the real agent). Uses the cache in `OASIS_DEBIAN_CACHE`
//! if set, else a temporary one. Update the golden list with `OASIS_UPDATE_GOLDEN=1`.

use std::io::Read;
use std::path::Path;

use oasis_image::node::{self, NodeParts};
use oasis_image::{manifest, DebianCache};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/node-initramfs.txt");
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
    if std::env::var_os("OASIS_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &list).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap();
    assert_eq!(list, golden, "the initramfs file list changed; if that is intended, run with OASIS_UPDATE_GOLDEN=1");
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

#[test]
fn node_image_builds_are_byte_identical_and_initramfs_unpacks() {
    let (dir, _tmp) = cache();
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let overlay = Path::new(node::DEFAULT_OVERLAY);
    let first = node::build_node_image(&dir, Path::new(AGENT), overlay, one.path()).unwrap();
    let second = node::build_node_image(&dir, Path::new(AGENT), overlay, two.path()).unwrap();
    assert_eq!(first.manifest.entries(), second.manifest.entries());
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
}

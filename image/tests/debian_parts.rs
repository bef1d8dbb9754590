//! Fetches real Debian packages with apt-get (this host reaches Debian's archive) and builds the iPXE
//! directory and the test payload from them. Uses the cache in `OASIS_DEBIAN_CACHE` if set (so
//! repeated runs reuse downloads), else a temporary directory.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use oasis_image::{ipxe, manifest, payload, DebianCache};

mod common;

use common::cache;

#[test]
fn fetch_reuses_the_cached_download() {
    let (dir, _tmp) = cache();
    let cache = DebianCache::new(&dir).unwrap();
    let first = cache.fetch("busybox-static").unwrap();
    assert!(first.root.join("bin/busybox").is_file());
    assert_eq!(first.deb_sha256.len(), 64);
    let modified = std::fs::metadata(&first.deb).unwrap().modified().unwrap();
    let second = cache.fetch("busybox-static").unwrap();
    assert_eq!(first, second);
    assert_eq!(std::fs::metadata(&second.deb).unwrap().modified().unwrap(), modified);
}

#[test]
fn kernel_metapackage_resolves_to_the_real_package() {
    let (dir, _tmp) = cache();
    let cache = DebianCache::new(&dir).unwrap();
    let real = cache.resolve_dependency(payload::KERNEL_METAPACKAGE, "linux-image-").unwrap();
    assert!(real.starts_with("linux-image-6.") && real.ends_with("-amd64"), "{real}");
}

#[test]
fn ipxe_directory_has_the_binaries_and_a_valid_manifest() {
    let (dir, _tmp) = cache();
    let out = tempfile::tempdir().unwrap();
    let manifest = ipxe::build_ipxe(&dir, out.path()).unwrap();
    let names: Vec<&str> = manifest.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["ipxe.efi", "snponly.efi", "undionly.kpxe"]);
    assert_eq!(manifest::verify(out.path()).unwrap(), manifest);
    let efi = std::fs::read(out.path().join("ipxe.efi")).unwrap();
    assert_eq!(ipxe::pe_machine(&efi), Some(ipxe::PE_MACHINE_X86_64));
}

#[test]
fn test_payload_has_kernel_and_reproducible_initramfs() {
    let (dir, _tmp) = cache();
    let out = tempfile::tempdir().unwrap();
    let manifest = payload::build_test_payload(&dir, out.path()).unwrap();
    manifest::verify(out.path()).unwrap();
    let kernel = std::fs::read(out.path().join("vmlinuz")).unwrap();
    assert_eq!(&kernel[0x202..0x206], b"HdrS", "vmlinuz is a bzImage");

    // The initramfs unpacks with the system tools and holds what /init needs.
    let gz = std::fs::read(out.path().join("initrd.img")).unwrap();
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut plain).unwrap();
    let mut child =
        Command::new("cpio").args(["-t", "--quiet"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&plain).unwrap();
    let listing = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    for name in ["init", "bin/busybox", "bin/sh", "bin/poweroff", "dev/console", "dev/null"] {
        assert!(listing.lines().any(|l| l == name), "initrd lacks {name}:\n{listing}");
    }

    // A second build gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    let second = payload::build_test_payload(&dir, again.path()).unwrap();
    assert_eq!(manifest.entries(), second.entries());
}

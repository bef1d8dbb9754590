//! Update bundles for the tests: signing keys and bundles built by the real `oasis` binary, and a
//! node image whose etcd cannot start (a properly signed bundle that must fail its gates).

use std::path::{Path, PathBuf};

use crate::appliance::oasis;

/// A signing key pair made by `oasis config keygen` in `dir`: (private, public).
pub fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let keys = dir.join("keys");
    let made = oasis(&["config", "keygen", "--out", keys.to_str().unwrap()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (keys.join("oasis-config.key"), keys.join("oasis-config.pub"))
}

/// `oasis image build bundle` of the node image in `node`, version `0.15.SEQUENCE`.
pub fn build(node: &Path, sequence: u64, key: &Path, out: &Path) {
    let (node, key, out_text, seq) =
        (node.to_str().unwrap(), key.to_str().unwrap(), out.to_str().unwrap(), sequence.to_string());
    let version = format!("0.15.{sequence}");
    let args = ["image", "build", "bundle", "--node", node, "--version", &version, "--sequence", &seq];
    let built = oasis(&[&args[..], &["--key", key, "--out", out_text]].concat());
    assert!(built.status.success(), "building the bundle: {}", String::from_utf8_lossy(&built.stderr));
}

/// A copy of the node image in `node` under `dir` whose etcd is a program that says it cannot
/// start and exits 1, listed in its `artifacts.json` with its own hash and the same version: a
/// bundle of it is valid and signed, and fails on the first machine that boots it.
pub fn with_broken_etcd(node: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("node-broken-etcd");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(node).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
    }
    let etcd = copy.join(oasis_image::node::ETCD_FILE);
    std::fs::write(&etcd, "#!/bin/sh\necho 'etcd: broken on purpose by the rollout test' >&2\nexit 1\n").unwrap();
    let mut entries = oasis_image::artifacts::read(&copy).unwrap();
    for entry in entries.iter_mut().filter(|e| e.name == oasis_image::node::ETCD_FILE) {
        let fresh =
            oasis_image::artifacts::ArtifactEntry::of_file(&copy, &entry.name, &entry.file, entry.version.clone())
                .unwrap();
        *entry = fresh;
    }
    oasis_image::artifacts::write(&copy, &entries).unwrap();
    copy
}

/// `oasis image build bundle` of the node image in `node` and the appliance image `appliance`
/// (its boot slot becomes the bundle's appliance part), version `0.15.SEQUENCE`.
pub fn build_with_appliance(node: &Path, appliance: &Path, sequence: u64, key: &Path, out: &Path) {
    let (node, appliance, key, out) =
        (node.to_str().unwrap(), appliance.to_str().unwrap(), key.to_str().unwrap(), out.to_str().unwrap());
    let (version, seq) = (format!("0.15.{sequence}"), sequence.to_string());
    let args = ["image", "build", "bundle", "--node", node, "--appliance", appliance, "--version", &version];
    let built = oasis(&[&args[..], &["--sequence", &seq, "--key", key, "--out", out]].concat());
    assert!(built.status.success(), "building the bundle: {}", String::from_utf8_lossy(&built.stderr));
}

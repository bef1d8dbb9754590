//! `oasis image build bundle` and `oasis update verify`, run as the real binary on a small node
//! image directory: a bundle is built and verified, and every kind of bad bundle is refused with
//! exit 3 and its reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oasis_image::artifacts::{self, ArtifactEntry};
use oasis_image::bundle::{encode_head, BundleManifest, HEADER_BYTES};
use oasis_image::signing;

fn oasis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oasis")).args(args).env("OASIS_LOG", "warn").output().unwrap()
}

/// Runs `oasis ARGS`, expecting exit `code`; returns stdout and stderr together.
fn expect(code: i32, args: &[&str]) -> String {
    let out = oasis(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(code), "oasis {args:?}:\n{text}");
    text
}

struct Rack {
    dir: tempfile::TempDir,
}

impl Rack {
    fn new() -> Rack {
        let dir = tempfile::tempdir().unwrap();
        let rack = Rack { dir };
        expect(0, &["config", "keygen", "--out", rack.s("keys")]);
        expect(0, &["config", "keygen", "--out", rack.s("other")]);
        rack.node("node", "3.5.16-4");
        rack
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> &str {
        // Leaked: the strings live as long as the test.
        Box::leak(self.path(name).to_str().unwrap().to_string().into_boxed_str())
    }

    /// A node image directory with small files of known content and etcd at `etcd_version`.
    fn node(&self, name: &str, etcd_version: &str) {
        let dir = self.path(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"kernel ".repeat(2000)).unwrap();
        std::fs::write(dir.join("initrd.img"), b"initramfs ".repeat(3000)).unwrap();
        std::fs::write(dir.join("etcd"), b"etcd ".repeat(1000)).unwrap();
        let etcd = ArtifactEntry::of_file(&dir, "etcd", "etcd", Some(etcd_version.into())).unwrap();
        artifacts::write(&dir, &[etcd]).unwrap();
    }

    /// `oasis image build bundle` of node dir `node` with `sequence` into `out`.
    fn build(&self, node: &str, sequence: &str, out: &str) -> String {
        expect(
            0,
            &[
                "image",
                "build",
                "bundle",
                "--node",
                self.s(node),
                "--version",
                "0.16.0",
                "--sequence",
                sequence,
                "--key",
                self.s("keys/oasis-config.key"),
                "--out",
                self.s(out),
                "--kernel-version",
                "6.12.9-amd64",
            ],
        )
    }

    /// `oasis update verify FILE --trusted-key keys/oasis-config.pub EXTRA...`, expecting `code`.
    fn verify(&self, code: i32, file: &str, extra: &[&str]) -> String {
        let mut args = vec!["update", "verify", self.s(file), "--trusted-key", self.s("keys/oasis-config.pub")];
        args.extend_from_slice(extra);
        expect(code, &args)
    }

    /// Writes `bytes` as `name` and verifies it, expecting exit 3 with `reason` in the message.
    fn refused(&self, name: &str, bytes: &[u8], reason: &str) {
        std::fs::write(self.path(name), bytes).unwrap();
        let text = self.verify(3, name, &[]);
        assert!(text.contains(reason), "{name}: {text}");
    }
}

fn manifest_end(bytes: &[u8]) -> usize {
    HEADER_BYTES + u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize
}

/// `bytes` with its manifest changed and signed again with the private key at `key`.
fn reseal(bytes: &[u8], key: &Path, change: impl FnOnce(&mut BundleManifest)) -> Vec<u8> {
    let end = manifest_end(bytes);
    let mut manifest: BundleManifest = serde_json::from_slice(&bytes[HEADER_BYTES..end]).unwrap();
    change(&mut manifest);
    let key = signing::load_private_key(key).unwrap();
    let mut out = encode_head(&manifest, Some(&key)).unwrap();
    out.extend_from_slice(&bytes[end..]);
    out
}

#[test]
fn a_bundle_is_built_and_verified_with_the_rules() {
    let rack = Rack::new();
    let built = rack.build("node", "7", "u.bundle");
    assert!(built.contains("oasis 0.16.0 (sequence 7, x86_64): kernel 6.12.9-amd64, agent 0.16.0, etcd 3.5.16-4"));
    let verified = rack.verify(0, "u.bundle", &[]);
    let id = signing::key_id(&signing::load_trusted_key(&rack.path("keys/oasis-config.pub")).unwrap().unwrap());
    assert!(verified.contains(&format!("verified, signed by key {id}")), "{verified}");
    assert!(verified.contains("etcd (etcd, 5000 bytes)") && verified.contains("installable: not checked"));
    let over = rack.verify(0, "u.bundle", &["--installed-sequence", "5", "--installed-etcd", "3.4.23-4+b4"]);
    assert!(over.contains("installable over sequence 5: etcd minor upgrade 3.4.23-4+b4 to 3.5.16-4"), "{over}");

    // The rules: an older or equal sequence, a skipped or downgraded etcd minor.
    let same = rack.verify(3, "u.bundle", &["--installed-sequence", "7", "--installed-etcd", "3.5.16"]);
    assert!(same.contains("sequence 7") && same.contains("not above the installed sequence 7"), "{same}");
    let downgrade = rack.verify(3, "u.bundle", &["--installed-sequence", "5", "--installed-etcd", "3.6.0"]);
    assert!(downgrade.contains("downgrade") && downgrade.contains("3.6.0"), "{downgrade}");
    rack.node("node36", "3.6.1-1");
    rack.build("node36", "8", "skip.bundle");
    let skip = rack.verify(3, "skip.bundle", &["--installed-sequence", "7", "--installed-etcd", "3.4.23-4+b4"]);
    assert!(
        skip.contains("skips a minor version") && skip.contains("3.4.23-4+b4") && skip.contains("3.6.1-1"),
        "{skip}"
    );
    // Both installed values or neither.
    expect(
        2,
        &[
            "update",
            "verify",
            rack.s("u.bundle"),
            "--trusted-key",
            rack.s("keys/oasis-config.pub"),
            "--installed-sequence",
            "5",
        ],
    );
}

#[test]
fn bad_bundles_are_refused_with_exit_3_and_the_reason() {
    let rack = Rack::new();
    rack.build("node", "7", "u.bundle");
    let good = std::fs::read(rack.path("u.bundle")).unwrap();
    let end = manifest_end(&good);

    rack.refused("truncated", &good[..good.len() - 100], "cut short");
    rack.refused("header-only", &good[..40], "cut short");
    rack.refused("not", b"#!/bin/sh\necho not a bundle\n", "not an oasis update bundle");
    let mut tampered = good.clone();
    tampered[end + 10] ^= 1;
    rack.refused("tampered", &tampered, "member vmlinuz does not match");
    let mut last = good.clone();
    *last.last_mut().unwrap() ^= 1;
    rack.refused("last-byte", &last, "member etcd does not match");
    let mut manifest = good.clone();
    manifest[HEADER_BYTES + 5] ^= 1;
    rack.refused("manifest", &manifest, "signature");
    let mut unsigned = good.clone();
    unsigned[16..HEADER_BYTES].fill(0);
    rack.refused("unsigned", &unsigned, "not signed");
    let key = rack.path("keys/oasis-config.key");
    rack.refused("product", &reseal(&good, &key, |m| m.product = "rke2".into()), "product \"rke2\"");
    rack.refused("arch", &reseal(&good, &key, |m| m.architecture = "aarch64".into()), "aarch64");
    rack.refused("huge", &reseal(&good, &key, |m| m.members[1].size = 1 << 40), "over the limit");
    let other = rack.path("other/oasis-config.key");
    rack.refused("stranger", &reseal(&good, &other, |_| {}), "not trusted here");

    // The other key trusted as well: the stranger's bundle verifies.
    let text = rack.verify(0, "stranger", &["--trusted-key", rack.s("other/oasis-config.pub")]);
    assert!(text.contains("verified"), "{text}");
}

#[test]
fn building_refuses_a_damaged_node_image_and_a_wrong_key() {
    let rack = Rack::new();
    std::fs::write(rack.path("node/etcd"), b"replaced").unwrap();
    let args = |key: &str| {
        [
            "image",
            "build",
            "bundle",
            "--node",
            rack.s("node"),
            "--version",
            "1",
            "--sequence",
            "2",
            "--key",
            rack.s(key),
            "--out",
            rack.s("u.bundle"),
            "--kernel-version",
            "6.1.0",
        ]
        .map(String::from)
    };
    let text = expect(1, &args("keys/oasis-config.key").each_ref().map(String::as_str));
    assert!(text.contains("oasis image build node"), "{text}");
    assert!(!rack.path("u.bundle").exists());
    let text = expect(1, &args("keys/oasis-config.pub").each_ref().map(String::as_str));
    assert!(text.contains("it is an oasis config trusted key"), "{text}");
}

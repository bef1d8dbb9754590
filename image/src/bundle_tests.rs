use super::*;
use crate::artifacts::ArtifactEntry;

const ETCD_VERSION: &str = "3.4.23-4+b4";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

/// A bzImage-shaped kernel whose setup header names `version`.
fn fake_kernel(version: &str) -> Vec<u8> {
    let mut image = vec![0u8; 0x1000];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x20e..0x210].copy_from_slice(&0x0400u16.to_le_bytes());
    let text = format!("{version} (debian-kernel@lists.debian.org) #1 SMP\0");
    image[0x600..0x600 + text.len()].copy_from_slice(text.as_bytes());
    image.extend((0..3000u32).map(|i| (i % 251) as u8));
    image
}

/// A node image directory as `oasis image build node` writes it, with small files.
fn node_dir(k3s: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    fs::write(p.join(KERNEL), fake_kernel("6.1.0-28-amd64")).unwrap();
    fs::write(p.join(INITRD), b"initramfs bytes".repeat(300)).unwrap();
    fs::write(p.join("etcd"), b"etcd program".repeat(100)).unwrap();
    let mut entries = vec![ArtifactEntry::of_file(p, "etcd", "etcd", Some(ETCD_VERSION.into())).unwrap()];
    if k3s {
        fs::write(p.join("k3s"), b"k3s program").unwrap();
        fs::write(p.join("k3s-airgap-images-amd64.tar.zst"), b"images".repeat(50)).unwrap();
        entries.push(ArtifactEntry::of_file(p, K3S_ARTIFACT, "k3s", None).unwrap());
        entries.push(ArtifactEntry::of_file(p, AIRGAP_ARTIFACT, "k3s-airgap-images-amd64.tar.zst", None).unwrap());
    }
    artifacts::write(p, &entries).unwrap();
    dir
}

fn options() -> BundleOptions {
    BundleOptions { version: "0.16.0".into(), sequence: 7, ..BundleOptions::default() }
}

/// A bundle of a fresh node dir (with k3s when asked), its bytes and the node dir.
fn bundle(k3s: bool) -> (Vec<u8>, BundleManifest, tempfile::TempDir) {
    let node = node_dir(k3s);
    let out = node.path().join("out.bundle");
    let manifest = write_bundle(node.path(), &options(), &key(), &out).unwrap();
    (fs::read(&out).unwrap(), manifest, node)
}

fn accept_all(_: &BundleManifest) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

/// Reads `bytes` into a staging directory under a fresh temp dir, trusting `trusted`; checks
/// that a failure leaves no staging directory.
fn read_with(bytes: &[u8], trusted: &[VerifyingKey]) -> Result<VerifiedBundle, BundleError> {
    let parent = tempfile::tempdir().unwrap();
    let staging = parent.path().join("staging");
    let options = VerifyOptions { trusted, architecture: ARCHITECTURE, max_total_bytes: 1 << 20 };
    let result = read_bundle(bytes, &options, &accept_all, Sink::Staging(&staging));
    match &result {
        Ok(_) => assert!(staging.is_dir()),
        Err(e) => assert!(!staging.exists(), "{e}: staging left behind"),
    }
    result
}

fn read(bytes: &[u8]) -> Result<VerifiedBundle, BundleError> {
    read_with(bytes, &[other_key().verifying_key(), key().verifying_key()])
}

/// The bundle's members' bytes (everything after its manifest).
fn head_len(bytes: &[u8]) -> usize {
    HEADER_BYTES + u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize
}

/// `bytes` with its manifest changed by `change` and signed again with `key`.
fn reseal(bytes: &[u8], change: impl FnOnce(&mut BundleManifest), key: Option<&SigningKey>) -> Vec<u8> {
    let end = head_len(bytes);
    let mut manifest: BundleManifest = serde_json::from_slice(&bytes[HEADER_BYTES..end]).unwrap();
    change(&mut manifest);
    let mut out = encode_head(&manifest, key).unwrap();
    out.extend_from_slice(&bytes[end..]);
    out
}

#[test]
fn a_bundle_round_trips_into_its_staging_directory() {
    for k3s in [false, true] {
        let (bytes, manifest, node) = bundle(k3s);
        assert_eq!(&bytes[..8], b"OASISBDL");
        let parent = tempfile::tempdir().unwrap();
        let staging = parent.path().join("staging");
        let options =
            VerifyOptions { trusted: &[key().verifying_key()], architecture: "x86_64", max_total_bytes: 1 << 20 };
        let verified = read_bundle(&bytes[..], &options, &accept_all, Sink::Staging(&staging)).unwrap();
        assert_eq!(verified.manifest, manifest);
        assert_eq!(verified.key_id, key_id(&key().verifying_key()));
        assert_eq!(manifest.product, "oasis");
        assert_eq!(manifest.sequence, 7);
        assert_eq!(manifest.changes.kernel, "6.1.0-28-amd64", "read from the bzImage header");
        assert_eq!(manifest.changes.agent, "0.16.0");
        assert_eq!(manifest.changes.etcd, ETCD_VERSION);
        let roles: Vec<&str> = manifest.members.iter().map(|m| m.role.as_str()).collect();
        let want: &[&str] =
            if k3s { &["kernel", "initrd", "etcd", "k3s", "k3s-airgap-images"] } else { &["kernel", "initrd", "etcd"] };
        assert_eq!(roles, want);
        let mut staged: Vec<String> =
            fs::read_dir(&staging).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        staged.sort();
        let mut names: Vec<String> = manifest.members.iter().map(|m| m.name.clone()).collect();
        names.sort();
        assert_eq!(staged, names, "exactly the members");
        for member in &manifest.members {
            let copy = fs::read(staging.join(&member.name)).unwrap();
            assert_eq!(copy, fs::read(node.path().join(&member.name)).unwrap(), "{}", member.name);
            let mode = fs::metadata(staging.join(&member.name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode == 0o755, member.role.executable(), "{}", member.name);
        }
        // The staging directory becomes a node image directory.
        artifacts::write(&staging, &verified.manifest.artifact_entries()).unwrap();
        assert_eq!(artifacts::verify(&staging).unwrap(), artifacts::read(node.path()).unwrap());
        // Verifying only copies nothing.
        assert!(read_bundle(&bytes[..], &options, &accept_all, Sink::Discard).is_ok());
        assert!(manifest.summary().starts_with("oasis 0.16.0 (sequence 7, x86_64): kernel 6.1.0-28-amd64"));
    }
}

#[test]
fn options_name_the_versions_and_k3s_only_with_its_member() {
    let node = node_dir(false);
    let out = node.path().join("b");
    let opts = BundleOptions {
        kernel_version: Some("6.12.9-amd64".into()),
        agent_version: Some("0.16.1".into()),
        k3s_version: Some("v1.31.4+k3s1".into()),
        ..options()
    };
    let manifest = write_bundle(node.path(), &opts, &key(), &out).unwrap();
    assert_eq!((manifest.changes.kernel.as_str(), manifest.changes.agent.as_str()), ("6.12.9-amd64", "0.16.1"));
    assert_eq!(manifest.changes.k3s, None, "no k3s member, no k3s version");

    // A kernel that is no bzImage needs its version given.
    fs::write(node.path().join(KERNEL), b"not a bzImage").unwrap();
    let err = write_bundle(node.path(), &options(), &key(), &out).unwrap_err().to_string();
    assert!(err.contains("--kernel-version"), "{err}");
}

#[test]
fn a_truncated_bundle_is_refused_wherever_it_is_cut() {
    let (bytes, manifest, _node) = bundle(true);
    let mut cuts = vec![0, 3, 8, 20, HEADER_BYTES - 1, HEADER_BYTES, HEADER_BYTES + 10, head_len(&bytes) - 1];
    let mut at = head_len(&bytes);
    for member in &manifest.members {
        cuts.push(at); // at the boundary before it
        cuts.push(at + member.size as usize / 2); // inside it
        at += member.size as usize;
    }
    cuts.push(bytes.len() - 1);
    assert_eq!(at, bytes.len());
    for cut in cuts {
        let err = read(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, BundleError::Truncated { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().contains("copy it again"), "{err}");
    }
}

#[test]
fn a_flipped_byte_anywhere_is_refused_with_what_it_hit() {
    let (bytes, manifest, _node) = bundle(true);
    let flip = |at: usize| {
        let mut b = bytes.clone();
        b[at] ^= 0x20;
        read(&b).unwrap_err()
    };
    assert!(matches!(flip(0), BundleError::NotABundle));
    assert!(matches!(flip(11), BundleError::UnsupportedVersion { found: 0x21, supported: 1 }));
    assert!(matches!(flip(17), BundleError::UnknownKey { .. }));
    for at in [24, 60, HEADER_BYTES - 1] {
        assert!(matches!(flip(at), BundleError::BadSignature { .. }), "signature byte {at}");
    }
    for at in [HEADER_BYTES, HEADER_BYTES + 40, head_len(&bytes) - 2] {
        assert!(matches!(flip(at), BundleError::BadSignature { .. }), "manifest byte {at}");
    }
    let mut at = head_len(&bytes);
    for member in &manifest.members {
        let size = member.size as usize;
        for inside in [at, at + size / 2, at + size - 1] {
            match flip(inside) {
                BundleError::MemberMismatch { name, expected, actual } => {
                    assert_eq!(name, member.name);
                    assert_eq!(expected, member.sha256);
                    assert_ne!(actual, expected);
                }
                other => panic!("byte {inside} of {}: {other}", member.name),
            }
        }
        at += size;
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(read(&longer).unwrap_err(), BundleError::TrailingData));
}

#[test]
fn unsigned_and_unknown_keys_are_refused_before_the_manifest_is_read() {
    let (bytes, _, _node) = bundle(false);
    let mut zeroed = bytes.clone();
    zeroed[16..HEADER_BYTES].fill(0);
    assert!(matches!(read(&zeroed).unwrap_err(), BundleError::Unsigned));
    let unsigned = reseal(&bytes, |_| {}, None);
    let err = read(&unsigned).unwrap_err();
    assert!(matches!(err, BundleError::Unsigned) && err.to_string().contains("--key"), "{err}");

    let signed_by = key_id(&key().verifying_key());
    let err = read_with(&bytes, &[other_key().verifying_key()]).unwrap_err();
    match &err {
        BundleError::UnknownKey { key_id: id, trusted } => {
            assert_eq!(id, &signed_by);
            assert_eq!(trusted, &key_id(&other_key().verifying_key()));
        }
        other => panic!("{other}"),
    }
    let err = read_with(&bytes, &[]).unwrap_err().to_string();
    assert!(err.contains(&signed_by) && err.contains("trusted: none"), "{err}");
    // Signed by another key with this key's id: the signature does not verify.
    let mut forged = reseal(&bytes, |m| m.sequence = 99, Some(&other_key()));
    forged[16..24].copy_from_slice(&key_id_bytes(&key().verifying_key()));
    assert!(matches!(read(&forged).unwrap_err(), BundleError::BadSignature { .. }));
}

#[test]
fn declared_sizes_over_the_limits_are_refused_before_any_member() {
    let (bytes, _, _node) = bundle(false);
    let huge = reseal(&bytes, |m| m.members[2].size = 2 << 20, Some(&key()));
    let err = read(&huge).unwrap_err();
    assert!(matches!(err, BundleError::TooLarge { limit: 1048576, .. }), "{err}");
    let overflow = reseal(&bytes, |m| (m.members[0].size, m.members[1].size) = (u64::MAX, 2), Some(&key()));
    assert!(matches!(read(&overflow).unwrap_err(), BundleError::TooLarge { size: u64::MAX, .. }));
    let mut long_manifest = bytes.clone();
    long_manifest[12..16].copy_from_slice(&MAX_MANIFEST_BYTES.to_be_bytes());
    let err = read(&long_manifest).unwrap_err();
    assert!(matches!(err, BundleError::TooLarge { what: "manifest", .. }), "{err}");
}

#[test]
fn another_product_architecture_or_a_bad_member_list_is_refused() {
    let (bytes, _, _node) = bundle(true);
    let other = reseal(&bytes, |m| m.product = "talos".into(), Some(&key()));
    let err = read(&other).unwrap_err();
    assert!(matches!(err, BundleError::WrongProduct { .. }) && err.to_string().contains("\"talos\""), "{err}");
    let arm = reseal(&bytes, |m| m.architecture = "aarch64".into(), Some(&key()));
    let err = read(&arm).unwrap_err().to_string();
    assert!(err.contains("aarch64") && err.contains("x86_64"), "{err}");

    type Change = fn(&mut BundleManifest);
    let cases: [(Change, &str); 5] = [
        (|m| m.members[0].name = "../vmlinuz".into(), "not a plain file name"),
        (|m| m.members[1].sha256 = "AB".repeat(32), "64 lowercase hex"),
        (|m| m.members[1].role = Role::Kernel, "repeats a name or role"),
        (|m| m.members.retain(|x| x.role != Role::Etcd), "no etcd member"),
        (|m| m.members.retain(|x| x.role != Role::K3s), "come together"),
    ];
    for (change, want) in cases {
        let err = read(&reseal(&bytes, change, Some(&key()))).unwrap_err();
        assert!(matches!(err, BundleError::Malformed { .. }) && err.to_string().contains(want), "{err}");
    }
    // A signed manifest with a field this reader does not know is refused, not half-understood.
    let end = head_len(&bytes);
    let mut json: serde_json::Value = serde_json::from_slice(&bytes[HEADER_BYTES..end]).unwrap();
    json["activate_at"] = "now".into();
    let text = serde_json::to_vec(&json).unwrap();
    let mut extra = bytes[..16].to_vec();
    extra[12..16].copy_from_slice(&(text.len() as u32).to_be_bytes());
    extra.extend_from_slice(&key_id_bytes(&key().verifying_key()));
    extra.extend_from_slice(&sign(&key(), &text).to_bytes());
    extra.extend_from_slice(&text);
    extra.extend_from_slice(&bytes[end..]);
    let err = read(&extra).unwrap_err().to_string();
    assert!(err.contains("activate_at"), "{err}");
}

#[test]
fn the_callers_rules_run_before_any_member_is_copied() {
    let (bytes, _, _node) = bundle(false);
    let parent = tempfile::tempdir().unwrap();
    let staging = parent.path().join("staging");
    let trusted = [key().verifying_key()];
    let options = VerifyOptions { trusted: &trusted, architecture: ARCHITECTURE, max_total_bytes: 1 << 20 };
    let refuse = |m: &BundleManifest| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("sequence {} is not above 7", m.sequence).into())
    };
    // The members are cut off: only a reader that stops at the rules sees no truncation.
    let head = &bytes[..head_len(&bytes)];
    let err = read_bundle(head, &options, &refuse, Sink::Staging(&staging)).unwrap_err();
    assert!(matches!(err, BundleError::Refused(_)), "{err}");
    assert!(oasis_proto::error_chain(&err).contains("sequence 7 is not above 7"));
    assert!(!staging.exists());
}

#[test]
fn an_existing_staging_directory_is_refused_and_kept() {
    let (bytes, _, _node) = bundle(false);
    let parent = tempfile::tempdir().unwrap();
    fs::write(parent.path().join("keep"), b"mine").unwrap();
    let trusted = [key().verifying_key()];
    let options = VerifyOptions { trusted: &trusted, architecture: ARCHITECTURE, max_total_bytes: 1 << 20 };
    let err = read_bundle(&bytes[..], &options, &accept_all, Sink::Staging(parent.path())).unwrap_err();
    assert!(matches!(err, BundleError::Staging { .. }) && !err.is_input(), "{err}");
    assert_eq!(fs::read(parent.path().join("keep")).unwrap(), b"mine");
}

#[test]
fn the_writer_refuses_a_damaged_node_image_and_leaves_no_file() {
    let node = node_dir(false);
    fs::write(node.path().join("etcd"), b"replaced").unwrap();
    let out = node.path().join("out.bundle");
    let err = write_bundle(node.path(), &options(), &key(), &out).unwrap_err();
    assert!(oasis_proto::error_chain(&err).contains("oasis image build node"), "{err}");
    assert!(!out.exists());
    fs::remove_file(node.path().join(INITRD)).unwrap();
    fs::write(node.path().join("etcd"), b"etcd program".repeat(100)).unwrap();
    let err = write_bundle(node.path(), &options(), &key(), &out).unwrap_err().to_string();
    assert!(err.contains("initrd.img is missing"), "{err}");
    let leftovers: Vec<_> = fs::read_dir(node.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!leftovers.iter().any(|n| n.to_string_lossy().contains("bundle")), "{leftovers:?}");
}

#[test]
fn the_kernel_version_comes_from_the_bzimage_header() {
    assert_eq!(bzimage_version_of(&fake_kernel("6.12.9-amd64")).as_deref(), Some("6.12.9-amd64"));
    assert_eq!(bzimage_version_of(b"short"), None);
    let mut old = fake_kernel("6.1.0");
    old[0x206..0x208].copy_from_slice(&0x0100u16.to_le_bytes());
    assert_eq!(bzimage_version_of(&old), None, "boot protocol before 2.00 has no version pointer");
    let mut past_end = fake_kernel("6.1.0");
    past_end[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
    assert_eq!(bzimage_version_of(&past_end), None);
}

#[test]
fn an_appliance_slot_rides_along_verified_like_any_member() {
    let node = node_dir(false);
    let mut slot = b"FAT of slot A".repeat(100);
    slot.resize((1 << 20) + 3, 0);
    slot.push(1);
    let image = crate::bundle_appliance::test_image(node.path(), crate::bundle_appliance::IMAGE_SLOT, &slot);
    let out = node.path().join("with-appliance.bundle");
    let options = BundleOptions { appliance: Some(image), ..options() };
    let manifest = write_bundle(node.path(), &options, &key(), &out).unwrap();
    let appliance = manifest.appliance.clone().expect("the appliance is described");
    assert_eq!((appliance.version.as_str(), appliance.slot_bytes), ("0.16.0", 4 << 20));
    let member = manifest.member(Role::ApplianceSlot).expect("the slot is a member").clone();
    assert_eq!((member.name.as_str(), member.size), (SLOT_MEMBER, 2 << 20));
    assert!(manifest.summary().ends_with("; appliance 0.16.0"), "{}", manifest.summary());

    let bytes = fs::read(&out).unwrap();
    let parent = tempfile::tempdir().unwrap();
    let staging = parent.path().join("staging");
    let verify =
        VerifyOptions { trusted: &[key().verifying_key()], architecture: ARCHITECTURE, max_total_bytes: 8 << 20 };
    let verified = read_bundle(&bytes[..], &verify, &accept_all, Sink::Staging(&staging)).unwrap();
    assert_eq!(verified.manifest, manifest);
    let mut carried = slot.clone();
    carried.resize(2 << 20, 0);
    assert_eq!(fs::read(staging.join(&member.name)).unwrap(), carried, "the slot up to its last used MiB");
    // The slot is not a node artifact.
    assert!(verified.manifest.artifact_entries().iter().all(|e| e.file != member.name));

    // The member and its description come together; a node-only reader's bundle has neither.
    let refusal =
        |bytes: &[u8]| read_bundle(bytes, &verify, &accept_all, Sink::Discard).map(|_| ()).unwrap_err().to_string();
    let err = refusal(&reseal(&bytes, |m| m.appliance = None, Some(&key())));
    assert!(err.contains("come together"), "{err}");
    let (node_only, _, _node) = bundle(false);
    let end = head_len(&node_only);
    let json = String::from_utf8(node_only[HEADER_BYTES..end].to_vec()).unwrap();
    assert!(!json.contains("appliance"), "{json}");
}

use std::collections::BTreeSet;

use oasis_image::artifacts::ArtifactEntry;
use oasis_image::bundle::{write_bundle, BundleOptions};
use oasis_image::payload::{INITRD, KERNEL};
use oasis_image::signing::SigningKey;

use super::*;

const SHIPPED_ETCD: &str = "3.4.23-4+b4";

/// A bzImage-shaped kernel whose setup header names `version`.
fn fake_kernel(version: &str) -> Vec<u8> {
    let mut image = vec![0u8; 0x1000];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x20e..0x210].copy_from_slice(&0x0400u16.to_le_bytes());
    let text = format!("{version} (debian-kernel@lists.debian.org) #1 SMP\0");
    image[0x600..0x600 + text.len()].copy_from_slice(text.as_bytes());
    image
}

/// A node image directory at `dir` with etcd `etcd_version`.
fn node_dir(dir: &Path, kernel: &str, etcd_version: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(KERNEL), fake_kernel(kernel)).unwrap();
    fs::write(dir.join(INITRD), format!("initramfs of {kernel}").repeat(50)).unwrap();
    fs::write(dir.join("etcd"), format!("etcd {etcd_version}").repeat(20)).unwrap();
    let entries = vec![ArtifactEntry::of_file(dir, "etcd", "etcd", Some(etcd_version.into())).unwrap()];
    artifacts::write(dir, &entries).unwrap();
}

pub(crate) struct Rack {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) store: Store,
    pub(crate) generations: NodeGenerations,
    pub(crate) key: SigningKey,
}

impl Rack {
    pub(crate) fn new() -> Rack {
        let dir = tempfile::tempdir().unwrap();
        let shipped = dir.path().join("boot/node");
        node_dir(&shipped, "6.1.0-28-amd64", SHIPPED_ETCD);
        let (private, public, _) = signing::keygen(&dir.path().join("keys")).unwrap();
        let key = signing::load_private_key(&private).unwrap();
        let data = dir.path().join("data");
        let store = Store::open(&data).unwrap();
        let keys = UpdateKeys { image_key: Some(dir.path().join("no-image-key.pub")), configured: vec![public] };
        let generations = NodeGenerations::new(store.clone(), &data, &shipped, keys);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        Rack { dir, rt, store, generations, key }
    }

    /// A bundle of sequence `sequence` with etcd `etcd`, signed with `key`.
    pub(crate) fn bundle(&self, sequence: u64, etcd: &str, key: &SigningKey) -> PathBuf {
        let node = self.dir.path().join(format!("node-{sequence}-{etcd}"));
        node_dir(&node, "6.12.0-1-amd64", etcd);
        let out = self.dir.path().join(format!("{sequence}-{etcd}.bundle"));
        let options = BundleOptions { version: format!("0.{sequence}.0"), sequence, ..BundleOptions::default() };
        write_bundle(&node, &options, key, &out).unwrap();
        out
    }

    fn apply(&self, path: &Path) -> Result<Applied, GenerationsError> {
        self.rt.block_on(self.generations.apply_file(path))
    }

    /// The names in `DATA_DIR/generations`.
    pub(crate) fn on_disk(&self) -> BTreeSet<String> {
        match fs::read_dir(self.dir.path().join("data/generations")) {
            Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => BTreeSet::new(),
        }
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_bundle_becomes_a_generation_on_disk_and_in_the_store() {
    let rack = Rack::new();
    let applied = rack.apply(&rack.bundle(1, "3.5.16-4", &rack.key)).unwrap();
    assert_eq!((applied.generation.sequence, applied.pruned.clone()), (1, vec![]));
    assert_eq!(rack.on_disk(), names(&["1"]));
    let dir = rack.generations.path_of(1);
    let entries = artifacts::verify(&dir).unwrap();
    assert_eq!(artifacts::find(&entries, "etcd").unwrap().version.as_deref(), Some("3.5.16-4"));
    assert!(dir.join(KERNEL).is_file() && dir.join(INITRD).is_file() && dir.join(MANIFEST_FILE).is_file());
    let record = rack.store.generations().unwrap();
    assert_eq!((record.highest_sequence, record.current), (1, SHIPPED));
    let status = rack.generations.status().unwrap();
    let states: Vec<_> = status.generations.iter().map(|g| (g.sequence, g.state)).collect();
    assert_eq!(states, vec![(0, GenerationState::Current), (1, GenerationState::Available)]);
    assert_eq!(status.generations[0].etcd.as_deref(), Some(SHIPPED_ETCD));
    assert_eq!(status.generations[0].kernel.as_deref(), Some("6.1.0-28-amd64"));
    assert_eq!(status.generations[1].kernel.as_deref(), Some("6.12.0-1-amd64"));
    let events = rack.store.events(10).unwrap();
    assert!(
        events.iter().any(|e| e.kind == "generation-installed" && e.message.contains("generation 1")),
        "{events:?}"
    );
}

#[test]
fn refused_bundles_change_nothing() {
    let rack = Rack::new();
    let good = rack.bundle(1, "3.5.16-4", &rack.key);
    rack.apply(&good).unwrap();
    let before = (rack.on_disk(), rack.store.generations().unwrap());

    let again = rack.apply(&good).unwrap_err();
    assert!(again.is_refusal(), "{again}");
    assert!(
        oasis_proto::error_chain(&again).contains("not above the installed sequence 1"),
        "{}",
        oasis_proto::error_chain(&again)
    );

    let mut bytes = fs::read(rack.bundle(2, "3.5.16-4", &rack.key)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let tampered = rack.dir.path().join("tampered.bundle");
    fs::write(&tampered, bytes).unwrap();
    let e = rack.apply(&tampered).unwrap_err();
    assert!(matches!(&e, GenerationsError::Bundle(b) if matches!(**b, BundleError::MemberMismatch { .. })), "{e}");

    let stranger = rack.bundle(3, "3.5.16-4", &SigningKey::from_bytes(&[9; 32]));
    let e = rack.apply(&stranger).unwrap_err();
    assert!(matches!(&e, GenerationsError::Bundle(b) if matches!(**b, BundleError::UnknownKey { .. })), "{e}");

    let skips = rack.bundle(4, "3.6.0-1", &rack.key);
    let e = rack.apply(&skips).unwrap_err();
    assert!(e.is_refusal() && oasis_proto::error_chain(&e).contains("skips a minor version"), "{e}");

    let missing = rack.apply(&rack.dir.path().join("nothing.bundle")).unwrap_err();
    assert!(missing.is_refusal(), "{missing}");

    assert_eq!((rack.on_disk(), rack.store.generations().unwrap()), before, "nothing changed, no staging left");
}

#[test]
fn a_newer_bundle_prunes_what_is_no_longer_kept() {
    let rack = Rack::new();
    rack.apply(&rack.bundle(1, "3.5.16-4", &rack.key)).unwrap();
    let applied = rack.apply(&rack.bundle(2, "3.5.16-4", &rack.key)).unwrap();
    assert_eq!(applied.pruned, vec![1]);
    assert_eq!(rack.on_disk(), names(&["2"]));
    let record = rack.store.generations().unwrap();
    assert_eq!(record.installed.iter().map(|g| g.sequence).collect::<Vec<_>>(), vec![2]);
    assert_eq!(record.highest_sequence, 2);
    // A pruned generation's sequence stays refused.
    let e = rack.apply(&rack.bundle(1, "3.5.17-1", &rack.key)).unwrap_err();
    assert!(e.is_refusal(), "{e}");
}

#[test]
fn without_any_trusted_key_a_bundle_is_refused_with_what_to_do() {
    let rack = Rack::new();
    let data = rack.dir.path().join("data");
    let none =
        NodeGenerations::new(rack.store.clone(), &data, &rack.dir.path().join("boot/node"), UpdateKeys::default());
    let e = rack.rt.block_on(none.apply_file(&rack.bundle(1, "3.5.16-4", &rack.key))).unwrap_err();
    assert!(matches!(e, GenerationsError::NoTrustedKey), "{e}");
    assert!(e.to_string().contains("[update] trusted_keys"), "{e}");
    let missing = UpdateKeys { image_key: None, configured: vec![rack.dir.path().join("gone.pub")] };
    let e = NodeGenerations::new(rack.store.clone(), &data, &rack.dir.path().join("boot/node"), missing);
    assert!(matches!(e.keys.load(), Err(GenerationsError::KeyMissing { .. })));
}

/// A crash after the staging (step 1) or after the rename (step 2): the old set at the next start.
#[test]
fn a_crash_before_the_commit_leaves_the_old_set() {
    let rack = Rack::new();
    rack.apply(&rack.bundle(1, "3.5.16-4", &rack.key)).unwrap();
    let before = rack.store.generations().unwrap();
    // Killed while staging: a staging directory with part of a member.
    let staging = rack.dir.path().join("data/generations/.staging-1234-5678");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join(KERNEL), b"half a kernel").unwrap();
    // Killed after the rename, before the commit: a whole generation nobody recorded.
    let rules = Rules { installed: before.installed_for_check(SHIPPED_ETCD), appliance: None };
    let file = fs::File::open(rack.bundle(2, "3.5.16-4", &rack.key)).unwrap();
    let trusted = [rack.key.verifying_key()];
    stage(&rack.dir.path().join("data/generations"), file, &trusted, u64::MAX, &rules).unwrap();
    assert_eq!(rack.on_disk(), names(&["1", "2", ".staging-1234-5678"]));

    let removed = rack.generations.reconcile().unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_eq!(rack.on_disk(), names(&["1"]));
    assert_eq!(rack.store.generations().unwrap(), before);
    // And the bundle that was interrupted installs afterwards.
    rack.apply(&rack.bundle(2, "3.5.16-4", &rack.key)).unwrap();
    assert_eq!(rack.on_disk(), names(&["2"]));
}

/// A crash after the commit (step 3), before the prune: the new set at the next start.
#[test]
fn a_crash_after_the_commit_leaves_the_new_set() {
    let rack = Rack::new();
    rack.apply(&rack.bundle(1, "3.5.16-4", &rack.key)).unwrap();
    let record = rack.store.generations().unwrap();
    let rules = Rules { installed: record.installed_for_check(SHIPPED_ETCD), appliance: None };
    let file = fs::File::open(rack.bundle(2, "3.5.16-4", &rack.key)).unwrap();
    let trusted = [rack.key.verifying_key()];
    let (manifest, key_id) =
        stage(&rack.dir.path().join("data/generations"), file, &trusted, u64::MAX, &rules).unwrap();
    let (next, pruned) = record.with_installed(Generation::of(&manifest, &key_id, 1));
    assert_eq!(pruned, vec![1]);
    rack.rt.block_on(rack.store.save_generations(next.clone(), vec![])).unwrap();
    assert_eq!(rack.on_disk(), names(&["1", "2"]), "killed before the prune");

    rack.generations.reconcile().unwrap();
    assert_eq!(rack.on_disk(), names(&["2"]));
    assert_eq!(rack.store.generations().unwrap(), next);
}

#[test]
fn the_record_survives_a_restart() {
    let rack = Rack::new();
    rack.apply(&rack.bundle(1, "3.5.16-4", &rack.key)).unwrap();
    let Rack { dir, rt, store, generations, .. } = rack;
    let saved = store.generations().unwrap();
    drop((generations, store, rt));
    let reopened = loop {
        match Store::open(&dir.path().join("data")) {
            Ok(s) => break s,
            Err(StoreError::InUse { .. }) => std::thread::sleep(std::time::Duration::from_millis(10)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(reopened.generations().unwrap(), saved);
}

/// A disk image under `dir` whose slot A (4 MiB at sector 64) holds `data`.
fn appliance_image(dir: &Path, data: &[u8]) -> PathBuf {
    use oasis_image::gpt::{Gpt, Guid, Partition, SECTOR};
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("appliance.img");
    let sectors = 64 + 8192 + 64;
    let mut file = fs::File::create(&path).unwrap();
    file.set_len(sectors * SECTOR).unwrap();
    let mut table = Gpt::new(Guid::from_display_bytes([1; 16]));
    table.partitions[3] = Some(Partition {
        type_guid: Guid::from_display_bytes([2; 16]),
        unique_guid: Guid::from_display_bytes([3; 16]),
        first_lba: 64,
        last_lba: 64 + 8191,
        attributes: 0,
        name: oasis_image::appliance::SLOT_A_NAME.into(),
    });
    table.write(&mut file, sectors).unwrap();
    file.seek(SeekFrom::Start(64 * SECTOR)).unwrap();
    file.write_all(data).unwrap();
    path
}

#[test]
fn an_appliance_part_is_installed_only_on_a_committed_appliance_with_slots_of_its_size() {
    let rack = Rack::new();
    let node = rack.dir.path().join("node-appliance");
    node_dir(&node, "6.12.0-1-amd64", SHIPPED_ETCD);
    let image = appliance_image(rack.dir.path(), &b"slot A".repeat(1000));
    let out = rack.dir.path().join("with-appliance.bundle");
    let options =
        BundleOptions { version: "0.16.1".into(), sequence: 1, appliance: Some(image), ..BundleOptions::default() };
    write_bundle(&node, &options, &rack.key, &out).unwrap();
    let refused = |what: &str| {
        let err = oasis_proto::error_chain(&rack.apply(&out).unwrap_err());
        assert!(err.contains(what), "{err}");
        assert!(rack.on_disk().iter().all(|n| n.starts_with('.')) || rack.on_disk().is_empty(), "nothing installed");
    };
    // Off an appliance (no word from `oasis boot`): refused, whole.
    refused("does not run from an appliance disk");
    let here = |committed: bool, slot_bytes: u64| {
        let text = format!(r#"{{"running":"A","version":"0.16.0","committed":{committed},"slot_bytes":{slot_bytes}}}"#);
        fs::write(rack.dir.path().join("data").join(APPLIANCE_FILE), text).unwrap();
    };
    here(true, 8 << 20);
    refused("its disk layout differs");
    here(false, 4 << 20);
    refused("on trial (slot A)");
    here(true, 4 << 20);
    // Tampered inside the slot image, or signed by a key the appliance does not trust: refused
    // before anything is kept.
    let mut bytes = fs::read(&out).unwrap();
    let at = bytes.windows(12).position(|w| w == b"slot Aslot A").expect("the slot image is in the bundle");
    bytes[at] ^= 0xff;
    let tampered = rack.dir.path().join("tampered-appliance.bundle");
    fs::write(&tampered, bytes).unwrap();
    let e = rack.apply(&tampered).unwrap_err();
    assert!(matches!(&e, GenerationsError::Bundle(b) if matches!(**b, BundleError::MemberMismatch { .. })), "{e}");
    let stranger = rack.dir.path().join("stranger-appliance.bundle");
    write_bundle(&node, &options, &SigningKey::from_bytes(&[9; 32]), &stranger).unwrap();
    let e = rack.apply(&stranger).unwrap_err();
    assert!(matches!(&e, GenerationsError::Bundle(b) if matches!(**b, BundleError::UnknownKey { .. })), "{e}");
    assert!(rack.on_disk().iter().all(|n| n.starts_with('.')) || rack.on_disk().is_empty(), "nothing installed");
    assert_eq!(rack.generations.appliance_update(), None);
    rack.apply(&out).unwrap();
    let slot = rack.dir.path().join("data/generations/1").join(oasis_image::bundle_appliance::SLOT_MEMBER);
    assert!(fs::read(&slot).unwrap().starts_with(b"slot Aslot A"), "the slot image kept with its generation");

    // Waiting for `oasis boot` to write it: the rollout holds; the status says where it is.
    let view = rack.generations.appliance_update().expect("the current generation has an appliance part");
    assert_eq!((view.sequence, view.version.as_str(), view.running.as_str()), (1, "0.16.1", "0.16.0"));
    assert_eq!((&view.image, &view.state), (&slot, &update::ApplianceUpdateState::Waiting));
    assert_eq!(rack.generations.status().unwrap().appliance, Some(view));
    let held = rack.generations.appliance_hold().expect("the node rollout waits");
    assert!(held.contains("waits for the appliance's own update to 0.16.1 (generation 1)"), "{held}");
    let write = |text: &str| fs::write(rack.dir.path().join("data").join(APPLIANCE_FILE), text).unwrap();
    let events = |kind: &str| rack.store.events(100).unwrap().into_iter().filter(|e| e.kind == kind).count();
    // Fell back: held, with the reason, said once in the events however often it is looked at.
    write(
        r#"{"running":"A","version":"0.16.0","committed":true,"slot_bytes":4194304,
            "last_trial":{"version":"0.16.1","from_version":"0.16.0","fell_back":"no DHCP"}}"#,
    );
    let held = rack.generations.appliance_hold().unwrap();
    assert!(held.contains("is held") && held.contains("fell back to 0.16.0 (no DHCP)"), "{held}");
    for _ in 0..3 {
        rack.generations.announce_last_trial();
    }
    rack.rt.block_on(rack.store.flush()).unwrap();
    assert_eq!(events("appliance-fell-back"), 1);
    // On trial, then committed: the rollout goes once it is committed.
    write(r#"{"running":"B","version":"0.16.1","committed":false,"slot_bytes":4194304}"#);
    assert!(rack.generations.appliance_hold().unwrap().contains("running on trial"));
    write(
        r#"{"running":"B","version":"0.16.1","committed":true,"slot_bytes":4194304,
            "last_trial":{"version":"0.16.1","from_version":"0.16.0"}}"#,
    );
    assert_eq!(rack.generations.appliance_hold(), None);
    rack.generations.announce_last_trial();
    rack.rt.block_on(rack.store.flush()).unwrap();
    assert_eq!(events("appliance-committed"), 1);
}

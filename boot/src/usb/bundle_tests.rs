use std::sync::atomic::{AtomicUsize, Ordering};

use oasis_appliance::generations::{NodeGenerations, UpdateKeys};
use oasis_appliance::store::Store;
use oasis_image::artifacts::{self, ArtifactEntry};
use oasis_image::bundle::{write_bundle, BundleOptions};
use oasis_image::payload::{INITRD, KERNEL};
use oasis_image::signing::{self, SigningKey};

use super::*;

const SHIPPED_ETCD: &str = "3.4.23-4+b4";

/// A node image directory at `dir` whose etcd is `etcd`.
fn node_dir(dir: &Path, etcd: &str) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join(KERNEL), b"a kernel".repeat(100)).unwrap();
    fs::write(dir.join(INITRD), b"an initramfs".repeat(100)).unwrap();
    fs::write(dir.join("etcd"), format!("etcd {etcd}").repeat(20)).unwrap();
    let entries = vec![ArtifactEntry::of_file(dir, "etcd", "etcd", Some(etcd.into())).unwrap()];
    artifacts::write(dir, &entries).unwrap();
}

/// An appliance's data partition and node generations (installing for real, in process: the
/// admin socket's own `Action::UpdateApply` calls the same `apply_file`), and a stick.
struct Rack {
    dir: tempfile::TempDir,
    key: SigningKey,
    trusted: VerifyingKey,
    generations: NodeGenerations,
    rt: tokio::runtime::Runtime,
    installs: AtomicUsize,
}

impl Rack {
    fn new() -> Rack {
        let dir = tempfile::tempdir().unwrap();
        let shipped = dir.path().join("boot/node");
        node_dir(&shipped, SHIPPED_ETCD);
        let (private, public, trusted) = signing::keygen(&dir.path().join("keys")).unwrap();
        let key = signing::load_private_key(&private).unwrap();
        let data = dir.path().join("data");
        let store = Store::open(&data).unwrap();
        let keys = UpdateKeys { image_key: None, configured: vec![public] };
        let generations = NodeGenerations::new(store, &data, &shipped, keys);
        fs::create_dir_all(dir.path().join("stick")).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Rack { dir, key, trusted, generations, rt, installs: AtomicUsize::new(0) }
    }

    fn stick(&self) -> PathBuf {
        self.dir.path().join("stick")
    }

    fn copy(&self) -> PathBuf {
        self.dir.path().join("data").join(format!("{PENDING_PREFIX}test{BUNDLE_SUFFIX}"))
    }

    /// Writes a bundle of `sequence` signed with `key` onto the stick as `name`.
    fn put_bundle(&self, name: &str, sequence: u64, key: &SigningKey) -> PathBuf {
        let node = self.dir.path().join(format!("node-{sequence}"));
        node_dir(&node, "3.5.16-4");
        let options = BundleOptions {
            version: format!("0.{sequence}.0"),
            sequence,
            kernel_version: Some("6.12.0-1-amd64".into()),
            ..BundleOptions::default()
        };
        let out = self.stick().join(name);
        write_bundle(&node, &options, key, &out).unwrap();
        out
    }

    fn offer(&self, at_once: bool) -> Option<(BundleOutcome, Option<Verified>)> {
        let installed = installed_of(&self.generations.status().unwrap());
        offer(&self.stick(), Ok(vec![self.trusted]), &installed, &self.copy(), at_once, self)
    }

    fn installed(&self) -> Vec<u64> {
        self.generations.status().unwrap().generations.iter().map(|g| g.sequence).filter(|&s| s != 0).collect()
    }
}

impl Installer for Rack {
    fn install(&self, path: &Path) -> Result<Applied, String> {
        self.installs.fetch_add(1, Ordering::SeqCst);
        self.rt.block_on(self.generations.apply_file(path)).map_err(|e| oasis_proto::error_chain(&e))
    }
}

fn reason(outcome: BundleOutcome) -> String {
    match outcome {
        BundleOutcome::Refused { reason } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_stick_without_a_bundle_offers_none() {
    let rack = Rack::new();
    fs::write(rack.stick().join("oasis.toml"), "x").unwrap();
    assert_eq!(rack.offer(true), None);
    assert_eq!(rack.installs.load(Ordering::SeqCst), 0);
}

#[test]
fn with_apply_from_stick_a_bundle_is_installed_at_once_and_its_copy_removed() {
    let rack = Rack::new();
    rack.put_bundle("update-7.BUNDLE", 7, &rack.key);
    let (outcome, pending) = rack.offer(true).unwrap();
    let BundleOutcome::Installed { sequence, summary } = &outcome else { panic!("{outcome:?}") };
    assert_eq!(*sequence, 7);
    assert!(summary.contains("0.7.0"), "{summary}");
    assert_eq!(pending, None);
    assert_eq!(rack.installed(), [7]);
    assert!(!rack.copy().exists(), "the copy is removed once installed");
    assert!(outcome.line().starts_with("bundle: installed as node generation 7: "), "{}", outcome.line());

    // The same bundle again: authentic, but refused by the rules against what is installed,
    // before anything is copied or installed.
    let (again, _) = rack.offer(false).unwrap();
    let why = reason(again);
    assert!(why.starts_with("update-7.BUNDLE: the bundle is authentic but cannot be installed here: "), "{why}");
    assert!(why.contains("sequence 7 (version 0.7.0) is not above the installed sequence 7"), "{why}");
    assert_eq!((rack.installs.load(Ordering::SeqCst), rack.installed()), (1, vec![7]));
    assert!(!rack.copy().exists());
    // Installed behind the stick's back (or by another stick) while one waits: serve refuses it.
    rack.put_bundle("update-7.BUNDLE", 8, &rack.key);
    let (_, pending) = rack.offer(false).unwrap();
    rack.put_bundle("update-7.BUNDLE", 9, &rack.key);
    let newer = rack.dir.path().join("newer.bundle");
    fs::rename(rack.stick().join("update-7.BUNDLE"), &newer).unwrap();
    rack.install(&newer).unwrap();
    let late = install(&pending.unwrap(), &rack);
    assert!(reason(late).contains("cannot be installed here"));
    let installed = rack.installed();
    assert!(installed.contains(&9) && !installed.contains(&8), "{installed:?}");
}

#[test]
fn without_it_a_verified_bundle_waits_until_confirmed() {
    let rack = Rack::new();
    rack.put_bundle("rack.bundle", 3, &rack.key);
    let (outcome, pending) = rack.offer(false).unwrap();
    let verified = pending.expect("pending");
    assert_eq!(outcome, BundleOutcome::Pending { summary: verified.summary.clone() });
    assert!(outcome.line().contains("waiting for confirmation") && outcome.line().contains("0.3.0"));
    assert_eq!((rack.installs.load(Ordering::SeqCst), rack.installed()), (0, vec![]), "nothing installed yet");
    // The stick can go: the copy on the data partition is what gets installed.
    fs::remove_dir_all(rack.stick()).unwrap();
    assert_eq!(fs::read(&verified.copy).unwrap().len() as u64, fs::metadata(&verified.copy).unwrap().len());
    let installed = install(&verified, &rack);
    assert!(matches!(installed, BundleOutcome::Installed { sequence: 3, .. }), "{installed:?}");
    assert_eq!(rack.installed(), [3]);
    assert!(!verified.copy.exists());
}

#[test]
fn two_bundles_are_refused_naming_both() {
    let rack = Rack::new();
    rack.put_bundle("a.bundle", 2, &rack.key);
    rack.put_bundle("b.bundle", 3, &rack.key);
    let (outcome, pending) = rack.offer(true).unwrap();
    let why = reason(outcome);
    assert!(why.contains("2 update bundles (a.bundle, b.bundle)") && why.contains("exactly one"), "{why}");
    assert_eq!((pending, rack.installs.load(Ordering::SeqCst)), (None, 0));
    assert!(!rack.copy().exists());
}

#[test]
fn a_tampered_or_foreign_bundle_is_refused_and_nothing_is_installed() {
    let rack = Rack::new();
    let path = rack.put_bundle("rack.bundle", 4, &rack.key);
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();
    let why = reason(rack.offer(true).unwrap().0);
    assert!(why.starts_with("rack.bundle: member ") && why.contains("damaged or altered"), "{why}");
    assert_eq!((rack.installs.load(Ordering::SeqCst), rack.installed()), (0, vec![]));
    assert!(!rack.copy().exists() && !rack.copy().with_extension("partial").exists(), "no copy left");

    let stranger = SigningKey::from_bytes(&[9; 32]);
    rack.put_bundle("rack.bundle", 4, &stranger);
    let why = reason(rack.offer(true).unwrap().0);
    assert!(why.contains("not trusted here"), "{why}");

    fs::write(&path, b"hello").unwrap();
    assert!(reason(rack.offer(false).unwrap().0).contains("not an oasis update bundle"));

    let no_keys = offer(&rack.stick(), Err("no key".into()), &[], &rack.copy(), true, &rack).unwrap().0;
    assert_eq!(reason(no_keys), "rack.bundle: no key");
    assert_eq!(rack.installs.load(Ordering::SeqCst), 0);
}

/// The console's side: the menu's [u] over a bundle taken from a stick.
struct Console<'a> {
    rack: &'a Rack,
    pending: std::sync::Mutex<Option<Verified>>,
}

impl crate::console::ApplianceActions for Console<'_> {
    fn export_report(&self) -> Result<String, String> {
        Err("no stick".into())
    }
    fn start_afresh(&self) -> Result<String, String> {
        Err("not here".into())
    }
    fn pending_bundle(&self) -> Option<String> {
        self.pending.lock().unwrap().as_ref().map(|v| v.summary.clone())
    }
    fn install_bundle(&self) -> Result<String, String> {
        let verified = self.pending.lock().unwrap().take().ok_or("none")?;
        match install(&verified, self.rack) {
            BundleOutcome::Installed { sequence, .. } => Ok(format!("installed as node generation {sequence}")),
            other => Err(other.line()),
        }
    }
    fn reboot(&self) {}
    fn power_off(&self) {}
}

#[test]
fn a_pending_bundle_is_installed_from_the_console_menu_once_confirmed() {
    use crate::console::terminal::ScriptedTerminal;
    let rack = Rack::new();
    rack.put_bundle("rack.bundle", 6, &rack.key);
    let (_, pending) = rack.offer(false).unwrap();
    let console = Console { rack: &rack, pending: std::sync::Mutex::new(pending) };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut term = ScriptedTerminal::new(&["u", "no", ""]);
    term.on_exhausted = Some(stop.clone());
    crate::console::run_status(&mut term, &rack.dir.path().join("data"), &console, &stop).unwrap();
    assert!(term.output.contains("[u] installs it"), "{}", term.output);
    assert_eq!(rack.installed(), Vec::<u64>::new(), "declined: nothing installed");
    assert!(rack.copy().exists(), "still pending");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut term = ScriptedTerminal::new(&["u", "yes"]);
    term.on_exhausted = Some(stop.clone());
    crate::console::run_status(&mut term, &rack.dir.path().join("data"), &console, &stop).unwrap();
    assert!(term.output.contains("oasis: installed as node generation 6"), "{}", term.output);
    assert_eq!(rack.installed(), [6]);
    assert!(!rack.copy().exists());
}

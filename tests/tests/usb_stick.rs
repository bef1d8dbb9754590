//! The USB stick path for real, as root: stick images on loop devices, found through
//! `/sys/class/block` and `/dev` by their superblocks, mounted, their offers read and checked, the
//! report of a real `oasis serve` (with a registered machine) written back, unmounted, detached,
//! and read back from the image file; the ext4 stick also carries an update bundle, installed
//! through the admin socket as `[update] apply_from_stick` has the supervisor do.
//!
//! This host's kernel parses no partition tables and has no vfat driver: the FAT stick's
//! partition is attached at its offset, and where vfat is missing the test checks that mounting
//! fails with the reason (the appliance's own kernel has vfat; its image test mounts FAT sticks).

use std::path::{Path, PathBuf};
use std::process::Command;

use oasis_agent::client::ApiClient;
use oasis_appliance::generations::UpdateKeys;
use oasis_boot::usb::{self, signature, Acceptance, FsType, Offer, Outcome, Scanner};
use oasis_e2e::appliance::{agent_args, oasis, write_config, Appliance};
use oasis_e2e::Netns;
use oasis_image::artifacts::ArtifactEntry;
use oasis_proto::{Inventory, MachineState, Nic, RegisterRequest, System};

/// A loop device, detached when dropped (also when the test fails).
struct LoopDevice {
    device: PathBuf,
}

impl LoopDevice {
    fn attach(image: &Path, offset: u64) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-o", &offset.to_string()])
            .arg(image)
            .output()
            .expect("losetup (util-linux) is installed");
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        LoopDevice { device: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()) }
    }

    fn name(&self) -> String {
        self.device.file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The stick on this device as the scanner finds it among all block devices.
    fn scan(&self) -> Option<usb::Stick> {
        Scanner::default().scan().into_iter().find(|s| s.name == self.name())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

const CONFIG: &str = r#"[network]
interface = "br0"
address = "10.0.0.1"

[dhcp]
range = ["10.0.0.100", "10.0.0.199"]
"#;

/// A node image directory: kernel, initrd and an etcd listed with its version in `artifacts.json`
/// (the shipped one's version is what a bundle's etcd is checked against).
fn node_dir(dir: &Path, kernel: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), kernel).unwrap();
    std::fs::write(dir.join("initrd.img"), b"initrd").unwrap();
    std::fs::write(dir.join("etcd"), b"etcd 3.5.16").unwrap();
    let etcd = ArtifactEntry::of_file(dir, "etcd", "etcd", Some("3.5.16-1".into())).unwrap();
    oasis_image::artifacts::write(dir, &[etcd]).unwrap();
}

fn acceptance<'a>(trusted: &'a signature::VerifyingKey, save_as: &'a Path) -> Acceptance<'a> {
    Acceptance { trusted_key: Some(trusted), save_as, net_class: None, data_dir: None }
}

fn debugfs_cat(image: &Path, path: &str) -> String {
    let out = Command::new("debugfs").args(["-R", &format!("cat {path}")]).arg(image).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One machine registered with the appliance (policy auto), as its agent would.
fn register_one(ns: &Netns) {
    let args = agent_args(ns, "52-54-00-00-00-01");
    let request = RegisterRequest {
        token: args.token.clone(),
        nonce: format!("{:032x}", 1),
        boot_mac: "52:54:00:00:00:01".into(),
        wireguard_key: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
        agent_version: "test".into(),
        inventory: Inventory {
            system: System { serial: Some("SN-USB-1".into()), ..Default::default() },
            cpus: 6,
            memory_bytes: 12 << 30,
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".into(),
                driver: None,
                speed_mbps: None,
                link: true,
            }],
            ..Default::default()
        },
    };
    let (api, pin) = (args.api.clone(), args.pin.clone());
    let response = ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { ApiClient::new(&api, &pin)?.register(&request).await })
    });
    assert_eq!(response.unwrap().state, MachineState::Accepted);
}

#[test]
fn an_ext4_stick_is_found_read_and_answered_with_the_report_of_a_running_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public, _) = signature::keygen(&dir.path().join("keys")).unwrap();
    let trusted = signature::load_trusted_key(&public).unwrap().unwrap();
    let content = dir.path().join("stick");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("oasis.toml"), CONFIG).unwrap();
    signature::sign_file(&private, &content.join("oasis.toml")).unwrap();
    // And an update bundle beside it, signed with the key the appliance's [update] trusts.
    let bundle_node = dir.path().join("node-1");
    node_dir(&bundle_node, b"a newer kernel");
    let options = oasis_image::bundle::BundleOptions {
        version: "0.15.1".into(),
        sequence: 1,
        kernel_version: Some("6.12.0-1-amd64".into()),
        ..Default::default()
    };
    let key = oasis_image::signing::load_private_key(&private).unwrap();
    oasis_image::bundle::write_bundle(&bundle_node, &options, &key, &content.join("update.bundle")).unwrap();
    let image = dir.path().join("stick.img");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "OASIS", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("32M")
        .output()
        .unwrap();
    assert!(out.status.success(), "mke2fs: {}", String::from_utf8_lossy(&out.stderr));

    // The appliance, with one machine.
    let ns = Netns::create("oasis-usb").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let root = dir.path().join("boot");
    node_dir(&root.join("node"), b"kernel");
    let trust = format!("[update]\ntrusted_keys = [\"{}\"]\n", public.display());
    let config = write_config(dir.path(), "mode = \"off\"", &root, &trust);
    let mut appliance = Appliance::start(&ns, &config, &dir.path().join("oasis.log"));
    register_one(&ns);

    let stick_loop = LoopDevice::attach(&image, 0);
    let stick = stick_loop
        .scan()
        .unwrap_or_else(|| panic!("{} not found among {:?}", stick_loop.name(), Scanner::default().scan()));
    assert_eq!((stick.fs, stick.label.as_str(), stick.size_bytes), (FsType::Ext4, "OASIS", 32 << 20));
    let mounted = usb::mount(&stick, &dir.path().join("mnt")).unwrap();
    assert!(mounted.writable());
    let save_as = appliance.data_dir.join("oasis.toml");
    let offer = usb::read_offer(mounted.root(), &acceptance(&trusted, &save_as));
    assert_eq!(offer, Some(Offer::Accepted { text: CONFIG.into(), signed: true }));

    // Its bundle, verified while copied to the data partition and installed through the admin
    // socket of the running `oasis serve` (`[update] apply_from_stick = true`).
    let keys = UpdateKeys { image_key: None, configured: vec![public.clone()] }.load().map_err(|e| e.to_string());
    let installer = usb::bundle::AdminInstaller { data_dir: appliance.data_dir.clone() };
    let copy = usb::bundle::copy_path(&appliance.data_dir);
    let (bundle, pending) = usb::bundle::offer(mounted.root(), keys, &[], &copy, true, &installer).expect("a bundle");
    assert!(matches!(&bundle, usb::BundleOutcome::Installed { sequence: 1, .. }), "{bundle:?}");
    assert!(pending.is_none() && !copy.exists(), "installed, its copy removed");
    assert!(appliance.data_dir.join("generations/1/bundle-manifest.json").exists());

    let mut report = usb::gather(&appliance.data_dir);
    report.bundle = Some(bundle);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let machines = report.machines.as_ref().unwrap();
    assert_eq!(machines.len(), 1, "{machines:?}");
    assert!(report.cluster.is_some());
    assert_eq!(report.kubeconfig, None, "no k3s bundle");
    let token = std::fs::read_to_string(appliance.data_dir.join("admin-token")).unwrap().trim().to_string();
    report.outcome = Outcome::Applied { text: CONFIG.into(), signed: true };
    report.admin_token = Some(token.clone());
    usb::write_report(mounted.root(), &report).unwrap();
    mounted.unmount().unwrap();
    assert!(!dir.path().join("mnt").exists(), "the mount point is removed");
    drop(stick_loop);
    appliance.stop();

    let result = debugfs_cat(&image, "/oasis-report/result.txt");
    assert!(result.starts_with("applied: the configuration on this stick, signed with the trusted key,"), "{result}");
    assert!(result.contains("\nbundle: installed as node generation 1: ") && result.contains("0.15.1"), "{result}");
    assert!(
        result.contains("machines: 1")
            && result.contains("files: applied.toml, inventory.txt, admin-token, cluster-status.txt"),
        "{result}"
    );
    assert_eq!(debugfs_cat(&image, "/oasis-report/applied.toml"), CONFIG);
    assert_eq!(debugfs_cat(&image, "/oasis-report/admin-token"), format!("{token}\n"));
    let inventory = debugfs_cat(&image, "/oasis-report/inventory.txt");
    let row: Vec<&str> = inventory.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(row[1..7], ["SN-USB-1", "52:54:00:00:00:01", "6", "12.0G", "-", "accepted"], "{inventory}");
    assert!(debugfs_cat(&image, "/oasis-report/cluster-status.txt").starts_with("cluster oasis: "));
}

#[test]
fn a_fat_stick_from_the_image_builder_is_found_and_its_bad_offer_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public, _) = signature::keygen(&dir.path().join("keys")).unwrap();
    let trusted = signature::load_trusted_key(&public).unwrap().unwrap();
    let config = dir.path().join("oasis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let image = dir.path().join("stick.img");
    let build = |bundle: &Path| {
        let (config, image, bundle) = (config.to_str().unwrap(), image.to_str().unwrap(), bundle.to_str().unwrap());
        oasis(&["image", "build", "usb-stick", "--config", config, "--out", image, "--bundle", bundle])
    };
    // A file that is no bundle is refused before anything is written.
    let out = build(&config);
    assert!(!out.status.success() && !image.exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an oasis update bundle"), "{out:?}");
    // A bundle goes on the stick as NAME.bundle, byte for byte.
    let node = dir.path().join("node-2");
    node_dir(&node, b"kernel");
    let options = oasis_image::bundle::BundleOptions {
        version: "0.15.2".into(),
        sequence: 2,
        kernel_version: Some("6.12.0-1-amd64".into()),
        ..Default::default()
    };
    let bundle = dir.path().join("rack-update");
    let key = oasis_image::signing::load_private_key(&private).unwrap();
    oasis_image::bundle::write_bundle(&node, &options, &key, &bundle).unwrap();
    let out = build(&bundle);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("unsigned") && stdout.contains("the update bundle rack-update.bundle"), "{stdout}");
    let on_stick = oasis_image::usb_stick::read_file(&image, "rack-update.bundle").unwrap();
    assert_eq!(on_stick, Some(std::fs::read(&bundle).unwrap()));

    // The partition, at 1 MiB.
    let stick_loop = LoopDevice::attach(&image, 1 << 20);
    let stick = stick_loop.scan().expect("the FAT partition labelled OASIS is found");
    assert_eq!((stick.fs, stick.label.as_str()), (FsType::Vfat, "OASIS"));

    let vfat = std::fs::read_to_string("/proc/filesystems").unwrap().lines().any(|l| l.trim_end().ends_with("vfat"));
    let mounted = usb::mount(&stick, &dir.path().join("mnt"));
    if !vfat {
        let err = mounted.unwrap_err().to_string();
        assert!(err.contains("no driver for this filesystem"), "{err}");
        assert!(!dir.path().join("mnt").exists(), "the mount point is removed again");
        return;
    }
    let mounted = mounted.unwrap();
    let save_as = dir.path().join("data/oasis.toml");
    let Some(Offer::Refused { reason }) = usb::read_offer(mounted.root(), &acceptance(&trusted, &save_as)) else {
        panic!("an unsigned offer is refused");
    };
    assert!(reason.starts_with("unsigned"), "{reason}");
    let report = usb::Report { outcome: Outcome::Refused { reason }, ..usb::gather(&dir.path().join("data")) };
    usb::write_report(mounted.root(), &report).unwrap();
    mounted.unmount().unwrap();
    drop(stick_loop);
    let result = oasis_image::usb_stick::read_file(&image, "oasis-report/result.txt").unwrap().unwrap();
    let result = String::from_utf8(result).unwrap();
    assert!(result.starts_with("refused: ") && result.contains("why: unsigned"), "{result}");
}

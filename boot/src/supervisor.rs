//! `oasis boot`: the appliance image's supervisor, run by its `/init`.
//!
//! In order: find the disk the appliance booted from and prepare its data partition ([`disk`]),
//! mount the EFI system partition read-only (its `oasis/boot/` becomes the boot root served to the
//! rack) and the data partition at [`DATA_DIR`]; choose the configuration ([`choose_config`]: a
//! USB stick's, else the one saved by an earlier boot, else the console's first-boot questions),
//! save it as `DATA_DIR/oasis.toml`, put the rack address on the rack interface, and run
//! `oasis serve` as a child process, restarted if it exits. Beside it run the console's status view
//! with its menu and a USB watcher: a stick plugged in later is read the same way; a config it
//! brings that differs from the running one is saved and `serve` restarted with it; the stick
//! gets a report either way, and again once the cluster is healthy.
//!
//! `serve` is a child, not a task, so that a new configuration is applied by restarting exactly
//! what `oasis serve --config` runs everywhere else, and the console talks to it through the same
//! admin socket as the CLI.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ed25519_dalek::VerifyingKey;

use oasis_appliance::identity::ADMIN_TOKEN_FILE;
use oasis_appliance::operator::{self, Action};
use oasis_core::config::Config;
use oasis_host::mount::MsFlags;
use oasis_host::sys::RebootMode;
use oasis_image::appliance::{TestFault, ESP_BOOT_ROOT};

use crate::console::{self, ApplianceActions, Consoles};
use crate::disk;
use crate::self_update::SelfUpdate;
use crate::usb::{self, Acceptance, Offer, Outcome, Stick};

/// Where the data partition is mounted: the store, the saved configuration, logs.
pub const DATA_DIR: &str = "/var/lib/oasis";
/// Where the running slot's partition is mounted, read-only (the EFI system partition of an image
/// made before the two slots).
pub const ESP_MOUNT: &str = "/run/oasis/boot-disk";
/// Where a stick is mounted while it is read or written.
pub const STICK_MOUNT: &str = "/run/oasis/stick";
/// The configuration in use, in [`DATA_DIR`].
pub const CONFIG_FILE: &str = "oasis.toml";
/// `oasis serve`'s log, in [`DATA_DIR`] (the previous boot's is kept as `serve.log.1`).
pub const SERVE_LOG: &str = "serve.log";
/// How often a committed appliance asks `serve` whether an update to itself is waiting.
const UPDATE_POLL: Duration = Duration::from_secs(5);

/// Prints a line on the console (serial and screen): the supervisor's own messages.
pub fn say(line: &str) {
    eprintln!("{line}");
    if let Ok(mut tty) = fs::OpenOptions::new().write(true).open("/dev/tty0") {
        let _ = writeln!(tty, "{line}");
    }
}

/// Finds the appliance disk, prepares its data partition, and mounts the running slot's files
/// and the data partition: the data directory, and what GRUB booted.
fn mount_disks() -> anyhow::Result<(PathBuf, disk::BootDisk, crate::slots::Boot)> {
    say("oasis boot: looking for the appliance disk");
    let boot_disk = disk::find_boot_disk(Path::new("/sys/block"), Duration::from_secs(60))?;
    let data = disk::prepare_data_partition(&boot_disk)?;
    let gib = data.bytes as f64 / (1u64 << 30) as f64;
    if data.created {
        say(&format!("oasis boot: created the data partition {} ({gib:.1} GiB)", data.device.display()));
    } else if data.restored {
        say(&format!(
            "oasis boot: found the store of an earlier image on {} and kept it ({gib:.1} GiB)",
            data.device.display()
        ));
    } else if data.grown {
        say(&format!("oasis boot: grew the data partition {} to {gib:.1} GiB", data.device.display()));
    }
    // The running slot's files (kernel, initramfs, the boot files served to the rack), read-only
    // where the EFI system partition was before the two slots; the ESP itself stays unmounted.
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let boot = crate::slots::Boot::parse(&cmdline).unwrap_or_else(|e| {
        say(&format!("oasis boot: {e}; taking slot A"));
        crate::slots::Boot { slot: crate::slots::Slot::A, trial: false }
    });
    say(&format!("oasis boot: running slot {}{}", boot.slot, if boot.trial { " (a trial boot)" } else { "" }));
    disk::mount(boot_disk.boot_files(boot.slot), Path::new(ESP_MOUNT), "vfat", MsFlags::MS_RDONLY)?;
    let data_dir = PathBuf::from(DATA_DIR);
    disk::mount(&data.device, &data_dir, "ext4", MsFlags::MS_NOATIME)?;
    disk::bind_read_only(&Path::new(ESP_MOUNT).join(ESP_BOOT_ROOT), &data_dir.join("boot"))?;
    Ok((data_dir, boot_disk, boot))
}

/// Runs the appliance. Returns only on an error it cannot go on from (init runs it again).
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let (data_dir, boot_disk, boot) = mount_disks()?;
    let self_update = SelfUpdate::at_boot(&boot_disk, boot, Path::new(ESP_MOUNT), &data_dir).map(Arc::new);

    let trusted_key = usb::signature::load_trusted_key(Path::new(usb::signature::TRUSTED_KEY_PATH))?;
    if let Some(key) = &trusted_key {
        say(&format!("oasis boot: USB configurations must be signed by key {}", usb::signature::key_id(key)));
    }
    let first_boot = !data_dir.join(ADMIN_TOKEN_FILE).exists();
    let mut consoles = Consoles::open_appliance().context("opening the consoles")?;

    // A bundle copied off a stick and never confirmed before the last shutdown is not asked about again.
    usb::bundle::remove_copies(&data_dir);
    let supervisor = Supervisor::new(data_dir.clone(), trusted_key, first_boot);
    // The sticks there now were read (or are being read) for this boot; the watcher reports the
    // ones that come after, including any plugged in while the console asked its questions.
    let boot_sticks = sticks_at_boot();
    let (config_text, offered) = supervisor.choose_config(&boot_sticks, &mut consoles)?;
    supervisor.apply(&config_text)?;
    let mut serve = supervisor.start_serve(false)?;
    // Set when the appliance must reboot: a trial that failed, an update armed.
    let reboot_now = Arc::new(AtomicBool::new(false));
    if let Some(update) = self_update.clone().filter(|u| u.on_trial()) {
        start_trial(update, &supervisor.config_path(), reboot_now.clone());
    }
    if supervisor.wait_for_serve(&mut serve, Duration::from_secs(60)) {
        say(&format!("oasis boot: serving; {:.0} s since oasis boot started", started.elapsed().as_secs_f64()));
    }
    if let Some((stick, outcome)) = offered {
        supervisor.take_bundle(&stick);
        supervisor.report_to(&stick, outcome);
    }

    // The USB watcher and the console run beside the supervision loop.
    let stop = Arc::new(AtomicBool::new(false));
    let (stick_tx, sticks) = mpsc::channel();
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let watcher = usb::Watcher::after_scan(usb::Scanner::default(), &boot_sticks);
            usb::watch(watcher, Duration::from_secs(2), &stop, |stick| {
                let _ = stick_tx.send(stick);
            });
        });
    }
    let actions = Arc::new(supervisor);
    // What was typed before the menu existed is not a menu command.
    consoles.discard_typed();
    {
        let actions = actions.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Err(e) = console::run_status(&mut consoles, Path::new(DATA_DIR), actions.as_ref(), &stop) {
                say(&format!("oasis boot: the console stopped: {e}", e = oasis_proto::error_chain(&e)));
            }
        });
    }

    let mut reported_healthy = false;
    // When `serve` has exited: when to start it again.
    let mut restart_at: Option<Instant> = None;
    let mut update_checked = Instant::now();
    loop {
        if let Some(update) = self_update.as_ref().filter(|_| restart_at.is_none()) {
            if update_checked.elapsed() >= UPDATE_POLL {
                update_checked = Instant::now();
                let due = update.reboot_due(crate::self_update::now())
                    || update.install_waiting(actions.appliance_reboot_at());
                reboot_now.fetch_or(due, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if reboot_now.load(std::sync::atomic::Ordering::SeqCst) {
            if restart_at.is_none() {
                stop_child(&mut serve);
            }
            shutdown(RebootMode::RB_AUTOBOOT);
            reboot_now.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        if restart_at.is_none() {
            if let Ok(Some(status)) = serve.try_wait() {
                restart_at = Some(Instant::now() + actions.serve_exited(status));
            }
        }
        if let Some(at) = restart_at {
            let afresh = actions.afresh.swap(false, std::sync::atomic::Ordering::SeqCst);
            if afresh || Instant::now() >= at {
                serve = actions.start_serve(afresh)?;
                restart_at = None;
                if afresh {
                    actions.wait_for_serve(&mut serve, Duration::from_secs(60));
                }
            }
        }
        match sticks.recv_timeout(Duration::from_secs(1)) {
            Ok(stick) => {
                say(&format!("oasis boot: USB stick {} ({}) plugged in", stick.label, stick.device.display()));
                if let Some((text, signed)) = actions.take_stick(&stick) {
                    say("oasis boot: applying the stick's configuration: restarting oasis serve");
                    if restart_at.take().is_none() {
                        stop_child(&mut serve);
                    }
                    actions.apply(&text)?;
                    serve = actions.start_serve(false)?;
                    actions.wait_for_serve(&mut serve, Duration::from_secs(60));
                    actions.take_bundle(&stick);
                    actions.report_to(&stick, Outcome::Applied { text, signed });
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if !reported_healthy && actions.cluster_healthy() {
            reported_healthy = true;
            say("oasis boot: the cluster is healthy");
            // To the stick still plugged in, if any: what the menu's export does.
            let _ = actions.export_report();
        }
    }
}

/// A trial boot: the watchdog armed, and the health check run beside `serve`, which commits the
/// slot or gives it up; then `reboot_now` is set if the appliance must go back.
fn start_trial(update: Arc<SelfUpdate>, config_path: &Path, reboot_now: Arc<AtomicBool>) {
    update.watch_trial();
    let config = Config::load(config_path);
    std::thread::spawn(move || {
        let result = config.map_err(|e| format!("{e:#}")).and_then(|c| update.health_check(&c));
        if update.finish_trial(result) {
            reboot_now.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
}

/// The sticks plugged in at power-on: USB storage needs a few seconds to enumerate after its
/// drivers load, so an empty scan is repeated for up to 5 s.
fn sticks_at_boot() -> Vec<Stick> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sticks = usb::scan();
    while sticks.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        sticks = usb::scan();
    }
    sticks
}

fn stop_child(child: &mut Child) {
    // Our own child: its pid cannot be reused before we wait on it.
    let _ = oasis_host::sys::terminate(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What the supervision loop, the stick handling and the console's menu share.
#[derive(Debug)]
pub struct Supervisor {
    data_dir: PathBuf,
    trusted_key: Option<VerifyingKey>,
    /// The admin token goes into the first report of the first boot only.
    token_for_report: Mutex<bool>,
    /// The configuration text `serve` runs with.
    current: Mutex<String>,
    /// The stick whose configuration was last applied or refused, and what became of it: a later
    /// report to the same stick (the cluster is healthy) says it again rather than "report only".
    last_offer: Mutex<Option<(Stick, Outcome)>>,
    /// Why `serve` last refused the store (said once on the console), while it does.
    store_refused: Mutex<Option<String>>,
    /// The console asked to start afresh with a new store.
    afresh: AtomicBool,
    /// The verified update bundle from a stick, copied to the data partition, waiting for the
    /// console's confirmation.
    pending_bundle: Mutex<Option<(Stick, usb::Verified)>>,
    /// The stick whose update bundle was last taken, and what became of it (for its reports).
    last_bundle: Mutex<Option<(Stick, usb::BundleOutcome)>>,
}

impl Supervisor {
    fn new(data_dir: PathBuf, trusted_key: Option<VerifyingKey>, first_boot: bool) -> Supervisor {
        Supervisor {
            data_dir,
            trusted_key,
            token_for_report: Mutex::new(first_boot),
            current: Mutex::new(String::new()),
            last_offer: Mutex::new(None),
            store_refused: Mutex::new(None),
            afresh: AtomicBool::new(false),
            pending_bundle: Mutex::new(None),
            last_bundle: Mutex::new(None),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.data_dir.join(CONFIG_FILE)
    }

    /// `[update] appliance_reboot_at` of the running configuration.
    fn appliance_reboot_at(&self) -> Option<oasis_core::config::TimeOfDay> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Config::parse(&current, &self.config_path()).ok().and_then(|c| c.rollout.appliance_reboot_at)
    }

    /// Reads a stick's offer. The reason of a refusal goes to the console (and later the stick).
    fn read_stick(&self, stick: &Stick) -> Option<Offer> {
        let mounted = match usb::mount(stick, Path::new(STICK_MOUNT)) {
            Ok(m) => m,
            Err(e) => {
                say(&format!(
                    "oasis boot: cannot read the USB stick {}: {e}",
                    stick.device.display(),
                    e = oasis_proto::error_chain(&e)
                ));
                return None;
            }
        };
        let save_as = self.config_path();
        let acceptance = Acceptance {
            trusted_key: self.trusted_key.as_ref(),
            save_as: &save_as,
            net_class: Some(Path::new("/sys/class/net")),
            data_dir: Some(&self.data_dir),
        };
        let offer = usb::read_offer(mounted.root(), &acceptance);
        let _ = mounted.unmount();
        match &offer {
            Some(Offer::Refused { reason }) => {
                say(&format!("oasis boot: the configuration on the USB stick was REFUSED: {reason}"));
                say(
                    "oasis boot: keeping the last good configuration; the reason is also in oasis-report/ on the stick",
                );
            }
            Some(Offer::Accepted { signed, .. }) => say(&format!(
                "oasis boot: the USB stick's configuration is valid{}",
                if *signed { " and signed" } else { "" }
            )),
            None => say("oasis boot: the USB stick has no oasis.toml; it will get a report"),
        }
        offer
    }

    /// The stick's update bundle, if it has one, with `serve` running: verified while copied to
    /// the data partition (the stick unmounted after), then installed at once when the running
    /// configuration says `[update] apply_from_stick = true` (after a stick's configuration was
    /// applied, that is the stick's), else left for the console's [u].
    fn take_bundle(&self, stick: &Stick) {
        let Ok(mounted) = usb::mount(stick, Path::new(STICK_MOUNT)) else {
            return; // `read_stick` said why.
        };
        if matches!(usb::bundle::find_bundle(mounted.root()), Ok(None)) {
            let _ = mounted.unmount();
            return;
        }
        if !matches!(oasis_appliance::admin::request(&self.data_dir, "GET", "/v1/machines"), Ok(Some(_))) {
            let _ = mounted.unmount();
            let reason = format!("oasis serve is not running, so the bundle was not read: see {DATA_DIR}/{SERVE_LOG}, then plug the stick in again");
            return self.bundle_taken(stick, &usb::BundleOutcome::Refused { reason });
        }
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let config = Config::parse(&current, &self.config_path()).ok();
        let at_once = config.as_ref().is_some_and(|c| c.apply_from_stick);
        let keys = oasis_appliance::generations::UpdateKeys {
            image_key: Some(PathBuf::from(usb::signature::TRUSTED_KEY_PATH)),
            configured: config.map(|c| c.update_trusted_keys).unwrap_or_default(),
        };
        let trusted = keys.load().map_err(|e| oasis_proto::error_chain(&e));
        let installed = match operator::ask(&self.data_dir, &Action::UpdateStatus) {
            Ok(Some(body)) => serde_json::from_slice(&body).map(|s| usb::bundle::installed_of(&s)).unwrap_or_default(),
            _ => vec![],
        };
        let copy = usb::bundle::copy_path(&self.data_dir);
        let taken = usb::bundle::take_bundle(mounted.root(), trusted, &installed, &copy);
        let _ = mounted.unmount();
        let Some(taken) = taken else { return };
        if let Ok(verified) = &taken {
            say(&format!(
                "oasis boot: update bundle {} on the USB stick verified: {}",
                verified.name, verified.summary
            ));
            if at_once {
                say("oasis boot: installing it ([update] apply_from_stick = true)");
            }
        }
        let installer = usb::bundle::AdminInstaller { data_dir: self.data_dir.clone() };
        let (outcome, pending) = usb::bundle::settle(taken, at_once, &installer);
        if let Some(verified) = pending {
            let replaced =
                self.pending_bundle.lock().unwrap_or_else(|e| e.into_inner()).replace((stick.clone(), verified));
            if let Some((_, older)) = replaced {
                let _ = fs::remove_file(older.copy);
            }
        }
        self.bundle_taken(stick, &outcome);
    }

    /// Says what became of a stick's bundle on the console and keeps it for the stick's reports.
    fn bundle_taken(&self, stick: &Stick, outcome: &usb::BundleOutcome) {
        match outcome {
            usb::BundleOutcome::Installed { sequence, .. } => say(&format!(
                "oasis boot: installed as node generation {sequence}; the rollout to it starts by itself (`oasis update status`)"
            )),
            usb::BundleOutcome::Pending { .. } => {
                say("oasis boot: choose [u] on the menu to install it (or set [update] apply_from_stick = true)")
            }
            usb::BundleOutcome::Refused { reason } => {
                say(&format!("oasis boot: the update bundle on the USB stick was REFUSED, nothing installed: {reason}"))
            }
        }
        *self.last_bundle.lock().unwrap_or_else(|e| e.into_inner()) = Some((stick.clone(), outcome.clone()));
    }

    /// A stick plugged in while running: returns the new configuration to apply (and whether it
    /// was signed), if it brings one that differs from the running one; otherwise writes its
    /// report now.
    fn take_stick(&self, stick: &Stick) -> Option<(String, bool)> {
        let offer = self.read_stick(stick);
        if !matches!(&offer, Some(Offer::Accepted { text, .. }) if *text != *self.current.lock().unwrap_or_else(|e| e.into_inner()))
        {
            // Not restarting `serve`: its bundle now (else once `serve` runs the new configuration).
            self.take_bundle(stick);
        }
        match offer {
            Some(Offer::Accepted { text, signed })
                if text != *self.current.lock().unwrap_or_else(|e| e.into_inner()) =>
            {
                Some((text, signed))
            }
            Some(Offer::Accepted { text, signed }) => {
                say("oasis boot: the stick's configuration is the one running: nothing to apply");
                self.report_to(stick, Outcome::Applied { text, signed });
                None
            }
            Some(Offer::Refused { reason }) => {
                self.report_to(stick, Outcome::Refused { reason });
                None
            }
            None => {
                self.report_to(stick, Outcome::ReportOnly);
                None
            }
        }
    }

    /// The configuration for this boot, and the stick that offered one (with what became of it),
    /// to report to once `serve` runs.
    fn choose_config(
        &self,
        sticks: &[Stick],
        consoles: &mut Consoles,
    ) -> anyhow::Result<(String, Option<(Stick, Outcome)>)> {
        let saved = fs::read_to_string(self.config_path()).ok();
        let mut offered = None;
        if let Some(stick) = sticks.first().cloned() {
            say(&format!("oasis boot: USB stick {} found", stick.device.display()));
            match self.read_stick(&stick) {
                Some(Offer::Accepted { text, signed }) => {
                    return Ok((text.clone(), Some((stick, Outcome::Applied { text, signed }))));
                }
                Some(Offer::Refused { reason }) => offered = Some((stick, Outcome::Refused { reason })),
                None => offered = Some((stick, Outcome::ReportOnly)),
            }
        }
        if let Some(text) = saved {
            say("oasis boot: using the configuration saved on the data partition");
            return Ok((text, offered));
        }
        say("oasis boot: no configuration yet: answer the questions on this console (or plug in a USB stick labelled OASIS and reboot)");
        // Links up first: the questions show each NIC's carrier, and the DHCP probe sends on one.
        let nics = console::list_nics(Path::new("/sys/class/net"));
        for nic in &nics {
            let _ = oasis_host::netlink::link_up_blocking(&nic.name);
        }
        if !nics.is_empty() {
            std::thread::sleep(Duration::from_secs(3));
        }
        let text = console::first_boot(consoles, &console::host_nics(), &console::UdpDhcpProbe::default())
            .context("the first-boot questions")?;
        Ok((text, offered))
    }

    /// Saves `text` as the configuration and puts the rack address on the rack interface.
    fn apply(&self, text: &str) -> anyhow::Result<()> {
        let path = self.config_path();
        oasis_image::manifest::write_atomic(&path, text.as_bytes())?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = text.to_string();
        let config = Config::load(&path)?;
        let interface = &config.interface;
        let cidr = config.rack_net();
        // A previous configuration's address goes: the rack interface has exactly one.
        oasis_host::netlink::set_only_ipv4_blocking(interface, cidr)?;
        say(&format!("oasis boot: rack interface {interface} has {cidr}"));
        Ok(())
    }

    /// Says on the console why `serve` exited, with its own error line; returns how long to wait
    /// before starting it again. A store it refuses waits for the operator (restoring the file,
    /// or [n] on the menu), so it is tried again only now and then, and said only once.
    fn serve_exited(&self, status: std::process::ExitStatus) -> Duration {
        let why = last_error(&self.data_dir.join(SERVE_LOG)).unwrap_or_else(|| "it printed no error".into());
        if status.code() == Some(oasis_appliance::EXIT_STORE) {
            let mut refused = self.store_refused.lock().unwrap_or_else(|e| e.into_inner());
            if refused.as_deref() != Some(why.as_str()) {
                say(&format!("oasis boot: oasis serve cannot use its store: {why}"));
                say("oasis boot: on this appliance: restore the store, or choose [n] on the menu to start afresh");
                *refused = Some(why);
            }
            return Duration::from_secs(30);
        }
        *self.store_refused.lock().unwrap_or_else(|e| e.into_inner()) = None;
        say(&format!(
            "oasis boot: oasis serve exited ({status}): {why}; see {DATA_DIR}/{SERVE_LOG}; restarting it in 2 s"
        ));
        Duration::from_secs(2)
    }

    /// Starts `oasis serve` on the saved configuration, its output in [`SERVE_LOG`];
    /// `new_store` passes `--new-store`.
    fn start_serve(&self, new_store: bool) -> anyhow::Result<Child> {
        let log_path = self.data_dir.join(SERVE_LOG);
        if log_path.exists() {
            let _ = fs::rename(&log_path, self.data_dir.join(format!("{SERVE_LOG}.1")));
        }
        let log = fs::File::create(&log_path)?;
        let child = Command::new(std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/oasis")))
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .args(new_store.then_some("--new-store"))
            .args(Path::new(ESP_MOUNT).join(TestFault::FailingServe.path()).exists().then_some("--test-refuse-start"))
            .env("OASIS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting oasis serve")?;
        Ok(child)
    }

    /// Waits until `serve` answers on its admin socket, or has exited.
    fn wait_for_serve(&self, serve: &mut Child, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(serve.try_wait(), Ok(Some(_))) {
                return false;
            }
            if matches!(oasis_appliance::admin::request(&self.data_dir, "GET", "/v1/machines"), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        say(&format!("oasis boot: oasis serve does not answer yet; see {DATA_DIR}/{SERVE_LOG}"));
        false
    }

    fn cluster_healthy(&self) -> bool {
        let Ok(Some(body)) = oasis_appliance::admin::request(&self.data_dir, "GET", "/v1/cluster") else {
            return false;
        };
        serde_json::from_slice::<oasis_core::assembly::status::ClusterStatus>(&body)
            .is_ok_and(|c| c.health == oasis_core::assembly::status::Health::Healthy)
    }

    /// Writes the report (with `outcome`) to `stick`; says on the console how it went.
    fn report_to(&self, stick: &Stick, outcome: Outcome) {
        let mut report = usb::gather(&self.data_dir);
        let mut last_offer = self.last_offer.lock().unwrap_or_else(|e| e.into_inner());
        report.outcome = match (outcome, last_offer.as_ref()) {
            (Outcome::ReportOnly, Some((s, earlier))) if s == stick => earlier.clone(),
            (Outcome::ReportOnly, _) => Outcome::ReportOnly,
            (offered, _) => {
                *last_offer = Some((stick.clone(), offered.clone()));
                offered
            }
        };
        drop(last_offer);
        report.bundle = match &*self.last_bundle.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((s, outcome)) if s == stick => Some(outcome.clone()),
            _ => None,
        };
        let mut token_pending = self.token_for_report.lock().unwrap_or_else(|e| e.into_inner());
        if *token_pending {
            report.admin_token = fs::read_to_string(self.data_dir.join(ADMIN_TOKEN_FILE)).ok();
        }
        let result =
            usb::mount(stick, Path::new(STICK_MOUNT)).map_err(|e| oasis_proto::error_chain(&e)).and_then(|mounted| {
                let written = usb::write_report(mounted.root(), &report).map_err(|e| oasis_proto::error_chain(&e));
                let unmounted = mounted.unmount().map_err(|e| oasis_proto::error_chain(&e));
                written.and(unmounted)
            });
        match result {
            Ok(()) => {
                if report.admin_token.is_some() {
                    *token_pending = false;
                }
                say(&format!(
                    "oasis boot: report written to the USB stick ({}/); it can be removed",
                    usb::report::REPORT_DIR
                ));
            }
            Err(e) => say(&format!("oasis boot: could not write the report to the USB stick: {e}")),
        }
    }
}

impl ApplianceActions for Supervisor {
    fn pending_bundle(&self) -> Option<String> {
        let pending = self.pending_bundle.lock().unwrap_or_else(|e| e.into_inner());
        pending.as_ref().map(|(_, verified)| format!("{}: {}", verified.name, verified.summary))
    }

    fn install_bundle(&self) -> Result<String, String> {
        let taken = self.pending_bundle.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((stick, verified)) = taken else {
            return Err("no update bundle is waiting".into());
        };
        let installer = usb::bundle::AdminInstaller { data_dir: self.data_dir.clone() };
        let outcome = usb::bundle::install(&verified, &installer);
        self.bundle_taken(&stick, &outcome);
        // To the stick it came from, if it is still plugged in.
        if usb::scan().contains(&stick) {
            self.report_to(&stick, Outcome::ReportOnly);
        }
        match outcome {
            usb::BundleOutcome::Installed { sequence, summary } => {
                Ok(format!("installed as node generation {sequence}: {summary}"))
            }
            usb::BundleOutcome::Refused { reason } => Err(reason),
            usb::BundleOutcome::Pending { summary } => Err(format!("still pending: {summary}")),
        }
    }

    fn start_afresh(&self) -> Result<String, String> {
        let answering = matches!(oasis_appliance::admin::request(&self.data_dir, "GET", "/v1/machines"), Ok(Some(_)));
        if answering || self.store_refused.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Err("oasis serve is not refusing its store: there is nothing to start afresh from".into());
        }
        self.afresh.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(format!("restarting oasis serve with a new store; the old one is kept aside in {DATA_DIR}"))
    }

    fn export_report(&self) -> Result<String, String> {
        let Some(stick) = usb::scan().into_iter().next() else {
            return Err("no USB stick labelled OASIS is plugged in".into());
        };
        self.report_to(&stick, Outcome::ReportOnly);
        Ok(format!("written to {} ({}/)", stick.device.display(), usb::report::REPORT_DIR))
    }

    fn reboot(&self) {
        shutdown(RebootMode::RB_AUTOBOOT);
    }

    fn power_off(&self) {
        shutdown(RebootMode::RB_POWER_OFF);
    }
}

/// Syncs the disks and reboots or powers off.
fn shutdown(how: RebootMode) {
    say("oasis boot: syncing the disks");
    // reboot(2) needs CAP_SYS_BOOT, which PID 1's children have on the appliance.
    let refused = oasis_host::sys::sync_and_reboot(how);
    say(&format!("oasis boot: the kernel refused to {how:?}: {refused}"));
}

/// The last `error: ` line of `serve`'s log (how `oasis` reports the error it stopped on).
fn last_error(log: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(64 << 10))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    tail.lines().rev().find_map(|l| l.strip_prefix("error: ")).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_serve_stopped_on_is_found_in_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(SERVE_LOG);
        assert_eq!(last_error(&log), None);
        let noise = "2024 INFO something\n".repeat(5000);
        fs::write(&log, format!("error: an old one\n{noise}error: the store /x is damaged: do this\n")).unwrap();
        assert_eq!(last_error(&log).as_deref(), Some("the store /x is damaged: do this"));
    }
}

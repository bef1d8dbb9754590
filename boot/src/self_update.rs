//! The appliance updating itself from a bundle's appliance part, on its two boot slots.
//!
//! `oasis serve` verifies the bundle and keeps its slot image with the generation; this module,
//! run by the supervisor, does the rest, one checked step at a time:
//!
//! 1. **At every boot** ([`SelfUpdate::at_boot`]): what GRUB chose ([`slots::after_boot`]). A
//!    committed slot goes on as before. A trial boot is health-checked once `serve` runs. A slot
//!    GRUB fell back from is said on the console with the reason ([`slots::fallback_reason`]),
//!    recorded in the trial record so that version is never written again by itself, and
//!    acknowledged in the environment block. What runs is written to `DATA_DIR/appliance.json`
//!    ([`APPLIANCE_FILE`]), which `serve` reads to accept or refuse a bundle's appliance part and
//!    to hold the node rollout, and the stick's report shows.
//! 2. **While committed** ([`SelfUpdate::install_waiting`]): when `oasis update status` names an
//!    appliance update waiting, the other slot is written, read back and armed
//!    ([`slots::install`]) while `serve` keeps serving; then the appliance reboots into it.
//! 3. **On a trial boot** ([`SelfUpdate::health_check`]): `serve` answers (its store opened and
//!    migrated), DHCP, HTTP and the API listen on the rack address, and every machine that was
//!    linked when the update was armed heartbeats again. Passed: the slot is committed. Failed:
//!    the reason goes into the trial record, the slot is given up in the block, and the appliance
//!    reboots into the slot it came from. A hang or a crash never gets that far: GRUB spends the
//!    slot's tries and falls back by itself.
//!
//! The EFI system partition is mounted read-write only while the block is rewritten, and
//! unmounted at once.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oasis_appliance::admin::MachineEntry;
use oasis_appliance::generations::{UpdateStatus, APPLIANCE_FILE};
use oasis_appliance::operator::{self, Action};
use oasis_core::config::{Config, TimeOfDay};
use oasis_core::update::{ApplianceHere, ApplianceUpdateState, LastTrial};
use oasis_host::mount::MsFlags;
use oasis_image::appliance::{SlotInfo, TestFault, GRUBENV_PATH, SLOT_INFO_PATH};

use crate::disk::{self, BootDisk};
use crate::slots::{self, install, Boot, BootVerdict, Slot, SlotEnv, TrialRecord, TrialVerdict};
use crate::supervisor::say;
use crate::watchdog::{self, Watchdog};

/// Where the EFI system partition is mounted while the environment block is read or rewritten.
pub const GRUBENV_MOUNT: &str = "/run/oasis/esp";
/// How long a trial boot's `serve` has to answer and listen on the rack.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the machines linked before the update have to heartbeat again.
pub const LINKS_TIMEOUT: Duration = Duration::from_secs(300);
/// The hardware watchdog's timeout during a trial boot.
pub const WATCHDOG_SECS: u32 = 30;
/// How often the watchdog is fed.
const WATCHDOG_FEED: Duration = Duration::from_secs(5);
/// How many times `oasis boot` may start in one trial boot (init restarts it when it stops)
/// before the trial is given up as a crash loop.
const MAX_TRIAL_STARTS: u32 = 3;
/// Counts `oasis boot`'s starts in this boot (on a tmpfs: each boot starts at zero).
const STARTS_FILE: &str = "/run/oasis/boot-starts";
/// A machine that heartbeated this recently when the update is armed counts as linked.
const LINKED_WITHIN_SECS: u64 = 60;

/// Now, in Unix seconds.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The appliance's two slots, and what this boot is.
#[derive(Debug)]
pub struct SelfUpdate {
    esp: PathBuf,
    /// The partition of the slot not running.
    other: PathBuf,
    running: Slot,
    /// The version the running slot holds.
    version: String,
    slot_bytes: u64,
    data_dir: PathBuf,
    /// When this boot's supervisor started (Unix seconds).
    booted_at: u64,
    /// A trial boot whose health check has not passed yet.
    on_trial: Mutex<bool>,
    /// The running slot was built to hang its trial (a test of the watchdog).
    hangs_its_trial: bool,
    /// The running slot was built to pause inside the arm's write (a test of a power cut there).
    pauses_mid_arm: bool,
}

impl SelfUpdate {
    /// Reads what GRUB chose and acts on a fallback (see the module documentation). `None` on a
    /// disk with one boot slot (an image from before the two slots), which cannot update itself.
    /// `slot_files` is where the running slot is mounted.
    pub fn at_boot(disk: &BootDisk, boot: Boot, slot_files: &Path, data_dir: &Path) -> Option<SelfUpdate> {
        let here = data_dir.join(APPLIANCE_FILE);
        let (Some(_), Some(other)) = (disk.slot(boot.slot), disk.slot(boot.slot.other())) else {
            say("oasis boot: this disk has one boot slot (an image from before the two slots): it cannot update itself; write a new appliance image over it to get two (the data partition is kept)");
            let _ = fs::remove_file(&here);
            return None;
        };
        let version = fs::read(slot_files.join(SLOT_INFO_PATH))
            .ok()
            .and_then(|b| serde_json::from_slice::<SlotInfo>(&b).ok())
            .map_or_else(|| "unknown".to_string(), |i| i.version);
        let slot_bytes = match install::device_bytes(other) {
            Ok(bytes) => bytes,
            Err(e) => {
                say(&format!(
                    "oasis boot: cannot read the size of slot {} ({}): {e}; appliance updates are off for this boot",
                    boot.slot.other(),
                    other.display()
                ));
                let _ = fs::remove_file(&here);
                return None;
            }
        };
        let update = SelfUpdate {
            esp: disk.esp.clone(),
            other: other.to_path_buf(),
            running: boot.slot,
            version,
            slot_bytes,
            data_dir: data_dir.to_path_buf(),
            booted_at: now(),
            on_trial: Mutex::new(false),
            hangs_its_trial: slot_files.join(TestFault::HangingTrial.path()).exists(),
            pauses_mid_arm: slot_files.join(TestFault::SlowSlotArm.path()).exists(),
        };
        if let Err(e) = update.settle_boot(boot) {
            say(&format!(
                "oasis boot: cannot read or write GRUB's slot choice: {e:#}; appliance updates are off for this boot"
            ));
            let _ = fs::remove_file(&here);
            return None;
        }
        update.write_here();
        if update.on_trial() {
            let starts = count_start(Path::new(STARTS_FILE));
            if starts > MAX_TRIAL_STARTS {
                let reason = format!("oasis boot stopped {} times during this trial boot", starts - 1);
                if update.finish_trial(Err(reason)) {
                    let refused = oasis_host::sys::sync_and_reboot(oasis_host::sys::RebootMode::RB_AUTOBOOT);
                    say(&format!("oasis boot: the kernel refused to reboot: {refused}"));
                }
            }
        }
        Some(update)
    }

    /// Acts on GRUB's choice for this boot.
    fn settle_boot(&self, boot: Boot) -> anyhow::Result<()> {
        let env = self.with_esp(false, |grubenv| Ok(slots::read(grubenv)?))?;
        match slots::after_boot(boot, &env) {
            BootVerdict::Committed => self.forget_unarmed(&env),
            BootVerdict::Trial { tries_left } => {
                say(&format!(
                    "oasis boot: slot {} (oasis {}) is on trial: it is committed once its health check passes ({tries_left} more boot(s) are tried before GRUB falls back)",
                    self.running, self.version
                ));
                *self.on_trial.lock().unwrap_or_else(|e| e.into_inner()) = true;
            }
            BootVerdict::FellBack { from } => {
                let record = TrialRecord::read(&self.data_dir).unwrap_or_else(|e| {
                    say(&format!("oasis boot: {e}"));
                    None
                });
                let reason = slots::fallback_reason(record.as_ref(), from);
                say(&format!("oasis boot: THE APPLIANCE UPDATE FELL BACK: {reason}"));
                if let Some(record) = record.filter(|r| r.slot == from) {
                    TrialRecord { fell_back: Some(reason), ..record }.write(&self.data_dir)?;
                }
                self.change_env(|env| env.acknowledge_fallback(self.running))?;
            }
            BootVerdict::LastResort => {
                say("oasis boot: GRUB found no committed slot and none with tries left, and booted slot A as its last resort; committing it, since it is what runs");
                self.change_env(|env| env.commit(self.running))?;
            }
        }
        Ok(())
    }

    /// A trial record of the other slot that GRUB's block does not arm (nor fell back from): the
    /// power went after the record and before the arm. It goes, so the update is written again.
    fn forget_unarmed(&self, env: &SlotEnv) {
        let other = self.running.other();
        let Ok(Some(record)) = TrialRecord::read(&self.data_dir) else { return };
        if record.slot == other && record.fell_back.is_none() && record.verdict.is_none() && env.tries(other) == 0 {
            say(&format!(
                "oasis boot: the update to oasis {} was written to slot {other} but never armed (the power went): writing it again",
                record.version
            ));
            let _ = fs::remove_file(TrialRecord::path(&self.data_dir));
        }
    }

    /// The update armed in the other slot, waiting for its reboot, if any.
    fn armed(&self) -> Option<TrialRecord> {
        let record = TrialRecord::read(&self.data_dir).ok().flatten()?;
        let armed = record.slot == self.running.other() && record.fell_back.is_none() && record.verdict.is_none();
        (armed && record.version != self.version && !self.on_trial()).then_some(record)
    }

    /// Whether the armed update's reboot is due at `now` (Unix seconds).
    pub fn reboot_due(&self, now: u64) -> bool {
        self.armed().is_some_and(|r| r.reboot_at.is_none_or(|at| now >= at))
    }

    /// Mounts the EFI system partition (read-write only when `writes`), runs `f` on its
    /// environment block, unmounts.
    fn with_esp<T>(&self, writes: bool, f: impl FnOnce(&Path) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let mount = Path::new(GRUBENV_MOUNT);
        let flags = if writes { MsFlags::MS_NOATIME } else { MsFlags::MS_NOATIME | MsFlags::MS_RDONLY };
        disk::mount(&self.esp, mount, "vfat", flags)?;
        let result = f(&mount.join(GRUBENV_PATH));
        let unmounted = oasis_host::mount::unmount(mount);
        let value = result?;
        unmounted.map_err(|e| anyhow::anyhow!("unmounting the EFI system partition {}: {e}", self.esp.display()))?;
        Ok(value)
    }

    /// Rewrites the environment block with `change` applied to what is on disk now.
    fn change_env(&self, change: impl FnOnce(&SlotEnv) -> SlotEnv) -> anyhow::Result<()> {
        self.with_esp(true, |grubenv| Ok(slots::write_in_place(grubenv, &change(&slots::read(grubenv)?))?))
    }

    /// Whether this is a trial boot not yet committed.
    pub fn on_trial(&self) -> bool {
        *self.on_trial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `serve` and the stick's report are told of this appliance.
    pub fn here(&self) -> ApplianceHere {
        let last_trial = TrialRecord::read(&self.data_dir).ok().flatten().map(|r| LastTrial {
            version: r.version,
            from_version: r.from_version,
            fell_back: r.fell_back,
        });
        ApplianceHere {
            running: self.running.to_string(),
            version: self.version.clone(),
            committed: !self.on_trial(),
            slot_bytes: self.slot_bytes,
            last_trial,
            reboot_at: self.armed().and_then(|r| r.reboot_at),
        }
    }

    fn write_here(&self) {
        let text = serde_json::to_vec_pretty(&self.here()).unwrap_or_default();
        let path = self.data_dir.join(APPLIANCE_FILE);
        if let Err(e) = oasis_image::manifest::write_atomic(&path, &text) {
            say(&format!(
                "oasis boot: cannot write {}: {e}; oasis serve will refuse appliance updates",
                path.display()
            ));
        }
    }

    /// During a trial: arms the hardware watchdog and feeds it from a thread of its own until the
    /// trial ends ([`crate::watchdog`]). Without a watchdog, says what that means.
    pub fn watch_trial(self: &Arc<Self>) {
        let mut dog = match Watchdog::arm(Path::new(watchdog::DEVICE), WATCHDOG_SECS) {
            Ok(dog) => dog,
            Err(e) => {
                say(&format!("oasis boot: no hardware watchdog ({}: {e}): if this trial hangs, a power cycle makes GRUB fall back", watchdog::DEVICE));
                return;
            }
        };
        let secs = dog.timeout_secs.map_or_else(|| "its driver's default timeout".to_string(), |s| format!("{s} s"));
        say(&format!("oasis boot: the watchdog is armed for the trial ({secs})"));
        if self.hangs_its_trial {
            say("oasis boot: this slot was built to hang its trial (a test): no health check, and the watchdog is not fed");
            // Never fed, never closed: the watchdog resets the machine.
            std::mem::forget(dog);
            return;
        }
        let update = self.clone();
        std::thread::spawn(move || loop {
            if !update.on_trial() {
                match dog.disarm() {
                    Ok(()) => say("oasis boot: the watchdog is disarmed"),
                    Err(e) => say(&format!("oasis boot: cannot disarm the watchdog: {e}")),
                }
                return;
            }
            if let Err(e) = dog.feed() {
                say(&format!("oasis boot: cannot feed the watchdog: {e}"));
            }
            std::thread::sleep(WATCHDOG_FEED);
        });
    }

    /// The trial boot's health check (see the module documentation); `Err` says what failed.
    pub fn health_check(&self, config: &Config) -> Result<(), String> {
        if self.hangs_its_trial {
            // The test's hang: this never returns, and the watchdog is not fed.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let deadline = Instant::now() + SERVE_TIMEOUT;
        let mut last = String::from("oasis serve does not answer on its admin socket");
        loop {
            let answering =
                matches!(oasis_appliance::admin::request(&self.data_dir, "GET", "/v1/machines"), Ok(Some(_)));
            match answering.then(|| rack_services(config)) {
                Some(Ok(())) => break,
                Some(Err(e)) => last = e,
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("{last}, {} s after oasis boot started", SERVE_TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let linked = TrialRecord::read(&self.data_dir).ok().flatten().map(|r| r.linked).unwrap_or_default();
        let deadline = Instant::now() + LINKS_TIMEOUT;
        loop {
            let back = heartbeats_since(&self.data_dir, self.booted_at);
            let missing: Vec<&String> = linked.iter().filter(|id| !back.contains(id)).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} of the {} machines linked before the update did not come back within {} s: {}",
                    missing.len(),
                    linked.len(),
                    LINKS_TIMEOUT.as_secs(),
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Ends the trial with the health check's `result`: commits the slot, or records why it
    /// failed and gives it up. Returns whether to reboot (into the slot before).
    pub fn finish_trial(&self, result: Result<(), String>) -> bool {
        match result {
            Ok(()) => match self.change_env(|env| env.commit(self.running)) {
                Ok(()) => {
                    *self.on_trial.lock().unwrap_or_else(|e| e.into_inner()) = false;
                    self.write_here();
                    say(&format!(
                        "oasis boot: slot {} (oasis {}) passed its health check: committed",
                        self.running, self.version
                    ));
                    false
                }
                // Not committed: GRUB's next boot tries it again or falls back, as armed.
                Err(e) => {
                    say(&format!(
                        "oasis boot: slot {} passed its health check but cannot be committed: {e:#}",
                        self.running
                    ));
                    false
                }
            },
            Err(reason) => {
                say(&format!(
                    "oasis boot: slot {} (oasis {}) FAILED its health check: {reason}",
                    self.running, self.version
                ));
                let verdict = TrialVerdict::HealthCheckFailed { reason };
                if let Err(e) = TrialRecord::record_verdict(&self.data_dir, verdict) {
                    say(&format!("oasis boot: {e}"));
                }
                let given_up = self.change_env(|env| env.abandon(self.running));
                if let Err(e) = given_up {
                    say(&format!("oasis boot: cannot give slot {} up in GRUB's block ({e:#}); GRUB falls back once its tries are spent", self.running));
                }
                say("oasis boot: rebooting into the slot before");
                true
            }
        }
    }

    /// While committed: writes and arms the appliance update `oasis update status` says is
    /// waiting, if any. Returns whether to reboot into it now; with `reboot_at` (`[update]
    /// appliance_reboot_at`) the reboot waits for that time ([`SelfUpdate::reboot_due`]).
    pub fn install_waiting(&self, reboot_at: Option<TimeOfDay>) -> bool {
        if self.on_trial() {
            return false;
        }
        let Ok(Some(body)) = operator::ask(&self.data_dir, &Action::UpdateStatus) else { return false };
        let Ok(status) = serde_json::from_slice::<UpdateStatus>(&body) else { return false };
        let Some(view) = status.appliance.filter(|v| v.state == ApplianceUpdateState::Waiting) else { return false };
        let other = self.running.other();
        say(&format!(
            "oasis boot: writing oasis {} (generation {}) to slot {other} while oasis serve keeps serving",
            view.version, view.sequence
        ));
        let image = install::UpdateImage {
            path: view.image.clone(),
            size: view.size,
            sha256: view.sha256.clone(),
            slot_bytes: view.slot_bytes,
            version: view.version.clone(),
        };
        let mut linked: Vec<String> = heartbeats_since(&self.data_dir, now().saturating_sub(LINKED_WITHIN_SECS));
        linked.sort();
        let written = self.with_esp(true, |grubenv| {
            let target = install::Target {
                running: self.running,
                running_version: self.version.clone(),
                device: self.other.clone(),
                grubenv: grubenv.to_path_buf(),
                data_dir: self.data_dir.clone(),
                linked: linked.clone(),
                pause_mid_arm: self.pauses_mid_arm,
            };
            Ok(install::install(&image, &target, now())?)
        });
        match written {
            Ok(slot) => {
                let when = self.schedule(reboot_at);
                say(&format!(
                    "oasis boot: slot {slot} written and read back; armed for {} trial boots; {} machine(s) linked must come back ({}); rebooting into oasis {} {when}",
                    install::TRIES,
                    linked.len(),
                    linked.join(", "),
                    view.version
                ));
                self.write_here();
                reboot_at.is_none()
            }
            Err(e) => {
                let reason = format!("slot {other} was not written: {e:#}");
                say(&format!("oasis boot: THE APPLIANCE UPDATE to oasis {} was not installed: {reason}", view.version));
                // Recorded as given up, so that it is not written again by itself.
                let record = TrialRecord {
                    format: slots::trial::FORMAT,
                    slot: other,
                    version: view.version,
                    from_version: self.version.clone(),
                    armed_at: now(),
                    tries: 0,
                    verdict: None,
                    linked,
                    fell_back: Some(reason),
                    reboot_at: None,
                };
                if let Err(e) = record.write(&self.data_dir) {
                    say(&format!("oasis boot: {e}"));
                }
                self.write_here();
                false
            }
        }
    }
}

impl SelfUpdate {
    /// Records when the armed update's reboot is (`at`, the next such time of day; none: now);
    /// says when, for the console.
    fn schedule(&self, at: Option<TimeOfDay>) -> String {
        let Some(at) = at else { return "now".into() };
        let reboot_at = at.next_after(now());
        let recorded = TrialRecord::read(&self.data_dir)
            .ok()
            .flatten()
            .map(|r| TrialRecord { reboot_at: Some(reboot_at), ..r }.write(&self.data_dir));
        if let Some(Err(e)) = recorded {
            say(&format!("oasis boot: {e}; the reboot is not scheduled, so it happens now"));
            return "now".into();
        }
        format!("at {at} ([update] appliance_reboot_at)")
    }
}

/// Adds one to the count of starts in `path` and returns it.
fn count_start(path: &Path) -> u32 {
    let starts = fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(0) + 1;
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(path, format!("{starts}\n"));
    starts
}

/// The ids of the machines whose last heartbeat is at or after `since` (Unix seconds).
fn heartbeats_since(data_dir: &Path, since: u64) -> Vec<String> {
    let Ok(Some(body)) = operator::ask(data_dir, &Action::Machines) else { return vec![] };
    let machines: Vec<MachineEntry> = serde_json::from_slice(&body).unwrap_or_default();
    machines
        .into_iter()
        .filter_map(|m| m.registration)
        .filter(|m| m.last_heartbeat.as_ref().is_some_and(|h| h.at >= since))
        .map(|m| m.record.id)
        .collect()
}

/// Whether `serve` listens for the rack: DHCP's port is bound, HTTP answers, the API accepts.
fn rack_services(config: &Config) -> Result<(), String> {
    if !udp_port_bound(67) {
        return Err("oasis serve does not listen for DHCP (UDP port 67)".into());
    }
    let http = SocketAddr::from((config.address, config.http_port));
    if !http_answers(http) {
        return Err(format!("oasis serve's HTTP boot server does not answer on {http}"));
    }
    let api = SocketAddr::from((config.address, config.api_port));
    if TcpStream::connect_timeout(&api, Duration::from_secs(3)).is_err() {
        return Err(format!("oasis serve's API does not accept connections on {api}"));
    }
    Ok(())
}

/// Whether an HTTP GET of `/metrics` at `addr` answers 200.
fn http_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", addr.ip());
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// Whether a UDP socket is bound to `port` (any address), from `/proc/net/udp`.
fn udp_port_bound(port: u16) -> bool {
    let table = fs::read_to_string("/proc/net/udp").unwrap_or_default();
    udp_table_has_port(&table, port)
}

fn udp_table_has_port(table: &str, port: u16) -> bool {
    let wanted = format!("{port:04X}");
    table.lines().skip(1).any(|line| {
        let local = line.split_whitespace().nth(1).unwrap_or("");
        local.rsplit_once(':').is_some_and(|(_, p)| p == wanted)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_udp_port_is_found_in_the_kernel_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
                     \x20 12: 00000000:0043 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1234 2 0 0\n\
                     \x20 13: 0100000A:0045 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1235 2 0 0\n";
        assert!(udp_table_has_port(table, 67));
        assert!(udp_table_has_port(table, 69));
        assert!(!udp_table_has_port(table, 68));
        assert!(!udp_table_has_port("  sl  local_address\n", 67), "the header is not a socket");
    }

    fn on_slot_a(data_dir: &Path) -> SelfUpdate {
        SelfUpdate {
            esp: PathBuf::from("/nonexistent"),
            other: PathBuf::from("/nonexistent"),
            running: Slot::A,
            version: "1.0.0".into(),
            slot_bytes: 1 << 30,
            data_dir: data_dir.to_path_buf(),
            booted_at: 0,
            on_trial: Mutex::new(false),
            hangs_its_trial: false,
            pauses_mid_arm: false,
        }
    }

    fn armed(reboot_at: Option<u64>) -> TrialRecord {
        TrialRecord {
            format: slots::trial::FORMAT,
            slot: Slot::B,
            version: "2.0.0".into(),
            from_version: "1.0.0".into(),
            armed_at: 100,
            tries: install::TRIES,
            verdict: None,
            linked: vec!["m1".into()],
            fell_back: None,
            reboot_at,
        }
    }

    #[test]
    fn an_armed_update_reboots_now_or_at_its_time_and_a_given_up_one_never() {
        let data = tempfile::tempdir().unwrap();
        let update = on_slot_a(data.path());
        assert!(!update.reboot_due(1000), "nothing armed");
        armed(None).write(data.path()).unwrap();
        assert!(update.reboot_due(0), "armed to reboot at once");
        let state = oasis_core::update::appliance_update_state("2.0.0", &update.here());
        assert_eq!(state, ApplianceUpdateState::Armed { reboot_at: None });
        armed(Some(5000)).write(data.path()).unwrap();
        assert!(!update.reboot_due(4999) && update.reboot_due(5000));
        assert_eq!(update.here().reboot_at, Some(5000));
        TrialRecord { fell_back: Some("no".into()), ..armed(None) }.write(data.path()).unwrap();
        assert!(!update.reboot_due(9999), "a version given up is not booted");
        armed(None).write(data.path()).unwrap();
        *update.on_trial.lock().unwrap() = true;
        assert!(!update.reboot_due(9999), "a trial boot runs the armed slot already");
    }

    #[test]
    fn starts_are_counted_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/boot-starts");
        assert_eq!((count_start(&path), count_start(&path), count_start(&path)), (1, 2, 3));
    }

    #[test]
    fn a_real_socket_shows_in_the_table() {
        let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        assert!(udp_port_bound(port));
        drop(socket);
    }
}

//! The appliance as a virtual machine booting its own disk image (`oasis image build appliance`),
//! with an operator at its serial console (expect-style: wait for a prompt, type the answer) and
//! USB sticks plugged in at boot or later through QEMU's monitor.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{tail, Firmware, Machine, MachineSpec, Netns};

/// The appliance image `scripts/test` builds: `$OASIS_ASSETS/appliance/appliance.img`.
pub fn appliance_image() -> PathBuf {
    let image = crate::assets::assets_dir().join("appliance/appliance.img");
    assert!(
        image.is_file(),
        "{} is missing: build it with `oasis image build appliance --node DIR/node --ipxe DIR/ipxe --out {}` (scripts/test does)",
        image.display(),
        image.display()
    );
    image
}

/// Builds an appliance image at `out` with `oasis image build appliance` from the test assets,
/// trusting `trusted_key` (a public key) if given, with `extra` arguments (`--version V`, ...).
pub fn build_image(out: &Path, trusted_key: Option<&Path>, extra: &[&str]) {
    let assets = crate::assets().unwrap_or_else(|e| panic!("{e}"));
    let cache = std::env::var("OASIS_DEBIAN_CACHE").unwrap_or_else(|_| "/var/cache/oasis/debian".into());
    let mut cmd = std::process::Command::new(crate::oasis_bin());
    cmd.args(["image", "build", "appliance", "--node"]).arg(&assets.node).arg("--ipxe").arg(&assets.ipxe);
    if let Some(key) = trusted_key {
        cmd.arg("--trusted-key").arg(key);
    }
    let built = cmd.args(["--cache", &cache, "--out"]).arg(out).args(extra).output().unwrap();
    assert!(built.status.success(), "building the image {}: {}", out.display(), String::from_utf8_lossy(&built.stderr));
}

/// Makes the appliance VM's disk: a sparse copy of `image`, `gib` GiB large (the data partition
/// fills what the image leaves).
pub fn appliance_disk(image: &Path, disk: &Path, gib: u64) {
    let status = std::process::Command::new("cp").arg("--sparse=always").arg(image).arg(disk).status().unwrap();
    assert!(status.success(), "copying {}", image.display());
    std::fs::OpenOptions::new().write(true).open(disk).unwrap().set_len(gib << 30).unwrap();
}

/// What the appliance VM gets.
#[derive(Debug, Clone)]
pub struct ApplianceVmSpec {
    /// Its disk (see [`appliance_disk`]), kept across power cycles.
    pub disk: PathBuf,
    /// A USB stick plugged in at power-on.
    pub stick: Option<PathBuf>,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// The rack NIC's MAC.
    pub mac: String,
    /// A reboot by the guest restarts it (true), or ends QEMU (false: the test powers it on
    /// again).
    pub reboots: bool,
}

/// A running appliance VM.
#[derive(Debug)]
pub struct ApplianceVm {
    pub machine: Machine,
    serial: UnixStream,
    monitor: PathBuf,
    /// How much of the serial log the waits have consumed.
    seen: usize,
    sticks: usize,
}

impl ApplianceVm {
    /// Powers the appliance on in `ns`, its NIC on `tap`; files go to `work`.
    pub fn start(ns: &Netns, tap: &str, spec: &ApplianceVmSpec, work: &Path, name: &str) -> ApplianceVm {
        let log = work.join(format!("{name}.log"));
        let socket = work.join(format!("{name}.serial"));
        let monitor = work.join(format!("{name}.monitor"));
        let mut m = MachineSpec::new(ns, tap, &spec.mac, spec.firmware, log);
        m.memory_mb = 1024;
        m.netboot = false;
        m.reboots = spec.reboots;
        m.serial_socket = Some(socket.clone());
        m.extra_args = vec![
            "-drive".into(),
            format!("file={},if=none,id=disk,format=raw", spec.disk.display()),
            "-device".into(),
            "virtio-blk-pci,drive=disk,bootindex=0".into(),
            "-device".into(),
            "qemu-xhci,id=xhci".into(),
            // The watchdog a trial boot arms (its expiry resets the VM).
            "-device".into(),
            "i6300esb".into(),
        ];
        m.extra_args.extend(crate::qemu::monitor_args(&monitor));
        if let Some(stick) = &spec.stick {
            m.extra_args.extend([
                "-drive".into(),
                format!("file={},if=none,id=stick0,format=raw", stick.display()),
                "-device".into(),
                "usb-storage,bus=xhci.0,drive=stick0,id=usb0".into(),
            ]);
        }
        let machine = Machine::start(m).unwrap();
        let serial = crate::qemu::connect(&socket, Duration::from_secs(10));
        // QEMU also sends the console to the socket; a client that does not read it fills the
        // socket's buffer and stalls the guest's serial port. The log file keeps it all.
        let mut drain = serial.try_clone().unwrap();
        std::thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
        ApplianceVm { machine, serial, monitor, seen: 0, sticks: 1 }
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        self.machine.serial()
    }

    /// Waits for `marker` after what earlier waits consumed; consumes up to its end and returns
    /// the text from the previous position to there.
    pub fn expect(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.machine.serial();
            if let Some(i) = log.get(self.seen..).and_then(|rest| rest.find(marker)) {
                let end = self.seen + i + marker.len();
                let text = log[self.seen..end].to_string();
                self.seen = end;
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "`{marker}` did not appear on the appliance's console within {timeout:?}; console:\n{}",
                    tail(log.get(self.seen.saturating_sub(2000)..).unwrap_or(&log), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for the first of `markers` to appear after what earlier waits consumed; consumes up to
    /// its end and returns which one it was (its index) and the text up to there.
    pub fn expect_any(&mut self, markers: &[&str], timeout: Duration) -> (usize, String) {
        self.wait_any(markers, timeout).unwrap_or_else(|| {
            let log = self.machine.serial();
            panic!(
                "none of {markers:?} appeared on the appliance's console within {timeout:?}; console:\n{}",
                tail(log.get(self.seen.saturating_sub(2000)..).unwrap_or(&log), 60)
            )
        })
    }

    /// [`ApplianceVm::expect_any`], or `None` once `timeout` has passed without any of them.
    pub fn wait_any(&mut self, markers: &[&str], timeout: Duration) -> Option<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.machine.serial();
            let rest = log.get(self.seen..).unwrap_or("");
            let first = markers.iter().enumerate().filter_map(|(n, m)| rest.find(m).map(|i| (i + m.len(), n))).min();
            if let Some((end, n)) = first {
                let text = rest[..end].to_string();
                self.seen += end;
                return Some((n, text));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `prompt` (consumed), then types `answer` and Enter.
    pub fn answer(&mut self, prompt: &str, answer: &str, timeout: Duration) {
        self.expect(prompt, timeout);
        self.type_line(answer);
    }

    /// Types `line` and Enter on the serial console now (for a menu that is already waiting: its
    /// prompt may have been consumed by an earlier wait).
    pub fn type_line(&mut self, line: &str) {
        self.serial.write_all(format!("{line}\r").as_bytes()).unwrap();
        self.serial.flush().unwrap();
    }

    /// Runs a QEMU monitor command and returns its output.
    pub fn monitor(&self, command: &str) -> String {
        crate::qemu::monitor(&self.monitor, command)
    }

    /// Plugs a USB stick in; returns its id for [`ApplianceVm::unplug`].
    pub fn plug(&mut self, stick: &Path) -> String {
        let n = self.sticks;
        self.sticks += 1;
        let out = self.monitor(&format!("drive_add 0 if=none,id=stick{n},file={},format=raw", stick.display()));
        assert!(!out.contains("rror"), "drive_add: {out}");
        let out = self.monitor(&format!("device_add usb-storage,bus=xhci.0,drive=stick{n},id=usb{n}"));
        assert!(!out.contains("rror"), "device_add: {out}");
        format!("usb{n}")
    }

    /// Pulls a stick out.
    pub fn unplug(&mut self, id: &str) {
        let out = self.monitor(&format!("device_del {id}"));
        assert!(!out.contains("rror"), "device_del: {out}");
    }
}

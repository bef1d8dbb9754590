//! QEMU machines that network-boot with real firmware, under TCG, inside a test's namespace.
//!
//! * [`Firmware::Bios`]: SeaBIOS; the virtio NIC's option ROM is QEMU's iPXE build (package
//!   `ipxe-qemu`), so the PXE client is already iPXE and asks DHCP with user class `iPXE` at once.
//! * [`Firmware::Uefi`]: OVMF (`OVMF_CODE_4M.fd` read-only, a per-machine copy of `OVMF_VARS_4M.fd`).
//!   The NIC gets `romfile=` (no option ROM), so OVMF's own virtio-net driver and PXE client run, as on
//!   real UEFI hardware: DHCP with client arch 7, TFTP of a UEFI binary.
//!
//! The serial console goes to a file. Under BIOS, SeaBIOS's serial console (`etc/sercon-port`) mirrors
//! the text screen there too, so the log shows SeaBIOS's and iPXE's messages before the kernel's;
//! OVMF writes its console to serial by itself. [`Machine::wait_for_serial`] polls it. `-no-reboot` makes a
//! guest's reboot or poweroff end QEMU, unless [`MachineSpec::reboots`]: then a guest's reboot resets
//! the machine, which boots again as at power-on (the network first when it netboots). A kexec never
//! reaches QEMU either way. Dropping a [`Machine`] kills QEMU.

use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::{command_line, tail, HarnessError, Result};

/// OVMF's code, mapped read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's variable store template; each machine gets a writable copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Which firmware the machine boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE NIC ROM.
    Bios,
    /// OVMF with its own PXE client (no NIC ROM).
    Uefi,
}

/// What to start.
#[derive(Debug)]
pub struct MachineSpec<'a> {
    /// The namespace QEMU runs in (where the tap is).
    pub netns: &'a Netns,
    /// The tap device in that namespace.
    pub tap: String,
    /// The NIC's MAC address, `52:54:00:xx:xx:xx`.
    pub mac: String,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// Guest memory in MiB (512 is plenty for the test payload).
    pub memory_mb: u32,
    /// Where the serial console is written.
    pub serial_log: PathBuf,
    /// More QEMU arguments.
    pub extra_args: Vec<String>,
    /// The NIC's QEMU device model: `virtio-net-pci` (default), `e1000`, `e1000e`, …
    pub nic_model: String,
    /// Boot this kernel directly (`-kernel/-initrd/-append`) instead of from the network.
    pub direct_kernel: Option<DirectKernel>,
    /// Boot from the network (true, the default) or from the disks in `extra_args` (the NIC then
    /// has no boot ROM).
    pub netboot: bool,
    /// A guest's reboot resets the machine (false, the default: it ends QEMU, `-no-reboot`).
    pub reboots: bool,
    /// Also accept input for the serial console on this Unix socket (the log still goes to
    /// `serial_log`): see [`SerialPort`].
    pub serial_socket: Option<PathBuf>,
}

/// A kernel QEMU loads itself, with no firmware network boot.
#[derive(Debug, Clone)]
pub struct DirectKernel {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// The kernel command line.
    pub append: String,
}

impl<'a> MachineSpec<'a> {
    /// A spec with 512 MiB and no extra arguments.
    pub fn new(netns: &'a Netns, tap: &str, mac: &str, firmware: Firmware, serial_log: PathBuf) -> MachineSpec<'a> {
        MachineSpec {
            netns,
            tap: tap.to_string(),
            mac: mac.to_string(),
            firmware,
            memory_mb: 512,
            serial_log,
            extra_args: Vec::new(),
            nic_model: "virtio-net-pci".into(),
            direct_kernel: None,
            netboot: true,
            reboots: false,
            serial_socket: None,
        }
    }
}

/// A running QEMU machine.
#[derive(Debug)]
pub struct Machine {
    child: Child,
    status: Option<ExitStatus>,
    serial_log: PathBuf,
    stderr_log: PathBuf,
    started: Instant,
    _scratch: tempfile::TempDir,
}

impl Machine {
    /// Starts QEMU (`-accel tcg -cpu max`, never KVM) network-booting from `spec.tap`.
    pub fn start(spec: MachineSpec<'_>) -> Result<Machine> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| HarnessError::Io { path, source }
        };
        // An empty log now, so a reader never sees an earlier machine's output.
        std::fs::write(&spec.serial_log, b"").map_err(io(&spec.serial_log))?;
        let stderr_log = spec.serial_log.with_extension("qemu-stderr");
        let stderr = std::fs::File::create(&stderr_log).map_err(io(&stderr_log))?;

        let mut cmd = spec.netns.command("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-cpu", "max", "-m", &spec.memory_mb.to_string()]);
        cmd.args(["-display", "none", "-monitor", "none", "-nic", "none"]);
        if !spec.reboots {
            cmd.arg("-no-reboot");
        }
        cmd.args(["-boot", if spec.netboot { "n" } else { "c" }]);
        match &spec.serial_socket {
            None => {
                cmd.arg("-serial").arg(format!("file:{}", spec.serial_log.display()));
            }
            Some(socket) => {
                cmd.arg("-chardev").arg(format!(
                    "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                    socket.display(),
                    spec.serial_log.display()
                ));
                cmd.args(["-serial", "chardev:serial0"]);
            }
        }
        cmd.args(["-netdev", &format!("tap,id=n0,ifname={},script=no,downscript=no", spec.tap)]);
        let scratch = tempfile::Builder::new().prefix("oasis-qemu-").tempdir().map_err(io(Path::new("/tmp")))?;
        let nic = match spec.firmware {
            Firmware::Bios => {
                // SeaBIOS reads the serial console's I/O port (0x3f8, COM1) as a little-endian integer.
                let sercon = scratch.path().join("sercon-port");
                std::fs::write(&sercon, 0x3f8u16.to_le_bytes()).map_err(io(&sercon))?;
                cmd.args(["-fw_cfg", &format!("name=etc/sercon-port,file={}", sercon.display())]);
                if spec.netboot {
                    format!("{},netdev=n0,mac={},bootindex=1", spec.nic_model, spec.mac)
                } else {
                    format!("{},netdev=n0,mac={},romfile=", spec.nic_model, spec.mac)
                }
            }
            Firmware::Uefi => {
                let dir = &scratch;
                let copy = dir.path().join("OVMF_VARS_4M.fd");
                std::fs::copy(OVMF_VARS, &copy).map_err(io(Path::new(OVMF_VARS)))?;
                cmd.args(["-drive", &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}")]);
                cmd.args(["-drive", &format!("if=pflash,format=raw,unit=1,file={}", copy.display())]);
                let boot = if spec.netboot { ",bootindex=1" } else { "" };
                format!("{},netdev=n0,mac={},romfile={boot}", spec.nic_model, spec.mac)
            }
        };
        cmd.args(["-device", &nic]);
        if let Some(direct) = &spec.direct_kernel {
            cmd.arg("-kernel").arg(&direct.kernel).arg("-initrd").arg(&direct.initrd);
            cmd.args(["-append", &direct.append]);
        }
        cmd.args(&spec.extra_args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn { command: command_line(&cmd), source })?;
        Ok(Machine {
            child,
            status: None,
            serial_log: spec.serial_log,
            stderr_log,
            started: Instant::now(),
            _scratch: scratch,
        })
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far.
    pub fn serial(&self) -> String {
        let bytes = std::fs::read(&self.serial_log).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The serial console and QEMU's own stderr, for error messages.
    fn tail(&self) -> String {
        let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let mut out = tail(&self.serial(), 40);
        if !stderr.trim().is_empty() {
            out.push_str("\n--- qemu stderr ---\n");
            out.push_str(&tail(&stderr, 20));
        }
        out
    }

    /// How QEMU exited, if it has (the guest powered off, or QEMU died).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.poll_exit()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits until the serial console contains `marker` and returns the console log so far (which may
    /// end in the middle of a line the guest is still writing).
    pub fn wait_for_serial(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.serial();
            if log.contains(marker) {
                return Ok(log);
            }
            if let Some(status) = self.poll_exit() {
                // One last read: the guest may have written the marker just before exiting.
                let log = self.serial();
                if log.contains(marker) {
                    return Ok(log);
                }
                return Err(HarnessError::Exited {
                    what: format!("QEMU (pid {})", self.child.id()),
                    status,
                    awaited: format!("`{marker}` appeared on the serial console"),
                    tail: self.tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("`{marker}` on the serial console"),
                    timeout,
                    tail: self.tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for QEMU to exit (the guest powered off or rebooted) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout { what: "QEMU exiting".into(), timeout, tail: self.tail() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

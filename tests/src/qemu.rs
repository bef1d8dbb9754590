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

use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::{command_line, io_error, tail, HarnessError, Result};

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

    /// QEMU's arguments for this machine (after `qemu-system-x86_64`), with its files (SeaBIOS's
    /// console port, OVMF's variables) in `scratch`, which must outlive the machine. The serial
    /// console is appended to `serial_log`, so a machine started again with the same arguments
    /// (a power cycle through a simulated BMC) adds its boot to the earlier ones.
    pub fn qemu_args(&self, scratch: &Path) -> Result<Vec<String>> {
        let mut args: Vec<String> = ["-accel", "tcg", "-cpu", "max", "-m"].map(String::from).to_vec();
        args.push(self.memory_mb.to_string());
        args.extend(["-display", "none", "-monitor", "none", "-nic", "none"].map(String::from));
        if !self.reboots {
            args.push("-no-reboot".into());
        }
        args.extend(["-boot".into(), if self.netboot { "n" } else { "c" }.into()]);
        let log = self.serial_log.display();
        match &self.serial_socket {
            None => args.extend(["-chardev".into(), format!("file,id=serial0,path={log},append=on")]),
            Some(socket) => args.extend([
                "-chardev".into(),
                format!("socket,id=serial0,path={},server=on,wait=off,logfile={log},logappend=on", socket.display()),
            ]),
        }
        args.extend(["-serial".into(), "chardev:serial0".into()]);
        args.extend(["-netdev".into(), format!("tap,id=n0,ifname={},script=no,downscript=no", self.tap)]);
        let nic = match self.firmware {
            Firmware::Bios => {
                // SeaBIOS reads the serial console's I/O port (0x3f8, COM1) as a little-endian integer.
                let sercon = scratch.join("sercon-port");
                std::fs::write(&sercon, 0x3f8u16.to_le_bytes()).map_err(io_error(&sercon))?;
                args.extend(["-fw_cfg".into(), format!("name=etc/sercon-port,file={}", sercon.display())]);
                if self.netboot {
                    format!("{},netdev=n0,mac={},bootindex=1", self.nic_model, self.mac)
                } else {
                    format!("{},netdev=n0,mac={},romfile=", self.nic_model, self.mac)
                }
            }
            Firmware::Uefi => {
                let copy = scratch.join("OVMF_VARS_4M.fd");
                std::fs::copy(OVMF_VARS, &copy).map_err(io_error(Path::new(OVMF_VARS)))?;
                args.extend(["-drive".into(), format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}")]);
                args.extend(["-drive".into(), format!("if=pflash,format=raw,unit=1,file={}", copy.display())]);
                let boot = if self.netboot { ",bootindex=1" } else { "" };
                format!("{},netdev=n0,mac={},romfile={boot}", self.nic_model, self.mac)
            }
        };
        args.extend(["-device".into(), nic]);
        if let Some(direct) = &self.direct_kernel {
            args.extend(["-kernel".into(), direct.kernel.display().to_string()]);
            args.extend(["-initrd".into(), direct.initrd.display().to_string()]);
            args.extend(["-append".into(), direct.append.clone()]);
        }
        args.extend(self.extra_args.iter().cloned());
        Ok(args)
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
        // An empty log now, so a reader never sees an earlier machine's output.
        std::fs::write(&spec.serial_log, b"").map_err(io_error(&spec.serial_log))?;
        let stderr_log = spec.serial_log.with_extension("qemu-stderr");
        let stderr = std::fs::File::create(&stderr_log).map_err(io_error(&stderr_log))?;
        let scratch = tempfile::Builder::new().prefix("oasis-qemu-").tempdir().map_err(io_error(Path::new("/tmp")))?;
        let mut cmd = spec.netns.command("qemu-system-x86_64");
        cmd.args(spec.qemu_args(scratch.path())?);
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

/// Connects to a Unix socket QEMU serves (a serial port, a monitor), waiting up to `timeout` for
/// QEMU to create it.
pub fn connect(path: &Path, timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The arguments of a human monitor on Unix socket `path` (see [`monitor`]).
pub fn monitor_args(path: &Path) -> [String; 4] {
    [
        "-chardev".into(),
        format!("socket,id=mon,path={},server=on,wait=off", path.display()),
        "-mon".into(),
        "chardev=mon,mode=readline".into(),
    ]
}

/// Runs a command on the QEMU human monitor at Unix socket `path` and returns its output.
pub fn monitor(path: &Path, command: &str) -> String {
    let mut s = connect(path, Duration::from_secs(5));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let read_prompt = |reader: &mut BufReader<UnixStream>| {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while !out.ends_with(b"(qemu) ") {
            match reader.read(&mut byte) {
                Ok(1) => out.push(byte[0]),
                _ => break,
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    read_prompt(&mut reader);
    s.write_all(format!("{command}\n").as_bytes()).unwrap();
    read_prompt(&mut reader)
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

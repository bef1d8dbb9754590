//! A simulated BMC: OpenIPMI's `ipmi_sim` (Debian package `openipmi`) on loopback, answering IPMI
//! 2.0 / RMCP+ for one user, with a chassis whose power is a real QEMU process.
//!
//! ipmi_sim's `startcmd` mode starts and kills a VM but refuses boot options (Set System Boot
//! Options answers 0xCC without a `chassis_control` program, lanserv/bmc_chassis.c), so the
//! chassis here is `chassis_control` with `ipmi_sim/chassis.sh`: power on starts QEMU (with a
//! simulated BMC device, `ipmi-bmc-extern` over a socket back to ipmi_sim, and `-boot once=n` when
//! the boot flags said PXE), power off ends it, status is whether it runs. ipmi_sim's power cycle
//! is off, one second, on: a new QEMU process.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{io_error, tail, HarnessError, Result};

const CHASSIS_SCRIPT: &str = include_str!("ipmi_sim/chassis.sh");

/// A running ipmi_sim and the QEMU machine it powers.
#[derive(Debug)]
pub struct IpmiSim {
    dir: tempfile::TempDir,
    child: Child,
    /// Where its LAN channel answers.
    lan: SocketAddrV4,
    vm_port: u16,
}

/// A way a real chassis misbehaves, simulated on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Power on fails (a dead power supply): ipmi_sim answers Chassis Control with "unspecified
    /// error" and no process starts.
    RefusePowerOn,
    /// The boot device is accepted and dropped, so it reads back as before (the one-time network
    /// boot that BMCs are known to ignore).
    IgnoreBootDevice,
}

/// The QEMU process that is the simulated machine's power.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMachine {
    pub pid: u32,
    /// Its command line, one argument each.
    pub args: Vec<String>,
}

/// A free UDP port on loopback, for a LAN channel.
fn free_udp_port() -> std::io::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free TCP port on loopback, for the VM's connection.
fn free_tcp_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// ipmi_sim's configuration (ipmi_lan(5)): one LAN channel on loopback, one user of `user` with
/// administrator privilege, the chassis program, and the VM's serial interface.
fn lan_conf(dir: &Path, lan: SocketAddrV4, vm_port: u16, user: &str, password: &str) -> String {
    let dir = dir.display();
    let (address, port) = (lan.ip(), lan.port());
    format!(
        r#"name "oasis-sim"
set_working_mc 0x20
  startlan 1
    addr {address} {port}
    priv_limit admin
    allowed_auths_callback md5
    allowed_auths_user md5
    allowed_auths_operator md5
    allowed_auths_admin md5
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{dir}/chassis.sh {dir}"
  serial 15 127.0.0.1 {vm_port} codec VM
  user 2 true "{user}" "{password}" admin 10 md5
"#
    )
}

/// The BMC itself, as ipmi_sim_cmd(5) adds one.
const EMU: &str =
    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n";

/// Whether process `pid`'s network namespace (`/proc/PID/net/{udp,tcp}`) has a socket bound to
/// `address`.
fn bound(pid: u32, table: &str, address: SocketAddrV4) -> bool {
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(address.ip().octets()), address.port());
    std::fs::read_to_string(format!("/proc/{pid}/net/{table}"))
        .map(|text| text.lines().any(|line| line.split_whitespace().nth(1) == Some(local.as_str())))
        .unwrap_or(false)
}

impl IpmiSim {
    /// Starts ipmi_sim for `user` and `password`; power on will run `qemu-system-x86_64` with
    /// `machine` (plus the BMC device and `-pidfile … -daemonize`, so no `-nographic`). The
    /// machine starts off.
    pub fn start(user: &str, password: &str, machine: &[&str]) -> Result<IpmiSim> {
        IpmiSim::start_in(None, user, password, machine)
    }

    /// [`IpmiSim::start`] inside network namespace `ns` (its loopback), where an `oasis serve`
    /// in that namespace reaches it.
    pub fn start_in(ns: Option<&crate::Netns>, user: &str, password: &str, machine: &[&str]) -> Result<IpmiSim> {
        let port = free_udp_port().map_err(io_error(Path::new("127.0.0.1")))?;
        IpmiSim::start_on(ns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), user, password, machine)
    }

    /// [`IpmiSim::start_in`] with its LAN channel on `lan` (an address of the namespace: a BMC
    /// of its own address on port 623, as a rack has them).
    pub fn start_on(
        ns: Option<&crate::Netns>,
        lan: SocketAddrV4,
        user: &str,
        password: &str,
        machine: &[&str],
    ) -> Result<IpmiSim> {
        let dir = tempfile::Builder::new().prefix("oasis-ipmi-sim-").tempdir().map_err(io_error(Path::new("/tmp")))?;
        let path = dir.path();
        let vm_port = free_tcp_port().map_err(io_error(Path::new("127.0.0.1")))?;
        let script = path.join("chassis.sh");
        std::fs::write(&script, CHASSIS_SCRIPT).map_err(io_error(&script))?;
        let files = [
            ("lan.conf", lan_conf(path, lan, vm_port, user, password)),
            ("bmc.emu", EMU.to_string()),
            ("machine.args", machine.join("\n") + "\n"),
            ("vmport", vm_port.to_string()),
        ];
        for (name, text) in files {
            std::fs::write(path.join(name), text).map_err(io_error(&path.join(name)))?;
        }
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_error(&script))?;
        let state = path.join("state");
        std::fs::create_dir(&state).map_err(io_error(&state))?;
        let log = std::fs::File::create(path.join("ipmi_sim.log")).map_err(io_error(&path.join("ipmi_sim.log")))?;
        let mut command = ns.map_or_else(|| Command::new("ipmi_sim"), |ns| ns.command("ipmi_sim"));
        command
            .arg("-c")
            .arg(path.join("lan.conf"))
            .arg("-f")
            .arg(path.join("bmc.emu"))
            .arg("-s")
            .arg(&state)
            .arg("-n");
        let stderr = log.try_clone().map_err(io_error(&path.join("ipmi_sim.log")))?;
        let child = command.stdin(Stdio::null()).stdout(log).stderr(stderr).spawn().map_err(|source| {
            HarnessError::Spawn { command: format!("{command:?} (Debian package openipmi)"), source }
        })?;
        let mut sim = IpmiSim { dir, child, lan, vm_port };
        sim.wait_listening()?;
        Ok(sim)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        // `ip netns exec` runs ipmi_sim in its own process: its pid sees its namespace.
        let pid = self.child.id();
        let vm = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.vm_port);
        while !(bound(pid, "udp", self.lan) && bound(pid, "tcp", vm)) {
            if let Some(status) = self.child.try_wait().map_err(io_error(self.dir.path()))? {
                let what = "ipmi_sim".to_string();
                return Err(HarnessError::Exited {
                    what,
                    status,
                    awaited: "listening".into(),
                    tail: tail(&self.log(), 20),
                });
            }
            if start.elapsed() > timeout {
                let what = format!("ipmi_sim listening on {}", self.lan);
                return Err(HarnessError::Timeout { what, timeout, tail: tail(&self.log(), 20) });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Whether the machine's simulated BMC device (`ipmi-bmc-extern`) is connected to ipmi_sim:
    /// ipmi_sim's `/proc/PID/net/tcp` holds an established connection to the VM port.
    pub fn machine_connected(&self) -> bool {
        let local = format!("0100007F:{:04X}", self.vm_port);
        std::fs::read_to_string(format!("/proc/{}/net/tcp", self.child.id())).is_ok_and(|text| {
            text.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01")
            })
        })
    }

    /// Where the BMC answers: `ADDRESS:PORT`.
    pub fn address(&self) -> String {
        self.lan.to_string()
    }

    /// Sets what the BMC says of its LAN channel 1 (a static address and a MAC), as a rack's
    /// BMCs are configured, with Debian's `ipmitool` over the LAN (run in `ns`, as ipmi_sim).
    pub fn configure_lan(&self, ns: Option<&crate::Netns>, user: &str, password: &str, mac: &str) -> Result<()> {
        let address = self.lan.ip().to_string();
        for set in [&["ipsrc", "static"][..], &["ipaddr", &address], &["macaddr", mac]] {
            self.ipmitool(ns, user, password, &[&["lan", "set", "1"][..], set].concat())?;
        }
        Ok(())
    }

    /// `ipmitool ARGS` against this BMC over the LAN as `user` (run in `ns`, as ipmi_sim): its
    /// output.
    pub fn ipmitool(&self, ns: Option<&crate::Netns>, user: &str, password: &str, args: &[&str]) -> Result<String> {
        let (address, port) = (self.lan.ip().to_string(), self.lan.port().to_string());
        let mut command = ns.map_or_else(|| Command::new("ipmitool"), |ns| ns.command("ipmitool"));
        command.args(["-I", "lanplus", "-C", "3", "-H", &address, "-p", &port, "-U", user, "-P", password]);
        command.args(args);
        let out = command
            .output()
            .map_err(|source| HarnessError::Spawn { command: "ipmitool (Debian package ipmitool)".into(), source })?;
        if !out.status.success() {
            return Err(HarnessError::Exited {
                what: format!("ipmitool {}", args.join(" ")),
                status: out.status,
                awaited: "success".into(),
                tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// ipmi_sim's own output.
    pub fn log(&self) -> String {
        self.read("ipmi_sim.log")
    }

    /// Every call ipmi_sim made to the chassis program (`get power`, `set boot pxe`, …), and its
    /// events (`event: this boot is from the network, once`).
    pub fn chassis_log(&self) -> String {
        self.read("chassis.log")
    }

    /// The boot device the chassis holds for the next power on (`pxe`, `none`, …; `default` if
    /// never set).
    pub fn boot_device(&self) -> String {
        let device = self.read("boot");
        if device.trim().is_empty() {
            "default".into()
        } else {
            device.trim().to_string()
        }
    }

    /// Makes the chassis misbehave from its next call on (`None`: behave again).
    pub fn set_fault(&self, fault: Option<SimFault>) -> Result<()> {
        let path = self.dir.path().join("fault");
        let text = match fault {
            None => "",
            Some(SimFault::RefusePowerOn) => "refuse-power-on",
            Some(SimFault::IgnoreBootDevice) => "ignore-boot-device",
        };
        std::fs::write(&path, text).map_err(io_error(&path))
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.path().join("qemu.pid")
    }

    /// The machine's QEMU process if it runs (the same test as the chassis script's).
    pub fn machine(&self) -> Option<SimMachine> {
        let pid: u32 = self.read("qemu.pid").trim().parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let zombie = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'));
        let ours = args.iter().any(|a| Path::new(a) == self.pidfile());
        (ours && !zombie).then_some(SimMachine { pid, args })
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(machine) = self.machine() {
            // SAFETY: kill(2) with a pid just checked to be this simulator's QEMU; no memory involved.
            unsafe { libc::kill(machine.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

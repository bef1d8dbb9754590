//! Network namespaces that clean up after themselves, for every crate's tests.
//!
//! [`Netns::create`] makes a namespace with a unique name (prefix, process id, counter), so tests
//! running in parallel, or in several worktrees at once, never collide. Dropping it, also while a
//! test panics, kills every process still running in it (the ones started through [`Netns::spawn`]
//! first, then any other `ip netns pids` reports) and deletes it, which removes its bridges, taps and
//! veth ends with it (a veth pair goes as soon as either end's namespace does).
//!
//! Needs root and `ip` (iproute2).

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// What can go wrong making or using a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started.
    #[error("could not run `{command}`; is iproute2 installed and are we root?")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, NetnsError>;

/// Runs `cmd` to completion; errors carry the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let command = command_line(cmd);
    let out = cmd.output().map_err(|source| NetnsError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line of `cmd`, for messages.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl Netns {
    /// Creates a namespace named `PREFIX-PID-N` with `lo` up.
    pub fn create(name_prefix: &str) -> Result<Netns> {
        loop {
            let name = format!("{name_prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
            if Netns::exists(&name)? {
                continue; // left over from an earlier process with our pid
            }
            run(Command::new("ip").args(["netns", "add", &name]))?;
            let ns = Netns { name, children: Mutex::new(Vec::new()) };
            ns.ip(&["link", "set", "lo", "up"])?;
            return Ok(ns);
        }
    }

    /// Whether a namespace of this name exists (`ip netns list`).
    pub fn exists(name: &str) -> Result<bool> {
        let list = run(Command::new("ip").args(["netns", "list"]))?;
        Ok(list.lines().any(|l| l.split_whitespace().next() == Some(name)))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().expect("exec needs a program");
        run(self.command(program).args(rest))
    }

    /// Runs `f` on a new thread that has entered this namespace, so the sockets, tun devices and
    /// child processes it makes live there, and returns what it returns (a panic in `f` is
    /// re-raised here).
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn_inside(f).join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Starts `f` on a new thread that has entered this namespace and returns at once; the
    /// thread's sockets, tun devices and child processes live in the namespace, and so do the
    /// threads it starts. Join it before the namespace is dropped.
    pub fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        use std::os::fd::AsRawFd;
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) with a descriptor that stays open for the call; it changes only
            // this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path}: {} (this needs root)", std::io::Error::last_os_error());
            f()
        })
    }

    /// Runs `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Starts `cmd` (made with [`Netns::command`]) in the background; it is killed when the namespace
    /// is dropped. Returns its process id.
    pub fn spawn(&self, mut cmd: Command) -> Result<u32> {
        let child = cmd.spawn().map_err(|source| NetnsError::Spawn { command: command_line(&cmd), source })?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|e| e.into_inner()).push(child);
        Ok(pid)
    }

    /// Adds a bridge, with an address in CIDR form (`10.0.0.1/24`) if given, and brings it up.
    pub fn add_bridge(&self, name: &str, cidr: Option<&str>) -> Result<()> {
        self.ip(&["link", "add", name, "type", "bridge"])?;
        // No STP and no forward delay: ports forward at once, so firmware DHCP is not dropped.
        self.ip(&["link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        if let Some(cidr) = cidr {
            self.add_address(name, cidr)?;
        }
        self.ip(&["link", "set", name, "up"])?;
        Ok(())
    }

    /// Adds a tap device (for a QEMU NIC) on `bridge` and brings it up.
    pub fn add_tap(&self, name: &str, bridge: &str) -> Result<()> {
        self.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        self.attach(name, bridge)
    }

    /// Makes a veth pair: `local` here, `remote` in `other`, both up. Attach either end to a bridge
    /// with [`Netns::attach`] and give it an address with [`Netns::add_address`]; this is how a second
    /// namespace (a site DHCP server, say) joins this one's L2 segment.
    pub fn add_veth_to(&self, local: &str, other: &Netns, remote: &str) -> Result<()> {
        self.ip(&["link", "add", local, "type", "veth", "peer", "name", remote, "netns", &other.name])?;
        self.ip(&["link", "set", local, "up"])?;
        other.ip(&["link", "set", remote, "up"])?;
        Ok(())
    }

    /// Puts interface `ifname` on `bridge` and brings it up.
    pub fn attach(&self, ifname: &str, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", ifname, "master", bridge])?;
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Adds an address in CIDR form to `ifname`.
    pub fn add_address(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", ifname])?;
        Ok(())
    }

    fn kill_all(&mut self) {
        let children = std::mem::take(self.children.get_mut().unwrap_or_else(|e| e.into_inner()));
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Anything else still inside (started with `command` and not through `spawn`) is ours too.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let pids = run(Command::new("ip").args(["netns", "pids", &self.name])).unwrap_or_default();
            let pids: Vec<&str> = pids.split_whitespace().collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_all();
        if let Err(e) = run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("warning: could not delete network namespace {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(ns: &str) -> String {
        run(Command::new("ip").args(["-n", ns, "-o", "link", "show"])).unwrap_or_default()
    }

    #[test]
    fn a_namespace_runs_commands_and_everything_in_it_goes_on_drop_even_on_panic() {
        let names = std::panic::catch_unwind(|| {
            let a = Netns::create("otk-a").unwrap();
            let b = Netns::create("otk-b").unwrap();
            assert_ne!(a.name(), b.name(), "names are unique");
            a.add_bridge("br0", Some("10.77.0.1/24")).unwrap();
            a.add_veth_to("v0", &b, "v1").unwrap();
            a.attach("v0", "br0").unwrap();
            b.add_address("v1", "10.77.0.2/24").unwrap();
            assert!(a.exec(&["ip", "-o", "addr"]).unwrap().contains("10.77.0.1/24"));
            // Inside, a thread's sockets and children live in the namespace.
            let seen = b.run_inside(|| run(Command::new("ip").args(["-o", "addr"])).unwrap());
            assert!(seen.contains("10.77.0.2/24"), "{seen}");
            // The veth joins the two: a datagram from b reaches a socket made in a.
            let receiver = a.run_inside(|| std::net::UdpSocket::bind("10.77.0.1:7777").unwrap());
            b.run_inside(|| {
                std::net::UdpSocket::bind("10.77.0.2:0").unwrap().send_to(b"hi", "10.77.0.1:7777").unwrap()
            });
            receiver.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 8];
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from.ip().to_string().as_str()), (&b"hi"[..], "10.77.0.2"));
            let mut sleep = a.command("sleep");
            sleep.arg("600");
            let sleeper = a.spawn(sleep).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            // Not through spawn: found by `ip netns pids`.
            let stray = a.command("sleep").arg("600").spawn().unwrap();
            let names = (a.name().to_string(), b.name().to_string(), sleeper, stray);
            std::panic::panic_any(names)
        })
        .expect_err("it panics")
        .downcast::<(String, String, u32, Child)>()
        .expect("the names");
        let (a, b, sleeper, mut stray) = *names;
        assert!(!Netns::exists(&a).unwrap() && !Netns::exists(&b).unwrap(), "{a} and {b} are deleted");
        assert!(links(&a).is_empty() && links(&b).is_empty());
        assert!(!std::path::Path::new(&format!("/proc/{sleeper}")).exists(), "the process is killed");
        let status = stray.wait().unwrap();
        assert!(!status.success(), "the process started without spawn is killed too: {status}");
    }

    #[test]
    fn a_failing_command_says_which_and_why() {
        let ns = Netns::create("otk-f").unwrap();
        let err = ns.ip(&["link", "set", "nope0", "up"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("ip -n {} link set nope0 up", ns.name())) && text.contains("nope0"), "{text}");
    }
}

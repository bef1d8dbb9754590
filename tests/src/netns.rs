//! Network namespaces that clean up after themselves.
//!
//! [`Netns::create`] makes a namespace with a unique name (prefix, process id, counter), so tests
//! running in parallel, or in several worktrees at once, never collide. Dropping it, also while a
//! test panics, kills every process still running in it (the ones started through [`Netns::spawn`]
//! first, then any other `ip netns pids` reports) and deletes it, which removes its bridges, taps and
//! veth ends with it.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{command_line, run, HarnessError, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

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

    /// Runs `f` on a new thread that has entered this namespace, so the sockets it makes live
    /// there, and returns what it returns (a panic in `f` is re-raised here).
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
            assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
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
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn { command: command_line(&cmd), source })?;
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

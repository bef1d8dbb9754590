//! sushy-tools' Redfish emulator as a real BMC for the power tests, with a real machine behind it.
//!
//! `sushy-emulator` (from the venv `scripts/sushy-venv` makes) runs with its fake driver, which
//! needs neither libvirt nor OpenStack: it keeps each system's power state in a SQLite file (in
//! the emulator's own temporary directory here, not the default shared `/tmp/sushy-emulator`), and
//! lands a requested change 1 to 11 s later, on the first read after that time (its
//! `fakedriver.py`: "hardware actions are not immediate"). With `external_notifier` set it PUTs
//! the system's record to `EXTERNAL_NOTIFICATION_URL` on every change: [`Sushy`] answers that
//! webhook by starting and stopping a real QEMU process (TCG, CPU stopped, 64 MiB, no devices),
//! so "on" is a running machine and "off" is none, as with `ipmi_sim`'s chassis hook.
//!
//! It listens on 127.0.0.1 with TLS (a self-signed certificate made here, whose fingerprint the
//! test pins) and HTTP Basic auth (an htpasswd file with a bcrypt hash, the only kind it takes).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::workspace_root;

/// The user the emulator accepts.
pub const USER: &str = "oasis";

/// The sushy-tools venv: `$OASIS_SUSHY_VENV`, else `.cache/sushy` at the workspace root (where
/// `scripts/sushy-venv` puts it).
pub fn venv() -> Result<PathBuf> {
    let dir = std::env::var_os("OASIS_SUSHY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/sushy"));
    if !dir.join("bin/sushy-emulator").is_file() {
        bail!(
            "no sushy-emulator in {}: run scripts/sushy-venv (scripts/test does) to make the sushy-tools venv",
            dir.display()
        );
    }
    Ok(dir)
}

/// A running sushy-emulator with one fake system, and the machine its webhook powers.
#[derive(Debug)]
pub struct Sushy {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The password of [`USER`].
    pub password: String,
    /// SHA-256 of the emulator's certificate (DER).
    pub fingerprint: [u8; 32],
    log: PathBuf,
    machine: Arc<Machine>,
    hook: Option<Hook>,
    _dir: tempfile::TempDir,
}

impl Sushy {
    /// Starts the emulator with one system, powered off, and waits until it answers.
    pub fn start() -> Result<Sushy> {
        let venv = venv()?;
        let dir = tempfile::Builder::new().prefix("oasis-sushy-").tempdir()?;
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "bmc.test".to_string()])?;
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem())?;
        std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem())?;
        let fingerprint = oasis_power::redfish::certificate_fingerprint(certified.cert.der());
        let password = format!("pw-{:016x}", rand::random::<u64>());
        write_htpasswd(&venv, &dir.path().join("htpasswd"), &password)?;

        let machine = Arc::new(Machine::new(dir.path().join("qemu.log")));
        let hook = Hook::start(machine.clone())?;
        let port = free_port()?;
        let config = dir.path().join("emulator.conf");
        std::fs::write(&config, emulator_config(dir.path(), port, hook.addr))?;
        let log = dir.path().join("emulator.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(venv.join("bin/sushy-emulator"))
            .arg("--config")
            .arg(&config)
            .env("PYTHONUNBUFFERED", "1")
            // The webhook is on loopback: no proxy may take it (requests honours these).
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env("NO_PROXY", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting sushy-emulator")?;
        let mut sushy = Sushy {
            child,
            url: format!("https://127.0.0.1:{port}"),
            password,
            fingerprint,
            log,
            machine,
            hook: Some(hook),
            _dir: dir,
        };
        sushy.wait_listening(port)?;
        Ok(sushy)
    }

    /// [`Sushy::start`] inside network namespace `ns`: the emulator, its webhook and the QEMU
    /// it powers live there, where an `oasis serve` in that namespace reaches them on loopback.
    pub fn start_in(ns: &crate::Netns) -> Result<Sushy> {
        ns.spawn_inside(Sushy::start)
            .join()
            .map_err(|_| anyhow::anyhow!("starting sushy-emulator inside {} panicked", ns.name()))?
    }

    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("sushy-emulator exited ({status}) before listening:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("sushy-emulator did not listen on port {port} within 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The emulator's log (werkzeug's request lines, errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many HTTP requests the emulator has logged: one line each.
    pub fn requests(&self) -> usize {
        self.log().lines().filter(|l| l.contains(" /redfish") && l.contains("HTTP/1.1")).count()
    }

    /// How many requests the emulator answered with HTTP `status`.
    pub fn answered(&self, status: u16) -> usize {
        let tail = format!("\" {status} ");
        self.log().lines().filter(|l| l.contains(" /redfish") && l.contains(&tail)).count()
    }

    /// The machine the webhook powers.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.hook.take());
        self.machine.power(false);
    }
}

/// The emulator's config (Python): the fake driver with one system, TLS, auth, state and
/// webhook all local to `dir` and loopback.
fn emulator_config(dir: &Path, port: u16, hook: SocketAddr) -> String {
    let uuid = format!("{:08x}-0000-4000-8000-{:012x}", rand::random::<u32>(), rand::random::<u64>() >> 16);
    let d = dir.display();
    format!(
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
         SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
         SUSHY_EMULATOR_SSL_CERT = '{d}/cert.pem'\n\
         SUSHY_EMULATOR_SSL_KEY = '{d}/key.pem'\n\
         SUSHY_EMULATOR_AUTH_FILE = '{d}/htpasswd'\n\
         SUSHY_EMULATOR_STATE_DIR = '{d}/state'\n\
         SUSHY_EMULATOR_FAKE_DRIVER = True\n\
         EXTERNAL_NOTIFICATION_URL = 'http://{hook}/'\n\
         SUSHY_EMULATOR_FAKE_SYSTEMS = [{{\n\
         \x20   'uuid': '{uuid}', 'name': 'node1', 'power_state': 'Off', 'external_notifier': True,\n\
         \x20   'nics': [{{'mac': '52:54:00:00:17:01', 'ip': '127.0.0.1'}}],\n\
         }}]\n"
    )
}

/// Writes an htpasswd line for [`USER`] with a bcrypt hash made by the venv's bcrypt (the
/// password goes through stdin, not the command line).
fn write_htpasswd(venv: &Path, path: &Path, password: &str) -> Result<()> {
    let mut child = Command::new(venv.join("bin/python"))
        .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(4)).decode())"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running the venv's python for bcrypt")?;
    child.stdin.take().context("python's stdin")?.write_all(password.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("bcrypt in {} failed ({})", venv.display(), out.status);
    }
    std::fs::write(path, format!("{USER}:{}", String::from_utf8_lossy(&out.stdout).trim()))?;
    Ok(())
}

/// A loopback port nothing listens on now.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// The machine behind the BMC: a QEMU process while powered, none while off.
#[derive(Debug)]
pub struct Machine {
    qemu: Mutex<Option<Child>>,
    log: PathBuf,
    /// Every start, as the QEMU pid.
    starts: Mutex<Vec<u32>>,
}

impl Machine {
    fn new(log: PathBuf) -> Machine {
        Machine { qemu: Mutex::new(None), log, starts: Mutex::new(Vec::new()) }
    }

    /// Starts QEMU (if not running) or stops it (if running).
    fn power(&self, on: bool) {
        let mut qemu = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        let running = qemu.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if on && !running {
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log);
            let child = Command::new("qemu-system-x86_64")
                .args(["-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-m", "64", "-name", "sushy-node1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.map(Stdio::from).unwrap_or_else(|_| Stdio::null()))
                .spawn();
            if let Ok(child) = child {
                self.starts.lock().unwrap_or_else(|p| p.into_inner()).push(child.id());
                *qemu = Some(child);
            }
        } else if !on {
            if let Some(mut child) = qemu.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The pid of the QEMU process running now, if one is.
    pub fn running(&self) -> Option<u32> {
        let mut qemu = self.qemu.lock().unwrap_or_else(|p| p.into_inner());
        let child = qemu.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// How many times QEMU was started.
    pub fn starts(&self) -> usize {
        self.starts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// QEMU's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The webhook the emulator PUTs each system change to: powers [`Machine`] as the record says.
#[derive(Debug)]
struct Hook {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hook {
    fn start(machine: Arc<Machine>) -> Result<Hook> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = serve_hook(stream, &machine);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Hook { addr, stop, thread: Some(thread) })
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One PUT from the emulator: `{"power_state": "On"|"Off", ...}`.
fn serve_hook(stream: TcpStream, machine: &Machine) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let record: serde_json::Value = serde_json::from_slice(&body)?;
    match record.get("power_state").and_then(|s| s.as_str()) {
        Some("On") => machine.power(true),
        Some("Off") => machine.power(false),
        _ => {}
    }
    (&stream).write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(())
}

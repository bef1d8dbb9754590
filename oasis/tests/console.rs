//! The console's real parts, for real: the DHCP probe against dnsmasq across a veth pair between
//! two network namespaces the test makes, and the status menu against a real `oasis serve` in
//! a namespace of its own. Needs root, `ip` and dnsmasq (`dnsmasq-base`).

use std::collections::VecDeque;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oasis_boot::console::{run_status, ApplianceActions, DhcpProbe, Input, Terminal, UdpDhcpProbe};
use oasis_testkit::netns::Netns;

/// A child process killed when dropped; its log shown if the test fails.
struct Running {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&mut self, done: impl Fn(&Running) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.what, self.log());
            }
            assert!(Instant::now() < deadline, "{} did not start:\n{}", self.what, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.what, self.log());
        }
    }
}

#[test]
fn the_probe_finds_a_dhcp_server_on_the_segment_and_nothing_without_one() {
    let client = Netns::create("oc-probe").unwrap();
    let server = Netns::create("oc-dhcp").unwrap();
    client.add_veth_to("rack0", &server, "site0").unwrap();
    server.add_address("site0", "192.168.77.1/24").unwrap();
    let probe = UdpDhcpProbe::default();

    let p = probe.clone();
    let before = client.run_inside(move || p.other_servers("rack0"));
    assert_eq!(before.unwrap(), Vec::<Ipv4Addr>::new(), "no DHCP server yet");

    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut cmd = server.command("dnsmasq");
    cmd.args([
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        "--user=root".into(),
        "--interface=site0".into(),
        "--bind-interfaces".into(),
        "--dhcp-range=192.168.77.100,192.168.77.199,255.255.255.0,1h".into(),
        "--no-ping".into(),
        format!("--dhcp-leasefile={}", file("leases")),
        format!("--pid-file={}", file("pid")),
        format!("--log-facility={}", file("log")),
        "--log-dhcp".into(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = cmd.spawn().expect("dnsmasq (package dnsmasq-base) must be installed for this test");
    let mut dnsmasq = Running { what: "dnsmasq", child, log: dir.path().join("log") };
    dnsmasq.wait_for(|d| d.log().contains("started, version"));

    let p = probe.clone();
    let found = client.run_inside(move || p.other_servers("rack0")).unwrap();
    assert_eq!(found, [Ipv4Addr::new(192, 168, 77, 1)], "dnsmasq's log:\n{}", dnsmasq.log());
    assert!(dnsmasq.log().contains("DHCPOFFER"), "{}", dnsmasq.log());

    let err = client.run_inside(move || probe.other_servers("nosuch0")).unwrap_err();
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

/// Answers from a script; sets `stop` once the script has run out.
struct Scripted {
    answers: VecDeque<String>,
    output: String,
    stop: Arc<AtomicBool>,
}

impl Terminal for Scripted {
    fn write(&mut self, text: &str) -> io::Result<()> {
        self.output.push_str(text);
        Ok(())
    }

    fn read_line_within(&mut self, _timeout: Duration) -> io::Result<Input> {
        match self.answers.pop_front() {
            Some(line) => {
                self.output.push_str(&format!("{line}\n"));
                Ok(Input::Line(line))
            }
            None => {
                self.stop.store(true, Ordering::SeqCst);
                Ok(Input::Nothing)
            }
        }
    }
}

#[derive(Default)]
struct Actions {
    exports: AtomicUsize,
    reboots: AtomicUsize,
}

impl ApplianceActions for Actions {
    fn export_report(&self) -> Result<String, String> {
        self.exports.fetch_add(1, Ordering::SeqCst);
        Ok("oasis-report/".into())
    }
    fn start_afresh(&self) -> Result<String, String> {
        panic!("not asked for")
    }
    fn pending_bundle(&self) -> Option<String> {
        None
    }
    fn install_bundle(&self) -> Result<String, String> {
        panic!("not asked for: no bundle is pending")
    }
    fn reboot(&self) {
        self.reboots.fetch_add(1, Ordering::SeqCst);
    }
    fn power_off(&self) {
        panic!("not asked for")
    }
}

/// The configuration the supervisor would save: DATA_DIR/oasis.toml.
fn write_config(dir: &Path) -> PathBuf {
    let boot = dir.join("boot");
    std::fs::create_dir_all(boot.join("payload")).unwrap();
    std::fs::write(boot.join("payload/vmlinuz"), b"not a kernel: nothing boots in this test").unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let config = format!(
        r#"data_dir = "."

[network]
interface = "rack0"
address = "10.0.0.1"

[dhcp]
mode = "off"

[tftp]
enabled = false

[boot]
root = "{boot}"

[profile]
kernel = "payload/vmlinuz"

[registration]
policy = "manual"

[wireguard]
interface = "ocw{pid}"
"#,
        boot = boot.display(),
        pid = std::process::id() % 100_000,
    );
    let path = data.join("oasis.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn the_status_menu_against_a_running_appliance() {
    let ns = Netns::create("oc-serve").unwrap();
    ns.add_bridge("rack0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let data_dir = config.parent().unwrap().to_path_buf();
    let log = dir.path().join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = ns
        .command(env!("CARGO_BIN_EXE_oasis"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut serve = Running { what: "oasis serve", child, log };
    let socket = data_dir.join("oasis.sock");
    serve.wait_for(|_| std::os::unix::net::UnixStream::connect(&socket).is_ok());

    let stop = Arc::new(AtomicBool::new(false));
    let mut term = Scripted {
        answers: ["a", "e", "x", "r", "no", ""].iter().map(|s| s.to_string()).collect(),
        output: String::new(),
        stop: stop.clone(),
    };
    let actions = Actions::default();
    run_status(&mut term, &data_dir, &actions, &stop).unwrap();
    let out = term.output;

    let token = std::fs::read_to_string(data_dir.join("admin-token")).unwrap();
    let fingerprint = oasis_boot::console::status::token_fingerprint(&data_dir).unwrap();
    assert_eq!(fingerprint.len(), 16);
    use sha2::Digest;
    assert!(hex::encode(sha2::Sha256::digest(token.trim())).starts_with(&fingerprint));

    assert!(out.starts_with("\noasis status: cluster "), "{out}");
    assert!(!out.contains("not running") && !out.contains("does not answer"), "{out}");
    assert!(out.contains("machines: 0 registered (0 accepted, 0 pending, 0 rejected), 0 up"), "{out}");
    assert!(out.contains("rack address: 10.0.0.1/24 on rack0\n"), "{out}");
    assert!(out.contains(&format!("admin token: sha256 {fingerprint}\n")), "{out}");
    assert!(out.contains("oasis: no machine is waiting for acceptance"), "{out}");
    assert!(out.contains("events, newest last ("), "{out}");
    assert!(out.contains("oasis: report exported: oasis-report/"), "{out}");
    assert!(out.contains("Reboot the appliance, yes or no [no]: no\n"), "{out}");
    assert_eq!((actions.exports.load(Ordering::SeqCst), actions.reboots.load(Ordering::SeqCst)), (1, 0));
    assert!(out.matches("oasis status: ").count() >= 6, "a block after each of the 6 lines:\n{out}");
}

//! `oasis serve` inside a test namespace, with a boot root built from the test assets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{assets, workspace_root, Netns};

/// The `oasis` binary under test: `OASIS_BIN`, or the newest build in the workspace's target dir.
pub fn oasis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("OASIS_BIN") {
        return PathBuf::from(bin);
    }
    let target = workspace_root().join("target");
    let mut builds: Vec<PathBuf> =
        ["release", "debug"].iter().map(|p| target.join(p).join("oasis")).filter(|p| p.exists()).collect();
    builds.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    builds.pop().expect("no oasis binary: run `cargo build --release -p oasis` (scripts/test does)")
}

/// The `oasis-tftp` client built beside the `oasis` binary.
pub fn tftp_client() -> PathBuf {
    oasis_bin().with_file_name("oasis-tftp")
}

/// Runs `oasis ARGS` on the host and returns its output.
pub fn oasis(args: &[&str]) -> Output {
    Command::new(oasis_bin()).args(args).output().expect("run oasis")
}

/// A boot root with the iPXE builds under `ipxe/` and the test payload under `payload/`.
pub fn boot_root(dir: &Path) -> PathBuf {
    let assets = assets().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.join("boot");
    for (from, to) in [(&assets.ipxe, "ipxe"), (&assets.payload, "payload")] {
        std::fs::create_dir_all(root.join(to)).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), root.join(to).join(entry.file_name())).unwrap();
        }
    }
    root
}

/// A management interface name no other test uses: boringtun's control socket lives in the
/// shared `/var/run/wireguard/NAME.sock`, whatever namespace the interface is in.
pub fn unique_wireguard_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("owg{}x{}", std::process::id() % 100_000, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A configuration for the test rack: bridge `br0` with the appliance at 10.0.0.1, booting the
/// test payload.
pub fn rack_config(dir: &Path, dhcp: &str, cmdline: &str) -> PathBuf {
    let profile =
        format!("[profile]\nkernel = \"payload/vmlinuz\"\ninitrd = \"payload/initrd.img\"\ncmdline = \"{cmdline}\"\n");
    write_config(dir, dhcp, &boot_root(dir), &profile)
}

/// Writes `DIR/oasis.toml` for the test rack with `extra` (sections) appended.
pub fn write_config(dir: &Path, dhcp: &str, root: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"data_dir = "{data}"

[network]
interface = "br0"
address = "10.0.0.1"

[dhcp]
{dhcp}

[boot]
root = "{root}"

[wireguard]
interface = "{wg}"

{extra}
"#,
        data = dir.join("data").display(),
        root = root.display(),
        wg = unique_wireguard_name(),
    );
    let path = dir.join("oasis.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A boot root with the iPXE builds, the test payload and the node image (with its artifacts)
/// under `node/`.
pub fn node_boot_root(dir: &Path) -> PathBuf {
    node_boot_root_from(dir, &crate::node_image().unwrap_or_else(|e| panic!("{e}")))
}

/// [`node_boot_root`] with the node image in `node` (another generation's).
pub fn node_boot_root_from(dir: &Path, node: &Path) -> PathBuf {
    let root = boot_root(dir);
    std::fs::create_dir_all(root.join("node")).unwrap();
    for entry in std::fs::read_dir(node).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), root.join("node").join(entry.file_name())).unwrap();
    }
    root
}

/// A running `oasis serve`; stopped (SIGTERM, then kill) on drop.
#[derive(Debug)]
pub struct Appliance {
    child: Option<Child>,
    log: PathBuf,
    pub config: PathBuf,
    pub data_dir: PathBuf,
}

impl Appliance {
    /// Starts `oasis serve --config CONFIG` in `ns` and waits until its admin socket answers.
    pub fn start(ns: &Netns, config: &Path, log: &Path) -> Appliance {
        Appliance::launch(ns, config, log, &[], "info,oasis_pxe=debug")
    }

    /// [`Appliance::start`] with more arguments to `oasis serve` (`--new-store`).
    pub fn start_with(ns: &Netns, config: &Path, log: &Path, args: &[&str]) -> Appliance {
        Appliance::launch(ns, config, log, args, "info,oasis_pxe=debug")
    }

    /// [`Appliance::start`] with `OASIS_LOG=filter` (`info` is what the appliance ships with).
    pub fn start_logging(ns: &Netns, config: &Path, log: &Path, filter: &str) -> Appliance {
        Appliance::launch(ns, config, log, &[], filter)
    }

    fn launch(ns: &Netns, config: &Path, log: &Path, args: &[&str], filter: &str) -> Appliance {
        let data_dir = config.parent().unwrap().join("data");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = ns.command(oasis_bin().to_str().unwrap());
        cmd.args(["serve", "--config", config.to_str().unwrap()])
            .args(args)
            .env("OASIS_LOG", filter)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("spawn oasis serve");
        let mut appliance =
            Appliance { child: Some(child), log: log.to_path_buf(), config: config.to_path_buf(), data_dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(appliance.data_dir.join("oasis.sock")).is_err() {
            if let Some(status) = appliance.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("oasis serve exited with {status}:\n{}", appliance.log());
            }
            assert!(Instant::now() < deadline, "oasis serve did not start:\n{}", appliance.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        appliance
    }

    /// The server's process id (`ip netns exec` runs it in place), while it has not been stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the server exited, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an oasis state command (`leases`, `machines`, `events`) against this appliance.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--data-dir", self.data_dir.to_str().unwrap()]);
        let out = oasis(&all);
        assert!(
            out.status.success(),
            "oasis {all:?} failed: {}\n--- oasis serve's log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            crate::tail(&self.log(), 40)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The bound address of `mac`, if any.
    pub fn address_of(&self, mac: &str) -> Option<String> {
        self.leases()
            .into_iter()
            .find(|l| l.mac.to_string() == mac && l.state == crate::json::LeaseState::Bound)
            .map(|l| l.ip.to_string())
    }

    /// Kills the server with SIGKILL, as a power cut or a crash would, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The node agent's kernel arguments with the join token itself, as boot media an operator makes
/// carry them (no boot script carries the join token: each network boot gets a token of its own).
/// Reads the appliance's identity from its store, making it on a first start, so call it before
/// [`Appliance::start`] or while the appliance is stopped: a running `oasis serve` holds the store.
pub fn join_args(config: &Path) -> oasis_proto::KernelArgs {
    use oasis_appliance::identity::Identity;
    use oasis_appliance::store::Store;
    use oasis_core::config::Config;
    let config = Config::load(config).unwrap_or_else(|e| panic!("{e}"));
    let store = Store::open(&config.data_dir)
        .unwrap_or_else(|e| panic!("{e}: read the join token before Appliance::start or after Appliance::stop"));
    let identity = Identity::load_or_create(&store, &config.data_dir).unwrap_or_else(|e| panic!("{e}"));
    let args = identity.agent_kernel_args(config.address, config.api_port);
    oasis_proto::KernelArgs::parse(&format!("{args} oasis.token={}", identity.join_token)).unwrap()
}

/// The node agent's kernel arguments exactly as the appliance at 10.0.0.1 serves them in the boot
/// script of `mac` (`52-54-00-…`), fetched from inside `ns`: with a per-boot token for `mac`. In
/// full DHCP mode only the holder of `mac`'s lease gets the script.
pub fn agent_args(ns: &Netns, mac: &str) -> oasis_proto::KernelArgs {
    let url = format!("http://10.0.0.1/boot.ipxe?mac={mac}");
    let script = ns.exec(&["busybox", "wget", "-q", "-O", "-", &url]).expect("the appliance serves a boot script");
    let line = script.lines().find(|l| l.starts_with("kernel ")).unwrap_or_else(|| panic!("no kernel line:\n{script}"));
    oasis_proto::KernelArgs::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// Sends `req` to the appliance at 10.0.0.1 as a machine's agent would, from inside `ns`, with
/// the appliance's certificate pinned to `pin` (`join_args(..).pin`).
pub fn register(
    ns: &Netns,
    pin: &str,
    req: oasis_proto::RegisterRequest,
) -> Result<oasis_proto::RegisterResponse, oasis_agent::client::ApiError> {
    let pin = pin.to_string();
    let api = format!("https://10.0.0.1:{}", oasis_proto::API_PORT);
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { oasis_agent::client::ApiClient::new(&api, &pin)?.register(&req).await })
    })
}

/// A registration as a test machine's agent would send it: join `token`, SMBIOS `uuid` and serial
/// `SN-KEY`, boot `mac`, the WireGuard key `[key; 32]` in base64, and `nonce` as 32 hex digits.
pub fn register_request(token: &str, uuid: &str, mac: &str, key: u8, nonce: u32) -> oasis_proto::RegisterRequest {
    use base64::Engine as _;
    use oasis_proto::{Inventory, RegisterRequest, System};
    RegisterRequest {
        token: token.into(),
        nonce: format!("{nonce:032x}"),
        boot_mac: mac.into(),
        wireguard_key: base64::engine::general_purpose::STANDARD.encode([key; 32]),
        agent_version: "test".into(),
        inventory: Inventory {
            system: System { uuid: Some(uuid.into()), serial: Some(format!("SN-{key}")), ..Default::default() },
            cpus: 2,
            memory_bytes: 1 << 30,
            ..Default::default()
        },
    }
}

/// The boot MAC of simulated machine `i` of a benchmark (`02:00:...`, locally administered).
pub fn simulated_mac(i: u32) -> String {
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", i >> 24, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

/// Simulated machine `i`'s registration with join or boot `token`, its `attempt`th: its own
/// SMBIOS UUID, serial `BENCH-I`, MAC ([`simulated_mac`]) and WireGuard key.
pub fn simulated_request(token: &str, i: u32, attempt: u32) -> oasis_proto::RegisterRequest {
    use base64::Engine as _;
    use oasis_proto::{Inventory, RegisterRequest, System};
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&i.to_be_bytes());
    key[31] = 0x40;
    RegisterRequest {
        token: token.to_string(),
        nonce: format!("{i:016x}{attempt:016x}"),
        boot_mac: simulated_mac(i),
        wireguard_key: base64::engine::general_purpose::STANDARD.encode(key),
        agent_version: "bench".into(),
        inventory: Inventory {
            system: System {
                uuid: Some(format!("0b0b0b0b-0000-4000-8000-{i:012x}")),
                serial: Some(format!("BENCH-{i}")),
                ..Default::default()
            },
            cpus: 4,
            memory_bytes: 8 << 30,
            ..Default::default()
        },
    }
}

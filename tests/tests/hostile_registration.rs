//! An impostor on the rack network cannot take over a live machine (issue 13). Against a real
//! `oasis serve` in full DHCP mode: a machine in its own namespace gets a real lease from the
//! appliance's DHCP server, fetches its boot script, registers with the per-boot token in it and
//! heartbeats over its WireGuard management link (boringtun in its namespace, since this host's
//! kernel has no WireGuard). An impostor with a lease of its own on the same rack network is refused
//! the machine's boot script, gets its own, and is refused every registration as the machine: with
//! its own token, with the join token, with the machine's token. Even from the machine's own address
//! (what an attacker who forges addresses on the wire gets), a new key is refused while the machine
//! is alive on its link; the machine keeps its credential, address and heartbeats. Once the link has
//! been silent for the window, a new key is taken as a reboot. No virtual machines; no boot assets
//! (the boot root is a few small files).

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use base64::Engine;
use boringtun::device::{DeviceConfig, DeviceHandle};
use boringtun::x25519::{PublicKey, StaticSecret};
use oasis_agent::client::{ApiClient, ApiError, Endpoint};
use oasis_e2e::appliance::{join_args, write_config, Appliance};
use oasis_e2e::json::MachineView;
use oasis_e2e::Netns;
use oasis_proto::{
    Heartbeat, Inventory, KernelArgs, LinkConfig, MachineState, RegisterRequest, RegisterResponse, System,
};

const VICTIM_MAC: &str = "52:54:00:00:00:01";
const IMPOSTOR_MAC: &str = "52:54:00:00:00:66";
const UUID: &str = "4c4c4544-0000-4000-8000-0000000000a1";

/// A host on the rack bridge: its own namespace, a veth with `mac`, and a lease from the
/// appliance's DHCP server (a real exchange by busybox udhcpc), configured on its `eth0`.
struct Host {
    ns: Netns,
    mac: &'static str,
    address: String,
}

impl Host {
    fn join(rack: &Netns, appliance: &Appliance, name: &str, mac: &'static str) -> Host {
        let ns = Netns::create(name).unwrap();
        let port = format!("{}0", &name[..name.len().min(12)]);
        rack.add_veth_to(&port, &ns, "eth0").unwrap();
        rack.attach(&port, "br0").unwrap();
        ns.ip(&["link", "set", "eth0", "down"]).unwrap();
        ns.ip(&["link", "set", "eth0", "address", mac]).unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        ns.exec(&["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"])
            .unwrap_or_else(|e| panic!("{name} got no lease: {e}\n{}", appliance.log()));
        let address =
            appliance.address_of(mac).unwrap_or_else(|| panic!("no lease for {mac}: {:?}", appliance.leases()));
        ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]).unwrap();
        Host { ns, mac, address }
    }

    /// `GET URL` with curl: the status and the body.
    fn get(&self, url: &str) -> (u16, String) {
        let out = self.ns.exec(&["curl", "-s", "-w", "\n%{http_code}", url]).unwrap();
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.trim().parse().unwrap(), body.to_string())
    }

    /// The boot script of `mac` as this host gets it: the status and, when served, the agent's
    /// arguments on its kernel line.
    fn boot_script(&self, mac: &str) -> (u16, String) {
        self.get(&format!("http://10.0.0.1/boot.ipxe?mac={}", mac.replace(':', "-")))
    }

    fn register(&self, pin: &str, req: RegisterRequest) -> Result<RegisterResponse, ApiError> {
        let pin = pin.to_string();
        self.ns.run_inside(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { ApiClient::new("https://10.0.0.1:9443", &pin)?.register(&req).await })
        })
    }

    /// One heartbeat to the appliance's overlay address, through the management link.
    fn heartbeat(&self, pin: &str, credential: &str, appliance: Ipv4Addr) -> Result<(), ApiError> {
        let (pin, credential) = (pin.to_string(), credential.to_string());
        self.ns.run_inside(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let beat = Heartbeat { phase: "test".into(), uptime_secs: 1, ..Heartbeat::default() };
                ApiClient::new("https://10.0.0.1:9443", &pin)?
                    .heartbeat(&Endpoint::overlay(appliance), &credential, &beat)
                    .await
            })
        })
    }
}

fn kernel_args(script: &str) -> KernelArgs {
    let line = script.lines().find(|l| l.starts_with("kernel ")).unwrap_or_else(|| panic!("no kernel line:\n{script}"));
    KernelArgs::parse(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A WireGuard key pair from fixed secret bytes: (private, base64 public).
fn keypair(seed: u8) -> ([u8; 32], String) {
    let private = [seed; 32];
    let public = PublicKey::from(&StaticSecret::from(private));
    (private, base64::engine::general_purpose::STANDARD.encode(public.as_bytes()))
}

fn request(token: &str, mac: &str, public_key: &str, nonce: u32) -> RegisterRequest {
    RegisterRequest {
        token: token.into(),
        nonce: format!("{nonce:032x}"),
        boot_mac: mac.into(),
        wireguard_key: public_key.into(),
        agent_version: "test".into(),
        inventory: Inventory {
            system: System { uuid: Some(UUID.into()), serial: Some("SN-VICTIM".into()), ..Default::default() },
            cpus: 2,
            memory_bytes: 1 << 30,
            ..Default::default()
        },
    }
}

fn refused(result: Result<RegisterResponse, ApiError>) -> (u16, String) {
    match result {
        Err(ApiError::Refused { status, message }) => (status, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The machine's end of its management link: boringtun in the machine's namespace, configured
/// as the agent configures kernel WireGuard. Dropping it takes the link down.
struct LinkEnd {
    _uapi: UnixStream,
    _device: DeviceHandle,
}

fn link_up(host: &Host, private: [u8; 32], link: &LinkConfig) -> LinkEnd {
    let appliance_key = base64::engine::general_purpose::STANDARD.decode(&link.appliance_key).unwrap();
    let request = format!(
        "set=1\nprivate_key={}\nlisten_port=51900\npublic_key={}\nendpoint={}\nallowed_ip={}/32\n\
         persistent_keepalive_interval=1\n\n",
        hex(&private),
        hex(&appliance_key),
        link.endpoint,
        link.appliance_address
    );
    // Made on a thread inside the namespace: the tun device, the sockets and boringtun's own
    // threads all live there.
    let end = host.ns.run_inside(move || {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let config = DeviceConfig {
            n_threads: 1,
            use_connected_socket: true,
            use_multi_queue: false,
            uapi_fd: theirs.into_raw_fd(),
        };
        let device = DeviceHandle::new("vwg0", config).expect("boringtun device");
        let mut uapi = BufReader::new(ours);
        uapi.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        uapi.get_mut().write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        while uapi.read_line(&mut answer).unwrap() > 1 {}
        assert!(answer.contains("errno=0"), "boringtun refused the configuration: {answer}");
        LinkEnd { _uapi: uapi.into_inner(), _device: device }
    });
    host.ns.ip(&["addr", "add", &format!("{}/{}", link.address, link.prefix_len), "dev", "vwg0"]).unwrap();
    host.ns.ip(&["link", "set", "vwg0", "up"]).unwrap();
    end
}

fn registration(appliance: &Appliance) -> MachineView {
    appliance.registrations().into_iter().find(|r| r.record.id == UUID).expect("the victim is registered")
}

#[test]
fn an_impostor_cannot_take_over_a_live_machine() {
    let rack = Netns::create("oasis-hostile").unwrap();
    rack.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The node image's place in the boot root: scripts are fetched, never booted, here.
    let root = dir.path().join("boot");
    std::fs::create_dir_all(root.join("node")).unwrap();
    std::fs::write(root.join("node/vmlinuz"), b"kernel").unwrap();
    std::fs::write(root.join("node/initrd.img"), b"initrd").unwrap();
    let config = write_config(dir.path(), "range = [\"10.0.0.100\", \"10.0.0.199\"]", &root, "");
    // Boot media an operator made would carry the join token; the impostor has read it somewhere.
    let join = join_args(&config);
    let appliance = Appliance::start(&rack, &config, &dir.path().join("oasis.log"));

    let victim = Host::join(&rack, &appliance, "oasis-victim", VICTIM_MAC);
    let impostor = Host::join(&rack, &appliance, "oasis-impostor", IMPOSTOR_MAC);
    assert_ne!(victim.address, impostor.address);

    // Each gets its own boot script, with its own per-boot token, never the join token.
    let (status, script) = victim.boot_script(victim.mac);
    assert_eq!(status, 200, "{script}");
    let args = kernel_args(&script);
    assert_eq!(args.pin, join.pin);
    assert!(!script.contains(&join.token), "the join token is on no boot script:\n{script}");
    let (status, body) = impostor.boot_script(victim.mac);
    assert_eq!(status, 403, "another host's boot script is not served to the impostor: {body}");
    assert!(!body.contains("oasis.token") && body.contains(&victim.address), "{body}");
    let (status, own) = impostor.boot_script(impostor.mac);
    assert_eq!(status, 200, "{own}");
    let impostor_token = kernel_args(&own).token;
    assert_ne!(impostor_token, args.token);
    let (_, metrics) = impostor.get("http://10.0.0.1/metrics");
    assert!(metrics.contains("oasis_errors_total{kind=\"http_forbidden\"} 1"), "{metrics}");

    // The victim registers with its boot's token, brings its link up and heartbeats through it.
    let (victim_private, victim_key) = keypair(1);
    let accepted = victim.register(&args.pin, request(&args.token, VICTIM_MAC, &victim_key, 1)).unwrap();
    assert_eq!(accepted.state, MachineState::Accepted);
    let (credential, link) = (accepted.credential.unwrap(), accepted.link.unwrap());
    let link_end = link_up(&victim, victim_private, &link);
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = victim.heartbeat(&args.pin, &credential, link.appliance_address) {
        assert!(Instant::now() < deadline, "no heartbeat through the link: {e}\n{}", appliance.log());
        std::thread::sleep(Duration::from_millis(500));
    }

    // The impostor, from its own address, as the victim with a new key: refused whatever it holds.
    let (_, impostor_key) = keypair(9);
    let as_victim = |token: &str, nonce| request(token, VICTIM_MAC, &impostor_key, nonce);
    let (status, message) = refused(impostor.register(&args.pin, as_victim(&impostor_token, 10)));
    assert_eq!(status, 401, "its own per-boot token is not the victim's: {message}");
    for (what, token, nonce) in [("the join token", &join.token, 11), ("the victim's own token", &args.token, 12)] {
        let (status, message) = refused(impostor.register(&args.pin, as_victim(token, nonce)));
        assert_eq!(status, 403, "with {what}: {message}");
        assert!(message.contains(&format!("{VICTIM_MAC} holds {}", victim.address)), "{message}");
    }
    // Even from the victim's own address (an attacker who forges both addresses on the wire gets
    // that far), a new key is refused while the victim is alive on its link.
    let (status, message) = refused(victim.register(&args.pin, as_victim(&args.token, 13)));
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("alive on its management link"), "{message}");

    // The victim keeps its key, its address and its credential; its next heartbeat works.
    victim.heartbeat(&args.pin, &credential, link.appliance_address).expect("the victim's heartbeat");
    let record = registration(&appliance);
    assert_eq!(record.record.wireguard_key, victim_key);
    assert_eq!(record.record.overlay, Some(link.address));
    let events = appliance.cli(&["events", "--limit", "200"]);
    for kind in ["registration-refused", "rekey-refused"] {
        assert!(events.contains(kind), "event {kind} missing:\n{events}");
    }
    assert!(!events.contains("machine-rekeyed"), "{events}");

    // The victim reboots: its link goes silent, it fetches a new script and registers with a new
    // key. The old boot's token no longer counts; the new key is taken once the link has been
    // silent for the window, keeping the machine's address, with an event.
    drop(link_end);
    let (status, script) = victim.boot_script(victim.mac);
    assert_eq!(status, 200);
    let rebooted = kernel_args(&script);
    let (_, new_key) = keypair(2);
    let (status, _) = refused(victim.register(&args.pin, request(&args.token, VICTIM_MAC, &new_key, 20)));
    assert_eq!(status, 401, "the previous boot's token is replaced by the new script's");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut attempts = Vec::new();
    let answer = loop {
        let nonce = 21 + attempts.len() as u32;
        match victim.register(&rebooted.pin, request(&rebooted.token, VICTIM_MAC, &new_key, nonce)) {
            Ok(answer) => break answer,
            Err(e) => attempts.push(e.to_string()),
        }
        assert!(Instant::now() < deadline, "the rebooted machine was never taken back: {attempts:#?}");
        std::thread::sleep(Duration::from_secs(2));
    };
    assert!(
        attempts.first().is_some_and(|a| a.contains("409")),
        "right after the link went down the key was still refused: {attempts:#?}"
    );
    assert_eq!((answer.state, answer.link.unwrap().address), (MachineState::Accepted, link.address));
    assert_eq!(registration(&appliance).record.wireguard_key, new_key);
    assert!(appliance.cli(&["events", "--limit", "200"]).contains("machine-rekeyed"));
    assert!(!appliance.log().contains(&join.token), "no log line shows the join token");
}

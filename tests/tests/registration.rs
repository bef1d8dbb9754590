//! Registration against a real `oasis serve` (real TLS, real store, the management WireGuard
//! interface through boringtun since this host's kernel has no WireGuard), with the agent's own
//! pinned client, from inside the test's namespace. No virtual machines: this is the protocol's
//! bad inputs and rules; tests/tests/node_join.rs boots real machines.

use std::net::Ipv4Addr;
use std::path::Path;

use base64::Engine;
use oasis_agent::client::{ApiClient, ApiError, Endpoint};
use oasis_e2e::appliance::{
    agent_args, boot_root, join_args, register, register_request as request, write_config, Appliance,
};
use oasis_e2e::Netns;
use oasis_proto::{Heartbeat, MachineState, RegisterResponse};

const API: &str = "https://10.0.0.1:9443";

fn heartbeat_from_rack(ns: &Netns, pin: &str, credential: &str) -> Result<(), ApiError> {
    let (pin, credential) = (pin.to_string(), credential.to_string());
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let beat = Heartbeat {
                phase: "test".into(),
                uptime_secs: 1,
                last_error: None,
                applied_revision: 0,
                ..Heartbeat::default()
            };
            let rack = Endpoint::parse(API)?;
            ApiClient::new(API, &pin)?.heartbeat(&rack, &credential, &beat).await
        })
    })
}

fn status_of(result: Result<RegisterResponse, ApiError>) -> u16 {
    match result {
        Err(ApiError::Refused { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// `curl` with the pin, for bodies the agent's client would never send.
fn raw_post(ns: &Netns, dir: &Path, pin: &str, body: &[u8]) -> String {
    let file = dir.join("body");
    std::fs::write(&file, body).unwrap();
    let hex = pin.strip_prefix("sha256:").unwrap();
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let pinned = format!("sha256//{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    let url = format!("{API}/v1/register");
    let data = format!("@{}", file.display());
    let out = ns
        .command("curl")
        .args(["-sk", "--pinnedpubkey", &pinned, "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["-H", "content-type: application/json", "--data-binary", &data, &url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn registration_follows_its_rules_and_survives_a_restart() {
    let ns = Netns::create("oasis-reg").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The node image's place in the boot root; the script is fetched, never booted, here.
    let root = boot_root(dir.path());
    std::fs::create_dir_all(root.join("node")).unwrap();
    std::fs::write(root.join("node/vmlinuz"), b"kernel").unwrap();
    std::fs::write(root.join("node/initrd.img"), b"initrd").unwrap();
    let config = write_config(dir.path(), "mode = \"off\"", &root, "[registration]\npolicy = \"manual\"\n");
    // The join token, as boot media carry it: the rules below are about registrations, whatever
    // their token (tests/tests/hostile_registration.rs has per-boot tokens and leases).
    let args = join_args(&config);
    let mut appliance = Appliance::start(&ns, &config, &dir.path().join("oasis.log"));

    assert_eq!(args.api, API);
    let (token, pin) = (args.token.clone(), args.pin.clone());
    let served = agent_args(&ns, "52-54-00-00-00-01");
    assert_eq!((served.api.as_str(), served.pin.as_str()), (API, pin.as_str()), "boot scripts point here");
    assert_ne!(served.token, token, "no boot script carries the join token");
    let uuid = "4c4c4544-0000-4000-8000-000000000001";

    // A rogue appliance (wrong pin) gets nothing, not even the token.
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let rogue = register(&ns, &wrong_pin, request(&token, uuid, "52:54:00:00:00:01", 1, 1));
    assert!(matches!(rogue, Err(ApiError::PinMismatch { .. })), "{rogue:?}");

    assert_eq!(status_of(register(&ns, &pin, request("wrong-token", uuid, "52:54:00:00:00:01", 1, 1))), 401);
    let mut bad_key = request(&token, uuid, "52:54:00:00:00:01", 1, 1);
    bad_key.wireguard_key = "not a key".into();
    assert_eq!(status_of(register(&ns, &pin, bad_key)), 400);
    assert_eq!(raw_post(&ns, dir.path(), &pin, b"{\"token\": 12"), "400", "malformed JSON");
    // (An oversized body's 413 is tested on the router in appliance/src/api.rs: over a real
    // connection curl may see the reset before the answer.)

    // Manual policy: pending until an operator accepts.
    let pending = register(&ns, &pin, request(&token, uuid, "52:54:00:00:00:01", 1, 2)).unwrap();
    assert_eq!((pending.state, pending.credential.is_none()), (MachineState::Pending, true));
    assert!(pending.message.contains("oasis machine accept"), "{}", pending.message);
    assert_eq!(status_of(register(&ns, &pin, request(&token, uuid, "52:54:00:00:00:01", 1, 2))), 409, "replay");
    appliance.cli(&["machine", "accept", "4c4c4544"]);
    let accepted = register(&ns, &pin, request(&token, uuid, "52:54:00:00:00:01", 1, 3)).unwrap();
    assert_eq!(accepted.state, MachineState::Accepted);
    let link = accepted.link.clone().expect("an accepted machine gets its link");
    assert_eq!(link.address, Ipv4Addr::new(10, 99, 0, 2));
    assert_eq!(link.endpoint.to_string(), "10.0.0.1:51820");
    let credential = accepted.credential.clone().unwrap();

    // The credential works only inside the management link.
    match heartbeat_from_rack(&ns, &pin, &credential) {
        Err(ApiError::Refused { status: 403, .. }) => {}
        other => panic!("a heartbeat from the rack network must be refused: {other:?}"),
    }
    assert!(matches!(heartbeat_from_rack(&ns, &pin, "forged"), Err(ApiError::Refused { status: 401, .. })));

    // The same UUID from another MAC is a duplicate identity, never a second record.
    assert_eq!(status_of(register(&ns, &pin, request(&token, uuid, "52:54:00:00:00:99", 9, 4))), 409);
    // A reboot: new WireGuard key, same machine, same address.
    let rebooted = register(&ns, &pin, request(&token, uuid, "52:54:00:00:00:01", 2, 5)).unwrap();
    assert_eq!(rebooted.link.unwrap().address, link.address);

    let interface = std::fs::read_to_string(&config).unwrap();
    let wg = interface.lines().find_map(|l| l.strip_prefix("interface = \"owg")).unwrap().trim_end_matches('"');
    let addresses = ns.ip(&["-4", "addr", "show", "dev", &format!("owg{wg}")]).unwrap();
    assert!(addresses.contains("10.99.0.1/16"), "the management interface is up: {addresses}");

    let events = appliance.cli(&["events", "--limit", "100"]);
    for kind in
        ["registration-refused", "machine-registered", "machine-accepted", "duplicate-identity", "machine-rekeyed"]
    {
        assert!(events.contains(kind), "event {kind} missing:\n{events}");
    }
    assert!(!events.contains(&token), "no event shows the join token");
    assert!(!appliance.log().contains(&token), "no log line shows the join token");

    // Restart: the record, its state and its address come back; no second record. The server
    // itself handles the SIGTERM (boringtun once took it and stopped only the WireGuard device).
    appliance.stop();
    assert!(appliance.log().contains("terminated; stopping"), "SIGTERM reached oasis serve:\n{}", appliance.log());
    let mut appliance = Appliance::start(&ns, &config, &dir.path().join("oasis.log"));
    let again = register(&ns, &pin, request(&token, uuid, "52:54:00:00:00:01", 2, 6)).unwrap();
    assert_eq!((again.state, again.link.unwrap().address), (MachineState::Accepted, link.address));
    let machines = appliance.machines();
    let registered: Vec<_> = machines.iter().filter_map(|m| m.registration.as_ref()).collect();
    assert_eq!(registered.len(), 1, "{machines:?}");
    let r = &registered[0].record;
    assert_eq!((r.state, r.overlay), (MachineState::Accepted, Some("10.99.0.2".parse().unwrap())));
    assert_eq!(r.inventory.cpus, 2);
    assert!(r.credential_sha256.is_none(), "no credential hash leaves the appliance");
    appliance.stop();
}

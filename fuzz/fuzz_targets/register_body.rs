//! The bodies agents POST to the API: `/v1/register` (JSON -> `RegisterRequest` -> the
//! `Registry::register` decision, then the same request replayed, as an attacker on the rack can)
//! and `/v1/agent/heartbeat` (JSON -> `Heartbeat` -> the registry). The registry starts each input
//! with machines in every state, so the duplicate, replay, rekey and exhausted-overlay paths are
//! reachable.
//!
//! Input: one byte choosing the body, the acceptance policy and what the appliance saw on the wire
//! (proxy mode, or full mode from the leased address, another one or none; the first machine live
//! on its link or not; a per-boot token issued or not), then the JSON body.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use oasis_core::registry::{
    credential_hash, BootToken, Leases, MachineRecord, Overlay, Policy, RefusalKind, Registration, Registry, Wire,
};
use oasis_proto::MacAddr;
use oasis_proto::{Heartbeat, Inventory, MachineState, RegisterRequest, RegisterResponse, System};

/// The join token; the seeds carry it.
const TOKEN: &str = "fuzz-join-token";
const NOW: u64 = 1_700_000_000;
/// A per-boot token, issued to [`FROM`] when the input says so.
const BOOT_TOKEN: &str = "fuzz-boot-token";
/// Where every registration comes from.
const FROM: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);

fn record(n: u8, state: MachineState, uuid: Option<&str>) -> MachineRecord {
    let boot_mac = MacAddr([0x52, 0x54, 0x00, 0x00, 0x01, n]);
    let inventory = Inventory {
        system: System { uuid: uuid.map(String::from), serial: Some(format!("SN{n}")), ..Default::default() },
        ..Default::default()
    };
    let accepted = state == MachineState::Accepted;
    MachineRecord {
        id: oasis_core::registry::machine_id(&inventory, boot_mac),
        state,
        boot_mac,
        wireguard_key: key(n),
        inventory,
        agent_version: "0.1.0".into(),
        overlay: accepted.then(|| Ipv4Addr::new(10, 99, 0, 1 + n)),
        credential_sha256: accepted.then(|| credential_hash(&format!("cred-{n}"))),
        first_registered: NOW - 100,
        last_registered: NOW - 100,
        reason: String::new(),
        recent_nonces: vec![format!("nonce-used-by-{n:0>10}")],
        reprovision: None,
    }
}

/// What the appliance saw on the wire, chosen by the input's first byte's upper bits.
fn wire(choice: u8) -> Wire {
    let leases = match (choice >> 4) & 3 {
        0 => Leases::NotOurs,
        1 => Leases::Bound(Some(FROM)),
        2 => Leases::Bound(Some(Ipv4Addr::new(10, 0, 0, 50))),
        _ => Leases::Bound(None),
    };
    // The first machine's key was heard 3 s ago: it is alive on its link.
    let handshakes = if choice & 0x40 != 0 { HashMap::from([(key(1), 3)]) } else { HashMap::new() };
    let boot_token = (choice & 0x80 != 0).then(|| BootToken {
        sha256: credential_hash(BOOT_TOKEN),
        issued_to: Some(FROM),
        issued_at: NOW - 10,
    });
    Wire { from: FROM, leases, boot_token, handshakes }
}

fn key(n: u8) -> String {
    format!("{}{n:02}A=", "A".repeat(41))
}

fn registry(choice: u8) -> Registry {
    let policy = match choice % 3 {
        0 => Policy::Auto,
        1 => Policy::Allowlist {
            serials: HashSet::from(["sn-fuzz".to_string()]),
            macs: HashSet::from([MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x01])]),
        },
        _ => Policy::Manual,
    };
    // A /29: six host addresses, the appliance's and three accepted machines' taken, so a few
    // acceptances exhaust it.
    let overlay = Overlay {
        appliance: Ipv4Addr::new(10, 99, 0, 1),
        prefix_len: 29,
        endpoint: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 51820),
        appliance_key: format!("{}=", "B".repeat(43)),
        keepalive_secs: 15,
    };
    let records = vec![
        record(1, MachineState::Accepted, Some("4c4c4544-0000-1000-8000-000000000001")),
        record(2, MachineState::Accepted, None),
        record(3, MachineState::Accepted, Some("4c4c4544-0000-1000-8000-000000000003")),
        record(4, MachineState::Pending, Some("4c4c4544-0000-1000-8000-000000000004")),
        record(5, MachineState::Rejected, Some("4c4c4544-0000-1000-8000-000000000005")),
    ];
    Registry::new(policy, overlay, records)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else { return };
    let mut registry = registry(choice >> 1);
    let wire = wire(choice);
    if choice & 1 == 1 {
        heartbeat(&mut registry, body);
        return;
    }
    let Ok(req) = serde_json::from_slice::<RegisterRequest>(body) else { return };
    let before: Vec<MachineRecord> = registry.records().cloned().collect();
    match registry.register(&req, TOKEN, "fresh-credential", &wire, NOW) {
        Registration::Refuse { kind, message, .. } => {
            let status = oasis_appliance::operator::refusal_status(kind).as_u16();
            assert!(matches!(status, 400 | 401 | 403 | 409), "status {status}: {message}");
            assert!(!message.is_empty());
        }
        Registration::Answer { record, response, old_key, .. } => {
            assert_eq!(response.machine_id, record.id);
            assert_eq!(response.state, record.state);
            let linked = record.state == MachineState::Accepted && record.overlay.is_some();
            assert_eq!(response.credential.is_some(), linked, "{response:?}");
            assert_eq!(response.link.is_some(), linked, "{response:?}");
            if let Some(address) = record.overlay {
                // Never the appliance's address, never another machine's.
                assert_ne!(address, registry.overlay.appliance);
                assert!(
                    before.iter().all(|r| r.id == record.id || r.overlay != Some(address)),
                    "{address} given twice"
                );
            }
            assert!(old_key.is_none_or(|k| k != record.wireguard_key));
            // The agent reads the response back; the store keeps the record as JSON.
            let text = serde_json::to_vec(&response).expect("a response serializes");
            assert_eq!(serde_json::from_slice::<RegisterResponse>(&text).expect("the agent reads it"), response);
            let stored = serde_json::to_vec(&*record).expect("a record serializes");
            assert_eq!(&serde_json::from_slice::<MachineRecord>(&stored).expect("the store reads it"), &*record);
            registry.apply(*record);
            // The same request again is a replay.
            match registry.register(&req, TOKEN, "another-credential", &wire, NOW + 1) {
                Registration::Refuse { kind: RefusalKind::Conflict, .. } => {}
                other => panic!("a replayed registration was not refused: {other:?}"),
            }
        }
    }
});

fn heartbeat(registry: &mut Registry, body: &[u8]) {
    let Ok(beat) = serde_json::from_slice::<Heartbeat>(body) else { return };
    let id = registry.records().find(|r| r.state == MachineState::Accepted).map(|r| r.id.clone()).expect("a machine");
    registry.record_heartbeat(&id, beat.clone(), NOW);
    let last = registry.heartbeat_of(&id).expect("the heartbeat just recorded");
    assert_eq!(last.heartbeat, beat);
    // `GET /v1/machines` shows it, and `oasis machines` reads that back.
    let text = serde_json::to_vec(&last.heartbeat).expect("a heartbeat serializes");
    assert_eq!(serde_json::from_slice::<Heartbeat>(&text).expect("it reads back"), beat);
}

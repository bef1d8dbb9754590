//! `oasis machines`: every machine seen booting or registered, with its registration.

use oasis_appliance::admin::{self, MachineEntry};
use oasis_appliance::api::MachineView;
use oasis_appliance::operator::Action;

use super::read_state;
use super::table::{ago, render_table};
use crate::cli::StateArgs;

pub fn run(args: &StateArgs) -> anyhow::Result<()> {
    let entries: Vec<MachineEntry> = read_state(&args.data_dir()?, Action::Machines, |store| {
        // Read without a running appliance: no heartbeats or handshakes to show.
        let views = store
            .records()?
            .into_iter()
            .map(|record| MachineView { record, last_heartbeat: None, handshake_age_secs: None })
            .collect();
        Ok(admin::machine_entries(store.machines()?, views))
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    print!("{}", machines_table(&entries));
    Ok(())
}

/// The `oasis machines` table.
fn machines_table(entries: &[MachineEntry]) -> String {
    let gib = |bytes: u64| format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64);
    let rows = entries
        .iter()
        .map(|e| {
            let m = &e.netboot;
            let power = e.power.as_ref().map_or_else(|| "-".to_string(), |seen| seen.word());
            let mut row = vec![
                m.mac.to_string(),
                power,
                e.bmc.clone().unwrap_or_else(|| "-".into()),
                m.firmware().into(),
                m.last_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
                m.boot_count.to_string(),
            ];
            match &e.registration {
                None => {
                    row.extend(["-".into(), "not registered".into(), "-".into(), "-".into(), "-".into(), "-".into()])
                }
                Some(v) => {
                    let r = &v.record;
                    let inv = &r.inventory;
                    // Whole: an operator types it (`oasis machine accept ID`), and two machines'
                    // ids may differ only at their end (`mac-525400bb0001`, `mac-525400bb0002`).
                    row.extend([
                        r.id.clone(),
                        r.state.to_string(),
                        format!(
                            "{} {}cpu {}",
                            inv.system.serial.as_deref().unwrap_or("no-serial"),
                            inv.cpus,
                            gib(inv.memory_bytes)
                        ),
                        r.overlay.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                        v.last_heartbeat.as_ref().map(|h| ago(h.at)).unwrap_or_else(|| "-".into()),
                        v.handshake_age_secs.map(|s| format!("{s}s ago")).unwrap_or_else(|| "-".into()),
                    ]);
                }
            }
            row
        })
        .collect();
    render_table(
        &[
            "MAC",
            "POWER",
            "BMC",
            "FIRMWARE",
            "ADDRESS",
            "BOOTS",
            "ID",
            "STATE",
            "INVENTORY",
            "OVERLAY",
            "HEARTBEAT",
            "HANDSHAKE",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use oasis_proto::MachineState;

    use super::*;
    use oasis_core::registry::MachineRecord;

    fn record(id: &str, mac: &str) -> MachineRecord {
        MachineRecord {
            id: id.into(),
            state: MachineState::Pending,
            boot_mac: mac.parse().unwrap(),
            wireguard_key: String::new(),
            inventory: Default::default(),
            agent_version: "0.1.0".into(),
            overlay: None,
            credential_sha256: None,
            first_registered: 1,
            last_registered: 1,
            reason: String::new(),
            recent_nonces: vec![],
            reprovision: None,
        }
    }

    #[test]
    fn the_machines_table_shows_every_id_whole() {
        let ids = ["mac-525400bb0001", "mac-525400bb0002", "6f1b2c3d-0000-4000-8000-000000000009"];
        let macs = ["52:54:00:bb:00:01", "52:54:00:bb:00:02", "52:54:00:00:00:09"];
        let views = ids
            .iter()
            .zip(macs)
            .map(|(id, mac)| MachineView { record: record(id, mac), last_heartbeat: None, handshake_age_secs: None })
            .collect();
        let text = machines_table(&admin::machine_entries(vec![], views));
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), ids.len(), "{text}");
        for (id, mac) in ids.iter().zip(macs) {
            let row = rows.iter().find(|r| r.starts_with(mac)).unwrap_or_else(|| panic!("no row for {mac}:\n{text}"));
            assert!(row.split_whitespace().any(|cell| cell == *id), "{id} is not whole in its row:\n{text}");
        }
    }
}

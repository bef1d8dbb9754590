//! The rack's machines as a plain-text table, one machine per line: the `inventory.txt` of the
//! USB stick's report and of the web page's downloads.

use oasis_core::assembly::status::ClusterStatus;

use crate::admin::MachineEntry;

/// The machines as `inventory.txt` lists them: a table, one machine per line.
pub fn text(machines: &[MachineEntry], cluster: Option<&ClusterStatus>) -> String {
    let header = ["ID", "SERIAL", "MACS", "CPUS", "MEMORY", "DISKS", "STATE", "ROLE", "POWER"];
    let gib = |bytes: u64| format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64);
    // As its BMC read it last; `-` without a BMC.
    let power = |entry: &MachineEntry| entry.power.as_ref().map_or_else(|| "-".to_string(), |seen| seen.word());
    let rows: Vec<Vec<String>> = machines
        .iter()
        .map(|entry| match &entry.registration {
            None => vec![
                "-".into(),
                "-".into(),
                entry.netboot.mac.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "not registered (netbooted only)".into(),
                "-".into(),
                power(entry),
            ],
            Some(view) => {
                let r = &view.record;
                let inv = &r.inventory;
                let mut macs: Vec<String> = inv.nics.iter().map(|n| n.mac.clone()).collect();
                let boot = r.boot_mac.to_string();
                if !macs.contains(&boot) {
                    macs.insert(0, boot);
                }
                let disks: Vec<String> =
                    inv.disks.iter().map(|d| format!("{}:{}", d.name, gib(d.size_bytes))).collect();
                let role = cluster
                    .and_then(|c| c.machines.iter().find(|m| m.id == r.id))
                    .map(|m| m.role.clone())
                    .unwrap_or_else(|| "-".into());
                vec![
                    r.id.clone(),
                    inv.system.serial.clone().unwrap_or_else(|| "-".into()),
                    macs.join(","),
                    inv.cpus.to_string(),
                    gib(inv.memory_bytes),
                    if disks.is_empty() { "-".into() } else { disks.join(",") },
                    r.state.to_string(),
                    role,
                    power(entry),
                ]
            }
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        text.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

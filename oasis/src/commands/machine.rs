//! `oasis machine boot|accept|reject|reprovision|remove|power`: what the operator decides about one machine.

use anyhow::{bail, Context};
use oasis_appliance::operator::{self, Action, Decision};
use oasis_appliance::store::Store;
use oasis_proto::MacAddr;

use crate::cli::{BootArg, PowerArg, StateArgs};
use oasis_appliance::power::{PowerOp, PowerReport};

/// `oasis machine accept|reject|reprovision|remove ID`, through the running appliance.
pub fn decide(id: &str, decision: Option<Decision>, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let machine = id.to_string();
    let (action, word, past) = match decision {
        Some(decision) => (Action::Decide { machine, decision }, decision.word(), decision.past()),
        None => (Action::Remove { machine }, "remove", "removed"),
    };
    let answer = operator::ask(&data_dir, &action).context("asking oasis serve")?;
    if answer.is_none() {
        bail!("oasis serve is not running on {}: start it, then {word} the machine", data_dir.display());
    }
    println!("{id} {past}");
    Ok(())
}

pub async fn boot(mac: MacAddr, target: BootArg, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let word = match target {
        BootArg::Network => "network",
        BootArg::Local => "local",
    };
    let mode = match target {
        BootArg::Network => oasis_appliance::store::BootMode::Network,
        BootArg::Local => oasis_appliance::store::BootMode::Local,
    };
    if operator::ask(&data_dir, &Action::SetBoot { mac, mode }).context("asking oasis serve")?.is_none() {
        let store = Store::open(&data_dir)?;
        store.set_boot_mode(mac, mode).await?;
    }
    println!("{mac} will boot from {}", if word == "local" { "its local disk" } else { "the network" });
    Ok(())
}

/// `oasis machine power OP ID|--all`, through the running appliance (which holds the BMCs'
/// credentials): a line per machine; an error when any action failed.
pub fn power(op: PowerArg, id: Option<&str>, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let op = match op {
        PowerArg::Status => PowerOp::Status,
        PowerArg::On => PowerOp::On,
        PowerArg::Off => PowerOp::Off,
        PowerArg::Cycle => PowerOp::Cycle,
        PowerArg::Pxe => PowerOp::Pxe,
    };
    let machine = id.unwrap_or(operator::ALL_MACHINES).to_string();
    let Some(body) = operator::ask(&data_dir, &Action::Power { machine, op }).context("asking oasis serve")? else {
        bail!(
            "oasis serve is not running on {}: it holds the BMCs' credentials; start it, then try again",
            data_dir.display()
        );
    };
    let reports: Vec<PowerReport> = serde_json::from_slice(&body).context("reading oasis serve's answer")?;
    if state.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let rows = reports
            .iter()
            .map(|r| {
                vec![
                    r.id.clone().unwrap_or_else(|| r.machine.to_string()),
                    r.bmc.clone(),
                    r.op.to_string(),
                    r.state.map_or("-".into(), |s| s.to_string()),
                    format!("{:.1}s", r.millis as f64 / 1000.0),
                    r.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        super::table::table(&["MACHINE", "BMC", "ACTION", "STATE", "TOOK", "ERROR"], rows);
    }
    let failed = reports.iter().filter(|r| r.error.is_some()).count();
    if failed > 0 {
        bail!("{failed} of {} power action(s) failed (the ERROR column says why)", reports.len());
    }
    Ok(())
}

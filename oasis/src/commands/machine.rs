//! `oasis machine boot|accept|reject|remove`: what the operator decides about one machine.

use anyhow::{bail, Context};
use oasis_appliance::operator::{self, Action, Decision};
use oasis_appliance::store::Store;
use oasis_proto::MacAddr;

use crate::cli::{BootArg, StateArgs};

/// `oasis machine accept|reject|remove ID`, through the running appliance.
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

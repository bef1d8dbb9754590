//! `oasis cluster status|kubeconfig|get|put`: the cluster, from the running appliance.

use anyhow::Context;
use oasis_appliance::operator::Action;

use super::ask_running;
use crate::cli::StateArgs;

/// `oasis cluster status`, from the running appliance.
pub fn status(args: &StateArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir()?;
    let body = ask_running(&data_dir, &Action::ClusterStatus, ": the cluster status comes from it")?;
    let status: oasis_core::assembly::status::ClusterStatus =
        serde_json::from_slice(&body).context("reading the answer of oasis serve")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

/// `oasis cluster kubeconfig`: the admin kubeconfig from the running appliance.
pub fn kubeconfig(args: &StateArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir()?;
    let body = ask_running(&data_dir, &Action::Kubeconfig, "")?;
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// `oasis cluster get|put KEY [VALUE] --via MACHINE`: prints the value read or written.
pub fn kv(key: &str, value: Option<&str>, via: &str, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let (via, key) = (via.to_string(), key.to_string());
    let action = match value {
        Some(value) => Action::KvPut { via, key, value: value.to_string() },
        None => Action::KvGet { via, key },
    };
    let body = ask_running(&data_dir, &action, "")?;
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

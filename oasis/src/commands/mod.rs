//! One file per subcommand: each parses its arguments into an operator action
//! (`oasis_appliance::operator::Action`) asked of the running appliance through its admin socket,
//! or reads the store when no appliance runs, or builds an image.

pub mod boot;
pub mod cluster;
pub mod config;
pub mod events;
pub mod image;
pub mod leases;
pub mod machine;
pub mod machines;
pub mod serve;
mod table;
pub mod update;

use std::path::Path;

use anyhow::{bail, Context};
use oasis_appliance::operator::{self, Action};
use oasis_appliance::store::Store;
use serde::de::DeserializeOwned;

/// Reads state from the running appliance, or from the store when none runs.
fn read_state<T: DeserializeOwned>(
    data_dir: &Path,
    action: Action,
    direct: impl FnOnce(&Store) -> Result<T, oasis_appliance::store::StoreError>,
) -> anyhow::Result<T> {
    if let Some(body) = operator::ask(data_dir, &action).context("asking oasis serve")? {
        return serde_json::from_slice(&body).context("reading the answer of oasis serve");
    }
    if !data_dir.join(oasis_appliance::store::STORE_FILE).exists() {
        bail!("no oasis state in {}: give --config or --data-dir of an appliance", data_dir.display());
    }
    let store = Store::open(data_dir)?;
    Ok(direct(&store)?)
}

/// The answer of the running appliance to `action`; an error naming `data_dir` when none runs.
fn ask_running(data_dir: &Path, action: &Action, why: &str) -> anyhow::Result<Vec<u8>> {
    match operator::ask(data_dir, action).context("asking oasis serve")? {
        Some(body) => Ok(body),
        None => bail!("oasis serve is not running on {}{why}", data_dir.display()),
    }
}

//! `oasis serve --config FILE`: the appliance's services, until a signal stops them.

use std::path::Path;

use oasis_core::config::Config;

pub async fn run(config: &Path, new_store: bool) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    oasis_appliance::serve::run(config, new_store).await?;
    Ok(())
}

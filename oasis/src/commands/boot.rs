//! `oasis boot`: the appliance image's supervisor, run by its `/init` (`oasis_boot`).

pub async fn run() -> anyhow::Result<()> {
    tokio::task::spawn_blocking(oasis_boot::supervisor::run).await?
}

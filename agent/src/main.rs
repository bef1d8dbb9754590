//! `oasis-agent`: the node agent, started by the node image's `/init`.
//!
//! Run as `oasis-dhcp-event` (a link udhcpc runs as its script) it applies one DHCP event and exits.

use std::process::ExitCode;

use oasis_agent::{boot, dhcp};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let argv0 = std::env::args().next().unwrap_or_default();
    let result = if argv0.rsplit('/').next() == Some(dhcp::HOOK_NAME) { dhcp_hook().await } else { run().await };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oasis-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let network = boot::boot(&boot::BootConfig::node()).await?;
    println!("{}", network.summary());
    // Registration takes over from here; until then the agent stays up so udhcpc keeps the lease.
    std::future::pending::<()>().await;
    Ok(())
}

async fn dhcp_hook() -> anyhow::Result<()> {
    let action = std::env::args().nth(1).unwrap_or_default();
    let event = dhcp::Event::from_udhcpc(&action, |k| std::env::var(k).ok())?;
    let state = std::env::var_os(dhcp::STATE_DIR_ENV).unwrap_or_else(|| dhcp::STATE_DIR.into());
    dhcp::run_hook(&event, std::path::Path::new(&state)).await?;
    Ok(())
}

//! `oasis-agent`, started (and restarted if it exits) by the node image's `/init`: the boot phase
//! (drivers, boot link, DHCP), then registration and the management link, for the life of the
//! machine.
//!
//! Run as `oasis-dhcp-event` (a link udhcpc runs as its script) it applies one DHCP event and exits.

use std::path::Path;
use std::process::ExitCode;

use oasis_agent::inventory::Roots;
use oasis_agent::{boot, dhcp, BootInfo};
use oasis_proto::KernelArgs;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let argv0 = std::env::args().next().unwrap_or_default();
    let result = if argv0.rsplit('/').next() == Some(dhcp::HOOK_NAME) { dhcp_hook().await } else { run().await };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oasis-agent: error: {}", oasis_proto::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let network = boot::boot(&boot::BootConfig::node()).await?;
    println!("{}", network.summary());
    let console = Path::new(oasis_agent::CONSOLE);
    let args = match std::fs::read_to_string("/proc/cmdline") {
        Ok(line) => KernelArgs::parse(&line).map_err(|e| oasis_proto::error_chain(&e)),
        Err(e) => Err(format!("cannot read /proc/cmdline: {}", oasis_proto::error_chain(&e))),
    };
    // Without its arguments the agent cannot register; it stays up (udhcpc keeps the lease) and
    // says why on the console.
    let args = match args {
        Ok(args) => args,
        Err(message) => oasis_agent::halt(console, &message).await,
    };
    let info = BootInfo {
        interface: network.interface.clone(),
        mac: network.mac.clone(),
        address: Some((network.address, network.prefix)),
    };
    oasis_agent::run(args, info, Roots::default()).await
}

async fn dhcp_hook() -> anyhow::Result<()> {
    let action = std::env::args().nth(1).unwrap_or_default();
    let event = dhcp::Event::from_udhcpc(&action, |k| std::env::var(k).ok())?;
    let state = std::env::var_os(dhcp::STATE_DIR_ENV).unwrap_or_else(|| dhcp::STATE_DIR.into());
    dhcp::run_hook(&event, Path::new(&state)).await?;
    Ok(())
}

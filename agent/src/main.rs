//! `oasis-agent`, started by the node image's init: read the kernel command line, then hand over
//! to the library. It never exits: on a node, PID 1 exiting panics the kernel.

use std::path::Path;
use std::time::Duration;

use oasis_agent::inventory::Roots;
use oasis_agent::BootInfo;
use oasis_proto::KernelArgs;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false).init();
    let console = Path::new(oasis_agent::CONSOLE);
    let args = match std::fs::read_to_string("/proc/cmdline") {
        Ok(line) => KernelArgs::parse(&line).map_err(|e| e.to_string()),
        Err(e) => Err(format!("cannot read /proc/cmdline: {e}")),
    };
    let args = match args {
        Ok(args) => args,
        Err(message) => oasis_agent::halt(console, &message).await,
    };
    let roots = Roots::default();
    // Until the boot phase (drivers, DHCP) hands over its own BootInfo: wait for a NIC with a
    // carrier.
    let boot = loop {
        match BootInfo::first_linked_nic(&roots) {
            Some(boot) => break boot,
            None => {
                tracing::warn!("no network interface has a link yet; is the cable plugged in?");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    oasis_agent::run(args, boot, roots).await
}

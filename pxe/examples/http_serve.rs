//! Serves a directory as the HTTP boot root, for benchmarks and manual tests:
//! `cargo run --release -p oasis-pxe --example http_serve -- ROOT 127.0.0.1:8081`.
//! See `scripts/bench-http.sh`, which compares it with nginx on the same files.

use std::net::SocketAddr;
use std::sync::Arc;

use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::conn::{Guard, Listener, Timeouts};
use oasis_pxe::conn_limit::Caps;
use oasis_pxe::http::{router, serve, HttpBoot, StaticDirectory};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::script::{BootProfile, ScriptRenderer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(addr)) = (args.next(), args.next()) else {
        return Err("usage: http_serve ROOT ADDR:PORT".into());
    };
    let addr: SocketAddr = addr.parse()?;
    let profile = BootProfile { kernel: "vmlinuz".into(), initrd: Some("initrd.img".into()), cmdline: String::new() };
    profile.validate()?;
    let scripts = ScriptRenderer::new(format!("http://{addr}"), profile);
    let metrics = Arc::new(Metrics::default());
    let state = HttpBoot::new(BootRoot::new(&root)?, scripts, Arc::new(StaticDirectory::new()), metrics.clone());
    // The appliance's caps for a host with a generous descriptor limit (appliance/src/limits.rs).
    let guard = Guard::new(Listener::HttpBoot, Caps::new(1024, 32), Timeouts::default(), metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("serving {root} on http://{addr}");
    serve(listener, router(state), guard).await;
    Ok(())
}

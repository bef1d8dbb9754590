//! Many machines registering at once, for `scripts/bench-join`: N simulated agents (no virtual
//! machines) register with a running appliance through the agent's own pinned client, all at
//! the same moment, and the time until every one is accepted is printed.
//!
//! ```text
//! register_many API PIN BOOT_URL COUNT
//! ```
//!
//! Run it where the API is reachable (inside the rack's namespace). Each simulated machine has its
//! own SMBIOS UUID, MAC and WireGuard key, and first fetches its boot script from `BOOT_URL`
//! (`http://10.0.0.1`) for its per-boot token, as a netbooted machine does, before the clock
//! starts; with DHCP off or in proxy mode every address may fetch every script. Under the `auto`
//! policy each is accepted on its first registration. A machine that is refused or not accepted is
//! retried until a minute has passed.

use std::time::{Duration, Instant};

use oasis_agent::client::ApiClient;
use oasis_e2e::appliance::{simulated_mac as mac, simulated_request as request};
use oasis_proto::{KernelArgs, MachineState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The per-boot token in machine `i`'s boot script.
async fn boot_token(boot: &str, i: u32) -> String {
    let host = boot.strip_prefix("http://").expect("BOOT_URL is http://HOST[:PORT]").trim_end_matches('/');
    let addr = if host.contains(':') { host.to_string() } else { format!("{host}:80") };
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("the HTTP boot service answers");
    let target = format!("/boot.ipxe?mac={}", mac(i).replace(':', "-"));
    stream.write_all(format!("GET {target} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let line = raw.lines().find(|l| l.starts_with("kernel ")).unwrap_or_else(|| panic!("no boot script:\n{raw}"));
    KernelArgs::parse(line).unwrap_or_else(|e| panic!("{e}: {line}")).token
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [api, pin, boot, count] = args.as_slice() else {
        eprintln!("usage: register_many API PIN BOOT_URL COUNT");
        std::process::exit(2);
    };
    let count: u32 = count.parse().expect("COUNT is a number");
    let client = std::sync::Arc::new(ApiClient::new(api, pin).expect("a usable API URL"));
    let mut tokens = Vec::new();
    for i in 0..count {
        tokens.push(boot_token(boot, i).await);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, token) in (0..count).zip(tokens) {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            for attempt in 0.. {
                match client.register(&request(&token, i, attempt)).await {
                    Ok(r) if r.state == MachineState::Accepted && r.credential.is_some() => {
                        return Ok(started.elapsed())
                    }
                    Ok(r) if Instant::now() > deadline => return Err(format!("machine {i}: still {}", r.state)),
                    Err(e) if Instant::now() > deadline => return Err(format!("machine {i}: {e}")),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            unreachable!("the loop returns")
        }));
    }
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(t) => times.push(t),
            Err(e) => failures.push(e),
        }
    }
    times.sort();
    let pct = |p: usize| times.get((times.len() * p / 100).min(times.len().saturating_sub(1))).copied();
    println!(
        "{} of {count} accepted in {:.2} s (p50 {:.2} s, max {:.2} s)",
        times.len(),
        started.elapsed().as_secs_f64(),
        pct(50).unwrap_or_default().as_secs_f64(),
        times.last().copied().unwrap_or_default().as_secs_f64()
    );
    for f in failures.iter().take(5) {
        eprintln!("{f}");
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}

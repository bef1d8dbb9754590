//! oasis-tftp: fetch a file over TFTP and report the throughput, for checks and benchmarks.
//!
//! ```text
//! oasis-tftp get HOST:PORT FILE [--blksize N] [--windowsize N] [--timeout SECS] [--parallel N] [--out PATH]
//! oasis-tftp serve ADDR:PORT DIR [--max-blksize N] [--max-windowsize N] [--no-blksize]
//! ```
//!
//! Prints one line per transfer: bytes, seconds, MB/s (10^6 bytes), and the options the server
//! granted. With `--parallel N` it runs N copies at once and adds a total line. Without `--out` the
//! data is discarded; with `--parallel` and `--out`, copy i goes to `PATH.i`.
//!
//! `serve` runs the oasis TFTP server on its own (no DHCP, no logs), for benchmarks against it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Instant;

use oasis_proto::error_chain;
use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::metrics::Metrics;
use oasis_pxe::tftp::{fetch_into, ClientOptions, Stats, TftpConfig, TftpServer};

const USAGE: &str = "usage: oasis-tftp get HOST:PORT FILE [--blksize N] [--windowsize N] [--timeout SECS] \
                     [--parallel N] [--out PATH]\n       \
                     oasis-tftp serve ADDR:PORT DIR [--max-blksize N] [--max-windowsize N] [--no-blksize]";

#[derive(Debug)]
enum Command {
    Get(Args),
    Serve { addr: SocketAddr, dir: String, config: TftpConfig },
}

#[derive(Debug)]
struct Args {
    server: SocketAddr,
    file: String,
    options: ClientOptions,
    parallel: usize,
    out: Option<String>,
}

fn parse_command(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    match args.next().as_deref() {
        Some("get") => parse_get(args).map(Command::Get),
        Some("serve") => parse_serve(args),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("no command given".into()),
    }
}

fn resolve(text: &str) -> Result<SocketAddr, String> {
    text.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {text:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn parse_serve(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let addr = resolve(&args.next().ok_or("no ADDR:PORT given")?)?;
    let dir = args.next().ok_or("no DIR given")?;
    let mut config = TftpConfig::default();
    while let Some(flag) = args.next() {
        if flag == "--no-blksize" {
            config.no_blksize = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value.parse::<u16>().map_err(|_| format!("{flag} takes a number up to 65535, not {value:?}"))?;
        match flag.as_str() {
            "--max-blksize" => config.max_blksize = number,
            "--max-windowsize" => config.max_windowsize = number,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    config.check().map_err(|e| error_chain(&e))?;
    Ok(Command::Serve { addr, dir, config })
}

async fn serve(addr: SocketAddr, dir: String, config: TftpConfig) -> Result<(), String> {
    let root = BootRoot::new(&dir).map_err(|e| format!("cannot serve {dir}: {}", error_chain(&e)))?;
    let server = TftpServer::bind(addr, root, config, std::sync::Arc::new(Metrics::default()))
        .await
        .map_err(|e| error_chain(&e))?;
    let local = server.local_addr().map_err(|e| error_chain(&e))?;
    println!("serving {dir} on {local}");
    server.run().await;
    Ok(())
}

fn parse_get(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let server = resolve(&args.next().ok_or("no HOST:PORT given")?)?;
    let file = args.next().ok_or("no FILE given")?;
    let mut parsed = Args {
        server,
        file,
        options: ClientOptions { tsize: true, ..ClientOptions::default() },
        parallel: 1,
        out: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|_| format!("{flag} takes a number, not {value:?}"));
        let in_range = |n: u64, range: std::ops::RangeInclusive<u64>| {
            if range.contains(&n) {
                Ok(n)
            } else {
                Err(format!("{flag} must be between {} and {}", range.start(), range.end()))
            }
        };
        match flag.as_str() {
            "--blksize" => parsed.options.blksize = Some(in_range(number()?, 8..=65464)? as u16),
            "--windowsize" => parsed.options.windowsize = Some(in_range(number()?, 1..=65535)? as u16),
            "--timeout" => parsed.options.timeout = Some(in_range(number()?, 1..=255)? as u8),
            "--parallel" => parsed.parallel = in_range(number()?, 1..=100_000)? as usize,
            "--out" => parsed.out = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(parsed)
}

fn describe(stats: &Stats) -> String {
    let seconds = stats.elapsed.as_secs_f64();
    let rate = if seconds > 0.0 { stats.bytes as f64 / seconds / 1e6 } else { 0.0 };
    let mut granted = if stats.oack {
        format!("granted blksize {} windowsize {}", stats.blksize, stats.windowsize)
    } else {
        format!("no OACK: blksize {} windowsize {}", stats.blksize, stats.windowsize)
    };
    if let Some(tsize) = stats.tsize {
        granted += &format!(" tsize {tsize}");
    }
    if let Some(timeout) = stats.timeout {
        granted += &format!(" timeout {timeout}");
    }
    format!("{} bytes {seconds:.3} s {rate:.1} MB/s; {granted}; resends {}", stats.bytes, stats.resends)
}

async fn one(args: &Args, copy: usize) -> Result<Stats, String> {
    let name = args.file.as_bytes();
    let result = match &args.out {
        None => fetch_into(args.server, name, &args.options, &mut tokio::io::sink()).await,
        Some(out) => {
            let path = if args.parallel > 1 { format!("{out}.{copy}") } else { out.clone() };
            let file = tokio::fs::File::create(&path).await.map_err(|e| format!("cannot create {path}: {e}"))?;
            let mut writer = tokio::io::BufWriter::with_capacity(1 << 20, file);
            fetch_into(args.server, name, &args.options, &mut writer).await
        }
    };
    result.map_err(|e| format!("fetching {} from {}: {}", args.file, args.server, error_chain(&e)))
}

async fn run(args: Args) -> Result<(), String> {
    let args = std::sync::Arc::new(args);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for copy in 0..args.parallel {
        let args = args.clone();
        tasks.push(tokio::spawn(async move { one(&args, copy).await }));
    }
    let mut total = 0;
    let mut failed = 0;
    for task in tasks {
        match task.await.map_err(|e| format!("a transfer task failed: {e}"))? {
            Ok(stats) => {
                total += stats.bytes;
                println!("{}", describe(&stats));
            }
            Err(e) => {
                failed += 1;
                eprintln!("oasis-tftp: {e}");
            }
        }
    }
    if args.parallel > 1 {
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "total: {} copies, {failed} failed, {total} bytes {seconds:.3} s {:.1} MB/s",
            args.parallel,
            total as f64 / seconds / 1e6
        );
    }
    if failed > 0 {
        return Err(format!("{failed} of {} transfers failed", args.parallel));
    }
    Ok(())
}

fn main() -> ExitCode {
    let command = match parse_command(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("oasis-tftp: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("oasis-tftp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::Get(args) => runtime.block_on(run(args)),
        Command::Serve { addr, dir, config } => runtime.block_on(serve(addr, dir, config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oasis-tftp: {e}");
            ExitCode::FAILURE
        }
    }
}

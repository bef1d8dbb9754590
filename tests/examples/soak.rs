//! The soak of issue 13, for `scripts/soak`: a few hundred simulated machines boot, renew,
//! register, reboot and (some of them) heartbeat through their WireGuard link against a real
//! `oasis serve` for a bounded time, while the appliance's RSS, descriptors, threads, store file
//! and event count are sampled; at the end the slope of each and the totals. See
//! `oasis_e2e::soak` for what a machine does and why only some have a link.
//!
//! ```text
//! soak --dir DIR [--minutes 10] [--machines 300] [--linked 24] [--reboot-minutes 5] …
//! ```
//!
//! Needs root (namespaces). Exits 0 when every kind of operation failed at most
//! `--max-failed-percent` of the time and the appliance lived, 1 otherwise, 2 on bad arguments,
//! 130 when interrupted (after cleaning up).

use std::process::ExitCode;

use oasis_e2e::soak::{run, Outcome, Settings, USAGE};

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_args(std::env::args().skip(1)) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("soak: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&settings) {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

//! Ctrl-C for the long-running examples (`scripts/rack`): SIGINT and SIGTERM set a flag instead of
//! ending the process, so the example's loops stop at their next check and everything it made
//! (namespaces, taps, QEMU, `oasis serve`, the work directory) is removed once, by the owners'
//! `Drop`s, before it exits. A second Ctrl-C while that runs changes nothing.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches SIGINT and SIGTERM from now on; see the module comment.
pub fn catch() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: installs a handler that only stores to an atomic, which is async-signal-safe.
        let previous = unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        assert_ne!(previous, libc::SIG_ERR, "cannot catch signal {signal}");
    }
}

/// Whether SIGINT or SIGTERM came since [`catch`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Why a long-running example stopped before its end.
#[derive(Debug)]
pub enum Stop {
    Interrupted,
    Failed(String),
}

/// A failure while `what`, with its cause.
pub fn failed<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Stop + '_ {
    move |e| Stop::Failed(format!("{what}: {e}"))
}

/// The end of an example's liveness check: stopped by Ctrl-C (which also reaches its children,
/// so a child that just died is no failure then), failed with `dead` when a child is gone, else
/// going on.
pub fn stop_if_dead(dead: Option<String>) -> Result<(), Stop> {
    match dead {
        _ if interrupted() => Err(Stop::Interrupted),
        Some(message) => Err(Stop::Failed(message)),
        None => Ok(()),
    }
}

/// The example's one argument, a number of machines (3 when absent); a usage line and exit code 2
/// for anything else.
pub fn machine_count(program: &str) -> Result<usize, ExitCode> {
    match std::env::args().nth(1).map(|a| a.parse()) {
        None => Ok(3),
        Some(Ok(n)) if n > 0 => Ok(n),
        Some(_) => {
            eprintln!("usage: {program} [MACHINES]   (a number of machines, at least 1)");
            Err(ExitCode::from(2))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_sets_the_flag_and_the_process_goes_on() {
        catch();
        assert!(!interrupted());
        // SAFETY: raise(3) sends the signal to this thread; the handler above only sets the flag.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert!(interrupted(), "the handler ran and the process is still here");
        // Ctrl-C ends the rest of this test binary as usual.
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: restores the default disposition.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

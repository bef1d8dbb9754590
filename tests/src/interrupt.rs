//! Ctrl-C for the long-running examples (`scripts/rack`): SIGINT and SIGTERM set a flag instead of
//! ending the process, so the example's loops stop at their next check and everything it made
//! (namespaces, taps, QEMU, `oasis serve`, the work directory) is removed once, by the owners'
//! `Drop`s, before it exits. A second Ctrl-C while that runs changes nothing.

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

//! Helpers the agent's integration tests share.

/// Runs `f` on a thread of its own inside a new, unnamed network namespace, which disappears
/// when the thread ends.
pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's network namespace; the
        // thread is ours and ends when `f` returns.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {} (this test needs root)", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

//! Hot-plug: noticing a stick plugged in while the appliance runs.
//!
//! By polling `/sys/class/block` (every [`POLL_INTERVAL`]) rather than listening for uevents: a
//! poll needs no netlink socket and no udev, cannot miss an event that arrived before it
//! started or while it was busy, and costs a directory listing and a few sector reads. A stick is
//! new when its (name, diskseq) was not present at the previous poll, so the same stick pulled
//! and plugged back in between two polls (a new diskseq) is seen again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::devices::{Scanner, Stick};

/// How often [`watch`] looks.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Remembers the sticks of the previous poll.
#[derive(Debug)]
pub struct Watcher {
    scanner: Scanner,
    present: HashSet<(String, Option<u64>)>,
}

impl Watcher {
    /// A watcher whose first poll reports the sticks present then.
    pub fn new(scanner: Scanner) -> Self {
        Watcher { scanner, present: HashSet::new() }
    }

    /// A watcher that reports only sticks plugged in from now on (the supervisor has just
    /// read the ones present at boot).
    pub fn after_scan(scanner: Scanner, already: &[Stick]) -> Self {
        let present = already.iter().map(|s| (s.name.clone(), s.diskseq)).collect();
        Watcher { scanner, present }
    }

    /// The sticks present now that were not at the previous poll.
    pub fn poll(&mut self) -> Vec<Stick> {
        let sticks = self.scanner.scan();
        let now: HashSet<(String, Option<u64>)> = sticks.iter().map(|s| (s.name.clone(), s.diskseq)).collect();
        let new = sticks.into_iter().filter(|s| !self.present.contains(&(s.name.clone(), s.diskseq))).collect();
        self.present = now;
        new
    }
}

/// Polls until `stop` is set, calling `on_stick` for every stick that appears. Blocking: run it
/// on its own thread (or `spawn_blocking`).
pub fn watch(mut watcher: Watcher, interval: Duration, stop: &AtomicBool, mut on_stick: impl FnMut(Stick)) {
    while !stop.load(Ordering::Relaxed) {
        for stick in watcher.poll() {
            tracing::info!(stick = %stick, "USB stick plugged in");
            on_stick(stick);
        }
        // Sleep in short steps so a stop is noticed promptly.
        let mut slept = Duration::ZERO;
        while slept < interval && !stop.load(Ordering::Relaxed) {
            let step = Duration::from_millis(100).min(interval - slept);
            std::thread::sleep(step);
            slept += step;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::fake_system::{stick_image, FakeSystem};
    use super::*;

    fn names(sticks: Vec<Stick>) -> Vec<String> {
        sticks.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn sticks_are_reported_once_when_they_appear_and_again_after_a_replug() {
        let sys = FakeSystem::new();
        let image = stick_image(sys.dir.path());
        let partition = &image[1 << 20..];
        sys.add("sdb", 1, &image, &[("sdb1", partition)]);
        let mut watcher = Watcher::new(sys.scanner());
        assert_eq!(names(watcher.poll()), ["sdb1"], "present at the first poll");
        assert!(watcher.poll().is_empty(), "nothing new");
        sys.add("sdc", 2, &image, &[("sdc1", partition)]);
        assert_eq!(names(watcher.poll()), ["sdc1"]);
        // Pulled and plugged back in between two polls: the same name, a new diskseq.
        sys.remove("sdb");
        sys.add("sdb", 3, &image, &[("sdb1", partition)]);
        assert_eq!(names(watcher.poll()), ["sdb1"]);
        // Pulled, then plugged in after a poll saw it gone.
        sys.remove("sdc");
        assert!(watcher.poll().is_empty());
        sys.add("sdc", 2, &image, &[("sdc1", partition)]);
        assert_eq!(names(watcher.poll()), ["sdc1"]);

        let after_boot = Watcher::after_scan(sys.scanner(), &sys.scanner().scan()).poll();
        assert!(after_boot.is_empty(), "sticks read at boot are not reported again");
    }

    #[test]
    fn watch_calls_back_until_stopped() {
        let sys = FakeSystem::new();
        let image = stick_image(sys.dir.path());
        sys.add("sdb", 1, &image, &[("sdb1", &image[1 << 20..])]);
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, watcher) = (stop.clone(), Watcher::new(sys.scanner()));
            std::thread::spawn(move || watch(watcher, Duration::from_millis(20), &stop, |s| tx.send(s.name).unwrap()))
        };
        assert_eq!(rx.recv().unwrap(), "sdb1");
        sys.add("sdc", 2, &image, &[("sdc1", &image[1 << 20..])]);
        assert_eq!(rx.recv().unwrap(), "sdc1");
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}

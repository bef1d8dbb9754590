//! A client writing through the cluster while something happens to it: `/rollout/N` every
//! 200 ms through `oasis cluster put` (the member the appliance sees leading), and the longest
//! time without a successful write.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::appliance::oasis;

/// One write of the writer: when it was sent, its key number, and whether etcd took it.
#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub at: Instant,
    pub n: u64,
    pub ok: bool,
}

/// Puts `/rollout/N` every 200 ms through the cluster (the member the appliance sees leading)
/// until stopped.
#[derive(Debug)]
pub struct Writer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Write>>,
}

impl Writer {
    pub fn start(data_dir: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, data) = (stop.clone(), data_dir.to_str().unwrap().to_string());
        let thread = std::thread::spawn(move || {
            let mut writes = vec![];
            let mut n = 0;
            while !flag.load(Ordering::SeqCst) {
                let at = Instant::now();
                let (key, value) = (format!("/rollout/{n}"), n.to_string());
                let out = oasis(&["cluster", "put", &key, &value, "--data-dir", &data]);
                writes.push(Write { at, n, ok: out.status.success() });
                n += 1;
                std::thread::sleep(Duration::from_millis(200).saturating_sub(at.elapsed()));
            }
            writes
        });
        Writer { stop, thread }
    }

    pub fn finish(self) -> Vec<Write> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// The longest time without a successful write among `writes`, leaving out `excluded` (the
/// appliance's own restart, when no write can reach etcd through it).
pub fn longest_outage(writes: &[Write], excluded: Option<(Instant, Instant)>) -> Duration {
    let ok: Vec<Instant> = writes.iter().filter(|w| w.ok).map(|w| w.at).collect();
    ok.windows(2)
        .filter(|pair| excluded.is_none_or(|(from, to)| pair[1] < from || pair[0] > to))
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default()
}

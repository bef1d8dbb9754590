//! Keeping the events table within bounds: how many, how old, how many bytes ([`EventLimits`],
//! the `[events]` section of oasis.toml), and events caused by unauthenticated clients
//! aggregated per source ([`Tally`]), so that a flood of them costs a few events, not one each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::registry::Happening;

/// How many events, how old and how many bytes of them the store keeps; the oldest go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    pub max_count: u64,
    pub max_age: Duration,
    /// Bytes of event records (the store file holds some overhead on top).
    pub max_bytes: u64,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits { max_count: 10_000, max_age: Duration::from_secs(30 * 86_400), max_bytes: 16 << 20 }
    }
}

/// How long repeats from one source are counted before they are written as one event.
pub const TALLY_WINDOW: Duration = Duration::from_secs(600);
/// Sources (and kinds) tallied at once; repeats from further sources are counted together.
pub const TALLY_SOURCES: usize = 256;
/// The longest message an event from outside keeps.
pub const MAX_MESSAGE: usize = 200;

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[derive(Debug)]
struct Entry {
    since: Instant,
    /// Repeats after the first, which was recorded.
    more: u64,
    message: String,
}

/// Events from unauthenticated sources: the first of each (source, kind) in a window is
/// recorded, the rest counted and written as one event when the window ends. Memory is bounded:
/// at most [`TALLY_SOURCES`] entries; repeats beyond them are counted in one more.
#[derive(Debug)]
pub struct Tally {
    window: Duration,
    entries: HashMap<(IpAddr, &'static str), Entry>,
    /// Events from sources that found the table full, since `since`.
    overflow: Option<(Instant, u64)>,
}

impl Tally {
    pub fn new(window: Duration) -> Self {
        Tally { window, entries: HashMap::new(), overflow: None }
    }

    /// Notes a happening from `source`; returns the event to record now, if it is the first of
    /// its kind from there in this window.
    pub fn note(&mut self, source: IpAddr, happening: Happening, now: Instant) -> Option<Happening> {
        let message = truncate(&happening.message, MAX_MESSAGE);
        if let Some(entry) = self.entries.get_mut(&(source, happening.kind)) {
            entry.more += 1;
            return None;
        }
        if self.entries.len() >= TALLY_SOURCES {
            let (_, count) = self.overflow.get_or_insert((now, 0));
            *count += 1;
            return None;
        }
        self.entries.insert((source, happening.kind), Entry { since: now, more: 0, message: message.clone() });
        Some(Happening { kind: happening.kind, mac: happening.mac, message: format!("from {source}: {message}") })
    }

    /// The aggregate events of windows that ended by `now` (all of them if `now` is `None`,
    /// when the store closes), forgetting those entries.
    pub fn due(&mut self, now: Option<Instant>) -> Vec<Happening> {
        let ended = |since: Instant| now.is_none_or(|now| now.duration_since(since) >= self.window);
        let minutes = self.window.as_secs().div_ceil(60);
        let mut out = vec![];
        let mut done: Vec<_> = self.entries.iter().filter(|(_, e)| ended(e.since)).map(|(k, _)| *k).collect();
        done.sort();
        for key in done {
            let Some(entry) = self.entries.remove(&key) else { continue };
            if entry.more > 0 {
                let (source, kind) = key;
                out.push(Happening {
                    kind,
                    mac: None,
                    message: format!(
                        "{} more like this from {source} within {minutes} min: {}",
                        entry.more, entry.message
                    ),
                });
            }
        }
        if let Some((since, count)) = self.overflow {
            if ended(since) {
                self.overflow = None;
                out.push(Happening {
                    kind: "events-aggregated",
                    mac: None,
                    message: format!(
                        "{count} more events from sources beyond the {TALLY_SOURCES} tallied, within {minutes} min"
                    ),
                });
            }
        }
        out
    }

    /// When the next window ends, if any is open.
    pub fn next_due(&self) -> Option<Instant> {
        let starts = self.entries.values().map(|e| e.since).chain(self.overflow.map(|(since, _)| since));
        starts.min().map(|since| since + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(message: &str) -> Happening {
        Happening { kind: "registration-refused", mac: None, message: message.into() }
    }

    #[test]
    fn repeats_are_counted_and_written_once_per_window() {
        let mut tally = Tally::new(TALLY_WINDOW);
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.9".parse().unwrap();
        let first = tally.note(a, refused("wrong join token"), t0).expect("the first is recorded");
        assert_eq!(first.message, "from 10.0.0.9: wrong join token");
        for _ in 0..37 {
            assert!(tally.note(a, refused("wrong join token"), t0).is_none());
        }
        assert!(tally.due(Some(t0 + TALLY_WINDOW / 2)).is_empty(), "the window is still open");
        assert_eq!(tally.next_due(), Some(t0 + TALLY_WINDOW));
        let due = tally.due(Some(t0 + TALLY_WINDOW));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].message, "37 more like this from 10.0.0.9 within 10 min: wrong join token");
        assert!(tally.note(a, refused("wrong join token"), t0 + TALLY_WINDOW).is_some(), "a new window");
    }

    #[test]
    fn memory_is_bounded_and_long_messages_cut() {
        let mut tally = Tally::new(TALLY_WINDOW);
        let t0 = Instant::now();
        let long = "x".repeat(60_000);
        let mut recorded = 0;
        for i in 0..10_000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if let Some(h) = tally.note(source, refused(&long), t0) {
                assert!(h.message.len() < MAX_MESSAGE + 40, "{}", h.message.len());
                recorded += 1;
            }
        }
        assert_eq!(recorded, TALLY_SOURCES);
        assert_eq!(tally.entries.len(), TALLY_SOURCES);
        let due = tally.due(None);
        assert_eq!(due.len(), 1, "sources with no repeats need no second event");
        assert!(due[0].message.starts_with(&format!("{} more events", 10_000 - TALLY_SOURCES)), "{}", due[0].message);
        assert_eq!(tally.next_due(), None);
        assert_eq!(truncate("é", 1), "…");
    }
}

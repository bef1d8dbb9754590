//! Counters for every service, rendered in the Prometheus text exposition format.
//!
//! The label sets are closed enums, so a counter is an array of atomics and counting is one
//! relaxed add on the hot path. Paths that a flood can reach count here instead of logging.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// DHCP message types, as counted. `Other` holds types a boot server does not act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhcpKind {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    Other,
}

impl DhcpKind {
    const ALL: [Self; 9] = [
        Self::Discover,
        Self::Offer,
        Self::Request,
        Self::Decline,
        Self::Ack,
        Self::Nak,
        Self::Release,
        Self::Inform,
        Self::Other,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Discover => "discover",
            Self::Offer => "offer",
            Self::Request => "request",
            Self::Decline => "decline",
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Release => "release",
            Self::Inform => "inform",
            Self::Other => "other",
        }
    }
}

/// Errors by kind, across services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A DHCP packet that did not parse.
    DhcpMalformed,
    /// A DHCP packet dropped by the per-client rate limit.
    DhcpRateLimited,
    /// The pool had no free address for a client.
    DhcpPoolExhausted,
    /// An address answered the conflict check and was not offered.
    DhcpConflict,
    /// A DHCPDECLINE ignored: the sender did not hold the address, its ACK was not fresh, or
    /// the address answered from the sender's own hardware address (a forged DECLINE).
    DhcpDeclineIgnored,
    /// A DHCPRELEASE ignored: the sender did not hold the address, or the datagram came neither
    /// from the address nor from a relay (a forged RELEASE).
    DhcpReleaseIgnored,
    /// A store write failed; the reply that depended on it was not sent.
    StoreWrite,
    /// A TFTP packet that did not parse, or an opcode a read-only server refuses.
    TftpMalformed,
    /// A TFTP name that tried to leave the boot root.
    TftpTraversal,
    /// A TFTP request for a file that is not there.
    TftpNotFound,
    /// A TFTP transfer abandoned after its retries ran out.
    TftpTimeout,
    /// An HTTP request for a file that is not there, or a name that tried to leave the root.
    HttpNotFound,
    /// A boot script request whose `mac` parameter was not a MAC address.
    HttpBadMac,
}

impl ErrorKind {
    const ALL: [Self; 13] = [
        Self::DhcpMalformed,
        Self::DhcpRateLimited,
        Self::DhcpPoolExhausted,
        Self::DhcpConflict,
        Self::DhcpDeclineIgnored,
        Self::DhcpReleaseIgnored,
        Self::StoreWrite,
        Self::TftpMalformed,
        Self::TftpTraversal,
        Self::TftpNotFound,
        Self::TftpTimeout,
        Self::HttpNotFound,
        Self::HttpBadMac,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::DhcpMalformed => "dhcp_malformed",
            Self::DhcpRateLimited => "dhcp_rate_limited",
            Self::DhcpPoolExhausted => "dhcp_pool_exhausted",
            Self::DhcpConflict => "dhcp_conflict",
            Self::DhcpDeclineIgnored => "dhcp_decline_ignored",
            Self::DhcpReleaseIgnored => "dhcp_release_ignored",
            Self::StoreWrite => "store_write",
            Self::TftpMalformed => "tftp_malformed",
            Self::TftpTraversal => "tftp_traversal",
            Self::TftpNotFound => "tftp_not_found",
            Self::TftpTimeout => "tftp_timeout",
            Self::HttpNotFound => "http_not_found",
            Self::HttpBadMac => "http_bad_mac",
        }
    }
}

/// Every counter oasis keeps about network boot. Share it behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    dhcp_received: [AtomicU64; 9],
    dhcp_sent: [AtomicU64; 9],
    /// Leases currently bound (not offered, not expired). Set by the DHCP server.
    pub leases_in_use: AtomicI64,
    pub tftp_transfers_started: AtomicU64,
    pub tftp_transfers_completed: AtomicU64,
    pub tftp_transfers_failed: AtomicU64,
    pub tftp_bytes_sent: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_transfers: AtomicU64,
    pub http_bytes_sent: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

fn index_of<T: PartialEq>(all: &[T], item: &T) -> usize {
    all.iter().position(|x| x == item).expect("every variant is listed in ALL")
}

impl Metrics {
    pub fn dhcp_received(&self, kind: DhcpKind) {
        self.dhcp_received[index_of(&DhcpKind::ALL, &kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dhcp_sent(&self, kind: DhcpKind) {
        self.dhcp_sent[index_of(&DhcpKind::ALL, &kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[index_of(&ErrorKind::ALL, &kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors[index_of(&ErrorKind::ALL, &kind)].load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, counters) in [
            ("oasis_dhcp_received_total", "DHCP messages received, by message type.", &self.dhcp_received),
            ("oasis_dhcp_sent_total", "DHCP messages sent, by message type.", &self.dhcp_sent),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for kind in DhcpKind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{type=\"{}\"}} {}",
                    kind.label(),
                    load(&counters[index_of(&DhcpKind::ALL, &kind)])
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP oasis_dhcp_leases_in_use Leases currently bound.\n# TYPE oasis_dhcp_leases_in_use gauge\noasis_dhcp_leases_in_use {}",
            self.leases_in_use.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP oasis_tftp_transfers_total TFTP transfers, by outcome.\n# TYPE oasis_tftp_transfers_total counter"
        );
        for (result, counter) in [
            ("started", &self.tftp_transfers_started),
            ("completed", &self.tftp_transfers_completed),
            ("failed", &self.tftp_transfers_failed),
        ] {
            let _ = writeln!(out, "oasis_tftp_transfers_total{{result=\"{result}\"}} {}", load(counter));
        }
        for (name, help, counter) in [
            ("oasis_tftp_bytes_sent_total", "File bytes sent over TFTP.", &self.tftp_bytes_sent),
            ("oasis_http_requests_total", "HTTP requests received.", &self.http_requests),
            ("oasis_http_transfers_total", "HTTP file transfers started.", &self.http_transfers),
            ("oasis_http_bytes_sent_total", "File bytes sent over HTTP.", &self.http_bytes_sent),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", load(counter));
        }
        let _ = writeln!(out, "# HELP oasis_errors_total Errors, by kind.\n# TYPE oasis_errors_total counter");
        for kind in ErrorKind::ALL {
            let _ = writeln!(out, "oasis_errors_total{{kind=\"{}\"}} {}", kind.label(), self.error_count(kind));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_counters() {
        let m = Metrics::default();
        m.dhcp_received(DhcpKind::Discover);
        m.dhcp_received(DhcpKind::Discover);
        m.dhcp_sent(DhcpKind::Offer);
        m.error(ErrorKind::TftpTraversal);
        Metrics::add(&m.tftp_bytes_sent, 1468);
        let text = m.render();
        assert!(text.contains("oasis_dhcp_received_total{type=\"discover\"} 2\n"));
        assert!(text.contains("oasis_dhcp_sent_total{type=\"offer\"} 1\n"));
        assert!(text.contains("oasis_errors_total{kind=\"tftp_traversal\"} 1\n"));
        assert!(text.contains("oasis_tftp_bytes_sent_total 1468\n"));
        assert!(text.contains("# TYPE oasis_dhcp_leases_in_use gauge\n"));
    }
}

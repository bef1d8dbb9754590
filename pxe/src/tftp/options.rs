//! Option negotiation (RFC 2347): blksize (RFC 2348), tsize and timeout (RFC 2349), windowsize
//! (RFC 7440).
//!
//! Names compare case-insensitively. An option the server does not know, or whose value is out of
//! range or not a number, is left out of the OACK, which RFC 2347 allows; the transfer then runs
//! with that option's default.

use std::time::Duration;

use super::config::TftpConfig;
use super::packet::DEFAULT_BLKSIZE;

/// What a transfer runs with, and the OACK that tells the client so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// Wait before the first retransmission: the client's timeout option, or the server's.
    pub timeout: Duration,
    /// The options granted, in the client's order, names lowercase. Empty means no OACK: the
    /// transfer is plain RFC 1350 (an empty OACK is not allowed).
    pub oack: Vec<(String, String)>,
}

/// Negotiates the options of a read request for a file of `file_size` bytes.
pub fn negotiate(requested: &[(String, String)], file_size: u64, config: &TftpConfig) -> Negotiated {
    let mut out = Negotiated { blksize: DEFAULT_BLKSIZE, windowsize: 1, timeout: config.timeout, oack: Vec::new() };
    let mut seen = [false; 4];
    for (name, value) in requested {
        let name = name.to_ascii_lowercase();
        let slot = match name.as_str() {
            "blksize" => 0,
            "tsize" => 1,
            "timeout" => 2,
            "windowsize" => 3,
            _ => continue,
        };
        // A repeated option counts once, the first time.
        if std::mem::replace(&mut seen[slot], true) {
            continue;
        }
        let number = value.trim().parse::<u64>().ok();
        let granted = match (slot, number) {
            (0, Some(n @ 8..)) if !config.no_blksize => {
                let n = n.min(u64::from(config.max_blksize)) as u16;
                out.blksize = n;
                n.to_string()
            }
            // On a read request the client sends 0; the server answers with the real size.
            (1, Some(_)) => file_size.to_string(),
            (2, Some(n @ 1..=255)) => {
                out.timeout = Duration::from_secs(n);
                n.to_string()
            }
            (3, Some(n @ 1..=65535)) => {
                let n = n.min(u64::from(config.max_windowsize)) as u16;
                out.windowsize = n;
                n.to_string()
            }
            _ => continue,
        };
        out.oack.push((name, granted));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn oack(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        req(pairs)
    }

    #[test]
    fn negotiation_table() {
        let default = TftpConfig::default();
        let capped = TftpConfig { max_blksize: 1468, max_windowsize: 8, ..TftpConfig::default() };
        let no_blksize = TftpConfig { no_blksize: true, ..TftpConfig::default() };
        let one_second = Duration::from_secs(1);
        type Pairs = Vec<(String, String)>;
        // (requested, config, blksize, windowsize, timeout, oack)
        let table: Vec<(Pairs, &TftpConfig, u16, u16, Duration, Pairs)> = vec![
            (req(&[]), &default, 512, 1, one_second, vec![]),
            (req(&[("blksize", "1468")]), &default, 1468, 1, one_second, oack(&[("blksize", "1468")])),
            (req(&[("BLKSIZE", "1468")]), &default, 1468, 1, one_second, oack(&[("blksize", "1468")])),
            (req(&[("blksize", "65464")]), &default, 65464, 1, one_second, oack(&[("blksize", "65464")])),
            (req(&[("blksize", "70000")]), &default, 65464, 1, one_second, oack(&[("blksize", "65464")])),
            (req(&[("blksize", "9000")]), &capped, 1468, 1, one_second, oack(&[("blksize", "1468")])),
            (req(&[("blksize", "8")]), &default, 8, 1, one_second, oack(&[("blksize", "8")])),
            (req(&[("blksize", "7")]), &default, 512, 1, one_second, vec![]),
            (req(&[("blksize", "big")]), &default, 512, 1, one_second, vec![]),
            (req(&[("blksize", "1468")]), &no_blksize, 512, 1, one_second, vec![]),
            (
                req(&[("blksize", "1468"), ("tsize", "0")]),
                &no_blksize,
                512,
                1,
                one_second,
                oack(&[("tsize", "123456")]),
            ),
            (req(&[("tsize", "0")]), &default, 512, 1, one_second, oack(&[("tsize", "123456")])),
            (req(&[("TSize", "0")]), &default, 512, 1, one_second, oack(&[("tsize", "123456")])),
            (req(&[("timeout", "3")]), &default, 512, 1, Duration::from_secs(3), oack(&[("timeout", "3")])),
            (req(&[("timeout", "255")]), &default, 512, 1, Duration::from_secs(255), oack(&[("timeout", "255")])),
            (req(&[("timeout", "0")]), &default, 512, 1, one_second, vec![]),
            (req(&[("timeout", "256")]), &default, 512, 1, one_second, vec![]),
            (req(&[("windowsize", "16")]), &default, 512, 16, one_second, oack(&[("windowsize", "16")])),
            (req(&[("windowsize", "65535")]), &default, 512, 64, one_second, oack(&[("windowsize", "64")])),
            (req(&[("windowsize", "16")]), &capped, 512, 8, one_second, oack(&[("windowsize", "8")])),
            (req(&[("windowsize", "0")]), &default, 512, 1, one_second, vec![]),
            (req(&[("windowsize", "65536")]), &default, 512, 1, one_second, vec![]),
            (req(&[("multicast", ""), ("rollover", "0")]), &default, 512, 1, one_second, vec![]),
            (
                req(&[("blksize", "1468"), ("blksize", "512"), ("windowsize", "4")]),
                &default,
                1468,
                4,
                one_second,
                oack(&[("blksize", "1468"), ("windowsize", "4")]),
            ),
            (
                req(&[("tsize", "0"), ("x-vendor", "1"), ("blksize", "1468"), ("windowsize", "16"), ("timeout", "2")]),
                &default,
                1468,
                16,
                Duration::from_secs(2),
                oack(&[("tsize", "123456"), ("blksize", "1468"), ("windowsize", "16"), ("timeout", "2")]),
            ),
        ];
        for (requested, config, blksize, windowsize, timeout, want_oack) in table {
            let got = negotiate(&requested, 123_456, config);
            assert_eq!(got, Negotiated { blksize, windowsize, timeout, oack: want_oack }, "{requested:?}");
        }
    }
}

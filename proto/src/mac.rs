//! Ethernet hardware addresses, as machines are known by until they register.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `52-54-00-12-34-56`: iPXE's `${mac:hexhyp}` form, safe in URLs and file names.
    pub fn hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A string that is not a MAC address.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a MAC address; write it as six hex pairs, like 52:54:00:12:34:56")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `52:54:00:12:34:56`, `52-54-00-12-34-56` and `525400123456`, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return Err(err());
            }
            let parts: Vec<&str> = s.split(sep as char).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return Err(err());
            }
            parts.concat()
        } else if s.len() == 12 {
            s.to_string()
        } else {
            return Err(err());
        };
        let mut octets = [0u8; 6];
        for (i, octet) in octets.iter_mut().enumerate() {
            *octet = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(err)?, 16).map_err(|_| err())?;
        }
        Ok(Self(octets))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = ParseMacError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(mac: MacAddr) -> String {
        mac.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_spellings() {
        let want = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        for s in ["52:54:00:ab:cd:ef", "52-54-00-AB-CD-EF", "525400abcdef"] {
            assert_eq!(s.parse::<MacAddr>().unwrap(), want, "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(want.hyphenated(), "52-54-00-ab-cd-ef");
    }

    #[test]
    fn refuses_everything_else() {
        for s in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:eg", "52:54-00:ab:cd:ef", "52.54.00.ab.cd.ef", "5254:00ab:cdef"]
        {
            assert!(s.parse::<MacAddr>().is_err(), "{s}");
        }
    }
}

//! TFTP packets on the wire: RRQ, WRQ, DATA, ACK, ERROR (RFC 1350) and OACK (RFC 2347).
//!
//! [`Packet::parse`] faces the network, so it never panics and never allocates more than the
//! datagram it is given: every malformed input is a typed [`PacketError`].

use std::fmt;

/// Most options a request may carry. Real clients send at most five; more is a probe.
pub const MAX_OPTIONS: usize = 32;

/// Largest TFTP payload per block (RFC 2348), so the largest DATA packet is this plus 4.
pub const MAX_BLKSIZE: u16 = 65464;

/// The block size of a transfer that negotiated none (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// Why a datagram is not a TFTP packet we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet is {0} bytes long, too short for its opcode")]
    TooShort(usize),
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    #[error("the {0} is not terminated by a NUL byte")]
    MissingNul(&'static str),
    #[error("unsupported transfer mode {0:?}; use octet or netascii")]
    UnknownMode(String),
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
    #[error("more than {MAX_OPTIONS} options")]
    TooManyOptions,
    #[error("an ACK packet is 4 bytes, this one is {0}")]
    BadAckLength(usize),
}

/// The transfer mode of a request. Mail mode (obsolete since RFC 1350) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Netascii,
    Octet,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Netascii => "netascii",
            Self::Octet => "octet",
        }
    }
}

/// The error codes of RFC 1350 and RFC 2347, plus whatever else a peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotDefined,
    FileNotFound,
    AccessViolation,
    DiskFull,
    IllegalOperation,
    UnknownTid,
    FileExists,
    NoSuchUser,
    OptionRefused,
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            other => Self::Other(other),
        }
    }

    pub fn to_u16(self) -> u16 {
        match self {
            Self::NotDefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTid => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionRefused => 8,
            Self::Other(code) => code,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u16())
    }
}

/// A read or write request. The file name stays bytes: it goes to [`crate::boot_root::BootRoot`]
/// as sent, and only there is it judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: Vec<u8>,
    pub mode: Mode,
    /// Options in the order sent, names as sent (compare them case-insensitively).
    pub options: Vec<(String, String)>,
}

/// One TFTP packet. DATA borrows its payload from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack { block: u16 },
    Error { code: ErrorCode, message: String },
    Oack { options: Vec<(String, String)> },
}

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn parse(buf: &'a [u8]) -> Result<Self, PacketError> {
        let (opcode, body) = match buf {
            [hi, lo, rest @ ..] => (u16::from_be_bytes([*hi, *lo]), rest),
            _ => return Err(PacketError::TooShort(buf.len())),
        };
        match opcode {
            RRQ => parse_request(body).map(Packet::Rrq),
            WRQ => parse_request(body).map(Packet::Wrq),
            DATA => match body {
                [hi, lo, data @ ..] => Ok(Packet::Data { block: u16::from_be_bytes([*hi, *lo]), data }),
                _ => Err(PacketError::TooShort(buf.len())),
            },
            ACK => match body {
                [hi, lo] => Ok(Packet::Ack { block: u16::from_be_bytes([*hi, *lo]) }),
                // Some clients pad an ACK; the block number is still the first two bytes.
                [hi, lo, ..] => Ok(Packet::Ack { block: u16::from_be_bytes([*hi, *lo]) }),
                _ => Err(PacketError::BadAckLength(buf.len())),
            },
            ERROR => match body {
                [hi, lo, rest @ ..] => {
                    // Lenient: a missing terminator still leaves a readable message.
                    let text = rest.split(|&b| b == 0).next().unwrap_or_default();
                    Ok(Packet::Error {
                        code: ErrorCode::from_u16(u16::from_be_bytes([*hi, *lo])),
                        message: String::from_utf8_lossy(text).into_owned(),
                    })
                }
                _ => Err(PacketError::TooShort(buf.len())),
            },
            OACK => Ok(Packet::Oack { options: parse_options(body)? }),
            other => Err(PacketError::UnknownOpcode(other)),
        }
    }

    /// Appends the wire form of the packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Packet::Rrq(request) | Packet::Wrq(request) => {
                let opcode = if matches!(self, Packet::Rrq(_)) { RRQ } else { WRQ };
                out.extend_from_slice(&opcode.to_be_bytes());
                out.extend_from_slice(&request.filename);
                out.push(0);
                out.extend_from_slice(request.mode.as_str().as_bytes());
                out.push(0);
                encode_options(&request.options, out);
            }
            Packet::Data { block, data } => {
                out.extend_from_slice(&DATA.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
                out.extend_from_slice(data);
            }
            Packet::Ack { block } => {
                out.extend_from_slice(&ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => {
                out.extend_from_slice(&ERROR.to_be_bytes());
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                // A NUL inside the message would end it early on the peer; drop any.
                out.extend(message.bytes().filter(|&b| b != 0));
                out.push(0);
            }
            Packet::Oack { options } => {
                out.extend_from_slice(&OACK.to_be_bytes());
                encode_options(options, out);
            }
        }
    }

    /// The wire form of the packet.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Writes a DATA header (opcode and block number) into the first 4 bytes of `packet`.
pub fn write_data_header(packet: &mut [u8; 4], block: u16) {
    packet[..2].copy_from_slice(&DATA.to_be_bytes());
    packet[2..].copy_from_slice(&block.to_be_bytes());
}

/// An ACK on the wire, without allocating.
pub fn ack_bytes(block: u16) -> [u8; 4] {
    let [a, b] = ACK.to_be_bytes();
    let [c, d] = block.to_be_bytes();
    [a, b, c, d]
}

/// Splits off one NUL-terminated field.
fn take_field<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), PacketError> {
    let end = buf.iter().position(|&b| b == 0).ok_or(PacketError::MissingNul(what))?;
    Ok((&buf[..end], &buf[end + 1..]))
}

fn parse_request(body: &[u8]) -> Result<Request, PacketError> {
    let (filename, rest) = take_field(body, "file name")?;
    let (mode, rest) = take_field(rest, "mode")?;
    // Netascii is accepted and served byte for byte, as tftpd-hpa in its default setup, dnsmasq
    // and most boot servers do: boot files are binary, and no firmware asks for a text file in
    // netascii expecting CR/LF translation.
    let mode = match mode.to_ascii_lowercase().as_slice() {
        b"octet" => Mode::Octet,
        b"netascii" => Mode::Netascii,
        _ => return Err(PacketError::UnknownMode(String::from_utf8_lossy(mode).into_owned())),
    };
    Ok(Request { filename: filename.to_vec(), mode, options: parse_options(rest)? })
}

fn parse_options(mut rest: &[u8]) -> Result<Vec<(String, String)>, PacketError> {
    let mut options = Vec::new();
    // An empty name means padding: some PXE ROMs send the request with trailing NULs.
    while !rest.is_empty() && rest[0] != 0 {
        if options.len() == MAX_OPTIONS {
            return Err(PacketError::TooManyOptions);
        }
        let (name, after_name) = take_field(rest, "option name")?;
        let name = String::from_utf8_lossy(name).into_owned();
        let Ok((value, after_value)) = take_field(after_name, "option value") else {
            return Err(PacketError::OptionWithoutValue(name));
        };
        options.push((name, String::from_utf8_lossy(value).into_owned()));
        rest = after_value;
    }
    Ok(options)
}

fn encode_options(options: &[(String, String)], out: &mut Vec<u8>) {
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn round_trips() {
        let payload = [7u8; 100];
        let packets = [
            Packet::Rrq(Request {
                filename: b"ipxe/undionly.kpxe".to_vec(),
                mode: Mode::Octet,
                options: opts(&[("blksize", "1468"), ("tsize", "0"), ("windowsize", "16")]),
            }),
            Packet::Rrq(Request { filename: b"a".to_vec(), mode: Mode::Netascii, options: vec![] }),
            Packet::Wrq(Request { filename: b"up".to_vec(), mode: Mode::Octet, options: vec![] }),
            Packet::Data { block: 65535, data: &payload },
            Packet::Data { block: 0, data: &[] },
            Packet::Ack { block: 0 },
            Packet::Ack { block: 4242 },
            Packet::Error { code: ErrorCode::FileNotFound, message: "no such file".into() },
            Packet::Error { code: ErrorCode::Other(99), message: String::new() },
            Packet::Oack { options: opts(&[("blksize", "1468"), ("tsize", "123456")]) },
        ];
        for packet in packets {
            let bytes = packet.to_bytes();
            assert_eq!(Packet::parse(&bytes).unwrap(), packet, "{bytes:?}");
        }
    }

    #[test]
    fn known_wire_forms() {
        assert_eq!(ack_bytes(0x0102), [0, 4, 1, 2]);
        let mut header = [0u8; 4];
        write_data_header(&mut header, 0xfffe);
        assert_eq!(header, [0, 3, 0xff, 0xfe]);
        assert_eq!(
            Packet::parse(b"\x00\x01pxelinux.0\x00OCTET\x00BlkSize\x00512\x00").unwrap(),
            Packet::Rrq(Request {
                filename: b"pxelinux.0".to_vec(),
                mode: Mode::Octet,
                options: opts(&[("BlkSize", "512")])
            })
        );
        // Trailing NUL padding after the options, as some PXE ROMs send.
        assert!(matches!(Packet::parse(b"\x00\x01f\x00octet\x00tsize\x000\x00\x00\x00"), Ok(Packet::Rrq(_))));
        // An ERROR without its terminator still parses.
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x08no opts").unwrap(),
            Packet::Error { code: ErrorCode::OptionRefused, message: "no opts".into() }
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let many: Vec<u8> = {
            let mut p = b"\x00\x01f\x00octet\x00".to_vec();
            for i in 0..=MAX_OPTIONS {
                p.extend_from_slice(format!("opt{i}\x001\x00").as_bytes());
            }
            p
        };
        let cases: &[(&[u8], PacketError)] = &[
            (b"", PacketError::TooShort(0)),
            (b"\x00", PacketError::TooShort(1)),
            (b"\x00\x03\x00", PacketError::TooShort(3)),
            (b"\x00\x04\x00", PacketError::BadAckLength(3)),
            (b"\x00\x05\x00", PacketError::TooShort(3)),
            (b"\x00\x07abc", PacketError::UnknownOpcode(7)),
            (b"\xff\xff", PacketError::UnknownOpcode(65535)),
            (b"\x00\x01", PacketError::MissingNul("file name")),
            (b"\x00\x01file", PacketError::MissingNul("file name")),
            (b"\x00\x01file\x00octet", PacketError::MissingNul("mode")),
            (b"\x00\x01file\x00mail\x00", PacketError::UnknownMode("mail".into())),
            (b"\x00\x01file\x00octet\x00blksize", PacketError::MissingNul("option name")),
            (b"\x00\x01file\x00octet\x00blksize\x001468", PacketError::OptionWithoutValue("blksize".into())),
            (b"\x00\x06blksize", PacketError::MissingNul("option name")),
            (b"\x00\x06blksize\x00", PacketError::OptionWithoutValue("blksize".into())),
            (&many, PacketError::TooManyOptions),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::parse(bytes).as_ref(), Err(want), "{bytes:?}");
        }
    }

    #[test]
    fn huge_options_parse_without_trouble() {
        let mut p = b"\x00\x01f\x00octet\x00blksize\x00".to_vec();
        p.extend(std::iter::repeat_n(b'9', 60_000));
        p.push(0);
        let Ok(Packet::Rrq(request)) = Packet::parse(&p) else { panic!("a long value is still a request") };
        assert_eq!(request.options[0].1.len(), 60_000);
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every prefix of a few packets, and pseudo-random buffers.
        let seeds: [&[u8]; 3] = [
            b"\x00\x01file\x00octet\x00blksize\x001468\x00tsize\x000\x00",
            b"\x00\x06blksize\x00512\x00",
            b"\x00\x05\x00\x01oops\x00",
        ];
        for seed in seeds {
            for end in 0..=seed.len() {
                let _ = Packet::parse(&seed[..end]);
            }
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8 % 8).collect();
            let _ = Packet::parse(&bytes);
        }
    }
}

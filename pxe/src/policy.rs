//! The boot policy: from the options a client sent, what it should be told to boot.
//!
//! Three kinds of client get boot information, and nothing else does:
//! - PXE firmware (option 60 starts with `PXEClient`): by architecture (option 93) a TFTP file,
//!   BIOS `undionly.kpxe`, x86-64 UEFI `ipxe.efi`, ARM64 UEFI `snp.efi`;
//! - UEFI HTTP boot (option 60 starts with `HTTPClient`): an `http://` URL of the same iPXE
//!   binary, because such firmware fetches its boot file over HTTP only;
//! - iPXE itself (user class `iPXE` in option 77, or iPXE's option 175): the URL of its
//!   per-machine script. Answering iPXE with a script rather than an iPXE binary is what stops
//!   the classic chainload loop.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use oasis_proto::MacAddr;

/// RFC 4578 option 93 values oasis knows a boot file for. The numbers are IANA's registry.
pub mod arch {
    pub const BIOS_X86: u16 = 0;
    pub const EFI_IA32: u16 = 6;
    pub const EFI_BC: u16 = 7;
    pub const EFI_X86_64: u16 = 9;
    pub const EFI_ARM64: u16 = 11;
    pub const EFI_X86_64_HTTP: u16 = 16;
    pub const EFI_ARM64_HTTP: u16 = 19;
}

/// iPXE's encapsulated options (175); present only in requests from iPXE.
const IPXE_ENCAPSULATED_OPTION: u8 = 175;

/// What kind of network boot client sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// Firmware PXE (BIOS or UEFI), fetching a boot file over TFTP.
    Pxe,
    /// UEFI HTTP boot, fetching its boot file from a URL.
    HttpBoot,
    /// iPXE, already loaded, looking for its script.
    Ipxe,
}

/// Everything the policy looks at, read out of one DHCP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootClient {
    pub mac: MacAddr,
    pub kind: ClientKind,
    /// Option 93, when the client sent it.
    pub arch: Option<u16>,
    /// Option 97, the client's UUID/GUID, when sent (PXE firmware should; not all does).
    pub uuid: Option<Vec<u8>>,
}

impl BootClient {
    /// Reads a message's boot-related options. `None` for anything that is not a network boot
    /// client (an OS's DHCP client, a phone on the rack network): those get addresses only.
    pub fn from_message(msg: &Message) -> Option<Self> {
        let mac = crate::mac::of_dhcp_client(msg)?;
        let opts = msg.opts();
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
            _ => None,
        };
        let uuid = match opts.get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(id)) => Some(id.clone()),
            _ => None,
        };
        let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => v.as_slice(),
            _ => &[],
        };
        let kind = if is_ipxe(msg) {
            ClientKind::Ipxe
        } else if vendor_class.starts_with(b"HTTPClient") {
            ClientKind::HttpBoot
        } else if vendor_class.starts_with(b"PXEClient") {
            ClientKind::Pxe
        } else {
            return None;
        };
        Some(Self { mac, kind, arch, uuid })
    }
}

/// True when a message comes from iPXE: user class `iPXE` (RFC 3004 framing or, as some builds
/// send it, bare) or iPXE's encapsulated option 175.
fn is_ipxe(msg: &Message) -> bool {
    let opts = msg.opts();
    if opts.get(OptionCode::Unknown(IPXE_ENCAPSULATED_OPTION)).is_some() {
        return true;
    }
    match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(data)) => data == b"iPXE" || user_classes(data).any(|class| class == b"iPXE"),
        _ => false,
    }
}

/// The classes in an RFC 3004 user class option: each is a length byte and that many bytes.
fn user_classes(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = data.split_first()?;
        let class = rest.get(..len as usize)?;
        data = &rest[len as usize..];
        Some(class)
    })
}

/// Where the boot files live and how they are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPolicy {
    /// The appliance's address on the rack network: TFTP server and HTTP host.
    pub server: Ipv4Addr,
    /// The HTTP port, left out of URLs when it is 80.
    pub http_port: u16,
    /// The directory under the boot root that holds the iPXE binaries, e.g. `ipxe`.
    pub ipxe_dir: String,
}

/// What a client is told to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file name for TFTP from `siaddr`.
    Tftp(String),
    /// A URL: for UEFI HTTP boot, and for iPXE's script.
    Http(String),
}

impl BootFile {
    /// The text for the BOOTP `file` field and option 67.
    pub fn name(&self) -> &str {
        match self {
            Self::Tftp(name) | Self::Http(name) => name,
        }
    }
}

/// Why a boot client gets no boot file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoBootFile {
    #[error("client architecture {0} (option 93) has no iPXE build; it gets an address only")]
    UnknownArch(u16),
}

impl BootPolicy {
    /// The base of every HTTP URL, e.g. `http://10.0.0.1` or `http://10.0.0.1:8080`.
    pub fn base_url(&self) -> String {
        if self.http_port == 80 {
            format!("http://{}", self.server)
        } else {
            format!("http://{}:{}", self.server, self.http_port)
        }
    }

    /// The boot file for a client. PXE firmware that sends no option 93 is treated as BIOS, as
    /// pre-RFC 4578 BIOS ROMs leave it out.
    pub fn boot_file(&self, client: &BootClient) -> Result<BootFile, NoBootFile> {
        match client.kind {
            ClientKind::Ipxe => {
                Ok(BootFile::Http(format!("{}/boot.ipxe?mac={}", self.base_url(), client.mac.hyphenated())))
            }
            ClientKind::HttpBoot => {
                let binary = match client.arch {
                    Some(arch::EFI_ARM64_HTTP) => "snp.efi",
                    Some(arch::EFI_X86_64_HTTP) | None => "ipxe.efi",
                    Some(other) => return Err(NoBootFile::UnknownArch(other)),
                };
                Ok(BootFile::Http(format!("{}/boot/{}/{binary}", self.base_url(), self.ipxe_dir)))
            }
            ClientKind::Pxe => {
                let binary = match client.arch.unwrap_or(arch::BIOS_X86) {
                    arch::BIOS_X86 => "undionly.kpxe",
                    arch::EFI_BC | arch::EFI_X86_64 => "ipxe.efi",
                    arch::EFI_ARM64 => "snp.efi",
                    other => return Err(NoBootFile::UnknownArch(other)),
                };
                Ok(BootFile::Tftp(format!("{}/{binary}", self.ipxe_dir)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, MessageType, Opcode};

    fn policy() -> BootPolicy {
        BootPolicy { server: Ipv4Addr::new(10, 0, 0, 1), http_port: 80, ipxe_dir: "ipxe".into() }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// A DISCOVER carrying the given vendor class, architecture and user class, the way the
    /// firmware in the comments sends it.
    fn discover(vendor_class: Option<&str>, arch: Option<u16>, user_class: Option<&[u8]>, opt175: bool) -> Message {
        let mut msg = Message::default();
        msg.set_opcode(Opcode::BootRequest).set_chaddr(&MAC);
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::MessageType(MessageType::Discover));
        if let Some(vc) = vendor_class {
            opts.insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
        }
        if let Some(a) = arch {
            opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
            opts.insert(DhcpOption::ClientMachineIdentifier(vec![0; 17]));
        }
        if let Some(uc) = user_class {
            opts.insert(DhcpOption::UserClass(uc.to_vec()));
        }
        if opt175 {
            opts.insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                OptionCode::Unknown(175),
                vec![0x13, 0x01, 0x01],
            )));
        }
        msg
    }

    type Answer = Option<Result<BootFile, NoBootFile>>;

    fn answer(msg: &Message) -> Answer {
        BootClient::from_message(msg).map(|c| policy().boot_file(&c))
    }

    #[test]
    fn real_firmware_option_sets_get_the_right_boot_file() {
        let tftp = |f: &str| Some(Ok(BootFile::Tftp(f.to_string())));
        let http = |u: &str| Some(Ok(BootFile::Http(u.to_string())));
        let script = http("http://10.0.0.1/boot.ipxe?mac=52-54-00-12-34-56");
        let table: Vec<(&str, Message, Answer)> = vec![
            // Intel/legacy BIOS PXE ROM.
            (
                "BIOS PXE",
                discover(Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), None, false),
                tftp("ipxe/undionly.kpxe"),
            ),
            // Old BIOS ROMs without option 93.
            ("BIOS PXE, no option 93", discover(Some("PXEClient"), None, None, false), tftp("ipxe/undionly.kpxe")),
            // OVMF / EDK2 on x86-64.
            (
                "UEFI x64 PXE",
                discover(Some("PXEClient:Arch:00007:UNDI:003000"), Some(7), None, false),
                tftp("ipxe/ipxe.efi"),
            ),
            (
                "UEFI x64 PXE (arch 9)",
                discover(Some("PXEClient:Arch:00009:UNDI:003000"), Some(9), None, false),
                tftp("ipxe/ipxe.efi"),
            ),
            // ARM64 UEFI (e.g. AAVMF, Ampere servers).
            (
                "ARM64 UEFI PXE",
                discover(Some("PXEClient:Arch:00011:UNDI:003000"), Some(11), None, false),
                tftp("ipxe/snp.efi"),
            ),
            // UEFI HTTP boot.
            (
                "UEFI x64 HTTP",
                discover(Some("HTTPClient:Arch:00016:UNDI:003001"), Some(16), None, false),
                http("http://10.0.0.1/boot/ipxe/ipxe.efi"),
            ),
            (
                "ARM64 HTTP",
                discover(Some("HTTPClient:Arch:00019:UNDI:003001"), Some(19), None, false),
                http("http://10.0.0.1/boot/ipxe/snp.efi"),
            ),
            // iPXE: RFC 3004 user class framing, as iPXE sends it, plus option 175.
            (
                "iPXE (QEMU ROM)",
                discover(Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), Some(b"\x04iPXE"), true),
                script.clone(),
            ),
            (
                "iPXE, bare user class",
                discover(Some("PXEClient:Arch:00007:UNDI:003000"), Some(7), Some(b"iPXE"), false),
                script.clone(),
            ),
            ("iPXE, option 175 only", discover(Some("PXEClient:Arch:00000:UNDI:002001"), Some(0), None, true), script),
            // IA32 UEFI: no iPXE build shipped.
            (
                "UEFI IA32",
                discover(Some("PXEClient:Arch:00006:UNDI:003000"), Some(6), None, false),
                Some(Err(NoBootFile::UnknownArch(6))),
            ),
            // An operating system's DHCP client gets no boot information.
            ("Linux dhclient", discover(None, None, None, false), None),
            ("Windows", discover(Some("MSFT 5.0"), None, None, false), None),
            ("other user class", discover(None, None, Some(b"\x05other"), false), None),
        ];
        for (name, msg, want) in table {
            assert_eq!(answer(&msg), want, "{name}");
        }
    }

    #[test]
    fn urls_carry_a_non_default_port() {
        let p = BootPolicy { http_port: 8080, ..policy() };
        let client = BootClient::from_message(&discover(Some("PXEClient"), Some(0), Some(b"\x04iPXE"), false)).unwrap();
        assert_eq!(p.boot_file(&client).unwrap().name(), "http://10.0.0.1:8080/boot.ipxe?mac=52-54-00-12-34-56");
    }

    #[test]
    fn user_class_parsing_stops_at_truncation() {
        assert_eq!(user_classes(b"\x04iPXE\x0atruncated").collect::<Vec<_>>(), vec![b"iPXE".as_slice()]);
        assert_eq!(user_classes(b"").count(), 0);
    }
}

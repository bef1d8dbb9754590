//! iPXE scripts: what a machine runs once iPXE has fetched `/boot.ipxe` over HTTP.
//!
//! Three scripts, all plain text that the golden files under `pxe/tests/golden/` pin byte for byte:
//!
//! - [`ScriptRenderer::render_boot`]: boot the node kernel and initramfs over HTTP, retrying a few
//!   times with a pause and a message naming the machine, then giving up with `exit` so the firmware
//!   moves on to its next boot device instead of looping forever.
//! - [`ScriptRenderer::render_chain`]: for a request that did not say which machine it is, fetch the
//!   script again with the MAC address filled in by iPXE.
//! - [`ScriptRenderer::render_local`]: for a machine marked to boot from its own disk, say so and
//!   `exit`, which hands control back to the firmware.
//!
//! The kernel command line comes from the operator, so [`BootProfile::validate`] refuses what iPXE
//! would read as script syntax rather than as text (see there). Paths are percent-encoded per
//! component, so a file name cannot break out of its URL either.

use std::fmt::Write as _;

use oasis_proto::MacAddr;

/// How many times the boot script tries to fetch and boot before it gives up.
pub const BOOT_ATTEMPTS: u32 = 3;

/// Seconds the boot script waits between attempts.
pub const RETRY_PAUSE_SECS: u32 = 5;

/// Longest kernel command line accepted, in bytes. Linux on x86 keeps 2048 bytes including the
/// arguments this module adds; anything past that is cut off silently at boot, which is far harder
/// to diagnose than a refusal here.
pub const MAX_CMDLINE_LEN: usize = 1900;

/// What a network-booting machine runs: paths are relative to the boot root, which HTTP serves
/// under `/boot/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootProfile {
    /// The kernel image, e.g. `node/vmlinuz`.
    pub kernel: String,
    /// The initramfs, if the kernel needs one, e.g. `node/initrd.img`.
    pub initrd: Option<String>,
    /// Kernel arguments, as the operator wrote them. `${...}` iPXE settings are expanded by iPXE.
    pub cmdline: String,
}

/// The kernel and initramfs one machine boots instead of the profile's (another node
/// generation's), as paths in the boot URL space; the profile's kernel arguments stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: String,
    pub initrd: Option<String>,
}

/// Why a [`BootProfile`] cannot be rendered into a script.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("the boot profile names no kernel; set the kernel path, relative to the boot root")]
    NoKernel,
    #[error("the boot profile's initrd path is empty; remove the initrd or give its path")]
    EmptyInitrd,
    #[error("the {field} path {path:?} is absolute or climbs with '..'; give it relative to the boot root")]
    BadPath { field: &'static str, path: String },
    #[error(
        "the kernel command line contains the control character {ch:?} at byte {at}; \
         write the command line on one line, with spaces between arguments"
    )]
    ControlChar { ch: char, at: usize },
    #[error(
        "the kernel command line contains {token:?}, which iPXE reads as script syntax, not as an argument; \
         remove it or join it to a neighbouring argument"
    )]
    ScriptToken { token: String },
    #[error("the kernel command line has a '${{' with no closing '}}' at byte {at}; close the iPXE setting")]
    UnclosedSetting { at: usize },
    #[error("the kernel command line is {len} bytes long, the limit is {MAX_CMDLINE_LEN}; shorten it")]
    CmdlineTooLong { len: usize },
}

impl BootProfile {
    /// Checks that the profile renders into a script that means what it says.
    ///
    /// iPXE reads a script line by line (`src/image/script.c`, `src/core/exec.c`): a newline ends
    /// the command, a trailing backslash joins the next line, and the line is split at whitespace
    /// into tokens with no quoting at all. A token that starts with `#` makes the rest of the line a
    /// comment (it would silently drop `BOOTIF=`), and the tokens `&&`, `||` and `;` end the
    /// `kernel` command and run whatever follows as a command of its own. So this refuses every
    /// control character (newline, carriage return, tab, NUL, ...), those tokens, and a `${` that is
    /// never closed. `${setting}` itself is allowed: it is how an operator passes iPXE's view of the
    /// machine (`${net0/ip}`, `${uuid}`) to the kernel.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if self.kernel.is_empty() {
            return Err(ProfileError::NoKernel);
        }
        check_path("kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            if initrd.is_empty() {
                return Err(ProfileError::EmptyInitrd);
            }
            check_path("initrd", initrd)?;
        }
        check_cmdline(&self.cmdline)
    }
}

/// The rules of [`BootProfile::validate`] for a kernel command line, or a part of one.
fn check_cmdline(cmdline: &str) -> Result<(), ProfileError> {
    if cmdline.len() > MAX_CMDLINE_LEN {
        return Err(ProfileError::CmdlineTooLong { len: cmdline.len() });
    }
    if let Some((at, ch)) = cmdline.char_indices().find(|(_, c)| c.is_control()) {
        return Err(ProfileError::ControlChar { ch, at });
    }
    for token in cmdline.split(' ') {
        if token.starts_with('#') || matches!(token, "&&" | "||" | ";") {
            return Err(ProfileError::ScriptToken { token: token.to_string() });
        }
    }
    let mut rest = 0;
    while let Some(start) = cmdline[rest..].find("${").map(|i| rest + i) {
        match cmdline[start..].find('}') {
            Some(end) => rest = start + end + 1,
            None => return Err(ProfileError::UnclosedSetting { at: start }),
        }
    }
    Ok(())
}

fn check_path(field: &'static str, path: &str) -> Result<(), ProfileError> {
    if path.starts_with('/') || path.split('/').any(|part| part == "..") {
        return Err(ProfileError::BadPath { field, path: path.to_string() });
    }
    Ok(())
}

/// Renders the iPXE scripts for one appliance address and boot profile.
#[derive(Debug, Clone)]
pub struct ScriptRenderer {
    base_url: String,
    profile: BootProfile,
}

impl ScriptRenderer {
    /// `base_url` is how machines reach the appliance's HTTP service, e.g. `http://10.0.0.1` or
    /// `http://10.0.0.1:8080`, with no trailing slash (one is removed if given). Call
    /// [`BootProfile::validate`] on the profile first: the renderer writes it as it is.
    pub fn new(base_url: String, profile: BootProfile) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        Self { base_url, profile }
    }

    /// The profile this renderer boots.
    pub fn profile(&self) -> &BootProfile {
        &self.profile
    }

    /// The script that boots `mac` over HTTP, retrying a bounded number of times.
    pub fn render_boot(&self, mac: MacAddr) -> String {
        self.render(mac, "", None)
    }

    /// [`render_boot`](Self::render_boot) with `args` added to the profile's kernel arguments: what
    /// this one boot of this one machine gets (a per-boot token, say). `args` is held to the rules of
    /// [`BootProfile::validate`], and the command line with it to [`MAX_CMDLINE_LEN`].
    pub fn render_boot_with(&self, mac: MacAddr, args: &str) -> Result<String, ProfileError> {
        self.render_boot_files(mac, args, None)
    }

    /// [`ScriptRenderer::render_boot_with`] booting `files` instead of the profile's kernel and
    /// initramfs, when given.
    pub fn render_boot_files(
        &self,
        mac: MacAddr,
        args: &str,
        files: Option<&BootFiles>,
    ) -> Result<String, ProfileError> {
        check_cmdline(args)?;
        let len = self.profile.cmdline.len() + 1 + args.len();
        if len > MAX_CMDLINE_LEN {
            return Err(ProfileError::CmdlineTooLong { len });
        }
        Ok(self.render(mac, args, files))
    }

    fn render(&self, mac: MacAddr, args: &str, files: Option<&BootFiles>) -> String {
        let base = &self.base_url;
        let (kernel, initrd) = match files {
            Some(files) => (&files.kernel, &files.initrd),
            None => (&self.profile.kernel, &self.profile.initrd),
        };
        let kernel = encode_path(kernel);
        let mut out = String::with_capacity(1024);
        out.push_str("#!ipxe\n");
        let _ = writeln!(out, "# oasis: network boot for {mac}");
        out.push_str("set attempt:int32 0\n");
        out.push_str(":retry\n");
        out.push_str("inc attempt\n");
        out.push_str("imgfree ||\n");
        let initrd_arg = if initrd.is_some() { " initrd=initrd.img" } else { "" };
        let mut cmdline = String::new();
        for part in [self.profile.cmdline.as_str(), args] {
            if !part.is_empty() {
                cmdline.push(' ');
                cmdline.push_str(part);
            }
        }
        let _ = writeln!(
            out,
            "kernel {base}/boot/{kernel}{initrd_arg}{cmdline} BOOTIF=01-{} || goto failed",
            mac.hyphenated()
        );
        if let Some(initrd) = initrd {
            let _ = writeln!(out, "initrd --name initrd.img {base}/boot/{} || goto failed", encode_path(initrd));
        }
        out.push_str("boot || goto failed\n");
        out.push_str(":failed\n");
        let _ = writeln!(
            out,
            "echo oasis: network boot of {mac} failed, attempt ${{attempt}} of {BOOT_ATTEMPTS} (iPXE printed the reason above)"
        );
        let _ = writeln!(out, "iseq ${{attempt}} {BOOT_ATTEMPTS} && goto give_up ||");
        let _ = writeln!(out, "echo oasis: retrying in {RETRY_PAUSE_SECS} seconds");
        let _ = writeln!(out, "sleep {RETRY_PAUSE_SECS}");
        out.push_str("goto retry\n");
        out.push_str(":give_up\n");
        let _ = writeln!(
            out,
            "echo oasis: giving up on network boot of {mac}; check that the appliance at {base} is up and serves /boot/{kernel}"
        );
        let _ = writeln!(out, "sleep {RETRY_PAUSE_SECS}");
        out.push_str("exit 1\n");
        out
    }

    /// The script for a request that did not name its machine: ask again with iPXE's MAC address.
    pub fn render_chain(&self) -> String {
        format!(
            "#!ipxe\n\
             # oasis: this request named no machine; ask again with this interface's MAC address\n\
             chain {}/boot.ipxe?mac=${{mac:hexhyp}}\n",
            self.base_url
        )
    }

    /// The script for a machine marked to boot from its own disk: hand back to the firmware.
    pub fn render_local(&self, mac: MacAddr) -> String {
        format!(
            "#!ipxe\n\
             echo oasis: {mac} is installed; booting from its local disk\n\
             exit\n"
        )
    }
}

/// Percent-encodes each `/`-separated component of a relative path, keeping only RFC 3986's
/// unreserved characters as they are. `$`, `{`, space, `#`, `?` and `%` all get encoded, so a file
/// name can neither end the URL, start an iPXE setting, nor add a query.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 8);
    for (i, part) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        for &b in part.as_bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(cmdline: &str) -> BootProfile {
        BootProfile { kernel: "node/vmlinuz".into(), initrd: Some("node/initrd.img".into()), cmdline: cmdline.into() }
    }

    #[test]
    fn accepts_ordinary_command_lines() {
        for cmdline in [
            "",
            "console=ttyS0,115200 quiet",
            "oasis.api=https://10.0.0.1:8443 oasis.token=abc oasis.pin=sha256:00ff",
            "ip=${net0/ip} uuid=${uuid} a&&b x||y semi;colon tag#1",
            "quote=\"a b\" back\\slash",
        ] {
            assert_eq!(profile(cmdline).validate(), Ok(()), "{cmdline:?}");
        }
    }

    #[test]
    fn refuses_what_ipxe_would_read_as_script() {
        let cases: &[(&str, &str)] = &[
            ("quiet\nshell", "ControlChar"),
            ("quiet\r", "ControlChar"),
            ("a\tb", "ControlChar"),
            ("a\0b", "ControlChar"),
            ("quiet #comment", "ScriptToken"),
            ("quiet && shell", "ScriptToken"),
            ("quiet || shell", "ScriptToken"),
            ("quiet ; shell", "ScriptToken"),
            ("ip=${net0/ip", "UnclosedSetting"),
        ];
        for (cmdline, want) in cases {
            let err = profile(cmdline).validate().unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{cmdline:?} gave {err:?}");
        }
        let long = "a".repeat(MAX_CMDLINE_LEN + 1);
        assert_eq!(profile(&long).validate(), Err(ProfileError::CmdlineTooLong { len: MAX_CMDLINE_LEN + 1 }));
    }

    #[test]
    fn refuses_bad_paths() {
        let mut p = profile("");
        p.kernel = String::new();
        assert_eq!(p.validate(), Err(ProfileError::NoKernel));
        p.kernel = "/vmlinuz".into();
        assert!(matches!(p.validate(), Err(ProfileError::BadPath { field: "kernel", .. })));
        p.kernel = "vmlinuz".into();
        p.initrd = Some("../initrd".into());
        assert!(matches!(p.validate(), Err(ProfileError::BadPath { field: "initrd", .. })));
        p.initrd = Some(String::new());
        assert_eq!(p.validate(), Err(ProfileError::EmptyInitrd));
    }

    #[test]
    fn errors_read_as_sentences() {
        let err = profile("a\nb").validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "the kernel command line contains the control character '\\n' at byte 1; \
             write the command line on one line, with spaces between arguments"
        );
    }

    #[test]
    fn encodes_each_path_component() {
        assert_eq!(encode_path("node/vmlinuz-6.1.0"), "node/vmlinuz-6.1.0");
        assert_eq!(encode_path("my dir/a${b}#c?d%e"), "my%20dir/a%24%7Bb%7D%23c%3Fd%25e");
        assert_eq!(encode_path("ünï"), "%C3%BCn%C3%AF");
    }

    #[test]
    fn per_boot_arguments_follow_the_profiles_and_obey_its_rules() {
        let r = ScriptRenderer::new("http://10.0.0.1".into(), profile("console=ttyS0"));
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let script = r.render_boot_with(mac, "oasis.token=abc").unwrap();
        assert!(script.contains(" console=ttyS0 oasis.token=abc BOOTIF=01-52-54-00-12-34-56 "), "{script}");
        assert_eq!(r.render_boot_with(mac, "").unwrap(), r.render_boot(mac));
        let bare = ScriptRenderer::new("http://10.0.0.1".into(), profile(""));
        assert!(bare.render_boot_with(mac, "x=1").unwrap().contains("initrd=initrd.img x=1 BOOTIF="));
        for bad in ["a\nshell", "x ; shell", "#c", "${net0/ip"] {
            assert!(r.render_boot_with(mac, bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_CMDLINE_LEN - "console=ttyS0".len());
        assert!(matches!(r.render_boot_with(mac, &long), Err(ProfileError::CmdlineTooLong { .. })));
    }

    #[test]
    fn base_url_loses_its_trailing_slash() {
        let r = ScriptRenderer::new("http://10.0.0.1:8080/".into(), profile(""));
        assert!(r.render_chain().contains("chain http://10.0.0.1:8080/boot.ipxe?mac=${mac:hexhyp}\n"));
    }
}

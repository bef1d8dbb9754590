//! dnsmasq as a reference network-boot server, or as a site DHCP server that hands out addresses only.
//!
//! The PXE setup ([`DnsmasqConfig::pxe`]) is the classic iPXE chain:
//!
//! | client | sends | gets |
//! |---|---|---|
//! | BIOS PXE ROM | client arch 0 | `undionly.kpxe` |
//! | UEFI x86-64 PXE (OVMF) | client arch 7 (or 9) | `ipxe.efi` |
//! | iPXE (any) | user class `iPXE` (option 77) / option 175 | the iPXE script |
//!
//! The iPXE rule must win over the arch rules: iPXE started from `ipxe.efi` DHCPs again with arch 7,
//! and handing it `ipxe.efi` a second time is an endless loop. QEMU's BIOS NIC ROM is iPXE already,
//! so a BIOS QEMU guest gets the script on its first DHCP.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::{command_line, tail, HarnessError, Result};

/// File names handed to PXE clients by architecture.
#[derive(Debug, Clone)]
pub struct PxeBoot {
    /// For BIOS PXE (arch 0): e.g. `undionly.kpxe`.
    pub bios: String,
    /// For x86-64 UEFI (arch 7, 9): e.g. `ipxe.efi`.
    pub uefi_x64: String,
    /// For iPXE (user class `iPXE`): a script name or URL.
    pub ipxe_script: String,
}

/// How to run dnsmasq.
#[derive(Debug, Clone)]
pub struct DnsmasqConfig {
    /// The interface to serve on (in the namespace dnsmasq runs in).
    pub interface: String,
    /// The DHCP pool as dnsmasq's `--dhcp-range` value, e.g. `10.0.0.100,10.0.0.199,255.255.255.0,1h`.
    pub dhcp_range: String,
    /// Serve TFTP from this directory.
    pub tftp_root: Option<PathBuf>,
    /// Boot file names by client type; `None` hands out addresses only.
    pub boot: Option<PxeBoot>,
    /// Also send IPv6 router advertisements for this prefix (e.g. `fd00::1/64`, which is added to the
    /// interface). iPXE's `autoboot` waits for IPv6 autoconfiguration as well as DHCPv4 before it
    /// boots; on a segment without a router advertisement that costs about 12 s per iPXE start.
    pub ipv6_ra: Option<String>,
    /// More dnsmasq arguments.
    pub extra_args: Vec<String>,
}

impl DnsmasqConfig {
    /// A site DHCP server: addresses only, no boot options, no TFTP.
    pub fn addresses_only(interface: &str, dhcp_range: &str) -> DnsmasqConfig {
        DnsmasqConfig {
            interface: interface.to_string(),
            dhcp_range: dhcp_range.to_string(),
            tftp_root: None,
            boot: None,
            ipv6_ra: None,
            extra_args: Vec::new(),
        }
    }

    /// A full PXE server: DHCP plus TFTP from `tftp_root`, handing out `undionly.kpxe` / `ipxe.efi` and
    /// the iPXE script `ipxe_script` (a file in `tftp_root`, or a URL).
    pub fn pxe(interface: &str, dhcp_range: &str, tftp_root: &Path, ipxe_script: &str) -> DnsmasqConfig {
        DnsmasqConfig {
            tftp_root: Some(tftp_root.to_path_buf()),
            boot: Some(PxeBoot {
                bios: "undionly.kpxe".into(),
                uefi_x64: "ipxe.efi".into(),
                ipxe_script: ipxe_script.into(),
            }),
            ..DnsmasqConfig::addresses_only(interface, dhcp_range)
        }
    }

    /// dnsmasq's arguments, with its files (leases, pid, log) in `work_dir`.
    pub fn args(&self, work_dir: &Path) -> Vec<String> {
        let file = |name: &str| work_dir.join(name).display().to_string();
        let mut args = vec![
            "--keep-in-foreground".to_string(),
            "--conf-file=/dev/null".into(),
            "--port=0".into(),    // no DNS
            "--user=root".into(), // test dirs are root-only; dnsmasq would drop to `nobody`
            format!("--interface={}", self.interface),
            "--bind-interfaces".into(),
            format!("--dhcp-range={}", self.dhcp_range),
            "--dhcp-authoritative".into(),
            // dnsmasq pings an address before offering it, which delays each first offer by ~3 s.
            "--no-ping".into(),
            format!("--dhcp-leasefile={}", file("dnsmasq.leases")),
            format!("--pid-file={}", file("dnsmasq.pid")),
            format!("--log-facility={}", file("dnsmasq.log")),
            "--log-dhcp".into(),
        ];
        if let Some(root) = &self.tftp_root {
            args.push("--enable-tftp".into());
            args.push(format!("--tftp-root={}", root.display()));
        }
        if let Some(boot) = &self.boot {
            args.extend([
                "--dhcp-userclass=set:ipxe,iPXE".into(),
                "--dhcp-match=set:ipxe,175".into(),
                "--dhcp-match=set:efi64,option:client-arch,7".into(),
                "--dhcp-match=set:efi64,option:client-arch,9".into(),
                format!("--dhcp-boot=tag:ipxe,{}", boot.ipxe_script),
                format!("--dhcp-boot=tag:!ipxe,tag:efi64,{}", boot.uefi_x64),
                format!("--dhcp-boot=tag:!ipxe,tag:!efi64,{}", boot.bios),
            ]);
        }
        if let Some(cidr) = &self.ipv6_ra {
            let prefix = cidr.split('/').next().unwrap_or(cidr);
            args.push("--enable-ra".into());
            args.push(format!("--dhcp-range={prefix},ra-only"));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }
}

/// A running dnsmasq; killed on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    log: PathBuf,
    leases: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in `netns` with its files in `work_dir` and waits until it has started.
    pub fn start(netns: &Netns, config: &DnsmasqConfig, work_dir: &Path) -> Result<Dnsmasq> {
        let log = work_dir.join("dnsmasq.log");
        let _ = std::fs::remove_file(&log);
        if let Some(cidr) = &config.ipv6_ra {
            netns.ip(&["addr", "add", cidr, "dev", &config.interface, "nodad"])?;
        }
        let mut cmd = netns.command("dnsmasq");
        cmd.args(config.args(work_dir)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn { command: command_line(&cmd), source })?;
        let mut dnsmasq = Dnsmasq { child, log, leases: work_dir.join("dnsmasq.leases") };
        let timeout = Duration::from_secs(10);
        let deadline = Instant::now() + timeout;
        loop {
            if dnsmasq.log().contains("started, version") {
                return Ok(dnsmasq);
            }
            if let Ok(Some(status)) = dnsmasq.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = dnsmasq.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                return Err(HarnessError::Exited {
                    what: "dnsmasq".into(),
                    status,
                    awaited: "it started".into(),
                    tail: format!("{stderr}{}", tail(&dnsmasq.log(), 20)),
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout { what: "dnsmasq starting".into(), timeout, tail: dnsmasq.log() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// dnsmasq's log so far (DHCP exchanges and TFTP transfers).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The lease file's contents.
    pub fn leases(&self) -> String {
        std::fs::read_to_string(&self.leases).unwrap_or_default()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pxe_rules_put_ipxe_before_the_arch_rules() {
        let config =
            DnsmasqConfig::pxe("br0", "10.0.0.100,10.0.0.199,255.255.255.0,1h", Path::new("/srv/tftp"), "boot.ipxe");
        let args = config.args(Path::new("/w"));
        let boot: Vec<&str> = args.iter().filter(|a| a.starts_with("--dhcp-boot=")).map(String::as_str).collect();
        assert_eq!(
            boot,
            [
                "--dhcp-boot=tag:ipxe,boot.ipxe",
                "--dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi",
                "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe"
            ]
        );
        assert!(args.contains(&"--tftp-root=/srv/tftp".to_string()));
        assert!(args.contains(&"--pid-file=/w/dnsmasq.pid".to_string()));
    }

    #[test]
    fn addresses_only_has_no_boot_options_or_tftp() {
        let args = DnsmasqConfig::addresses_only("eth0", "10.0.0.50,10.0.0.60,255.255.255.0,1h").args(Path::new("/w"));
        assert!(!args.iter().any(|a| a.contains("dhcp-boot") || a.contains("tftp") || a.contains("userclass")));
        assert!(args.contains(&"--interface=eth0".to_string()));
    }
}

//! Proves the harness and the test payload with dnsmasq as the boot server: real firmware in QEMU
//! (SeaBIOS + QEMU's iPXE ROM, and OVMF's own PXE client chaining to `ipxe.efi`) gets DHCP on a
//! bridge in a fresh namespace, loads an iPXE script over TFTP, boots the payload kernel and initramfs,
//! and the payload reports on the serial console. Needs root and the boot assets (the assets step of `scripts/test`).

use std::path::Path;
use std::time::{Duration, Instant};

use oasis_e2e::{assets, tail, Dnsmasq, DnsmasqConfig, Firmware, Machine, MachineSpec, Netns};

const MARKER: &str = "OASIS-PAYLOAD-BOOTED";
const KERNEL_ARGS: &str = "console=ttyS0 oasis.test=harness";

/// The iPXE script: `initrd=initrd.img` on the kernel line and `--name initrd.img` on the initrd, so
/// that Linux's EFI stub finds the initrd through iPXE's virtual file system under UEFI; BIOS iPXE
/// ignores both.
fn ipxe_script() -> String {
    format!("#!ipxe\necho oasis harness: booting the test payload\nkernel vmlinuz initrd=initrd.img {KERNEL_ARGS}\ninitrd --name initrd.img initrd.img\nboot\n")
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
}

fn boot_payload(firmware: Firmware, mac: &str, ipv6_ra: bool, timeout: Duration) {
    let assets = assets().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::Builder::new().prefix("oasis-harness-").tempdir().unwrap();
    let tftp = work.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    for name in ["undionly.kpxe", "ipxe.efi"] {
        copy(&assets.ipxe.join(name), &tftp.join(name));
    }
    for name in ["vmlinuz", "initrd.img"] {
        copy(&assets.payload.join(name), &tftp.join(name));
    }
    std::fs::write(tftp.join("boot.ipxe"), ipxe_script()).unwrap();

    let ns = Netns::create("oasis-harness").unwrap();
    let ns_name = ns.name().to_string();
    {
        ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
        ns.add_tap("tap0", "br0").unwrap();
        let mut config = DnsmasqConfig::pxe("br0", "10.0.0.100,10.0.0.199,255.255.255.0,1h", &tftp, "boot.ipxe");
        if ipv6_ra {
            config.ipv6_ra = Some("fd00::1/64".into());
        }
        let dnsmasq = Dnsmasq::start(&ns, &config, work.path()).unwrap();
        let serial = work.path().join("serial.log");
        let start = Instant::now();
        let mut machine = Machine::start(MachineSpec::new(&ns, "tap0", mac, firmware, serial)).unwrap();
        machine.wait_for_serial(MARKER, timeout).unwrap_or_else(|e| {
            panic!("{firmware:?} boot failed: {e}\n--- dnsmasq log ---\n{}", tail(&dnsmasq.log(), 60))
        });
        let booted = start.elapsed();
        // The payload powers off right after its two lines; read the log once QEMU is gone, so the
        // `cmdline:` line is complete (the marker may be seen while it is still being written).
        let status = machine.wait_exit(Duration::from_secs(60)).unwrap();
        assert!(status.success(), "QEMU exited with {status}");
        let log = machine.serial();
        let cmdline = log
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("cmdline: "))
            .unwrap_or_else(|| panic!("no `cmdline:` line after the marker:\n{}", tail(&log, 40)));
        // Under UEFI, iPXE passes `initrd=initrd.img` on; BIOS iPXE may too.
        assert!(cmdline.contains(KERNEL_ARGS), "kernel command line is {cmdline:?}");
        eprintln!(
            "{firmware:?} (IPv6 RA: {ipv6_ra}): payload booted {:.1} s after power-on, QEMU exited after {:.1} s; cmdline: {cmdline}",
            booted.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
        let dhcp = dnsmasq.log();
        if let Some(dir) = std::env::var_os("OASIS_E2E_LOG_DIR") {
            let dir = Path::new(&dir);
            std::fs::create_dir_all(dir).unwrap();
            let tag = if ipv6_ra { "-ra" } else { "" };
            std::fs::write(dir.join(format!("{firmware:?}{tag}-serial.log")), machine.serial()).unwrap();
            std::fs::write(dir.join(format!("{firmware:?}{tag}-dnsmasq.log")), &dhcp).unwrap();
        }
        assert!(dhcp.contains("DHCPACK"), "dnsmasq acked no lease:\n{dhcp}");
        assert!(dhcp.contains("boot.ipxe"), "iPXE never asked for the script:\n{dhcp}");
        if firmware == Firmware::Uefi {
            assert!(dhcp.contains("ipxe.efi"), "OVMF did not load ipxe.efi:\n{dhcp}");
        }
    }
    drop(ns);
    assert!(!Netns::exists(&ns_name).unwrap(), "namespace {ns_name} is still there");
}

#[test]
fn bios_ipxe_rom_boots_payload_from_dnsmasq() {
    boot_payload(Firmware::Bios, "52:54:00:0a:00:01", false, Duration::from_secs(240));
}

/// With an IPv6 router advertisement on the segment iPXE stops waiting for IPv6 autoconfiguration
/// (about 12 s on an IPv4-only segment): the same boot takes about 11 s instead of 23 s.
#[test]
fn bios_boot_with_ipv6_router_advertisements() {
    boot_payload(Firmware::Bios, "52:54:00:0a:00:03", true, Duration::from_secs(240));
}

#[test]
fn uefi_ovmf_pxe_chains_ipxe_efi_and_boots_payload_from_dnsmasq() {
    boot_payload(Firmware::Uefi, "52:54:00:0a:00:02", false, Duration::from_secs(420));
}

#[test]
fn namespace_is_removed_even_when_the_test_panics() {
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::create("oasis-panic").unwrap();
        names.lock().unwrap().push(ns.name().to_string());
        ns.add_bridge("br0", Some("10.9.0.1/24")).unwrap();
        ns.add_tap("tap0", "br0").unwrap();
        let mut sleeper = ns.command("sleep");
        sleeper.arg("600");
        ns.spawn(sleeper).unwrap();
        let other = Netns::create("oasis-panic-peer").unwrap();
        names.lock().unwrap().push(other.name().to_string());
        ns.add_veth_to("veth0", &other, "eth0").unwrap();
        ns.attach("veth0", "br0").unwrap();
        other.add_address("eth0", "10.9.0.2/24").unwrap();
        other.exec(&["busybox", "ping", "-c", "1", "-W", "2", "10.9.0.1"]).unwrap();
        panic!("deliberate panic: the namespaces must still be removed");
    }));
    assert!(result.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    for name in names {
        assert!(!Netns::exists(&name).unwrap(), "{name} left behind");
    }
}

/// A site DHCP server in its own namespace, joined to the rack bridge by a veth pair, hands out
/// addresses only: the building block of the proxy-DHCP tests.
#[test]
fn site_dhcp_server_in_a_second_namespace_leases_over_the_bridge() {
    let work = tempfile::Builder::new().prefix("oasis-site-").tempdir().unwrap();
    let rack = Netns::create("oasis-rack").unwrap();
    let site = Netns::create("oasis-site").unwrap();
    let names = [rack.name().to_string(), site.name().to_string()];
    {
        rack.add_bridge("br0", None).unwrap();
        rack.add_veth_to("site0", &site, "eth0").unwrap();
        rack.attach("site0", "br0").unwrap();
        site.add_address("eth0", "10.0.0.2/24").unwrap();
        let config = DnsmasqConfig::addresses_only("eth0", "10.0.0.50,10.0.0.60,255.255.255.0,1h");
        let dnsmasq = Dnsmasq::start(&site, &config, work.path()).unwrap();
        let out = rack
            .exec(&["busybox", "udhcpc", "-i", "br0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"])
            .unwrap_or_else(|e| panic!("{e}\n--- dnsmasq log ---\n{}", dnsmasq.log()));
        assert!(out.contains("obtained") || dnsmasq.leases().contains("10.0.0."), "udhcpc said: {out}");
        let log = dnsmasq.log();
        assert!(log.contains("DHCPACK(eth0) 10.0.0.5") || log.contains("DHCPACK(eth0) 10.0.0.60"), "{log}");
        assert!(!log.contains("bootfile-name"), "a site server must not send boot options:\n{log}");
    }
    drop(rack);
    drop(site);
    for name in names {
        assert!(!Netns::exists(&name).unwrap(), "{name} left behind");
    }
}

//! Real firmware boots from `oasis serve`: QEMU's iPXE ROM under SeaBIOS, OVMF's own PXE client
//! chaining to `ipxe.efi` over oasis's TFTP, ProxyDHCP beside dnsmasq, and leases kept across a
//! restart. Each test makes its own namespace and bridge and removes them. Needs root and the
//! assets that `scripts/test` builds.

use std::path::Path;
use std::time::Duration;

use oasis_e2e::appliance::rack_config;
use oasis_e2e::{tail, Appliance, Dnsmasq, DnsmasqConfig, Firmware, Machine, MachineSpec, Netns};

const MARKER: &str = "OASIS-PAYLOAD-BOOTED";
const CMDLINE: &str = "console=ttyS0 oasis.test=e2e";
const FULL: &str = "range = [\"10.0.0.100\", \"10.0.0.199\"]\nconflict_check = \"arp\"";

/// Powers on a machine and waits for the payload's marker; returns the kernel command line the
/// payload saw.
fn boot(ns: &Netns, appliance: &Appliance, work: &Path, firmware: Firmware, mac: &str, tap: &str) -> String {
    let serial = work.join(format!("serial-{}-{}.log", mac.replace(':', ""), std::process::id()));
    let _ = std::fs::remove_file(&serial);
    let timeout = Duration::from_secs(if firmware == Firmware::Uefi { 420 } else { 240 });
    let mut machine = Machine::start(MachineSpec::new(ns, tap, mac, firmware, serial)).unwrap();
    let log = machine
        .wait_for_serial(MARKER, timeout)
        .unwrap_or_else(|e| panic!("{firmware:?} boot failed: {e}\n--- oasis log ---\n{}", tail(&appliance.log(), 80)));
    let cmdline = log.lines().find_map(|l| l.trim_end().strip_prefix("cmdline: ").map(str::to_string));
    let cmdline = cmdline.unwrap_or_else(|| {
        let _ = machine.wait_exit(Duration::from_secs(30));
        machine
            .serial()
            .lines()
            .find_map(|l| l.trim_end().strip_prefix("cmdline: ").map(str::to_string))
            .unwrap_or_default()
    });
    let _ = machine.wait_exit(Duration::from_secs(60));
    cmdline
}

fn rack(prefix: &str, taps: &[&str]) -> (Netns, tempfile::TempDir) {
    let ns = Netns::create(prefix).unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    for tap in taps {
        ns.add_tap(tap, "br0").unwrap();
    }
    let work = tempfile::Builder::new().prefix("oasis-e2e-").tempdir().unwrap();
    (ns, work)
}

fn assert_booted_by_oasis(cmdline: &str, mac: &str) {
    assert!(cmdline.contains(CMDLINE), "the profile's command line is missing: {cmdline:?}");
    let bootif = format!("BOOTIF=01-{}", mac.replace(':', "-"));
    assert!(cmdline.contains(&bootif), "the per-machine script was not used: {cmdline:?}");
}

#[test]
fn bios_machine_boots_the_profile_from_oasis_in_full_mode() {
    let (ns, work) = rack("oasis-bios", &["tap0"]);
    let config = rack_config(work.path(), FULL, CMDLINE);
    let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));

    // Hostile TFTP requests first: each gets an error, and the server keeps serving.
    for name in ["../../etc/passwd", "/etc/passwd", "ipxe/../../oasis.toml", "missing.efi"] {
        let mut cmd = ns.command(oasis_e2e::appliance::tftp_client().to_str().unwrap());
        cmd.args(["get", "10.0.0.1:69", name]);
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "TFTP served {name:?}");
    }

    let mac = "52:54:00:0b:00:01";
    let cmdline = boot(&ns, &appliance, work.path(), Firmware::Bios, mac, "tap0");
    assert_booted_by_oasis(&cmdline, mac);

    let address = appliance.address_of(mac).expect("a bound lease for the machine");
    assert!(address.starts_with("10.0.0.1"), "{address}");
    let machines = appliance.machines();
    let machine = machines.iter().find(|m| m.netboot.mac.to_string() == mac).expect("the machine is in the inventory");
    assert!(machine.netboot.boot_count >= 1, "{machine:?}");
    let table = appliance.cli(&["leases"]);
    assert!(table.contains(mac) && table.contains("bound"), "{table}");
    let log = appliance.log();
    assert!(log.contains("traversal") || log.contains("climbs out"), "no log line for the traversal attempts:\n{log}");
}

#[test]
fn uefi_machine_chains_ipxe_efi_over_oasis_tftp() {
    let (ns, work) = rack("oasis-uefi", &["tap0"]);
    let config = rack_config(work.path(), FULL, CMDLINE);
    let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));
    let mac = "52:54:00:0b:00:02";
    let cmdline = boot(&ns, &appliance, work.path(), Firmware::Uefi, mac, "tap0");
    assert_booted_by_oasis(&cmdline, mac);
    let machines = appliance.machines();
    let machine = machines.iter().find(|m| m.netboot.mac.to_string() == mac).unwrap();
    assert_eq!(machine.netboot.arch, Some(7), "OVMF's PXE client identifies as x86-64 UEFI: {machine:?}");
}

#[test]
fn proxy_mode_boots_beside_a_site_dhcp_server_that_hands_out_addresses_only() {
    let (ns, work) = rack("oasis-proxy", &["tap0"]);
    // The site's DHCP server lives in its own namespace on the same rack network.
    let site = Netns::create("oasis-site").unwrap();
    ns.add_veth_to("site0", &site, "eth0").unwrap();
    ns.attach("site0", "br0").unwrap();
    site.add_address("eth0", "10.0.0.2/24").unwrap();
    let site_dhcp = Dnsmasq::start(
        &site,
        &DnsmasqConfig::addresses_only("eth0", "10.0.0.150,10.0.0.159,255.255.255.0,1h"),
        work.path(),
    )
    .unwrap();

    let config = rack_config(work.path(), "mode = \"proxy\"", CMDLINE);
    let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));
    let mac = "52:54:00:0b:00:03";
    let cmdline = boot(&ns, &appliance, work.path(), Firmware::Bios, mac, "tap0");
    assert_booted_by_oasis(&cmdline, mac);
    assert!(appliance.leases().is_empty(), "proxy mode handed out an address");
    let site_leases = site_dhcp.leases();
    assert!(site_leases.contains(mac), "the site server did not lease the address:\n{site_leases}");
}

#[test]
fn a_restarted_appliance_keeps_its_leases() {
    let (ns, work) = rack("oasis-restart", &["tap0"]);
    let config = rack_config(work.path(), FULL, CMDLINE);
    let log = work.path().join("oasis.log");
    let mac = "52:54:00:0b:00:04";
    let first_address = {
        let appliance = Appliance::start(&ns, &config, &log);
        assert_booted_by_oasis(&boot(&ns, &appliance, work.path(), Firmware::Bios, mac, "tap0"), mac);
        appliance.address_of(mac).expect("a lease after the first boot")
    };

    let appliance = Appliance::start(&ns, &config, &log);
    // Another client asks first. Had the lease been lost, it would get the same first address.
    let client = Netns::create("oasis-client").unwrap();
    ns.add_veth_to("cl0", &client, "eth0").unwrap();
    ns.attach("cl0", "br0").unwrap();
    client.exec(&["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-s", "/bin/true"]).unwrap();
    let leases = appliance.leases();
    assert_eq!(leases.len(), 2, "the other client got no lease: {leases:?}");
    assert_eq!(appliance.address_of(mac).as_deref(), Some(first_address.as_str()), "lease lost in the restart");

    assert_booted_by_oasis(&boot(&ns, &appliance, work.path(), Firmware::Bios, mac, "tap0"), mac);
    assert_eq!(appliance.address_of(mac).as_deref(), Some(first_address.as_str()), "same address after the restart");
    let events = appliance.cli(&["events"]);
    assert!(events.contains("lease-bound"), "{events}");
}

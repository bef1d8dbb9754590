//! The node image boots and its agent's boot phase works on real (emulated) hardware: two QEMU
//! machines, one with a virtio-net NIC and one with an e1000, boot the node kernel and initramfs
//! directly (no firmware netboot) on a bridge where dnsmasq hands out addresses with 2-minute
//! leases. Each agent must load its NIC driver and WireGuard, take the address dnsmasq leased to its
//! MAC (and answer ping there), and renew the lease. Needs root and the node image in
//! `$OASIS_ASSETS/node` (`scripts/test` builds it).

use std::time::Duration;

use oasis_e2e::{node_image, tail, DirectKernel, Dnsmasq, DnsmasqConfig, Firmware, Machine, MachineSpec, Netns};

const BOOT_DONE: &str = "oasis-agent: boot done:";
const RENEWED: &str = "oasis-agent: dhcp: renewed";

struct Guest {
    mac: &'static str,
    nic_model: &'static str,
    driver: &'static str,
    bootif: bool,
}

/// The `boot done` line's fields: `interface X mac X address A/P gateway G wireguard W drivers D`.
fn summary_field<'a>(line: &'a str, key: &str) -> &'a str {
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == key {
            return words.next().unwrap_or("");
        }
    }
    panic!("no `{key}` in {line:?}")
}

fn fail(machine: &Machine, dnsmasq: &Dnsmasq, what: String) -> ! {
    panic!("{what}\n--- serial ---\n{}\n--- dnsmasq ---\n{}", tail(&machine.serial(), 60), tail(&dnsmasq.log(), 30))
}

#[test]
fn virtio_and_e1000_machines_load_drivers_get_dhcp_leases_and_renew_them() {
    let node = node_image().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::Builder::new().prefix("oasis-node-").tempdir().unwrap();
    let guests = [
        Guest { mac: "52:54:00:0b:00:01", nic_model: "virtio-net-pci", driver: "virtio_net", bootif: true },
        Guest { mac: "52:54:00:0b:00:02", nic_model: "e1000", driver: "e1000", bootif: false },
    ];
    let ns = Netns::create("oasis-node").unwrap();
    let ns_name = ns.name().to_string();
    {
        ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
        // dnsmasq's shortest lease is 2 minutes: udhcpc renews after 1.
        let config = DnsmasqConfig::addresses_only("br0", "10.0.0.100,10.0.0.199,255.255.255.0,2m");
        let dnsmasq = Dnsmasq::start(&ns, &config, work.path()).unwrap();
        let mut machines = Vec::new();
        for (i, guest) in guests.iter().enumerate() {
            let tap = format!("tap{i}");
            ns.add_tap(&tap, "br0").unwrap();
            let serial = work.path().join(format!("{}.log", guest.driver));
            let mut spec = MachineSpec::new(&ns, &tap, guest.mac, Firmware::Bios, serial);
            spec.nic_model = guest.nic_model.into();
            let mut append = "console=ttyS0 panic=-1".to_string();
            if guest.bootif {
                append.push_str(&format!(" BOOTIF=01-{}", guest.mac.replace(':', "-")));
            }
            spec.direct_kernel =
                Some(DirectKernel { kernel: node.join("vmlinuz"), initrd: node.join("initrd.img"), append });
            machines.push(Machine::start(spec).unwrap());
        }

        let fail = |machine: &Machine, what: String| fail(machine, &dnsmasq, what);
        for (guest, machine) in guests.iter().zip(machines.iter_mut()) {
            machine
                .wait_for_serial(BOOT_DONE, Duration::from_secs(180))
                .unwrap_or_else(|e| panic!("{} machine: {e}\n--- dnsmasq ---\n{}", guest.nic_model, dnsmasq.log()));
            let booted = machine.elapsed();
            // The summary line may still be being written when the marker is seen: wait for its end.
            let line = loop {
                let log = machine.serial();
                let rest = &log[log.find(BOOT_DONE).expect("seen before")..];
                if let Some(end) = rest.find('\n') {
                    break rest[..end].trim_end().to_string();
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            eprintln!("{}: {:.1} s after power-on: {line}", guest.nic_model, booted.as_secs_f64());
            if summary_field(&line, "mac") != guest.mac {
                fail(machine, format!("the agent chose the wrong link: {line}"));
            }
            if !summary_field(&line, "drivers").split(',').any(|d| d == guest.driver) {
                fail(machine, format!("{} was not loaded: {line}", guest.driver));
            }
            if summary_field(&line, "wireguard") != "loaded" {
                fail(machine, format!("WireGuard's module was not loaded: {line}"));
            }
            assert_eq!(summary_field(&line, "gateway"), "10.0.0.1", "{line}");
            // The address is the one dnsmasq leased to this MAC (lease file: expiry MAC IP name id).
            let leases = dnsmasq.leases();
            let leased = leases
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.get(1) == Some(&guest.mac)).then(|| f[2].to_string())
                })
                .unwrap_or_else(|| fail(machine, format!("dnsmasq has no lease for {}:\n{leases}", guest.mac)));
            assert_eq!(summary_field(&line, "address"), format!("{leased}/24"), "{line}");
            // The address is really configured on the guest's NIC: it answers.
            ns.exec(&["busybox", "ping", "-c", "1", "-W", "5", &leased])
                .unwrap_or_else(|e| fail(machine, format!("{leased} does not answer ping: {e}")));
        }

        // udhcpc renews at half the lease (60 s); the hook applies the renewal through rtnetlink.
        for (guest, machine) in guests.iter().zip(machines.iter_mut()) {
            machine
                .wait_for_serial(RENEWED, Duration::from_secs(150))
                .unwrap_or_else(|e| panic!("{} machine did not renew its lease: {e}", guest.nic_model));
        }
        if let Some(dir) = std::env::var_os("OASIS_E2E_LOG_DIR") {
            let dir = std::path::Path::new(&dir);
            std::fs::create_dir_all(dir).unwrap();
            for (guest, machine) in guests.iter().zip(machines.iter()) {
                std::fs::write(dir.join(format!("node-{}-serial.log", guest.driver)), machine.serial()).unwrap();
            }
            std::fs::write(dir.join("node-dnsmasq.log"), dnsmasq.log()).unwrap();
        }
    }
    drop(ns);
    assert!(!Netns::exists(&ns_name).unwrap(), "namespace {ns_name} is still there");
}

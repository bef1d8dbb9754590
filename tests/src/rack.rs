//! A simulated rack for cluster tests and benchmarks: a namespace with the rack bridge, `oasis
//! serve`, and machines booting the node image (the kernel loaded directly by QEMU, sparing the
//! firmware's netboot, which the network_boot and node_join tests prove) that can be powered off
//! and on again. Each machine has an SMBIOS serial (`SN-1`, `SN-2`, …) to be ordered by and a
//! real UUID to be identified by, as a real board has.
//!
//! A rack [`Rack::with_bmcs`] has a simulated BMC per machine (OpenIPMI's `ipmi_sim` in the
//! rack's namespace, in the appliance's `[[power.bmc]]`), whose chassis is the machine's QEMU:
//! the machines start off, and their power is the appliance's to switch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::appliance::{join_args, node_boot_root_from, write_config, Appliance};
use crate::ipmi_sim::IpmiSim;
use crate::json::{ClusterStatus, Health};
use crate::{tail, DirectKernel, Firmware, Machine, MachineSpec, Netns};

/// The user of every simulated BMC in a rack [`Rack::with_bmcs`].
pub const BMC_USER: &str = "oasis";
/// Its password.
pub const BMC_PASSWORD: &str = "rack-bmc-secret";
/// The one user of a BMC the config does not name, as it left the factory.
pub const FACTORY_USER: &str = "admin";
pub const FACTORY_PASSWORD: &str = "factory-secret";

/// A simulated rack: a namespace with the rack bridge, the appliance, and machines that can be
/// powered off and on again (same MAC, serial and UUID; a new boot).
#[derive(Debug)]
pub struct Rack {
    pub ns: Netns,
    pub work: tempfile::TempDir,
    config: PathBuf,
    pub appliance: Appliance,
    append: String,
    machines: Vec<Option<Machine>>,
    /// Machines with a local disk (a sparse 2 GiB raw image, kept across power cycles).
    disks: Vec<usize>,
    /// The machines boot from the network through their firmware, and a reboot boots them
    /// again that way (what a node rollout needs), instead of QEMU loading the node image.
    netboot: bool,
    /// Each machine's BMC, when the rack has them (then `machines` stays empty: their power is
    /// the BMC's).
    bmcs: Vec<IpmiSim>,
}

/// Machine `i`'s MAC address.
pub fn mac(i: usize) -> String {
    format!("52:54:00:0e:00:{:02x}", i + 1)
}

/// Machine `i`'s BMC address (a rack [`Rack::with_bmcs`]).
pub fn bmc_address(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 0, 2, i as u8 + 1)
}

/// Machine `i`'s BMC MAC address (a rack [`Rack::with_bmcs`]).
pub fn bmc_mac(i: usize) -> String {
    format!("52:54:00:0b:00:{:02x}", i + 1)
}

/// Machine `i`'s SMBIOS UUID, which is its machine id.
pub fn uuid(i: usize) -> String {
    format!("6f3c2a10-0000-4000-8000-{:012x}", i + 1)
}

impl Rack {
    /// A rack named `name` (the namespace prefix) with `count` machines powered on and `cluster`
    /// appended to the appliance's configuration.
    pub fn new(name: &str, count: usize, cluster: &str) -> Rack {
        Rack::with_disks(name, count, cluster, &[])
    }

    /// A rack like [`Rack::new`] where the machines in `disks` have a blank local disk.
    pub fn with_disks(name: &str, count: usize, cluster: &str, disks: &[usize]) -> Rack {
        Rack::with_node(name, count, cluster, disks, &crate::node_image().unwrap_or_else(|e| panic!("{e}")))
    }

    /// A rack like [`Rack::with_disks`] whose machines boot the node image in `node` (e.g.
    /// [`crate::trixie_node_image`]).
    pub fn with_node(name: &str, count: usize, cluster: &str, disks: &[usize], node: &Path) -> Rack {
        Rack::build(name, count, cluster, disks, node, Boot::Direct)
    }

    /// A rack like [`Rack::with_node`] whose machines boot from the network through their
    /// firmware (BIOS and iPXE), each boot from its own boot script, and boot again that way when
    /// they reboot.
    pub fn netbooted(name: &str, count: usize, cluster: &str, disks: &[usize], node: &Path) -> Rack {
        Rack::build(name, count, cluster, disks, node, Boot::Netboot)
    }

    /// A rack like [`Rack::netbooted`] whose machines are off, each with a simulated BMC in the
    /// appliance's config (`[[power.bmc]]` appended to `cluster`, which may hold a `[power]`
    /// table) for the machines of `in_config`: they run when the appliance powers them on. The
    /// others' BMCs have only a factory user ([`FACTORY_USER`]), and the harness powers them on
    /// through it once the appliance is up, as a technician would press their buttons.
    pub fn with_bmcs(
        name: &str,
        count: usize,
        cluster: &str,
        disks: &[usize],
        in_config: &[usize],
        node: &Path,
    ) -> Rack {
        Rack::build(name, count, cluster, disks, node, Boot::Bmc(in_config))
    }

    fn build(name: &str, count: usize, cluster: &str, disks: &[usize], node: &Path, boot: Boot<'_>) -> Rack {
        let ns = Netns::create(name).unwrap();
        ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
        let work = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir().unwrap();
        for i in 0..count {
            ns.add_tap(&format!("tap{i}"), "br0").unwrap();
        }
        let mut bmcs = vec![];
        let mut cluster = cluster.to_string();
        if let Boot::Bmc(in_config) = boot {
            for i in 0..count {
                let spec = machine_spec(&ns, work.path(), i, disks.contains(&i), None);
                let scratch = work.path().join(format!("machine{i}"));
                std::fs::create_dir_all(&scratch).unwrap();
                let mut args = spec.qemu_args(&scratch).unwrap();
                args.extend(crate::qemu::monitor_args(&monitor_path(work.path(), i)));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                // Each BMC at its own address, as in a rack, which it also reports on its LAN
                // channel: what the machine's agent reads through its system interface.
                ns.ip(&["addr", "add", &format!("{}/32", bmc_address(i)), "dev", "lo"]).unwrap();
                let lan = std::net::SocketAddrV4::new(bmc_address(i), 623);
                let (user, password) =
                    if in_config.contains(&i) { (BMC_USER, BMC_PASSWORD) } else { (FACTORY_USER, FACTORY_PASSWORD) };
                let sim = IpmiSim::start_on(Some(&ns), lan, user, password, &args).unwrap();
                sim.configure_lan(Some(&ns), user, password, &bmc_mac(i)).unwrap();
                if in_config.contains(&i) {
                    cluster += &format!(
                        "\n[[power.bmc]]\nmachine = \"{}\"\nipmi = \"{}\"\nuser = \"{user}\"\npassword = \"{password}\"\n",
                        mac(i),
                        sim.address()
                    );
                }
                bmcs.push(sim);
            }
        }
        let root = node_boot_root_from(work.path(), node);
        let config = write_config(work.path(), "range = [\"10.0.0.100\", \"10.0.0.199\"]", &root, &cluster);
        // The machines boot the node image directly, as from boot media: with the join token.
        let args = join_args(&config);
        let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));
        let append =
            format!("console=ttyS0 panic=-1 oasis.api={} oasis.token={} oasis.pin={}", args.api, args.token, args.pin);
        let mut rack = Rack {
            ns,
            work,
            config,
            appliance,
            append,
            machines: (0..count).map(|_| None).collect(),
            disks: disks.to_vec(),
            netboot: !matches!(boot, Boot::Direct),
            bmcs,
        };
        match boot {
            Boot::Bmc(in_config) => {
                for (i, sim) in rack.bmcs.iter().enumerate().filter(|(i, _)| !in_config.contains(i)) {
                    let on = sim.ipmitool(Some(&rack.ns), FACTORY_USER, FACTORY_PASSWORD, &["chassis", "power", "on"]);
                    on.unwrap_or_else(|e| panic!("machine {i}'s power button: {e}"));
                }
            }
            _ => {
                for i in 0..count {
                    rack.power_on(i);
                }
            }
        }
        rack
    }

    pub fn node(&self) -> PathBuf {
        self.work.path().join("boot/node")
    }

    /// Starts machine `i`'s QEMU (not in a rack with BMCs: there the appliance does).
    pub fn power_on(&mut self, i: usize) {
        assert!(self.bmcs.is_empty(), "a machine with a BMC is powered on through it (`oasis machine power on`)");
        let direct = (!self.netboot).then(|| DirectKernel {
            kernel: self.node().join("vmlinuz"),
            initrd: self.node().join("initrd.img"),
            append: self.append.clone(),
        });
        let spec = machine_spec(&self.ns, self.work.path(), i, self.disks.contains(&i), direct);
        self.machines[i] = Some(Machine::start(spec).unwrap());
    }

    /// Machine `i`'s simulated BMC (a rack [`Rack::with_bmcs`]).
    pub fn bmc(&self, i: usize) -> &IpmiSim {
        &self.bmcs[i]
    }

    /// Runs a command on machine `i`'s QEMU monitor (a rack [`Rack::with_bmcs`]): `stop` hangs
    /// it (its CPU stops, its BMC still answers), `quit` ends it as a power supply dying would.
    pub fn monitor(&self, i: usize, command: &str) -> String {
        crate::qemu::monitor(&monitor_path(self.work.path(), i), command)
    }

    pub fn power_off(&mut self, i: usize) {
        self.machines[i] = None;
    }

    /// Kills the appliance (SIGKILL) and starts it again on the same store.
    pub fn kill_and_restart_appliance(&mut self) {
        self.appliance.kill();
        self.appliance = Appliance::start(&self.ns, &self.config, &self.work.path().join("oasis.log"));
    }

    /// The console of machine `i` so far (every boot of it).
    pub fn console(&self, i: usize) -> String {
        std::fs::read_to_string(self.work.path().join(format!("machine{i}.log"))).unwrap_or_default()
    }

    pub fn restart_appliance(&mut self) {
        self.appliance.stop();
        self.appliance = Appliance::start(&self.ns, &self.config, &self.work.path().join("oasis.log"));
    }

    pub fn status(&self) -> ClusterStatus {
        self.appliance.cluster_status()
    }

    /// The id of machine `i` (its UUID, lowercase).
    pub fn id(i: usize) -> String {
        uuid(i)
    }

    /// Waits until `ok` holds for the cluster status, or fails with everything worth reading.
    pub fn wait(&self, timeout: Duration, what: &str, ok: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if ok(&status) {
                return status;
            }
            if Instant::now() > deadline {
                let consoles: Vec<String> =
                    (0..self.machines.len()).map(|i| format!("machine {i}:\n{}", tail(&self.console(i), 30))).collect();
                panic!(
                    "{what}: not within {timeout:?}\nstatus:\n{}\n--- events ---\n{}\n--- consoles ---\n{}\n--- appliance ---\n{}",
                    self.appliance.cli(&["cluster", "status"]),
                    self.appliance.cli(&["events", "--limit", "60"]),
                    consoles.join("\n-----\n"),
                    tail(&self.appliance.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    pub fn put(&self, key: &str, value: &str, via: usize) {
        let out = self.appliance.cli(&["cluster", "put", key, value, "--via", &Self::id(via)]);
        assert_eq!(out.trim(), value);
    }

    pub fn get(&self, key: &str, via: usize) -> String {
        self.appliance.cli(&["cluster", "get", key, "--via", &Self::id(via)]).trim().to_string()
    }
}

/// How a rack's machines boot and are powered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boot<'a> {
    /// QEMU loads the node image; the test switches QEMU.
    Direct,
    /// Firmware network boot; the test switches QEMU.
    Netboot,
    /// Firmware network boot; each machine's BMC switches QEMU, those of the machines listed
    /// being in the config.
    Bmc(&'a [usize]),
}

/// Machine `i` of a rack: a BIOS machine on `tap{i}`, its console in `work/machine{i}.log`, with
/// an SMBIOS serial to order by and a real UUID to be identified by (as a real board has), and
/// a sparse 2 GiB local disk kept across power cycles when `disk`. It netboots unless `direct`
/// gives the kernel; a netbooted machine's reboot resets it, so it netboots again.
fn machine_spec<'a>(ns: &'a Netns, work: &Path, i: usize, disk: bool, direct: Option<DirectKernel>) -> MachineSpec<'a> {
    let log = work.join(format!("machine{i}.log"));
    let mut spec = MachineSpec::new(ns, &format!("tap{i}"), &mac(i), Firmware::Bios, log);
    spec.memory_mb = 512;
    spec.extra_args = vec!["-smbios".into(), format!("type=1,serial=SN-{}", i + 1), "-uuid".into(), uuid(i)];
    if disk {
        let disk = work.join(format!("disk{i}.img"));
        if !disk.exists() {
            std::fs::File::create(&disk).unwrap().set_len(2 << 30).unwrap();
        }
        spec.extra_args.extend(["-drive".into(), format!("file={},if=virtio,format=raw", disk.display())]);
    }
    spec.reboots = direct.is_none();
    spec.direct_kernel = direct;
    spec
}

fn monitor_path(work: &Path, i: usize) -> PathBuf {
    work.join(format!("machine{i}.monitor"))
}

impl Drop for Rack {
    fn drop(&mut self) {
        self.machines.clear();
    }
}

pub use crate::json::voters;

/// Machine `i`'s role.
pub fn role(status: &ClusterStatus, i: usize) -> String {
    let id = Rack::id(i);
    status.machines.iter().find(|m| m.id == id).map_or(String::new(), |m| m.role.clone())
}

/// Healthy, with exactly these machines as voters, every member healthy.
pub fn healthy_with(status: &ClusterStatus, machines: &[usize]) -> bool {
    let mut want: Vec<String> = machines.iter().map(|i| Rack::id(*i)).collect();
    want.sort();
    status.health == Health::Healthy && voters(status) == want && status.members.iter().all(|m| m.healthy)
}

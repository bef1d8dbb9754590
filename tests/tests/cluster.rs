//! The rack assembles itself: machines boot the node image (the kernel loaded directly by QEMU,
//! to spare the firmware's netboot, which network_boot and node_join prove), register, and the
//! appliance turns them into an etcd cluster over the WireGuard mesh: real etcd (Debian's), real
//! kernel WireGuard in the guests, membership changed by the appliance one step at a time.
//! Needs root, QEMU and the node image in `$OASIS_ASSETS/node` (scripts/test builds it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use oasis_e2e::appliance::{agent_args, node_boot_root, write_config, Appliance};
use oasis_e2e::{tail, DirectKernel, Firmware, Machine, MachineSpec, Netns};
use serde_json::Value;

/// A simulated rack: a namespace with the rack bridge, the appliance, and machines that can be
/// powered off and on again (same MAC, serial and UUID; a new boot).
struct Rack {
    ns: Netns,
    work: tempfile::TempDir,
    config: PathBuf,
    appliance: Appliance,
    append: String,
    machines: Vec<Option<Machine>>,
}

fn mac(i: usize) -> String {
    format!("52:54:00:0e:00:{:02x}", i + 1)
}

fn uuid(i: usize) -> String {
    format!("6f3c2a10-0000-4000-8000-{:012x}", i + 1)
}

impl Rack {
    fn new(name: &str, count: usize, cluster: &str) -> Rack {
        let ns = Netns::create(name).unwrap();
        ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
        let work = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir().unwrap();
        let root = node_boot_root(work.path());
        let config = write_config(work.path(), "range = [\"10.0.0.100\", \"10.0.0.199\"]", &root, cluster);
        let appliance = Appliance::start(&ns, &config, &work.path().join("oasis.log"));
        let args = agent_args(&ns, "52-54-00-0e-00-01");
        let append =
            format!("console=ttyS0 panic=-1 oasis.api={} oasis.token={} oasis.pin={}", args.api, args.token, args.pin);
        for i in 0..count {
            ns.add_tap(&format!("tap{i}"), "br0").unwrap();
        }
        let mut rack = Rack { ns, work, config, appliance, append, machines: (0..count).map(|_| None).collect() };
        for i in 0..count {
            rack.power_on(i);
        }
        rack
    }

    fn node(&self) -> PathBuf {
        self.work.path().join("boot/node")
    }

    fn power_on(&mut self, i: usize) {
        let log = self.work.path().join(format!("machine{i}.log"));
        let mut spec = MachineSpec::new(&self.ns, &format!("tap{i}"), &mac(i), Firmware::Bios, log);
        spec.memory_mb = 512;
        // A serial to order by and a real UUID to be identified by, as a real board has.
        spec.extra_args = vec!["-smbios".into(), format!("type=1,serial=SN-{}", i + 1), "-uuid".into(), uuid(i)];
        spec.direct_kernel = Some(DirectKernel {
            kernel: self.node().join("vmlinuz"),
            initrd: self.node().join("initrd.img"),
            append: self.append.clone(),
        });
        self.machines[i] = Some(Machine::start(spec).unwrap());
    }

    fn power_off(&mut self, i: usize) {
        self.machines[i] = None;
    }

    fn restart_appliance(&mut self) {
        self.appliance.stop();
        self.appliance = Appliance::start(&self.ns, &self.config, &self.work.path().join("oasis.log"));
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.appliance.cli(&["cluster", "status", "--json"])).unwrap()
    }

    /// The id of machine `i` (its UUID, lowercase).
    fn id(i: usize) -> String {
        uuid(i)
    }

    /// Waits until `ok` holds for the cluster status, or fails with everything worth reading.
    fn wait(&self, timeout: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if ok(&status) {
                return status;
            }
            if Instant::now() > deadline {
                let consoles: Vec<String> = self.machines.iter().flatten().map(|m| tail(&m.serial(), 30)).collect();
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

    fn put(&self, key: &str, value: &str, via: usize) {
        let out = self.appliance.cli(&["cluster", "put", key, value, "--via", &Self::id(via)]);
        assert_eq!(out.trim(), value);
    }

    fn get(&self, key: &str, via: usize) -> String {
        self.appliance.cli(&["cluster", "get", key, "--via", &Self::id(via)]).trim().to_string()
    }
}

impl Drop for Rack {
    fn drop(&mut self) {
        self.machines.clear();
    }
}

fn voters(status: &Value) -> Vec<String> {
    let mut v: Vec<String> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["learner"] == false)
        .filter_map(|m| m["machine"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

fn role(status: &Value, i: usize) -> String {
    let id = Rack::id(i);
    status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id.as_str())
        .map_or(String::new(), |m| m["role"].as_str().unwrap().to_string())
}

fn healthy_with(status: &Value, machines: &[usize]) -> bool {
    let mut want: Vec<String> = machines.iter().map(|i| Rack::id(*i)).collect();
    want.sort();
    status["health"] == "healthy"
        && voters(status) == want
        && status["members"].as_array().unwrap().iter().all(|m| m["healthy"] == true)
}

/// Five machines, three control-plane places: the second in order dies while joining and the
/// appliance restarts right after; the fourth takes the place, the fifth is a worker. Then a
/// voter powers off (degraded, quorum kept) and comes back (healthy, joined again).
#[test]
fn the_rack_assembles_through_a_death_mid_join_a_restart_and_a_power_cycle() {
    let cluster = "[cluster]\nname = \"rack\"\nmin_machines = 5\nsettle_secs = 5\ndead_after_secs = 15\n";
    let mut rack = Rack::new("oasis-cl5", 5, cluster);
    let started = Instant::now();

    let status = rack.wait(Duration::from_secs(900), "machine 2 joining as a learner", |s| {
        s["members"].as_array().unwrap().iter().any(|m| m["learner"] == true && m["machine"] == Rack::id(1).as_str())
    });
    assert_eq!(voters(&status), [Rack::id(0)], "the first in serial order bootstraps");
    rack.power_off(1);
    rack.restart_appliance();

    let status =
        rack.wait(Duration::from_secs(900), "3 healthy voters without machine 2", |s| healthy_with(s, &[0, 2, 3]));
    eprintln!("assembled in {:.0} s from power-on", started.elapsed().as_secs_f64());
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "no duplicate or leftover member: {status:#}");
    assert_eq!(role(&status, 4), "worker");
    assert_eq!(role(&status, 1), "worker", "the machine that died mid-join is passed over");
    assert_eq!(status["kubernetes"], "not bundled");
    let events = rack.appliance.cli(&["events", "--limit", "500"]);
    assert!(events.contains("died while joining"), "{events}");
    assert_eq!(events.matches("etcd starts a new cluster").count(), 1, "one bootstrap only:\n{events}");

    // Data written through one member is read through another: replicated over the mesh.
    rack.put("/oasis/test", "written-via-first", 0);
    assert_eq!(rack.get("/oasis/test", 3), "written-via-first");

    // A voter powers off: degraded, with quorum; the cluster still takes writes.
    rack.power_off(2);
    let status = rack.wait(Duration::from_secs(300), "degraded with 2 of 3", |s| s["health"] == "degraded");
    assert_eq!(voters(&status).len(), 3, "a voter down is not removed");
    rack.put("/oasis/test", "written-while-degraded", 3);
    assert_eq!(rack.get("/oasis/test", 0), "written-while-degraded");

    // It comes back with its memory wiped: it is replaced by itself and the cluster is healthy.
    let back = Instant::now();
    rack.power_on(2);
    rack.wait(Duration::from_secs(900), "healthy again with machine 3 back", |s| healthy_with(s, &[0, 2, 3]));
    eprintln!("member back and healthy {:.0} s after its power-on", back.elapsed().as_secs_f64());
    assert_eq!(rack.get("/oasis/test", 2), "written-while-degraded");
    let mesh = rack.status()["mesh"].as_array().unwrap().clone();
    assert!(
        mesh.iter().any(|p| p["from"] == Rack::id(2).as_str() && p["handshake_age_secs"].as_u64().is_some()),
        "the returning machine is on the mesh: {mesh:#?}"
    );
}

/// One machine alone is a single-node cluster.
#[test]
fn one_machine_is_a_single_node_cluster() {
    let rack = Rack::new("oasis-cl1", 1, "[cluster]\nsettle_secs = 2\n");
    let status = rack.wait(Duration::from_secs(600), "a single healthy member", |s| healthy_with(s, &[0]));
    assert_eq!(status["control_plane_target"], 1);
    assert_eq!(role(&status, 0), "control-plane");
    rack.put("k", "v", 0);
    assert_eq!(rack.get("k", 0), "v");
}

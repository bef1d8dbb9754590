//! The whole-image rack, as root (run by `scripts/rack-image`): the appliance as the site gets it.
//! Makes a USB stick labelled OASIS with oasis.toml and the appliance's disk from the appliance
//! image, then in a network namespace with a bridge and no route anywhere else (the rack needs
//! nothing beyond itself) powers on the appliance VM (its own disk, the stick on USB) and N
//! machines (alternately BIOS and UEFI) that netboot from it. Shows the appliance's console until
//! the cluster is healthy, the times from power-on, then powers the appliance off and prints the
//! report it wrote on the stick.
//!
//! Every wait is bounded and says what it waited for; a QEMU that dies is reported at once with the
//! end of its console. Ctrl-C stops it: everything it made (namespace, bridge, taps, QEMU, the
//! work directory) is removed once, and it exits with 130. Otherwise the logs and images are kept
//! in the work directory it names.
//!
//!   rack_image [MACHINES]   (default 3; OASIS_BIN, OASIS_ASSETS with node/, ipxe/ and
//!                            appliance/appliance.img; APPLIANCE_FIRMWARE=uefi for OVMF)

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use oasis_e2e::appliance::oasis;
use oasis_e2e::appliance_vm::{appliance_disk, appliance_image, ApplianceVm, ApplianceVmSpec};
use oasis_e2e::interrupt::{self, failed, Stop};
use oasis_e2e::{tail, Firmware, Machine, MachineSpec, Netns};

/// The appliance's own console lines, as the script showed them.
fn console_line(line: &str) -> bool {
    ["oasis boot:", "oasis status:"].iter().any(|m| line.contains(m))
        || ["progress:", "machines:", "control plane:"].iter().any(|m| line.starts_with(m))
}

/// The rack while it runs; dropped (machines, the appliance, then the namespace: the fields'
/// order) on any end.
struct Rack {
    machines: Vec<Machine>,
    appliance: ApplianceVm,
    start: Instant,
    shown: usize,
    ns: Netns,
}

impl Rack {
    fn console(&self) -> Vec<String> {
        let text = self.appliance.serial().replace('\r', "");
        text.lines().filter(|l| console_line(l)).map(String::from).collect()
    }

    /// Prints the appliance's console lines that are new.
    fn show_console(&mut self) {
        let lines = self.console();
        for line in lines.iter().skip(self.shown) {
            println!("   [{}s] {line}", self.start.elapsed().as_secs());
        }
        self.shown = self.shown.max(lines.len());
    }

    /// Fails at once if a QEMU is gone, or stops if Ctrl-C came (the terminal's SIGINT reaches
    /// QEMU too).
    fn check(&mut self) -> Result<(), Stop> {
        if interrupt::interrupted() {
            return Err(Stop::Interrupted);
        }
        let dead = if let Some(status) = self.appliance.machine.exited() {
            Some(format!(
                "the appliance VM stopped ({status}); its console ends:\n{}",
                tail(&self.appliance.serial(), 30)
            ))
        } else {
            self.machines.iter_mut().enumerate().find_map(|(i, m)| {
                let status = m.exited()?;
                Some(format!(
                    "machine {} (QEMU) exited ({status}); its console ends:\n{}",
                    i + 1,
                    tail(&m.serial(), 20)
                ))
            })
        };
        interrupt::stop_if_dead(dead)
    }

    /// Shows the console until `done` holds for it; fails with `what` after `limit` from `since`.
    fn until(&mut self, what: &str, since: Instant, limit: Duration, done: impl Fn(&str) -> bool) -> Result<(), Stop> {
        loop {
            self.show_console();
            if done(&self.appliance.serial().replace('\r', "")) {
                return Ok(());
            }
            self.check()?;
            if since.elapsed() > limit {
                return Err(Stop::Failed(format!("{what} within {} minutes", limit.as_secs() / 60)));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn site_config(count: usize) -> String {
    format!(
        "# The rack's configuration, as a platform engineer puts it on the stick back at base.\n\
         [network]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\n[dhcp]\nrange = [\"10.0.0.100\", \"10.0.0.199\"]\n\n\
         [cluster]\nname = \"rack\"\nmin_machines = {count}\nsettle_secs = 10\n"
    )
}

/// The stick and the appliance's disk in `work`.
fn media(count: usize, work: &Path) -> Result<(), Stop> {
    let config = work.join("oasis.toml");
    std::fs::write(&config, site_config(count)).map_err(failed("writing oasis.toml"))?;
    let (config, stick) =
        (config.to_string_lossy().into_owned(), work.join("stick.img").to_string_lossy().into_owned());
    let out = oasis(&["image", "build", "usb-stick", "--config", &config, "--out", &stick]);
    if !out.status.success() {
        return Err(Stop::Failed(format!("oasis image build usb-stick: {}", String::from_utf8_lossy(&out.stderr))));
    }
    appliance_disk(&appliance_image(), &work.join("disk.img"), 8);
    Ok(())
}

fn power_on(work: &Path) -> Result<Rack, Stop> {
    let ns = Netns::create("oasis-img").map_err(failed("making the rack's network namespace"))?;
    ns.add_bridge("br0", None).map_err(failed("making the rack's bridge"))?;
    println!("== the rack network: a bridge in namespace {}; routes there (none lead out):", ns.name());
    let routes = ns.ip(&["route", "show"]).map_err(failed("listing routes"))?;
    routes.lines().for_each(|r| println!("   {r}"));
    if routes.trim().is_empty() {
        println!("   (no routes at all)");
    }
    ns.add_tap("tap0", "br0").map_err(failed("adding a tap"))?;
    let uefi = std::env::var("APPLIANCE_FIRMWARE").is_ok_and(|f| f == "uefi");
    let spec = ApplianceVmSpec {
        disk: work.join("disk.img"),
        stick: Some(work.join("stick.img")),
        firmware: if uefi { Firmware::Uefi } else { Firmware::Bios },
        mac: "52:54:00:0a:00:01".into(),
        reboots: false,
    };
    let appliance = ApplianceVm::start(&ns, "tap0", &spec, work, "appliance");
    println!(
        "== appliance powered on ({}, its disk image and the USB stick); its console:",
        if uefi { "uefi" } else { "bios" }
    );
    Ok(Rack { machines: Vec::new(), appliance, start: Instant::now(), shown: 0, ns })
}

fn machines(rack: &mut Rack, count: usize, work: &Path) -> Result<(), Stop> {
    for i in 1..=count {
        let (tap, mac) = (format!("tap{i}"), format!("52:54:00:aa:00:{i:02x}"));
        rack.ns.add_tap(&tap, "br0").map_err(failed("adding a tap"))?;
        let firmware = if i % 2 == 1 { Firmware::Bios } else { Firmware::Uefi };
        let mut spec = MachineSpec::new(&rack.ns, &tap, &mac, firmware, work.join(format!("machine{i}.log")));
        let uuid = format!("6f3c2a10-0000-4000-8000-{i:012x}");
        spec.extra_args = vec!["-smbios".into(), format!("type=1,serial=SN-{i}"), "-uuid".into(), uuid];
        rack.machines.push(Machine::start(spec).map_err(failed("starting QEMU"))?);
        println!("   machine {i} ({mac}, {}) powered on", if i % 2 == 1 { "BIOS" } else { "UEFI" });
    }
    Ok(())
}

/// Sizes as `du -h` prints them.
fn human(bytes: u64) -> String {
    let units = ["", "K", "M", "G", "T"];
    let (mut value, mut unit) = (bytes as f64, 0);
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 && unit > 0 {
        format!("{value:.1}{}", units[unit])
    } else {
        format!("{value:.0}{}", units[unit])
    }
}

/// The files the appliance wrote under `oasis-report/` on the stick (its FAT partition starts
/// at 1 MiB; mtools reads it without mounting).
fn print_report(stick: &Path) -> Result<(), Stop> {
    let image = format!("{}@@1M", stick.display());
    let list =
        Command::new("mdir").args(["-b", "-i", &image, "::oasis-report"]).output().map_err(failed("running mdir"))?;
    let mut files: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(str::to_string))
        .filter(|f| !f.is_empty())
        .collect();
    files.sort();
    for f in files {
        println!("--- {f}");
        if f == "admin-token" {
            println!("(a secret: the admin API's bearer token)");
            continue;
        }
        let out = Command::new("mtype").args(["-i", &image, &format!("::oasis-report/{f}")]).output();
        print!("{}", out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).map_err(failed("running mtype"))?);
    }
    Ok(())
}

fn run(count: usize, work: &Path) -> Result<(), Stop> {
    media(count, work)?;
    let mut rack = power_on(work)?;
    let start = rack.start;
    rack.until("the appliance did not start serving", start, Duration::from_secs(600), |c| {
        c.contains("oasis boot: serving")
    })?;
    let serving = start.elapsed().as_secs();
    println!("== the appliance serves DHCP, TFTP and HTTP {serving} s after power-on; powering on {count} machines");
    let nodes = Instant::now();
    machines(&mut rack, count, work)?;
    rack.until("the cluster did not form", nodes, Duration::from_secs(1800), |c| {
        c.contains("oasis boot: the cluster is healthy")
    })?;
    let healthy = nodes.elapsed().as_secs();
    println!(
        "== cluster healthy {healthy} s after the machines' power-on ({} s after the appliance's)",
        start.elapsed().as_secs()
    );
    // The stick's second report (with the cluster's status), and the status view's healthy block.
    rack.until(
        "the report with the cluster's status was not written, or no healthy status block shown,",
        Instant::now(),
        Duration::from_secs(300),
        |c| {
            c.matches("report written to the USB stick").count() >= 2
                && c.contains("oasis status: cluster rack healthy")
        },
    )?;
    println!("== the appliance's last status block:");
    let console = rack.appliance.serial().replace('\r', "");
    let block =
        console.rfind("oasis status:").map(|i| &console[console[..i].rfind('\n').map_or(0, |n| n + 1)..]).unwrap_or("");
    block.lines().take(12).for_each(|l| println!("   {l}"));
    println!("== powering the appliance off; the report it wrote on the USB stick:");
    let pid = rack.appliance.machine.pid().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    rack.appliance.machine.wait_exit(Duration::from_secs(60)).map_err(failed("powering the appliance off"))?;
    print_report(&work.join("stick.img"))?;
    let image = std::fs::metadata(appliance_image()).map_err(failed("reading the appliance image's size"))?;
    println!(
        "== image: {} ({} allocated); appliance power-on to serving {serving} s; machines' power-on to cluster healthy {healthy} s",
        human(image.len()),
        human(image.blocks() * 512)
    );
    Ok(())
}

fn main() -> ExitCode {
    let count = match interrupt::machine_count("rack_image") {
        Ok(count) => count,
        Err(usage) => return usage,
    };
    interrupt::catch();
    let _ = appliance_image(); // fails here, before anything is made, if there is no image
    let work = tempfile::Builder::new().prefix("oasis-rack-image.").tempdir().expect("a work directory in /tmp");
    let outcome = run(count, work.path()); // the rack is removed when `run` returns
    match outcome {
        Ok(()) => {
            println!("== rack removed (logs and images kept in {})", work.keep().display());
            ExitCode::SUCCESS
        }
        Err(Stop::Interrupted) => {
            drop(work);
            println!("== interrupted: rack removed (namespace, taps, QEMU, work directory)");
            ExitCode::from(130)
        }
        Err(Stop::Failed(message)) => {
            eprintln!("{message}");
            println!("== rack removed (logs and images kept in {})", work.keep().display());
            ExitCode::FAILURE
        }
    }
}

//! Power control through the one operator interface: a real `oasis serve` in a namespace of its
//! own, with a machine's BMC (OpenIPMI's `ipmi_sim`, whose chassis power is a QEMU process in the
//! same namespace) in its config's `[[power.bmc]]`, driven by the CLI (`oasis machine power`),
//! the admin socket's route, with events; bad names are refused in words, and the BMC's password
//! is in no output, log or event.

use std::process::Output;

use oasis_e2e::appliance::{self, oasis, Appliance};
use oasis_e2e::ipmi_sim::IpmiSim;
use oasis_e2e::sushy::Sushy;
use oasis_e2e::Netns;

const USER: &str = "oasis";
const PASSWORD: &str = "rack-7-bmc-secret";
/// A machine that costs nothing while on: TCG, 64 MiB, CPUs stopped (`-S`).
const MACHINE: &[&str] = &["-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", "-S"];
/// The machine's boot MAC: it never booted, so the operator names it by the MAC its
/// `[[power.bmc]]` gives.
const MAC: &str = "52:54:00:0e:00:01";
/// The test rack's DHCP: full, this range.
const RANGE: &str = "range = [\"10.0.0.100\", \"10.0.0.199\"]";

fn power(app: &Appliance, args: &[&str]) -> Output {
    let data = app.data_dir.to_str().unwrap().to_string();
    let mut all = vec!["machine", "power"];
    all.extend(args);
    all.extend(["--data-dir", &data]);
    oasis(&all)
}

/// `oasis events` once it contains every one of `kinds` (kinds or words of a message: the
/// store's writer records events a moment after the action answered).
fn events_with(app: &Appliance, kinds: &[&str]) -> String {
    // The power watch reads every 30 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(75);
    loop {
        let events = app.cli(&["events"]);
        if kinds.iter().all(|k| events.contains(k)) || std::time::Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Kills process `pid` (the machine's QEMU) as a power cut would end it.
fn pull_the_plug(pid: u32) {
    let out = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).output().unwrap();
    assert!(out.status.success(), "kill {pid}: {}", text(&out));
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn oasis_machine_power_drives_a_bmc_from_the_config_through_serve() {
    let (ns, sim, dir) = rack_with_bmc("oasis-pwr");
    let config = config_with_bmc(dir.path(), RANGE, &sim, PASSWORD);
    let check = oasis(&["config", "check", config.to_str().unwrap()]);
    assert!(check.status.success(), "{}", text(&check));
    let mut app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));

    // `power_on_at_start`: the machine, off, is powered on once serve is up.
    let events = events_with(&app, &["power-on"]);
    assert!(events.contains("the appliance came up; [power] power_on_at_start"), "{events}");
    let first = sim.machine().expect("powered on at start").pid;
    let out = power(&app, &["status", MAC]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(MAC) && said.contains(&format!("ipmi {}", sim.address())) && said.contains(" on "), "{said}");
    assert_eq!(sim.machine().map(|m| m.pid), Some(first), "status changed nothing");

    // The HTTPS admin API has the same action, behind the admin token.
    let token = std::fs::read_to_string(app.data_dir.join("admin-token")).unwrap();
    let url = format!("https://10.0.0.1:{}/v1/machines/{MAC}/power/status", oasis_proto::API_PORT);
    let https = |token: &str| {
        let auth = format!("Authorization: Bearer {}", token.trim());
        ns.exec(&["curl", "-sk", "-X", "POST", "-w", "\n%{http_code}", "-H", &auth, &url]).unwrap()
    };
    let answer = https(&token);
    assert!(answer.ends_with("\n200") && answer.contains("\"state\":\"on\""), "{answer}");
    assert!(https("guess").ends_with("\n401"), "a wrong token is refused");

    // The next boot from the network, then a cycle into it: a new process, booting from the network.
    let out = power(&app, &["pxe", MAC]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sim.boot_device(), "pxe");
    let out = power(&app, &["cycle", "--all", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{reports}");
    assert_eq!((reports[0]["op"].as_str(), reports[0]["state"].as_str()), (Some("cycle"), Some("on")), "{reports}");
    let second = sim.machine().expect("a cycle leaves it on");
    assert_ne!(second.pid, first, "a cycle starts the machine afresh");
    assert!(second.args.iter().any(|a| a == "once=n"), "{:?}", second.args);

    // Off, and on again; the CLI returns once the BMC reads the state back.
    for (op, running) in [("off", false), ("on", true), ("off", false)] {
        let out = power(&app, &[op, MAC]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&format!(" {op} ")), "{}", text(&out));
        assert_eq!(sim.machine().is_some(), running, "after power {op}");
    }

    // Every action is an event with its reason; the password is nowhere.
    let events = events_with(&app, &["power-pxe", "power-cycle", "power-off"]);
    for kind in ["power-on", "power-pxe", "power-cycle", "power-off"] {
        assert!(events.contains(kind), "{kind} in:\n{events}");
    }
    assert!(events.contains("(an operator)"), "{events}");

    // Refusals in words, with the usage exit code, and nothing changed.
    let out = power(&app, &["on", "52:54:00:0e:00:99"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("has no BMC and no link to its agent"), "{}", text(&out));
    let out = power(&app, &["on", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no machine \"nobody\""), "{}", text(&out));
    assert!(sim.machine().is_none(), "a refused action changes nothing");

    // `oasis machines` lists the machine, which never booted, with its power.
    let machines = app.cli(&["machines"]);
    let row = machines.lines().find(|l| l.starts_with(MAC)).unwrap_or_else(|| panic!("{MAC} in:\n{machines}"));
    assert!(row.split_whitespace().nth(1) == Some("off"), "{machines}");

    // On again, then the machine dies without oasis asking (its QEMU killed: a crash, a cut):
    // the watch reads it off and says so.
    let out = power(&app, &["on", MAC]);
    assert!(out.status.success(), "{}", text(&out));
    let pid = sim.machine().expect("on").pid;
    pull_the_plug(pid);
    let events = events_with(&app, &["is off, was on, and oasis did not ask"]);
    assert!(events.contains("is off, was on, and oasis did not ask"), "{events}");
    assert!(!events.contains("is on, was off"), "no change oasis made itself is taken for a stranger's: {events}");
    // The operator keeps it off (its newest power event is theirs again).
    let out = power(&app, &["off", MAC]);
    assert!(out.status.success(), "{}", text(&out));

    // A restart does not undo the operator's off.
    app.stop();
    let app = Appliance::start(&ns, &config, &dir.path().join("serve-2.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !app.log().contains("left off at start: an operator powered it off") {
        assert!(std::time::Instant::now() < deadline, "{}", app.log());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(sim.machine().is_none(), "still off");

    let logs = [app.log(), std::fs::read_to_string(dir.path().join("serve.log")).unwrap()];
    for (what, said) in [("the events", &events), ("serve's log", &logs[0]), ("serve's first log", &logs[1])] {
        assert!(!said.contains(PASSWORD), "the BMC password is in {what}");
    }
}

/// A namespace `name` with the rack bridge, and in it `ipmi_sim` as the BMC of a machine that
/// is off; a directory for serve's config and store.
fn rack_with_bmc(name: &str) -> (Netns, IpmiSim, tempfile::TempDir) {
    let ns = Netns::create(name).unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let sim = IpmiSim::start_in(Some(&ns), USER, PASSWORD, MACHINE).unwrap();
    (ns, sim, tempfile::tempdir().unwrap())
}

/// `DIR/oasis.toml` with the test rack (`dhcp`: its `[dhcp]` lines) and `sim` as the BMC of
/// [`MAC`], powered on at start.
fn config_with_bmc(dir: &std::path::Path, dhcp: &str, sim: &IpmiSim, password: &str) -> std::path::PathBuf {
    let extra = format!(
        "[profile]\nkernel = \"payload/vmlinuz\"\ninitrd = \"payload/initrd.img\"\n\n\
         [power]\npower_on_at_start = true\n[[power.bmc]]\nmachine = \"{MAC}\"\nipmi = \"{}\"\n\
         user = \"{USER}\"\npassword = \"{password}\"\n",
        sim.address()
    );
    appliance::write_config(dir, dhcp, &appliance::boot_root(dir), &extra)
}

/// A BMC that refuses the config's credentials: a clear status, nothing else disturbed (serve
/// keeps answering, the machine stays as it was), and `power-failed` events saying so.
#[test]
fn a_bmc_refusing_the_credentials_is_a_clear_failure() {
    let (ns, sim, dir) = rack_with_bmc("oasis-pwr2");
    let config = config_with_bmc(dir.path(), RANGE, &sim, "wrong-password");
    let app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));
    // Powering on at start failed, said once as an event; the operator's try says why.
    let events = events_with(&app, &["power-failed"]);
    assert!(events.contains("refused the credentials"), "{events}");
    let out = power(&app, &["on", MAC]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("refused the credentials for user \"oasis\""), "{}", text(&out));
    assert!(sim.machine().is_none());
    let events = events_with(&app, &["power-failed"]);
    assert!(events.contains("power-failed"), "{events}");
    assert!(!events.contains(PASSWORD), "{events}");
    app.cli(&["machines"]);
}

/// A BMC that another machine's agent reads as its own (the config gave it to the wrong machine):
/// no action goes through it, each says whose it is, and the machine behind it is left as it
/// was; `oasis machines` shows both machines' links.
#[test]
fn a_bmc_another_machine_reads_as_its_own_is_refused() {
    let (ns, sim, dir) = rack_with_bmc("oasis-pwr4");
    // No DHCP: a registration is then taken from any address, so this test can send one itself.
    let config = config_with_bmc(dir.path(), "mode = \"off\"", &sim, PASSWORD);
    let args = appliance::join_args(&config);
    let app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));
    events_with(&app, &["power-on"]);
    let running = sim.machine().expect("powered on at start").pid;

    // Another machine registers; its agent read the BMC's address from its own BMC.
    let other = "52:54:00:0e:00:02";
    let mut request = appliance::register_request(&args.token, "4c4c4544-0000-0000-0000-00000e000002", other, 2, 1);
    let address: std::net::Ipv4Addr = sim.address().split(':').next().unwrap().parse().unwrap();
    request.inventory.bmc = Some(oasis_proto::LocalBmc { address: Some(address), ..Default::default() });
    appliance::register(&ns, &args.pin, request).expect("registered");

    for op in ["off", "cycle", "status"] {
        let out = power(&app, &[op, MAC]);
        assert_eq!(out.status.code(), Some(1), "{op}: {}", text(&out));
        let said = text(&out);
        assert!(said.contains("reads as its own") && said.contains(other), "{op}: {said}");
    }
    assert_eq!(sim.machine().map(|m| m.pid), Some(running), "the machine behind it was left as it was");
    let machines = app.cli(&["machines"]);
    let row = |mac: &str| machines.lines().find(|l| l.starts_with(mac)).map(str::to_string).unwrap_or_default();
    assert!(row(MAC).contains(&format!("ipmi {}", sim.address())), "{machines}");
    assert!(row(other).contains(&format!("{address} (its own; no credentials)")), "{machines}");
    let events = events_with(&app, &["power-failed"]);
    assert!(events.contains("reads as its own"), "{events}");
}

/// `[[power.scan]]`: a subnet and one user instead of a list of BMCs. In serve's namespace two
/// BMCs answer in 10.0.3.8/29, one taking the scan's user and one not; the rest of the subnet is
/// silent. The first, off, is powered on at start though no machine is known yet; the second is
/// said to be unusable and never acted through; a machine whose agent reads the first's address
/// is then powered through it, one reading the second's is not.
#[test]
fn a_scanned_subnet_finds_the_bmcs_that_take_its_user_and_ties_them_to_the_machines_that_read_them() {
    use std::net::{Ipv4Addr, SocketAddrV4};
    let ns = Netns::create("oasis-pwr5").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let bmc_at = |host: u8| {
        ns.add_address("br0", &format!("10.0.3.{host}/24")).unwrap();
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 3, host), 623)
    };
    let (usable_at, unusable_at) = (bmc_at(10), bmc_at(11));
    let usable = IpmiSim::start_on(Some(&ns), usable_at, USER, PASSWORD, MACHINE).unwrap();
    let unusable = IpmiSim::start_on(Some(&ns), unusable_at, USER, "another-password", MACHINE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[profile]\nkernel = \"payload/vmlinuz\"\ninitrd = \"payload/initrd.img\"\n\n\
         [power]\npower_on_at_start = true\n[[power.scan]]\nipmi = \"10.0.3.8/29\"\n\
         user = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    // No DHCP: a registration is then taken from any address, so this test can send its own.
    let config = appliance::write_config(dir.path(), "mode = \"off\"", &appliance::boot_root(dir.path()), &extra);
    let args = appliance::join_args(&config);
    let app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));

    // Found, and powered on at start although no machine has said it is its own.
    let events = events_with(&app, &["bmc-found", "bmc-unusable", "power-on"]);
    assert!(events.contains("found a BMC at 10.0.3.10 taking user \"oasis\" (power off)"), "{events}");
    assert!(events.contains("10.0.3.11") && events.contains("refused the credentials"), "{events}");
    assert!(events.contains("the BMC at 10.0.3.10:623, found by the scan of 10.0.3.8/29"), "{events}");
    assert!(usable.machine().is_some(), "the usable BMC's machine was powered on");
    assert!(unusable.machine().is_none(), "nothing done through a BMC that refused the user");

    // A machine whose agent reads the first BMC's address is powered through it; one reading the
    // second's has no BMC oasis can use.
    let register = |mac: &str, n: u8, address: &SocketAddrV4| {
        let uuid = format!("4c4c4544-0000-0000-0000-00000e00005{n}");
        let mut request = appliance::register_request(&args.token, &uuid, mac, n, u32::from(n));
        request.inventory.bmc = Some(oasis_proto::LocalBmc { address: Some(*address.ip()), ..Default::default() });
        appliance::register(&ns, &args.pin, request).expect("registered");
    };
    let (linked, unlinked) = ("52:54:00:0e:00:51", "52:54:00:0e:00:52");
    register(linked, 1, &usable_at);
    register(unlinked, 2, &unusable_at);
    let out = power(&app, &["status", linked]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ipmi 10.0.3.10:623") && text(&out).contains(" on "), "{}", text(&out));
    let out = power(&app, &["off", linked]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(usable.machine().is_none(), "powered off through the BMC the scan found");
    let out = power(&app, &["status", unlinked]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("agent (no BMC)"), "{}", text(&out));
    let machines = app.cli(&["machines"]);
    let row = |mac: &str| machines.lines().find(|l| l.starts_with(mac)).map(str::to_string).unwrap_or_default();
    assert!(row(linked).contains("ipmi 10.0.3.10:623 (found by the scan)"), "{machines}");
    assert!(row(unlinked).contains("10.0.3.11 (its own; no credentials)"), "{machines}");

    let events = events_with(&app, &["bmc-linked", "power-off"]);
    assert!(events.contains("where the scan of 10.0.3.8/29 found a BMC"), "{events}");
    for (what, said) in [("the events", &events), ("serve's log", &app.log())] {
        assert!(!said.contains(PASSWORD), "the BMC password is in {what}");
    }
}

/// Redfish through `serve`: sushy-tools' emulator in serve's namespace as a machine's
/// `[[power.bmc]]`, its certificate pinned by the config's fingerprint: on, status and off through
/// the CLI, the QEMU behind it started and stopped; the one-time network boot that the emulator
/// turns into a permanent one is refused in words (read back, as the issue asks), and the
/// password is in no output or event.
#[test]
fn oasis_machine_power_drives_a_redfish_bmc_through_serve() {
    let ns = Netns::create("oasis-pwr3").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let sushy = Sushy::start_in(&ns).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fingerprint: Vec<String> = sushy.fingerprint.iter().map(|b| format!("{b:02x}")).collect();
    let extra = format!(
        "[profile]\nkernel = \"payload/vmlinuz\"\ninitrd = \"payload/initrd.img\"\n\n\
         [[power.bmc]]\nmachine = \"{MAC}\"\nredfish = \"{}\"\nfingerprint = \"{}\"\n\
         user = \"{}\"\npassword = \"{}\"\n",
        sushy.url,
        fingerprint.join(":"),
        oasis_e2e::sushy::USER,
        sushy.password
    );
    let config = appliance::write_config(
        dir.path(),
        "range = [\"10.0.0.100\", \"10.0.0.199\"]",
        &appliance::boot_root(dir.path()),
        &extra,
    );
    let app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));

    let out = power(&app, &["on", MAC]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("on"), "{}", text(&out));
    assert!(sushy.machine().running().is_some(), "the emulator's machine runs");
    let out = power(&app, &["status", MAC]);
    assert!(out.status.success() && text(&out).contains("on"), "{}", text(&out));
    assert!(text(&out).contains("redfish"), "the BMC is named: {}", text(&out));

    let out = power(&app, &["pxe", MAC]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("Continuous"), "the read-back says what the BMC did: {}", text(&out));

    let out = power(&app, &["off", MAC]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(sushy.machine().running().is_none(), "its QEMU stopped");
    let events = events_with(&app, &["power-on", "power-off", "power-failed"]);
    assert!(!events.contains(&sushy.password) && !app.log().contains(&sushy.password), "{events}");
}

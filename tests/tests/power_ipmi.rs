//! The IPMI driver ([`IpmiLan`]) against a real BMC implementation, OpenIPMI's `ipmi_sim`, whose
//! chassis power is a QEMU process: every action is checked on the process (started, gone,
//! replaced, booting from the network once), and bad input (wrong credentials, nothing listening,
//! garbage answers) is a clear error that changes nothing.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use oasis_e2e::ipmi_sim::{IpmiSim, SimFault};
use oasis_power::ipmi::IpmiLan;
use oasis_power::{confirm, PowerAction, PowerDriver, PowerError, PowerState};

const USER: &str = "oasis";
const PASSWORD: &str = "rack-7-bmc-pw";
const TIMEOUT: Duration = Duration::from_secs(3);
/// A machine that costs nothing while on: TCG, 64 MiB, CPUs stopped (`-S`).
const MACHINE: &[&str] = &["-accel", "tcg", "-display", "none", "-nodefaults", "-m", "64", "-S"];

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Polls `driver` until it reads `want`, as the controller will.
fn confirmed(driver: &IpmiLan, want: PowerState) -> Duration {
    let (state, took) = timed(|| confirm(driver, want, Duration::from_secs(30), Duration::from_millis(50)));
    assert_eq!(state.unwrap(), want);
    took
}

/// Whether process `pid` has ended: gone, or a zombie its new parent has not reaped yet.
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// The chassis program's `set` calls so far: what the BMC was made to do.
fn sets(sim: &IpmiSim) -> Vec<String> {
    sim.chassis_log().lines().filter(|l| l.starts_with("set ")).map(String::from).collect()
}

#[test]
fn ipmi_sim_powers_a_qemu_machine_on_off_and_cycles_it_into_a_network_boot() {
    let sim = IpmiSim::start(USER, PASSWORD, MACHINE).unwrap();
    let driver = IpmiLan::new(&sim.address(), USER, PASSWORD, TIMEOUT).unwrap();

    let statuses: Vec<Duration> =
        (0..20).map(|_| timed(|| assert_eq!(driver.status().unwrap(), PowerState::Off)).1).collect();
    assert_eq!(sim.machine(), None, "off means no QEMU process");

    let (on, on_took) = timed(|| driver.power(PowerAction::On));
    on.unwrap();
    let on_confirmed = confirmed(&driver, PowerState::On);
    let first = sim.machine().expect("on: QEMU runs");
    let linked = Instant::now();
    while !sim.machine_connected() {
        assert!(linked.elapsed() < Duration::from_secs(10), "QEMU's BMC device never connected to ipmi_sim");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!first.args.iter().any(|a| a == "once=n"), "{:?}", first.args);

    let (pxe, pxe_took) = timed(|| driver.pxe_once());
    pxe.unwrap();
    assert_eq!(sim.boot_device(), "pxe", "the chassis holds PXE for the next boot");
    assert_eq!(sim.machine().map(|m| m.pid), Some(first.pid), "setting the boot device does not touch power");

    let (cycle, cycle_took) = timed(|| driver.power(PowerAction::Cycle));
    cycle.unwrap();
    // ipmi_sim ends the process before it answers, so "on" now is the new process.
    let cycle_confirmed = confirmed(&driver, PowerState::On);
    let second = sim.machine().expect("cycle: QEMU runs again");
    assert_ne!(second.pid, first.pid, "a cycle is a new process");
    assert!(second.args.windows(2).any(|w| w == ["-boot", "once=n"]), "{:?}", second.args);
    assert_eq!(sim.boot_device(), "none", "the network boot was used once");
    assert!(sim.chassis_log().contains("event: this boot is from the network, once"));

    bad_credentials_change_nothing(&sim, second.pid);

    let (off, off_took) = timed(|| driver.power(PowerAction::Off));
    off.unwrap();
    let off_confirmed = confirmed(&driver, PowerState::Off);
    assert_eq!(sim.machine(), None, "off: the QEMU process is gone");
    assert!(ended(second.pid), "pid {} still runs", second.pid);

    // A cycle of a machine that is off powers it up (many BMCs refuse a cycle there), and it
    // boots from its disk: the PXE request was spent.
    driver.power(PowerAction::Cycle).unwrap();
    let cold_cycle_confirmed = confirmed(&driver, PowerState::On);
    let third = sim.machine().expect("cycle from off: QEMU runs");
    assert!(!third.args.iter().any(|a| a == "once=n"), "{:?}", third.args);
    driver.power(PowerAction::Off).unwrap();
    confirmed(&driver, PowerState::Off);
    assert_eq!(sim.machine(), None);

    a_refusing_chassis_is_told_in_words(&sim, &driver);

    let mut sorted = statuses.clone();
    sorted.sort();
    println!(
        "figures: IPMI against ipmi_sim on loopback, one RMCP+ session per call: status median {} (min {}, max {} of {}); \
         on {}, confirmed on after {}; pxe_once (set and read back) {}; cycle {}, confirmed on again (a new QEMU) after {}; \
         off {}, confirmed off after {}; cycle from off confirmed on after {}",
        ms(sorted[sorted.len() / 2]),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
        sorted.len(),
        ms(on_took),
        ms(on_confirmed),
        ms(pxe_took),
        ms(cycle_took),
        ms(cycle_confirmed),
        ms(off_took),
        ms(off_confirmed),
        ms(cold_cycle_confirmed),
    );
}

/// A chassis that will not power on is `Refused` with ipmi_sim's completion code in words; one
/// that drops the boot device is `NotApplied`, with what it reads back.
fn a_refusing_chassis_is_told_in_words(sim: &IpmiSim, driver: &IpmiLan) {
    sim.set_fault(Some(SimFault::RefusePowerOn)).unwrap();
    match driver.power(PowerAction::On) {
        Err(PowerError::Refused { action, detail, .. }) => {
            assert_eq!(action, "power on");
            assert!(detail.contains("completion code 0xff: an unspecified error"), "{detail}");
        }
        other => panic!("power on of a dead chassis: {other:?}"),
    }
    assert_eq!(driver.status().unwrap(), PowerState::Off);
    assert_eq!(sim.machine(), None);

    sim.set_fault(Some(SimFault::IgnoreBootDevice)).unwrap();
    match driver.pxe_once() {
        Err(PowerError::NotApplied { found, .. }) => assert!(found.contains("boot from no override"), "{found}"),
        other => panic!("a dropped boot device: {other:?}"),
    }
    sim.set_fault(None).unwrap();
}

/// A wrong password or an unknown user is `Credentials` for every call, and the BMC did nothing.
fn bad_credentials_change_nothing(sim: &IpmiSim, running: u32) {
    let before = sets(sim);
    for (user, password) in [(USER, "not-the-password"), ("intruder", PASSWORD), (USER, "")] {
        let driver = IpmiLan::new(&sim.address(), user, password, TIMEOUT).unwrap();
        let (results, took) = timed(|| [driver.status().map(drop), driver.power(PowerAction::Off), driver.pxe_once()]);
        for result in results {
            match result {
                Err(PowerError::Credentials { user: named, .. }) => assert_eq!(named, user),
                other => panic!("{user}/{password}: {other:?}"),
            }
        }
        let message = driver.power(PowerAction::Cycle).unwrap_err().to_string();
        assert!(message.contains("refused the credentials"), "{message}");
        assert!(password.is_empty() || !message.contains(password), "{message}");
        println!("figures: three calls refused for bad credentials ({user}) in {}", ms(took));
    }
    assert_eq!(sets(sim), before, "the BMC acted on a refused session");
    assert_eq!(sim.machine().map(|m| m.pid), Some(running));
}

#[test]
fn nothing_listening_is_unreachable_within_the_timeout() {
    // A port just closed: the kernel answers "port unreachable" and the driver stops at once.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let driver = IpmiLan::new(&closed.to_string(), USER, PASSWORD, TIMEOUT).unwrap();
    let (result, refused_took) = timed(|| driver.power(PowerAction::On));
    assert!(matches!(result, Err(PowerError::Unreachable { timeout: TIMEOUT, .. })), "{result:?}");

    // A socket that takes the datagrams and never answers: the driver waits out its timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let timeout = Duration::from_millis(500);
    let driver = IpmiLan::new(&silent.local_addr().unwrap().to_string(), USER, PASSWORD, timeout).unwrap();
    let (result, silent_took) = timed(|| driver.status());
    assert!(matches!(result, Err(PowerError::Unreachable { .. })), "{result:?}");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("did not answer within 500ms"), "{message}");
    let mut buffer = [0u8; 64];
    silent.set_nonblocking(true).unwrap();
    assert!(silent.recv(&mut buffer).is_ok(), "the driver sent its Open Session Request");
    assert!(silent.recv(&mut buffer).is_err(), "and nothing else: no retransmission");
    println!(
        "figures: unreachable, closed port: {}; silent port with a 500 ms timeout: {}",
        ms(refused_took),
        ms(silent_took)
    );
}

/// Answers the next datagram to `socket` with `answer`.
fn answer_once(socket: &UdpSocket, answer: &[u8]) {
    let mut buffer = [0u8; 512];
    let (_, from) = socket.recv_from(&mut buffer).unwrap();
    socket.send_to(answer, from).unwrap();
}

#[test]
fn garbage_answers_are_protocol_errors() {
    let bmc = UdpSocket::bind("127.0.0.1:0").unwrap();
    bmc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let driver = IpmiLan::new(&bmc.local_addr().unwrap().to_string(), USER, PASSWORD, TIMEOUT).unwrap();
    // Not RMCP at all; RMCP with an IPMI 1.5 session header; an RMCP+ Open Session Response cut
    // short; a full-length one for another session.
    let mut other_session = vec![0x06, 0x00, 0xFF, 0x07, 0x06, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 36, 0];
    other_session.extend([0u8; 4]);
    other_session.extend(0xDEAD_BEEFu32.to_le_bytes());
    other_session.extend([1u8; 28]);
    let answers: [(&[u8], &str); 4] = [
        (b"HTTP/1.0 400 Bad Request\r\n\r\n", "not RMCP"),
        (&[0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x20], "IPMI 1.5"),
        (&[0x06, 0x00, 0xFF, 0x07, 0x06, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 4, 0, 1, 2, 3, 4], "8 bytes"),
        (&other_session, "another request"),
    ];
    for (answer, why) in answers {
        let result = std::thread::scope(|s| {
            s.spawn(|| answer_once(&bmc, answer));
            driver.status()
        });
        match result {
            Err(PowerError::Protocol { detail, .. }) => assert!(detail.contains(why), "{why}: {detail}"),
            other => panic!("{why}: {other:?}"),
        }
    }
}

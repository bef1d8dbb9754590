//! The Redfish power driver against a real Redfish service: sushy-tools' emulator (fake driver)
//! over TLS with Basic auth, whose webhook starts and stops a real QEMU process
//! (`oasis_e2e::sushy`); and against what is not a BMC: a closed port, a silent one, and listeners
//! that answer garbage. Needs the venv `scripts/sushy-venv` makes (scripts/test makes it) and
//! qemu-system-x86_64; no root.
//!
//! The emulator lands each power change 1 to 11 s (at random) after it is asked, so the times to
//! a confirmed state it prints are mostly the emulator's; the request latencies are the driver's.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use oasis_e2e::sushy::{free_port, Sushy, USER};
use oasis_power::redfish::{certificate_fingerprint, Redfish, RedfishConfig, Tls};
use oasis_power::{confirm, PowerAction, PowerDriver, PowerError, PowerState};

/// Longer than the emulator's 11 s worst case, with a margin for a loaded machine.
const SETTLE: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(250);

fn config(url: &str, password: &str, tls: Tls) -> RedfishConfig {
    RedfishConfig {
        url: url.to_string(),
        user: USER.to_string(),
        password: password.to_string(),
        timeout: Duration::from_secs(10),
        system: None,
        tls,
        accept_continuous_pxe: false,
    }
}

fn driver(config: RedfishConfig) -> Redfish {
    Redfish::new(config).expect("a valid Redfish config")
}

/// Runs `f` and returns its result with how long it took, in milliseconds.
fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let result = f();
    (result, start.elapsed().as_secs_f64() * 1000.0)
}

/// Polls until the state is `want`, returning the seconds it took.
fn confirmed(bmc: &Redfish, want: PowerState, what: &str) -> f64 {
    let start = Instant::now();
    let state = confirm(bmc, want, SETTLE, POLL).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(state, want, "{what}: the emulator did not report {want} within {SETTLE:?}");
    start.elapsed().as_secs_f64()
}

#[test]
fn redfish_power_on_pxe_cycle_off_against_sushy_emulator() {
    let sushy = Sushy::start().unwrap_or_else(|e| panic!("{e:#}"));
    let mut figures = Vec::new();

    // Trust on first use learns the emulator's certificate; from then on it is pinned.
    let tofu = driver(config(&sushy.url, &sushy.password, Tls::TrustOnFirstUse));
    assert_eq!(tofu.fingerprint(), None);
    assert_eq!(tofu.status().unwrap(), PowerState::Off);
    assert_eq!(tofu.fingerprint(), Some(sushy.fingerprint), "TOFU must record the certificate it was shown");
    let bmc = driver(config(&sushy.url, &sushy.password, Tls::Pinned(sushy.fingerprint)));

    let (state, first_ms) = timed(|| bmc.status());
    assert_eq!(state.unwrap(), PowerState::Off);
    assert_eq!(sushy.machine().running(), None, "the machine is off before anything is asked");
    let mut status_ms: Vec<f64> = (0..5).map(|_| timed(|| bmc.status().unwrap()).1).collect();
    status_ms.sort_by(f64::total_cmp);
    figures.push(format!("status {:.0} ms (first, finding the system: {first_ms:.0} ms)", status_ms[2]));

    let (result, ms) = timed(|| bmc.power(PowerAction::On));
    result.unwrap();
    let secs = confirmed(&bmc, PowerState::On, "power on");
    let first = sushy.machine().running().expect("powered on, the webhook started QEMU");
    figures.push(format!("on {ms:.0} ms (confirmed on after {secs:.1} s)"));

    // Wrong credentials: a clear status, and nothing changes.
    let wrong = driver(config(&sushy.url, "not-the-password", Tls::Pinned(sushy.fingerprint)));
    let refused_before = sushy.answered(401);
    for result in [wrong.status().map(|_| ()), wrong.power(PowerAction::Off), wrong.pxe_once()] {
        match result {
            Err(PowerError::Credentials { user, .. }) => assert_eq!(user, USER),
            other => panic!("wrong password: expected Credentials, got {other:?}"),
        }
    }
    let message = wrong.status().unwrap_err().to_string();
    assert!(!message.contains("not-the-password") && message.contains("refused the credentials"), "{message}");
    let refused = sushy.answered(401) - refused_before;
    assert_eq!(refused, 4, "the emulator itself refused each request (401):\n{}", sushy.log());
    assert_eq!(bmc.status().unwrap(), PowerState::On);
    assert_eq!(sushy.machine().running(), Some(first), "a refused request must not touch the machine");

    // A pin of another certificate stops at the handshake: no request reaches the emulator.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let impostor_pin = certificate_fingerprint(other.cert.der());
    let logged = sushy.requests();
    assert!(logged > 10, "the emulator logs each request:\n{}", sushy.log());
    let pinned_wrong = driver(config(&sushy.url, &sushy.password, Tls::Pinned(impostor_pin)));
    for result in [pinned_wrong.status().map(|_| ()), pinned_wrong.power(PowerAction::Off)] {
        match result {
            Err(e @ PowerError::Certificate { .. }) => {
                let text = e.to_string();
                assert!(text.contains("not the pinned") && text.contains("nothing was sent"), "{text}");
            }
            other => panic!("pinned to another certificate: expected Certificate, got {other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sushy.requests(), logged, "no request may follow a failed pin:\n{}", sushy.log());
    assert_eq!(sushy.machine().running(), Some(first));

    // PXE once, read back. sushy-tools reports every override as Continuous: strictly that is
    // not what was asked, and the driver says so; allowed explicitly, it is accepted.
    match bmc.pxe_once() {
        Err(PowerError::NotApplied { found, .. }) => {
            assert_eq!(found, "BootSourceOverrideTarget Pxe, BootSourceOverrideEnabled Continuous")
        }
        other => panic!("sushy reads Once back as Continuous: expected NotApplied, got {other:?}"),
    }
    let lenient = driver(RedfishConfig {
        accept_continuous_pxe: true,
        ..config(&sushy.url, &sushy.password, Tls::Pinned(sushy.fingerprint))
    });
    let (result, ms) = timed(|| lenient.pxe_once());
    result.unwrap();
    figures.push(format!("pxe_once {ms:.0} ms (PATCH and read back)"));

    // Cycle: ForceRestart (sushy does not list PowerCycle); the webhook stops QEMU and starts a new one.
    let (result, ms) = timed(|| bmc.power(PowerAction::Cycle));
    result.unwrap();
    let start = Instant::now();
    let restarted = loop {
        let state = bmc.status().unwrap();
        match sushy.machine().running() {
            Some(pid) if pid != first && state == PowerState::On => break pid,
            _ if start.elapsed() > SETTLE => panic!("no new machine within {SETTLE:?} of a cycle:\n{}", sushy.log()),
            _ => std::thread::sleep(POLL),
        }
    };
    assert_ne!(restarted, first);
    figures.push(format!("cycle {ms:.0} ms (on again, a new QEMU, after {:.1} s)", start.elapsed().as_secs_f64()));

    let (result, ms) = timed(|| bmc.power(PowerAction::Off));
    result.unwrap();
    let secs = confirmed(&bmc, PowerState::Off, "power off");
    assert_eq!(sushy.machine().running(), None, "powered off, the webhook stopped QEMU");
    figures.push(format!("off {ms:.0} ms (confirmed off after {secs:.1} s)"));

    // Off already: nothing is sent. Cycle from off powers on.
    let logged = sushy.requests();
    bmc.power(PowerAction::Off).unwrap();
    assert_eq!(sushy.requests(), logged + 1, "off when off is one GET and no POST:\n{}", sushy.log());
    bmc.power(PowerAction::Cycle).unwrap();
    let secs = confirmed(&bmc, PowerState::On, "cycle from off");
    assert!(sushy.machine().running().is_some());
    figures.push(format!("cycle from off -> on after {secs:.1} s"));
    bmc.power(PowerAction::Off).unwrap();
    confirmed(&bmc, PowerState::Off, "power off at the end");
    assert_eq!(sushy.machine().running(), None);
    assert_eq!(sushy.machine().starts(), 3, "QEMU started by on, cycle and cycle-from-off:\n{}", sushy.machine().log());

    println!("figures: redfish (sushy-emulator, TLS 1.2, loopback): {}", figures.join(", "));
}

#[test]
fn redfish_with_nothing_at_the_address_is_unreachable() {
    let port = free_port().unwrap();
    let closed = driver(RedfishConfig {
        timeout: Duration::from_secs(2),
        ..config(&format!("https://127.0.0.1:{port}"), "pw", Tls::TrustOnFirstUse)
    });
    match closed.status() {
        Err(PowerError::Unreachable { timeout, .. }) => assert_eq!(timeout, Duration::from_secs(2)),
        other => panic!("a closed port: expected Unreachable, got {other:?}"),
    }
    // A listener that never answers: the deadline ends it.
    let silent = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let url = format!("https://{}", silent.local_addr().unwrap());
    let quiet = driver(RedfishConfig { timeout: Duration::from_secs(1), ..config(&url, "pw", Tls::TrustOnFirstUse) });
    let (result, _) = timed(|| quiet.power(PowerAction::On));
    assert!(matches!(result, Err(PowerError::Unreachable { .. })), "a silent port: {result:?}");
}

/// An HTTP/1.1 answer with `body`.
fn http(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    let length = body.len();
    format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n{body}")
        .into_bytes()
}

/// Serves each connection `answer` after reading what the client sent first.
fn answering(answer: Vec<u8>) -> String {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut first = [0u8; 1024];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.read(&mut first);
            let _ = stream.write_all(&answer);
        }
    });
    addr.to_string()
}

#[test]
fn redfish_answered_with_garbage_is_a_protocol_error() {
    let garbage = answering(b"220 mail.example ESMTP ready\r\n500 what?\r\n\x00\x01\x02 more garbage\r\n".to_vec());
    let protocol = |driver: Redfish, what: &str| match driver.status() {
        Err(e @ PowerError::Protocol { .. }) => e.to_string(),
        other => panic!("{what}: expected Protocol, got {other:?}"),
    };
    let tls = protocol(driver(config(&format!("https://{garbage}"), "pw", Tls::TrustOnFirstUse)), "garbage to TLS");
    assert!(tls.contains("TLS handshake failed"), "{tls}");
    let plain = protocol(driver(config(&format!("http://{garbage}"), "pw", Tls::PlainHttp)), "garbage to HTTP");
    assert!(plain.contains("not HTTP/1.1"), "{plain}");

    let html = answering(http("200 OK", "text/html", "<html>hello</html>"));
    let text = protocol(driver(config(&format!("http://{html}"), "pw", Tls::PlainHttp)), "HTML instead of JSON");
    assert!(text.contains("not a Redfish collection") && text.contains("<html>"), "{text}");

    let fields = answering(http("200 OK", "application/json", r#"{"Members": 42}"#));
    let text = protocol(driver(config(&format!("http://{fields}"), "pw", Tls::PlainHttp)), "JSON without the fields");
    assert!(text.contains("not a Redfish collection"), "{text}");

    let busy = r#"{"error":{"message":"BMC busy, try again\n   ","code":"x"}}"#;
    let refused = answering(http("503 Service Unavailable", "application/json", busy));
    match driver(config(&format!("http://{refused}"), "pw", Tls::PlainHttp)).power(PowerAction::On) {
        Err(PowerError::Refused { detail, .. }) => assert_eq!(detail, "HTTP 503: BMC busy, try again"),
        other => panic!("a 503 with a Redfish error: expected Refused, got {other:?}"),
    }
}

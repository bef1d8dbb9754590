use std::cell::RefCell;
use std::path::Path;

use super::*;
use crate::console::terminal::ScriptedTerminal;

const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/console");

fn golden(name: &str, actual: &str) {
    oasis_testkit::assert_golden(Path::new(GOLDEN_DIR).join(name), actual);
}

/// A probe that reports fixed servers and records which interfaces it was asked about.
#[derive(Default)]
struct FakeProbe {
    servers: Vec<Ipv4Addr>,
    fail: bool,
    asked: RefCell<Vec<String>>,
}

impl DhcpProbe for FakeProbe {
    fn other_servers(&self, nic: &str) -> io::Result<Vec<Ipv4Addr>> {
        self.asked.borrow_mut().push(nic.to_string());
        if self.fail {
            return Err(io::Error::other("sending a DHCPDISCOVER (is the interface up?) on eth1: Network is down"));
        }
        Ok(self.servers.clone())
    }
}

fn nics() -> Vec<Nic> {
    vec![
        Nic { name: "eth0".into(), mac: "52:54:00:00:00:01".into(), link: Link::NoCarrier, addresses: vec![] },
        Nic { name: "eth1".into(), mac: "52:54:00:00:00:02".into(), link: Link::Up, addresses: vec![] },
    ]
}

fn run(answers: &[&str], nics: &[Nic], probe: &FakeProbe) -> (io::Result<String>, String) {
    let mut term = ScriptedTerminal::new(answers);
    let result = first_boot(&mut term, nics, probe);
    (result, term.output)
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("/var/lib/oasis/oasis.toml")).unwrap()
}

#[test]
fn enter_everywhere_takes_the_defaults() {
    let probe = FakeProbe::default();
    let (text, transcript) = run(&["", "", "", "", "", "", "", "", ""], &nics(), &probe);
    let text = text.unwrap();
    golden("first-boot-defaults.txt", &transcript);
    golden("first-boot-defaults.toml", &text);
    assert_eq!(probe.asked.borrow().as_slice(), ["eth1"], "the NIC with link is the default, and is probed");
    let c = parse(&text);
    assert_eq!((c.interface.as_str(), c.address, c.netmask), ("eth1", DEFAULT_ADDRESS, netmask(24)));
    let (pool, _, _) = c.dhcp.unwrap().full.unwrap();
    assert_eq!((pool.start, pool.end), (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199)));
    assert_eq!((c.cluster.name.as_str(), c.cluster.control_plane, c.policy), ("oasis", 3, AcceptancePolicy::Auto));
    assert!(transcript.ends_with("oasis: setup saved\n"));
}

#[test]
fn every_prompt_ends_in_a_matchable_way() {
    let (_, transcript) = run(&["", "", "", "", "", "", "", "", ""], &nics(), &FakeProbe::default());
    // A prompt is what is written before an answer is read: in this transcript, the text
    // before each echoed answer, which is an empty line here.
    let prompts: Vec<&str> = transcript.split("\n").filter(|l| l.ends_with(": ") || l.ends_with("]: ")).collect();
    assert_eq!(prompts.len(), 9, "{transcript}");
    assert!(prompts.iter().all(|p| p.ends_with("]: ")), "every question has a default: {prompts:?}");
}

#[test]
fn an_address_the_nic_has_is_proposed_and_the_range_avoids_it() {
    let mut nics = nics();
    nics[1].addresses = vec![(Ipv4Addr::new(192, 168, 7, 150), 24)];
    let (text, transcript) = run(&["", "", "", "", "", "", "", "", ""], &nics, &FakeProbe::default());
    assert!(transcript.contains("Appliance address on eth1 [192.168.7.150]: "), "{transcript}");
    assert!(transcript.contains("eth1  link up  52:54:00:00:00:02  192.168.7.150/24"), "{transcript}");
    let c = parse(&text.unwrap());
    let (pool, _, _) = c.dhcp.unwrap().full.unwrap();
    assert_eq!((pool.start, pool.end), (Ipv4Addr::new(192, 168, 7, 10), Ipv4Addr::new(192, 168, 7, 99)));
}

#[test]
fn bad_answers_are_explained_and_asked_again() {
    let answers = [
        "eth7", // not listed
        "1",    // eth0 by number
        "10.0.0.300",
        "10.99.0.5", // inside the overlay
        "172.16.0.1",
        "255.0.255.0",
        "/31",
        "16",
        "half",
        "full",
        "172.16.1.10-172.16.0.10", // backwards
        "172.17.0.1-172.17.0.9",   // another subnet
        "172.16.0.0-172.16.0.20",  // the network address
        "172.16.0.1 172.16.0.20",  // the appliance's own address inside
        "172.16.0.2-172.16.0.20",  // own address not inside: 172.16.0.1 < .2
        "My Rack",
        "rack-7",
        "2",
        "5",
        "sometimes",
        "allowlist",
        "",
        "SN-1, 52:54:00:00:00:09",
        "maybe",
        "yes",
    ];
    let (text, transcript) = run(&answers, &nics(), &FakeProbe::default());
    let text = text.unwrap_or_else(|e| panic!("{e}\n{transcript}"));
    golden("first-boot-bad-answers.txt", &transcript);
    for why in [
        "\"eth7\" is not one of the interfaces listed: eth0, eth1",
        "\"10.0.0.300\" is not an IPv4 address",
        "10.99.0.5 is inside the management overlay",
        "255.0.255.0 is not a contiguous netmask",
        "a /31 network is not usable",
        "\"half\" is not a DHCP mode",
        "172.16.1.10 comes after 172.16.0.10",
        "172.17.0.1 is not on the rack network 172.16.0.0/16",
        "172.16.0.0 is the network address",
        "the range contains the appliance's own address 172.16.0.1",
        "\"My Rack\" is not a cluster name",
        "\"2\" is not 1, 3 or 5",
        "\"sometimes\" is not a policy",
        "this question has no default",
        "\"maybe\": type yes to save, or redo",
    ] {
        assert!(transcript.contains(&format!("error: {why}")), "no {why:?} in:\n{transcript}");
    }
    let c = parse(&text);
    assert_eq!((c.interface.as_str(), c.address, c.netmask), ("eth0", Ipv4Addr::new(172, 16, 0, 1), netmask(16)));
    let (pool, _, _) = c.dhcp.unwrap().full.unwrap();
    assert_eq!((pool.start, pool.end), (Ipv4Addr::new(172, 16, 0, 2), Ipv4Addr::new(172, 16, 0, 20)));
    assert_eq!((c.cluster.name.as_str(), c.cluster.control_plane), ("rack-7", 5));
    assert_eq!(c.policy, AcceptancePolicy::Allowlist);
    assert!(c.allow_serials.contains("sn-1"));
    assert_eq!(c.allow_macs.len(), 1);
}

#[test]
fn redo_asks_again_with_the_previous_answers_as_defaults() {
    let answers = [
        "", "10.1.2.3", "", "", "", "edge", "1", "manual", // first round
        "redo",   // then again, changing only the mode
        "", "", "", "proxy", "", "", "", "yes",
    ];
    let probe = FakeProbe::default();
    let (text, transcript) = run(&answers, &nics(), &probe);
    let text = text.unwrap_or_else(|e| panic!("{e}\n{transcript}"));
    assert_eq!(probe.asked.borrow().len(), 2, "probed again on the redo");
    let second = transcript.split("oasis: asking again").nth(1).expect("a second round");
    for prompt in [
        "Rack interface [eth1]: ",
        "Appliance address on eth1 [10.1.2.3]: ",
        "Netmask [255.255.255.0]: ",
        "DHCP mode, full or proxy [full]: ",
        "Cluster name [edge]: ",
        "Control-plane machines, 1, 3 or 5 [1]: ",
        "Acceptance policy, auto, allowlist or manual [manual]: ",
    ] {
        assert!(second.contains(prompt), "no {prompt:?} in the second round:\n{second}");
    }
    assert!(!second.contains("DHCP range"), "proxy mode has no range");
    let c = parse(&text);
    assert_eq!(c.address, Ipv4Addr::new(10, 1, 2, 3));
    assert!(c.dhcp.unwrap().full.is_none(), "proxy mode");
    assert_eq!((c.cluster.name.as_str(), c.cluster.control_plane, c.policy), ("edge", 1, AcceptancePolicy::Manual));
    assert_eq!(transcript.matches("oasis: setup saved").count(), 1);
}

#[test]
fn another_dhcp_server_is_warned_about_and_proxy_proposed() {
    let probe = FakeProbe { servers: vec![Ipv4Addr::new(192, 168, 1, 1)], ..FakeProbe::default() };
    let (text, transcript) = run(&["", "", "", "", "", "", "", ""], &nics(), &probe);
    assert!(
        transcript.contains("warning: another DHCP server answers on eth1: 192.168.1.1; full mode would compete"),
        "{transcript}"
    );
    assert!(transcript.contains("DHCP mode, full or proxy [proxy]: "), "{transcript}");
    assert!(transcript.contains("DHCP:           proxy"), "{transcript}");
    let c = parse(&text.unwrap());
    assert!(c.dhcp.unwrap().full.is_none());
}

#[test]
fn a_failed_probe_is_reported_and_full_mode_stays_the_default() {
    let probe = FakeProbe { fail: true, ..FakeProbe::default() };
    let (text, transcript) = run(&["", "", "", "", "", "", "", "", ""], &nics(), &probe);
    assert!(transcript.contains("warning: could not look for another DHCP server on eth1: sending a DHCPDISCOVER"));
    assert!(transcript.contains("DHCP mode, full or proxy [full]: "));
    assert!(parse(&text.unwrap()).dhcp.unwrap().full.is_some());
}

#[test]
fn a_closed_console_or_no_nic_is_an_error_not_a_config() {
    let (result, _) = run(&["", ""], &nics(), &FakeProbe::default());
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    let (result, transcript) = run(&[""], &[], &FakeProbe::default());
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(transcript.contains("no network interface"));
}

#[test]
fn the_toml_round_trips_with_quotes_escaped() {
    let answers = Answers {
        interface: "enp3s0".into(),
        address: Ipv4Addr::new(10, 20, 0, 1),
        prefix_len: 22,
        mode: DhcpMode::Full,
        range: Some((Ipv4Addr::new(10, 20, 1, 0), Ipv4Addr::new(10, 20, 3, 254))),
        cluster_name: "a".into(),
        control_plane: 1,
        policy: AcceptancePolicy::Allowlist,
        allow: vec!["SN'1".into(), "52:54:00:aa:bb:cc".into()],
    };
    let text = to_toml(&answers);
    check(&text, &answers).unwrap();
    let c = parse(&text);
    assert!(c.allow_serials.contains("sn'1"));
}

#[test]
fn default_ranges_leave_the_address_out() {
    let range = |a: [u8; 4], len| {
        let (s, e) = default_range(Ipv4Addr::from(a), len);
        (s.to_string(), e.to_string())
    };
    assert_eq!(range([10, 0, 0, 1], 24), ("10.0.0.100".into(), "10.0.0.199".into()));
    assert_eq!(range([10, 0, 0, 120], 24), ("10.0.0.10".into(), "10.0.0.99".into()));
    assert_eq!(range([10, 0, 5, 1], 16), ("10.0.5.100".into(), "10.0.5.199".into()));
    assert_eq!(range([10, 0, 0, 1], 28), ("10.0.0.8".into(), "10.0.0.14".into()));
    assert_eq!(range([10, 0, 0, 14], 28), ("10.0.0.1".into(), "10.0.0.7".into()));
    for (a, len) in [([10, 0, 0, 1], 24), ([10, 0, 0, 150], 24), ([10, 0, 0, 9], 29), ([10, 0, 0, 254], 23)] {
        let (s, e) = default_range(Ipv4Addr::from(a), len);
        let text = format!("{s}-{e}");
        parse_range(&text, Ipv4Addr::from(a), len).unwrap_or_else(|why| panic!("{a:?}/{len}: {text}: {why}"));
    }
}

/// The console's questions and `oasis.toml` go through the same checks: a value refused in one
/// is refused in the other, in the same words.
#[test]
fn the_console_refuses_what_the_file_refuses_in_the_same_words() {
    let file = "[network]\ninterface = \"eth0\"\naddress = \"172.16.0.1\"\nnetmask = \"255.255.0.0\"\n";
    let cases: [(Result<(), String>, String); 4] = [
        (
            parse_cluster_name("My Rack").map(drop),
            format!("{file}[dhcp]\nmode = \"proxy\"\n[cluster]\nname = \"My Rack\"\n"),
        ),
        (parse_control_plane("2").map(drop), format!("{file}[dhcp]\nmode = \"proxy\"\n[cluster]\ncontrol_plane = 2\n")),
        (
            parse_range("172.16.1.10-172.16.0.10", Ipv4Addr::new(172, 16, 0, 1), 16).map(drop),
            format!("{file}[dhcp]\nrange = [\"172.16.1.10\", \"172.16.0.10\"]\n"),
        ),
        (
            parse_netmask("255.0.255.0", Ipv4Addr::new(172, 16, 0, 1)).map(drop),
            file.replace("255.255.0.0", "255.0.255.0") + "[dhcp]\nmode = \"proxy\"\n",
        ),
    ];
    for (console, text) in cases {
        let console = console.expect_err("the console refuses it");
        let file = Config::parse(&text, Path::new("/var/lib/oasis/oasis.toml")).expect_err("the file is refused");
        assert!(file.problem().ends_with(&console), "console: {console}\nfile: {}", file.problem());
    }
}

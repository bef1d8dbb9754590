use super::*;

const GOOD: &str = r#"
data_dir = "state"

[network]
interface = "br0"
address = "10.0.0.1"

[dhcp]
range = ["10.0.0.100", "10.0.0.199"]
router = "10.0.0.1"

[[dhcp.reservation]]
mac = "52:54:00:00:00:01"
address = "10.0.0.50"

[profile]
kernel = "payload/vmlinuz"
initrd = "payload/initrd.img"
cmdline = "console=ttyS0"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/oasis/oasis.toml"))
}

/// The whole message `oasis config check` prints for a file that must fail.
fn failure(text: &str) -> String {
    let err = parse(text).expect_err("the file is refused");
    format!("{err}: {}", err.problem())
}

#[test]
fn the_documented_example_and_a_minimal_file_parse() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/etc/oasis/state"));
    assert_eq!(c.boot_root, PathBuf::from("/etc/oasis/state/boot"));
    let (pool, options, authoritative) = c.dhcp.unwrap().full.unwrap();
    assert_eq!(
        (pool.start, pool.end, pool.lease_secs),
        (Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199), 3600)
    );
    assert_eq!(options.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert!(authoritative);
    assert_eq!(c.tftp.unwrap().0, 69);
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/oasis.toml")).unwrap();
    let documented = parse(&example).expect("docs/oasis.toml parses");
    assert_eq!(documented.events, EventLimits::default(), "docs/oasis.toml shows the defaults");
    assert_eq!(c.events, EventLimits::default());
}

#[test]
fn unknown_keys_are_named_with_their_line() {
    let text = GOOD.replace("router = ", "routr = ");
    let err = failure(&text);
    assert!(err.contains("unknown field `routr`"), "{err}");
    assert!(err.contains("line 10"), "{err}");
}

#[test]
fn nonsense_values_are_explained() {
    let cases = [
        (GOOD.replace("\"10.0.0.100\", \"10.0.0.199\"", "\"10.0.0.199\", \"10.0.0.100\""), "comes after"),
        (GOOD.replace("\"10.0.0.100\", \"10.0.0.199\"", "\"10.0.0.1\", \"10.0.0.199\""), "own address"),
        (GOOD.replace("range = [\"10.0.0.100\", \"10.0.0.199\"]", ""), "dhcp.range is required"),
        (GOOD.replace("10.0.0.50", "192.168.0.50"), "outside the pool's subnet"),
        (GOOD.replace("console=ttyS0", "console=ttyS0\\nshell"), "profile"),
        (GOOD.replace("address = \"10.0.0.1\"", "address = \"10.0.0.300\""), "invalid"),
        (GOOD.replace("mac = \"52:54:00:00:00:01\"", "mac = \"52:54:00\""), "not a MAC address"),
        (format!("version = 2\n{GOOD}"), "version = 2"),
        (format!("{GOOD}\n[cluster]\ncontrol_plane = 2\n"), "must be 1, 3 or 5"),
        (format!("{GOOD}\n[cluster]\nname = \"My Rack\"\n"), "lowercase letters"),
        (format!("{GOOD}\n[cluster]\nprefer = [\"gpus >= 1\"]\n"), "is not a preference"),
        (format!("{GOOD}\n[cluster]\nmesh_prefix = \"10.99.0.0/24\"\n"), "is smaller than"),
        (format!("{GOOD}\n[cluster]\nmesh_prefix = \"10.0.0.0/8\"\n"), "overlaps"),
        (format!("{GOOD}\n[cluster]\ndead_after_secs = 5\n"), "three heartbeats"),
        (format!("{GOOD}\n[cluster]\nreplace_after_secs = 100\n"), "use 0 (never replace) or at least 300"),
        (format!("{GOOD}\n[events]\nmax_count = 10\n"), "events.max_count"),
        (format!("{GOOD}\n[events]\nmax_age_days = 0\n"), "events.max_age_days"),
        (format!("{GOOD}\n[events]\nmax_mib = 0\n"), "events.max_mib"),
    ];
    for (text, want) in cases {
        let err = failure(&text);
        assert!(err.contains(want), "wanted {want:?} in: {err}");
    }
}

#[test]
fn without_a_profile_the_node_image_is_served_and_the_overlay_is_checked() {
    let text = GOOD.split("[profile]").next().unwrap().to_string();
    let c = parse(&text).unwrap();
    assert!(c.profile_is_node);
    assert_eq!(c.profile.kernel, NODE_KERNEL);
    assert_eq!(c.wireguard.address, Ipv4Addr::new(10, 99, 0, 1));
    assert_eq!(c.policy, AcceptancePolicy::Auto);
    assert!(!parse(GOOD).unwrap().profile_is_node, "a custom profile gets no agent arguments");

    let allow = format!("{text}[registration]\npolicy = \"allowlist\"\nallow = [\"SN-1\", \"52:54:00:00:00:09\"]\n");
    let c = parse(&allow).unwrap();
    assert!(c.allow_serials.contains("sn-1"));
    assert_eq!(c.allow_macs.len(), 1);
    for (prefix, want) in
        [("10.0.0.0/8", "overlaps"), ("10.99.0.0", "ADDRESS/LENGTH"), ("10.99.0.0/31", "ADDRESS/LENGTH")]
    {
        let err = failure(&format!("{text}[wireguard]\nprefix = \"{prefix}\"\n"));
        assert!(err.contains(want), "{prefix}: {err}");
    }
}

/// Found by the `config_toml` fuzz target's check that what `config check` passes is
/// servable: `max_transfers = 0` passed, and `oasis serve` then refused to start TFTP.
#[test]
fn tftp_settings_the_tftp_server_refuses_are_refused_here() {
    for (tftp, want) in [
        ("max_transfers = 0", "max_transfers is 0"),
        ("max_blksize = 7", "max_blksize is 7"),
        ("max_windowsize = 0", "max_windowsize is 0"),
    ] {
        let err = failure(&format!("{GOOD}\n[tftp]\n{tftp}\n"));
        assert!(err.contains(want) && err.contains("line"), "{tftp}: {err}");
    }
    let c = parse(&format!("{GOOD}\n[tftp]\ntimeout_ms = 0\nmax_transfers = 1\n")).unwrap();
    c.tftp.unwrap().1.check().expect("a zero timeout is read as the shortest one");
}

#[test]
fn proxy_mode_needs_no_range() {
    let text = GOOD.replace("range = [\"10.0.0.100\", \"10.0.0.199\"]", "mode = \"proxy\"");
    let c = parse(&text).unwrap();
    assert!(c.dhcp.unwrap().full.is_none());
}

/// The line comes from the parser, not from the first line that starts with the key's name: a
/// dotted key, a second table of the same name, a key that is in two sections, or the key's
/// name at the start of a line inside a multi-line string all used to be given no line or the
/// wrong one.
#[test]
fn lines_are_where_the_parser_found_the_value() {
    let reservation = "\n[[dhcp.reservation]]\nmac = \"52:54:00:00:00:02\"\naddress = \"10.0.0.50\"\n";
    let cases = [
        (format!("{GOOD}{reservation}"), "dhcp.reservation (line 21): 10.0.0.50 is reserved twice"),
        (format!("events.max_count = 10\n{GOOD}"), "events.max_count (line 1) is 10"),
        (GOOD.replace("interface = \"br0\"", "interface = \"br/0\""), "network.interface (line 5): \"br/0\""),
        (format!("{GOOD}\n[wireguard]\ninterface = \"wg/0\"\n"), "wireguard.interface (line 22): \"wg/0\""),
        (
            GOOD.replace("router = \"10.0.0.1\"", "domain_name = \"\"\"\nname = \"\"\"")
                + "\n[cluster]\nname = \"My Rack\"\n",
            "cluster.name (line 23): \"My Rack\"",
        ),
    ];
    for (text, want) in cases {
        let err = failure(&text);
        assert!(err.contains(want), "wanted {want:?} in: {err}");
    }
}

/// Names of the profile's files that the boot root refuses whatever it holds: `oasis serve`
/// stopped at start ("the boot profile's kernel ... is not in the boot root"), after
/// `config check` had passed them.
#[test]
fn profile_files_the_boot_root_can_never_serve_are_refused() {
    let long = "k".repeat(300);
    for (kernel, want) in [
        ("..\\\\vmlinuz", "profile.kernel (line 17): file name \"../vmlinuz\" climbs out of the boot root"),
        ("\\\\vmlinuz", "is absolute"),
        (".", "profile.kernel (line 17)"),
        (long.as_str(), "300 bytes long"),
    ] {
        let text = GOOD.replace("kernel = \"payload/vmlinuz\"", &format!("kernel = \"{kernel}\""));
        let err = failure(&text);
        assert!(err.contains(want), "{kernel}: wanted {want:?} in: {err}");
    }
    let err = failure(&GOOD.replace("initrd = \"payload/initrd.img\"", "initrd = \"a\\u0000b\""));
    assert!(err.contains("profile.initrd (line 18): file name contains a NUL byte"), "{err}");
}

/// Two services on one port: the second cannot listen and `oasis serve` stopped at start
/// (HTTP and the API both listen on TCP; WireGuard, TFTP and DHCP on UDP, WireGuard and TFTP
/// without sharing).
#[test]
fn services_sharing_a_port_are_refused() {
    for (extra, want) in [
        ("[api]\nport = 80\n", "api.port (line 22) is 80, which http.port also uses"),
        ("[http]\nport = 8443\n[api]\nport = 8443\n", "api.port (line 24) is 8443, which http.port also uses"),
        ("[wireguard]\nport = 69\n", "wireguard.port (line 22) is 69, which tftp.port also uses"),
        ("[tftp]\nport = 67\n", "tftp.port (line 22) is 67, which dhcp.port also uses"),
        ("[tftp]\nport = 4011\n", "tftp.port (line 22) is 4011, which dhcp.proxy_port also uses"),
        ("[wireguard]\nport = 67\n", "the management network and the DHCP server cannot share a UDP port"),
    ] {
        let err = failure(&format!("{GOOD}\n{extra}"));
        assert!(err.contains(want), "wanted {want:?} in: {err}");
    }
    // What may share: DHCP's two sockets, a port of a service that is off, and TCP with UDP.
    for fine in [
        GOOD.replace("router = \"10.0.0.1\"", "router = \"10.0.0.1\"\nport = 4011\nproxy_port = 4011"),
        format!("{GOOD}\n[tftp]\nenabled = false\nport = 67\n"),
        format!("{GOOD}\n[http]\nport = 69\n"),
    ] {
        parse(&fine).unwrap_or_else(|e| panic!("{fine}: {e}: {}", e.problem()));
    }
}

/// A management interface name that WireGuard (and the kernel) refuses, or the rack
/// interface's: the management network could not start, and `oasis serve` stopped.
#[test]
fn management_interfaces_serve_could_not_create_are_refused() {
    for (name, want) in [
        ("wg\\t0", "wireguard.interface (line 22): \"wg\\t0\" is not a valid interface name"),
        ("wg:0", "is not a valid interface name"),
        ("..", "is not a valid interface name"),
        ("br0", "wireguard.interface (line 22) \"br0\" is the rack interface"),
    ] {
        let err = failure(&format!("{GOOD}\n[wireguard]\ninterface = \"{name}\"\n"));
        assert!(err.contains(want), "{name}: wanted {want:?} in: {err}");
    }
}

/// The chain `oasis` prints names each cause once: the OS error used to be in the message and
/// again as its source ("cannot read X: No such file ...: No such file ...").
#[test]
fn a_file_that_cannot_be_read_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = anyhow::Error::from(Config::load(&path).unwrap_err());
    let printed = format!("{err:#}");
    assert!(printed.starts_with(&format!("cannot read {}: ", path.display())), "{printed}");
    assert_eq!(printed.matches("No such file or directory").count(), 1, "{printed}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[network]\ninterface = \"br0\"\naddress = \"10.0.0.300\"\n").unwrap();
    let printed = format!("{:#}", anyhow::Error::from(Config::load(&bad).unwrap_err()));
    assert_eq!(printed.matches(&bad.display().to_string()).count(), 1, "{printed}");
    assert_eq!(printed.matches("invalid").count(), 1, "{printed}");
}

#[test]
fn update_trusted_keys_are_relative_to_the_file_and_optional() {
    assert!(parse(GOOD).unwrap().update_trusted_keys.is_empty());
    let text = format!("{GOOD}\n[update]\ntrusted_keys = [\"keys/update.pub\", \"/srv/other.pub\"]\n");
    let c = parse(&text).unwrap();
    assert_eq!(
        c.update_trusted_keys,
        vec![PathBuf::from("/etc/oasis/keys/update.pub"), PathBuf::from("/srv/other.pub")]
    );
    assert!(failure(&format!("{GOOD}\n[update]\ntrusted_key = \"x\"\n")).contains("trusted_key"));
}

#[test]
fn rollouts_default_to_one_worker_kexec_and_a_timeout_for_real_hardware_and_bad_values_name_their_line() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.rollout, RolloutConfig::default());
    assert_eq!(c.rollout.timeout.as_secs(), 1800);
    let text = format!("{GOOD}\n[update]\nrollout_timeout_secs = 300\nworkers_at_once = 2\nno_kexec = [\"m-1\"]\n");
    let c = parse(&text).unwrap();
    assert_eq!((c.rollout.timeout.as_secs(), c.rollout.workers_at_once), (300, 2));
    assert!(!c.rollout.kexec_for("m-1") && c.rollout.kexec_for("m-2"));
    let lines = GOOD.lines().count();
    let bad = failure(&format!("{GOOD}\n[update]\nrollout_timeout_secs = 5\n"));
    assert!(bad.contains("update.rollout_timeout_secs") && bad.contains(&format!("line {}", lines + 3)), "{bad}");
    assert!(failure(&format!("{GOOD}\n[update]\nworkers_at_once = 0\n")).contains("use 1 to 100"));
}

#[test]
fn bundles_on_the_stick_wait_for_the_console_unless_the_config_says_apply_from_stick() {
    assert!(!parse(GOOD).unwrap().apply_from_stick);
    assert!(parse(&format!("{GOOD}\n[update]\napply_from_stick = true\n")).unwrap().apply_from_stick);
    let bad = failure(&format!("{GOOD}\n[update]\napply_from_stick = \"yes\"\n"));
    assert!(bad.contains("apply_from_stick") || bad.contains("boolean"), "{bad}");
}

#[test]
fn the_appliance_reboots_into_its_update_at_once_or_at_a_time_of_day_in_utc() {
    assert_eq!(parse(GOOD).unwrap().rollout.appliance_reboot_at, None);
    let at =
        parse(&format!("{GOOD}\n[update]\nappliance_reboot_at = \"02:30\"\n")).unwrap().rollout.appliance_reboot_at;
    let at = at.expect("a time");
    assert_eq!((at.hour, at.minute, at.to_string()), (2, 30, "02:30 UTC".to_string()));
    let day = 20_000 * 86_400;
    assert_eq!(at.next_after(day), day + 9000, "later that day");
    assert_eq!(at.next_after(day + 9000), day + 9000, "that very minute");
    assert_eq!(at.next_after(day + 9001), day + 86_400 + 9000, "else the next day");
    for bad in ["2:30", "24:00", "02:60", "0230", "02:30:00", "noon"] {
        let text = failure(&format!("{GOOD}\n[update]\nappliance_reboot_at = \"{bad}\"\n"));
        assert!(text.contains("update.appliance_reboot_at") && text.contains("HH:MM"), "{bad}: {text}");
    }
}

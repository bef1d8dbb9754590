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

//! Each exit code of `oasis`, as `oasis --help` lists them, from the real binary: a supervisor
//! (the appliance image's `oasis boot`, systemd, an operator's script) decides on them.

use std::process::Output;

use oasis_e2e::appliance::{oasis, Appliance};
use oasis_e2e::{appliance, Netns};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_the_exit_codes() {
    let out = oasis(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  0  done",
        "  1  any other failure",
        "  2  usage",
        "  3  a configuration to fix",
        "  4  the store is in use",
        "  5  the store is damaged or missing",
    ] {
        assert!(help.contains(line), "{line:?} in:\n{help}");
    }
}

#[test]
fn ok_other_usage_configuration_and_damage_exit_0_1_2_3_5() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[network]\ninterface = \"br0\"\naddress = \"10.0.0.1\"\n\n[dhcp]\nmode = \"proxy\"\n")
        .unwrap();
    let out = oasis(&["config", "check", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let key = dir.path().join("missing.key");
    let out = oasis(&["config", "sign", "--key", key.to_str().unwrap(), good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.key"), "{}", stderr(&out));

    let out = oasis(&["config", "check", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    let missing = dir.path().join("missing.toml");
    let out = oasis(&["config", "check", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // A store that is not a store any more.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("oasis.redb.created"), "").unwrap();
    std::fs::write(data.join("oasis.redb"), vec![0x5a; 8192]).unwrap();
    let out = oasis(&["leases", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn a_second_serve_on_the_same_data_dir_exits_4() {
    let ns = Netns::create("oasis-exit4").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = appliance::rack_config(dir.path(), "range = [\"10.0.0.100\", \"10.0.0.199\"]", "console=ttyS0");
    let first = Appliance::start(&ns, &config, &dir.path().join("first.log"));
    let out = ns
        .command(appliance::oasis_bin().to_str().unwrap())
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("in use by another oasis process"), "{err}");
    drop(first);
}

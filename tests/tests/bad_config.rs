//! The `oasis` binary given a broken configuration or a host that does not match it: each case
//! must end with a message that names the problem and what to do, a distinct exit code, and no
//! state written. Runs the real binary, as an operator would.

use std::path::Path;
use std::process::Output;

use oasis_e2e::appliance::oasis;
use oasis_e2e::{appliance, Netns};

/// Exit code for a configuration the operator must fix (see appliance/src/exit.rs).
const EXIT_CONFIG: i32 = 3;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

const GOOD: &str = r#"[network]
interface = "br0"
address = "10.0.0.1"

[dhcp]
range = ["10.0.0.100", "10.0.0.199"]

[profile]
kernel = "payload/vmlinuz"
"#;

#[test]
fn config_check_names_an_unknown_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.toml", GOOD);
    let out = oasis(&["config", "check", &good]);
    assert_eq!(out.status.code(), Some(0), "the base of these cases is valid: {}", stderr(&out));
    let file = write(dir.path(), "oasis.toml", &GOOD.replace("[profile]", "[profile]\nkernal = \"typo\""));
    let out = oasis(&["config", "check", &file]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("kernal"), "the unknown key is named: {err}");
    assert!(err.contains("line 9"), "its line is given: {err}");
}

#[test]
fn config_check_refuses_values_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    for (broken, what) in [
        (GOOD.replace("10.0.0.1", "10.0.0.300"), "address"),
        (GOOD.replace("[dhcp]", "[dhcp]\nmode = \"fast\""), "mode"),
        (GOOD.replace("\"10.0.0.100\", \"10.0.0.199\"", "\"10.0.0.200\", \"10.0.0.100\""), "range"),
        ("not toml at all [".to_string(), "line 1"),
    ] {
        let file = write(dir.path(), "broken.toml", &broken);
        let out = oasis(&["config", "check", &file]);
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(what), "{what} is named: {}", stderr(&out));
    }
    let missing = dir.path().join("missing.toml");
    let out = oasis(&["config", "check", &missing.to_string_lossy()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));
    // The whole line: what failed, then the OS's reason, once.
    let line = format!("error: cannot read {}: No such file or directory (os error 2)", missing.display());
    assert_eq!(stderr(&out).lines().last(), Some(line.as_str()), "{}", stderr(&out));
}

/// What `oasis serve` refused only once it was starting its services (two services on one port,
/// a profile file name no boot root can serve, a management interface WireGuard cannot create),
/// `oasis config check` refuses too; both say the same thing, with the line, and exit 3. `serve`
/// stops at the file here, before it looks at this host.
#[test]
fn config_check_and_serve_refuse_what_serve_could_not_start_alike() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra, want) in [
        ("ports.toml", "\n[api]\nport = 80\n", "api.port (line 12) is 80, which http.port also uses"),
        ("udp.toml", "\n[wireguard]\nport = 69\n", "wireguard.port (line 12) is 69, which tftp.port also uses"),
        (
            "wg.toml",
            "\n[wireguard]\ninterface = \"br0\"\n",
            "wireguard.interface (line 12) \"br0\" is the rack interface",
        ),
    ] {
        let file = write(dir.path(), name, &format!("{GOOD}{extra}"));
        let check = oasis(&["config", "check", &file]);
        let serve = oasis(&["serve", "--config", &file]);
        assert_eq!(check.status.code(), Some(EXIT_CONFIG), "{name}: {}", stderr(&check));
        assert_eq!(serve.status.code(), Some(EXIT_CONFIG), "{name}: {}", stderr(&serve));
        assert!(stderr(&check).contains(want), "{name}: wanted {want:?} in: {}", stderr(&check));
        let line = |out: &Output| stderr(out).lines().find(|l| l.starts_with("error:")).map(str::to_string);
        assert_eq!(line(&check), line(&serve), "{name}: the same message");
    }
    let escape = write(dir.path(), "escape.toml", &GOOD.replace("payload/vmlinuz", "..\\\\vmlinuz"));
    let out = oasis(&["config", "check", &escape]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
    assert!(stderr(&out).contains("profile.kernel (line 9)"), "{}", stderr(&out));
}

#[test]
fn serve_refuses_a_host_that_does_not_match_its_config() {
    let ns = Netns::create("oasis-badcfg").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = appliance::rack_config(dir.path(), "range = [\"10.0.0.100\", \"10.0.0.199\"]", "console=ttyS0");
    let serve = |config: &str| {
        let out = ns.command(appliance::oasis_bin().to_str().unwrap()).args(["serve", "--config", config]).output();
        out.unwrap()
    };
    let text = std::fs::read_to_string(&config).unwrap();

    // No br0 in this namespace yet.
    let out = serve(config.to_str().unwrap());
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"br0\" does not exist"), "{}", stderr(&out));

    // The interface exists but carries another address.
    ns.add_bridge("br0", Some("10.0.0.2/24")).unwrap();
    let out = serve(config.to_str().unwrap());
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
    assert!(stderr(&out).contains("ip addr add 10.0.0.1/24 dev br0"), "the fix is spelled out: {}", stderr(&out));

    // Right address, but the profile's kernel is not in the boot root.
    ns.add_address("br0", "10.0.0.1/24").unwrap();
    let missing = write(dir.path(), "missing-kernel.toml", &text.replace("payload/vmlinuz", "payload/vmlinuz-nope"));
    let out = serve(&missing);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
    assert!(stderr(&out).contains("vmlinuz-nope"), "{}", stderr(&out));

    // A boot profile that escapes the boot root.
    let escape = write(dir.path(), "escape.toml", &text.replace("payload/vmlinuz", "../../etc/passwd"));
    let out = serve(&escape);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("../../etc/passwd"), "{}", stderr(&out));

    assert!(!dir.path().join("data").join("oasis.redb").exists(), "a refused start writes no state");
}

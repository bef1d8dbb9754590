//! Node generations delivered to a running `oasis serve` (the real binary in a namespace, no VM):
//! bundles of the real node images (`$OASIS_ASSETS/node`, Debian 12, and `node-trixie`, Debian
//! 13) applied through `oasis update apply`, seen in `oasis update status`, refused ones changing
//! nothing, the older generations pruned, and a bundle uploaded over the HTTPS admin API.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use oasis_appliance::store::Store;
use oasis_core::generations::MachineGenerations;
use oasis_e2e::appliance::{self, oasis, Appliance};
use oasis_e2e::bundles;
use oasis_e2e::{node_image, trixie_node_image, Netns};
use oasis_proto::MacAddr;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The generations on the data partition.
fn on_disk(data: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(data.join("generations")) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

fn apply(appliance: &Appliance, file: &Path) -> Output {
    let data = appliance.data_dir.to_str().unwrap();
    oasis(&["update", "apply", file.to_str().unwrap(), "--data-dir", data])
}

/// `oasis update status --json`: (sequence, state) of each generation.
fn generations(appliance: &Appliance) -> Vec<(u64, String)> {
    let json: serde_json::Value = serde_json::from_str(&appliance.cli(&["update", "status", "--json"])).unwrap();
    json["generations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["sequence"].as_u64().unwrap(), g["state"].as_str().unwrap().to_string()))
        .collect()
}

/// `POST /v1/admin/update` of `file` with curl inside `ns`: the status and the body.
fn upload(ns: &Netns, file: &Path, token: Option<&str>, work: &Path) -> (String, String) {
    let out_file = work.join("upload.out");
    let mut cmd = ns.command("curl");
    cmd.args(["-sk", "-o", out_file.to_str().unwrap(), "-w", "%{http_code}", "-X", "POST"]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let data = format!("@{}", file.display());
    let out = cmd
        .args(["-H", "Content-Type: application/octet-stream", "--data-binary", &data])
        .arg(format!("https://10.0.0.1:{}/v1/admin/update", oasis_proto::API_PORT))
        .output()
        .unwrap();
    let body = std::fs::read_to_string(&out_file).unwrap_or_default();
    (String::from_utf8_lossy(&out.stdout).into_owned(), body)
}

#[test]
fn bundles_become_generations_refused_ones_change_nothing_and_old_ones_are_pruned() {
    let node = node_image().unwrap_or_else(|e| panic!("{e}"));
    let trixie = trixie_node_image().unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = bundles::keygen(dir.path());
    let first: PathBuf = dir.path().join("first.bundle");
    let second: PathBuf = dir.path().join("second.bundle");
    bundles::build(&node, 1, &private, &first);
    bundles::build(&trixie, 2, &private, &second);

    let ns = Netns::create("oasis-update").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let root = appliance::node_boot_root(dir.path());
    let extra = format!("[update]\ntrusted_keys = [\"{}\"]\n", public.display());
    // Proxy DHCP: boot scripts go to any peer, so this test can fetch them itself.
    let config = appliance::write_config(dir.path(), "mode = \"proxy\"", &root, &extra);
    let checked = oasis(&["config", "check", config.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(String::from_utf8_lossy(&checked.stdout).contains("update bundles may be signed by key"));
    let rack = Appliance::start(&ns, &config, &dir.path().join("serve.log"));
    let data = rack.data_dir.clone();
    assert_eq!(generations(&rack), vec![(0, "current".to_string())], "only the shipped generation");

    let out = apply(&rack, &first);
    assert!(out.status.success(), "{}\n{}", stderr(&out), rack.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("installed as node generation 1"));
    assert_eq!(on_disk(&data), BTreeSet::from(["1".to_string()]));
    assert_eq!(generations(&rack), vec![(0, "current".into()), (1, "available".into())]);
    let human = rack.cli(&["update", "status"]);
    assert!(human.contains("available") && human.contains("0.15.1"), "{human}");

    // The same bundle again: refused by its sequence, exit 3, nothing changed.
    let out = apply(&rack, &first);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not above the installed sequence 1"), "{}", stderr(&out));

    // A tampered copy of the newer one: refused, nothing written.
    let mut bytes = std::fs::read(&second).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let tampered = dir.path().join("tampered.bundle");
    std::fs::write(&tampered, bytes).unwrap();
    let out = apply(&rack, &tampered);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged or altered"), "{}", stderr(&out));
    assert_eq!(on_disk(&data), BTreeSet::from(["1".to_string()]), "no staging directory left");
    assert_eq!(generations(&rack), vec![(0, "current".into()), (1, "available".into())]);

    // The newer one: installed, and generation 1 (never run anywhere) pruned: two kept.
    let out = apply(&rack, &second);
    assert!(out.status.success(), "{}\n{}", stderr(&out), rack.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed generations no longer kept: 1"));
    assert_eq!(on_disk(&data), BTreeSet::from(["2".to_string()]));
    assert_eq!(generations(&rack), vec![(0, "current".into()), (2, "available".into())]);
    let installed = data.join("generations/2");
    for file in ["vmlinuz", "initrd.img", "etcd", "artifacts.json", "bundle-manifest.json"] {
        assert!(installed.join(file).is_file(), "{file} in {}", installed.display());
    }
    assert_eq!(std::fs::read(installed.join("vmlinuz")).unwrap(), std::fs::read(trixie.join("vmlinuz")).unwrap());

    // The HTTPS admin upload, streamed into the same installer: the admin token is required.
    let third = dir.path().join("third.bundle");
    bundles::build(&trixie, 3, &private, &third);
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let (status, _) = upload(&ns, &third, None, dir.path());
    assert_eq!(status, "401");
    let (status, body) = upload(&ns, &third, Some(token.trim()), dir.path());
    assert_eq!(status, "200", "{body}\n{}", rack.log());
    assert!(body.contains("\"sequence\":3") && body.contains("\"pruned\":[2]"), "{body}");
    assert_eq!(on_disk(&data), BTreeSet::from(["3".to_string()]));
    let (status, body) = upload(&ns, &third, Some(token.trim()), dir.path());
    assert_eq!(status, "422", "the same bundle again: {body}");

    // A restart keeps the record, and removes what an interrupted install left.
    let mut rack = rack;
    rack.stop();
    std::fs::create_dir(data.join("generations/.staging-1-2")).unwrap();
    std::fs::create_dir(data.join("generations/7")).unwrap();
    // While it is stopped, the controller's part (a later step) is played by hand: one machine
    // is to run generation 3.
    let upgraded: MacAddr = "52:54:00:00:00:03".parse().unwrap();
    {
        let store = Store::open(&data).unwrap();
        let mut record = store.generations().unwrap();
        record.machines.insert(upgraded, MachineGenerations { desired: Some(3), ..Default::default() });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(store.save_generations(record, vec![])).unwrap();
    }
    let rack = Appliance::start(&ns, &config, &dir.path().join("serve2.log"));
    assert_eq!(on_disk(&data), BTreeSet::from(["3".to_string()]));
    assert_eq!(generations(&rack), vec![(0, "current".into()), (3, "available".into())]);

    // Its boot script names generation 3's files, served from the data partition; every other
    // machine's still names the shipped node image, as before.
    let script = http_get(&ns, &format!("/boot.ipxe?mac={}", upgraded.hyphenated()), dir.path());
    let script = String::from_utf8(script).unwrap();
    assert!(
        script.contains("/boot/generations/3/vmlinuz") && script.contains("/boot/generations/3/initrd.img"),
        "{script}"
    );
    let other = String::from_utf8(http_get(&ns, "/boot.ipxe?mac=52-54-00-00-00-04", dir.path())).unwrap();
    assert!(other.contains("/boot/node/vmlinuz") && !other.contains("generations"), "{other}");
    let kernel = http_get(&ns, "/boot/generations/3/vmlinuz", dir.path());
    assert_eq!(kernel, std::fs::read(trixie.join("vmlinuz")).unwrap());
    let status: serde_json::Value = serde_json::from_str(&rack.cli(&["update", "status", "--json"])).unwrap();
    let machines = status["machines"].as_array().unwrap();
    let seen = machines.iter().find(|m| m["mac"] == upgraded.to_string()).expect("the machine that fetched a script");
    assert_eq!((seen["served"].as_u64(), seen["desired"].as_u64()), (Some(3), Some(3)), "{status:#}");
}

/// GET `path` from the appliance's HTTP boot service with curl inside `ns`: the body (200 only).
fn http_get(ns: &Netns, path: &str, work: &Path) -> Vec<u8> {
    let out_file = work.join("http.out");
    let out = ns
        .command("curl")
        .args(["-s", "-o", out_file.to_str().unwrap(), "-w", "%{http_code}"])
        .arg(format!("http://10.0.0.1{path}"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "GET {path}");
    std::fs::read(&out_file).unwrap()
}

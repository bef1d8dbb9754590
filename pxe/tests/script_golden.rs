//! The iPXE scripts, compared byte for byte with `tests/golden/*.ipxe`.
//!
//! After an intended change to a script, rewrite the files with
//! `OASIS_UPDATE_GOLDEN=1 cargo test -p oasis-pxe --test script_golden` and review the diff.

use std::path::PathBuf;

use oasis_proto::MacAddr;
use oasis_pxe::script::{BootProfile, ScriptRenderer};

const MAC: &str = "52:54:00:12:34:56";
const PIN: &str = "sha256:5f0c6d1e8a3b2c4d9e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d";
/// What the appliance adds for one boot of one machine: its per-boot token.
const PER_BOOT: &str = "oasis.token=0f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn renderer(initrd: bool) -> ScriptRenderer {
    let profile = BootProfile {
        kernel: "node/vmlinuz-6.1.0-amd64".into(),
        initrd: initrd.then(|| "node/initrd.img-6.1.0 amd64".into()),
        cmdline: format!("console=ttyS0,115200 oasis.api=https://10.0.0.1:8443 oasis.pin={PIN} ip=${{net0/ip}}"),
    };
    profile.validate().expect("the golden profile is valid");
    ScriptRenderer::new("http://10.0.0.1:8080".into(), profile)
}

fn check(name: &str, actual: &str) {
    oasis_testkit::assert_golden(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name), actual);
}

#[test]
fn boot_script() {
    check("boot.ipxe", &renderer(true).render_boot_with(MAC.parse::<MacAddr>().unwrap(), PER_BOOT).unwrap());
}

#[test]
fn boot_script_without_initrd() {
    let script = renderer(false).render_boot_with(MAC.parse::<MacAddr>().unwrap(), PER_BOOT).unwrap();
    check("boot-no-initrd.ipxe", &script);
}

#[test]
fn chain_script() {
    check("chain.ipxe", &renderer(true).render_chain());
}

#[test]
fn local_script() {
    check("local.ipxe", &renderer(true).render_local(MAC.parse::<MacAddr>().unwrap()));
}

//! `buildroot-overlay/` is a valid Buildroot br2-external tree, and the check finds what breaks
//! one: each broken tree here is a temporary copy of the real one with one thing wrong, and the
//! check must name the file and the fault.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use oasis_image::buildroot_tree::{self, OASIS_TREE};

#[test]
fn the_oasis_tree_is_valid() {
    let tree = buildroot_tree::check(Path::new(OASIS_TREE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tree.name, "OASIS");
    assert!(!tree.desc.is_empty());
    assert_eq!(tree.packages, ["oasis"]);
    assert_eq!(tree.defconfigs, ["oasis_appliance_defconfig", "oasis_node_defconfig"]);
}

/// A copy of the real tree, with permissions kept.
fn copy_tree() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(Path::new(OASIS_TREE), dir.path());
    // The appliance's overlay comes from another branch (the boot supervisor's); until it is
    // merged, the copy gets a stand-in so that these tests exercise the check, not the merge order.
    let appliance_init = dir.path().join("appliance-overlay/init");
    if !appliance_init.exists() {
        fs::create_dir_all(appliance_init.parent().unwrap()).unwrap();
        fs::write(&appliance_init, "#!/bin/sh\nexec /usr/bin/oasis boot\n").unwrap();
        fs::set_permissions(&appliance_init, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The copy must be valid to begin with, or a test below could pass for the wrong reason.
    buildroot_tree::check(dir.path()).unwrap_or_else(|e| panic!("the unmodified copy: {e}"));
    dir
}

fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// The check fails, and one problem is about `file` and says `wanted`.
fn assert_refused(root: &Path, file: &str, wanted: &str) {
    let err = buildroot_tree::check(root).expect_err("a broken tree was accepted");
    assert!(
        err.problems.iter().any(|p| p.file == Path::new(file) && p.message.contains(wanted)),
        "wanted a problem in {file} saying {wanted:?}, got:\n{err}"
    );
    // The whole error names the file too, for the person reading CI's log.
    assert!(err.to_string().contains(file), "{err}");
}

#[test]
fn a_missing_package_config_in_is_refused() {
    let tree = copy_tree();
    fs::remove_file(tree.path().join("package/oasis/Config.in")).unwrap();
    assert_refused(tree.path(), "Config.in", "sources package/oasis/Config.in, which does not exist");
    assert_refused(tree.path(), "package/oasis/Config.in", "missing");
}

#[test]
fn a_missing_overlay_named_by_a_defconfig_is_refused() {
    let tree = copy_tree();
    fs::remove_dir_all(tree.path().join("rootfs-overlay")).unwrap();
    assert_refused(
        tree.path(),
        "configs/oasis_appliance_defconfig",
        "BR2_ROOTFS_OVERLAY names rootfs-overlay, which does not exist",
    );
}

#[test]
fn a_missing_external_desc_is_refused() {
    let tree = copy_tree();
    fs::remove_file(tree.path().join("external.desc")).unwrap();
    assert_refused(tree.path(), "external.desc", "missing");
}

#[test]
fn a_bad_tree_name_is_refused() {
    let tree = copy_tree();
    edit(tree.path(), "external.desc", "name: OASIS", "name: OASIS-TREE");
    assert_refused(tree.path(), "external.desc", "may only use A-Z, a-z, 0-9 and _");
    // Every reference to $BR2_EXTERNAL_OASIS_PATH now names a variable Buildroot does not set.
    assert_refused(tree.path(), "Config.in", "is not under the tree");
}

#[test]
fn a_package_not_sourced_or_not_included_is_refused() {
    let tree = copy_tree();
    fs::write(tree.path().join("Config.in"), "").unwrap();
    fs::write(tree.path().join("external.mk"), "").unwrap();
    assert_refused(tree.path(), "Config.in", "does not source package/oasis/Config.in");
    assert_refused(tree.path(), "external.mk", "does not include package/oasis/oasis.mk");
}

#[test]
fn a_foreign_variable_or_a_missing_infrastructure_call_is_refused() {
    let tree = copy_tree();
    edit(tree.path(), "package/oasis/oasis.mk", "OASIS_LICENSE = ", "LICENSE = ");
    edit(tree.path(), "package/oasis/oasis.mk", "$(eval $(cargo-package))", "");
    assert_refused(tree.path(), "package/oasis/oasis.mk", "variable `LICENSE` does not start with OASIS_");
    assert_refused(tree.path(), "package/oasis/oasis.mk", "must call a package infrastructure");
}

#[test]
fn an_undefined_option_or_a_malformed_line_in_a_defconfig_is_refused() {
    let tree = copy_tree();
    let defconfig = "configs/oasis_node_defconfig";
    edit(tree.path(), defconfig, "BR2_PACKAGE_OASIS_AGENT=y", "BR2_PACKAGE_OASIS_AGNET=y");
    edit(tree.path(), defconfig, "BR2_x86_64=y", "BR2_x86_64 = y");
    assert_refused(tree.path(), defconfig, "BR2_PACKAGE_OASIS_AGNET is not defined in any Config.in");
    assert_refused(tree.path(), defconfig, "is not a Buildroot option name");
}

#[test]
fn a_broken_or_unexecutable_script_is_refused() {
    let tree = copy_tree();
    let script = tree.path().join("board/oasis/post-image.sh");
    edit(tree.path(), "board/oasis/post-image.sh", "set -eu", "set -eu\nif true; then");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o644)).unwrap();
    assert_refused(tree.path(), "board/oasis/post-image.sh", "`sh -n` finds a syntax error");
    assert_refused(tree.path(), "board/oasis/post-image.sh", "not executable");
    assert_refused(tree.path(), "configs/oasis_appliance_defconfig", "which is not executable");
}

#[test]
fn a_genimage_config_without_the_bios_boot_partition_is_refused() {
    let tree = copy_tree();
    edit(tree.path(), "board/oasis/genimage.cfg", "21686148-6449-6e6f-744e-656564454649", "L");
    assert_refused(tree.path(), "board/oasis/genimage.cfg", "must be the BIOS boot partition");
}

#[test]
fn an_unparsable_genimage_config_is_refused() {
    let tree = copy_tree();
    edit(tree.path(), "board/oasis/genimage.cfg", "size = 1022M\n\ttemporary", "size 1022M\n\ttemporary");
    assert_refused(tree.path(), "board/oasis/genimage.cfg", "genimage cannot parse it");
}

//! [`GRUB_CHOICE_SCRIPT`] run by GRUB itself (`grub-emu`, Debian package `grub-emu`) on
//! environment blocks in a FAT disk image, against [`grub_choice`]: the slot, the trial flag, and
//! the block GRUB's `save_env` leaves on the disk.

use std::io::{Cursor, Read, Write};
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;

use super::*;

/// GRUB's answer: the boot, and the block left on the disk.
fn run_grub(dir: &Path, env: &SlotEnv) -> (Boot, SlotEnv) {
    let disk = dir.join("disk.img");
    std::fs::write(&disk, fat_with_grubenv(&env.grub_env().render().unwrap())).unwrap();
    std::fs::write(dir.join("device.map"), format!("(hd0) {}\n", disk.display())).unwrap();
    std::fs::create_dir_all(dir.join("grub")).unwrap();
    let cfg = format!(
        "set envfile=(hd0)/grubenv\n{GRUB_CHOICE_SCRIPT}echo \"CHOICE slot=$oasis_slot trial=$oasis_trial\"\nhalt\n"
    );
    std::fs::write(dir.join("grub/grub.cfg"), cfg).unwrap();
    let out = Command::new("grub-emu")
        .arg("--directory")
        .arg(dir.join("grub"))
        .args(["--root", "host", "--device-map"])
        .arg(dir.join("device.map"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("grub-emu runs GRUB's script in a test (apt-get install grub-emu)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let choice = text.split("CHOICE ").nth(1).and_then(|rest| rest.get(..14));
    let boot = match choice {
        Some("slot=A trial=0") => Boot { slot: Slot::A, trial: false },
        Some("slot=A trial=1") => Boot { slot: Slot::A, trial: true },
        Some("slot=B trial=0") => Boot { slot: Slot::B, trial: false },
        Some("slot=B trial=1") => Boot { slot: Slot::B, trial: true },
        _ => panic!("grub-emu did not print its choice: {text:?}"),
    };
    let after = GrubEnv::parse(&grubenv_in(std::fs::read(&disk).unwrap())).unwrap();
    (boot, SlotEnv::new(after))
}

fn fat_with_grubenv(block: &[u8]) -> Vec<u8> {
    let mut image = Cursor::new(vec![0u8; 4 << 20]);
    fatfs::format_volume(&mut image, fatfs::FormatVolumeOptions::new()).unwrap();
    {
        let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new()).unwrap();
        fs.root_dir().create_file("grubenv").unwrap().write_all(block).unwrap();
    }
    image.into_inner()
}

fn grubenv_in(image: Vec<u8>) -> Vec<u8> {
    let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
    let mut block = Vec::new();
    fs.root_dir().open_file("grubenv").unwrap().read_to_end(&mut block).unwrap();
    block
}

fn var(values: &'static [&'static str]) -> impl Strategy<Value = Option<&'static str>> {
    prop::option::weighted(0.8, prop::sample::select(values))
}

/// Blocks with the slot variables set, missing, or set to what oasis never writes.
fn slot_env() -> impl Strategy<Value = SlotEnv> {
    let order = var(&["A B", "B A", "B", "A", "", "B  A", "X B A", "a b", "B\tA"]);
    const OK: &[&str] = &["1", "0", "", "yes", "11", " 1"];
    const LEFT: &[&str] = &["", "t", "tt", "ttt", "x", "tx", "xt", "T"];
    (order, var(OK), var(OK), var(LEFT), var(LEFT)).prop_map(|(order, a_ok, b_ok, a_left, b_left)| {
        let mut env = GrubEnv::default();
        let vars = [("ORDER", order), ("A_OK", a_ok), ("B_OK", b_ok), ("A_LEFT", a_left), ("B_LEFT", b_left)];
        for (name, value) in vars {
            if let Some(value) = value {
                env.set(name, value).unwrap();
            }
        }
        SlotEnv::new(env)
    })
}

#[test]
fn grub_runs_the_script_as_modelled_on_an_update_and_its_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = SlotEnv::new(GrubEnv::default()).prepare_write(Slot::B, Slot::A).unwrap();
    env = env.arm(Slot::B, 2, Slot::A).unwrap();
    let mut boots = Vec::new();
    for _ in 0..4 {
        let (boot, after) = run_grub(dir.path(), &env);
        assert_eq!((boot, &after), (grub_choice(&env).0, &grub_choice(&env).1));
        boots.push(boot);
        env = after;
    }
    let (a, b_trial) = (Boot { slot: Slot::A, trial: false }, Boot { slot: Slot::B, trial: true });
    assert_eq!(boots, [b_trial, b_trial, a, a]);
}

proptest! {
    // Each case starts GRUB once (a few tens of milliseconds).
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn grub_runs_the_script_as_modelled(env in slot_env()) {
        let dir = tempfile::tempdir().unwrap();
        let grub = run_grub(dir.path(), &env);
        prop_assert_eq!(grub, grub_choice(&env));
    }
}

//! Installing an appliance update into the slot that is not running, one checked step at a time:
//!
//! 1. the running slot must be committed ([`SlotEnv::prepare_write`] refuses otherwise), and the
//!    slot device must be exactly the size the bundle's image was made for;
//! 2. the environment block is rewritten so GRUB never chooses the slot about to be written
//!    (not OK, no tries, the running slot first);
//! 3. the slot image (verified with its bundle) is written over the inactive slot's device and
//!    synced; nothing else on the disk is written;
//! 4. the slot is read back and its SHA-256 compared with the signed manifest's;
//! 5. the trial record is written, then the block arms the slot for [`TRIES`] boots.
//!
//! A power cut before 5 leaves the running slot first and committed: the appliance boots as
//! before and the update can be applied again. After 5 the next boot tries the new slot.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{
    read, write_in_place, write_in_place_pausing, EnvFileError, Slot, TransitionError, TrialError, TrialRecord,
};

/// The boots a new slot is given to prove itself (a power cut during the first is forgiven).
pub const TRIES: u8 = 2;

/// How long the test fault `slow-slot-arm` pauses inside the arm's write.
const PAUSE_MID_ARM: std::time::Duration = std::time::Duration::from_secs(5);

/// The slot image an update brings, as its signed manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateImage {
    /// The image file (the bundle's staged member).
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// The size of the slot partition it was made for.
    pub slot_bytes: u64,
    /// The appliance version it holds.
    pub version: String,
}

/// Where the update goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The slot running now.
    pub running: Slot,
    /// The version running now.
    pub running_version: String,
    /// The other slot's partition (a block device; a file in tests).
    pub device: PathBuf,
    /// The environment block on the mounted ESP.
    pub grubenv: PathBuf,
    /// The data directory (for the trial record).
    pub data_dir: PathBuf,
    /// The machines linked now, which the trial's health check waits for.
    pub linked: Vec<String>,
    /// A test fault: the arm is written in two halves with a pause between
    /// ([`write_in_place_pausing`]).
    pub pause_mid_arm: bool,
}

/// Why an update was not installed. Every step before arming leaves the running slot chosen.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(transparent)]
    Slots(#[from] TransitionError),
    #[error(transparent)]
    Env(#[from] EnvFileError),
    #[error(transparent)]
    Trial(#[from] TrialError),
    #[error("slot {slot}'s partition is {found} bytes, the update was made for {expected}: this appliance's disk layout differs; write the new appliance image over its disk instead (its data is kept)")]
    SlotSize { slot: Slot, found: u64, expected: u64 },
    #[error("the update's slot image is {size} bytes, more than slot {slot} holds ({slot_bytes}); rebuild the bundle")]
    TooLarge { slot: Slot, size: u64, slot_bytes: u64 },
    #[error("cannot write slot {slot} ({path}); the running slot is still the one chosen: check the appliance's disk, then apply the update again")]
    Write { slot: Slot, path: PathBuf, source: io::Error },
    #[error("slot {slot} does not read back as written (sha256 {found}, the update says {expected}): the disk may be failing; the running slot is still the one chosen")]
    ReadBack { slot: Slot, found: String, expected: String },
}

/// Installs `image` into the slot that is not running and arms it: see the module documentation.
/// Returns the slot armed; the caller reboots (now or when the operator chose).
pub fn install(image: &UpdateImage, target: &Target, now: u64) -> Result<Slot, InstallError> {
    let slot = target.running.other();
    let found = device_bytes(&target.device).map_err(|source| write_error(slot, &target.device, source))?;
    if found != image.slot_bytes {
        return Err(InstallError::SlotSize { slot, found, expected: image.slot_bytes });
    }
    if image.size > found {
        return Err(InstallError::TooLarge { slot, size: image.size, slot_bytes: found });
    }
    let env = read(&target.grubenv)?;
    write_in_place(&target.grubenv, &env.prepare_write(slot, target.running)?)?;
    copy_image(image, &target.device).map_err(|source| write_error(slot, &target.device, source))?;
    let back = hash_prefix(&target.device, image.size).map_err(|source| write_error(slot, &target.device, source))?;
    if back != image.sha256 {
        return Err(InstallError::ReadBack { slot, found: back, expected: image.sha256.clone() });
    }
    let record = TrialRecord {
        format: super::trial::FORMAT,
        slot,
        version: image.version.clone(),
        from_version: target.running_version.clone(),
        armed_at: now,
        tries: TRIES,
        verdict: None,
        linked: target.linked.clone(),
        fell_back: None,
        reboot_at: None,
    };
    record.write(&target.data_dir)?;
    // Read again: nothing else writes the block, but the arm must build on what is on disk.
    let env = read(&target.grubenv)?;
    let pause = || {
        // The serial console only (stderr): a test reads it there.
        eprintln!(
            "oasis boot: (a test fault) the arm of slot {slot} is half written in GRUB's block; the rest in {} s",
            PAUSE_MID_ARM.as_secs()
        );
        std::thread::sleep(PAUSE_MID_ARM);
    };
    let pause: Option<&dyn Fn()> = if target.pause_mid_arm { Some(&pause) } else { None };
    write_in_place_pausing(&target.grubenv, &env.arm(slot, TRIES, target.running)?, pause)?;
    Ok(slot)
}

fn write_error(slot: Slot, path: &Path, source: io::Error) -> InstallError {
    InstallError::Write { slot, path: path.to_path_buf(), source }
}

/// The size of a block device or file: its end, as seeking finds it (a block device's metadata
/// says 0).
pub(crate) fn device_bytes(path: &Path) -> io::Result<u64> {
    File::open(path)?.seek(SeekFrom::End(0))
}

/// Writes the image over the start of `device` without truncating it, and syncs.
fn copy_image(image: &UpdateImage, device: &Path) -> io::Result<()> {
    let mut input = File::open(&image.path)?.take(image.size);
    let mut out = OpenOptions::new().write(true).open(device)?;
    let copied = io::copy(&mut input, &mut out)?;
    if copied != image.size {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the image ended after {copied} bytes")));
    }
    out.flush()?;
    out.sync_all()
}

/// The SHA-256 of the first `len` bytes of `path`, read back from the device.
fn hash_prefix(path: &Path, len: u64) -> io::Result<String> {
    oasis_image::bundle_appliance::sha256_of(&mut File::open(path)?, 0, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{after_boot, grub_choice, Boot, BootVerdict};
    use oasis_image::grubenv::GrubEnv;
    use sha2::{Digest, Sha256};

    struct Rig {
        dir: tempfile::TempDir,
        target: Target,
        image: UpdateImage,
    }

    /// Slot A running and committed (a fresh image's block), slot B a 64 KiB "device" of old
    /// bytes, and a 40 KiB image for it.
    fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let grubenv = dir.path().join("grubenv");
        let mut env = GrubEnv::default();
        for (n, v) in [("ORDER", "A B"), ("A_OK", "1"), ("B_OK", "0"), ("A_LEFT", ""), ("B_LEFT", "")] {
            env.set(n, v).unwrap();
        }
        std::fs::write(&grubenv, env.render().unwrap()).unwrap();
        let device = dir.path().join("slot-b");
        std::fs::write(&device, vec![0xEEu8; 64 << 10]).unwrap();
        let bytes: Vec<u8> = (0..40u32 << 10).map(|i| (i % 251) as u8).collect();
        let path = dir.path().join("appliance-slot.img");
        std::fs::write(&path, &bytes).unwrap();
        let image = UpdateImage {
            path,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            slot_bytes: 64 << 10,
            version: "0.16.1".into(),
        };
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).unwrap();
        let target = Target {
            running: Slot::A,
            running_version: "0.16.0".into(),
            device,
            grubenv,
            data_dir,
            linked: vec![],
            pause_mid_arm: false,
        };
        Rig { dir, target, image }
    }

    /// The test fault `slow-slot-arm`: a power cut in its pause finds the first sector written
    /// and the second not, and that block already arms the slot (every variable is in the first
    /// sector), so GRUB reads one valid choice; afterwards the block is exactly the plain write's.
    #[test]
    fn an_arm_cut_between_its_two_sectors_leaves_a_valid_block() {
        let plain = rig();
        let rig = rig();
        install(&plain.image, &plain.target, 1000).unwrap();
        let target = Target { pause_mid_arm: true, ..rig.target.clone() };
        let before = std::fs::read(&target.grubenv).unwrap();
        let (grubenv, device) = (target.grubenv.clone(), target.device.clone());
        let watcher = std::thread::spawn(move || {
            // The arm's pause is the only time the block's first sector differs from what it
            // was after the slot was prepared while the second does not.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                let now = std::fs::read(&grubenv).unwrap();
                let armed = read(&grubenv).is_ok_and(|env| env.tries(Slot::B) > 0);
                if armed {
                    return (now, read(&grubenv).unwrap());
                }
                assert!(std::time::Instant::now() < deadline, "the arm never came; device {device:?}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        install(&rig.image, &target, 1000).unwrap();
        let (torn, env) = watcher.join().unwrap();
        assert_eq!(&torn[512..], &before[512..], "the second sector is still the old one");
        assert_eq!(grub_choice(&env).0, Boot { slot: Slot::B, trial: true }, "the half-written block arms the slot");
        assert_eq!(std::fs::read(&target.grubenv).unwrap(), std::fs::read(&plain.target.grubenv).unwrap());
    }

    #[test]
    fn the_other_slot_is_written_checked_and_armed_and_grub_then_tries_it() {
        let rig = rig();
        assert_eq!(install(&rig.image, &rig.target, 1000).unwrap(), Slot::B);
        let written = std::fs::read(&rig.target.device).unwrap();
        assert_eq!(written.len(), 64 << 10, "the device keeps its size");
        assert_eq!(&written[..rig.image.size as usize], &std::fs::read(&rig.image.path).unwrap()[..]);
        let record = TrialRecord::read(&rig.target.data_dir).unwrap().unwrap();
        assert_eq!((record.slot, record.version.as_str(), record.from_version.as_str()), (Slot::B, "0.16.1", "0.16.0"));
        let env = read(&rig.target.grubenv).unwrap();
        let (boot, after) = grub_choice(&env);
        assert_eq!(boot, Boot { slot: Slot::B, trial: true });
        assert_eq!(after_boot(boot, &after), BootVerdict::Trial { tries_left: usize::from(TRIES) - 1 });
        assert!(rig.dir.path().join("data/update").is_dir());
    }

    #[test]
    fn a_slot_that_reads_back_wrong_is_never_armed() {
        let mut rig = rig();
        rig.image.sha256 = "0".repeat(64);
        assert!(matches!(install(&rig.image, &rig.target, 1000), Err(InstallError::ReadBack { .. })));
        let env = read(&rig.target.grubenv).unwrap();
        assert_eq!(grub_choice(&env).0, Boot { slot: Slot::A, trial: false }, "the running slot stays chosen");
        assert!(TrialRecord::read(&rig.target.data_dir).unwrap().is_none());
    }

    #[test]
    fn a_slot_of_another_size_or_an_uncommitted_running_slot_is_refused_before_any_write() {
        let mut rig = rig();
        rig.image.slot_bytes = 128 << 10;
        let before = std::fs::read(&rig.target.device).unwrap();
        let env_before = std::fs::read(&rig.target.grubenv).unwrap();
        let err = install(&rig.image, &rig.target, 1000).unwrap_err();
        assert!(matches!(err, InstallError::SlotSize { found: 65536, expected: 131072, .. }), "{err}");
        assert!(err.to_string().contains("its data is kept"), "{err}");
        assert_eq!(std::fs::read(&rig.target.grubenv).unwrap(), env_before, "the block is untouched");
        rig.image.slot_bytes = 64 << 10;
        // A trial of B is running: A may not be written over.
        rig.target.running = Slot::B;
        let mut env = GrubEnv::default();
        for (n, v) in [("ORDER", "B A"), ("A_OK", "1"), ("B_OK", "0"), ("B_LEFT", "t")] {
            env.set(n, v).unwrap();
        }
        std::fs::write(&rig.target.grubenv, env.render().unwrap()).unwrap();
        let err = install(&rig.image, &rig.target, 1000).unwrap_err();
        assert!(matches!(err, InstallError::Slots(TransitionError::NotCommitted(Slot::B))), "{err}");
        assert_eq!(std::fs::read(&rig.target.device).unwrap(), before, "nothing written");
    }
}

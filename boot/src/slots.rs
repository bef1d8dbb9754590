//! The appliance's side of the A/B boot slots: what GRUB chose, the environment block GRUB
//! chooses from, and the changes the supervisor makes to it (write, arm, commit, fall back).
//!
//! GRUB's `grub.cfg` chooses the slot from `boot/grub/grubenv` on the ESP ([`oasis_image::grubenv`]
//! is the block's format) and tells the kernel with `oasis.slot=A|B oasis.trial=0|1` ([`Boot`]).
//! The variables, read as that script reads them ([`SlotEnv`]):
//!
//! | variable | meaning | when missing |
//! |---|---|---|
//! | `ORDER` | `"A B"` or `"B A"`: the preferred slot first | `"A B"` |
//! | `A_OK`, `B_OK` | `"1"`: the slot is committed good; any other value: it is not | `A_OK=1`, `B_OK=0` |
//! | `A_LEFT`, `B_LEFT` | boot tries left for an uncommitted slot, one `t` each (GRUB script has no arithmetic) | empty |
//!
//! The script `grub.cfg` runs is [`GRUB_CHOICE_SCRIPT`]; [`grub_choice`] mirrors it, and a test
//! runs the script in GRUB itself (`grub-emu`) against the mirror.
//!
//! So a slot's tries left are its `LEFT`'s leading `t`s (`"ttx"`: two), and a slot is taken by the
//! first word of `ORDER` naming it that finds it OK or with a try left.
//!
//! Every change here is a pure function from one [`SlotEnv`] to the next; [`read`] and
//! [`write_in_place`] move it to and from the file, always at the block's fixed size (GRUB's
//! `save_env` writes through the file's blocklist and never resizes it). Every variable is in the
//! block's first sector, so a power cut mid-write leaves the old choice or the new one.
//!
//! The [`trial`] record on the data partition says what was armed and, if the trial boot gave
//! up, why; [`fallback_reason`] turns it into the sentence a fallen-back appliance shows.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oasis_image::grubenv::{self, GrubEnv, GrubEnvError};

pub mod install;
pub mod trial;
pub use trial::{fallback_reason, TrialError, TrialRecord, TrialVerdict};

#[cfg(test)]
mod grub_emu;
#[cfg(test)]
mod tests;

/// The script `grub.cfg` runs to choose the slot (with `envfile` set to the block), which
/// [`grub_choice`] mirrors: the test `grub_runs_the_script_as_modelled` runs it in `grub-emu`.
pub use oasis_image::grub::SLOT_CHOICE_SCRIPT as GRUB_CHOICE_SCRIPT;

/// The most boot tries [`SlotEnv::arm`] gives a slot.
pub const MAX_TRIES: u8 = 3;

pub use oasis_image::appliance::Slot;

/// A slot's `OK` variable in the block.
fn ok_var(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "A_OK",
        Slot::B => "B_OK",
    }
}

/// A slot's `LEFT` variable (tries left) in the block.
fn left_var(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "A_LEFT",
        Slot::B => "B_LEFT",
    }
}

/// What GRUB booted, from the kernel command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// The slot running (`oasis.slot`; a disk from before slots says nothing: A).
    pub slot: Slot,
    /// A trial boot of an uncommitted slot (`oasis.trial=1`).
    pub trial: bool,
}

/// A kernel command line GRUB's `grub.cfg` did not write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootError {
    /// `oasis.slot=` names no slot.
    #[error("the kernel command line says oasis.slot={0:?}, not A or B: the boot disk's grub.cfg is not oasis's; rebuild the image")]
    Slot(String),
    /// `oasis.trial=` is not 0 or 1.
    #[error("the kernel command line says oasis.trial={0:?}, not 0 or 1: the boot disk's grub.cfg is not oasis's; rebuild the image")]
    Trial(String),
}

impl Boot {
    /// Reads `/proc/cmdline`'s text. A parameter given twice counts as its last value.
    pub fn parse(cmdline: &str) -> Result<Boot, BootError> {
        let mut boot = Boot { slot: Slot::A, trial: false };
        for word in cmdline.split_ascii_whitespace() {
            if let Some(value) = word.strip_prefix("oasis.slot=") {
                boot.slot = Slot::from_letter(value).ok_or_else(|| BootError::Slot(value.to_string()))?;
            } else if let Some(value) = word.strip_prefix("oasis.trial=") {
                boot.trial = match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(BootError::Trial(value.to_string())),
                };
            }
        }
        Ok(boot)
    }
}

/// A change of the slots the running system must not make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The slot to write or arm is the one running.
    #[error("slot {0} is the one running: only the other slot can be written or armed")]
    Running(Slot),
    /// The running slot is not committed, so nothing would be left to fall back to.
    #[error("slot {0} runs but is not committed: wait until its health check commits it (or it falls back) before writing the other slot")]
    NotCommitted(Slot),
    /// Tries outside 1..=MAX_TRIES.
    #[error("{0} boot tries: arm a slot with 1 to {MAX_TRIES}")]
    Tries(u8),
}

/// What this boot is, from the kernel command line and the environment GRUB left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootVerdict {
    /// Running a committed slot.
    Committed,
    /// A trial boot of an uncommitted slot: commit it once healthy; `tries_left` more boots are
    /// tried after this one before GRUB falls back.
    Trial {
        /// Tries GRUB has left (it took this boot's already).
        tries_left: usize,
    },
    /// `ORDER` prefers `from`, which is not committed and has no tries left: its trial failed
    /// and GRUB fell back to the running slot. Report it, then [`SlotEnv::acknowledge_fallback`].
    FellBack {
        /// The slot whose trial failed.
        from: Slot,
    },
    /// No slot is committed or has tries left, so GRUB booted slot A as its last resort.
    LastResort,
}

/// The slot variables of a GRUB environment block, read as `grub.cfg` reads them (see the
/// module's documentation). Other variables are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEnv {
    env: GrubEnv,
}

impl SlotEnv {
    /// The slot variables of `env`.
    pub fn new(env: GrubEnv) -> SlotEnv {
        SlotEnv { env }
    }

    /// The block, to render.
    pub fn grub_env(&self) -> &GrubEnv {
        &self.env
    }

    /// The raw `ORDER`, as GRUB sees it (default `"A B"`).
    fn order_text(&self) -> &str {
        self.env.get("ORDER").unwrap_or("A B")
    }

    /// The slots `ORDER` names, in its order, as GRUB's `for` visits them (other words skipped).
    pub fn order(&self) -> Vec<Slot> {
        self.order_text().split_ascii_whitespace().filter_map(Slot::from_letter).collect()
    }

    /// The slot GRUB considers first, if `ORDER` names any.
    pub fn preferred(&self) -> Option<Slot> {
        self.order().first().copied()
    }

    /// Committed good: exactly `"1"` (defaults: A yes, B no).
    pub fn ok(&self, slot: Slot) -> bool {
        let default = if slot == Slot::A { "1" } else { "0" };
        self.env.get(ok_var(slot)).unwrap_or(default) == "1"
    }

    /// The slot's `LEFT` as GRUB sees it (default empty).
    fn left_text(&self, slot: Slot) -> &str {
        self.env.get(left_var(slot)).unwrap_or("")
    }

    /// Boot tries left: the leading `t`s of its `LEFT`.
    pub fn tries(&self, slot: Slot) -> usize {
        self.left_text(slot).bytes().take_while(|b| *b == b't').count()
    }

    fn with(mut self, name: &str, value: &str) -> SlotEnv {
        // The names are constants GRUB accepts, so `set` cannot fail.
        self.env.set(name, value).expect("slot variable names are GRUB names");
        self
    }

    fn with_first(self, slot: Slot) -> SlotEnv {
        let order = format!("{} {}", slot, slot.other());
        self.with("ORDER", &order)
    }

    fn check_running(&self, slot: Slot, running: Slot) -> Result<(), TransitionError> {
        if slot == running {
            return Err(TransitionError::Running(slot));
        }
        if !self.ok(running) {
            return Err(TransitionError::NotCommitted(running));
        }
        Ok(())
    }

    /// Before writing `inactive`: it is not OK and has no tries, and the running slot (committed)
    /// comes first, so a half-written slot is never chosen.
    pub fn prepare_write(&self, inactive: Slot, running: Slot) -> Result<SlotEnv, TransitionError> {
        self.check_running(inactive, running)?;
        Ok(self.clone().with(ok_var(inactive), "0").with(left_var(inactive), "").with_first(running))
    }

    /// Once `slot` is written and verified: it comes first, not OK, with `tries` boots to prove
    /// itself before GRUB falls back to the running (committed) slot.
    pub fn arm(&self, slot: Slot, tries: u8, running: Slot) -> Result<SlotEnv, TransitionError> {
        if tries == 0 || tries > MAX_TRIES {
            return Err(TransitionError::Tries(tries));
        }
        self.check_running(slot, running)?;
        let left = "t".repeat(usize::from(tries));
        Ok(self.clone().with(ok_var(slot), "0").with(left_var(slot), &left).with_first(slot))
    }

    /// The running slot proved healthy: committed and first. The other slot's OK stays as it is
    /// (committed, it remains the fallback).
    pub fn commit(&self, running: Slot) -> SlotEnv {
        self.clone().with(ok_var(running), "1").with(left_var(running), "").with_first(running)
    }

    /// A trial boot that failed its health check gives up its remaining tries, so the next boot
    /// falls back at once instead of trying a slot that will fail the same way.
    pub fn abandon(&self, running: Slot) -> SlotEnv {
        self.clone().with(left_var(running), "")
    }

    /// After a [`BootVerdict::FellBack`] is reported: the running slot first, the failed one not
    /// OK, so the fallback is not reported twice.
    pub fn acknowledge_fallback(&self, running: Slot) -> SlotEnv {
        let failed = running.other();
        self.clone().with(ok_var(failed), "0").with(left_var(failed), "").with_first(running)
    }
}

/// What this boot is: see [`BootVerdict`].
pub fn after_boot(boot: Boot, env: &SlotEnv) -> BootVerdict {
    let running = boot.slot;
    if let Some(first) = env.preferred() {
        if first != running && !env.ok(first) && env.tries(first) == 0 {
            return BootVerdict::FellBack { from: first };
        }
    }
    if env.ok(running) {
        BootVerdict::Committed
    } else if boot.trial {
        BootVerdict::Trial { tries_left: env.tries(running) }
    } else {
        BootVerdict::LastResort
    }
}

/// What GRUB's `grub.cfg` boots from `env`, and the environment it leaves (a trial boot strips
/// one `t` and saves it). Mirrors [`GRUB_CHOICE_SCRIPT`].
pub fn grub_choice(env: &SlotEnv) -> (Boot, SlotEnv) {
    for slot in env.order() {
        if env.ok(slot) {
            return (Boot { slot, trial: false }, env.clone());
        }
        if let Some(rest) = env.left_text(slot).strip_prefix('t') {
            let rest = rest.to_string();
            return (Boot { slot, trial: true }, env.clone().with(left_var(slot), &rest));
        }
    }
    (Boot { slot: Slot::A, trial: false }, env.clone())
}

/// Reading or writing the environment block's file failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The OS refused.
    #[error(
        "cannot read or write GRUB's environment block {path}: check that the boot partition is mounted and writable"
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not the size GRUB writes in place.
    #[error("GRUB's environment block {path} is {len} bytes, not {size}: it was not created by oasis or grub-editenv; it is left as it is (rebuild the boot partition)", size = grubenv::SIZE)]
    Size {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The block is not one GRUB reads.
    #[error("GRUB's environment block {path} cannot be read; it is left as it is (rebuild the boot partition)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: GrubEnvError,
    },
    /// The new block does not fit.
    #[error("the new environment block for {path} cannot be written; nothing was changed")]
    Render {
        /// The file.
        path: PathBuf,
        /// Why it does not fit.
        source: GrubEnvError,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EnvFileError + '_ {
    move |source| EnvFileError::Io { path: path.to_path_buf(), source }
}

fn check_size(path: &Path, file: &File) -> Result<(), EnvFileError> {
    let len = file.metadata().map_err(io_error(path))?.len();
    if len == grubenv::SIZE as u64 {
        Ok(())
    } else {
        Err(EnvFileError::Size { path: path.to_path_buf(), len })
    }
}

/// Reads the environment block at `path`.
pub fn read(path: &Path) -> Result<SlotEnv, EnvFileError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    check_size(path, &file)?;
    let mut bytes = Vec::with_capacity(grubenv::SIZE);
    file.read_to_end(&mut bytes).map_err(io_error(path))?;
    let env = GrubEnv::parse(&bytes).map_err(|source| EnvFileError::Parse { path: path.to_path_buf(), source })?;
    Ok(SlotEnv::new(env))
}

/// Writes `env` over the block at `path`, in place: the file must exist at exactly
/// [`grubenv::SIZE`] bytes (GRUB writes it through its blocklist, so it is never resized or
/// replaced), and is synced before this returns.
pub fn write_in_place(path: &Path, env: &SlotEnv) -> Result<(), EnvFileError> {
    write_in_place_pausing(path, env, None)
}

/// [`write_in_place`]; with `pause`, the block's first 512-byte sector is written and synced, then
/// `pause` runs, then the rest is written: a test fault, so that a power cut can land inside the
/// write (every variable GRUB reads is in the first sector, so either sector may be old or new).
pub fn write_in_place_pausing(path: &Path, env: &SlotEnv, pause: Option<&dyn Fn()>) -> Result<(), EnvFileError> {
    let bytes = env.env.render().map_err(|source| EnvFileError::Render { path: path.to_path_buf(), source })?;
    let file = OpenOptions::new().write(true).open(path).map_err(io_error(path))?;
    check_size(path, &file)?;
    let mut from = 0;
    if let Some(pause) = pause {
        from = 512;
        file.write_all_at(&bytes[..from], 0).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
        pause();
    }
    file.write_all_at(&bytes[from..], from as u64).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

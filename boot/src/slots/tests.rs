//! The slots: examples of each reading and change, the file written in place, and a property
//! test that runs the supervisor's changes, GRUB's choice and power cuts in any order.

use proptest::prelude::*;

use super::*;

fn env(vars: &[(&str, &str)]) -> SlotEnv {
    let mut env = GrubEnv::default();
    for (name, value) in vars {
        env.set(name, value).unwrap();
    }
    SlotEnv::new(env)
}

fn boot(slot: Slot, trial: bool) -> Boot {
    Boot { slot, trial }
}

#[test]
fn the_kernel_command_line_names_the_slot_and_a_disk_before_slots_is_a() {
    let parse = Boot::parse;
    assert_eq!(parse("console=ttyS0 oasis.slot=B oasis.trial=1 quiet\n"), Ok(boot(Slot::B, true)));
    assert_eq!(parse("oasis.slot=A oasis.trial=0"), Ok(boot(Slot::A, false)));
    assert_eq!(parse("console=ttyS0 quiet"), Ok(boot(Slot::A, false)));
    assert_eq!(parse("oasis.slot=A oasis.slot=B"), Ok(boot(Slot::B, false)), "the last one counts");
    assert_eq!(parse("oasis.slot=C"), Err(BootError::Slot("C".into())));
    assert_eq!(parse("oasis.slot=a"), Err(BootError::Slot("a".into())));
    assert_eq!(parse("oasis.slot=B oasis.trial=yes"), Err(BootError::Trial("yes".into())));
    assert!(BootError::Slot("C".into()).to_string().contains("rebuild the image"));
}

#[test]
fn missing_and_odd_values_read_as_grub_reads_them() {
    let empty = env(&[]);
    assert_eq!(empty.order(), [Slot::A, Slot::B]);
    assert!(empty.ok(Slot::A) && !empty.ok(Slot::B));
    assert_eq!((empty.tries(Slot::A), empty.tries(Slot::B)), (0, 0));
    let odd = env(&[("ORDER", " B  X A B"), ("A_OK", "yes"), ("B_OK", "1 "), ("A_LEFT", "ttxt"), ("B_LEFT", "xt")]);
    assert_eq!(odd.order(), [Slot::B, Slot::A, Slot::B], "words other than A and B are skipped");
    assert!(!odd.ok(Slot::A) && !odd.ok(Slot::B), "only exactly 1 is OK");
    assert_eq!((odd.tries(Slot::A), odd.tries(Slot::B)), (2, 0), "the leading t's");
    assert_eq!(env(&[("ORDER", "")]).preferred(), None);
    assert_eq!(grub_choice(&env(&[("ORDER", "")])).0, boot(Slot::A, false), "nothing named: slot A");
}

#[test]
fn grub_takes_the_first_slot_in_order_that_is_ok_or_has_a_try_left() {
    let (chosen, left) = grub_choice(&env(&[]));
    assert_eq!((chosen, left), (boot(Slot::A, false), env(&[])));
    let armed = env(&[("ORDER", "B A"), ("A_OK", "1"), ("B_OK", "0"), ("B_LEFT", "tt")]);
    let (chosen, after) = grub_choice(&armed);
    assert_eq!(chosen, boot(Slot::B, true));
    assert_eq!(after.grub_env().get("B_LEFT"), Some("t"), "one try taken and saved");
    let (chosen, after) = grub_choice(&after);
    assert_eq!((chosen, after.tries(Slot::B)), (boot(Slot::B, true), 0));
    assert_eq!(grub_choice(&after).0, boot(Slot::A, false), "tries spent: back to the committed slot");
    let odd_left = env(&[("ORDER", "B A"), ("B_OK", "0"), ("B_LEFT", "x")]);
    assert_eq!(grub_choice(&odd_left).0, boot(Slot::A, false));
    let neither = env(&[("ORDER", "B A"), ("A_OK", "0"), ("B_OK", "0")]);
    assert_eq!(grub_choice(&neither).0, boot(Slot::A, false), "nothing bootable: slot A");
    assert_eq!(after_boot(boot(Slot::A, false), &neither), BootVerdict::FellBack { from: Slot::B });
    let acknowledged = neither.acknowledge_fallback(Slot::A);
    assert_eq!(after_boot(boot(Slot::A, false), &acknowledged), BootVerdict::LastResort);
}

#[test]
fn an_update_is_written_armed_tried_and_committed() {
    let fresh = env(&[("ORDER", "A B"), ("A_OK", "1"), ("B_OK", "0")]);
    assert_eq!(after_boot(boot(Slot::A, false), &fresh), BootVerdict::Committed);
    let writing = fresh.prepare_write(Slot::B, Slot::A).unwrap();
    assert_eq!(grub_choice(&writing).0, boot(Slot::A, false));
    let armed = writing.arm(Slot::B, 2, Slot::A).unwrap();
    assert_eq!(armed.order(), [Slot::B, Slot::A]);
    assert_eq!((armed.ok(Slot::B), armed.tries(Slot::B)), (false, 2));
    let (chosen, trying) = grub_choice(&armed);
    assert_eq!(chosen, boot(Slot::B, true));
    assert_eq!(after_boot(chosen, &trying), BootVerdict::Trial { tries_left: 1 });
    let committed = trying.commit(Slot::B);
    assert_eq!(after_boot(chosen, &committed), BootVerdict::Committed);
    assert!(committed.ok(Slot::A), "the old slot stays the fallback");
    assert_eq!(grub_choice(&committed), (boot(Slot::B, false), committed.clone()));
    // The next update goes to A, now the inactive slot.
    let next = committed.prepare_write(Slot::A, Slot::B).unwrap();
    assert_eq!((next.ok(Slot::A), next.order()), (false, vec![Slot::B, Slot::A]));
}

#[test]
fn a_failed_trial_falls_back_and_is_reported_once() {
    let armed = env(&[]).prepare_write(Slot::B, Slot::A).unwrap().arm(Slot::B, 1, Slot::A).unwrap();
    let (chosen, trying) = grub_choice(&armed);
    assert_eq!(after_boot(chosen, &trying), BootVerdict::Trial { tries_left: 0 });
    let (chosen, fell_back) = grub_choice(&trying);
    assert_eq!(chosen, boot(Slot::A, false));
    assert_eq!(after_boot(chosen, &fell_back), BootVerdict::FellBack { from: Slot::B });
    let acknowledged = fell_back.acknowledge_fallback(Slot::A);
    assert_eq!(after_boot(chosen, &acknowledged), BootVerdict::Committed);
    assert_eq!(acknowledged.order(), [Slot::A, Slot::B]);
    // A trial that fails its health check gives up its other tries.
    let armed = env(&[]).arm(Slot::B, 3, Slot::A).unwrap();
    let (chosen, trying) = grub_choice(&armed);
    let gave_up = trying.abandon(chosen.slot);
    assert_eq!(grub_choice(&gave_up).0, boot(Slot::A, false));
    assert_eq!(after_boot(boot(Slot::A, false), &gave_up), BootVerdict::FellBack { from: Slot::B });
}

#[test]
fn the_running_slot_is_never_written_or_armed_and_tries_are_bounded() {
    let fresh = env(&[]);
    assert_eq!(fresh.prepare_write(Slot::A, Slot::A), Err(TransitionError::Running(Slot::A)));
    assert_eq!(fresh.arm(Slot::A, 1, Slot::A), Err(TransitionError::Running(Slot::A)));
    assert_eq!(fresh.arm(Slot::B, 0, Slot::A), Err(TransitionError::Tries(0)));
    assert_eq!(fresh.arm(Slot::B, 4, Slot::A), Err(TransitionError::Tries(4)));
    let trying = grub_choice(&fresh.arm(Slot::B, 2, Slot::A).unwrap()).1;
    assert_eq!(trying.prepare_write(Slot::A, Slot::B), Err(TransitionError::NotCommitted(Slot::B)));
    assert_eq!(trying.arm(Slot::A, 1, Slot::B), Err(TransitionError::NotCommitted(Slot::B)));
    assert!(TransitionError::NotCommitted(Slot::B).to_string().contains("wait until its health check"));
}

#[test]
fn other_variables_are_kept() {
    let with_other = env(&[("saved_entry", "0"), ("A_OK", "1")]);
    let committed = with_other.commit(Slot::A);
    assert_eq!(committed.grub_env().get("saved_entry"), Some("0"));
}

fn grubenv_file(dir: &Path, env: &SlotEnv) -> PathBuf {
    let path = dir.join("grubenv");
    std::fs::write(&path, env.grub_env().render().unwrap()).unwrap();
    path
}

#[test]
fn the_file_is_read_and_rewritten_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = grubenv_file(dir.path(), &env(&[]));
    let ino = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    let armed = read(&path).unwrap().arm(Slot::B, 2, Slot::A).unwrap();
    write_in_place(&path, &armed).unwrap();
    assert_eq!(read(&path).unwrap(), armed);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.len(), std::os::unix::fs::MetadataExt::ino(&meta)), (grubenv::SIZE as u64, ino));
}

#[test]
fn a_file_of_another_size_is_refused_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let mut short = env(&[]).grub_env().render().unwrap();
    short.truncate(600);
    std::fs::write(&path, &short).unwrap();
    let err = write_in_place(&path, &env(&[]).commit(Slot::A)).unwrap_err();
    assert!(matches!(err, EnvFileError::Size { len: 600, .. }), "{err:?}");
    assert!(err.to_string().contains("is 600 bytes, not 1024"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), short, "left as it was");
    assert!(matches!(read(&path), Err(EnvFileError::Size { len: 600, .. })));
    let missing = dir.path().join("none");
    assert!(matches!(write_in_place(&missing, &env(&[])), Err(EnvFileError::Io { .. })));
    assert!(!missing.exists(), "never created");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![b'x'; grubenv::SIZE]).unwrap();
    assert!(matches!(read(&garbage), Err(EnvFileError::Parse { .. })));
}

#[test]
fn a_block_too_long_for_one_sector_is_refused_before_the_file_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let before = env(&[]);
    let path = grubenv_file(dir.path(), &before);
    let long = env(&[("NOTE", &"x".repeat(600))]);
    assert!(matches!(write_in_place(&path, &long), Err(EnvFileError::Render { .. })));
    assert_eq!(read(&path).unwrap(), before);
}

#[test]
fn grub_editenv_reads_what_is_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let editenv = |args: &[&str]| {
        let out = std::process::Command::new("grub-editenv").arg(&path).args(args).output();
        let out = out.expect("grub-editenv (apt-get install grub-common)");
        assert!(out.status.success(), "grub-editenv {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    editenv(&["create"]);
    let armed = read(&path).unwrap().prepare_write(Slot::B, Slot::A).unwrap().arm(Slot::B, 3, Slot::A).unwrap();
    write_in_place(&path, &armed).unwrap();
    assert_eq!(editenv(&["list"]), "B_OK=0\nB_LEFT=ttt\nORDER=B A\n");
}

/// An armed slot GRUB has not yet given up on.
#[derive(Debug, Clone, Copy)]
struct Armed {
    slot: Slot,
    /// Tries the model expects GRUB to have left.
    left: usize,
    /// The committed slot it falls back to.
    fallback: Slot,
    /// GRUB fell back already.
    done: bool,
}

/// The supervisor's steps, GRUB's boots (a power cut, a watchdog, a reboot) and what GRUB
/// does when it finds the tries spent.
#[derive(Debug, Clone)]
enum Op {
    /// Start writing the inactive slot (with a good or a bad version).
    Write { healthy: bool },
    /// The write finished and was verified: arm it (tries out of range are refused).
    Arm { tries: u8 },
    /// A bug tries to arm the running slot.
    ArmRunning { tries: u8 },
    /// The health check: commits a healthy running slot; a failed one gives up its tries.
    HealthCheck,
    /// Report a fallback.
    Acknowledge,
    /// The machine restarts (reboot, watchdog, power cut) and GRUB chooses.
    Reboot,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => any::<bool>().prop_map(|healthy| Op::Write { healthy }),
        2 => (0u8..=4).prop_map(|tries| Op::Arm { tries }),
        1 => (0u8..=4).prop_map(|tries| Op::ArmRunning { tries }),
        2 => Just(Op::HealthCheck),
        1 => Just(Op::Acknowledge),
        4 => Just(Op::Reboot),
    ]
}

/// The appliance as the property test sees it.
#[derive(Debug, Clone)]
struct Sim {
    env: SlotEnv,
    boot: Boot,
    /// The version in each slot passes its health check.
    healthy: [bool; 2],
    /// A slot whose writing started and was not armed since: GRUB must never choose it. A new
    /// image's empty slot B is one.
    unfinished: Option<Slot>,
    /// A slot committed with nothing armed since: GRUB must choose it, not for a trial.
    committed: Option<Slot>,
    armed: Option<Armed>,
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

impl Sim {
    fn new(explicit: bool) -> Sim {
        let env = if explicit { env(&[("ORDER", "A B"), ("A_OK", "1"), ("B_OK", "0")]) } else { env(&[]) };
        let boot = grub_choice(&env).0;
        Sim { env, boot, healthy: [true, false], unfinished: Some(Slot::B), committed: Some(Slot::A), armed: None }
    }

    fn running(&self) -> Slot {
        self.boot.slot
    }

    fn verdict(&self) -> BootVerdict {
        after_boot(self.boot, &self.env)
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Write { healthy } => self.write(healthy),
            Op::Arm { tries } => self.arm(tries),
            Op::ArmRunning { tries } => {
                let refused = self.env.arm(self.running(), tries, self.running());
                prop_assert!(refused.is_err(), "arming the running slot was accepted");
                Ok(())
            }
            Op::HealthCheck => {
                self.health_check();
                Ok(())
            }
            Op::Acknowledge => self.acknowledge(),
            Op::Reboot => self.reboot(),
        }
    }

    fn write(&mut self, healthy: bool) -> Result<(), TestCaseError> {
        let (running, inactive) = (self.running(), self.running().other());
        match self.env.prepare_write(inactive, running) {
            Ok(env) => {
                self.env = env;
                self.unfinished = Some(inactive);
                self.healthy[index(inactive)] = healthy;
                self.committed = Some(running);
                self.armed = None;
            }
            Err(e) => prop_assert_eq!(e, TransitionError::NotCommitted(running)),
        }
        Ok(())
    }

    fn arm(&mut self, tries: u8) -> Result<(), TestCaseError> {
        let (running, inactive) = (self.running(), self.running().other());
        if self.unfinished != Some(inactive) {
            return Ok(()); // Nothing written to arm.
        }
        match self.env.arm(inactive, tries, running) {
            Ok(env) => {
                prop_assert!((1..=MAX_TRIES).contains(&tries) && self.env.ok(running));
                self.env = env;
                self.unfinished = None;
                self.committed = None;
                self.armed = Some(Armed { slot: inactive, left: usize::from(tries), fallback: running, done: false });
            }
            Err(TransitionError::Tries(t)) => prop_assert!(t == tries && !(1..=MAX_TRIES).contains(&tries)),
            Err(e) => prop_assert_eq!(e, TransitionError::NotCommitted(running)),
        }
        Ok(())
    }

    fn health_check(&mut self) {
        let running = self.running();
        match self.verdict() {
            BootVerdict::FellBack { .. } => {}
            _ if self.healthy[index(running)] => {
                self.env = self.env.commit(running);
                self.committed = Some(running);
                self.armed = None;
            }
            BootVerdict::Trial { .. } => {
                self.env = self.env.abandon(running);
                if let Some(armed) = self.armed.as_mut() {
                    armed.left = 0;
                }
            }
            _ => {}
        }
    }

    fn acknowledge(&mut self) -> Result<(), TestCaseError> {
        if let BootVerdict::FellBack { from } = self.verdict() {
            prop_assert_eq!(from, self.running().other());
            self.env = self.env.acknowledge_fallback(self.running());
            prop_assert_eq!(self.verdict(), BootVerdict::Committed, "reported once");
            self.committed = Some(self.running());
        }
        Ok(())
    }

    fn reboot(&mut self) -> Result<(), TestCaseError> {
        let (chosen, env) = grub_choice(&self.env);
        if let Some(armed) = self.armed.as_mut().filter(|a| !a.done) {
            if armed.left > 0 {
                prop_assert_eq!(chosen, boot(armed.slot, true), "a try left: the armed slot is tried");
                armed.left -= 1;
                prop_assert_eq!(after_boot(chosen, &env), BootVerdict::Trial { tries_left: armed.left });
            } else {
                prop_assert_eq!(chosen, boot(armed.fallback, false), "tries spent: back to the committed slot");
                prop_assert_eq!(after_boot(chosen, &env), BootVerdict::FellBack { from: armed.slot });
                armed.done = true;
            }
        } else if let Some(armed) = self.armed {
            prop_assert_ne!(chosen.slot, armed.slot, "a failed slot is not tried again");
        }
        self.env = env;
        self.boot = chosen;
        Ok(())
    }

    /// What must hold after every step, since a power cut may come after any of them.
    fn check(&self) -> Result<(), TestCaseError> {
        let bytes = self.env.grub_env().render();
        prop_assert!(bytes.is_ok(), "does not render in one sector: {:?}", bytes);
        let bytes = bytes.unwrap_or_default();
        prop_assert_eq!(&SlotEnv::new(GrubEnv::parse(&bytes)?), &self.env);
        let (chosen, _) = grub_choice(&self.env);
        prop_assert_ne!(Some(chosen.slot), self.unfinished, "GRUB would boot a slot not written whole");
        if let Some(slot) = self.committed {
            prop_assert_eq!(chosen, boot(slot, false), "the committed slot stays chosen");
        }
        prop_assert_ne!(self.verdict(), BootVerdict::LastResort, "always a committed slot to fall back to");
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_step_or_power_cut_leaves_grub_a_bad_choice(explicit in any::<bool>(), ops in prop::collection::vec(op(), 1..80)) {
        let mut sim = Sim::new(explicit);
        sim.check()?;
        for op in &ops {
            sim.apply(op)?;
            sim.check()?;
        }
    }
}

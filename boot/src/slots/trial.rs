//! The trial record, `update/trial.json` on the data partition: what was armed (slot, version,
//! the version it replaces, when, how many tries) and, if the trial boot gave up, why. The
//! appliance that fell back reads it to say what happened ([`fallback_reason`]).
//!
//! Written aside, synced, renamed and the directory synced, so a power cut leaves the old record
//! or the new one.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Slot;

/// The record's directory under the data dir.
pub const DIR: &str = "update";
/// The record's file name in [`DIR`].
pub const FILE: &str = "trial.json";
/// The record's format version.
pub const FORMAT: u32 = 1;

/// What was armed, and the trial boot's verdict if it gave up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The slot armed.
    pub slot: Slot,
    /// The appliance version written to it.
    pub version: String,
    /// The version running when it was armed (in the other slot).
    pub from_version: String,
    /// When it was armed (Unix seconds).
    pub armed_at: u64,
    /// The boot tries it was given.
    pub tries: u8,
    /// Written by the trial boot before it gives up; none if it never got that far.
    #[serde(default)]
    pub verdict: Option<TrialVerdict>,
    /// The machines whose management links were up when it was armed (their ids): the trial's
    /// health check waits for each to heartbeat again.
    #[serde(default)]
    pub linked: Vec<String>,
    /// Set by the appliance that came back to the other slot (or never armed this one): why this
    /// version is not running. A version that fell back is never written again by itself.
    #[serde(default)]
    pub fell_back: Option<String>,
    /// When the appliance reboots into the armed slot (Unix seconds; `[update]
    /// appliance_reboot_at`); none: at once.
    #[serde(default)]
    pub reboot_at: Option<u64>,
}

/// Why a trial boot gave up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TrialVerdict {
    /// The health check failed.
    HealthCheckFailed {
        /// What failed, as a phrase ("serve did not answer DHCP within 120 s").
        reason: String,
    },
}

impl std::fmt::Display for TrialVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrialVerdict::HealthCheckFailed { reason } => write!(f, "health check failed: {reason}"),
        }
    }
}

/// Reading or writing the trial record failed.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    /// The OS refused.
    #[error("cannot read or write the update's trial record {path}: check the data partition")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The record is not one this version reads.
    #[error("the update's trial record {path} cannot be read; remove it (it only says why an update fell back)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// Writing it aside, renaming or syncing failed.
    #[error("cannot write the update's trial record; check the data partition")]
    Write(#[source] oasis_image::ManifestError),
}

impl TrialRecord {
    /// Its path under the data dir.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(DIR).join(FILE)
    }

    /// The record, if there is one.
    pub fn read(data_dir: &Path) -> Result<Option<TrialRecord>, TrialError> {
        let path = Self::path(data_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TrialError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| TrialError::Parse { path, source })
    }

    /// Writes the record crash-safely, creating `update/` if needed.
    pub fn write(&self, data_dir: &Path) -> Result<(), TrialError> {
        let dir = data_dir.join(DIR);
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|source| TrialError::Io { path: dir.clone(), source })?;
            // The new directory's entry must survive a power cut too.
            File::open(data_dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| TrialError::Io { path: data_dir.to_path_buf(), source })?;
        }
        let mut text = serde_json::to_vec_pretty(self).expect("a record of strings and numbers serializes");
        text.push(b'\n');
        oasis_image::manifest::write_atomic(&Self::path(data_dir), &text).map_err(TrialError::Write)
    }

    /// The trial boot gives up: records why, keeping the rest. Without a record there is nothing
    /// to add to (an update armed by hand): `Ok(false)`.
    pub fn record_verdict(data_dir: &Path, verdict: TrialVerdict) -> Result<bool, TrialError> {
        match Self::read(data_dir)? {
            Some(record) => TrialRecord { verdict: Some(verdict), ..record }.write(data_dir).map(|()| true),
            None => Ok(false),
        }
    }
}

/// The sentence a fallen-back appliance shows (console, events, the stick's report): the trial of
/// `from` failed. `record` is the trial record, if any; one for another slot is not about this
/// trial and is ignored.
pub fn fallback_reason(record: Option<&TrialRecord>, from: Slot) -> String {
    let record = record.filter(|r| r.slot == from);
    let to = match record {
        Some(r) => format!("the update to oasis {} in slot {from}", r.version),
        None => format!("the update in slot {from}"),
    };
    let what = match record.and_then(|r| r.verdict.as_ref()) {
        Some(TrialVerdict::HealthCheckFailed { reason }) => format!("did not pass its health check ({reason})"),
        None => "did not finish booting (a hang or a crash; the watchdog or a power cut restarted it)".to_string(),
    };
    let back = match record {
        Some(r) => format!("back on oasis {} in slot {}", r.from_version, from.other()),
        None => format!("back in slot {}", from.other()),
    };
    format!("{to} {what}; {back}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TrialRecord {
        TrialRecord {
            format: FORMAT,
            slot: Slot::B,
            version: "0.16.2".into(),
            from_version: "0.16.1".into(),
            armed_at: 1_800_000_000,
            tries: 2,
            verdict: None,
            linked: vec![],
            fell_back: None,
            reboot_at: None,
        }
    }

    #[test]
    fn the_fallback_sentence_names_versions_slots_and_why() {
        let failed = TrialVerdict::HealthCheckFailed { reason: "serve did not answer DHCP within 120 s".into() };
        let with_verdict = TrialRecord { verdict: Some(failed), ..record() };
        assert_eq!(
            fallback_reason(Some(&with_verdict), Slot::B),
            "the update to oasis 0.16.2 in slot B did not pass its health check (serve did not answer DHCP \
             within 120 s); back on oasis 0.16.1 in slot A"
        );
        assert_eq!(
            fallback_reason(Some(&record()), Slot::B),
            "the update to oasis 0.16.2 in slot B did not finish booting (a hang or a crash; the watchdog or a \
             power cut restarted it); back on oasis 0.16.1 in slot A"
        );
    }

    #[test]
    fn without_a_record_for_that_slot_the_sentence_says_what_is_known() {
        let expected = "the update in slot A did not finish booting (a hang or a crash; the watchdog or a power cut \
                        restarted it); back in slot B";
        assert_eq!(fallback_reason(None, Slot::A), expected);
        // A record of slot B's trial says nothing about slot A's.
        assert_eq!(fallback_reason(Some(&record()), Slot::A), expected);
    }

    #[test]
    fn the_record_is_written_read_back_and_given_its_verdict() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(TrialRecord::read(data.path()).unwrap(), None);
        let failed = TrialVerdict::HealthCheckFailed { reason: "the store did not open".into() };
        assert!(!TrialRecord::record_verdict(data.path(), failed.clone()).unwrap(), "no record: nothing to add to");
        assert_eq!(TrialRecord::read(data.path()).unwrap(), None);
        record().write(data.path()).unwrap();
        assert_eq!(TrialRecord::read(data.path()).unwrap(), Some(record()));
        assert!(TrialRecord::record_verdict(data.path(), failed.clone()).unwrap());
        let read = TrialRecord::read(data.path()).unwrap().unwrap();
        assert_eq!(read, TrialRecord { verdict: Some(failed.clone()), ..record() });
        assert_eq!(failed.to_string(), "health check failed: the store did not open");
        let names: Vec<_> = std::fs::read_dir(data.path().join(DIR)).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE], "no temporary file left beside the record");
        let text = std::fs::read_to_string(TrialRecord::path(data.path())).unwrap();
        assert!(text.contains("\"kind\": \"health_check_failed\""), "{text}");
    }

    #[test]
    fn a_damaged_record_is_an_error_naming_the_file() {
        let data = tempfile::tempdir().unwrap();
        std::fs::create_dir(data.path().join(DIR)).unwrap();
        std::fs::write(TrialRecord::path(data.path()), "{\"slot\": \"C\"}").unwrap();
        let err = TrialRecord::read(data.path()).unwrap_err();
        assert!(matches!(err, TrialError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("update/trial.json"), "{err}");
    }
}

//! Whether a verified update bundle may be installed on this rack: the rules, without I/O.
//!
//! [`check_update`] takes what is installed and the bundle's authentic manifest
//! ([`oasis_image::bundle::read_bundle`] verified it) and refuses, with both versions named:
//! - another product or machine architecture;
//! - a sequence number not above the installed one (a rollback, or the same bundle again);
//! - an etcd version that skips a minor version (3.4 to 3.6; etcd upgrades one minor at a time),
//!   goes down a minor version (3.5 to 3.4; etcd's data is not downgraded that way) or changes the
//!   major version. Patch changes, up or down, are allowed.

use oasis_image::bundle::{BundleManifest, PRODUCT};
use serde::{Deserialize, Serialize};

/// What the rack runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The sequence number of the installed generation.
    pub sequence: u64,
    /// The installed etcd, as its package version (`3.4.23-4+b4`).
    pub etcd_version: String,
    /// The machines' architecture (`x86_64`).
    pub architecture: String,
}

/// An etcd version's numbers, read from an upstream (`3.5.16`, `v3.5.16`) or Debian
/// (`3.4.23-4+b4`, `1:3.5.16-4`) version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EtcdVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl EtcdVersion {
    /// The numbers of `text`; `None` when it does not start with `MAJOR.MINOR`.
    pub fn parse(text: &str) -> Option<EtcdVersion> {
        let text = text.trim();
        let text = text.split_once(':').filter(|(e, _)| e.bytes().all(|b| b.is_ascii_digit())).map_or(text, |(_, v)| v);
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.splitn(3, '.');
        let number = |part: Option<&str>| -> Option<u64> {
            let part = part?;
            let digits = part.find(|c: char| !c.is_ascii_digit()).map_or(part, |end| &part[..end]);
            digits.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        let patch = parts.next().map_or(Some(0), |p| number(Some(p)))?;
        Some(EtcdVersion { major, minor, patch })
    }
}

impl std::fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a bundle does to etcd, when it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdChange {
    /// The same version.
    Same,
    /// Another patch release of the same minor version.
    Patch,
    /// The next minor version: the cluster version moves once every member runs it.
    Minor,
}

/// Why a bundle may not be installed here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateRefusal {
    #[error("the bundle is for product {found:?}, this rack runs {PRODUCT:?}; give an oasis update bundle")]
    WrongProduct { found: String },
    #[error("the bundle is for {offered} machines, this rack's are {installed}; build it for {installed}")]
    WrongArchitecture { installed: String, offered: String },
    #[error("the bundle's sequence {offered} (version {version}) is not above the installed sequence {installed}: a rollback or the same update again is refused; build a bundle with a higher --sequence")]
    NotNewer { installed: u64, offered: u64, version: String },
    #[error("the bundle's etcd {offered} skips a minor version from the installed {installed}: etcd upgrades one minor version at a time; install a bundle with etcd {installed_major}.{next_minor} first")]
    EtcdMinorSkipped { installed: String, offered: String, installed_major: u64, next_minor: u64 },
    #[error("the bundle's etcd {offered} is a downgrade across minor versions from the installed {installed}, which etcd's data does not allow; build the bundle with etcd {installed} or newer")]
    EtcdDowngrade { installed: String, offered: String },
    #[error("the bundle's etcd {offered} changes the major version of the installed {installed}; oasis does not upgrade across etcd major versions")]
    EtcdMajorChange { installed: String, offered: String },
    #[error("cannot read the {which} etcd version {version:?} as MAJOR.MINOR.PATCH; {what_to_do}")]
    EtcdVersion { which: &'static str, version: String, what_to_do: &'static str },
    #[error("the bundle also updates the appliance itself (to {version}), but this oasis serve does not run from an appliance disk with two boot slots; apply it on the appliance, or build the bundle without --appliance")]
    NotAnAppliance { version: String },
    #[error("the bundle's appliance slot is for a slot of {offered} bytes, this appliance's slots are {here}: its disk layout differs; write the new appliance image over its disk instead (its data is kept)")]
    SlotSize { offered: u64, here: u64 },
    #[error("the appliance runs an update on trial (slot {slot}): wait until it commits or falls back, then apply the bundle again")]
    TrialRunning { slot: String },
}

/// What `oasis serve` knows of the appliance disk it runs from, as the supervisor wrote it at
/// boot; none off an appliance (a development host, an image from before the two slots).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceHere {
    /// The slot running (`A` or `B`).
    pub running: String,
    /// The appliance version running.
    pub version: String,
    /// Whether the running slot is committed (not an update on trial).
    pub committed: bool,
    /// The size of each slot partition, in bytes.
    pub slot_bytes: u64,
    /// The last update the appliance tried on itself, and how its trial ended; none before the
    /// first.
    #[serde(default)]
    pub last_trial: Option<LastTrial>,
    /// When the appliance reboots into the update written to its other slot (Unix seconds), if
    /// one is armed and the reboot is scheduled (`[update] appliance_reboot_at`).
    #[serde(default)]
    pub reboot_at: Option<u64>,
}

/// How the appliance's last update to itself went, as `oasis boot` recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastTrial {
    /// The version written to the other slot and tried.
    pub version: String,
    /// The version it was to replace.
    pub from_version: String,
    /// Why its trial failed and the appliance fell back; none while on trial or once committed.
    #[serde(default)]
    pub fell_back: Option<String>,
}

/// Where the appliance part of the installed bundle has got to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ApplianceUpdateState {
    /// Waiting for `oasis boot` to write it into the other slot and reboot into it.
    Waiting,
    /// Written to the other slot and armed: the appliance boots it at `reboot_at` (Unix
    /// seconds), or now.
    Armed { reboot_at: Option<u64> },
    /// Running on trial: it commits itself once its health check passes.
    OnTrial,
    /// Running and committed.
    Committed,
    /// Its trial failed and the appliance went back to the version before; never tried again.
    FellBack { reason: String },
}

impl std::fmt::Display for ApplianceUpdateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplianceUpdateState::Waiting => f.write_str("waiting to be written to the other boot slot"),
            ApplianceUpdateState::Armed { reboot_at: None } => {
                f.write_str("written to the other boot slot; the appliance reboots into it now")
            }
            ApplianceUpdateState::Armed { reboot_at: Some(at) } => write!(
                f,
                "written to the other boot slot; the appliance reboots into it at {:02}:{:02} UTC ([update] appliance_reboot_at)",
                at % 86_400 / 3600,
                at % 3600 / 60
            ),
            ApplianceUpdateState::OnTrial => f.write_str("running on trial, until its health check passes"),
            ApplianceUpdateState::Committed => f.write_str("committed"),
            ApplianceUpdateState::FellBack { reason } => write!(f, "fell back to the version before: {reason}"),
        }
    }
}

/// Where the appliance update to `version` stands on the appliance `here`.
pub fn appliance_update_state(version: &str, here: &ApplianceHere) -> ApplianceUpdateState {
    if here.version == version {
        return match here.committed {
            true => ApplianceUpdateState::Committed,
            false => ApplianceUpdateState::OnTrial,
        };
    }
    match &here.last_trial {
        Some(LastTrial { version: tried, fell_back: Some(reason), .. }) if tried == version => {
            ApplianceUpdateState::FellBack { reason: reason.clone() }
        }
        Some(LastTrial { version: tried, fell_back: None, .. }) if tried == version => {
            ApplianceUpdateState::Armed { reboot_at: here.reboot_at }
        }
        _ => ApplianceUpdateState::Waiting,
    }
}

/// Whether the appliance part of the bundle with `manifest`, if it has one, may be installed
/// on the appliance `here` describes.
pub fn check_appliance(manifest: &BundleManifest, here: Option<&ApplianceHere>) -> Result<(), UpdateRefusal> {
    let Some(part) = &manifest.appliance else { return Ok(()) };
    let Some(here) = here else { return Err(UpdateRefusal::NotAnAppliance { version: part.version.clone() }) };
    if part.slot_bytes != here.slot_bytes {
        return Err(UpdateRefusal::SlotSize { offered: part.slot_bytes, here: here.slot_bytes });
    }
    if !here.committed {
        return Err(UpdateRefusal::TrialRunning { slot: here.running.clone() });
    }
    Ok(())
}

/// Whether the bundle with `manifest` may be installed over `installed`; if so, what it does to etcd.
pub fn check_update(installed: &Installed, manifest: &BundleManifest) -> Result<EtcdChange, UpdateRefusal> {
    if manifest.product != PRODUCT {
        return Err(UpdateRefusal::WrongProduct { found: manifest.product.clone() });
    }
    if manifest.architecture != installed.architecture {
        return Err(UpdateRefusal::WrongArchitecture {
            installed: installed.architecture.clone(),
            offered: manifest.architecture.clone(),
        });
    }
    if manifest.sequence <= installed.sequence {
        return Err(UpdateRefusal::NotNewer {
            installed: installed.sequence,
            offered: manifest.sequence,
            version: manifest.version.clone(),
        });
    }
    etcd_change(&installed.etcd_version, &manifest.changes.etcd)
}

/// The etcd rules alone: from `installed` to `offered` (both package versions).
pub fn etcd_change(installed: &str, offered: &str) -> Result<EtcdChange, UpdateRefusal> {
    let from = EtcdVersion::parse(installed).ok_or_else(|| UpdateRefusal::EtcdVersion {
        which: "installed",
        version: installed.into(),
        what_to_do: "give the version `etcd --version` prints",
    })?;
    let to = EtcdVersion::parse(offered).ok_or_else(|| UpdateRefusal::EtcdVersion {
        which: "bundle's",
        version: offered.into(),
        what_to_do: "rebuild the bundle from a node image built by `oasis image build node`",
    })?;
    let names = || (installed.to_string(), offered.to_string());
    if to.major != from.major {
        let (installed, offered) = names();
        return Err(UpdateRefusal::EtcdMajorChange { installed, offered });
    }
    if to.minor > from.minor + 1 {
        let (installed, offered) = names();
        return Err(UpdateRefusal::EtcdMinorSkipped {
            installed,
            offered,
            installed_major: from.major,
            next_minor: from.minor + 1,
        });
    }
    if to.minor < from.minor {
        let (installed, offered) = names();
        return Err(UpdateRefusal::EtcdDowngrade { installed, offered });
    }
    Ok(match (to.minor > from.minor, to.patch != from.patch) {
        (true, _) => EtcdChange::Minor,
        (false, true) => EtcdChange::Patch,
        (false, false) => EtcdChange::Same,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oasis_image::bundle::{Changes, ARCHITECTURE};

    fn installed() -> Installed {
        Installed { sequence: 5, etcd_version: "3.4.23-4+b4".into(), architecture: ARCHITECTURE.into() }
    }

    fn manifest(sequence: u64, etcd: &str) -> BundleManifest {
        BundleManifest {
            product: PRODUCT.into(),
            version: "0.16.0".into(),
            sequence,
            architecture: ARCHITECTURE.into(),
            changes: Changes { kernel: "6.12.9-amd64".into(), agent: "0.16.0".into(), etcd: etcd.into(), k3s: None },
            members: Vec::new(),
            appliance: None,
        }
    }

    #[test]
    fn versions_parse_from_upstream_and_debian_forms() {
        let v = |major, minor, patch| Some(EtcdVersion { major, minor, patch });
        let cases = [
            ("3.4.23-4+b4", v(3, 4, 23)),
            ("3.5.16-4", v(3, 5, 16)),
            ("1:3.5.16-4", v(3, 5, 16)),
            ("v3.6.0", v(3, 6, 0)),
            ("3.5", v(3, 5, 0)),
            ("3.5.0~rc1", v(3, 5, 0)),
            ("", None),
            ("three", None),
            ("3", None),
            ("3.x.1", None),
        ];
        for (text, want) in cases {
            assert_eq!(EtcdVersion::parse(text), want, "{text:?}");
        }
    }

    #[test]
    fn the_etcd_rules_allow_one_minor_up_and_any_patch() {
        use EtcdChange::*;
        let ok = [
            ("3.4.23-4+b4", "3.5.16-4", Minor),
            ("3.4.23-4+b4", "3.4.30-1", Patch),
            ("3.4.30-1", "3.4.23-4+b4", Patch),
            ("3.4.23-4+b4", "3.4.23-4+b5", Same),
            ("3.5.16", "3.6.0", Minor),
        ];
        for (from, to, want) in ok {
            assert_eq!(etcd_change(from, to), Ok(want), "{from} -> {to}");
        }
        type Is = fn(&UpdateRefusal) -> bool;
        let refused: [(&str, &str, Is, &str); 5] = [
            ("3.4.23-4+b4", "3.6.0", |e| matches!(e, UpdateRefusal::EtcdMinorSkipped { .. }), "etcd 3.5 first"),
            ("3.5.16-4", "3.4.23-4+b4", |e| matches!(e, UpdateRefusal::EtcdDowngrade { .. }), "downgrade"),
            ("3.4.23", "4.0.0", |e| matches!(e, UpdateRefusal::EtcdMajorChange { .. }), "major"),
            ("3.4.23", "latest", |e| matches!(e, UpdateRefusal::EtcdVersion { which: "bundle's", .. }), "rebuild"),
            ("?", "3.4.23", |e| matches!(e, UpdateRefusal::EtcdVersion { which: "installed", .. }), "etcd --version"),
        ];
        for (from, to, is, words) in refused {
            let err = etcd_change(from, to).unwrap_err();
            let text = err.to_string();
            assert!(is(&err), "{from} -> {to}: {err:?}");
            // Both versions named; an unreadable one names itself.
            let named = match &err {
                UpdateRefusal::EtcdVersion { version, .. } => text.contains(&format!("{version:?}")),
                _ => text.contains(from) && text.contains(to),
            };
            assert!(named && text.contains(words), "{text}");
        }
    }

    #[test]
    fn a_bundle_must_be_newer_and_for_this_product_and_architecture() {
        assert_eq!(check_update(&installed(), &manifest(6, "3.5.16-4")), Ok(EtcdChange::Minor));
        for sequence in [5, 4, 0] {
            let err = check_update(&installed(), &manifest(sequence, "3.4.23-4+b4")).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, UpdateRefusal::NotNewer { installed: 5, .. }), "{err:?}");
            assert!(text.contains(&format!("sequence {sequence}")) && text.contains("installed sequence 5"), "{text}");
        }
        let mut other = manifest(6, "3.4.23");
        other.product = "k3os".into();
        assert!(check_update(&installed(), &other).unwrap_err().to_string().contains("\"k3os\""));
        let mut arm = manifest(6, "3.4.23");
        arm.architecture = "aarch64".into();
        let text = check_update(&installed(), &arm).unwrap_err().to_string();
        assert!(text.contains("aarch64") && text.contains("x86_64"), "{text}");
        // The etcd rules apply to a newer bundle too.
        let err = check_update(&installed(), &manifest(9, "3.6.1")).unwrap_err();
        assert!(matches!(err, UpdateRefusal::EtcdMinorSkipped { next_minor: 5, .. }), "{err:?}");
    }

    #[test]
    fn an_appliance_part_goes_only_to_a_committed_appliance_with_slots_of_its_size() {
        let node_only = manifest(6, "3.4.23");
        assert_eq!(check_appliance(&node_only, None), Ok(()), "a node-only bundle needs no appliance");
        let mut with = manifest(6, "3.4.23");
        with.appliance =
            Some(oasis_image::bundle_appliance::ApplianceChanges { version: "0.16.1".into(), slot_bytes: 1 << 30 });
        let here = ApplianceHere {
            running: "A".into(),
            version: "0.16.0".into(),
            committed: true,
            slot_bytes: 1 << 30,
            last_trial: None,
            reboot_at: None,
        };
        assert_eq!(check_appliance(&with, Some(&here)), Ok(()));
        let err = check_appliance(&with, None).unwrap_err();
        assert!(err.to_string().contains("without --appliance"), "{err}");
        let other = ApplianceHere { slot_bytes: 1 << 29, ..here.clone() };
        assert_eq!(
            check_appliance(&with, Some(&other)),
            Err(UpdateRefusal::SlotSize { offered: 1 << 30, here: 1 << 29 })
        );
        let trial = ApplianceHere { running: "B".into(), committed: false, ..here };
        assert_eq!(check_appliance(&with, Some(&trial)), Err(UpdateRefusal::TrialRunning { slot: "B".into() }));
    }

    #[test]
    fn an_appliance_update_is_waiting_on_trial_committed_or_fallen_back() {
        let here = |version: &str, committed: bool, last_trial: Option<LastTrial>| ApplianceHere {
            running: "A".into(),
            version: version.into(),
            committed,
            slot_bytes: 1,
            last_trial,
            reboot_at: None,
        };
        assert_eq!(appliance_update_state("2", &here("1", true, None)), ApplianceUpdateState::Waiting);
        assert_eq!(appliance_update_state("2", &here("2", false, None)), ApplianceUpdateState::OnTrial);
        assert_eq!(appliance_update_state("2", &here("2", true, None)), ApplianceUpdateState::Committed);
        let failed = LastTrial { version: "2".into(), from_version: "1".into(), fell_back: Some("no DHCP".into()) };
        assert_eq!(
            appliance_update_state("2", &here("1", true, Some(failed.clone()))),
            ApplianceUpdateState::FellBack { reason: "no DHCP".into() }
        );
        // An older failure of another version is not this one's.
        assert_eq!(appliance_update_state("3", &here("1", true, Some(failed))), ApplianceUpdateState::Waiting);
        // Written and armed, the reboot scheduled.
        let armed = LastTrial { version: "2".into(), from_version: "1".into(), fell_back: None };
        let scheduled = ApplianceHere { reboot_at: Some(20_000 * 86_400 + 9000), ..here("1", true, Some(armed)) };
        let state = appliance_update_state("2", &scheduled);
        assert_eq!(state, ApplianceUpdateState::Armed { reboot_at: Some(20_000 * 86_400 + 9000) });
        assert!(state.to_string().contains("reboots into it at 02:30 UTC"), "{state}");
    }
}

//! What a stick offers: its `oasis.toml`, checked against the same schema as `--config` and,
//! when the appliance has a trusted key, against `oasis.toml.sig`.

use std::path::Path;

use ed25519_dalek::VerifyingKey;

use super::signature;
use oasis_core::config::sections::{Line, Lines};
use oasis_core::config::{Config, ConfigError, RawConfig};

pub use oasis_image::usb_stick::{CONFIG_FILE, SIGNATURE_FILE};

/// Larger than any real configuration: a stick with a huge file is refused, not read into memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The verdict on a stick's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Valid (and signed with the trusted key when there is one): `text` is exactly the file,
    /// to be saved and applied.
    Accepted { text: String, signed: bool },
    /// Not applied; `reason` says what to fix, with line numbers for errors in the file.
    Refused { reason: String },
}

/// How a configuration is checked.
#[derive(Debug, Clone, Copy)]
pub struct Acceptance<'a> {
    /// The image's trusted key: with one, only signed configurations are accepted.
    pub trusted_key: Option<&'a VerifyingKey>,
    /// Where the configuration will be saved (`/var/lib/oasis/oasis.toml`): relative paths in
    /// it are taken from there, as `oasis serve --config` will.
    pub save_as: &'a Path,
    /// `/sys/class/net`, to refuse a `network.interface` this machine does not have; `None`
    /// skips that check.
    pub net_class: Option<&'a Path>,
    /// The data directory the appliance keeps its state in (its data partition): a
    /// configuration naming another is refused. `None` skips that check.
    pub data_dir: Option<&'a Path>,
}

/// Reads and checks the offer on a mounted stick; `None` when it has no `oasis.toml` (a stick
/// brought only to take a report).
pub fn read_offer(stick_root: &Path, acceptance: &Acceptance) -> Option<Offer> {
    let config_path = stick_root.join(CONFIG_FILE);
    let bytes = match std::fs::metadata(&config_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return stick_root.join(SIGNATURE_FILE).exists().then(|| Offer::Refused {
                reason: format!(
                    "{SIGNATURE_FILE} is on the stick but {CONFIG_FILE} is not: copy {CONFIG_FILE} beside it"
                ),
            });
        }
        Err(e) => return Some(refused(format!("{CONFIG_FILE} cannot be read: {e}", e = oasis_proto::error_chain(&e)))),
        Ok(m) if m.len() > MAX_CONFIG_BYTES => {
            return Some(refused(format!(
            "{CONFIG_FILE} is {} bytes, more than a configuration can be ({MAX_CONFIG_BYTES}): is it the right file?",
            m.len()
        )))
        }
        Ok(_) => match std::fs::read(&config_path) {
            Ok(b) => b,
            Err(e) => {
                return Some(refused(format!(
                    "{CONFIG_FILE} cannot be read: {e}; the stick may be damaged",
                    e = oasis_proto::error_chain(&e)
                )))
            }
        },
    };
    let signature = match std::fs::read_to_string(stick_root.join(SIGNATURE_FILE)) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Some(refused(format!("{SIGNATURE_FILE} cannot be read: {e}", e = oasis_proto::error_chain(&e))))
        }
    };
    Some(check(&bytes, signature.as_deref(), acceptance))
}

fn refused(reason: String) -> Offer {
    Offer::Refused { reason }
}

/// Checks configuration bytes and the signature file's text (if any).
pub fn check(bytes: &[u8], signature_text: Option<&str>, acceptance: &Acceptance) -> Offer {
    let signed = match (acceptance.trusted_key, signature_text) {
        (None, _) => Ok(false),
        (Some(_), None) => Err(format!(
            "unsigned: this appliance accepts only configurations signed with its trusted key; sign it with \
             `oasis config sign --key PRIVATE-KEY {CONFIG_FILE}` and copy {SIGNATURE_FILE} beside it"
        )),
        (Some(key), Some(text)) => match signature::parse_signature(text, Path::new(SIGNATURE_FILE)) {
            Err(e) => Err(oasis_proto::error_chain(&e)),
            Ok(sig) if signature::verify(key, bytes, &sig) => Ok(true),
            Ok(_) => Err(format!(
                "signature does not match the trusted key (key {}): {CONFIG_FILE} changed after it was signed, or \
                 it was signed with another key; sign it again with `oasis config sign --key PRIVATE-KEY {CONFIG_FILE}`",
                signature::key_id(key)
            )),
        },
    };
    // The file is checked even when the signature fails, so one trip to the appliance shows
    // every problem.
    let config = std::str::from_utf8(bytes)
        .map_err(|e| format!("{CONFIG_FILE} is not UTF-8 text (byte {}): save it as UTF-8", e.valid_up_to()))
        .and_then(|text| validate(text, acceptance).map(|()| text.to_string()));
    match (signed, config) {
        (Ok(signed), Ok(text)) => Offer::Accepted { text, signed },
        (Err(sig), Ok(_)) => refused(sig),
        (Ok(_), Err(config)) => refused(config),
        (Err(sig), Err(config)) => refused(format!("{sig}; and {config}")),
    }
}

/// The schema of `--config`, and the interface check.
fn validate(text: &str, acceptance: &Acceptance) -> Result<(), String> {
    let config = Config::parse(text, acceptance.save_as).map_err(|e| match e {
        ConfigError::Parse { .. } | ConfigError::Invalid { .. } => {
            format!("{CONFIG_FILE} is not valid: {}", e.problem())
        }
        ConfigError::Read { .. } => format!("{CONFIG_FILE}: {}", e.problem()),
    })?;
    // It parsed, so it parses again: for where the keys named below are.
    let raw: Option<RawConfig> = toml::from_str(text).ok();
    let line = |key: &dyn Fn(&RawConfig) -> Line| raw.as_ref().map(key).unwrap_or_default();
    if let Some(want) = acceptance.data_dir {
        if config.data_dir != want {
            return Err(format!(
                "{CONFIG_FILE}: data_dir = {:?}{} is not where this appliance keeps its state ({}): remove the data_dir line",
                config.data_dir.display().to_string(),
                line(&|r| Lines(text).of(&r.data_dir)),
                want.display()
            ));
        }
    }
    if let Some(net) = acceptance.net_class {
        if !net.join(&config.interface).exists() {
            let mut names: Vec<String> = std::fs::read_dir(net)
                .map(|d| {
                    d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "lo").collect()
                })
                .unwrap_or_default();
            names.sort();
            return Err(format!(
                "{CONFIG_FILE}: network.interface {:?}{} is not on this appliance, which has: {}",
                config.interface,
                line(&|r| Lines(text).of(&r.network.interface)),
                if names.is_empty() { "no network interfaces".into() } else { names.join(", ") }
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const CONFIG: &str =
        "[network]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\n[dhcp]\nrange = [\"10.0.0.100\", \"10.0.0.199\"]\n";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn acceptance<'a>(trusted: Option<&'a VerifyingKey>) -> Acceptance<'a> {
        Acceptance {
            trusted_key: trusted,
            save_as: Path::new("/var/lib/oasis/oasis.toml"),
            net_class: None,
            data_dir: Some(Path::new("/var/lib/oasis")),
        }
    }

    fn reason(offer: Offer) -> String {
        match offer {
            Offer::Refused { reason } => reason,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn a_valid_config_is_accepted_as_is_unsigned_without_a_trusted_key() {
        assert_eq!(
            check(CONFIG.as_bytes(), None, &acceptance(None)),
            Offer::Accepted { text: CONFIG.into(), signed: false }
        );
    }

    #[test]
    fn with_a_trusted_key_only_a_matching_signature_passes() {
        let public = key().verifying_key();
        let trusted = acceptance(Some(&public));
        let sig = signature::signature_file(&key(), CONFIG.as_bytes());
        assert_eq!(
            check(CONFIG.as_bytes(), Some(&sig), &trusted),
            Offer::Accepted { text: CONFIG.into(), signed: true }
        );

        let unsigned = reason(check(CONFIG.as_bytes(), None, &trusted));
        assert!(unsigned.starts_with("unsigned") && unsigned.contains("oasis config sign"), "{unsigned}");

        let changed = format!("{CONFIG}\n[cluster]\ncontrol_plane = 1\n");
        let mismatch = reason(check(changed.as_bytes(), Some(&sig), &trusted));
        assert!(mismatch.contains("signature does not match the trusted key"), "{mismatch}");

        let other = SigningKey::from_bytes(&[8; 32]);
        let other_sig = signature::signature_file(&other, CONFIG.as_bytes());
        assert!(reason(check(CONFIG.as_bytes(), Some(&other_sig), &trusted)).contains("does not match"));

        let garbage = reason(check(CONFIG.as_bytes(), Some("hello"), &trusted));
        assert!(garbage.contains("oasis.toml.sig is not an oasis config signature"), "{garbage}");
    }

    #[test]
    fn schema_errors_keep_their_line_numbers() {
        let typo = CONFIG.replace("range", "rnage");
        let r = reason(check(typo.as_bytes(), None, &acceptance(None)));
        assert!(r.contains("unknown field `rnage`") && r.contains("line 6"), "{r}");

        let bad = CONFIG.replace("10.0.0.100", "10.0.0.1");
        let r = reason(check(bad.as_bytes(), None, &acceptance(None)));
        assert!(r.starts_with("oasis.toml is not valid") && r.contains("own address"), "{r}");

        let r = reason(check(b"\xff\xfe[network]", None, &acceptance(None)));
        assert!(r.contains("not UTF-8"), "{r}");

        // Unsigned and invalid: both reasons.
        let public = key().verifying_key();
        let r = reason(check(typo.as_bytes(), None, &acceptance(Some(&public))));
        assert!(r.starts_with("unsigned") && r.contains("rnage"), "{r}");
    }

    #[test]
    fn an_interface_the_appliance_lacks_is_refused_with_the_ones_it_has() {
        let net = tempfile::tempdir().unwrap();
        for name in ["lo", "enp1s0", "enp2s0"] {
            std::fs::create_dir(net.path().join(name)).unwrap();
        }
        let a = Acceptance { net_class: Some(net.path()), ..acceptance(None) };
        let r = reason(check(CONFIG.as_bytes(), None, &a));
        assert!(r.contains("\"eth0\" (line 2) is not on this appliance, which has: enp1s0, enp2s0"), "{r}");
        let fixed = CONFIG.replace("eth0", "enp2s0");
        assert!(matches!(check(fixed.as_bytes(), None, &a), Offer::Accepted { .. }));
    }

    #[test]
    fn a_data_dir_off_the_data_partition_is_refused() {
        let elsewhere = format!("data_dir = \"/tmp/oasis\"\n{CONFIG}");
        let r = reason(check(elsewhere.as_bytes(), None, &acceptance(None)));
        assert!(r.contains("data_dir = \"/tmp/oasis\" (line 1) is not where this appliance keeps its state"), "{r}");
        let same = format!("data_dir = \"/var/lib/oasis\"\n{CONFIG}");
        assert!(matches!(check(same.as_bytes(), None, &acceptance(None)), Offer::Accepted { .. }));
    }

    #[test]
    fn read_offer_from_a_directory() {
        let stick = tempfile::tempdir().unwrap();
        assert_eq!(read_offer(stick.path(), &acceptance(None)), None, "a stick for the report only");
        std::fs::write(stick.path().join(SIGNATURE_FILE), "x").unwrap();
        assert!(reason(read_offer(stick.path(), &acceptance(None)).unwrap()).contains("is not"));
        std::fs::write(stick.path().join(CONFIG_FILE), CONFIG).unwrap();
        std::fs::write(stick.path().join(SIGNATURE_FILE), signature::signature_file(&key(), CONFIG.as_bytes()))
            .unwrap();
        let public = key().verifying_key();
        assert_eq!(
            read_offer(stick.path(), &acceptance(Some(&public))),
            Some(Offer::Accepted { text: CONFIG.into(), signed: true })
        );
        std::fs::write(stick.path().join(CONFIG_FILE), vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(reason(read_offer(stick.path(), &acceptance(None)).unwrap()).contains("more than a configuration"));
    }
}

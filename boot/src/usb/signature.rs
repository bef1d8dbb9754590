//! Signed configurations: an appliance image built with a trusted ed25519 public key accepts an
//! `oasis.toml` from a stick only with an `oasis.toml.sig` that signs its exact bytes.
//!
//! The key and signature files, and signing itself, are [`oasis_image::signing`]'s (update bundles
//! are signed with the same keys); what is the stick's is here: where the image keeps its trusted
//! key, and `oasis config sign`, which signs only a valid configuration.

use std::path::{Path, PathBuf};

pub use oasis_image::signing::{
    key_id, keygen, load_private_key, load_trusted_key, parse_public_key, parse_signature, signature_file, verify,
    Signature, SigningError, SigningKey, VerifyingKey, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE,
};

/// Where the appliance image carries its trusted key (absent: configurations need no signature).
pub const TRUSTED_KEY_PATH: &str = oasis_image::appliance::TRUSTED_KEY_PATH;

/// Errors signing a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(transparent)]
    Key(#[from] SigningError),
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid configuration, not signed")]
    InvalidConfig { path: PathBuf, source: oasis_core::config::ConfigError },
}

/// `oasis config sign --key PRIVATE FILE`: checks FILE is a valid configuration and writes
/// `FILE.sig` beside it (replacing an older signature). Returns the signature's path.
pub fn sign_file(key_path: &Path, file: &Path) -> Result<PathBuf, SignatureError> {
    let key = load_private_key(key_path)?;
    let bytes = std::fs::read(file).map_err(|source| SignatureError::Read { path: file.into(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    oasis_core::config::Config::parse(&text, file)
        .map_err(|source| SignatureError::InvalidConfig { path: file.into(), source })?;
    let mut sig_path = file.as_os_str().to_owned();
    sig_path.push(".sig");
    let sig_path = PathBuf::from(sig_path);
    oasis_image::manifest::write_atomic(&sig_path, signature_file(&key, &bytes).as_bytes())
        .map_err(|e| SignatureError::Write { path: sig_path.clone(), source: std::io::Error::other(e.to_string()) })?;
    Ok(sig_path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const CONFIG: &str =
        "[network]\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\n[dhcp]\nrange = [\"10.0.0.100\", \"10.0.0.199\"]\n";

    #[test]
    fn keygen_sign_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, key) = keygen(&dir.path().join("keys")).unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        let trusted = load_trusted_key(&public).unwrap().unwrap();
        assert_eq!(trusted, key);
        assert_eq!(load_trusted_key(&dir.path().join("absent.pub")).unwrap(), None);

        let config = dir.path().join("oasis.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let sig_path = sign_file(&private, &config).unwrap();
        assert_eq!(sig_path, dir.path().join("oasis.toml.sig"));
        let sig_text = std::fs::read_to_string(&sig_path).unwrap();
        assert!(sig_text.starts_with("# oasis config signature (ed25519)"), "{sig_text}");
        let signature = parse_signature(&sig_text, &sig_path).unwrap();
        assert!(verify(&trusted, CONFIG.as_bytes(), &signature));
        assert!(!verify(&trusted, format!("{CONFIG} ").as_bytes(), &signature), "one byte more");

        // Another key pair's public key does not verify it.
        let (_, other_public, _) = keygen(&dir.path().join("other")).unwrap();
        let other = load_trusted_key(&other_public).unwrap().unwrap();
        assert!(!verify(&other, CONFIG.as_bytes(), &signature));
    }

    #[test]
    fn keygen_never_replaces_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (private, _, _) = keygen(dir.path()).unwrap();
        let before = std::fs::read(&private).unwrap();
        let err = keygen(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already exists") && err.contains("never replaces"), "{err}");
        assert_eq!(std::fs::read(&private).unwrap(), before);
    }

    #[test]
    fn wrong_files_are_named_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, _) = keygen(dir.path()).unwrap();
        let config = dir.path().join("oasis.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let err = sign_file(&public, &config).unwrap_err().to_string();
        assert!(err.contains("it is an oasis config trusted key"), "{err}");
        let err = load_trusted_key(&private).unwrap_err().to_string();
        assert!(err.contains("it is an oasis config signing key"), "{err}");

        let p = Path::new("oasis.toml.sig");
        let cases = [
            ("", "first line"),
            ("# oasis config signature (ed25519)\n", "0 base64 lines"),
            ("# oasis config signature (ed25519)\n!!!\n", "bad base64"),
            ("# oasis config signature (ed25519)\nAAAA\n", "3 bytes, not 64"),
            ("# oasis config signature (ed25519)\nAAAA\nAAAA\n", "2 base64 lines"),
        ];
        for (text, want) in cases {
            let err = parse_signature(text, p).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("oasis config sign"), "{text:?}: {err}");
        }

        std::fs::write(&config, "[network]\ninterfce = \"eth0\"\n").unwrap();
        let err = oasis_proto::error_chain(&sign_file(&private, &config).unwrap_err());
        assert!(err.contains("not signed") && err.contains("interfce"), "{err}");
        assert!(!dir.path().join("oasis.toml.sig").exists());
    }
}

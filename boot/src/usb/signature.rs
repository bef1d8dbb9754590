//! Signed configurations: an appliance image built with a trusted ed25519 public key accepts an
//! `oasis.toml` from a stick only with an `oasis.toml.sig` that signs its exact bytes.
//!
//! All three files are text: comment lines (`#`) and one line of standard base64.
//! - private key (`oasis config keygen`, `oasis-config.key`, mode 0600): the 32-byte seed,
//!   after the line `# oasis config signing key (ed25519 private key) ...`;
//! - public key (`oasis-config.pub`): the 32-byte key, after `# oasis config trusted key
//!   (ed25519 public key) ...`;
//! - signature (`oasis config sign --key PRIVATE FILE` writes `FILE.sig`): the 64-byte signature,
//!   after `# oasis config signature (ed25519) ...`.
//!
//! The first comment names what the file is, so a public key given where the private one belongs
//! (both are 32 bytes) is refused with the reason.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::{Signature, Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Where the appliance image carries its trusted key (absent: configurations need no signature).
pub const TRUSTED_KEY_PATH: &str = oasis_image::appliance::TRUSTED_KEY_PATH;
/// File names `oasis config keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "oasis-config.key";
pub const PUBLIC_KEY_FILE: &str = "oasis-config.pub";

const PRIVATE_KIND: &str = "oasis config signing key (ed25519 private key)";
const PUBLIC_KIND: &str = "oasis config trusted key (ed25519 public key)";
const SIGNATURE_KIND: &str = "oasis config signature (ed25519)";

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an {want} file ({why}); `oasis config keygen` and `oasis config sign` make them")]
    Format { path: PathBuf, want: &'static str, why: String },
    #[error("{path} already exists: keygen never replaces a key (configs signed with it would be refused); remove it or give another --out")]
    Exists { path: PathBuf },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid configuration, not signed")]
    InvalidConfig { path: PathBuf, source: oasis_core::config::ConfigError },
}

/// The first comment line of a key or signature file.
fn header(kind: &str, usage: &str) -> String {
    format!("# {kind}. {usage}\n")
}

/// Decodes the one base64 line of a file whose first comment names `kind`.
fn decode<const N: usize>(text: &str, path: &Path, kind: &'static str) -> Result<[u8; N], SignatureError> {
    let format = |why: String| SignatureError::Format { path: path.into(), want: kind, why };
    let first = text.lines().next().unwrap_or("");
    if !first.starts_with('#') || !first.contains(kind) {
        let found = [PRIVATE_KIND, PUBLIC_KIND, SIGNATURE_KIND].into_iter().find(|k| first.contains(k));
        return Err(format(match found {
            Some(other) => format!("it is an {other}"),
            None => format!("its first line does not say \"# {kind}\""),
        }));
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let [line] = lines[..] else {
        return Err(format(format!("it has {} base64 lines, not one", lines.len())));
    };
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(line).map_err(|e| format(format!("bad base64: {e}")))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| format(format!("{len} bytes, not {N}")))
}

fn read(path: &Path) -> Result<String, SignatureError> {
    std::fs::read_to_string(path).map_err(|source| SignatureError::Read { path: path.into(), source })
}

/// A short name for a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Parses a public key file's text.
pub fn parse_public_key(text: &str, path: &Path) -> Result<VerifyingKey, SignatureError> {
    let bytes = decode::<32>(text, path, PUBLIC_KIND)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| SignatureError::Format {
        path: path.into(),
        want: PUBLIC_KIND,
        why: format!("not a point on the curve: {e}"),
    })
}

/// The trusted key at `path`; `None` when there is no such file (the image was built without one).
pub fn load_trusted_key(path: &Path) -> Result<Option<VerifyingKey>, SignatureError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_public_key(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SignatureError::Read { path: path.into(), source }),
    }
}

pub fn load_private_key(path: &Path) -> Result<SigningKey, SignatureError> {
    Ok(SigningKey::from_bytes(&decode::<32>(&read(path)?, path, PRIVATE_KIND)?))
}

/// Parses a signature file's text.
pub fn parse_signature(text: &str, path: &Path) -> Result<Signature, SignatureError> {
    Ok(Signature::from_bytes(&decode::<64>(text, path, SIGNATURE_KIND)?))
}

/// Whether `signature` signs exactly `message` with `key`.
pub fn verify(key: &VerifyingKey, message: &[u8], signature: &Signature) -> bool {
    key.verify(message, signature).is_ok()
}

/// The text of a signature file for `message`.
pub fn signature_file(key: &SigningKey, message: &[u8]) -> String {
    let signature = key.sign(message);
    header(
        SIGNATURE_KIND,
        &format!(
            "Signs the exact bytes of the file beside it; made by `oasis config sign` with key {}.",
            key_id(&key.verifying_key())
        ),
    ) + &base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
        + "\n"
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), SignatureError> {
    use std::io::Write;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SignatureError::Exists { path: path.into() },
            _ => SignatureError::Write { path: path.into(), source },
        })?;
    let written = (|| {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(path);
        SignatureError::Write { path: path.into(), source }
    })
}

/// `oasis config keygen --out DIR`: a new key pair as `DIR/oasis-config.key` (0600) and
/// `DIR/oasis-config.pub`; existing files are never replaced. Returns the two paths.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf, VerifyingKey), SignatureError> {
    std::fs::create_dir_all(dir).map_err(|source| SignatureError::Write { path: dir.into(), source })?;
    let (private, public) = (dir.join(PRIVATE_KEY_FILE), dir.join(PUBLIC_KEY_FILE));
    for path in [&private, &public] {
        if path.exists() {
            return Err(SignatureError::Exists { path: path.clone() });
        }
    }
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let b64 = base64::engine::general_purpose::STANDARD;
    let id = key_id(&key.verifying_key());
    let private_text = header(
        PRIVATE_KIND,
        &format!("Key {id}, made by `oasis config keygen`. Keep it secret and off the appliance; sign with `oasis config sign --key THIS oasis.toml`."),
    ) + &b64.encode(seed)
        + "\n";
    let public_text = header(
        PUBLIC_KIND,
        &format!("Key {id}, made by `oasis config keygen`. Build it into the appliance image: it then accepts only configs signed with its private key."),
    ) + &b64.encode(key.verifying_key().as_bytes())
        + "\n";
    write_new(&private, &private_text, 0o600)?;
    if let Err(e) = write_new(&public, &public_text, 0o644) {
        let _ = std::fs::remove_file(&private);
        return Err(e);
    }
    Ok((private, public, key.verifying_key()))
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

//! The ed25519 keys that sign what an appliance accepts from outside (USB configurations, update
//! bundles), their text files and signatures. The appliance (applying bundles) and `oasis boot`
//! (checking a stick's `oasis.toml.sig`) both read them from here.
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
//! (both are 32 bytes) is refused with the reason. A key's id ([`key_id`]) is the first 8 bytes
//! of the SHA-256 of its public key, shown as 16 hex digits.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use ed25519_dalek::{Signer, Verifier};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// File names `oasis config keygen` writes.
pub const PRIVATE_KEY_FILE: &str = "oasis-config.key";
pub const PUBLIC_KEY_FILE: &str = "oasis-config.pub";

const PRIVATE_KIND: &str = "oasis config signing key (ed25519 private key)";
const PUBLIC_KIND: &str = "oasis config trusted key (ed25519 public key)";
const SIGNATURE_KIND: &str = "oasis config signature (ed25519)";

/// Errors reading, parsing or writing key and signature files.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not an {want} file ({why}); `oasis config keygen` and `oasis config sign` make them")]
    Format { path: PathBuf, want: &'static str, why: String },
    #[error("{path} already exists: keygen never replaces a key (configs signed with it would be refused); remove it or give another --out")]
    Exists { path: PathBuf },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The first comment line of a key or signature file.
fn header(kind: &str, usage: &str) -> String {
    format!("# {kind}. {usage}\n")
}

/// Decodes the one base64 line of a file whose first comment names `kind`.
fn decode<const N: usize>(text: &str, path: &Path, kind: &'static str) -> Result<[u8; N], SigningError> {
    let format = |why: String| SigningError::Format { path: path.into(), want: kind, why };
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

fn read(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(|source| SigningError::Read { path: path.into(), source })
}

/// The raw form of [`key_id`]: the first 8 bytes of the public key's SHA-256.
pub fn key_id_bytes(key: &VerifyingKey) -> [u8; 8] {
    let digest = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

/// A short name for a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(key_id_bytes(key))
}

/// The signature of `message` by `key`.
pub fn sign(key: &SigningKey, message: &[u8]) -> Signature {
    key.sign(message)
}

/// Parses a public key file's text.
pub fn parse_public_key(text: &str, path: &Path) -> Result<VerifyingKey, SigningError> {
    let bytes = decode::<32>(text, path, PUBLIC_KIND)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| SigningError::Format {
        path: path.into(),
        want: PUBLIC_KIND,
        why: format!("not a point on the curve: {e}"),
    })
}

/// The trusted key at `path`; `None` when there is no such file (the image was built without one).
pub fn load_trusted_key(path: &Path) -> Result<Option<VerifyingKey>, SigningError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_public_key(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SigningError::Read { path: path.into(), source }),
    }
}

pub fn load_private_key(path: &Path) -> Result<SigningKey, SigningError> {
    Ok(SigningKey::from_bytes(&decode::<32>(&read(path)?, path, PRIVATE_KIND)?))
}

/// Parses a signature file's text.
pub fn parse_signature(text: &str, path: &Path) -> Result<Signature, SigningError> {
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

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), SigningError> {
    use std::io::Write;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SigningError::Exists { path: path.into() },
            _ => SigningError::Write { path: path.into(), source },
        })?;
    let written = (|| {
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(path);
        SigningError::Write { path: path.into(), source }
    })
}

/// `oasis config keygen --out DIR`: a new key pair as `DIR/oasis-config.key` (0600) and
/// `DIR/oasis-config.pub`; existing files are never replaced. Returns the two paths.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf, VerifyingKey), SigningError> {
    std::fs::create_dir_all(dir).map_err(|source| SigningError::Write { path: dir.into(), source })?;
    let (private, public) = (dir.join(PRIVATE_KEY_FILE), dir.join(PUBLIC_KEY_FILE));
    for path in [&private, &public] {
        if path.exists() {
            return Err(SigningError::Exists { path: path.clone() });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_load_sign_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public, key) = keygen(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_trusted_key(&public).unwrap(), Some(key));
        let signing = load_private_key(&private).unwrap();
        assert_eq!(signing.verifying_key(), key);
        assert_eq!(key_id(&key), hex::encode(key_id_bytes(&key)));
        assert_eq!(key_id(&key).len(), 16);
        let text = signature_file(&signing, b"message");
        assert!(text.contains(&key_id(&key)), "{text}");
        let parsed = parse_signature(&text, Path::new("m.sig")).unwrap();
        assert_eq!(parsed, sign(&signing, b"message"));
        assert!(verify(&key, b"message", &parsed));
        assert!(!verify(&key, b"messagf", &parsed));
    }
}

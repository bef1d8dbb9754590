//! The appliance's identity: the secrets made at its first start and kept in the store.
//!
//! - The API's TLS key and self-signed certificate (ECDSA P-256). Agents trust the appliance by
//!   the pin of this key (`oasis.pin=`, see `oasis_proto::pin_of`), not by a CA chain: a site
//!   without internet has no public CA, and a pin cannot be spoofed by a rogue DHCP server.
//! - The join token, which lets a machine register (and nothing more). No boot script carries it:
//!   a netbooted machine registers with its per-boot token (see [`crate::netboot`]); the join
//!   token is for boot media an operator makes.
//! - The admin token for the HTTPS admin endpoints, also written to `DATA_DIR/admin-token`
//!   (mode 0600) for the operator; the CLI on the appliance itself uses the admin socket.
//! - The WireGuard private key of the management interface.

use std::path::Path;

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The file the admin token is written to, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The SHA-256 of the HTTPS certificate as browsers show it, for the console's status block
/// (which cannot open the store while `oasis serve` holds it).
pub const CERTIFICATE_FINGERPRINT_FILE: &str = "web-certificate-sha256";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the stored {what} in {path} is unreadable: restore the store from a backup, or start afresh with \
         `oasis serve --new-store`"
    )]
    Damaged { what: &'static str, path: std::path::PathBuf },
    #[error("cannot make the API certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot write the admin token file {path}; check that the data directory is writable")]
    Write { path: std::path::PathBuf, source: oasis_image::manifest::ManifestError },
}

/// The secrets, loaded.
#[derive(Clone)]
pub struct Identity {
    pub tls_key_der: Vec<u8>,
    pub tls_cert_der: Vec<u8>,
    /// `sha256:HEX` of the TLS key's SubjectPublicKeyInfo.
    pub pin: String,
    pub join_token: String,
    pub admin_token: String,
    pub wireguard_private: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves: this may end up in a log.
        f.debug_struct("Identity").field("pin", &self.pin).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredTls {
    key_pkcs8: String,
    cert: String,
    spki: String,
}

/// A random token: 32 lowercase hex digits (128 bits), safe on a kernel command line.
pub fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn make_tls() -> Result<StoredTls, rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["oasis-appliance".to_string()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "oasis appliance");
    // Far in the future: the pin, not the dates, is what agents check, and a rack may run
    // for a decade with a wrong clock.
    params.not_after = rcgen::date_time_ymd(4096, 1, 1);
    let cert = params.self_signed(&key)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(StoredTls {
        key_pkcs8: b64.encode(key.serialize_der()),
        cert: b64.encode(cert.der()),
        spki: b64.encode(rcgen::PublicKeyData::subject_public_key_info(&key)),
    })
}

impl Identity {
    /// Loads the identity from the store, making whatever is missing (first start).
    pub fn load_or_create(store: &Store, data_dir: &Path) -> Result<Identity, IdentityError> {
        Self::load_or_create_with(store, data_dir, make_tls)
    }

    /// [`Identity::load_or_create`] with the maker of the TLS key and certificate given. A maker
    /// that fails stores nothing: the next start tries again.
    fn load_or_create_with(
        store: &Store,
        data_dir: &Path,
        make_tls: impl FnOnce() -> Result<StoredTls, rcgen::Error>,
    ) -> Result<Identity, IdentityError> {
        let tls = store.secret_or_try_create("api_tls", || -> Result<Vec<u8>, IdentityError> {
            Ok(serde_json::to_vec(&make_tls()?).map_err(StoreError::from)?)
        })?;
        let damaged = |what| IdentityError::Damaged { what, path: store.path().to_path_buf() };
        let tls: StoredTls = serde_json::from_slice(&tls).map_err(|_| damaged("API key"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |s: &str| b64.decode(s).map_err(|_| damaged("API key"));
        let spki = decode(&tls.spki)?;
        let text = |name: &'static str| -> Result<String, IdentityError> {
            let bytes = store.secret_or_create(name, || random_token().into_bytes())?;
            String::from_utf8(bytes).map_err(|_| damaged(name))
        };
        let join_token = text("join_token")?;
        let admin_token = text("admin_token")?;
        let wg = store.secret_or_create("wireguard_private", || {
            let mut key = [0u8; 32];
            rand::rng().fill_bytes(&mut key);
            // Clamped as X25519 wants it, as `wg genkey` does.
            key[0] &= 248;
            key[31] = (key[31] & 127) | 64;
            key.to_vec()
        })?;
        let wireguard_private: [u8; 32] = wg.try_into().map_err(|_| damaged("WireGuard key"))?;
        let identity = Identity {
            tls_key_der: decode(&tls.key_pkcs8)?,
            tls_cert_der: decode(&tls.cert)?,
            pin: oasis_proto::pin_of(&spki),
            join_token,
            admin_token,
            wireguard_private,
        };
        write_file(data_dir, ADMIN_TOKEN_FILE, &identity.admin_token, 0o600)?;
        write_file(data_dir, CERTIFICATE_FINGERPRINT_FILE, &identity.certificate_fingerprint(), 0o644)?;
        Ok(identity)
    }

    /// The SHA-256 of the HTTPS certificate as browsers show it (`AB:CD:...`): what a person
    /// compares before trusting the web page.
    pub fn certificate_fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&self.tls_cert_der);
        digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }

    /// The first 8 hex digits of the admin token's SHA-256: enough to tell tokens apart on a
    /// console without showing the token.
    pub fn admin_token_fingerprint(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(self.admin_token.as_bytes()))[..8].to_string()
    }

    /// The kernel arguments that send a node agent to this appliance, for every boot script. The
    /// token (`oasis.token=`) is not among them: each network boot gets its own.
    pub fn agent_kernel_args(&self, api_host: std::net::Ipv4Addr, api_port: u16) -> String {
        format!("oasis.api=https://{api_host}:{api_port} oasis.pin={}", self.pin)
    }
}

/// Writes `text` and a line ending to `DATA_DIR/name` for the operator (mode `mode`), unless it
/// already says it: a start on a full data partition must not fail for a file it does not need
/// to change. Written aside and renamed, never truncated in place.
fn write_file(data_dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(name);
    let text = format!("{text}\n");
    let same_mode = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o777 == mode);
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) && same_mode(&path) {
        return Ok(());
    }
    oasis_image::manifest::write_atomic_with(&path, |f| {
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        std::io::Write::write_all(f, text.as_bytes())
    })
    .map_err(|source| IdentityError::Write { path: path.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = {
            let store = Store::open(dir.path()).unwrap();
            Identity::load_or_create(&store, dir.path()).unwrap()
        };
        let store = Store::open(dir.path()).unwrap();
        let again = Identity::load_or_create(&store, dir.path()).unwrap();
        assert_eq!(first.pin, again.pin);
        assert_eq!(first.join_token, again.join_token);
        assert_eq!(first.wireguard_private, again.wireguard_private);
        assert_ne!(first.join_token, first.admin_token);
        let args = first.agent_kernel_args("10.0.0.1".parse().unwrap(), 9443);
        assert!(!args.contains(&first.join_token) && !args.contains("oasis.token"), "{args}");
        let with_token = format!("{args} oasis.token=0123456789abcdef0123456789abcdef");
        assert!(oasis_proto::KernelArgs::parse(&with_token).is_ok());
        let file = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        assert_eq!(file.trim(), first.admin_token);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "only root reads the admin token");
        assert!(!format!("{first:?}").contains(&first.join_token), "Debug shows no secret");
        let certificate = std::fs::read_to_string(dir.path().join(CERTIFICATE_FINGERPRINT_FILE)).unwrap();
        assert_eq!(certificate.trim(), first.certificate_fingerprint(), "for the console");
        assert_eq!(certificate.trim().len(), 95, "{certificate}");

        // An unchanged token file is left alone (a start on a full partition must not fail on it).
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE)).unwrap().ino();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        Identity::load_or_create(&store, dir.path()).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(ADMIN_TOKEN_FILE)).unwrap().ino(), inode);
    }

    #[test]
    fn a_failed_key_generation_stores_nothing_and_the_next_start_makes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed = Identity::load_or_create_with(&store, dir.path(), || Err(rcgen::Error::KeyGenerationUnavailable));
        assert!(matches!(failed, Err(IdentityError::Certificate(_))), "{failed:?}");
        assert_eq!(store.secret("api_tls").unwrap(), None, "a failed maker left a secret behind");
        let identity = Identity::load_or_create(&store, dir.path()).expect("the next start makes the key");
        assert!(identity.pin.starts_with("sha256:"), "{}", identity.pin);
    }

    #[test]
    fn a_secret_whose_maker_fails_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let failed =
            store.secret_or_try_create("made-once", || Err(IdentityError::Damaged { what: "x", path: "p".into() }));
        assert!(matches!(failed, Err(IdentityError::Damaged { .. })));
        assert_eq!(store.secret("made-once").unwrap(), None);
        let made = store.secret_or_try_create("made-once", || Ok::<_, IdentityError>(b"first".to_vec())).unwrap();
        let kept = store.secret_or_try_create("made-once", || Ok::<_, IdentityError>(b"second".to_vec())).unwrap();
        assert_eq!((made, kept), (b"first".to_vec(), b"first".to_vec()));
    }
}

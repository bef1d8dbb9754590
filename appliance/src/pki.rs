//! The cluster CA: the appliance's own certificate authority for cluster traffic (etcd's client
//! and peer TLS, and the appliance as etcd's client).
//!
//! An ECDSA P-256 key and a self-signed CA certificate, made at first start and kept in the store
//! as the secrets [`CA_KEY_SECRET`] (PKCS#8 PEM) and [`CA_CERT_SECRET`] (PEM). Every certificate
//! a node holds chains to it, so it must survive restarts byte for byte: it is read back, never
//! made again while the store holds it. The key is stored before the certificate, and the
//! certificate is made from the stored key, so a crash between the two leaves a consistent CA.
//!
//! Agents do not trust this CA for the appliance's API (they pin the API key, see
//! [`crate::identity`]); it is only for the cluster the appliance assembles.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::store::{Store, StoreError};

/// The store secret holding the CA's private key (PKCS#8 PEM).
pub const CA_KEY_SECRET: &str = "cluster-ca-key";
/// The store secret holding the CA's certificate (PEM).
pub const CA_CERT_SECRET: &str = "cluster-ca-cert";

/// How long an issued certificate is valid: ten years. A disconnected rack has no renewal path
/// yet (nothing reissues a node's certificate before it expires), so a short lifetime would
/// take the cluster down on a date nobody is watching; until renewal exists, certificates
/// outlive the hardware.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How far before "now" an issued certificate becomes valid, so that a node whose clock runs
/// somewhat behind the appliance's still accepts it.
const CLOCK_SKEW: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the cluster CA's {0} in the store is unreadable; the store may be damaged: restore it from a backup \
         (a new CA would lock every node out of the cluster)"
    )]
    Damaged(&'static str),
    #[error("the {0} is not valid PEM; issue it again from the cluster CA")]
    NotPem(&'static str),
    #[error("cannot make a cluster certificate")]
    Certificate(#[from] rcgen::Error),
    #[error("the cluster certificate is unusable for TLS")]
    Tls(#[from] rustls::Error),
}

/// A certificate and its fresh private key, both PEM (the key as PKCS#8), as etcd's
/// `--cert-file`/`--key-file` take them.
#[derive(Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: this may end up in a log.
        f.debug_struct("IssuedCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl IssuedCert {
    /// The certificate and key in the form rustls takes them.
    pub fn to_der(&self) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), PkiError> {
        let cert =
            CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|_| PkiError::NotPem("certificate"))?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|_| PkiError::NotPem("private key"))?;
        Ok((cert, key))
    }
}

/// The cluster CA, loaded from the store.
pub struct ClusterCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::OrganizationName, "oasis");
    params.distinguished_name.push(DnType::CommonName, "oasis cluster CA");
    // Only leaves below it: no intermediate CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = (SystemTime::now() - CLOCK_SKEW).into();
    // Beyond any leaf it signs, which are renewed (once renewal exists) long before this.
    params.not_after = rcgen::date_time_ymd(4096, 1, 1);
    Ok(params)
}

/// The stored secret `name`, or the one `make` makes, stored as it (a maker that fails stores
/// nothing).
fn secret_or_make(
    store: &Store,
    name: &str,
    what: &'static str,
    make: impl FnOnce() -> Result<String, PkiError>,
) -> Result<String, PkiError> {
    let bytes = store.secret_or_try_create(name, || make().map(String::into_bytes))?;
    String::from_utf8(bytes).map_err(|_| PkiError::Damaged(what))
}

impl ClusterCa {
    /// Loads the CA from the store, making it at first start.
    pub fn load_or_create(store: &Store) -> Result<ClusterCa, PkiError> {
        let key_pem = secret_or_make(store, CA_KEY_SECRET, "key", || {
            Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?.serialize_pem())
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| PkiError::Damaged("key"))?;
        let cert_pem =
            secret_or_make(store, CA_CERT_SECRET, "certificate", || Ok(ca_params()?.self_signed(&key)?.pem()))?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| PkiError::Damaged("certificate"))?;
        if !keys_match(&cert_der, &key) {
            return Err(PkiError::Damaged("certificate (it does not belong to the stored key)"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|_| PkiError::Damaged("certificate"))?;
        Ok(ClusterCa { cert_pem, issuer })
    }

    /// The CA certificate, PEM: what every member is told to trust (`--trusted-ca-file`).
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `common_name` with a fresh P-256 key, valid for both server and
    /// client authentication (etcd 3.4's gRPC gateway dials its own member with the server
    /// certificate, and members use theirs as clients of each other), with `ips` and 127.0.0.1
    /// as IP subject alternative names, valid for [`LEAF_VALIDITY`].
    pub fn issue(&self, common_name: &str, ips: &[IpAddr]) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        let mut sans: Vec<IpAddr> = ips.to_vec();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if !sans.contains(&loopback) {
            sans.push(loopback);
        }
        params.subject_alt_names = sans.into_iter().map(SanType::IpAddress).collect();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Whether the certificate carries the key's public half.
fn keys_match(cert: &CertificateDer<'static>, key: &KeyPair) -> bool {
    let Ok(key_der) = PrivateKeyDer::try_from(key.serialize_der()) else { return false };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key_der, &provider).is_ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;

    fn roots(ca_pem: &str) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Verifies `cert` as a TLS server at `ip` and as a TLS client, trusting only `ca_pem`.
    fn verify(ca_pem: &str, cert: &IssuedCert, ip: IpAddr) -> Result<(), rustls::Error> {
        let (leaf, _) = cert.to_der().unwrap();
        let server = WebPkiServerVerifier::builder_with_provider(roots(ca_pem), provider()).build().unwrap();
        server.verify_server_cert(&leaf, &[], &ServerName::IpAddress(ip.into()), &[], UnixTime::now())?;
        let client = WebPkiClientVerifier::builder_with_provider(roots(ca_pem), provider()).build().unwrap();
        client.verify_client_cert(&leaf, &[], UnixTime::now())?;
        Ok(())
    }

    #[test]
    fn the_ca_survives_reopening_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (first_pem, first_key) = {
            let store = Store::open(dir.path()).unwrap();
            let ca = ClusterCa::load_or_create(&store).unwrap();
            (ca.ca_pem().to_string(), store.secret_or_create(CA_KEY_SECRET, Vec::new).unwrap())
        };
        let store = Store::open(dir.path()).unwrap();
        let again = ClusterCa::load_or_create(&store).unwrap();
        assert_eq!(again.ca_pem(), first_pem);
        assert_eq!(store.secret_or_create(CA_KEY_SECRET, Vec::new).unwrap(), first_key);
        assert!(first_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        // A certificate issued after the restart chains to the CA the nodes already trust.
        let cert = again.issue("node-1", &[IpAddr::V4(Ipv4Addr::new(10, 98, 0, 2))]).unwrap();
        verify(&first_pem, &cert, IpAddr::V4(Ipv4Addr::new(10, 98, 0, 2))).unwrap();
    }

    #[test]
    fn an_issued_certificate_verifies_against_the_ca_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ca = ClusterCa::load_or_create(&store).unwrap();
        let mesh = IpAddr::V4(Ipv4Addr::new(10, 98, 0, 3));
        let overlay = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 3));
        let cert = ca.issue("node-3", &[mesh, overlay]).unwrap();
        // Server and client use, at every address given and at loopback.
        for ip in [mesh, overlay, IpAddr::V4(Ipv4Addr::LOCALHOST)] {
            verify(ca.ca_pem(), &cert, ip).unwrap();
        }
        // Not at an address it was not issued for.
        assert!(verify(ca.ca_pem(), &cert, IpAddr::V4(Ipv4Addr::new(10, 98, 0, 4))).is_err());
        // Not against another appliance's CA.
        let other_dir = tempfile::tempdir().unwrap();
        let other = ClusterCa::load_or_create(&Store::open(other_dir.path()).unwrap()).unwrap();
        assert_ne!(other.ca_pem(), ca.ca_pem());
        assert!(verify(other.ca_pem(), &cert, mesh).is_err());
        // The key is PKCS#8 PEM and belongs to the certificate.
        assert!(cert.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let (leaf, key) = cert.to_der().unwrap();
        assert!(rustls::sign::CertifiedKey::from_der(vec![leaf], key, &provider()).is_ok());
        assert!(!format!("{cert:?}").contains(&cert.key_pem), "Debug shows no key");
    }

    #[test]
    fn every_issue_has_a_fresh_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(&Store::open(dir.path()).unwrap()).unwrap();
        let a = ca.issue("node-1", &[]).unwrap();
        let b = ca.issue("node-1", &[]).unwrap();
        assert_ne!(a.key_pem, b.key_pem);
        assert_ne!(a.cert_pem, b.cert_pem);
    }

    #[test]
    fn a_certificate_that_is_not_the_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A CA certificate made from a different key than the stored one: a damaged store.
        let stray = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = ca_params().unwrap().self_signed(&stray).unwrap().pem();
        store.secret_or_create(CA_CERT_SECRET, || cert.into_bytes()).unwrap();
        let err = ClusterCa::load_or_create(&store).unwrap_err();
        assert!(matches!(err, PkiError::Damaged(_)), "{err}");
        assert!(err.to_string().contains("restore it from a backup"), "{err}");
    }
}

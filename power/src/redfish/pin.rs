//! Trusting a BMC's self-signed certificate by its SHA-256 fingerprint.
//!
//! BMCs ship self-signed certificates, often with a factory name and an expired or far-future
//! validity: no CA, name or date check can work. What identifies a BMC is its certificate, so it
//! is pinned by the SHA-256 of its DER encoding: the fingerprint BMC web pages and
//! `openssl x509 -noout -fingerprint -sha256` show, which an operator can compare by eye. The
//! handshake signatures are still verified with the provider's algorithms, so only the holder of
//! the certificate's key completes a handshake. A certificate that is not the pinned one stops the
//! handshake before any request byte (and so before the credentials) is written.
//!
//! Trust on first use accepts the first certificate whose handshake completes and pins it for the
//! rest of the driver's life; the caller reads it ([`super::Redfish::fingerprint`]) to pin it in
//! the config from then on.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

/// The SHA-256 fingerprint of a certificate (of its DER encoding).
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// `AB:CD:...`, as BMC web pages and `openssl x509 -fingerprint -sha256` print it.
pub fn format_fingerprint(fingerprint: &[u8; 32]) -> String {
    fingerprint.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads a fingerprint as 64 hex digits, with or without colons (either case), optionally
/// prefixed `sha256:` or openssl's `SHA256 Fingerprint=`.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let text = ["sha256:", "SHA256 Fingerprint=", "sha256 Fingerprint="]
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(text);
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(digits).ok()?;
    bytes.try_into().ok()
}

/// What the verifier reports through rustls when a certificate is not the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("the certificate's SHA-256 fingerprint is {}", format_fingerprint(.found))]
pub(crate) struct WrongCertificate {
    pub(crate) found: [u8; 32],
    pub(crate) pinned: [u8; 32],
}

/// Accepts the pinned certificate, or in trust-on-first-use mode any until one is trusted.
#[derive(Debug)]
pub(crate) struct FingerprintVerifier {
    /// The fingerprint accepted; `None` until the first handshake completes in TOFU mode.
    trusted: Mutex<Option<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl FingerprintVerifier {
    pub(crate) fn new(pinned: Option<[u8; 32]>, provider: Arc<CryptoProvider>) -> FingerprintVerifier {
        FingerprintVerifier { trusted: Mutex::new(pinned), provider }
    }

    fn trusted(&self) -> Option<[u8; 32]> {
        *self.trusted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called once a handshake has completed with `found`: trusts it if nothing is trusted yet
    /// (only now, so a server that shows someone else's certificate without its key cannot plant
    /// it). Fails if another handshake trusted a different certificate in between.
    pub(crate) fn completed(&self, found: [u8; 32]) -> Result<(), WrongCertificate> {
        let mut trusted = self.trusted.lock().unwrap_or_else(|p| p.into_inner());
        match *trusted {
            None => {
                *trusted = Some(found);
                Ok(())
            }
            Some(pinned) if pinned == found => Ok(()),
            Some(pinned) => Err(WrongCertificate { found, pinned }),
        }
    }

    /// The fingerprint trusted now: the pin, or the first certificate seen in TOFU mode.
    pub(crate) fn fingerprint(&self) -> Option<[u8; 32]> {
        self.trusted()
    }
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = certificate_fingerprint(end_entity);
        match self.trusted() {
            Some(pinned) if pinned != found => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(WrongCertificate { found, pinned })),
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The [`WrongCertificate`] inside a failed handshake's error, if that is why it failed.
pub(crate) fn wrong_certificate_in(error: &std::io::Error) -> Option<&WrongCertificate> {
    let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) =
        error.get_ref()?.downcast_ref::<rustls::Error>()?
    else {
        return None;
    };
    inner.downcast_ref::<WrongCertificate>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse_as_operators_see_them() {
        let fp = certificate_fingerprint(b"not really a certificate");
        let printed = format_fingerprint(&fp);
        assert_eq!(printed.len(), 32 * 3 - 1);
        assert_eq!(parse_fingerprint(&printed), Some(fp));
        assert_eq!(parse_fingerprint(&printed.to_lowercase().replace(':', "")), Some(fp));
        assert_eq!(parse_fingerprint(&format!("sha256:{}", hex::encode(fp))), Some(fp));
        assert_eq!(parse_fingerprint(&format!("SHA256 Fingerprint={printed}\n")), Some(fp));
        assert_eq!(parse_fingerprint(&printed[3..]), None);
        assert_eq!(parse_fingerprint("zz"), None);
    }

    #[test]
    fn trust_on_first_use_trusts_the_first_completed_handshake_only() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tofu = FingerprintVerifier::new(None, provider.clone());
        assert_eq!(tofu.fingerprint(), None);
        tofu.completed([1; 32]).unwrap();
        assert_eq!(tofu.fingerprint(), Some([1; 32]));
        tofu.completed([1; 32]).unwrap();
        let wrong = tofu.completed([2; 32]).unwrap_err();
        assert_eq!((wrong.found, wrong.pinned), ([2; 32], [1; 32]));
        let pinned = FingerprintVerifier::new(Some([3; 32]), provider);
        assert!(pinned.completed([1; 32]).is_err());
        assert_eq!(pinned.fingerprint(), Some([3; 32]));
    }
}

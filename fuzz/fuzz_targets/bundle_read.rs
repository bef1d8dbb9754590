//! An update bundle as `oasis update verify` and the appliance read it: `bundle::read_bundle`,
//! streaming, with one trusted key, verifying only (no staging directory). It must refuse anything
//! but an intact bundle without panicking, and what it accepts must be exactly what was read.
//!
//! Input: a first byte choosing the form, then
//! - even: the bundle's bytes as they are (the seeds are real bundles signed with the fuzz key,
//!   so mutations reach the members' checks);
//! - odd: a manifest's JSON, then the members' bytes after `oasis_fuzz::SEPARATOR`; the target
//!   signs the manifest with the trusted key (private half `[7; 32]`) and frames it as
//!   `bundle::encode_head` does, so the fuzzer reaches the checks behind the signature.
#![no_main]

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use oasis_image::bundle::{self, BundleManifest, Sink, VerifyOptions, HEADER_BYTES, MAGIC};

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[7; 32]))
}

fn trusted() -> &'static [VerifyingKey] {
    static KEYS: OnceLock<[VerifyingKey; 1]> = OnceLock::new();
    KEYS.get_or_init(|| [key().verifying_key()])
}

/// A bundle whose header signs `manifest` with the trusted key, then `members`.
fn signed(manifest: &[u8], members: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&bundle::FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(manifest.len() as u32).to_be_bytes());
    out.extend_from_slice(&oasis_image::signing::key_id_bytes(&key().verifying_key()));
    out.extend_from_slice(&key().sign(manifest).to_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(members);
    out
}

fn accept_all(_: &BundleManifest) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let input = if form % 2 == 0 {
        rest.to_vec()
    } else {
        let parts = oasis_fuzz::messages(rest, 2);
        signed(parts[0], parts.get(1).copied().unwrap_or_default())
    };
    let options = VerifyOptions { trusted: trusted(), architecture: bundle::ARCHITECTURE, max_total_bytes: 16 << 20 };
    if let Ok(verified) = bundle::read_bundle(&input[..], &options, &accept_all, Sink::Discard) {
        let manifest = &verified.manifest;
        assert_eq!(manifest.product, bundle::PRODUCT);
        assert_eq!(manifest.architecture, bundle::ARCHITECTURE);
        let length = u32::from_be_bytes(input[12..16].try_into().unwrap()) as usize;
        let total = manifest.total_size().expect("an accepted bundle's sizes add up");
        assert_eq!(HEADER_BYTES + length + total as usize, input.len(), "every byte is accounted for");
    }
});

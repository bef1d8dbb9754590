//! Sealed records (schema version 4): every value the store keeps is prefixed with the first
//! [`SEAL_LEN`] bytes of the SHA-256 of its key's bytes and the value itself.
//!
//! redb checksums its pages, but verifies them only when asked (the check at open). A page read
//! later is trusted, and a write copies it: a byte that rots on the disk while the appliance runs
//! would be copied into a new page with a fresh, valid checksum and served as true from then on.
//! The seal is made when the record is serialized, so it catches that at every read, and binds
//! the value to its key (a lease moved to another address's key does not unseal).

use sha2::{Digest, Sha256};

/// Bytes of seal in front of every value.
pub const SEAL_LEN: usize = 8;

/// Why a stored value did not unseal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("it is shorter than its seal")]
    Short,
    #[error("its seal does not match its bytes (they changed on the disk)")]
    Mismatch,
}

fn digest(key: &[u8], value: &[u8]) -> [u8; SEAL_LEN] {
    let mut hash = Sha256::new();
    hash.update((key.len() as u64).to_le_bytes());
    hash.update(key);
    hash.update(value);
    let full = hash.finalize();
    let mut seal = [0u8; SEAL_LEN];
    seal.copy_from_slice(&full[..SEAL_LEN]);
    seal
}

/// `value` with its seal in front, as stored under `key` (the key's redb bytes).
pub fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEAL_LEN + value.len());
    out.extend_from_slice(&digest(key, value));
    out.extend_from_slice(value);
    out
}

/// The value inside a stored record, if its seal matches.
pub fn unseal<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], Fault> {
    if stored.len() < SEAL_LEN {
        return Err(Fault::Short);
    }
    let (seal, value) = stored.split_at(SEAL_LEN);
    if seal != digest(key, value) {
        return Err(Fault::Mismatch);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_anywhere_or_another_key_fails_to_unseal() {
        let value = br#"{"ip":"10.0.0.150","mac":"52:54:00:00:00:01"}"#;
        let stored = seal(&[1, 2, 3, 4], value);
        assert_eq!(unseal(&[1, 2, 3, 4], &stored), Ok(&value[..]));
        for byte in 0..stored.len() {
            let mut flipped = stored.clone();
            flipped[byte] ^= 0x04;
            assert_eq!(unseal(&[1, 2, 3, 4], &flipped), Err(Fault::Mismatch), "byte {byte}");
        }
        assert_eq!(unseal(&[1, 2, 3, 5], &stored), Err(Fault::Mismatch), "bound to its key");
        assert_eq!(unseal(&[1, 2, 3, 4], &stored[..3]), Err(Fault::Short));
    }
}

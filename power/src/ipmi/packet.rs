//! RMCP+ packets (IPMI 2.0, spec section 13.6): the RMCP header, the IPMI 2.0 session header, and
//! for a session's messages the two protections of cipher suite 3: AES-CBC-128 on the payload and
//! an HMAC-SHA1-96 trailer over the whole packet.
//!
//! Decoding never trusts a length: every field is bounds-checked and a packet that is not exactly
//! what was asked for is an error naming what is wrong, never a panic.

use aes::Aes128;
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// RMCP version 1.0, no RMCP acknowledgement (sequence 0xFF), class IPMI.
const RMCP_HEADER: [u8; 4] = [0x06, 0x00, 0xFF, 0x07];
/// The "authentication type" that marks an IPMI 2.0 / RMCP+ session header.
const FORMAT_RMCP_PLUS: u8 = 0x06;
const ENCRYPTED: u8 = 0x80;
const AUTHENTICATED: u8 = 0x40;
/// The trailer's "next header" byte (spec table 13-8).
const NEXT_HEADER: u8 = 0x07;
/// HMAC-SHA1-96: the first 12 bytes of an HMAC-SHA1.
const AUTH_CODE_LEN: usize = 12;
const AES_BLOCK: usize = 16;
/// Header after RMCP: format, payload type, session ID, sequence, payload length.
const SESSION_HEADER_LEN: usize = 1 + 1 + 4 + 4 + 2;

/// Payload types (spec table 13-16).
pub(crate) const PAYLOAD_IPMI: u8 = 0x00;
pub(crate) const PAYLOAD_OPEN_SESSION_REQUEST: u8 = 0x10;
pub(crate) const PAYLOAD_OPEN_SESSION_RESPONSE: u8 = 0x11;
pub(crate) const PAYLOAD_RAKP1: u8 = 0x12;
pub(crate) const PAYLOAD_RAKP2: u8 = 0x13;
pub(crate) const PAYLOAD_RAKP3: u8 = 0x14;
pub(crate) const PAYLOAD_RAKP4: u8 = 0x15;

pub(crate) type HmacSha1 = Hmac<Sha1>;

/// An HMAC-SHA1 keyed with `key` over `parts`, ready to finish or verify.
pub(crate) fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> HmacSha1 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <HmacSha1 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for part in parts {
        mac.update(part);
    }
    mac
}

/// A session's keys (spec 13.32): K1 for the integrity trailer, the first 16 bytes of K2 for AES.
#[derive(Clone)]
pub(crate) struct SessionKeys {
    k1: [u8; 20],
    aes: [u8; AES_BLOCK],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// Derives K1 and K2 from the session integrity key.
    pub(crate) fn from_sik(sik: &[u8; 20]) -> Self {
        let k1: [u8; 20] = hmac_sha1(sik, &[&[0x01; 20]]).finalize().into_bytes().into();
        let k2: [u8; 20] = hmac_sha1(sik, &[&[0x02; 20]]).finalize().into_bytes().into();
        let mut aes = [0u8; AES_BLOCK];
        aes.copy_from_slice(&k2[..AES_BLOCK]);
        SessionKeys { k1, aes }
    }
}

fn session_header(payload_type: u8, session_id: u32, sequence: u32, payload_len: usize) -> Vec<u8> {
    let mut out = RMCP_HEADER.to_vec();
    out.extend([FORMAT_RMCP_PLUS, payload_type]);
    out.extend(session_id.to_le_bytes());
    out.extend(sequence.to_le_bytes());
    // Payloads here are a few dozen bytes: far below u16::MAX.
    out.extend((payload_len as u16).to_le_bytes());
    out
}

/// A packet outside a session (session ID and sequence 0, no protection): the Open Session and
/// RAKP messages.
pub(crate) fn encode_unprotected(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = session_header(payload_type, 0, 0, payload.len());
    out.extend(payload);
    out
}

/// The parts of an RMCP+ packet, offsets into the datagram.
struct Parsed {
    payload_type: u8,
    session_id: u32,
    payload: std::ops::Range<usize>,
}

fn parse(datagram: &[u8]) -> Result<Parsed, String> {
    if datagram.len() < RMCP_HEADER.len() + SESSION_HEADER_LEN {
        return Err(format!("a datagram of {} bytes, too short for RMCP+", datagram.len()));
    }
    // The reserved byte and the RMCP sequence number are not checked: nothing depends on them.
    if datagram[0] != RMCP_HEADER[0] || datagram[3] != RMCP_HEADER[3] {
        return Err(format!("a datagram that is not RMCP carrying IPMI (it starts {:02x?})", &datagram[..4]));
    }
    let header = &datagram[RMCP_HEADER.len()..];
    if header[0] != FORMAT_RMCP_PLUS {
        return Err(format!(
            "an IPMI 1.5 packet (authentication type {:#04x}) where RMCP+ (IPMI 2.0) was expected",
            header[0]
        ));
    }
    let session_id = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    let len = usize::from(u16::from_le_bytes([header[10], header[11]]));
    let start = RMCP_HEADER.len() + SESSION_HEADER_LEN;
    if datagram.len() < start + len {
        return Err(format!("a payload length of {len} bytes in a datagram of {}", datagram.len()));
    }
    Ok(Parsed { payload_type: header[1], session_id, payload: start..start + len })
}

/// The payload of an unprotected packet of type `want` (an Open Session or RAKP answer).
pub(crate) fn decode_unprotected(datagram: &[u8], want: u8) -> Result<&[u8], String> {
    let parsed = parse(datagram)?;
    if parsed.payload_type != want {
        return Err(format!("payload type {:#04x} where {want:#04x} was expected", parsed.payload_type));
    }
    Ok(&datagram[parsed.payload])
}

/// An IPMI message of an established session: encrypted with `iv` (fresh and random for every
/// packet), then signed.
pub(crate) fn encode_protected(
    keys: &SessionKeys,
    session_id: u32,
    sequence: u32,
    message: &[u8],
    iv: [u8; 16],
) -> Vec<u8> {
    // Confidentiality trailer (spec 13.29): pad bytes 1, 2, 3... then their count, to a block.
    let pad = (AES_BLOCK - (message.len() + 1) % AES_BLOCK) % AES_BLOCK;
    let mut plain = message.to_vec();
    plain.extend(1..=pad as u8);
    plain.push(pad as u8);
    let len = plain.len();
    let cipher = cbc::Encryptor::<Aes128>::new(&keys.aes.into(), &iv.into())
        .encrypt_padded_mut::<NoPadding>(&mut plain, len)
        .expect("the plaintext is padded to whole blocks above")
        .to_vec();
    let mut out =
        session_header(ENCRYPTED | AUTHENTICATED | PAYLOAD_IPMI, session_id, sequence, AES_BLOCK + cipher.len());
    out.extend(iv);
    out.extend(cipher);
    // Integrity trailer (spec 13.28.4): 0xFF pad so that format..next header is whole words.
    let covered = out.len() - RMCP_HEADER.len() + 2;
    let integrity_pad = (4 - covered % 4) % 4;
    out.extend(std::iter::repeat_n(0xFF, integrity_pad));
    out.extend([integrity_pad as u8, NEXT_HEADER]);
    let code = hmac_sha1(&keys.k1, &[&out[RMCP_HEADER.len()..]]).finalize().into_bytes();
    out.extend(&code[..AUTH_CODE_LEN]);
    out
}

/// The IPMI message in a session packet addressed to `session_id` (ours): the packet must be
/// both encrypted and signed with this session's keys.
pub(crate) fn decode_protected(keys: &SessionKeys, session_id: u32, datagram: &[u8]) -> Result<Vec<u8>, String> {
    let parsed = parse(datagram)?;
    if parsed.payload_type != ENCRYPTED | AUTHENTICATED | PAYLOAD_IPMI {
        return Err(format!(
            "payload type {:#04x} where an encrypted and signed IPMI message (0xc0) was expected",
            parsed.payload_type
        ));
    }
    if parsed.session_id != session_id {
        return Err(format!("a packet for session {:#010x}, not ours", parsed.session_id));
    }
    // The trailer: integrity pad, its length, next header, auth code, and nothing after.
    let end = datagram.len();
    if end < parsed.payload.end + 2 + AUTH_CODE_LEN {
        return Err("a session packet without its integrity trailer".into());
    }
    let (signed, code) = datagram.split_at(end - AUTH_CODE_LEN);
    hmac_sha1(&keys.k1, &[&signed[RMCP_HEADER.len()..]])
        .verify_truncated_left(code)
        .map_err(|_| "a session packet whose integrity code does not match the session's key".to_string())?;
    let pad_len = usize::from(signed[signed.len() - 2]);
    if signed[signed.len() - 1] != NEXT_HEADER || parsed.payload.end + pad_len + 2 != signed.len() {
        return Err("a session packet whose integrity trailer is malformed".into());
    }
    decrypt(keys, &datagram[parsed.payload])
}

fn decrypt(keys: &SessionKeys, payload: &[u8]) -> Result<Vec<u8>, String> {
    if payload.len() < 2 * AES_BLOCK || !payload.len().is_multiple_of(AES_BLOCK) {
        return Err(format!("an encrypted payload of {} bytes, not an IV and whole AES blocks", payload.len()));
    }
    let (iv, cipher) = payload.split_at(AES_BLOCK);
    let mut plain = cipher.to_vec();
    let iv: [u8; AES_BLOCK] = iv.try_into().expect("split at one block");
    cbc::Decryptor::<Aes128>::new(&keys.aes.into(), &iv.into())
        .decrypt_padded_mut::<NoPadding>(&mut plain)
        .map_err(|_| "an encrypted payload that does not decrypt".to_string())?;
    let pad = usize::from(plain[plain.len() - 1]);
    let body = plain.len() - 1;
    if pad > body || !plain[body - pad..body].iter().zip(1u8..).all(|(b, want)| *b == want) {
        return Err("an encrypted payload whose padding is wrong (a different key?)".into());
    }
    plain.truncate(body - pad);
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn keys() -> SessionKeys {
        SessionKeys::from_sik(&hex("000102030405060708090a0b0c0d0e0f10111213").try_into().unwrap())
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // RFC 2202 test case 2.
        let mac = hmac_sha1(b"Jefe", &[b"what do ya want ", b"for nothing?"]).finalize().into_bytes();
        assert_eq!(mac.to_vec(), hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
    }

    #[test]
    fn aes_cbc_matches_nist_sp_800_38a() {
        // F.2.1/F.2.2 CBC-AES128, first block, through the same decrypt path as a packet (the
        // vector's plaintext is not IPMI-padded, so only the cipher is compared).
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c").try_into().unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let mut block = hex("6bc1bee22e409f96e93d7e117393172a");
        cbc::Encryptor::<Aes128>::new(&key.into(), &iv.into()).encrypt_padded_mut::<NoPadding>(&mut block, 16).unwrap();
        assert_eq!(block, hex("7649abac8119b246cee98e9b12e9197d"));
    }

    #[test]
    fn keys_are_derived_as_the_spec_says() {
        let keys = keys();
        // K1 = HMAC-SHA1(SIK, 20 × 0x01), AES key = HMAC-SHA1(SIK, 20 × 0x02)[..16], computed
        // independently with Python's hmac.
        assert_eq!(keys.k1.to_vec(), hex("34e51c571c5c392460e6775dd5ecfa79f4a7f505"));
        assert_eq!(keys.aes.to_vec(), hex("c13076ed1957a59e8c7abb2460d22c1a"));
    }

    #[test]
    fn a_protected_message_is_byte_exact_and_round_trips() {
        let keys = keys();
        let message = [0x20, 0x00, 0xE0, 0x81, 0x04, 0x01, 0x7A];
        let packet = encode_protected(&keys, 0x1122_3344, 7, &message, [0xA5; 16]);
        // Computed independently with Python's `cryptography` (AES-CBC) and hmac.
        assert_eq!(packet, hex(PROTECTED));
        assert_eq!(decode_protected(&keys, 0x1122_3344, &packet).unwrap(), message);
    }

    const PROTECTED: &str = "0600ff0706c044332211070000002000a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5\
        da25b0e69cd538ac1118ca8a7b28c010ffff0207f026a106a4ac95a9799774a5";

    #[test]
    fn tampered_foreign_or_unprotected_packets_are_refused() {
        let keys = keys();
        let packet = encode_protected(&keys, 0x1122_3344, 7, &[1, 2, 3], [0x5A; 16]);
        assert!(decode_protected(&keys, 0x5555_5555, &packet).unwrap_err().contains("not ours"));
        for at in [20, packet.len() - 1, 14] {
            let mut bad = packet.clone();
            bad[at] ^= 0x01;
            assert!(decode_protected(&keys, 0x1122_3344, &bad).is_err(), "byte {at} flipped");
        }
        let other = SessionKeys::from_sik(&[9; 20]);
        assert!(decode_protected(&other, 0x1122_3344, &packet).unwrap_err().contains("integrity code"));
        let plain = encode_unprotected(PAYLOAD_IPMI, &[1, 2, 3]);
        assert!(decode_protected(&keys, 0, &plain).unwrap_err().contains("0xc0"));
        for cut in 0..packet.len() {
            assert!(decode_protected(&keys, 0x1122_3344, &packet[..cut]).is_err());
        }
    }

    #[test]
    fn unprotected_packets_are_typed_and_bounded() {
        let packet = encode_unprotected(PAYLOAD_RAKP1, &[9, 8, 7]);
        assert_eq!(packet, [6, 0, 0xFF, 7, 6, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 9, 8, 7]);
        assert_eq!(decode_unprotected(&packet, PAYLOAD_RAKP1).unwrap(), [9, 8, 7]);
        assert!(decode_unprotected(&packet, PAYLOAD_RAKP2).unwrap_err().contains("0x12"));
        assert!(decode_unprotected(&packet[..18], PAYLOAD_RAKP1).unwrap_err().contains("payload length"));
        assert!(decode_unprotected(b"HTTP/1.1 400 Bad Request\r\n", 0x11).unwrap_err().contains("not RMCP"));
        let mut v15 = packet.clone();
        v15[4] = 0x00;
        assert!(decode_unprotected(&v15, PAYLOAD_RAKP1).unwrap_err().contains("IPMI 1.5"));
        assert!(decode_unprotected(&[6, 0, 0xFF, 7], PAYLOAD_RAKP1).unwrap_err().contains("too short"));
    }
}

//! Opening an RMCP+ session (spec 13.17-13.31): Open Session, then RAKP messages 1 to 4, with
//! cipher suite 3 only (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128), the suite every IPMI 2.0 BMC
//! is required to offer.
//!
//! The BMC's answers are checked against what we asked, field by field: a BMC that picks other
//! algorithms than suite 3 (a downgrade to no encryption or no integrity) is refused, not
//! followed.

use super::packet::{hmac_sha1, SessionKeys};
use super::Fault;
use hmac::Mac;

/// Algorithm payloads (spec table 13-17): type, reserved, length 8, algorithm, reserved.
const AUTH_RAKP_HMAC_SHA1: [u8; 8] = [0x00, 0, 0, 0x08, 0x01, 0, 0, 0];
const INTEGRITY_HMAC_SHA1_96: [u8; 8] = [0x01, 0, 0, 0x08, 0x01, 0, 0, 0];
const CONFIDENTIALITY_AES_CBC_128: [u8; 8] = [0x02, 0, 0, 0x08, 0x01, 0, 0, 0];

/// The requested role's "name-only lookup" bit (spec table 13-11): the BMC finds the user by name
/// and the requested privilege must be within that user's limit.
const NAME_ONLY_LOOKUP: u8 = 0x10;

/// The Open Session Request (spec table 13-9) for cipher suite 3 at `privilege`.
pub(crate) fn open_session_request(tag: u8, console_session_id: u32, privilege: u8) -> Vec<u8> {
    let mut out = vec![tag, privilege, 0, 0];
    out.extend(console_session_id.to_le_bytes());
    out.extend(AUTH_RAKP_HMAC_SHA1);
    out.extend(INTEGRITY_HMAC_SHA1_96);
    out.extend(CONFIDENTIALITY_AES_CBC_128);
    out
}

/// The managed system's session ID from an Open Session Response (spec table 13-10), once it
/// answers our tag and session and agrees to cipher suite 3 exactly.
pub(crate) fn open_session_response(data: &[u8], tag: u8, console_session_id: u32) -> Result<u32, Fault> {
    if data.len() >= 2 && data[1] != 0 {
        return Err(status_fault("the Open Session Response", data[1]));
    }
    if data.len() != 36 {
        return Err(Fault::Malformed(format!("an Open Session Response of {} bytes (36 expected)", data.len())));
    }
    answers(data, tag, console_session_id, "Open Session Response")?;
    let managed = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if managed == 0 {
        return Err(Fault::Malformed("an Open Session Response with managed session ID 0".into()));
    }
    if data[12..20] != AUTH_RAKP_HMAC_SHA1
        || data[20..28] != INTEGRITY_HMAC_SHA1_96
        || data[28..36] != CONFIDENTIALITY_AES_CBC_128
    {
        return Err(Fault::Refused(format!(
            "the Open Session Response chose other algorithms than cipher suite 3 (authentication, integrity, confidentiality: {:#04x}, {:#04x}, {:#04x}): enable cipher suite 3 on the BMC",
            data[16], data[24], data[32]
        )));
    }
    Ok(managed)
}

/// Checks a message tag and the console session ID at bytes 4..8.
fn answers(data: &[u8], tag: u8, console_session_id: u32, what: &str) -> Result<(), Fault> {
    let session = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    if data[0] != tag || session != console_session_id {
        return Err(Fault::Malformed(format!(
            "an {what} for another request (tag {:#04x}, session {session:#010x})",
            data[0]
        )));
    }
    Ok(())
}

/// Everything both sides feed into the RAKP codes and the session keys (spec 13.31).
pub(crate) struct Transcript<'a> {
    pub console_session_id: u32,
    pub managed_session_id: u32,
    /// Our random number (Rm).
    pub console_random: [u8; 16],
    /// The BMC's random number (Rc) and GUID, from RAKP message 2.
    pub managed_random: [u8; 16],
    pub managed_guid: [u8; 16],
    /// The requested role byte exactly as sent in RAKP message 1.
    pub role: u8,
    pub user: &'a [u8],
}

impl std::fmt::Debug for Transcript<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript")
            .field("console_session_id", &self.console_session_id)
            .field("managed_session_id", &self.managed_session_id)
            .finish_non_exhaustive()
    }
}

/// The role byte of RAKP message 1 for `privilege`, with name-only lookup.
pub(crate) fn role(privilege: u8) -> u8 {
    privilege | NAME_ONLY_LOOKUP
}

/// RAKP message 1 (spec table 13-11).
pub(crate) fn rakp1(tag: u8, managed_session_id: u32, console_random: &[u8; 16], role: u8, user: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, 0, 0, 0];
    out.extend(managed_session_id.to_le_bytes());
    out.extend(console_random);
    out.extend([role, 0, 0]);
    // The user name is at most 16 bytes (checked when the driver is made).
    out.push(user.len() as u8);
    out.extend(user);
    out
}

/// What RAKP message 2 (spec table 13-12) brings: the BMC's random number, its GUID, and its
/// proof that it knows the user's password.
#[derive(Debug)]
pub(crate) struct Rakp2 {
    pub managed_random: [u8; 16],
    pub managed_guid: [u8; 16],
    pub code: Vec<u8>,
}

pub(crate) fn parse_rakp2(data: &[u8], tag: u8, console_session_id: u32) -> Result<Rakp2, Fault> {
    if data.len() >= 2 && data[1] != 0 {
        return Err(status_fault("RAKP message 2", data[1]));
    }
    if data.len() != 60 {
        return Err(Fault::Malformed(format!("a RAKP message 2 of {} bytes (60 expected)", data.len())));
    }
    answers(data, tag, console_session_id, "RAKP message 2")?;
    Ok(Rakp2 {
        managed_random: data[8..24].try_into().expect("16 bytes"),
        managed_guid: data[24..40].try_into().expect("16 bytes"),
        code: data[40..].to_vec(),
    })
}

impl Transcript<'_> {
    /// Whether the BMC's RAKP 2 code was made with `password`: if not, the BMC holds another
    /// password for this user (spec 13.31: HMAC over SIDm, SIDc, Rm, Rc, GUIDc, role, name).
    pub(crate) fn bmc_knows(&self, password: &[u8], code: &[u8]) -> bool {
        hmac_sha1(
            password,
            &[
                &self.console_session_id.to_le_bytes(),
                &self.managed_session_id.to_le_bytes(),
                &self.console_random,
                &self.managed_random,
                &self.managed_guid,
                &[self.role, self.user.len() as u8],
                self.user,
            ],
        )
        .verify_slice(code)
        .is_ok()
    }

    /// Our proof for RAKP message 3: HMAC over Rc, SIDm, role, name.
    pub(crate) fn rakp3_code(&self, password: &[u8]) -> [u8; 20] {
        hmac_sha1(
            password,
            &[
                &self.managed_random,
                &self.console_session_id.to_le_bytes(),
                &[self.role, self.user.len() as u8],
                self.user,
            ],
        )
        .finalize()
        .into_bytes()
        .into()
    }

    /// The session integrity key (no BMC key "Kg" is set, so it is keyed with the password).
    pub(crate) fn sik(&self, password: &[u8]) -> [u8; 20] {
        hmac_sha1(
            password,
            &[&self.console_random, &self.managed_random, &[self.role, self.user.len() as u8], self.user],
        )
        .finalize()
        .into_bytes()
        .into()
    }

    /// Whether RAKP message 4's integrity check value proves the BMC derived the same key: HMAC
    /// with the SIK over Rm, SIDc, GUIDc, truncated to 12 bytes.
    pub(crate) fn bmc_agrees(&self, sik: &[u8; 20], value: &[u8]) -> bool {
        value.len() == 12
            && hmac_sha1(sik, &[&self.console_random, &self.managed_session_id.to_le_bytes(), &self.managed_guid])
                .verify_truncated_left(value)
                .is_ok()
    }

    pub(crate) fn keys(&self, password: &[u8]) -> SessionKeys {
        SessionKeys::from_sik(&self.sik(password))
    }
}

/// The RAKP 3 status that tells the BMC we stop because its RAKP 2 code did not verify.
pub(crate) const STATUS_INVALID_INTEGRITY: u8 = 0x0F;

/// RAKP message 3 (spec table 13-13): our proof, or a failure status that lets the BMC free the
/// session at once.
pub(crate) fn rakp3(tag: u8, status: u8, managed_session_id: u32, code: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, status, 0, 0];
    out.extend(managed_session_id.to_le_bytes());
    out.extend(code);
    out
}

/// The integrity check value of RAKP message 4 (spec table 13-14).
pub(crate) fn parse_rakp4(data: &[u8], tag: u8, console_session_id: u32) -> Result<&[u8], Fault> {
    if data.len() >= 2 && data[1] != 0 {
        return Err(status_fault("RAKP message 4", data[1]));
    }
    if data.len() < 8 {
        return Err(Fault::Malformed(format!("a RAKP message 4 of {} bytes (20 expected)", data.len())));
    }
    answers(data, tag, console_session_id, "RAKP message 4")?;
    Ok(&data[8..])
}

/// An RMCP+ status code (spec table 13-15) as the fault it means: the user or password, the
/// cipher suite, the BMC's resources, or the protocol.
fn status_fault(what: &str, status: u8) -> Fault {
    let refused = |words: &str| Fault::Refused(format!("{what} answered RMCP+ status {status:#04x}: {words}"));
    match status {
        0x09 | 0x0A | 0x0C | 0x0D | 0x0E | 0x0F => Fault::Credentials,
        0x01 | 0x0B => refused("no free session on the BMC; wait for idle sessions to time out"),
        0x04..=0x07 | 0x10 | 0x11 => refused(
            "it does not offer cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128): enable it on the BMC",
        ),
        0x03 => refused("it does not accept this payload type"),
        0x02 | 0x08 => refused("it does not know the session (it may have restarted)"),
        0x12 => refused("it rejects a parameter of the request"),
        _ => refused("a status the IPMI spec does not define"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn transcript() -> Transcript<'static> {
        Transcript {
            console_session_id: 0xA0A1_A2A3,
            managed_session_id: 0x0102_0304,
            console_random: [0x11; 16],
            managed_random: [0x22; 16],
            managed_guid: [0x33; 16],
            role: role(0x03),
            user: b"oasis",
        }
    }

    #[test]
    fn open_session_asks_for_cipher_suite_3() {
        let request = open_session_request(0x42, 0xA0A1_A2A3, 0x03);
        assert_eq!(request, hex("42030000a3a2a1a0000000080100000001000008010000000200000801000000"));
    }

    fn response(status: u8, algorithms: &[u8]) -> Vec<u8> {
        let mut out = vec![0x42, status, 0x03, 0];
        out.extend(0xA0A1_A2A3u32.to_le_bytes());
        out.extend(0x0102_0304u32.to_le_bytes());
        out.extend(algorithms);
        out
    }

    #[test]
    fn open_session_response_must_be_suite_3_for_us() {
        let suite3 = [AUTH_RAKP_HMAC_SHA1, INTEGRITY_HMAC_SHA1_96, CONFIDENTIALITY_AES_CBC_128].concat();
        assert_eq!(open_session_response(&response(0, &suite3), 0x42, 0xA0A1_A2A3).unwrap(), 0x0102_0304);
        assert!(matches!(open_session_response(&response(0, &suite3), 0x43, 0xA0A1_A2A3), Err(Fault::Malformed(_))));
        // A BMC that answers "no encryption" is a downgrade, refused.
        let mut plain = suite3.clone();
        plain[20] = 0x00;
        let err = open_session_response(&response(0, &plain), 0x42, 0xA0A1_A2A3).unwrap_err();
        assert!(matches!(&err, Fault::Refused(detail) if detail.contains("cipher suite 3")), "{err:?}");
        let err = open_session_response(&[0x42, 0x11], 0x42, 0xA0A1_A2A3).unwrap_err();
        assert!(matches!(&err, Fault::Refused(detail) if detail.contains("0x11")), "{err:?}");
        assert!(matches!(open_session_response(&[0x42, 0x0D], 0x42, 1), Err(Fault::Credentials)));
        for cut in 0..36 {
            assert!(open_session_response(&response(0, &suite3)[..cut], 0x42, 0xA0A1_A2A3).is_err());
        }
    }

    #[test]
    fn rakp1_names_the_user_and_role() {
        let message = rakp1(7, 0x0102_0304, &[0x11; 16], role(0x03), b"oasis");
        assert_eq!(&message[..8], [7, 0, 0, 0, 4, 3, 2, 1]);
        assert_eq!(&message[24..], [0x13, 0, 0, 5, b'o', b'a', b's', b'i', b's']);
    }

    #[test]
    fn rakp_codes_and_keys_match_an_independent_computation() {
        // Computed with Python's hmac from the same transcript and password "s3cret".
        let t = transcript();
        let rakp2 = hex("af532021f6d3c75e99636169cad7af58805896c2");
        assert!(t.bmc_knows(b"s3cret", &rakp2));
        assert!(!t.bmc_knows(b"wrong", &rakp2));
        assert!(!t.bmc_knows(b"s3cret", &rakp2[..19]));
        assert_eq!(t.rakp3_code(b"s3cret").to_vec(), hex("0af5b802e0fe2341297939633e2baf1406a0f68b"));
        let sik = t.sik(b"s3cret");
        assert_eq!(sik.to_vec(), hex("fe21ca0552edaed66719b5c8736a3f14c7cd172d"));
        assert!(t.bmc_agrees(&sik, &hex("82b883d877b7e2831acd09ac")));
        assert!(!t.bmc_agrees(&sik, &hex("82b883d877b7e2831acd09")));
        assert!(!t.bmc_agrees(&sik, &[]));
    }

    #[test]
    fn rakp_answers_are_checked() {
        let mut rakp2 = vec![9, 0, 0, 0];
        rakp2.extend(0xA0A1_A2A3u32.to_le_bytes());
        rakp2.extend([0x22; 16]);
        rakp2.extend([0x33; 16]);
        rakp2.extend([0x44; 20]);
        let parsed = parse_rakp2(&rakp2, 9, 0xA0A1_A2A3).unwrap();
        assert_eq!((parsed.managed_random, parsed.managed_guid, parsed.code.len()), ([0x22; 16], [0x33; 16], 20));
        assert!(matches!(parse_rakp2(&rakp2, 9, 0xA0A1_A2A4), Err(Fault::Malformed(_))));
        assert!(matches!(parse_rakp2(&rakp2[..59], 9, 0xA0A1_A2A3), Err(Fault::Malformed(_))));
        // Unknown user: "unauthorized name".
        assert!(matches!(parse_rakp2(&[9, 0x0D, 0, 0], 9, 0xA0A1_A2A3), Err(Fault::Credentials)));
        let mut rakp4 = vec![3, 0, 0, 0];
        rakp4.extend(0xA0A1_A2A3u32.to_le_bytes());
        rakp4.extend([0x55; 12]);
        assert_eq!(parse_rakp4(&rakp4, 3, 0xA0A1_A2A3).unwrap(), [0x55; 12]);
        assert!(matches!(parse_rakp4(&[3, 0x0F], 3, 0xA0A1_A2A3), Err(Fault::Credentials)));
        assert!(matches!(parse_rakp4(&rakp4[..7], 3, 0xA0A1_A2A3), Err(Fault::Malformed(_))));
        assert_eq!(rakp3(5, 0, 0x0102_0304, &[0xEE; 2]), [5, 0, 0, 0, 4, 3, 2, 1, 0xEE, 0xEE]);
    }
}

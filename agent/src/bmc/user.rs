//! Making the appliance's user on this machine's BMC through its system interface (no
//! credentials needed there), when a registration asks for one ([`oasis_proto::RegisterResponse::bmc_user`]).
//!
//! One user slot: the one already named so (its password replaced), else the first empty one
//! from 2 (1 is the anonymous user). Its name, a random password (the 16-byte form, which every
//! IPMI 1.5 and 2.0 BMC takes), IPMI messaging on the LAN channel with the Operator privilege
//! limit (what chassis control and boot options need, and no more: it cannot manage users),
//! enabled; then the BMC is asked to test the password, so what is reported is known to work.
//! Nothing is retried: a failure is reported once, in words.

use std::io;
use std::path::PathBuf;

use rand::Rng;

use super::{completed, invalid, Interface, Request, NETFN_APP};

const SET_USER_ACCESS: u8 = 0x43;
const GET_USER_ACCESS: u8 = 0x44;
const SET_USER_NAME: u8 = 0x45;
const GET_USER_NAME: u8 = 0x46;
const SET_USER_PASSWORD: u8 = 0x47;
/// Set User Password's operations (IPMI 2.0, table 22-29).
const ENABLE_USER: u8 = 0x01;
const SET_PASSWORD: u8 = 0x02;
const TEST_PASSWORD: u8 = 0x03;
/// Set User Access's first byte: change the access bits, IPMI messaging enabled.
const CHANGE_ACCESS: u8 = 0x80;
const IPMI_MESSAGING: u8 = 0x10;
const PRIVILEGE_OPERATOR: u8 = 0x03;
/// A user name's field, and the password form used.
const NAME_LEN: usize = 16;
const PASSWORD_LEN: usize = 16;

/// Makes users on this machine's BMC.
pub trait BmcUsers: Send + Sync + std::fmt::Debug {
    /// Makes (or takes over) `user` on the BMC with LAN channel `channel`; returns its password.
    fn make(&self, channel: u8, user: &str) -> Result<String, String>;
}

/// The BMC behind the kernel's IPMI device (`/dev/ipmi0`).
#[derive(Debug)]
pub struct SystemInterface(pub PathBuf);

impl BmcUsers for SystemInterface {
    fn make(&self, channel: u8, user: &str) -> Result<String, String> {
        let interface = Interface::open(&self.0).map_err(|e| format!("{} cannot be opened: {e}", self.0.display()))?;
        let password = random_password(&mut rand::rng());
        let slot = make_user(&mut |netfn, cmd, data| interface.request(netfn, cmd, data), channel, user, &password)
            .map_err(|e| e.to_string())?;
        tracing::info!(user, slot, channel, "made the appliance's user on this machine's BMC");
        Ok(password)
    }
}

/// Letters and digits: a password any BMC takes, typed by nobody.
fn random_password(rng: &mut impl Rng) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    (0..PASSWORD_LEN).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// The requests that make `user` with `password` on LAN channel `channel`, through `request`;
/// returns the user's slot.
pub fn make_user(request: &mut Request<'_>, channel: u8, user: &str, password: &str) -> io::Result<u8> {
    if user.is_empty() || user.len() > NAME_LEN || password.len() != PASSWORD_LEN {
        return Err(invalid(format!("a user of 1 to {NAME_LEN} bytes and a password of {PASSWORD_LEN} bytes")));
    }
    let access = request(NETFN_APP, GET_USER_ACCESS, &[channel, 1])?;
    let most = completed(&access).map_err(|e| step("Get User Access", e))?.first().map_or(0, |b| b & 0x3f);
    let mut free = None;
    let mut named = None;
    for slot in 2..=most {
        let answer = request(NETFN_APP, GET_USER_NAME, &[slot])?;
        let name = completed(&answer).map_err(|e| step("Get User Name", e))?;
        let name: Vec<u8> = name.iter().copied().take_while(|b| *b != 0).collect();
        if name == user.as_bytes() {
            named = Some(slot);
            break;
        }
        if name.is_empty() && free.is_none() {
            free = Some(slot);
        }
    }
    let slot = named.or(free).ok_or_else(|| {
        invalid(format!("every user slot of the BMC (2 to {most}) is taken and none is named {user:?}"))
    })?;
    let mut send = |name: &str, cmd: u8, data: Vec<u8>| -> io::Result<()> {
        let answer = request(NETFN_APP, cmd, &data)?;
        completed(&answer).map(|_| ()).map_err(|e| step(name, e))
    };
    send("Set User Name", SET_USER_NAME, [&[slot][..], &padded(user, NAME_LEN)].concat())?;
    send(
        "Set User Password",
        SET_USER_PASSWORD,
        [&[slot, SET_PASSWORD][..], &padded(password, PASSWORD_LEN)].concat(),
    )?;
    send(
        "Set User Access",
        SET_USER_ACCESS,
        vec![CHANGE_ACCESS | IPMI_MESSAGING | channel, slot, PRIVILEGE_OPERATOR, 0],
    )?;
    send("enable the user", SET_USER_PASSWORD, vec![slot, ENABLE_USER])?;
    send(
        "test its password",
        SET_USER_PASSWORD,
        [&[slot, TEST_PASSWORD][..], &padded(password, PASSWORD_LEN)].concat(),
    )?;
    Ok(slot)
}

fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(len, 0);
    bytes
}

fn step(name: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A BMC's user table as ipmi_sim keeps it: slots 2..=`most`, some named; every request seen.
    struct Users {
        most: u8,
        names: HashMap<u8, Vec<u8>>,
        passwords: HashMap<u8, Vec<u8>>,
        access: HashMap<u8, Vec<u8>>,
        enabled: Vec<u8>,
        refuse: Option<u8>,
    }

    impl Users {
        fn new(most: u8, named: &[(u8, &str)]) -> Users {
            let names = named.iter().map(|(slot, name)| (*slot, padded(name, NAME_LEN))).collect();
            Users { most, names, passwords: HashMap::new(), access: HashMap::new(), enabled: vec![], refuse: None }
        }

        fn answer(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> io::Result<Vec<u8>> {
            assert_eq!(netfn, NETFN_APP);
            if self.refuse == Some(cmd) {
                return Ok(vec![0xd4]);
            }
            Ok(match (cmd, data) {
                (GET_USER_ACCESS, [1, 1]) => vec![0, self.most, 1, 0, 0],
                (GET_USER_NAME, [slot]) => [&[0u8][..], &self.names.get(slot).cloned().unwrap_or(vec![0; 16])].concat(),
                (SET_USER_NAME, [slot, name @ ..]) => {
                    self.names.insert(*slot, name.to_vec());
                    vec![0]
                }
                (SET_USER_PASSWORD, [slot, SET_PASSWORD, password @ ..]) => {
                    self.passwords.insert(*slot, password.to_vec());
                    vec![0]
                }
                (SET_USER_PASSWORD, [slot, ENABLE_USER]) => {
                    self.enabled.push(*slot);
                    vec![0]
                }
                (SET_USER_PASSWORD, [slot, TEST_PASSWORD, password @ ..]) => {
                    vec![if self.passwords.get(slot).map(Vec::as_slice) == Some(password) { 0 } else { 0x80 }]
                }
                (SET_USER_ACCESS, [access, slot, limit, _]) => {
                    self.access.insert(*slot, vec![*access, *limit]);
                    vec![0]
                }
                _ => vec![0xc1],
            })
        }
    }

    const PASSWORD: &str = "abcdefgh23456789";

    #[test]
    fn a_free_slot_gets_the_user_with_operator_access_on_the_lan_channel() {
        let mut bmc = Users::new(10, &[(2, "admin")]);
        let slot = make_user(&mut |n, c, d| bmc.answer(n, c, d), 1, "oasis", PASSWORD).unwrap();
        assert_eq!(slot, 3);
        assert_eq!(bmc.names[&3], padded("oasis", 16));
        assert_eq!(bmc.passwords[&3], PASSWORD.as_bytes());
        assert_eq!(bmc.access[&3], [0x91, PRIVILEGE_OPERATOR]);
        assert_eq!(bmc.enabled, [3]);
        assert_eq!(bmc.names[&2], padded("admin", 16), "the factory user is left alone");
    }

    #[test]
    fn a_slot_already_named_so_is_taken_over() {
        let mut bmc = Users::new(10, &[(2, "admin"), (5, "oasis")]);
        assert_eq!(make_user(&mut |n, c, d| bmc.answer(n, c, d), 1, "oasis", PASSWORD).unwrap(), 5);
        assert!(!bmc.names.contains_key(&3));
    }

    #[test]
    fn a_full_table_or_a_refusal_is_said_in_words() {
        let mut full = Users::new(3, &[(2, "admin"), (3, "ops")]);
        let e = make_user(&mut |n, c, d| full.answer(n, c, d), 1, "oasis", PASSWORD).unwrap_err();
        assert!(e.to_string().contains("every user slot of the BMC (2 to 3) is taken"), "{e}");
        let mut refusing = Users::new(10, &[]);
        refusing.refuse = Some(SET_USER_ACCESS);
        let e = make_user(&mut |n, c, d| refusing.answer(n, c, d), 1, "oasis", PASSWORD).unwrap_err();
        assert!(e.to_string().contains("Set User Access: the BMC answered completion code 0xd4"), "{e}");
        assert!(refusing.enabled.is_empty(), "not enabled with access half-set");
        let e = make_user(&mut |n, c, d| Users::new(9, &[]).answer(n, c, d), 1, "oasis", "short").unwrap_err();
        assert!(e.to_string().contains("16 bytes"), "{e}");
    }

    #[test]
    fn passwords_are_random_letters_and_digits() {
        let mut rng = rand::rng();
        let (a, b) = (random_password(&mut rng), random_password(&mut rng));
        assert_ne!(a, b);
        assert!(a.len() == PASSWORD_LEN && a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
    }
}

//! One RMCP+ session over UDP, blocking, with one deadline for the whole exchange: open it, send
//! a few commands, close it. Nothing is sent twice: a lost datagram is a missed deadline, and the
//! caller decides whether to try again (a Chassis Control sent twice may cycle a machine twice).

use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use super::message::{self, Request};
use super::packet::{self, SessionKeys};
use super::rakp::{self, Transcript};
use super::Fault;

/// An open session, ready for commands.
#[derive(Debug)]
pub(crate) struct Session {
    socket: UdpSocket,
    deadline: Instant,
    keys: SessionKeys,
    console_session_id: u32,
    managed_session_id: u32,
    sequence: u32,
    rq_seq: u8,
}

/// Who opens the session, at which privilege.
pub(crate) struct Login<'a> {
    pub user: &'a [u8],
    pub password: &'a [u8],
    pub privilege: u8,
}

impl std::fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("privilege", &self.privilege).finish_non_exhaustive()
    }
}

/// A random nonzero session ID (zero means "no session").
fn session_id() -> u32 {
    loop {
        let id: u32 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// Sends `datagram` and waits until `deadline` for one answer. The socket is connected, so only
/// the BMC's address can answer; an ICMP "port unreachable" (nothing listens there) ends the wait
/// at once.
fn exchange(socket: &UdpSocket, deadline: Instant, datagram: &[u8]) -> Result<Vec<u8>, Fault> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Fault::Silent);
    }
    socket.set_read_timeout(Some(remaining)).map_err(|_| Fault::Silent)?;
    socket.send(datagram).map_err(|_| Fault::Silent)?;
    let mut buffer = [0u8; 2048];
    let received = socket.recv(&mut buffer).map_err(|_| Fault::Silent)?;
    Ok(buffer[..received].to_vec())
}

impl Session {
    /// Opens a session with cipher suite 3 and raises it to `login.privilege`.
    pub(crate) fn open(bmc: SocketAddr, login: &Login<'_>, deadline: Instant) -> Result<Session, Fault> {
        let local: SocketAddr = if bmc.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(local).and_then(|s| s.connect(bmc).map(|()| s)).map_err(|_| Fault::Silent)?;
        let console_session_id = session_id();
        let tag: u8 = rand::random();

        let request = rakp::open_session_request(tag, console_session_id, login.privilege);
        let answer =
            exchange(&socket, deadline, &packet::encode_unprotected(packet::PAYLOAD_OPEN_SESSION_REQUEST, &request))?;
        let payload =
            packet::decode_unprotected(&answer, packet::PAYLOAD_OPEN_SESSION_RESPONSE).map_err(Fault::Malformed)?;
        let managed_session_id = rakp::open_session_response(payload, tag, console_session_id)?;

        let console_random: [u8; 16] = rand::random();
        let role = rakp::role(login.privilege);
        let rakp1 = rakp::rakp1(tag, managed_session_id, &console_random, role, login.user);
        let answer = exchange(&socket, deadline, &packet::encode_unprotected(packet::PAYLOAD_RAKP1, &rakp1))?;
        let payload = packet::decode_unprotected(&answer, packet::PAYLOAD_RAKP2).map_err(Fault::Malformed)?;
        let rakp2 = rakp::parse_rakp2(payload, tag, console_session_id)?;

        let transcript = Transcript {
            console_session_id,
            managed_session_id,
            console_random,
            managed_random: rakp2.managed_random,
            managed_guid: rakp2.managed_guid,
            role,
            user: login.user,
        };
        if !transcript.bmc_knows(login.password, &rakp2.code) {
            // Tell the BMC, so that it frees the half-open session now; no answer is awaited.
            let abort = rakp::rakp3(tag, rakp::STATUS_INVALID_INTEGRITY, managed_session_id, &[]);
            let _ = socket.send(&packet::encode_unprotected(packet::PAYLOAD_RAKP3, &abort));
            return Err(Fault::Credentials);
        }
        let rakp3 = rakp::rakp3(tag, 0, managed_session_id, &transcript.rakp3_code(login.password));
        let answer = exchange(&socket, deadline, &packet::encode_unprotected(packet::PAYLOAD_RAKP3, &rakp3))?;
        let payload = packet::decode_unprotected(&answer, packet::PAYLOAD_RAKP4).map_err(Fault::Malformed)?;
        let value = rakp::parse_rakp4(payload, tag, console_session_id)?;
        if !transcript.bmc_agrees(&transcript.sik(login.password), value) {
            return Err(Fault::Malformed(
                "a RAKP message 4 whose integrity check value does not match the session".into(),
            ));
        }

        let mut session = Session {
            socket,
            deadline,
            keys: transcript.keys(login.password),
            console_session_id,
            managed_session_id,
            sequence: 0,
            rq_seq: 0,
        };
        session.call(&message::set_session_privilege(login.privilege))?;
        Ok(session)
    }

    /// Sends `request` and returns the data of a successful answer; a completion code other
    /// than 0 is a refusal, in words.
    pub(crate) fn call(&mut self, request: &Request) -> Result<Vec<u8>, Fault> {
        self.sequence = self.sequence.wrapping_add(1).max(1);
        self.rq_seq = (self.rq_seq + 1) & 0x3F;
        let message = message::encode_request(request, self.rq_seq);
        let packet =
            packet::encode_protected(&self.keys, self.managed_session_id, self.sequence, &message, rand::random());
        let answer = exchange(&self.socket, self.deadline, &packet)?;
        let bytes = packet::decode_protected(&self.keys, self.console_session_id, &answer).map_err(Fault::Malformed)?;
        let reply = message::decode_response(&bytes, request, self.rq_seq).map_err(Fault::Malformed)?;
        if reply.code != 0 {
            return Err(Fault::Refused(message::completion_words(request, reply.code)));
        }
        Ok(reply.data)
    }

    /// Closes the session so that it does not hold one of the BMC's few session slots until it
    /// times out. Its outcome changes nothing for the caller (the command's answer is in), so it
    /// is not reported; past the deadline nothing is sent.
    pub(crate) fn close(mut self) {
        let _ = self.call(&message::close_session(self.managed_session_id));
    }
}

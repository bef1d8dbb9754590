//! Power control of the rack's machines (issue 17): one [`PowerDriver`] trait, implemented for
//! IPMI over LAN (RMCP+) and Redfish BMCs, and (in the appliance) for a live machine's agent.
//!
//! Every driver is blocking with its own deadline, never retries an action by itself, and reads
//! back what it set (a BMC that accepts a one-time network boot and then ignores it is a known
//! failure of the peers): an action that does not read back as asked is an error, not a success.

use std::fmt;
use std::time::Duration;

pub mod redfish;

/// Whether a machine's power is on, as its BMC reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    On,
    Off,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
        })
    }
}

/// What an operator or the controller asks of a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    On,
    /// Off at once (not a graceful shutdown: the machines run no state worth a shutdown that
    /// the cluster does not already survive).
    Off,
    /// Off then on (a hard reset where the BMC has one).
    Cycle,
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
        })
    }
}

/// Why a power request did not do what was asked. Each says what to check next; none carries a
/// credential.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// Nothing answered within the driver's deadline.
    #[error(
        "the BMC at {address} did not answer within {timeout:?}: check that it is powered, cabled and at that address"
    )]
    Unreachable { address: String, timeout: Duration },
    /// The BMC answered and refused the user name or password.
    #[error("the BMC at {address} refused the credentials for user {user:?}: set the right ones in the config, or let the agent create oasis's own user")]
    Credentials { address: String, user: String },
    /// The BMC answered with something that is not the protocol.
    #[error("the BMC at {address} answered with something that is not {protocol}: {detail}")]
    Protocol { address: String, protocol: &'static str, detail: String },
    /// The BMC understood and refused the request.
    #[error("the BMC at {address} refused to {action}: {detail}")]
    Refused { address: String, action: String, detail: String },
    /// The request was accepted but reading back shows something else.
    #[error("the BMC at {address} accepted {action} but reads back {found}: it ignored the request; power-cycle it by hand or check its firmware")]
    NotApplied { address: String, action: String, found: String },
    /// The BMC's TLS certificate is not the one pinned for it: the handshake was stopped before
    /// any request (or credential) was sent.
    #[error("the BMC at {address} presented a certificate with SHA-256 fingerprint {found}, not the pinned {pinned}; nothing was sent to it. If its certificate was replaced on purpose, pin the new fingerprint; otherwise check what answers at that address")]
    Certificate { address: String, found: String, pinned: String },
    /// This driver cannot do that at all (an agent cannot power a machine on).
    #[error("{0}")]
    Unsupported(String),
}

/// A way to control one machine's power. Every call is one request (or one short exchange)
/// with a deadline; nothing is retried here: the caller decides, with its own rate limit.
pub trait PowerDriver: Send + Sync + fmt::Debug {
    /// What kind of driver this is, for the operator: `ipmi`, `redfish`, `agent`.
    fn kind(&self) -> &'static str;
    /// Where it is reached (an address, never a credential).
    fn address(&self) -> String;
    /// The power state now.
    fn status(&self) -> Result<PowerState, PowerError>;
    /// Asks for `action`. Returns once the BMC accepted it; see [`confirm`] for the state.
    fn power(&self, action: PowerAction) -> Result<(), PowerError>;
    /// Makes the next boot (only the next) boot from the network, and reads it back.
    fn pxe_once(&self) -> Result<(), PowerError>;
}

/// Polls `driver` until its state is `want` or `timeout` has passed: the confirmation every
/// power action is followed by. Returns the state last read.
pub fn confirm(
    driver: &dyn PowerDriver,
    want: PowerState,
    timeout: Duration,
    every: Duration,
) -> Result<PowerState, PowerError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let state = driver.status()?;
        if state == want || std::time::Instant::now() >= deadline {
            return Ok(state);
        }
        std::thread::sleep(every);
    }
}

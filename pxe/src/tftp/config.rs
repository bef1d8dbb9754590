//! The settings of a TFTP server, already validated.

use std::time::Duration;

use super::packet::MAX_BLKSIZE;

/// How the server negotiates and how long it waits. Build one with `Default` and change fields;
/// [`TftpConfig::check`] (called by `TftpServer::bind`) refuses values that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TftpConfig {
    /// Largest block size granted (RFC 2348), 8..=65464. Lower it to fit the path MTU when
    /// IP fragments are dropped between the server and the racks.
    pub max_blksize: u16,
    /// Ignore the client's blksize option, like dnsmasq's `--tftp-no-blocksize`, for firmware
    /// that asks for a block size it cannot handle.
    pub no_blksize: bool,
    /// Largest window granted (RFC 7440), 1..=65535.
    pub max_windowsize: u16,
    /// Wait for an ACK before the first retransmission. A client's timeout option (RFC 2349,
    /// 1..=255 s) replaces it for that transfer.
    pub timeout: Duration,
    /// Retransmissions without progress before a transfer is abandoned.
    pub retries: u32,
    /// Transfers served at once; requests beyond get ERROR "server busy".
    pub max_transfers: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            max_blksize: MAX_BLKSIZE,
            no_blksize: false,
            max_windowsize: 64,
            timeout: Duration::from_secs(1),
            retries: 5,
            max_transfers: 1000,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("tftp max_blksize is {0}; it must be between 8 and {MAX_BLKSIZE}")]
    BlockSize(u16),
    #[error("tftp max_windowsize is 0; it must be at least 1")]
    WindowSize,
    #[error("tftp timeout is zero; it must be at least a millisecond")]
    Timeout,
    #[error("tftp max_transfers is 0; the server could never serve a file")]
    MaxTransfers,
}

impl TftpConfig {
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(8..=MAX_BLKSIZE).contains(&self.max_blksize) {
            return Err(ConfigError::BlockSize(self.max_blksize));
        }
        if self.max_windowsize == 0 {
            return Err(ConfigError::WindowSize);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Timeout);
        }
        if self.max_transfers == 0 {
            return Err(ConfigError::MaxTransfers);
        }
        Ok(())
    }
}

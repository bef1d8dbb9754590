//! Harness for the end-to-end tests: network namespaces, bridges, taps and QEMU machines.
//!
//! Everything a test creates lives in network namespaces it made ([`Netns`]); dropping a namespace
//! kills the processes started in it and deletes it, also when the test panics. Machines ([`Machine`])
//! are QEMU under TCG with real firmware: SeaBIOS with QEMU's iPXE option ROM, or OVMF with its own
//! PXE client. [`dnsmasq`] runs dnsmasq as a reference boot server or as a plain site DHCP server.
//!
//! Running the tests (root; QEMU, OVMF, ipxe-qemu, dnsmasq-base and busybox-static installed):
//!
//! ```text
//! oasis image build ipxe --out .cache/assets/ipxe                 # and test-payload, node, appliance:
//! oasis image build test-payload --out .cache/assets/payload       # see the assets step of scripts/test
//! cargo test -p oasis-e2e --test harness     # boots BIOS and UEFI guests from dnsmasq, about 50 s
//! ```
//!
//! `OASIS_ASSETS` points at another assets directory; `OASIS_E2E_LOG_DIR` keeps the serial and dnsmasq
//! logs of each boot there.

pub mod appliance;
pub mod appliance_vm;
pub mod assets;
pub mod browser;
pub mod bundles;
pub mod dhcp_client;
pub mod dnsmasq;
pub mod interrupt;
pub mod ipmi_sim;
pub mod json;
pub mod netns;
pub mod qemu;
pub mod rack;
pub mod soak;
pub mod sushy;
pub mod wireguard;
pub mod writer;

pub use appliance::{oasis, oasis_bin, Appliance};
pub use assets::{assets, node_image, trixie_node_image, workspace_root, Assets};
pub use dnsmasq::{Dnsmasq, DnsmasqConfig};
pub use netns::Netns;
pub use qemu::{DirectKernel, Firmware, Machine, MachineSpec};

/// Errors from the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A command could not be started.
    #[error("could not run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command did not start, or ran and failed (with its command line, status and stderr).
    #[error(transparent)]
    Command(#[from] oasis_host::command::CommandError),
    /// A file operation failed.
    #[error("cannot use {path}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("{what} did not happen within {timeout:?}; last output:\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The end of the relevant log.
        tail: String,
    },
    /// A process ended before what was awaited happened.
    #[error("{what} exited ({status}) before {awaited}; last output:\n{tail}")]
    Exited {
        /// The process.
        what: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// What was awaited.
        awaited: String,
        /// The end of the relevant log.
        tail: String,
    },
    /// Making or using a network namespace failed.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// The boot assets are missing or damaged.
    #[error(
        "boot assets in {dir} are not usable: {reason}; build them with `oasis image build` as scripts/test does (or set OASIS_ASSETS)"
    )]
    Assets {
        /// The assets directory.
        dir: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Result type of the harness.
pub type Result<T> = std::result::Result<T, HarnessError>;

/// Runs `cmd` to completion; errors carry the command line and its stderr.
pub fn run(cmd: &mut std::process::Command) -> Result<String> {
    let out = oasis_host::command::run(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line of `cmd`, for messages.
pub use oasis_host::command::command_line;

/// Turns an I/O error on `path` into a [`HarnessError::Io`] naming it: `.map_err(io_error(&path))`.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io { path: path.to_path_buf(), source }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

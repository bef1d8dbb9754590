//! Descriptors and connection caps. `oasis serve` raises its descriptor limit
//! ([`raise_descriptor_limit`]), then sizes the connection caps of its three HTTP listeners
//! ([`plan`]) so that all of them together, with the TFTP transfers and everything else the
//! appliance keeps open, stay within it: a flood of connections then meets a cap, never the
//! descriptor limit, and the admin socket and the store can always open what they need.
//!
//! The appliance image starts `oasis serve` from its own init, which leaves the kernel's default
//! limit (1,024 soft, 4,096 hard); as root `serve` raises both to [`WANTED_NOFILE`].

use std::fmt;
use std::io;

use oasis_pxe::conn_limit::{Caps, Prefix};

/// The descriptor limit `serve` asks for: room for every cap at full size ([`full_need`] is
/// under 7,000 with TFTP's default 1,000 transfers) nine times over. Not the kernel's maximum: a
/// huge limit costs memory in programs that size tables by it.
pub const WANTED_NOFILE: u64 = 65_536;
/// Descriptors kept for everything that is not a client connection or a TFTP transfer: the
/// store, the DHCP, conflict-check and WireGuard sockets, assembly's etcd and k3s clients, the
/// listeners, logs, and files being read by the console or a USB stick.
pub const FD_RESERVED: u64 = 512;
/// A connection can hold two descriptors: its socket, and the file it is being sent (a boot file
/// or an agent artifact).
pub const FDS_PER_CONNECTION: u64 = 2;
/// A TFTP transfer holds its own socket and the file it sends.
pub const FDS_PER_TFTP_TRANSFER: u64 = 2;

/// HTTP boot: a rack of hundreds of machines booting at once uses one connection each. Every
/// connection sending a file may hold a 256 KiB chunk in memory, so a thousand of them is also
/// where memory, not descriptors, would start to matter.
pub const HTTP_TOTAL: usize = 1024;
/// iPXE and UEFI HTTP boot use one connection at a time; curl or a benchmark a few.
pub const HTTP_PER_SOURCE: usize = 32;
/// The API: registrations from the rack, heartbeats, watches and artifact downloads from the
/// overlay (an agent holds at most a watch and one other request).
pub const API_TOTAL: usize = 1024;
/// API slots only the management overlay (the WireGuard prefix) may use: the agents' traffic
/// keeps a quarter of the API whatever the rack side does.
pub const API_OVERLAY_RESERVED: usize = 256;
/// As for HTTP boot.
pub const API_PER_SOURCE: usize = 32;
/// The admin socket: the CLI and the console's status view, one request at a time each.
pub const ADMIN_TOTAL: usize = 64;

/// The smallest caps used, however low the descriptor limit: below these the appliance could not
/// boot a rack or be administered, and it says so (see [`Plan::scaled`]).
const HTTP_MIN: usize = 16;
const API_MIN: usize = 16;
const ADMIN_MIN: usize = 4;

/// The descriptor limit in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorLimit {
    pub soft: u64,
    pub hard: u64,
}

impl fmt::Display for DescriptorLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (hard limit {})", self.soft, self.hard)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read or set the descriptor limit (RLIMIT_NOFILE)")]
pub struct LimitError(#[source] pub io::Error);

fn get_nofile() -> io::Result<DescriptorLimit> {
    let (soft, hard) = oasis_host::sys::nofile_limit()?;
    Ok(DescriptorLimit { soft, hard })
}

fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    // The limit is the process's, which is what `serve` means to change.
    oasis_host::sys::set_nofile_limit(soft, hard)
}

/// What the kernel allows a hard limit to be raised to (`fs.nr_open`).
fn kernel_max() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20)
}

/// Raises the soft descriptor limit to [`WANTED_NOFILE`]; when the hard limit is lower, raises it
/// too if this process may (root), else the soft limit to the hard one. Returns the limit then in
/// force. A limit already above [`WANTED_NOFILE`] is left alone.
pub fn raise_descriptor_limit() -> Result<DescriptorLimit, LimitError> {
    let before = get_nofile().map_err(LimitError)?;
    let wanted = WANTED_NOFILE.min(kernel_max());
    if before.soft >= wanted {
        return Ok(before);
    }
    if before.hard >= wanted {
        set_nofile(wanted, before.hard).map_err(LimitError)?;
    } else if let Err(e) = set_nofile(wanted, wanted) {
        // Without CAP_SYS_RESOURCE the hard limit cannot go up: take what it allows.
        tracing::debug!("the hard descriptor limit {} stays: {e}", before.hard);
        if before.soft < before.hard {
            set_nofile(before.hard, before.hard).map_err(LimitError)?;
        }
    }
    get_nofile().map_err(LimitError)
}

/// The caps of the three listeners for one descriptor limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub http: Caps,
    pub api: Caps,
    pub admin: Caps,
    /// Whether the caps are below their full size because the limit is too low for them.
    pub scaled: bool,
}

impl Plan {
    /// Descriptors the plan can use at most, with `tftp_transfers` transfers at once.
    pub fn need(&self, tftp_transfers: usize) -> u64 {
        let listeners: u64 = [&self.http, &self.api, &self.admin].into_iter().map(listener_need).sum();
        FD_RESERVED + FDS_PER_TFTP_TRANSFER * tftp_transfers as u64 + listeners
    }
}

/// Descriptors one listener can hold: [`FDS_PER_CONNECTION`] per connection, and a socket for
/// each evicted connection still closing (see [`Caps::closing_max`]).
fn listener_need(caps: &Caps) -> u64 {
    FDS_PER_CONNECTION * caps.total as u64 + caps.closing_max() as u64
}

/// Descriptors the full-size caps need with `tftp_transfers` transfers at once.
pub fn full_need(tftp_transfers: usize) -> u64 {
    plan(u64::MAX, tftp_transfers, Prefix::new(std::net::Ipv4Addr::UNSPECIFIED, 0)).need(tftp_transfers)
}

/// Sizes the caps for a descriptor limit of `nofile`, with TFTP serving up to `tftp_transfers`
/// at once and the management overlay at `overlay`. When the limit is too low for the full caps,
/// the totals shrink to share what is left after [`FD_RESERVED`] and TFTP (never below a small
/// minimum each), the overlay keeps a quarter of the API's, and the per-source caps shrink to a
/// quarter of their listener's total when that is smaller.
pub fn plan(nofile: u64, tftp_transfers: usize, overlay: Prefix) -> Plan {
    let full = HTTP_TOTAL + API_TOTAL + ADMIN_TOTAL;
    let spare_fds = nofile.saturating_sub(FD_RESERVED + FDS_PER_TFTP_TRANSFER * tftp_transfers as u64);
    // Connections that fit: each takes FDS_PER_CONNECTION, plus an eighth of a socket for the
    // evicted ones still closing (one at least per listener, hence the 3).
    let room = u128::from(spare_fds.saturating_sub(3)) * 8 / u128::from(8 * FDS_PER_CONNECTION + 1);
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    let scaled = room < full;
    // Each listener keeps its minimum, and what is left over is shared in proportion to the
    // full caps, so the totals never add up to more than the room unless the minimums do.
    let mins = HTTP_MIN + API_MIN + ADMIN_MIN;
    let spare = room.saturating_sub(mins);
    let share = |cap: usize, min: usize| if scaled { min + (cap - min) * spare / (full - mins) } else { cap };
    let (http, api, admin) = (share(HTTP_TOTAL, HTTP_MIN), share(API_TOTAL, API_MIN), share(ADMIN_TOTAL, ADMIN_MIN));
    let per_source = |cap: usize, total: usize| cap.min((total / 4).max(1));
    let reserved = if scaled { api / 4 } else { API_OVERLAY_RESERVED };
    Plan {
        http: Caps::new(http, per_source(HTTP_PER_SOURCE, http)),
        api: Caps::new(api, per_source(API_PER_SOURCE, api)).with_reserve(overlay, reserved),
        // Every admin connection comes from the same (unnamed) peer: the total is the cap.
        admin: Caps::new(admin, admin),
        scaled,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn overlay() -> Prefix {
        Prefix::new(Ipv4Addr::new(10, 99, 0, 1), 16)
    }

    #[test]
    fn a_generous_limit_gets_the_full_caps() {
        let p = plan(WANTED_NOFILE, 1000, overlay());
        assert!(!p.scaled);
        assert_eq!((p.http.total, p.http.per_source), (HTTP_TOTAL, HTTP_PER_SOURCE));
        assert_eq!((p.api.total, p.api.per_source, p.api.reserved), (API_TOTAL, API_PER_SOURCE, API_OVERLAY_RESERVED));
        assert_eq!(p.api.priority, Some(overlay()));
        assert_eq!(p.admin.total, ADMIN_TOTAL);
        assert_eq!(p.need(1000), full_need(1000));
        assert!(full_need(1000) * 5 < WANTED_NOFILE, "the wanted limit is well above the full caps' need");
    }

    #[test]
    fn the_caps_fit_in_any_limit_that_holds_the_minimums() {
        let minimum = |tftp: usize| plan(0, tftp, overlay()).need(tftp);
        for tftp in [0, 100, 1000, 5000] {
            for nofile in (0..=40_000).step_by(97).chain([1024, 4096, 20_000]) {
                let p = plan(nofile, tftp, overlay());
                assert!(!p.scaled || nofile < full_need(tftp), "limit {nofile}, {tftp} transfers");
                assert!(p.need(tftp) <= nofile.max(minimum(tftp)), "limit {nofile}, {tftp} transfers: {p:?}");
                assert!(p.http.total >= HTTP_MIN && p.api.total >= API_MIN && p.admin.total >= ADMIN_MIN);
                for caps in [&p.http, &p.api, &p.admin] {
                    assert!(caps.per_source >= 1 && caps.per_source <= caps.total, "{caps:?}");
                }
                assert!(p.api.reserved < p.api.total && p.api.ordinary_total() > 0, "{:?}", p.api);
            }
        }
    }

    #[test]
    fn the_kernel_default_limits_scale_the_caps_down() {
        // The appliance image without root's raise: soft 1,024 of hard 4,096.
        let p = plan(4096, 1000, overlay());
        assert!(p.scaled);
        assert_eq!((p.http.total, p.http.per_source), (359, 32));
        assert_eq!((p.api.total, p.api.reserved), (359, 89));
        assert_eq!(p.admin.total, 24);
        assert!(p.need(1000) <= 4096);
        // 1,024 is all TFTP's: the minimums, and the warning that comes with `scaled`.
        let p = plan(1024, 1000, overlay());
        assert_eq!((p.http.total, p.http.per_source, p.api.total, p.admin.total), (16, 4, 16, 4));
    }

    #[test]
    fn the_limit_is_raised_and_never_lowered() {
        let before = get_nofile().unwrap();
        let after = raise_descriptor_limit().unwrap();
        assert!(after.soft >= before.soft.min(WANTED_NOFILE) && after.soft <= after.hard, "{before} -> {after}");
        assert!(after.soft >= WANTED_NOFILE.min(before.hard), "{before} -> {after}");
        assert_eq!(raise_descriptor_limit().unwrap(), after, "a second raise changes nothing");
    }
}

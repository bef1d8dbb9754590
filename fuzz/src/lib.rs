//! What the oasis fuzz targets share: the boot root fixture, a DHCP service as `oasis serve` builds
//! one (in memory), a way to cut one fuzz input into several messages, and [`SparseDisk`], the
//! disk image the GPT and USB label targets read.
//!
//! The targets live in `fuzz_targets/`, one per parser that faces the rack or a USB stick; run
//! them with `scripts/fuzz` (see `fuzz/README.md`).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oasis_pxe::dhcp::conflict::NoCheck;
use oasis_pxe::dhcp::{DhcpConfig, DhcpService, MemoryStore, Mode, NetworkOptions, Pool};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::policy::BootPolicy;

/// The appliance's address in every target.
pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// Splits one fuzz input into several messages at [`SEPARATOR`], so a target can play an
/// exchange (DISCOVER then REQUEST, a registration then its replay). At most `max` pieces: the
/// last one keeps any further separators.
pub fn messages(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < max {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

/// What separates the messages of one input (see [`messages`]): unlikely inside a real one.
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// The boot root fixture checked in beside the targets: `node/vmlinuz`, `node/initrd.img`,
/// `ipxe/undionly.kpxe`, an empty file, and two symlinks that lead out of it (`leak`, `outdir`).
pub fn boot_root_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/boot-root")
}

/// DHCP in full mode: a pool of 100 addresses with one reservation, as in `docs/oasis.toml`.
pub fn full_mode() -> Mode {
    Mode::Full {
        pool: Pool {
            start: Ipv4Addr::new(10, 0, 0, 100),
            end: Ipv4Addr::new(10, 0, 0, 199),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            reservations: HashMap::from([(
                oasis_proto::MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x42]),
                Ipv4Addr::new(10, 0, 0, 50),
            )]),
            lease_secs: 3600,
            probation_secs: 600,
        },
        authoritative: true,
        network: NetworkOptions {
            router: Some(SERVER),
            dns_servers: vec![SERVER],
            domain_name: Some("rack.example".into()),
            ntp_servers: vec![SERVER],
        },
    }
}

/// A fresh DHCP service in `mode`, on an in-memory lease store, with no conflict checks and a
/// fixed clock, the rate limits of `docs/oasis.toml`, and `tolerate_missing_uuid` as given.
pub fn dhcp_service(mode: Mode, tolerate_missing_uuid: bool) -> DhcpService {
    let config = DhcpConfig {
        mode,
        interface: "rack0".into(),
        server: SERVER,
        server_port: 67,
        client_port: 68,
        proxy_port: 4011,
        policy: BootPolicy { server: SERVER, http_port: 80, ipxe_dir: "ipxe".into() },
        rate_per_sec: 10,
        rate_burst: 30,
        reply_delay: Duration::ZERO,
        tolerate_missing_uuid,
    };
    let metrics = Arc::new(Metrics::default());
    DhcpService::new(config, Arc::new(MemoryStore::default()), Arc::new(NoCheck), metrics)
        .expect("an empty memory store always loads")
        // A fixed clock: the same input meets the same lease times every run.
        .with_clock(|| 1_700_000_000)
}

/// A current-thread tokio runtime, for targets that drive async code one input at a time.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
}

/// Bytes per sector of a [`SparseDisk`].
pub const SECTOR: usize = 512;

/// A disk image described by a short input: its size, then the sectors that are not zeros. Real
/// disks are mostly zeros where the GPT and label readers look (a GPT needs at least 70 sectors, an
/// ISO 9660 descriptor lies 32 KiB in, the data partition 1 GiB in), so a fuzz input of a few KiB
/// describes any of them, and a disk of any size costs only the sectors written.
///
/// Input: the size in sectors (u32, little-endian), then chunks of `[first sector: u32 LE][count - 1:
/// u8][count * 512 bytes]`; a short last chunk is zero-padded, and what lies past the end is dropped.
/// Reads past the end return nothing; writes past it fail, as on a block device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseDisk {
    sectors: BTreeMap<u64, Box<[u8; SECTOR]>>,
    len: u64,
    pos: u64,
}

impl SparseDisk {
    /// The disk a fuzz input describes (see the type's documentation).
    pub fn from_fuzz(data: &[u8]) -> Self {
        let Some((size, mut rest)) = data.split_first_chunk::<4>() else { return Self::default() };
        let mut disk = Self::zeroed(u64::from(u32::from_le_bytes(*size)));
        while let Some((&[a, b, c, d, count], tail)) = rest.split_first_chunk::<5>() {
            let first = u64::from(u32::from_le_bytes([a, b, c, d]));
            let (bytes, next) = tail.split_at(tail.len().min((usize::from(count) + 1) * SECTOR));
            for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
                let mut sector = [0u8; SECTOR];
                sector[..chunk.len()].copy_from_slice(chunk);
                disk.put(first + i as u64, sector);
            }
            rest = next;
        }
        disk
    }

    /// An all-zero disk of `sectors` sectors.
    pub fn zeroed(sectors: u64) -> Self {
        Self { sectors: BTreeMap::new(), len: sectors * SECTOR as u64, pos: 0 }
    }

    /// The fuzz input for the first `sectors` sectors of `image` (zero-padded): how seeds are made
    /// from real images.
    pub fn encode(image: &[u8], sectors: u32) -> Vec<u8> {
        let mut out = sectors.to_le_bytes().to_vec();
        let is_zero = |s: &[u8]| s.iter().all(|&b| b == 0);
        let chunks: Vec<&[u8]> = image.chunks(SECTOR).take(sectors as usize).collect();
        let mut i = 0;
        while i < chunks.len() {
            if is_zero(chunks[i]) {
                i += 1;
                continue;
            }
            let run = chunks[i..].iter().take(256).take_while(|c| !is_zero(c)).count();
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.push((run - 1) as u8);
            for chunk in &chunks[i..i + run] {
                out.extend_from_slice(chunk);
                out.resize(out.len() + SECTOR - chunk.len(), 0);
            }
            i += run;
        }
        out
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a disk of no sectors.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same disk behind `by` more zero sectors: a partition that starts there.
    pub fn shifted(&self, by: u64) -> Self {
        let sectors = self.sectors.iter().map(|(n, s)| (n + by, s.clone())).collect();
        Self { sectors, len: self.len + by * SECTOR as u64, pos: 0 }
    }

    fn put(&mut self, n: u64, sector: [u8; SECTOR]) {
        if n < self.len / SECTOR as u64 {
            self.sectors.insert(n, Box::new(sector));
        }
    }
}

impl Read for SparseDisk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)).min(SECTOR - self.pos as usize % SECTOR);
        let at = self.pos as usize % SECTOR;
        match self.sectors.get(&(self.pos / SECTOR as u64)) {
            Some(sector) => buf[..n].copy_from_slice(&sector[at..at + n]),
            None => buf[..n].fill(0),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.len {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "write past the end of the disk"));
        }
        let at = self.pos as usize % SECTOR;
        let n = buf.len().min(SECTOR - at).min(usize::try_from(self.len - self.pos).unwrap_or(usize::MAX));
        let sector = self.sectors.entry(self.pos / SECTOR as u64).or_insert_with(|| Box::new([0; SECTOR]));
        sector[at..at + n].copy_from_slice(&buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDisk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            pos.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the disk"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_at_the_separator_up_to_max() {
        let input = [b"a".as_slice(), SEPARATOR, b"bc", SEPARATOR, b"", SEPARATOR, b"d"].concat();
        assert_eq!(messages(&input, 8), vec![b"a".as_slice(), b"bc", b"", b"d"]);
        let tail = [b"bc".as_slice(), SEPARATOR, b"", SEPARATOR, b"d"].concat();
        assert_eq!(messages(&input, 2), vec![b"a".as_slice(), &tail]);
        assert_eq!(messages(b"plain", 4), vec![b"plain".as_slice()]);
    }

    #[test]
    fn a_sparse_disk_reads_back_the_image_it_was_encoded_from() {
        let mut image = vec![0u8; 300 * SECTOR];
        image[0] = 1;
        image[SECTOR * 2 + 7] = 2;
        image[SECTOR * 3..SECTOR * 290].fill(3); // a run longer than one chunk
        image[SECTOR * 299 + 511] = 4;
        let input = SparseDisk::encode(&image, 300);
        assert!(input.len() < image.len());
        let mut disk = SparseDisk::from_fuzz(&input);
        assert_eq!(disk.len(), image.len() as u64);
        let mut read = Vec::new();
        disk.read_to_end(&mut read).unwrap();
        assert_eq!(read, image);

        disk.seek(SeekFrom::Start(SECTOR as u64 * 299 + 510)).unwrap();
        disk.write_all(b"xy").unwrap();
        assert!(disk.write_all(b"z").is_err(), "past the end");
        let mut shifted = disk.shifted(2);
        let mut tail = [0u8; 2];
        shifted.seek(SeekFrom::Start(SECTOR as u64 * 301 + 510)).unwrap();
        shifted.read_exact(&mut tail).unwrap();
        assert_eq!(&tail, b"xy");
    }
}

//! What a machine is, read from `/sys` and `/proc` (roots are parameters so tests read fixture
//! trees).
//!
//! Reading never fails as a whole: a machine with an odd firmware or a missing file still
//! registers, with that field empty. Firmware placeholder strings ("To Be Filled By O.E.M.") and
//! all-zero or all-F UUIDs are dropped, because two machines sharing one would look like one.

use std::fs;
use std::path::{Path, PathBuf};

use oasis_proto::{BootMode, Disk, Inventory, Nic, System};

/// Where the kernel's views of the machine are mounted: `/sys` and `/proc` on a real machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots { sys: PathBuf::from("/sys"), proc: PathBuf::from("/proc") }
    }
}

/// Block devices that are not disks a cluster could use.
const SKIPPED_DISK_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "sr"];

/// Strings vendors leave in SMBIOS fields they did not fill (compared case-insensitively).
const PLACEHOLDERS: &[&str] = &[
    "to be filled by o.e.m.",
    "default string",
    "0",
    "none",
    "n/a",
    "not specified",
    "not applicable",
    "system serial number",
    "system product name",
    "system manufacturer",
    "system version",
    "0123456789",
    "123456789",
    "unknown",
];

/// Reads everything [`Inventory`] holds.
pub fn read(roots: &Roots) -> Inventory {
    let (cpus, cpu_model) = cpus(&roots.proc);
    Inventory {
        system: system(&roots.sys),
        cpus,
        cpu_model,
        memory_bytes: memory_bytes(&roots.proc),
        disks: disks(&roots.sys),
        nics: nics(&roots.sys),
        boot_mode: if roots.sys.join("firmware/efi").is_dir() { BootMode::Uefi } else { BootMode::Bios },
        bmc: None,
    }
}

fn system(sys: &Path) -> System {
    let dmi = sys.join("class/dmi/id");
    let field = |name: &str| read_trimmed(&dmi.join(name)).filter(|v| !is_placeholder(v));
    System {
        uuid: field("product_uuid").filter(|u| oasis_proto::usable_smbios_uuid(u)).map(|u| u.to_lowercase()),
        serial: field("product_serial"),
        vendor: field("sys_vendor"),
        product: field("product_name"),
    }
}

fn is_placeholder(value: &str) -> bool {
    value.is_empty() || PLACEHOLDERS.iter().any(|p| value.eq_ignore_ascii_case(p))
}

fn cpus(proc: &Path) -> (u32, Option<String>) {
    let Ok(text) = fs::read_to_string(proc.join("cpuinfo")) else { return (0, None) };
    let mut count = 0;
    let mut model = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        match key.trim() {
            "processor" => count += 1,
            "model name" if model.is_none() => model = Some(value.trim().to_string()).filter(|m| !m.is_empty()),
            _ => {}
        }
    }
    (count, model)
}

fn memory_bytes(proc: &Path) -> u64 {
    let Ok(text) = fs::read_to_string(proc.join("meminfo")) else { return 0 };
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn disks(sys: &Path) -> Vec<Disk> {
    let mut disks: Vec<Disk> = sorted_entries(&sys.join("block"))
        .into_iter()
        .filter(|(name, _)| !SKIPPED_DISK_PREFIXES.iter().any(|p| name.starts_with(p)))
        .map(|(name, dir)| Disk {
            size_bytes: read_trimmed(&dir.join("size")).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 512,
            model: read_trimmed(&dir.join("device/model")).filter(|m| !m.is_empty()),
            rotational: read_trimmed(&dir.join("queue/rotational")).as_deref() == Some("1"),
            name,
        })
        .collect();
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// Interfaces backed by hardware (those with a `device` link); `lo`, bridges and the agent's own
/// WireGuard interface have none.
fn nics(sys: &Path) -> Vec<Nic> {
    sorted_entries(&sys.join("class/net"))
        .into_iter()
        .filter(|(_, dir)| dir.join("device").symlink_metadata().is_ok())
        .map(|(name, dir)| Nic {
            mac: read_trimmed(&dir.join("address")).unwrap_or_default().to_lowercase(),
            driver: fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned())),
            // -1 (no link) and EINVAL (interface down) both mean "unknown".
            speed_mbps: read_trimmed(&dir.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| u32::try_from(s).ok()),
            link: read_trimmed(&dir.join("carrier")).as_deref() == Some("1"),
            name,
        })
        .collect()
}

fn sorted_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<(String, PathBuf)> =
        entries.flatten().map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())).collect();
    found.sort();
    found
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Roots {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        Roots { sys: base.join("sys"), proc: base.join("proc") }
    }

    #[test]
    fn a_qemu_guest() {
        let inv = read(&fixture("qemu-guest"));
        assert_eq!(
            inv.system,
            System {
                uuid: Some("6a1c3d2e-8f4b-4c1a-9e2d-0b7f5a3c9d18".into()),
                serial: None,
                vendor: Some("QEMU".into()),
                product: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            }
        );
        assert_eq!((inv.cpus, inv.cpu_model.as_deref()), (2, Some("QEMU Virtual CPU version 2.5+")));
        assert_eq!(inv.memory_bytes, 2030460 * 1024);
        assert_eq!(
            inv.disks,
            vec![Disk { name: "vda".into(), size_bytes: 41943040 * 512, model: None, rotational: false }]
        );
        assert_eq!(
            inv.nics,
            vec![
                Nic {
                    name: "ens3".into(),
                    mac: "52:54:00:12:34:56".into(),
                    driver: Some("virtio_net".into()),
                    speed_mbps: None,
                    link: true,
                },
                Nic {
                    name: "ens4".into(),
                    mac: "52:54:00:ab:cd:ef".into(),
                    driver: Some("e1000".into()),
                    speed_mbps: Some(1000),
                    link: false,
                },
            ]
        );
        assert_eq!(inv.boot_mode, BootMode::Uefi);
    }

    #[test]
    fn a_server_with_placeholder_firmware_strings() {
        let inv = read(&fixture("server-placeholders"));
        assert_eq!(inv.system, System::default());
        assert_eq!((inv.cpus, inv.cpu_model.as_deref()), (4, Some("Intel(R) Xeon(R) Silver 4210 CPU @ 2.20GHz")));
        assert_eq!(inv.memory_bytes, 131899064 * 1024);
        assert_eq!(
            inv.disks,
            vec![
                Disk {
                    name: "nvme0n1".into(),
                    size_bytes: 1875385008 * 512,
                    model: Some("SAMSUNG MZQL2960HCJR-00A07".into()),
                    rotational: false,
                },
                Disk {
                    name: "sda".into(),
                    size_bytes: 7814037168 * 512,
                    model: Some("ST4000NM000A-2HZ".into()),
                    rotational: true,
                },
            ]
        );
        let eno2 = &inv.nics[1];
        assert_eq!((eno2.name.as_str(), eno2.driver.as_ref(), eno2.speed_mbps, eno2.link), ("eno2", None, None, false));
        assert_eq!(inv.nics[0].driver.as_deref(), Some("ixgbe"));
        assert_eq!(inv.nics[0].speed_mbps, Some(10000));
        assert_eq!(inv.boot_mode, BootMode::Bios);
    }

    #[test]
    fn placeholder_uuids_are_dropped_and_real_ones_kept() {
        for bogus in [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-FFFFFFFFFFFF",
            "03000200-0400-0500-0006-000700080009",
            "not-a-uuid",
        ] {
            assert!(!oasis_proto::usable_smbios_uuid(bogus), "{bogus}");
        }
        assert!(oasis_proto::usable_smbios_uuid("6a1c3d2e-8f4b-4c1a-9e2d-0b7f5a3c9d18"));
        assert!(is_placeholder("To be filled by O.E.M."));
        assert!(!is_placeholder("PowerEdge R650"));
    }

    #[test]
    fn an_empty_root_gives_an_empty_inventory_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let inv = read(&Roots { sys: dir.path().join("sys"), proc: dir.path().join("proc") });
        assert_eq!(inv, Inventory::default());
    }

    #[test]
    fn this_machine_reads_without_panicking_and_finds_cpus() {
        let inv = read(&Roots::default());
        assert!(inv.cpus >= 1);
        assert!(inv.memory_bytes > 0);
    }
}

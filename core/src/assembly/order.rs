//! The choice order: which machines get control-plane places first.
//!
//! Machines meeting more of the configured preferences come first; among equals, by SMBIOS serial
//! (machines without one after those with one), then by machine id. The order depends only on
//! what the machines are, never on when they arrived, so re-powering a rack in any order gives the
//! same choice.

use std::cmp::Ordering;

use oasis_proto::Inventory;

const GIB: u64 = 1024 * 1024 * 1024;

/// One preference, e.g. `cpus >= 4`, `memory_gib >= 16`, `disk_gib >= 100`, `ssd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preference {
    AtLeast {
        what: Quantity,
        value: u64,
    },
    AtMost {
        what: Quantity,
        value: u64,
    },
    /// Has a non-rotational disk.
    Ssd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Cpus,
    MemoryGib,
    /// The largest disk.
    DiskGib,
}

impl Quantity {
    fn of(self, inventory: &Inventory) -> u64 {
        match self {
            Quantity::Cpus => u64::from(inventory.cpus),
            Quantity::MemoryGib => inventory.memory_bytes / GIB,
            Quantity::DiskGib => inventory.disks.iter().map(|d| d.size_bytes).max().unwrap_or(0) / GIB,
        }
    }
}

impl std::str::FromStr for Preference {
    type Err = String;

    fn from_str(s: &str) -> Result<Preference, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let bad = || {
            format!(
                "{s:?} is not a preference: use \"cpus >= N\", \"memory_gib >= N\", \"disk_gib >= N\" (or <=), or \"ssd\""
            )
        };
        match words.as_slice() {
            ["ssd"] => Ok(Preference::Ssd),
            [what, op, value] => {
                let what = match *what {
                    "cpus" => Quantity::Cpus,
                    "memory_gib" => Quantity::MemoryGib,
                    "disk_gib" => Quantity::DiskGib,
                    _ => return Err(bad()),
                };
                let value = value.parse().map_err(|_| bad())?;
                match *op {
                    ">=" => Ok(Preference::AtLeast { what, value }),
                    "<=" => Ok(Preference::AtMost { what, value }),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }
}

impl Preference {
    pub fn met_by(&self, inventory: &Inventory) -> bool {
        match self {
            Preference::AtLeast { what, value } => what.of(inventory) >= *value,
            Preference::AtMost { what, value } => what.of(inventory) <= *value,
            Preference::Ssd => inventory.disks.iter().any(|d| !d.rotational),
        }
    }
}

/// Compares two machines (`id`, inventory) in choice order.
pub fn choice_order(preferences: &[Preference], a: (&str, &Inventory), b: (&str, &Inventory)) -> Ordering {
    let unmet = |inv: &Inventory| preferences.iter().filter(|p| !p.met_by(inv)).count();
    let serial = |inv: &Inventory| inv.system.serial.clone().map(|s| s.to_lowercase());
    unmet(a.1)
        .cmp(&unmet(b.1))
        .then_with(|| match (serial(a.1), serial(b.1)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| a.0.cmp(b.0))
}

#[cfg(test)]
mod tests {
    use oasis_proto::Disk;

    use super::*;

    fn machine(serial: Option<&str>, cpus: u32, ssd: bool) -> Inventory {
        let mut inv = Inventory { cpus, memory_bytes: 8 * GIB, ..Inventory::default() };
        inv.system.serial = serial.map(String::from);
        inv.disks.push(Disk { name: "sda".into(), size_bytes: 500 * GIB, model: None, rotational: !ssd });
        inv
    }

    #[test]
    fn serials_order_machines_and_preferences_come_first() {
        let a = machine(Some("B-2"), 2, false);
        let b = machine(Some("a-1"), 2, false);
        let c = machine(None, 2, false);
        let d = machine(Some("z-9"), 8, true);
        let mut all = [("m-a", &a), ("m-b", &b), ("m-c", &c), ("m-d", &d)];
        all.sort_by(|x, y| choice_order(&[], *x, *y));
        assert_eq!(all.iter().map(|m| m.0).collect::<Vec<_>>(), ["m-b", "m-a", "m-d", "m-c"]);
        let prefs: Vec<Preference> = ["cpus >= 4", "ssd"].iter().map(|p| p.parse().unwrap()).collect();
        all.sort_by(|x, y| choice_order(&prefs, *x, *y));
        assert_eq!(all[0].0, "m-d");
    }

    #[test]
    fn preferences_parse_or_explain() {
        assert_eq!("memory_gib >= 16".parse(), Ok(Preference::AtLeast { what: Quantity::MemoryGib, value: 16 }));
        assert_eq!("disk_gib <= 100".parse(), Ok(Preference::AtMost { what: Quantity::DiskGib, value: 100 }));
        for bad in ["cpus > 4", "gpus >= 1", "cpus >= many", "", "ssd please"] {
            let err = bad.parse::<Preference>().unwrap_err();
            assert!(err.contains("is not a preference"), "{err}");
        }
    }
}

//! Symbol versions: a program built against a newer C library names versions (`GLIBC_2.38`) that
//! an older one does not define, and the loader refuses to start it. [`check_versions`] checks a
//! program served beside the initramfs (etcd of another Debian suite) against the very library
//! files the initramfs carries.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::{ElfError, RuntimeFile};

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<goblin::elf::Elf<'a>, ElfError> {
    goblin::elf::Elf::parse(bytes).map_err(|e| ElfError::NotElf { path: path.to_path_buf(), reason: e.to_string() })
}

/// The versions `path` needs, by the library (soname) that must define them.
pub fn needed_versions(path: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, ElfError> {
    let bytes = fs::read(path).map_err(|source| ElfError::Io { path: path.to_path_buf(), source })?;
    let elf = parse(path, &bytes)?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for need in elf.verneed.iter().flat_map(|s| s.iter()) {
        let Some(file) = elf.dynstrtab.get_at(need.vn_file) else { continue };
        let names = out.entry(file.to_string()).or_default();
        names.extend(need.iter().filter_map(|aux| elf.dynstrtab.get_at(aux.vna_name)).map(str::to_string));
    }
    Ok(out)
}

/// The versions the library at `path` defines.
pub fn defined_versions(path: &Path) -> Result<BTreeSet<String>, ElfError> {
    let bytes = fs::read(path).map_err(|source| ElfError::Io { path: path.to_path_buf(), source })?;
    let elf = parse(path, &bytes)?;
    Ok(elf
        .verdef
        .iter()
        .flat_map(|s| s.iter())
        .flat_map(|def| {
            def.iter().filter_map(|aux| elf.dynstrtab.get_at(aux.vda_name)).map(str::to_string).collect::<Vec<_>>()
        })
        .collect())
}

/// Checks that every symbol version `program` needs is defined by the library of that name
/// among `carried` (the files the initramfs carries). A library not carried at all is
/// [`super::check_carried`]'s to report; it is skipped here.
pub fn check_versions(program: &Path, carried: &[RuntimeFile]) -> Result<(), ElfError> {
    for (library, versions) in needed_versions(program)? {
        let Some(file) = carried.iter().find(|f| f.image_path.rsplit('/').next() == Some(library.as_str())) else {
            continue;
        };
        let defined = defined_versions(&file.host_path)?;
        if let Some(missing) = versions.iter().find(|v| !defined.contains(*v)) {
            let newest = newest_like(&defined, missing);
            return Err(ElfError::VersionNotCarried {
                program: program.to_path_buf(),
                library,
                version: missing.clone(),
                newest: newest.cloned().unwrap_or_else(|| "none".to_string()),
            });
        }
    }
    Ok(())
}

/// The newest of `defined` in the family of `version` (`GLIBC_2.36` for `GLIBC_2.38`).
fn newest_like<'a>(defined: &'a BTreeSet<String>, version: &str) -> Option<&'a String> {
    let family = version.split_once('_').map_or(version, |(p, _)| p);
    defined
        .iter()
        .filter(|d| d.split_once('_').is_some_and(|(p, n)| p == family && n.contains('.')))
        .max_by(|a, b| version_order(a, b))
}

/// Orders `GLIBC_2.9` before `GLIBC_2.36`: by name, then numerically part by part.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |v: &str| {
        let (name, number) = v.split_once('_').unwrap_or((v, ""));
        (name.to_string(), number.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>())
    };
    key(a).cmp(&key(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{runtime_files, HOST_LIBRARY_DIRS};

    #[test]
    fn a_host_program_runs_on_the_hosts_libc_and_a_newer_version_is_refused() {
        let sh = Path::new("/bin/sh");
        let needed = needed_versions(sh).unwrap();
        let libc = needed.get("libc.so.6").expect("/bin/sh names libc versions");
        assert!(libc.iter().all(|v| v.starts_with("GLIBC_")), "{libc:?}");
        let carried = runtime_files(sh, HOST_LIBRARY_DIRS).unwrap();
        check_versions(sh, &carried).unwrap();

        let libc_file = carried.iter().find(|f| f.image_path.ends_with("/libc.so.6")).unwrap();
        let defined = defined_versions(&libc_file.host_path).unwrap();
        assert!(defined.contains("GLIBC_2.2.5") && defined.contains("GLIBC_2.34"), "{defined:?}");
        // A "libc" that defines nothing: what /bin/sh needs is missing from it.
        let fake = vec![RuntimeFile { image_path: "/lib/x86_64-linux-gnu/libc.so.6".into(), host_path: sh.into() }];
        let err = check_versions(sh, &fake).unwrap_err();
        assert!(matches!(err, ElfError::VersionNotCarried { ref library, .. } if library == "libc.so.6"), "{err}");
        assert!(err.to_string().contains("GLIBC_") && err.to_string().contains("up to none"), "{err}");
    }

    #[test]
    fn the_newest_version_named_is_of_the_same_family() {
        let libc = runtime_files(Path::new("/bin/sh"), HOST_LIBRARY_DIRS).unwrap();
        let libc = libc.iter().find(|f| f.image_path.ends_with("/libc.so.6")).unwrap();
        let defined = defined_versions(&libc.host_path).unwrap();
        // Debian 12's glibc is 2.36; its soname and GLIBC_PRIVATE are no versions to name.
        assert_eq!(newest_like(&defined, "GLIBC_2.38").map(String::as_str), Some("GLIBC_2.36"));
        assert_eq!(newest_like(&defined, "GCC_3.0"), None);
    }

    #[test]
    fn versions_order_numerically() {
        let mut v = vec!["GLIBC_2.36", "GLIBC_2.9", "GLIBC_2.2.5", "GLIBC_2.34"];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(v, ["GLIBC_2.2.5", "GLIBC_2.9", "GLIBC_2.34", "GLIBC_2.36"]);
    }
}

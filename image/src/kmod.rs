//! Kernel modules for an initramfs: the closure of a set of modules over their dependencies, and the
//! `modules.dep` / `modules.alias` files for exactly that set.
//!
//! Debian's kernel package ships the `.ko` files but not `modules.dep` or `modules.alias`: `depmod`
//! writes those when the package is installed. We never install it, so both are built here from each
//! module's own `.modinfo` section (`depends=` and `alias=` entries, which modpost derives from the
//! module's symbol references and device tables at kernel build time, the same data depmod uses).
//! Modules compressed as `.ko.xz` or `.ko.zst` are decompressed here, so the node loads them with
//! `finit_module` and no decompressor.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors resolving kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// A module (asked for, or a dependency) is not in the kernel package.
    #[error("kernel module {name} (needed by {needed_by}) is not in {dir}; the kernel package no longer builds it as a module: drop it from the node image's module list or pick another kernel")]
    Missing {
        /// The module name.
        name: String,
        /// What needs it.
        needed_by: String,
        /// The modules directory searched.
        dir: PathBuf,
    },
    /// A module file could not be read or is not an ELF object with a `.modinfo` section.
    #[error("kernel module {path} is unreadable: {reason}; the kernel package in the cache may be damaged: delete it from the cache and build again")]
    Unreadable {
        /// The module file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Listing the modules directory failed.
    #[error("cannot read {path}")]
    Io {
        /// The path the OS refused.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One module as it goes into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Normalised name (`-` written as `_`), e.g. `virtio_net`.
    pub name: String,
    /// Path relative to `lib/modules/VERSION/`, always ending in `.ko`, e.g. `kernel/drivers/net/virtio_net.ko`.
    pub path: String,
    /// Direct dependencies, normalised names.
    pub depends: Vec<String>,
    /// Device patterns from `alias=` (e.g. `virtio:d00000001v*`), in the module's order.
    pub aliases: Vec<String>,
    /// The uncompressed module.
    pub data: Vec<u8>,
}

/// Normalises a module name as the kernel does: `-` and `_` are the same.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Splits a module file name into its normalised name and compression (`""`, `xz`, `zst`).
fn module_file_name(file: &str) -> Option<(String, &'static str)> {
    for (suffix, comp) in [(".ko", ""), (".ko.xz", "xz"), (".ko.zst", "zst")] {
        if let Some(stem) = file.strip_suffix(suffix) {
            return Some((normalize(stem), comp));
        }
    }
    None
}

/// The modules of `modules_dir` (a `lib/modules/VERSION` directory) named in `wanted`, with every
/// dependency, sorted by name. A module this kernel has built in (listed in `modules.builtin`,
/// as Debian 13's kernel has virtio_pci) needs no file and is left out.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<KernelModule>, KmodError> {
    let index = index_files(modules_dir)?;
    let builtin = builtin_modules(modules_dir)?;
    let mut done: BTreeMap<String, KernelModule> = BTreeMap::new();
    let mut queue: Vec<(String, String)> =
        wanted.iter().map(|w| (normalize(w), "the node image".to_string())).collect();
    while let Some((name, needed_by)) = queue.pop() {
        if done.contains_key(&name) || builtin.contains(&name) {
            continue;
        }
        let Some(rel) = index.get(&name) else {
            return Err(KmodError::Missing { name, needed_by, dir: modules_dir.to_path_buf() });
        };
        let module = read_module(modules_dir, rel)?;
        for dep in &module.depends {
            queue.push((dep.clone(), name.clone()));
        }
        done.insert(name, module);
    }
    Ok(done.into_values().collect())
}

/// The names of the modules in `modules_dir/modules.builtin` (none when the file is absent).
fn builtin_modules(modules_dir: &Path) -> Result<BTreeSet<String>, KmodError> {
    let path = modules_dir.join("modules.builtin");
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(source) => return Err(KmodError::Io { path, source }),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter_map(module_file_name)
        .map(|(name, _)| name)
        .collect())
}

/// Every module file under `modules_dir/kernel`, by normalised name, as relative paths.
fn index_files(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>, KmodError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::from("kernel")];
    while let Some(rel) = stack.pop() {
        let dir = modules_dir.join(&rel);
        let entries = fs::read_dir(&dir).map_err(|source| KmodError::Io { path: dir.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| KmodError::Io { path: dir.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(|source| KmodError::Io { path: entry.path(), source })?;
            if kind.is_dir() {
                stack.push(rel.join(&name));
            } else if let Some((module, _)) = module_file_name(&name) {
                out.insert(module, rel.join(&name));
            }
        }
    }
    Ok(out)
}

fn read_module(modules_dir: &Path, rel: &Path) -> Result<KernelModule, KmodError> {
    let path = modules_dir.join(rel);
    let unreadable = |reason: String| KmodError::Unreadable { path: path.clone(), reason };
    let raw = fs::read(&path).map_err(|source| KmodError::Io { path: path.clone(), source })?;
    let file_name = rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (name, compression) = module_file_name(&file_name).ok_or_else(|| unreadable("not a module file".into()))?;
    let data = match compression {
        "xz" => {
            let mut out = Vec::new();
            lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| unreadable(format!("xz: {e}")))?;
            out
        }
        "zst" => {
            let mut out = Vec::new();
            ruzstd::decoding::StreamingDecoder::new(&raw[..])
                .map_err(|e| unreadable(format!("zstd: {e}")))?
                .read_to_end(&mut out)
                .map_err(|e| unreadable(format!("zstd: {e}")))?;
            out
        }
        _ => raw,
    };
    let info = modinfo(&data).map_err(unreadable)?;
    let mut depends = Vec::new();
    let mut aliases = Vec::new();
    for (key, value) in info {
        match key.as_str() {
            "depends" => depends.extend(value.split(',').filter(|d| !d.is_empty()).map(normalize)),
            "alias" => aliases.push(value),
            _ => {}
        }
    }
    let rel = rel.to_string_lossy();
    let ko = rel.strip_suffix(".xz").or_else(|| rel.strip_suffix(".zst")).unwrap_or(&rel).to_string();
    Ok(KernelModule { name, path: ko, depends, aliases, data })
}

/// The `key=value` entries of an ELF module's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, String> {
    let parsed = goblin::elf::Elf::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = parsed
        .section_headers
        .iter()
        .find(|s| parsed.shdr_strtab.get_at(s.sh_name) == Some(".modinfo"))
        .ok_or("no .modinfo section")?;
    let start = usize::try_from(section.sh_offset).map_err(|_| "bad .modinfo offset")?;
    let end = start.checked_add(usize::try_from(section.sh_size).map_err(|_| "bad .modinfo size")?);
    let bytes = end.and_then(|end| elf.get(start..end)).ok_or(".modinfo lies outside the file")?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Appends `name`'s dependencies (deepest first), then `name`, to `out`, skipping any in `seen`.
fn visit(name: &str, by_name: &BTreeMap<&str, &KernelModule>, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
    if !seen.insert(name.to_string()) {
        return;
    }
    if let Some(module) = by_name.get(name) {
        for dep in &module.depends {
            visit(dep, by_name, seen, out);
        }
    }
    out.push(name.to_string());
}

/// The order in which `name`'s dependencies must be loaded (deepest first), without `name` itself.
fn load_order(name: &str, by_name: &BTreeMap<&str, &KernelModule>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    visit(name, by_name, &mut seen, &mut out);
    out.pop(); // `name` itself comes last
    out
}

/// Every module of `modules`, each after its dependencies (otherwise in the order given): the
/// order to load a whole set with insmod, which knows nothing of dependencies.
pub fn load_sequence(modules: &[KernelModule]) -> Vec<&KernelModule> {
    let by_name: BTreeMap<&str, &KernelModule> = modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for module in modules {
        visit(&module.name, &by_name, &mut seen, &mut out);
    }
    out.iter().filter_map(|name| by_name.get(name.as_str()).copied()).collect()
}

/// `modules.dep` in depmod's format: `path: dep-path dep-path…`, each module's dependencies listed
/// so that loading them from the last to the first works (what modprobe does), one line per module.
pub fn modules_dep(modules: &[KernelModule]) -> String {
    let by_name: BTreeMap<&str, &KernelModule> = modules.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut out = String::new();
    for module in modules {
        out.push_str(&module.path);
        out.push(':');
        for dep in load_order(&module.name, &by_name).iter().rev() {
            out.push(' ');
            out.push_str(&by_name[dep.as_str()].path);
        }
        out.push('\n');
    }
    out
}

/// `modules.alias` in depmod's format: `alias PATTERN NAME`, one line per alias of the included modules.
pub fn modules_alias(modules: &[KernelModule]) -> String {
    let mut out = String::from("# Aliases extracted from modules themselves.\n");
    for module in modules {
        for alias in &module.aliases {
            out.push_str(&format!("alias {alias} {}\n", module.name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, depends: &[&str]) -> KernelModule {
        KernelModule {
            name: name.into(),
            path: format!("kernel/{name}.ko"),
            depends: depends.iter().map(|d| d.to_string()).collect(),
            aliases: vec![format!("pci:v{name}*")],
            data: Vec::new(),
        }
    }

    #[test]
    fn a_set_loads_each_module_after_its_dependencies() {
        let modules = vec![
            module("ext4", &["mbcache", "jbd2"]),
            module("jbd2", &[]),
            module("mbcache", &[]),
            module("vfat", &["fat"]),
            module("fat", &[]),
        ];
        let order: Vec<&str> = load_sequence(&modules).iter().map(|m| m.name.as_str()).collect();
        assert_eq!(order, ["mbcache", "jbd2", "ext4", "fat", "vfat"]);
    }

    #[test]
    fn modules_dep_lists_dependencies_in_reverse_load_order() {
        // As in Debian's 6.1 kernel: virtio_net needs virtio_ring, virtio and net_failover;
        // net_failover needs failover; virtio_ring needs virtio.
        let modules = vec![
            module("failover", &[]),
            module("net_failover", &["failover"]),
            module("virtio", &[]),
            module("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            module("virtio_ring", &["virtio"]),
        ];
        let dep = modules_dep(&modules);
        let line = dep.lines().find(|l| l.starts_with("kernel/virtio_net.ko:")).unwrap();
        let deps: Vec<&str> = line.split_whitespace().skip(1).collect();
        // Loading from the end: virtio, virtio_ring, failover, net_failover.
        assert_eq!(deps, ["kernel/net_failover.ko", "kernel/failover.ko", "kernel/virtio_ring.ko", "kernel/virtio.ko"]);
        assert!(dep.contains("kernel/failover.ko:\n"));
        let alias = modules_alias(&modules);
        assert!(alias.contains("alias pci:vvirtio_net* virtio_net\n"), "{alias}");
    }

    #[test]
    fn names_normalise_dashes_and_know_compressed_files() {
        assert_eq!(module_file_name("libcurve25519-generic.ko"), Some(("libcurve25519_generic".into(), "")));
        assert_eq!(module_file_name("e1000e.ko.xz"), Some(("e1000e".into(), "xz")));
        assert_eq!(module_file_name("igb.ko.zst"), Some(("igb".into(), "zst")));
        assert_eq!(module_file_name("modules.dep"), None);
    }

    #[test]
    fn missing_module_says_who_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kernel")).unwrap();
        let err = resolve(dir.path(), &["e1000"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("e1000") && msg.contains("node image"), "{msg}");
    }

    /// A fake module: `/bin/true` with a `.modinfo` section (the host's objcopy adds it), written
    /// to `dir/rel`, then compressed with the host's `xz`/`zstd` if `rel` ends so.
    fn fake_module(dir: &Path, rel: &str, modinfo: &[&str]) -> Vec<u8> {
        use std::process::Command;
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let info = dir.join("modinfo.bin");
        fs::write(&info, modinfo.iter().map(|e| format!("{e}\0")).collect::<String>()).unwrap();
        let ko = dir.join(format!("{}.tmp.ko", rel.replace('/', "_")));
        let status = Command::new("objcopy")
            .arg(format!("--add-section=.modinfo={}", info.display()))
            .arg("/bin/true")
            .arg(&ko)
            .status()
            .unwrap();
        assert!(status.success());
        let plain = fs::read(&ko).unwrap();
        let compressor = match rel.rsplit('.').next() {
            Some("xz") => Some(Command::new("xz").args(["--check=crc32", "-c"]).arg(&ko).output().unwrap().stdout),
            Some("zst") => Some(Command::new("zstd").args(["-q", "-c"]).arg(&ko).output().unwrap().stdout),
            _ => None,
        };
        fs::write(&path, compressor.unwrap_or_else(|| plain.clone())).unwrap();
        fs::remove_file(&ko).unwrap();
        plain
    }

    #[test]
    fn resolve_follows_dependencies_and_decompresses_modules() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let nic =
            fake_module(root, "kernel/drivers/net/my-nic.ko.xz", &["alias=pci:v00001234d*", "depends=lib-a,libb"]);
        let a = fake_module(root, "kernel/lib/lib-a.ko.zst", &["depends=libb"]);
        let b = fake_module(root, "kernel/lib/libb.ko", &["depends="]);
        fake_module(root, "kernel/other/unrelated.ko", &["depends="]);
        let modules = resolve(root, &["my_nic"]).unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["lib_a", "libb", "my_nic"]);
        assert_eq!(modules[0].path, "kernel/lib/lib-a.ko");
        assert_eq!(modules[2].path, "kernel/drivers/net/my-nic.ko");
        assert_eq!((&modules[0].data, &modules[1].data, &modules[2].data), (&a, &b, &nic));
        assert_eq!(modules[2].aliases, ["pci:v00001234d*"]);
        assert_eq!(
            modules_dep(&modules),
            "kernel/lib/lib-a.ko: kernel/lib/libb.ko\nkernel/lib/libb.ko:\nkernel/drivers/net/my-nic.ko: kernel/lib/lib-a.ko kernel/lib/libb.ko\n"
        );
    }

    #[test]
    fn a_built_in_module_needs_no_file_and_nothing_else_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_module(root, "kernel/drivers/net/nic.ko", &["depends=virtio-pci"]);
        fs::write(
            root.join("modules.builtin"),
            "kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko
",
        )
        .unwrap();
        let modules = resolve(root, &["virtio_pci", "nic"]).unwrap();
        assert_eq!(modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["nic"]);
        let err = resolve(root, &["virtio_net"]).unwrap_err();
        assert!(matches!(err, KmodError::Missing { .. }), "{err}");
    }

    #[test]
    fn modinfo_of_a_non_elf_is_an_error() {
        assert!(modinfo(b"not an elf").is_err());
    }
}

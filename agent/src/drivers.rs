//! Loading the kernel modules for the devices a machine has, as modprobe would.
//!
//! [`load_drivers`] reads the `modalias` of every device on the PCI and virtio buses under a sys
//! root, matches each against the patterns of `modules.alias` (shell globs, as modprobe matches
//! them), and loads each matching module after its dependencies, in `modules.dep` order. Loading a
//! transport driver (virtio_pci) makes new devices appear on another bus (virtio), so it scans again
//! until a round loads nothing new. Then it loads WireGuard for the management link.
//!
//! The node image ships only the modules it needs, with `modules.dep` and `modules.alias` trimmed to
//! them and every module uncompressed, so loading is one `finit_module` per file.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The module for the management link.
pub const WIREGUARD: &str = "wireguard";
/// The filesystem of the data disk (ext4's driver also mounts the ext2 busybox makes), after
/// the crc32c implementation ext4 asks the crypto API for (a soft dependency: without it every
/// ext4 mount fails with ENOENT).
pub const FILESYSTEM: &[&str] = &["crc32c_generic", "ext4"];
/// The driver of a BMC's system interface and its character device (`/dev/ipmi0`), loaded when
/// SMBIOS lists an IPMI device ([`crate::bmc::listed_in_smbios`]).
pub const IPMI: &[&str] = &["ipmi_si", "ipmi_devintf"];
/// Buses whose devices get drivers.
pub const BUSES: &[&str] = &["pci", "virtio"];

/// Errors finding or loading modules.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// `modules.dep` or `modules.alias` is missing or unreadable.
    #[error("cannot read {path}; the node image is incomplete: rebuild it with `oasis image build node`")]
    Index {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A module is not in `modules.dep`.
    #[error("kernel module {0} is not in this node image; rebuild the image with it")]
    Unknown(String),
    /// The kernel refused a module.
    #[error("the kernel refused module {path}")]
    Load {
        /// The module file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// What happened when a module was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// The kernel took it now.
    Now,
    /// It was already loaded.
    Already,
}

/// Loads one module file into the kernel.
pub trait ModuleLoader {
    /// Loads the module at `path`; "already loaded" is [`Loaded::Already`], not an error.
    fn load(&mut self, path: &Path) -> io::Result<Loaded>;
}

/// The kernel, through `finit_module(2)`.
#[derive(Debug, Default)]
pub struct KernelLoader;

impl ModuleLoader for KernelLoader {
    fn load(&mut self, path: &Path) -> io::Result<Loaded> {
        let file = fs::File::open(path)?;
        match nix::kmod::finit_module(&file, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) => Ok(Loaded::Now),
            Err(nix::errno::Errno::EEXIST) => Ok(Loaded::Already),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

/// `modules.dep` and `modules.alias` of one modules directory.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// Module name to (its path, its dependencies' paths as modules.dep lists them).
    deps: HashMap<String, (String, Vec<String>)>,
    /// (pattern, module name), in file order.
    aliases: Vec<(String, String)>,
}

/// A module's name from its path: `kernel/net/wireguard/wireguard.ko` is `wireguard`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `dir/modules.dep` and `dir/modules.alias` (`dir` is `/lib/modules/$(uname -r)` on a node).
    pub fn read(dir: &Path) -> Result<ModuleIndex, DriverError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| DriverError::Index { path, source })
        };
        Ok(ModuleIndex::parse(dir, &read("modules.dep")?, &read("modules.alias")?))
    }

    /// Parses the two files' contents.
    pub fn parse(dir: &Path, modules_dep: &str, modules_alias: &str) -> ModuleIndex {
        let mut deps = HashMap::new();
        for line in modules_dep.lines() {
            let Some((path, rest)) = line.split_once(':') else { continue };
            let list = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module_name(path), (path.to_string(), list));
        }
        let aliases = modules_alias
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("alias"), Some(pattern), Some(module)) => {
                        Some((pattern.to_string(), module.replace('-', "_")))
                    }
                    _ => None,
                }
            })
            .collect();
        ModuleIndex { dir: dir.to_path_buf(), deps, aliases }
    }

    /// The modules whose alias patterns match `modalias`, each once, in `modules.alias` order.
    pub fn matching(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (pattern, module) in &self.aliases {
            if glob_match(pattern.as_bytes(), modalias.as_bytes()) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }

    /// The files to load for `module`, dependencies first, the module last.
    pub fn load_order(&self, module: &str) -> Result<Vec<PathBuf>, DriverError> {
        let name = module.replace('-', "_");
        let (path, deps) = self.deps.get(&name).ok_or(DriverError::Unknown(name))?;
        Ok(deps.iter().rev().chain(std::iter::once(path)).map(|p| self.dir.join(p)).collect())
    }
}

/// Shell glob matching as fnmatch(3) without flags: `*`, `?` and `[...]` classes (with `!`/`^`
/// negation and ranges), which is all modules.alias uses.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class at the start of `pattern` (`[...]`); returns whether it matched and
/// the class's length, or `None` if the class is not closed (then `[` is literal).
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &b = pattern.get(i)?;
        if b == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|e| *e != b']') {
            let end = pattern[i + 2];
            matched |= (b..=end).contains(&c);
            i += 3;
        } else {
            matched |= b == c;
            i += 1;
        }
    }
}

/// The `modalias` of every device on [`BUSES`] under `sys` (e.g. `/sys`), sorted.
pub fn device_modaliases(sys: &Path) -> Vec<String> {
    let mut out = BTreeSet::new();
    for bus in BUSES {
        let Ok(devices) = fs::read_dir(sys.join("bus").join(bus).join("devices")) else { continue };
        for device in devices.flatten() {
            if let Ok(alias) = fs::read_to_string(device.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.insert(alias.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

/// An error and its sources, `: `-separated, for a log line or a report.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What [`load_drivers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverReport {
    /// Driver modules loaded for devices (not their dependencies), in load order.
    pub drivers: Vec<String>,
    /// Device modaliases no included module matches (devices the node image has no driver for).
    pub unmatched: Vec<String>,
    /// Whether WireGuard's module is loaded.
    pub wireguard: bool,
    /// Modules that failed to load, with the error (the boot continues without them).
    pub failed: Vec<String>,
}

/// How many times to rescan the buses for devices that loaded drivers made appear.
const MAX_ROUNDS: usize = 4;

/// Loads drivers for every device under `sys` from the modules in `index`, then WireGuard.
/// A module that fails to load is reported and skipped: one odd NIC must not stop the boot.
pub fn load_drivers(sys: &Path, index: &ModuleIndex, loader: &mut impl ModuleLoader) -> DriverReport {
    let mut report = DriverReport::default();
    let mut loaded: BTreeSet<PathBuf> = BTreeSet::new();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    for _ in 0..MAX_ROUNDS {
        let mut progress = false;
        report.unmatched.clear();
        for alias in device_modaliases(sys) {
            let modules = index.matching(&alias);
            if modules.is_empty() {
                report.unmatched.push(alias);
                continue;
            }
            for module in modules {
                if !tried.insert(module.clone()) {
                    continue;
                }
                progress = true;
                match load_with_dependencies(index, &module, loader, &mut loaded) {
                    Ok(()) => report.drivers.push(module),
                    Err(e) => {
                        let e = error_chain(&e);
                        tracing::warn!("{e}");
                        report.failed.push(format!("{module}: {e}"));
                    }
                }
            }
        }
        if !progress {
            break;
        }
    }
    match load_with_dependencies(index, WIREGUARD, loader, &mut loaded) {
        Ok(()) => report.wireguard = true,
        Err(e) => report.failure(WIREGUARD, &e, "the management link will need a userspace WireGuard"),
    }
    if crate::bmc::listed_in_smbios(sys) {
        for module in IPMI {
            match load_with_dependencies(index, module, loader, &mut loaded) {
                Ok(()) => report.drivers.push((*module).to_string()),
                Err(e) => report.failure(module, &e, "this machine's BMC cannot be read from here"),
            }
        }
    }
    for module in FILESYSTEM.iter().filter(|m| index.load_order(m).is_ok()) {
        if let Err(e) = load_with_dependencies(index, module, loader, &mut loaded) {
            report.failure(module, &e, "a data disk cannot be used");
        }
    }
    report
}

impl DriverReport {
    /// `module` did not load: logged with what that costs the machine, and reported.
    fn failure(&mut self, module: &str, e: &DriverError, costs: &str) {
        let e = error_chain(e);
        tracing::warn!("{e}; {costs}");
        self.failed.push(format!("{module}: {e}"));
    }
}

fn load_with_dependencies(
    index: &ModuleIndex,
    module: &str,
    loader: &mut impl ModuleLoader,
    loaded: &mut BTreeSet<PathBuf>,
) -> Result<(), DriverError> {
    for path in index.load_order(module)? {
        if loaded.contains(&path) {
            continue;
        }
        let outcome = loader.load(&path).map_err(|source| DriverError::Load { path: path.clone(), source })?;
        tracing::debug!(module = %path.display(), ?outcome, "kernel module");
        loaded.insert(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko: kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/net/wireguard/wireguard.ko: kernel/lib/crypto/libcurve25519-generic.ko
kernel/lib/crypto/libcurve25519-generic.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v00008086d0000100[FC]sv*sd*bc*sc*i* e1000
";

    /// Records loads; refuses the paths in `refuse`; and, like the kernel, makes a virtio device
    /// appear once virtio_pci is loaded.
    struct FakeKernel {
        loads: Vec<String>,
        refuse: Vec<&'static str>,
        sys: PathBuf,
    }

    impl ModuleLoader for FakeKernel {
        fn load(&mut self, path: &Path) -> io::Result<Loaded> {
            let name = module_name(&path.to_string_lossy());
            if self.refuse.contains(&name.as_str()) {
                return Err(io::Error::from_raw_os_error(libc_enoexec()));
            }
            if name == "virtio_pci" {
                let dev = self.sys.join("bus/virtio/devices/virtio0");
                fs::create_dir_all(&dev).unwrap();
                fs::write(dev.join("modalias"), "virtio:d00000001v00001AF4\n").unwrap();
            }
            let already = self.loads.contains(&name);
            self.loads.push(name);
            Ok(if already { Loaded::Already } else { Loaded::Now })
        }
    }

    fn libc_enoexec() -> i32 {
        8 // ENOEXEC: "Exec format error", what the kernel says for a module of another build
    }

    fn pci_device(sys: &Path, slot: &str, modalias: &str) {
        let dev = sys.join("bus/pci/devices").join(slot);
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("modalias"), format!("{modalias}\n")).unwrap();
    }

    #[test]
    fn virtio_then_e1000_then_wireguard_in_dependency_order() {
        let sys = tempfile::tempdir().unwrap();
        pci_device(sys.path(), "0000:00:03.0", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00");
        pci_device(sys.path(), "0000:00:04.0", "pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00");
        pci_device(sys.path(), "0000:00:01.0", "pci:v00008086d00007000sv00000000sd00000000bc06sc01i00");
        let index = ModuleIndex::parse(Path::new("/lib/modules/6.1"), DEP, ALIAS);
        let mut kernel = FakeKernel { loads: Vec::new(), refuse: Vec::new(), sys: sys.path().to_path_buf() };
        let report = load_drivers(sys.path(), &index, &mut kernel);
        assert_eq!(
            kernel.loads,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "e1000",
                "failover",
                "net_failover",
                "virtio_net",
                "libcurve25519_generic",
                "wireguard"
            ]
        );
        assert_eq!(report.drivers, ["virtio_pci", "e1000", "virtio_net"]);
        assert_eq!(report.unmatched, ["pci:v00008086d00007000sv00000000sd00000000bc06sc01i00"]);
        assert!(report.wireguard);
        assert!(report.failed.is_empty());
    }

    #[test]
    fn a_refused_module_is_reported_and_the_rest_still_load() {
        let sys = tempfile::tempdir().unwrap();
        pci_device(sys.path(), "0000:00:04.0", "pci:v00008086d0000100Fsv00008086sd0000001Ebc02sc00i00");
        let index = ModuleIndex::parse(Path::new("/m"), DEP, ALIAS);
        let mut kernel = FakeKernel { loads: Vec::new(), refuse: vec!["e1000"], sys: sys.path().to_path_buf() };
        let report = load_drivers(sys.path(), &index, &mut kernel);
        assert!(report.drivers.is_empty());
        assert_eq!(report.failed.len(), 1);
        assert!(
            report.failed[0].contains("/m/kernel/drivers/net/ethernet/intel/e1000/e1000.ko"),
            "{:?}",
            report.failed
        );
        assert!(report.wireguard);
    }

    #[test]
    fn no_wireguard_in_the_image_is_reported() {
        let sys = tempfile::tempdir().unwrap();
        let index = ModuleIndex::parse(Path::new("/m"), "kernel/e1000.ko:\n", "");
        let mut kernel = FakeKernel { loads: Vec::new(), refuse: Vec::new(), sys: sys.path().to_path_buf() };
        let report = load_drivers(sys.path(), &index, &mut kernel);
        assert!(!report.wireguard);
        assert!(report.failed[0].contains("not in this node image"), "{:?}", report.failed);
    }

    #[test]
    fn globs_match_like_fnmatch() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("pci:v00008086d0000100[FC]sv*", "pci:v00008086d0000100Csv0000"));
        assert!(!m("pci:v00008086d0000100[FC]sv*", "pci:v00008086d0000100Esv0000"));
        assert!(m("a[!x]c", "abc") && !m("a[!x]c", "axc"));
        assert!(m("a[0-9]c", "a5c") && !m("a[0-9]c", "aXc"));
        assert!(m("*", "") && m("a*b*c", "aXXbYYc") && !m("a*b*c", "aXXbYY"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("a[b", "a[b"));
    }

    #[test]
    fn missing_index_says_to_rebuild_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let err = ModuleIndex::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("oasis image build node"), "{err}");
    }
}

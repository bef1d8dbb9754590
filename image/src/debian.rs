//! Debian packages as build inputs, fetched without installing them into the build host.
//!
//! [`DebianCache::fetch`] asks apt for the candidate version of a package (`apt-cache policy`),
//! downloads it with `apt-get download` into `CACHE/debs/` unless that exact file is already there,
//! and unpacks it with `dpkg-deb -x` into `CACHE/unpacked/NAME_VERSION/`. Downloads and unpacks go to
//! a temporary name first and are renamed into place, so an interrupted run or two runs at once never
//! leave a half-written package behind. Metapackages such as `linux-image-amd64` are resolved to the
//! real package with [`DebianCache::resolve_dependency`].
//!
//! A cache reads the host's apt sources (the host's Debian suite) unless it is opened for another
//! suite with [`DebianCache::with_suite`]: then it keeps apt's whole state for that suite under
//! `CACHE/apt/SUITE/` ([`PrivateApt`]) and never reads or writes the host's `/etc/apt` or
//! `/var/lib/apt`.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::{sha256_file, ManifestError};

mod private_apt;
pub use private_apt::{PrivateApt, ARCHIVE_KEYRING, DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR};

/// Errors fetching or unpacking a Debian package.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// A command could not be started at all.
    #[error("could not run `{command}` for package {package}; this needs a Debian host with apt and dpkg")]
    Spawn {
        /// The package being fetched.
        package: String,
        /// The command line.
        command: String,
        /// The OS error.
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed for package {package}: {stderr}; {hint}")]
    Failed {
        /// The package being fetched.
        package: String,
        /// The command line.
        command: String,
        /// What the command printed on stderr.
        stderr: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// apt knows no installable version of the package.
    #[error("apt has no candidate version of package {package}; run `apt-get update`, or check the package name and the sources in /etc/apt")]
    NoCandidate {
        /// The package.
        package: String,
    },
    /// Another suite (with its package lists fetched) has no such package.
    #[error("Debian {suite} has no package {package}; check the package name at https://packages.debian.org/{suite}/")]
    NotInSuite {
        /// The package.
        package: String,
        /// The suite.
        suite: String,
    },
    /// A metapackage does not depend on a package with the expected prefix.
    #[error("package {package} depends on no package named {prefix}*; run `apt-get update` or name the real package")]
    Unresolved {
        /// The metapackage.
        package: String,
        /// The expected name prefix.
        prefix: String,
    },
    /// `apt-get download` succeeded but left no `.deb` file.
    #[error("`apt-get download` left no .deb for {package} {version} in {dir}")]
    NoDeb {
        /// The package.
        package: String,
        /// The version asked for.
        version: String,
        /// Where it was downloaded.
        dir: PathBuf,
    },
    /// A path inside an unpacked package is missing or escapes the package root.
    #[error("package {package} has no {path}; the package's layout changed, check `dpkg-deb -c` of it")]
    MissingPath {
        /// The package.
        package: String,
        /// The path inside the package.
        path: String,
    },
    /// The cache directory could not be used.
    #[error("cannot use the cache path {path}")]
    Io {
        /// The path the OS refused.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The suite name is not one apt could be given.
    #[error("{suite:?} is not a Debian suite name; give a codename such as trixie")]
    BadSuite {
        /// The name given.
        suite: String,
    },
    /// The keys Debian's archive is signed with are missing.
    #[error("{path} is missing, so packages of another Debian suite cannot be checked; install the debian-archive-keyring package")]
    NoKeyring {
        /// The keyring expected.
        path: PathBuf,
    },
    /// Hashing the downloaded package failed.
    #[error(transparent)]
    Hash(#[from] ManifestError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DebianError + '_ {
    move |source| DebianError::Io { path: path.to_path_buf(), source }
}

/// A package unpacked in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedPackage {
    /// The package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub name: String,
    /// The Debian version, e.g. `6.1.192-2` (with epoch if it has one).
    pub version: String,
    /// SHA-256 of the `.deb` file, lowercase hex.
    pub deb_sha256: String,
    /// The downloaded `.deb`.
    pub deb: PathBuf,
    /// Where the package is unpacked: its files are under `root/usr/...`, `root/boot/...`.
    pub root: PathBuf,
}

impl UnpackedPackage {
    /// The path of `path` (as the package would install it, e.g. `/usr/lib/ipxe/ipxe.efi`) inside the
    /// unpacked root, following symlinks as if the root were `/`: Debian's `ipxe` ships
    /// `/usr/lib/ipxe/ipxe.efi` as a link to `/boot/ipxe.efi`. As on a merged-`/usr` system
    /// (Debian 13's packages ship only `/usr/bin`, `/usr/lib`), a path under `/bin`, `/sbin`,
    /// `/lib` or `/lib64` that the package lacks is looked up under `/usr`. Errors if the file is
    /// missing.
    pub fn file(&self, path: &str) -> Result<PathBuf, DebianError> {
        let missing = || DebianError::MissingPath { package: self.name.clone(), path: path.to_string() };
        let mut rel = clean(Path::new(path)).ok_or_else(missing)?;
        for _ in 0..40 {
            let full = self.root.join(&rel);
            let meta = match fs::symlink_metadata(&full) {
                Ok(meta) => meta,
                Err(_) => match merged_usr(&rel) {
                    Some(usr) if self.root.join(&usr).symlink_metadata().is_ok() => {
                        rel = usr;
                        continue;
                    }
                    _ => return Err(missing()),
                },
            };
            if !meta.file_type().is_symlink() {
                return Ok(full);
            }
            let target = fs::read_link(&full).map_err(io_err(&full))?;
            let joined = if target.is_absolute() { target } else { rel.parent().unwrap_or(Path::new("")).join(target) };
            rel = clean(&joined).ok_or_else(missing)?;
        }
        Err(missing())
    }

    /// Names in directory `dir` of the package (e.g. `/boot`) that start with `prefix`, sorted.
    pub fn list(&self, dir: &str, prefix: &str) -> Result<Vec<String>, DebianError> {
        let full = self.file(dir)?;
        let mut names: Vec<String> = fs::read_dir(&full)
            .map_err(io_err(&full))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        Ok(names)
    }
}

/// `usr/PATH` for a relative `PATH` under `bin`, `sbin`, `lib` or `lib64`, which a merged-`/usr`
/// system links into `/usr`.
fn merged_usr(rel: &Path) -> Option<PathBuf> {
    let first = rel.components().next()?.as_os_str();
    ["bin", "sbin", "lib", "lib64"].iter().any(|d| first == *d).then(|| Path::new("usr").join(rel))
}

/// Resolves `.` and `..` lexically, relative to a root; `None` if the path climbs above it.
fn clean(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

/// A directory of downloaded and unpacked Debian packages.
#[derive(Debug, Clone)]
pub struct DebianCache {
    dir: PathBuf,
    /// apt state of its own for a suite other than the host's; `None` uses the host's apt.
    apt: Option<PrivateApt>,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!("{}-{}", std::process::id(), UNIQUE.fetch_add(1, Ordering::Relaxed))
}

impl DebianCache {
    /// Opens (creating if needed) a cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<DebianCache, DebianError> {
        let dir = dir.into();
        for sub in ["debs", "unpacked"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(DebianCache { dir, apt: None })
    }

    /// Opens (creating if needed) a cache in `dir` that fetches from Debian suite `suite` (e.g.
    /// `trixie`) with apt state of its own under `dir/apt/SUITE/`; `None` is the host's suite,
    /// as [`DebianCache::new`]. The suite's package lists are fetched on first use.
    pub fn with_suite(dir: impl Into<PathBuf>, suite: Option<&str>) -> Result<DebianCache, DebianError> {
        suite.map(private_apt::check_suite).transpose()?;
        let mut cache = DebianCache::new(dir)?;
        if let Some(suite) = suite {
            cache.apt = Some(PrivateApt::create(&cache.dir, suite)?);
        }
        Ok(cache)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The suite this cache fetches from, `None` for the host's.
    pub fn suite(&self) -> Option<&str> {
        self.apt.as_ref().map(|a| a.suite.as_str())
    }

    /// `program` (`apt-get`, `apt-cache`) set up for this cache's suite: as it is for the host's,
    /// with the private apt state for another suite (whose package lists are fetched first if
    /// they never were).
    fn apt(&self, package: &str, program: &str) -> Result<Command, DebianError> {
        match &self.apt {
            None => Ok(Command::new(program)),
            Some(apt) => {
                apt.ensure_lists(package)?;
                Ok(apt.command(program))
            }
        }
    }

    /// The version apt would install of `package` (`apt-cache policy`'s Candidate).
    pub fn candidate_version(&self, package: &str) -> Result<String, DebianError> {
        let out =
            run(package, self.apt(package, "apt-cache")?.args(["policy", "--", package]), "run `apt-get update`")?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| !v.is_empty() && *v != "(none)")
            .map(str::to_string)
            .ok_or_else(|| match self.suite() {
                None => DebianError::NoCandidate { package: package.to_string() },
                Some(suite) => DebianError::NotInSuite { package: package.to_string(), suite: suite.to_string() },
            })
    }

    /// The first package that the candidate version of `package` depends on whose name starts with
    /// `prefix`: `resolve_dependency("linux-image-amd64", "linux-image-")` gives the real kernel
    /// package, e.g. `linux-image-6.1.0-56-amd64`.
    pub fn resolve_dependency(&self, package: &str, prefix: &str) -> Result<String, DebianError> {
        let out = run(
            package,
            self.apt(package, "apt-cache")?.args(["show", "--no-all-versions", "--", package]),
            "run `apt-get update`, or check the package name",
        )?;
        let depends = out.lines().find_map(|l| l.strip_prefix("Depends:")).unwrap_or("");
        depends
            .split([',', '|'])
            .map(|d| d.trim().split([' ', '(', ':']).next().unwrap_or(""))
            .find(|name| name.starts_with(prefix) && name.len() > prefix.len())
            .map(str::to_string)
            .ok_or_else(|| DebianError::Unresolved { package: package.to_string(), prefix: prefix.to_string() })
    }

    /// Downloads (unless already cached) and unpacks the candidate version of `package`. For a
    /// suite of its own, a failure is tried once more after fetching the package lists again:
    /// the mirror drops versions that a newer one replaced.
    pub fn fetch(&self, package: &str) -> Result<UnpackedPackage, DebianError> {
        let candidate = |cache: &DebianCache| {
            let version = cache.candidate_version(package)?;
            let deb = cache.download(package, &version)?;
            Ok::<_, DebianError>((version, deb))
        };
        let (version, deb) = match (candidate(self), &self.apt) {
            (Err(_), Some(apt)) => {
                apt.update(package)?;
                candidate(self)?
            }
            (result, _) => result?,
        };
        let deb_sha256 = sha256_file(&deb)?;
        let root = self.dir.join("unpacked").join(format!("{package}_{}", escape_version(&version)));
        if !root.is_dir() {
            let tmp = self.dir.join("unpacked").join(format!(".{package}.tmp-{}", unique_suffix()));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
            let result = run(
                package,
                Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
                "the cached .deb may be damaged: delete it from the cache and run again",
            );
            if let Err(e) = result {
                let _ = fs::remove_dir_all(&tmp);
                let _ = fs::remove_file(&deb);
                return Err(e);
            }
            // If another run unpacked the same package meanwhile, keep theirs.
            if fs::rename(&tmp, &root).is_err() {
                let _ = fs::remove_dir_all(&tmp);
                if !root.is_dir() {
                    return Err(DebianError::Io {
                        path: root,
                        source: io::Error::other("could not move the unpacked package into place"),
                    });
                }
            }
        }
        Ok(UnpackedPackage { name: package.to_string(), version, deb_sha256, deb, root })
    }

    fn download(&self, package: &str, version: &str) -> Result<PathBuf, DebianError> {
        let debs = self.dir.join("debs");
        let prefix = format!("{package}_{}_", escape_version(version));
        if let Some(found) = find_deb(&debs, &prefix)? {
            return Ok(found);
        }
        let mut apt_get = self.apt(package, "apt-get")?;
        let tmp = debs.join(format!(".download-{}", unique_suffix()));
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let result = run(
            package,
            apt_get.args(["download", "-q", "--"]).arg(format!("{package}={version}")).current_dir(&tmp),
            "run `apt-get update` and check that the Debian mirror is reachable",
        )
        .and_then(|_| {
            find_deb(&tmp, &prefix)?.ok_or_else(|| DebianError::NoDeb {
                package: package.to_string(),
                version: version.to_string(),
                dir: tmp.clone(),
            })
        })
        .and_then(|downloaded| {
            let name = downloaded.file_name().expect("a .deb file has a name").to_owned();
            let dest = debs.join(name);
            fs::File::open(&downloaded).and_then(|f| f.sync_all()).map_err(io_err(&downloaded))?;
            fs::rename(&downloaded, &dest).map_err(io_err(&dest))?;
            fs::File::open(&debs).and_then(|d| d.sync_all()).map_err(io_err(&debs))?;
            Ok(dest)
        });
        let _ = fs::remove_dir_all(&tmp);
        result
    }
}

/// apt names files with the version's `:` (epoch separator) as `%3a`.
fn escape_version(version: &str) -> String {
    version.replace(':', "%3a")
}

fn find_deb(dir: &Path, prefix: &str) -> Result<Option<PathBuf>, DebianError> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".deb")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found.into_iter().next())
}

fn run(package: &str, cmd: &mut Command, hint: &'static str) -> Result<String, DebianError> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    let out = cmd.output().map_err(|source| DebianError::Spawn {
        package: package.to_string(),
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let stderr = if stderr.is_empty() { format!("exited with {}", out.status) } else { stderr };
        return Err(DebianError::Failed { package: package.to_string(), command, stderr, hint });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_escaped_like_apt() {
        assert_eq!(escape_version("1:1.35.0-4+deb12u1+b1"), "1%3a1.35.0-4+deb12u1+b1");
    }

    #[test]
    fn symlinks_resolve_inside_the_package_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::create_dir_all(root.join("usr/lib/ipxe")).unwrap();
        fs::write(root.join("boot/ipxe.efi"), "efi").unwrap();
        std::os::unix::fs::symlink("/boot/ipxe.efi", root.join("usr/lib/ipxe/ipxe.efi")).unwrap();
        std::os::unix::fs::symlink("../../../boot/ipxe.efi", root.join("usr/lib/ipxe/rel.efi")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/passwd", root.join("usr/lib/ipxe/escape")).unwrap();
        let pkg = UnpackedPackage {
            name: "ipxe".into(),
            version: "1".into(),
            deb_sha256: String::new(),
            deb: PathBuf::new(),
            root: root.to_path_buf(),
        };
        assert_eq!(pkg.file("/usr/lib/ipxe/ipxe.efi").unwrap(), root.join("boot/ipxe.efi"));
        assert_eq!(pkg.file("usr/lib/ipxe/rel.efi").unwrap(), root.join("boot/ipxe.efi"));
        assert!(matches!(pkg.file("/usr/lib/ipxe/escape"), Err(DebianError::MissingPath { .. })));
        assert!(matches!(pkg.file("/usr/lib/ipxe/none"), Err(DebianError::MissingPath { .. })));
        assert_eq!(pkg.list("/boot", "ipxe").unwrap(), ["ipxe.efi"]);
    }

    #[test]
    fn a_merged_usr_package_is_found_by_its_root_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("usr/lib/modules/6.12.0-1-amd64")).unwrap();
        fs::create_dir_all(root.join("lib/firmware")).unwrap();
        fs::write(root.join("usr/bin/busybox"), "bb").unwrap();
        fs::write(root.join("usr/bin/tool"), "usr").unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/tool"), "root").unwrap();
        let pkg = UnpackedPackage {
            name: "busybox-static".into(),
            version: "1".into(),
            deb_sha256: String::new(),
            deb: PathBuf::new(),
            root: root.to_path_buf(),
        };
        assert_eq!(pkg.file("/bin/busybox").unwrap(), root.join("usr/bin/busybox"));
        assert_eq!(pkg.file("/bin/tool").unwrap(), root.join("bin/tool"), "what the package ships at / wins");
        assert_eq!(pkg.list("/lib/modules", "").unwrap(), ["6.12.0-1-amd64"]);
        assert!(matches!(pkg.file("/etc/busybox"), Err(DebianError::MissingPath { .. })));
        assert!(matches!(pkg.file("/lib/firmware/none"), Err(DebianError::MissingPath { .. })));
        assert!(matches!(pkg.file("/sbin/none"), Err(DebianError::MissingPath { .. })));
    }

    #[test]
    fn the_hosts_suite_keeps_no_apt_state_and_another_suite_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let host = DebianCache::with_suite(dir.path(), None).unwrap();
        assert_eq!(host.suite(), None);
        assert!(!dir.path().join("apt").exists());
        assert!(host.apt("etcd-server", "apt-cache").unwrap().get_args().next().is_none(), "the host's apt as it is");

        let trixie = DebianCache::with_suite(dir.path(), Some("trixie")).unwrap();
        assert_eq!(trixie.suite(), Some("trixie"));
        assert!(dir.path().join("apt/trixie/etc/sources.list").is_file());
        // Lists already fetched: the command is built without going to the network.
        let lists = dir.path().join("apt/trixie/state/lists");
        fs::write(lists.join("deb.debian.org_debian_dists_trixie_InRelease"), "").unwrap();
        let cmd = trixie.apt("etcd-server", "apt-get").unwrap();
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(
            args.contains(&format!(
                "Dir::State={}",
                fs::canonicalize(dir.path()).unwrap().join("apt/trixie/state").display()
            )),
            "{args:?}"
        );
        assert!(cmd.get_envs().any(|(k, _)| k == "APT_CONFIG"));
        let bad = DebianCache::with_suite(dir.path().join("new"), Some("../../etc")).unwrap_err();
        assert!(matches!(bad, DebianError::BadSuite { .. }), "{bad}");
        assert!(!dir.path().join("new").exists(), "a bad suite creates nothing");
    }

    #[test]
    fn unknown_package_error_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebianCache::new(dir.path()).unwrap();
        let err = cache.fetch("oasis-no-such-package-xyz").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("oasis-no-such-package-xyz"), "{msg}");
        assert!(msg.contains("apt-get update"), "{msg}");
    }
}

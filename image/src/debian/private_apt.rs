//! apt state of its own for one Debian suite, so a cache can fetch another suite's packages (the
//! node image from Debian 13 on a Debian 12 build host) without touching the host's apt.
//!
//! Under `CACHE/apt/SUITE/` it keeps:
//!
//! - `etc/sources.list`: the suite and its security updates from Debian's archive (the mirror the
//!   host uses), signed by the keys in [`ARCHIVE_KEYRING`] (Debian 12's `debian-archive-keyring`
//!   has Debian 13's keys); `etc/sources.list.d/`, `etc/apt.conf.d/`, `etc/preferences.d/` empty;
//! - `apt.conf`, given to apt in `APT_CONFIG`: it moves `Dir::Etc` to `etc/` above before apt
//!   reads any other configuration, so the host's `/etc/apt/apt.conf.d` (whose hooks clean the
//!   host's caches after an update) is never read;
//! - `state/` (package lists, an empty dpkg `status`: nothing is installed as far as this suite
//!   knows), `cache/` and `log/`, given on the command line as `-o Dir::State=...` and so on.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io_err, run, DebianError};

/// Debian's archive, as the host's `/etc/apt/sources.list.d/debian.sources` names it.
pub const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian's security archive.
pub const DEBIAN_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";
/// The keys Debian's archive is signed with (package `debian-archive-keyring`).
pub const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// apt state of its own for one suite.
#[derive(Debug, Clone)]
pub struct PrivateApt {
    pub(super) suite: String,
    root: PathBuf,
}

impl PrivateApt {
    /// Creates (or reuses) the state for `suite` under `cache/apt/SUITE/` (`cache` must exist).
    pub fn create(cache: &Path, suite: &str) -> Result<PrivateApt, DebianError> {
        check_suite(suite)?;
        if !Path::new(ARCHIVE_KEYRING).is_file() {
            return Err(DebianError::NoKeyring { path: PathBuf::from(ARCHIVE_KEYRING) });
        }
        // apt runs in other directories (`apt-get download` in a temporary one): absolute paths.
        let cache = fs::canonicalize(cache).map_err(io_err(cache))?;
        let apt = PrivateApt { suite: suite.to_string(), root: cache.join("apt").join(suite) };
        if apt.root.to_string_lossy().contains(['"', '\n']) {
            return Err(DebianError::Io {
                path: apt.root.clone(),
                source: io::Error::other("apt cannot be given a path with a quote or a line break"),
            });
        }
        for dir in [
            "etc/sources.list.d",
            "etc/apt.conf.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "log",
        ] {
            let path = apt.root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        write_if_changed(&apt.root.join("etc/sources.list"), &sources_list(suite))?;
        write_if_changed(&apt.root.join("apt.conf"), &apt.apt_conf())?;
        write_if_changed(&apt.status(), "")?;
        Ok(apt)
    }

    /// The suite's directory, `CACHE/apt/SUITE`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn status(&self) -> PathBuf {
        self.root.join("state/status")
    }

    /// The configuration read before any other (`APT_CONFIG`).
    fn apt_conf(&self) -> String {
        format!("Dir::Etc \"{}/\";\n", self.root.join("etc").display())
    }

    /// The `-o` options that point apt at this state.
    pub fn options(&self) -> Vec<String> {
        let at = |p: &str| self.root.join(p).display().to_string();
        let mut args = Vec::new();
        for (key, value) in [
            ("Dir::Etc::SourceList", at("etc/sources.list")),
            ("Dir::Etc::SourceParts", at("etc/sources.list.d")),
            ("Dir::Etc::Parts", at("etc/apt.conf.d")),
            ("Dir::Etc::PreferencesParts", at("etc/preferences.d")),
            ("Dir::State", at("state")),
            ("Dir::State::Lists", at("state/lists")),
            ("Dir::State::status", self.status().display().to_string()),
            ("Dir::Cache", at("cache")),
            ("Dir::Log", at("log")),
            ("Acquire::Languages", "none".to_string()),
        ] {
            args.push("-o".to_string());
            args.push(format!("{key}={value}"));
        }
        args
    }

    /// `program` with this state's configuration and options.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.root.join("apt.conf")).args(self.options());
        cmd
    }

    /// Whether the suite's package lists were fetched.
    pub fn has_lists(&self) -> bool {
        let release = format!("_dists_{}_InRelease", self.suite);
        fs::read_dir(self.root.join("state/lists"))
            .map(|entries| entries.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().ends_with(&release)))
            .unwrap_or(false)
    }

    /// Fetches the package lists unless they were.
    pub fn ensure_lists(&self, package: &str) -> Result<(), DebianError> {
        if self.has_lists() {
            return Ok(());
        }
        self.update(package)
    }

    /// `apt-get update` of this suite (for fetching `package`).
    pub fn update(&self, package: &str) -> Result<(), DebianError> {
        run(
            package,
            self.command("apt-get").args(["update", "-q"]),
            "check that Debian's archive (deb.debian.org) is reachable and the suite name is right",
        )
        .map(drop)
    }
}

/// Refuses a suite name that is no Debian codename (lowercase letters, digits, dashes).
pub fn check_suite(suite: &str) -> Result<(), DebianError> {
    let valid = !suite.is_empty()
        && suite.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !suite.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(DebianError::BadSuite { suite: suite.to_string() })
    }
}

/// The sources of `suite`: its main archive and its security updates.
pub fn sources_list(suite: &str) -> String {
    format!(
        "deb [signed-by={ARCHIVE_KEYRING}] {DEBIAN_MIRROR} {suite} main\n\
         deb [signed-by={ARCHIVE_KEYRING}] {DEBIAN_SECURITY_MIRROR} {suite}-security main\n"
    )
}

/// Writes `text` to `path` unless it already holds it (aside, then renamed).
fn write_if_changed(path: &Path, text: &str) -> Result<(), DebianError> {
    if fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp-{}", super::unique_suffix()));
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_private_and_every_apt_path_points_into_it() {
        let dir = tempfile::tempdir().unwrap();
        let apt = PrivateApt::create(dir.path(), "trixie").unwrap();
        let root = fs::canonicalize(dir.path()).unwrap().join("apt/trixie");
        assert_eq!(apt.root(), root);
        let sources = fs::read_to_string(root.join("etc/sources.list")).unwrap();
        assert_eq!(
            sources,
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security trixie-security main\n"
        );
        assert_eq!(fs::read_to_string(root.join("state/status")).unwrap(), "");
        for empty in ["etc/sources.list.d", "etc/apt.conf.d", "etc/preferences.d"] {
            assert_eq!(fs::read_dir(root.join(empty)).unwrap().count(), 0, "{empty}");
        }
        assert!(root.join("state/lists/partial").is_dir() && root.join("cache/archives/partial").is_dir());

        let cmd = apt.command("apt-get");
        assert_eq!(cmd.get_program(), "apt-get");
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let options: Vec<&str> = args
            .chunks(2)
            .map(|p| {
                assert_eq!(p[0], "-o");
                p[1].as_str()
            })
            .collect();
        let r = root.display();
        assert_eq!(
            options,
            [
                format!("Dir::Etc::SourceList={r}/etc/sources.list"),
                format!("Dir::Etc::SourceParts={r}/etc/sources.list.d"),
                format!("Dir::Etc::Parts={r}/etc/apt.conf.d"),
                format!("Dir::Etc::PreferencesParts={r}/etc/preferences.d"),
                format!("Dir::State={r}/state"),
                format!("Dir::State::Lists={r}/state/lists"),
                format!("Dir::State::status={r}/state/status"),
                format!("Dir::Cache={r}/cache"),
                format!("Dir::Log={r}/log"),
                "Acquire::Languages=none".to_string(),
            ]
        );
        // Every path apt is given is inside the private state: none of the host's.
        for option in &options {
            if let Some((_, value)) = option.split_once('=').filter(|(_, v)| v.starts_with('/')) {
                assert!(value.starts_with(&r.to_string()), "{option}");
            }
        }
        let envs: Vec<_> = cmd.get_envs().collect();
        let conf = root.join("apt.conf");
        assert_eq!(envs, [(std::ffi::OsStr::new("APT_CONFIG"), Some(conf.as_os_str()))]);
        // Read before anything else: apt never reaches the host's /etc/apt.
        assert_eq!(fs::read_to_string(&conf).unwrap(), format!("Dir::Etc \"{r}/etc/\";\n"));
    }

    #[test]
    fn lists_count_as_fetched_only_with_the_suites_release_file() {
        let dir = tempfile::tempdir().unwrap();
        let apt = PrivateApt::create(dir.path(), "trixie").unwrap();
        assert!(!apt.has_lists());
        let lists = dir.path().join("apt/trixie/state/lists");
        fs::write(lists.join("deb.debian.org_debian_dists_bookworm_InRelease"), "").unwrap();
        assert!(!apt.has_lists(), "another suite's lists are not this one's");
        fs::write(lists.join("deb.debian.org_debian_dists_trixie_InRelease"), "").unwrap();
        assert!(apt.has_lists());
    }

    #[test]
    fn creating_again_keeps_the_lists_and_a_bad_suite_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        PrivateApt::create(dir.path(), "trixie").unwrap();
        let release = dir.path().join("apt/trixie/state/lists/deb.debian.org_debian_dists_trixie_InRelease");
        fs::write(&release, "x").unwrap();
        assert!(PrivateApt::create(dir.path(), "trixie").unwrap().has_lists());
        for bad in ["", "../etc", "Trixie", "trixie main", "-o"] {
            let err = PrivateApt::create(dir.path(), bad).unwrap_err();
            assert!(matches!(err, DebianError::BadSuite { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("trixie"), "{err}");
        }
        assert!(!dir.path().join("apt/Trixie").exists());
    }
}

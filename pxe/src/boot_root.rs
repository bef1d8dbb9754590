//! The boot root: the one directory that TFTP and HTTP serve files from.
//!
//! Every name a client sends goes through [`BootRoot::resolve`], which refuses anything that could
//! reach outside the root: parent components, absolute paths, NUL bytes, over-long names, and
//! symlinks whose target lies outside. The check is lexical first (cheap, and it names the reason)
//! and then canonical (it follows symlinks the way the open will).

use std::io;
use std::path::{Component, Path, PathBuf};

/// Longest file name a client may ask for, in bytes. TFTP packets carry at most a few hundred
/// bytes of name in practice; anything longer is a probe.
pub const MAX_NAME_LEN: usize = 255;

/// Why a requested name was refused. Each variant is a different thing the operator may see in
/// the log, so each names the client's mistake plainly.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("empty file name")]
    Empty,
    #[error("file name is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("file name contains a NUL byte")]
    NulByte,
    #[error("file name {0:?} is absolute; names are relative to the boot root")]
    Absolute(String),
    #[error("file name {0:?} climbs out of the boot root with '..'")]
    ParentDir(String),
    #[error("file name {0:?} leads out of the boot root through a symlink")]
    Escapes(String),
    #[error("no file {0:?} under the boot root")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl PathError {
    /// True when the name was an attempt to leave the root, as opposed to a plain mistake.
    pub fn is_traversal(&self) -> bool {
        matches!(self, Self::Absolute(_) | Self::ParentDir(_) | Self::Escapes(_) | Self::NulByte | Self::TooLong { .. })
    }
}

/// A directory served read-only, canonicalized once at start-up.
#[derive(Debug, Clone)]
pub struct BootRoot {
    root: PathBuf,
}

impl BootRoot {
    /// Opens the root. It must exist and be a directory.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, PathError> {
        let path = path.as_ref();
        let root = path.canonicalize().map_err(|source| PathError::Io { path: path.to_path_buf(), source })?;
        if !root.is_dir() {
            return Err(PathError::NotAFile(root.display().to_string()));
        }
        Ok(Self { root })
    }

    /// The canonical path of the root.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Maps a client's file name to a regular file inside the root.
    ///
    /// Backslashes count as separators (some PXE clients send DOS-style names), so `..\x` is
    /// refused like `../x`.
    pub fn resolve(&self, requested: &[u8]) -> Result<PathBuf, PathError> {
        if requested.is_empty() {
            return Err(PathError::Empty);
        }
        if requested.len() > MAX_NAME_LEN {
            return Err(PathError::TooLong { len: requested.len() });
        }
        if requested.contains(&0) {
            return Err(PathError::NulByte);
        }
        let name = String::from_utf8_lossy(requested).replace('\\', "/");
        let relative = Path::new(&name);
        let mut clean = PathBuf::new();
        for component in relative.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => return Err(PathError::ParentDir(name)),
                Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute(name)),
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(PathError::NotAFile(name));
        }
        let joined = self.root.join(&clean);
        let canonical = match joined.canonicalize() {
            Ok(path) => path,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PathError::NotFound(name)),
            Err(source) => return Err(PathError::Io { path: joined, source }),
        };
        if !canonical.starts_with(&self.root) {
            return Err(PathError::Escapes(name));
        }
        let meta = std::fs::metadata(&canonical).map_err(|source| PathError::Io { path: canonical.clone(), source })?;
        if !meta.is_file() {
            return Err(PathError::NotAFile(name));
        }
        Ok(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fixture() -> (tempfile::TempDir, BootRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("ipxe")).unwrap();
        fs::write(root.join("ipxe/undionly.kpxe"), b"kpxe").unwrap();
        fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).unwrap();
        std::os::unix::fs::symlink("ipxe/undionly.kpxe", root.join("inside")).unwrap();
        let boot_root = BootRoot::new(&root).unwrap();
        (dir, boot_root)
    }

    #[test]
    fn serves_files_inside_the_root() {
        let (_dir, root) = fixture();
        assert!(root.resolve(b"ipxe/undionly.kpxe").unwrap().ends_with("ipxe/undionly.kpxe"));
        assert!(root.resolve(b"./ipxe//undionly.kpxe").is_ok());
        assert!(root.resolve(b"ipxe\\undionly.kpxe").is_ok());
        assert!(root.resolve(b"inside").is_ok(), "a symlink that stays inside is fine");
    }

    #[test]
    fn refuses_every_way_out() {
        let (_dir, root) = fixture();
        let long = vec![b'a'; MAX_NAME_LEN + 1];
        let cases: &[(&[u8], &str)] = &[
            (b"../secret", "ParentDir"),
            (b"ipxe/../../secret", "ParentDir"),
            (b"..\\secret", "ParentDir"),
            (b"/etc/passwd", "Absolute"),
            (b"\\etc\\passwd", "Absolute"),
            (b"ipxe/undionly.kpxe\0.txt", "NulByte"),
            (&long, "TooLong"),
            (b"leak", "Escapes"),
        ];
        for (name, want) in cases {
            let err = root.resolve(name).unwrap_err();
            assert!(format!("{err:?}").starts_with(want), "{:?} gave {err:?}", String::from_utf8_lossy(name));
            assert!(err.is_traversal());
        }
    }

    #[test]
    fn plain_mistakes_are_not_traversal() {
        let (_dir, root) = fixture();
        assert!(matches!(root.resolve(b""), Err(PathError::Empty)));
        assert!(matches!(root.resolve(b"missing.efi"), Err(PathError::NotFound(_))));
        assert!(matches!(root.resolve(b"ipxe"), Err(PathError::NotAFile(_))));
        assert!(!root.resolve(b"missing.efi").unwrap_err().is_traversal());
    }
}

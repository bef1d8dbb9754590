//! The boot root: the one directory that TFTP and HTTP serve files from.
//!
//! Every name a client sends goes through [`BootRoot::open`]. The name is checked lexically
//! first (cheap, and it names the reason): no parent components, no absolute paths, no NUL
//! bytes, nothing over-long. Then the file is opened *beneath a descriptor of the root* taken
//! once at start-up, never by a path checked earlier: `openat2` with `RESOLVE_BENEATH` and
//! `RESOLVE_NO_SYMLINKS` where the kernel has it (5.6 and later), otherwise one `openat` with
//! `O_NOFOLLOW` per component. No symlink is followed anywhere under the root, so a directory
//! swapped for a symlink while requests are served leads nowhere; the opened descriptor is then
//! checked to be a regular file. Boot root files must be real files, not symlinks.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::sys;

/// Longest file name a client may ask for, in bytes. TFTP packets carry at most a few hundred
/// bytes of name in practice; anything longer is a probe.
pub const MAX_NAME_LEN: usize = 255;

/// How often an `openat2` that a concurrent rename disturbed (`EAGAIN`) is tried again.
const OPENAT2_TRIES: usize = 3;

/// Set once `openat2` turns out to be missing (`ENOSYS`, or `EPERM` from a seccomp filter that
/// predates it): every open then walks the components itself.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

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
    #[error("file name {0:?} leads out of the boot root")]
    Escapes(String),
    #[error(
        "file name {0:?} is or passes through a symlink, which the boot root never follows: boot root files must \
         be real files, not symlinks (copy the file in instead)"
    )]
    Symlink(String),
    #[error("no file {0:?} under the boot root")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: io::Error },
}

impl PathError {
    /// True when the name was refused to keep the request inside the root (a way out, or a
    /// symlink, which could be one), as opposed to a plain mistake.
    pub fn is_traversal(&self) -> bool {
        matches!(
            self,
            Self::Absolute(_)
                | Self::ParentDir(_)
                | Self::Escapes(_)
                | Self::Symlink(_)
                | Self::NulByte
                | Self::TooLong { .. }
        )
    }
}

/// A file opened under the root, ready to serve.
#[derive(Debug)]
pub struct RootFile {
    pub file: File,
    pub len: u64,
    pub modified: Option<SystemTime>,
    /// Where the file is, for messages only: it is never opened again by this path.
    pub path: PathBuf,
}

/// How a name is resolved beneath the root's descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolver {
    /// One `openat2` call; the kernel refuses symlinks and ways out.
    Openat2,
    /// One `openat(O_NOFOLLOW)` per component, for kernels without `openat2`.
    Walk,
}

/// A directory served read-only, opened once at start-up.
#[derive(Debug, Clone)]
pub struct BootRoot {
    /// The root's canonical path, for messages and for start-up checks.
    root: PathBuf,
    /// An `O_PATH` descriptor of the root: every name is resolved beneath it.
    dir: Arc<OwnedFd>,
}

impl BootRoot {
    /// Opens the root. It must exist and be a directory; a symlink to one is fine (it is the
    /// operator's own configuration), and it is followed once, here.
    pub fn new(path: impl AsRef<Path>) -> Result<Self, PathError> {
        let path = path.as_ref();
        let io_err = |source| PathError::Io { path: path.to_path_buf(), source };
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)
            .map_err(io_err)?;
        let root = path.canonicalize().map_err(io_err)?;
        Ok(Self { root, dir: Arc::new(dir.into()) })
    }

    /// The canonical path of the root.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Opens a client's file name: a regular file under the root, reached through real
    /// directories only.
    ///
    /// Backslashes count as separators (some PXE clients send DOS-style names), so `..\x` is
    /// refused like `../x`. Blocking: run it off the async workers.
    pub fn open(&self, requested: &[u8]) -> Result<RootFile, PathError> {
        if !OPENAT2_MISSING.load(Ordering::Relaxed) {
            match self.open_with(requested, Resolver::Openat2) {
                Err(PathError::Io { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) =>
                {
                    OPENAT2_MISSING.store(true, Ordering::Relaxed);
                    tracing::info!(
                        "openat2 is not available ({source}); boot root files are opened one component at a time"
                    );
                }
                other => return other,
            }
        }
        self.open_with(requested, Resolver::Walk)
    }

    /// Checks that a name opens as a regular file under the root, as a client's request would.
    pub fn check(&self, requested: &[u8]) -> Result<(), PathError> {
        self.open(requested).map(drop)
    }

    fn open_with(&self, requested: &[u8], resolver: Resolver) -> Result<RootFile, PathError> {
        let (name, parts) = components(requested)?;
        let fd = match resolver {
            Resolver::Openat2 => self.open_openat2(&name, &parts),
            Resolver::Walk => self.open_walking(&name, &parts),
        }?;
        let path = parts.iter().fold(self.root.clone(), |path, part| path.join(String::from_utf8_lossy(part).as_ref()));
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| PathError::Io { path: path.clone(), source })?;
        if !meta.is_file() {
            return Err(PathError::NotAFile(name));
        }
        Ok(RootFile { file, len: meta.len(), modified: meta.modified().ok(), path })
    }

    /// One `openat2` beneath the root.
    fn open_openat2(&self, name: &str, parts: &[&[u8]]) -> Result<OwnedFd, PathError> {
        let relative = c_name(&parts.join(&b'/'));
        let mut tries = 0;
        loop {
            match sys::openat2_beneath(self.dir.as_fd(), &relative, FILE_FLAGS) {
                Ok(fd) => return Ok(fd),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries + 1 < OPENAT2_TRIES => tries += 1,
                Err(e) => return Err(self.open_error(name, parts, e)),
            }
        }
    }

    /// One `openat(O_NOFOLLOW)` per component, each beneath the descriptor of the directory
    /// before it: the fallback for kernels without `openat2`.
    fn open_walking(&self, name: &str, parts: &[&[u8]]) -> Result<OwnedFd, PathError> {
        let (last, dirs) = parts.split_last().expect("components() returns at least one part");
        let mut held: Option<OwnedFd> = None;
        for (i, part) in dirs.iter().enumerate() {
            let dir = held.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
            let next = sys::openat_nofollow(dir, &c_name(part), libc::O_PATH | libc::O_DIRECTORY);
            match next {
                Ok(fd) => held = Some(fd),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    // A symlink, or a file where a directory should be: say which.
                    return Err(if was_symlink(dir, part) {
                        PathError::Symlink(name.to_string())
                    } else {
                        PathError::NotFound(name.to_string())
                    });
                }
                Err(e) => return Err(self.open_error(name, &parts[..=i], e)),
            }
        }
        let dir = held.as_ref().map_or(self.dir.as_fd(), |fd| fd.as_fd());
        sys::openat_nofollow(dir, &c_name(last), FILE_FLAGS).map_err(|e| self.open_error(name, parts, e))
    }

    /// The refusal for an `errno` from opening `parts`.
    fn open_error(&self, name: &str, parts: &[&[u8]], e: io::Error) -> PathError {
        match e.raw_os_error() {
            Some(libc::ENOENT) => PathError::NotFound(name.to_string()),
            // A regular file where a directory should be.
            Some(libc::ENOTDIR) => PathError::NotFound(name.to_string()),
            Some(libc::ELOOP) => PathError::Symlink(name.to_string()),
            Some(libc::EXDEV) => PathError::Escapes(name.to_string()),
            _ => {
                let path =
                    parts.iter().fold(self.root.clone(), |p, part| p.join(String::from_utf8_lossy(part).as_ref()));
                PathError::Io { path, source: e }
            }
        }
    }
}

/// Flags for the file itself: read-only; `O_NONBLOCK` so that a FIFO under the root cannot
/// hold a thread (it is refused at the `fstat` as not a regular file; on a regular file the
/// flag changes nothing); `O_NOCTTY` so that a terminal device cannot become ours.
const FILE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Whether `name` in `dir`, which an `openat(O_DIRECTORY | O_NOFOLLOW)` just refused with
/// `ENOTDIR`, was a symlink rather than a file: it is a symlink now, or a directory now (it was
/// swapped since). Looked at with `O_PATH | O_NOFOLLOW`, which opens a link itself. For the
/// message only: the refusal stands either way.
fn was_symlink(dir: std::os::fd::BorrowedFd<'_>, name: &[u8]) -> bool {
    sys::openat_nofollow(dir, &c_name(name), libc::O_PATH)
        .and_then(|fd| File::from(fd).metadata())
        .is_ok_and(|meta| meta.file_type().is_symlink() || meta.is_dir())
}

/// A C string of a name already checked to hold no NUL byte.
fn c_name(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("names with a NUL byte are refused before they are opened")
}

/// Checks a name as [`BootRoot::open`] does before it touches the disk (not empty, not too long,
/// no NUL, not absolute, no `..`, naming a file), so a configuration can refuse a name that no
/// boot root could ever serve.
pub fn check_name(requested: &[u8]) -> Result<(), PathError> {
    components(requested).map(drop)
}

/// The lexical check: the name (lossy, for messages) and its components, each a plain name
/// (no `.`, `..` or empty components, no separators).
fn components(requested: &[u8]) -> Result<(String, Vec<&[u8]>), PathError> {
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
    let separator = |b: &u8| *b == b'/' || *b == b'\\';
    if requested.first().is_some_and(separator) {
        return Err(PathError::Absolute(name));
    }
    let mut parts = Vec::new();
    for part in requested.split(separator) {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathError::ParentDir(name)),
            part => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(PathError::NotAFile(name));
    }
    Ok((name, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Read as _;

    const RESOLVERS: [Resolver; 2] = [Resolver::Openat2, Resolver::Walk];

    fn fixture() -> (tempfile::TempDir, BootRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("ipxe")).unwrap();
        fs::write(root.join("ipxe/undionly.kpxe"), b"kpxe").unwrap();
        fs::create_dir_all(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/undionly.kpxe"), b"secret").unwrap();
        fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("leak")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("outdir")).unwrap();
        std::os::unix::fs::symlink("ipxe/undionly.kpxe", root.join("inside")).unwrap();
        std::os::unix::fs::symlink("ipxe", root.join("inside-dir")).unwrap();
        let boot_root = BootRoot::new(&root).unwrap();
        (dir, boot_root)
    }

    fn read(root: &BootRoot, name: &[u8], resolver: Resolver) -> Result<Vec<u8>, PathError> {
        let mut opened = root.open_with(name, resolver)?;
        let mut data = Vec::new();
        opened.file.read_to_end(&mut data).unwrap();
        assert_eq!(opened.len, data.len() as u64);
        Ok(data)
    }

    #[test]
    fn serves_files_inside_the_root() {
        let (_dir, root) = fixture();
        for resolver in RESOLVERS {
            assert_eq!(read(&root, b"ipxe/undionly.kpxe", resolver).unwrap(), b"kpxe", "{resolver:?}");
            assert_eq!(read(&root, b"./ipxe//undionly.kpxe", resolver).unwrap(), b"kpxe", "{resolver:?}");
            assert_eq!(read(&root, b"ipxe\\undionly.kpxe", resolver).unwrap(), b"kpxe", "{resolver:?}");
        }
        let opened = root.open(b"ipxe/undionly.kpxe").unwrap();
        assert!(opened.path.ends_with("root/ipxe/undionly.kpxe"), "{}", opened.path.display());
        assert!(opened.modified.is_some());
        root.check(b"ipxe/undionly.kpxe").unwrap();
    }

    /// Changed with issue 13: a symlink that stays inside the root used to be followed. The
    /// root is now resolved without following any symlink, so such a link is refused too.
    #[test]
    fn symlinks_are_refused_even_inside_the_root() {
        let (_dir, root) = fixture();
        for resolver in RESOLVERS {
            for name in [&b"inside"[..], b"inside-dir/undionly.kpxe", b"leak", b"outdir/undionly.kpxe"] {
                let err = read(&root, name, resolver).unwrap_err();
                assert!(
                    matches!(err, PathError::Symlink(_)),
                    "{resolver:?} {:?}: {err:?}",
                    String::from_utf8_lossy(name)
                );
                assert!(err.is_traversal());
                assert!(err.to_string().contains("must be real files, not symlinks"), "{err}");
            }
        }
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
            (b"leak", "Symlink"),
        ];
        for resolver in RESOLVERS {
            for (name, want) in cases {
                let err = root.open_with(name, resolver).unwrap_err();
                assert!(format!("{err:?}").starts_with(want), "{:?} gave {err:?}", String::from_utf8_lossy(name));
                assert!(err.is_traversal());
            }
        }
    }

    #[test]
    fn plain_mistakes_are_not_traversal() {
        let (dir, root) = fixture();
        let made = std::process::Command::new("mkfifo").arg(dir.path().join("root/fifo")).status().unwrap();
        assert!(made.success());
        for resolver in RESOLVERS {
            assert!(matches!(root.open_with(b"", resolver), Err(PathError::Empty)));
            assert!(matches!(root.open_with(b"missing.efi", resolver), Err(PathError::NotFound(_))));
            assert!(matches!(root.open_with(b"ipxe/missing/x", resolver), Err(PathError::NotFound(_))));
            assert!(matches!(root.open_with(b"ipxe/undionly.kpxe/x", resolver), Err(PathError::NotFound(_))));
            assert!(matches!(root.open_with(b"ipxe", resolver), Err(PathError::NotAFile(_))));
            assert!(matches!(root.open_with(b".", resolver), Err(PathError::NotAFile(_))));
            // A FIFO is refused without blocking on it.
            assert!(matches!(root.open_with(b"fifo", resolver), Err(PathError::NotAFile(_))));
            assert!(!root.open_with(b"missing.efi", resolver).unwrap_err().is_traversal());
        }
    }

    #[test]
    fn the_root_must_be_a_directory() {
        let (dir, _root) = fixture();
        assert!(matches!(BootRoot::new(dir.path().join("secret")), Err(PathError::Io { .. })));
        assert!(matches!(BootRoot::new(dir.path().join("missing")), Err(PathError::Io { .. })));
        // A symlink to the root is the operator's choice, followed once at start-up.
        let root = BootRoot::new(dir.path().join("root/inside-dir")).unwrap();
        assert!(root.path().ends_with("root/ipxe"));
        assert!(root.check(b"undionly.kpxe").is_ok());
    }

    /// Regression (issue 13): the root was checked by canonicalizing a name and then opening it
    /// again by path, so a directory swapped for a symlink in between served a file from outside
    /// the root. Here a thread keeps exchanging `ipxe` (a real directory) with a symlink to a
    /// directory outside, while a file deep under it is opened with each resolver. Nothing from
    /// outside may ever come back. (pxe/tests/boot_root_race.rs races the servers themselves.)
    #[test]
    fn a_directory_swapped_for_a_symlink_never_leads_outside() {
        let (dir, root) = fixture();
        let deep = format!("{}undionly.kpxe", "d/".repeat(100));
        for base in ["root/ipxe", "outside"] {
            let file = dir.path().join(base).join(&deep);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, if base == "outside" { &b"secret"[..] } else { b"kpxe" }).unwrap();
        }
        let name = format!("ipxe/{deep}");
        let (node, link) = (dir.path().join("root/ipxe"), dir.path().join("root/ipxe.link"));
        std::os::unix::fs::symlink(dir.path().join("outside"), &link).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Twice: the real directory is back at `ipxe` whenever the loop checks.
                    sys::rename_exchange(&node, &link).unwrap();
                    sys::rename_exchange(&node, &link).unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        for resolver in RESOLVERS {
            for _ in 0..2000 {
                match read(&root, name.as_bytes(), resolver) {
                    Ok(data) => assert_eq!(data, b"kpxe", "{resolver:?} served a file from outside the root"),
                    Err(PathError::Symlink(_)) => {}
                    Err(e) => panic!("{resolver:?}: unexpected {e:?}"),
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0, "the swapper never ran");
        for resolver in RESOLVERS {
            assert_eq!(read(&root, name.as_bytes(), resolver).unwrap(), b"kpxe", "{resolver:?}");
        }
    }
}

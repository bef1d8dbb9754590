//! A reproducible writer for cpio "newc" archives, the format the Linux kernel unpacks as initramfs.
//!
//! The same entries always give the same bytes: entries are sorted by path, every mtime is 0, uid
//! and gid are 0, inode numbers are assigned 1, 2, 3… in that order, and the gzip wrapper carries no
//! mtime and no file name. Device nodes are written as archive entries, so building an initramfs with
//! `/dev/console` needs neither root nor `mknod`: the kernel creates the node when it unpacks.
//!
//! Format (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`): each entry
//! is the ASCII magic `070701`, thirteen 8-digit hex fields, the NUL-terminated name padded to a
//! multiple of 4 bytes, then the data padded to a multiple of 4; the archive ends with an entry named
//! `TRAILER!!!`.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;
const TRAILER: &str = "TRAILER!!!";

/// Errors building an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// The path cannot be stored (empty, `..`, NUL, or too long).
    #[error("`{path}` cannot be an archive path: use a relative or absolute path without `..` or NUL")]
    InvalidPath {
        /// The path as given.
        path: String,
    },
    /// The path is already in the archive as something else (or twice).
    #[error("`{path}` is added to the archive twice")]
    Duplicate {
        /// The normalized path.
        path: String,
    },
    /// A source file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file on the build host.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file is larger than newc's 32-bit size field.
    #[error("`{path}` is {size} bytes; a newc archive holds files up to 4 GiB")]
    TooLarge {
        /// The archive path.
        path: String,
        /// Its size.
        size: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

/// An archive being assembled in memory. Paths are stored relative (`bin/sh`); leading `/` and `./`
/// are dropped. Missing parent directories are added with mode 0755.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds a directory with the given permission bits (e.g. `0o755`). Adding an existing directory
    /// again updates its mode.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Archive, CpioError> {
        let path = normalize(path)?;
        self.parents(&path)?;
        match self.entries.get_mut(&path) {
            Some(Node::Dir { mode: m }) => *m = mode & 0o7777,
            Some(_) => return Err(CpioError::Duplicate { path }),
            None => {
                self.entries.insert(path, Node::Dir { mode: mode & 0o7777 });
            }
        }
        Ok(self)
    }

    /// Adds a regular file with the given contents and permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Result<&mut Archive, CpioError> {
        let data = data.into();
        let path = normalize(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(CpioError::TooLarge { path, size: data.len() as u64 });
        }
        self.insert(path, Node::File { mode: mode & 0o7777, data })
    }

    /// Adds a regular file read from `source` on the build host.
    pub fn file_from(&mut self, path: &str, mode: u32, source: &Path) -> Result<&mut Archive, CpioError> {
        let data = std::fs::read(source).map_err(|e| CpioError::Read { path: source.to_path_buf(), source: e })?;
        self.file(path, mode, data)
    }

    /// Adds a symbolic link pointing at `target` (stored as given, relative or absolute).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Archive, CpioError> {
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidPath { path: target.to_string() });
        }
        let path = normalize(path)?;
        self.insert(path, Node::Symlink { target: target.to_string() })
    }

    /// Adds a character device node, e.g. `/dev/console` 5:1 or `/dev/null` 1:3.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<&mut Archive, CpioError> {
        let path = normalize(path)?;
        self.insert(path, Node::CharDevice { mode: mode & 0o7777, major, minor })
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        normalize(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The stored paths (relative, e.g. `bin/sh`), sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of entries (without the trailer).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the archive has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, path: String, node: Node) -> Result<&mut Archive, CpioError> {
        self.parents(&path)?;
        if self.entries.contains_key(&path) {
            return Err(CpioError::Duplicate { path });
        }
        self.entries.insert(path, node);
        Ok(self)
    }

    fn parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            match self.entries.get(parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(CpioError::Duplicate { path: parent.to_string() }),
                None => {
                    self.entries.insert(parent.to_string(), Node::Dir { mode: 0o755 });
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    /// Writes the uncompressed newc archive.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        for (ino, (path, node)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
                Node::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
                Node::Symlink { target } => (S_IFLNK | 0o777, 1, target.as_bytes(), (0, 0)),
                Node::CharDevice { mode, major, minor } => (S_IFCHR | mode, 1, &[], (*major, *minor)),
            };
            write_entry(out, Header { ino, mode, nlink, rdev }, path, data)?;
        }
        write_entry(out, Header { ino: 0, mode: 0, nlink: 1, rdev: (0, 0) }, TRAILER, &[])
    }

    /// The uncompressed archive as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Writes the archive gzip-compressed, with no mtime or name in the gzip header.
    pub fn write_gzip(&self, out: &mut impl Write) -> io::Result<()> {
        let mut gz = GzBuilder::new().mtime(0).write(out, Compression::best());
        self.write_to(&mut gz)?;
        gz.finish()?;
        Ok(())
    }

    /// The gzip-compressed archive as bytes.
    pub fn to_gzip_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_gzip(&mut out).expect("writing to a Vec cannot fail");
        out
    }
}

fn normalize(path: &str) -> Result<String, CpioError> {
    let invalid = || CpioError::InvalidPath { path: path.to_string() };
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid()),
            p if p.contains('\0') => return Err(invalid()),
            p => parts.push(p),
        }
    }
    if parts.is_empty() || path.len() > 4096 {
        return Err(invalid());
    }
    Ok(parts.join("/"))
}

/// The fields of a newc header that differ between entries.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    /// The device's major and minor numbers.
    rdev: (u32, u32),
}

fn write_entry(out: &mut impl Write, header: Header, name: &str, data: &[u8]) -> io::Result<()> {
    let Header { ino, mode, nlink, rdev } = header;
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        header.push_str(&format!("{f:08X}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    out.write_all(&[0; 3][..pad4(110 + namesize)])?;
    out.write_all(data)?;
    out.write_all(&[0; 3][..pad4(data.len())])
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("/init", 0o755, "#!/bin/sh\necho hi\n").unwrap();
        a.file("etc/hosts", 0o644, "127.0.0.1 localhost\n").unwrap();
        a.symlink("/bin/sh", "busybox").unwrap();
        a.file("bin/busybox", 0o755, vec![0x7f, b'E', b'L', b'F', 1, 2, 3]).unwrap();
        a.char_device("/dev/console", 0o600, 5, 1).unwrap();
        a.char_device("/dev/null", 0o666, 1, 3).unwrap();
        a.dir("proc", 0o555).unwrap();
        a
    }

    fn cpio(dir: &Path, args: &[&str], input: &[u8]) -> (String, String) {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the system `cpio` runs");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into());
        assert!(out.status.success(), "cpio {args:?} failed: {stderr}");
        (stdout, stderr)
    }

    #[test]
    fn system_cpio_lists_entries_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let (list, _) = cpio(dir.path(), &["-t", "--quiet"], &sample().to_bytes());
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            ["bin", "bin/busybox", "bin/sh", "dev", "dev/console", "dev/null", "etc", "etc/hosts", "init", "proc"]
        );
    }

    #[test]
    fn system_cpio_extracts_files_links_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut a = sample();
        // Extracting device nodes needs root; check those through `cpio -tv` instead.
        let listing = cpio(dir.path(), &["-tv", "--quiet"], &a.to_bytes()).0;
        let console = listing.lines().find(|l| l.ends_with(" dev/console")).unwrap();
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(console.contains("5,") && console.contains(" 1 "), "{console}");
        let null = listing.lines().find(|l| l.ends_with(" dev/null")).unwrap();
        assert!(null.starts_with("crw-rw-rw-"), "{null}");
        a.entries.retain(|_, n| !matches!(n, Node::CharDevice { .. }));
        cpio(dir.path(), &["-idv", "--quiet"], &a.to_bytes());
        let init = dir.path().join("init");
        assert_eq!(std::fs::read_to_string(&init).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(std::fs::metadata(&init).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::read_link(dir.path().join("bin/sh")).unwrap(), Path::new("busybox"));
        assert_eq!(std::fs::read(dir.path().join("bin/busybox")).unwrap(), [0x7f, b'E', b'L', b'F', 1, 2, 3]);
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/hosts")).unwrap(), "127.0.0.1 localhost\n");
        assert!(dir.path().join("proc").is_dir());
    }

    #[test]
    fn gzip_output_is_byte_identical_and_decompresses() {
        let one = sample().to_gzip_bytes();
        let two = sample().to_gzip_bytes();
        assert_eq!(one, two);
        // gzip header: magic, deflate, no flags (no name), mtime 0.
        assert_eq!(&one[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
        let mut plain = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&one[..]), &mut plain).unwrap();
        assert_eq!(plain, sample().to_bytes());
        let dir = tempfile::tempdir().unwrap();
        let (list, _) = cpio(dir.path(), &["-t", "--quiet"], &plain);
        assert!(list.lines().any(|l| l == "dev/console"));
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut a = Archive::new();
        a.file("z", 0o644, "z").unwrap();
        a.file("a/b", 0o644, "b").unwrap();
        let mut b = Archive::new();
        b.file("a/b", 0o644, "b").unwrap();
        b.file("z", 0o644, "z").unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
    }

    #[test]
    fn header_layout_is_newc() {
        let mut a = Archive::new();
        a.file("x", 0o644, "abc").unwrap();
        let bytes = a.to_bytes();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        let fields = [1, 0o100644, 0, 0, 1, 0, 3, 0, 0, 0, 0, 2, 0];
        let expected: String = fields.iter().map(|f| format!("{f:08X}")).collect();
        assert_eq!(header, format!("070701{expected}"));
        assert!(header.starts_with("07070100000001000081A4"));
        // name "x\0" ends at 112 (already aligned), data "abc" + 1 pad byte.
        assert_eq!(&bytes[110..116], b"x\0abc\0");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn rejects_bad_and_duplicate_paths() {
        let mut a = Archive::new();
        assert!(matches!(a.file("../etc/passwd", 0o644, ""), Err(CpioError::InvalidPath { .. })));
        assert!(matches!(a.file("/", 0o644, ""), Err(CpioError::InvalidPath { .. })));
        a.file("bin/x", 0o755, "").unwrap();
        assert!(matches!(a.symlink("bin/x", "y"), Err(CpioError::Duplicate { .. })));
        assert!(matches!(a.file("bin/x/y", 0o644, ""), Err(CpioError::Duplicate { .. })));
    }
}

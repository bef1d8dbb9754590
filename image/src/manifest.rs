//! `SHA256SUMS` manifests and crash-safe file writes.
//!
//! A manifest lists the artifacts of one output directory in the format `sha256sum` writes and
//! `sha256sum -c` reads: one line per file, `<64 hex digits>  <name>`, sorted by name. It lives next
//! to the artifacts as `SHA256SUMS`. [`verify`] checks that every listed file is present and has the
//! listed hash.
//!
//! Every file here is written aside (a hidden temporary name in the same directory), fsynced, renamed
//! over the final name and then the directory is fsynced: a crash leaves either the old file or the new
//! one, never a torn one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The manifest's file name inside an output directory.
pub const MANIFEST_NAME: &str = "SHA256SUMS";

/// Errors reading, writing or verifying a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file could not be read or written.
    #[error("cannot read or write {path}")]
    Io {
        /// The file or directory the OS refused.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A line of `SHA256SUMS` is not `<hex>  <name>`.
    #[error("{path} line {line}: expected `<64 hex digits>  <file name>`; rebuild the artifacts")]
    Malformed {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A name in the manifest is not a plain file name in the directory.
    #[error("{path}: `{name}` is not a plain file name; rebuild the artifacts")]
    BadName {
        /// The manifest file.
        path: PathBuf,
        /// The offending name.
        name: String,
    },
    /// A listed file does not have the listed hash.
    #[error("{path} has sha256 {actual} but the manifest lists {expected}; the file is damaged or was replaced, rebuild the artifacts")]
    Mismatch {
        /// The file that failed the check.
        path: PathBuf,
        /// The hash the manifest lists.
        expected: String,
        /// The hash of the file on disk.
        actual: String,
    },
}

impl ManifestError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> ManifestError + '_ {
        move |source| ManifestError::Io { path: path.to_path_buf(), source }
    }
}

/// One artifact: its file name inside the manifest's directory and its SHA-256 in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// A plain file name (no directory part).
    pub name: String,
    /// Lowercase hex SHA-256 of the file's contents.
    pub sha256: String,
}

/// The artifacts of one directory with their hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    dir: PathBuf,
    entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Hashes the named files in `dir` into a manifest (not yet written).
    pub fn for_files<S: AsRef<str>>(dir: &Path, names: &[S]) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            check_name(&dir.join(MANIFEST_NAME), name)?;
            let path = dir.join(name);
            entries.push(ManifestEntry { name: name.to_string(), sha256: sha256_file(&path)? });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries.dedup_by(|a, b| a.name == b.name);
        Ok(Manifest { dir: dir.to_path_buf(), entries })
    }

    /// Reads `dir/SHA256SUMS` without checking the files.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_NAME);
        let text = fs::read_to_string(&path).map_err(ManifestError::io(&path))?;
        Manifest::parse(dir, &path, &text)
    }

    fn parse(dir: &Path, path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = || ManifestError::Malformed { path: path.to_path_buf(), line: i + 1 };
            let (hash, name) = line.split_once("  ").ok_or_else(malformed)?;
            // `sha256sum -b` writes `<hex> *<name>`; accept the binary marker too.
            let name = name.strip_prefix('*').unwrap_or(name);
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed());
            }
            check_name(path, name)?;
            entries.push(ManifestEntry { name: name.to_string(), sha256: hash.to_ascii_lowercase() });
        }
        Ok(Manifest { dir: dir.to_path_buf(), entries })
    }

    /// Writes the manifest as `SHA256SUMS` in its directory, crash-safely, and returns its path.
    pub fn write(&self) -> Result<PathBuf, ManifestError> {
        let path = self.path();
        write_atomic(&path, self.to_text().as_bytes())?;
        Ok(path)
    }

    /// The manifest in `sha256sum` format.
    pub fn to_text(&self) -> String {
        self.entries.iter().map(|e| format!("{}  {}\n", e.sha256, e.name)).collect()
    }

    /// The directory the manifest describes.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the manifest lives: `dir/SHA256SUMS`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(MANIFEST_NAME)
    }

    /// The listed artifacts, sorted by name.
    pub fn entries(&self) -> &[ManifestEntry] {
        &self.entries
    }

    /// The entry for `name`, if listed.
    pub fn get(&self, name: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// Reads `dir/SHA256SUMS` and checks every listed file's hash.
pub fn verify(dir: &Path) -> Result<Manifest, ManifestError> {
    let manifest = Manifest::read(dir)?;
    for entry in &manifest.entries {
        let path = dir.join(&entry.name);
        let actual = sha256_file(&path)?;
        if actual != entry.sha256 {
            return Err(ManifestError::Mismatch { path, expected: entry.sha256.clone(), actual });
        }
    }
    Ok(manifest)
}

fn check_name(manifest: &Path, name: &str) -> Result<(), ManifestError> {
    let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\n', '\0']);
    if plain {
        Ok(())
    } else {
        Err(ManifestError::BadName { path: manifest.to_path_buf(), name: name.to_string() })
    }
}

/// SHA-256 of a file's contents, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, ManifestError> {
    let mut file = File::open(path).map_err(ManifestError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(ManifestError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `contents` to `path` crash-safely: to a temporary name beside it, fsync, rename, fsync the
/// directory. Readers see the old file or the new one, never a partial one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), ManifestError> {
    write_atomic_with(path, |file| file.write_all(contents))
}

/// Like [`write_atomic`], with the contents produced by `fill` writing into the temporary file.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> Result<(), ManifestError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| ManifestError::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        // Readable too: builders that lay out a filesystem read back what they wrote.
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(ManifestError::io(&tmp))?;
        fill(&mut file).map_err(ManifestError::io(&tmp))?;
        file.sync_all().map_err(ManifestError::io(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(ManifestError::io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(ManifestError::io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Copies `from` to `to` crash-safely (see [`write_atomic`]), with the given permission bits.
pub fn copy_atomic(from: &Path, to: &Path, mode: u32) -> Result<(), ManifestError> {
    use std::os::unix::fs::PermissionsExt;
    let mut src = File::open(from).map_err(ManifestError::io(from))?;
    write_atomic_with(to, |file| {
        io::copy(&mut src, file)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_verify_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("b.bin"), b"bee").unwrap();
        write_atomic(&dir.path().join("a.bin"), b"hello\n").unwrap();
        let manifest = Manifest::for_files(dir.path(), &["b.bin", "a.bin"]).unwrap();
        manifest.write().unwrap();
        let text = fs::read_to_string(dir.path().join(MANIFEST_NAME)).unwrap();
        let bee = hex::encode(Sha256::digest(b"bee"));
        assert_eq!(
            text,
            format!("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  a.bin\n{bee}  b.bin\n")
        );
        assert_eq!(verify(dir.path()).unwrap(), manifest);
        // No temporary files are left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["SHA256SUMS", "a.bin", "b.bin"]);
    }

    #[test]
    fn sha256sum_checks_our_manifest() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("x"), b"x").unwrap();
        Manifest::for_files(dir.path(), &["x"]).unwrap().write().unwrap();
        let status = std::process::Command::new("sha256sum")
            .args(["-c", "--quiet", MANIFEST_NAME])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn verify_names_the_file_and_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        write_atomic(&dir.path().join("kernel"), b"good").unwrap();
        Manifest::for_files(dir.path(), &["kernel"]).unwrap().write().unwrap();
        write_atomic(&dir.path().join("kernel"), b"evil").unwrap();
        let err = verify(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("kernel"), "{msg}");
        assert!(msg.contains(&hex::encode(Sha256::digest(b"good"))), "{msg}");
        assert!(msg.contains(&hex::encode(Sha256::digest(b"evil"))), "{msg}");
    }

    #[test]
    fn missing_file_and_bad_lines_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let line = format!("{}  gone\n", "0".repeat(64));
        write_atomic(&dir.path().join(MANIFEST_NAME), line.as_bytes()).unwrap();
        assert!(matches!(verify(dir.path()), Err(ManifestError::Io { path, .. }) if path.ends_with("gone")));
        write_atomic(&dir.path().join(MANIFEST_NAME), b"nothex  x\n").unwrap();
        assert!(matches!(verify(dir.path()), Err(ManifestError::Malformed { line: 1, .. })));
        let line = format!("{}  ../escape\n", "0".repeat(64));
        write_atomic(&dir.path().join(MANIFEST_NAME), line.as_bytes()).unwrap();
        assert!(matches!(verify(dir.path()), Err(ManifestError::BadName { .. })));
    }
}

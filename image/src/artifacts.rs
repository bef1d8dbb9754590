//! `artifacts.json`: the programs the appliance may serve to nodes over their management links.
//!
//! The node image's output directory holds, beside `vmlinuz` and `initrd.img`, files that are not
//! in the initramfs because only some nodes need them (etcd on control-plane nodes; k3s and its
//! airgap images when the image was built with a bundle). `artifacts.json` lists each by name:
//!
//! ```json
//! [{"name":"etcd","file":"etcd","sha256":"…","size":21529688,"version":"3.4.23-4+b4"}]
//! ```
//!
//! `name` is what the appliance asks for (`etcd`, `k3s`, `k3s-airgap-images`), `file` the plain
//! file name in the directory, `version` the Debian package version where there is one. Entries
//! are sorted by name. The appliance calls [`verify`] at startup: every file present, with the
//! listed size and SHA-256. Readers ignore fields they do not know, so one can be added.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{sha256_file, write_atomic, ManifestError};

/// The manifest's file name inside the node image's output directory.
pub const ARTIFACTS_FILE: &str = "artifacts.json";

/// One artifact the appliance may serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    /// What the appliance calls it: `etcd`, `k3s`, `k3s-airgap-images`.
    pub name: String,
    /// Its plain file name in the directory.
    pub file: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// The version of the package it came from, when known (the Debian version for etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Errors reading, writing or verifying `artifacts.json`.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    /// A file could not be read, hashed or written.
    #[error(transparent)]
    Io(#[from] ManifestError),
    /// `artifacts.json` is missing.
    #[error("{path} is missing; rebuild the node image with `oasis image build node`")]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// `artifacts.json` is not the expected JSON.
    #[error("{path} is not a list of artifacts ({reason}); rebuild the node image with `oasis image build node`")]
    Malformed {
        /// The manifest.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// An entry is unusable: a file name with a directory part, a bad hash, a repeated name.
    #[error("{path}: artifact {name:?} {reason}; rebuild the node image with `oasis image build node`")]
    BadEntry {
        /// The manifest.
        path: PathBuf,
        /// The entry's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A listed file does not match its entry.
    #[error("{path} ({name}) has {what} {actual} but artifacts.json lists {expected}; the file is damaged or was replaced, rebuild the node image with `oasis image build node`")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The artifact's name.
        name: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// What the manifest lists.
        expected: String,
        /// What the file has.
        actual: String,
    },
}

impl ArtifactEntry {
    /// The entry for `dir/file`, hashed now.
    pub fn of_file(
        dir: &Path,
        name: &str,
        file: &str,
        version: Option<String>,
    ) -> Result<ArtifactEntry, ArtifactsError> {
        let path = dir.join(file);
        let size = fs::metadata(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?.len();
        Ok(ArtifactEntry { name: name.into(), file: file.into(), sha256: sha256_file(&path)?, size, version })
    }
}

/// The entry called `name`, if listed.
pub fn find<'a>(entries: &'a [ArtifactEntry], name: &str) -> Option<&'a ArtifactEntry> {
    entries.iter().find(|e| e.name == name)
}

/// Writes `dir/artifacts.json` (sorted by name) crash-safely.
pub fn write(dir: &Path, entries: &[ArtifactEntry]) -> Result<PathBuf, ArtifactsError> {
    let path = dir.join(ARTIFACTS_FILE);
    let mut sorted = entries.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    check(&path, &sorted)?;
    let mut text = serde_json::to_string_pretty(&sorted).expect("artifact entries serialize");
    text.push('\n');
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}

/// Reads `dir/artifacts.json` without checking the files.
pub fn read(dir: &Path) -> Result<Vec<ArtifactEntry>, ArtifactsError> {
    let path = dir.join(ARTIFACTS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ArtifactsError::Missing { path }),
        Err(source) => return Err(ManifestError::Io { path, source }.into()),
    };
    let entries: Vec<ArtifactEntry> = serde_json::from_str(&text)
        .map_err(|e| ArtifactsError::Malformed { path: path.clone(), reason: e.to_string() })?;
    check(&path, &entries)?;
    Ok(entries)
}

/// Reads `dir/artifacts.json` and checks that every listed file is there with its size and hash.
pub fn verify(dir: &Path) -> Result<Vec<ArtifactEntry>, ArtifactsError> {
    let entries = read(dir)?;
    for entry in &entries {
        let path = dir.join(&entry.file);
        let mismatch = |what, expected: String, actual: String| ArtifactsError::Mismatch {
            path: path.clone(),
            name: entry.name.clone(),
            what,
            expected,
            actual,
        };
        let size = fs::metadata(&path).map_err(|source| ManifestError::Io { path: path.clone(), source })?.len();
        if size != entry.size {
            return Err(mismatch("size", entry.size.to_string(), size.to_string()));
        }
        let sha256 = sha256_file(&path)?;
        if sha256 != entry.sha256 {
            return Err(mismatch("sha256", entry.sha256.clone(), sha256));
        }
    }
    Ok(entries)
}

fn check(path: &Path, entries: &[ArtifactEntry]) -> Result<(), ArtifactsError> {
    for (i, entry) in entries.iter().enumerate() {
        let bad = |reason: &str| ArtifactsError::BadEntry {
            path: path.to_path_buf(),
            name: entry.name.clone(),
            reason: reason.to_string(),
        };
        let plain = |s: &str| {
            !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\n', '\0']) && s != ARTIFACTS_FILE
        };
        if !plain(&entry.name) {
            return Err(bad("has an empty or unusable name"));
        }
        if !plain(&entry.file) {
            return Err(bad(&format!("names file {:?}, which is not a plain file name in the directory", entry.file)));
        }
        if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("has a sha256 that is not 64 lowercase hex digits"));
        }
        if entries[..i].iter().any(|e| e.name == entry.name) {
            return Err(bad("is listed twice"));
        }
        if entries[..i].iter().any(|e| e.file == entry.file) {
            return Err(bad(&format!("names file {:?}, which another artifact names too", entry.file)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, data) in files {
            fs::write(dir.path().join(name), data).unwrap();
        }
        dir
    }

    #[test]
    fn written_entries_read_back_sorted_and_verify() {
        let dir = dir_with(&[("etcd", b"etcd bytes"), ("k3s", b"k3s bytes")]);
        let k3s = ArtifactEntry::of_file(dir.path(), "k3s", "k3s", None).unwrap();
        let etcd = ArtifactEntry::of_file(dir.path(), "etcd", "etcd", Some("3.4.23-4+b4".into())).unwrap();
        assert_eq!(etcd.size, 10);
        assert_eq!(etcd.sha256, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"etcd bytes")));
        write(dir.path(), &[k3s.clone(), etcd.clone()]).unwrap();
        assert_eq!(read(dir.path()).unwrap(), [etcd.clone(), k3s.clone()]);
        assert_eq!(verify(dir.path()).unwrap(), [etcd.clone(), k3s]);
        assert_eq!(find(&read(dir.path()).unwrap(), "etcd"), Some(&etcd));
        let text = fs::read_to_string(dir.path().join(ARTIFACTS_FILE)).unwrap();
        assert!(text.contains(r#""version": "3.4.23-4+b4""#), "{text}");
    }

    #[test]
    fn a_changed_or_missing_file_fails_verification_by_name() {
        let dir = dir_with(&[("etcd", b"etcd bytes")]);
        write(dir.path(), &[ArtifactEntry::of_file(dir.path(), "etcd", "etcd", None).unwrap()]).unwrap();
        fs::write(dir.path().join("etcd"), b"etcd BYTES").unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(matches!(err, ArtifactsError::Mismatch { what: "sha256", .. }), "{err}");
        assert!(err.to_string().contains("oasis image build node"), "{err}");
        fs::write(dir.path().join("etcd"), b"etcd").unwrap();
        assert!(matches!(verify(dir.path()).unwrap_err(), ArtifactsError::Mismatch { what: "size", .. }));
        fs::remove_file(dir.path().join("etcd")).unwrap();
        let err = verify(dir.path()).unwrap_err();
        assert!(err.to_string().contains("etcd"), "{err}");
    }

    #[test]
    fn unusable_manifests_are_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()).unwrap_err(), ArtifactsError::Missing { .. }));
        let sha = "0".repeat(64);
        for (json, wanted) in [
            ("{}".to_string(), "not a list"),
            (format!(r#"[{{"name":"etcd","file":"../etc/passwd","sha256":"{sha}","size":1}}]"#), "not a plain file"),
            (format!(r#"[{{"name":"etcd","file":"etcd","sha256":"{}","size":1}}]"#, "A".repeat(64)), "lowercase hex"),
            (
                format!(
                    r#"[{{"name":"etcd","file":"a","sha256":"{sha}","size":1}},{{"name":"etcd","file":"b","sha256":"{sha}","size":1}}]"#
                ),
                "listed twice",
            ),
        ] {
            fs::write(dir.path().join(ARTIFACTS_FILE), &json).unwrap();
            let err = read(dir.path()).unwrap_err().to_string();
            assert!(err.contains(wanted) && err.contains("rebuild"), "{json}: {err}");
        }
        // A field added later is ignored by this reader.
        fs::write(
            dir.path().join(ARTIFACTS_FILE),
            format!(r#"[{{"name":"etcd","file":"etcd","sha256":"{sha}","size":1,"arch":"amd64"}}]"#),
        )
        .unwrap();
        assert_eq!(read(dir.path()).unwrap()[0].version, None);
    }
}

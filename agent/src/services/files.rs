//! The file operations a service needs: crash-safe writes, hash checks, removal, and whether a
//! directory lives on memory.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use oasis_proto::NODE_STATE_DIR;
use sha2::{Digest, Sha256};

use super::ServiceError;

fn failed(path: &Path) -> impl FnOnce(std::io::Error) -> ServiceError + '_ {
    move |source| ServiceError::Write { path: path.to_path_buf(), source }
}

/// Creates the directory `path` will be in.
pub fn create_parent(path: &Path) -> Result<(), ServiceError> {
    match path.parent() {
        Some(dir) => create_dir(dir),
        None => Ok(()),
    }
}

/// Creates `dir` and its parents (mode 0700: service data and keys live there).
pub fn create_dir(dir: &Path) -> Result<(), ServiceError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed(dir))
}

pub fn set_mode(path: &Path, mode: u32) -> Result<(), ServiceError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(failed(path))
}

/// Writes `contents` beside `path` (readable by nobody else while written), fsyncs it, gives it
/// `mode`, renames it into place and fsyncs the directory: `path` holds the old contents or the
/// new, never a part.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), ServiceError> {
    create_parent(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.new"));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
        file.write_all(contents)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(ServiceError::Write { path: temp, source });
    }
    std::fs::rename(&temp, path).map_err(failed(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(failed(dir))?;
    }
    Ok(())
}

/// Whether `path` is a file of `size` bytes whose SHA-256 is `sha256`.
pub async fn holds(path: &Path, sha256: &str, size: u64) -> bool {
    let path = path.to_path_buf();
    let sha256 = sha256.to_string();
    tokio::task::spawn_blocking(move || {
        let Ok(mut file) = std::fs::File::open(&path) else { return false };
        if file.metadata().map(|m| !m.is_file() || m.len() != size).unwrap_or(true) {
            return false;
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(_) => return false,
            }
        }
        hex::encode(hasher.finalize()) == sha256
    })
    .await
    .unwrap_or(false)
}

/// Removes `path` (as the appliance wrote it, under `root`): a file, or a directory with
/// everything in it; then its parents that are left empty, up to the state directory. What is
/// already gone is fine; what cannot be removed is logged, not fatal.
pub fn remove(root: &Path, path: &str) {
    let full = root.join(path.trim_start_matches('/'));
    let removed = match std::fs::symlink_metadata(&full) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full),
        Ok(_) => std::fs::remove_file(&full),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = removed {
        tracing::warn!("cannot remove {}: {e}", full.display(), e = oasis_proto::error_chain(&e));
        return;
    }
    let state_dir: PathBuf = root.join(NODE_STATE_DIR.trim_start_matches('/'));
    let mut dir = full.parent();
    while let Some(d) = dir {
        if d == state_dir || !d.starts_with(&state_dir) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}

/// Whether `dir` is on memory (tmpfs or ramfs, as a netboot root always is): its contents are
/// lost at power-off.
pub fn is_volatile(dir: &Path) -> bool {
    statfs(dir).map(|s| is_memory_filesystem(s.filesystem_type())).unwrap_or(false)
}

/// ramfs (`linux/magic.h`), which neither nix nor libc names.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

fn is_memory_filesystem(kind: FsType) -> bool {
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o640);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["key.pem"]);
    }

    #[tokio::test]
    async fn a_file_holds_a_hash_only_with_the_right_size_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let sha = hex::encode(Sha256::digest(b"abc"));
        assert!(holds(&path, &sha, 3).await);
        assert!(!holds(&path, &sha, 4).await);
        assert!(!holds(&path, &hex::encode(Sha256::digest(b"abd")), 3).await);
        assert!(!holds(&dir.path().join("missing"), &sha, 3).await);
        assert!(!holds(dir.path(), &sha, 3).await);
    }

    #[test]
    fn removal_takes_empty_parents_up_to_the_state_dir() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("var/lib/oasis");
        std::fs::create_dir_all(state.join("etcd/bin")).unwrap();
        std::fs::create_dir_all(state.join("etcd/data/member")).unwrap();
        std::fs::write(state.join("etcd/bin/etcd"), "x").unwrap();
        std::fs::write(state.join("etcd/data/member/db"), "x").unwrap();
        remove(root.path(), "/var/lib/oasis/etcd/bin/etcd");
        assert!(!state.join("etcd/bin").exists() && state.join("etcd/data/member/db").exists());
        remove(root.path(), "/var/lib/oasis/etcd/data");
        assert!(!state.join("etcd").exists() && state.exists());
        remove(root.path(), "/var/lib/oasis/etcd/data");
    }

    #[test]
    fn memory_filesystems_are_volatile() {
        assert!(is_memory_filesystem(TMPFS_MAGIC) && is_memory_filesystem(RAMFS_MAGIC));
        assert!(!is_memory_filesystem(nix::sys::statfs::EXT4_SUPER_MAGIC));
        // /dev/shm is tmpfs on Linux; /proc is not memory that holds data.
        assert!(is_volatile(Path::new("/dev/shm")));
        assert!(!is_volatile(Path::new("/proc")));
    }
}

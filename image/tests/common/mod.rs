//! What the image tests share.

use std::path::PathBuf;

/// The Debian package cache: `OASIS_DEBIAN_CACHE` if set (so repeated runs reuse downloads),
/// else a temporary directory, returned too so that it lives as long as the test.
pub fn cache() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("OASIS_DEBIAN_CACHE") {
        Some(dir) => (PathBuf::from(dir), None),
        None => {
            let tmp = tempfile::tempdir().unwrap();
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

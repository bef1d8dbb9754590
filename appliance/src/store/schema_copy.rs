//! The store as it was before a newer oasis upgraded its schema, kept so the older oasis can
//! take it back when the newer one does not stay.
//!
//! An appliance update boots the new version once, on trial; if it fails its health check, GRUB
//! brings the old version back. The new version may have upgraded the store's schema in the
//! meantime, and the old one cannot read a newer schema. So before any upgrade the store file is
//! copied, whole, to [`copy_name`] of the schema it had. An oasis that finds a store too new for it
//! and such a copy of its own schema beside it puts the newer store aside (nothing is deleted:
//! what the failed version recorded stays there to look at) and opens the copy. Writes the
//! newer version made are not carried back: the machines, leases and events it recorded are in
//! the file set aside, and the older version starts from the moment the update began.
//!
//! Every change to the shape of a stored record bumps the schema version, so this is the one
//! path by which a newer store reaches an older oasis. The copies are removed once an update is
//! committed (the supervisor's part), so one is never taken back after the fact.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use oasis_image::manifest::ManifestError;

use super::{StoreError, STORE_FILE};

/// The name of the copy of a store of `schema`, beside it.
pub fn copy_name(schema: u64) -> String {
    format!("{STORE_FILE}.schema-{schema}")
}

/// Copies the store at `path` (schema `schema`) to its copy before it is upgraded, crash-safely
/// and with the store's own permissions ([`oasis_image::manifest::copy_atomic`]): a crash leaves
/// no copy or the whole one.
pub(super) fn keep_before_upgrade(data_dir: &Path, path: &Path, schema: u64) -> Result<PathBuf, StoreError> {
    let copy = data_dir.join(copy_name(schema));
    let mode = fs::metadata(path)
        .map_err(|source| StoreError::Access { path: path.to_path_buf(), source })?
        .permissions()
        .mode();
    oasis_image::manifest::copy_atomic(path, &copy, mode).map_err(|e| match e {
        ManifestError::Io { path, source } => StoreError::DataDir { path, source },
        other => StoreError::DataDir { path: copy.clone(), source: io::Error::other(other.to_string()) },
    })?;
    Ok(copy)
}

/// With the store at `path` of schema `found` too new for this oasis, and a copy of this oasis's
/// own `schema` beside it: puts the newer store aside and the copy in its place. The message to
/// record once the store is open, or `None` when there is no copy (the store stays refused).
pub(super) fn take_back(data_dir: &Path, path: &Path, found: u64, schema: u64) -> Result<Option<String>, StoreError> {
    let copy = data_dir.join(copy_name(schema));
    if !copy.exists() {
        return Ok(None);
    }
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let aside = data_dir.join(format!("{STORE_FILE}.from-schema-{found}-{secs}"));
    let failed = |source| StoreError::DataDir { path: aside.clone(), source };
    fs::rename(path, &aside).map_err(failed)?;
    fs::rename(&copy, path).map_err(failed)?;
    sync_dir(data_dir).map_err(failed)?;
    Ok(Some(format!(
        "the store had been upgraded to schema version {found} by a newer oasis that did not stay; this oasis took \
         back the copy kept before that upgrade (schema {schema}): what the newer version recorded since is in {}",
        aside.display()
    )))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

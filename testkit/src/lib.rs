//! What the workspace's tests share: golden files, compared byte for byte, blessed with one
//! environment variable for every crate ([`BLESS_VAR`]); network namespaces that remove
//! everything in them when dropped ([`netns::Netns`]).

use std::path::Path;

pub mod netns;

/// Set to `1` to write every golden file a test compares against from what the code makes
/// now: `OASIS_UPDATE_GOLDEN=1 cargo test ...`, then review the diff.
pub const BLESS_VAR: &str = "OASIS_UPDATE_GOLDEN";

/// Whether this run writes golden files instead of only comparing with them.
pub fn blessing() -> bool {
    std::env::var_os(BLESS_VAR).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Asserts that `actual` is the golden file at `path`, byte for byte. When blessing, the file
/// (and its directory) is written first, so the comparison still runs on what is on disk.
#[track_caller]
pub fn assert_golden(path: impl AsRef<Path>, actual: &str) {
    compare(path.as_ref(), actual, blessing());
}

#[track_caller]
fn compare(path: &Path, actual: &str, bless: bool) {
    if bless {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!("cannot read the golden file {}: {e}; to create it, run with {BLESS_VAR}=1", path.display())
    });
    assert!(
        actual == expected,
        "{} changed; if that is intended, run with {BLESS_VAR}=1 and review the diff\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_text(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(f).expect_err("it panics");
        payload.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_matching_file_passes_a_different_one_fails_and_blessing_writes_it() {
        let dir = std::env::temp_dir().join(format!("oasis-testkit-{}", std::process::id()));
        let path = dir.join("golden").join("a.txt");
        let missing = panic_text(|| compare(&dir.join("none.txt"), "x", false));
        assert!(missing.contains("to create it, run with OASIS_UPDATE_GOLDEN=1"), "{missing}");
        compare(&path, "one\n", true);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        compare(&path, "one\n", false);
        let changed = panic_text(|| compare(&path, "two\n", false));
        assert!(changed.contains("a.txt changed") && changed.contains("--- actual\ntwo"), "{changed}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

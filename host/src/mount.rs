//! Mounting and unmounting, through `nix`, and the mount table.

use std::io;
use std::path::Path;

pub use nix::mount::MsFlags;

/// Mounts `device`, a filesystem of type `fstype`, at `target` (which must exist) with `flags`
/// and the filesystem's own `options` (`""` for none).
pub fn mount(device: &Path, target: &Path, fstype: &str, flags: MsFlags, options: &str) -> io::Result<()> {
    let options = (!options.is_empty()).then_some(options);
    nix::mount::mount(Some(device), target, Some(fstype), flags, options).map_err(io::Error::from)
}

/// Bind-mounts `source` over `target` (which must exist), then makes the bind read-only.
pub fn bind_read_only(source: &Path, target: &Path) -> io::Result<()> {
    let none = None::<&str>;
    nix::mount::mount(Some(source), target, none, MsFlags::MS_BIND, none).map_err(io::Error::from)?;
    let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    nix::mount::mount(none, target, none, remount, none).map_err(io::Error::from)
}

/// Flushes the filesystem mounted at `target` (so that an error writing back is reported here
/// rather than lost), then unmounts it.
pub fn unmount(target: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(target)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)?;
    drop(dir);
    nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(io::Error::from)
}

/// The live mount table, as the kernel shows it to this process.
pub const MOUNTS: &str = "/proc/self/mounts";

/// Whether `table` (the text of a mounts file such as [`MOUNTS`]) has something mounted at
/// `target`.
pub fn is_mount_point(table: &str, target: &Path) -> bool {
    field_is(table, 1, target)
}

/// Whether `table` (as for [`is_mount_point`]) has `device` mounted somewhere.
pub fn is_mounted_device(table: &str, device: &Path) -> bool {
    field_is(table, 0, device)
}

fn field_is(table: &str, field: usize, path: &Path) -> bool {
    table.lines().any(|l| l.split_whitespace().nth(field) == Some(&*path.to_string_lossy()))
}

/// Reads [`MOUNTS`]; empty when it cannot be read (no /proc: nothing is known to be mounted).
pub fn mount_table() -> String {
    std::fs::read_to_string(MOUNTS).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_table_is_read_by_field() {
        let table = "/dev/vda3 /var/lib/oasis ext4 rw,noatime 0 0\nproc /proc proc rw 0 0\n";
        assert!(is_mount_point(table, Path::new("/var/lib/oasis")));
        assert!(!is_mount_point(table, Path::new("/var/lib")));
        assert!(is_mounted_device(table, Path::new("/dev/vda3")));
        assert!(!is_mounted_device(table, Path::new("/var/lib/oasis")));
    }

    #[test]
    fn mounting_a_tmpfs_and_unmounting_it() {
        // Needs root (CAP_SYS_ADMIN), in a mount namespace of its own so nothing leaks out.
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().to_path_buf();
        let table = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS) needs root");
            let none = None::<&str>;
            let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
            nix::mount::mount(none, "/", none, private, none).unwrap();
            mount(Path::new("tmpfs"), &target, "tmpfs", MsFlags::MS_NOSUID, "size=1m").unwrap();
            // This thread's namespace, not the process's (`/proc/self` is the main thread's).
            let table = || std::fs::read_to_string("/proc/thread-self/mounts").unwrap();
            let mounted = is_mount_point(&table(), &target);
            let bound = target.join("ro");
            std::fs::create_dir(&bound).unwrap();
            bind_read_only(&target, &bound).unwrap();
            let read_only = std::fs::write(bound.join("x"), b"x").unwrap_err().raw_os_error();
            unmount(&bound).unwrap();
            unmount(&target).unwrap();
            let err = unmount(&target).unwrap_err();
            (mounted, read_only, is_mount_point(&table(), &target), err.raw_os_error())
        })
        .join()
        .unwrap();
        assert_eq!(table, (true, Some(libc::EROFS), false, Some(libc::EINVAL)));
    }
}

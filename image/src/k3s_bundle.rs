//! A k3s bundle: the directory an operator gives to `oasis image build node --k3s-bundle DIR`.
//!
//! It must hold the `k3s` executable (an x86-64 ELF program) and exactly one airgap images
//! tarball, `k3s-airgap-images-amd64.tar`, `.tar.gz` or `.tar.zst`, as k3s's release page ships
//! them. [`validate`] checks both before anything is fetched or written, so a wrong directory is
//! refused at once with what is missing or wrong. The files are then served to nodes as
//! artifacts, never put into the initramfs.
//!
//! The bundle's version is not read: finding it would mean running an operator-supplied program
//! on the build host. The running k3s reports its own version.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The k3s program's file name, in the bundle and in the output directory.
pub const K3S_FILE: &str = "k3s";
/// The airgap images tarball names k3s accepts (it tells the compression by the suffix).
pub const AIRGAP_FILES: &[&str] =
    &["k3s-airgap-images-amd64.tar", "k3s-airgap-images-amd64.tar.gz", "k3s-airgap-images-amd64.tar.zst"];
/// The artifact names in `artifacts.json`.
pub const K3S_ARTIFACT: &str = "k3s";
pub const AIRGAP_ARTIFACT: &str = "k3s-airgap-images";

const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

/// Why a directory is not a usable k3s bundle.
#[derive(Debug, thiserror::Error)]
pub enum K3sBundleError {
    /// The directory cannot be read.
    #[error("cannot read the k3s bundle directory {path}; give --k3s-bundle the directory holding `k3s` and k3s-airgap-images-amd64.tar(.gz|.zst)")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file of the bundle cannot be read.
    #[error("cannot read {path} of the k3s bundle")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// There is no `k3s` program.
    #[error(
        "the k3s bundle {dir} has no `k3s` file; put the k3s binary from the k3s release (amd64) there, named k3s"
    )]
    NoProgram {
        /// The bundle directory.
        dir: PathBuf,
    },
    /// `k3s` is not an x86-64 ELF program.
    #[error(
        "{path} is not an x86-64 Linux program ({reason}); put the k3s binary for amd64 from the k3s release there"
    )]
    BadProgram {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// There is no airgap images tarball.
    #[error("the k3s bundle {dir} has no airgap images tarball; put k3s-airgap-images-amd64.tar.zst (or .tar.gz, .tar) from the same k3s release there: nodes cannot download images")]
    NoImages {
        /// The bundle directory.
        dir: PathBuf,
    },
    /// More than one airgap images tarball: which one is meant is unclear.
    #[error("the k3s bundle {dir} has several airgap images tarballs ({names}); keep only the one from the k3s release you use")]
    SeveralImages {
        /// The bundle directory.
        dir: PathBuf,
        /// The tarballs found.
        names: String,
    },
    /// The tarball is not what its name says.
    #[error("{path} is not a {kind} ({reason}); download it again from the k3s release")]
    BadImages {
        /// The file.
        path: PathBuf,
        /// What its name promises, e.g. `zstd-compressed tarball`.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// A checked k3s bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sBundle {
    /// The `k3s` program.
    pub program: PathBuf,
    /// The airgap images tarball.
    pub images: PathBuf,
    /// The tarball's file name (one of [`AIRGAP_FILES`]); it keeps this name on the nodes.
    pub images_file: String,
}

/// Checks that `dir` holds a k3s program and one airgap images tarball.
pub fn validate(dir: &Path) -> Result<K3sBundle, K3sBundleError> {
    let dir_err = |source| K3sBundleError::Dir { path: dir.to_path_buf(), source };
    if !fs::metadata(dir).map_err(dir_err)?.is_dir() {
        return Err(dir_err(std::io::Error::from(std::io::ErrorKind::NotADirectory)));
    }
    let program = dir.join(K3S_FILE);
    if !program.is_file() {
        return Err(K3sBundleError::NoProgram { dir: dir.to_path_buf() });
    }
    check_program(&program)?;

    let found: Vec<&str> = AIRGAP_FILES.iter().copied().filter(|name| dir.join(name).is_file()).collect();
    let images_file = match found.as_slice() {
        [] => return Err(K3sBundleError::NoImages { dir: dir.to_path_buf() }),
        [one] => one.to_string(),
        several => return Err(K3sBundleError::SeveralImages { dir: dir.to_path_buf(), names: several.join(", ") }),
    };
    let images = dir.join(&images_file);
    check_images(&images)?;
    Ok(K3sBundle { program, images, images_file })
}

fn read_head(path: &Path, len: usize) -> Result<Vec<u8>, K3sBundleError> {
    let read_err = |source| K3sBundleError::Read { path: path.to_path_buf(), source };
    let mut head = Vec::with_capacity(len);
    fs::File::open(path).map_err(read_err)?.take(len as u64).read_to_end(&mut head).map_err(read_err)?;
    Ok(head)
}

/// An ELF header saying: 64-bit, x86-64, an executable (static or position-independent).
fn check_program(path: &Path) -> Result<(), K3sBundleError> {
    let head = read_head(path, 64)?;
    let bad = |reason: String| K3sBundleError::BadProgram { path: path.to_path_buf(), reason };
    let header = goblin::elf::Elf::parse_header(&head).map_err(|e| bad(format!("no ELF header: {e}")))?;
    if header.e_ident[goblin::elf::header::EI_CLASS] != goblin::elf::header::ELFCLASS64 {
        return Err(bad("a 32-bit ELF file".into()));
    }
    if header.e_machine != EM_X86_64 {
        return Err(bad(format!("built for {}", goblin::elf::header::machine_to_str(header.e_machine))));
    }
    if !matches!(header.e_type, ET_EXEC | ET_DYN) || header.e_entry == 0 {
        return Err(bad(format!(
            "an ELF {} without an entry point, not a program",
            goblin::elf::header::et_to_str(header.e_type)
        )));
    }
    Ok(())
}

/// The tarball's first bytes match its suffix: a tar header (or the zero block of an empty
/// archive), gzip's or zstd's magic number.
fn check_images(path: &Path) -> Result<(), K3sBundleError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let head = read_head(path, 512)?;
    let (kind, ok, expected) = if name.ends_with(".tar.zst") {
        ("zstd-compressed tarball", head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd magic number")
    } else if name.ends_with(".tar.gz") {
        ("gzip-compressed tarball", head.starts_with(&[0x1f, 0x8b]), "gzip magic number")
    } else {
        let ustar = head.len() == 512 && &head[257..262] == b"ustar";
        let end_of_archive = head.len() == 512 && head.iter().all(|b| *b == 0);
        ("tar archive", ustar || end_of_archive, "tar header")
    };
    if head.is_empty() {
        return Err(K3sBundleError::BadImages { path: path.to_path_buf(), kind, reason: "the file is empty".into() });
    }
    if !ok {
        return Err(K3sBundleError::BadImages { path: path.to_path_buf(), kind, reason: format!("no {expected}") });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle of fixtures: `/bin/true` (a real x86-64 program, not k3s) as `k3s`, and an empty
    /// tar archive made by tar(1).
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::copy("/bin/true", dir.path().join(K3S_FILE)).unwrap();
        let status = std::process::Command::new("tar")
            .args(["-cf", AIRGAP_FILES[0], "-T", "/dev/null"])
            .current_dir(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        dir
    }

    #[test]
    fn a_program_and_one_tarball_are_accepted() {
        let dir = fixture();
        let bundle = validate(dir.path()).unwrap();
        assert_eq!(bundle.program, dir.path().join("k3s"));
        assert_eq!(bundle.images_file, "k3s-airgap-images-amd64.tar");
    }

    #[test]
    fn a_program_that_is_not_x86_64_elf_is_refused() {
        let dir = fixture();
        fs::write(dir.path().join(K3S_FILE), "#!/bin/sh\necho k3s\n").unwrap();
        let err = validate(dir.path()).unwrap_err();
        assert!(matches!(err, K3sBundleError::BadProgram { .. }), "{err}");
        assert!(err.to_string().contains("not an x86-64 Linux program"), "{err}");

        // An ELF header for another machine (AArch64, 183) is refused by name.
        let mut elf = fs::read("/bin/true").unwrap();
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        fs::write(dir.path().join(K3S_FILE), elf).unwrap();
        let err = validate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("AARCH64"), "{err}");
    }

    #[test]
    fn missing_parts_are_named() {
        let dir = fixture();
        fs::remove_file(dir.path().join(AIRGAP_FILES[0])).unwrap();
        let err = validate(dir.path()).unwrap_err();
        assert!(matches!(err, K3sBundleError::NoImages { .. }), "{err}");
        assert!(err.to_string().contains("k3s-airgap-images-amd64.tar.zst"), "{err}");

        fs::remove_file(dir.path().join(K3S_FILE)).unwrap();
        let err = validate(dir.path()).unwrap_err();
        assert!(matches!(err, K3sBundleError::NoProgram { .. }), "{err}");

        let err = validate(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("--k3s-bundle"), "{err}");
    }

    #[test]
    fn tarballs_must_match_their_names_and_be_alone() {
        let dir = fixture();
        fs::write(dir.path().join(AIRGAP_FILES[2]), b"not zstd").unwrap();
        let err = validate(dir.path()).unwrap_err();
        assert!(matches!(err, K3sBundleError::SeveralImages { .. }), "{err}");
        fs::remove_file(dir.path().join(AIRGAP_FILES[0])).unwrap();
        let err = validate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("zstd-compressed tarball") && err.contains("no zstd magic number"), "{err}");
        fs::write(dir.path().join(AIRGAP_FILES[2]), b"").unwrap();
        let err = validate(dir.path()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        fs::write(dir.path().join(AIRGAP_FILES[2]), [0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap();
        validate(dir.path()).unwrap();
    }
}

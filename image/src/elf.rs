//! The shared libraries a dynamically linked program needs, found on the build host.
//!
//! [`runtime_files`] reads the program's `DT_NEEDED` entries and its `PT_INTERP` (the dynamic loader),
//! resolves every needed name against library directories (the first directory holding it wins, as
//! for ld.so), and repeats for each library found until nothing new is needed. The result is every
//! file the program needs at run time, by the path it must have in the image.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

mod symver;
pub use symver::{check_versions, defined_versions, needed_versions};

/// Where glibc's loader looks on Debian x86-64, in its order.
pub const HOST_LIBRARY_DIRS: &[&str] =
    &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];

/// Errors finding a program's libraries.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is not an ELF object.
    #[error("{path} is not an ELF program or library ({reason}); give the path of the built binary")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A needed library is in none of the directories.
    #[error("{name}, needed by {needed_by}, is in none of {dirs}; install the package that has it on the build host")]
    NotFound {
        /// The library's `DT_NEEDED` name.
        name: String,
        /// Who needs it.
        needed_by: PathBuf,
        /// The directories searched.
        dirs: String,
    },
    /// A program served beside the image needs a library (or loader) the image does not carry.
    #[error("{program} needs {library}, which the node initramfs does not carry, so it would not start on a node; use a build linked only against what the initramfs has ({carried}), or add the library to the node image")]
    NotCarried {
        /// The program.
        program: PathBuf,
        /// The missing `DT_NEEDED` name or `PT_INTERP` path.
        library: String,
        /// The library names the image carries.
        carried: String,
    },
    /// A program served beside the image needs a symbol version its library in the image lacks.
    #[error("{program} needs {library} with version {version}, but the one the node initramfs carries defines versions up to {newest}, so it would not start on a node; use a build of it for an older C library, or build the node image on a host whose libraries are as new")]
    VersionNotCarried {
        /// The program.
        program: PathBuf,
        /// The library's soname.
        library: String,
        /// The version it lacks.
        version: String,
        /// The newest version the carried library defines.
        newest: String,
    },
}

/// A file to put into the image: its path there and where its bytes come from on the build host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFile {
    /// Absolute path inside the image, e.g. `/lib/x86_64-linux-gnu/libc.so.6`.
    pub image_path: String,
    /// The file on the build host (symlinks resolved).
    pub host_path: PathBuf,
}

/// What [`needs`] reads from one ELF file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Needs {
    /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub libraries: Vec<String>,
}

/// Reads the loader and the needed libraries of an ELF file.
pub fn needs(path: &Path) -> Result<Needs, ElfError> {
    let bytes = fs::read(path).map_err(|source| ElfError::Io { path: path.to_path_buf(), source })?;
    let elf = goblin::elf::Elf::parse(&bytes)
        .map_err(|e| ElfError::NotElf { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(Needs {
        interpreter: elf.interpreter.map(str::to_string),
        libraries: elf.libraries.iter().map(|l| l.to_string()).collect(),
    })
}

/// Every library (and the loader) that `program` needs, recursively, searched in `dirs` (host
/// directories; a library found in `dir` goes to the same `dir` in the image). Sorted by image path.
pub fn runtime_files(program: &Path, dirs: &[&str]) -> Result<Vec<RuntimeFile>, ElfError> {
    let mut out: BTreeMap<String, RuntimeFile> = BTreeMap::new();
    let mut queue = vec![program.to_path_buf()];
    let mut first = true;
    while let Some(file) = queue.pop() {
        let needs = needs(&file)?;
        if first {
            if let Some(interp) = &needs.interpreter {
                let host = fs::canonicalize(interp).map_err(|source| ElfError::Io { path: interp.into(), source })?;
                out.insert(interp.clone(), RuntimeFile { image_path: interp.clone(), host_path: host });
            }
            first = false;
        }
        for name in needs.libraries {
            if out.values().any(|f| f.image_path.rsplit('/').next() == Some(name.as_str())) {
                continue;
            }
            let found = dirs.iter().map(|d| (d, Path::new(d).join(&name))).find(|(_, p)| p.is_file());
            let Some((dir, host)) = found else {
                return Err(ElfError::NotFound { name, needed_by: file.clone(), dirs: dirs.join(", ") });
            };
            let host = fs::canonicalize(&host).map_err(|source| ElfError::Io { path: host.clone(), source })?;
            let image_path = format!("{}/{name}", dir.trim_end_matches('/'));
            queue.push(host.clone());
            out.insert(image_path.clone(), RuntimeFile { image_path, host_path: host });
        }
    }
    Ok(out.into_values().collect())
}

/// Checks that `program` can run from the files of an image given by their paths (no leading
/// `/`, as in an archive): its loader is one of them and every library it names is one of them by
/// file name, as the loader finds it by soname in its directories. Programs served to nodes beside
/// the initramfs (etcd) rely on the libraries the initramfs carries for the agent.
pub fn check_carried<'a>(program: &Path, image_paths: impl IntoIterator<Item = &'a str>) -> Result<(), ElfError> {
    let paths: Vec<&str> = image_paths.into_iter().collect();
    let libraries: Vec<&str> = paths
        .iter()
        .filter(|p| p.starts_with("lib") || p.starts_with("usr/lib"))
        .filter_map(|p| p.rsplit('/').next())
        .filter(|name| name.contains(".so"))
        .collect();
    let not_carried = |library: &str| ElfError::NotCarried {
        program: program.to_path_buf(),
        library: library.to_string(),
        carried: libraries.join(", "),
    };
    let needs = needs(program)?;
    if let Some(interp) = &needs.interpreter {
        if !paths.contains(&interp.trim_start_matches('/')) {
            return Err(not_carried(interp));
        }
    }
    match needs.libraries.iter().find(|l| !libraries.contains(&l.as_str())) {
        Some(library) => Err(not_carried(library)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_program_needs_libc_and_the_loader() {
        let files = runtime_files(Path::new("/bin/true"), HOST_LIBRARY_DIRS).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.image_path.as_str()).collect();
        assert!(paths.contains(&"/lib64/ld-linux-x86-64.so.2"), "{paths:?}");
        assert!(paths.contains(&"/lib/x86_64-linux-gnu/libc.so.6"), "{paths:?}");
        // libc needs the loader by its soname; the loader is already there (ld.so matches it by
        // soname), so it is not copied twice.
        assert_eq!(paths.iter().filter(|p| p.ends_with("/ld-linux-x86-64.so.2")).count(), 1, "{paths:?}");
        for f in &files {
            assert!(f.host_path.is_file(), "{f:?}");
        }
    }

    #[test]
    fn a_missing_library_names_itself_and_its_user() {
        let dir = tempfile::tempdir().unwrap();
        let err = runtime_files(Path::new("/bin/true"), &[dir.path().to_str().unwrap()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("libc.so.6") && msg.contains("/bin/true"), "{msg}");
    }

    #[test]
    fn a_non_elf_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent");
        fs::write(&path, "#!/bin/sh\n").unwrap();
        let err = runtime_files(&path, HOST_LIBRARY_DIRS).unwrap_err();
        assert!(matches!(err, ElfError::NotElf { .. }), "{err}");
    }

    #[test]
    fn carried_libraries_are_checked_by_name_and_the_loader_by_path() {
        let image = ["bin/busybox", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"];
        check_carried(Path::new("/bin/true"), image).unwrap();
        let err = check_carried(Path::new("/bin/true"), ["lib64/ld-linux-x86-64.so.2"]).unwrap_err();
        assert!(matches!(&err, ElfError::NotCarried { library, .. } if library == "libc.so.6"), "{err}");
        let err = check_carried(Path::new("/bin/true"), ["lib/x86_64-linux-gnu/libc.so.6"]).unwrap_err();
        assert!(err.to_string().contains("/lib64/ld-linux-x86-64.so.2"), "{err}");
    }
}

//! GRUB's environment block (`grubenv`): the file GRUB's `load_env` reads and `save_env`
//! rewrites, which chooses the appliance's boot slot.
//!
//! The format is GRUB's own (`grub-core/lib/envblk.c`, `grub-editenv`): the line
//! [`SIGNATURE`], then one `name=value` line per variable (a backslash or a newline in a value
//! is escaped with a backslash), then `#` up to [`SIZE`] bytes. GRUB's `save_env` writes the
//! block in place, never changing its size, and so must everyone else.
//!
//! oasis keeps every variable in the block's first 512-byte sector ([`render`] refuses more), so a
//! write changes one sector only: a power cut in the middle leaves either the old sector or the
//! new one, and either is a valid choice of slot.

/// The size of the block, as `grub-editenv` creates it.
pub const SIZE: usize = 1024;
/// The first line of every block.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// The bytes the variables must fit in (one disk sector, written atomically).
pub const ATOMIC_BYTES: usize = 512;

/// Errors reading or writing a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrubEnvError {
    /// Not a GRUB environment block.
    #[error("not a GRUB environment block (it does not start with \"# GRUB Environment Block\")")]
    NoSignature,
    /// Not the size GRUB writes in place.
    #[error("the GRUB environment block is {0} bytes, not {SIZE}: it must be rewritten whole")]
    Size(usize),
    /// A line that is not `name=value`.
    #[error("line {line} of the GRUB environment block is not name=value")]
    Malformed {
        /// Its number, from 1 (the signature).
        line: usize,
    },
    /// A variable name GRUB would not read back.
    #[error("{0:?} is not a GRUB variable name (letters, digits and _ only)")]
    Name(String),
    /// The variables do not fit in the first sector.
    #[error("the variables take {0} bytes, more than the {ATOMIC_BYTES} written in one sector")]
    TooLong(usize),
}

/// The variables of a block, in their order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    vars: Vec<(String, String)>,
}

impl GrubEnv {
    /// Reads a block as GRUB would.
    pub fn parse(bytes: &[u8]) -> Result<GrubEnv, GrubEnvError> {
        if bytes.len() != SIZE {
            return Err(GrubEnvError::Size(bytes.len()));
        }
        let body = bytes.strip_prefix(SIGNATURE.as_bytes()).ok_or(GrubEnvError::NoSignature)?;
        let mut env = GrubEnv::default();
        let mut line = 1;
        let mut rest = body;
        while let Some(&first) = rest.first() {
            line += 1;
            if first == b'#' {
                // A comment line, or the padding (which runs to the end without a newline).
                match rest.iter().position(|b| *b == b'\n') {
                    Some(end) => rest = &rest[end + 1..],
                    None => break,
                }
                continue;
            }
            let (value_start, name) = match rest.iter().position(|b| *b == b'=') {
                Some(eq) => (eq + 1, &rest[..eq]),
                None => return Err(GrubEnvError::Malformed { line }),
            };
            let name = std::str::from_utf8(name).map_err(|_| GrubEnvError::Malformed { line })?;
            check_name(name).map_err(|_| GrubEnvError::Malformed { line })?;
            let mut value = Vec::new();
            let mut i = value_start;
            loop {
                match rest.get(i) {
                    None => return Err(GrubEnvError::Malformed { line }),
                    Some(b'\\') => {
                        value.push(*rest.get(i + 1).ok_or(GrubEnvError::Malformed { line })?);
                        i += 2;
                    }
                    Some(b'\n') => break,
                    Some(b) => {
                        value.push(*b);
                        i += 1;
                    }
                }
            }
            let value = String::from_utf8(value).map_err(|_| GrubEnvError::Malformed { line })?;
            env.vars.push((name.to_string(), value));
            rest = &rest[i + 1..];
        }
        Ok(env)
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Sets `name` (kept in its place when it was set already).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), GrubEnvError> {
        check_name(name)?;
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    /// The whole block: [`SIZE`] bytes with every variable in the first [`ATOMIC_BYTES`].
    pub fn render(&self) -> Result<Vec<u8>, GrubEnvError> {
        let mut out = SIGNATURE.as_bytes().to_vec();
        for (name, value) in &self.vars {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            for b in value.bytes() {
                if b == b'\\' || b == b'\n' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\n');
        }
        if out.len() > ATOMIC_BYTES {
            return Err(GrubEnvError::TooLong(out.len()));
        }
        out.resize(SIZE, b'#');
        Ok(out)
    }
}

fn check_name(name: &str) -> Result<(), GrubEnvError> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(GrubEnvError::Name(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> GrubEnv {
        let mut env = GrubEnv::default();
        for (n, v) in vars {
            env.set(n, v).unwrap();
        }
        env
    }

    #[test]
    fn a_block_reads_back_what_was_written_and_keeps_its_size() {
        let written = env(&[("ORDER", "B A"), ("A_OK", "1"), ("B_LEFT", "tt"), ("ODD", "a\\b\nc")]);
        let bytes = written.render().unwrap();
        assert_eq!(bytes.len(), SIZE);
        assert!(bytes[ATOMIC_BYTES..].iter().all(|b| *b == b'#'), "the second sector is padding only");
        assert_eq!(GrubEnv::parse(&bytes).unwrap(), written);
        assert_eq!(GrubEnv::parse(&bytes).unwrap().get("ODD"), Some("a\\b\nc"));
        let mut changed = GrubEnv::parse(&bytes).unwrap();
        changed.set("A_OK", "0").unwrap();
        assert_eq!(changed.get("A_OK"), Some("0"));
        assert_eq!(changed.vars[1].0, "A_OK", "a variable keeps its place");
    }

    #[test]
    fn grub_editenv_and_oasis_read_each_others_blocks() {
        // grub-editenv (package grub-common, which the image builds need anyway) is the reference.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        let run = |args: &[&str]| {
            let out = std::process::Command::new("grub-editenv").arg(&path).args(args).output();
            let out = out.expect("grub-editenv (apt-get install grub-common)");
            assert!(out.status.success(), "grub-editenv {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run(&["create"]);
        run(&["set", "ORDER=B A", "B_LEFT=t"]);
        let theirs = GrubEnv::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(theirs, env(&[("ORDER", "B A"), ("B_LEFT", "t")]));
        let ours = env(&[("ORDER", "A B"), ("A_OK", "1"), ("B_OK", "0")]);
        std::fs::write(&path, ours.render().unwrap()).unwrap();
        assert_eq!(run(&["list"]), "ORDER=A B\nA_OK=1\nB_OK=0\n");
    }

    #[test]
    fn broken_blocks_and_names_are_refused() {
        let good = env(&[("A", "1")]).render().unwrap();
        assert_eq!(GrubEnv::parse(&good[..SIZE - 1]), Err(GrubEnvError::Size(SIZE - 1)));
        let mut unsigned = good.clone();
        unsigned[0] = b'X';
        assert_eq!(GrubEnv::parse(&unsigned), Err(GrubEnvError::NoSignature));
        let mut no_equals = good.clone();
        no_equals[SIGNATURE.len() + 1] = b' ';
        assert_eq!(GrubEnv::parse(&no_equals), Err(GrubEnvError::Malformed { line: 2 }));
        assert!(matches!(GrubEnv::default().set("1X", "v"), Err(GrubEnvError::Name(_))));
        assert!(matches!(GrubEnv::default().set("A B", "v"), Err(GrubEnvError::Name(_))));
        let long = env(&[("X", &"v".repeat(600))]);
        assert!(matches!(long.render(), Err(GrubEnvError::TooLong(_))));
    }
}

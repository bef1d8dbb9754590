//! Running a program, with its command line, exit status and the tail of its stderr kept in the
//! error.

use std::process::{Command, ExitStatus, Output};

/// How much of a failed program's output the error keeps (its end, where the reason is).
const TAIL_BYTES: usize = 2048;

/// Why a program did not run to success.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started (not installed, not executable).
    #[error("cannot run `{command}`; check that {program} is installed")]
    Start {
        /// The command line.
        command: String,
        /// The program.
        program: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
        /// The tail of its stderr (of its stdout when stderr was empty), trimmed.
        stderr: String,
    },
}

/// The command line of `cmd`, as the error shows it.
pub fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program()).chain(cmd.get_args()).map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

/// Runs `cmd` to its end, capturing its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output, CommandError> {
    cmd.output().map_err(|source| CommandError::Start {
        command: command_line(cmd),
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })
}

/// Runs `cmd` to its end; an exit status other than success is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, CommandError> {
    let out = output(cmd)?;
    if out.status.success() {
        return Ok(out);
    }
    let text = if out.stderr.iter().all(u8::is_ascii_whitespace) { &out.stdout } else { &out.stderr };
    Err(CommandError::Failed { command: command_line(cmd), status: out.status, stderr: tail(text) })
}

/// The last [`TAIL_BYTES`] of `text`, trimmed, cut at a character boundary.
fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let text = text.trim();
    let mut start = text.len().saturating_sub(TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = if start > 0 { "…" } else { "" };
    format!("{cut}{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_the_command_line_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo progress; echo 'bad superblock' >&2; exit 3"])).unwrap_err();
        let CommandError::Failed { command, status, stderr } = &err else { panic!("{err:?}") };
        assert_eq!(command, "sh -c echo progress; echo 'bad superblock' >&2; exit 3");
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr, "bad superblock");
        assert!(err.to_string().ends_with("failed (exit status: 3): bad superblock"), "{err}");
    }

    #[test]
    fn without_stderr_the_error_shows_stdout_and_only_its_end() {
        let err =
            run(Command::new("sh").args(["-c", "printf 'x%.0s' $(seq 5000); echo ' the end'; exit 1"])).unwrap_err();
        let CommandError::Failed { stderr, .. } = &err else { panic!("{err:?}") };
        assert!(stderr.starts_with('…') && stderr.ends_with("x the end"), "{stderr}");
        assert!(stderr.len() <= TAIL_BYTES + '…'.len_utf8());
    }

    #[test]
    fn success_gives_the_output_and_a_missing_program_says_so() {
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap().stdout, b"hi\n");
        assert_eq!(output(&mut Command::new("false")).unwrap().status.code(), Some(1));
        let err = run(&mut Command::new("/nonexistent/mke2fs")).unwrap_err();
        assert!(matches!(&err, CommandError::Start { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
        assert_eq!(err.to_string(), "cannot run `/nonexistent/mke2fs`; check that /nonexistent/mke2fs is installed");
    }
}

//! Real processes for the [`Supervisor`](super::Supervisor): started in a process group of their
//! own, output through the agent into a size-capped log, pid kept in a file.
//!
//! Output goes through pipes rather than straight into the log file so that the log can be
//! capped (a node's root is memory) and the last lines kept for the status message.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{Exit, Launch, Launcher, Process, STOP_GRACE};

/// A log grows to this size, then becomes `NAME.log.1` (replacing the one before) and a new one
/// begins.
pub const LOG_LIMIT: u64 = 4 * 1024 * 1024;
/// Output lines kept in memory for the status message.
const TAIL_LINES: usize = 20;
/// A line in the tail is cut to this many characters.
const TAIL_LINE_CHARS: usize = 240;
/// `PATH` for services; the spec's environment may replace it.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Starts real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spawner;

impl Launcher for Spawner {
    type Process = RunningProcess;

    async fn launch(&self, launch: &Launch) -> Result<RunningProcess, std::io::Error> {
        stop_stale(&launch.pid_file, &launch.program).await;
        let log = Arc::new(Mutex::new(Log::open(launch.log.clone())?));
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .env_clear()
            .env("PATH", DEFAULT_PATH)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&launch.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group: stopping it reaches everything it started, and a signal meant for
            // the agent does not reach it.
            .process_group(0);
        let mut child = command.spawn()?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let _ = std::fs::write(&launch.pid_file, format!("{pid}\n"));
        let copiers = [
            child.stdout.take().map(|out| tokio::spawn(copy(out, log.clone()))),
            child.stderr.take().map(|err| tokio::spawn(copy(err, log.clone()))),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(RunningProcess { child, pid, log, copiers, pid_file: launch.pid_file.clone() })
    }
}

/// A process [`Spawner`] started.
#[derive(Debug)]
pub struct RunningProcess {
    child: Child,
    pid: i32,
    log: Arc<Mutex<Log>>,
    copiers: Vec<JoinHandle<()>>,
    pid_file: PathBuf,
}

impl RunningProcess {
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Process for RunningProcess {
    async fn wait(&mut self) -> Exit {
        let status = self.child.wait().await;
        // Its output ends when everything holding the pipes is gone; something it started may
        // keep them open, so the tail is taken after a short wait at most.
        for copier in &mut self.copiers {
            let _ = tokio::time::timeout(Duration::from_secs(1), copier).await;
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let how = match status {
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for: {e}", e = oasis_proto::error_chain(&e)),
        };
        let last_lines = self.log.lock().unwrap_or_else(|e| e.into_inner()).tail.iter().cloned().collect();
        Exit { how, last_lines }
    }

    fn signal(&mut self, signal: Signal) {
        if self.pid > 0 {
            let _ = killpg(Pid::from_raw(self.pid), signal);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal).map(|s| s.as_str()).unwrap_or("unknown");
            format!("killed by signal {signal} ({name})")
        }
        (None, None) => format!("ended ({status})"),
    }
}

/// Stops a process an earlier agent (one that crashed and was restarted by `/init`) left
/// running for this service: the pid in the file, if that process still runs `program`.
async fn stop_stale(pid_file: &Path, program: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|p| p.trim().parse::<i32>().ok()) else { return };
    let _ = std::fs::remove_file(pid_file);
    let runs_program = |pid: i32| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        !argv0.is_empty() && Path::new(std::ffi::OsStr::from_bytes(argv0)) == program
    };
    if pid <= 0 || !runs_program(pid) {
        return;
    }
    tracing::info!(pid, program = %program.display(), "stopping the process an earlier agent started");
    // Its group, for what it started, and the process itself, in case it is not a group leader.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while runs_program(pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if runs_program(pid) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Copies one output stream, line by line, into the log.
async fn copy(stream: impl AsyncRead + Unpin, log: Arc<Mutex<Log>>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => log.lock().unwrap_or_else(|e| e.into_inner()).write(&line),
        }
    }
}

/// A service's log file and its last lines.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
    tail: VecDeque<String>,
}

impl Log {
    fn open(path: PathBuf) -> Result<Log, std::io::Error> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Log { path, file, size, tail: VecDeque::new() })
    }

    fn write(&mut self, line: &[u8]) {
        if self.size + line.len() as u64 > LOG_LIMIT {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let reopened = std::fs::rename(&self.path, &old)
                .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&self.path));
            match reopened {
                Ok(file) => {
                    self.file = file;
                    self.size = 0;
                }
                Err(e) => {
                    tracing::warn!("cannot rotate {}: {e}", self.path.display(), e = oasis_proto::error_chain(&e))
                }
            }
        }
        if self.file.write_all(line).is_ok() {
            self.size += line.len() as u64;
        }
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text.chars().take(TAIL_LINE_CHARS).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_at_their_limit_and_keep_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut log = Log::open(path.clone()).unwrap();
        let line = vec![b'x'; 1023].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        for _ in 0..(LOG_LIMIT / 1024 + 10) {
            log.write(&line);
        }
        log.write(b"last \xff line\n");
        assert_eq!(std::fs::metadata(dir.path().join("svc.log.1")).unwrap().len(), LOG_LIMIT);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 10 * 1024 + 12);
        assert_eq!(log.tail.len(), TAIL_LINES);
        assert_eq!(log.tail.back().unwrap(), "last \u{fffd} line");
        assert_eq!(log.tail.front().unwrap().len(), TAIL_LINE_CHARS);
    }

    #[test]
    fn exits_are_described_for_people() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exited with status 3");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9 (SIGKILL)");
    }
}

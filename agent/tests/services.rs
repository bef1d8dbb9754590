//! The supervisor with real processes: `/bin/sleep` and `/bin/sh`, fetched by a fetcher that
//! copies the real file (the HTTPS fetch itself is tested in `client.rs`), under a temp root.
//! Processes are killed from outside, restarted, replaced and removed, and the test looks at
//! `/proc` to see what really runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oasis_agent::client::ArtifactError;
use oasis_agent::services::{Access, Fetcher, Services, Spawner, Supervisor};
use oasis_proto::{Artifact, FileSpec, ServiceSpec, ServiceState, ServiceStatus};
use sha2::{Digest, Sha256};

/// Serves artifacts by copying the host's file with the same hash.
#[derive(Debug)]
struct CopyFetcher {
    sources: Vec<PathBuf>,
}

impl Fetcher for CopyFetcher {
    async fn fetch(&self, _access: &Access, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError> {
        let source = self.sources.iter().find(|s| sha256(s) == artifact.sha256).expect("a known artifact");
        std::fs::copy(source, dest).unwrap();
        std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(artifact.mode)).unwrap();
        Ok(())
    }
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn program(host_path: &str, name: &str) -> Artifact {
    let path = Path::new(host_path);
    Artifact {
        sha256: sha256(path),
        size: std::fs::metadata(path).unwrap().len(),
        path: format!("/var/lib/oasis/{name}/bin/{}", path.file_name().unwrap().to_string_lossy()),
        mode: 0o755,
    }
}

fn spec(name: &str, host_program: &str, args: &[&str]) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        generation: 1,
        artifacts: vec![program(host_program, name)],
        files: vec![FileSpec { path: format!("/var/lib/oasis/{name}/conf"), mode: 0o600, contents: "secret".into() }],
        data_dirs: vec![format!("/var/lib/oasis/{name}/data")],
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec![("GREETING".into(), "hello".into())],
        run: true,
    }
}

struct Rig {
    root: tempfile::TempDir,
    supervisor: Supervisor<CopyFetcher, Spawner>,
}

impl Rig {
    fn new() -> Rig {
        let root = tempfile::tempdir().unwrap();
        let fetcher = CopyFetcher { sources: vec!["/bin/sleep".into(), "/bin/sh".into()] };
        let supervisor = Supervisor::new(root.path().to_path_buf(), fetcher, Spawner);
        supervisor.set_access(Access { appliance: "10.99.0.1".parse().unwrap(), credential: "c".into() });
        Rig { root, supervisor }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn status(&self, name: &str) -> Option<ServiceStatus> {
        self.supervisor.status().into_iter().find(|s| s.name == name)
    }

    /// The pid in the service's pid file, once the process it names runs the service's program.
    fn pid(&self, name: &str, program: &Path) -> Option<i32> {
        let pid: i32 =
            std::fs::read_to_string(self.path(&format!("/var/lib/oasis/run/{name}.pid"))).ok()?.trim().parse().ok()?;
        (runs(pid).as_deref() == Some(program)).then_some(pid)
    }
}

/// The program a live (not zombie) process runs.
fn runs(pid: i32) -> Option<PathBuf> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    if state == "Z" {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    Some(PathBuf::from(String::from_utf8_lossy(argv0).into_owned()))
}

/// Waits for `what`, giving up (failing) after a minute: a bound on a hang, not a timing check.
async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_process_is_restarted_and_a_removed_one_stopped_and_cleaned_up() {
    let rig = Rig::new();
    let sleep = rig.path("/var/lib/oasis/nap/bin/sleep");
    rig.supervisor.apply(&[spec("nap", "/bin/sleep", &["1000"])]);
    let first = until("sleep runs", || rig.pid("nap", &sleep)).await;
    assert_eq!(rig.status("nap").unwrap().state, ServiceState::Running);
    assert_eq!(std::fs::read_to_string(rig.path("/var/lib/oasis/nap/conf")).unwrap(), "secret");
    let environ = std::fs::read(format!("/proc/{first}/environ")).unwrap();
    assert!(environ.split(|b| *b == 0).any(|kv| kv == b"GREETING=hello"));
    assert!(!environ.split(|b| *b == 0).any(|kv| kv.starts_with(b"CARGO")), "the agent's environment is not passed on");

    kill(first, nix::sys::signal::Signal::SIGKILL);
    let second = until("sleep restarted", || rig.pid("nap", &sleep).filter(|p| *p != first)).await;
    let status = rig.status("nap").unwrap();
    assert_eq!((status.state, status.restarts), (ServiceState::Running, 1));

    rig.supervisor.apply(&[]);
    assert!(rig.status("nap").is_none());
    until("sleep stopped", || runs(second).is_none().then_some(())).await;
    until("files removed", || (!rig.path("/var/lib/oasis/nap").exists()).then_some(())).await;
    assert!(rig.path("/var/lib/oasis/log/nap.log").exists(), "the log stays for whoever looks later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_is_reported_with_its_last_lines_and_logged() {
    let rig = Rig::new();
    let script = "echo starting with $GREETING; echo cannot bind 127.0.0.1:2379 >&2; exit 3";
    rig.supervisor.apply(&[spec("fails", "/bin/sh", &["-c", script])]);
    let message =
        until("exited", || rig.status("fails").filter(|s| s.state == ServiceState::Exited).and_then(|s| s.message))
            .await;
    assert!(message.starts_with("exited with status 3; restarting in 2 s; last output:\n"), "{message}");
    assert!(message.contains("starting with hello") && message.contains("cannot bind 127.0.0.1:2379"), "{message}");
    let log = std::fs::read_to_string(rig.path("/var/lib/oasis/log/fails.log")).unwrap();
    assert!(log.contains("starting with hello\n") && log.contains("cannot bind 127.0.0.1:2379\n"), "{log}");
    until("restarted", || rig.status("fails").filter(|s| s.restarts >= 1).map(|_| ())).await;
    rig.supervisor.apply(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_ignores_sigterm_is_killed_with_everything_it_started() {
    let rig = Rig::new();
    let sh = rig.path("/var/lib/oasis/stubborn/bin/sh");
    // The shell ignores SIGTERM and waits on a child sleep: both must go.
    rig.supervisor.apply(&[spec("stubborn", "/bin/sh", &["-c", "trap '' TERM; /bin/sleep 1000 & wait; wait"])]);
    let shell = until("shell runs", || rig.pid("stubborn", &sh)).await;
    let child = until("its sleep runs", || {
        std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).find(
            |pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|stat| stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(shell)
            },
        )
    })
    .await;
    // SIGTERM cannot end the shell: whatever ends it is the SIGKILL that follows.
    let status = std::fs::read_to_string(format!("/proc/{shell}/status")).unwrap();
    let ignored = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).unwrap().trim();
    assert_ne!(u64::from_str_radix(ignored, 16).unwrap() & (1 << (15 - 1)), 0, "the shell ignores SIGTERM");
    rig.supervisor.apply(&[]);
    until("shell gone", || runs(shell).is_none().then_some(())).await;
    until("its sleep gone", || runs(child).is_none().then_some(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_left_by_an_earlier_agent_is_stopped_before_a_new_one_starts() {
    let rig = Rig::new();
    let sleep = rig.path("/var/lib/oasis/nap/bin/sleep");
    // What an agent that crashed leaves behind: the program, its pid file, the process.
    std::fs::create_dir_all(sleep.parent().unwrap()).unwrap();
    std::fs::copy("/bin/sleep", &sleep).unwrap();
    std::fs::create_dir_all(rig.path("/var/lib/oasis/run")).unwrap();
    let mut left = std::process::Command::new(&sleep).arg("1000").spawn().unwrap();
    let left_pid = left.id() as i32;
    std::fs::write(rig.path("/var/lib/oasis/run/nap.pid"), format!("{left_pid}\n")).unwrap();

    rig.supervisor.apply(&[spec("nap", "/bin/sleep", &["1000"])]);
    let new = until("a new sleep runs", || rig.pid("nap", &sleep).filter(|p| *p != left_pid)).await;
    let status = left.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15), "stopped with SIGTERM");
    assert!(runs(new).is_some());
    rig.supervisor.apply(&[]);
    until("stopped", || runs(new).is_none().then_some(())).await;
}

//! The supervisor's logic against a fake fetcher and fake processes, on tokio's paused clock: a
//! pause of 30 s passes at once and exactly.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;

use oasis_proto::FileSpec;
use sha2::{Digest, Sha256};
use tokio::sync::watch as channel;

use super::*;

/// Serves artifacts from a map of contents by hash; fails the first `failures` fetches.
#[derive(Debug, Default)]
struct FakeFetcher {
    contents: Mutex<HashMap<String, Vec<u8>>>,
    fetched: Mutex<Vec<String>>,
    failures: Mutex<u32>,
    /// Fetches and signals, in order.
    events: Arc<Mutex<Vec<String>>>,
}

impl FakeFetcher {
    fn serve(&self, content: &[u8]) -> String {
        let sha = hex::encode(Sha256::digest(content));
        self.contents.lock().unwrap().insert(sha.clone(), content.to_vec());
        sha
    }
}

impl Fetcher for Arc<FakeFetcher> {
    async fn fetch(&self, access: &Access, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError> {
        assert_eq!(access.credential, "cred");
        self.fetched.lock().unwrap().push(artifact.path.clone());
        self.events.lock().unwrap().push(format!("fetch {}", artifact.path));
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return Err(ArtifactError::WrongHash { expected: artifact.sha256.clone(), found: "f00d".into() });
        }
        let content = self.contents.lock().unwrap().get(&artifact.sha256).cloned().expect("served");
        std::fs::write(dest, content).unwrap();
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(artifact.mode)).unwrap();
        Ok(())
    }
}

/// A process the test ends (or that ends on a signal, unless it ignores SIGTERM).
#[derive(Debug)]
struct FakeProcess {
    exit: channel::Sender<Option<Exit>>,
    waiting: channel::Receiver<Option<Exit>>,
    signals: Arc<Mutex<Vec<Signal>>>,
    ignores_sigterm: bool,
    events: Arc<Mutex<Vec<String>>>,
}

impl Process for FakeProcess {
    async fn wait(&mut self) -> Exit {
        self.waiting.wait_for(|e| e.is_some()).await.unwrap().clone().unwrap()
    }

    fn signal(&mut self, signal: Signal) {
        self.signals.lock().unwrap().push(signal);
        self.events.lock().unwrap().push(signal.as_str().to_string());
        if signal == Signal::SIGKILL || !self.ignores_sigterm {
            let how = format!("killed by signal {} ({})", signal as i32, signal.as_str());
            self.exit.send_replace(Some(Exit { how, last_lines: vec![] }));
        }
    }
}

#[derive(Debug)]
struct Launched {
    launch: Launch,
    at: Instant,
    exit: channel::Sender<Option<Exit>>,
    signals: Arc<Mutex<Vec<Signal>>>,
}

#[derive(Debug, Default)]
struct FakeLauncher {
    launched: Mutex<Vec<Launched>>,
    ignores_sigterm: Mutex<bool>,
    events: Arc<Mutex<Vec<String>>>,
}

impl Launcher for Arc<FakeLauncher> {
    type Process = FakeProcess;

    async fn launch(&self, launch: &Launch) -> Result<FakeProcess, std::io::Error> {
        let (exit, waiting) = channel::channel(None);
        let signals = Arc::new(Mutex::new(Vec::new()));
        self.launched.lock().unwrap().push(Launched {
            launch: launch.clone(),
            at: Instant::now(),
            exit: exit.clone(),
            signals: signals.clone(),
        });
        Ok(FakeProcess {
            exit,
            waiting,
            signals,
            ignores_sigterm: *self.ignores_sigterm.lock().unwrap(),
            events: self.events.clone(),
        })
    }
}

struct Rig {
    root: tempfile::TempDir,
    fetcher: Arc<FakeFetcher>,
    launcher: Arc<FakeLauncher>,
    supervisor: Supervisor<Arc<FakeFetcher>, Arc<FakeLauncher>>,
}

impl Rig {
    fn new() -> Rig {
        let root = tempfile::tempdir().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let fetcher = Arc::new(FakeFetcher { events: events.clone(), ..FakeFetcher::default() });
        let launcher = Arc::new(FakeLauncher { events, ..FakeLauncher::default() });
        let supervisor = Supervisor::new(root.path().to_path_buf(), fetcher.clone(), launcher.clone());
        supervisor.set_access(Access { appliance: Ipv4Addr::new(10, 99, 0, 1), credential: "cred".into() });
        Rig { root, fetcher, launcher, supervisor }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    /// A service with a program, a secret file and a data dir, at `generation`.
    fn spec(&self, name: &str, generation: u64) -> ServiceSpec {
        let program = format!("{name} program").into_bytes();
        ServiceSpec {
            name: name.into(),
            generation,
            artifacts: vec![Artifact {
                sha256: self.fetcher.serve(&program),
                size: program.len() as u64,
                path: format!("/var/lib/oasis/{name}/bin/{name}"),
                mode: 0o755,
            }],
            files: vec![FileSpec {
                path: format!("/var/lib/oasis/{name}/tls/key.pem"),
                mode: 0o600,
                contents: format!("key of generation {generation}"),
            }],
            data_dirs: vec![format!("/var/lib/oasis/{name}/data")],
            args: vec!["--name".into(), name.into()],
            env: vec![("ETCD_X".into(), "1".into())],
            run: true,
        }
    }

    fn status(&self, name: &str) -> ServiceStatus {
        self.supervisor.status().into_iter().find(|s| s.name == name).expect("listed")
    }

    fn launches(&self) -> usize {
        self.launcher.launched.lock().unwrap().len()
    }

    /// Ends the `index`th process as if it exited with status 1 after printing `lines`.
    fn end(&self, index: usize, lines: &[&str]) {
        let exit =
            Exit { how: "exited with status 1".into(), last_lines: lines.iter().map(|l| l.to_string()).collect() };
        self.launcher.launched.lock().unwrap()[index].exit.send_replace(Some(exit));
    }

    fn signals(&self, index: usize) -> Vec<Signal> {
        self.launcher.launched.lock().unwrap()[index].signals.lock().unwrap().clone()
    }
}

/// Lets the workers run (and the paused clock advance) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_service_is_fetched_written_and_started() {
    let rig = Rig::new();
    let spec = rig.spec("etcd", 1);
    rig.supervisor.apply(std::slice::from_ref(&spec));
    until("started", || rig.launches() == 1).await;
    until("running", || rig.status("etcd").state == ServiceState::Running).await;

    let program = rig.path("/var/lib/oasis/etcd/bin/etcd");
    assert_eq!(std::fs::read(&program).unwrap(), b"etcd program");
    let key = rig.path("/var/lib/oasis/etcd/tls/key.pem");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "key of generation 1");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o7777, 0o600);
    assert!(rig.path("/var/lib/oasis/etcd/data").is_dir());

    let launched = rig.launcher.launched.lock().unwrap()[0].launch.clone();
    assert_eq!(
        launched,
        Launch {
            service: "etcd".into(),
            program,
            args: spec.args.clone(),
            env: spec.env.clone(),
            dir: rig.path("/var/lib/oasis"),
            log: rig.path("/var/lib/oasis/log/etcd.log"),
            pid_file: rig.path("/var/lib/oasis/run/etcd.pid"),
        }
    );
    let status = rig.status("etcd");
    assert_eq!((status.generation, status.restarts, status.message), (1, 0, None));

    // The same list again changes nothing.
    rig.supervisor.apply(&[spec]);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(rig.launches(), 1);
    assert_eq!(rig.fetcher.fetched.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_artifact_already_in_place_is_not_fetched_again() {
    let rig = Rig::new();
    let spec = rig.spec("etcd", 1);
    let program = rig.path(&spec.artifacts[0].path);
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    std::fs::write(&program, b"etcd program").unwrap();
    rig.supervisor.apply(&[spec]);
    until("started", || rig.launches() == 1).await;
    assert!(rig.fetcher.fetched.lock().unwrap().is_empty());
    assert_eq!(std::fs::metadata(&program).unwrap().permissions().mode() & 0o7777, 0o755);
}

#[tokio::test(start_paused = true)]
async fn paths_outside_the_state_dir_are_refused_before_anything_is_written() {
    let rig = Rig::new();
    let mut outside = rig.spec("etcd", 1);
    outside.files.push(FileSpec { path: "/etc/passwd".into(), mode: 0o644, contents: "root::0:0::/:/bin/sh".into() });
    let mut escaping = rig.spec("k3s", 1);
    escaping.data_dirs = vec!["/var/lib/oasis/../../etc".into()];
    let mut badly_named = rig.spec("x", 1);
    badly_named.name = "../x".into();
    rig.supervisor.apply(&[outside, escaping, badly_named]);
    until("refused", || rig.supervisor.status().iter().all(|s| s.state == ServiceState::Failed)).await;
    tokio::time::sleep(Duration::from_secs(120)).await;

    let messages: Vec<String> = rig.supervisor.status().into_iter().map(|s| s.message.unwrap()).collect();
    assert!(messages[0].contains("\"/etc/passwd\"") && messages[0].contains("nothing of this service was written"));
    assert!(messages[1].contains("\"/var/lib/oasis/../../etc\""), "{}", messages[1]);
    assert!(messages[2].contains("\"../x\" is not a usable service name"), "{}", messages[2]);
    assert!(rig.fetcher.fetched.lock().unwrap().is_empty());
    assert_eq!(rig.launches(), 0);
    assert_eq!(std::fs::read_dir(rig.root.path()).unwrap().count(), 0, "nothing at all was written");
}

#[tokio::test(start_paused = true)]
async fn an_exited_process_is_restarted_after_growing_pauses() {
    let rig = Rig::new();
    rig.supervisor.apply(&[rig.spec("etcd", 1)]);
    until("started", || rig.launches() == 1).await;
    let expected = [2, 4, 8, 16, 30, 30];
    for (i, secs) in expected.iter().enumerate() {
        let ended = Instant::now();
        rig.end(i, &["line 1", "line 2", "line 3", "line 4", "line 5", "member has already been bootstrapped"]);
        until("exited", || rig.status("etcd").state == ServiceState::Exited).await;
        let status = rig.status("etcd");
        let message = status.message.unwrap();
        assert!(message.starts_with(&format!("exited with status 1; restarting in {secs} s; last output:\n")));
        assert!(message.ends_with("line 2\nline 3\nline 4\nline 5\nmember has already been bootstrapped"), "{message}");
        assert!(!message.contains("line 1"), "only the last lines: {message}");
        until("restarted", || rig.launches() == i + 2).await;
        let paused = rig.launcher.launched.lock().unwrap()[i + 1].at - ended;
        assert_eq!(paused.as_secs(), *secs, "{paused:?}");
        until("running", || rig.status("etcd").state == ServiceState::Running).await;
        assert_eq!(rig.status("etcd").restarts, i as u32 + 1);
    }
    assert_eq!(rig.fetcher.fetched.lock().unwrap().len(), 1, "a restart fetches nothing");
}

#[tokio::test(start_paused = true)]
async fn a_long_run_resets_the_pause() {
    let rig = Rig::new();
    rig.supervisor.apply(&[rig.spec("etcd", 1)]);
    until("started", || rig.launches() == 1).await;
    for i in 0..3 {
        rig.end(i, &[]);
        until("restarted", || rig.launches() == i + 2).await;
    }
    tokio::time::sleep(RESTART_RESET_AFTER).await;
    rig.end(3, &[]);
    until("exited", || rig.status("etcd").state == ServiceState::Exited).await;
    assert!(rig.status("etcd").message.unwrap().contains("restarting in 2 s"));
}

#[tokio::test(start_paused = true)]
async fn a_new_generation_stops_the_process_rewrites_files_and_starts_again() {
    let rig = Rig::new();
    let first = rig.spec("etcd", 1);
    rig.supervisor.apply(std::slice::from_ref(&first));
    until("started", || rig.launches() == 1).await;
    rig.end(0, &[]);
    until("restarted", || rig.launches() == 2).await;
    assert_eq!(rig.status("etcd").restarts, 1);

    let mut second = rig.spec("etcd", 2);
    second.files.push(FileSpec { path: "/var/lib/oasis/etcd/new.conf".into(), mode: 0o644, contents: "x".into() });
    second.files.remove(0);
    rig.supervisor.apply(std::slice::from_ref(&second));
    until("started again", || rig.launches() == 3).await;
    assert_eq!(rig.signals(1), [Signal::SIGTERM]);
    until("running", || rig.status("etcd").state == ServiceState::Running).await;
    let status = rig.status("etcd");
    assert_eq!((status.generation, status.restarts), (2, 0));
    assert!(!rig.path("/var/lib/oasis/etcd/tls/key.pem").exists(), "a file the new generation dropped goes");
    assert!(!rig.path("/var/lib/oasis/etcd/tls").exists());
    assert_eq!(std::fs::read_to_string(rig.path("/var/lib/oasis/etcd/new.conf")).unwrap(), "x");
    assert_eq!(rig.fetcher.fetched.lock().unwrap().len(), 1, "the unchanged program is not fetched again");
}

#[tokio::test(start_paused = true)]
async fn a_new_program_is_fetched_while_the_old_one_still_runs() {
    let rig = Rig::new();
    rig.supervisor.apply(&[rig.spec("etcd", 1)]);
    until("started", || rig.launches() == 1).await;
    let mut second = rig.spec("etcd", 2);
    let program = b"etcd program, version 2";
    second.artifacts[0].sha256 = rig.fetcher.serve(program);
    second.artifacts[0].size = program.len() as u64;
    rig.supervisor.apply(&[second]);
    until("started again", || rig.launches() == 2).await;
    let events = rig.fetcher.events.lock().unwrap().clone();
    let path = "/var/lib/oasis/etcd/bin/etcd";
    assert_eq!(events, [format!("fetch {path}"), format!("fetch {path}"), "SIGTERM".to_string()]);
    assert_eq!(std::fs::read(rig.path(path)).unwrap(), program);
}

#[tokio::test(start_paused = true)]
async fn an_unlisted_service_is_stopped_and_removed_but_shared_paths_stay() {
    let rig = Rig::new();
    *rig.launcher.ignores_sigterm.lock().unwrap() = true;
    let etcd = rig.spec("etcd", 1);
    let mut k3s = rig.spec("k3s", 1);
    k3s.artifacts.push(etcd.artifacts[0].clone());
    rig.supervisor.apply(&[etcd, k3s.clone()]);
    until("both started", || rig.launches() == 2).await;
    until("both running", || rig.supervisor.status().iter().all(|s| s.state == ServiceState::Running)).await;

    let etcd_index = rig.launcher.launched.lock().unwrap().iter().position(|l| l.launch.service == "etcd").unwrap();
    let asked = Instant::now();
    rig.supervisor.apply(std::slice::from_ref(&k3s));
    assert_eq!(rig.supervisor.status().len(), 1, "only listed services are reported");
    until("killed", || rig.signals(etcd_index).len() == 2).await;
    assert_eq!(rig.signals(etcd_index), [Signal::SIGTERM, Signal::SIGKILL]);
    assert_eq!((Instant::now() - asked).as_secs(), STOP_GRACE.as_secs());
    until("removed", || !rig.path("/var/lib/oasis/etcd/data").exists()).await;
    assert!(!rig.path("/var/lib/oasis/etcd/tls").exists());
    assert!(rig.path("/var/lib/oasis/etcd/bin/etcd").exists(), "k3s lists it too");
    assert!(rig.path("/var/lib/oasis/k3s/data").exists());
    assert_eq!(rig.launches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_service_listed_again_while_it_is_being_removed_waits_for_the_removal() {
    let rig = Rig::new();
    *rig.launcher.ignores_sigterm.lock().unwrap() = true;
    let etcd = rig.spec("etcd", 1);
    rig.supervisor.apply(std::slice::from_ref(&etcd));
    until("started", || rig.launches() == 1).await;
    rig.supervisor.apply(&[]);
    rig.supervisor.apply(std::slice::from_ref(&etcd));
    until("started again", || rig.launches() == 2).await;
    assert_eq!(rig.signals(0), [Signal::SIGTERM, Signal::SIGKILL]);
    until("running", || rig.status("etcd").state == ServiceState::Running).await;
    assert!(rig.path("/var/lib/oasis/etcd/tls/key.pem").exists(), "the removal did not take the new files");
    assert_eq!(rig.fetcher.fetched.lock().unwrap().len(), 2, "the removed program was fetched again");
}

#[tokio::test(start_paused = true)]
async fn a_failed_fetch_is_reported_and_retried() {
    let rig = Rig::new();
    *rig.fetcher.failures.lock().unwrap() = 2;
    let spec = rig.spec("etcd", 1);
    rig.supervisor.apply(std::slice::from_ref(&spec));
    until("failed", || rig.status("etcd").state == ServiceState::Failed).await;
    let message = rig.status("etcd").message.unwrap();
    assert!(message.starts_with("fetching /var/lib/oasis/etcd/bin/etcd: "), "{message}");
    assert!(message.contains(&spec.artifacts[0].sha256) && message.contains("f00d"), "{message}");
    until("running", || rig.status("etcd").state == ServiceState::Running).await;
    assert_eq!(rig.fetcher.fetched.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn without_the_link_fetching_waits_for_it() {
    let root = tempfile::tempdir().unwrap();
    let (fetcher, launcher) = (Arc::new(FakeFetcher::default()), Arc::new(FakeLauncher::default()));
    let supervisor = Supervisor::new(root.path().to_path_buf(), fetcher.clone(), launcher.clone());
    let program = b"etcd program";
    let spec = ServiceSpec {
        name: "etcd".into(),
        generation: 1,
        artifacts: vec![Artifact {
            sha256: fetcher.serve(program),
            size: program.len() as u64,
            path: "/var/lib/oasis/etcd".into(),
            mode: 0o755,
        }],
        files: vec![],
        data_dirs: vec![],
        args: vec![],
        env: vec![],
        run: true,
    };
    supervisor.apply(&[spec]);
    until("failed", || supervisor.status()[0].state == ServiceState::Failed).await;
    assert!(supervisor.status()[0].message.as_deref().unwrap().contains("waiting for the management link"));
    supervisor.set_access(Access { appliance: Ipv4Addr::new(10, 99, 0, 1), credential: "cred".into() });
    until("running", || supervisor.status()[0].state == ServiceState::Running).await;
    assert!(!supervisor.status()[0].volatile_data, "no data dirs, no data to lose");
}

#[tokio::test(start_paused = true)]
async fn a_service_not_to_run_is_only_prepared() {
    let rig = Rig::new();
    let mut spec = rig.spec("etcd", 1);
    spec.run = false;
    rig.supervisor.apply(&[spec]);
    until("prepared", || rig.status("etcd").state == ServiceState::Prepared).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(rig.launches(), 0);
    assert!(rig.path("/var/lib/oasis/etcd/tls/key.pem").exists());
    rig.supervisor.apply(&[rig.spec("etcd", 2)]);
    until("started", || rig.launches() == 1).await;
}

#[test]
fn access_never_shows_the_credential() {
    let access = Access { appliance: Ipv4Addr::new(10, 99, 0, 1), credential: "secret-credential".into() };
    assert!(!format!("{access:?}").contains("secret"));
}

#[tokio::test(start_paused = true)]
async fn halting_stops_every_process_waits_for_its_exit_and_keeps_the_files() {
    let rig = Rig::new();
    *rig.launcher.ignores_sigterm.lock().unwrap() = true;
    rig.supervisor.apply(&[rig.spec("etcd", 1), rig.spec("k3s", 1)]);
    until("both started", || rig.launches() == 2).await;
    rig.supervisor.halt().await;
    for index in 0..2 {
        assert_eq!(rig.signals(index), [Signal::SIGTERM, Signal::SIGKILL], "halt returned only after the exit");
    }
    assert!(rig.supervisor.status().is_empty());
    assert!(rig.path("/var/lib/oasis/etcd/data").is_dir(), "data stays for the next boot");
    assert!(rig.path("/var/lib/oasis/etcd/tls/key.pem").exists());
    // A reboot the kernel refused: the next apply starts them again, from the files in place.
    rig.supervisor.apply(&[rig.spec("etcd", 1)]);
    until("started again", || rig.launches() == 3).await;
    assert_eq!(rig.fetcher.fetched.lock().unwrap().len(), 2, "nothing fetched again");
}

//! The services the appliance asks a node to run (etcd, k3s): fetched, written, started, kept
//! running, stopped and removed by a [`Supervisor`].
//!
//! The list in each desired state is complete. A service is fetched (its artifacts, by content
//! hash, unless a file with that hash is already in place), its files written and its data
//! directories created; then, if its spec says `run`, the first artifact is started with the
//! spec's arguments and environment, its output going to `/var/lib/oasis/log/NAME.log`. When it
//! exits it is started again after a pause ([`RESTART_FIRST_DELAY`], doubling to
//! [`RESTART_MAX_DELAY`]); when its generation changes its new artifacts are fetched, then it is
//! stopped, its files rewritten and it is started again; when it is no longer listed it is stopped (SIGTERM, SIGKILL after
//! [`STOP_GRACE`]) and its artifacts, files and data directories are removed. Every path must
//! pass [`is_node_state_path`]: a spec naming any other is refused whole, before anything is
//! written.
//!
//! Each service has a worker task of its own, so a slow download or a process that will not stop
//! holds up no other service and no heartbeat. The outside world is behind [`Fetcher`] (where
//! artifacts come from) and [`Launcher`] (processes); the real ones are [`ApiClient`] and
//! [`Spawner`]. Every path is under a root passed in (`/` on a node), so tests use a temp dir.

mod files;
mod process;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use nix::sys::signal::Signal;
use oasis_proto::{is_node_state_path, Artifact, ServiceSpec, ServiceState, ServiceStatus, NODE_STATE_DIR};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{ApiClient, ArtifactError, Endpoint};
pub use process::{RunningProcess, Spawner};

/// A process that exited is started again after this pause, doubling up to [`RESTART_MAX_DELAY`].
pub const RESTART_FIRST_DELAY: Duration = Duration::from_secs(2);
pub const RESTART_MAX_DELAY: Duration = Duration::from_secs(30);
/// A process that ran at least this long before exiting is restarted after the first pause again.
pub const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Where each service's output goes, as `NAME.log`.
pub const LOG_DIR: &str = "/var/lib/oasis/log";
/// Where the pid of each running service is kept, as `NAME.pid`, so that an agent restarted by
/// `/init` can stop what its predecessor started.
pub const RUN_DIR: &str = "/var/lib/oasis/run";
/// How many of a process's last output lines its status message carries.
pub const MESSAGE_LINES: usize = 5;

/// How the agent reaches the appliance for artifacts: its overlay address and the machine's
/// credential, both known only once the machine is accepted (and renewed on re-registration).
#[derive(Clone, PartialEq, Eq)]
pub struct Access {
    pub appliance: Ipv4Addr,
    pub credential: String,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("appliance", &self.appliance).finish_non_exhaustive()
    }
}

/// Where artifacts come from.
pub trait Fetcher: Send + Sync + 'static {
    /// Puts `artifact` at `dest` (whose directory exists), verified, with its mode.
    fn fetch(
        &self,
        access: &Access,
        artifact: &Artifact,
        dest: &Path,
    ) -> impl Future<Output = Result<(), ArtifactError>> + Send;
}

impl Fetcher for ApiClient {
    async fn fetch(&self, access: &Access, artifact: &Artifact, dest: &Path) -> Result<(), ArtifactError> {
        self.artifact(&Endpoint::overlay(access.appliance), &access.credential, artifact, dest).await
    }
}

/// What to start for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub service: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The working directory: the node state directory.
    pub dir: PathBuf,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Where the pid is kept while it runs.
    pub pid_file: PathBuf,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// `exited with status 1`, `killed by signal 9`.
    pub how: String,
    /// Its last output lines, oldest first.
    pub last_lines: Vec<String>,
}

/// Starts processes.
pub trait Launcher: Send + Sync + 'static {
    type Process: Process;
    fn launch(&self, launch: &Launch) -> impl Future<Output = Result<Self::Process, std::io::Error>> + Send;
}

/// A process a [`Launcher`] started.
pub trait Process: Send + Sync + 'static {
    /// Waits until it exits. Cancel-safe: waiting again after a cancelled wait is fine.
    fn wait(&mut self) -> impl Future<Output = Exit> + Send;
    /// Sends `signal` to the process and everything it started (its process group).
    fn signal(&mut self, signal: Signal);
}

/// Why a service cannot be prepared or started; its status message.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "the appliance asked for {path:?}, which is not a path under {NODE_STATE_DIR}; nothing of this \
         service was written. The appliance and this agent may be different versions: boot this \
         machine again from the appliance"
    )]
    OutsideStateDir { path: String },
    #[error(
        "{name:?} is not a usable service name (letters, digits, '.', '_' and '-', not starting \
         with '.'); the appliance and this agent may be different versions"
    )]
    BadName { name: String },
    #[error("the spec says run, but lists no artifact to run; the appliance and this agent may be different versions")]
    NoProgram,
    #[error("not linked to the appliance yet: waiting for the management link to fetch artifacts")]
    NotLinked,
    #[error("fetching {path}")]
    Fetch { path: String, source: ArtifactError },
    #[error("cannot write {}; check that the node's state directory is writable", .path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot start {}", .program.display())]
    Launch { program: PathBuf, source: std::io::Error },
}

/// The services as the session drives them.
pub trait Services: Send + Sync {
    /// How artifacts are fetched from now on.
    fn set_access(&self, access: Access);
    /// Makes the set of services match `specs` (complete: unlisted ones are stopped and removed).
    /// Returns at once; the work goes on in the background.
    fn apply(&self, specs: &[ServiceSpec]);
    /// The status of every listed service, in list order.
    fn status(&self) -> Vec<ServiceStatus>;
    /// Stops every service (the same stop as for a removed one: SIGTERM, SIGKILL after
    /// [`STOP_GRACE`]) and returns once each has exited, keeping their files and data: what the
    /// machine does before it reboots. A later [`apply`](Self::apply) starts them afresh.
    fn halt(&self) -> impl Future<Output = ()> + Send;
}

/// The real [`Services`]: one worker task per service. See the module comment.
#[derive(Debug)]
pub struct Supervisor<F, L> {
    shared: Arc<Shared<F, L>>,
    state: Mutex<Workers>,
}

#[derive(Debug)]
struct Shared<F, L> {
    root: PathBuf,
    fetcher: F,
    launcher: L,
    access: RwLock<Option<Access>>,
}

#[derive(Debug, Default)]
struct Workers {
    /// Listed services, by name.
    running: HashMap<String, Worker>,
    /// The names as last listed.
    order: Vec<String>,
    /// Workers stopping and removing a service no longer listed; a service listed again waits
    /// for its old worker to finish, so that cleanup never removes the new one's files.
    stopping: HashMap<String, JoinHandle<()>>,
}

#[derive(Debug)]
struct Worker {
    wanted: watch::Sender<Wanted>,
    status: Arc<Mutex<ServiceStatus>>,
    task: JoinHandle<()>,
}

/// What a worker is told to do.
#[derive(Clone, PartialEq, Eq)]
enum Wanted {
    Run(ServiceSpec),
    /// Stop and remove everything, except these paths, which another service still lists.
    Remove {
        keep: Arc<BTreeSet<String>>,
    },
    /// Stop the process and end, keeping every file and directory (the machine reboots).
    Halt,
}

/// Without the files' contents: they may be secrets (TLS keys).
impl std::fmt::Debug for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Run(spec) => write!(f, "Run({} generation {})", spec.name, spec.generation),
            Wanted::Remove { keep } => f.debug_struct("Remove").field("keep", keep).finish(),
            Wanted::Halt => f.write_str("Halt"),
        }
    }
}

impl<F: Fetcher, L: Launcher> Supervisor<F, L> {
    /// A supervisor writing under `root` (`/` on a node).
    pub fn new(root: PathBuf, fetcher: F, launcher: L) -> Self {
        Supervisor {
            shared: Arc::new(Shared { root, fetcher, launcher, access: RwLock::new(None) }),
            state: Mutex::new(Workers::default()),
        }
    }
}

impl<F: Fetcher, L: Launcher> Services for Supervisor<F, L> {
    fn set_access(&self, access: Access) {
        *self.shared.access.write().unwrap_or_else(|e| e.into_inner()) = Some(access);
    }

    fn apply(&self, specs: &[ServiceSpec]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut listed: Vec<&ServiceSpec> = Vec::new();
        for spec in specs {
            if listed.iter().any(|s| s.name == spec.name) {
                tracing::warn!(service = %spec.name, "the desired state lists this service twice; the first is used");
            } else {
                listed.push(spec);
            }
        }
        let keep: Arc<BTreeSet<String>> = Arc::new(listed.iter().flat_map(|s| owned_paths(s)).collect());
        state.stopping.retain(|_, task| !task.is_finished());
        let gone: Vec<String> =
            state.running.keys().filter(|name| !listed.iter().any(|s| &s.name == *name)).cloned().collect();
        for name in gone {
            let worker = state.running.remove(&name).expect("listed above");
            tracing::info!(service = %name, "no longer wanted: stopping it and removing its files");
            worker.wanted.send_replace(Wanted::Remove { keep: keep.clone() });
            state.stopping.insert(name, worker.task);
        }
        for spec in &listed {
            if let Some(worker) = state.running.get(&spec.name) {
                worker.wanted.send_if_modified(|wanted| {
                    let new = Wanted::Run((*spec).clone());
                    let changed = *wanted != new;
                    *wanted = new;
                    changed
                });
                continue;
            }
            let previous = state.stopping.remove(&spec.name);
            let status = Arc::new(Mutex::new(ServiceStatus {
                name: spec.name.clone(),
                generation: spec.generation,
                state: ServiceState::Fetching,
                restarts: 0,
                message: None,
                // Where the agent keeps everything: on a netboot root, memory. The appliance
                // needs this before the first data directory exists (a member that rebooted has
                // lost its data whether or not it runs yet).
                volatile_data: files::is_volatile(&self.shared.root),
            }));
            let (wanted, receiver) = watch::channel(Wanted::Run((*spec).clone()));
            let run = ServiceRun {
                name: spec.name.clone(),
                shared: self.shared.clone(),
                status: status.clone(),
                wanted: receiver,
                process: None,
                started: Instant::now(),
                prepared: None,
                owned_files: BTreeSet::new(),
                owned_dirs: BTreeSet::new(),
                launches: 0,
            };
            let task = tokio::spawn(run.run(previous));
            state.running.insert(spec.name.clone(), Worker { wanted, status, task });
        }
        state.order = listed.iter().map(|s| s.name.clone()).collect();
    }

    fn status(&self) -> Vec<ServiceStatus> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .order
            .iter()
            .filter_map(|name| state.running.get(name))
            .map(|w| w.status.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect()
    }

    async fn halt(&self) {
        let tasks: Vec<(String, JoinHandle<()>)> = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let running = std::mem::take(&mut state.running);
            state.order.clear();
            let halting = running.into_iter().map(|(name, worker)| {
                worker.wanted.send_replace(Wanted::Halt);
                (name, worker.task)
            });
            halting.chain(state.stopping.drain()).collect()
        };
        for (name, task) in tasks {
            if let Err(e) = task.await {
                tracing::warn!(service = %name, "its worker ended abnormally while stopping: {e}");
            }
        }
    }
}

/// Every path a spec owns, artifacts and files and data dirs, as the appliance wrote them.
fn owned_paths(spec: &ServiceSpec) -> impl Iterator<Item = String> + '_ {
    spec.artifacts
        .iter()
        .map(|a| a.path.clone())
        .chain(spec.files.iter().map(|f| f.path.clone()))
        .chain(spec.data_dirs.iter().cloned())
}

/// Checks a spec before anything of it is touched.
fn validate(spec: &ServiceSpec) -> Result<(), ServiceError> {
    let name_ok = !spec.name.is_empty()
        && !spec.name.starts_with('.')
        && spec.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(ServiceError::BadName { name: spec.name.clone() });
    }
    if let Some(path) = owned_paths(spec).find(|p| !is_node_state_path(p)) {
        return Err(ServiceError::OutsideStateDir { path });
    }
    if spec.run && spec.artifacts.is_empty() {
        return Err(ServiceError::NoProgram);
    }
    Ok(())
}

/// One service's life, in its own task.
struct ServiceRun<F, L: Launcher> {
    name: String,
    shared: Arc<Shared<F, L>>,
    status: Arc<Mutex<ServiceStatus>>,
    wanted: watch::Receiver<Wanted>,
    process: Option<L::Process>,
    /// When the process was started.
    started: Instant,
    /// The spec whose artifacts and files are all in place.
    prepared: Option<ServiceSpec>,
    /// Artifacts and files this worker may have written, and data directories it may have
    /// made: what goes when the service is removed.
    owned_files: BTreeSet<String>,
    owned_dirs: BTreeSet<String>,
    /// Starts of the process in this generation.
    launches: u32,
}

impl<F: Fetcher, L: Launcher> ServiceRun<F, L> {
    async fn run(mut self, previous: Option<JoinHandle<()>>) {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let mut delay = RESTART_FIRST_DELAY;
        loop {
            let wanted = self.wanted.borrow_and_update().clone();
            let spec = match wanted {
                Wanted::Remove { keep } => {
                    self.stop().await;
                    self.remove(&keep);
                    return;
                }
                Wanted::Halt => {
                    self.stop().await;
                    tracing::info!(service = %self.name, "stopped for a reboot");
                    return;
                }
                Wanted::Run(spec) => spec,
            };
            if self.prepared.as_ref() != Some(&spec) {
                self.launches = 0;
                delay = RESTART_FIRST_DELAY;
                self.set(spec.generation, ServiceState::Fetching, None);
                if let Err(error) = self.prepare(&spec).await {
                    // What runs is not what is wanted.
                    self.stop().await;
                    let text = oasis_proto::error_chain(&error);
                    tracing::warn!(service = %self.name, generation = spec.generation, "cannot prepare: {text}");
                    self.set(spec.generation, ServiceState::Failed, Some(text));
                    // A refused spec fails the same way until the appliance changes it.
                    let retry = !matches!(
                        error,
                        ServiceError::OutsideStateDir { .. } | ServiceError::BadName { .. } | ServiceError::NoProgram
                    );
                    if retry {
                        self.pause(&mut delay).await;
                    } else {
                        self.until_changed().await;
                    }
                    if self.closed() {
                        return self.stop().await;
                    }
                    continue;
                }
                self.prepared = Some(spec.clone());
                delay = RESTART_FIRST_DELAY;
            }
            if !spec.run {
                self.set(
                    spec.generation,
                    ServiceState::Prepared,
                    Some("prepared; not started: the appliance says not to run it yet".into()),
                );
                self.until_changed().await;
                if self.closed() {
                    return;
                }
                continue;
            }
            if self.process.is_none() {
                match self.launch(&spec).await {
                    Ok(process) => {
                        tracing::info!(service = %self.name, generation = spec.generation, "started");
                        self.process = Some(process);
                        self.started = Instant::now();
                        self.launches += 1;
                        self.set(spec.generation, ServiceState::Running, None);
                    }
                    Err(error) => {
                        let text = oasis_proto::error_chain(&error);
                        tracing::warn!(service = %self.name, "{text}");
                        self.set(spec.generation, ServiceState::Failed, Some(text));
                        self.pause(&mut delay).await;
                        if self.closed() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let process = self.process.as_mut().expect("started above");
            tokio::select! {
                exit = process.wait() => {
                    self.process = None;
                    if self.started.elapsed() >= RESTART_RESET_AFTER {
                        delay = RESTART_FIRST_DELAY;
                    }
                    let mut message = format!("{}; restarting in {} s", exit.how, delay.as_secs());
                    let lines = &exit.last_lines[exit.last_lines.len().saturating_sub(MESSAGE_LINES)..];
                    if !lines.is_empty() {
                        message.push_str("; last output:\n");
                        message.push_str(&lines.join("\n"));
                    }
                    tracing::warn!(service = %self.name, "{}; restarting in {} s", exit.how, delay.as_secs());
                    self.set(spec.generation, ServiceState::Exited, Some(message));
                    self.pause(&mut delay).await;
                    if self.closed() {
                        return;
                    }
                }
                changed = self.wanted.changed() => {
                    if changed.is_err() {
                        return self.stop().await;
                    }
                }
            }
        }
    }

    fn set(&self, generation: u64, state: ServiceState, message: Option<String>) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.generation = generation;
        status.state = state;
        status.message = message;
        status.restarts = self.launches.saturating_sub(1);
    }

    /// Whether the supervisor is gone (the agent is shutting down).
    fn closed(&self) -> bool {
        self.wanted.has_changed().is_err()
    }

    /// Waits `delay` (then doubles it, up to the maximum) or until the wanted state changes.
    async fn pause(&mut self, delay: &mut Duration) {
        tokio::select! {
            () = tokio::time::sleep(*delay) => {}
            _ = self.wanted.changed() => {}
        }
        *delay = (*delay * 2).min(RESTART_MAX_DELAY);
    }

    async fn until_changed(&mut self) {
        let _ = self.wanted.changed().await;
    }

    /// Stops the process, if one runs: SIGTERM, and SIGKILL after [`STOP_GRACE`].
    async fn stop(&mut self) {
        let Some(mut process) = self.process.take() else { return };
        tracing::info!(service = %self.name, "stopping");
        process.signal(Signal::SIGTERM);
        let exit = match tokio::time::timeout(STOP_GRACE, process.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::warn!(service = %self.name, "still running {} s after SIGTERM: killing it", STOP_GRACE.as_secs());
                process.signal(Signal::SIGKILL);
                process.wait().await
            }
        };
        tracing::info!(service = %self.name, "stopped: {}", exit.how);
    }

    fn path(&self, path: &str) -> PathBuf {
        self.shared.root.join(path.trim_start_matches('/'))
    }

    /// Fetches the artifacts while the old generation, if any, still runs (no downtime for a
    /// download; each lands by rename, so a running program is never written into); then stops
    /// it, removes what the old generation had and this one does not, writes the files and
    /// creates the data directories. Data directories are never removed here: only when the
    /// service goes.
    async fn prepare(&mut self, spec: &ServiceSpec) -> Result<(), ServiceError> {
        validate(spec)?;
        self.prepared = None;
        let files_now: BTreeSet<String> =
            spec.artifacts.iter().map(|a| a.path.clone()).chain(spec.files.iter().map(|f| f.path.clone())).collect();
        self.owned_files.extend(files_now.iter().cloned());
        self.owned_dirs.extend(spec.data_dirs.iter().cloned());
        for artifact in &spec.artifacts {
            let dest = self.path(&artifact.path);
            files::create_parent(&dest)?;
            if files::holds(&dest, &artifact.sha256, artifact.size).await {
                files::set_mode(&dest, artifact.mode)?;
                continue;
            }
            let access = self.shared.access.read().unwrap_or_else(|e| e.into_inner()).clone();
            let access = access.ok_or(ServiceError::NotLinked)?;
            tracing::info!(service = %self.name, path = %artifact.path, sha256 = %artifact.sha256, "fetching");
            self.shared
                .fetcher
                .fetch(&access, artifact, &dest)
                .await
                .map_err(|source| ServiceError::Fetch { path: artifact.path.clone(), source })?;
        }
        self.stop().await;
        for path in self.owned_files.iter().filter(|p| !files_now.contains(*p) && !spec.data_dirs.contains(*p)) {
            files::remove(&self.shared.root, path);
        }
        self.owned_files = files_now;
        for file in &spec.files {
            // The contents may be secrets (TLS keys): only the path is ever logged.
            files::write(&self.path(&file.path), file.contents.as_bytes(), file.mode)?;
        }
        let mut volatile = files::is_volatile(&self.shared.root);
        for dir in &spec.data_dirs {
            let path = self.path(dir);
            files::create_dir(&path)?;
            volatile |= files::is_volatile(&path);
        }
        self.status.lock().unwrap_or_else(|e| e.into_inner()).volatile_data = volatile;
        if volatile && !spec.data_dirs.is_empty() {
            tracing::warn!(service = %self.name, "its data is on volatile memory and is lost when the machine powers off");
        }
        Ok(())
    }

    async fn launch(&self, spec: &ServiceSpec) -> Result<L::Process, ServiceError> {
        let program = self.path(&spec.artifacts[0].path);
        let launch = Launch {
            service: self.name.clone(),
            program: program.clone(),
            args: spec.args.clone(),
            env: spec.env.clone(),
            dir: self.path(NODE_STATE_DIR),
            log: self.path(LOG_DIR).join(format!("{}.log", self.name)),
            pid_file: self.path(RUN_DIR).join(format!("{}.pid", self.name)),
        };
        for dir in [&launch.dir, &self.path(LOG_DIR), &self.path(RUN_DIR)] {
            files::create_dir(dir)?;
        }
        self.shared.launcher.launch(&launch).await.map_err(|source| ServiceError::Launch { program, source })
    }

    /// Removes what the service owned, except what another service still lists. Only paths
    /// that pass [`is_node_state_path`] are touched.
    fn remove(&mut self, keep: &BTreeSet<String>) {
        let owned = std::mem::take(&mut self.owned_files).into_iter().chain(std::mem::take(&mut self.owned_dirs));
        for path in owned.filter(|p| !keep.contains(p) && is_node_state_path(p)) {
            files::remove(&self.shared.root, &path);
        }
        tracing::info!(service = %self.name, "removed");
    }
}

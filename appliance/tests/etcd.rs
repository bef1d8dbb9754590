//! The etcd client and the cluster CA against real etcd: Debian's `etcd-server` (3.4), members on
//! 127.0.0.1 with client and peer TLS from a [`ClusterCa`], client certificates required on both.
//! The etcd binary comes from the Debian cache in `OASIS_DEBIAN_CACHE`, else `.cache/debian` at
//! the repository root (downloaded with apt-get when missing, never installed).

use std::fs;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oasis_appliance::etcd::{EtcdClient, EtcdError, Member};
use oasis_appliance::pki::ClusterCa;
use oasis_appliance::store::Store;
use oasis_image::debian::DebianCache;

/// How long a member may take to start or catch up before the test gives up.
const DEADLINE: Duration = Duration::from_secs(90);
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A running etcd member, killed when dropped (on every path, a failing assertion included).
struct Etcd {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- etcd {} log, last lines ---", self.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// One member's addresses.
#[derive(Clone, Copy)]
struct Ports {
    client: u16,
    peer: u16,
}

impl Ports {
    fn client(&self) -> SocketAddr {
        SocketAddr::new(LOOPBACK, self.client)
    }
    fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer)
    }
    fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client)
    }
}

/// `n` ports free on 127.0.0.1 right now (all held at once, so they differ).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn etcd_binary() -> PathBuf {
    let cache = match std::env::var_os("OASIS_DEBIAN_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/debian"),
    };
    let package = DebianCache::new(cache).unwrap().fetch("etcd-server").unwrap();
    package.file("/usr/bin/etcd").unwrap()
}

fn write_secret(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Starts member `name` with a certificate from `ca`; `initial_cluster` is etcd's
/// `--initial-cluster`, `state` `new` or `existing`.
fn start(
    bin: &Path,
    dir: &Path,
    ca: &ClusterCa,
    name: &'static str,
    ports: Ports,
    initial_cluster: &str,
    state: &str,
) -> Etcd {
    let cert = ca.issue(&format!("etcd-{name}"), &[LOOPBACK]).unwrap();
    let ca_file = dir.join("ca.pem");
    if !ca_file.exists() {
        fs::write(&ca_file, ca.ca_pem()).unwrap();
    }
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}-key.pem"));
    fs::write(&cert_file, &cert.cert_pem).unwrap();
    write_secret(&key_file, &cert.key_pem);
    let log = dir.join(format!("{name}.log"));
    let log_file = fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", dir.join(format!("{name}.etcd")).display()))
        .arg(format!("--listen-client-urls={}", ports.client_url()))
        .arg(format!("--advertise-client-urls={}", ports.client_url()))
        .arg(format!("--listen-peer-urls={}", ports.peer_url()))
        .arg(format!("--initial-advertise-peer-urls={}", ports.peer_url()))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .arg(format!("--initial-cluster-state={state}"))
        .arg("--initial-cluster-token=oasis-etcd-client-test")
        .arg(format!("--cert-file={}", cert_file.display()))
        .arg(format!("--key-file={}", key_file.display()))
        .arg("--client-cert-auth")
        .arg(format!("--trusted-ca-file={}", ca_file.display()))
        .arg(format!("--peer-cert-file={}", cert_file.display()))
        .arg(format!("--peer-key-file={}", key_file.display()))
        .arg("--peer-client-cert-auth")
        .arg(format!("--peer-trusted-ca-file={}", ca_file.display()))
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Etcd { name, child, log }
}

/// Repeats `attempt` while it fails with an error `retry` accepts, until [`DEADLINE`].
async fn retry_while<T, F, Fut>(what: &str, retry: fn(&EtcdError) -> bool, mut attempt: F) -> Result<T, EtcdError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, EtcdError>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        match attempt().await {
            Err(e) if retry(&e) && Instant::now() < deadline => {
                eprintln!("{what}: {e}; again shortly");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            answer => return answer,
        }
    }
}

fn not_up_yet(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Unreachable { .. } | EtcdError::Timeout)
}

/// Refused until every voter has been connected for 5 s and has published itself (a member
/// just promoted).
fn settling(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Unhealthy | EtcdError::NotEnoughStarted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_grows_one_learner_at_a_time_and_shrinks_on_real_etcd() {
    let bin = tokio::task::spawn_blocking(etcd_binary).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let ca = ClusterCa::load_or_create(&store).unwrap();
    let client = EtcdClient::new(&ca).unwrap();
    let ports = free_ports(6);
    let a = Ports { client: ports[0], peer: ports[1] };
    let b = Ports { client: ports[2], peer: ports[3] };
    let never_started = Ports { client: ports[4], peer: ports[5] };

    // Member A bootstraps the cluster alone.
    let _a = start(&bin, dir.path(), &ca, "a", a, &format!("a={}", a.peer_url()), "new");
    let status = retry_while("status of a", not_up_yet, || client.status(a.client())).await.unwrap();
    assert_eq!(status.leader, status.member_id, "a single member leads itself: {status:?}");
    assert!(!status.is_learner && status.errors.is_empty(), "{status:?}");
    assert!(status.version.starts_with("3.4."), "{status:?}");
    let a_id = status.member_id;

    client.put(a.client(), b"oasis/formed", b"by the appliance").await.unwrap();
    assert_eq!(client.get(a.client(), b"oasis/formed").await.unwrap().as_deref(), Some(&b"by the appliance"[..]));
    assert_eq!(client.get(a.client(), b"oasis/never-written").await.unwrap(), None);
    assert!(client.status(a.client()).await.unwrap().revision > status.revision, "the put moved the revision");

    // B joins as a learner.
    let learner = client.add_learner(a.client(), &b.peer_url()).await.unwrap();
    assert!(learner.is_learner && !learner.started(), "{learner:?}");
    assert_eq!(learner.peer_urls, vec![b.peer_url()]);
    let members = client.members(a.client()).await.unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().any(|m| m.id == a_id && !m.is_learner && m.name == "a"), "{members:?}");
    assert!(members.iter().any(|m| m.id == learner.id && m.is_learner), "{members:?}");
    let initial = format!("a={},b={}", a.peer_url(), b.peer_url());
    let _b = start(&bin, dir.path(), &ca, "b", b, &initial, "existing");

    // One learner at a time: a second one is refused while B is still learning.
    let second = client.add_learner(a.client(), &never_started.peer_url()).await.unwrap_err();
    assert!(matches!(second, EtcdError::TooManyLearners), "{second:?}");

    // B is promoted once it has caught up.
    let members = retry_while(
        "promote b",
        |e| matches!(e, EtcdError::LearnerNotReady),
        || client.promote(a.client(), learner.id),
    )
    .await
    .unwrap();
    assert!(members.iter().all(|m: &Member| !m.is_learner) && members.len() == 2, "{members:?}");

    // A linearizable read through B sees what was written through A.
    let not_serving = |e: &EtcdError| not_up_yet(e) || matches!(e, EtcdError::NotForLearner);
    let through_b = retry_while("get through b", not_serving, || client.get(b.client(), b"oasis/formed")).await;
    assert_eq!(through_b.unwrap().as_deref(), Some(&b"by the appliance"[..]));
    let b_status = client.status(b.client()).await.unwrap();
    assert_eq!(b_status.member_id, learner.id);
    assert_eq!(b_status.cluster_id, status.cluster_id);
    assert!(!b_status.is_learner, "{b_status:?}");
    assert_ne!(b_status.leader, 0, "{b_status:?}");

    // The cluster version, from the plain `GET /version` (3.4 here: Debian 12's etcd).
    let cluster_version = client.cluster_version(a.client()).await.unwrap();
    assert!(cluster_version.starts_with("3.4."), "{cluster_version}");

    // Leadership moves to B (asked of the leader) and back to A, as a rollout does before it
    // reboots a leader.
    let leader_ep = |id: u64| if id == a_id { a.client() } else { b.client() };
    for to in [learner.id, a_id] {
        let from = client.status(a.client()).await.unwrap().leader;
        if from != to {
            retry_while("move the leader", settling, || client.move_leader(leader_ep(from), to)).await.unwrap();
        }
        let leader = client.status(b.client()).await.unwrap().leader;
        assert_eq!(leader, to, "leadership moved");
    }

    // The errors the planner acts on.
    let voter = client.promote(a.client(), a_id).await.unwrap_err();
    assert!(matches!(voter, EtcdError::NotLearner), "{voter:?}");
    let b_peer = b.peer_url();
    let taken = retry_while("add b again", settling, || client.add_learner(a.client(), &b_peer)).await;
    let taken = taken.unwrap_err();
    assert!(matches!(taken, EtcdError::PeerUrlExists), "{taken:?}");
    let unknown_id = (1..).find(|id| *id != a_id && *id != learner.id).unwrap();
    let unknown = client.remove(a.client(), unknown_id).await.unwrap_err();
    assert!(matches!(unknown, EtcdError::MemberNotFound), "{unknown:?}");

    // Only the cluster CA's certificates count, both ways.
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = ClusterCa::load_or_create(&Store::open(other_dir.path()).unwrap()).unwrap();
    let stranger = EtcdClient::with_certificate(ca.ca_pem(), &other_ca.issue("oasis-appliance", &[]).unwrap()).unwrap();
    let refused = stranger.status(a.client()).await.unwrap_err();
    assert!(matches!(refused, EtcdError::Unreachable { .. }), "a client certificate from another CA: {refused:?}");
    let distrustful = EtcdClient::new(&other_ca).unwrap();
    let refused = distrustful.status(a.client()).await.unwrap_err();
    assert!(
        matches!(refused, EtcdError::Unreachable { .. }) && refused.to_string().contains("TLS"),
        "etcd's certificate: {refused:?}"
    );

    // B leaves; A carries on alone.
    let members = retry_while("remove b", settling, || client.remove(a.client(), learner.id)).await.unwrap();
    assert_eq!(members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![a_id]);
    assert_eq!(client.members(a.client()).await.unwrap().len(), 1);
    client.put(a.client(), b"oasis/after", b"b left").await.unwrap();
    assert_eq!(client.get(a.client(), b"oasis/after").await.unwrap().as_deref(), Some(&b"b left"[..]));
}

#[tokio::test]
async fn a_port_nobody_listens_on_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(&Store::open(dir.path()).unwrap()).unwrap();
    let client = EtcdClient::new(&ca).unwrap();
    let port = free_ports(1)[0];
    let error = client.status(SocketAddr::new(LOOPBACK, port)).await.unwrap_err();
    assert!(
        matches!(error, EtcdError::Unreachable { .. }) && error.to_string().contains(&port.to_string()),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_member_that_never_answers_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::load_or_create(&Store::open(dir.path()).unwrap()).unwrap();
    let client = EtcdClient::new(&ca).unwrap();
    // Accepts connections and says nothing: a member stuck or cut off mid-way.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let error = client.members(at).await.unwrap_err();
    assert!(matches!(error, EtcdError::Timeout), "{error:?}");
    silent.abort();
}

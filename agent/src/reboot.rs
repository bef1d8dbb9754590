//! Booting this machine into another node generation when the appliance asks
//! ([`oasis_proto::RebootRequest`], addressed to this boot by its WireGuard key).
//!
//! The session stops the services and unmounts the data disk first; then, with `kexec`, the
//! [`Rebooter`] fetches this machine's boot script from the appliance the way the firmware does
//! (`BASE/boot.ipxe?mac=M`, `BASE` from `oasis.boot=` on the kernel command line), reads the
//! kernel, initramfs and kernel arguments out of it ([`parse_script`]; the script carries a fresh
//! `oasis.token=` and the new `oasis.generation=`), downloads both files, loads them with
//! `kexec_file_load(2)` and jumps. Without `kexec`, or when anything on that path fails, the
//! machine reboots through its firmware, which netboots again and gets the same script.
//!
//! The OS effects (HTTP downloads, the kexec load, the reboot) are behind [`Power`]; the real one
//! is [`HostPower`].

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[cfg(test)]
mod tests;

/// Where the kernel and initramfs to kexec are downloaded on a node (memory: the root is).
pub const KEXEC_DIR: &str = "/run/oasis-kexec";
/// How long connecting, or waiting for the next bytes of a download, may take.
pub const FETCH_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a download may bring: the root it lands on is memory.
pub const FETCH_MAX_BYTES: u64 = 1 << 30;

/// A future the [`Power`] trait returns (boxed: the trait is used as an object).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The OS effects of booting again.
pub trait Power: Send + Sync {
    /// Downloads `url` (plain `http://`) into `dest`; returns the bytes written.
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<u64, FetchError>>;
    /// Loads `kernel`, `initrd` and `cmdline` as the image a kexec jumps into.
    fn load(&self, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> io::Result<()>;
    /// Syncs, then reboots: into the loaded image with `kexec`, else through the firmware.
    /// Returns only when the kernel refused.
    fn reboot(&self, kexec: bool) -> io::Error;
    /// Syncs, then powers the machine off. Returns only when the kernel refused.
    fn power_off(&self) -> io::Error;
}

/// What a network boot script boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    pub kernel: String,
    pub initrd: Option<String>,
    /// The kernel arguments, as iPXE passes them (everything after the kernel's URL).
    pub cmdline: String,
}

/// Why a boot script does not say what to kexec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("the appliance's answer is not an iPXE script")]
    NotIpxe,
    #[error("the boot script loads no kernel: the appliance has this machine boot from its local disk")]
    NoKernel,
    #[error("the boot script's {command} line has no http:// URL: {line:?}")]
    NoUrl { command: &'static str, line: String },
    #[error("the boot script's kernel arguments hold an iPXE setting ({arg:?}) only iPXE can expand")]
    Setting { arg: String },
}

/// Reads the `kernel` and `initrd` commands of an iPXE boot script as `oasis_pxe::script`
/// renders it: `kernel URL ARGS... || goto failed`, `initrd [--name NAME] URL || goto failed`.
pub fn parse_script(script: &str) -> Result<BootImage, ScriptError> {
    let mut lines = script.lines().map(str::trim);
    if lines.next() != Some("#!ipxe") {
        return Err(ScriptError::NotIpxe);
    }
    let (mut kernel, mut initrd) = (None, None);
    for line in lines {
        let command = line.split_once("||").map_or(line, |(command, _)| command).trim();
        let mut words = command.split_whitespace();
        match words.next() {
            Some("kernel") if kernel.is_none() => {
                let url = words.next().filter(|w| w.starts_with("http://"));
                let url = url.ok_or_else(|| ScriptError::NoUrl { command: "kernel", line: line.into() })?;
                let cmdline = words.collect::<Vec<_>>().join(" ");
                if let Some(arg) = cmdline.split_whitespace().find(|a| a.contains("${")) {
                    return Err(ScriptError::Setting { arg: arg.into() });
                }
                kernel = Some((url.to_string(), cmdline));
            }
            Some("initrd") if initrd.is_none() => {
                let mut url = None;
                while let Some(word) = words.next() {
                    match word {
                        "--name" | "-n" => {
                            words.next();
                        }
                        w if w.starts_with("http://") => url = Some(w.to_string()),
                        _ => {}
                    }
                }
                initrd = Some(url.ok_or_else(|| ScriptError::NoUrl { command: "initrd", line: line.into() })?);
            }
            _ => {}
        }
    }
    let (kernel, cmdline) = kernel.ok_or(ScriptError::NoKernel)?;
    Ok(BootImage { kernel, initrd, cmdline })
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} is not an http:// URL with a host")]
    BadUrl { url: String },
    #[error("cannot reach {url} ({stage})")]
    Unreachable { url: String, stage: &'static str, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent nothing for {} s", .after.as_secs())]
    Timeout { url: String, after: Duration },
    #[error("{url} sent more than {max} bytes; stopped, as the download lands in memory")]
    TooLarge { url: String, max: u64 },
    #[error("cannot write {}", .path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Why the kexec path was given up (the machine then reboots through its firmware).
#[derive(Debug, thiserror::Error)]
pub enum KexecError {
    #[error(
        "the kernel command line has no {}= naming where boot scripts are served (an appliance older \
         than this agent booted it)",
        oasis_proto::BOOT_URL_ARG
    )]
    NoBootUrl,
    #[error("fetching the boot script")]
    Script(#[source] FetchError),
    #[error("reading the boot script")]
    Unparseable(#[from] ScriptError),
    #[error("downloading {what}")]
    Download { what: &'static str, source: FetchError },
    #[error("the {what} the appliance served from {url} is empty")]
    Empty { what: &'static str, url: String },
    #[error("cannot read {}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the kernel refused to load the new kernel (kexec_file_load)")]
    Load(#[source] io::Error),
    #[error("the kernel refused the jump into the loaded kernel")]
    Jump(#[source] io::Error),
}

/// Boots this machine again: see the module comment.
#[derive(Clone)]
pub struct Rebooter {
    power: Arc<dyn Power>,
    /// `BASE/boot.ipxe?mac=M` for this machine, when the kernel command line names `BASE`.
    script_url: Option<String>,
    /// Where the downloads go.
    dir: PathBuf,
}

impl std::fmt::Debug for Rebooter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebooter").field("script_url", &self.script_url).field("dir", &self.dir).finish()
    }
}

impl Rebooter {
    /// For the machine with boot MAC `mac` (`aa:bb:...`), whose kernel command line is `cmdline`;
    /// downloads go to `dir`.
    pub fn new(power: Arc<dyn Power>, cmdline: &str, mac: &str, dir: PathBuf) -> Rebooter {
        let script_url = boot_url_of(cmdline)
            .map(|base| format!("{}/boot.ipxe?mac={}", base.trim_end_matches('/'), mac.replace(':', "-")));
        Rebooter { power, script_url, dir }
    }

    /// Fetches and reads this machine's boot script, downloads its kernel and initramfs and loads
    /// them for a kexec.
    pub async fn load(&self) -> Result<BootImage, KexecError> {
        let url = self.script_url.as_deref().ok_or(KexecError::NoBootUrl)?;
        let script_path = self.dir.join("boot.ipxe");
        self.power.fetch(url, &script_path).await.map_err(KexecError::Script)?;
        let script = std::fs::read_to_string(&script_path)
            .map_err(|source| KexecError::Read { path: script_path.clone(), source })?;
        let image = parse_script(&script)?;
        let kernel = self.dir.join("vmlinuz");
        self.download("kernel", &image.kernel, &kernel).await?;
        let initrd = match &image.initrd {
            Some(url) => {
                let path = self.dir.join("initrd.img");
                self.download("initramfs", url, &path).await?;
                Some(path)
            }
            None => None,
        };
        self.power.load(&kernel, initrd.as_deref(), &image.cmdline).map_err(KexecError::Load)?;
        Ok(image)
    }

    async fn download(&self, what: &'static str, url: &str, dest: &Path) -> Result<(), KexecError> {
        match self.power.fetch(url, dest).await {
            Ok(0) => Err(KexecError::Empty { what, url: url.to_string() }),
            Ok(_) => Ok(()),
            Err(source) => Err(KexecError::Download { what, source }),
        }
    }

    /// Jumps into what [`load`](Self::load) loaded; returns only when refused.
    pub fn jump(&self) -> KexecError {
        KexecError::Jump(self.power.reboot(true))
    }

    /// Reboots through the firmware; returns only when refused.
    pub fn reboot(&self) -> io::Error {
        self.power.reboot(false)
    }

    /// Powers the machine off; returns only when refused.
    pub fn power_off(&self) -> io::Error {
        self.power.power_off()
    }
}

/// `oasis.boot=BASE` of a kernel command line; the last one wins.
pub fn boot_url_of(cmdline: &str) -> Option<String> {
    let prefix = format!("{}=", oasis_proto::BOOT_URL_ARG);
    cmdline.split_whitespace().filter_map(|arg| arg.strip_prefix(&prefix)).next_back().map(str::to_string)
}

/// The real [`Power`]: plain HTTP with hyper, `kexec_file_load(2)` and `reboot(2)`.
#[derive(Debug, Default)]
pub struct HostPower;

impl Power for HostPower {
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<u64, FetchError>> {
        Box::pin(http_get(url, dest))
    }

    fn load(&self, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> io::Result<()> {
        let kernel = std::fs::File::open(kernel)?;
        let initrd = initrd.map(std::fs::File::open).transpose()?;
        oasis_host::kexec::load(&kernel, initrd.as_ref(), cmdline)
    }

    fn reboot(&self, kexec: bool) -> io::Error {
        if kexec {
            oasis_host::kexec::sync_and_jump()
        } else {
            oasis_host::sys::sync_and_reboot(oasis_host::sys::RebootMode::RB_AUTOBOOT)
        }
    }

    fn power_off(&self) -> io::Error {
        oasis_host::sys::sync_and_reboot(oasis_host::sys::RebootMode::RB_POWER_OFF)
    }
}

/// `GET url` over plain HTTP/1.1, the body streamed into `dest` (its directory is created);
/// returns the bytes written. At most [`FETCH_MAX_BYTES`].
pub async fn http_get(url: &str, dest: &Path) -> Result<u64, FetchError> {
    http_get_at_most(url, dest, FETCH_MAX_BYTES).await
}

/// [`http_get`] of at most `max` bytes.
async fn http_get_at_most(url: &str, dest: &Path, max: u64) -> Result<u64, FetchError> {
    let uri: Uri = url.parse().map_err(|_| FetchError::BadUrl { url: url.to_string() })?;
    let host = uri.host().filter(|_| uri.scheme_str() == Some("http"));
    let host = host.ok_or_else(|| FetchError::BadUrl { url: url.to_string() })?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let unreachable = |stage: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| FetchError::Unreachable {
            url: url.to_string(),
            stage,
            source: e,
        }
    };
    let timeout = || FetchError::Timeout { url: url.to_string(), after: FETCH_IDLE_TIMEOUT };
    let tcp = tokio::time::timeout(FETCH_IDLE_TIMEOUT, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| unreachable("connecting")(e.into()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable("HTTP handshake")(e.into()))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(HOST, format!("{host}:{port}"))
        .body(Empty::new())
        .map_err(|e| unreachable("making the request")(e.into()))?;
    let response = tokio::time::timeout(FETCH_IDLE_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| timeout())?
        .map_err(|e| unreachable("sending the request")(e.into()))?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status { url: url.to_string(), status: response.status().as_u16() });
    }
    let write = |source| FetchError::Write { path: dest.to_path_buf(), source };
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(write)?;
    }
    let mut file = tokio::fs::File::create(dest).await.map_err(write)?;
    let mut body = response.into_body();
    let mut written = 0u64;
    loop {
        let frame = match tokio::time::timeout(FETCH_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => return Err(timeout()),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(unreachable("receiving the body")(e.into())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        written += data.len() as u64;
        if written > max {
            return Err(FetchError::TooLarge { url: url.to_string(), max });
        }
        file.write_all(&data).await.map_err(write)?;
    }
    file.flush().await.map_err(write)?;
    Ok(written)
}

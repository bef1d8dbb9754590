//! The boot-script parser against scripts `oasis_pxe::script` renders, and the whole kexec load
//! against the real HTTP boot server, with only the syscall faked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use oasis_proto::MacAddr;
use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::conn::{Guard, Listener, Timeouts};
use oasis_pxe::conn_limit::Caps;
use oasis_pxe::http::{router, serve, BootTarget, HttpBoot, MachineDirectory, ScriptRefusal};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::script::{BootFiles, BootProfile, ScriptRenderer};

use super::*;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

fn profile(cmdline: &str) -> BootProfile {
    BootProfile { kernel: "node/vmlinuz".into(), initrd: Some("node/initrd.img".into()), cmdline: cmdline.into() }
}

#[test]
fn the_kernel_initramfs_and_arguments_are_read_from_a_rendered_script() {
    let renderer = ScriptRenderer::new("http://10.0.0.1:8080".into(), profile("console=ttyS0 quiet"));
    let files = BootFiles { kernel: "generations/3/vmlinuz".into(), initrd: Some("generations/3/initrd.img".into()) };
    let script = renderer.render_boot_files(MAC, "oasis.token=abc oasis.generation=3", Some(&files)).unwrap();
    assert_eq!(
        parse_script(&script).unwrap(),
        BootImage {
            kernel: "http://10.0.0.1:8080/boot/generations/3/vmlinuz".into(),
            initrd: Some("http://10.0.0.1:8080/boot/generations/3/initrd.img".into()),
            cmdline:
                "initrd=initrd.img console=ttyS0 quiet oasis.token=abc oasis.generation=3 BOOTIF=01-52-54-00-00-00-01"
                    .into(),
        }
    );
    let bare = ScriptRenderer::new("http://10.0.0.1".into(), BootProfile { initrd: None, ..profile("") });
    let image = parse_script(&bare.render_boot(MAC)).unwrap();
    assert_eq!(image.kernel, "http://10.0.0.1/boot/node/vmlinuz");
    assert_eq!((image.initrd, image.cmdline.as_str()), (None, "BOOTIF=01-52-54-00-00-00-01"));
}

#[test]
fn scripts_that_boot_no_kernel_or_need_ipxe_are_refused() {
    let renderer = ScriptRenderer::new("http://10.0.0.1".into(), profile("console=ttyS0"));
    assert_eq!(parse_script(&renderer.render_local(MAC)), Err(ScriptError::NoKernel));
    assert_eq!(parse_script(&renderer.render_chain()), Err(ScriptError::NoKernel));
    assert_eq!(parse_script("<html>not found</html>"), Err(ScriptError::NotIpxe));
    let settings = ScriptRenderer::new("http://10.0.0.1".into(), profile("console=ttyS0 node=${uuid}"));
    assert_eq!(settings.profile().validate(), Ok(()), "iPXE settings are valid in a profile");
    assert_eq!(parse_script(&settings.render_boot(MAC)), Err(ScriptError::Setting { arg: "node=${uuid}".into() }));
    let odd = "#!ipxe\nkernel tftp://10.0.0.1/vmlinuz || goto failed\n";
    assert!(matches!(parse_script(odd), Err(ScriptError::NoUrl { command: "kernel", .. })));
}

#[test]
fn the_script_url_comes_from_the_kernel_command_line() {
    assert_eq!(
        boot_url_of("a oasis.boot=http://10.0.0.1 b oasis.boot=http://10.0.0.1:8080/"),
        Some("http://10.0.0.1:8080/".into())
    );
    assert_eq!(boot_url_of("console=ttyS0"), None);
    let power = Arc::new(Recorder::default());
    let rebooter = Rebooter::new(power, "oasis.boot=http://10.0.0.1:8080/", "52:54:00:00:00:01", "/x".into());
    assert_eq!(rebooter.script_url.as_deref(), Some("http://10.0.0.1:8080/boot.ipxe?mac=52-54-00-00-00-01"));
}

/// The kernel, initramfs and command line a load got.
type Loaded = (Vec<u8>, Option<Vec<u8>>, String);

/// Real downloads ([`http_get`]), a recorded load, refused reboots.
#[derive(Default)]
struct Recorder {
    loaded: Mutex<Option<Loaded>>,
}

impl Power for Recorder {
    fn fetch<'a>(&'a self, url: &'a str, dest: &'a Path) -> BoxFuture<'a, Result<u64, FetchError>> {
        Box::pin(http_get(url, dest))
    }

    fn load(&self, kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> io::Result<()> {
        let initrd = initrd.map(std::fs::read).transpose()?;
        *self.loaded.lock().unwrap() = Some((std::fs::read(kernel)?, initrd, cmdline.into()));
        Ok(())
    }

    fn reboot(&self, _kexec: bool) -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }

    fn power_off(&self) -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }
}

/// Generation 3 for every machine, each script with a per-boot token, as the appliance does.
struct Upgraded;

impl MachineDirectory for Upgraded {
    fn boot_target(&self, _: MacAddr) -> BootTarget {
        BootTarget::Network
    }
    fn record_boot(&self, _: MacAddr) {}
    fn boot_args(&self, _: MacAddr, _: Option<std::net::IpAddr>) -> Result<String, ScriptRefusal> {
        Ok("oasis.token=t0k3n oasis.generation=3".into())
    }
    fn boot_files(&self, _: MacAddr) -> Result<Option<BootFiles>, ScriptRefusal> {
        Ok(Some(BootFiles { kernel: "generations/3/vmlinuz".into(), initrd: Some("generations/3/initrd.img".into()) }))
    }
}

/// The appliance's HTTP boot service over a boot root holding generation 3 with `kernel`.
async fn appliance(root: &Path, kernel: &[u8]) -> SocketAddr {
    std::fs::create_dir_all(root.join("generations/3")).unwrap();
    std::fs::write(root.join("generations/3/vmlinuz"), kernel).unwrap();
    std::fs::write(root.join("generations/3/initrd.img"), b"initramfs of generation 3").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scripts = ScriptRenderer::new(format!("http://{addr}"), profile("console=ttyS0"));
    let metrics = Arc::new(Metrics::default());
    let state = HttpBoot::new(BootRoot::new(root).unwrap(), scripts, Arc::new(Upgraded), metrics.clone());
    let guard = Guard::new(Listener::HttpBoot, Caps::new(64, 16), Timeouts::default(), metrics);
    tokio::spawn(serve(listener, router(state), guard));
    addr
}

#[tokio::test]
async fn the_kernel_the_appliance_serves_is_downloaded_and_loaded_with_its_script_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let addr = appliance(&dir.path().join("root"), b"kernel of generation 3").await;
    let power = Arc::new(Recorder::default());
    let cmdline = format!("console=ttyS0 oasis.boot=http://{addr}");
    let rebooter = Rebooter::new(power.clone(), &cmdline, "52:54:00:00:00:01", dir.path().join("kexec"));
    let image = rebooter.load().await.unwrap();
    assert_eq!(image.kernel, format!("http://{addr}/boot/generations/3/vmlinuz"));
    let (kernel, initrd, cmdline) = power.loaded.lock().unwrap().clone().unwrap();
    assert_eq!(kernel, b"kernel of generation 3");
    assert_eq!(initrd.as_deref(), Some(&b"initramfs of generation 3"[..]));
    assert_eq!(
        cmdline,
        "initrd=initrd.img console=ttyS0 oasis.token=t0k3n oasis.generation=3 BOOTIF=01-52-54-00-00-00-01"
    );
    assert!(matches!(rebooter.jump(), KexecError::Jump(e) if e.raw_os_error() == Some(libc::EPERM)));
}

#[tokio::test]
async fn an_empty_kernel_a_missing_file_or_no_server_is_an_error_not_a_load() {
    let dir = tempfile::tempdir().unwrap();
    let addr = appliance(&dir.path().join("root"), b"").await;
    let power = Arc::new(Recorder::default());
    let rebooter =
        Rebooter::new(power.clone(), &format!("oasis.boot=http://{addr}"), "52:54:00:00:00:01", dir.path().join("k"));
    let error = rebooter.load().await.unwrap_err();
    assert!(matches!(&error, KexecError::Empty { what: "kernel", .. }), "{error:?}");
    assert!(power.loaded.lock().unwrap().is_none());

    let url = format!("http://{addr}/boot/generations/3/initrd.img");
    let big = http_get_at_most(&url, &dir.path().join("big"), 10).await.unwrap_err();
    assert!(matches!(big, FetchError::TooLarge { max: 10, .. }), "{big:?}");
    assert_eq!(http_get_at_most(&url, &dir.path().join("fits"), 25).await.unwrap(), 25);

    let missing = http_get(&format!("http://{addr}/boot/nothing"), &dir.path().join("n")).await.unwrap_err();
    assert!(matches!(missing, FetchError::Status { status: 404, .. }), "{missing:?}");
    // A port nothing listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let down = http_get(&format!("http://{closed}/boot.ipxe"), &dir.path().join("n")).await.unwrap_err();
    assert!(matches!(down, FetchError::Unreachable { stage: "connecting", .. }), "{down:?}");
    let https = http_get("https://10.0.0.1/boot.ipxe", &dir.path().join("n")).await.unwrap_err();
    assert!(matches!(https, FetchError::BadUrl { .. }));
}

//! HTTP boot of another node generation: a machine whose directory names other boot files gets
//! a script naming them, and a second directory mounted at `/boot/NAME/` serves them beneath its
//! own descriptor (nothing outside it, the boot root's `NAME/` shadowed).

use std::net::SocketAddr;
use std::sync::Arc;

use oasis_proto::MacAddr;
use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::conn::{Guard, Listener, Timeouts};
use oasis_pxe::conn_limit::Caps;
use oasis_pxe::http::{router, serve, BootTarget, HttpBoot, MachineDirectory, ScriptRefusal};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::script::{BootFiles, BootProfile, ScriptRenderer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UPGRADED: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

/// Serves generation 1 to [`UPGRADED`], the profile to everyone else.
struct Generations;

impl MachineDirectory for Generations {
    fn boot_target(&self, _: MacAddr) -> BootTarget {
        BootTarget::Network
    }
    fn record_boot(&self, _: MacAddr) {}
    fn boot_files(&self, mac: MacAddr) -> Result<Option<BootFiles>, ScriptRefusal> {
        Ok((mac == UPGRADED).then(|| BootFiles {
            kernel: "generations/1/vmlinuz".into(),
            initrd: Some("generations/1/initrd.img".into()),
        }))
    }
}

async fn get(addr: SocketAddr, target: &str) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: oasis\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let status = std::str::from_utf8(&raw[..split]).unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    (status, raw[split + 4..].to_vec())
}

#[tokio::test]
async fn a_machine_on_another_generation_gets_its_files_from_the_mounted_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (root, generations) = (dir.path().join("root"), dir.path().join("generations"));
    for (path, bytes) in [
        (root.join("node/vmlinuz"), &b"shipped kernel"[..]),
        (root.join("node/initrd.img"), b"shipped initrd"),
        (root.join("generations/1/vmlinuz"), b"shadowed"),
        (generations.join("1/vmlinuz"), b"generation 1 kernel"),
        (generations.join("1/initrd.img"), b"generation 1 initrd"),
        (dir.path().join("secret"), b"outside"),
    ] {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    std::os::unix::fs::symlink(dir.path().join("secret"), generations.join("1/leak")).unwrap();
    let profile = BootProfile {
        kernel: "node/vmlinuz".into(),
        initrd: Some("node/initrd.img".into()),
        cmdline: "console=ttyS0".into(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scripts = ScriptRenderer::new(format!("http://{addr}"), profile);
    let metrics = Arc::new(Metrics::default());
    let state = HttpBoot::new(BootRoot::new(&root).unwrap(), scripts.clone(), Arc::new(Generations), metrics.clone())
        .with_mount("generations", BootRoot::new(&generations).unwrap());
    let guard = Guard::new(Listener::HttpBoot, Caps::new(64, 16), Timeouts::default(), metrics);
    tokio::spawn(serve(listener, router(state), guard));

    let (status, script) = get(addr, &format!("/boot.ipxe?mac={}", UPGRADED.hyphenated())).await;
    let script = String::from_utf8(script).unwrap();
    assert_eq!(status, 200);
    assert!(
        script.contains(&format!("kernel http://{addr}/boot/generations/1/vmlinuz initrd=initrd.img console=ttyS0")),
        "{script}"
    );
    assert!(
        script.contains(&format!("initrd --name initrd.img http://{addr}/boot/generations/1/initrd.img")),
        "{script}"
    );
    let (_, other) = get(addr, &format!("/boot.ipxe?mac={}", OTHER.hyphenated())).await;
    assert_eq!(String::from_utf8(other).unwrap(), scripts.render_boot(OTHER), "everyone else: the profile");

    assert_eq!(get(addr, "/boot/generations/1/vmlinuz").await, (200, b"generation 1 kernel".to_vec()));
    assert_eq!(get(addr, "/boot/generations/1/initrd.img").await, (200, b"generation 1 initrd".to_vec()));
    assert_eq!(get(addr, "/boot/node/vmlinuz").await, (200, b"shipped kernel".to_vec()));
    for refused in ["/boot/generations/1/leak", "/boot/generations/../secret", "/boot/generations/1/../../secret"] {
        assert_eq!(get(addr, refused).await.0, 404, "{refused}");
    }
}

//! HTTP boot requests with arbitrary targets: the real router from `oasis_pxe::http` (the
//! `/boot.ipxe?mac=` query, `/boot/PATH` names with percent escapes, Range headers, HEAD), on the
//! fixture boot root and an in-memory machine directory, driven through `tower::ServiceExt::oneshot`.
//!
//! Input: one byte choosing the method (GET, HEAD or POST), the request target, then optionally a
//! Range header value after `oasis_fuzz::SEPARATOR`. The machine 52:54:00:00:00:02 boots from its
//! disk; every other from the network.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use oasis_proto::MacAddr;
use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::http::{router, HttpBoot, StaticDirectory};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::script::{BootProfile, ScriptRenderer};
use tower::ServiceExt;

/// A machine marked to boot from its local disk.
const LOCAL: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let profile = BootProfile {
            kernel: "node/vmlinuz".into(),
            initrd: Some("node/initrd.img".into()),
            cmdline: "console=ttyS0,115200 ip=${net0/ip}".into(),
        };
        profile.validate().expect("the fixture profile is valid");
        let scripts = ScriptRenderer::new("http://10.0.0.1".into(), profile);
        let machines = Arc::new(StaticDirectory::new());
        machines.mark_local(LOCAL);
        let root = BootRoot::new(oasis_fuzz::boot_root_path()).expect("the fixture boot root");
        let state = HttpBoot::new(root, scripts, machines, Arc::new(Metrics::default()));
        Fixture { runtime: oasis_fuzz::runtime(), router: router(state) }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let parts = oasis_fuzz::messages(rest, 2);
    // Only what hyper would hand the router: a target that is a valid URI.
    let Ok(uri) = Uri::try_from(parts[0]) else { return };
    let method = match choice % 4 {
        0 | 1 => Method::GET,
        2 => Method::HEAD,
        _ => Method::POST,
    };
    let mut request = Request::builder().method(method.clone()).uri(uri.clone());
    if let Some(range) = parts.get(1).and_then(|r| HeaderValue::from_bytes(r).ok()) {
        request = request.header(header::RANGE, range);
    }
    let request = request.body(Body::empty()).expect("a request from a valid URI and header");
    let fixture = fixture();
    fixture.runtime.block_on(async {
        let response = fixture.router.clone().oneshot(request).await.expect("the router is infallible");
        let status = response.status();
        // A probe gets an answer about itself, never a server error.
        assert!(!status.is_server_error(), "{method} {uri} answered {status}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("the body reads to its end");
        if status.is_success() && uri.path().starts_with("/boot/") {
            assert!(!body.windows(6).any(|w| w == b"SECRET"), "{uri} served a file from outside the boot root");
        }
        if status == StatusCode::OK && method == Method::GET && uri.path() == "/boot.ipxe" {
            assert!(body.starts_with(b"#!ipxe"), "{uri}: the script does not start with #!ipxe");
        }
    });
});

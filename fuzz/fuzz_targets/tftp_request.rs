//! TFTP datagrams on the request port: the packet parser, option negotiation for a read request,
//! and the boot root's checks on the requested name (lexical, then against the real fixture
//! directory with symlinks that lead out of it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use oasis_pxe::boot_root::BootRoot;
use oasis_pxe::tftp::options::negotiate;
use oasis_pxe::tftp::packet::{Packet, MAX_BLKSIZE};
use oasis_pxe::tftp::TftpConfig;

fn root() -> &'static BootRoot {
    static ROOT: OnceLock<BootRoot> = OnceLock::new();
    ROOT.get_or_init(|| BootRoot::new(oasis_fuzz::boot_root_path()).expect("the fixture boot root"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::parse(data) else { return };
    // What parses encodes to something that parses back the same (the server and the test
    // client both write packets with `encode`).
    assert_eq!(Packet::parse(&packet.to_bytes()).as_ref(), Ok(&packet), "round trip of {packet:?}");
    let (Packet::Rrq(request) | Packet::Wrq(request)) = packet else { return };

    let capped = TftpConfig { max_blksize: 1468, max_windowsize: 8, no_blksize: data.len() % 2 == 0, ..Default::default() };
    for config in [TftpConfig::default(), capped] {
        let got = negotiate(&request.options, data.len() as u64, &config);
        assert!((8..=MAX_BLKSIZE).contains(&got.blksize) && got.blksize <= config.max_blksize.max(512));
        assert!(got.windowsize >= 1 && got.windowsize <= config.max_windowsize);
        assert!(!got.timeout.is_zero());
        // The OACK the client gets parses as one, with exactly the granted options.
        if !got.oack.is_empty() {
            let oack = Packet::Oack { options: got.oack.clone() };
            assert_eq!(Packet::parse(&oack.to_bytes()), Ok(oack));
        }
    }

    match root().resolve(&request.filename) {
        Ok(path) => {
            assert!(path.starts_with(root().path()), "{:?} resolved outside the root: {path:?}", request.filename);
            assert!(path.is_file());
        }
        Err(e) => {
            // A name that is longer than the limit or has a NUL is refused before anything else.
            if request.filename.len() > oasis_pxe::boot_root::MAX_NAME_LEN {
                assert!(e.is_traversal(), "{e}");
            }
        }
    }
});

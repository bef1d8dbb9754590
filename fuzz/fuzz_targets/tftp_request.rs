//! TFTP datagrams on the request port: the packet parser, option negotiation for a read request,
//! and what the server opens for the requested name (`BootRoot::open` on the real fixture
//! directory, with symlinks that lead out of it).
#![no_main]

use std::io::Read;
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

    let capped = TftpConfig {
        max_blksize: 1468,
        max_windowsize: 8,
        no_blksize: data.len().is_multiple_of(2),
        ..Default::default()
    };
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

    match root().open(&request.filename) {
        Ok(mut opened) => {
            assert!(opened.path.starts_with(root().path()), "{:?} opened {:?}", request.filename, opened.path);
            let mut contents = Vec::new();
            opened.file.read_to_end(&mut contents).expect("an opened boot file reads");
            assert!(!contents.starts_with(b"SECRET"), "{:?} served the file outside the root", request.filename);
        }
        Err(e) => {
            // A name longer than the limit is refused before anything else.
            if request.filename.len() > oasis_pxe::boot_root::MAX_NAME_LEN {
                assert!(e.is_traversal(), "{e}");
            }
        }
    }
});

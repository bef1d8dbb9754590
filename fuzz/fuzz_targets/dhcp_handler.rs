//! The whole DHCP request handler, `DhcpService::handle`, as `oasis serve` runs it: full mode or
//! ProxyDHCP, on the DHCP port (67) or the PXE boot server port (4011), over a few datagrams from
//! one input (so an OFFER's REQUEST and a lease's RELEASE are reached), on a fresh in-memory lease
//! store each time.
//!
//! Input: one byte choosing mode, port and `tolerate_missing_uuid`, then datagrams separated by
//! `oasis_fuzz::SEPARATOR`.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

use dhcproto::Encodable;
use libfuzzer_sys::fuzz_target;
use oasis_pxe::dhcp::{Mode, Port};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(oasis_fuzz::runtime)
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else { return };
    let mode = if choice & 1 == 0 { oasis_fuzz::full_mode() } else { Mode::Proxy };
    let service = oasis_fuzz::dhcp_service(mode, choice & 4 == 0);
    // A relay or a client with an address sends from there; others from 0.0.0.0.
    let from = SocketAddrV4::new(if choice & 8 == 0 { Ipv4Addr::UNSPECIFIED } else { Ipv4Addr::new(10, 0, 0, 7) }, 68);
    runtime().block_on(async {
        for (i, datagram) in oasis_fuzz::messages(rest, 4).into_iter().enumerate() {
            // Each message may go to either port: a PXE client asks on 4011 after its DHCP exchange.
            let port = if (choice >> (4 + i)) & 1 == 0 { Port::Dhcp } else { Port::Proxy };
            for out in service.handle(datagram, from, port).await {
                // The server encodes every reply before sending it; a reply that does not encode
                // is a client left without an answer.
                out.message.to_vec().expect("a reply encodes");
            }
        }
    });
});

//! DHCP datagrams as the DHCP and PXE boot server sockets receive them: dhcproto's decoder, the
//! accessors the server reads, and the encoding of what decoded.
#![no_main]

use dhcproto::v4::Message;
use dhcproto::{Decodable, Encodable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Message::from_bytes(data) else { return };
    // What `DhcpService::handle` and `BootClient::from_message` read from every request.
    let _ = (msg.opcode(), msg.opts().msg_type(), msg.ciaddr(), msg.giaddr(), msg.xid(), msg.flags());
    let _ = (msg.fname(), msg.sname());
    if let Ok(bytes) = msg.to_vec() {
        // What was encoded decodes again: replies are built from requests' fields.
        Message::from_bytes(&bytes).expect("an encoded message decodes");
    }
});

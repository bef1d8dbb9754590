//! The client hardware address of a DHCP message. [`MacAddr`] itself lives in `oasis-proto`,
//! shared with the agent and the appliance.

use dhcproto::v4::{HType, Message};
use oasis_proto::MacAddr;

/// The client hardware address of a DHCP message, when it is an Ethernet address: `htype`
/// 1 and `hlen` 6. Anything else (another kind of hardware, or a length a well-formed
/// Ethernet client never sends) is `None`, and the message is not served.
///
/// This is the one place that reads `chaddr` from a received message: dhcproto's
/// [`Message::chaddr`] slices the 16-byte field by `hlen` unchecked and panics on a datagram
/// whose `hlen` is over 16, so `hlen` is checked first.
pub fn of_dhcp_client(msg: &Message) -> Option<MacAddr> {
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return None;
    }
    let octets: [u8; 6] = msg.chaddr().try_into().ok()?;
    Some(MacAddr(octets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Encodable};

    #[test]
    fn reads_only_ethernet_hardware_addresses_from_dhcp_messages() {
        let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
        let mut msg = Message::default();
        msg.set_chaddr(&mac);
        assert_eq!(of_dhcp_client(&msg), Some(MacAddr(mac)));
        msg.set_htype(HType::IEEE802);
        assert_eq!(of_dhcp_client(&msg), None, "not Ethernet");
        msg.set_htype(HType::Eth).set_chaddr(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(of_dhcp_client(&msg), None, "hlen 8");
        // hlen over 16 cannot be set through dhcproto's setters, only decoded from a datagram.
        let mut raw = Message::default().set_chaddr(&mac).to_vec().unwrap();
        for hlen in [17, 255] {
            raw[2] = hlen;
            let decoded = Message::from_bytes(&raw).unwrap();
            assert_eq!(of_dhcp_client(&decoded), None, "hlen {hlen}");
        }
    }
}

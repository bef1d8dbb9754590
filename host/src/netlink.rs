//! A link's IPv4 addresses and state, through rtnetlink.
//!
//! The kernel's rule for an IPv4 address message: `IFA_LOCAL` is the address of this host;
//! `IFA_ADDRESS` is the peer's on a point-to-point link given one (`ip addr add A peer B`), and
//! equals `IFA_LOCAL` otherwise. So an address is known by its `IFA_LOCAL` ([`local_ipv4`]);
//! `IFA_ADDRESS` alone answers only when the kernel sent no `IFA_LOCAL`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::LinkUnspec;

/// Why a link's addresses or state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// There is no link by that name.
    #[error("there is no network interface {interface}; check the name (`ip link` lists them)")]
    NoSuchLink {
        /// The name asked for.
        interface: String,
    },
    /// The kernel refused a request (or the exchange failed); [`NetlinkError::errno`] has the code.
    #[error("{what} on {interface} failed")]
    Request {
        /// The link.
        interface: String,
        /// What was asked, e.g. "adding 10.0.0.1/24".
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with (positive, e.g. `libc::EPERM`), if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source: rtnetlink::Error::NetlinkError(message), .. } => {
                message.code.map(|c| c.get().abs())
            }
            NetlinkError::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// The local IPv4 address of an address message: `IFA_LOCAL`, else `IFA_ADDRESS` (see the
/// module's doc); `None` for other families.
pub fn local_ipv4(message: &AddressMessage) -> Option<Ipv4Addr> {
    let v4 = |wanted: fn(&AddressAttribute) -> Option<IpAddr>| {
        message.attributes.iter().find_map(|a| match wanted(a) {
            Some(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
    };
    let local = v4(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        v4(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// The peer of a point-to-point address: an `IFA_ADDRESS` different from `IFA_LOCAL`.
fn peer_ipv4(message: &AddressMessage) -> Option<Ipv4Addr> {
    let local = local_ipv4(message)?;
    message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V4(ip)) if *ip != local => Some(*ip),
        _ => None,
    })
}

/// The IPv4 address of an address message as `local/prefix_len`, if it is one.
pub fn ipv4_net(message: &AddressMessage) -> Option<Ipv4Net> {
    if message.header.family != AddressFamily::Inet {
        return None;
    }
    Ipv4Net::new(local_ipv4(message)?, message.header.prefix_len).ok()
}

/// A connection to the kernel's routing netlink, in the network namespace of the thread that
/// opened it. The connection runs as a task on the current tokio runtime and ends with this.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens the socket; must be called inside a tokio runtime.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        Ok(Netlink { handle, connection: tokio::spawn(connection) })
    }

    /// The rtnetlink handle, for what this module does not cover (links, routes).
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// The index of the link called `interface`.
    pub async fn link_index(&self, interface: &str) -> Result<u32, NetlinkError> {
        let found = self.handle.link().get().match_name(interface.to_string()).execute().try_next().await;
        match found {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetlinkError::NoSuchLink { interface: interface.to_string() }),
            // The kernel answers a name it does not know with ENODEV.
            Err(rtnetlink::Error::NetlinkError(e)) if e.code.map(|c| c.get().abs()) == Some(libc::ENODEV) => {
                Err(NetlinkError::NoSuchLink { interface: interface.to_string() })
            }
            Err(source) => Err(request(interface, "finding the link")(source)),
        }
    }

    async fn address_messages(&self, index: u32, interface: &str) -> Result<Vec<AddressMessage>, NetlinkError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(request(interface, "listing the addresses"))
    }

    /// The IPv4 addresses on link `index` (named `interface` in errors), as `local/prefix_len`.
    pub async fn ipv4_addresses(&self, index: u32, interface: &str) -> Result<Vec<Ipv4Net>, NetlinkError> {
        Ok(self.address_messages(index, interface).await?.iter().filter_map(ipv4_net).collect())
    }

    /// Makes `net` (address and prefix length) the only IPv4 address of link `index`: every
    /// other IPv4 address goes (IPv6 ones stay), `net` is added unless it is there already.
    /// Does not change the link's state (see [`Netlink::link_up`]).
    pub async fn set_only_ipv4(&self, index: u32, interface: &str, net: Ipv4Net) -> Result<(), NetlinkError> {
        let mut present = false;
        for message in self.address_messages(index, interface).await? {
            let Some(have) = ipv4_net(&message) else { continue };
            if have == net && peer_ipv4(&message).is_none() && !present {
                present = true;
                continue;
            }
            self.delete_address(message, interface, have).await?;
        }
        if present {
            return Ok(());
        }
        self.handle
            .address()
            .add(index, IpAddr::V4(net.addr()), net.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(request(interface, format!("adding {net}")))
    }

    /// Removes every IPv4 address of link `index` (and with them the routes through it).
    pub async fn clear_ipv4(&self, index: u32, interface: &str) -> Result<(), NetlinkError> {
        for message in self.address_messages(index, interface).await? {
            if let Some(have) = ipv4_net(&message) {
                self.delete_address(message, interface, have).await?;
            }
        }
        Ok(())
    }

    async fn delete_address(&self, message: AddressMessage, interface: &str, net: Ipv4Net) -> Result<(), NetlinkError> {
        match self.handle.address().del(message).execute().await {
            // Removing a primary address takes its secondaries with it: already gone is done.
            Err(rtnetlink::Error::NetlinkError(e)) if e.code.map(|c| c.get().abs()) == Some(libc::EADDRNOTAVAIL) => {
                Ok(())
            }
            other => other.map_err(request(interface, format!("removing {net}"))),
        }
    }

    /// Sets link `index` administratively up.
    pub async fn link_up(&self, index: u32, interface: &str) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle.link().set(message).execute().await.map_err(request(interface, "setting the link up"))
    }
}

fn request(interface: &str, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let (interface, what) = (interface.to_string(), what.into());
    move |source| NetlinkError::Request { interface, what, source }
}

/// Makes `net` the only IPv4 address of the link called `interface` and sets the link up, on a
/// connection of its own (opened in the calling thread's network namespace).
pub async fn set_only_ipv4(interface: &str, net: Ipv4Net) -> Result<(), NetlinkError> {
    let netlink = Netlink::connect()?;
    let index = netlink.link_index(interface).await?;
    netlink.set_only_ipv4(index, interface, net).await?;
    netlink.link_up(index, interface).await
}

/// Sets the link called `interface` up, on a connection of its own.
pub async fn link_up(interface: &str) -> Result<(), NetlinkError> {
    let netlink = Netlink::connect()?;
    let index = netlink.link_index(interface).await?;
    netlink.link_up(index, interface).await
}

/// [`set_only_ipv4`] for synchronous code (see [`block_on`]).
pub fn set_only_ipv4_blocking(interface: &str, net: Ipv4Net) -> Result<(), NetlinkError> {
    block_on(set_only_ipv4(interface, net))
}

/// [`link_up`] for synchronous code (see [`block_on`]).
pub fn link_up_blocking(interface: &str) -> Result<(), NetlinkError> {
    block_on(link_up(interface))
}

/// Runs `request` to its end on a current-thread runtime of its own, on a thread of its own
/// (which starts in the caller's network namespace), so that synchronous code may call it
/// whether or not it runs on a tokio runtime's thread (`spawn_blocking` included).
fn block_on<T: Send>(request: impl Future<Output = Result<T, NetlinkError>> + Send) -> Result<T, NetlinkError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(NetlinkError::Socket)?;
                runtime.block_on(request)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests;

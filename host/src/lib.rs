//! The one home of the OS effects the agent and the appliance share, a module per effect:
//!
//! - [`netlink`]: a link's IPv4 addresses and state through rtnetlink ("make ADDR/LEN the only
//!   IPv4 address, then set the link up"), right on broadcast and point-to-point links alike;
//! - [`mount`]: mounting, bind-mounting read-only, unmounting (flushed first), the mount table;
//! - [`ext`]: the volume label in an ext2/3/4 superblock;
//! - [`kexec`]: loading a kernel with `kexec_file_load(2)` and jumping into it;
//! - [`command`]: running a program with its command line, status and stderr kept in the error;
//! - [`sys`]: every other raw syscall and ioctl (each `unsafe` with its SAFETY comment);
//! - [`prefix`]: IPv4 prefixes, as `ipnet::Ipv4Net`.
//!
//! `oasis-pxe` keeps its own `sys.rs`: the boot library stays independent of this crate.

pub mod command;
pub mod ext;
pub mod kexec;
pub mod mount;
pub mod netlink;
pub mod prefix;
pub mod sys;

pub use ipnet::Ipv4Net;

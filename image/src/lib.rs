//! Builds the artifacts oasis serves from Debian parts.
//!
//! Debian packages are downloaded with `apt-get download` into a cache directory and unpacked there with
//! `dpkg-deb -x`; nothing is installed into the build host ([`debian`]). From them come the iPXE binaries
//! ([`ipxe`]) and the netboot test payload: a Debian kernel and a busybox initramfs written by our own
//! reproducible cpio writer ([`cpio`], [`payload`]). The node image ([`node`]) adds the kernel modules a
//! node needs ([`kmod`]) and the node agent with its shared libraries ([`elf`]); beside it go the
//! programs the appliance serves to some nodes only, etcd and a k3s bundle ([`k3s_bundle`]), listed
//! in `artifacts.json` ([`artifacts`]). The appliance's bootable disk image ([`appliance`]) is a GPT
//! disk ([`gpt`]) with GRUB for BIOS and UEFI ([`grub`]) and a FAT EFI system partition holding its
//! kernel, initramfs and everything it serves. The USB configuration stick ([`usb_stick`]) is a FAT image
//! written without mounting. Every output directory carries a `SHA256SUMS`
//! manifest ([`manifest`]), and every file is written aside, fsynced and renamed into place.
//!
//! Update bundles ([`bundle`]) carry a node generation in one signed file; the keys that sign
//! them and USB configurations are [`signing`]'s.
//!
//! [`buildroot_tree`] checks `buildroot-overlay/`, the Buildroot br2-external tree that builds the
//! same appliance from source, including its genimage disk layout ([`genimage_cfg`]).

pub mod appliance;
pub mod artifacts;
pub mod buildroot_tree;
pub mod bundle;
pub mod bundle_appliance;
pub mod cpio;
pub mod debian;
pub mod elf;
pub mod genimage_cfg;
pub mod gpt;
pub mod grub;
pub mod grubenv;
pub mod ipxe;
pub mod k3s_bundle;
pub mod kmod;
pub mod manifest;
pub mod node;
pub mod partition;
pub mod payload;
pub mod signing;
pub mod usb_stick;

pub use debian::{DebianCache, DebianError, UnpackedPackage};
pub use manifest::{Manifest, ManifestEntry, ManifestError};

//! A block device as the USB scan reads it, before anything is mounted: a disk image through
//! `usb::label::identify` (FAT boot sector, FAT chain and root directory, ext superblock, ISO 9660
//! descriptors), and the boot supervisor's `disk::ext_label` on a window of a disk.
//!
//! Input: a disk as `oasis_fuzz::SparseDisk` describes it (its size, then its non-zero sectors).
#![no_main]

use libfuzzer_sys::fuzz_target;
use oasis_boot::usb::label::{identify, FsType};
use oasis_fuzz::{SparseDisk, SECTOR};

fuzz_target!(|data: &[u8]| {
    let disk = SparseDisk::from_fuzz(data);
    let volume = identify(&mut disk.clone()).expect("reading memory does not fail");
    if let Some(label) = volume.as_ref().and_then(|v| v.label.as_ref()) {
        // Padding is trimmed and an empty label is none.
        assert!(!label.is_empty() && !label.ends_with([' ', '\0']), "{label:?}");
    }
    // The data partition's label, read at an offset into the disk as `oasis boot` does.
    let offset = 2048;
    let windowed = oasis_boot::disk::ext_label(&mut disk.shifted(offset), offset * SECTOR as u64)
        .expect("reading memory does not fail");
    if let Some(volume) = volume.filter(|v| v.fs == FsType::Ext4) {
        assert_eq!(windowed, volume.label, "the window reads what the whole device reads");
    }
});

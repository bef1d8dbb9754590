//! GUID partition tables as `oasis boot` reads every disk it finds (a USB stick among them) looking
//! for its own, then plans the data partition and rewrites the table: `gpt::Gpt::read`,
//! `Gpt::check`, `disk::plan_data_partition`, and a table that checks writes and reads back the same.
//!
//! Input: one byte of choices, then a disk as `oasis_fuzz::SparseDisk` describes it (its size, then
//! its non-zero sectors). With the low bit set the target first makes the headers' and entries'
//! checksums right, as on a real disk, so the fuzzer reaches what lies behind the CRC checks.
#![no_main]

use std::io::{Read, Seek, SeekFrom, Write};

use libfuzzer_sys::fuzz_target;
use oasis_boot::disk::plan_data_partition;
use oasis_fuzz::SparseDisk;
use oasis_image::appliance::{DATA_NAME, ESP_NAME};
use oasis_image::gpt::{Gpt, SECTOR};

fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

/// Makes the checksums of the header at `lba` right: the entries' (when they are no more than a
/// table can hold) and then the header's own.
fn fix_checksums(disk: &mut SparseDisk, lba: u64) -> Option<()> {
    let mut h = [0u8; SECTOR as usize];
    disk.seek(SeekFrom::Start(lba.checked_mul(SECTOR)?)).ok()?;
    disk.read_exact(&mut h).ok()?;
    let word = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes")) as usize;
    let entries_lba = u64::from_le_bytes(h[72..80].try_into().expect("8 bytes"));
    let (len, size) = (word(80).saturating_mul(word(84)), word(12).clamp(92, SECTOR as usize));
    if len <= 1024 * 1024 {
        let mut entries = vec![0u8; len];
        let read = entries_lba.checked_mul(SECTOR).and_then(|at| disk.seek(SeekFrom::Start(at)).ok());
        if read.is_some() && disk.read_exact(&mut entries).is_ok() {
            h[88..92].copy_from_slice(&crc32(&entries).to_le_bytes());
        }
    }
    h[16..20].fill(0);
    let crc = crc32(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    disk.seek(SeekFrom::Start(lba * SECTOR)).ok()?;
    disk.write_all(&h).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, image)) = data.split_first() else { return };
    let mut disk = SparseDisk::from_fuzz(image);
    // The disk's size as /sys/block/NAME/size gives it.
    let sectors = disk.len() / SECTOR;
    if choice & 1 == 1 {
        fix_checksums(&mut disk, 1);
        if let Some(last) = sectors.checked_sub(1) {
            fix_checksums(&mut disk, last);
        }
    }
    let Ok((table, backup_lba)) = Gpt::read(&mut disk, sectors) else { return };
    let _ = table.find(ESP_NAME);
    // With bit 1 set the data partition's filesystem is there (an update), else not (a first boot).
    let label = (choice & 2 != 0).then_some(DATA_NAME);
    let _ = plan_data_partition(&table, sectors, backup_lba, label, "vda");
    if table.check(sectors).is_err() {
        return;
    }
    for p in table.partitions.iter().flatten() {
        assert!(p.sectors() >= 1);
    }
    // A table that checks is written whole and reads back as it was.
    let mut copy = SparseDisk::zeroed(sectors);
    table.write(&mut copy, sectors).expect("a checked table writes");
    let (again, backup) = Gpt::read(&mut copy, sectors).expect("a written table reads");
    assert_eq!(backup, sectors - 1);
    let used = |t: &Gpt| t.partitions.iter().enumerate().filter_map(|(i, p)| Some((i, p.clone()?))).collect::<Vec<_>>();
    assert_eq!((again.disk_guid, used(&again)), (table.disk_guid, used(&table)));
});

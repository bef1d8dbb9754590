//! Writes the seeds that come from oasis's own builders into `fuzz/seeds/TARGET/`: USB stick images made
//! by `oasis_image::usb_stick` (FAT32, FAT16, and the whole partitioned stick), an ext4 superblock
//! from `mke2fs`, an ISO 9660 descriptor set, GPT disks as `oasis image build appliance` lays them
//! out (before and after the first boot adds the data partition), and `docs/oasis.toml` signed
//! with the fuzz key. Disks are in `oasis_fuzz::SparseDisk`'s form, so each seed is a few KiB.
//!
//! Run: `cargo run --example seeds` in `fuzz/` (needs `mke2fs`).

use std::path::Path;
use std::process::Command;

use oasis_boot::usb::label::{identify, FsType};
use oasis_boot::usb::signature;
use oasis_fuzz::{SparseDisk, SECTOR};
use oasis_image::appliance::{DATA_FIRST, DATA_NAME, ESP_FIRST, ESP_NAME};
use oasis_image::gpt::{self, Gpt, Guid, Partition};

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("seeds directory");
    std::fs::write(dir.join(name), data).expect("seed written");
    println!("{target}/{name}: {} bytes", data.len());
}

fn stick(size_mib: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("stick.img");
    let config = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/oasis.toml")).expect("docs");
    oasis_image::usb_stick::build_usb_stick(&[("oasis.toml", &config)], &path, size_mib).expect("a stick image");
    std::fs::read(&path).expect("the stick image")
}

/// The first `sectors` sectors of `image`, as a disk of `disk_sectors`.
fn sparse(image: &[u8], sectors: usize, disk_sectors: u32) -> Vec<u8> {
    let mut input = SparseDisk::encode(&image[..image.len().min(sectors * SECTOR)], disk_sectors);
    input[..4].copy_from_slice(&disk_sectors.to_le_bytes());
    input
}

/// Writes a `usb_label` seed after checking the label reader sees `want` in it.
fn label_seed(name: &str, input: Vec<u8>, want: Option<(FsType, &str)>) {
    let volume = identify(&mut SparseDisk::from_fuzz(&input)).expect("reading memory");
    let got = volume.map(|v| (v.fs, v.label.unwrap_or_default()));
    assert_eq!(got, want.map(|(fs, label)| (fs, label.to_string())), "{name}");
    write("usb_label", name, &input);
}

fn label_seeds() {
    for (size, name) in [(64, "stick-fat32"), (16, "stick-fat16")] {
        let image = stick(size);
        let partition = &image[1 << 20..];
        // The label needs the boot sector, the start of the FATs and the root directory.
        let oasis = Some((FsType::Vfat, "OASIS"));
        label_seed(name, sparse(partition, 16384, (partition.len() / SECTOR) as u32), oasis);
        if size == 16 {
            // The whole stick: an MBR, which is no filesystem.
            label_seed("stick-whole-mbr", sparse(&image, 4096, (image.len() / SECTOR) as u32), None);
        }
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("ext4.img");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "OASIS"])
        .arg(&path)
        .arg("8M")
        .output()
        .expect("mke2fs (e2fsprogs) is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let image = std::fs::read(&path).expect("the ext4 image");
    label_seed("ext4-superblock", sparse(&image, 4, (image.len() / SECTOR) as u32), Some((FsType::Ext4, "OASIS")));

    // ISO 9660: an El Torito boot record, the primary volume descriptor, the terminator.
    let mut iso = vec![0u8; 20 * 2048];
    for (i, kind) in [0u8, 1, 255].into_iter().enumerate() {
        let d = &mut iso[(16 + i) * 2048..(17 + i) * 2048];
        d[0] = kind;
        d[1..6].copy_from_slice(b"CD001");
        d[6] = 1;
    }
    iso[17 * 2048 + 40..17 * 2048 + 72].copy_from_slice(b"OASIS                           ");
    let input = sparse(&iso, iso.len() / SECTOR, (iso.len() / SECTOR) as u32);
    label_seed("iso9660", input, Some((FsType::Iso9660, "OASIS")));
}

fn partition(type_guid: Guid, n: u8, first: u64, last: u64, name: &str) -> Option<Partition> {
    let unique_guid = Guid([n; 16]);
    Some(Partition { type_guid, unique_guid, first_lba: first, last_lba: last, attributes: 0, name: name.into() })
}

fn gpt_seeds() {
    // The appliance image's table, then the table after the first boot added the data partition.
    let sectors: u64 = 8 << 21; // 8 GiB
    let mut table = Gpt::new(Guid::parse("11111111-2222-3333-4444-555555555555"));
    table.partitions[0] = partition(gpt::BIOS_BOOT, 1, 2048, ESP_FIRST - 1, "BIOS boot");
    table.partitions[1] = partition(gpt::EFI_SYSTEM, 2, ESP_FIRST, ESP_FIRST + 131071, ESP_NAME);
    for (name, with_data) in [("appliance-image", false), ("appliance-with-data", true)] {
        let mut table = table.clone();
        if with_data {
            table.partitions[2] = partition(gpt::LINUX_DATA, 3, DATA_FIRST, Gpt::last_usable(sectors), DATA_NAME);
        }
        let mut disk = SparseDisk::zeroed(sectors);
        table.write(&mut disk, sectors).expect("the table writes");
        // Choice byte 1: the target keeps the checksums right after mutating.
        gpt_seed(name, [&[1u8][..], &encode(&mut disk, sectors)].concat(), &table);
    }
    // A small disk written by the builder, checksums as written (choice byte 0).
    let small = 16384;
    let mut disk = SparseDisk::zeroed(small);
    table.partitions[1] = partition(gpt::EFI_SYSTEM, 2, 4096, 8191, ESP_NAME);
    table.partitions[0] = partition(gpt::BIOS_BOOT, 1, 2048, 4095, "BIOS boot");
    table.write(&mut disk, small).expect("the table writes");
    gpt_seed("small-disk", [&[0u8][..], &encode(&mut disk, small)].concat(), &table);
}

/// Writes a `gpt` seed after checking the table reads back from it.
fn gpt_seed(name: &str, input: Vec<u8>, table: &Gpt) {
    let mut disk = SparseDisk::from_fuzz(&input[1..]);
    let sectors = disk.len() / SECTOR as u64;
    let (read, backup) = Gpt::read(&mut disk, sectors).expect("the seed's table reads");
    assert_eq!((&read, backup), (table, sectors - 1), "{name}");
    write("gpt", name, &input);
}

/// The non-zero sectors of a sparse disk as a fuzz input: the first 64 and the last 64 sectors,
/// which is where partition tables live.
fn encode(disk: &mut SparseDisk, sectors: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = (sectors as u32).to_le_bytes().to_vec();
    for start in [0, sectors - 64] {
        let mut region = vec![0u8; 64 * SECTOR];
        disk.seek(SeekFrom::Start(start * SECTOR as u64)).expect("seek");
        disk.read_exact(&mut region).expect("read");
        let part = SparseDisk::encode(&region, 64);
        // Re-base the chunks of the region on its first sector.
        let mut rest = &part[4..];
        while let Some((head, tail)) = rest.split_first_chunk::<5>() {
            let first = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) + start as u32;
            let len = (usize::from(head[4]) + 1) * SECTOR;
            out.extend_from_slice(&first.to_le_bytes());
            out.push(head[4]);
            out.extend_from_slice(&tail[..len]);
            rest = &tail[len..];
        }
    }
    out
}

fn config_seeds() {
    let text = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/oasis.toml")).expect("docs");
    let key = signature::SigningKey::from_bytes(&[7; 32]);
    let sig = signature::signature_file(&key, &text);
    write("config_toml", "docs-oasis-toml-signed", &[&text[..], oasis_fuzz::SEPARATOR, sig.as_bytes()].concat());
}

/// Update bundles of a small node image (with and without k3s) signed with the fuzz key, and the
/// same manifests in the target's odd form (the JSON, the separator, the members).
fn bundle_seeds() {
    use oasis_image::artifacts::{self, ArtifactEntry};
    use oasis_image::bundle::{write_bundle, BundleOptions, HEADER_BYTES};
    let key = signature::SigningKey::from_bytes(&[7; 32]);
    for k3s in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::write(p.join("vmlinuz"), b"kernel ".repeat(40)).expect("write");
        std::fs::write(p.join("initrd.img"), b"initramfs ".repeat(30)).expect("write");
        std::fs::write(p.join("etcd"), b"etcd ".repeat(20)).expect("write");
        let mut entries = vec![ArtifactEntry::of_file(p, "etcd", "etcd", Some("3.5.16-4".into())).expect("etcd")];
        if k3s {
            std::fs::write(p.join("k3s"), b"k3s").expect("write");
            std::fs::write(p.join("k3s-airgap-images-amd64.tar.zst"), b"images").expect("write");
            entries.push(ArtifactEntry::of_file(p, "k3s", "k3s", None).expect("k3s"));
            let images = "k3s-airgap-images-amd64.tar.zst";
            entries.push(ArtifactEntry::of_file(p, "k3s-airgap-images", images, None).expect("images"));
        }
        artifacts::write(p, &entries).expect("artifacts.json");
        let options = BundleOptions {
            version: "0.16.0".into(),
            sequence: 2,
            kernel_version: Some("6.12.9-amd64".into()),
            k3s_version: k3s.then(|| "v1.31.4+k3s1".into()),
            ..BundleOptions::default()
        };
        let out = p.join("seed.bundle");
        write_bundle(p, &options, &key, &out).expect("bundle");
        let bytes = std::fs::read(&out).expect("read");
        let name = if k3s { "node-k3s" } else { "node" };
        write("bundle_read", &format!("{name}-bundle"), &[&[0u8][..], &bytes].concat());
        let end = HEADER_BYTES + u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        let split = [&[1u8][..], &bytes[HEADER_BYTES..end], oasis_fuzz::SEPARATOR, &bytes[end..]].concat();
        write("bundle_read", &format!("{name}-manifest-and-members"), &split);
    }
}

fn main() {
    bundle_seeds();
    label_seeds();
    gpt_seeds();
    config_seeds();
}

#!/bin/sh
# Buildroot post-image script of oasis_appliance_defconfig: stages the EFI system partition and
# GRUB's BIOS boot code, then writes the appliance disk with genimage (genimage.cfg beside this
# script) as oasis-appliance.img in the images directory.
#
# Buildroot passes the images directory as $1 and exports BINARIES_DIR, BUILD_DIR and HOST_DIR.
# OASIS_BOOT_DIR must name the boot root the appliance serves to the rack (the node image from
# `oasis image build node`, the iPXE binaries from `oasis image build ipxe`, laid out as
# `oasis image build appliance` lays out /oasis/boot/); it is copied to /oasis/boot/ as it is.
set -eu

die() {
	echo "oasis post-image: $*" >&2
	exit 1
}

board_dir=$(cd "$(dirname "$0")" && pwd)
images=${1:-${BINARIES_DIR:-}}
[ -n "$images" ] && [ -d "$images" ] || die "no images directory: Buildroot passes it as \$1"
work=${BUILD_DIR:-$images}

# Where genimage.cfg puts GRUB's core.img: the BIOS boot partition at 1 MiB, in 512-byte sectors.
core_lba=2048
core_max_bytes=1048576

kernel=$images/bzImage
initramfs=$images/rootfs.cpio.gz
grub_core=$images/grub.img
grub_efi=$images/efi-part/EFI/BOOT/bootx64.efi
[ -f "$kernel" ] || die "$kernel is missing: enable BR2_LINUX_KERNEL with BR2_LINUX_KERNEL_BZIMAGE"
[ -f "$initramfs" ] || die "$initramfs is missing: enable BR2_TARGET_ROOTFS_CPIO with BR2_TARGET_ROOTFS_CPIO_GZIP"
[ -f "$grub_core" ] || die "$grub_core is missing: enable BR2_TARGET_GRUB2_I386_PC"
[ -f "$grub_efi" ] || die "$grub_efi is missing: enable BR2_TARGET_GRUB2_X86_64_EFI"

# boot.img is not installed into the images directory by the grub2 package: take it from the
# i386-pc build tree.
grub_boot=
for candidate in "$work"/grub2-*/build-i386-pc/grub-core/boot.img; do
	[ -f "$candidate" ] && grub_boot=$candidate
done
[ -n "$grub_boot" ] || die "GRUB's boot.img not found under $work/grub2-*/build-i386-pc/grub-core/: enable BR2_TARGET_GRUB2_I386_PC and rebuild grub2"

boot_root=${OASIS_BOOT_DIR:-}
[ -n "$boot_root" ] || die "OASIS_BOOT_DIR is not set: build the node image and the iPXE binaries (oasis image build node, oasis image build ipxe), lay them out in one directory as /oasis/boot/ of the appliance image, and export OASIS_BOOT_DIR=that directory"
[ -d "$boot_root" ] || die "OASIS_BOOT_DIR=$boot_root is not a directory"

# Writes VALUE as 8 bytes, little-endian, at byte OFFSET of FILE, in place.
put_le64() {
	bytes=
	i=0
	while [ "$i" -lt 8 ]; do
		bytes="$bytes$(printf '\\%03o' $((($3 >> (8 * i)) & 255)))"
		i=$((i + 1))
	done
	# shellcheck disable=SC2059 # the octal escapes are the point
	printf "$bytes" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

# GRUB's BIOS boot code, set up as grub-bios-setup would for a hard disk: boot.img reads the
# first sector of core.img from core_lba (offset 0x5c) and no longer trusts a BIOS that passes a
# floppy drive number (the jump at 0x66 becomes two NOPs); the first sector of core.img
# (diskboot.img) reads the rest from core_lba + 1 (its block list, at offset 0x1f4). Only the
# first 440 bytes of boot.img go to the disk: the rest of the MBR is the GPT's protective MBR.
dd if="$grub_boot" of="$images/oasis-grub-boot.img" bs=440 count=1 2>/dev/null
put_le64 "$images/oasis-grub-boot.img" $((0x5c)) "$core_lba"
printf '\220\220' | dd of="$images/oasis-grub-boot.img" bs=1 seek=$((0x66)) conv=notrunc 2>/dev/null
cp "$grub_core" "$images/oasis-grub-core.img"
put_le64 "$images/oasis-grub-core.img" $((0x1f4)) $((core_lba + 1))
core_bytes=$(wc -c <"$images/oasis-grub-core.img")
[ "$core_bytes" -le "$core_max_bytes" ] || die "GRUB's core.img is $core_bytes bytes, more than the 1 MiB BIOS boot partition: trim BR2_TARGET_GRUB2_BUILTIN_MODULES_PC"

# The EFI system partition's files.
esp=$images/oasis-esp
rm -rf "$esp"
mkdir -p "$esp/EFI/BOOT" "$esp/boot/grub" "$esp/oasis/boot"
cp "$grub_efi" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$board_dir/grub.cfg" "$esp/boot/grub/grub.cfg"
cp "$kernel" "$esp/oasis/vmlinuz"
cp "$initramfs" "$esp/oasis/initrd.img"
cp -R "$boot_root/." "$esp/oasis/boot/"

tmp=$work/oasis-genimage.tmp
rm -rf "$tmp"
mkdir -p "$tmp/root"
PATH=${HOST_DIR:+$HOST_DIR/bin:}$PATH genimage \
	--rootpath "$tmp/root" \
	--tmppath "$tmp/work" \
	--inputpath "$images" \
	--outputpath "$images" \
	--config "$board_dir/genimage.cfg"
rm -rf "$tmp"
echo "oasis post-image: wrote $images/oasis-appliance.img"

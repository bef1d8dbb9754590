#!/usr/bin/env python3
"""Writes the hand-made seed inputs under fuzz/seeds/TARGET/: DHCP exchanges as real firmware sends them,
TFTP requests, HTTP boot targets, registration and heartbeat bodies, and docs/oasis.toml.

The disk seeds (GPT, USB label) and the signed configuration come from the real builders
(`cargo run --example seeds`). Run from anywhere: `python3 fuzz/seeds/make_seeds.py`. Seeds are
small on purpose; scripts/fuzz reads them beside the minimised corpus in fuzz/corpus/TARGET/.
"""
import json
import os
import struct

FUZZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(FUZZ, "seeds")
SEP = b"\n--8<--\n"  # oasis_fuzz::SEPARATOR


def write(target, name, data):
    os.makedirs(os.path.join(SEEDS, target), exist_ok=True)
    with open(os.path.join(SEEDS, target, name), "wb") as f:
        f.write(data)


def ip(text):
    return bytes(int(x) for x in text.split("."))


def dhcp(msgtype, mac=b"\x52\x54\x00\x00\x00\x01", opts=(), ciaddr="0.0.0.0", giaddr="0.0.0.0", xid=0x1234,
         flags=0x8000):
    """A BOOTREQUEST with the magic cookie and `opts` (code, bytes) after option 53."""
    head = struct.pack("!BBBBIHH", 1, 1, 6, 0, xid, 0, flags)
    head += ip(ciaddr) + ip("0.0.0.0") + ip("0.0.0.0") + ip(giaddr)
    head += mac.ljust(16, b"\0") + b"\0" * 64 + b"\0" * 128
    body = b"\x63\x82\x53\x63" + bytes([53, 1, msgtype])
    for code, value in opts:
        body += bytes([code, len(value)]) + value
    return head + body + b"\xff"


DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
UUID = (97, b"\x00" + bytes(range(16)))
BIOS = [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"), (94, b"\x01\x02\x01"), UUID,
        (55, bytes([1, 3, 6, 43, 60, 66, 67, 128, 129]))]
UEFI = [(60, b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07"), (94, b"\x01\x03\x10"), UUID]
HTTP = [(60, b"HTTPClient:Arch:00016:UNDI:003001"), (93, b"\x00\x10"), UUID]
IPXE = [(60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"), (77, b"\x04iPXE"),
        (175, b"\xb1\x05\x01\x80\x86\x10\x0e")]
PLAIN = [(12, b"node-1"), (55, bytes([1, 3, 6, 15, 28]))]
SELECT = [(54, ip("10.0.0.1")), (50, ip("10.0.0.100"))]


def dhcp_seeds():
    exchanges = {
        "bios-pxe-dora": [dhcp(DISCOVER, opts=BIOS), dhcp(REQUEST, opts=BIOS + SELECT)],
        "uefi-pxe-dora": [dhcp(DISCOVER, opts=UEFI), dhcp(REQUEST, opts=UEFI + SELECT)],
        "uefi-http-boot": [dhcp(DISCOVER, opts=HTTP)],
        "ipxe-dora": [dhcp(DISCOVER, opts=IPXE), dhcp(REQUEST, opts=IPXE + SELECT)],
        "plain-dora-release": [dhcp(DISCOVER, opts=PLAIN), dhcp(REQUEST, opts=PLAIN + SELECT),
                               dhcp(RELEASE, ciaddr="10.0.0.100", opts=[(54, ip("10.0.0.1"))])],
        "decline": [dhcp(DISCOVER, opts=PLAIN), dhcp(DECLINE, opts=SELECT)],
        "renew-inform": [dhcp(REQUEST, ciaddr="10.0.0.120", opts=PLAIN), dhcp(INFORM, ciaddr="10.0.0.120")],
        "init-reboot": [dhcp(REQUEST, opts=[(50, ip("10.0.0.150"))])],
        "relayed": [dhcp(DISCOVER, giaddr="10.0.0.254", opts=BIOS)],
        "reserved-mac": [dhcp(DISCOVER, mac=b"\x52\x54\x00\x00\x00\x42", opts=UEFI)],
        "proxy-4011": [dhcp(REQUEST, ciaddr="10.0.0.120", opts=UEFI)],
        "no-uuid": [dhcp(DISCOVER, opts=BIOS[:2])],
    }
    for name, datagrams in exchanges.items():
        write("dhcp_decode", name, datagrams[0])
        for i, d in enumerate(datagrams[1:]):
            write("dhcp_decode", f"{name}-{i + 2}", d)
        # Choice byte: bit 0 proxy mode, bit 2 strict UUID, bit 3 from 10.0.0.7, bits 4.. port 4011.
        choice = {"proxy-4011": 0x11, "relayed": 0x08, "no-uuid": 0x04}.get(name, 0)
        write("dhcp_handler", name, bytes([choice]) + SEP.join(datagrams))
    write("dhcp_handler", "proxy-mode-discover-then-4011", bytes([0x21]) + SEP.join(
        [dhcp(DISCOVER, opts=BIOS), dhcp(REQUEST, ciaddr="10.0.0.120", opts=BIOS)]))


def tftp_seeds():
    def rrq(name, mode=b"octet", opts=()):
        out = b"\x00\x01" + name + b"\0" + mode + b"\0"
        for k, v in opts:
            out += k + b"\0" + v + b"\0"
        return out
    seeds = {
        "undionly-plain": rrq(b"ipxe/undionly.kpxe"),
        "edk2-tsize": rrq(b"ipxe/ipxe.efi", opts=[(b"tsize", b"0")]),
        "edk2-full": rrq(b"ipxe/ipxe.efi", opts=[(b"blksize", b"1468"), (b"windowsize", b"4"), (b"tsize", b"0")]),
        "ipxe-options": rrq(b"node/vmlinuz", mode=b"OCTET", opts=[(b"BLKSIZE", b"1432"), (b"timeout", b"3")]),
        "netascii-padded": rrq(b"empty", mode=b"netascii") + b"\0\0\0",
        "dos-path": rrq(b"ipxe\\undionly.kpxe"),
        "traversal": rrq(b"../outside/secret"),
        "symlink-out": rrq(b"outdir/secret"),
        "absolute": rrq(b"/etc/passwd"),
        "wrq": b"\x00\x02upload\0octet\0",
        "ack": b"\x00\x04\x00\x01",
        "data": b"\x00\x03\x00\x01hello",
        "error": b"\x00\x05\x00\x08option refused\0",
        "oack": b"\x00\x06blksize\x001468\0tsize\x0012\0",
    }
    for name, data in seeds.items():
        write("tftp_request", name, data)


def boot_query_seeds():
    # Choice byte: 0 GET, 2 HEAD, 3 POST.
    seeds = {
        "script-for-mac": (0, b"/boot.ipxe?mac=52-54-00-12-34-56"),
        "script-local-disk": (0, b"/boot.ipxe?mac=52:54:00:00:00:02"),
        "script-chain": (0, b"/boot.ipxe"),
        "script-bad-mac": (0, b"/boot.ipxe?mac=zz&mac=52-54-00-12-34-56"),
        "script-mac-escaped": (0, b"/boot.ipxe?mac=52%2D54%2D00%2D12%2D34%2D56&x=%ff"),
        "kernel": (0, b"/boot/node/vmlinuz"),
        "kernel-head": (2, b"/boot/node/vmlinuz"),
        "kernel-range": (0, b"/boot/node/vmlinuz" + SEP + b"bytes=2-5"),
        "kernel-suffix-range": (0, b"/boot/node/initrd.img" + SEP + b"bytes=-4"),
        "empty-range": (0, b"/boot/empty" + SEP + b"bytes=0-"),
        "escaped-traversal": (0, b"/boot/%2e%2e/outside/secret"),
        "symlink-out": (0, b"/boot/leak"),
        "dir-out": (0, b"/boot/outdir/secret"),
        "metrics": (0, b"/metrics"),
        "post": (3, b"/boot.ipxe?mac=52-54-00-12-34-56"),
    }
    for name, (choice, data) in seeds.items():
        write("boot_query", name, bytes([choice]) + data)


TOKEN = "fuzz-join-token"


def inventory(uuid, serial):
    return {
        "system": {"uuid": uuid, "serial": serial, "vendor": "QEMU", "product": "Standard PC (Q35 + ICH9, 2009)"},
        "cpus": 4, "cpu_model": "QEMU Virtual CPU version 2.5+", "memory_bytes": 4294967296,
        "disks": [{"name": "vda", "size_bytes": 10737418240, "model": None, "rotational": False}],
        "nics": [{"name": "ens3", "mac": "52:54:00:12:34:56", "driver": "virtio_net", "speed_mbps": None,
                  "link": True}],
        "boot_mode": "uefi",
    }


def register(mac, uuid, serial="SN-FUZZ", nonce="0123456789abcdef0123", key_byte=b"\x01"):
    import base64
    return json.dumps({
        "token": TOKEN, "nonce": nonce, "boot_mac": mac,
        "wireguard_key": base64.b64encode(key_byte * 32).decode(), "agent_version": "0.1.0",
        "inventory": inventory(uuid, serial),
    }, indent=1).encode()


def register_seeds():
    # Choice byte: bit 0 heartbeat; (choice >> 1) % 3: 0 auto, 1 allowlist, 2 manual.
    write("register_body", "new-machine-auto", b"\x00" + register("52:54:00:12:34:56", "6f1c2e3a-1b2c-4d5e-8f90-a1b2c3d4e5f6"))
    write("register_body", "allowlisted-mac", b"\x02" + register("52:54:00:00:00:01", None))
    write("register_body", "manual", b"\x04" + register("52-54-00-aa-bb-cc", "00000000-0000-0000-0000-000000000000"))
    # Machine 1 again from its own MAC with a new key (a reboot), and from another MAC (a clone).
    write("register_body", "rekey", b"\x00" + register("52:54:00:00:01:01", "4c4c4544-0000-1000-8000-000000000001",
                                                        key_byte=b"\x09"))
    write("register_body", "duplicate", b"\x00" + register("52:54:00:00:09:09", "4c4c4544-0000-1000-8000-000000000001"))
    write("register_body", "replay", b"\x00" + register("52:54:00:00:01:04", "4c4c4544-0000-1000-8000-000000000004",
                                                         nonce="nonce-used-by-0000000004"))
    write("register_body", "wrong-token", b"\x00" + register("52:54:00:12:34:56", None).replace(TOKEN.encode(), b"nope"))
    heartbeat = {
        "phase": "linked", "uptime_secs": 120, "last_error": None, "applied_revision": 3, "rss_bytes": 4194304,
        "mesh_endpoint": "10.0.0.120:51821",
        "mesh": [{"key": "A" * 43 + "=", "handshake_age_secs": 4}, {"key": "B" * 43 + "=", "handshake_age_secs": None}],
        "services": [{"name": "etcd", "generation": 2, "state": "running", "restarts": 0, "message": None,
                      "volatile_data": False}],
        "data_disk": {"device": "/dev/vdb", "mounted": True, "formatted": False, "message": None},
    }
    write("register_body", "heartbeat", b"\x01" + json.dumps(heartbeat).encode())
    write("register_body", "heartbeat-old-agent", b"\x01" + json.dumps(
        {"phase": "registering", "uptime_secs": 3, "last_error": "no route", "applied_revision": 0}).encode())


def config_seeds():
    with open(os.path.join(FUZZ, "..", "docs", "oasis.toml"), "rb") as f:
        write("config_toml", "docs-oasis-toml", f.read())
    write("config_toml", "minimal-proxy", b'[network]\ninterface = "eth0"\naddress = "192.168.1.10"\n\n'
                                          b'[dhcp]\nmode = "proxy"\n')


if __name__ == "__main__":
    dhcp_seeds()
    tftp_seeds()
    boot_query_seeds()
    register_seeds()
    config_seeds()

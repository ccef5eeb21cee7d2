"""Remote mirroring with real packets: GRE and ERSPAN to an analyser, RSPAN across bridges.

The sandbox switch (userspace datapath) reaches a separate "analyser" network
namespace over its underlay bridge ``wan0``.  The step builds the tunnel
port and the mirror from the answers; vm1 sends ICMP echo requests to vm2; a
tcpdump in the analyser namespace (or on the far bridge's monitor port)
captures what arrives, and the frames are decoded here: outer IPv4 + GRE
(+ ERSPAN header) around a copy of vm1's ICMP.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import answers_file, hostsetup, running_host, vsctl

from sandbox import host
from sandbox.core import Sandbox, kill_group

VM1, VM2 = host.VM_ADDRESSES["vm1"], host.VM_ADDRESSES["vm2"]
# What a mirror of vm1 (sent and delivered) copies of a ping to vm2.
REQUEST, REPLY = (VM1, VM2, 8, None), (VM2, VM1, 0, None)

PING = r"""
import socket, struct, sys
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
payload = sys.argv[2].encode().ljust(16, b".")
for seq in range(3):
    head = struct.pack("!BBHHH", 8, 0, 0, 0x4853, seq)
    s.sendto(struct.pack("!BBHHH", 8, 0, csum(head + payload), 0x4853, seq) + payload,
             (sys.argv[1], 0))
"""


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox switch of its own: flows cached before a mirror exists stay out of it."""
    with running_host(tmp_path / "host") as sb:
        yield sb


def ping(sb: Sandbox, vm: str, to: str, mark: str) -> None:
    """Three ICMP echo requests carrying ``mark`` from ``vm``'s namespace."""
    subprocess.run(["ip", "netns", "exec", host.vm_ns(sb, vm), sys.executable,
                    "-c", PING, to, mark], check=True, timeout=10)


def capture(sb: Sandbox, netns: str, iface: str, pcap: Path, mark: str,
            bpf: str = "") -> list[bytes]:
    """tcpdump on ``iface`` in ``netns`` while vm1 pings vm2; the captured frames."""
    cmd = ["ip", "netns", "exec", netns, "tcpdump", "-i", iface, "-U", "-n", "-w", str(pcap)]
    proc = subprocess.Popen([*cmd, *bpf.split()], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        assert "listening on" in proc.stderr.readline(), "tcpdump did not start"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            ping(sb, "vm1", VM2, mark)
            time.sleep(0.5)
            frames = read_pcap(pcap)
            if sum(mark.encode() in f for f in frames) >= 3:
                return frames
        raise AssertionError(f"no copy of vm1's ICMP reached {iface}: {len(read_pcap(pcap))} "
                             "frame(s) captured")
    finally:
        kill_group(proc.pid, 5)
        proc.wait()


def read_pcap(path: Path) -> list[bytes]:
    """The frames of a pcap file (classic format, as tcpdump -w writes it)."""
    data = path.read_bytes() if path.exists() else b""
    frames, at = [], 24
    while at + 16 <= len(data):
        incl = struct.unpack("<I", data[at + 8:at + 12])[0]
        frames.append(data[at + 16:at + 16 + incl])
        at += 16 + incl
    return frames


def ipv4(packet: bytes) -> tuple[str, str, int, bytes]:
    """(source, destination, protocol, payload) of an IPv4 packet."""
    assert packet[0] >> 4 == 4, packet[:20].hex()
    head = (packet[0] & 0xF) * 4
    src, dst = (".".join(map(str, packet[i:i + 4])) for i in (12, 16))
    return src, dst, packet[9], packet[head:]


def inner_icmp(frame: bytes) -> tuple[str, str, int, int | None]:
    """An Ethernet frame's IPv4/ICMP: (source, destination, ICMP type, VLAN or None)."""
    ethertype, rest, vlan = struct.unpack("!H", frame[12:14])[0], frame[14:], None
    if ethertype == 0x8100:
        vlan = struct.unpack("!H", rest[:2])[0] & 0xFFF
        ethertype, rest = struct.unpack("!H", rest[2:4])[0], rest[4:]
    assert ethertype == 0x0800, hex(ethertype)
    src, dst, proto, icmp = ipv4(rest)
    assert proto == 1, proto
    return src, dst, icmp[0], vlan


def gre_copies(frames: list[bytes], mark: str) -> list[tuple[int, int | None, bytes]]:
    """The GRE packets (outer IPv4 underlay -> analyser) holding ``mark``:
    (GRE protocol, GRE key or None, what follows the GRE header)."""
    out = []
    for frame in frames:
        if struct.unpack("!H", frame[12:14])[0] != 0x0800 or mark.encode() not in frame:
            continue
        src, dst, proto, gre = ipv4(frame[14:])
        assert (src, dst, proto) == (host.UNDERLAY_IP, host.ANALYSER_IP, 47)
        flags, kind = struct.unpack("!HH", gre[:4])
        at, key = 4, None
        if flags & 0x8000:  # checksum present
            at += 4
        if flags & 0x2000:  # key present
            key = struct.unpack("!I", gre[at:at + 4])[0]
            at += 4
        if flags & 0x1000:  # sequence number present
            at += 4
        out.append((kind, key, gre[at:]))
    return out


def apply(sb: Sandbox, tmp_path: Path, ports: list[dict[str, Any]],
          mirrors: list[dict[str, Any]], bridges: list[dict[str, Any]] | None = None) -> None:
    path = answers_file(sb, tmp_path / "a.yaml", mirrors, ports=ports, bridges=bridges or [])
    res = hostsetup("apply", "--answers", path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert hostsetup("plan", "--answers", path).returncode == 0


def tunnel_mirror(port: str) -> dict[str, Any]:
    return {"name": f"to-{port}", "bridge": "br0", "select_src_port": ["vm1"],
            "select_dst_port": ["vm1"], "output_port": port}


def test_gre_mirror_carries_vm1_icmp_to_the_analyser(switch: Sandbox, tmp_path: Path) -> None:
    gre = {"name": "gre0", "bridge": "br0", "type": "gre", "key": 42,
           "remote_ip": switch.env["HOSTSETUP_OVS_ANALYSER_IP"]}
    apply(switch, tmp_path, [gre], [tunnel_mirror("gre0")])
    assert vsctl(switch, "get", "Interface", "gre0", "type") == "gre"
    frames = capture(switch, switch.env["HOSTSETUP_OVS_ANALYSER_NETNS"], "eth0",
                     tmp_path / "gre.pcap", "GREMARK", "ip proto 47")
    copies = gre_copies(frames, "GREMARK")
    assert {(kind, key) for kind, key, _ in copies} == {(0x6558, 42)}  # Ethernet, our key
    inner = [inner_icmp(frame) for _, _, frame in copies]
    assert set(inner) == {REQUEST, REPLY} and inner.count(REQUEST) >= 3


def test_erspan_v1_and_v2_mirrors(switch: Sandbox, tmp_path: Path) -> None:
    """ERSPAN works on this datapath (userspace): type II (v1) and type III (v2)."""
    remote = switch.env["HOSTSETUP_OVS_ANALYSER_IP"]
    v1 = {"name": "ers1", "bridge": "br0", "type": "erspan", "remote_ip": remote, "key": 7,
          "erspan_ver": 1, "erspan_idx": 0x1234}
    v2 = {"name": "ers2", "bridge": "br0", "type": "erspan", "remote_ip": remote, "key": 9,
          "erspan_ver": 2, "erspan_dir": 1, "erspan_hwid": 5}
    apply(switch, tmp_path, [v1, v2], [tunnel_mirror("ers1")])
    ana = switch.env["HOSTSETUP_OVS_ANALYSER_NETNS"]
    copies = gre_copies(capture(switch, ana, "eth0", tmp_path / "v1.pcap", "ERSONE",
                                "ip proto 47"), "ERSONE")
    assert copies
    for kind, _key, rest in copies:
        assert kind == 0x88BE  # ERSPAN type II
        word0, word1 = struct.unpack("!II", rest[:8])
        assert word0 >> 28 == 1 and word0 & 0x3FF == 7  # version 1, session ID = key
        assert word1 & 0xFFFFF == 0x1234  # the index
        assert inner_icmp(rest[8:]) in (REQUEST, REPLY)

    # The same mirror moved to the v2 port: one update, in place.
    apply(switch, tmp_path, [v1, v2], [tunnel_mirror("ers1") | {"output_port": "ers2"}])
    copies = gre_copies(capture(switch, ana, "eth0", tmp_path / "v2.pcap", "ERSTWO",
                                "ip proto 47"), "ERSTWO")
    assert copies
    for kind, _key, rest in copies:
        assert kind == 0x22EB  # ERSPAN type III
        word0, _timestamp, word2 = struct.unpack("!III", rest[:12])
        assert word0 >> 28 == 2 and word0 & 0x3FF == 9
        assert (word2 >> 4) & 0x3F == 5 and (word2 >> 3) & 1 == 1  # hwid, direction
        extra = 8 if word2 & 1 else 0  # the optional platform sub-header
        assert inner_icmp(rest[12 + extra:]) in (REQUEST, REPLY)


def test_rspan_copies_cross_on_the_vlan_to_the_far_monitor_port(
        switch: Sandbox, tmp_path: Path) -> None:
    """br0 sends vm1's traffic out on VLAN 999; a patch trunk carries it to br-far,
    which floods VLAN 999 and mirrors it to its monitor port (the write-up's far end)."""
    bridges = [{"name": "br-far", "datapath_type": "netdev", "flood_vlans": [999]}]
    ports = [{"name": "trunk-near", "bridge": "br0", "type": "patch", "peer": "trunk-far"},
             {"name": "trunk-far", "bridge": "br-far", "type": "patch", "peer": "trunk-near"},
             {"name": "mon-far", "bridge": "br-far", "type": "internal"},
             {"name": "acc-far", "bridge": "br-far", "type": "internal", "tag": 999}]
    mirrors = [{"name": "rspan-out", "bridge": "br0", "select_src_port": ["vm1"],
                "output_vlan": 999},
               {"name": "rspan-in", "bridge": "br-far", "select_all": True,
                "select_vlan": [999], "output_port": "mon-far"}]
    apply(switch, tmp_path, ports, mirrors, bridges)
    assert vsctl(switch, "get", "Bridge", "br-far", "flood_vlans") == "[999]"
    assert vsctl(switch, "get", "Bridge", "br0", "flood_vlans") == "[999]"
    sw = host.switch_ns(switch)
    subprocess.run(["ip", "-n", sw, "link", "set", "mon-far", "up"], check=True)
    frames = capture(switch, sw, "mon-far", tmp_path / "far.pcap", "RSPANMARK", "icmp or vlan")
    copies = [inner_icmp(f) for f in frames if b"RSPANMARK" in f]
    assert len(copies) >= 3
    assert set(copies) == {(VM1, VM2, 8, 999)}  # vm1's requests, still on the mirror VLAN
    # The other way to end an RSPAN: an access port on the mirror VLAN gets them untagged.
    subprocess.run(["ip", "-n", sw, "link", "set", "acc-far", "up"], check=True)
    frames = capture(switch, sw, "acc-far", tmp_path / "acc.pcap", "ACCESSMARK", "icmp")
    copies = [inner_icmp(f) for f in frames if b"ACCESSMARK" in f]
    assert len(copies) >= 3 and set(copies) == {REQUEST}

"""What the image's first boot leaves to every host (``sandbox/image.py``): Open
vSwitch's database with the switch, and libvirtd's QEMU capabilities, which a
host's libvirtd takes instead of probing QEMU again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import unit_state

from sandbox import host, image
from sandbox.core import Sandbox

CAPABILITIES = "var/cache/libvirt/qemu/capabilities"
DB = "var/lib/openvswitch/conf.db"


def system_id(db: Path) -> str:
    """``external_ids:system-id`` of the Open_vSwitch row, read from the file."""
    query = json.dumps(["Open_vSwitch", {"op": "select", "table": "Open_vSwitch",
                                         "where": [], "columns": ["external_ids"]}])
    out = subprocess.run(["ovsdb-tool", "query", str(db), query], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    pairs = json.loads(out)[0]["rows"][0]["external_ids"][1]
    return dict(pairs).get("system-id", "")


def test_libvirtd_takes_the_images_qemu_capabilities(dbus_host: Sandbox) -> None:
    root = Path(dbus_host.env["HOSTSETUP_HOST_ROOT"])
    host.run_inside(dbus_host, "start", "systemctl", "start", "libvirtd.service")
    domains = subprocess.run(["virsh", "-c", dbus_host.env["HOSTSETUP_LIBVIRT_URI"], "list",
                              "--all", "--name"], capture_output=True, text=True, check=True,
                             timeout=60).stdout.split()
    assert domains == ["vm1", "vm2"]  # libvirtd has read its domains: its QEMU driver is up
    cached = sorted((root / CAPABILITIES).iterdir())
    assert cached, "no QEMU capabilities in the host's cache"
    for path in cached:
        baked = image.root() / CAPABILITIES / path.name
        # A probe would have written the file again (a new mtime, in the host's overlay).
        assert path.stat().st_mtime_ns == baked.stat().st_mtime_ns, path.name
        assert path.read_bytes() == baked.read_bytes()


def test_open_vswitch_finds_the_switch_and_makes_its_own_identity(dbus_host: Sandbox) -> None:
    host.run_inside(dbus_host, "start", "systemctl", "start", "openvswitch-switch.service")
    assert unit_state(dbus_host, "ovs-vswitchd.service") == "active"
    bridges = host.run_inside(dbus_host, "list-br", "ovs-vsctl", "list-br").split()
    assert bridges == ["br0", "wan0"]
    ports = host.run_inside(dbus_host, "list-ports", "ovs-vsctl", "list-ports", "br0").split()
    assert ports == ["mon0", "vm1", "vm2"]
    mine = host.run_inside(dbus_host, "system-id", "ovs-vsctl", "get", "Open_vSwitch", ".",
                           "external_ids:system-id").strip().strip('"')
    assert mine and mine != system_id(image.root() / DB)  # not the image's: one per host

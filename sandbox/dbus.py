"""Sandbox component: a private system bus with systemd and NetworkManager mocks.

A real ``dbus-daemon`` (system-bus policy, own socket under DIR) serves
python-dbusmock's systemd template (extended by ``templates/systemd_units``)
and its NetworkManager template, populated with the units and devices of a
typical virtualization host, some of them inactive.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sandbox.core import Sandbox, wait_for

# name -> active state; the inactive ones are what `plan` proposes to start.
UNITS = {
    "dbus.service": "active",
    "NetworkManager.service": "active",
    "ovsdb-server.service": "active",
    "ovs-vswitchd.service": "inactive",
    "openvswitch-switch.service": "inactive",
    "libvirtd.service": "inactive",
    "redis-server.service": "active",
    "ssh.service": "active",
}
DEVICES = [("eth0", 100), ("eth1", 30)]  # (interface, NM device state)

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


def has_name(address: str, name: str) -> bool:
    """True when ``name`` is owned on the bus at ``address``."""
    res = subprocess.run(
        ["busctl", "--address", address, "list", "--no-pager", "--no-legend"],
        capture_output=True,
        text=True,
    )
    return res.returncode == 0 and any(line.split()[0] == name for line in res.stdout.splitlines())


def up(sb: Sandbox, failing: list[str] | None = None) -> None:
    """Start the bus and the two mocks; export ``HOSTSETUP_DBUS_ADDRESS``.

    Units named in ``failing`` fail to start (their job ends 'failed').
    """
    socket = sb.path("dbus", "system_bus_socket")
    config = sb.path("dbus", "system.conf")
    config.write_text(BUS_CONFIG.format(socket=socket))
    address = f"unix:path={socket}"
    sb.spawn(
        "dbus-daemon",
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile"],
        ready=lambda: Path(socket).exists(),
    )
    env = {"DBUS_SYSTEM_BUS_ADDRESS": address}
    template = Path(__file__).parent / "templates" / "systemd_units.py"
    params = {"units": {n: {"active": a} for n, a in UNITS.items()}, "failing": failing or []}
    mocks = [
        ("org.freedesktop.systemd1", str(template), params),
        ("org.freedesktop.NetworkManager", "networkmanager", {}),
    ]
    for bus_name, tmpl, parameters in mocks:
        sb.spawn(
            f"dbusmock-{bus_name.rsplit('.', 1)[1]}",
            [sys.executable, "-m", "dbusmock", "--system", "--template", tmpl,
             "--parameters", json.dumps(parameters)],
            env=env,
            ready=lambda n=bus_name: has_name(address, n),  # type: ignore[misc]
        )
    for iface, state in DEVICES:
        sb.run(
            "add NetworkManager device",
            ["busctl", "--address", address, "call", "org.freedesktop.NetworkManager",
             "/org/freedesktop/NetworkManager", "org.freedesktop.DBus.Mock",
             "AddEthernetDevice", "ssi", f"mock_{iface}", iface, str(state)],
        )
    wait_for(lambda: has_name(address, "org.freedesktop.NetworkManager"), 10, "NetworkManager mock")
    sb.export("HOSTSETUP_DBUS_ADDRESS", address)
    sb.set_answers(
        "services",
        {
            "bus": address,
            "require": [n for n in UNITS if n not in ("dbus.service", "ssh.service")],
            "start": True,
        },
    )

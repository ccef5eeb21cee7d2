"""Sandbox component: ovsdb-server and ovs-vswitchd (userspace datapath) with a bridge.

ovsdb-server serves a fresh database (from the installed ``vswitch.ovsschema``)
on a unix socket under DIR.  ovs-vswitchd runs in a network namespace of its
own (``<tag>-<digest of DIR>-sw``), so the tap devices the userspace datapath makes
(``ovs-netdev``, ``br0``) cannot collide with another sandbox's or the
host's.  The bridge ``br0`` (``datapath_type=netdev``) has three veth ports:
``vm1`` and ``vm2``, whose peers are the ``eth0`` of two "VM" namespaces
(``<tag>-<digest>-vm1`` and ``-vm2``, addresses from :data:`VM_ADDRESSES`), and
``mon0``, a monitoring port whose peer ``mon0c`` (in the switch namespace) is
where mirrored traffic can be captured.

A remote "analyser" host for tunnelled mirrors: the namespace
``<tag>-<digest>-ana`` whose ``eth0`` has :data:`ANALYSER_IP`, reached from the
switch over the underlay bridge ``wan0`` (port ``wan-ana``, the veth's other
end; the bridge's local port has :data:`UNDERLAY_IP`).  The userspace datapath
routes and resolves tunnel endpoints itself, so the route and the analyser's
MAC are given to ovs-vswitchd (``ovs/route/add``, ``tnl/neigh/set``), as the
kernel's tables would be on a real host.  A GRE or ERSPAN port on br0 with
``remote_ip`` = :data:`ANALYSER_IP` then carries mirrored copies there.

Exports ``HOSTSETUP_OVSDB`` (for ``ovs-vsctl --db``), ``HOSTSETUP_OVS_CTL``
(for ``ovs-appctl -t``), ``HOSTSETUP_OVS_NETNS``, ``HOSTSETUP_OVS_ANALYSER_NETNS``
and ``HOSTSETUP_OVS_ANALYSER_IP``; ``down`` deletes the namespaces and with
them every device made here.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from wizard.sandbox.core import Sandbox, SandboxError

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
BRIDGE = "br0"
VMS = ("vm1", "vm2")  # bridge port names; each peer is eth0 in namespace <tag><vm>
MONITOR = "mon0"  # the mirror output port; capture on its peer CAPTURE
CAPTURE = "mon0c"
VM_ADDRESSES = {"vm1": "10.250.0.1", "vm2": "10.250.0.2"}
# The bridge towards the analyser and its port there; named to sort after br0 and
# the VM ports, so that pickers keep their order.
UNDERLAY = "wan0"
ANALYSER_PORT = "wan-ana"
UNDERLAY_IP = "10.251.0.1"  # the switch's address on wan0
ANALYSER_IP = "10.251.0.2"  # the analyser's eth0


@dataclass(frozen=True)
class OvsLayout:
    """Where one sandbox's Open vSwitch lives: sockets and namespaces."""

    dir: Path
    tag: str

    @property
    def db_socket(self) -> Path:
        return self.dir / "db.sock"

    @property
    def remote(self) -> str:
        return f"unix:{self.db_socket}"

    @property
    def db_file(self) -> Path:
        return self.dir / "conf.db"

    @property
    def vswitchd_ctl(self) -> Path:
        return self.dir / "ovs-vswitchd.ctl"

    @property
    def made_file(self) -> Path:
        return self.dir / "namespaces"

    @property
    def prefix(self) -> str:
        # The tag for people, plus a digest of DIR: sandboxes started with the
        # same tag (e.g. the default) in different dirs still do not collide.
        return f"{self.tag}-{hashlib.sha1(str(self.dir).encode()).hexdigest()[:6]}"

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    def vm_ns(self, vm: str) -> str:
        """The namespace holding ``vm``'s end of its veth (as ``eth0``)."""
        return f"{self.prefix}-{vm}"

    @property
    def analyser_ns(self) -> str:
        """The remote analyser's namespace (receives tunnelled mirror copies)."""
        return f"{self.prefix}-ana"

    @property
    def namespaces(self) -> list[str]:
        return [self.switch_ns, *(self.vm_ns(vm) for vm in VMS), self.analyser_ns]


def layout(sb: Sandbox) -> OvsLayout:
    """The layout of ``sb``'s switch."""
    return OvsLayout(sb.path("ovs", "conf.db").parent, sb.tag)


def _env(lay: OvsLayout) -> dict[str, str]:
    # Keep every default path (pidfiles, bridge mgmt sockets) under DIR.
    return {k: str(lay.dir) for k in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR")}


def start_ovsdb(sb: Sandbox) -> None:
    """Start ovsdb-server on the sandbox's database (also to restart it in tests)."""
    lay = layout(sb)
    lay.db_socket.unlink(missing_ok=True)
    sb.spawn(
        "ovsdb-server",
        ["ovsdb-server", str(lay.db_file), f"--remote=punix:{lay.db_socket}",
         f"--unixctl={lay.dir / 'ovsdb-server.ctl'}", "--no-chdir"],
        env=_env(lay),
        ready=lay.db_socket.exists,
    )


def vsctl(lay: OvsLayout, *args: str) -> list[str]:
    """An ``ovs-vsctl`` command line aimed at the sandbox's database."""
    return ["ovs-vsctl", f"--db={lay.remote}", "--timeout=20", *args]


def up(sb: Sandbox) -> None:
    """Start ovsdb-server and ovs-vswitchd, make br0 and its ports; add a mirror answer."""
    lay = layout(sb)
    # Another sandbox host may be using this tag: never take its namespaces.
    taken = sorted(set(lay.namespaces) & _existing_namespaces())
    if taken:
        raise SandboxError(
            f"network namespace(s) {', '.join(taken)} exist: a sandbox with tag '{sb.tag}' "
            "is running (or was not taken down: 'ip netns delete NAME' removes a leftover)")
    lay.db_file.unlink(missing_ok=True)
    sb.run("ovsdb-tool create", ["ovsdb-tool", "create", str(lay.db_file), SCHEMA])
    start_ovsdb(sb)
    sb.run("ovs-vsctl init", vsctl(lay, "--no-wait", "init"))
    for ns in lay.namespaces:
        sb.run("ip netns add", ["ip", "netns", "add", ns])
        with open(lay.made_file, "a") as made:  # what down() may delete, and only that
            made.write(ns + "\n")
    sb.spawn(
        "ovs-vswitchd",
        ["ip", "netns", "exec", lay.switch_ns, "ovs-vswitchd", lay.remote,
         f"--unixctl={lay.vswitchd_ctl}", "--no-chdir",
         # Userspace datapath only: never touch the host's kernel datapath or routes.
         "--disable-system", "--disable-system-route"],
        env=_env(lay),
        ready=lay.vswitchd_ctl.exists,
    )
    sw = lay.switch_ns
    for vm in VMS:
        ns = lay.vm_ns(vm)
        sb.run("ip link add", ["ip", "link", "add", vm, "netns", sw, "type", "veth",
                               "peer", "name", "eth0", "netns", ns])
        sb.run("ip addr add", ["ip", "-n", ns, "addr", "add", f"{VM_ADDRESSES[vm]}/24",
                               "dev", "eth0"])
        for dev in ("lo", "eth0"):
            sb.run("ip link set up", ["ip", "-n", ns, "link", "set", dev, "up"])
    sb.run("ip link add", ["ip", "link", "add", MONITOR, "netns", sw, "type", "veth",
                           "peer", "name", CAPTURE, "netns", sw])
    for dev in (*VMS, MONITOR, CAPTURE):
        sb.run("ip link set up", ["ip", "-n", sw, "link", "set", dev, "up"])
    # ovs-vsctl waits for ovs-vswitchd to take the bridge and its ports: readiness.
    ports = [a for p in (*VMS, MONITOR) for a in ("--", "add-port", BRIDGE, p)]
    sb.run("ovs-vsctl add-br", vsctl(lay, "add-br", BRIDGE, "--", "set", "bridge", BRIDGE,
                                     "datapath_type=netdev", *ports))
    _analyser(sb, lay)
    sb.export("HOSTSETUP_OVSDB", lay.remote)
    sb.export("HOSTSETUP_OVS_CTL", str(lay.vswitchd_ctl))
    sb.export("HOSTSETUP_OVS_NETNS", sw)
    sb.set_answers("ovs_mirror", {
        "db": lay.remote,
        "vswitchd_ctl": str(lay.vswitchd_ctl),
        "prune": True,
        "mirrors": [{
            "name": "span-vm1",
            "bridge": BRIDGE,
            "select_src_port": ["vm1"],
            "select_dst_port": ["vm1"],
            "output_port": MONITOR,
        }],
    })


def _analyser(sb: Sandbox, lay: OvsLayout) -> None:
    """The analyser namespace behind the underlay bridge wan0, routed for tunnels."""
    sw, ana = lay.switch_ns, lay.analyser_ns
    sb.run("ip link add", ["ip", "link", "add", ANALYSER_PORT, "netns", sw, "type", "veth",
                           "peer", "name", "eth0", "netns", ana])
    sb.run("ip addr add", ["ip", "-n", ana, "addr", "add", f"{ANALYSER_IP}/24", "dev", "eth0"])
    for ns, dev in ((ana, "lo"), (ana, "eth0"), (sw, ANALYSER_PORT)):
        sb.run("ip link set up", ["ip", "-n", ns, "link", "set", dev, "up"])
    sb.run("ovs-vsctl add-br", vsctl(lay, "add-br", UNDERLAY, "--", "set", "bridge", UNDERLAY,
                                     "datapath_type=netdev", "--", "add-port", UNDERLAY,
                                     ANALYSER_PORT))
    sb.run("ip addr add", ["ip", "-n", sw, "addr", "add", f"{UNDERLAY_IP}/24", "dev", UNDERLAY])
    sb.run("ip link set up", ["ip", "-n", sw, "link", "set", UNDERLAY, "up"])
    mac = sb.run("ip link show", ["ip", "-n", ana, "-br", "link", "show", "eth0"]).split()[2]
    appctl = ["ovs-appctl", "-t", str(lay.vswitchd_ctl)]
    sb.run("ovs/route/add", [*appctl, "ovs/route/add", f"{ANALYSER_IP}/32", UNDERLAY])
    sb.run("tnl/neigh/set", [*appctl, "tnl/neigh/set", UNDERLAY, ANALYSER_IP, mac])
    sb.export("HOSTSETUP_OVS_ANALYSER_NETNS", ana)
    sb.export("HOSTSETUP_OVS_ANALYSER_IP", ANALYSER_IP)


def _existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def remove_namespaces(lay: OvsLayout) -> None:
    """Delete the namespaces this sandbox made (their veths and taps go with them).

    Only those recorded by ``up``: a failed ``up`` (e.g. the tag is in use)
    must not take another sandbox's namespaces.
    """
    try:
        made = lay.made_file.read_text().split()
    except FileNotFoundError:
        return
    existing = _existing_namespaces()
    for ns in made:
        if ns in existing:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    lay.made_file.unlink()


def down(sb: Sandbox) -> None:
    """Remove the host-visible things ``up`` made: the network namespaces."""
    remove_namespaces(layout(sb))

"""What the ``vsphere_network`` step may know of vSphere: the protocol and value types.

No pyVmomi here: the values are plain frozen dataclasses read from one bulk
inventory (hosts with their standard vSwitches, port groups and physical NICs;
VMs with their network adapters; vCenter's distributed switches with their
port groups, PVLAN maps and port mirroring sessions).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Protocol, TypeVar, cast

from backends.interfaces import Backends


@dataclass(frozen=True)
class VSphereConn:
    """Where and how to log in.  ``password`` is the resolved secret: never in repr."""

    server: str
    port: int = 443
    user: str = "root"
    password: str = field(default="", repr=False)
    # SHA-256 of the server's certificate (hex, colons allowed): pins it.
    thumbprint: str | None = None
    ca_file: str | None = None
    insecure: bool = False

    @property
    def address(self) -> str:
        """``server:port``, for messages."""
        return f"{self.server}:{self.port}"


@dataclass(frozen=True)
class Security:
    """A port group's security policy; ``None`` = not set (inherited from the vSwitch)."""

    allow_promiscuous: bool | None = None
    forged_transmits: bool | None = None
    mac_changes: bool | None = None


@dataclass(frozen=True)
class Teaming:
    """NIC teaming and failover; ``None`` = not set (a port group inherits it).

    ``load_balancing`` is ESXi's policy name (loadbalance_srcid, loadbalance_ip,
    loadbalance_srcmac, failover_explicit); ``failback`` is ESXi's
    ``rollingOrder`` negated; ``failure_detection`` is ``link`` or ``beacon``.
    """

    load_balancing: str | None = None
    active_nics: tuple[str, ...] | None = None
    standby_nics: tuple[str, ...] | None = None
    notify_switches: bool | None = None
    failback: bool | None = None
    failure_detection: str | None = None


@dataclass(frozen=True)
class Shaping:
    """Outbound traffic shaping in the vSphere client's units (kbit/s, KB);
    ``None`` = not set (a port group inherits it)."""

    enabled: bool | None = None
    average_kbps: int | None = None
    peak_kbps: int | None = None
    burst_kb: int | None = None


P = TypeVar("P", Security, Teaming, Shaping)


def overlay(base: P, top: P) -> P:
    """``base`` with every field that ``top`` sets (not ``None``)."""
    return replace(base, **{f.name: getattr(top, f.name) for f in fields(top)
                            if getattr(top, f.name) is not None})


@dataclass(frozen=True)
class PhysicalNic:
    """A host's physical NIC (``vmnic0``) and the standard or distributed switch
    using it, if any."""

    device: str
    vswitch: str | None = None
    dvswitch: str | None = None


@dataclass(frozen=True)
class VSwitch:
    """A standard vSwitch as configured: ports, MTU, uplink NICs, its port groups
    and its policy (what its port groups inherit)."""

    name: str
    num_ports: int
    mtu: int
    nics: tuple[str, ...] = ()
    portgroups: tuple[str, ...] = ()
    security: Security = Security()
    teaming: Teaming = Teaming()
    shaping: Shaping = Shaping()


@dataclass(frozen=True)
class PortGroup:
    """A standard port group; the policies are the effective (computed) ones."""

    name: str
    vswitch: str
    vlan: int
    security: Security = Security()
    teaming: Teaming = Teaming()
    shaping: Shaping = Shaping()


# The services a VMkernel adapter can carry, as the answers name them.
VMK_SERVICES = ("management", "vmotion", "vsan", "provisioning", "ft", "replication")


@dataclass(frozen=True)
class Vmk:
    """A VMkernel adapter on a port group: its IPv4 (``address`` is the current
    one, DHCP-assigned when ``dhcp``), MTU and services (VMK_SERVICES words).
    ``dvswitch`` is set when ``portgroup`` is a distributed port group of it."""

    device: str
    portgroup: str
    dhcp: bool
    address: str | None = None
    netmask: str | None = None
    mtu: int = 1500
    services: tuple[str, ...] = ()
    dvswitch: str | None = None


@dataclass(frozen=True)
class VmkSpec:
    """What a VMkernel adapter should be: ``address``/``netmask`` ``None`` = DHCP;
    ``dvswitch`` set: ``portgroup`` is a distributed port group of that switch."""

    portgroup: str
    address: str | None = None
    netmask: str | None = None
    mtu: int = 1500
    services: tuple[str, ...] = ()
    dvswitch: str | None = None


@dataclass(frozen=True)
class Host:
    """An ESXi host with its standard networking and VMkernel adapters."""

    name: str
    cluster: str | None
    vswitches: tuple[VSwitch, ...] = ()
    portgroups: tuple[PortGroup, ...] = ()
    pnics: tuple[PhysicalNic, ...] = ()
    vmks: tuple[Vmk, ...] = ()
    datacenter: str | None = None

    def vmk(self, device: str) -> Vmk | None:
        """The VMkernel adapter called ``device`` (vmk1), if the host has it."""
        return next((v for v in self.vmks if v.device == device), None)

    def vmk_on(self, portgroup: str, dvswitch: str | None = None) -> Vmk | None:
        """The VMkernel adapter on a port group (standard, or distributed of
        ``dvswitch``); the step keeps at most one per port group and host."""
        return next((v for v in self.vmks
                     if v.portgroup == portgroup and v.dvswitch == dvswitch), None)

    def pnic(self, device: str) -> PhysicalNic | None:
        """The physical NIC called ``device``, if the host has it."""
        return next((n for n in self.pnics if n.device == device), None)

    def vswitch(self, name: str) -> VSwitch | None:
        """The vSwitch called ``name``, if the host has it."""
        return next((v for v in self.vswitches if v.name == name), None)

    def portgroup(self, name: str) -> PortGroup | None:
        """The port group called ``name``, if the host has it."""
        return next((p for p in self.portgroups if p.name == name), None)


@dataclass(frozen=True)
class Adapter:
    """A VM network adapter: its label ("Network adapter 1") and network name;
    on a distributed port group also its switch and port key."""

    label: str
    key: int
    network: str | None
    mac: str = ""
    dvswitch: str | None = None
    port: str | None = None


@dataclass(frozen=True)
class VM:
    """A virtual machine, the host it runs on and its network adapters (those two
    only when the inventory was asked for this VM's details)."""

    name: str
    host: str | None
    adapters: tuple[Adapter, ...] = ()

    def adapter(self, label: str) -> Adapter | None:
        """The adapter labelled ``label``, if the VM has it."""
        return next((a for a in self.adapters if a.label == label), None)


@dataclass(frozen=True)
class DvsMember:
    """A host joined to a distributed switch and its NICs, in uplink order."""

    host: str
    nics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pvlan:
    """A PVLAN map entry: ``type`` promiscuous (secondary = primary), isolated or
    community."""

    primary: int
    secondary: int
    type: str


@dataclass(frozen=True)
class MirrorPort:
    """A port mirroring endpoint: a distributed port by key, a VM adapter (its
    port, looked up when the session is written), an uplink or an IP address."""

    port: str | None = None
    vm: str | None = None
    adapter: str | None = None
    uplink: str | None = None
    ip: str | None = None


# Port mirroring session kinds, as the answers name them -> vSphere's sessionType.
MIRROR_KINDS = {"span": "dvPortMirror", "rspan_source": "remoteMirrorSource",
                "rspan_destination": "remoteMirrorDest",
                "erspan": "encapsulatedRemoteMirrorSource"}


@dataclass(frozen=True)
class MirrorSession:
    """A port mirroring (VSPAN) session of a distributed switch, as read (ports
    by key, ``key`` the session's) or as it should be (``key`` empty).

    ``transmitted``/``received`` are the mirrored sources by direction,
    ``source_vlans`` those of an RSPAN destination; ``destination`` ports,
    an uplink (RSPAN source) or IP addresses (ERSPAN)."""

    name: str
    kind: str  # a MIRROR_KINDS key
    enabled: bool = True
    transmitted: tuple[MirrorPort, ...] = ()
    received: tuple[MirrorPort, ...] = ()
    source_vlans: tuple[int, ...] = ()
    destination: tuple[MirrorPort, ...] = ()
    encapsulation_vlan: int | None = None
    strip_vlan: bool = False
    key: str = ""


@dataclass(frozen=True)
class DVSwitch:
    """A distributed switch (vCenter), as read or as it should be.

    ``hosts`` are its members with their NICs, ``uplinks`` the uplink names
    (what a port group's teaming orders), ``pvlans`` its PVLAN map.  As a
    spec, ``hosts`` and ``pvlans`` are exact, ``version`` ``None`` is vCenter's
    default, and ``uuid`` and ``mirrors`` are ignored."""

    name: str
    datacenter: str
    version: str | None = None
    uplinks: tuple[str, ...] = ()
    mtu: int = 1500
    hosts: tuple[DvsMember, ...] = ()
    pvlans: tuple[Pvlan, ...] = ()
    mirrors: tuple[MirrorSession, ...] = ()
    uuid: str = ""

    def member(self, host: str) -> DvsMember | None:
        """The member entry of ``host``, if it is joined."""
        return next((m for m in self.hosts if m.host == host), None)

    def mirror(self, name: str) -> MirrorSession | None:
        """The mirror session called ``name``, if any."""
        return next((m for m in self.mirrors if m.name == name), None)


@dataclass(frozen=True)
class DVPortgroup:
    """A distributed port group, as read (effective policies) or as it should be
    (policy fields ``None``: inherited from the switch when created, unchanged
    when updated).

    The VLAN is one of ``vlan`` (an ID, 0 = none), ``trunk`` (ranges) or
    ``pvlan`` (a secondary PVLAN ID); ``binding`` is static or ephemeral;
    ``teaming`` orders the switch's uplink names."""

    name: str
    dvswitch: str
    vlan: int | None = 0
    trunk: tuple[tuple[int, int], ...] | None = None
    pvlan: int | None = None
    ports: int = 8
    binding: str = "static"
    security: Security = Security()
    teaming: Teaming = Teaming()
    shaping: Shaping = Shaping()
    port_keys: tuple[str, ...] = ()
    vms: tuple[str, ...] = ()  # the VMs connected to it (as read)


@dataclass(frozen=True)
class Inventory:
    """Everything the step reads, fetched in one bulk retrieval."""

    kind: str  # "esx" (a host agent) or "vcenter"
    hosts: tuple[Host, ...] = ()
    vms: tuple[VM, ...] = ()
    dvswitches: tuple[DVSwitch, ...] = ()
    dvportgroups: tuple[DVPortgroup, ...] = ()
    datacenters: tuple[str, ...] = ()

    def host(self, name: str) -> Host | None:
        """The host called ``name``, if any."""
        return next((h for h in self.hosts if h.name == name), None)

    def vm(self, name: str) -> VM | None:
        """The VM called ``name``, if any."""
        return next((v for v in self.vms if v.name == name), None)

    def dvswitch(self, name: str) -> DVSwitch | None:
        """The distributed switch called ``name``, if any."""
        return next((d for d in self.dvswitches if d.name == name), None)

    def dvportgroup(self, name: str) -> DVPortgroup | None:
        """The distributed port group called ``name``, if any."""
        return next((p for p in self.dvportgroups if p.name == name), None)


@dataclass(frozen=True)
class VSwitchSpec:
    """What a vSwitch should be; policy fields left ``None`` keep their value
    (ESXi's default on a new vSwitch)."""

    name: str
    num_ports: int
    mtu: int
    nics: tuple[str, ...] = ()
    security: Security = Security()
    teaming: Teaming = Teaming()
    shaping: Shaping = Shaping()


@dataclass(frozen=True)
class PortGroupSpec:
    """What a port group should be; policy fields left ``None`` are inherited
    from the vSwitch on creation and keep their value on update."""

    name: str
    vswitch: str
    vlan: int = 0
    security: Security = Security()
    teaming: Teaming = Teaming()
    shaping: Shaping = Shaping()


class VSphereAPI(Protocol):
    """A logged-in vSphere session (ESXi or vCenter)."""

    @property
    def round_trips(self) -> int:
        """SOAP requests sent since login (for benchmarks and tests)."""
        ...

    def about(self) -> str:
        """The server's product and version as it names itself (``about.fullName``),
        read at login: no round trip."""
        ...

    def current_time(self) -> datetime:
        """The server's clock (``ServiceInstance.CurrentTime``), time-zone aware."""
        ...

    def inventory(self, vms: Collection[str] | None = None) -> Inventory:
        """Hosts, vSwitches, port groups, NICs and every VM's name, in bulk; the host
        and network adapters only of the VMs named in ``vms`` (of all VMs for ``None``;
        the others have ``host=None`` and no adapters)."""
        ...

    def add_vswitch(self, host: str, spec: VSwitchSpec) -> None:
        """Create a standard vSwitch on ``host``."""
        ...

    def update_vswitch(self, host: str, name: str, spec: VSwitchSpec) -> None:
        """Change a vSwitch's ports, MTU, uplinks and the policy fields ``spec`` sets
        in place."""
        ...

    def remove_vswitch(self, host: str, name: str) -> None:
        """Remove a vSwitch (and the port groups on it)."""
        ...

    def add_portgroup(self, host: str, spec: PortGroupSpec) -> None:
        """Create a port group on ``host``."""
        ...

    def update_portgroup(self, host: str, name: str, spec: PortGroupSpec) -> None:
        """Change a port group's vSwitch, VLAN and the policy overrides ``spec`` sets
        in place (the overrides it leaves ``None`` are kept)."""
        ...

    def remove_portgroup(self, host: str, name: str) -> None:
        """Remove a port group from ``host``."""
        ...

    def add_vmk(self, host: str, spec: VmkSpec) -> None:
        """Create a VMkernel adapter on a standard or distributed port group and
        select it for its services (all or nothing: the adapter is removed again
        if a selection fails)."""
        ...

    def update_vmk(self, host: str, portgroup: str, spec: VmkSpec,
                   dvswitch: str | None = None) -> None:
        """Change the VMkernel adapter on ``portgroup`` (distributed, of ``dvswitch``,
        when given): port group (a move), IP, MTU, and its services to exactly
        ``spec.services``."""
        ...

    def remove_vmk(self, host: str, portgroup: str, dvswitch: str | None = None) -> None:
        """Remove the VMkernel adapter on ``portgroup`` (distributed, of ``dvswitch``,
        when given) and its service selections."""
        ...

    def move_adapter(
        self, vm: str, adapter: str, portgroup: str, distributed: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Attach a VM's adapter to a standard port group of its host, or a
        distributed port group (a reconfigure task, waited on)."""
        ...

    def add_dvswitch(self, spec: DVSwitch) -> None:
        """Create a distributed switch in its datacenter with its uplinks, MTU,
        PVLAN map and host members (a task, waited on)."""
        ...

    def update_dvswitch(self, name: str, spec: DVSwitch) -> None:
        """Make a switch's uplinks, MTU, PVLAN map and members (with their NICs)
        exactly ``spec``'s; its mirror sessions and port groups stay."""
        ...

    def remove_dvswitch(self, name: str) -> None:
        """Destroy a distributed switch (with its port groups; hosts leave it)."""
        ...

    def add_dvportgroup(self, spec: DVPortgroup) -> None:
        """Create a distributed port group."""
        ...

    def update_dvportgroup(self, name: str, spec: DVPortgroup) -> None:
        """Change a distributed port group's VLAN, ports, binding and the policy
        fields ``spec`` sets (the others are kept)."""
        ...

    def remove_dvportgroup(self, name: str) -> None:
        """Destroy a distributed port group."""
        ...

    def add_mirror(self, dvswitch: str, spec: MirrorSession) -> None:
        """Add a port mirroring session to a switch (VM adapter endpoints are
        looked up to their ports now)."""
        ...

    def update_mirror(self, dvswitch: str, name: str, spec: MirrorSession) -> None:
        """Replace a switch's mirroring session ``name`` with ``spec``."""
        ...

    def remove_mirror(self, dvswitch: str, name: str) -> None:
        """Remove a switch's mirroring session."""
        ...

    def close(self) -> None:
        """Log out; safe to call twice."""
        ...

# The bundle's table names this interface's adapter under KIND (backends/bundle.py).
KIND = "vsphere"


def vsphere_api(backends: Backends, conn: VSphereConn) -> VSphereAPI:
    """A logged-in vSphere session (logged out when the bundle closes)."""
    return cast(VSphereAPI, backends.get(KIND, conn))

"""What the ``vsphere_network`` step may know of vSphere: the protocol and value types.

No pyVmomi here: the values are plain frozen dataclasses read from one bulk
inventory (hosts with their standard vSwitches, port groups and physical NICs;
VMs with their network adapters).
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
    """A host's physical NIC (``vmnic0``) and the vSwitch using it, if any."""

    device: str
    vswitch: str | None = None


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
    """A VMkernel adapter on a standard port group: its IPv4 (``address`` is the
    current one, DHCP-assigned when ``dhcp``), MTU and services (VMK_SERVICES words)."""

    device: str
    portgroup: str
    dhcp: bool
    address: str | None = None
    netmask: str | None = None
    mtu: int = 1500
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class VmkSpec:
    """What a VMkernel adapter should be: ``address``/``netmask`` ``None`` = DHCP."""

    portgroup: str
    address: str | None = None
    netmask: str | None = None
    mtu: int = 1500
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class Host:
    """An ESXi host with its standard networking and VMkernel adapters."""

    name: str
    cluster: str | None
    vswitches: tuple[VSwitch, ...] = ()
    portgroups: tuple[PortGroup, ...] = ()
    pnics: tuple[PhysicalNic, ...] = ()
    vmks: tuple[Vmk, ...] = ()

    def vmk(self, device: str) -> Vmk | None:
        """The VMkernel adapter called ``device`` (vmk1), if the host has it."""
        return next((v for v in self.vmks if v.device == device), None)

    def vmk_on(self, portgroup: str) -> Vmk | None:
        """The VMkernel adapter on a port group (a standard one has at most one)."""
        return next((v for v in self.vmks if v.portgroup == portgroup), None)

    def vswitch(self, name: str) -> VSwitch | None:
        """The vSwitch called ``name``, if the host has it."""
        return next((v for v in self.vswitches if v.name == name), None)

    def portgroup(self, name: str) -> PortGroup | None:
        """The port group called ``name``, if the host has it."""
        return next((p for p in self.portgroups if p.name == name), None)


@dataclass(frozen=True)
class Adapter:
    """A VM network adapter: its label ("Network adapter 1") and network name."""

    label: str
    key: int
    network: str | None
    mac: str = ""


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
class Inventory:
    """Everything the step reads, fetched in one bulk retrieval."""

    kind: str  # "esx" (a host agent) or "vcenter"
    hosts: tuple[Host, ...] = ()
    vms: tuple[VM, ...] = ()

    def host(self, name: str) -> Host | None:
        """The host called ``name``, if any."""
        return next((h for h in self.hosts if h.name == name), None)

    def vm(self, name: str) -> VM | None:
        """The VM called ``name``, if any."""
        return next((v for v in self.vms if v.name == name), None)


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
        """Create a VMkernel adapter on a standard port group and select it for its
        services (all or nothing: the adapter is removed again if a selection fails)."""
        ...

    def update_vmk(self, host: str, portgroup: str, spec: VmkSpec) -> None:
        """Change the VMkernel adapter on ``portgroup``: port group (a move), IP,
        MTU, and its services to exactly ``spec.services``."""
        ...

    def remove_vmk(self, host: str, portgroup: str) -> None:
        """Remove the VMkernel adapter on ``portgroup`` (and its service selections)."""
        ...

    def move_adapter(
        self, vm: str, adapter: str, portgroup: str,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        """Attach a VM's adapter to a port group (a reconfigure task, waited on)."""
        ...

    def close(self) -> None:
        """Log out; safe to call twice."""
        ...

# The bundle's table names this interface's adapter under KIND (backends/bundle.py).
KIND = "vsphere"


def vsphere_api(backends: Backends, conn: VSphereConn) -> VSphereAPI:
    """A logged-in vSphere session (logged out when the bundle closes)."""
    return cast(VSphereAPI, backends.get(KIND, conn))

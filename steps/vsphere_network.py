"""Step ``vsphere_network``: standard and distributed switches, port groups, adapters.

On every selected ESXi host (all, those of a cluster, or named ones) the
answered vSwitches (ports, MTU, uplink NICs, policy) and port groups (vSwitch,
VLAN, policy overrides) are created or updated in place, or removed when
marked ``state: absent``; then VM network adapters are moved onto port groups
(ReconfigVM_Task, waited on).  Only what the answers name is touched.

Through vCenter, distributed switches (datacenter, version, uplink names, MTU,
member hosts with their NICs, PVLAN map) and distributed port groups (VLAN,
trunk ranges or a PVLAN, ports, binding, policy overrides) are made the same
way, before anything on the hosts (VMkernel and VM adapters can be placed on
them) and removed after.  Port mirroring sessions of a distributed switch
(SPAN, RSPAN source and destination, ERSPAN) are made once the VM adapters
they mirror are on their port groups; a VM adapter is looked up to its port
when the session is written.

A policy is security (``allow_promiscuous``, ``forged_transmits``,
``mac_changes``), ``teaming`` (load balancing, active/standby NIC order,
notify switches, failback, failure detection) and ``shaping``.  On a vSwitch
the fields left out keep their value (ESXi's default on a new one); on a port
group they are inherited from the vSwitch when it is created and left as they
are when it is updated.

Each operation's ``do`` and ``undo`` are JSON commands (a VSphereAPI method and its
arguments, specs as dicts) carried out through a fixed table (:data:`COMMANDS`),
so that a journal can keep them and ``hostsetup undo`` run them later; an
operation that can cut the management path is ``risky``.

If a change fails, what this run did is undone in reverse order (created
objects removed, updated ones restored, adapters moved back).  What remains
changed is then computed from a re-read of the inventory, not from which
undo calls succeeded (removing a vSwitch also removes its port groups), and
every undo call that failed is listed as an error of the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.vsphere import (
    DVPortgroup,
    DvsMember,
    DVSwitch,
    Host,
    Inventory,
    MirrorPort,
    MirrorSession,
    PortGroupSpec,
    Pvlan,
    Security,
    Shaping,
    Teaming,
    Vmk,
    VmkSpec,
    VSphereAPI,
    VSphereConn,
    VSwitchSpec,
    overlay,
    vsphere_api,
)
from steps.base import (
    Change,
    Command,
    Context,
    Operation,
    Problem,
    Question,
    SecretRef,
    Step,
    StepFailed,
    StepModel,
    ask,
    resolve_secret,
)
from steps.validators import ServerName, repeated

State = Literal["present", "absent"]
# What ESXi creates itself: never offered as "what hostsetup manages".
ESXI_DEFAULTS = frozenset({"vSwitch0", "VM Network", "Management Network"})
THUMBPRINT = r"^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$|^[0-9A-Fa-f]{64}$"
SECURITY_KEYS = ("allow_promiscuous", "forged_transmits", "mac_changes")
# The security answers as the plan names them (Change.before/after keys).
SECURITY_WORDS = {"allow_promiscuous": "promiscuous", "forged_transmits": "forged_transmits",
                  "mac_changes": "mac_changes"}
# An object's managed settings, as in Change.before/after: plain values under
# readable keys (the review shows ``promiscuous: no -> yes``).
Settings = dict[str, Any]


class ClusterHosts(StepModel):
    """All hosts of one cluster."""

    cluster: str = Field(min_length=1, description="cluster name (vCenter)")


class TeamingAnswer(StepModel):
    """NIC teaming and failover; fields left out are not changed (or inherited)."""

    load_balancing: Literal["loadbalance_srcid", "loadbalance_ip", "loadbalance_srcmac",
                            "failover_explicit"] | None = Field(
        None, description="loadbalance_srcid (port ID), loadbalance_ip (IP hash), "
        "loadbalance_srcmac (MAC hash) or failover_explicit (explicit failover order)")
    active_nics: list[str] | None = Field(
        None, min_length=1, max_length=32,
        description="active uplinks in failover order, e.g. [vmnic1]")
    standby_nics: list[str] | None = Field(None, max_length=32,
                                           description="standby uplinks, in order")
    notify_switches: bool | None = Field(None, description="notify physical switches on failover")
    failback: bool | None = Field(None, description="return to an active NIC once it recovers")
    failure_detection: Literal["link", "beacon"] | None = Field(
        None, description="link (link status only) or beacon (beacon probing)")

    @model_validator(mode="after")
    def _order(self) -> TeamingAnswer:
        order = [*(self.active_nics or ()), *(self.standby_nics or ())]
        dupes = repeated(order)
        if dupes:
            raise ValueError(f"NIC {', '.join(dupes)} listed more than once in "
                             "active_nics/standby_nics")
        return self

    def value(self) -> Teaming:
        """The answered teaming (unset fields stay unset)."""
        return Teaming(self.load_balancing,
                       None if self.active_nics is None else tuple(self.active_nics),
                       None if self.standby_nics is None else tuple(self.standby_nics),
                       self.notify_switches, self.failback, self.failure_detection)


MAX_KBPS = 100_000_000  # 100 Gbit/s


class ShapingAnswer(StepModel):
    """Outbound traffic shaping; fields left out are not changed (or inherited)."""

    enabled: bool | None = Field(None, description="shape outbound traffic")
    average_kbps: int | None = Field(None, ge=1, le=MAX_KBPS,
                                     description="average bandwidth in kbit/s")
    peak_kbps: int | None = Field(None, ge=1, le=MAX_KBPS, description="peak bandwidth in kbit/s")
    burst_kb: int | None = Field(None, ge=1, le=MAX_KBPS, description="burst size in KB")

    @model_validator(mode="after")
    def _peak(self) -> ShapingAnswer:
        if self.average_kbps and self.peak_kbps and self.peak_kbps < self.average_kbps:
            raise ValueError(f"peak_kbps {self.peak_kbps} is below average_kbps "
                             f"{self.average_kbps}; the peak must be at least the average")
        return self

    def value(self) -> Shaping:
        """The answered shaping (unset fields stay unset)."""
        return Shaping(self.enabled, self.average_kbps, self.peak_kbps, self.burst_kb)


class PolicyAnswer(StepModel):
    """Security, teaming and shaping of a vSwitch or port group; unset = not changed
    (on a new port group: inherited from its vSwitch)."""

    allow_promiscuous: bool | None = Field(None, title="Allow promiscuous",
                                           description="allow promiscuous mode")
    forged_transmits: bool | None = Field(None, title="Forged transmits",
                                          description="allow forged transmits")
    mac_changes: bool | None = Field(None, title="Mac changes",
                                     description="allow MAC address changes")
    teaming: TeamingAnswer | None = Field(None, description="NIC teaming and failover order")
    shaping: ShapingAnswer | None = Field(None, description="outbound traffic shaping")

    def security(self) -> Security:
        """The answered security policy (unset fields stay unset)."""
        return Security(self.allow_promiscuous, self.forged_transmits, self.mac_changes)

    def teaming_value(self) -> Teaming:
        """The answered teaming (all unset when not answered)."""
        return self.teaming.value() if self.teaming else Teaming()

    def shaping_value(self) -> Shaping:
        """The answered shaping (all unset when not answered)."""
        return self.shaping.value() if self.shaping else Shaping()


class VSwitchAnswer(PolicyAnswer):
    """One standard vSwitch."""

    name: str = Field(min_length=1, max_length=32, title="Name",
                      description="vSwitch name, e.g. vSwitch1")
    num_ports: int = Field(128, ge=8, le=4088, title="Ports",
                           description="number of ports (8-4088)")
    mtu: int = Field(1500, ge=1280, le=9000, title="MTU",
                     description="MTU in bytes (1280-9000)")
    nics: list[str] = Field(default_factory=list, title="Uplink NICs",
                            description="uplink physical NICs: free ones of the hosts (not "
                            "an uplink of another vSwitch), e.g. [vmnic1]")
    state: State = Field("present", title="State",
                         description="present: create or update it; absent: remove it")


class PortGroupAnswer(PolicyAnswer):
    """One standard port group; unset policy fields inherit the vSwitch's."""

    name: str = Field(min_length=1, max_length=59, title="Name", description="port group name")
    vswitch: str | None = Field(None, title="vSwitch",
                                description="the vSwitch it is on (required when present): one "
                                "the hosts have, or one answered under vswitches (new)")
    vlan: int = Field(0, ge=0, le=4095, title="VLAN",
                      description="VLAN ID 0-4095; 0 = none, 4095 = trunk")
    state: State = Field("present", title="State",
                         description="present: create or update it; absent: remove it")

    @model_validator(mode="after")
    def _vswitch_when_present(self) -> PortGroupAnswer:
        if self.state == "present" and not self.vswitch:
            raise ValueError(f"port group '{self.name}': 'vswitch' is required when present")
        return self


def vlan_range(text: str) -> tuple[int, int]:
    """``"100-200"`` or ``"300"`` as (start, end)."""
    start, _, end = text.partition("-")
    return int(start), int(end or start)


def _range(text: str) -> str:
    start, end = vlan_range(text)
    if not start <= end <= 4094:
        raise ValueError(f"'{text}' is not a VLAN range within 0-4094 (e.g. 100-200)")
    return text


VlanRange = Annotated[str, Field(pattern=r"^\d{1,4}(-\d{1,4})?$"), AfterValidator(_range)]


class PvlanAnswer(StepModel):
    """One entry of a distributed switch's PVLAN map."""

    primary: int = Field(ge=1, le=4094, description="primary VLAN ID")
    secondary: int = Field(ge=1, le=4094,
                           description="secondary VLAN ID (= primary for the promiscuous entry)")
    type: Literal["promiscuous", "isolated", "community"] = Field(
        description="promiscuous, isolated or community")

    @model_validator(mode="after")
    def _promiscuous(self) -> PvlanAnswer:
        if (self.type == "promiscuous") != (self.primary == self.secondary):
            raise ValueError(f"PVLAN {self.primary}/{self.secondary} {self.type}: the "
                             "promiscuous entry, and only it, has secondary = primary")
        return self

    def value(self) -> Pvlan:
        """The map entry."""
        return Pvlan(self.primary, self.secondary, self.type)


class DvsHostAnswer(StepModel):
    """A host of a distributed switch and its NICs (given to the uplinks in order)."""

    name: str = Field(min_length=1, max_length=255, description="ESXi host name")
    nics: list[str] = Field(default_factory=list, max_length=32,
                            description="free physical NICs, in uplink order, e.g. [vmnic2]")
    state: State = Field("present", description="present, or absent to leave the switch")

    @field_validator("nics")
    @classmethod
    def _once(cls, nics: list[str]) -> list[str]:
        dupes = repeated(nics)
        if dupes:
            raise ValueError(f"NIC {', '.join(dupes)} listed more than once")
        return nics


class DVSwitchAnswer(StepModel):
    """One distributed switch (vCenter); hosts and PVLAN map as listed."""

    name: str = Field(min_length=1, max_length=80, description="switch name, e.g. dvSwitch1")
    datacenter: str | None = Field(None, min_length=1,
                                   description="its datacenter (required when present)")
    version: str | None = Field(None, pattern=r"^\d+\.\d+\.\d+$",
                                description="switch version when created, e.g. 6.5.0 "
                                "(vCenter's newest when unset)")
    uplinks: list[str] = Field(default_factory=lambda: ["Uplink 1", "Uplink 2"],
                               min_length=1, max_length=32, description="uplink names")
    mtu: int = Field(1500, ge=1280, le=9000, description="MTU in bytes (1280-9000)")
    hosts: list[DvsHostAnswer] = Field(
        default_factory=list, max_length=1000,
        description="hosts to join (or leave) with their NICs; others are left as they are")
    pvlans: list[PvlanAnswer] | None = Field(
        None, max_length=1000, description="the PVLAN map, exactly (unset: left as it is)")
    state: State = Field("present", description="present, or absent to remove it")

    @model_validator(mode="after")
    def _consistent(self) -> DVSwitchAnswer:
        if self.state == "absent":
            return self
        if not self.datacenter:
            raise ValueError(f"distributed switch '{self.name}': 'datacenter' is required "
                             "when present")
        for what, names in (("uplink", self.uplinks), ("host", [h.name for h in self.hosts]),
                            ("PVLAN secondary ID", [str(p.secondary)
                                                    for p in self.pvlans or ()])):
            dupes = repeated(names)
            if dupes:
                raise ValueError(f"{what} {', '.join(dupes)} listed more than once")
        for h in self.hosts:
            if len(h.nics) > len(self.uplinks):
                raise ValueError(f"host '{h.name}' gives {len(h.nics)} NICs to "
                                 f"{len(self.uplinks)} uplink(s); one NIC per uplink")
        self._pvlan_rules()
        return self

    def _pvlan_rules(self) -> None:
        entries = self.pvlans or []
        promiscuous = {p.primary for p in entries if p.type == "promiscuous"}
        isolated = [p.primary for p in entries if p.type == "isolated"]
        for p in entries:
            if p.primary not in promiscuous:
                raise ValueError(f"PVLAN {p.secondary} ({p.type}) needs the promiscuous entry "
                                 f"of its primary {p.primary} ({{primary: {p.primary}, "
                                 f"secondary: {p.primary}, type: promiscuous}})")
        dupes = repeated(str(p) for p in isolated)
        if dupes:
            raise ValueError(f"primary PVLAN {', '.join(dupes)} has more than one isolated "
                             "secondary; it can have one")

    def spec(self, have: DVSwitch | None) -> DVSwitch:
        """The switch to reach: ``have``'s members with the answered hosts joined
        (NICs as answered) or gone, the PVLAN map answered or ``have``'s."""
        members = {m.host: m for m in have.hosts} if have else {}
        for h in self.hosts:
            members.pop(h.name, None)
            if h.state == "present":
                members[h.name] = DvsMember(h.name, tuple(h.nics))
        pvlans = (tuple(p.value() for p in self.pvlans) if self.pvlans is not None
                  else have.pvlans if have else ())
        return DVSwitch(self.name, self.datacenter or (have.datacenter if have else ""),
                        self.version or (have.version if have else None), tuple(self.uplinks),
                        self.mtu, tuple(members.values()), pvlans)


class DVPortgroupAnswer(PolicyAnswer):
    """One distributed port group; unset policy fields inherit the switch's."""

    name: str = Field(min_length=1, max_length=80, description="port group name")
    dvswitch: str | None = Field(None, description="its distributed switch "
                                 "(required when present)")
    vlan: int | None = Field(None, ge=0, le=4094, description="VLAN ID 0-4094 (0 = none)")
    vlan_trunk: list[VlanRange] | None = Field(
        None, min_length=1, max_length=64, description="trunked VLAN ranges, e.g. [100-200, 300]")
    pvlan: int | None = Field(None, ge=1, le=4094,
                              description="a secondary PVLAN ID of the switch's PVLAN map")
    ports: int = Field(8, ge=0, le=8192, description="number of ports (static binding grows "
                       "them as needed)")
    binding: Literal["static", "ephemeral"] = Field("static",
                                                     description="static or ephemeral")
    state: State = Field("present", description="present, or absent to remove it")

    @model_validator(mode="after")
    def _one_vlan(self) -> DVPortgroupAnswer:
        given = [k for k in ("vlan", "vlan_trunk", "pvlan") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"distributed port group '{self.name}': give one of vlan, "
                             f"vlan_trunk or pvlan, not {' and '.join(given)}")
        if self.state == "present" and not self.dvswitch:
            raise ValueError(f"distributed port group '{self.name}': 'dvswitch' is required "
                             "when present")
        return self

    def spec(self) -> DVPortgroup:
        """The port group to reach (policy fields left unset stay unset)."""
        trunk = None if self.vlan_trunk is None else tuple(vlan_range(r) for r in self.vlan_trunk)
        vlan = 0 if self.vlan is None and trunk is None and self.pvlan is None else self.vlan
        return DVPortgroup(self.name, self.dvswitch or "", vlan, trunk, self.pvlan, self.ports,
                           self.binding, self.security(), self.teaming_value(),
                           self.shaping_value())


class MirrorEndAnswer(StepModel):
    """A port mirroring endpoint: a VM adapter, a distributed port, an uplink or an IP."""

    vm: str | None = Field(None, min_length=1, max_length=80, description="a VM (with adapter)")
    adapter: str | None = Field(None, pattern=r"^Network adapter \d+$",
                                description="its adapter, e.g. 'Network adapter 1'")
    port: str | None = Field(None, pattern=r"^\d{1,9}$", description="a distributed port key")
    uplink: str | None = Field(None, min_length=1, max_length=80,
                               description="an uplink name (RSPAN source destination)")
    ip: IPv4Address | None = Field(None, description="an IPv4 address (ERSPAN destination)")

    @model_validator(mode="after")
    def _one(self) -> MirrorEndAnswer:
        if (self.vm is None) != (self.adapter is None):
            raise ValueError("a VM adapter needs both vm and adapter")
        if len([k for k in ("vm", "port", "uplink", "ip") if getattr(self, k) is not None]) != 1:
            raise ValueError("give one of: vm and adapter, port, uplink, ip")
        return self

    @property
    def kind(self) -> str:
        """vm, port, uplink or ip."""
        return next(k for k in ("vm", "port", "uplink", "ip") if getattr(self, k) is not None)

    def value(self) -> MirrorPort:
        """The endpoint."""
        return MirrorPort(self.port, self.vm, self.adapter, self.uplink,
                          None if self.ip is None else str(self.ip))


# Per session type: the kinds of sources (none: it mirrors source_vlans) and of
# destination it takes.
MIRROR_RULES = {"span": ({"vm", "port"}, {"vm", "port"}),
                "rspan_source": ({"vm", "port"}, {"uplink"}),
                "rspan_destination": (set(), {"vm", "port"}),
                "erspan": ({"vm", "port"}, {"ip"})}


class MirrorAnswer(StepModel):
    """One port mirroring session of a distributed switch (SPAN, RSPAN, ERSPAN)."""

    name: str = Field(min_length=1, max_length=80, description="session name")
    dvswitch: str = Field(min_length=1, max_length=80, description="its distributed switch")
    type: Literal["span", "rspan_source", "rspan_destination", "erspan"] = Field(
        "span", description="span (to ports of the switch), rspan_source (to an uplink, in "
        "an encapsulation VLAN), rspan_destination (from VLANs to ports), erspan (to an IP)")
    sources: list[MirrorEndAnswer] = Field(default_factory=list, max_length=64,
                                           description="mirrored VM adapters or ports")
    direction: Literal["both", "transmitted", "received"] = Field(
        "both", description="the sources' traffic mirrored: both, transmitted or received")
    source_vlans: list[Annotated[int, Field(ge=1, le=4094)]] = Field(
        default_factory=list, max_length=64, description="VLANs mirrored (rspan_destination)")
    destination: list[MirrorEndAnswer] = Field(
        default_factory=list, max_length=64,
        description="VM adapters or ports (span, rspan_destination), uplinks (rspan_source) "
        "or IPs (erspan)")
    encapsulation_vlan: int | None = Field(None, ge=1, le=4094,
                                           description="the RSPAN VLAN (rspan_source)")
    strip_vlan: bool = Field(False, description="strip the original VLAN tag (rspan_source)")
    enabled: bool = Field(True, description="mirror now")
    state: State = Field("present", description="present, or absent to remove it")

    @model_validator(mode="after")
    def _fits_type(self) -> MirrorAnswer:
        if self.state == "absent":
            return self
        sources, destinations = MIRROR_RULES[self.type]
        what = f"a {self.type} session"
        if not sources and (self.sources or not self.source_vlans):
            raise ValueError(f"{what} mirrors VLANs: give source_vlans, not sources")
        if sources and (self.source_vlans or not self.sources):
            raise ValueError(f"{what} mirrors VM adapters or ports: give sources, not "
                             "source_vlans")
        if not self.destination:
            raise ValueError(f"{what} needs a destination")
        for key, ends, kinds in (("sources", self.sources, sources),
                                 ("destination", self.destination, destinations)):
            for j, end in enumerate(ends):
                if end.kind not in kinds:
                    raise ValueError(f"{key}[{j}]: {what} takes {' or '.join(sorted(kinds))} "
                                     f"there, not {end.kind}")
        if (self.encapsulation_vlan is None) == (self.type == "rspan_source"):
            raise ValueError(f"encapsulation_vlan is for an rspan_source session: {what} "
                             f"{'needs' if self.type == 'rspan_source' else 'takes no'} one")
        return self

    def value(self) -> MirrorSession:
        """The session to reach (VM adapters as such: their ports are looked up then)."""
        ends = tuple(e.value() for e in self.sources)
        return MirrorSession(
            self.name, self.type, self.enabled,
            ends if self.direction in ("both", "transmitted") else (),
            ends if self.direction in ("both", "received") else (),
            tuple(self.source_vlans), tuple(e.value() for e in self.destination),
            self.encapsulation_vlan, self.strip_vlan)


class Placement(StepModel):
    """Where an adapter goes: a standard or a distributed port group (one of them)."""

    portgroup: str | None = Field(None, min_length=1, max_length=59, title="Port group",
                                  description="a standard port group: one the hosts have, or "
                                  "one answered under portgroups (new)")
    dvportgroup: str | None = Field(None, min_length=1, max_length=80,
                                    description="distributed port group (vCenter)")

    @model_validator(mode="after")
    def _one_place(self) -> Placement:
        if (self.portgroup is None) == (self.dvportgroup is None):
            raise ValueError("give portgroup (standard) or dvportgroup (distributed): one of "
                             "them")
        return self

    @property
    def network(self) -> str:
        """The port group's name, standard or distributed."""
        return self.portgroup or self.dvportgroup or ""


class AdapterAnswer(Placement):
    """Move one VM network adapter onto a standard or distributed port group."""

    vm: str = Field(min_length=1, max_length=80, title="VM",
                    description="the virtual machine whose adapter moves")
    adapter: str = Field(pattern=r"^Network adapter \d+$", title="Adapter",
                         description="the VM's network adapter, by its label, e.g. "
                         "'Network adapter 1'")


class StaticIp(StepModel):
    """A static IPv4 address and netmask."""

    address: IPv4Address = Field(description="IPv4 address, e.g. 10.0.20.11")
    netmask: IPv4Address = Field(description="netmask, e.g. 255.255.255.0")

    @field_validator("netmask")
    @classmethod
    def _mask(cls, value: IPv4Address) -> IPv4Address:
        try:
            prefix = IPv4Network(f"0.0.0.0/{value}").prefixlen
        except ValueError:
            prefix = 0
        if prefix == 0:
            raise ValueError(f"'{value}' is not a netmask (e.g. 255.255.255.0)")
        return value


# "dhcp" or a mapping: a string is checked against "dhcp" only, a mapping as
# StaticIp only (one clear error, not one per union member).
IpAnswer = Annotated[
    Annotated[Literal["dhcp"], Tag("dhcp")] | Annotated[StaticIp, Tag("static")],
    Discriminator(lambda v: "dhcp" if isinstance(v, str) else "static")]
Service = Literal["management", "vmotion", "vsan", "provisioning", "ft", "replication"]


class VmkAnswer(Placement):
    """One VMkernel adapter, identified by its (standard or distributed) port group, or
    by ``device`` to move it."""

    host: str | None = Field(None, min_length=1, max_length=255,
                             description="the host (required for a static IP); "
                             "unset = every selected host")
    device: str | None = Field(None, pattern=r"^vmk\d{1,3}$",
                               description="an existing adapter to move or edit, e.g. vmk1")
    ip: IpAnswer = Field("dhcp", description="dhcp or {address, netmask}")
    mtu: int = Field(1500, ge=1280, le=9000, description="MTU in bytes (1280-9000)")
    services: list[Service] = Field(
        default_factory=list, max_length=6,
        description="management, vmotion, vsan, provisioning, ft, replication")
    state: State = Field("present", description="present, or absent to remove it")

    @model_validator(mode="after")
    def _host_for_static(self) -> VmkAnswer:
        if isinstance(self.ip, StaticIp) and self.host is None:
            raise ValueError(f"the static IP {self.ip.address} needs a 'host' (one address "
                             "cannot go to every host)")
        return self

    def spec(self, dvswitch: str | None = None) -> VmkSpec:
        """What the adapter should be (``dvswitch``: the switch of its dvportgroup)."""
        ip = self.ip if isinstance(self.ip, StaticIp) else None
        return VmkSpec(self.network, str(ip.address) if ip else None,
                       str(ip.netmask) if ip else None, self.mtu,
                       tuple(sorted(set(self.services))), dvswitch)


class VSphereConnection(StepModel):
    """How the ``vsphere_network`` step reaches vSphere: the server, the login (the
    password as a reference) and how its certificate is trusted."""

    server: ServerName = Field(title="vCenter / ESXi server",
                               description="vCenter or ESXi host name or address")
    port: int = Field(443, ge=1, le=65535, title="HTTPS port", description="HTTPS port")
    user: str = Field("root", min_length=1, title="User", description="login user")
    password: SecretRef = Field(
        title="Password", description="a reference env:NAME or file:PATH, or the password "
        "itself: the wizard keeps a typed password in memory only and records it as a "
        "reference (env:HOSTSETUP_SECRET_PASSWORD)")
    thumbprint: str | None = Field(
        None, pattern=THUMBPRINT, title="Certificate thumbprint",
        description="pins the server certificate by its SHA-256 thumbprint (AA:BB:... or hex)")
    ca_file: str | None = Field(None, title="CA file (PEM)",
                                description="CA bundle (PEM) to verify the server certificate")
    insecure: bool = Field(False, title="Skip TLS verification",
                           description="lab only: the certificate is not checked at all "
                           "(logged as a warning)")

    @model_validator(mode="after")
    def _trust(self) -> VSphereConnection:
        if self.insecure and (self.thumbprint or self.ca_file):
            raise ValueError("insecure: true contradicts thumbprint/ca_file; choose one")
        return self


class VSphereNetworkAnswers(VSphereConnection):
    """Answers of the ``vsphere_network`` step."""

    hosts: Literal["all"] | ClusterHosts | list[str] = Field(
        "all", title="Hosts", description="the ESXi hosts to configure: 'all', "
        "{cluster: NAME} (in a file) or a list of host names")
    vswitches: list[VSwitchAnswer] = Field(
        default_factory=list, title="vSwitches", description="standard vSwitches to create or "
        "update on every selected host (vSwitch0 is ESXi's own)")
    portgroups: list[PortGroupAnswer] = Field(
        default_factory=list, title="Port groups", description="port groups on a vSwitch: VLAN "
        "and security policy (unset security fields inherit the vSwitch's)")
    vm_adapters: list[AdapterAnswer] = Field(
        default_factory=list, title="VM adapters", description="VM network adapters to move "
        "onto a port group (one the hosts have, or one answered under portgroups)")
    vmkernel: list[VmkAnswer] = Field(default_factory=list, description="VMkernel adapters")
    dvswitches: list[DVSwitchAnswer] = Field(default_factory=list, max_length=128,
                                             description="distributed switches (vCenter)")
    dvportgroups: list[DVPortgroupAnswer] = Field(
        default_factory=list, max_length=4096, description="distributed port groups")
    mirror_sessions: list[MirrorAnswer] = Field(
        default_factory=list, max_length=256,
        description="port mirroring sessions of distributed switches")

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        # The wizard's multi-choice offers "all" next to the host names.
        if isinstance(value, list) and "all" in value:
            return "all"
        if value == []:
            raise ValueError("list at least one host, or give 'all'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> VSphereNetworkAnswers:
        for kind, names in (("vSwitch", [v.name for v in self.vswitches]),
                            ("port group", [p.name for p in self.portgroups]),
                            ("distributed switch", [d.name for d in self.dvswitches]),
                            ("distributed port group", [p.name for p in self.dvportgroups])):
            dupes = repeated(names)
            if dupes:
                raise ValueError(f"{kind} {', '.join(dupes)} listed more than once")
        nics = [n for v in self.vswitches if v.state == "present" for n in v.nics]
        if len(nics) != len(set(nics)):
            raise ValueError("a NIC is an uplink of more than one vSwitch in the answers")
        absent_vs = {v.name for v in self.vswitches if v.state == "absent"}
        for pg in self.portgroups:
            if pg.state == "present" and pg.vswitch in absent_vs:
                raise ValueError(f"port group '{pg.name}' is on vSwitch '{pg.vswitch}', "
                                 "which the answers remove")
        absent_dvs = {d.name for d in self.dvswitches if d.state == "absent"}
        on_switch: list[DVPortgroupAnswer | MirrorAnswer] = [*self.dvportgroups,
                                                             *self.mirror_sessions]
        for dvpg in on_switch:
            if dvpg.state == "present" and dvpg.dvswitch in absent_dvs:
                kind = ("distributed port group" if isinstance(dvpg, DVPortgroupAnswer)
                        else "mirror session")
                raise ValueError(f"{kind} '{dvpg.name}' is on distributed switch "
                                 f"'{dvpg.dvswitch}', which the answers remove")
        dupes = repeated(f"{m.dvswitch}/{m.name}" for m in self.mirror_sessions)
        if dupes:
            raise ValueError(f"mirror session {', '.join(dupes)} listed more than once")
        absent_pg = {p.name for p in self.portgroups if p.state == "absent"}
        absent_dvpg = {p.name for p in self.dvportgroups if p.state == "absent"}
        for a in self.vm_adapters:
            if a.portgroup in absent_pg or a.dvportgroup in absent_dvpg:
                raise ValueError(f"'{a.adapter}' of VM '{a.vm}' moves to port group "
                                 f"'{a.network}', which the answers remove")
        self._vmk_rules(absent_pg, absent_dvpg)
        return self

    def _vmk_rules(self, absent_pg: set[str], absent_dvpg: set[str]) -> None:
        for i, v in enumerate(self.vmkernel):
            if v.state == "present" and (v.portgroup in absent_pg or
                                         v.dvportgroup in absent_dvpg):
                raise ValueError(f"vmkernel[{i}] is on port group '{v.network}', which the "
                                 "answers remove")
        for what, keys in (
                ("a VMkernel adapter", [f"{v.host or 'every host'}/{v.device or v.network}"
                                        for v in self.vmkernel]),
                ("a static VMkernel address", [str(v.ip.address) for v in self.vmkernel
                                               if isinstance(v.ip, StaticIp)])):
            dupes = repeated(keys)
            if dupes:
                raise ValueError(f"{what} is listed more than once: {', '.join(dupes)}")


def connection(given: VSphereConnection | Mapping[str, Any]) -> VSphereConn:
    """The backend's connection from the step's (or from an answers section's
    connection keys); the password reference is resolved."""
    c = given if isinstance(given, VSphereConnection) else VSphereConnection.model_validate(
        {k: v for k, v in given.items() if k in VSphereConnection.model_fields})
    return VSphereConn(server=c.server, port=c.port, user=c.user,
                       password=resolve_secret(c.password, "password"),
                       thumbprint=c.thumbprint, ca_file=c.ca_file, insecure=c.insecure)


def switch_of(answers: VSphereNetworkAnswers, inv: Inventory, name: str) -> DVSwitch | None:
    """The distributed switch ``name`` as it will be: answered (present) over vCenter's,
    ``None`` when it is neither."""
    have = inv.dvswitch(name)
    answer = next((d for d in answers.dvswitches if d.name == name), None)
    if answer is None:
        return have
    return answer.spec(have) if answer.state == "present" else None


def mirror_problems(answers: VSphereNetworkAnswers, inv: Inventory,
                    at: tuple[str | int, ...], m: MirrorAnswer) -> list[Problem]:
    """A session's switch exists (or is answered); its VM adapters are (or are
    moved) on that switch, its ports on it, its uplinks the switch's."""
    switch = switch_of(answers, inv, m.dvswitch)
    if switch is None:
        return [Problem((*at, "dvswitch"), (
            f"distributed switch '{m.dvswitch}' is neither in vCenter nor in the answers' "
            "dvswitches"))]
    have = inv.dvswitch(m.dvswitch)
    ports = {k for p in inv.dvportgroups if p.dvswitch == m.dvswitch for k in p.port_keys}
    moves = {(a.vm, a.adapter): placed(answers, inv, a) for a in answers.vm_adapters}
    problems = []
    for key in ("sources", "destination"):
        for j, end in enumerate(getattr(m, key)):
            here = (*at, key, j)
            if end.vm is not None:
                vm = inv.vm(end.vm)
                adapter = vm.adapter(end.adapter or "") if vm else None
                if adapter is None:
                    problems.append(Problem(here, f"no '{end.adapter}' of VM '{end.vm}'"))
                    continue
                network, dvs = moves.get((end.vm, adapter.label),
                                         (adapter.network, adapter.dvswitch))
                if dvs != m.dvswitch:
                    problems.append(Problem(here, (
                        f"'{end.adapter}' of VM '{end.vm}' is on port group '{network}', not "
                        f"on distributed switch '{m.dvswitch}' (nor moved there by the "
                        "answers)")))
            elif end.port is not None and have is not None and end.port not in ports:
                problems.append(Problem(here, (
                    f"no port {end.port} on distributed switch '{m.dvswitch}'")))
            elif end.uplink is not None and end.uplink not in switch.uplinks:
                problems.append(Problem(here, (
                    f"'{end.uplink}' is not an uplink of distributed switch '{m.dvswitch}' "
                    f"(uplinks: {', '.join(switch.uplinks)})")))
    return problems


def dv_placement_problems(answers: VSphereNetworkAnswers, inv: Inventory,
                          at: tuple[str | int, ...], portgroup: str,
                          host: str) -> list[Problem]:
    """An adapter of ``host`` can go onto the distributed port group: it exists (or
    is answered) and the host is (or joins as) a member of its switch."""
    switch = dvswitch_of(answers, inv, portgroup)
    if switch is None:
        return [Problem(at, (f"distributed port group '{portgroup}' is neither in vCenter "
                             "nor in the answers' dvportgroups"))]
    spec = switch_of(answers, inv, switch)
    if spec is None or spec.member(host) is None:
        return [Problem(at, (f"host '{host}' is not a member of distributed switch "
                             f"'{switch}' (join it under dvswitches[].hosts)"))]
    return []


def member_problems(inv: Inventory, d: DVSwitchAnswer, at: tuple[str | int, ...],
                    h: DvsHostAnswer) -> list[Problem]:
    """A host joining a distributed switch is in its datacenter and its NICs are free
    (or already the switch's); one leaving it has no VMkernel adapter on it."""
    host = inv.host(h.name)
    if host is None:
        return [Problem((*at, "name"), (
            f"no host '{h.name}' (hosts: {', '.join(x.name for x in inv.hosts) or 'none'})"))]
    if host.datacenter != d.datacenter:
        return [Problem((*at, "name"), (
            f"host '{h.name}' is in datacenter '{host.datacenter}', not in '{d.datacenter}' "
            f"of distributed switch '{d.name}'"))]
    if h.state == "absent":
        on = [v.device for v in host.vmks if v.dvswitch == d.name]
        return [Problem((*at, "state"), (
            f"host '{h.name}' has VMkernel adapter(s) {', '.join(on)} on distributed switch "
            f"'{d.name}'; move or remove them (in an earlier run) before it leaves"))] if on else []
    problems = []
    for k, nic in enumerate(h.nics):
        pnic = host.pnic(nic)
        used = (f"vSwitch '{pnic.vswitch}'" if pnic and pnic.vswitch else
                f"distributed switch '{pnic.dvswitch}'" if pnic and pnic.dvswitch not in (
                    None, d.name) else "")
        if pnic is None:
            problems.append(Problem((*at, "nics", k), (
                f"'{nic}' is not a physical NIC of host '{h.name}' "
                f"(has: {', '.join(n.device for n in host.pnics) or 'none'})")))
        elif used:
            problems.append(Problem((*at, "nics", k), (
                f"'{nic}' on host '{h.name}' is already an uplink of {used}")))
    return problems


def dvportgroup_users(answers: VSphereNetworkAnswers, inv: Inventory,
                      pg: DVPortgroup) -> list[str]:
    """The VMkernel adapters, and adapters of the VMs read, that stay on ``pg``."""
    removed = {(v.host, v.dvportgroup) for v in answers.vmkernel if v.state == "absent"}
    moved = {(a.vm, a.adapter) for a in answers.vm_adapters if a.network != pg.name}
    users = [f"VMkernel adapter {x.device} of host '{h.name}'" for h in inv.hosts
             for x in h.vmks if (x.portgroup, x.dvswitch) == (pg.name, pg.dvswitch)
             and not {(None, pg.name), (h.name, pg.name)} & removed]
    users += [f"'{a.label}' of VM '{vm.name}'" for vm in inv.vms for a in vm.adapters
              if (a.network, a.dvswitch) == (pg.name, pg.dvswitch)
              and (vm.name, a.label) not in moved]
    # vCenter lists the VMs on it; their adapters were read only for the VMs named
    detailed = {vm.name for vm in inv.vms if vm.host is not None}
    return users + [f"VM '{name}'" for name in pg.vms if name not in detailed]


def named_vms(answers: VSphereNetworkAnswers) -> set[str]:
    """The VMs whose adapters the answers move or mirror: the only ones whose devices
    are read."""
    return {a.vm for a in answers.vm_adapters} | {
        e.vm for m in answers.mirror_sessions for e in (*m.sources, *m.destination) if e.vm}


def selected_hosts(answers: VSphereNetworkAnswers, inv: Inventory) -> list[Host]:
    """The hosts the answers select (unknown names are left to validate())."""
    if answers.hosts == "all":
        return list(inv.hosts)
    if isinstance(answers.hosts, ClusterHosts):
        return [h for h in inv.hosts if h.cluster == answers.hosts.cluster]
    return [h for h in inv.hosts if h.name in answers.hosts]


# The commands of the step's operations: a VSphereAPI method and its arguments, by
# name, as plain JSON: {"op": "add_vswitch", "args": {"host": ..., "spec": {...}}}.
# A journal is input: a command is carried out only through this fixed table,
# each argument decoded (and checked) by pydantic into its interface type.
Caller = Callable[[VSphereAPI], Callable[..., None]]
COMMANDS: dict[str, tuple[Caller, dict[str, Any]]] = {
    "add_vswitch": (lambda api: api.add_vswitch, {"host": str, "spec": VSwitchSpec}),
    "update_vswitch": (lambda api: api.update_vswitch,
                       {"host": str, "name": str, "spec": VSwitchSpec}),
    "remove_vswitch": (lambda api: api.remove_vswitch, {"host": str, "name": str}),
    "add_portgroup": (lambda api: api.add_portgroup, {"host": str, "spec": PortGroupSpec}),
    "update_portgroup": (lambda api: api.update_portgroup,
                         {"host": str, "name": str, "spec": PortGroupSpec}),
    "remove_portgroup": (lambda api: api.remove_portgroup, {"host": str, "name": str}),
    "add_vmk": (lambda api: api.add_vmk, {"host": str, "spec": VmkSpec}),
    "update_vmk": (lambda api: api.update_vmk, {"host": str, "portgroup": str, "spec": VmkSpec,
                                                "dvswitch": str | None}),
    "remove_vmk": (lambda api: api.remove_vmk,
                   {"host": str, "portgroup": str, "dvswitch": str | None}),
    "move_adapter": (lambda api: api.move_adapter, {"vm": str, "adapter": str,
                                                    "portgroup": str, "distributed": bool}),
    "add_dvswitch": (lambda api: api.add_dvswitch, {"spec": DVSwitch}),
    "update_dvswitch": (lambda api: api.update_dvswitch, {"name": str, "spec": DVSwitch}),
    "remove_dvswitch": (lambda api: api.remove_dvswitch, {"name": str}),
    "add_dvportgroup": (lambda api: api.add_dvportgroup, {"spec": DVPortgroup}),
    "update_dvportgroup": (lambda api: api.update_dvportgroup,
                           {"name": str, "spec": DVPortgroup}),
    "remove_dvportgroup": (lambda api: api.remove_dvportgroup, {"name": str}),
    "add_mirror": (lambda api: api.add_mirror, {"dvswitch": str, "spec": MirrorSession}),
    "update_mirror": (lambda api: api.update_mirror,
                      {"dvswitch": str, "name": str, "spec": MirrorSession}),
    "remove_mirror": (lambda api: api.remove_mirror, {"dvswitch": str, "name": str}),
}
ADAPTERS = {op: {k: TypeAdapter(t) for k, t in types.items()}
            for op, (_call, types) in COMMANDS.items()}


def command(op: str, **args: Any) -> Command:
    """The JSON command of a VSphereAPI call (a spec dataclass becomes a dict)."""
    return {"op": op, "args": {k: ADAPTERS[op][k].dump_python(v, mode="json")
                               for k, v in args.items()}}


def decode(command: Command) -> tuple[str, dict[str, Any]]:
    """A command's method and its arguments as interface values; raises StepFailed
    naming an unknown method, a missing or unknown argument, or a bad value."""
    op, args = command.get("op"), command.get("args")
    if op not in ADAPTERS or not isinstance(args, dict):
        raise StepFailed(f"vsphere_network: unknown command {op!r} (known: "
                         f"{', '.join(ADAPTERS)}) or its 'args' is not a mapping")
    types = ADAPTERS[op]
    missing, unknown = [k for k in types if k not in args], sorted(set(args) - set(types))
    if missing or unknown:
        raise StepFailed(f"vsphere_network: command {op!r} takes {', '.join(types)}: "
                         + "; ".join(f"{what} {', '.join(keys)}" for what, keys in (
                             ("missing", missing), ("unknown", unknown)) if keys))
    values = {}
    for key, value in args.items():
        try:
            values[key] = types[key].validate_python(value)
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            where = ".".join(str(x) for x in (key, *first["loc"]))
            raise StepFailed(f"vsphere_network: command {op!r}: argument {where}: "
                             f"{first['msg']}") from None
    return op, values


def carry_out(api: VSphereAPI, command: Command,
              progress: Callable[[float], None] | None = None) -> None:
    """Make the backend call of ``command``; a VM reconfigure reports its task's progress."""
    op, args = decode(command)
    if op == "move_adapter":
        args["progress"] = progress
    COMMANDS[op][0](api)(**args)


def part_progress(ctx: Context, start: float, count: int, text: str, frac: float) -> None:
    """Report progress inside one of ``count`` changes that begins at ``start``."""
    ctx.progress(start + frac / count, text)


def vswitch_dict(num_ports: int, mtu: int, nics: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """A vSwitch's managed settings, for Change before/after."""
    return {"ports": num_ports, "mtu": mtu, "uplinks": sorted(nics)}


def portgroup_dict(vswitch: str, vlan: int) -> dict[str, Any]:
    """A port group's managed settings, for Change before/after."""
    return {"vswitch": vswitch, "vlan": vlan}


def policy_dict(sec: Security, team: Teaming, shape: Shaping) -> Settings:
    """A policy's settings that are set, for Change before/after: flat readable keys
    (``shaping`` is whether shaping is on), NIC orders as lists."""
    found: Settings = {SECURITY_WORDS[k]: getattr(sec, k) for k in SECURITY_KEYS}
    found |= {k: list(v) if isinstance(v, tuple) else v for k, v in vars(team).items()}
    found |= {"shaping": shape.enabled, "average_kbps": shape.average_kbps,
              "peak_kbps": shape.peak_kbps, "burst_kb": shape.burst_kb}
    return {k: v for k, v in found.items() if v is not None}


def policy_of(obj: Any) -> Settings:
    """The policy settings of a vSwitch or port group (value or spec)."""
    return policy_dict(obj.security, obj.teaming, obj.shaping)


def wanted_policy(answer: PolicyAnswer, have: Any) -> Settings:
    """The policy to reach: the answered fields over ``have``'s (only the answered
    ones when ``have`` is ``None``, i.e. created)."""
    if have is None:
        return policy_dict(answer.security(), answer.teaming_value(), answer.shaping_value())
    return policy_dict(overlay(have.security, answer.security()),
                       overlay(have.teaming, answer.teaming_value()),
                       overlay(have.shaping, answer.shaping_value()))


def changed(before: Settings, after: Settings) -> tuple[Settings, Settings]:
    """Only the settings that differ, before and after (what `plan` shows)."""
    keys = [k for k in after if before.get(k) != after[k]]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


@dataclass(frozen=True)
class Kind:
    """How to plan one kind of object (vSwitch, port group, distributed switch...)."""

    label: str  # for Change targets
    api: str  # VSphereAPI methods add_<api>, update_<api>, remove_<api>
    find: Callable[[Any, str], Any]  # (container, name) -> the object or None
    current: Callable[[Any], Settings]  # the object's settings
    wanted: Callable[[Any, Any], Settings]  # (answer, object or None) -> settings
    spec: Callable[[Any, Any], Any]  # (answer, object or None) -> spec
    spec_of: Callable[[Any], Any]  # object -> spec (to restore it)


@dataclass(frozen=True)
class Scope:
    """Where objects live: the prefix of their Change targets, the leading
    arguments of their backend calls (by name), and their container in an
    inventory (a host, vCenter's inventory itself, a distributed switch)."""

    prefix: str
    args: dict[str, str]
    container: Callable[[Inventory], Any]


def host_scope(host: str) -> Scope:
    """The scope of a host's standard switches and port groups."""
    return Scope(f"{host}: ", {"host": host}, lambda inv: inv.host(host))


VCENTER = Scope("", {}, lambda inv: inv)


VSWITCH = Kind(
    "vSwitch", "vswitch", Host.vswitch,
    current=lambda v: vswitch_dict(v.num_ports, v.mtu, v.nics) | policy_of(v),
    wanted=lambda a, have: vswitch_dict(a.num_ports, a.mtu, a.nics) | wanted_policy(a, have),
    spec=lambda a, _have: VSwitchSpec(a.name, a.num_ports, a.mtu, tuple(a.nics), a.security(),
                                      a.teaming_value(), a.shaping_value()),
    spec_of=lambda v: VSwitchSpec(v.name, v.num_ports, v.mtu, v.nics, v.security, v.teaming,
                                  v.shaping),
)
# A port group's undo restores its computed policy as explicit overrides.
PORTGROUP = Kind(
    "port group", "portgroup", Host.portgroup,
    current=lambda p: portgroup_dict(p.vswitch, p.vlan) | policy_of(p),
    wanted=lambda a, have: portgroup_dict(a.vswitch or "", a.vlan) | wanted_policy(a, have),
    spec=lambda a, _have: PortGroupSpec(a.name, a.vswitch or "", a.vlan, a.security(),
                                        a.teaming_value(), a.shaping_value()),
    spec_of=lambda p: PortGroupSpec(p.name, p.vswitch, p.vlan, p.security, p.teaming,
                                    p.shaping),
)


def pvlan_text(p: Pvlan) -> str:
    """``101 isolated (primary 100)``: a PVLAN map entry in words."""
    return f"{p.secondary} {p.type}" + ("" if p.type == "promiscuous" else
                                        f" (primary {p.primary})")


def dvswitch_dict(d: DVSwitch) -> Settings:
    """A distributed switch's managed settings, for Change before/after."""
    return {"datacenter": d.datacenter, "version": d.version, "uplinks": list(d.uplinks),
            "mtu": d.mtu,
            "hosts": sorted(f"{m.host} ({', '.join(m.nics) or 'no NICs'})" for m in d.hosts),
            "pvlans": [pvlan_text(p) for p in sorted(d.pvlans,
                                                     key=lambda p: (p.primary, p.secondary))]}


def vlan_text(pg: DVPortgroup) -> int | str:
    """A distributed port group's VLAN: its ID, ``trunk 100-200, 300`` or ``pvlan 101``."""
    if pg.trunk is not None:
        return "trunk " + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in pg.trunk)
    if pg.pvlan is not None:
        return f"pvlan {pg.pvlan}"
    return pg.vlan or 0


def dvportgroup_dict(pg: DVPortgroup) -> Settings:
    """A distributed port group's managed settings (without policy)."""
    return {"dvswitch": pg.dvswitch, "vlan": vlan_text(pg), "ports": pg.ports,
            "binding": pg.binding}


def dvportgroup_spec(answer: DVPortgroupAnswer, have: DVPortgroup | None) -> DVPortgroup:
    """The port group to reach; a static one keeps the ports it grew to (vCenter
    adds ports to a static port group as adapters connect)."""
    spec = answer.spec()
    if have is not None and spec.binding == have.binding == "static":
        spec = replace(spec, ports=max(spec.ports, have.ports))
    return spec


DVSWITCH = Kind(
    "distributed switch", "dvswitch", Inventory.dvswitch,
    current=dvswitch_dict, wanted=lambda a, have: dvswitch_dict(a.spec(have)),
    spec=lambda a, have: a.spec(have), spec_of=lambda d: d,
)
DVPORTGROUP = Kind(
    "distributed port group", "dvportgroup", Inventory.dvportgroup,
    current=lambda p: dvportgroup_dict(p) | policy_of(p),
    wanted=lambda a, have: (dvportgroup_dict(dvportgroup_spec(a, have))
                            | wanted_policy(a, have)),
    spec=dvportgroup_spec, spec_of=lambda p: p,
)


def port_labels(inv: Inventory) -> dict[str, str]:
    """Distributed port key -> ``vm/adapter`` for the adapters read (the VMs named)."""
    return {a.port: f"{vm.name}/{a.label}" for vm in inv.vms for a in vm.adapters if a.port}


def mirror_dict(m: MirrorSession, labels: dict[str, str]) -> Settings:
    """A mirror session's managed settings, its ports as the VM adapters on them."""
    def label(end: MirrorPort) -> str:
        if end.vm is not None:
            return f"{end.vm}/{end.adapter}"
        if end.port is not None:
            return labels.get(end.port, f"port {end.port}")
        return f"uplink {end.uplink}" if end.uplink is not None else str(end.ip)

    tx, rx = {label(e) for e in m.transmitted}, {label(e) for e in m.received}
    direction = (None if not tx | rx else "both" if tx == rx else
                 "transmitted" if not rx else "received" if not tx else "mixed")
    return {"type": m.kind, "enabled": m.enabled, "sources": sorted(tx | rx),
            "direction": direction, "source_vlans": sorted(m.source_vlans),
            "destination": sorted(label(e) for e in m.destination),
            "encapsulation_vlan": m.encapsulation_vlan, "strip_vlan": m.strip_vlan}


def mirror_kind(labels: dict[str, str]) -> Kind:
    """How to plan mirror sessions, their ports named after the VM adapters in ``labels``."""
    return Kind("mirror session", "mirror", DVSwitch.mirror,
                current=lambda m: mirror_dict(m, labels),
                wanted=lambda a, _have: mirror_dict(a.value(), labels),
                spec=lambda a, _have: a.value(), spec_of=lambda m: m)


def mirror_ops(answers: VSphereNetworkAnswers, inv: Inventory,
               absent: bool) -> list[Operation]:
    """Create/update (or, with ``absent``, remove) the answered mirror sessions."""
    kind, ops = mirror_kind(port_labels(inv)), []
    for switch in dict.fromkeys(m.dvswitch for m in answers.mirror_sessions):
        scope = Scope(f"{switch}: ", {"dvswitch": switch},
                      partial(Inventory.dvswitch, name=switch))
        ops += object_ops(inv, scope, kind, [m for m in answers.mirror_sessions
                                             if m.dvswitch == switch], absent)
    return ops


def object_ops(inv: Inventory, scope: Scope, kind: Kind, items: list[Any],
               absent: bool) -> list[Operation]:
    """Create/update (or, with ``absent``, remove) the answered objects in ``scope``."""
    ops = []
    container = scope.container(inv)
    for item in items:
        have = kind.find(container, item.name) if container is not None else None
        target = f"{scope.prefix}{kind.label} {item.name}"
        remove = command(f"remove_{kind.api}", **scope.args, name=item.name)
        if absent:
            if item.state == "absent" and have is not None:
                ops.append(Operation(Change(target, "delete", before=kind.current(have)),
                                     remove))
        elif item.state == "present":
            after = kind.wanted(item, have)
            if have is None:
                ops.append(Operation(Change(target, "create", after=after), command(
                    f"add_{kind.api}", **scope.args, spec=kind.spec(item, None)), remove))
            elif changed(kind.current(have), after)[1]:
                update = f"update_{kind.api}"
                before, wanted = changed(kind.current(have), after)
                ops.append(Operation(
                    Change(target, "update", before, wanted),
                    command(update, **scope.args, name=item.name, spec=kind.spec(item, have)),
                    command(update, **scope.args, name=item.name, spec=kind.spec_of(have))))
    return ops


def dvswitch_of(answers: VSphereNetworkAnswers, inv: Inventory, portgroup: str) -> str | None:
    """The switch of a distributed port group: answered (present) or vCenter's."""
    answer = next((p for p in answers.dvportgroups if p.name == portgroup), None)
    if answer is not None:
        return answer.dvswitch if answer.state == "present" else None
    have = inv.dvportgroup(portgroup)
    return have.dvswitch if have else None


def placed(answers: VSphereNetworkAnswers, inv: Inventory,
           answer: Placement) -> tuple[str, str | None]:
    """Where an answer places an adapter: (port group, its distributed switch or None)."""
    if answer.dvportgroup is None:
        return answer.network, None
    return answer.network, dvswitch_of(answers, inv, answer.dvportgroup) or "?"


def network_dict(portgroup: str | None, dvswitch: str | None) -> Settings:
    """An adapter's port group, and its distributed switch when it has one."""
    return {"port_group": portgroup} | ({"dvswitch": dvswitch} if dvswitch else {})


def adapter_ops(answers: VSphereNetworkAnswers, inv: Inventory) -> list[Operation]:
    """Move the answered VM adapters that are not on their port group yet."""
    ops = []
    for a in answers.vm_adapters:
        vm = inv.vm(a.vm)
        adapter = vm.adapter(a.adapter) if vm else None
        where = placed(answers, inv, a)
        if adapter is None or (adapter.network, adapter.dvswitch) == where:
            continue
        old, old_switch = adapter.network, adapter.dvswitch
        ops.append(Operation(
            Change(f"VM {a.vm}: {a.adapter}", "update", before=network_dict(old, old_switch),
                   after=network_dict(*where)),
            command("move_adapter", vm=a.vm, adapter=a.adapter, portgroup=a.network,
                    distributed=a.dvportgroup is not None),
            command("move_adapter", vm=a.vm, adapter=a.adapter, portgroup=old,
                    distributed=old_switch is not None) if old else None))
    return ops


def vmk_dict(v: Vmk | VmkSpec) -> Settings:
    """A VMkernel adapter's managed settings, for Change before/after (``dvswitch``
    only for one on a distributed port group)."""
    dhcp = v.dhcp if isinstance(v, Vmk) else v.address is None
    return {"portgroup": v.portgroup, "ip": "dhcp" if dhcp else f"{v.address}/{v.netmask}",
            "mtu": v.mtu, "services": sorted(v.services)} | (
                {"dvswitch": v.dvswitch} if v.dvswitch else {})


def vmk_spec_of(v: Vmk) -> VmkSpec:
    """The spec that restores ``v``."""
    return VmkSpec(v.portgroup, None if v.dhcp else v.address, None if v.dhcp else v.netmask,
                   v.mtu, tuple(sorted(v.services)), v.dvswitch)


def the_vmk(answer: VmkAnswer, host: Host, dvswitch: str | None) -> Vmk | None:
    """The existing adapter an answer is about on ``host``."""
    return host.vmk(answer.device) if answer.device else host.vmk_on(answer.network, dvswitch)


def vmk_ops(answers: VSphereNetworkAnswers, inv: Inventory, host: Host,
            absent: bool) -> list[Operation]:
    """Create/update (or, with ``absent``, remove) the answered VMkernel adapters."""
    ops = []
    h = host.name
    for v in answers.vmkernel:
        if v.host not in (None, h):
            continue
        name, switch = placed(answers, inv, v)
        have = the_vmk(v, host, switch)
        target = f"{h}: VMkernel " + (have.device if have else f"adapter on {name}")
        if absent:
            if v.state == "absent" and have is not None:
                ops.append(Operation(Change(target, "delete", before=vmk_dict(have)),
                                     command("remove_vmk", host=h, portgroup=have.portgroup,
                                             dvswitch=have.dvswitch),
                                     command("add_vmk", host=h, spec=vmk_spec_of(have))))
        elif v.state == "present":
            spec = v.spec(switch)
            after = vmk_dict(spec)
            if have is None:
                ops.append(Operation(Change(target, "create", after=after),
                                     command("add_vmk", host=h, spec=spec),
                                     command("remove_vmk", host=h, portgroup=name,
                                             dvswitch=switch)))
                continue
            if have.dvswitch and not switch:  # back to a standard port group
                after["dvswitch"] = None
            before, wanted = changed(vmk_dict(have), after)
            if wanted:
                ops.append(Operation(
                    Change(target, "update", before, wanted),
                    command("update_vmk", host=h, portgroup=have.portgroup, spec=spec,
                            dvswitch=have.dvswitch),
                    command("update_vmk", host=h, portgroup=name, spec=vmk_spec_of(have),
                            dvswitch=switch)))
    return ops


def operations(answers: VSphereNetworkAnswers, inv: Inventory) -> list[Operation]:
    """Every change, in a safe order: distributed switches and port groups; per
    host vSwitches, port groups, VMkernel adapters; mirror session removals, VM
    adapter moves, mirror sessions; then removals (per host VMkernel adapters,
    port groups, vSwitches; distributed port groups, distributed switches)."""
    hosts = selected_hosts(answers, inv)
    vcenter: list[tuple[Kind, list[Any]]] = [(DVSWITCH, list(answers.dvswitches)),
                                             (DVPORTGROUP, list(answers.dvportgroups))]
    ops: list[Operation] = []
    for kind, items in vcenter:
        ops += object_ops(inv, VCENTER, kind, items, absent=False)
    # Port groups are removed before their vSwitch, created after it; a
    # VMkernel adapter is created after its port group, removed before it; a
    # mirror session is made once its VM adapters are on their port group.
    for absent in (False, True):
        if absent:
            ops += [*mirror_ops(answers, inv, True), *adapter_ops(answers, inv),
                    *mirror_ops(answers, inv, False)]
        for host in hosts:
            kinds: list[tuple[Kind, list[Any]]] = [
                (VSWITCH, list(answers.vswitches)), (PORTGROUP, list(answers.portgroups))]
            if absent:
                ops += vmk_ops(answers, inv, host, True)
            for kind, items in reversed(kinds) if absent else kinds:
                ops += object_ops(inv, host_scope(host.name), kind, items, absent)
            if not absent:
                ops += vmk_ops(answers, inv, host, False)
    for kind, items in reversed(vcenter):
        ops += object_ops(inv, VCENTER, kind, items, absent=True)
    risks = management_paths(answers, inv)
    return [replace(op, risky=risks.get(op.change.target, "")) if op.change.action != "create"
            else op for op in ops]


def management(answers: VSphereConnection, vmk: Vmk | None) -> str:
    """Why ``vmk`` carries the session's management network ("" when it does not)."""
    if vmk is None:
        return ""
    why = ("it is tagged for the management service" if "management" in vmk.services
           else f"its address is the server {answers.server}"
           if vmk.address == answers.server else "")
    return (f"{vmk.device} carries the management network this session uses ({why}); "
            "it is never removed, moved, re-addressed or untagged") if why else ""


def management_paths(answers: VSphereNetworkAnswers, inv: Inventory) -> dict[str, str]:
    """Change target -> why changing it can cut the management path: the management
    VMkernel adapters, their port groups and their (standard or distributed) switches."""
    risks: dict[str, str] = {}
    for h in inv.hosts:
        for v in h.vmks:
            if not management(answers, v):
                continue
            why = f"carries {v.device}, the management network of host '{h.name}'"
            if v.dvswitch:
                paths = [f"distributed port group {v.portgroup}",
                         f"distributed switch {v.dvswitch}"]
            else:
                pg = h.portgroup(v.portgroup)
                paths = [f"{h.name}: port group {v.portgroup}",
                         *([f"{h.name}: vSwitch {pg.vswitch}"] if pg else [])]
            risks[f"{h.name}: VMkernel {v.device}"] = f"{v.device} is the management network " \
                f"of host '{h.name}'"
            for path in paths:
                risks.setdefault(path, why)
    return risks


# The kind of object of a command's method (add_/update_/remove_ + this word).
KINDS = {"vswitch": VSWITCH, "portgroup": PORTGROUP, "dvswitch": DVSWITCH,
         "dvportgroup": DVPORTGROUP}


def vms_named(command: Command) -> set[str]:
    """The VMs whose adapters observing ``command`` needs (a move, a mirror's ends)."""
    op, a = decode(command)
    spec = a.get("spec")
    if op == "move_adapter":
        return {a["vm"]}
    if isinstance(spec, MirrorSession):
        return {e.vm for e in (*spec.transmitted, *spec.received, *spec.destination) if e.vm}
    return set()


def holds(inv: Inventory, command: Command) -> bool:
    """Whether ``inv`` is in the state ``command`` leads to: the object added or
    updated has the settings of its spec (those the spec sets), the one removed is
    gone, the adapter moved is on its port group."""
    op, a = decode(command)
    verb, _, what = op.partition("_")
    if what == "adapter":
        vm = inv.vm(a["vm"])
        found = vm.adapter(a["adapter"]) if vm else None
        return found is not None and found.network == a["portgroup"] and (
            found.dvswitch is not None) == a["distributed"]
    host = inv.host(a["host"]) if "host" in a else None
    if what == "vmk":
        if verb == "remove":
            return host is None or host.vmk_on(a["portgroup"], a["dvswitch"]) is None
        v = host.vmk_on(a["spec"].portgroup, a["spec"].dvswitch) if host else None
        return v is not None and vmk_dict(v) == vmk_dict(a["spec"])
    kind = mirror_kind(port_labels(inv)) if what == "mirror" else KINDS[what]
    container = host if "host" in a else inv.dvswitch(a["dvswitch"]) if what == "mirror" \
        else inv
    obj = kind.find(container, a.get("name") or a["spec"].name) if container is not None \
        else None
    if verb == "remove":
        return obj is None
    have = kind.current(obj) if obj is not None else {}
    return obj is not None and all(have.get(k) == x for k, x in kind.current(a["spec"]).items()
                                   if x is not None)


@dataclass(frozen=True)
class VSphereFacts:
    """What the ``vsphere_network`` step read: vSphere's inventory (``Facts()``:
    nothing read, an empty ESXi host)."""

    inventory: Inventory = Inventory("esx")


class VSphereNetworkStep(Step[VSphereNetworkAnswers]):
    """vSphere standard vSwitches, port groups and VM adapter placement."""

    name = "vsphere_network"
    title = "vSphere networking"
    help = (
        "Standard vSwitches and port groups on ESXi hosts (directly or through vCenter),\n"
        "and which port group VM network adapters are on. VLAN 4095 = trunk (all VLANs).\n"
        "Distributed switches, their port groups and mirror sessions: answers file only.\n"
        "TLS is verified: give a CA file or pin the SHA-256 thumbprint; 'insecure' is for\n"
        "labs only. Only what is listed is changed; state: absent removes an item.\n"
        "If a change fails, what this run did is undone and the report says what remains."
    )
    Answers = VSphereNetworkAnswers
    Connection = VSphereConnection
    Facts = VSphereFacts
    compensate = True

    def example(self) -> dict[str, Any]:
        """A monitoring port group (promiscuous, trunk), a VLAN port group, one VM moved."""
        return VSphereNetworkAnswers.model_validate({
            "server": "vcenter.example.net", "user": "administrator@vsphere.local",
            "password": "env:VSPHERE_PASSWORD", "thumbprint": "AB:" * 31 + "CD",
            "hosts": {"cluster": "Cluster1"},
            "vswitches": [{"name": "vSwitch1", "mtu": 9000, "nics": ["vmnic1"]}],
            "portgroups": [
                {"name": "Monitoring", "vswitch": "vSwitch1", "vlan": 4095,
                 "allow_promiscuous": True, "forged_transmits": True, "mac_changes": False},
                {"name": "EastWest-20", "vswitch": "vSwitch1", "vlan": 20},
            ],
            "vm_adapters": [{"vm": "sensor01", "adapter": "Network adapter 2",
                             "portgroup": "Monitoring"}],
        }).model_dump(mode="json", exclude_none=True)

    def discover(self, connection: VSphereConnection, ctx: Context) -> VSphereFacts:
        """The inventory (hosts, switches, port groups, NICs, VMs with their adapters),
        read in bulk: what the wizard's choices need."""
        return VSphereFacts(self._api(connection, ctx).inventory())

    def facts_for(self, answers: VSphereNetworkAnswers, ctx: Context) -> VSphereFacts:
        """The inventory with the adapters of the VMs the answers name only: the
        hosts' networking and VM names are small, every VM's devices are not."""
        return VSphereFacts(self._api(answers, ctx).inventory(vms=named_vms(answers)))

    @staticmethod
    def _api(given: VSphereConnection, ctx: Context) -> VSphereAPI:
        return vsphere_api(ctx.backends, connection(given))

    def questions(self, facts: VSphereFacts) -> list[Question]:
        """Hosts, vSwitches, port groups and adapters, offering what the hosts have."""
        inv = facts.inventory
        nics = sorted({n.device for h in inv.hosts for n in h.pnics
                       if n.vswitch is None and n.dvswitch is None})
        vswitches = sorted({v.name for h in inv.hosts for v in h.vswitches})
        pgs = sorted({p.name for h in inv.hosts for p in h.portgroups})
        labels = sorted({a.label for v in inv.vms for a in v.adapters})
        states = ("present", "absent")
        return [
            ask(VSphereNetworkAnswers, "hosts", kind="multi",
                choices=("all", *(h.name for h in inv.hosts))),
            ask(VSphereNetworkAnswers, "vswitches", summary="name", fields=(
                ask(VSwitchAnswer, "name"), ask(VSwitchAnswer, "num_ports"),
                ask(VSwitchAnswer, "mtu"), ask(VSwitchAnswer, "nics", choices=tuple(nics)),
                ask(VSwitchAnswer, "state", choices=states))),
            ask(VSphereNetworkAnswers, "portgroups", summary="name", fields=(
                ask(PortGroupAnswer, "name"),
                ask(PortGroupAnswer, "vswitch", choices=tuple(vswitches), refs="vswitches"),
                ask(PortGroupAnswer, "vlan"),
                *(ask(PortGroupAnswer, k) for k in SECURITY_KEYS),
                ask(PortGroupAnswer, "state", choices=states))),
            ask(VSphereNetworkAnswers, "vm_adapters", summary="vm", fields=(
                ask(AdapterAnswer, "vm", choices=tuple(v.name for v in inv.vms)),
                ask(AdapterAnswer, "adapter", choices=tuple(labels)),
                ask(AdapterAnswer, "portgroup", choices=tuple(pgs), refs="portgroups"))),
        ]

    def current(self, facts: VSphereFacts) -> dict[str, Any]:
        """The standard vSwitches and port groups on the hosts other than ESXi's own
        (vSwitch0, VM Network, Management Network), as records.

        vSphere has no place to mark an object as hostsetup's, so "managed" means
        what the answers could edit: every vSwitch and port group an operator or
        hostsetup added.  Where hosts differ, the first host having it is shown.
        VM adapters are not prefilled: an adapter record is a move to make.
        """
        vswitches: dict[str, dict[str, Any]] = {}
        portgroups: dict[str, dict[str, Any]] = {}
        for host in facts.inventory.hosts:
            for v in host.vswitches:
                if v.name not in ESXI_DEFAULTS:
                    vswitches.setdefault(v.name, {"name": v.name, "num_ports": v.num_ports,
                                                  "mtu": v.mtu, "nics": sorted(v.nics)})
            for p in host.portgroups:
                if p.name not in ESXI_DEFAULTS:
                    portgroups.setdefault(p.name, {
                        "name": p.name, "vswitch": p.vswitch, "vlan": p.vlan,
                        **{k: getattr(p.security, k) for k in SECURITY_KEYS
                           if getattr(p.security, k) is not None}})
        found = {"vswitches": list(vswitches.values()), "portgroups": list(portgroups.values())}
        return {k: v for k, v in found.items() if v}

    def validate(self, answers: VSphereNetworkAnswers, facts: VSphereFacts) -> list[Problem]:
        """Hosts, NICs, vSwitches, VMs and adapters named in the answers exist and fit."""
        inv = facts.inventory
        problems = self._host_problems(answers, inv)
        hosts = selected_hosts(answers, inv)
        for host in hosts:
            problems += self._switch_problems(answers, host)
            problems += self._teaming_problems(answers, host)
        problems += self._adapter_problems(answers, inv, hosts)
        problems += self._vmk_problems(answers, inv, hosts)
        problems += self._distributed_problems(answers, inv)
        # A rule on answered values only (an answered vSwitch's uplinks) fails
        # alike on every host: say it once.
        return list(dict.fromkeys(problems))

    def _distributed_problems(self, answers: VSphereNetworkAnswers,
                              inv: Inventory) -> list[Problem]:
        """Distributed switches and port groups fit vCenter's inventory."""
        keys = [k for k in ("dvswitches", "dvportgroups", "mirror_sessions")
                if getattr(answers, k)]
        if not keys:
            return []
        if inv.kind != "vcenter":
            return [Problem((keys[0],), f"distributed switches need vCenter; {answers.server} "
                            "is an ESXi host")]
        problems = []
        for i, d in enumerate(answers.dvswitches):
            problems += self._dvswitch_problems(answers, inv, i, d)
        for i, p in enumerate(answers.dvportgroups):
            problems += self._dvportgroup_problems(answers, inv, i, p)
        for i, m in enumerate(answers.mirror_sessions):
            if m.state == "present":
                problems += mirror_problems(answers, inv, ("mirror_sessions", i), m)
        return problems

    def _dvswitch_problems(self, answers: VSphereNetworkAnswers, inv: Inventory, i: int,
                           d: DVSwitchAnswer) -> list[Problem]:
        at: tuple[str | int, ...] = ("dvswitches", i)
        have = inv.dvswitch(d.name)
        if d.state == "absent":
            named = {p.name for p in answers.dvportgroups if p.state == "absent"}
            left = sorted(p.name for p in inv.dvportgroups
                          if p.dvswitch == d.name and p.name not in named)
            return [Problem((*at, "state"), (
                f"distributed switch '{d.name}' still carries port group(s) "
                f"{', '.join(left)}; mark them absent too"))] if left else []
        problems = []
        if d.datacenter not in inv.datacenters:
            problems.append(Problem((*at, "datacenter"), (
                f"no datacenter '{d.datacenter}' (datacenters: "
                f"{', '.join(inv.datacenters) or 'none'})")))
        elif have is not None and have.datacenter != d.datacenter:
            problems.append(Problem((*at, "datacenter"), (
                f"distributed switch '{d.name}' is in datacenter '{have.datacenter}'; a "
                "switch does not move")))
        if have is not None and d.version and have.version != d.version:
            problems.append(Problem((*at, "version"), (
                f"distributed switch '{d.name}' is version {have.version}; hostsetup does not "
                "upgrade a switch (leave version out, or upgrade it in vCenter)")))
        for j, h in enumerate(d.hosts):
            problems += member_problems(inv, d, (*at, "hosts", j), h)
        if d.pvlans is not None:
            kept = {p.secondary for p in d.pvlans}
            answered = {p.name for p in answers.dvportgroups}
            problems += [Problem((*at, "pvlans"), (
                f"PVLAN {p.pvlan} is used by distributed port group '{p.name}'; keep it in "
                "the map")) for p in inv.dvportgroups if p.dvswitch == d.name
                and p.pvlan is not None and p.pvlan not in kept and p.name not in answered]
        return problems

    def _dvportgroup_problems(self, answers: VSphereNetworkAnswers, inv: Inventory, i: int,
                              p: DVPortgroupAnswer) -> list[Problem]:
        at: tuple[str | int, ...] = ("dvportgroups", i)
        have = inv.dvportgroup(p.name)
        if p.state == "absent":
            users = [] if have is None else dvportgroup_users(answers, inv, have)
            return [Problem((*at, "state"), (
                f"distributed port group '{p.name}' carries {', '.join(users)}; remove or "
                "move them in the answers too"))] if users else []
        switch = switch_of(answers, inv, p.dvswitch or "")
        if switch is None:
            return [Problem((*at, "dvswitch"), (
                f"distributed switch '{p.dvswitch}' is neither in vCenter nor in the answers' "
                "dvswitches"))]
        problems = []
        if have is not None and have.dvswitch != p.dvswitch:
            problems.append(Problem((*at, "dvswitch"), (
                f"distributed port group '{p.name}' is on distributed switch "
                f"'{have.dvswitch}'; a port group does not move to another switch")))
        if have is None and any(h.portgroup(p.name) for h in inv.hosts):
            problems.append(Problem((*at, "name"), (
                f"a standard port group is called '{p.name}'; vCenter needs a name of its "
                "own for a distributed port group")))
        secondaries = sorted(x.secondary for x in switch.pvlans)
        if p.pvlan is not None and p.pvlan not in secondaries:
            problems.append(Problem((*at, "pvlan"), (
                f"PVLAN {p.pvlan} is not in the PVLAN map of distributed switch "
                f"'{p.dvswitch}' (secondary IDs: {', '.join(map(str, secondaries)) or 'none'})")))
        for field in ("active_nics", "standby_nics"):
            for k, uplink in enumerate(getattr(p.teaming, field, None) or ()):
                if uplink not in switch.uplinks:
                    problems.append(Problem((*at, "teaming", field, k), (
                        f"'{uplink}' is not an uplink of distributed switch '{p.dvswitch}' "
                        f"(uplinks: {', '.join(switch.uplinks)})")))
        return problems

    def _teaming_problems(self, answers: VSphereNetworkAnswers, host: Host) -> list[Problem]:
        """Active/standby NICs are uplinks of the vSwitch: the answered uplinks of an
        answered vSwitch, else those the host's vSwitch has."""
        problems = []
        answered = {v.name: v.nics for v in answers.vswitches if v.state == "present"}
        items: list[tuple[str, list[Any]]] = [("vswitches", list(answers.vswitches)),
                                              ("portgroups", list(answers.portgroups))]
        for key, records in items:
            for i, item in enumerate(records):
                if item.state == "absent" or item.teaming is None:
                    continue
                switch = item.name if key == "vswitches" else item.vswitch or ""
                have = host.vswitch(switch)
                if switch in answered:
                    uplinks, where = answered[switch], "in the answers"
                elif have is not None:
                    uplinks, where = list(have.nics), f"on host '{host.name}'"
                else:
                    continue  # an unknown vSwitch is reported by _switch_problems
                for field in ("active_nics", "standby_nics"):
                    for j, nic in enumerate(getattr(item.teaming, field) or ()):
                        if nic not in uplinks:
                            problems.append(Problem((key, i, "teaming", field, j), (
                                f"'{nic}' is not an uplink of vSwitch '{switch}' {where} "
                                f"(uplinks: {', '.join(uplinks) or 'none'})")))
        return problems

    def _host_problems(self, answers: VSphereNetworkAnswers, inv: Inventory) -> list[Problem]:
        known = ", ".join(h.name for h in inv.hosts) or "none"
        if isinstance(answers.hosts, ClusterHosts):
            clusters = sorted({h.cluster for h in inv.hosts if h.cluster})
            if answers.hosts.cluster not in clusters:
                return [Problem(("hosts", "cluster"), f"no cluster '{answers.hosts.cluster}' "
                                f"(clusters: {', '.join(clusters) or 'none'})")]
        elif isinstance(answers.hosts, list):
            return [Problem(("hosts", i), f"no host '{name}' (hosts: {known})")
                    for i, name in enumerate(answers.hosts) if inv.host(name) is None]
        return []

    def _switch_problems(self, answers: VSphereNetworkAnswers, host: Host) -> list[Problem]:
        problems = []
        present = {v.name for v in answers.vswitches if v.state == "present"}
        for i, vs in enumerate(answers.vswitches):
            if vs.state == "absent":
                have = host.vswitch(vs.name)
                named = {p.name for p in answers.portgroups if p.state == "absent"}
                left = sorted(set(have.portgroups) - named) if have else []
                if left:
                    problems.append(Problem(("vswitches", i, "state"), (
                        f"vSwitch '{vs.name}' on host '{host.name}' still carries port "
                        f"group(s) {', '.join(left)}; mark them absent too")))
                continue
            pnics = {n.device: n for n in host.pnics}
            for j, nic in enumerate(vs.nics):
                if nic not in pnics:
                    problems.append(Problem(("vswitches", i, "nics", j), (
                        f"'{nic}' is not a physical NIC of host '{host.name}' "
                        f"(has: {', '.join(sorted(pnics)) or 'none'})")))
                elif pnics[nic].vswitch not in (None, vs.name) or pnics[nic].dvswitch:
                    used = (f"vSwitch '{pnics[nic].vswitch}'" if pnics[nic].vswitch else
                            f"distributed switch '{pnics[nic].dvswitch}'")
                    problems.append(Problem(("vswitches", i, "nics", j), (
                        f"'{nic}' on host '{host.name}' is already an uplink of {used}")))
        for i, pg in enumerate(answers.portgroups):
            if pg.state == "present" and pg.vswitch not in present and not host.vswitch(
                    pg.vswitch or ""):
                problems.append(Problem(("portgroups", i, "vswitch"), (
                    f"vSwitch '{pg.vswitch}' is neither on host '{host.name}' nor in "
                    "the answers' vswitches")))
        return problems

    def _vmk_problems(self, answers: VSphereNetworkAnswers, inv: Inventory,
                      hosts: list[Host]) -> list[Problem]:
        """Hosts, devices and port groups exist, one adapter per port group, static
        addresses unused elsewhere, the management adapter untouched."""
        problems = []
        names = [h.name for h in hosts]
        answered = {p.name for p in answers.portgroups if p.state == "present"}
        removed = {(v.host, v.portgroup) for v in answers.vmkernel if v.state == "absent"}
        for i, pg in enumerate(answers.portgroups):
            for host in hosts if pg.state == "absent" else ():
                on = host.vmk_on(pg.name)
                if on and not {(None, pg.name), (host.name, pg.name)} & removed:
                    problems.append(Problem(("portgroups", i, "state"), (
                        f"port group '{pg.name}' on host '{host.name}' carries VMkernel "
                        f"adapter {on.device}; mark it absent under vmkernel too")))
        for i, v in enumerate(answers.vmkernel):
            if v.host is not None and v.host not in names:
                problems.append(Problem(("vmkernel", i, "host"), (
                    f"host '{v.host}' is not a selected host (selected: "
                    f"{', '.join(names) or 'none'})")))
                continue
            for host in hosts:
                if v.host in (None, host.name):
                    problems += self._vmk_host_problems(answers, inv, host, i, v, answered)
        return problems

    def _vmk_host_problems(self, answers: VSphereNetworkAnswers, inv: Inventory, host: Host,
                           i: int, v: VmkAnswer, answered: set[str]) -> list[Problem]:
        here = f"on host '{host.name}'"
        name, switch = placed(answers, inv, v)
        have = the_vmk(v, host, switch)
        if v.device and have is None:
            has = ", ".join(x.device for x in host.vmks) or "none"
            return [Problem(("vmkernel", i, "device"),
                            f"no VMkernel adapter '{v.device}' {here} (has: {has})")]
        guard = management(answers, have)
        if v.state == "absent":
            return [Problem(("vmkernel", i, "state"), guard)] if guard else []
        key = "dvportgroup" if v.dvportgroup else "portgroup"
        other = host.vmk_on(name, switch)
        if v.dvportgroup is not None:
            problems = dv_placement_problems(answers, inv, ("vmkernel", i, key), name, host.name)
        elif host.portgroup(name) is None and name not in answered:
            problems = [Problem(("vmkernel", i, key), (
                f"port group '{name}' is neither {here} nor in the answers' portgroups"))]
        else:
            problems = []
        if not problems and other is not None and (have is None or other.device != have.device):
            problems.append(Problem(("vmkernel", i, key), (
                f"port group '{name}' {here} already has VMkernel adapter "
                f"{other.device} (one per port group)")))
        if guard and have is not None:
            wanted = vmk_dict(v.spec(switch))
            for field, moved in ((key, (name, switch) != (have.portgroup, have.dvswitch)),
                                 ("ip", wanted["ip"] != vmk_dict(have)["ip"]),
                                 ("services", "management" not in wanted["services"])):
                if moved:
                    problems.append(Problem(("vmkernel", i, field), guard))
        if isinstance(v.ip, StaticIp):
            address = str(v.ip.address)
            for h in inv.hosts:
                for x in h.vmks:
                    mine = h.name == host.name and have is not None and x.device == have.device
                    if x.address == address and not mine:
                        problems.append(Problem(("vmkernel", i, "ip", "address"), (
                            f"{address} is already the address of {x.device} on host "
                            f"'{h.name}'")))
        return problems

    def _adapter_problems(self, answers: VSphereNetworkAnswers, inv: Inventory,
                          hosts: list[Host]) -> list[Problem]:
        problems = []
        selected = {h.name for h in hosts}
        answered = {p.name for p in answers.portgroups if p.state == "present"}
        for i, a in enumerate(answers.vm_adapters):
            vm = inv.vm(a.vm)
            if vm is None:
                problems.append(Problem(("vm_adapters", i, "vm"), f"no VM '{a.vm}'"))
                continue
            if vm.adapter(a.adapter) is None:
                labels = ", ".join(x.label for x in vm.adapters) or "none"
                problems.append(Problem(("vm_adapters", i, "adapter"), (
                    f"VM '{a.vm}' has no '{a.adapter}' (has: {labels})")))
            if a.dvportgroup is not None:
                problems += dv_placement_problems(answers, inv, ("vm_adapters", i, "dvportgroup"),
                                                  a.dvportgroup, vm.host or "")
                continue
            host = inv.host(vm.host or "")
            on_host = host is not None and host.portgroup(a.network) is not None
            if not on_host and not (a.portgroup in answered and vm.host in selected):
                problems.append(Problem(("vm_adapters", i, "portgroup"), (
                    f"port group '{a.portgroup}' is not on host '{vm.host}' of VM '{a.vm}' "
                    "and the answers do not create it there")))
        return problems

    def plan(self, answers: VSphereNetworkAnswers, ctx: Context) -> list[Operation]:
        """Creations and updates per host, adapter moves, then removals."""
        facts: VSphereFacts = self.facts(answers, ctx)
        return operations(answers, facts.inventory)

    def execute(self, answers: VSphereNetworkAnswers, command: Command, ctx: Context) -> None:
        """One VSphereAPI call; a VM reconfigure reports its task's progress."""
        text = f"vsphere_network: {command.get('op')}"
        carry_out(self._api(answers, ctx), command, lambda frac: ctx.progress(frac, text))

    def observe(self, answers: VSphereNetworkAnswers, command: Command,
                ctx: Context) -> bool:
        """Re-read the inventory (with the adapters of the VMs the command names):
        is the object as the command leaves it?"""
        inv = self._api(answers, ctx).inventory(vms=vms_named(command))
        return holds(inv, command)

    def apply(self, answers: VSphereNetworkAnswers, ops: list[Operation],
              ctx: Context) -> None:
        """Carry out ``ops``, each journaled before and after.  On a failure this
        run's operations are reverted in reverse order (journaled); what remains
        changed is then read back from vSphere, not inferred from the undo calls
        (removing a vSwitch also removes its port groups).  If vSphere is lost,
        the notes say what took effect before (nothing can be undone)."""
        api = self._api(answers, ctx)
        done: list[Operation] = []
        for i, op in enumerate(ops):
            text = self.doing(op)
            ctx.progress(i / len(ops), text)
            ctx.journal.begin(self.name, op)
            try:
                carry_out(api, op.do, partial(part_progress, ctx, i / len(ops), len(ops), text))
            except BackendUnreachable:
                ctx.notes.append("applied before vSphere was lost, not undone: "
                                 + (", ".join(o.change.describe() for o in done) or "nothing"))
                raise
            except (BackendError, StepFailed) as exc:
                ctx.journal.end(self.name, op, str(exc))
                kept, errors = self.revert(answers, done, ctx)
                remains = self._remains(answers, ctx, [*done, op], kept, errors)
                undone = sum(o.change not in remains for o in done)
                raise StepFailed(
                    f"{op.change.action} {op.change.target} failed: {exc}; "
                    f"undid {undone} change(s) made by this run", remains, errors) from None
            ctx.journal.end(self.name, op)
            done.append(op)
            ctx.log(f"vsphere_network: {text}")
        ctx.progress(1.0, "vSphere networking done")
        ctx.notes.append(f"vsphere_network: {len(done)} change(s) applied")

    def _remains(self, answers: VSphereNetworkAnswers, ctx: Context, tried: list[Operation],
                 kept: list[Operation], errors: list[str]) -> list[Change]:
        """What remains changed, from a re-read of the inventory after the undo: an
        operation whose undo does not hold, or without an undo whose do holds.

        If the inventory cannot be re-read, ``kept`` (the operations whose undo
        failed or that have none) are reported, and why the list is not checked is
        added to ``errors``.
        """
        try:
            inv = self.facts_for(answers, ctx).inventory
        except BackendError:
            errors.append("could not re-read the inventory after the undo: what remains "
                          "changed is inferred from the calls that succeeded")
            return [o.change for o in kept]
        return [o.change for o in tried
                if (not holds(inv, o.undo) if o.undo is not None else holds(inv, o.do))]

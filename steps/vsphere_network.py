"""Step ``vsphere_network``: standard vSwitches, port groups and VM adapters.

On every selected ESXi host (all, those of a cluster, or named ones) the
answered vSwitches (ports, MTU, uplink NICs, policy) and port groups (vSwitch,
VLAN, policy overrides) are created or updated in place, or removed when
marked ``state: absent``; then VM network adapters are moved onto port groups
(ReconfigVM_Task, waited on).  Only what the answers name is touched.

A policy is security (``allow_promiscuous``, ``forged_transmits``,
``mac_changes``), ``teaming`` (load balancing, active/standby NIC order,
notify switches, failback, failure detection) and ``shaping``.  On a vSwitch
the fields left out keep their value (ESXi's default on a new one); on a port
group they are inherited from the vSwitch when it is created and left as they
are when it is updated.

If a change fails, what this run did is undone in reverse order (created
objects removed, updated ones restored, adapters moved back).  What remains
changed is then computed from a re-read of the inventory, not from which
undo calls succeeded (removing a vSwitch also removes its port groups), and
every undo call that failed is listed as an error of the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.vsphere import (
    Host,
    Inventory,
    PortGroupSpec,
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
    Context,
    Operation,
    Problem,
    Question,
    SecretRef,
    Step,
    StepFailed,
    StepModel,
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

    allow_promiscuous: bool | None = Field(None, description="allow promiscuous mode")
    forged_transmits: bool | None = Field(None, description="allow forged transmits")
    mac_changes: bool | None = Field(None, description="allow MAC address changes")
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

    name: str = Field(min_length=1, max_length=32, description="vSwitch name, e.g. vSwitch1")
    num_ports: int = Field(128, ge=8, le=4088, description="number of ports (8-4088)")
    mtu: int = Field(1500, ge=1280, le=9000, description="MTU in bytes (1280-9000)")
    nics: list[str] = Field(default_factory=list,
                            description="uplink physical NICs (free ones), e.g. [vmnic1]")
    state: State = Field("present", description="present, or absent to remove it")


class PortGroupAnswer(PolicyAnswer):
    """One standard port group; unset policy fields inherit the vSwitch's."""

    name: str = Field(min_length=1, max_length=59, description="port group name")
    vswitch: str | None = Field(None, description="vSwitch it is on (required when present)")
    vlan: int = Field(0, ge=0, le=4095, description="VLAN ID 0-4095; 0 = none, 4095 = trunk")
    state: State = Field("present", description="present, or absent to remove it")

    @model_validator(mode="after")
    def _vswitch_when_present(self) -> PortGroupAnswer:
        if self.state == "present" and not self.vswitch:
            raise ValueError(f"port group '{self.name}': 'vswitch' is required when present")
        return self


class AdapterAnswer(StepModel):
    """Move one VM network adapter onto a port group."""

    vm: str = Field(min_length=1, max_length=80, description="VM name")
    adapter: str = Field(pattern=r"^Network adapter \d+$",
                         description="adapter label, e.g. 'Network adapter 1'")
    portgroup: str = Field(min_length=1, max_length=59, description="target port group")


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


class VmkAnswer(StepModel):
    """One VMkernel adapter, identified by its port group (or by ``device`` to move it)."""

    host: str | None = Field(None, min_length=1, max_length=255,
                             description="the host (required for a static IP); "
                             "unset = every selected host")
    device: str | None = Field(None, pattern=r"^vmk\d{1,3}$",
                               description="an existing adapter to move or edit, e.g. vmk1")
    portgroup: str = Field(min_length=1, max_length=59, description="standard port group")
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

    def spec(self) -> VmkSpec:
        """What the adapter should be."""
        ip = self.ip if isinstance(self.ip, StaticIp) else None
        return VmkSpec(self.portgroup, str(ip.address) if ip else None,
                       str(ip.netmask) if ip else None, self.mtu,
                       tuple(sorted(set(self.services))))


class VSphereNetworkAnswers(StepModel):
    """Answers of the ``vsphere_network`` step."""

    server: ServerName = Field(description="vCenter or ESXi host name or address")
    port: int = Field(443, ge=1, le=65535, description="HTTPS port")
    user: str = Field("root", min_length=1, description="login user")
    password: SecretRef = Field(description="password reference: env:NAME or file:PATH")
    thumbprint: str | None = Field(
        None, pattern=THUMBPRINT,
        description="pin the server certificate by its SHA-256 thumbprint (hex, colons allowed)")
    ca_file: str | None = Field(None, description="CA bundle (PEM) to verify the server with")
    insecure: bool = Field(False, description="do not verify TLS at all (lab only; warned)")
    hosts: Literal["all"] | ClusterHosts | list[str] = Field(
        "all", description="'all', {cluster: NAME} or a list of host names")
    vswitches: list[VSwitchAnswer] = Field(default_factory=list, description="standard vSwitches")
    portgroups: list[PortGroupAnswer] = Field(default_factory=list, description="port groups")
    vm_adapters: list[AdapterAnswer] = Field(default_factory=list,
                                             description="VM adapters to move to a port group")
    vmkernel: list[VmkAnswer] = Field(default_factory=list, description="VMkernel adapters")

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
        if self.insecure and (self.thumbprint or self.ca_file):
            raise ValueError("insecure: true contradicts thumbprint/ca_file; choose one")
        for kind, names in (("vSwitch", [v.name for v in self.vswitches]),
                            ("port group", [p.name for p in self.portgroups])):
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
        absent_pg = {p.name for p in self.portgroups if p.state == "absent"}
        for a in self.vm_adapters:
            if a.portgroup in absent_pg:
                raise ValueError(f"'{a.adapter}' of VM '{a.vm}' moves to port group "
                                 f"'{a.portgroup}', which the answers remove")
        self._vmk_rules(absent_pg)
        return self

    def _vmk_rules(self, absent_pg: set[str]) -> None:
        for i, v in enumerate(self.vmkernel):
            if v.state == "present" and v.portgroup in absent_pg:
                raise ValueError(f"vmkernel[{i}] is on port group '{v.portgroup}', which the "
                                 "answers remove")
        for what, keys in (
                ("a VMkernel adapter", [f"{v.host or 'every host'}/{v.device or v.portgroup}"
                                        for v in self.vmkernel]),
                ("a static VMkernel address", [str(v.ip.address) for v in self.vmkernel
                                               if isinstance(v.ip, StaticIp)])):
            dupes = repeated(keys)
            if dupes:
                raise ValueError(f"{what} is listed more than once: {', '.join(dupes)}")


def connection(section: dict[str, Any]) -> VSphereConn:
    """The connection from an answers section (the password reference is resolved)."""
    return VSphereConn(
        server=section["server"], port=int(section.get("port") or 443),
        user=section.get("user") or "root",
        password=resolve_secret(section["password"], "password"),
        thumbprint=section.get("thumbprint"), ca_file=section.get("ca_file"),
        insecure=bool(section.get("insecure")),
    )


def named_vms(answers: VSphereNetworkAnswers) -> set[str]:
    """The VMs whose adapters the answers move: the only ones whose devices are read."""
    return {a.vm for a in answers.vm_adapters}


def selected_hosts(answers: VSphereNetworkAnswers, inv: Inventory) -> list[Host]:
    """The hosts the answers select (unknown names are left to validate())."""
    if answers.hosts == "all":
        return list(inv.hosts)
    if isinstance(answers.hosts, ClusterHosts):
        return [h for h in inv.hosts if h.cluster == answers.hosts.cluster]
    return [h for h in inv.hosts if h.name in answers.hosts]


# A backend call: a VSphereAPI method name and its arguments.
Call = tuple[str, tuple[Any, ...]]


@dataclass
class Op:
    """A planned change with the backend calls that make and undo it.

    ``in_effect`` tells from a (re-read) inventory whether the change is in
    effect there, i.e. the object is not as it was before the run.
    """

    change: Change
    do: Call
    undo: Call | None
    in_effect: Callable[[Inventory], bool]


def part_progress(ctx: Context, start: float, count: int, text: str, frac: float) -> None:
    """Report progress inside one of ``count`` changes that begins at ``start``."""
    ctx.progress(start + frac / count, text)


def invoke(api: VSphereAPI, call: Call, progress: Callable[[float], None] | None = None) -> None:
    """Make a backend call; a VM reconfigure reports its task's progress."""
    method, args = call
    if method == "move_adapter":
        vm, adapter, portgroup = args
        api.move_adapter(vm, adapter, portgroup, progress)
    else:
        getattr(api, method)(*args)


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
    """How to plan one kind of host object (vSwitch or port group)."""

    label: str  # for Change targets
    api: str  # VSphereAPI methods add_<api>, update_<api>, remove_<api>
    find: Callable[[Host, str], Any]
    current: Callable[[Any], Settings]  # the object's settings
    wanted: Callable[[Any, Any], Settings]  # (answer, object or None) -> settings
    spec: Callable[[Any], Any]  # answer -> spec
    spec_of: Callable[[Any], Any]  # object -> spec (to restore it)


VSWITCH = Kind(
    "vSwitch", "vswitch", Host.vswitch,
    current=lambda v: vswitch_dict(v.num_ports, v.mtu, v.nics) | policy_of(v),
    wanted=lambda a, have: vswitch_dict(a.num_ports, a.mtu, a.nics) | wanted_policy(a, have),
    spec=lambda a: VSwitchSpec(a.name, a.num_ports, a.mtu, tuple(a.nics), a.security(),
                               a.teaming_value(), a.shaping_value()),
    spec_of=lambda v: VSwitchSpec(v.name, v.num_ports, v.mtu, v.nics, v.security, v.teaming,
                                  v.shaping),
)
# A port group's undo restores its computed policy as explicit overrides.
PORTGROUP = Kind(
    "port group", "portgroup", Host.portgroup,
    current=lambda p: portgroup_dict(p.vswitch, p.vlan) | policy_of(p),
    wanted=lambda a, have: portgroup_dict(a.vswitch or "", a.vlan) | wanted_policy(a, have),
    spec=lambda a: PortGroupSpec(a.name, a.vswitch or "", a.vlan, a.security(),
                                 a.teaming_value(), a.shaping_value()),
    spec_of=lambda p: PortGroupSpec(p.name, p.vswitch, p.vlan, p.security, p.teaming,
                                    p.shaping),
)


def finder(kind: Kind, host: str, name: str) -> Callable[[Inventory], Any]:
    """Looks up one host object in an inventory (``None`` when it is not there)."""
    def find(inv: Inventory) -> Any:
        h = inv.host(host)
        return kind.find(h, name) if h is not None else None
    return find


def exists(find: Callable[[Inventory], Any], created: bool) -> Callable[[Inventory], bool]:
    """In effect: the object exists (a creation) or does not (a removal)."""
    return lambda inv: (find(inv) is not None) == created


def differs(kind: Kind, find: Callable[[Inventory], Any],
            before: Settings) -> Callable[[Inventory], bool]:
    """In effect: the object is gone or one of ``before``'s settings is not restored."""
    def check(inv: Inventory) -> bool:
        obj = find(inv)
        return obj is None or any(kind.current(obj).get(k) != v for k, v in before.items())
    return check


def object_ops(host: Host, kind: Kind, items: list[Any], absent: bool) -> list[Op]:
    """Create/update (or, with ``absent``, remove) the answered objects on ``host``."""
    ops = []
    h = host.name
    for item in items:
        have = kind.find(host, item.name)
        target = f"{h}: {kind.label} {item.name}"
        remove: Call = (f"remove_{kind.api}", (h, item.name))
        find = finder(kind, h, item.name)
        if absent:
            if item.state == "absent" and have is not None:
                ops.append(Op(Change(target, "delete", before=kind.current(have)), remove, None,
                              exists(find, False)))
        elif item.state == "present":
            after = kind.wanted(item, have)
            if have is None:
                ops.append(Op(Change(target, "create", after=after),
                              (f"add_{kind.api}", (h, kind.spec(item))), remove,
                              exists(find, True)))
            elif changed(kind.current(have), after)[1]:
                update = f"update_{kind.api}"
                before, wanted = changed(kind.current(have), after)
                ops.append(Op(Change(target, "update", before, wanted),
                              (update, (h, item.name, kind.spec(item))),
                              (update, (h, item.name, kind.spec_of(have))),
                              differs(kind, find, before)))
    return ops


def adapter_moved(vm: str, label: str, old: str | None) -> Callable[[Inventory], bool]:
    """In effect: the adapter is not on its old network any more."""
    def check(inv: Inventory) -> bool:
        found = inv.vm(vm)
        adapter = found.adapter(label) if found else None
        return adapter is None or adapter.network != old
    return check


def adapter_ops(answers: VSphereNetworkAnswers, inv: Inventory) -> list[Op]:
    """Move the answered VM adapters that are not on their port group yet."""
    ops = []
    for a in answers.vm_adapters:
        vm = inv.vm(a.vm)
        adapter = vm.adapter(a.adapter) if vm else None
        if adapter is None or adapter.network == a.portgroup:
            continue
        old = adapter.network
        ops.append(Op(
            Change(f"VM {a.vm}: {a.adapter}", "update", before={"port_group": old},
                   after={"port_group": a.portgroup}),
            ("move_adapter", (a.vm, a.adapter, a.portgroup)),
            ("move_adapter", (a.vm, a.adapter, old)) if old else None,
            adapter_moved(a.vm, a.adapter, old),
        ))
    return ops


def vmk_dict(v: Vmk | VmkSpec) -> Settings:
    """A VMkernel adapter's managed settings, for Change before/after."""
    dhcp = v.dhcp if isinstance(v, Vmk) else v.address is None
    return {"portgroup": v.portgroup, "ip": "dhcp" if dhcp else f"{v.address}/{v.netmask}",
            "mtu": v.mtu, "services": sorted(v.services)}


def vmk_spec_of(v: Vmk) -> VmkSpec:
    """The spec that restores ``v``."""
    return VmkSpec(v.portgroup, None if v.dhcp else v.address, None if v.dhcp else v.netmask,
                   v.mtu, tuple(sorted(v.services)))


def vmk_finder(host: str, device: str | None,
               portgroup: str) -> Callable[[Inventory], Vmk | None]:
    """Looks up a VMkernel adapter by device (when given) or port group."""
    def find(inv: Inventory) -> Vmk | None:
        h = inv.host(host)
        if h is None:
            return None
        return h.vmk(device) if device else h.vmk_on(portgroup)
    return find


def vmk_differs(find: Callable[[Inventory], Vmk | None],
                before: Settings) -> Callable[[Inventory], bool]:
    """In effect: the adapter is gone or one of ``before``'s settings is not restored."""
    def check(inv: Inventory) -> bool:
        found = find(inv)
        return found is None or any(vmk_dict(found)[k] != x for k, x in before.items())
    return check


def the_vmk(answer: VmkAnswer, host: Host) -> Vmk | None:
    """The existing adapter an answer is about on ``host``."""
    return host.vmk(answer.device) if answer.device else host.vmk_on(answer.portgroup)


def vmk_ops(answers: VSphereNetworkAnswers, host: Host, absent: bool) -> list[Op]:
    """Create/update (or, with ``absent``, remove) the answered VMkernel adapters."""
    ops = []
    h = host.name
    for v in answers.vmkernel:
        if v.host not in (None, h):
            continue
        have = the_vmk(v, host)
        target = f"{h}: VMkernel " + (have.device if have else f"adapter on {v.portgroup}")
        if absent:
            if v.state == "absent" and have is not None:
                ops.append(Op(Change(target, "delete", before=vmk_dict(have)),
                              ("remove_vmk", (h, have.portgroup)),
                              ("add_vmk", (h, vmk_spec_of(have))),
                              exists(vmk_finder(h, None, have.portgroup), False)))
        elif v.state == "present":
            after = vmk_dict(v.spec())
            if have is None:
                ops.append(Op(Change(target, "create", after=after),
                              ("add_vmk", (h, v.spec())), ("remove_vmk", (h, v.portgroup)),
                              exists(vmk_finder(h, None, v.portgroup), True)))
                continue
            before, wanted = changed(vmk_dict(have), after)
            if wanted:
                ops.append(Op(Change(target, "update", before, wanted),
                              ("update_vmk", (h, have.portgroup, v.spec())),
                              ("update_vmk", (h, v.portgroup, vmk_spec_of(have))),
                              vmk_differs(vmk_finder(h, have.device, ""), before)))
    return ops


def operations(answers: VSphereNetworkAnswers, inv: Inventory) -> list[Op]:
    """Every change, in a safe order: vSwitches, port groups, VMkernel adapters,
    VM adapter moves, then removals (VMkernel adapters, port groups, vSwitches)."""
    hosts = selected_hosts(answers, inv)
    ops: list[Op] = []
    for absent in (False, True):
        if absent:
            ops += adapter_ops(answers, inv)
        # Port groups are removed before their vSwitch, created after it; a
        # VMkernel adapter is created after its port group, removed before it.
        for host in hosts:
            kinds: list[tuple[Kind, list[Any]]] = [
                (VSWITCH, list(answers.vswitches)), (PORTGROUP, list(answers.portgroups))]
            if absent:
                ops += vmk_ops(answers, host, True)
            for kind, items in reversed(kinds) if absent else kinds:
                ops += object_ops(host, kind, items, absent)
            if not absent:
                ops += vmk_ops(answers, host, False)
    return ops


class VSphereNetworkStep(Step[VSphereNetworkAnswers]):
    """vSphere standard vSwitches, port groups and VM adapter placement."""

    name = "vsphere_network"
    title = "vSphere networking"
    help = (
        "Standard vSwitches and port groups on ESXi hosts (directly or through vCenter),\n"
        "and which port group VM network adapters are on. VLAN 4095 = trunk (all VLANs).\n"
        "TLS is verified: give a CA file or pin the SHA-256 thumbprint; 'insecure' is for\n"
        "labs only. Only what is listed is changed; state: absent removes an item.\n"
        "If a change fails, what this run did is undone and the report says what remains."
    )
    Answers = VSphereNetworkAnswers

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

    def connect_questions(self) -> list[Question]:
        """Server, credentials (a reference) and how to trust its certificate."""
        return [
            Question("server", "vCenter / ESXi server", required=True),
            Question("port", "HTTPS port", kind="int"),
            Question("user", "User", required=True),
            Question("password", "Password", kind="secret", required=True,
                     help="a reference env:NAME or file:PATH, or the password itself: the "
                     "wizard keeps a typed password in memory only and records it as a "
                     "reference (env:HOSTSETUP_SECRET_PASSWORD)"),
            Question("thumbprint", "Certificate thumbprint",
                     help="pins the server certificate by its SHA-256 thumbprint "
                     "(AA:BB:... or hex)"),
            Question("ca_file", "CA file (PEM)", help="to verify the server certificate"),
            Question("insecure", "Skip TLS verification", kind="yesno",
                     help="lab only: the certificate is not checked at all (logged as a "
                     "warning)"),
        ]

    def discover(self, answers: dict[str, Any], ctx: Context) -> dict[str, Any]:
        """The inventory (hosts, switches, port groups, NICs, VMs with their adapters),
        read in bulk: what the wizard's choices need."""
        api = vsphere_api(ctx.backends, connection(answers))
        return {"inventory": api.inventory()}

    def facts_for(self, answers: VSphereNetworkAnswers, ctx: Context) -> dict[str, Any]:
        """The inventory with the adapters of the VMs the answers name only: the
        hosts' networking and VM names are small, every VM's devices are not."""
        api = vsphere_api(ctx.backends, connection(answers.model_dump()))
        return {"inventory": api.inventory(vms=named_vms(answers))}

    def questions(self, facts: dict[str, Any]) -> list[Question]:
        """Hosts, vSwitches, port groups and adapters, offering what the hosts have."""
        inv: Inventory = facts.get("inventory") or Inventory("esx")
        nics = sorted({n.device for h in inv.hosts for n in h.pnics if n.vswitch is None})
        vswitches = sorted({v.name for h in inv.hosts for v in h.vswitches})
        pgs = sorted({p.name for h in inv.hosts for p in h.portgroups})
        labels = sorted({a.label for v in inv.vms for a in v.adapters})
        state = Question("state", "State", kind="choice", choices=("present", "absent"),
                         help="present: create or update it; absent: remove it.")
        yes = {k: Question(k, k.replace("_", " ").capitalize(), kind="yesno")
               for k in SECURITY_KEYS}
        return [
            Question("hosts", "Hosts", kind="multi",
                     choices=("all", *(h.name for h in inv.hosts)),
                     help="The ESXi hosts to configure, or 'all' ({cluster: NAME} in a "
                     "file)."),
            Question("vswitches", "vSwitches", kind="records", summary="name",
                     help="Standard vSwitches to create or update on every selected host "
                     "(vSwitch0 is ESXi's own).", fields=(
                Question("name", "Name", required=True),
                Question("num_ports", "Ports", kind="int"),
                Question("mtu", "MTU", kind="int", help="1280-9000"),
                Question("nics", "Uplink NICs", kind="multi", choices=tuple(nics),
                         help="Free physical NICs of the hosts (not an uplink of another "
                         "vSwitch)."),
                state,
            )),
            Question("portgroups", "Port groups", kind="records", summary="name",
                     help="Port groups on a vSwitch: VLAN and security policy (unset "
                     "security fields inherit the vSwitch's).", fields=(
                Question("name", "Name", required=True),
                Question("vswitch", "vSwitch", kind="choice", choices=tuple(vswitches),
                         refs="vswitches", help="The vSwitch the port group is on: one the "
                         "hosts have, or one answered above (new)."),
                Question("vlan", "VLAN", kind="int", help="0-4095; 4095 = trunk"),
                *yes.values(),
                state,
            )),
            Question("vm_adapters", "VM adapters", kind="records", summary="vm",
                     help="VM network adapters to move onto a port group (one the hosts "
                     "have, or one answered under Port groups).", fields=(
                Question("vm", "VM", kind="choice", choices=tuple(v.name for v in inv.vms),
                         help="The virtual machine whose adapter moves."),
                Question("adapter", "Adapter", kind="choice", choices=tuple(labels),
                         help="The VM's network adapter, by its label."),
                Question("portgroup", "Port group", kind="choice", choices=tuple(pgs),
                         refs="portgroups", help="The port group the adapter moves to: one "
                         "the hosts have, or one answered above (new)."),
            )),
        ]

    def current(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The standard vSwitches and port groups on the hosts other than ESXi's own
        (vSwitch0, VM Network, Management Network), as records.

        vSphere has no place to mark an object as hostsetup's, so "managed" means
        what the answers could edit: every vSwitch and port group an operator or
        hostsetup added.  Where hosts differ, the first host having it is shown.
        VM adapters are not prefilled: an adapter record is a move to make.
        """
        inv: Inventory | None = facts.get("inventory")
        vswitches: dict[str, dict[str, Any]] = {}
        portgroups: dict[str, dict[str, Any]] = {}
        for host in inv.hosts if inv else ():
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

    def validate(self, answers: VSphereNetworkAnswers, facts: dict[str, Any]) -> list[Problem]:
        """Hosts, NICs, vSwitches, VMs and adapters named in the answers exist and fit."""
        inv: Inventory = facts["inventory"]
        problems = self._host_problems(answers, inv)
        hosts = selected_hosts(answers, inv)
        for host in hosts:
            problems += self._switch_problems(answers, host)
            problems += self._teaming_problems(answers, host)
        problems += self._adapter_problems(answers, inv, hosts)
        problems += self._vmk_problems(answers, inv, hosts)
        # A rule on answered values only (an answered vSwitch's uplinks) fails
        # alike on every host: say it once.
        return list(dict.fromkeys(problems))

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
                elif pnics[nic].vswitch not in (None, vs.name):
                    problems.append(Problem(("vswitches", i, "nics", j), (
                        f"'{nic}' on host '{host.name}' is already an uplink of vSwitch "
                        f"'{pnics[nic].vswitch}'")))
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
        have = the_vmk(v, host)
        if v.device and have is None:
            has = ", ".join(x.device for x in host.vmks) or "none"
            return [Problem(("vmkernel", i, "device"),
                            f"no VMkernel adapter '{v.device}' {here} (has: {has})")]
        guard = self._management(answers, have)
        if v.state == "absent":
            return [Problem(("vmkernel", i, "state"), guard)] if guard else []
        problems = []
        other = host.vmk_on(v.portgroup)
        if host.portgroup(v.portgroup) is None and v.portgroup not in answered:
            problems.append(Problem(("vmkernel", i, "portgroup"), (
                f"port group '{v.portgroup}' is neither {here} nor in the answers' portgroups")))
        elif other is not None and (have is None or other.device != have.device):
            problems.append(Problem(("vmkernel", i, "portgroup"), (
                f"port group '{v.portgroup}' {here} already has VMkernel adapter "
                f"{other.device} (one per port group)")))
        if guard and have is not None:
            wanted = vmk_dict(v.spec())
            for key, moved in (("portgroup", wanted["portgroup"] != have.portgroup),
                               ("ip", wanted["ip"] != vmk_dict(have)["ip"]),
                               ("services", "management" not in wanted["services"])):
                if moved:
                    problems.append(Problem(("vmkernel", i, key), guard))
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

    @staticmethod
    def _management(answers: VSphereNetworkAnswers, vmk: Vmk | None) -> str:
        """Why ``vmk`` carries the session's management network ("" when it does not)."""
        if vmk is None:
            return ""
        why = ("it is tagged for the management service" if "management" in vmk.services
               else f"its address is the server {answers.server}"
               if vmk.address == answers.server else "")
        return (f"{vmk.device} carries the management network this session uses ({why}); "
                "it is never removed, moved, re-addressed or untagged") if why else ""

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
            host = inv.host(vm.host or "")
            on_host = host is not None and host.portgroup(a.portgroup) is not None
            if not on_host and not (a.portgroup in answered and vm.host in selected):
                problems.append(Problem(("vm_adapters", i, "portgroup"), (
                    f"port group '{a.portgroup}' is not on host '{vm.host}' of VM '{a.vm}' "
                    "and the answers do not create it there")))
        return problems

    def plan(self, answers: VSphereNetworkAnswers, ctx: Context) -> list[Operation]:
        # Transitional (contract v2): operations without commands yet.
        return [Operation(c, {}) for c in self._changes(answers, ctx)]

    def _changes(self, answers: VSphereNetworkAnswers, ctx: Context) -> list[Change]:
        """Creations and updates per host, adapter moves, then removals."""
        return [op.change for op in operations(answers, self._inventory(answers, ctx))]

    def _inventory(self, answers: VSphereNetworkAnswers, ctx: Context) -> Inventory:
        facts = ctx.facts.get(self.name) or self.facts_for(answers, ctx)
        inv: Inventory = facts["inventory"]
        return inv

    def apply(self, answers: VSphereNetworkAnswers, ops: list[Operation], ctx: Context) -> None:
        """Make the planned changes; on failure undo this run's and raise StepFailed."""
        changes = [o.change for o in ops]
        api = vsphere_api(ctx.backends, connection(answers.model_dump()))
        wanted = {(c.target, c.action) for c in changes}
        todo = [op for op in operations(answers, api.inventory(vms=named_vms(answers)))
               if (op.change.target, op.change.action) in wanted]
        done: list[Op] = []
        try:
            for i, op in enumerate(todo):
                text = op.change.describe()
                ctx.progress(i / len(todo), text)
                invoke(api, op.do, partial(part_progress, ctx, i / len(todo), len(todo), text))
                done.append(op)
                ctx.log(f"vsphere_network: {text}")
        except BackendUnreachable:
            # Without the server nothing can be undone: say what took effect (the
            # runner reports the step unreachable, exit 5, with these notes).
            ctx.notes.append("applied before vSphere was lost, not undone: "
                             + (", ".join(op.change.describe() for op in done) or "nothing"))
            raise
        except BackendError as exc:
            failed = todo[len(done)]
            not_undone, errors = self._compensate(api, done, ctx)
            remains = self._remains(answers, ctx, [*done, failed], not_undone, errors)
            undone = sum(op.change not in remains for op in done)
            raise StepFailed(
                f"{failed.change.action} {failed.change.target} failed: {exc}; "
                f"undid {undone} change(s) made by this run", remains, errors) from None
        ctx.progress(1.0, "vSphere networking done")
        ctx.notes.append(f"vsphere_network: {len(done)} change(s) applied")

    def _compensate(self, api: VSphereAPI, done: list[Op],
                    ctx: Context) -> tuple[list[Op], list[str]]:
        """Undo ``done`` in reverse; returns the ops not undone and one error per
        undo call that failed."""
        not_undone, errors = [], []
        for op in reversed(done):
            if op.undo is None:
                not_undone.append(op)
                continue
            try:
                invoke(api, op.undo)
                ctx.log(f"vsphere_network: undid {op.change.describe()}")
            except BackendError as exc:
                errors.append(f"undo of '{op.change.describe()}' failed "
                              f"({op.undo[0]}): {exc}")
                ctx.log(f"vsphere_network: {errors[-1]}")
                not_undone.append(op)
        return list(reversed(not_undone)), errors

    def _remains(self, answers: VSphereNetworkAnswers, ctx: Context, tried: list[Op],
                 not_undone: list[Op], errors: list[str]) -> list[Change]:
        """What remains changed, from a re-read of the inventory after the undo.

        If the inventory cannot be re-read, the ops not undone are reported, and
        why the list is not checked is added to ``errors``.
        """
        self._refresh(answers, ctx)
        facts = ctx.facts.get(self.name)
        if facts is None:
            errors.append("could not re-read the inventory after the undo: what remains "
                          "changed is inferred from the calls that succeeded")
            return [op.change for op in not_undone]
        inv: Inventory = facts["inventory"]
        return [op.change for op in tried if op.in_effect(inv)]

    def _refresh(self, answers: VSphereNetworkAnswers, ctx: Context) -> None:
        """Re-read the inventory so verify() and later steps see the new state."""
        try:
            ctx.facts[self.name] = self.discover(answers.model_dump(), ctx)
        except BackendError:
            ctx.facts.pop(self.name, None)

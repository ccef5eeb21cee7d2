"""Step ``ovs_mirror``: Open vSwitch bridges, ports, tunnels and port mirrors.

A mirror copies selected traffic of a bridge to an output port (SPAN), out
on a VLAN (RSPAN), or into a tunnel port (GRE, ERSPAN, VXLAN) to a remote
analyser, e.g. a VM's traffic to an IDS or a capture box.  The step also
builds what the mirrors need: bridges (datapath type, fail mode,
other_config, flood_vlans for the RSPAN receiving side) and ports (system,
internal, patch, tunnels; access VLAN, trunks, vlan_mode).
Bridges, ports and mirrors this step creates carry
``external_ids:hostsetup-managed=true``; only those are ever updated or
deleted, so objects made by hand or by another tool are left alone.  All
changes of a run are one OVSDB transaction: they all happen or none does.
Each operation carries its command and the undo restoring what was there
(see "commands" below); ``hostsetup undo`` carries out one per transaction.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Annotated, Any, Literal, Self, get_args, get_origin

from pydantic import Field, ValidationInfo, field_validator, model_validator

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.ovsdb import (
    Bridge,
    BridgePut,
    Mirror,
    MirrorEdit,
    OvsdbAPI,
    OvsdbTLS,
    Port,
    VswitchdTimeout,
    ovsdb_api,
)
from steps.base import (
    Change,
    Command,
    Context,
    Operation,
    Problem,
    Question,
    Step,
    StepFailed,
    StepModel,
    ask,
)
from steps.validators import OvsdbRemote

DEFAULT_DB = "unix:/var/run/openvswitch/db.sock"
MANAGED = "hostsetup-managed"  # external_ids key marking the mirrors this step owns
# Bridge external_ids key: the VLANs this step added to flood_vlans for RSPAN,
# so it removes only those when their mirrors go.
RSPAN_VLANS = "hostsetup-rspan-vlans"
COMPARED = ("select_all", "select_src_port", "select_dst_port", "select_vlan",
            "output_port", "output_vlan", "snaplen", "filter")
TUNNELS = ("gre", "erspan", "vxlan")
# The tunnel key's range per type: GRE key 32 bits, VXLAN VNI 24 bits, ERSPAN
# session ID 10 bits.
KEY_MAX = {"gre": 2**32 - 1, "vxlan": 2**24 - 1, "erspan": 1023}
# A netdev name (bridge and port names are device names): at most 15 bytes.
IFNAME = r"^[A-Za-z0-9_.:-]{1,15}$"

SRC_HELP = (
    "select_src_port: traffic the VM SENDS - frames entering the switch from these ports.")
DST_HELP = (
    "select_dst_port: traffic delivered TO the VM - frames the switch sends out of these ports.")
RSPAN_HELP = (
    "output_vlan (RSPAN) sends the mirrored frames out tagged with that VLAN on every\n"
    "trunk that carries it, to a monitoring host elsewhere. The step adds the VLAN to the\n"
    "bridge's flood_vlans, so OVS floods it and never learns MAC addresses on it (mirrored\n"
    "frames carry other hosts' source MACs and would poison learning); it removes the VLAN\n"
    "again when no mirror of this tool uses it. Use a VLAN reserved for mirroring only.")

# Seen with OVS 3.1's userspace datapath: a mirror change does not always
# revalidate flows already cached in the datapath, so apply asks ovs-vswitchd
# to (revalidator/purge) when its control socket is reachable.
CACHED_FLOWS = (
    "ovs-vswitchd may keep flows it has already cached without the new mirror until they\n"
    "are revalidated; 'ovs-appctl revalidator/purge' on the host applies it at once.")

VlanId = Annotated[int, Field(ge=0, le=4095)]


def _vlan_list(value: Any) -> Any:
    # The wizard's text box gives "10,20"; the answers file gives a list.
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class MirrorAnswers(StepModel):
    """One mirror in the answers file."""

    name: str = Field(min_length=1, max_length=64, title="Mirror name",
                      description="mirror name, unique on its bridge")
    bridge: str = Field(min_length=1, title="Bridge",
                        description="The bridge whose traffic is mirrored, e.g. br0.")
    state: Literal["present", "absent"] = Field(
        "present", title="State", description="present: create or update it; absent: delete "
        "it (only if hostsetup made it)")
    select_all: bool = Field(False, title="Mirror all traffic",
                             description="mirror every packet of every port of the bridge")
    select_src_port: list[str] = Field(
        default_factory=list, title="Traffic sent by (src)",
        description=SRC_HELP + " Ports of the mirror's bridge.")
    select_dst_port: list[str] = Field(
        default_factory=list, title="Traffic delivered to (dst)",
        description=DST_HELP + " Ports of the mirror's bridge.")
    select_vlan: list[VlanId] = Field(
        default_factory=list, title="Only VLANs",
        description="only mirror these VLANs, comma-separated IDs 0-4095; empty: all VLANs")
    output_port: str | None = Field(
        None, title="Output port (SPAN)",
        description="The port that receives the copies (SPAN; a tunnel port sends them to a "
        "remote analyser); it then carries nothing else. Empty for RSPAN.")
    output_vlan: int | None = Field(
        None, ge=1, le=4095, title="Output VLAN (RSPAN)",
        description="RSPAN: the VLAN (1-4095) the copies are sent out on, tagged; added to "
        "the bridge's flood_vlans (flooded, no MAC learning). Use a VLAN reserved for "
        "mirroring")
    snaplen: int | None = Field(
        None, ge=14, le=65535, title="Snap length",
        description="truncate each copy to this many bytes (14-65535; if this OVS has "
        "Mirror.snaplen)")
    filter: str | None = Field(
        None, min_length=1, max_length=1024, title="Only packets matching",
        description="only copy packets matching this OpenFlow match, e.g. 'icmp' or "
        "'tcp,tp_dst=80' (Mirror.filter: Open vSwitch 3.4 or later)")

    _split_vlans = field_validator("select_vlan", mode="before")(_vlan_list)

    @field_validator("output_vlan")
    @classmethod
    def _not_a_selected_vlan(cls, vlan: int | None, info: ValidationInfo) -> int | None:
        if vlan is not None and vlan in info.data.get("select_vlan", ()):
            raise ValueError(f"VLAN {vlan} is also in select_vlan: the mirror would copy "
                             "its own copies (a loop); use a VLAN reserved for mirroring")
        return vlan

    @field_validator("output_port")
    @classmethod
    def _not_a_source(cls, port: str | None, info: ValidationInfo) -> str | None:
        for key in ("select_src_port", "select_dst_port"):
            if port is not None and port in info.data.get(key, ()):
                raise ValueError(f"'{port}' is also in {key}: the output port only receives "
                                 "the mirrored copies, it cannot be mirrored itself")
        return port

    @model_validator(mode="after")
    def _coherent(self) -> MirrorAnswers:
        if self.state == "absent":
            return self
        problems = []
        if (self.output_port is None) == (self.output_vlan is None):
            got = "both" if self.output_port is not None else "neither"
            problems.append("set exactly one of output_port (SPAN) or output_vlan (RSPAN), "
                            f"got {got}")
        if not (self.select_all or self.select_src_port or self.select_dst_port):
            problems.append("selects no traffic: set select_all, or list ports in "
                            "select_src_port / select_dst_port")
        if self.select_all and (self.select_src_port or self.select_dst_port):
            problems.append("select_all already selects every port: leave select_src_port "
                            "and select_dst_port empty")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def desired(self) -> Mirror:
        """The mirror row this answer asks for (ports sorted, marked managed)."""
        return Mirror(
            name=self.name, bridge=self.bridge, select_all=self.select_all,
            select_src_port=tuple(sorted(set(self.select_src_port))),
            select_dst_port=tuple(sorted(set(self.select_dst_port))),
            select_vlan=tuple(sorted(set(self.select_vlan))),
            output_port=self.output_port, output_vlan=self.output_vlan, snaplen=self.snaplen,
            filter=self.filter, external_ids={MANAGED: "true"},
        )


class BridgeAnswers(StepModel):
    """One bridge in the answers file: only the settings given are touched."""

    name: str = Field(pattern=IFNAME, title="Bridge name",
                      description="bridge name (a device name, 1-15 chars)")
    state: Literal["present", "absent"] = Field(
        "present", title="State", description="present: create/update it; absent: delete it "
        "with its ports and mirrors (only if hostsetup made it)")
    datapath_type: str | None = Field(
        None, pattern=r"^[a-z0-9_-]{0,32}$", title="Datapath type",
        description="system (the kernel datapath) or netdev (userspace); one of this OVS's "
        "datapath_types. Default for a new bridge: system")
    fail_mode: Literal["standalone", "secure"] | None = Field(
        None, title="Fail mode", description="without a controller: standalone (a learning "
        "switch) or secure (no flows set up by itself)")
    other_config: dict[Annotated[str, Field(min_length=1, max_length=64)],
                       Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, description="Bridge.other_config keys to set (others are left "
        "alone), e.g. {stp-enable: 'true'}")
    flood_vlans: list[VlanId] = Field(
        default_factory=list, title="Flood VLANs (RSPAN in)", description="VLANs flooded "
        "without MAC learning: on the far end of an RSPAN, the mirror VLAN (removed again "
        "when no longer listed)")

    _split_vlans = field_validator("flood_vlans", mode="before")(_vlan_list)

    def settings(self) -> dict[str, Any]:
        """The settings this answer names (what a plan compares and an apply writes)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("datapath_type", "fail_mode")
                               if getattr(self, k) is not None}
        return {**out, **{f"other_config:{k}": v for k, v in sorted(self.other_config.items())}}


class PortAnswers(StepModel):
    """One port (with its one interface) in the answers file."""

    name: str = Field(pattern=IFNAME, title="Port name", description="port name (a device "
                      "name, 1-15 chars; unique in the switch)")
    bridge: str = Field(pattern=IFNAME, title="Bridge", description="the bridge the port is on")
    state: Literal["present", "absent"] = Field(
        "present", title="State", description="present: create or update it; absent: delete "
        "it (only if hostsetup made it)")
    type: Literal["system", "internal", "patch", "gre", "erspan", "vxlan"] = Field(
        "system", title="Type", description="system: an existing device (e.g. a veth, a NIC); "
        "internal: a device OVS makes; patch: one end of a link to another bridge (peer); "
        "gre / erspan / vxlan: a tunnel to remote_ip, e.g. a mirror's output to an analyser")
    tag: int | None = Field(None, ge=0, le=4095, title="Access VLAN",
                            description="access VLAN (0-4095)")
    vlan_mode: Literal["trunk", "access", "native-tagged", "native-untagged"] | None = Field(
        None, title="VLAN mode", description="default: access with a tag, trunk without; "
        "native-*: tag is the native VLAN of a trunk")
    trunks: list[VlanId] = Field(default_factory=list, title="Trunk VLANs",
                                 description="VLANs a trunk port carries (empty: all)")
    peer: str | None = Field(None, pattern=IFNAME, title="Patch peer",
                             description="patch: the patch port at the other end")
    remote_ip: str | None = Field(None, title="Tunnel remote IP",
                                  description="tunnel: the far end's IP address")
    local_ip: str | None = Field(None, title="Tunnel local IP", description="tunnel: the "
                                 "source IP address (same family as remote_ip); default: from "
                                 "the route")
    key: int | None = Field(None, ge=0, title="Tunnel key", description="tunnel key: GRE "
                            "0-4294967295, VXLAN VNI 0-16777215, ERSPAN session ID 0-1023")
    erspan_ver: Literal[1, 2] | None = Field(None, title="ERSPAN version", description="erspan: "
                                             "version 1 (type II) or 2 (type III); default 1")
    erspan_idx: int | None = Field(None, ge=0, le=0xFFFFF, title="ERSPAN v1 index",
                                   description="erspan v1: index (0-1048575)")
    erspan_dir: int | None = Field(None, ge=0, le=1, title="ERSPAN v2 direction",
                                   description="erspan v2: direction, 0 ingress, 1 egress")
    erspan_hwid: int | None = Field(None, ge=0, le=63, title="ERSPAN v2 hardware ID",
                                    description="erspan v2: hardware ID (0-63)")

    _split_vlans = field_validator("trunks", mode="before")(_vlan_list)

    @field_validator("vlan_mode")
    @classmethod
    def _mode_and_tag(cls, mode: str | None, info: ValidationInfo) -> str | None:
        tag = info.data.get("tag")
        if mode in ("native-tagged", "native-untagged") and tag is None:
            raise ValueError(f"vlan_mode {mode} needs tag (the native VLAN)")
        if mode == "trunk" and tag is not None:
            raise ValueError("vlan_mode trunk ignores tag: remove tag, or use native-tagged "
                             "/ native-untagged")
        return mode

    @field_validator("trunks")
    @classmethod
    def _trunks_need_a_trunk(cls, trunks: list[int], info: ValidationInfo) -> list[int]:
        mode = info.data.get("vlan_mode")
        if trunks and (mode == "access" or (mode is None and info.data.get("tag") is not None)):
            raise ValueError("an access port (tag, or vlan_mode access) carries no trunks: "
                             "remove trunks, or set vlan_mode native-tagged/native-untagged")
        return trunks

    @field_validator("peer")
    @classmethod
    def _peer_for_patch(cls, peer: str | None, info: ValidationInfo) -> str | None:
        if peer is not None and info.data.get("type") != "patch":
            raise ValueError("peer is only for type: patch")
        if peer is not None and peer == info.data.get("name"):
            raise ValueError("a patch port cannot be its own peer")
        return peer

    @field_validator("remote_ip", "local_ip")
    @classmethod
    def _ip(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if info.data.get("type") not in TUNNELS:
            raise ValueError(f"{info.field_name} is only for tunnels (type gre, erspan, vxlan)")
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"'{value}' is not an IPv4 or IPv6 address") from None
        remote = info.data.get("remote_ip")
        if info.field_name == "local_ip" and remote is not None \
                and ipaddress.ip_address(remote).version != address.version:
            raise ValueError(f"local_ip {value} and remote_ip {remote} are not of the same "
                             "IP version")
        return str(address)

    @field_validator("key")
    @classmethod
    def _key(cls, key: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("type")
        if key is not None and kind not in TUNNELS:
            raise ValueError("key is only for tunnels (type gre, erspan, vxlan)")
        if key is not None and kind in KEY_MAX and key > KEY_MAX[kind]:
            raise ValueError(f"a {kind} key is 0-{KEY_MAX[kind]}")
        return key

    @field_validator("erspan_ver", "erspan_idx", "erspan_dir", "erspan_hwid")
    @classmethod
    def _erspan(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:
            return value
        if info.data.get("type") != "erspan":
            raise ValueError(f"{info.field_name} is only for type: erspan")
        version = info.data.get("erspan_ver") or 1
        if info.field_name == "erspan_idx" and version != 1:
            raise ValueError("erspan_idx is for ERSPAN version 1 (erspan_ver: 1); version 2 "
                             "uses erspan_dir and erspan_hwid")
        if info.field_name in ("erspan_dir", "erspan_hwid") and version != 2:
            raise ValueError(f"{info.field_name} is for ERSPAN version 2 (set erspan_ver: 2)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> PortAnswers:
        if self.state == "present" and self.type == "patch" and self.peer is None:
            raise ValueError("a patch port needs peer: the patch port on the other bridge")
        if self.state == "present" and self.type in TUNNELS and self.remote_ip is None:
            raise ValueError(f"a {self.type} tunnel needs remote_ip")
        return self

    def options(self) -> dict[str, str]:
        """The interface's ``options`` this answer asks for."""
        if self.type == "patch":
            return {"peer": str(self.peer)}
        if self.type not in TUNNELS:
            return {}
        opts = {"remote_ip": str(self.remote_ip)}
        if self.local_ip is not None:
            opts["local_ip"] = self.local_ip
        if self.key is not None:
            opts["key"] = str(self.key)
        if self.type == "erspan":
            # OVS reads erspan_idx and erspan_hwid as hexadecimal.
            opts["erspan_ver"] = str(self.erspan_ver or 1)
            for name, value, form in (("erspan_idx", self.erspan_idx, "0x{:x}"),
                                      ("erspan_dir", self.erspan_dir, "{}"),
                                      ("erspan_hwid", self.erspan_hwid, "0x{:x}")):
                if value is not None:
                    opts[name] = form.format(value)
        return opts

    def desired(self) -> Port:
        """The port this answer asks for (marked managed)."""
        return Port(
            name=self.name, bridge=self.bridge,
            type="" if self.type == "system" else self.type, options=self.options(),
            tag=self.tag, trunks=tuple(sorted(set(self.trunks))), vlan_mode=self.vlan_mode,
            external_ids={MANAGED: "true"})


def _unique(items: list[Any], what: str, key: Any) -> list[Any]:
    """Refuse two records with the same key (``key(record)``)."""
    seen: dict[Any, int] = {}
    dups = []
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            dups.append(f"{what}[{i}] repeats the name '{item.name}' of {what}[{seen[k]}]")
        seen.setdefault(k, i)
    if dups:
        raise ValueError("; ".join(dups))
    return items


class OvsMirrorConnection(StepModel):
    """How the ``ovs_mirror`` step reaches Open vSwitch: its OVSDB remote (and TLS files)."""

    db: OvsdbRemote = Field(
        DEFAULT_DB, title="OVSDB remote",
        description="OVSDB remote: unix:PATH (this host's switch), tcp:HOST:6640 or "
        "ssl:HOST:6640 (a remote switch)")
    ssl_key: str | None = Field(None, title="SSL private key",
                                description="ssl: remotes only: the client's private key file")
    ssl_cert: str | None = Field(None, title="SSL certificate",
                                 description="ssl: remotes only: the client's certificate file")
    ssl_ca: str | None = Field(None, title="SSL CA certificate",
                               description="ssl: remotes only: the CA certificate file")

    @model_validator(mode="after")
    def _ssl(self) -> Self:
        if self.db.startswith("ssl:") and None in (self.ssl_key, self.ssl_cert, self.ssl_ca):
            raise ValueError("an ssl: db needs ssl_key, ssl_cert and ssl_ca")
        return self

    def api(self, ctx: Context) -> OvsdbAPI:
        """The OVSDB connection these settings name."""
        keys = (self.ssl_key, self.ssl_cert, self.ssl_ca)
        tls = OvsdbTLS(*keys) if all(keys) else None  # type: ignore[arg-type]
        return ovsdb_api(ctx.backends, self.db, tls)


class OvsMirrorAnswers(OvsMirrorConnection):
    """Answers of the ``ovs_mirror`` step."""

    prune: bool = Field(
        False, title="Delete unlisted mirrors",
        description="delete hostsetup's mirrors (any bridge) that this file no longer lists; "
        "mirrors made otherwise are never touched")
    timeout: float = Field(
        10.0, gt=0, le=300, description="seconds to wait for ovs-vswitchd to take the change")
    vswitchd_ctl: str | None = Field(
        None, description="ovs-vswitchd's control socket, as for 'ovs-appctl -t' (a path, "
        "or a daemon name such as ovs-vswitchd): after a change, cached flows are "
        "revalidated so the mirror applies at once. Default: ovs-vswitchd for a unix: db, "
        "none for tcp:/ssl: (the switch is on another host)")
    bridges: list[BridgeAnswers] = Field(
        default_factory=list, title="Bridges",
        description="bridges to create, update or delete (only the settings given are touched)")
    ports: list[PortAnswers] = Field(
        default_factory=list, title="Ports and tunnels",
        description="ports to create, update or delete: system devices, internal ports, patch "
        "links between bridges, GRE / ERSPAN / VXLAN tunnels (e.g. to a remote analyser)")
    mirrors: list[MirrorAnswers] = Field(
        default_factory=list, title="Port mirrors",
        description="the port mirrors: copies of a bridge's traffic to a port (SPAN), out on "
        "a VLAN (RSPAN) or into a tunnel")

    def control_target(self) -> str | None:
        """Where to reach ovs-vswitchd's unixctl, if it runs on this host."""
        if self.vswitchd_ctl:
            return self.vswitchd_ctl
        return "ovs-vswitchd" if self.db.startswith("unix:") else None

    @field_validator("mirrors")
    @classmethod
    def _unique_mirrors(cls, mirrors: list[MirrorAnswers]) -> list[MirrorAnswers]:
        try:
            return _unique(mirrors, "mirrors", lambda m: (m.bridge, m.name))
        except ValueError as exc:
            raise ValueError(f"mirror names must be unique per bridge: {exc}") from None

    @field_validator("bridges")
    @classmethod
    def _unique_bridges(cls, bridges: list[BridgeAnswers]) -> list[BridgeAnswers]:
        return _unique(bridges, "bridges", lambda b: b.name)

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: list[PortAnswers]) -> list[PortAnswers]:
        # Port names are unique in the whole switch, not per bridge.
        return _unique(ports, "ports", lambda p: p.name)


@dataclass(frozen=True)
class OvsMirrorFacts:
    """What the switch has: bridges and ports by name, every mirror, which optional
    Mirror columns its schema has, and the interface and datapath types its
    ovs-vswitchd supports.  ``OvsMirrorFacts()`` (nothing read) offers the
    snaplen question and no filter."""

    bridges: Mapping[str, Bridge] = field(default_factory=dict)
    ports: Mapping[str, Port] = field(default_factory=dict)
    mirrors: tuple[Mirror, ...] = ()
    snaplen: bool = True
    filter: bool = False
    iface_types: tuple[str, ...] = ()
    datapath_types: tuple[str, ...] = ()


def _is_managed(m: Mirror | Bridge | Port) -> bool:
    return m.external_ids.get(MANAGED) == "true"


def _read(ovsdb: OvsdbAPI) -> OvsMirrorFacts:
    """What the switch has, as the step's facts."""
    return OvsMirrorFacts(
        bridges=ovsdb.bridges(), ports=ovsdb.ports(), mirrors=tuple(ovsdb.mirrors()),
        snaplen=ovsdb.has_column("Mirror", "snaplen"),
        filter=ovsdb.has_column("Mirror", "filter"),
        iface_types=ovsdb.iface_types(), datapath_types=ovsdb.datapath_types())


def _options(model: type[StepModel], key: str) -> tuple[str, ...]:
    """The values of a ``Literal`` field (optional or not): the wizard's choices."""
    hint = model.model_fields[key].annotation
    args = [a for a in get_args(hint) if a is not type(None)]
    if get_origin(hint) is not Literal and len(args) == 1:  # Optional[Literal[...]]
        args = list(get_args(args[0]))
    return tuple(str(a) for a in args)


def _port_fields(p: Port) -> dict[str, Any]:
    """A port's compared settings, JSON-friendly (options flattened)."""
    return {"type": p.type or "system", **dict(sorted(p.options.items())), "tag": p.tag,
            "trunks": list(p.trunks), "vlan_mode": p.vlan_mode}


def _port_record(p: Port) -> dict[str, Any]:
    """A managed port as a ``ports`` answer (prefills the wizard)."""
    rec: dict[str, Any] = {"name": p.name, "bridge": p.bridge, "type": p.type or "system"}
    for key, value in p.options.items():
        if key in ("erspan_idx", "erspan_hwid"):
            rec[key] = int(value, 16)
        elif key in PortAnswers.model_fields:
            rec[key] = int(value) if value.isdigit() and "ip" not in key else value
    rec.update({k: getattr(p, k) for k in ("tag", "vlan_mode") if getattr(p, k) is not None})
    return {**rec, "trunks": list(p.trunks)} if p.trunks else rec


def describe_port(p: Port) -> str:
    """What a port is, in the operator's terms."""
    if p.type == "patch":
        what = f"patch link to {p.options.get('peer')}"
    elif p.type in TUNNELS:
        what = f"{p.type} tunnel to {p.options.get('remote_ip')}"
        what += f" key {p.options['key']}" if "key" in p.options else ""
    else:
        what = f"{p.type or 'system'} device"
    if p.tag is not None:
        what += f", {p.vlan_mode or 'access'} VLAN {p.tag}"
    if p.trunks:
        what += ", trunk of VLAN " + ",".join(map(str, p.trunks))
    return what


def _adopt(table: str, name: str) -> str:
    return f"adopt it with 'ovs-vsctl set {table} {name} external_ids:{MANAGED}=true'"


class _Union:
    """Bridges joined by patch links (union-find), to find a link that closes a loop."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        while self.parent.setdefault(x, x) != x:
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> bool:
        """Link ``a`` and ``b``; False if they were already connected (a loop)."""
        ra, rb = self.find(a), self.find(b)
        self.parent[ra] = rb
        return ra != rb


def _fields(m: Mirror, snaplen: bool = True) -> dict[str, Any]:
    """The compared settings of a mirror, JSON-friendly."""
    out: dict[str, Any] = {k: getattr(m, k) for k in COMPARED}
    for k in ("select_src_port", "select_dst_port", "select_vlan"):
        out[k] = list(out[k])
    if not snaplen:
        del out["snaplen"]
    return out


def _shown(fields: dict[str, Any]) -> dict[str, Any]:
    """Only the settings that are set, for a readable plan."""
    return {k: v for k, v in fields.items() if v not in (None, [], False)}


def describe(m: Mirror) -> str:
    """What a mirror copies where, in the operator's terms."""
    if m.select_all:
        what = "all traffic of the bridge"
    else:
        parts = []
        if m.select_src_port:
            parts.append("sent by " + ", ".join(m.select_src_port))
        if m.select_dst_port:
            parts.append("delivered to " + ", ".join(m.select_dst_port))
        what = "traffic " + " and ".join(parts)
    if m.select_vlan:
        what += " on VLAN " + ",".join(map(str, m.select_vlan))
    if m.output_port is not None:
        where = f"SPAN to port {m.output_port}"
    else:
        where = (f"RSPAN to VLAN {m.output_vlan} (in {m.bridge}'s flood_vlans: flooded, "
                 "no MAC learning on it)")
    text = f"{what} -> {where}"
    return text + (f", snaplen {m.snaplen}" if m.snaplen else "")


# -- commands -----------------------------------------------------------------
#
# An operation's do/undo is a JSON value naming objects by name, never by row
# UUID (a later process, e.g. ``hostsetup undo``, finds the rows again):
#   {"op": "put_bridge", "bridge": {name, [datapath_type], [fail_mode], other_config,
#                                   external_ids}}   create, or set only these keys
#   {"op": "delete_bridge", "name": B}               with its ports and mirrors
#   {"op": "restore_bridge", "bridge": {..., flood_vlans}, "ports": [...], "mirrors": [...]}
#                                                    a deleted bridge as it was
#   {"op": "put_port", "port": {...}} / {"op": "delete_port", "name": P, "bridge": B}
#   {"op": "put_mirror", "mirror": {...}} / {"op": "delete_mirror", "bridge": B, "name": M}
#   {"op": "flood", "bridge": B, "add": [...], "remove": [...], "rspan_vlans": "1,2" | None}
# A put writes the whole port or mirror (its previous value is the undo); in
# ``other_config``/``external_ids`` of a bridge, None removes a key and "" for
# ``fail_mode`` clears it.  Commands never touch an existing object that is not
# marked hostsetup-managed (only ``flood`` may change such a bridge).


def _mirror_value(m: Mirror) -> dict[str, Any]:
    """A mirror as a command's value: its settings, by name (no UUID, no statistics)."""
    return {"name": m.name, "bridge": m.bridge, **_fields(m),
            "external_ids": dict(m.external_ids)}


def _mirror_of(v: Mapping[str, Any]) -> Mirror:
    return Mirror(
        v["name"], v["bridge"], v["select_all"], tuple(v["select_src_port"]),
        tuple(v["select_dst_port"]), tuple(v["select_vlan"]), v["output_port"],
        v["output_vlan"], v["snaplen"], v["filter"], dict(v["external_ids"]))


def _port_value(p: Port) -> dict[str, Any]:
    """A port (and its interface) as a command's value, by name (no UUID)."""
    return {"name": p.name, "bridge": p.bridge, "type": p.type, "options": dict(p.options),
            "tag": p.tag, "trunks": list(p.trunks), "vlan_mode": p.vlan_mode,
            "external_ids": dict(p.external_ids)}


def _port_of(v: Mapping[str, Any]) -> Port:
    return Port(v["name"], v["bridge"], type=v["type"], options=dict(v["options"]),
                tag=v["tag"], trunks=tuple(v["trunks"]), vlan_mode=v["vlan_mode"],
                external_ids=dict(v["external_ids"]))


def _bridge_value(b: Bridge) -> dict[str, Any]:
    """A bridge's whole configuration as a command's value (what restoring it writes)."""
    return {"name": b.name, "datapath_type": b.datapath_type, "fail_mode": b.fail_mode or "",
            "other_config": dict(b.other_config), "external_ids": dict(b.external_ids),
            "flood_vlans": list(b.flood_vlans)}


def _bridge_put(name: str, flat: Mapping[str, Any]) -> dict[str, Any]:
    """A put_bridge value from settings as :meth:`BridgeAnswers.settings` names them."""
    out: dict[str, Any] = {"name": name, "other_config": {}, "external_ids": {}}
    for key, value in flat.items():
        if key.startswith("other_config:"):
            out["other_config"][key.partition(":")[2]] = value
        else:  # datapath_type, or fail_mode ("" clears it)
            out[key] = value if key == "datapath_type" else value or ""
    return out


def _bridge_has(b: Bridge, v: Mapping[str, Any], exact: bool = False) -> bool:
    """Whether bridge ``b`` has the settings of the put value ``v`` (``exact``: those
    and no other other_config or external_ids keys, and v's flood_vlans)."""
    for key in ("datapath_type", "fail_mode"):
        if key in v and (getattr(b, key) or "") != (v[key] or ""):
            return False
    for column in ("other_config", "external_ids"):
        have: Mapping[str, str] = getattr(b, column)
        want = {k: x for k, x in v[column].items() if x is not None}
        if exact and dict(have) != want or any(have.get(k) != x for k, x in v[column].items()):
            return False
    return not exact or list(b.flood_vlans) == sorted(v["flood_vlans"])


def _mine(what: str, have: Mirror | Bridge | Port | None) -> None:
    """Refuse to change an existing object that hostsetup did not make."""
    if have is not None and not _is_managed(have):
        raise StepFailed(f"{what} exists and was not made by hostsetup; not touching it")


class _Switch:
    """The switch as it is now, each table read on first use only: a command on a
    mirror does not read the (maybe thousands of) ports."""

    def __init__(self, ovsdb: OvsdbAPI) -> None:
        self.ovsdb = ovsdb

    @cached_property
    def bridges(self) -> dict[str, Bridge]:
        return self.ovsdb.bridges()

    @cached_property
    def ports(self) -> dict[str, Port]:
        return self.ovsdb.ports()

    @cached_property
    def mirrors(self) -> dict[tuple[str, str], Mirror]:
        return {(m.bridge, m.name): m for m in self.ovsdb.mirrors()}


@dataclass
class _Edit:
    """The edit being built from commands, rows found by name in ``switch``."""

    switch: _Switch
    bridges_put: list[BridgePut] = field(default_factory=list)
    bridges_delete: list[Bridge] = field(default_factory=list)
    ports_put: list[Port] = field(default_factory=list)
    ports_delete: list[Port] = field(default_factory=list)
    put: list[Mirror] = field(default_factory=list)
    delete: list[Mirror] = field(default_factory=list)
    flood_add: dict[str, list[int]] = field(default_factory=dict)
    flood_remove: dict[str, list[int]] = field(default_factory=dict)
    bridge_ids: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def command(self, c: Command) -> None:
        """Add command ``c`` (its rows found by name in the switch as it is now)."""
        op = c["op"]
        if op == "put_bridge":
            self.put_bridge(c["bridge"])
        elif op == "delete_bridge":
            have = self.switch.bridges.get(c["name"])
            _mine(f"bridge {c['name']}", have)
            self.bridges_delete += [have] if have is not None else []
        elif op == "restore_bridge":
            self.restore_bridge(c["bridge"], c["ports"], c["mirrors"])
        elif op == "put_port":
            self.put_port(_port_of(c["port"]))
        elif op == "delete_port":
            gone = self.switch.ports.get(c["name"])
            _mine(f"port {c['bridge']}/{c['name']}", gone)
            self.ports_delete += [gone] if gone is not None else []
        elif op == "put_mirror":
            self.put_mirror(_mirror_of(c["mirror"]))
        elif op == "delete_mirror":
            old = self.switch.mirrors.get((c["bridge"], c["name"]))
            _mine(f"mirror {c['bridge']}/{c['name']}", old)
            self.delete += [old] if old is not None else []
        elif op == "flood":
            name = c["bridge"]
            self.flood_add.setdefault(name, []).extend(c["add"])
            self.flood_remove.setdefault(name, []).extend(c["remove"])
            self.bridge_ids.setdefault(name, {})[RSPAN_VLANS] = c["rspan_vlans"]
        else:
            raise StepFailed(f"ovs_mirror: unknown command {op!r}")

    def put_bridge(self, v: Mapping[str, Any]) -> None:
        have = self.switch.bridges.get(v["name"])
        _mine(f"bridge {v['name']}", have)
        if have is None and v["external_ids"].get(MANAGED) != "true":
            # Only a creation carries the mark; an update's bridge went away.
            raise StepFailed(f"bridge {v['name']} does not exist (deleted since?)")
        self.bridges_put.append(BridgePut(
            v["name"], have.uuid if have else "", v.get("datapath_type"), v.get("fail_mode"),
            dict(v["other_config"]), dict(v["external_ids"])))

    def restore_bridge(self, v: Mapping[str, Any], ports: list[dict[str, Any]],
                       mirrors: list[dict[str, Any]]) -> None:
        name, have = v["name"], self.switch.bridges.get(v["name"])
        _mine(f"bridge {name}", have)
        # Keys and VLANs the bridge has now (if it came back) that it had not before go.
        now = have or Bridge(name)
        self.bridges_put.append(BridgePut(
            name, now.uuid, v["datapath_type"], v["fail_mode"],
            {**{k: None for k in now.other_config}, **v["other_config"]},
            {**{k: None for k in now.external_ids}, **v["external_ids"]}))
        self.flood_add.setdefault(name, []).extend(
            sorted(set(v["flood_vlans"]) - set(now.flood_vlans)))
        self.flood_remove.setdefault(name, []).extend(
            sorted(set(now.flood_vlans) - set(v["flood_vlans"])))
        for p in ports:
            if p["name"] != name:  # the local port comes with the bridge, as add-br makes it
                self.put_port(_port_of(p))
        for m in mirrors:
            self.put_mirror(_mirror_of(m))

    def put_port(self, p: Port) -> None:
        have = self.switch.ports.get(p.name)
        _mine(f"port {p.bridge}/{p.name}", have)
        if have is not None and have.bridge != p.bridge:  # a port does not move
            raise StepFailed(f"port {p.name} is on bridge {have.bridge}, not {p.bridge}; "
                             "not touching it")
        self.ports_put.append(replace(p, uuid=have.uuid) if have is not None else p)

    def put_mirror(self, m: Mirror) -> None:
        have = self.switch.mirrors.get((m.bridge, m.name))
        _mine(f"mirror {m.bridge}/{m.name}", have)
        self.put.append(replace(m, uuid=have.uuid) if have is not None else m)

    def done(self) -> MirrorEdit:
        """The edit, for one transaction."""
        return MirrorEdit(
            put=self.put, delete=self.delete, flood_add=self.flood_add,
            flood_remove=self.flood_remove, bridge_ids=self.bridge_ids,
            bridges_put=self.bridges_put, bridges_delete=self.bridges_delete,
            ports_put=self.ports_put, ports_delete=self.ports_delete)


def _edit(commands: list[Command], ovsdb: OvsdbAPI) -> MirrorEdit:
    """The one edit that carries out ``commands``, rows found by name in the switch now."""
    edit = _Edit(_Switch(ovsdb))
    for command in commands:
        with _malformed(command):
            edit.command(command)
    return edit.done()


@contextmanager
def _malformed(command: Command) -> Iterator[None]:
    """A command that lacks a key or has a value of the wrong type (e.g. a journal
    edited by hand) fails the step with its name, not with a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        op = command.get("op") if isinstance(command, dict) else None
        raise StepFailed(f"ovs_mirror: malformed command {op!r} "
                         f"({type(exc).__name__}: {exc})") from None


def _observe(c: Command, switch: _Switch) -> bool:
    """Whether the switch is in the state command ``c`` leads to."""
    op = c["op"]
    if op in ("put_bridge", "restore_bridge"):
        b = switch.bridges.get(c["bridge"]["name"])
        if op == "put_bridge" or b is None:
            return b is not None and _bridge_has(b, c["bridge"])
        return _bridge_has(b, c["bridge"], exact=True) and all(
            _observe({"op": "put_port", "port": p}, switch) for p in c["ports"]
            if p["name"] != b.name) and all(
            _observe({"op": "put_mirror", "mirror": m}, switch) for m in c["mirrors"])
    if op == "put_port":
        port = switch.ports.get(c["port"]["name"])
        return port is not None and _port_value(port) == c["port"]
    if op == "put_mirror":
        m = switch.mirrors.get((c["mirror"]["bridge"], c["mirror"]["name"]))
        return m is not None and _mirror_value(m) == c["mirror"]
    if op == "flood":
        b = switch.bridges.get(c["bridge"])
        return b is not None and set(c["add"]) <= set(b.flood_vlans) \
            and not set(c["remove"]) & set(b.flood_vlans) \
            and b.external_ids.get(RSPAN_VLANS) == c["rspan_vlans"]
    if op == "delete_bridge":
        return c["name"] not in switch.bridges
    if op == "delete_port":
        return c["name"] not in switch.ports
    if op == "delete_mirror":
        return (c["bridge"], c["name"]) not in switch.mirrors
    raise StepFailed(f"ovs_mirror: unknown command {op!r}")


# Why an operation can cut traffic the operator (or a control plane) depends on:
# deleting or rewriting an existing bridge or port.  Creating bridges, ports or
# mirrors, and the RSPAN flood_vlans, cannot (flooding a VLAN loses no frame).
RISKY_BRIDGE = "changes existing bridge {}: traffic through it may stop (datapath, fail mode)"
RISKY_PORT = "rewrites existing port {} (type, VLANs, options): traffic through it may stop"
RISKY_GONE = "deletes {}: traffic through it stops"


class OvsMirrorStep(Step[OvsMirrorAnswers]):
    """Configure Open vSwitch port mirrors over OVSDB."""

    name = "ovs_mirror"
    title = "Open vSwitch port mirrors"
    help = (
        "Copies a bridge's traffic to a monitoring port (SPAN: output_port) or out on a\n"
        "VLAN (RSPAN: output_vlan), for an IDS, a capture or troubleshooting.\n"
        f"{SRC_HELP}\n{DST_HELP}\n"
        "Both together: the VM's whole conversation. select_vlan narrows to some VLANs.\n"
        f"{RSPAN_HELP}\n"
        "Mirrors made here are marked external_ids:hostsetup-managed=true; other mirrors\n"
        "are never changed. state: absent deletes one; prune: yes deletes every marked\n"
        "mirror the answers no longer list. All changes go in ONE OVSDB transaction.\n"
        f"{CACHED_FLOWS}"
    )
    Answers = OvsMirrorAnswers
    Connection = OvsMirrorConnection
    Facts = OvsMirrorFacts
    requires = "ovs"

    def example(self) -> dict[str, Any]:
        """A SPAN mirror of one VM's traffic to a monitoring port."""
        return OvsMirrorAnswers.model_validate({"mirrors": [{
            "name": "span-vm1", "bridge": "br0", "select_src_port": ["vnet0"],
            "select_dst_port": ["vnet0"], "output_port": "mon0",
        }]}).model_dump(mode="json", exclude_none=True)

    def discover(self, connection: OvsMirrorConnection, ctx: Context) -> OvsMirrorFacts:
        return _read(connection.api(ctx))

    def questions(self, facts: OvsMirrorFacts) -> list[Question]:
        bridges = tuple(sorted(facts.bridges))
        ports = tuple(sorted({p for b in facts.bridges.values() for p in b.ports}))
        state = _options(MirrorAnswers, "state")
        mirror_fields = [
            ask(MirrorAnswers, "name"),
            ask(MirrorAnswers, "bridge", choices=bridges, refs="bridges"),
            ask(MirrorAnswers, "state", choices=state),
            ask(MirrorAnswers, "select_all"),
            ask(MirrorAnswers, "select_src_port", choices=ports),
            ask(MirrorAnswers, "select_dst_port", choices=ports),
            ask(MirrorAnswers, "select_vlan"),
            ask(MirrorAnswers, "output_port", choices=ports, refs="ports"),
            ask(MirrorAnswers, "output_vlan"),
            *([ask(MirrorAnswers, "snaplen")] if facts.snaplen else []),
            *([ask(MirrorAnswers, "filter")] if facts.filter else []),
        ]
        bridge_fields = (
            ask(BridgeAnswers, "name"),
            ask(BridgeAnswers, "state", choices=state),
            ask(BridgeAnswers, "datapath_type", choices=facts.datapath_types),
            ask(BridgeAnswers, "fail_mode", choices=_options(BridgeAnswers, "fail_mode")),
            ask(BridgeAnswers, "flood_vlans"),
        )
        port_fields = (
            ask(PortAnswers, "name"),
            ask(PortAnswers, "bridge", choices=bridges, refs="bridges"),
            ask(PortAnswers, "state", choices=state),
            ask(PortAnswers, "type", choices=_options(PortAnswers, "type")),
            ask(PortAnswers, "tag"),
            ask(PortAnswers, "vlan_mode", choices=_options(PortAnswers, "vlan_mode")),
            ask(PortAnswers, "trunks"),
            *(ask(PortAnswers, key) for key in ("peer", "remote_ip", "local_ip", "key")),
            ask(PortAnswers, "erspan_ver", kind="int"),  # Literal[1, 2]: a number
            *(ask(PortAnswers, key) for key in ("erspan_idx", "erspan_dir", "erspan_hwid")),
        )
        return [
            ask(OvsMirrorAnswers, "mirrors", fields=tuple(mirror_fields), summary="name"),
            ask(OvsMirrorAnswers, "prune"),
            ask(OvsMirrorAnswers, "bridges", fields=bridge_fields, summary="name"),
            ask(OvsMirrorAnswers, "ports", fields=port_fields, summary="name"),
        ]

    def current(self, facts: OvsMirrorFacts) -> dict[str, Any]:
        """hostsetup's mirrors on the switch (``hostsetup-managed``), as records."""
        mirrors = [{"name": m.name, "bridge": m.bridge, **_shown(_fields(m))}
                   for m in facts.mirrors if _is_managed(m)]
        out = {"mirrors": sorted(mirrors, key=lambda r: (r["bridge"], r["name"]))} \
            if mirrors else {}
        ports = [_port_record(p) for _n, p in sorted(facts.ports.items()) if _is_managed(p)]
        return {"ports": ports, **out} if ports else out

    def validate(self, answers: OvsMirrorAnswers, facts: OvsMirrorFacts) -> list[Problem]:
        bridges, ports = facts.bridges, facts.ports
        gone = {b.name for b in answers.bridges if b.state == "absent"}
        final = (set(bridges) - gone) | {b.name for b in answers.bridges if b.state == "present"}
        answered = {p.name for p in answers.ports}
        on_bridge: dict[str, set[str]] = {}  # the ports each bridge has after the run
        for name, port in ports.items():
            if port.bridge not in gone and name not in answered:
                on_bridge.setdefault(port.bridge, set()).add(name)
        for pa in answers.ports:
            if pa.state == "present":
                on_bridge.setdefault(pa.bridge, set()).add(pa.name)
        return (self._check_bridges(answers, facts)
                + self._check_ports(answers, facts, final)
                + self._check_mirrors(answers, facts, final, on_bridge))

    def _check_bridges(self, answers: OvsMirrorAnswers, facts: OvsMirrorFacts) -> list[Problem]:
        bridges, ports, kinds = facts.bridges, facts.ports, facts.datapath_types
        problems = []
        for i, b in enumerate(answers.bridges):
            have = bridges.get(b.name)
            if have is not None and not _is_managed(have):
                if b.state == "absent" or b.settings():
                    problems.append(Problem(("bridges", i, "name"), (
                        f"bridge '{b.name}' was not made by hostsetup and is never changed or "
                        "deleted by it (only flood_vlans may be added to it): remove the "
                        f"other settings, or {_adopt('Bridge', b.name)}")))
                continue
            if b.state == "absent":
                foreign = [f"port {p}" for p in have.ports if p != b.name and p in ports
                           and not _is_managed(ports[p])] if have else []
                foreign += [f"mirror {m.name}" for m in facts.mirrors
                            if m.bridge == b.name and not _is_managed(m)]
                if foreign:
                    problems.append(Problem(("bridges", i, "state"), (
                        f"bridge '{b.name}' has {', '.join(foreign)}, not made by hostsetup: "
                        "deleting the bridge would delete them; remove them first")))
                continue
            if have is None and b.name in ports:
                problems.append(Problem(("bridges", i, "name"), (
                    f"'{b.name}' is already a port on bridge '{ports[b.name].bridge}'")))
            if (have is None or b.datapath_type is not None) and kinds \
                    and (b.datapath_type or "system") not in kinds:
                problems.append(Problem(("bridges", i, "datapath_type"), (
                    f"this Open vSwitch has no datapath type '{b.datapath_type or 'system'}' "
                    f"(datapath_types: {', '.join(kinds)})")))
        return problems

    def _check_ports(self, answers: OvsMirrorAnswers, facts: OvsMirrorFacts,
                     final: set[str]) -> list[Problem]:
        """Each port: its bridge, ownership, type support, patch peers, no patch loops."""
        ports, types = facts.ports, facts.iface_types
        answered = {p.name: p for p in answers.ports}
        problems = []
        links = _Union()
        # Patch links that stay as they are link bridges first.
        for port in ports.values():
            peer = ports.get(port.options.get("peer", ""))
            if port.type == "patch" and peer is not None and port.name < peer.name \
                    and not {port.name, peer.name} & set(answered) \
                    and {port.bridge, peer.bridge} <= final:
                links.join(port.bridge, peer.bridge)
        for i, p in enumerate(answers.ports):
            have = ports.get(p.name)
            if have is not None and not _is_managed(have):
                problems.append(Problem(("ports", i, "name"), (
                    f"port '{p.name}' (on bridge '{have.bridge}') was not made by hostsetup and "
                    f"is never changed by it: pick another name, or {_adopt('Port', p.name)}")))
                continue
            if have is not None and have.bridge != p.bridge:
                problems.append(Problem(("ports", i, "bridge"), (
                    f"port '{p.name}' is on bridge '{have.bridge}': a port does not move; "
                    "delete it there (state: absent) and create it under another name")))
                continue
            if p.state == "absent":
                users = [f"mirrors[{j}]" for j, m in enumerate(answers.mirrors)
                         if m.state == "present" and m.bridge == p.bridge
                         and p.name in (*m.select_src_port, *m.select_dst_port, m.output_port)]
                if users:
                    problems.append(Problem(("ports", i, "state"), (
                        f"port '{p.name}' is deleted but {', '.join(users)} use it")))
                continue
            if p.bridge not in final:
                problems.append(Problem(("ports", i, "bridge"), (
                    f"bridge '{p.bridge}' does not exist and is not answered under bridges "
                    f"(bridges: {', '.join(sorted(final)) or 'none'})")))
                continue
            if p.name in final:
                problems.append(Problem(("ports", i, "name"), (
                    f"'{p.name}' is the name of a bridge (and of its local port)")))
            if p.type != "system" and types and p.type not in types:
                problems.append(Problem(("ports", i, "type"), (
                    f"this Open vSwitch does not support '{p.type}' interfaces "
                    f"(iface_types: {', '.join(types)})")))
            if p.type == "patch":
                problems += self._check_peer(i, p, answered, ports, links)
        return problems

    @staticmethod
    def _check_peer(i: int, p: PortAnswers, answered: dict[str, PortAnswers],
                    ports: Mapping[str, Port], links: _Union) -> list[Problem]:
        """A patch port's peer points back, is on another bridge, and closes no loop."""
        where = ("ports", i, "peer")
        peer = answered.get(str(p.peer))
        if peer is not None:
            ok = peer.state == "present" and peer.type == "patch" and peer.peer == p.name
            peer_bridge = peer.bridge
        else:
            there = ports.get(str(p.peer))
            ok = there is not None and there.type == "patch" \
                and there.options.get("peer") == p.name
            peer_bridge = there.bridge if there is not None else ""
        if not ok:
            return [Problem(where, (
                f"'{p.peer}' must be a patch port whose peer is '{p.name}': answer it under "
                f"ports with type: patch, peer: {p.name}, on the other bridge"))]
        if peer_bridge == p.bridge:
            return [Problem(where, (
                f"'{p.peer}' is on the same bridge '{p.bridge}': a patch link within one "
                "bridge is a loop"))]
        if peer is not None and p.name > peer.name:
            return []  # the pair is checked once, at its first port
        if not links.join(p.bridge, peer_bridge):
            return [Problem(where, (
                f"the patch link {p.name} <-> {p.peer} closes a loop: bridges '{p.bridge}' and "
                f"'{peer_bridge}' are already connected through patch ports, so flooded "
                "frames would circle for ever"))]
        return []

    def _check_mirrors(self, answers: OvsMirrorAnswers, facts: OvsMirrorFacts,
                       final: set[str], on_bridge: dict[str, set[str]]) -> list[Problem]:
        existing = {(m.bridge, m.name): m for m in facts.mirrors}
        sources = {(m.bridge, port): j for j, m in enumerate(answers.mirrors)
                   if m.state == "present" for port in (*m.select_src_port, *m.select_dst_port)}
        problems = []
        for i, m in enumerate(answers.mirrors):
            found = existing.get((m.bridge, m.name))
            if found is not None and not _is_managed(found):
                problems.append(Problem(("mirrors", i, "name"), (
                    f"mirror '{m.name}' on bridge '{m.bridge}' was not made by hostsetup and is "
                    f"never changed by it: pick another name, or {_adopt('Mirror', m.name)}")))
            if m.state == "absent":
                continue
            if m.bridge not in final:
                known = ", ".join(sorted(final)) or "none"
                problems.append(Problem(("mirrors", i, "bridge"),
                                        f"bridge '{m.bridge}' does not exist (bridges: {known})"))
                continue
            here = on_bridge.get(m.bridge, set())
            refs: list[tuple[tuple[str | int, ...], str]] = [
                ((key, j), port) for key in ("select_src_port", "select_dst_port")
                for j, port in enumerate(getattr(m, key))
            ]
            if m.output_port is not None:
                refs.append((("output_port",), m.output_port))
            problems += [
                Problem(("mirrors", i, *where), f"'{port}' is not a port on bridge '{m.bridge}'")
                for where, port in refs if port not in here
            ]
            other = sources.get((m.bridge, str(m.output_port)))
            if other is not None and other != i:
                problems.append(Problem(("mirrors", i, "output_port"), (
                    f"'{m.output_port}' is a source of mirrors[{other}]: an output port only "
                    "carries copies, and mirroring it copies copies (a loop)")))
            for key, column in (("snaplen", "snaplen"), ("filter", "filter")):
                if getattr(m, key) is not None and not getattr(facts, column):
                    since = " (it came with Open vSwitch 3.4)" if key == "filter" else ""
                    problems.append(Problem(("mirrors", i, key), (
                        f"this Open vSwitch has no Mirror.{column}{since}: remove {key}")))
        return problems


    def plan(self, answers: OvsMirrorAnswers, ctx: Context) -> list[Operation]:
        """Creations and updates (bridges, ports, mirrors), then deletions (mirrors,
        ports, bridges), then flood_vlans: in this order each operation can also be
        carried out alone, and their undos in reverse order (a deleted port is back
        before a mirror that used it)."""
        facts: OvsMirrorFacts = self.facts(answers, ctx)
        b_put, b_del = self._bridges(answers, facts)
        p_put, p_del = self._ports(answers, facts)
        m_put, m_del = self._mirrors(answers, facts)
        gone = {o.do["name"] for o in b_del}
        deleted = {(o.do["bridge"], o.do["name"]) for o in m_del}
        return [*b_put, *p_put, *m_put, *m_del, *p_del, *b_del,
                *self._rspan(answers, facts, gone, deleted)]

    @staticmethod
    def _bridges(answers: OvsMirrorAnswers,
                 facts: OvsMirrorFacts) -> tuple[list[Operation], list[Operation]]:
        """Bridges to create or update, and to delete.  Only the settings answered are
        compared (and restored by the undo)."""
        puts, deletes = [], []
        for b in answers.bridges:
            have, target = facts.bridges.get(b.name), f"bridge {b.name}"
            if b.state == "absent":
                if have is not None:
                    deletes.append(Operation(
                        Change(target, "delete", {"ports": list(have.ports)}, None,
                               "state: absent: its ports and mirrors go with it"),
                        {"op": "delete_bridge", "name": b.name},
                        {"op": "restore_bridge", "bridge": _bridge_value(have),
                         "ports": [_port_value(p) for n, p in sorted(facts.ports.items())
                                   if p.bridge == b.name],
                         "mirrors": [_mirror_value(m) for m in facts.mirrors
                                     if m.bridge == b.name]},
                        RISKY_GONE.format(f"bridge {b.name} with its ports")))
                continue
            want = b.settings()
            if have is None:
                puts.append(Operation(
                    Change(target, "create", None, {"datapath_type": b.datapath_type or "system",
                                                    **want}),
                    {"op": "put_bridge", "bridge": {**_bridge_put(b.name, want),
                                                    "external_ids": {MANAGED: "true"}}},
                    {"op": "delete_bridge", "name": b.name}))
                continue
            now = {"datapath_type": have.datapath_type, "fail_mode": have.fail_mode,
                   **{f"other_config:{k}": have.other_config.get(k) for k in b.other_config}}
            differ = {k: v for k, v in want.items() if now[k] != v}
            if differ:
                before = {k: now[k] for k in differ}
                puts.append(Operation(
                    Change(target, "update", before, differ),
                    {"op": "put_bridge", "bridge": _bridge_put(b.name, differ)},
                    {"op": "put_bridge", "bridge": _bridge_put(b.name, before)},
                    RISKY_BRIDGE.format(b.name)))
        return puts, deletes

    @staticmethod
    def _ports(answers: OvsMirrorAnswers,
               facts: OvsMirrorFacts) -> tuple[list[Operation], list[Operation]]:
        """Ports to create or rewrite, and to delete."""
        puts, deletes = [], []
        for p in answers.ports:
            old, target = facts.ports.get(p.name), f"port {p.bridge}/{p.name}"
            if p.state == "absent":
                if old is not None:
                    deletes.append(Operation(
                        Change(target, "delete", _shown(_port_fields(old)), None,
                               "state: absent"),
                        {"op": "delete_port", "name": p.name, "bridge": old.bridge},
                        {"op": "put_port", "port": _port_value(old)},
                        RISKY_GONE.format(f"port {p.name}")))
                continue
            new = p.desired()
            if old is None:
                puts.append(Operation(
                    Change(target, "create", None, _shown(_port_fields(new)),
                           describe_port(new)),
                    {"op": "put_port", "port": _port_value(new)},
                    {"op": "delete_port", "name": p.name, "bridge": p.bridge}))
                continue
            before, after = _port_fields(old), _port_fields(new)
            keys = [k for k in {**before, **after} if before.get(k) != after.get(k)]
            if keys:
                new = replace(new, external_ids={**old.external_ids, MANAGED: "true"})
                puts.append(Operation(
                    Change(target, "update", {k: before.get(k) for k in keys},
                           {k: after.get(k) for k in keys}, "in place: " + describe_port(new)),
                    {"op": "put_port", "port": _port_value(new)},
                    {"op": "put_port", "port": _port_value(old)},
                    RISKY_PORT.format(p.name)))
        return puts, deletes

    @staticmethod
    def _mirrors(answers: OvsMirrorAnswers,
                 facts: OvsMirrorFacts) -> tuple[list[Operation], list[Operation]]:
        """Mirrors to create or rewrite, and to delete (``state: absent``, ``prune``)."""
        snaplen = facts.snaplen
        existing = {(m.bridge, m.name): m for m in facts.mirrors}
        puts, deletes = [], []

        def delete(have: Mirror, why: str) -> None:
            deletes.append(Operation(
                Change(f"mirror {have.bridge}/{have.name}", "delete",
                       _shown(_fields(have, snaplen)), None, why),
                {"op": "delete_mirror", "bridge": have.bridge, "name": have.name},
                {"op": "put_mirror", "mirror": _mirror_value(have)}))

        for m in answers.mirrors:
            have = existing.get((m.bridge, m.name))
            target = f"mirror {m.bridge}/{m.name}"
            if have is not None and not _is_managed(have):
                raise StepFailed(f"{target} exists and was not made by hostsetup; not touching it")
            if m.state == "absent":
                if have is not None:
                    delete(have, "state: absent")
                continue
            want = m.desired()
            if have is None:
                puts.append(Operation(
                    Change(target, "create", None, _shown(_fields(want, snaplen)),
                           describe(want)),
                    {"op": "put_mirror", "mirror": _mirror_value(want)},
                    {"op": "delete_mirror", "bridge": m.bridge, "name": m.name}))
                continue
            before, after = _fields(have, snaplen), _fields(want, snaplen)
            differ = [k for k in after if before[k] != after[k]]
            if differ:
                want = replace(want, external_ids={**have.external_ids, MANAGED: "true"})
                puts.append(Operation(
                    Change(target, "update", {k: before[k] for k in differ},
                           {k: after[k] for k in differ}, "in place: " + describe(want)),
                    {"op": "put_mirror", "mirror": _mirror_value(want)},
                    {"op": "put_mirror", "mirror": _mirror_value(have)}))
        if answers.prune:
            listed = {(m.bridge, m.name) for m in answers.mirrors}
            for key, have in sorted(existing.items()):
                if key not in listed and _is_managed(have):
                    delete(have, "no longer in the answers (prune: yes)")
        return puts, deletes

    @staticmethod
    def _rspan(answers: OvsMirrorAnswers, facts: OvsMirrorFacts, gone: set[str],
               deleted: set[tuple[str, str]]) -> list[Operation]:
        """Keep each bridge's flood_vlans holding the output VLANs of our RSPAN mirrors
        and the VLANs its answer lists (the receiving end of an RSPAN).

        Only VLANs this step added (recorded in the bridge's external_ids) are
        ever removed, and only once no managed mirror of that bridge uses them
        and its answer no longer lists them.  ``gone``: bridges this run deletes;
        ``deleted``: mirrors it deletes.
        """
        # The bridges after the run (flood_vlans are kept on each of them).
        bridges = {n: b for n, b in facts.bridges.items() if n not in gone}
        bridges.update({b.name: Bridge(b.name) for b in answers.bridges
                        if b.state == "present" and b.name not in facts.bridges})
        # The managed mirrors after this run: listed ones, plus managed ones kept.
        after = {(m.bridge, m.name): m.output_vlan for m in answers.mirrors if m.state == "present"}
        for have in facts.mirrors:
            key = (have.bridge, have.name)
            if _is_managed(have) and key not in after and key not in deleted:
                after[key] = have.output_vlan
        listed = {b.name: set(b.flood_vlans) for b in answers.bridges if b.state == "present"}
        ops = []
        for name, bridge in sorted(bridges.items()):
            wanted = {v for (b, _n), v in after.items() if b == name and v is not None}
            wanted |= listed.get(name, set())
            flood = set(bridge.flood_vlans)
            old = bridge.external_ids.get(RSPAN_VLANS)
            ours = {int(v) for v in (old or "").split(",") if v}
            new_ours = (ours & wanted) | (wanted - flood)
            plus, minus = sorted(wanted - flood), sorted((ours - wanted) & flood)
            if not plus and not minus and new_ours == ours:
                continue
            ids = ",".join(map(str, sorted(new_ours))) or None
            ops.append(Operation(
                Change(f"bridge {name} flood_vlans", "update", {"flood_vlans": sorted(flood)},
                       {"flood_vlans": sorted((flood | set(plus)) - set(minus))},
                       "RSPAN VLANs (mirror outputs, or a receiving end's) are flooded and "
                       "OVS learns no MAC addresses on them"),
                {"op": "flood", "bridge": name, "add": plus, "remove": minus, "rspan_vlans": ids},
                {"op": "flood", "bridge": name, "add": minus, "remove": plus, "rspan_vlans": old}))
        return ops

    def _revalidate(self, answers: OvsMirrorAnswers, ovsdb: OvsdbAPI, ctx: Context) -> None:
        """Make the change apply to traffic already flowing, or say how to."""
        target = answers.control_target()
        try:
            if target is None:
                raise BackendError("the switch is not on this host")
            ovsdb.revalidate(target)
        except BackendError as exc:
            ctx.notes.append(f"Note: {exc}: " + CACHED_FLOWS.replace("\n", " "))
        else:
            ctx.log(f"ovs_mirror: cached flows revalidated through {target}")

    def execute(self, answers: OvsMirrorAnswers, command: Command, ctx: Context) -> None:
        """One command in a transaction of its own (``hostsetup undo``, ``resume``)."""
        ovsdb = answers.api(ctx)
        ovsdb.apply(_edit([command], ovsdb), answers.timeout)
        self._revalidate(answers, ovsdb, ctx)

    def observe(self, answers: OvsMirrorAnswers, command: Command, ctx: Context) -> bool:
        switch = _Switch(answers.api(ctx))
        with _malformed(command):
            return _observe(command, switch)

    def apply(self, answers: OvsMirrorAnswers, ops: list[Operation], ctx: Context) -> None:
        """All of ``ops`` in ONE OVSDB transaction (all or nothing), journaled: every
        operation begun before it is sent, every one ended after it."""
        ovsdb = answers.api(ctx)
        if ops:
            for op in ops:
                ctx.journal.begin(self.name, op)
            ctx.progress(0.1, f"one OVSDB transaction: {len(ops)} change(s)")
            try:
                cfg = ovsdb.apply(_edit([op.do for op in ops], ovsdb), answers.timeout)
            except VswitchdTimeout as exc:
                self._end(ops, ctx)  # the database took it: carried out
                raise StepFailed(str(exc), done=[op.change for op in ops]) from None
            except BackendUnreachable:
                raise  # the runner reports it (exit 5): whether it committed is unknown
            except (BackendError, StepFailed) as exc:
                # One transaction: when it fails, none of it took effect.
                self._end(ops, ctx, str(exc))
                raise StepFailed(f"{exc}", done=[]) from None
            self._end(ops, ctx)
            ctx.log(f"ovs_mirror: {len(ops)} change(s) committed, ovs-vswitchd at cfg {cfg}")
            self._revalidate(answers, ovsdb, ctx)
        ctx.progress(0.9, "reading mirror statistics")
        mirrors = {(m.bridge, m.name): m for m in ovsdb.mirrors()}
        for m in answers.mirrors:
            have = mirrors.get((m.bridge, m.name))
            if m.state == "present" and have is not None:
                stats = have.statistics
                ctx.notes.append(
                    f"mirror {m.bridge}/{m.name}: tx_packets={stats['tx_packets']} "
                    f"tx_bytes={stats['tx_bytes']}" if "tx_packets" in stats else
                    f"mirror {m.bridge}/{m.name}: no statistics yet (ovs-vswitchd "
                    "reports them every few seconds)")

    def _end(self, ops: list[Operation], ctx: Context, error: str = "") -> None:
        for op in ops:
            ctx.journal.end(self.name, op, error)
            if not error:
                ctx.log(f"{self.name}: {op.change.describe()}")

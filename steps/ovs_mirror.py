"""Step ``ovs_mirror``: Open vSwitch port mirrors (SPAN to a port, RSPAN to a VLAN).

A mirror copies selected traffic of a bridge to an output port (SPAN) or
out on a VLAN (RSPAN), e.g. a VM's traffic to an IDS or a capture box.
Mirrors this step creates carry ``external_ids:hostsetup-managed=true``;
only those are ever updated or deleted, so mirrors made by hand or by
another tool are left alone.  All changes of a run are one OVSDB
transaction: they all happen or none does.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.ovsdb import (
    Bridge,
    Mirror,
    MirrorEdit,
    OvsdbAPI,
    OvsdbTLS,
    VswitchdTimeout,
    ovsdb_api,
)
from steps.base import Change, Context, Problem, Question, Step, StepFailed, StepModel
from steps.validators import OvsdbRemote

DEFAULT_DB = "unix:/var/run/openvswitch/db.sock"
MANAGED = "hostsetup-managed"  # external_ids key marking the mirrors this step owns
# Bridge external_ids key: the VLANs this step added to flood_vlans for RSPAN,
# so it removes only those when their mirrors go.
RSPAN_VLANS = "hostsetup-rspan-vlans"
COMPARED = ("select_all", "select_src_port", "select_dst_port", "select_vlan",
            "output_port", "output_vlan", "snaplen")

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

    name: str = Field(min_length=1, max_length=64, description="mirror name (unique per bridge)")
    bridge: str = Field(min_length=1, description="bridge the mirror belongs to, e.g. br0")
    state: Literal["present", "absent"] = Field(
        "present", description="present: create/update it; absent: delete it (if hostsetup's)")
    select_all: bool = Field(False, description="mirror every packet of every port of the bridge")
    select_src_port: list[str] = Field(
        default_factory=list,
        description="ports whose RECEIVED traffic is mirrored: what the VM on that port sends")
    select_dst_port: list[str] = Field(
        default_factory=list,
        description="ports whose TRANSMITTED traffic is mirrored: what is delivered to the VM")
    select_vlan: list[VlanId] = Field(
        default_factory=list,
        description="only mirror these VLANs (0-4095); empty: all VLANs")
    output_port: str | None = Field(
        None, description="SPAN: port that receives the copies (reserved for mirroring)")
    output_vlan: int | None = Field(
        None, ge=1, le=4095,
        description="RSPAN: VLAN (1-4095) the copies are sent out on; added to flood_vlans")
    snaplen: int | None = Field(
        None, ge=14, le=65535,
        description="truncate copies to this many bytes (14-65535; if this OVS supports it)")

    _split_vlans = field_validator("select_vlan", mode="before")(_vlan_list)

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
            external_ids={MANAGED: "true"},
        )


class OvsMirrorAnswers(StepModel):
    """Answers of the ``ovs_mirror`` step."""

    db: OvsdbRemote = Field(
        DEFAULT_DB, description="OVSDB remote: unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT")
    ssl_key: str | None = Field(None, description="ssl: remotes: client private key file")
    ssl_cert: str | None = Field(None, description="ssl: remotes: client certificate file")
    ssl_ca: str | None = Field(None, description="ssl: remotes: CA certificate file")
    prune: bool = Field(
        False,
        description="delete hostsetup's mirrors (any bridge) that this file no longer lists")
    timeout: float = Field(
        10.0, gt=0, le=300, description="seconds to wait for ovs-vswitchd to take the change")
    vswitchd_ctl: str | None = Field(
        None, description="ovs-vswitchd's control socket, as for 'ovs-appctl -t' (a path, "
        "or a daemon name such as ovs-vswitchd): after a change, cached flows are "
        "revalidated so the mirror applies at once. Default: ovs-vswitchd for a unix: db, "
        "none for tcp:/ssl: (the switch is on another host)")
    mirrors: list[MirrorAnswers] = Field(default_factory=list, description="the port mirrors")

    def control_target(self) -> str | None:
        """Where to reach ovs-vswitchd's unixctl, if it runs on this host."""
        if self.vswitchd_ctl:
            return self.vswitchd_ctl
        return "ovs-vswitchd" if self.db.startswith("unix:") else None

    @model_validator(mode="after")
    def _ssl(self) -> OvsMirrorAnswers:
        if self.db.startswith("ssl:") and None in (self.ssl_key, self.ssl_cert, self.ssl_ca):
            raise ValueError("an ssl: db needs ssl_key, ssl_cert and ssl_ca")
        return self

    @field_validator("mirrors")
    @classmethod
    def _unique(cls, mirrors: list[MirrorAnswers]) -> list[MirrorAnswers]:
        seen: dict[tuple[str, str], int] = {}
        dups = []
        for i, m in enumerate(mirrors):
            key = (m.bridge, m.name)
            if key in seen:
                dups.append(f"mirrors[{i}] repeats the name '{m.name}' of mirrors[{seen[key]}] "
                            f"on bridge '{m.bridge}'")
            seen.setdefault(key, i)
        if dups:
            raise ValueError("mirror names must be unique per bridge: " + "; ".join(dups))
        return mirrors


def _backend(ctx: Context, section: dict[str, Any]) -> OvsdbAPI:
    """The OVSDB connection of a (possibly partial) answers section."""
    keys = (section.get("ssl_key"), section.get("ssl_cert"), section.get("ssl_ca"))
    tls = OvsdbTLS(*keys) if all(keys) else None  # type: ignore[arg-type]
    return ovsdb_api(ctx.backends, section.get("db") or DEFAULT_DB, tls)


def _is_managed(m: Mirror) -> bool:
    return m.external_ids.get(MANAGED) == "true"


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
    requires = "ovs"

    def example(self) -> dict[str, Any]:
        """A SPAN mirror of one VM's traffic to a monitoring port."""
        return OvsMirrorAnswers.model_validate({"mirrors": [{
            "name": "span-vm1", "bridge": "br0", "select_src_port": ["vnet0"],
            "select_dst_port": ["vnet0"], "output_port": "mon0",
        }]}).model_dump(mode="json", exclude_none=True)

    def connect_questions(self) -> list[Question]:
        return [
            Question("db", "OVSDB remote", required=True,
                     help="unix:/var/run/openvswitch/db.sock on the host itself; "
                     "tcp:HOST:6640 or ssl:HOST:6640 for a remote switch."),
            Question("ssl_key", "SSL private key", help="Only for ssl: remotes (a file path)."),
            Question("ssl_cert", "SSL certificate", help="Only for ssl: remotes (a file path)."),
            Question("ssl_ca", "SSL CA certificate", help="Only for ssl: remotes (a file path)."),
        ]

    def discover(self, answers: dict[str, Any], ctx: Context) -> dict[str, Any]:
        ovsdb = _backend(ctx, answers)
        return {
            "bridges": ovsdb.bridges(),
            "mirrors": ovsdb.mirrors(),
            "snaplen": ovsdb.has_column("Mirror", "snaplen"),
        }

    def questions(self, facts: dict[str, Any]) -> list[Question]:
        bridges: dict[str, Bridge] = facts.get("bridges", {})
        ports = tuple(sorted({p for b in bridges.values() for p in b.ports}))
        fields = [
            Question("name", "Mirror name", required=True, help="Unique on its bridge."),
            Question("bridge", "Bridge", kind="choice", choices=tuple(sorted(bridges)),
                     required=True, help="The bridge whose traffic is mirrored."),
            Question("state", "State", kind="choice", choices=("present", "absent"),
                     help="present: create or update this mirror; absent: delete it "
                     "(only if hostsetup made it)."),
            Question("select_all", "Mirror all traffic", kind="yesno",
                     help="Every packet of every port of the bridge."),
            Question("select_src_port", "Traffic sent by (src)", kind="multi", choices=ports,
                     help=SRC_HELP + " Ports of every bridge are listed; pick the bridge's."),
            Question("select_dst_port", "Traffic delivered to (dst)", kind="multi",
                     choices=ports, help=DST_HELP + " Ports of every bridge are listed; "
                     "pick the bridge's."),
            Question("select_vlan", "Only VLANs", help="Comma-separated VLAN IDs 0-4095; "
                     "empty mirrors all VLANs."),
            Question("output_port", "Output port (SPAN)", kind="choice", choices=ports,
                     help="The port that receives the copies; it then carries nothing else. "
                     "Leave empty for RSPAN."),
            Question("output_vlan", "Output VLAN (RSPAN)", kind="int", help=RSPAN_HELP),
        ]
        if facts.get("snaplen", True):
            fields.append(Question("snaplen", "Snap length", kind="int",
                                   help="Truncate each copy to this many bytes (14-65535)."))
        return [
            Question("mirrors", "Port mirrors", kind="records", fields=tuple(fields),
                     summary="name", help=self.help),
            Question("prune", "Delete unlisted mirrors", kind="yesno",
                     help="Delete mirrors made by hostsetup that are not listed here. "
                     "Mirrors made otherwise are never touched."),
        ]

    def current(self, facts: dict[str, Any]) -> dict[str, Any]:
        """hostsetup's mirrors on the switch (``hostsetup-managed``), as records."""
        mirrors = [{"name": m.name, "bridge": m.bridge, **_shown(_fields(m))}
                   for m in facts.get("mirrors", []) if _is_managed(m)]
        return {"mirrors": sorted(mirrors, key=lambda r: (r["bridge"], r["name"]))} \
            if mirrors else {}

    def validate(self, answers: OvsMirrorAnswers, facts: dict[str, Any]) -> list[Problem]:
        bridges: dict[str, Bridge] = facts["bridges"]
        existing = {(m.bridge, m.name): m for m in facts["mirrors"]}
        problems = []
        for i, m in enumerate(answers.mirrors):
            found = existing.get((m.bridge, m.name))
            if found is not None and not _is_managed(found):
                problems.append(Problem(("mirrors", i, "name"), (
                    f"mirror '{m.name}' on bridge '{m.bridge}' was not made by hostsetup and is "
                    "never changed by it: pick another name, or adopt it with 'ovs-vsctl set "
                    f"Mirror {m.name} external_ids:{MANAGED}=true'")))
            if m.state == "absent":
                continue
            if m.bridge not in bridges:
                known = ", ".join(sorted(bridges)) or "none"
                problems.append(Problem(("mirrors", i, "bridge"),
                                        f"bridge '{m.bridge}' does not exist (bridges: {known})"))
                continue
            on_bridge = set(bridges[m.bridge].ports)
            refs: list[tuple[tuple[str | int, ...], str]] = [
                ((key, j), port) for key in ("select_src_port", "select_dst_port")
                for j, port in enumerate(getattr(m, key))
            ]
            if m.output_port is not None:
                refs.append((("output_port",), m.output_port))
            problems += [
                Problem(("mirrors", i, *where), f"'{port}' is not a port on bridge '{m.bridge}'")
                for where, port in refs if port not in on_bridge
            ]
            if m.snaplen is not None and not facts["snaplen"]:
                problems.append(Problem(("mirrors", i, "snaplen"),
                                        "this Open vSwitch has no Mirror.snaplen: remove it"))
        return problems

    def _diff(self, answers: OvsMirrorAnswers, ovsdb: OvsdbAPI) -> tuple[list[Change], MirrorEdit]:
        """The changes from what the switch has to the answers, and the edit doing them."""
        bridges = ovsdb.bridges()
        snaplen = ovsdb.has_column("Mirror", "snaplen")
        existing = {(m.bridge, m.name): m for m in ovsdb.mirrors()}
        changes: list[Change] = []
        put: list[Mirror] = []
        delete: list[Mirror] = []
        for m in answers.mirrors:
            have = existing.get((m.bridge, m.name))
            target = f"mirror {m.bridge}/{m.name}"
            if have is not None and not _is_managed(have):
                raise StepFailed(f"{target} exists and was not made by hostsetup; not touching it")
            if m.state == "absent":
                if have is not None:
                    delete.append(have)
                    changes.append(Change(target, "delete", _shown(_fields(have, snaplen)),
                                          None, "state: absent"))
                continue
            want = m.desired()
            if have is None:
                put.append(want)
                changes.append(Change(target, "create", None, _shown(_fields(want, snaplen)),
                                      describe(want)))
                continue
            before, after = _fields(have, snaplen), _fields(want, snaplen)
            differ = [k for k in after if before[k] != after[k]]
            if differ:
                put.append(replace(want, uuid=have.uuid,
                                   external_ids={**have.external_ids, MANAGED: "true"}))
                changes.append(Change(
                    target, "update", {k: before[k] for k in differ},
                    {k: after[k] for k in differ}, "in place: " + describe(want)))
        if answers.prune:
            listed = {(m.bridge, m.name) for m in answers.mirrors}
            for key, have in sorted(existing.items()):
                if key not in listed and _is_managed(have):
                    delete.append(have)
                    changes.append(Change(f"mirror {have.bridge}/{have.name}", "delete",
                                          _shown(_fields(have, snaplen)), None,
                                          "no longer in the answers (prune: yes)"))
        flood = self._rspan(answers, bridges, existing, {(d.bridge, d.name) for d in delete})
        changes += flood[0]
        return changes, MirrorEdit(put=put, delete=delete, flood_add=flood[1],
                                   flood_remove=flood[2], bridge_ids=flood[3])

    def _rspan(
        self, answers: OvsMirrorAnswers, bridges: dict[str, Bridge],
        existing: dict[tuple[str, str], Mirror], deleted: set[tuple[str, str]],
    ) -> tuple[list[Change], dict[str, list[int]], dict[str, list[int]],
               dict[str, dict[str, str | None]]]:
        """Keep each bridge's flood_vlans holding the output VLANs of our RSPAN mirrors.

        Only VLANs this step added (recorded in the bridge's external_ids) are
        ever removed, and only once no managed mirror of that bridge uses them.
        """
        # The managed mirrors after this run: listed ones, plus managed ones kept.
        after = {(m.bridge, m.name): m.output_vlan for m in answers.mirrors if m.state == "present"}
        for key, have in existing.items():
            if _is_managed(have) and key not in after and key not in deleted:
                after[key] = have.output_vlan
        changes, add, remove, ids = [], {}, {}, {}
        for name, bridge in sorted(bridges.items()):
            wanted = {v for (b, _n), v in after.items() if b == name and v is not None}
            flood = set(bridge.flood_vlans)
            ours = {int(v) for v in bridge.external_ids.get(RSPAN_VLANS, "").split(",") if v}
            new_ours = (ours & wanted) | (wanted - flood)
            plus, minus = sorted(wanted - flood), sorted((ours - wanted) & flood)
            if not plus and not minus and new_ours == ours:
                continue
            add[name], remove[name] = plus, minus
            ids[name] = {RSPAN_VLANS: ",".join(map(str, sorted(new_ours))) or None}
            new_flood = sorted((flood | set(plus)) - set(minus))
            changes.append(Change(
                f"bridge {name} flood_vlans", "update", {"flood_vlans": sorted(flood)},
                {"flood_vlans": new_flood},
                "RSPAN output VLANs are flooded and OVS learns no MAC addresses on them",
            ))
        return changes, add, remove, ids

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

    def plan(self, answers: OvsMirrorAnswers, ctx: Context) -> list[Change]:
        return self._diff(answers, _backend(ctx, answers.model_dump()))[0]

    def apply(self, answers: OvsMirrorAnswers, changes: list[Change], ctx: Context) -> None:
        ovsdb = _backend(ctx, answers.model_dump())
        now, edit = self._diff(answers, ovsdb)
        if now:
            ctx.progress(0.1, f"one OVSDB transaction: {len(now)} change(s)")
            try:
                cfg = ovsdb.apply(edit, answers.timeout)
            except VswitchdTimeout as exc:
                raise StepFailed(str(exc), done=now) from None
            except BackendUnreachable:
                raise  # the runner reports it (exit 5): whether it committed is unknown
            except BackendError as exc:
                # One transaction: when it fails, none of it took effect.
                raise StepFailed(f"{exc}", done=[]) from None
            ctx.log(f"ovs_mirror: {len(now)} change(s) committed, ovs-vswitchd at cfg {cfg}")
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

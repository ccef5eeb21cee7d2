"""Step ``services``: the host's services over D-Bus (systemd, NetworkManager).

Reports required units that are missing or inactive and, when answered so,
starts them; enables, disables or masks unit files (persistent), stops and
restarts units, and writes drop-ins (``/etc/systemd/system/<unit>.d/<name>.conf``)
followed by a ``Reload`` and a restart of the active units they change.  Every
job is waited for (``JobRemoved``, after ``Subscribe()``), bounded by ``timeout``.
Its facts (which units run, what is on the bus) are read by later steps, e.g.
whether Open vSwitch or libvirt is present.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from backends.interfaces import BackendError
from backends.interfaces.dbus import DBusAPI, NetworkState, Unit, UnitStatus, dbus_api
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
from steps.validators import DbusAddress

DEFAULT_UNITS = ["openvswitch-switch.service", "libvirtd.service"]
# What later steps care about: fact name -> units (any active) or bus names.
KNOWN = {
    "ovs": ("ovsdb-server.service", "ovs-vswitchd.service", "openvswitch-switch.service"),
    "libvirt": ("libvirtd.service", "virtqemud.service", "org.libvirt"),
    "network_manager": ("NetworkManager.service", "org.freedesktop.NetworkManager"),
    "redis": ("redis-server.service",),
}


UNIT_LISTS = ("enable", "disable", "mask", "stop", "restart")
# Units that carry the operator's or the control plane's connection to this host,
# with what they carry: stopping, restarting, disabling or masking one of them is
# risky (Operation.risky), so the wizard and `apply --confirm-within` keep such a
# change only when it is confirmed in time (wizard/confirm.py).  Disabling or
# masking cuts the connection at the next boot; stopping or restarting at once.
MANAGEMENT_UNITS = {
    "ssh.service": "the operator's SSH connections",
    "sshd.service": "the operator's SSH connections",
    "ssh.socket": "the operator's SSH connections",
    "NetworkManager.service": "the host's network configuration",
    "systemd-networkd.service": "the host's network configuration",
    "networking.service": "the host's network configuration",
    "openvswitch-switch.service": "Open vSwitch, whose bridges may carry the management port",
    "ovs-vswitchd.service": "Open vSwitch, whose bridges may carry the management port",
    "ovsdb-server.service": "Open vSwitch, whose bridges may carry the management port",
    "hostsetup-agent.service": "the fleet agent's connection to its broker",
}
RISKY_ACTIONS = ("stop", "restart", "disable", "mask")
# What each unit-file action leaves as the unit's UnitFileState.
ENABLEMENT = {"enable": "enabled", "disable": "disabled", "mask": "masked"}
SECTION = re.compile(r"^\[[A-Za-z]+\]$", re.M)


class DropIn(StepModel):
    """A drop-in: ``<dropin_dir>/<unit>.d/<name>.conf`` with ``content``."""

    unit: str = Field(description="the unit it amends, e.g. libvirtd.service")
    name: str = Field(pattern=r"^[A-Za-z0-9_@-][A-Za-z0-9_.@-]{0,63}$",
                      description="file name without .conf, e.g. 50-hostsetup")
    content: str = Field(max_length=65536, description="the unit file fragment, starting "
                         "with its [Section], e.g. \"[Service]\\nEnvironment=FOO=1\\n\"")

    @field_validator("unit")
    @classmethod
    def _unit(cls, name: str) -> str:
        return _check_unit(name)

    @field_validator("content")
    @classmethod
    def _section(cls, content: str) -> str:
        if not SECTION.search(content.split("\n", 1)[0].strip()):
            raise ValueError("a drop-in starts with its section header, e.g. [Service]")
        return content if content.endswith("\n") else content + "\n"


def _check_unit(name: str) -> str:
    if "." not in name or "/" in name or " " in name:
        raise ValueError(f"'{name}' is not a systemd unit name (e.g. libvirtd.service)")
    return name


class ServicesConnection(StepModel):
    """How the ``services`` step reaches the host: its D-Bus."""

    bus: DbusAddress = Field(
        "system", title="D-Bus",
        description="D-Bus to talk to: 'system', or an address such as unix:path=/run/dbus/x",
    )


class ServicesAnswers(ServicesConnection):
    """Answers of the ``services`` step."""

    require: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNITS), title="Required units",
        description="systemd units that must be present and active (inactive ones are "
        "started if 'start' is yes; one not installed is refused)",
    )
    start: bool = Field(True, title="Start inactive units",
                        description="start required units that are inactive (mode 'replace')")
    timeout: float = Field(30.0, gt=0, le=600, title="Start timeout (s)",
                           description="Seconds to wait for each start, stop or restart job")
    enable: list[str] = Field(default_factory=list, description="unit files to enable "
                              "(persistent: started at boot)")
    disable: list[str] = Field(default_factory=list, description="unit files to disable")
    mask: list[str] = Field(default_factory=list, description="unit files to mask (cannot "
                            "be started at all)")
    stop: list[str] = Field(default_factory=list, description="units to stop if active")
    restart: list[str] = Field(default_factory=list, description="units to restart when "
                               "this run changes something (drop-ins, unit files)")
    dropins: list[DropIn] = Field(default_factory=list, description="drop-ins to write")
    dropin_dir: str = Field("/etc/systemd/system", pattern=r"^/",
                            description="where drop-in directories are (absolute path)")

    @field_validator("require", *UNIT_LISTS)
    @classmethod
    def _unit_names(cls, names: list[str], info: ValidationInfo) -> list[str]:
        for name in names:
            _check_unit(name)
        # One unit in two lists that contradict each other.
        against = {"disable": ("enable",), "mask": ("enable", "disable"),
                   "restart": ("stop",)}.get(str(info.field_name), ())
        if info.field_name == "stop" and info.data.get("start", True):
            against = ("require",)
        for other in against:
            both = sorted(set(names) & set(info.data.get(other, ())))
            if both:
                raise ValueError(f"{', '.join(both)} also in {other}: a unit is in one of "
                                 f"{info.field_name} and {other}")
        return names


@dataclass(frozen=True)
class ServicesFacts:
    """What the ``services`` step read: the units systemd lists (and those the
    answers name, loaded), their status, NetworkManager's devices, the bus's
    names, and which later-step systems are present (``present``: KNOWN's keys)."""

    units: Mapping[str, Unit] = field(default_factory=dict)
    status: Mapping[str, UnitStatus] = field(default_factory=dict)
    network: NetworkState | None = None
    bus: Mapping[str, list[str]] = field(default_factory=dict)
    present: frozenset[str] = frozenset()


class ServicesStep(Step[ServicesAnswers]):
    """Detect the host's services and start the required ones."""

    name = "services"
    title = "Host services"
    help = (
        "Reads systemd and NetworkManager over D-Bus. Units listed as required must be\n"
        "installed; inactive ones are started (StartUnit, mode 'replace') if you answer\n"
        "so, and each start job is waited for. 'bus' is 'system' on a real host."
    )
    Answers = ServicesAnswers
    Connection = ServicesConnection
    Facts = ServicesFacts
    may_provide = frozenset(KNOWN)

    def provides(self, changes: list[Change]) -> set[str]:
        """Starting e.g. ovs-vswitchd makes the 'ovs' fact true for later steps."""
        started = {c.target.removeprefix("unit ") for c in changes if c.action == "start"}
        return {fact for fact, names in KNOWN.items() if started.intersection(names)}

    def discover(self, connection: ServicesConnection, ctx: Context) -> ServicesFacts:
        named = _named(connection) if isinstance(connection, ServicesAnswers) \
            else DEFAULT_UNITS
        return _read(dbus_api(ctx.backends, connection.bus), named)

    def questions(self, facts: ServicesFacts) -> list[Question]:
        units = facts.units
        names = sorted({*units, *DEFAULT_UNITS})
        return [
            ask(ServicesAnswers, "require", choices=tuple(names),
                choice_notes=tuple((n, units[n].active if n in units else "not installed")
                                   for n in names) if units else ()),
            ask(ServicesAnswers, "start"),
            ask(ServicesAnswers, "timeout", kind="int"),
        ]

    def validate(self, answers: ServicesAnswers, facts: ServicesFacts) -> list[Problem]:
        where: list[tuple[tuple[str | int, ...], str]] = [
            ((key, i), name) for key in ("require", *UNIT_LISTS)
            for i, name in enumerate(getattr(answers, key))]
        where += [(("dropins", i, "unit"), d.unit) for i, d in enumerate(answers.dropins)]
        return [Problem(path, f"unit '{name}' is not installed on this host")
                for path, name in where if name not in facts.units]

    def plan(self, answers: ServicesAnswers, ctx: Context) -> list[Operation]:
        facts: ServicesFacts = self.facts(answers, ctx)
        dbus = dbus_api(ctx.backends, answers.bus)
        status, units = facts.status, facts.units
        ops = []
        amended = set()  # units whose drop-ins this run writes
        for path, d in _dropin_paths(answers).items():
            old = dbus.read_file(path)
            if old is None or old.content != d.content.encode():
                change = Change(f"drop-in {path}", "install",
                                _summary(old.content.decode(errors="replace")) if old else None,
                                _summary(d.content), f"for {d.unit}")
                undo = {"op": "remove_file", "path": path} if old is None else \
                    {"op": "write_file", "path": path, "mode": old.mode,
                     "content": old.content.decode(errors="surrogateescape")}
                ops.append(Operation(change, {"op": "write_file", "path": path, "mode": 0o644,
                                              "content": d.content}, {**undo, "reload": True}))
                amended.add(d.unit)
        for action, state in ENABLEMENT.items():
            for name in getattr(answers, action):
                st = status.get(name)
                if st is not None and st.enablement != state:
                    ops.append(Operation(
                        Change(f"unit {name}", action, _state(st),  # type: ignore[arg-type]
                               {**_state(st), "enablement": state}),
                        {"op": "unit_file", "unit": name, "to": state},
                        {"op": "unit_file", "unit": name, "to": st.enablement, "reload": True},
                        risky(action, name)))
        configured = bool(ops)
        stale = sorted(n for n in {d.unit for d in answers.dropins}
                       if n in status and status[n].need_reload)
        # A required unit about to be started whose file changed on disk would start in
        # the version systemd read before: reload first, as systemctl daemon-reload.
        stale_start = sorted(n for n in answers.require if answers.start and n in status
                             and status[n].need_reload and status[n].active != "active")
        on_disk = sorted({*stale, *stale_start})
        if configured or on_disk:
            ops.append(Operation(Change(
                "systemd", "update", detail="Reload: systemd re-reads unit files and drop-ins"
                + (f" ({', '.join(on_disk)} changed on disk)" if on_disk else "")),
                {"op": "reload"}))
        stopped = [n for n in answers.stop if n in status and status[n].active in RUNNING]
        ops += [self._job("stop", n, _state(status[n]), {**_state(status[n]),  # type: ignore
                                                         "active": "inactive"}, answers)
                for n in stopped]
        started = []
        for name in answers.require:
            unit = units.get(name)
            if unit is not None and unit.active != "active" and answers.start:
                started.append(name)
                ops.append(also_stop(self._job("start", name, f"{unit.active} ({unit.sub})",
                                               "active", answers),
                                     _pulled(dbus, status.get(name))))
        # A running unit whose configuration changed runs the old one until restarted.
        again = amended | set(stale) | (set(answers.restart) if configured else set())
        for name in sorted(again - set(stopped) - set(started)):
            st = status.get(name)
            if st is not None and st.active in RUNNING:
                why = "its drop-ins changed" if name in amended | set(stale) else \
                    "listed under restart, and this run changes the configuration"
                ops.append(self._job("restart", name, _state(st), None, answers, why))
        return ops

    def doing(self, op: Operation) -> str:
        """"starting x.service" while a job runs (what fleet progress lines show)."""
        if op.do["op"] == "job":
            verb = {"start": "starting", "stop": "stopping", "restart": "restarting"}
            return f"{verb[op.do['action']]} {op.do['unit']}"
        return op.change.describe()

    @staticmethod
    def _job(action: str, unit: str, before: Any, after: Any, answers: ServicesAnswers,
             why: str = "") -> Operation:
        undo = {"start": "stop", "stop": "start"}.get(action)
        command = {"op": "job", "action": action, "unit": unit, "timeout": answers.timeout}
        return Operation(Change(f"unit {unit}", action, before, after, why),  # type: ignore
                         command, {**command, "action": undo} if undo else None,
                         risky(action, unit))

    def execute(self, answers: ServicesAnswers, command: Command, ctx: Context) -> None:
        dbus = dbus_api(ctx.backends, answers.bus)
        op = command["op"]
        if op == "write_file":
            raw = command["content"].encode(errors="surrogateescape")
            backup = dbus.write_file(command["path"], raw, command["mode"])
            if backup:
                ctx.notes.append(f"{command['path']}: the previous version is kept as {backup}")
        elif op == "remove_file":
            backup = dbus.remove_file(command["path"])
            if backup:
                ctx.notes.append(f"{command['path']}: removed, kept as {backup}")
        elif op == "unit_file":
            _set_enablement(dbus, command["unit"], command["to"])
        elif op == "reload":
            dbus.reload()
        elif op == "job":
            for unit in [command["unit"], *command.get("also", ())]:
                _run_job(dbus, command["action"], unit, command["timeout"])
        else:
            raise StepFailed(f"services: unknown command {op!r}")
        if command.get("reload"):
            dbus.reload()

    def observe(self, answers: ServicesAnswers, command: Command,
                ctx: Context) -> bool | None:
        dbus = dbus_api(ctx.backends, answers.bus)
        op = command["op"]
        if op in ("write_file", "remove_file"):
            found = dbus.read_file(command["path"])
            return found is None if op == "remove_file" else found is not None and \
                found.content == command["content"].encode(errors="surrogateescape")
        if op == "job" and command["action"] in ("start", "stop"):
            # A stop that also stops what the start pulled in: all of them stopped.
            states = [dbus.unit_status(u) for u in [command["unit"], *command.get("also", ())]]
            return all(st is not None and (st.active == "active") == (command["action"] == "start")
                       for st in states)
        if op == "unit_file":
            st = dbus.unit_status(command["unit"])
            return st is not None and _enablement_is(st.enablement, command["to"])
        return None


def risky(action: str, unit: str) -> str:
    """Why ``action`` on ``unit`` can cut the connection to the host ("" if it cannot)."""
    carries = MANAGEMENT_UNITS.get(unit)
    if action not in RISKY_ACTIONS or carries is None:
        return ""
    return f"{unit} carries {carries}"


def _read(dbus: DBusAPI, named: list[str]) -> ServicesFacts:
    units = dbus.list_units()
    status: dict[str, UnitStatus] = {}
    for name in named:
        found = dbus.unit_status(name)  # loads a unit ListUnits did not show
        if found is not None:
            status[name] = found
            units.setdefault(name, Unit(name, found.load, found.active, found.sub))
    bus_names = dbus.bus_services()
    present = frozenset(
        fact for fact, names in KNOWN.items()
        if any((n in units and units[n].active == "active") or n in bus_names for n in names))
    return ServicesFacts(units, status, dbus.network(), bus_names, present)


# Unit-file states that mean "not enabled" (what undoing an enable restores).
NOT_ENABLED = ("disabled", "static", "indirect", "generated", "transient", "alias", "")


def _enablement_is(state: str, wanted: str) -> bool:
    return state == wanted or (wanted in NOT_ENABLED and state in NOT_ENABLED)


def _set_enablement(dbus: DBusAPI, unit: str, wanted: str) -> None:
    """Bring a unit file to ``wanted`` (enabled, masked, or a not-enabled state)."""
    st = dbus.unit_status(unit)
    now = st.enablement if st is not None else ""
    if _enablement_is(now, wanted):
        return
    if now == "masked":
        dbus.unit_files("unmask", [unit])
    if wanted == "masked":
        try:
            dbus.unit_files("mask", [unit])
        except BackendError as exc:
            if "exist" not in str(exc):
                raise
            # Masking links /etc/systemd/system/UNIT to /dev/null: a unit file of
            # that name already there (the admin's own unit) cannot be replaced.
            raise StepFailed(
                f"cannot mask {unit}: its unit file is in /etc/systemd/system, where "
                "masking would put a link to /dev/null; disable or stop it instead, or "
                f"move the file to /usr/lib/systemd/system (systemd: {exc})") from None
    elif wanted == "enabled":
        dbus.unit_files("enable", [unit])
    elif now == "enabled":
        dbus.unit_files("disable", [unit])


# Kinds of unit a start pulls in that its undo stops again, when they were inactive
# before (targets, slices, mounts and devices are left as they are).
PULLED_KINDS = (".service", ".socket", ".path", ".timer")


def _pulled(dbus: DBusAPI, st: UnitStatus | None) -> list[str]:
    """The units starting ``st`` would start that are inactive now (read live)."""
    found = []
    for name in st.pulls if st is not None else ():
        other = dbus.unit_status(name) if name.endswith(PULLED_KINDS) else None
        if other is not None and other.active in ("inactive", "failed"):
            found.append(name)
    return found


def also_stop(op: Operation, units: list[str]) -> Operation:
    """A start whose undo also stops ``units``: what the start pulls in (e.g.
    libvirtd.service's sockets, which would start libvirtd again on a connection)."""
    if not units or op.undo is None:
        return op
    return Operation(op.change, op.do, {**op.undo, "also": units}, op.risky)


def _run_job(dbus: DBusAPI, action: str, unit: str, timeout: float) -> None:
    """Run a start/stop/restart job and wait for it; a result other than done fails."""
    call = {"start": dbus.start_unit, "stop": dbus.stop_unit,
            "restart": dbus.restart_unit}[action]
    result = call(unit, timeout)
    if result != "done":
        st = dbus.unit_status(unit)
        why = f" (unit Result: {st.result})" if st is not None and st.result else ""
        raise StepFailed(f"{action} of {unit} ended with job result '{result}'{why}")


RUNNING = ("active", "activating", "reloading")


def _named(answers: ServicesAnswers) -> list[str]:
    """Every unit the answers name."""
    names = list(answers.require)
    for key in UNIT_LISTS:
        names += getattr(answers, key)
    names += [d.unit for d in answers.dropins]
    return sorted(set(names))


def _dropin_paths(answers: ServicesAnswers) -> dict[str, DropIn]:
    root = answers.dropin_dir.rstrip("/")
    return {f"{root}/{d.unit}.d/{d.name}.conf": d for d in answers.dropins}


def _state(st: UnitStatus) -> dict[str, str]:
    return {"active": f"{st.active} ({st.sub})", "enablement": st.enablement}


def _summary(content: str) -> str:
    """A drop-in in a plan or report: its sections and directives, never their values
    (an Environment= line may hold a secret)."""
    keys = [line.split("=", 1)[0].strip() if "=" in line else line.strip()
            for line in content.splitlines() if line.strip() and not line.startswith("#")]
    digest = hashlib.sha256(content.encode()).hexdigest()[:12]
    return f"{' '.join(dict.fromkeys(keys))} (sha256 {digest})"

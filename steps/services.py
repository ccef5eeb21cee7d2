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
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from backends.interfaces import BackendError
from backends.interfaces.dbus import DBusAPI, Unit, UnitStatus, dbus_api
from steps.base import Change, Context, Problem, Question, Step, StepFailed, StepModel
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


class ServicesAnswers(StepModel):
    """Answers of the ``services`` step."""

    bus: DbusAddress = Field(
        "system",
        description="D-Bus to talk to: 'system', or an address such as unix:path=/run/dbus/x",
    )
    require: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNITS),
        description="systemd units that must be present and active",
    )
    start: bool = Field(True, description="start required units that are inactive")
    timeout: float = Field(30.0, gt=0, le=600, description="seconds to wait for each job")
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
    may_provide = frozenset(KNOWN)

    def provides(self, changes: list[Change]) -> set[str]:
        """Starting e.g. ovs-vswitchd makes the 'ovs' fact true for later steps."""
        started = {c.target.removeprefix("unit ") for c in changes if c.action == "start"}
        return {fact for fact, names in KNOWN.items() if started.intersection(names)}

    def connect_questions(self) -> list[Question]:
        return [Question("bus", "D-Bus", help="'system', or a bus address (unix:path=...)")]

    def discover(self, answers: dict[str, Any], ctx: Context) -> dict[str, Any]:
        dbus = dbus_api(ctx.backends, answers.get("bus", "system"))
        units = dbus.list_units()
        status: dict[str, UnitStatus] = {}
        for name in _named(answers):
            found = dbus.unit_status(name)  # loads a unit ListUnits did not show
            if found is not None:
                status[name] = found
                units.setdefault(name, Unit(name, found.load, found.active, found.sub))
        bus_names = dbus.bus_services()
        present = {
            fact: any(
                (n in units and units[n].active == "active") or n in bus_names for n in names
            )
            for fact, names in KNOWN.items()
        }
        return {"units": units, "status": status, "network": dbus.network(), "bus": bus_names,
                **present}

    def questions(self, facts: dict[str, Any]) -> list[Question]:
        units: dict[str, Unit] = facts.get("units", {})
        names = sorted({*units, *DEFAULT_UNITS})
        return [
            Question(
                "require", "Required units", kind="multi", choices=tuple(names),
                choice_notes=tuple((n, units[n].active if n in units else "not installed")
                                   for n in names) if units else (),
                help="Units this host needs, with their state now. Inactive ones are "
                "started if 'start' is yes; one not installed is refused.",
            ),
            Question("start", "Start inactive units", kind="yesno",
                     help="Start required units that are not active (mode 'replace')."),
            Question("timeout", "Start timeout (s)", kind="int",
                     help="Seconds to wait for each start job."),
        ]

    def validate(self, answers: ServicesAnswers, facts: dict[str, Any]) -> list[Problem]:
        units: dict[str, Unit] = facts["units"]
        where: list[tuple[tuple[str | int, ...], str]] = [
            ((key, i), name) for key in ("require", *UNIT_LISTS)
            for i, name in enumerate(getattr(answers, key))]
        where += [(("dropins", i, "unit"), d.unit) for i, d in enumerate(answers.dropins)]
        return [Problem(path, f"unit '{name}' is not installed on this host")
                for path, name in where if name not in units]

    def plan(self, answers: ServicesAnswers, ctx: Context) -> list[Change]:
        facts = ctx.facts.get(self.name) or self.discover(answers.model_dump(), ctx)
        dbus = dbus_api(ctx.backends, answers.bus)
        status: dict[str, UnitStatus] = facts.get("status", {})
        units: dict[str, Unit] = facts["units"]
        changes = []
        amended = set()  # units whose drop-ins this run writes
        for path, d in _dropin_paths(answers).items():
            old = dbus.read_file(path)
            if old is None or old.content != d.content.encode():
                changes.append(Change(f"drop-in {path}", "install",
                                      _summary(old.content.decode(errors="replace"))
                                      if old else None, _summary(d.content), f"for {d.unit}"))
                amended.add(d.unit)
        for action, state in ENABLEMENT.items():
            for name in getattr(answers, action):
                st = status.get(name)
                if st is not None and st.enablement != state:
                    changes.append(Change(f"unit {name}", action, _state(st),  # type: ignore[arg-type]
                                          {**_state(st), "enablement": state}))
        configured = bool(changes)
        stale = sorted(n for n in {d.unit for d in answers.dropins}
                       if n in status and status[n].need_reload)
        # A required unit about to be started whose file changed on disk would start in
        # the version systemd read before: reload first, as systemctl daemon-reload.
        stale_start = sorted(n for n in answers.require if answers.start and n in status
                             and status[n].need_reload and status[n].active != "active")
        on_disk = sorted({*stale, *stale_start})
        if configured or on_disk:
            changes.append(Change("systemd", "update", detail="Reload: systemd re-reads unit "
                                  "files and drop-ins" + (f" ({', '.join(on_disk)} changed on "
                                                          "disk)" if on_disk else "")))
        stopped = [n for n in answers.stop if n in status and status[n].active in RUNNING]
        changes += [Change(f"unit {n}", "stop", _state(status[n]),  # type: ignore[arg-type]
                           {**_state(status[n]), "active": "inactive"}) for n in stopped]
        started = []
        for name in answers.require:
            unit = units.get(name)
            if unit is not None and unit.active != "active" and answers.start:
                started.append(name)
                changes.append(Change(
                    target=f"unit {name}", action="start",
                    before=f"{unit.active} ({unit.sub})", after="active",
                ))
        # A running unit whose configuration changed runs the old one until restarted.
        again = amended | set(stale) | (set(answers.restart) if configured else set())
        for name in sorted(again - set(stopped) - set(started)):
            st = status.get(name)
            if st is not None and st.active in RUNNING:
                why = "its drop-ins changed" if name in amended | set(stale) else \
                    "listed under restart, and this run changes the configuration"
                changes.append(Change(f"unit {name}", "restart", _state(st), None, why))
        return changes

    def apply(self, answers: ServicesAnswers, changes: list[Change], ctx: Context) -> None:
        dbus = dbus_api(ctx.backends, answers.bus)
        dropins = _dropin_paths(answers)
        done: list[Change] = []
        for i, change in enumerate(changes):
            doing = {"start": "starting", "stop": "stopping", "restart": "restarting"}
            ctx.progress(i / max(len(changes), 1), f"{doing[change.action]} {change.target[5:]}"
                         if change.action in doing else change.describe())
            unit = change.target.removeprefix("unit ")
            try:
                if change.action == "install":
                    path = change.target.removeprefix("drop-in ")
                    backup = dbus.write_file(path, dropins[path].content.encode(), 0o644)
                    if backup:
                        ctx.notes.append(f"{path}: the previous version is kept as {backup}")
                elif change.action in ENABLEMENT:
                    dbus.unit_files(change.action, [unit])
                elif change.target == "systemd":
                    dbus.reload()
                else:
                    self._job(dbus, change.action, unit, answers.timeout, done)
            except BackendError as exc:
                raise StepFailed(str(exc), done) from None
            done.append(change)
            ctx.log(f"services: {change.describe()}")

    @staticmethod
    def _job(dbus: DBusAPI, action: str, unit: str, timeout: float, done: list[Change]) -> None:
        """Run a start/stop/restart job and wait for it; a result other than done fails."""
        call = {"start": dbus.start_unit, "stop": dbus.stop_unit,
                "restart": dbus.restart_unit}[action]
        result = call(unit, timeout)
        if result != "done":
            st = dbus.unit_status(unit)
            why = f" (unit Result: {st.result})" if st is not None and st.result else ""
            raise StepFailed(f"{action} of {unit} ended with job result '{result}'{why}", done)


RUNNING = ("active", "activating", "reloading")


def _named(answers: dict[str, Any]) -> list[str]:
    """Every unit a (possibly partial) answers section names."""
    names = list(answers.get("require", DEFAULT_UNITS))
    for key in UNIT_LISTS:
        names += answers.get(key) or []
    names += [d["unit"] for d in answers.get("dropins") or [] if isinstance(d, dict)
              and isinstance(d.get("unit"), str)]
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

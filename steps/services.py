"""Step ``services``: the host's services over D-Bus (systemd, NetworkManager).

Reports required units that are missing or inactive and, when answered so,
starts them.  Its facts (which units run, what is on the bus) are read by
later steps, e.g. whether Open vSwitch or libvirt is present.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from backends.interfaces import BackendError
from backends.interfaces.dbus import Unit, UnitFile, dbus_api
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
    enable: bool = Field(False, description="enable required units whose unit file is "
                         "disabled (as systemctl enable: they start at boot)")
    timeout: float = Field(30.0, gt=0, le=600, description="seconds to wait for each start job")

    @field_validator("require")
    @classmethod
    def _unit_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if "." not in name or "/" in name or " " in name:
                raise ValueError(f"'{name}' is not a systemd unit name (e.g. libvirtd.service)")
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
        for name in answers.get("require", DEFAULT_UNITS):
            if name not in units:  # not loaded yet: ask systemd to load it
                unit = dbus.load_unit(name)
                if unit is not None and unit.load != "not-found":
                    units[name] = unit
        # Unit files: enabled or not, and changed on disk since systemd read them.
        files = {name: dbus.unit_file(name) for name in answers.get("require", DEFAULT_UNITS)
                 if name in units}
        bus_names = dbus.bus_services()
        present = {
            fact: any(
                (n in units and units[n].active == "active") or n in bus_names for n in names
            )
            for fact, names in KNOWN.items()
        }
        return {"units": units, "files": files, "network": dbus.network(), "bus": bus_names,
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
            # 'enable' is set in the answers file only (default: no); the wizard does
            # not ask it.
        ]

    def validate(self, answers: ServicesAnswers, facts: dict[str, Any]) -> list[Problem]:
        units: dict[str, Unit] = facts["units"]
        return [
            Problem(("require", i), f"unit '{name}' is not installed on this host")
            for i, name in enumerate(answers.require)
            if name not in units
        ]

    def plan(self, answers: ServicesAnswers, ctx: Context) -> list[Change]:
        facts = ctx.facts.get(self.name) or self.discover(answers.model_dump(), ctx)
        units: dict[str, Unit] = facts["units"]
        files: dict[str, UnitFile] = facts.get("files", {})
        changes = []
        # A unit file changed on disk would otherwise be started (or enabled) in the
        # version systemd read before: reload first, as systemctl daemon-reload.
        stale = [n for n in answers.require if n in files and files[n].need_reload]
        if stale:
            changes.append(Change(target="systemd", action="reload", before="stale",
                                  after="reloaded",
                                  detail=f"unit files changed on disk: {', '.join(stale)}"))
        for name in answers.require:
            unit = units.get(name)
            if answers.enable and name in files and files[name].state == "disabled":
                changes.append(Change(target=f"unit {name}", action="enable",
                                      before="disabled", after="enabled"))
            if unit is not None and unit.active != "active" and answers.start:
                changes.append(Change(
                    target=f"unit {name}", action="start",
                    before=f"{unit.active} ({unit.sub})", after="active",
                ))
        return changes

    def apply(self, answers: ServicesAnswers, changes: list[Change], ctx: Context) -> None:
        dbus = dbus_api(ctx.backends, answers.bus)
        done: list[Change] = []
        for i, change in enumerate(changes):
            unit = change.target.removeprefix("unit ")
            doing = {"start": "starting", "enable": "enabling", "reload": "reloading"}
            ctx.progress(i / max(len(changes), 1), f"{doing[change.action]} {unit}")
            try:
                if change.action == "reload":
                    dbus.reload()
                elif change.action == "enable":
                    dbus.enable_unit(unit)
                else:
                    result = dbus.start_unit(unit, answers.timeout)
            except BackendError as exc:
                raise StepFailed(str(exc), done) from None
            if change.action == "start" and result != "done":
                raise StepFailed(f"start of {unit} ended with job result '{result}' "
                                 f"({dbus.unit_result(unit)})", done)
            done.append(change)
            ctx.log(f"{change.action}: {unit}")

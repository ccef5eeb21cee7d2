"""python-dbusmock's systemd template, completed with what hostsetup calls.

The upstream template (dbusmock.templates.systemd) has StartUnit/StopUnit/
GetUnit and AddMockUnit.  Real systemd also has ListUnits, LoadUnit and
RestartUnit, units carry SubState, and a start can fail; this template adds
those so the sandbox answers as a real systemd would.  Parameters (JSON):
``{"units": {"name.service": {"active": "inactive", "description": "..."}},
"failing": ["broken.service"], "slow": {"slow.service": 3.0}}`` (a slow unit's
start job takes that many seconds).  Tests can change a unit at run time
through the mock interface: ``SetUnitState(name, active)`` and
``SetStartBehaviour(name, result, delay)`` (``busctl call ... SetStartBehaviour
ssd unit.service failed 0``).

Unit files as real systemd answers for them: ``GetUnitFileState``,
``EnableUnitFiles`` / ``DisableUnitFiles`` / ``MaskUnitFiles`` (with the
changes list systemd returns), ``Reload`` (clears every unit's
``NeedDaemonReload``; the mock ``SetNeedDaemonReload(name, b)`` sets it, as an
edited unit file would), ``StopUnit`` with a job, each unit's ``Result``
(``exit-code`` after a failed start) and ``ActiveEnterTimestamp`` (moves at
every start, so a restart is visible).  A unit's enablement comes from the
parameters: ``{"units": {"x.service": {"active": "active", "enabled": "enabled"}}}``.
"""

import time

import dbus
from dbusmock import MOCK_IFACE, mockobject
from dbusmock.templates import systemd as upstream
from gi.repository import GLib

BUS_NAME = upstream.BUS_NAME
MAIN_OBJ = upstream.MAIN_OBJ
MAIN_IFACE = upstream.MAIN_IFACE
SYSTEM_BUS = True
UNIT_IFACE = upstream.UNIT_IFACE
SUB_STATE = {"active": "running", "inactive": "dead", "failed": "failed"}
SERVICE_IFACE = "org.freedesktop.systemd1.Service"


def load(mock, parameters):
    upstream.load(mock, parameters)
    mock.failing = set(parameters.get("failing", []))
    mock.slow = {str(k): float(v) for k, v in parameters.get("slow", {}).items()}
    for name, spec in parameters.get("units", {}).items():
        add_unit(mock, name, spec.get("description", name), spec.get("enabled", "disabled"),
                 spec.get("active", "inactive"))


def add_unit(mock, name, description, enabled, active):
    """A loaded unit with the properties systemd gives it."""
    upstream.AddMockUnit(mock, name)
    unit = mockobject.objects[mock.units[name]]
    unit.AddProperties(
        UNIT_IFACE, {"SubState": "dead", "Description": description,
                     "UnitFileState": enabled,
                     "NeedDaemonReload": dbus.Boolean(False),
                     "ActiveEnterTimestamp": dbus.UInt64(0)}
    )
    unit.AddProperties(SERVICE_IFACE, {"Result": "success"})
    set_state(mock, name, active)


def set_state(mock, name, active):
    unit = mockobject.objects[mock.units[name]]
    props = {"ActiveState": active, "SubState": SUB_STATE[active]}
    if active == "active":
        props["ActiveEnterTimestamp"] = dbus.UInt64(int(time.time() * 1e6))
    unit.UpdateProperties(UNIT_IFACE, props)
    if SERVICE_IFACE in unit.props:
        result = "exit-code" if active == "failed" else "success"
        unit.UpdateProperties(SERVICE_IFACE, {"Result": result})


def _job(mock, name, result, active):
    """Queue a job whose JobRemoved reports ``result``, as systemd does."""
    job_id = mock.next_job_id
    mock.next_job_id += 1
    job_path = f"{upstream.PATH_PREFIX}/job/{job_id}"

    def finish():
        set_state(mock, name, active)
        mock.EmitSignal(MAIN_IFACE, "JobNew", "uos", [job_id, job_path, name])
        mock.EmitSignal(MAIN_IFACE, "JobRemoved", "uoss", [job_id, job_path, name, result])
        return False

    # Finish a little later, as a real start does: callers must wait for it.
    GLib.timeout_add(int(mock.slow.get(name, 0.05) * 1000), finish)
    return job_path


def _known(mock, name):
    if name not in mock.units:
        raise dbus.exceptions.DBusException(
            f"Unit {name} not found.", name="org.freedesktop.systemd1.NoSuchUnit"
        )


def _start(mock, name):
    _known(mock, name)
    if name in mock.failing:
        return _job(mock, name, "failed", "failed")
    return _job(mock, name, "done", "active")


@dbus.service.method(MAIN_IFACE, in_signature="ss", out_signature="o")
def StartUnit(self, name, _mode):
    return _start(self, str(name))


@dbus.service.method(MAIN_IFACE, in_signature="ss", out_signature="o")
def RestartUnit(self, name, _mode):
    return _start(self, str(name))


@dbus.service.method(MAIN_IFACE, in_signature="ss", out_signature="o")
def StopUnit(self, name, _mode):
    _known(self, str(name))
    return _job(self, str(name), "done", "inactive")


def _file_state(mock, names, state, change):
    out = []
    for name in map(str, names):
        _known(mock, name)
        unit = mockobject.objects[mock.units[name]]
        if unit.Get(UNIT_IFACE, "UnitFileState") != state:
            unit.UpdateProperties(UNIT_IFACE, {"UnitFileState": state})
            out.append(change(name))
    return dbus.Array(out, signature="(sss)")


@dbus.service.method(MAIN_IFACE, in_signature="s", out_signature="s")
def GetUnitFileState(self, name):
    _known(self, str(name))
    return mockobject.objects[self.units[str(name)]].Get(UNIT_IFACE, "UnitFileState")


@dbus.service.method(MAIN_IFACE, in_signature="asbb", out_signature="ba(sss)")
def EnableUnitFiles(self, files, _runtime, _force):
    """Names or paths; a unit file given by path that the mock does not know yet
    becomes a (loaded, inactive) unit, as real systemd finds it after Reload."""
    names = []
    for path in map(str, files):
        name = path.rsplit("/", 1)[-1]
        if "/" in path and name not in self.units:
            add_unit(self, name, name, "disabled", "inactive")
        names.append(name)
    return True, _file_state(self, names, "enabled", lambda n: (
        "symlink", f"/etc/systemd/system/multi-user.target.wants/{n}", f"/lib/systemd/system/{n}"))


@dbus.service.method(MAIN_IFACE, in_signature="asb", out_signature="a(sss)")
def DisableUnitFiles(self, names, _runtime):
    return _file_state(self, names, "disabled", lambda n: (
        "unlink", f"/etc/systemd/system/multi-user.target.wants/{n}", ""))


@dbus.service.method(MAIN_IFACE, in_signature="asbb", out_signature="a(sss)")
def MaskUnitFiles(self, names, _runtime, _force):
    return _file_state(self, names, "masked", lambda n: (
        "symlink", f"/etc/systemd/system/{n}", "/dev/null"))


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="")
def Reload(self):
    for path in self.units.values():
        mockobject.objects[path].UpdateProperties(
            UNIT_IFACE, {"NeedDaemonReload": dbus.Boolean(False)})


@dbus.service.method(MOCK_IFACE, in_signature="sb", out_signature="")
def SetNeedDaemonReload(self, name, need):
    """As if the unit's file or a drop-in had been edited (True) since the last Reload."""
    mockobject.objects[self.units[str(name)]].UpdateProperties(
        UNIT_IFACE, {"NeedDaemonReload": dbus.Boolean(bool(need))})


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="")
def Subscribe(self):
    """Real systemd sends job signals only to subscribers; the mock sends them to all."""


@dbus.service.method(MAIN_IFACE, in_signature="s", out_signature="o")
def LoadUnit(self, name):
    if str(name) not in self.units:
        raise dbus.exceptions.DBusException(
            f"Unit {name} not found.", name="org.freedesktop.systemd1.NoSuchUnit"
        )
    return self.units[str(name)]


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="a(ssssssouso)")
def ListUnits(self):
    rows = []
    for name, path in sorted(self.units.items()):
        props = mockobject.objects[path].GetAll(UNIT_IFACE)
        rows.append(
            (
                name,
                props.get("Description", name),
                props.get("LoadState", "loaded"),
                props["ActiveState"],
                props.get("SubState", "dead"),
                "",
                dbus.ObjectPath(path),
                dbus.UInt32(0),
                "",
                dbus.ObjectPath("/"),
            )
        )
    return rows


@dbus.service.method(MOCK_IFACE, in_signature="ss", out_signature="")
def SetUnitState(self, name, active):
    """Put a unit back in a state (e.g. 'inactive'), as if stopped outside hostsetup."""
    set_state(self, str(name), str(active))


@dbus.service.method(MOCK_IFACE, in_signature="ssd", out_signature="")
def SetStartBehaviour(self, name, result, delay):
    """How the next starts of a unit end: job result 'done' or 'failed', after ``delay`` s."""
    self.failing.discard(str(name))
    if str(result) == "failed":
        self.failing.add(str(name))
    self.slow[str(name)] = float(delay)

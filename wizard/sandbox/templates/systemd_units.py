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
"""

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


def load(mock, parameters):
    upstream.load(mock, parameters)
    mock.failing = set(parameters.get("failing", []))
    mock.slow = {str(k): float(v) for k, v in parameters.get("slow", {}).items()}
    for name, spec in parameters.get("units", {}).items():
        upstream.AddMockUnit(mock, name)
        unit = mockobject.objects[mock.units[name]]
        unit.AddProperties(
            UNIT_IFACE, {"SubState": "dead", "Description": spec.get("description", name)}
        )
        set_state(mock, name, spec.get("active", "inactive"))


def set_state(mock, name, active):
    unit = mockobject.objects[mock.units[name]]
    unit.UpdateProperties(UNIT_IFACE, {"ActiveState": active, "SubState": SUB_STATE[active]})


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


def _start(mock, name):
    if name not in mock.units:
        raise dbus.exceptions.DBusException(
            f"Unit {name} not found.", name="org.freedesktop.systemd1.NoSuchUnit"
        )
    if name in mock.failing:
        return _job(mock, name, "failed", "failed")
    return _job(mock, name, "done", "active")


@dbus.service.method(MAIN_IFACE, in_signature="ss", out_signature="o")
def StartUnit(self, name, _mode):
    return _start(self, str(name))


@dbus.service.method(MAIN_IFACE, in_signature="ss", out_signature="o")
def RestartUnit(self, name, _mode):
    return _start(self, str(name))


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


@dbus.service.method(MAIN_IFACE, in_signature="", out_signature="")
def Reload(self):
    """Real systemd reads its unit files again; the mock learns units at EnableUnitFiles."""


@dbus.service.method(MAIN_IFACE, in_signature="asbb", out_signature="ba(sss)")
def EnableUnitFiles(self, files, _runtime, _force):
    """Enable unit files: the mock makes each a (loaded, inactive) unit, UnitFileState
    'enabled', so that it can be started and the test can see it was enabled."""
    changes = []
    for path in files:
        name = str(path).rsplit("/", 1)[-1]
        if name not in self.units:
            upstream.AddMockUnit(self, name)
            mockobject.objects[self.units[name]].AddProperties(
                UNIT_IFACE, {"SubState": "dead", "Description": name})
            set_state(self, name, "inactive")
        unit = mockobject.objects[self.units[name]]
        if "UnitFileState" in unit.props.get(UNIT_IFACE, {}):
            unit.UpdateProperties(UNIT_IFACE, {"UnitFileState": "enabled"})
        else:
            unit.AddProperties(UNIT_IFACE, {"UnitFileState": "enabled"})
        changes.append(("symlink", f"/etc/systemd/system/multi-user.target.wants/{name}",
                        str(path)))
    return True, changes


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

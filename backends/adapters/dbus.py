"""D-Bus backend (pydbus): systemd units, NetworkManager, bus discovery."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from typing import Any

from gi.repository import GLib
from pydbus import connect

from backends import hostfiles
from backends.interfaces import BackendError, BackendUnreachable
from backends.interfaces.dbus import NetDevice, NetworkState, Unit, UnitStatus
from backends.interfaces.libvirt import HostFile

SYSTEMD = "org.freedesktop.systemd1"
NM = "org.freedesktop.NetworkManager"
# NMState / NMDeviceState values, as NetworkManager's D-Bus API documents them.
NM_STATES = {0: "unknown", 10: "asleep", 20: "disconnected", 30: "disconnecting",
             40: "connecting", 50: "connected-local", 60: "connected-site",
             70: "connected-global"}
NM_DEVICE_STATES = {0: "unknown", 10: "unmanaged", 20: "unavailable", 30: "disconnected",
                    40: "prepare", 50: "config", 60: "need-auth", 70: "ip-config",
                    80: "ip-check", 90: "secondaries", 100: "activated",
                    110: "deactivating", 120: "failed"}
NM_DEVICE_TYPES = {1: "ethernet", 2: "wifi", 13: "bridge", 14: "vlan", 29: "tun",
                   30: "ovs-interface", 31: "ovs-port", 32: "ovs-bridge", 22: "veth"}
TREE_LIMIT = 200  # object paths walked per service: a bound, as on a busy host


def _error_text(exc: GLib.Error) -> str:
    # GLib prefixes remote errors with "GDBus.Error:<name>: "; keep the message.
    return str(exc.message).split(": ", 1)[-1] if exc.message else str(exc)


class DBusBackend:
    """A connection to one bus: the system bus, or a bus at ``address``."""

    def __init__(self, address: str | None) -> None:
        system = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS",
                                "unix:path=/run/dbus/system_bus_socket")
        self.address = address or f"system bus ({system})"
        try:
            # A connection of our own, also to the system bus: SystemBus() is the process's
            # shared one, and close() would break it for the next run in a long-lived
            # process (the fleet agent's worker runs many).
            self.bus = connect(address or system)
        except GLib.Error as exc:
            raise BackendUnreachable("D-Bus", self.address, _error_text(exc)) from None
        self._subscribed = False

    def _call(self, service: str, path: str, method: str, *args: Any) -> Any:
        try:
            obj = self.bus.get(service, path)
            return getattr(obj, method)(*args)
        except GLib.Error as exc:
            raise BackendError(f"{service} {method}: {_error_text(exc)}") from None

    def list_units(self) -> dict[str, Unit]:
        """All units systemd knows, by name (one ``ListUnits`` call)."""
        rows = self._call(SYSTEMD, "/org/freedesktop/systemd1", "ListUnits")
        return {r[0]: Unit(name=r[0], description=r[1], load=r[2], active=r[3], sub=r[4])
                for r in rows}

    def load_unit(self, name: str) -> Unit | None:
        """A unit not in ``ListUnits`` (not loaded yet): ``None`` if systemd has no such unit."""
        try:
            path = self.bus.get(SYSTEMD, "/org/freedesktop/systemd1").LoadUnit(name)
            unit = self.bus.get(SYSTEMD, path)
        except GLib.Error:
            return None
        return Unit(name=name, load=unit.LoadState, active=unit.ActiveState,
                    sub=getattr(unit, "SubState", ""), description=getattr(unit, "Description", ""))

    def network(self) -> NetworkState:
        """NetworkManager's state and devices (``running=False`` when it is not on the bus)."""
        if NM not in self.bus.dbus.ListNames():
            return NetworkState(running=False)
        manager = self.bus.get(NM, "/org/freedesktop/NetworkManager")
        devices = []
        for path in manager.GetDevices():
            dev = self.bus.get(NM, path)
            devices.append(NetDevice(
                interface=dev.Interface,
                kind=NM_DEVICE_TYPES.get(dev.DeviceType, str(dev.DeviceType)),
                state=NM_DEVICE_STATES.get(dev.State, str(dev.State)),
            ))
        return NetworkState(True, NM_STATES.get(manager.State, str(manager.State)), tuple(devices))

    def bus_services(self) -> dict[str, list[str]]:
        """Well-known names on the bus, each with its object paths (as ``busctl tree``)."""
        found = {}
        for name in sorted(self.bus.dbus.ListNames()):
            if not name.startswith(":") and name != "org.freedesktop.DBus":
                found[name] = self._tree(name)
        return found

    def _tree(self, service: str) -> list[str]:
        paths: list[str] = []
        todo = ["/"]
        while todo and len(paths) < TREE_LIMIT:
            path = todo.pop(0)
            try:
                xml = self.bus.con.call_sync(
                    service, path, "org.freedesktop.DBus.Introspectable", "Introspect",
                    None, GLib.VariantType.new("(s)"), 0, 2000, None).unpack()[0]
            except GLib.Error:
                continue
            node = ET.fromstring(xml)
            if node.find("interface") is not None:
                paths.append(path)
            for child in node.findall("node"):
                todo.append(path.rstrip("/") + "/" + child.attrib["name"])
        return paths

    def start_unit(self, name: str, timeout: float) -> str:
        """Start ``name`` (mode ``replace``) and wait for its job; returns the job result."""
        return self._job("StartUnit", name, timeout)

    def restart_unit(self, name: str, timeout: float) -> str:
        """Restart ``name`` (mode ``replace``) and wait for its job; returns the job result."""
        return self._job("RestartUnit", name, timeout)

    def stop_unit(self, name: str, timeout: float) -> str:
        """Stop ``name`` (mode ``replace``) and wait for its job; returns the job result."""
        return self._job("StopUnit", name, timeout)

    def unit_status(self, name: str) -> UnitStatus | None:
        """A unit's state, enablement, NeedDaemonReload and Result; ``None`` if unknown."""
        try:
            manager = self.bus.get(SYSTEMD, "/org/freedesktop/systemd1")
            unit = self.bus.get(SYSTEMD, manager.LoadUnit(name))
            props = unit["org.freedesktop.systemd1.Unit"]
        except GLib.Error:
            return None
        if props.LoadState == "not-found":
            return None
        try:
            result = str(unit["org.freedesktop.systemd1.Service"].Result)
        except (GLib.Error, KeyError, AttributeError):
            result = ""  # not a service
        return UnitStatus(name=name, load=props.LoadState, active=props.ActiveState,
                          sub=props.SubState, enablement=props.UnitFileState,
                          need_reload=bool(props.NeedDaemonReload), result=result)

    def unit_files(self, action: str, names: list[str]) -> list[tuple[str, str, str]]:
        """Enable/Disable/Mask/UnmaskUnitFiles (persistent); the changes."""
        path = "/org/freedesktop/systemd1"
        if action == "enable":
            _install_info, changes = self._call(SYSTEMD, path, "EnableUnitFiles", names,
                                                False, False)
        elif action == "disable":
            changes = self._call(SYSTEMD, path, "DisableUnitFiles", names, False)
        elif action == "mask":
            changes = self._call(SYSTEMD, path, "MaskUnitFiles", names, False, False)
        elif action == "unmask":
            changes = self._call(SYSTEMD, path, "UnmaskUnitFiles", names, False)
        else:
            raise BackendError(f"unknown unit file action '{action}'")
        return [tuple(c) for c in changes]

    def reload(self) -> None:
        """systemd's Reload (daemon-reload); returns once systemd has reloaded."""
        self._call(SYSTEMD, "/org/freedesktop/systemd1", "Reload")

    def read_file(self, path: str) -> HostFile | None:
        """A host file's content and mode (see :mod:`backends.hostfiles`)."""
        return hostfiles.read_file(path)

    def write_file(self, path: str, content: bytes, mode: int = 0o644) -> str | None:
        """Write a host file atomically, with a backup (see :mod:`backends.hostfiles`)."""
        return hostfiles.write_file(path, content, mode)

    def remove_file(self, path: str) -> str | None:
        """Remove a host file, with a backup (see :mod:`backends.hostfiles`)."""
        return hostfiles.remove_file(path)

    def _job(self, method: str, name: str, timeout: float) -> str:
        results: dict[str, str] = {}
        # systemd emits job signals only to subscribed clients; subscribe
        # before calling, or a quick job could finish unseen.  Once per
        # connection: systemd refuses a second Subscribe ("already subscribed").
        if not self._subscribed:
            self._call(SYSTEMD, "/org/freedesktop/systemd1", "Subscribe")
            self._subscribed = True
        sub = self.bus.subscribe(
            sender=SYSTEMD, iface=f"{SYSTEMD}.Manager", signal="JobRemoved",
            signal_fired=lambda _s, _o, _i, _n, args: results.__setitem__(args[1], args[3]))
        try:
            job = self._call(SYSTEMD, "/org/freedesktop/systemd1", method, name, "replace")
            ctx = GLib.MainContext.default()
            deadline = time.monotonic() + timeout
            while job not in results:
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"{method} {name}: job {job} not finished after {timeout:g}s")
                if not ctx.iteration(False):
                    time.sleep(0.01)
            return results[job]
        finally:
            sub.unsubscribe()

    def close(self) -> None:
        """Close the connection."""
        self.bus.con.close_sync(None)

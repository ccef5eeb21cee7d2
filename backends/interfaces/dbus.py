"""Interface of the D-Bus backend (systemd, NetworkManager, bus discovery)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

from backends.interfaces import Backends


@dataclass(frozen=True)
class Unit:
    """A systemd unit as ``ListUnits`` reports it."""

    name: str
    load: str
    active: str
    sub: str
    description: str = ""


@dataclass(frozen=True)
class UnitFile:
    """A unit's file as systemd has it: ``UnitFileState`` and ``NeedDaemonReload``."""

    state: str  # enabled, disabled, static, masked... ('' when unknown)
    need_reload: bool = False  # changed on disk since systemd last read it


@dataclass(frozen=True)
class NetDevice:
    """A NetworkManager device."""

    interface: str
    kind: str
    state: str


@dataclass(frozen=True)
class NetworkState:
    """NetworkManager's overall state, or ``running=False`` when absent."""

    running: bool
    state: str = "unknown"
    devices: tuple[NetDevice, ...] = ()


class DBusAPI(Protocol):
    """What the services step needs from the bus."""

    address: str

    def list_units(self) -> dict[str, Unit]:
        """All units systemd knows, by name (one ``ListUnits`` call)."""
        ...

    def load_unit(self, name: str) -> Unit | None:
        """A unit ``ListUnits`` did not show (not loaded yet); ``None`` if unknown."""
        ...

    def network(self) -> NetworkState:
        """NetworkManager's state and devices."""
        ...

    def bus_services(self) -> dict[str, list[str]]:
        """Well-known names on the bus, each with its object paths."""
        ...

    def start_unit(self, name: str, timeout: float) -> str:
        """Start ``name`` (mode ``replace``), wait for its job; returns the job result."""
        ...

    def restart_unit(self, name: str, timeout: float) -> str:
        """Restart ``name`` (mode ``replace``), wait for its job; returns the job result."""
        ...

    def unit_file(self, name: str) -> UnitFile:
        """The state of ``name``'s unit file (enabled/disabled...) and whether systemd has
        read its current version (``NeedDaemonReload``)."""
        ...

    def enable_unit(self, name: str) -> None:
        """Enable ``name`` (``EnableUnitFiles``, persistent) and reload, as
        ``systemctl enable`` does."""
        ...

    def reload(self) -> None:
        """Have systemd read its unit files again (``Reload``, as ``systemctl daemon-reload``);
        returns when it has."""
        ...

    def unit_result(self, name: str) -> str:
        """Why ``name`` is not active: its state, ``Result`` and main exit status."""
        ...


# The bundle's table names this interface's adapter under KIND (backends/bundle.py).
KIND = "dbus"


def dbus_api(backends: Backends, bus: str | None) -> DBusAPI:
    """The D-Bus connection to ``bus``: ``"system"`` (or ``None``) for the system bus,
    else a D-Bus address such as ``unix:path=...``."""
    return cast(DBusAPI, backends.get(KIND, None if bus in (None, "system") else bus))

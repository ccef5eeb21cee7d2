"""Interface of the D-Bus backend (systemd, NetworkManager, bus discovery)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

from backends.interfaces import Backends
from backends.interfaces.libvirt import HostFile


@dataclass(frozen=True)
class Unit:
    """A systemd unit as ``ListUnits`` reports it."""

    name: str
    load: str
    active: str
    sub: str
    description: str = ""


@dataclass(frozen=True)
class UnitStatus:
    """A unit's state as its properties tell it: ``ActiveState``/``SubState``,
    the enablement (``UnitFileState``: enabled, disabled, masked, static...),
    ``NeedDaemonReload`` and, for a service, ``Result`` (e.g. exit-code)."""

    name: str
    load: str
    active: str
    sub: str
    enablement: str
    need_reload: bool
    result: str = ""


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

    def stop_unit(self, name: str, timeout: float) -> str:
        """Stop ``name`` (mode ``replace``), wait for its job; returns the job result."""
        ...

    def unit_status(self, name: str) -> UnitStatus | None:
        """A unit's state and enablement (loads it if needed); ``None`` if systemd has
        no such unit."""
        ...

    def unit_files(self, action: str, names: list[str]) -> list[tuple[str, str, str]]:
        """``enable``, ``disable``, ``mask`` or ``unmask`` the unit files of ``names`` (persistent,
        not runtime); returns systemd's changes (type, file, destination).  A
        ``Reload`` is still needed for systemd to see them."""
        ...

    def reload(self) -> None:
        """``Reload`` systemd (daemon-reload): re-read unit files and drop-ins."""
        ...

    def read_file(self, path: str) -> HostFile | None:
        """A host file (e.g. a drop-in) and its mode; ``None`` if it does not exist."""
        ...

    def write_file(self, path: str, content: bytes, mode: int = 0o644) -> str | None:
        """Write a host file atomically; returns the backup of what it replaced."""
        ...

    def remove_file(self, path: str) -> str | None:
        """Remove a host file; returns its backup (``None`` if it was not there)."""
        ...


# The bundle's table names this interface's adapter under KIND (backends/bundle.py).
KIND = "dbus"


def dbus_api(backends: Backends, bus: str | None) -> DBusAPI:
    """The D-Bus connection to ``bus``: ``"system"`` (or ``None``) for the system bus,
    else a D-Bus address such as ``unix:path=...``."""
    return cast(DBusAPI, backends.get(KIND, None if bus in (None, "system") else bus))

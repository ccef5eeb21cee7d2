"""Interface of the D-Bus backend (systemd, NetworkManager, bus discovery)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Unit:
    """A systemd unit as ``ListUnits`` reports it."""

    name: str
    load: str
    active: str
    sub: str
    description: str = ""


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

    def enable_unit_file(self, path: str) -> None:
        """Reload systemd's unit files, then enable the unit file at ``path``."""
        ...

    def restart_unit(self, name: str, timeout: float) -> str:
        """Restart ``name`` (mode ``replace``), wait for its job; returns the job result."""
        ...

"""What steps may know of backends: protocols, value types and errors.

Nothing here imports a backend library, so a step that imports this package
stays light and testable against any implementation of the protocols.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backends.interfaces.dbus import DBusAPI
    from backends.interfaces.libvirt import LibvirtAPI
    from backends.interfaces.ovsdb import OvsdbAPI, OvsdbTLS
    from backends.interfaces.vsphere import VSphereAPI, VSphereConn


class BackendError(Exception):
    """A backend call failed; the message is for the operator."""


class BackendUnreachable(BackendError):
    """The system behind a backend cannot be reached (exit code 5)."""

    def __init__(self, what: str, address: str, reason: str) -> None:
        super().__init__(f"{what} unreachable at {address}: {reason}")
        self.what = what
        self.address = address
        self.reason = reason


class Backends(Protocol):
    """The bundle a step is handed: one factory per system.

    Connections are cached per address for the run and closed by the owner of
    the bundle, so a step can ask for the same backend in plan and apply.
    """

    def dbus(self, address: str | None) -> DBusAPI:
        """The D-Bus backend: ``None`` means the system bus."""
        ...

    def ovsdb(self, remote: str, tls: OvsdbTLS | None = None) -> OvsdbAPI:
        """The OVSDB backend for ``remote`` (``unix:``, ``tcp:`` or ``ssl:``)."""
        ...

    def vsphere(self, conn: VSphereConn) -> VSphereAPI:
        """A logged-in vSphere session (logged out when the bundle closes)."""
        ...

    def libvirt(self, uri: str) -> LibvirtAPI:
        """A libvirt connection to ``uri``."""
        ...

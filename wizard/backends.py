"""The real :class:`backends.interfaces.Backends` bundle.

Each factory imports its adapter (and so its heavy library) on first use and
caches the connection per address; :meth:`RealBackends.close` closes them all
(e.g. logs out of vSphere), also after an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backends.interfaces.dbus import DBusAPI
    from backends.interfaces.libvirt import LibvirtAPI
    from backends.interfaces.ovsdb import OvsdbAPI, OvsdbTLS
    from backends.interfaces.vsphere import VSphereAPI, VSphereConn


class RealBackends:
    """Connections to the real systems, opened lazily, closed together."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], Any] = {}

    def _get(self, kind: str, key: str, make: Any) -> Any:
        if (kind, key) not in self._open:
            self._open[(kind, key)] = make()
        return self._open[(kind, key)]

    def dbus(self, address: str | None) -> DBusAPI:
        from backends.dbus import DBusBackend

        return self._get("dbus", address or "", lambda: DBusBackend(address))  # type: ignore[no-any-return]

    def ovsdb(self, remote: str, tls: OvsdbTLS | None = None) -> OvsdbAPI:
        from backends.ovsdb import OvsdbBackend

        return self._get("ovsdb", remote, lambda: OvsdbBackend(remote, tls))  # type: ignore[no-any-return]

    def vsphere(self, conn: VSphereConn) -> VSphereAPI:
        from backends.vsphere import VSphereBackend

        key = f"{conn.user}@{conn.server}:{conn.port}"
        return self._get("vsphere", key, lambda: VSphereBackend(conn))  # type: ignore[no-any-return]

    def libvirt(self, uri: str) -> LibvirtAPI:
        from backends.libvirt import LibvirtBackend

        return self._get("libvirt", uri, lambda: LibvirtBackend(uri))  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close every open connection; errors while closing are ignored."""
        for backend in self._open.values():
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - closing must not mask the run's result
                pass
        self._open.clear()

"""The real :class:`backends.interfaces.Backends` bundle, opened from one table.

Adding a system costs one line in :data:`ADAPTERS`: its kind (the name its
interface module's accessor asks for) -> the adapter's module and class.  An
adapter module, and so its heavy library, is imported only when a step first
asks for that kind (start-up stays fast).  Connections are cached per
(kind, arguments) for the run; :meth:`RealBackends.close` closes them all
(e.g. logs out of vSphere), also after an error.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Hashable
from typing import Any

# kind -> (adapter module, class); the class is called with the accessor's arguments.
ADAPTERS: dict[str, tuple[str, str]] = {
    "dbus": ("backends.adapters.dbus", "DBusBackend"),
    "ovsdb": ("backends.adapters.ovsdb", "OvsdbBackend"),
    "vsphere": ("backends.adapters.vsphere", "VSphereBackend"),
    "libvirt": ("backends.adapters.libvirt", "LibvirtBackend"),
}


def adapter_class(kind: str) -> Any:
    """The adapter class of ``kind`` (imports its module); KeyError names unknown kinds."""
    if kind not in ADAPTERS:
        raise KeyError(f"no adapter for backend kind '{kind}' (known: {', '.join(ADAPTERS)})")
    module, cls = ADAPTERS[kind]
    return getattr(importlib.import_module(module), cls)


class RealBackends:
    """Connections to the real systems, opened lazily, cached, closed together.

    Safe to use from several threads (the runner discovers steps concurrently):
    a connection is opened once per key, and opening one does not block others.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[Hashable, ...], Any] = {}
        self._locks: dict[tuple[Hashable, ...], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, *args: Hashable) -> Any:
        """The connection of ``kind`` for ``args`` (the adapter's constructor arguments)."""
        key = (kind, *args)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._open:
                self._open[key] = adapter_class(kind)(*args)
            return self._open[key]

    def close(self) -> None:
        """Close every open connection; errors while closing are ignored."""
        with self._lock:
            opened, self._open = list(self._open.values()), {}
        for backend in opened:
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - closing must not mask the run's result
                pass

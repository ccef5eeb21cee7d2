"""What steps may know of backends: protocols, value types and errors.

Nothing here imports a backend library, so a step that imports this package
stays light and testable against any implementation of the protocols.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol


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
    """The bundle a step is handed: connections by kind, opened on first use.

    A step does not call :meth:`get` itself: each interface module has a typed
    accessor (e.g. :func:`backends.interfaces.dbus.dbus_api`) that asks for its
    kind and returns its protocol.  Connections are cached per (kind, arguments)
    for the run and closed by the owner of the bundle, so a step can ask for
    the same backend in discover, plan and apply.  The real bundle is
    :class:`backends.bundle.RealBackends`; tests use ``tests/fakes.py``.
    """

    def get(self, kind: str, *args: Hashable) -> Any:
        """The connection of ``kind`` opened with ``args`` (cached)."""
        ...

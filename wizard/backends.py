"""Compatibility only: the bundle lives in :mod:`backends.bundle`.

Kept for ``wizard/tui.py``, which another branch is splitting into a package;
delete this file once that code imports :mod:`backends.bundle`.
"""

from backends.bundle import RealBackends

__all__ = ["RealBackends"]

"""The wizard on the console of a freshly installed host (``deploy/hostsetup-console.service``).

systemd starts ``hostsetup --console`` on tty1 at boot, before the login
prompt (getty@tty1 waits for it), as long as the marker :data:`MARKER` is
absent.  A wizard run that ends well (exit 0: applied, or nothing to change)
writes the marker, so the wizard does not start again at the next boot;
``hostsetup --reset-console`` removes it (so does a late command in the
answers: ``[hostsetup, --reset-console]``).  Whatever the wizard does, the
login prompt follows when it exits.

Standard library only (and only at the end the safe-write primitive): the
check of the marker at boot must cost nothing.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# The same path is in deploy/hostsetup-console.service (ConditionPathExists=!).
MARKER = Path("/var/lib/hostsetup/console-done")


def marker() -> Path:
    """The marker's path (``$HOSTSETUP_CONSOLE_MARKER`` for tests)."""
    return Path(os.environ.get("HOSTSETUP_CONSOLE_MARKER") or MARKER)


def configured() -> bool:
    """Whether the console wizard already configured this host."""
    return marker().exists()


def mark(code: int) -> None:
    """After the console wizard: a run that ended well (exit 0) writes the marker.

    A marker that cannot be written is said on stderr (the console), never fatal:
    the wizard then simply starts again at the next boot.
    """
    if code != 0:
        return
    from backends.hostfiles import atomic_write
    from backends.interfaces import BackendError

    path = marker()
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, f"configured by the hostsetup console wizard, "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n"
                     "remove with: hostsetup --reset-console\n".encode(), 0o644)
    except (OSError, BackendError) as exc:
        print(f"hostsetup: console marker {path} not written: {exc}", file=sys.stderr)


def reset() -> int:
    """``hostsetup --reset-console``: the console wizard starts again at the next boot."""
    path = marker()
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"hostsetup: {path} is absent: the console wizard already starts at boot")
        return 0
    except OSError as exc:
        print(f"hostsetup: cannot remove {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"hostsetup: removed {path}: the console wizard starts at the next boot "
          "(or now: systemctl start hostsetup-console)")
    return 0

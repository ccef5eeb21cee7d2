"""Process helpers shared by the fleet and the sandbox."""

from __future__ import annotations


def alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False

"""Host files written by steps (hook scripts, wrappers): atomic, with backups.

A replaced file is kept next to the new one as ``<name>.hostsetup-bak.<time>``
without its execute bits: libvirt runs every executable file in a hooks
``qemu.d/`` directory, and a backup must never run as a hook.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path

from backends.interfaces import BackendError
from backends.interfaces.libvirt import HostFile

BACKUP_INFIX = ".hostsetup-bak."


def read_file(path: str) -> HostFile | None:
    """A file's content and permission bits, ``None`` if it does not exist."""
    try:
        with open(path, "rb") as f:
            return HostFile(path, f.read(), stat.S_IMODE(os.fstat(f.fileno()).st_mode))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BackendError(f"cannot read {path}: {exc.strerror}") from None


def _backup(path: Path, old: HostFile) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for n in range(100):
        candidate = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}" + (f".{n}" if n else ""))
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, old.mode & 0o666)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(old.content)
        return str(candidate)
    raise BackendError(f"cannot find a free backup name for {path}")


def write_file(path: str, content: bytes, mode: int = 0o755) -> str | None:
    """Write ``content`` atomically (temporary file + rename) with ``mode``.

    An existing file with other content is first copied to a backup, whose
    path is returned; the same content only gets its mode corrected.
    """
    target = Path(path)
    try:
        old = read_file(path)
        if old is not None and old.content == content:
            if old.mode != mode:
                os.chmod(target, mode)
            return None
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        backup = _backup(target, old) if old is not None else None
        # In a ``*.d`` hooks directory every executable file runs as a hook, so
        # the temporary file is made one level up (same filesystem: rename is atomic).
        tmp_dir = target.parent.parent if target.parent.name.endswith(".d") else target.parent
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fchmod(f.fileno(), mode)
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    return backup

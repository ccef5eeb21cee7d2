"""Files hostsetup writes as root: one safe-write primitive, and host files with backups.

Every file hostsetup writes (reports, logs, recorded answers, a step's hook
scripts and wrappers) goes through :func:`atomic_write` or :func:`open_log`,
so that a link planted in a world-writable directory cannot redirect a write:

- an existing symbolic link (or anything but a plain file, or a file with
  other hard links) at the target is refused, never followed;
- a whole file is written to a new temporary file in the target's directory
  (random name, ``O_CREAT | O_EXCL | O_NOFOLLOW``, created with its final
  mode) and renamed over the target: a reader sees the old or the new file;
- a log is opened ``O_APPEND | O_NOFOLLOW`` and created with mode 0600.

A replaced host file (:func:`write_file`) is kept next to the new one as
``<name>.hostsetup-bak.<time>`` without its execute bits: libvirt runs every
executable file in a hooks ``qemu.d/`` directory, and a backup must never run
as a hook.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import IO

from backends.interfaces import BackendError
from backends.interfaces.libvirt import HostFile

BACKUP_INFIX = ".hostsetup-bak."
# Flags of every file we create: never through a link, never inherited by children.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeTarget(BackendError):
    """The target of a write is a link or not a plain file: refused, nothing written."""


def check_target(path: str | os.PathLike[str]) -> None:
    """Refuse a target that a write could be redirected through.

    Raises :class:`UnsafeTarget` if ``path`` is a symbolic link, not a plain
    file, or a file with other hard links; :class:`BackendError` if its
    directory does not exist.  A missing target is fine (it will be created).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise BackendError(f"cannot write {path}: its directory does not exist") from None
        return
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    _refuse(path, st)


def _refuse(path: str | os.PathLike[str], st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeTarget(f"refusing to write {path}: it is a symbolic link "
                           "(give the real path)")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeTarget(f"refusing to write {path}: it is not a plain file")
    if st.st_nlink > 1:
        raise UnsafeTarget(f"refusing to write {path}: it has other hard links")


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600,
                 tmp_dir: str | os.PathLike[str] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically, the new file having ``mode``.

    The temporary file is created in ``tmp_dir`` (default: the target's
    directory; it must be on the same filesystem) with a random name and
    ``mode`` at creation, then renamed over the target.  Raises
    :class:`UnsafeTarget` for a link at the target, :class:`BackendError`
    for any other failure (the target is then unchanged).
    """
    check_target(path)
    target = os.path.abspath(path)
    where = os.fspath(tmp_dir) if tmp_dir is not None else os.path.dirname(target)
    for _ in range(100):
        tmp = os.path.join(where, f".{os.path.basename(target)}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, _CREATE, mode)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    else:
        raise BackendError(f"cannot write {path}: no free temporary name in {where}")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have narrowed the mode of os.open
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # replaces whatever is at target now, never follows it
    except OSError as exc:
        os.unlink(tmp)
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def open_log(path: str | os.PathLike[str], mode: int = 0o600) -> IO[str]:
    """Open ``path`` for appending text, creating it with ``mode``; never through a link.

    Raises :class:`UnsafeTarget` for a link, a non-plain file or a file with
    other hard links at ``path``, :class:`BackendError` for other failures.
    """
    check_target(path)
    # O_NONBLOCK: a FIFO planted after the check must not block the open.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link appeared after the check
            raise UnsafeTarget(f"refusing to write {path}: it is a symbolic link") from None
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    try:
        _refuse(path, os.fstat(fd))  # what was opened, not what was checked
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8", errors="replace")


def read_file(path: str) -> HostFile | None:
    """A file's content and permission bits, ``None`` if it does not exist.

    A symbolic link at ``path`` is refused (:class:`UnsafeTarget`): the step
    would later have to write through it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeTarget(f"refusing to use {path}: it is a symbolic link") from None
        raise BackendError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return HostFile(path, f.read(), stat.S_IMODE(os.fstat(f.fileno()).st_mode))


def _backup(path: Path, old: HostFile) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for n in range(100):
        candidate = path.with_name(f"{path.name}{BACKUP_INFIX}{stamp}" + (f".{n}" if n else ""))
        try:
            fd = os.open(candidate, _CREATE, old.mode & 0o666)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(old.content)
        return str(candidate)
    raise BackendError(f"cannot find a free backup name for {path}")


def write_file(path: str, content: bytes, mode: int = 0o755) -> str | None:
    """Write a host file with :func:`atomic_write` and ``mode``, keeping a backup.

    An existing file with other content is first copied to a backup, whose
    path is returned; the same content only gets its mode corrected.
    """
    target = Path(path)
    old = read_file(path)
    try:
        if old is not None and old.content == content:
            if old.mode != mode:
                fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
            return None
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        backup = _backup(target, old) if old is not None else None
    except OSError as exc:
        raise BackendError(f"cannot write {path}: {exc.strerror}") from None
    # In a ``*.d`` hooks directory every executable file runs as a hook, so
    # the temporary file is made one level up (same filesystem: rename is atomic).
    tmp_dir = target.parent.parent if target.parent.name.endswith(".d") else target.parent
    atomic_write(target, content, mode, tmp_dir)
    return backup


def remove_file(path: str) -> str | None:
    """Remove a host file, keeping a backup of it (returned); ``None`` if it was
    not there.  A symbolic link at ``path`` is refused, as by :func:`read_file`."""
    old = read_file(path)
    if old is None:
        return None
    backup = _backup(Path(path), old)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BackendError(f"cannot remove {path}: {exc.strerror}") from None
    return backup

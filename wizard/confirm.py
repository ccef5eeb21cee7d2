"""Confirm or revert: risky operations are kept only when confirmed in time.

An operation is risky when carrying it out can cut the path the operator or the
control plane uses to reach the host (its step says why in ``Operation.risky``:
stopping sshd, moving the management port ...).  After an apply that carried out
risky operations, the run waits up to ``within`` seconds for a confirmation:

- ``hostsetup confirm [RUN]`` run from a new connection (it proves the path works),
- the answers' probe reaching its target (``tcp: HOST:PORT`` connects, or
  ``ping: ADDRESS`` answers an ICMP echo), tried about once a second,
- in the wizard, the Keep button of its countdown window.

Without one in time, the operations of the run from the first risky one on are
reverted in reverse order (each step's :meth:`~steps.base.Step.revert`, from their
``undo`` commands), the host is re-read (:meth:`~steps.base.Step.observe`) and the
run exits 1 saying "not confirmed within S s: reverted N operation(s)".

The state is a record per run in ``STATE/confirm/RUN.json`` (``STATE`` is
the journal's state directory, :func:`wizard.journal.state_dir`, checked as the
journal's is: the running user's, mode 0700, never through a link), written (and synced) when the
first risky operation begins and after each operation after it, so a process
killed at any point leaves what must be reverted.  Its ``state``: ``applying``
(the apply still runs), ``waiting`` (the window is open until ``deadline``, wall
clock), ``confirmed``, ``reverting``, ``reverted``.  The owning process holds a
lock on ``RUN.owner`` for as long as it lives; state changes are made under
``RUN.lock``, so a confirmation and the deadline cannot both win.

For the next start (the journal's check for an unfinished run, ``apply``, the
wizard, ``hostsetup confirm --revert-expired``): :func:`expired_pending` lists the
records whose process is gone and that can no longer be confirmed, and
:func:`settle` reverts them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from backends.interfaces import BackendError
from steps.base import Change, Context, Journal, NoJournal, Operation, inverse
from wizard.journal import STATE_ENV, JournalError, state_dir, state_subdir

if TYPE_CHECKING:
    from pydantic import BaseModel

    from backends.interfaces import Backends
    from wizard.answers import ConfirmAnswers

log = logging.getLogger("hostsetup")

DEFAULT_WITHIN = 120  # seconds, when the wizard applies risky operations and nothing says
RECORD_LIMIT = 4 * 1024 * 1024  # bytes of a record (a plan of thousands of operations)
KEEP = 20  # finished records kept (``hostsetup confirm`` can still say what became of them)
POLL = 0.2  # seconds between looks at the record
PROBE_EVERY = 1.0  # seconds between probe attempts
PROBE_TIMEOUT = 1.0  # seconds one attempt may take (connect, echo reply)
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
WAITING = ("applying", "waiting")
FINAL = ("confirmed", "reverted")


class ConfirmError(BackendError):
    """A confirmation cannot be given or the state cannot be read; ``code`` is the
    exit code (1: too late or nothing waits, 2: a run that does not wait).  A
    BackendError (the state directory is the host's): raised while a step applies
    (the record cannot be written), it fails that step, before the operation."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def new_run_id() -> str:
    """A run's id: its start time and a random part (``20250101-120000-1a2b3c``)."""
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def folder(state: Path, create: bool = True) -> Path:
    """``STATE/confirm``, checked as the journal's directory is
    (:func:`wizard.journal.state_subdir`: a directory of this user, not a link, mode
    0700; ``STATE`` not writable by others); without ``create``, a missing one means
    nothing waits.  Raises :class:`ConfirmError`."""
    if not create and not os.path.lexists(state / "confirm"):
        raise ConfirmError(f"nothing is waiting for a confirmation (no {state / 'confirm'})")
    try:
        return state_subdir("confirm", state)
    except JournalError as exc:
        raise ConfirmError(str(exc)) from None


# ------------------------------------------------------------------ the record


class Record:
    """``STATE/confirm/RUN.json`` and its two lock files: one run's confirmation."""

    def __init__(self, where: Path, run: str) -> None:
        if not RUN_ID.match(run):
            raise ConfirmError(f"'{run}' is not a run id (letters, digits, '.', '_', '-')", 2)
        self.where, self.run = where, run
        self.path = where / f"{run}.json"
        self._owner: int | None = None

    def exists(self) -> bool:
        """Whether the run has a record."""
        return self.path.exists()

    def own(self) -> bool:
        """Take the owner's lock (kept until :meth:`release` or the process ends);
        False when a live process holds it."""
        if self._owner is not None:
            return True
        fd = os.open(self.where / f"{self.run}.owner", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._owner = fd
        return True

    def release(self) -> None:
        """Give the owner's lock back."""
        if self._owner is not None:
            os.close(self._owner)
            self._owner = None

    def owner_alive(self) -> bool:
        """Whether a live process (this one included) owns the record."""
        if self._owner is not None:
            return True
        if self.own():
            self.release()
            return False
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.where / f"{self.run}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
                     | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read and a write: milliseconds
            yield
        finally:
            os.close(fd)

    def read(self, ops: bool = True) -> dict[str, Any]:
        """The record as written last, with its ``ops`` (replayed from ``RUN.ops``)
        unless ``ops`` is False (the state alone, for a look every moment);
        raises :class:`ConfirmError` if unreadable."""
        data = self._load(self.path)
        if not isinstance(data, dict) or data.get("run") != self.run:
            raise ConfirmError(f"{self.path}: not a confirmation record of run {self.run}")
        if not ops:
            return data
        done: list[Any] = []
        path = self.where / f"{self.run}.ops"
        for line in self._load(path, lines=True) if path.exists() else []:
            if "add" in line:
                done.append(line["add"])
            elif 0 <= line.get("drop", -1) < len(done):
                del done[line["drop"]]
        data["ops"] = done
        return data

    def _load(self, path: Path, lines: bool = False) -> Any:
        from steps.base import InputRefused, read_regular

        try:
            text = read_regular(path, RECORD_LIMIT)
            if lines:  # a line cut by a crash while it was appended was never synced
                return [json.loads(t) for t in text.splitlines() if t.endswith(b"}")]
            return json.loads(text)
        except InputRefused as exc:
            raise ConfirmError(f"{path}: cannot read: {exc}") from None
        except ValueError:
            raise ConfirmError(f"{path}: not a confirmation record (not JSON)") from None

    def append(self, event: dict[str, Any]) -> None:
        """Add an event to ``RUN.ops`` (``{"add": entry}`` or ``{"drop": index}``),
        synced before this returns: one short write per operation, whatever their number."""
        line = (json.dumps(event) + "\n").encode()
        fd = os.open(self.where / f"{self.run}.ops", os.O_WRONLY | os.O_APPEND | os.O_CREAT
                     | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            if os.fstat(fd).st_size + len(line) > RECORD_LIMIT:
                raise ConfirmError(f"run {self.run}: more operations than its record holds "
                                   f"({RECORD_LIMIT} bytes)")
            os.write(fd, line)
            os.fsync(fd)
        except OSError as exc:
            raise ConfirmError(f"cannot write the record of run {self.run}: "
                               f"{exc.strerror}") from None
        finally:
            os.close(fd)

    def _write(self, data: dict[str, Any]) -> None:
        from backends.hostfiles import atomic_write
        from backends.interfaces import BackendError

        try:
            data = {k: v for k, v in data.items() if k != "ops"}  # they are in RUN.ops
            atomic_write(self.path, json.dumps(data).encode(), 0o600)
            dir_fd = os.open(self.where, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)  # the rename itself survives a power cut
            finally:
                os.close(dir_fd)
        except (BackendError, OSError) as exc:
            raise ConfirmError(f"cannot write {self.path}: {exc}") from None

    def create(self, data: dict[str, Any]) -> None:
        """Write the first version (the owner's lock must be held), no operation yet."""
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                (self.where / f"{self.run}.ops").unlink()
            self._write(data)

    def update(self, change: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read, let ``change`` edit the data (it returns whether it did), write if
        so; all under the record's lock.  Returns the data as it now is."""
        with self._locked():
            data = self.read(ops=False)
            if change(data):
                self._write(data)
            return data


def records(where: Path) -> list[Record]:
    """Every record in ``where``, oldest first."""
    found = sorted(where.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return [Record(where, p.stem) for p in found if RUN_ID.match(p.stem)]


def prune(where: Path, keep: int = KEEP) -> None:
    """Remove the oldest finished records beyond ``keep`` (with their lock files)."""
    done = []
    for rec in records(where):
        with contextlib.suppress(ConfirmError):
            if rec.read(ops=False).get("state") in FINAL:
                done.append(rec)
    for rec in done[:max(0, len(done) - keep)]:
        for suffix in (".json", ".ops", ".lock", ".owner", ".log"):
            with contextlib.suppress(FileNotFoundError):
                (where / f"{rec.run}{suffix}").unlink()


# ------------------------------------------------------------------ probes


def probe_text(probe: Mapping[str, str]) -> str:
    """``tcp vcenter:443`` / ``ping 10.0.0.1`` / "" (no probe)."""
    return " ".join(f"{kind} {target}" for kind, target in probe.items())


def tcp_reachable(target: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a TCP connection to ``HOST:PORT`` succeeds within ``timeout``."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def ping_reachable(address: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether ``address`` answers one ICMP echo within ``timeout``.

    A ping socket (``SOCK_DGRAM``) when ``net.ipv4.ping_group_range`` allows it,
    else a raw socket (root); IPv4 and IPv6."""
    try:
        family, _t, _p, _c, addr = socket.getaddrinfo(address, None, type=socket.SOCK_DGRAM)[0]
    except (OSError, UnicodeError):
        return False
    v6 = family == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    try:
        sock, raw = socket.socket(family, socket.SOCK_DGRAM, proto), False
    except PermissionError:
        try:
            sock, raw = socket.socket(family, socket.SOCK_RAW, proto), True
        except OSError:
            return False
    except OSError:
        return False
    ident, seq = os.getpid() & 0xFFFF, secrets.randbelow(0xFFFF)
    request, reply = (128, 129) if v6 else (8, 0)
    body = b"hostsetup-confirm"
    head = struct.pack("!BBHHH", request, 0, 0, ident, seq)
    # The kernel computes ICMPv6 checksums; an ICMP (v4) raw packet needs its own.
    packet = head if v6 else struct.pack("!BBHHH", request, 0, _checksum(head + body),
                                         ident, seq)
    deadline = time.monotonic() + timeout
    with sock:
        try:
            sock.sendto(packet + body, addr)
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recv(2048)
                if raw and not v6:
                    data = data[(data[0] & 0x0F) * 4:]  # past the IP header
                if len(data) < 8:
                    continue
                kind, _code, _sum, got_id, got_seq = struct.unpack("!BBHHH", data[:8])
                # A ping socket rewrites the id: the kernel hands it only its replies.
                if kind == reply and got_seq == seq and (got_id == ident or not raw):
                    return True
        except OSError:
            return False
    return False


class Prober:
    """The answers' probe, tried in a thread of its own about once a second (a name to
    resolve or a connect cannot hold up the countdown); at most one try at a time."""

    def __init__(self, probe: Mapping[str, str]) -> None:
        self.probe = dict(probe)
        self.ok = threading.Event()
        self.thread: threading.Thread | None = None
        self.last = 0.0

    def poll(self) -> bool:
        """True once a try succeeded; starts the next try when due."""
        if self.ok.is_set() or not self.probe:
            return self.ok.is_set()
        busy = self.thread is not None and self.thread.is_alive()
        if not busy and time.monotonic() - self.last >= PROBE_EVERY:
            self.last = time.monotonic()
            self.thread = threading.Thread(target=self._try, daemon=True,
                                           name="hostsetup-probe")
            self.thread.start()
        return False

    def _try(self) -> None:
        kind, target = next(iter(self.probe.items()))
        if (tcp_reachable if kind == "tcp" else ping_reachable)(target):
            self.ok.set()


# ------------------------------------------------------------------ during apply


@dataclass(frozen=True)
class Window:
    """The confirmation window of a run: how long, which probe, where the record goes."""

    run: str
    within: int
    probe: Mapping[str, str] = field(default_factory=dict)
    state: Path = field(default_factory=state_dir)

    @classmethod
    def of(cls, run: str, within: int | None, answers: ConfirmAnswers | None,
           default: int | None = None) -> Window | None:
        """From ``--confirm-within`` (wins) and the answers' ``confirm:``; ``None`` when
        neither asks for a window and there is no ``default`` (``apply``)."""
        probe = {k: v for k in ("tcp", "ping")
                 if answers is not None and (v := getattr(answers, k)) is not None}
        seconds = within or (answers.within if answers is not None else default)
        return None if seconds is None else cls(run, seconds, probe)


def op_entry(step: str, op: Operation) -> dict[str, Any]:
    """An operation as the record keeps it."""
    return {"step": step, "op": op.as_dict()}


def op_of(entry: Mapping[str, Any]) -> tuple[str, Operation]:
    """The step name and operation of a record's entry."""
    data = entry["op"]
    return str(entry["step"]), Operation(Change(**data["change"]), data["do"], data["undo"],
                                         data.get("risky", ""))


class Tracker:
    """A journal that passes every call on to the run's own (``inner``) and keeps what
    was carried out; from the first risky operation on, with a :class:`Window`, it
    keeps the run's record (each operation is recorded before it runs)."""

    def __init__(self, inner: Journal | None = None, window: Window | None = None,
                 sections: Mapping[str, BaseModel] | None = None) -> None:
        self.inner = inner or NoJournal()
        self.window = window
        self.sections = dict(sections or {})
        self.applied: list[tuple[str, Operation]] = []
        self.start: int | None = None  # where the first risky operation was in applied
        self.record: Record | None = None

    @classmethod
    def of(cls, journal: Journal | None, within: int | None, answers: Any,
           default: int | None = None) -> Tracker:
        """The tracker of a run journaled in ``journal`` (the window takes the
        journal's id: one id for ``hostsetup confirm``, ``undo`` and ``report show``),
        with the window of ``within`` / the answers' ``confirm:`` / ``default``
        (:meth:`Window.of`)."""
        run = getattr(journal, "id", None) or new_run_id()
        return cls(inner=journal, window=Window.of(run, within, answers.confirm, default),
                   sections=answers.sections)

    @property
    def risky(self) -> list[tuple[str, Operation]]:
        """What a missing confirmation reverts: the operations carried out from the
        first risky one on ([] when none was risky)."""
        return [] if self.start is None else self.applied[self.start:]

    def begin(self, step: str, op: Operation) -> None:
        """Record ``op`` (before it runs) once the run is risky, then pass it on."""
        if op.change.action != "revert":
            if op.risky and self.start is None:
                self.start = len(self.applied)
            self.applied.append((step, op))
            if self.start is not None and self.window is not None:
                self._open().append({"add": op_entry(step, op)})
        self.inner.begin(step, op)

    def end(self, step: str, op: Operation, error: str = "") -> None:
        """Pass it on; forget an operation that failed or that the step reverted."""
        self.inner.end(step, op, error)
        if op.change.action == "revert" and not error:  # a step's compensation
            gone = [i for i, (s, o) in enumerate(self.applied)
                    if s == step and o.do == op.undo and o.undo == op.do]
        elif op.change.action != "revert" and error:
            gone = [i for i, (s, o) in enumerate(self.applied) if s == step and o is op]
        else:
            return
        if not gone:
            return
        i = gone[-1]
        del self.applied[i]
        if self.start is not None and i >= self.start and self.record is not None:
            self.record.append({"drop": i - self.start})
        elif self.start is not None and i < self.start:
            self.start -= 1

    def _open(self) -> Record:
        """The run's record, made when the first risky operation begins."""
        if self.record is None:
            assert self.window is not None
            where = folder(self.window.state)
            prune(where)
            record = Record(where, self.window.run)
            if not record.own():
                raise ConfirmError(f"run {self.window.run} is owned by another process")
            record.create({
                "version": 1, "run": self.window.run, "host": socket.gethostname(),
                "pid": os.getpid(), "created": time.time(), "state": "applying",
                "deadline": None, "within": self.window.within,
                "probe": dict(self.window.probe), "how": "", "result": "",
                # What a later process needs to revert: each step's answers (secrets
                # stay references); the operations go to RUN.ops, in their order.
                "steps": {n: s.model_dump(mode="json") for n, s in self.sections.items()}})
            self.record = record
        return self.record


# ------------------------------------------------------------------ the window


class Waiter:
    """The open window of a record: :meth:`poll` until it says kept or revert."""

    def __init__(self, record: Record, within: float, probe: Mapping[str, str],
                 deadline: float | None = None) -> None:
        """Open the window (``within`` seconds from now), or, given its ``deadline``
        (wall clock), go on waiting in a window opened by a process now gone."""
        self.record, self.within = record, within
        self.prober = Prober(probe)
        self.how = ""
        if deadline is None:
            deadline = time.time() + within
            record.update(lambda d: _set(d, "applying", state="waiting", deadline=deadline))
        self.deadline = time.monotonic() + deadline - time.time()

    def remaining(self) -> int:
        """Whole seconds left."""
        return max(0, math.ceil(self.deadline - time.monotonic()))

    def poll(self) -> str | None:
        """``"kept"`` (confirmed: :attr:`how` says by what), ``"revert"`` (the deadline
        passed), or ``None``: still waiting."""
        if self.prober.poll():
            self.keep(f"the probe reached {probe_text(self.prober.probe)}")
        data = self.record.read(ops=False)
        if data["state"] == "confirmed":
            self.how = data["how"]
            return "kept"
        if time.monotonic() >= self.deadline:
            return self.give_up(f"not confirmed within {self.within:g} s")
        return None

    def keep(self, how: str) -> bool:
        """Confirm (the wizard's Keep, the probe); False if it came too late."""
        return confirm_data(self.record, how)

    def give_up(self, why: str) -> str:
        """Close the window for a revert (unless a confirmation came first)."""
        data = self.record.update(lambda d: _set(d, "waiting", state="reverting", how=why))
        self.how = data["how"]
        return "kept" if data["state"] == "confirmed" else "revert"


def _set(data: dict[str, Any], when: str, **values: Any) -> bool:
    """Update ``data`` if its state is ``when``."""
    if data.get("state") != when:
        return False
    data.update(values)
    return True


def confirm_data(record: Record, how: str) -> bool:
    """Mark a waiting record confirmed; False if it is not waiting any more."""
    data = record.update(lambda d: _set(d, "waiting", state="confirmed", how=how,
                                        confirmed=time.time()))
    return data["state"] == "confirmed" and data["how"] == how


KEEPER_MARGIN = 900  # seconds after the deadline a keeper waits for a live owner's revert


def start_keeper(record: Record, own_unit: bool = False) -> int:
    """Start the keeper of an open window: a process of its own (a new session, no
    terminal; its lines go to ``STATE/confirm/RUN.log``) that does what this
    process would if it is gone before the window closes (killed, or its terminal
    lost: newt exits when it reads EOF): waits out the window, then reverts.
    ``own_unit`` (the fleet agent and the wizard: the agent's unit, or the console
    wizard's, takes all its processes along when it ends): as root under systemd,
    the keeper runs as a transient unit of its own, ``hostsetup-confirm-RUN``.
    Returns its pid (kept in the record)."""
    import shutil
    import subprocess

    from backends.hostfiles import open_log

    log_path = record.where / f"{record.run}.log"
    argv = [sys.executable, "-m", "wizard", "--log", str(log_path), "confirm", "--watch",
            record.run]
    pid = 0
    if own_unit and os.geteuid() == 0 and Path("/run/systemd/system").is_dir() \
            and shutil.which("systemd-run"):
        unit = f"hostsetup-confirm-{record.run}"
        try:
            subprocess.run(["systemd-run", "--quiet", "--collect", f"--unit={unit}",
                            "--property=Type=exec", "--working-directory=/",
                            f"--setenv={STATE_ENV}={record.where.parent}", "--", *argv],
                           check=True, capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=30)
            shown = subprocess.run(["systemctl", "show", "--property=MainPID", "--value", unit],
                                   capture_output=True, text=True, timeout=30,
                                   stdin=subprocess.DEVNULL)
            pid = int(shown.stdout.strip() or 0)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            log.warning("run %s: no keeper unit (%s): a keeper process instead", record.run,
                        exc)
    if not pid:
        env = {**os.environ, STATE_ENV: str(record.where.parent)}
        with open_log(log_path) as out:
            pid = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                   start_new_session=True, env=env, cwd="/").pid
    record.update(lambda d: _set(d, "waiting", keeper=pid))
    return pid


def watch(state: Path, run: str, backends: Backends) -> Outcome | None:
    """The keeper (``hostsetup confirm --watch RUN``): while the run's own process
    lives, it decides; once it is gone, this one finishes the window in its place
    (the window's probe and ``hostsetup confirm`` still count) and reverts if
    needed.  Bounded: it leaves :data:`KEEPER_MARGIN` seconds after the deadline."""
    record = Record(folder(state, create=False), run)
    while True:
        data = record.read(ops=False)
        if data.get("state") in FINAL:
            return None
        if record.own():
            try:
                data = record.read(ops=False)  # as its owner left it
                if data.get("state") in FINAL:
                    return None
                return _settle_one(record, data, backends, log.warning, wait=True)
            finally:
                record.release()
        if time.time() > float(data.get("deadline") or 0) + KEEPER_MARGIN:
            log.warning("run %s: its process still decides %d s after the deadline; the "
                        "keeper leaves it", run, KEEPER_MARGIN)
            return None
        time.sleep(POLL)


# ------------------------------------------------------------------ reverting


@dataclass
class Outcome:
    """How a confirmation window ended, for the output, the report and the summary."""

    run: str
    within: float
    probe: str = ""
    kept: bool = False
    how: str = ""
    reverted: list[str] = field(default_factory=list)
    remains: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def text(self) -> str:
        """One line: what became of the risky operations."""
        if self.kept:
            return f"confirmed ({self.how}): the changes are kept"
        text = f"{self.how or 'not confirmed'}: reverted {len(self.reverted)} operation(s)"
        if self.remains:
            text += "; still changed: " + ", ".join(self.remains)
        return text

    def as_dict(self) -> dict[str, Any]:
        """The report's ``confirm`` entry."""
        return {"run": self.run, "within": self.within, "probe": self.probe,
                "outcome": "kept" if self.kept else "reverted", "how": self.how,
                "text": self.text(), "reverted": self.reverted, "remains": self.remains,
                "errors": self.errors}


def revert(record: Record, backends: Backends, journal: Journal | None = None) -> Outcome:
    """Revert a record's operations in reverse order (each step's ``revert``), re-read
    the host (``observe``), and mark the record reverted.  ``journal`` records each
    revert operation (e.g. a run journal of its own; the record says what was done
    in any case)."""
    from steps import REGISTRY

    data = record.read()
    out = Outcome(record.run, data.get("within") or 0, probe_text(data.get("probe") or {}),
                  how=data.get("how") or "")
    by_name = {s.name: s for s in REGISTRY}
    ctx = Context(backends=backends, journal=journal or NoJournal(), log=log.info)
    ops = [op_of(e) for e in data.get("ops") or []]
    # Consecutive operations of one step are reverted together, the last step first.
    runs: list[tuple[str, list[Operation]]] = []
    for name, op in ops:
        if runs and runs[-1][0] == name:
            runs[-1][1].append(op)
        else:
            runs.append((name, [op]))
    with _shielded():
        for name, done in reversed(runs):
            step = by_name.get(name)
            if step is None:
                out.errors.append(f"{name}: no such step here: its operations are not reverted")
                out.remains += [o.change.describe() for o in done]
                continue
            answers = step.Answers.model_validate(data["steps"][name])
            try:
                kept, errors = step.revert(answers, done, ctx)
            except Exception as exc:  # noqa: BLE001 - unreachable backend, a bug: say so
                kept, errors = done, [f"{name}: revert failed: {exc}"]
            out.errors += errors
            out.remains += [o.change.describe() for o in kept]
            for op in reversed([o for o in done if all(o is not k for k in kept)]):
                out.reverted.append(op.change.describe())
                back = inverse(op)
                if back is not None and _observed(step, answers, back, ctx) is False:
                    out.errors.append(f"revert of {op.change.describe()}: not observed on "
                                      "the host after it")
    result = out.text()
    record.update(lambda d: _set(d, "reverting", state="reverted", result=result,
                                 errors=out.errors, reverted_by=os.getpid()))
    log.warning("run %s: %s", record.run, result)
    return out


def _observed(step: Any, answers: Any, back: Operation, ctx: Context) -> bool | None:
    try:
        return step.observe(answers, back.do, ctx)  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - a backend error reads as "not observed"
        return False


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while reverting (each step's call is bounded): a
    revert cut in the middle would leave the host between two states."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------ the CLI's window


class Terminated(Exception):
    """SIGTERM while waiting for a confirmation."""


def _terminated(*_args: Any) -> None:
    raise Terminated


def wait_and_decide(tracker: Tracker, backends: Backends, say: Callable[[str], None],
                    countdown: Callable[[str], None] | None = None,
                    keeper: Callable[[Record], int] = start_keeper) -> Outcome | None:
    """After an apply: when risky operations were carried out under a window, wait
    for the confirmation, printing a countdown; revert without one.  ``None`` when
    there was nothing to confirm.  Ctrl-C or SIGTERM while waiting reverts at once;
    the ``keeper`` (:func:`start_keeper`) reverts in time if this process dies."""
    record, window = tracker.record, tracker.window
    if record is None or window is None or not tracker.risky:
        return None
    probe = probe_text(window.probe)
    n = len(tracker.risky)
    say(f"confirm: run {window.run}: {n} operation(s) from the first risky one (~) are "
        f"kept only if confirmed within {window.within} s: run 'hostsetup confirm "
        f"{window.run}' from a new connection" + (f", or {probe} must answer" if probe else ""))
    waiter = Waiter(record, window.within, window.probe)
    keeper(record)
    tick = countdown or (lambda text: None)
    shown = -1
    old = signal.signal(signal.SIGTERM, _terminated) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        while (decision := waiter.poll()) is None:
            left = waiter.remaining()
            if left != shown:
                tick(f"confirm: reverting in {left} s unless confirmed")
                shown = left
            time.sleep(POLL)
    except (KeyboardInterrupt, Terminated):
        decision = waiter.give_up("interrupted while waiting for the confirmation")
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    if decision == "kept":
        out = Outcome(window.run, window.within, probe, kept=True, how=waiter.how)
        record.release()
    else:
        say(f"confirm: {waiter.how}: reverting...")
        out = revert(record, backends)  # journaled in the record (the run's journal is closed)
        record.release()
    say(f"confirm: {out.text()}")
    for err in out.errors:
        say(f"confirm: ! {err}")
    return out


# ------------------------------------------------------------------ hostsetup confirm


def describe(data: Mapping[str, Any]) -> str:
    """A waiting record in one line: its run, host and deadline."""
    when = time.strftime("%H:%M:%S", time.localtime(data["deadline"])) \
        if data.get("deadline") else "after its apply"
    return f"{data['run']} (on {data.get('host', '?')}, until {when})"


def confirm(state: Path, run: str | None, how: str = "") -> str:
    """``hostsetup confirm [RUN]``: keep the changes of the run waiting for its
    confirmation.  Returns the line to print; raises :class:`ConfirmError`."""
    where = folder(state, create=False)
    waiting = []
    for rec in records(where):
        with contextlib.suppress(ConfirmError):
            data = rec.read(ops=False)
            if data.get("state") in WAITING:
                waiting.append(data)
    if run is None:
        if not waiting:
            raise ConfirmError("nothing is waiting for a confirmation")
        if len(waiting) > 1:
            raise ConfirmError("several runs wait for a confirmation; name one: "
                               + ", ".join(describe(d) for d in waiting), 2)
        run = str(waiting[0]["run"])
    record = Record(where, run)
    if not record.exists():
        others = ", ".join(describe(d) for d in waiting) or "none"
        raise ConfirmError(f"run {run} is not waiting for a confirmation (waiting: {others})",
                           2)
    data = record.read(ops=False)
    state_now = data.get("state")
    if state_now == "confirmed":
        return f"run {run} was already confirmed ({data.get('how')}): its changes are kept"
    if state_now == "applying":
        raise ConfirmError(f"run {run} is still applying: confirm it once it waits (it "
                           "prints a countdown)")
    if state_now != "waiting":
        raise ConfirmError(f"too late: run {run} was not confirmed in time: "
                           f"{data.get('result') or 'its changes are being reverted'}")
    if not record.owner_alive() and time.time() >= float(data["deadline"]):
        raise ConfirmError(f"too late: run {run}'s window closed while its process was "
                           "gone: the next start of hostsetup reverts its changes")
    by = how or "'hostsetup confirm'" + (f" from {_client()}" if _client() else "")
    if not confirm_data(record, by):
        return confirm(state, run, how)  # its state changed meanwhile: say which
    log.info("run %s confirmed by %s", run, by)
    return f"run {run} confirmed: its changes are kept"


def _client() -> str:
    """The SSH client address this command came from, if it came over SSH."""
    return (os.environ.get("SSH_CONNECTION") or "").partition(" ")[0]


def existing(state: Path) -> list[Record]:
    """The records under ``state`` (none when it has no usable confirm directory)."""
    try:
        return records(folder(state, create=False))
    except ConfirmError:
        return []


def expired_pending(state: Path) -> list[dict[str, Any]]:
    """Runs whose risky operations must be reverted at this start: their process is
    gone and they can no longer be confirmed (killed while applying, while
    reverting, or while waiting past their deadline).  Each is the record's data
    (``run``, ``host``, ``state``, ``deadline``, ``ops`` ...).  Read-only; the
    journal's check for an unfinished run calls it, :func:`settle` reverts them."""
    found = []
    for rec in existing(state):
        try:
            data = rec.read()
        except ConfirmError:
            continue
        st = data.get("state")
        if st in FINAL or rec.owner_alive():
            continue
        if st != "waiting" or time.time() >= float(data.get("deadline") or 0):
            found.append(data)
    return found


def settle(state: Path, backends: Backends, say: Callable[[str], None],
           wait: bool = True) -> list[Outcome]:
    """Finish the windows of runs whose process is gone: revert the expired ones; a
    run still inside its window is waited for first (``wait``), as its own process
    would have (its probe, ``hostsetup confirm``), or left alone (``wait=False``)."""
    outcomes = []
    for rec in existing(state):
        with contextlib.suppress(ConfirmError):
            if not rec.own():
                continue  # its process (or its keeper) lives: it decides
            try:
                data = rec.read(ops=False)
                out = None if data.get("state") in FINAL else \
                    _settle_one(rec, data, backends, say, wait)
            finally:
                rec.release()
            if out is not None:
                outcomes.append(out)
    return outcomes


def _settle_one(rec: Record, data: dict[str, Any], backends: Backends,
                say: Callable[[str], None], wait: bool) -> Outcome | None:
    left = float(data.get("deadline") or 0) - time.time()
    if data["state"] == "waiting" and left > 0:
        if not wait:
            say(f"confirm: run {describe(data)} waits for its confirmation; its process "
                "is gone: 'hostsetup confirm' keeps it, the next start after that reverts it")
            return None
        say(f"confirm: run {describe(data)} waits for its confirmation ({math.ceil(left)} s "
            "left; its process is gone): waiting for it first")
        waiter = Waiter(rec, float(data["within"]), data.get("probe") or {},
                        float(data["deadline"]))
        while (decision := waiter.poll()) is None:
            time.sleep(POLL)
        if decision == "kept":
            say(f"confirm: run {rec.run}: confirmed ({waiter.how}): kept")
            return Outcome(rec.run, waiter.within, kept=True, how=waiter.how)
    else:
        why = {"applying": "its apply was interrupted after a risky operation",
               "reverting": "its revert was interrupted"}.get(
            data["state"], f"not confirmed within {data.get('within')} s")
        rec.update(lambda d: _set(d, str(data["state"]), state="reverting",
                                  how=d.get("how") or why))
    say(f"confirm: run {rec.run} ({data.get('host', '?')}): reverting its risky operations")
    out = revert(rec, backends)
    say(f"confirm: run {rec.run}: {out.text()}")
    for err in out.errors:
        say(f"confirm: ! {err}")
    return out


# ------------------------------------------------------------------ a dropped session


class Console:
    """The CLI's lines: :meth:`say` prints one (and logs it); :meth:`tick` shows the
    countdown, rewriting one line on a terminal."""

    def __init__(self) -> None:
        self.open_line = False

    def say(self, text: str) -> None:
        """Print a line (after the countdown's, if one is shown)."""
        log.info("%s", text)
        print(("\n" if self.open_line else "") + text, flush=True)
        self.open_line = False

    def tick(self, text: str) -> None:
        """The countdown: the same line rewritten on a terminal, else a line."""
        if not sys.stdout.isatty():
            if text.endswith(("0 s unless confirmed", "5 s unless confirmed")):
                self.say(text)  # a log or a pipe gets a line every 5 seconds
            return
        print(f"\r{text}\033[K", end="", flush=True)
        self.open_line = True


class Tolerant:
    """A text stream that survives its terminal going away: on EPIPE or EIO (the
    operator's SSH session died) stdout and stderr are pointed at /dev/null and the
    text goes to the log instead; SIGHUP does the same (:func:`survive_hangup`)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            detach(f"output lost ({exc.strerror})")
            log.info("%s", text.strip())
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO):
                raise
            detach(f"output lost ({exc.strerror})")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def detach(why: str) -> None:
    """Point stdout and stderr at /dev/null (their terminal is gone)."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            os.dup2(null, fd)
    finally:
        os.close(null)
    log.warning("terminal gone (%s): output goes to the log only", why)


def survive_hangup() -> None:
    """From now on, a hang-up (the SSH session carrying this process died) does not
    end the process: its output goes to the log.  Main thread only."""
    if not isinstance(sys.stdout, Tolerant):
        sys.stdout = Tolerant(sys.stdout)  # type: ignore[assignment]
        sys.stderr = Tolerant(sys.stderr)  # type: ignore[assignment]
    signal.signal(signal.SIGHUP, lambda *_a: detach("SIGHUP"))

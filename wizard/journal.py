"""The run journal: every operation of an apply, written down before and after it.

One file per run, ``<state dir>/journal/<RUN>.jsonl`` (RUN is the UTC start time
and a random suffix, ``20250102T030405.123Z-1a2b3c``, so names sort by time).  The
state directory is ``$HOSTSETUP_STATE_DIR``, else ``/var/lib/hostsetup`` for root
(``$XDG_STATE_HOME/hostsetup`` for another user).  It must be a real directory
(not a symbolic link) owned by the user running hostsetup and writable by no one
else; ``journal/`` in it is made mode 0700 and each run file 0600 (the records
hold the answers and drop-in contents).

A run file is JSON lines, each written whole and ``fsync``-ed before the program
goes on:

- ``{"t": "run", ...}`` the header: id, time, host, mode (``apply``, ``resume``,
  ``undo``), how it was started (``via``), the hostsetup version, the answers
  (secrets as their references ``env:``/``file:``, never a value: checked here),
  and the run it resumes or undoes;
- ``{"t": "step", ...}`` a step starts applying (with its number of operations);
- ``{"t": "begin", ...}`` an operation is about to be carried out: its change,
  its ``do`` and ``undo`` commands; ``{"t": "end", ...}`` its result (an error or
  nothing), matched by ``n``;
- ``{"t": "result", ...}`` each step's result as in the JSON report, then
  ``{"t": "end_run", ...}`` with the exit code: the run is finished.  Later
  processes append ``{"t": "mark", "state": "resumed"|"undone"|"abandoned"}``, or
  ``"interrupted"`` again after a resume that applied nothing.

A run file without ``end_run`` or ``mark`` whose process is gone (the running
process holds an exclusive ``flock`` on it) is an interrupted run.  Each file is
bounded (:data:`JOURNAL_LIMIT`): the room every planned operation needs is
reserved before anything is applied, so a run fails before it starts rather than
mid-way; the last :data:`KEEP` runs are kept, older finished ones are deleted
when a run starts.  The JSON report of a run is read back from its file
(:meth:`JournalRun.report`).

For tests only: with ``HOSTSETUP_TEST=1``, ``HOSTSETUP_TEST_KILL_AT=N`` makes the
process SIGKILL itself at operation boundary N of each run it journals: boundary
2k-1 is right after operation k's ``begin`` is on disk (the operation not carried
out), boundary 2k right after operation k was carried out, before its ``end``.

Standard library only: the CLI's start-up check imports it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wizard import __version__

if TYPE_CHECKING:
    from steps.base import Operation
    from wizard.answers import Answers
    from wizard.runner import Run

JOURNAL_LIMIT = 8 * 1024 * 1024  # bytes per run file
KEEP = 30  # run files kept (the newest; an unfinished one is never deleted)
TEXT_LIMIT = 2000  # characters of one error or note kept in a record
END_ROOM = 200  # bytes reserved per operation for its end record (an error is cut to fit)
RESULT_ROOM = 64 * 1024  # bytes reserved per step for its result record
TAIL = 64 * 1024  # bytes read from a file's end to tell whether it is finished
RUN_NAME = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}$")
SUFFIX = ".jsonl"
FINAL = ("end_run", "mark")  # records after which a run is settled


class JournalError(Exception):
    """The journal cannot be used (its directory refused, a run file unreadable or
    damaged, a run not found); the message names the path and what is expected."""


class JournalFull(JournalError):
    """A run would exceed :data:`JOURNAL_LIMIT`: refused before anything is applied."""


class RunBusy(JournalError):
    """Another process is running that run now (it holds the run file's lock)."""


# ---------------------------------------------------------------- the directory


STATE_ENV = "HOSTSETUP_STATE_DIR"


def state_dir() -> Path:
    """``$HOSTSETUP_STATE_DIR``, else /var/lib/hostsetup (root) or the user's state dir:
    the journal's and the confirmation records' (wizard/confirm.py) parent."""
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/hostsetup")
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state") / "hostsetup"


def safe_dir(path: Path, private: bool) -> None:
    """Make ``path`` (0700) if missing; refuse a link, a non-directory, another
    owner, or a directory others (or, if ``private``, the group) can write to.
    Raises :class:`JournalError` naming the directory and what is expected."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise JournalError(f"state directory {path}: cannot create it: {exc.strerror} "
                           f"(set {STATE_ENV} to a directory of yours)") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise JournalError(f"state directory {path}: cannot read it: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        what = "a symbolic link, not a directory" if stat.S_ISLNK(st.st_mode) \
            else "not a directory"
        raise JournalError(f"state directory {path}: refused: it is {what} "
                           "(expected a real directory)")
    if st.st_uid != os.geteuid():
        raise JournalError(f"state directory {path}: refused: owned by uid {st.st_uid}, "
                           f"expected uid {os.geteuid()} (the user running hostsetup)")
    if st.st_mode & (0o077 if private else 0o022):
        raise JournalError(f"state directory {path}: refused: mode "
                           f"{stat.S_IMODE(st.st_mode):04o} is not private: it lets others "
                           f"write or read (expected "
                           f"{'0700' if private else 'no write for group or others'})")


def state_subdir(name: str, base: Path | None = None) -> Path:
    """``<state dir>/<name>`` (``journal``, ``confirm``), made and checked: the state
    directory not writable by others, the sub-directory private (see the module
    docstring)."""
    base = base or state_dir()
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"state directory {base}: cannot create it: {exc.strerror}") from None
    safe_dir(base, private=False)
    safe_dir(base / name, private=True)
    return base / name


def journal_dir(base: Path | None = None) -> Path:
    """``<state dir>/journal``, made and checked."""
    return state_subdir("journal", base)


def run_ids(directory: Path) -> list[str]:
    """The runs in ``directory``, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n[:-len(SUFFIX)] for n in names
                  if n.endswith(SUFFIX) and RUN_NAME.match(n[:-len(SUFFIX)]))


# ---------------------------------------------------------------- writing


def answers_document(answers: Answers) -> dict[str, Any]:
    """The answers a run used, as plain data that validates again (each section as
    its model holds it, the command lists): what ``resume`` and ``undo`` reuse."""
    doc: dict[str, Any] = {"version": 1}
    for name, section in answers.sections.items():
        doc[name] = section.model_dump(mode="json")
    for name, commands in answers.commands.items():
        doc[name] = commands.model_dump(mode="json", exclude_none=True)
    confirm = getattr(answers, "confirm", None)  # confirm-or-revert's window, when answered
    if confirm is not None:
        doc["confirm"] = confirm.model_dump(mode="json", exclude_none=True)
    return doc


def check_references(doc: dict[str, Any]) -> None:
    """Refuse an answers document holding a secret that is not a reference."""
    from steps.base import SECRET_PATTERN
    from wizard.answers import secret_paths

    def values(node: Any, keys: tuple[str, ...]) -> Iterator[Any]:
        if not keys:
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from values(item, keys)
        elif isinstance(node, dict) and keys[0] in node:
            yield from values(node[keys[0]], keys[1:])

    for path in secret_paths():
        for value in values(doc, path):
            if value is not None and not (isinstance(value, str) and SECRET_PATTERN.match(value)):
                raise JournalError(f"{'.'.join(path)}: a secret that is not a reference "
                                   "cannot be journaled (value not shown)")


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":"), default=str) + "\n").encode()


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else f"{text[:TEXT_LIMIT]}... [cut]"


def _kill_at() -> int:
    """The test-only kill boundary (0: none); needs HOSTSETUP_TEST=1 as well."""
    if os.environ.get("HOSTSETUP_TEST") != "1":
        return 0
    value = os.environ.get("HOSTSETUP_TEST_KILL_AT", "")
    return int(value) if value.isdigit() else 0


class RunJournal:
    """One run's journal file, open for appending and locked while the run lives.

    Implements :class:`steps.base.Journal` (``begin``/``end`` around each
    operation); the runner adds ``step`` records, reserves room (``reserve``)
    and ends the file with the results (``finish``).
    """

    def __init__(self, directory: Path, run_id: str, fd: int, limit: int) -> None:
        self.directory, self.id, self.fd, self.limit = directory, run_id, fd, limit
        self.size = os.fstat(fd).st_size
        self.reserved = 0
        self.seq = 0
        self.open: list[tuple[int, str, Operation]] = []  # begun, not ended yet
        self.boundaries = 0
        self.kill_at = _kill_at()

    @property
    def path(self) -> Path:
        return self.directory / (self.id + SUFFIX)

    @classmethod
    def create(cls, mode: str, answers: dict[str, Any], *, via: str = "cli",
               resumes: str = "", undoes: str = "", fleet_run: str = "",
               base: Path | None = None, limit: int = JOURNAL_LIMIT,
               keep: int = KEEP) -> RunJournal:
        """A new run file with its header, synced; older runs pruned to ``keep``."""
        check_references(answers)
        directory = journal_dir(base)
        prune(directory, keep - 1)
        now = time.time()
        run_id = (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
                  + f".{int(now * 1000) % 1000:03d}Z-{secrets.token_hex(3)}")
        fd = os.open(directory / (run_id + SUFFIX),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            _lock(fd)
        except JournalError:
            os.close(fd)
            raise
        _sync_dir(directory)  # the new name survives a power cut too
        journal = cls(directory, run_id, fd, limit)
        header = {"t": "run", "id": run_id, "time": now, "host": socket.gethostname(),
                  "mode": mode, "via": via, "version": __version__, "pid": os.getpid(),
                  "resumes": resumes, "undoes": undoes, "fleet_run": fleet_run,
                  "answers": answers}
        try:
            journal._write(header)
        except JournalFull:
            journal.close()
            raise
        return journal

    def _write(self, record: dict[str, Any], reserved: bool = False) -> None:
        data = _line(record)
        room = self.limit - self.size - (0 if reserved else self.reserved)
        if len(data) > room:
            raise JournalFull(f"run journal {self.path}: a record of {len(data)} bytes "
                              f"would pass its limit of {self.limit} bytes")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
            os.fsync(self.fd)
        except OSError as exc:
            raise JournalError(f"run journal {self.path}: cannot write: {exc.strerror}") from None
        self.size += len(data)
        if reserved:
            self.reserved = max(self.reserved - len(data), 0)

    def reserve(self, ops: list[Operation], steps: int = 1) -> None:
        """Keep room for ``ops`` (begin, end, a possible revert of each) and ``steps``
        results; raises :class:`JournalFull` (nothing applied yet) if it is not there."""
        need = steps * RESULT_ROOM + sum(
            2 * (len(_line({"t": "begin", "step": "", "n": 0, "time": 0.0,
                            "op": op.as_dict()})) + END_ROOM) for op in ops)
        if self.size + self.reserved + need > self.limit:
            raise JournalFull(
                f"run journal limit: this run's {len(ops)} operation(s) need about "
                f"{need} bytes, the journal {self.path} has "
                f"{self.limit - self.size - self.reserved} of its {self.limit} left; "
                "nothing was applied (split the answers into smaller runs)")
        self.reserved += need

    def step(self, name: str, ops: int) -> None:
        """Step ``name`` starts carrying out its ``ops`` operations."""
        self._write({"t": "step", "step": name, "ops": ops, "time": time.time()}, True)

    def begin(self, step: str, op: Operation) -> None:
        """Written and synced before ``op`` is carried out (:class:`steps.base.Journal`)."""
        self.seq += 1
        self._write({"t": "begin", "step": step, "n": self.seq, "time": time.time(),
                     "op": op.as_dict()}, True)
        self.open.append((self.seq, step, op))
        self._boundary()

    def end(self, step: str, op: Operation, error: str = "") -> None:
        """``op`` was carried out (``error`` empty) or failed; an error longer than the
        room left is cut (the record itself always fits: its room was reserved)."""
        self._boundary()
        n = next((i for i, (_n, s, o) in enumerate(self.open) if s == step and o == op), None)
        seq = self.open.pop(n)[0] if n is not None else 0
        record = {"t": "end", "step": step, "n": seq, "time": time.time(), "error": ""}
        room = self.limit - self.size - len(_line(record))
        error = _cut(error)
        if len(json.dumps(error)) > room:  # a character is at most 6 bytes in JSON (\uXXXX)
            error = error[:max(room // 6 - 10, 0)] + "... [cut]"
        self._write({**record, "error": error}, True)

    def _boundary(self) -> None:
        self.boundaries += 1
        if self.boundaries == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def finish(self, run: Run) -> None:
        """Each step's result, then the end record; the file is closed."""
        for result in run.steps:
            data = result.as_dict()
            data["errors"] = [_cut(e) for e in data["errors"]][:20]
            data["notes"] = [_cut(n) for n in data["notes"]][:20]
            try:
                self._write({"t": "result", **data}, True)
            except JournalFull:  # past its reserved room: the step's status and errors
                self._write({"t": "result", **data, "changes": [], "errors": [
                    *data["errors"][:3], "result cut: the run journal is full"],
                    "notes": []}, True)
        self._write({"t": "end_run", "exit_code": run.exit_code, "started": run.started,
                     "duration": round(run.finished - run.started, 4), "time": time.time()},
                    True)
        self.close()

    def close(self) -> None:
        """Release the lock (an unfinished file is then an interrupted run)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _lock(fd: int, wait: float = 5.0) -> None:
    """The run's lock, held while it lives.  The file is new: only a reader checking
    whether it is busy can hold it, for an instant; the wait is bounded anyway."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise JournalError("cannot lock the new run journal (held by a reader "
                                   f"for more than {wait:g} s)") from None
            time.sleep(0.01)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- reading


def operation(data: dict[str, Any]) -> Operation:
    """An :class:`~steps.base.Operation` from its journaled ``as_dict``."""
    from steps.base import Change, Operation

    return Operation(Change(**data["change"]), data["do"], data.get("undo"),
                     data.get("risky", ""))


@dataclass
class Entry:
    """One journaled operation: its ``begin`` and whether (and how) it ended."""

    step: str
    n: int
    op: dict[str, Any]
    ended: bool = False
    error: str = ""

    def describe(self) -> str:
        change = self.op.get("change", {})
        text = f"{self.step}: {change.get('action')} {change.get('target')}"
        return text + (f": {change['detail']}" if change.get("detail") else "")


@dataclass
class JournalRun:
    """A run file read back: its header, its records and whether a process holds it."""

    id: str
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    busy: bool = False

    @property
    def header(self) -> dict[str, Any]:
        return self.records[0]

    @property
    def mode(self) -> str:
        return str(self.header.get("mode", "?"))

    @property
    def answers(self) -> dict[str, Any]:
        return dict(self.header.get("answers") or {})

    @property
    def state(self) -> str:
        """``running``, ``interrupted``, ``finished``, or the last mark's state."""
        marks = [r for r in self.records if r.get("t") == "mark"]
        if marks:
            return str(marks[-1].get("state"))
        if any(r.get("t") == "end_run" for r in self.records):
            return "finished"
        return "running" if self.busy else "interrupted"

    def when(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.header.get("time", 0)))

    def entries(self) -> list[Entry]:
        """Every operation begun, in order, with its end if recorded."""
        found: dict[int, Entry] = {}
        for r in self.records:
            if r.get("t") == "begin":
                found[r["n"]] = Entry(r["step"], r["n"], r["op"])
            elif r.get("t") == "end" and r.get("n") in found:
                entry = found[r["n"]]
                entry.ended, entry.error = True, str(r.get("error") or "")
        return list(found.values())

    def steps_started(self) -> list[str]:
        """The steps that started applying, in order."""
        return [r["step"] for r in self.records if r.get("t") == "step"]

    def last_begun(self) -> str:
        """The last operation begun (or step started), for the one-line notice."""
        for r in reversed(self.records):
            if r.get("t") == "begin":
                return Entry(r["step"], r["n"], r["op"]).describe()
            if r.get("t") == "step":
                return f"{r['step']}: started, no operation recorded"
        return "none (no operation was begun)"

    def applied_something(self) -> bool:
        """True if an operation was begun, or a step started applying."""
        return any(r.get("t") in ("begin", "step") for r in self.records)

    def notice(self) -> str:
        """One line naming the run, when, and the last operation begun."""
        return (f"run {self.id} ({self.mode}, {self.when()}) was interrupted; "
                f"last operation begun: {self.last_begun()}")

    def report(self) -> dict[str, Any]:
        """The run's JSON report (as ``--report`` writes it), from its records; an
        interrupted run is reported from its operations (``"state": "interrupted"``)."""
        h = self.header
        base = {"version": 1, "mode": self.mode, "host": h.get("host", "?"), "run": self.id,
                "state": self.state}
        end = next((r for r in reversed(self.records) if r.get("t") == "end_run"), None)
        if end is not None:
            steps = [{k: v for k, v in r.items() if k != "t"}
                     for r in self.records if r.get("t") == "result"]
            return {**base, "exit_code": end["exit_code"], "started": end["started"],
                    "duration": end["duration"], "steps": steps}
        last = max((float(r.get("time", 0)) for r in self.records), default=0.0)
        return {**base, "exit_code": None, "last_begun": self.last_begun(),
                "started": h.get("time", 0),
                "duration": round(last - float(h.get("time", 0)), 4),
                "steps": self._steps_so_far()}

    def _steps_so_far(self) -> list[dict[str, Any]]:
        """Per step started, what its operations show (no result was recorded)."""
        started = self.steps_started()
        planned = {r["step"]: r.get("ops", 0) for r in self.records if r.get("t") == "step"}
        entries = self.entries()
        out = []
        for i, name in enumerate(started):
            mine = [e for e in entries if e.step == name]
            errors = [e.error for e in mine if e.error]
            last = i == len(started) - 1
            status = "failed" if errors else "applied"
            if last and (any(not e.ended for e in mine) or len(mine) < planned.get(name, 0)):
                status = "interrupted"
                errors.append(f"interrupted: the last record is of '{self.last_begun()}' "
                              "(run 'hostsetup resume' or 'hostsetup undo')")
            out.append({"name": name, "status": status,
                        "changes": [e.op.get("change", {}) for e in mine],
                        "errors": errors, "notes": [], "durations": {}})
        return out


def records(data: bytes, path: Path) -> list[dict[str, Any]]:
    """JSON lines.  A line cut short (a power cut mid-write) is left out when only
    marks follow it (written by later processes); anywhere else it is damage."""
    out: list[dict[str, Any]] = []
    cut = 0  # the line number of a line cut short, not yet followed by a record
    for i, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict):
            cut = cut or i
            continue
        if cut and record.get("t") != "mark":
            raise JournalError(f"{path}: damaged at line {cut} (not a JSON record)")
        out.append(record)
    return out


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise JournalError(f"no run journal {path}") from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot read: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise JournalError(f"{path}: not a regular file")
    return fd


def _busy(fd: int) -> bool:
    """True if another process holds the run's lock (it is running)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def read_path(path: Path, limit: int = JOURNAL_LIMIT + TAIL) -> JournalRun:
    """Read a run file (a regular file of at most ``limit`` bytes)."""
    fd = _open(path)
    try:
        busy = _busy(fd)
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise JournalError(f"{path}: larger than {limit} bytes: not a run journal")
    found = records(data, path)
    if not found or found[0].get("t") != "run":
        raise JournalError(f"{path}: not a hostsetup run journal (no run header)")
    return JournalRun(path.name.removesuffix(SUFFIX), path, found, busy)


def read_run(run_id: str, base: Path | None = None) -> JournalRun:
    """The run ``run_id`` of the state directory's journal."""
    if not RUN_NAME.match(run_id):
        raise JournalError(f"'{run_id}' is not a run id (e.g. 20250102T030405.123Z-1a2b3c; "
                           "'hostsetup undo --list' lists them)")
    return read_path(journal_dir(base) / (run_id + SUFFIX))


def _settled(path: Path) -> bool:
    """Cheap: does the file end with an ``end_run`` or a ``mark`` record?"""
    fd = _open(path)
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(size - TAIL, 0), os.SEEK_SET)
        tail = os.read(fd, TAIL)
    finally:
        os.close(fd)
    for line in reversed(tail.split(b"\n")):
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        # A mark "interrupted" (a resume that applied nothing) leaves the run unsettled.
        return isinstance(record, dict) and record.get("t") in FINAL \
            and record.get("state") != "interrupted"
    return False


def unsettled(base: Path | None = None) -> list[JournalRun]:
    """Runs with neither an end record nor a mark, oldest first: interrupted ones and
    those running now (``busy``)."""
    directory = journal_dir(base)
    return [read_path(directory / (i + SUFFIX)) for i in run_ids(directory)
            if not _settled(directory / (i + SUFFIX))]


def runs(base: Path | None = None) -> list[JournalRun]:
    """Every run in the journal, oldest first."""
    directory = journal_dir(base)
    return [read_path(directory / (i + SUFFIX)) for i in run_ids(directory)]


def mark(run: JournalRun, state: str, by: str = "") -> None:
    """Append a mark (``resumed``/``undone``/``abandoned``) to a run file; refuses a run
    another process holds (:class:`RunBusy`)."""
    fd = os.open(run.path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"run {run.id} is running now (another process holds it)") from None
        size = os.fstat(fd).st_size
        # A line cut short by a power cut stays apart from the mark.
        lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        os.write(fd, lead + _line({"t": "mark", "state": state, "by": by, "time": time.time()}))
        os.fsync(fd)
    finally:
        os.close(fd)
    run.records.append({"t": "mark", "state": state, "by": by})


def prune(directory: Path, keep: int) -> list[str]:
    """Delete the oldest settled run files beyond the newest ``keep``; returns their ids."""
    ids = run_ids(directory)
    gone = []
    for run_id in ids[:max(len(ids) - keep, 0)]:
        path = directory / (run_id + SUFFIX)
        with contextlib.suppress(JournalError):
            if _settled(path):
                path.unlink()
                gone.append(run_id)
    return gone

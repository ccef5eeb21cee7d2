"""Fleet runs: the same answers on many hosts, through Celery agents and Redis.

Each host runs ``hostsetup agent``: a Celery worker that consumes only its
own queue, ``hostsetup.host.<name>``, and runs one task, ``hostsetup.run``,
a thin wrapper around :func:`wizard.runner.execute` (the runner of ``plan``
and ``apply``).  The operator's ``hostsetup fleet plan|apply`` sends each
host its merged answers (JSON), waits with bounds, and writes one roll-up
report.

Safe messaging: JSON only (a pickle payload is refused before it is
decoded), only our task name is registered (Celery's built-in tasks are
removed, so any other name is refused as unregistered), ``acks_late`` with
``task_reject_on_worker_lost`` (a task whose worker process dies is
redelivered), a broker visibility timeout above the task time limit (a task
still running is never handed out twice), results that expire.

``fleet apply``: plan on every host first; if any host's plan is invalid,
unreachable, failed or has no agent, nothing is applied.  Then apply in
batches (a canary batch, then the rest), stopping once the failures exceed
``max_fail`` (a count, or a percentage of the hosts).  The run's state is
kept in Redis, so ``fleet status RUN`` works for a ``--detach``-ed run.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from steps.base import SECRET_PATTERN, resolve_secret
from wizard.exits import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_INTERRUPTED_RUN,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from wizard.procs import alive

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

    from wizard.answers import Answers

log = logging.getLogger("hostsetup")

TASK_RUN = "hostsetup.run"
OUR_TASKS = frozenset({TASK_RUN})
QUEUE_PREFIX = "hostsetup.host."
CONFIG_FILE = Path("/etc/hostsetup/agent.conf")
# Redis hands an unacknowledged task out again after the visibility timeout;
# a task's hard time limit is kept below it (see time_limit()), so a task that
# is still running is never handed to a second worker.
TASK_TIME_LIMIT = 3600
VISIBILITY_TIMEOUT = 4200
RESULT_EXPIRES = 7 * 24 * 3600
RUN_KEY = "hostsetup:fleet:run:"

# Per-host outcome -> its weight for the fleet's exit code (highest wins).
STATUS_EXIT = {"unchanged": EXIT_OK, "applied": EXIT_OK, "pending": EXIT_PENDING,
               "resumed": EXIT_OK, "undone": EXIT_OK,
               "failed": EXIT_FAILED, "unknown": EXIT_FAILED, "skipped": EXIT_FAILED,
               "invalid": EXIT_INVALID, "unreachable": EXIT_UNREACHABLE,
               "no agent": EXIT_UNREACHABLE, "interrupted run": EXIT_INTERRUPTED_RUN,
               "not confirmed": EXIT_FAILED}
EXIT_PRIORITY = [EXIT_INVALID, EXIT_UNREACHABLE, EXIT_INTERRUPTED_RUN, EXIT_FAILED,
                 EXIT_PENDING, EXIT_OK]
RUN_STATUS = {EXIT_OK: "unchanged", EXIT_PENDING: "pending", EXIT_INVALID: "invalid",
              EXIT_UNREACHABLE: "unreachable", EXIT_FAILED: "failed", EXIT_INTERRUPTED: "failed",
              EXIT_INTERRUPTED_RUN: "interrupted run"}
# A host's status when its task of that mode ended well.
DONE = {"apply": "applied", "resume": "resumed", "undo": "undone"}
MODES = ("plan", "apply", "resume", "undo", "confirm")


class FleetError(Exception):
    """The fleet run cannot start: bad broker URL or configuration (exit 2)."""


class BrokerUnreachable(FleetError):
    """Redis does not answer (exit 5)."""


def queue_name(host: str) -> str:
    """The queue only ``host``'s agent consumes."""
    return QUEUE_PREFIX + host


# ---------------------------------------------------------------- broker config


@dataclass(frozen=True)
class BrokerConfig:
    """How to reach Redis: URL (no password in it), a password reference, TLS files."""

    url: str
    password: str | None = None  # a secret reference (env:NAME / file:PATH), never a value
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    visibility_timeout: int = VISIBILITY_TIMEOUT

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise FleetError(f"broker '{safe_url(self.url)}' is not a redis:// or rediss:// URL "
                             "(e.g. rediss://redis.example.net:6380/0)")
        if self.password is not None and not SECRET_PATTERN.match(self.password):
            # Never echo it: it may be the password itself, typed in clear.
            raise FleetError("broker password must be a secret reference env:NAME or "
                             "file:PATH (value not shown)")

    def full_url(self) -> str:
        """The URL with the password resolved (for the Redis client only, never logged)."""
        if self.password is None:
            return self.url
        try:
            secret = resolve_secret(self.password)
        except ValueError as exc:
            raise FleetError(f"broker password: {exc}") from None
        parts = urlsplit(self.url)
        netloc = f"{quote(parts.username or '', safe='')}:{quote(secret, safe='')}@" \
            + parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=netloc))

    def ssl_options(self) -> dict[str, Any] | None:
        """TLS settings for ``rediss://`` (the server is always verified)."""
        if urlsplit(self.url).scheme != "rediss":
            return None
        opts: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        for key in ("ca_certs", "certfile", "keyfile"):
            if getattr(self, key):
                opts[f"ssl_{key}"] = getattr(self, key)
        return opts


def safe_url(url: str) -> str:
    """``url`` with any password in it masked, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def load_config(path: Path = CONFIG_FILE) -> dict[str, str]:
    """The ``[agent]`` section of ``agent.conf`` (empty when the file does not exist)."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(), source=str(path))
    except FileNotFoundError:
        return {}
    except (OSError, configparser.Error) as exc:
        raise FleetError(f"{path}: {exc}") from None
    return dict(parser["agent"]) if parser.has_section("agent") else {}


def broker_config(url: str | None, password: str | None, conf: dict[str, str],
                  env: dict[str, str]) -> BrokerConfig:
    """Command line first, then the environment (HOSTSETUP_REDIS_*), then agent.conf."""
    if url and urlsplit(url).password is not None:
        raise FleetError(f"--broker {safe_url(url)}: a password on the command line is "
                         "visible to every user (ps); give it as --password env:NAME or "
                         "file:PATH, or in agent.conf")
    url = url or env.get("HOSTSETUP_REDIS_URL") or conf.get("broker")
    if not url:
        raise FleetError("no broker: give --broker URL, set HOSTSETUP_REDIS_URL, or set "
                         f"'broker' in {CONFIG_FILE}")
    try:
        vt = int(conf.get("visibility_timeout", VISIBILITY_TIMEOUT))
    except ValueError:
        raise FleetError("agent.conf visibility_timeout: expected seconds (an integer)") from None
    return BrokerConfig(
        url=url,
        password=password or env.get("HOSTSETUP_REDIS_PASSWORD") or conf.get("password"),
        ca_certs=conf.get("ca_certs"), certfile=conf.get("certfile"),
        keyfile=conf.get("keyfile"), visibility_timeout=vt,
    )


# ---------------------------------------------------------------- the Celery app


def make_app(cfg: BrokerConfig) -> Celery:
    """The Celery app of both sides: JSON only, our one task, safe acknowledgement."""
    from celery import Celery

    url = cfg.full_url()
    app = Celery("hostsetup", broker=url, backend=url, set_as_current=False)
    transport = {"visibility_timeout": cfg.visibility_timeout,
                 "socket_connect_timeout": 5, "socket_timeout": 30}
    app.conf.update(
        task_serializer="json", result_serializer="json", event_serializer="json",
        accept_content=["json"], result_accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1, task_track_started=True,
        task_time_limit=time_limit(cfg.visibility_timeout),
        broker_transport_options=transport, result_backend_transport_options=transport,
        redis_socket_connect_timeout=5, redis_socket_timeout=30, redis_retry_on_timeout=True,
        result_expires=RESULT_EXPIRES, broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE_PREFIX + "unrouted", worker_hijack_root_logger=False,
        broker_use_ssl=cfg.ssl_options(), redis_backend_use_ssl=cfg.ssl_options(),
        # kombu's Redis transport, but one undecodable queue entry is dropped, not fatal.
        broker_transport="wizard.fleet_transport:Transport",
    )
    app.task(name=TASK_RUN, bind=True)(run_task)
    # Only our task is accepted: drop Celery's built-in ones (celery.chord,
    # celery.accumulate, ...) so a message naming them is refused as unregistered.
    for name in [n for n in app.tasks if n not in OUR_TASKS]:
        app.tasks.unregister(name)
    return app


def time_limit(visibility_timeout: int) -> int:
    """A task's hard time limit: safely below the visibility timeout."""
    return max(visibility_timeout * 7 // 8, 1)


AGENT: dict[str, list[str]] = {"names": []}  # the host(s) this agent serves (run_agent)


def run_task(task: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """The task: validate this host's answers and run them with the local runner."""
    from backends.bundle import RealBackends
    from wizard import answers as answers_mod

    host, mode = payload.get("host"), payload.get("mode")
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    base: dict[str, Any] = {"version": 1, "mode": mode, "host": host,
                            "agent": task.request.hostname, "machine": socket.gethostname(),
                            "redelivered": redelivered, "steps": []}
    if host not in AGENT["names"] or mode not in MODES:
        return {**base, "exit_code": EXIT_USAGE,
                "errors": [f"refused: task for host {host!r} mode {mode!r} reached the "
                           f"agent of {', '.join(AGENT['names'])}"]}
    try:
        answers = answers_mod.validate(payload.get("answers"))
    except answers_mod.AnswersError as exc:
        return {**base, "exit_code": EXIT_INVALID, "errors": exc.problems}

    own = {k: base[k] for k in ("host", "agent", "machine", "redelivered")}
    if mode == "confirm":
        return {**base, **confirm_task(payload), **own}
    task_id = task.request.id  # Celery's request is per thread: taken here, not there
    progress = Progress(lambda frac, text: task.update_state(
        task_id=task_id, state="PROGRESS", meta={"frac": frac, "text": text}))
    backends = RealBackends()
    try:
        report = journaled_task(mode, answers, payload, backends, progress)
    finally:
        backends.close()
        progress.close()
    return {**base, **report, **own}


class Progress:
    """A task's progress lines, sent by a thread of its own, the latest only: the
    apply never waits for the broker (a change may just have cut the path to it;
    each send may then block up to the socket timeout).  Best effort."""

    def __init__(self, send: Callable[[float, str], None]) -> None:
        self.send = send
        self.lock = threading.Lock()
        self.latest: tuple[float, str] | None = None
        self.sending: threading.Thread | None = None
        self.closed = False

    def __call__(self, frac: float, text: str) -> None:
        with self.lock:
            if self.closed:
                return
            self.latest = (frac, text)
            if self.sending is not None:
                return
            self.sending = threading.Thread(target=self._drain, name="progress", daemon=True)
            self.sending.start()

    def close(self, timeout: float = 40) -> None:
        """No more lines; wait (bounded: about the broker's socket timeout) for the one
        being sent, so that it does not land after the task's result and hide it."""
        with self.lock:
            self.closed, self.latest, thread = True, None, self.sending
        if thread is not None:
            thread.join(timeout)

    def _drain(self) -> None:
        while True:
            with self.lock:
                item, self.latest = self.latest, None
                if item is None:
                    self.sending = None
                    return
            try:
                self.send(*item)
            except Exception:  # noqa: BLE001 - progress is best effort (broker may be away)
                pass


def confirm_task(payload: dict[str, Any]) -> dict[str, Any]:
    """``confirm``: keep the risky changes of this host's run ``target`` that waits for
    its confirmation (wizard/confirm.py).  That this task reached the agent through the
    broker is the proof that the control plane still reaches the host."""
    from wizard import confirm

    how = f"fleet run {payload.get('run_id')}: its confirmation reached the agent"
    try:
        line = confirm.confirm(confirm.state_dir(), str(payload.get("target") or ""), how)
    except confirm.ConfirmError as exc:
        return {"exit_code": exc.code, "errors": [str(exc)]}
    return {"exit_code": EXIT_OK, "notes": [line]}


def windowed_apply(answers: Answers, payload: dict[str, Any], backends: Any,
                   progress: Callable[[float, str], None], run_journal: Any) -> dict[str, Any]:
    """The agent's apply, under the confirmation window of ``fleet apply
    --confirm-within`` or the answers' ``confirm:``.  When risky operations were
    carried out, the window opens on the host and its keeper (a process of its own)
    waits: for the controller's ``confirm`` task (through the broker), the answers'
    probe, or ``hostsetup confirm`` on the host; without one in time it reverts them.
    The report's ``confirm`` says the window is open (``state: waiting``, the
    ``run``, ``within``)."""
    from wizard import confirm, journal
    from wizard.runner import execute

    tracker = confirm.Tracker.of(run_journal, payload.get("confirm_within"), answers)
    window = tracker.window
    notes: list[str] = []
    try:
        if window is not None:
            confirm.folder(window.state)  # refused before anything is changed
        for out in confirm.settle(confirm.state_dir(), backends, notes.append, wait=False):
            notes.append(f"an earlier run's window: {out.text()}")
        execute(answers, "apply", backends, progress, journal=tracker)
        report = journal.read_path(run_journal.path).report()
        if tracker.risky and tracker.record is not None and window is not None:
            waiter = confirm.Waiter(tracker.record, window.within, window.probe)
            confirm.start_keeper(tracker.record, own_unit=True)  # outlives the agent
            tracker.record.release()  # the keeper decides from now on
            report["confirm"] = {"state": "waiting", "run": window.run, "within": window.within,
                                 "remaining": waiter.remaining(),
                                 "probe": confirm.probe_text(window.probe)}
        elif tracker.risky:
            notes.append(f"{len(tracker.risky)} operation(s) from the first risky one (~) "
                         "applied without a confirmation window (fleet apply "
                         "--confirm-within, or confirm: in the answers)")
    except confirm.ConfirmError as exc:
        return {"exit_code": exc.code, "errors": [*notes, f"confirm: {exc}"]}
    return {**report, "notes": [*report.get("notes", []), *notes]} if notes else report


def journaled_task(mode: str, answers: Answers, payload: dict[str, Any], backends: Any,
                   progress: Callable[[float, str], None]) -> dict[str, Any]:
    """The agent's side of a task with this host's run journal (wizard/journal.py):
    ``plan`` and ``apply`` first look for an interrupted run (exit 6 naming it, unless
    ``after_interrupted`` says what to do); ``apply`` is journaled (with the fleet run's
    id); ``resume`` finishes the interrupted run, ``undo`` reverts the last run (or
    ``target``: a run id of this host, or a fleet run id).  Returns the run report."""
    from wizard import journal, recovery
    from wizard.runner import execute

    said: list[str] = []
    after, fleet_run = payload.get("after_interrupted"), str(payload.get("run_id") or "")
    try:
        # This very task, handed out again after its worker process died: its own run
        # (same fleet run) is finished, as the redelivery means it to be.
        mine = [r for r in journal.unsettled() if fleet_run and not r.busy
                and r.header.get("fleet_run") == fleet_run] if mode == "apply" else []
        if mode in ("plan", "apply"):
            code = None if mode == "plan" and after else recovery.settle(
                after if mode == "apply" else None, backends, said.append, via="agent",
                skip=frozenset(r.id for r in mine))
            if code is not None:
                return {"exit_code": code, "errors": said}
            if mode == "plan":
                return execute(answers, "plan", backends, progress).as_dict()
            if mine:
                log.info("run %s of this task was interrupted: resuming it", mine[-1].id)
                return recovery.resume(mine[-1], backends, "agent", progress, fleet_run)[1] \
                    .report()
            run_journal = journal.RunJournal.create("apply", journal.answers_document(answers),
                                                    via="agent", fleet_run=fleet_run)
            return windowed_apply(answers, payload, backends, progress, run_journal)
        every = journal.runs()
        if mode == "resume":
            run = recovery.interrupted(None)
            if run is None:
                return {"exit_code": EXIT_OK, "notes": ["no interrupted run: nothing to resume"]}
            if run.mode != "undo":
                _done, resumed = recovery.resume(run, backends, "agent", progress, fleet_run)
                return resumed.report()
            target = recovery.origin(run, every)  # an interrupted undo: undo again
        else:
            target = fleet_target(str(payload.get("target") or ""), every)
        dry = bool(payload.get("dry_run"))
        code = None if dry else recovery.settle(None, backends, said.append, via="agent",
                                                skip=recovery.related(target, every))
        if code is not None:
            return {"exit_code": code, "errors": said}
        result = recovery.undo(target, backends, dry, "agent", every, fleet_run)
        report = result.journal.report() if result.journal else result.run().as_dict()
        return {**report, "notes": result.lines()}
    except recovery.Refused as exc:
        if exc.code == EXIT_OK:
            return {"exit_code": EXIT_OK, "notes": [str(exc)]}
        return {"exit_code": exc.code, "errors": [*said, str(exc)]}
    except journal.JournalError as exc:
        return {"exit_code": EXIT_USAGE, "errors": [*said, str(exc)]}


def fleet_target(target: str, every: list[Any]) -> Any:
    """The run a fleet undo reverts on this host: ``target`` (a run id of this host's
    journal, or the id of the fleet run that made it), or the last one; raises Refused."""
    from wizard import journal, recovery

    if not target or journal.RUN_NAME.match(target):
        return recovery.target_run(target or None)[0]
    mine = [r for r in every if r.header.get("fleet_run") == target
            and r.mode in recovery.UNDOABLE_MODES]
    if not mine:
        raise recovery.Refused(f"no run of fleet run {target} in this host's journal")
    return mine[-1]


LOG_LINE_LIMIT = 2000  # characters of one log record's message (and of its traceback)


def _cut(text: str) -> str:
    if len(text) <= LOG_LINE_LIMIT:
        return text
    return f"{text[:LOG_LINE_LIMIT]}... [{len(text)} characters, truncated]"


class BoundedRecords(logging.Filter):
    """Cut each record's message and traceback to :data:`LOG_LINE_LIMIT` characters.

    Celery logs a refused message (unregistered task name, pickle, malformed)
    with its headers and the exception naming it: a 20 MB header must not
    become a 20 MB log line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = _cut(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _cut(record.exc_text)
        return True


def _bound_handlers(logger: logging.Logger | None = None, **_kw: Any) -> None:
    """Add :class:`BoundedRecords` to every handler Celery set up (signal receiver)."""
    for lg in {logging.getLogger(), logger or logging.getLogger()}:
        for handler in lg.handlers:
            if not any(isinstance(f, BoundedRecords) for f in handler.filters):
                handler.addFilter(BoundedRecords())


def run_agent(cfg: BrokerConfig, names: list[str], loglevel: str = "INFO",
              concurrency: int = 1) -> int:
    """Run the agent of host ``names[0]`` in the foreground until stopped.

    One agent serves one host; several names (one worker consuming several
    host queues) are for benchmarks of the dispatch path.
    """
    from wizard.answers import HOST_NAME

    for name in names:
        if not re.match(HOST_NAME, name):
            raise FleetError(f"agent name '{name}' is not a host name (letters, digits, '.-_')")
    AGENT["names"] = list(names)
    from celery import signals

    # In the worker and in each pool process, once Celery has set up logging.
    signals.after_setup_logger.connect(_bound_handlers, weak=False)
    signals.after_setup_task_logger.connect(_bound_handlers, weak=False)
    app = make_app(cfg)
    worker = app.Worker(
        hostname=f"hostsetup@{names[0]}" + (f"+{len(names) - 1}" if len(names) > 1 else ""),
        queues=[queue_name(n) for n in names], concurrency=concurrency,
        pool_cls="prefork", optimization="fair", loglevel=loglevel,
        without_gossip=True, without_mingle=True, quiet=True,
    )
    log.info("agent %s consuming %s", names[0], ", ".join(queue_name(n) for n in names))
    worker.start()
    return int(worker.exitcode or 0)


# ---------------------------------------------------------------- operator side


def parse_max_fail(text: str) -> tuple[int, bool]:
    """``"2"`` -> (2, False); ``"10%"`` -> (10, True); raises ValueError with the rule."""
    value, percent = (text[:-1], True) if text.endswith("%") else (text, False)
    if not value.isdigit() or (percent and int(value) > 100):
        raise ValueError(f"max_fail '{text}': expected a count (e.g. 2) or a percentage "
                         "of the hosts (e.g. 10%)")
    return int(value), percent


def allowed_failures(max_fail: str, hosts: int) -> int:
    """How many failed hosts the run tolerates before it stops further batches."""
    value, percent = parse_max_fail(max_fail)
    return hosts * value // 100 if percent else value


def batches(names: list[str], canary: int, size: int) -> list[list[str]]:
    """A canary batch of ``canary`` hosts, then batches of ``size`` (0: all the rest)."""
    first, rest = names[:max(canary, 0)], names[max(canary, 0):]
    size = size if size > 0 else max(len(rest), 1)
    return [b for b in [first, *(rest[i:i + size] for i in range(0, len(rest), size))] if b]


@dataclass
class HostOutcome:
    """One host's part of the roll-up report."""

    name: str
    status: str = "not run"
    errors: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    apply: dict[str, Any] | None = None
    batch: int | None = None
    tasks: dict[str, str] = field(default_factory=dict)  # phase -> Celery task id
    confirm: dict[str, Any] | None = None  # the confirmation window: run, outcome

    def as_dict(self) -> dict[str, Any]:
        last = self.apply or self.plan or {}
        return {"name": self.name, "status": self.status, "errors": self.errors,
                "batch": self.batch, "tasks": self.tasks,
                "steps": {s["name"]: s["status"] for s in last.get("steps", [])},
                "plan": self.plan, "apply": self.apply, "confirm": self.confirm}


@dataclass
class Options:
    """How a fleet run waits and batches."""

    canary: int = 1
    batch_size: int = 0
    max_fail: str = "0"
    timeout: float = TASK_TIME_LIMIT  # per task: no result by then -> "unknown"
    agent_wait: float = 2.0  # how long to wait for agents to answer "who is listening"
    recheck: float = 5.0  # how often to check that busy hosts still have an agent


Event = Callable[[str, str], None]  # (host, text): one progress line


def _quiet(_host: str, _text: str) -> None:
    pass


class FleetRun:
    """One ``fleet plan`` / ``fleet apply``: dispatch, bounded waits, state in Redis."""

    def __init__(self, app: Celery, mode: str, hosts: dict[str, dict[str, Any]],
                 options: Options, run_id: str | None = None, on_event: Event = _quiet,
                 extra: dict[str, Any] | None = None) -> None:
        self.app, self.mode, self.hosts, self.options = app, mode, hosts, options
        # Added to each task: after_interrupted, an undo's target and dry_run.
        self.extra = extra or {}
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.on_event = on_event
        self.outcomes = {name: HostOutcome(name) for name in hosts}
        self.started, self.finished = time.time(), 0.0
        self.state = "running"
        self.exit_code: int | None = None
        self.batches: list[list[str]] = []
        self.stopped_reason = ""
        self.runner_pid = os.getpid()  # the process that runs it (for 'fleet status')

    # -- bookkeeping

    def event(self, host: str, text: str) -> None:
        log.info("[%s] %s", host, text)
        self.on_event(host, text)

    def report(self) -> dict[str, Any]:
        """The JSON roll-up: per host (status, per-step results) and totals."""
        counts: dict[str, int] = {}
        for o in self.outcomes.values():
            counts[o.status] = counts.get(o.status, 0) + 1
        return {
            "version": 1, "kind": "fleet", "run_id": self.run_id, "mode": self.mode,
            "state": self.state, "exit_code": self.exit_code, "started": self.started,
            "runner": {"machine": socket.gethostname(), "pid": self.runner_pid},
            "duration": round((self.finished or time.time()) - self.started, 3),
            "batches": self.batches, "stopped": self.stopped_reason, "counts": counts,
            "hosts": [o.as_dict() for o in self.outcomes.values()],
        }

    def save(self, initial: bool = False) -> None:
        """Store the run's state in Redis (best effort: the broker may be restarting).

        ``initial``: only if the run has no state yet (the run's own process may
        already have stored a newer one).
        """
        try:
            client = self.app.backend.client
            client.set(RUN_KEY + self.run_id, json.dumps(self.report()), ex=RESULT_EXPIRES,
                       nx=initial)
        except Exception as exc:  # noqa: BLE001 - the run goes on; status may lag
            log.warning("cannot store run state: %s", exc)

    # -- agents

    def listening(self, hosts: list[str]) -> set[str]:
        """Which of ``hosts`` have an agent consuming their queue now (bounded wait).

        First asks the agents by their worker name (``hostsetup@<host>``), which
        returns as soon as all answered; hosts still missing are looked for
        among every worker's queues (e.g. one worker serving several hosts).
        """
        found = self._queues([f"hostsetup@{h}" for h in hosts], len(hosts)) & set(hosts)
        if found != set(hosts):
            found |= self._queues(None, None) & set(hosts)
        return found

    def _queues(self, destination: list[str] | None, limit: int | None) -> set[str]:
        replies: dict[str, Any] = {}
        try:
            # A connection of its own: a pooled one may be stale after a Redis restart.
            with self.app.connection_for_write() as conn:
                replies = self.app.control.inspect(
                    destination=destination, limit=limit, connection=conn,
                    timeout=self.options.agent_wait).active_queues() or {}
        except Exception as exc:  # noqa: BLE001 - broker down: nobody is known to listen
            log.warning("cannot ask agents: %s", exc)
        return {q["name"][len(QUEUE_PREFIX):] for queues in replies.values()
                for q in queues if q.get("name", "").startswith(QUEUE_PREFIX)}

    # -- one phase on a set of hosts

    def dispatch(self, mode: str, names: list[str], per_host: dict[str, dict[str, Any]] | None
                 = None, timeout: float | None = None) -> dict[str, dict[str, Any]]:
        """Run ``mode`` on ``names`` (in parallel; ``per_host`` adds to a host's task);
        returns each host's run report.  A task not taken within ``timeout`` (default
        the run's) expires."""
        timeout = timeout or self.options.timeout
        present = self.listening(names)
        results: dict[str, dict[str, Any]] = {}
        tasks: dict[str, AsyncResult] = {}
        for name in names:
            if name not in present:
                results[name] = self._lost(
                    name, "no agent", f"no agent is consuming queue {queue_name(name)} "
                    f"(waited {self.options.agent_wait:g}s)")
                continue
            payload = {"host": name, "mode": mode, "answers": self.hosts[name],
                       "run_id": self.run_id, **self.extra, **(per_host or {}).get(name, {})}
            tasks[name] = self.app.send_task(TASK_RUN, args=[payload], queue=queue_name(name),
                                             expires=timeout)
            self.outcomes[name].tasks[mode] = tasks[name].id
            self.outcomes[name].status = "running"
            self.event(name, f"{mode}: sent")
        self.save()
        results.update(self.wait(mode, tasks, timeout))
        return results

    def _lost(self, name: str, status: str, reason: str) -> dict[str, Any]:
        self.event(name, f"{status}: {reason}")
        return {"host": name, "exit_code": None, "status": status, "errors": [reason],
                "steps": []}

    def wait(self, mode: str, tasks: dict[str, AsyncResult], timeout: float
             ) -> dict[str, dict[str, Any]]:
        """Poll the results until each is in, ``timeout`` passes or its agent is gone."""
        results: dict[str, dict[str, Any]] = {}
        t0 = last_check = time.monotonic()
        seen: dict[str, str] = {}  # host -> last progress line (present once it started)
        broker_down = ""
        while tasks:
            try:
                self._poll(mode, tasks, seen, results)
                if broker_down:
                    self.event("*", f"broker reachable again (was: {broker_down})")
                    broker_down = ""
            except Exception as exc:  # noqa: BLE001 - redis restarting: keep waiting, bounded
                if not broker_down:
                    broker_down = str(exc) or type(exc).__name__
                    self.event("*", f"broker unreachable, still waiting: {broker_down}")
            now = time.monotonic()
            if now - t0 > timeout:
                why = f"broker unreachable ({broker_down})" if broker_down else "last state"
                for name in list(tasks):
                    results[name] = self._lost(
                        name, "unknown", f"no result within {timeout:g}s; {why} "
                        f"{seen.get(name, 'queued')}: whether the {mode} ran is unknown")
                    del tasks[name]
            elif tasks and now - last_check > self.options.recheck and not broker_down:
                last_check = now
                self._check_agents(mode, tasks, seen, results)
            if tasks:
                time.sleep(0.1)
        return results

    def _poll(self, mode: str, tasks: dict[str, AsyncResult], seen: dict[str, str],
              results: dict[str, dict[str, Any]]) -> None:
        """One look at every pending task: progress lines, finished results."""
        for name, res in list(tasks.items()):
            state = res.state
            if state in ("STARTED", "PROGRESS"):
                info = res.info if isinstance(res.info, dict) else {}
                text = f"{mode}: running" + (f" - {info['text']}" if info.get("text") else "")
                if seen.get(name) != text:
                    seen[name] = text
                    self.event(name, text)
            elif state == "SUCCESS":
                results[name] = res.result
                del tasks[name]
            elif state in ("FAILURE", "REVOKED"):
                results[name] = self._lost(name, "failed", f"task {state.lower()}: {res.info}")
                del tasks[name]

    def _check_agents(self, mode: str, tasks: dict[str, AsyncResult], seen: dict[str, str],
                      results: dict[str, dict[str, Any]]) -> None:
        """Hosts whose agent vanished while we wait: report them now, not at the deadline."""
        gone = set(tasks) - self.listening(list(tasks))
        if not gone:
            return
        time.sleep(self.options.agent_wait)  # a restarting agent gets a second chance
        for name in gone - self.listening(sorted(gone)):
            if name in seen:
                reason = (f"its agent stopped during the {mode}; whether it completed is "
                          "unknown (the task is redelivered if the agent comes back within "
                          "the visibility timeout)")
            else:
                reason = f"its agent stopped before taking the {mode} task (it expires unrun)"
            results[name] = self._lost(name, "unknown" if name in seen else "no agent", reason)
            tasks[name].forget()
            del tasks[name]

    def record(self, phase: str, results: dict[str, dict[str, Any]]) -> None:
        """Turn host run reports into outcomes, and announce them."""
        for name, rep in results.items():
            out = self.outcomes[name]
            setattr(out, "plan" if phase == "plan" else "apply", rep)
            code = rep.get("exit_code")
            status = rep.get("status") or RUN_STATUS.get(code if isinstance(code, int) else -1,
                                                         "failed")
            changes = sum(len(s.get("changes", [])) for s in rep.get("steps", []))
            if phase in DONE and code == EXIT_OK:
                # a resume or an undo that changed nothing (nothing to do, a dry run)
                status = DONE[phase] if changes or phase == "apply" else "unchanged"
            out.status = status
            out.errors = list(rep.get("errors", [])) + [e for s in rep.get("steps", [])
                                                         for e in s.get("errors", [])]
            if rep.get("redelivered"):
                out.errors.append("note: redelivered (an earlier attempt's worker died)")
            if "status" not in rep:
                self.event(name, f"{phase}: {status}" + (f" ({changes} changes)" if changes else "")
                           + "".join(f"\n    ! {e}" for e in out.errors))
        self.save()

    # -- the run

    def run(self) -> int:
        """Plan everywhere; for ``apply``, then apply in batches. Returns the exit code."""
        self.save()
        try:
            if self.mode in ("resume", "undo"):  # each host from its own journal, at once
                self.record(self.mode, self.dispatch(self.mode, list(self.hosts)))
                self.exit_code, self.state, self.finished = \
                    self.exit_of(self.outcomes.values()), "done", time.time()
                self.save()
                return self.exit_code
            self.record("plan", self.dispatch("plan", list(self.hosts)))
            code = self.exit_of(self.outcomes.values())
            if self.mode == "apply" and code in (EXIT_OK, EXIT_PENDING):
                code = self.apply_batches()
            elif self.mode == "apply":
                self.stopped_reason = "plan failed on some host: nothing applied"
                self.event("*", self.stopped_reason)
        except KeyboardInterrupt:
            self.stopped_reason = "interrupted"
            code = EXIT_INTERRUPTED
        self.exit_code, self.state, self.finished = code, "done", time.time()
        self.save()
        return code

    def apply_batches(self) -> int:
        """Apply on the hosts with changes, canary first; stop past ``max_fail``.

        A host with nothing to change is applied too when its answers have early or
        late commands: ``apply`` runs them on every run, as on a single host."""
        from wizard.commands import EARLY, LATE

        todo = [n for n, o in self.outcomes.items() if o.status == "pending" or (
            o.status == "unchanged" and any(self.hosts[n].get(k) for k in (EARLY, LATE)))]
        allowed = allowed_failures(self.options.max_fail, len(self.hosts))
        self.batches = batches(todo, self.options.canary, self.options.batch_size)
        for i, batch in enumerate(self.batches):
            for name in batch:
                self.outcomes[name].batch = i
            self.event("*", f"batch {i + 1}/{len(self.batches)}: {', '.join(batch)}")
            self.record("apply", self.dispatch("apply", batch))
            for name in batch:
                if self.outcomes[name].status == "unknown" and self.windowed(name):
                    self.outcomes[name].errors.append(
                        "if a risky change (~) cut its agent off, the host reverts it when "
                        "its confirmation window closes")
            self.confirm_batch(batch)
            failed = [n for b in self.batches[:i + 1] for n in b
                      if STATUS_EXIT.get(self.outcomes[n].status, EXIT_FAILED) != EXIT_OK]
            if len(failed) > allowed and i + 1 < len(self.batches):
                self.stopped_reason = (f"{len(failed)} host(s) failed ({', '.join(failed)}), "
                                       f"more than max_fail {self.options.max_fail}: "
                                       "later batches not run")
                for later in self.batches[i + 1:]:
                    for name in later:
                        self.outcomes[name].status = "skipped"
                        self.outcomes[name].errors = [self.stopped_reason]
                self.event("*", self.stopped_reason)
                break
        return self.exit_of(self.outcomes.values())

    def windowed(self, name: str) -> bool:
        """Does ``name`` apply under a confirmation window?"""
        return bool(self.extra.get("confirm_within") or self.hosts[name].get("confirm"))

    def confirm_batch(self, batch: list[str]) -> None:
        """Confirm the hosts of ``batch`` whose apply left a confirmation window open:
        a ``confirm`` task each, through the broker, within the window.  A host that
        does not take it in time (a change cut its agent off) is ``not confirmed``: its
        keeper reverts the risky changes when the window closes."""
        waiting = {n: w for n in batch if (w := (self.outcomes[n].apply or {}).get("confirm"))
                   and w.get("state") == "waiting"}
        if not waiting:
            return
        for name, w in waiting.items():
            self.outcomes[name].confirm = dict(w)
            self.event(name, f"confirm: run {w['run']} waits up to {w['within']} s")
        applied = {n: self.outcomes[n].status for n in waiting}
        within = max(float(w.get("remaining") or w["within"]) for w in waiting.values())
        results = self.dispatch("confirm", list(waiting),
                                {n: {"target": w["run"]} for n, w in waiting.items()}, within)
        for name, rep in results.items():
            out = self.outcomes[name]
            assert out.confirm is not None
            if rep.get("exit_code") == EXIT_OK:
                out.confirm["state"], out.status = "kept", applied[name]
                self.event(name, "confirm: kept (the agent took the confirmation)")
                continue
            out.confirm["state"] = "not confirmed"
            out.status = "not confirmed"
            out.errors += [*rep.get("errors", []),
                           f"not confirmed: its risky changes are reverted on the host when "
                           f"run {out.confirm['run']}'s window closes (its keeper; 'hostsetup "
                           "report show' there)"]
            self.event(name, "confirm: not confirmed" + "".join(
                f"\n    ! {e}" for e in out.errors))
        self.save()

    @staticmethod
    def exit_of(outcomes: Any) -> int:
        """The fleet's exit code: the most serious of the hosts'."""
        codes = {STATUS_EXIT.get(o.status, EXIT_FAILED) for o in outcomes}
        return next((c for c in EXIT_PRIORITY if c in codes), EXIT_OK)


def host_payloads(answers: Answers) -> dict[str, dict[str, Any]]:
    """Each host's merged answers, as sent to its agent."""
    return {h.name: h.data for h in answers.hosts}


def load_run(app: Celery, run_id: str) -> dict[str, Any] | None:
    """A run's stored state (``None`` when unknown or expired).

    A run still "running" whose process is gone (same machine, pid not alive)
    is marked "abandoned": what its hosts did after the last update is unknown.
    """
    data = app.backend.client.get(RUN_KEY + run_id)
    if not data:
        return None
    report: dict[str, Any] = json.loads(data)
    runner = report.get("runner", {})
    if report["state"] == "running" and runner.get("machine") == socket.gethostname() \
            and not alive(int(runner.get("pid", 0))):
        report["state"], report["exit_code"] = "abandoned", EXIT_FAILED
        report["stopped"] = (f"the run's process (pid {runner.get('pid')}) is gone; "
                             "hosts not reported above are in an unknown state")
    return report


def connect(cfg: BrokerConfig) -> Celery:
    """The app, after checking that Redis answers; raises :class:`BrokerUnreachable`."""
    app = make_app(cfg)
    try:
        app.backend.client.ping()
    except Exception as exc:  # noqa: BLE001 - any client error means: cannot use the broker
        raise BrokerUnreachable(f"broker unreachable at {safe_url(cfg.url)}: {exc}") from None
    return app


__all__ = ["BrokerConfig", "BrokerUnreachable", "FleetError", "connect", "FleetRun",
           "HostOutcome", "Options", "batches", "allowed_failures",
           "broker_config", "load_config", "load_run", "make_app",
           "queue_name", "run_agent", "host_payloads", "parse_max_fail", "TASK_RUN"]

"""Files written as root cannot be redirected: reports, logs, recorded answers, host files.

Each test plants what an unprivileged user could plant in a world-writable
directory (mode 1777, like /tmp): a symbolic link at the target, at the old
predictable ``<report>.tmp`` name, a hard link, a FIFO.  The write must be
refused or go around it, and the file the link points to stays unchanged.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hostsetup

from backends import hostfiles
from backends.hostfiles import UnsafeTarget, atomic_write, open_log, write_file
from wizard import answers as answers_mod
from wizard.exits import EXIT_INVALID, EXIT_USAGE

PRECIOUS = b"root:do-not-touch\n"


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A world-writable, sticky directory, like /tmp."""
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o1777)
    return d


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    """A root-owned file an attacker would like overwritten."""
    f = tmp_path / "precious"
    f.write_bytes(PRECIOUS)
    f.chmod(0o644)
    return f


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave a file world-readable if its mode came from it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def bad_answers(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nservices: {timeout: -5}\n")
    return path


# ------------------------------------------------------------------ the CLI's files


def test_report_symlink_is_refused_before_anything_runs(shared: Path, precious: Path,
                                                        tmp_path: Path) -> None:
    link = shared / "report.json"
    link.symlink_to(precious)
    res = hostsetup("plan", "--answers", str(bad_answers(tmp_path)), "--report", str(link))
    assert res.returncode == EXIT_USAGE, res.stderr
    assert f"refusing to write {link}: it is a symbolic link" in res.stderr
    assert "Traceback" not in res.stderr
    assert precious.read_bytes() == PRECIOUS and link.is_symlink()


def test_report_ignores_a_planted_predictable_tmp_and_is_0600(
        shared: Path, precious: Path, tmp_path: Path, open_umask: None) -> None:
    report = shared / "report.json"
    (shared / "report.json.tmp").symlink_to(precious)  # the name the old code used
    res = hostsetup("plan", "--answers", str(bad_answers(tmp_path)), "--report", str(report))
    assert res.returncode == EXIT_INVALID, res.stderr
    assert json.loads(report.read_text())["exit_code"] == EXIT_INVALID
    assert mode(report) == 0o600 and not report.is_symlink()
    assert precious.read_bytes() == PRECIOUS
    assert leftovers(shared) == ["report.json.tmp"]  # the planted link, untouched


def test_report_that_cannot_be_written_turns_success_into_exit_1(tmp_path: Path) -> None:
    from wizard.cli import reported

    missing = tmp_path / "no-such-dir" / "r.json"
    assert reported(missing, {"x": 1}, 0) == 1
    assert reported(missing, {"x": 1}, 4) == 4  # a more serious code is kept
    assert reported(tmp_path / "r.json", {"x": 1}, 0) == 0


def test_log_symlink_is_refused_and_creates_nothing(shared: Path, tmp_path: Path) -> None:
    where = tmp_path / "created-by-link"
    link = shared / "hostsetup.log"
    link.symlink_to(where)  # dangling: the old code created this file
    res = hostsetup("plan", "--answers", str(bad_answers(tmp_path)), "--log", str(link))
    assert res.returncode == EXIT_USAGE, res.stderr
    assert f"refusing to write {link}: it is a symbolic link" in res.stderr
    assert not where.exists()


def test_log_is_created_0600_and_appended(shared: Path, tmp_path: Path,
                                          open_umask: None) -> None:
    log = shared / "run.log"
    for _ in range(2):
        res = hostsetup("plan", "--answers", str(bad_answers(tmp_path)), "--log", str(log))
        assert res.returncode == EXIT_INVALID, res.stderr
    assert mode(log) == 0o600
    with open_log(log) as f:
        f.write("third\n")
    assert log.read_text().endswith("third\n") and mode(log) == 0o600


def test_log_hard_link_and_fifo_are_refused(shared: Path, precious: Path) -> None:
    hard = shared / "hard.log"
    os.link(precious, hard)
    with pytest.raises(UnsafeTarget, match="other hard links"):
        open_log(hard)
    fifo = shared / "fifo.log"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeTarget, match="not a plain file"):
        open_log(fifo)  # refused without blocking on the FIFO
    assert precious.read_bytes() == PRECIOUS


def test_record_symlink_is_refused_before_the_wizard(shared: Path, precious: Path) -> None:
    link = shared / "recorded.yaml"
    link.symlink_to(precious)
    res = hostsetup("--record", str(link))
    assert res.returncode == EXIT_USAGE
    assert f"refusing to write {link}: it is a symbolic link" in res.stderr
    assert "terminal" not in res.stderr  # refused before the wizard looks for one
    assert precious.read_bytes() == PRECIOUS


def test_recorded_answers_are_0600_and_never_through_a_link(
        shared: Path, precious: Path, open_umask: None) -> None:
    target = shared / "answers.yaml"
    answers_mod.write(target, {"version": 1, "services": {"bus": "system"}}, "# header\n")
    assert mode(target) == 0o600
    assert target.read_text().startswith("# header\nversion: 1\n")
    link = shared / "linked.yaml"
    link.symlink_to(precious)
    with pytest.raises(UnsafeTarget):
        answers_mod.write(link, {"version": 1})
    assert precious.read_bytes() == PRECIOUS and leftovers(shared) == []


# ------------------------------------------------------------------ the primitive


def test_atomic_write_sets_the_mode_at_creation(shared: Path, open_umask: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        fd = real_open(path, flags, mode)
        if flags & os.O_CREAT:
            seen.append(stat.S_IMODE(os.fstat(fd).st_mode))
            assert flags & os.O_EXCL and flags & os.O_NOFOLLOW
        return fd

    monkeypatch.setattr(hostfiles.os, "open", spy)
    atomic_write(shared / "f", b"data", 0o640)
    assert seen == [0o640]  # never more open than asked, not even for a moment
    assert mode(shared / "f") == 0o640 and (shared / "f").read_bytes() == b"data"


def test_atomic_write_replaces_a_file_and_refuses_links(shared: Path, precious: Path) -> None:
    target = shared / "f"
    target.write_bytes(b"old")
    atomic_write(target, b"new", 0o600)
    assert target.read_bytes() == b"new" and mode(target) == 0o600
    link = shared / "l"
    link.symlink_to(precious)
    with pytest.raises(UnsafeTarget):
        atomic_write(link, b"evil")
    os.link(precious, shared / "h")
    with pytest.raises(UnsafeTarget):
        atomic_write(shared / "h", b"evil")
    assert precious.read_bytes() == PRECIOUS and leftovers(shared) == []


def test_step_host_file_through_a_link_is_refused(tmp_path: Path, precious: Path) -> None:
    hooks = tmp_path / "hooks" / "qemu.d"
    hooks.mkdir(parents=True)
    hook = hooks / "hostsetup-ivshmem"
    hook.symlink_to(precious)
    with pytest.raises(UnsafeTarget, match="symbolic link"):
        write_file(str(hook), b"#!/bin/sh\n", 0o755)
    with pytest.raises(UnsafeTarget, match="symbolic link"):
        hostfiles.read_file(str(hook))
    assert precious.read_bytes() == PRECIOUS and mode(precious) == 0o644

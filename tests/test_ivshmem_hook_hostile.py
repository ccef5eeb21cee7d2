"""The ivshmem hook under hostile or broken conditions: it fails safe and never blocks.

The hook runs as root in libvirtd's path for every domain.  These tests run
it as libvirt does (argv + XML on stdin, through its shebang) with a corrupt
configuration, planted ``/dev/shm`` objects, a planted log, a hanging or
flooding chained hook and oversized input; then end to end on the sandbox's
real libvirtd.  Every direct call has a subprocess timeout: a hang fails
the test instead of blocking it.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import (
    DOMAIN,
    SHMEM,
    call,
    configure,
    ivshmem_answers,
    ivshmem_cli,
    shmems,
    systemctl,
    virsh,
)
from helpers import shm as host_shm

from sandbox import host
from sandbox.core import Sandbox
from steps.ivshmem import CHAINED_NAME, CONFIG_NAME, HOOK_SOURCE

# Every operation libvirt calls a QEMU hook with, and its sub-operation.
OPERATIONS = [("prepare", "begin"), ("start", "begin"), ("started", "begin"),
              ("stopped", "end"), ("release", "end"), ("migrate", "begin"),
              ("restore", "begin"), ("reconnect", "begin"), ("attach", "begin")]
NOBODY = pwd.getpwnam("nobody").pw_uid


def _truncated(config: Path) -> None:
    config.write_bytes(config.read_bytes()[:40])


def _fifo(config: Path) -> None:
    config.unlink()
    os.mkfifo(config)


def _directory(config: Path) -> None:
    config.unlink()
    config.mkdir()


def _symlink_loop(config: Path) -> None:
    config.unlink()
    config.symlink_to(config.name)  # ELOOP: unreadable even for root


CORRUPTIONS = {
    "truncated": _truncated,
    "list": lambda c: c.write_text("[]"),
    "empty-object": lambda c: c.write_text("{}"),
    "binary": lambda c: c.write_bytes(os.urandom(512) + b"\xff\xfe"),
    "wrong-types": lambda c: c.write_text(c.read_text().replace('"domains": [', '"domains": [5, ')),
    "deep-nesting": lambda c: c.write_text("[" * 200000),
    "directory": _directory,
    "fifo": _fifo,
    "unreadable": _symlink_loop,
}


def call_ns(log_dir: Path, hook: Path, domain: str, op: str, subop: str, xml: str,
            timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """Run the hook with ``log_dir`` mounted over /var/log/libvirt (its default log's dir).

    A configuration the hook cannot read does not say where to log: it logs
    to the default, which is libvirtd's own log directory.  A private mount
    namespace keeps the host's /var/log/libvirt out of the test.
    """
    script = 'mount --bind "$1" /var/log/libvirt && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(log_dir), str(hook), domain, op, subop, "-"],
        input=xml.encode(), capture_output=True, timeout=timeout)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """A root-owned 0755 directory for the hook's log."""
    path = tmp_path / "log"
    path.mkdir(mode=0o755)
    return path


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_config_never_blocks_a_domain(ivs_hooks: Path, log_dir: Path, shm_path: Path,
                                              corruption: str) -> None:
    # Under 'refuse' for vm1, this configuration would refuse to start vm1 without device.
    configure(ivs_hooks, log_dir / "configured.log", name=shm_path.name, domains=["vm1"],
              enforce="refuse")
    CORRUPTIONS[corruption](ivs_hooks / CONFIG_NAME)
    hook = ivs_hooks / "hostsetup-ivshmem"
    calls = 0
    for domain in ("vm1", "vm2"):  # chosen, and not chosen
        for op, subop in OPERATIONS:
            res = call_ns(log_dir, hook, domain, op, subop, DOMAIN.format(name=domain, extra=""))
            calls += 1
            assert (res.returncode, res.stdout) == (0, b""), (domain, op, res.stderr)
            assert b"Traceback" not in res.stderr
    log = (log_dir / "hostsetup-ivshmem.log").read_text()
    lines = [line for line in log.splitlines()
             if f"{CONFIG_NAME} unusable" in line and "treated as not configured" in line]
    assert len(lines) == calls, log
    assert " vm1 reconnect begin: configuration " in log
    assert not (log_dir / "configured.log").exists()  # the unreadable config's log: unknown
    assert not shm_path.exists()


def test_readable_config_only_refuses_prepare_of_a_chosen_domain(ivs_hooks: Path,
                                                                 log_dir: Path,
                                                                 shm_path: Path) -> None:
    log = log_dir / "hook.log"
    configure(ivs_hooks, log, name=shm_path.name, domains=["vm1"], enforce="refuse",
              owner="nosuchuser-hostsetup")
    hook = ivs_hooks / "hostsetup-ivshmem"
    for domain in ("vm1", "vm2"):
        for op, subop in OPERATIONS:
            res = call(hook, domain, op, subop, DOMAIN.format(name=domain, extra=""))
            refused = (domain, op) == ("vm1", "prepare")
            assert res.returncode == (1 if refused else 0), (domain, op, res.stderr)
            assert b"Traceback" not in res.stderr
    # With the device, prepare goes on to the object, whose owner does not exist: refused.
    res = call(hook, "vm1", "prepare", "begin",
               DOMAIN.format(name="vm1", extra=SHMEM.format(name=shm_path.name)))
    assert res.returncode == 1 and b"nosuchuser-hostsetup" in res.stderr
    assert "cannot prepare the shared-memory object" in log.read_text()


def test_warn_never_fails_on_our_errors(ivs_hooks: Path, log_dir: Path, shm_path: Path) -> None:
    log = log_dir / "hook.log"
    configure(ivs_hooks, log, name=shm_path.name, domains="all", enforce="warn",
              owner="nosuchuser-hostsetup")
    hook = ivs_hooks / "hostsetup-ivshmem"
    res = call(hook, "vm1", "prepare", "begin",
               DOMAIN.format(name="vm1", extra=SHMEM.format(name=shm_path.name)))
    assert res.returncode == 0 and b"Traceback" not in res.stderr
    assert call(hook, "vm1", "prepare", "begin", "<domain").returncode == 0
    text = log.read_text()
    assert "cannot prepare the shared-memory object" in text and "not valid XML" in text


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_incoming_xml_that_cannot_be_fixed_is_passed_on(ivs_hooks: Path, log_dir: Path,
                                                        op: str) -> None:
    log = log_dir / "hook.log"
    configure(ivs_hooks, log, name="shm0", domains="all", enforce="refuse")
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", op, "begin", "<domain><name>vm1")
    assert (res.returncode, res.stdout) == (0, b"")  # empty: libvirt keeps its own XML
    assert "incoming XML passed on unchanged" in log.read_text()


def test_oversized_input_is_not_read_to_the_end(ivs_hooks: Path, log_dir: Path) -> None:
    log = log_dir / "hook.log"
    configure(ivs_hooks, log, name="shm0", domains=["vm1"], enforce="refuse")
    hook = ivs_hooks / "hostsetup-ivshmem"
    huge = DOMAIN.format(name="vm2", extra="<!--" + "x" * (17 * 1024 * 1024) + "-->")
    assert call(hook, "vm2", "restore", "begin", huge).returncode == 0
    assert call(hook, "vm1", "prepare", "begin", huge).returncode == 1  # chosen, refuse
    assert "domain XML on stdin not read (more than 16777216 bytes)" in log.read_text()


# -- planted /dev/shm objects -------------------------------------------------------


def _plant_foreign_file(path: Path, tmp_path: Path) -> None:
    path.write_bytes(b"squatter")
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o666)


def _plant_hard_link(path: Path, tmp_path: Path) -> None:
    path.write_bytes(b"squatter")  # root's, but linked twice: someone keeps a name for it
    os.link(path, f"{path}.extra-link")


def _plant_directory(path: Path, tmp_path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("x")
    os.chown(path, NOBODY, NOBODY)


def _plant_fifo(path: Path, tmp_path: Path) -> None:
    os.mkfifo(path)
    os.chown(path, NOBODY, NOBODY)


def _plant_symlink(path: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o600)
    path.symlink_to(victim)


PLANTED = {
    "foreign-file": _plant_foreign_file,
    "hard-link": _plant_hard_link,
    "directory": _plant_directory,
    "fifo": _plant_fifo,
    "symlink": _plant_symlink,
}


@pytest.fixture
def shm_path(ivs_shm_name: str) -> Iterator[Path]:
    """/dev/shm/<unique name>; it, and what the hook moved aside, are removed afterwards."""
    path = Path("/dev/shm", ivs_shm_name)
    yield path
    for extra in [path, *Path("/dev/shm").glob(f"{ivs_shm_name}.*")]:
        if extra.is_dir() and not extra.is_symlink():
            shutil.rmtree(extra)
        else:
            extra.unlink(missing_ok=True)


@pytest.mark.parametrize("enforce", ["refuse", "warn"])
@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_planted_shm_object_is_never_adopted(ivs_hooks: Path, log_dir: Path, tmp_path: Path,
                                             shm_path: Path, planted: str,
                                             enforce: str) -> None:
    log = log_dir / "hook.log"
    configure(ivs_hooks, log, name=shm_path.name, size=2, domains="all", enforce=enforce,
              mode="0660")
    PLANTED[planted](shm_path, tmp_path)
    before = os.lstat(shm_path)
    # A squatter holds its file open.
    held = os.open(shm_path, os.O_RDONLY) if planted in ("foreign-file", "hard-link") else None
    try:
        res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "prepare", "begin",
                   DOMAIN.format(name="vm1", extra=SHMEM.format(name=shm_path.name)))
        assert res.returncode == 0, res.stderr  # the VM starts, on a fresh object
        st = os.lstat(shm_path)
        assert st.st_ino != before.st_ino and st.st_uid == 0 and st.st_nlink == 1
        assert st.st_size == 2 * 1024 * 1024 and st.st_mode & 0o7777 == 0o660
        if held is not None:
            assert os.fstat(held).st_ino == before.st_ino  # the squatter kept only its own
        shm_path.write_bytes(b"guest data")  # what the VMs share from now on
        if held is not None:
            assert os.pread(held, 10, 0) != b"guest data"
    finally:
        if held is not None:
            os.close(held)
    text = log.read_text()
    assert f"refused {shm_path}: it " in text and "(not made by hostsetup)" in text
    (aside,) = Path("/dev/shm").glob(f"{shm_path.name}.hostsetup-refused.*")
    assert os.lstat(aside).st_ino == before.st_ino  # moved aside, not deleted
    if planted == "symlink":
        victim = tmp_path / "victim"
        assert victim.read_text() == "keep" and victim.stat().st_mode & 0o777 == 0o600


def test_own_object_is_kept_across_calls(ivs_hooks: Path, log_dir: Path,
                                         shm_path: Path) -> None:
    configure(ivs_hooks, log_dir / "hook.log", name=shm_path.name, domains="all",
              owner="nobody:nogroup", mode="0600")
    xml = DOMAIN.format(name="vm1", extra=SHMEM.format(name=shm_path.name))
    hook = ivs_hooks / "hostsetup-ivshmem"
    assert call(hook, "vm1", "prepare", "begin", xml).returncode == 0
    first = os.stat(shm_path)
    assert first.st_uid == NOBODY  # the configured owner: accepted at the next call
    assert call(hook, "vm2", "prepare", "begin", xml).returncode == 0
    assert os.stat(shm_path).st_ino == first.st_ino  # VMs keep sharing one object
    assert "refused" not in (log_dir / "hook.log").read_text()


def test_held_lock_does_not_block(ivs_hooks: Path, log_dir: Path, shm_path: Path) -> None:
    log = log_dir / "hook.log"
    configure(ivs_hooks, log, name=shm_path.name, domains="all", enforce="refuse")
    lock = os.open(ivs_hooks, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a call of the hook that never finishes
        res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "prepare", "begin",
                   DOMAIN.format(name="vm1", extra=SHMEM.format(name=shm_path.name)))
    finally:
        os.close(lock)
    assert res.returncode == 0, res.stderr
    assert "held the lock for 10 s: going on" in log.read_text()
    assert os.stat(shm_path).st_size == 4 * 1024 * 1024


# -- the log ------------------------------------------------------------------------


def test_log_fifo_does_not_block(ivs_hooks: Path, log_dir: Path) -> None:
    log = log_dir / "hook.log"
    os.mkfifo(log)
    configure(ivs_hooks, log, name="shm0", domains=["vm1"])
    started = time.monotonic()
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "restore", "begin",
               DOMAIN.format(name="vm1", extra=""))  # call's timeout detects a hang
    assert res.returncode == 0 and len(shmems(res.stdout)) == 1
    assert time.monotonic() - started < 10
    assert b"log not used" in res.stderr and b"added the device 'shm0'" in res.stderr


def test_log_symlink_is_not_followed(ivs_hooks: Path, log_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (log_dir / "hook.log").symlink_to(victim)
    configure(ivs_hooks, log_dir / "hook.log", name="shm0", domains=["vm1"])
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "restore", "begin",
               DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0 and b"log not used" in res.stderr
    assert victim.read_text() == "keep\n"


@pytest.mark.parametrize("unsafe", ["world-writable", "sticky", "not-root"])
def test_log_only_in_a_root_owned_private_directory(ivs_hooks: Path, tmp_path: Path,
                                                    unsafe: str) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    if unsafe == "not-root":
        os.chown(directory, NOBODY, NOBODY)
    else:
        directory.chmod(0o1777 if unsafe == "sticky" else 0o777)
    configure(ivs_hooks, directory / "hook.log", name="shm0", domains=["vm1"])
    res = call(ivs_hooks / "hostsetup-ivshmem", "vm1", "restore", "begin",
               DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0 and b"log not used" in res.stderr
    assert not (directory / "hook.log").exists()
    reason = b"not root" if unsafe == "not-root" else b"writable by group or others"
    assert reason in res.stderr


# -- the chained hook ---------------------------------------------------------------


def _chain(tmp_path: Path, script: str) -> Path:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / CHAINED_NAME).write_text(script)
    (hooks / CHAINED_NAME).chmod(0o755)
    shutil.copy(HOOK_SOURCE, hooks / "qemu")
    (hooks / "qemu").chmod(0o755)
    return hooks


def test_hanging_chained_hook_is_killed(tmp_path: Path, log_dir: Path) -> None:
    pidfile = tmp_path / "sleeper.pid"
    hooks = _chain(tmp_path, f"#!/bin/sh\nsleep 600 &\necho $! > {pidfile}\nwait\n")
    log = log_dir / "hook.log"
    configure(hooks, log, chain=True, name="shm0", domains="all")
    started = time.monotonic()
    # reconnect: a failure would stop the running VM; the hang counts as success.
    res = call(hooks / "qemu", "vm1", "reconnect", "begin", DOMAIN.format(name="vm1", extra=""),
               timeout=60)
    assert res.returncode == 0, res.stderr
    assert 29 < time.monotonic() - started < 40
    sleeper = int(pidfile.read_text())
    time.sleep(0.2)
    assert not Path(f"/proc/{sleeper}").exists() or \
        Path(f"/proc/{sleeper}/stat").read_text().split()[2] == "Z"  # killed with its group
    assert "killed: timed out" in log.read_text() and "counted as exit 0" in log.read_text()


def test_flooding_chained_hook_is_bounded(tmp_path: Path, log_dir: Path) -> None:
    hooks = _chain(tmp_path, "#!/bin/sh\nexec yes\n")
    log = log_dir / "hook.log"
    configure(hooks, log, chain=True, name="shm0", domains="all")
    xml = DOMAIN.format(name="vm1", extra="")
    # restore: libvirt refuses it when a hook fails; its XML is not used.
    res = call(hooks / "qemu", "vm1", "restore", "begin", xml)
    assert res.returncode == 1 and res.stdout == b""
    assert call(hooks / "qemu", "vm1", "started", "begin", xml).returncode == 0
    text = log.read_text()
    assert "killed: more than 16777216 bytes" in text
    assert "counted as exit 1" in text and "counted as exit 0" in text


def test_chained_hook_that_cannot_run(tmp_path: Path, log_dir: Path) -> None:
    hooks = _chain(tmp_path, "#!/nonexistent/interpreter\n")
    log = log_dir / "hook.log"
    configure(hooks, log, chain=True, name="shm0", domains=["vm1"])
    xml = DOMAIN.format(name="vm2", extra="")
    assert call(hooks / "qemu", "vm2", "start", "begin", xml).returncode == 1
    res = call(hooks / "qemu", "vm2", "reconnect", "begin", xml)
    assert res.returncode == 0 and b"Traceback" not in res.stderr
    assert "cannot run (No such file or directory); counted as exit 0" in log.read_text()


def test_chained_hook_runs_with_a_corrupt_config(tmp_path: Path, log_dir: Path) -> None:
    seen = tmp_path / "third-party.log"
    hooks = _chain(tmp_path, f'#!/bin/sh\necho "$1 $2" >> {seen}\n'
                             '[ "$2" = restore ] && sed "s#<devices>#<devices><a/>#"\nexit 0\n')
    (hooks / CONFIG_NAME).write_text("{")
    res = call_ns(log_dir, hooks / "qemu", "vm1", "restore", "begin",
                  DOMAIN.format(name="vm1", extra=""))
    assert res.returncode == 0 and b"<devices><a/>" in res.stdout  # its XML is passed on
    assert seen.read_text() == "vm1 restore\n"


# -- end to end: the sandbox's real libvirtd ----------------------------------------


def test_step_refuses_an_unsafe_log_directory(ivs_sb: Sandbox, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (tmp_path / "link.log").symlink_to(tmp_path / "elsewhere.log")
    cases = {str(shared / "h.log"): f"{shared} is writable by group or others",
             str(tmp_path / "link.log"): f"{tmp_path / 'link.log'} is not a regular file",
             "relative.log": "'relative.log' is not an absolute path"}
    for hook_log, message in cases.items():
        # From outside: the step checks the log's directory where it runs.
        res = ivshmem_cli(ivs_sb, "plan", ivshmem_answers(ivs_sb, hook_log=hook_log),
                                inside=False)
        assert res.returncode == 3, res.stdout + res.stderr
        assert "ivshmem.hook_log" in res.stderr and message in res.stderr


def test_step_rewrites_a_corrupt_installed_config(ivs_sb: Sandbox) -> None:
    config = Path(ivs_sb.env["HOSTSETUP_LIBVIRT_HOOKS_DIR"]) / "qemu.d" / CONFIG_NAME
    before = config.read_bytes() if config.exists() else None
    config.parent.mkdir(exist_ok=True)
    config.write_text('{"wrappers": ')
    try:
        res = ivshmem_cli(ivs_sb, "plan", ivshmem_answers(
            ivs_sb, method="qemu-wrapper", domains=["vm1"], restart_libvirtd=False),
            inside=False)  # from outside: the plan names the hooks directory seen here
        assert res.returncode == 4, res.stdout + res.stderr
        assert f"update file {config}" in res.stdout and "Traceback" not in res.stderr
    finally:
        if before is None:
            config.unlink()
        else:
            config.write_bytes(before)


def test_real_libvirtd_with_corrupt_config_and_squatted_shm(ivs_clean: Sandbox) -> None:
    sb = ivs_clean
    section = ivshmem_answers(sb, enforce="refuse")
    applied = ivshmem_cli(sb, "apply", section)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    systemctl(sb, "restart", "libvirtd.service")
    hooks = Path(sb.env["HOSTSETUP_LIBVIRT_HOOKS_DIR"]) / "qemu.d"
    shm = host_shm(sb, section["name"])  # the host's /dev/shm, from outside
    good = (hooks / CONFIG_NAME).read_bytes()
    try:
        # A squatter made the object first and holds it open: vm1 starts on a fresh one.
        _plant_foreign_file(shm, sb.dir)
        held = os.open(shm, os.O_RDONLY)
        virsh(sb, "start", "vm1")
        owner = section["owner"].split(":")[0]  # the answers' owner, a user of the host
        passwd = Path(sb.env["HOSTSETUP_HOST_ROOT"], "etc/passwd").read_text().splitlines()
        uid = next(int(e.split(":")[2]) for e in passwd if e.split(":")[0] == owner)
        assert os.stat(shm).st_uid == uid and os.fstat(held).st_ino != os.stat(shm).st_ino
        os.close(held)
        # A corrupt configuration: vm2 still starts, and a libvirtd restart (reconnect
        # hooks) keeps both running.
        (hooks / CONFIG_NAME).write_bytes(good[: len(good) // 2])
        virsh(sb, "start", "vm2")
        pids = host.qemu_pids(sb)
        systemctl(sb, "restart", "libvirtd.service")
        log_file = Path(sb.env["HOSTSETUP_LIBVIRT_LOG_DIR"], "hostsetup-ivshmem.log")
        reconnected = [f"{vm} reconnect begin: configuration" for vm in ("vm1", "vm2")]
        deadline = time.monotonic() + 30  # libvirtd reconnects in the background
        while not all(r in log_file.read_text() for r in reconnected):
            assert time.monotonic() < deadline, log_file.read_text()
            time.sleep(0.1)
        assert host.qemu_pids(sb) == pids and set(pids) == {"vm1", "vm2"}
        for vm in ("vm1", "vm2"):
            assert "running" in virsh(sb, "domstate", vm)
        log = log_file.read_text()
        assert f"refused /dev/shm/{shm.name}: it is owned by uid {NOBODY}" in log
        assert "vm2 prepare begin: configuration" in log
    finally:
        (hooks / CONFIG_NAME).write_bytes(good)
        for aside in shm.parent.glob(f"{shm.name}.hostsetup-refused.*"):
            aside.unlink()

"""Fleet runs on real sandbox hosts: Redis, the agent unit on each host, the CLI.

One fleet of three booted hosts (real systemd, Open vSwitch, libvirtd; one
Redis; each host's agent installed as the ``deploy/`` unit) serves the module;
every test puts the hosts back in their initial state first (ovsdb-server
running, ovs-vswitchd and libvirtd stopped, no mirror).  Failures are made with
real processes and units: a worker process or a whole agent killed with SIGKILL,
redis-server restarted, a host without an agent, a unit whose start fails or
takes a while (a drop-in).
"""

from __future__ import annotations

import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, add_unit, hostsetup, systemd_call, unit_state

from sandbox import host as host_mod
from sandbox import manage
from sandbox import redis as redis_component
from sandbox.core import Sandbox, alive, wait_for
from wizard import answers as answers_mod
from wizard import fleet as fleet_mod

HOSTS = ["hv1", "hv2", "hv3"]
SLOW_UNIT = "libvirtd.service"  # inactive at start on every host: 'apply' starts it
AGENT = "hostsetup-agent.service"
DROP_IN = f"{SLOW_UNIT}.d/test.conf"


@pytest.fixture(scope="module")
def fleet_sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """Three hosts (no simulator) with the agent unit each, and Redis; the fleet
    answers keep the services and ovs_mirror steps."""
    directory = tmp_path_factory.mktemp("fleet")
    try:
        fleet = manage.up_fleet(directory, 3, components=[manage.HOST])
        data = answers_mod.read_yaml(directory / "fleet-answers.yaml")
        for section in (data, *data["hosts"]):
            section.pop("ivshmem", None)
        manage.write_yaml(directory / "fleet-answers.yaml", data)
        yield fleet
    finally:
        manage.down(directory)


def member(fleet: Sandbox, name: str) -> Sandbox:
    return Sandbox.load(fleet.dir / name)


def systemctl(host: Sandbox, *args: str) -> str:
    """systemctl inside the host."""
    return host_mod.run_inside(host, "systemctl", "systemctl", *args)


def slow_start(host: Sandbox, pre: str = "/bin/sleep 3") -> None:
    """Give SLOW_UNIT's start an ExecStartPre (a drop-in): slow, or failing with /bin/false."""
    add_unit(host, DROP_IN, f"[Service]\nExecStartPre={pre}\n")


def journal(host: Sandbox, unit: str = AGENT) -> str:
    """The unit's journal inside the host."""
    return host_mod.run_inside(host, "journalctl", "journalctl", "-u", unit, "--no-pager",
                               "-n", "500")


def mirrors(host: Sandbox) -> dict[str, str]:
    """Mirror name -> selected source ports, read with ovs-vsctl."""
    out = subprocess.run(["ovs-vsctl", f"--db={host.env['HOSTSETUP_OVSDB']}", "--format=json",
                          "--columns=name,select_src_port", "list", "Mirror"],
                         capture_output=True, text=True, check=True).stdout
    ports = {row["_uuid"][1]: row["name"] for row in _rows(host, "Port")}
    result = {}
    for name, src in json.loads(out)["data"]:
        uuids = [u[1] for u in src[1]] if src[0] == "set" else [src[1]]
        result[name] = ",".join(sorted(ports[u] for u in uuids))
    return result


def _rows(host: Sandbox, table: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ovs-vsctl", f"--db={host.env['HOSTSETUP_OVSDB']}", "--format=json",
                          "--columns=_uuid,name", "list", table],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    return [dict(zip(data["headings"], row, strict=True)) for row in data["data"]]


def agent_pids(host: Sandbox) -> list[int]:
    """Pids (seen from outside) of the agent unit's processes: the Celery main process
    first, then its pool process."""
    top = Path(host_mod.CGROUP_TREES[0], host.env["HOSTSETUP_HOST_CGROUP"])
    pids: list[int] = []
    for cgroup in top.rglob(AGENT):
        pids += [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
    parents = {pid: int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
               for pid in pids}
    return sorted(pids, key=lambda pid: parents[pid] in pids)


def restart_agent(fleet: Sandbox, name: str, conf: str | None = None) -> None:
    """(Re)start a host's agent unit, with ``conf`` as its agent.conf (default: the fleet's)."""
    host = member(fleet, name)
    default = f"[agent]\nbroker = {fleet.env['HOSTSETUP_REDIS_URL']}\n" \
              f"password = file:{host_mod.REDIS_PASSWORD}\n"
    Path(host.env["HOSTSETUP_HOST_ROOT"], "etc/hostsetup/agent.conf").write_text(conf or default)
    systemctl(host, "reset-failed", AGENT)
    systemctl(host, "restart", AGENT)
    manage.wait_listening(fleet, {name}, lambda: None)


@pytest.fixture
def fleet(fleet_sb: Sandbox) -> Sandbox:
    """The module's fleet with every host in its initial state and every agent running."""
    for name in HOSTS:
        host = member(fleet_sb, name)
        drop_in = Path(host.env["HOSTSETUP_HOST_ROOT"], "etc/systemd/system", DROP_IN)
        if drop_in.exists():
            drop_in.unlink()
            systemd_call(host, "Reload")
        systemctl(host, "stop", "openvswitch-switch.service", SLOW_UNIT)
        systemctl(host, "reset-failed")
        systemctl(host, "start", "ovsdb-server.service")
        subprocess.run(["ovs-vsctl", f"--db={host.env['HOSTSETUP_OVSDB']}", "--no-wait",
                        "clear", "Bridge", "br0", "mirrors"], check=True)
        if unit_state(host, AGENT) != "active":
            restart_agent(fleet_sb, name)
    return fleet_sb


def env(fleet: Sandbox) -> dict[str, str]:
    return dict(fleet.env)


def answers(fleet: Sandbox) -> str:
    return str(fleet.dir / "fleet-answers.yaml")


def run_fleet(fleet: Sandbox, *args: str, report: Path | None = None,
              timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``hostsetup fleet ARGS`` with the fleet's broker; returns the result and the report."""
    extra = ["--report", str(report)] if report else []
    res = hostsetup("fleet", *args, *extra, env=env(fleet), timeout=timeout)
    data = json.loads(report.read_text()) if report and report.exists() else {}
    return res, data


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {h["name"]: h["status"] for h in report["hosts"]}


class Background:
    """A CLI run in the background whose output lines can be waited for."""

    def __init__(self, fleet: Sandbox, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wizard", "fleet", *args], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env(fleet)})
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.output.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} in:\n{''.join(self.output)}")

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code


# ------------------------------------------------------------------ the normal run


def test_plan_apply_plan_per_host_config(fleet: Sandbox, tmp_path: Path) -> None:
    report = tmp_path / "plan.json"
    res, data = run_fleet(fleet, "plan", "--answers", answers(fleet), report=report)
    assert res.returncode == 4, res.stdout + res.stderr
    assert statuses(data) == {h: "pending" for h in HOSTS}
    assert all(mirrors(member(fleet, h)) == {} for h in HOSTS)  # plan changed nothing

    res, data = run_fleet(fleet, "apply", "--answers", answers(fleet),
                          report=tmp_path / "apply.json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert statuses(data) == {h: "applied" for h in HOSTS}
    assert data["batches"] == [["hv1"], ["hv2", "hv3"]]  # canary, then the rest
    assert data["hosts"][1]["steps"] == {"services": "applied", "ovs_mirror": "applied"}
    assert "[hv2] apply: applied" in res.stdout
    # Each host has its own configuration, read back with the ordinary tools.
    assert mirrors(member(fleet, "hv1")) == {"span-hv1": "vm1"}
    assert mirrors(member(fleet, "hv2")) == {"span-hv2": "vm2"}
    assert mirrors(member(fleet, "hv3")) == {"span-hv3": "vm1"}
    # hv2's override leaves NetworkManager out of its required units.
    hosts = answers_mod.read_yaml(Path(answers(fleet)))["hosts"]
    assert "NetworkManager.service" not in hosts[1]["services"]["require"]
    assert "services" not in hosts[2]  # hv1's, the base: each host on its defaults
    states = {h: unit_state(member(fleet, h), "openvswitch-switch.service") for h in HOSTS}
    assert states == {h: "active" for h in HOSTS}

    res, data = run_fleet(fleet, "plan", "--answers", answers(fleet), report=report)
    assert res.returncode == 0, res.stdout + res.stderr
    assert statuses(data) == {h: "unchanged" for h in HOSTS}


def test_detach_then_status(fleet: Sandbox, tmp_path: Path) -> None:
    res = hostsetup("fleet", "apply", "--answers", answers(fleet), "--detach",
                    "--log", str(tmp_path / "run.log"), env=env(fleet))
    assert res.returncode == 0, res.stderr
    run_id = res.stdout.strip()
    assert f"hostsetup fleet status {run_id}" in res.stderr
    report = tmp_path / "status.json"

    def done() -> bool:
        status = hostsetup("fleet", "status", run_id, "--report", str(report), env=env(fleet))
        assert status.returncode in (0, 1), status.stderr
        return json.loads(report.read_text())["state"] == "done"

    wait_for(done, 60, "the detached run")
    data = json.loads(report.read_text())
    assert data["run_id"] == run_id and data["exit_code"] == 0
    assert statuses(data) == {h: "applied" for h in HOSTS}
    assert mirrors(member(fleet, "hv3")) == {"span-hv3": "vm1"}
    res = hostsetup("fleet", "status", "nosuchrun", env=env(fleet))
    assert res.returncode == 2 and "no run 'nosuchrun'" in res.stderr


def test_status_of_a_run_whose_process_died(fleet: Sandbox, tmp_path: Path) -> None:
    # hv1's apply takes long enough for the run to be killed before hv2's batch.
    slow_start(member(fleet, "hv1"))
    res = hostsetup("fleet", "apply", "--answers", answers(fleet), "--detach", env=env(fleet))
    run_id = res.stdout.strip()
    report = tmp_path / "status.json"

    def stored() -> bool:
        status = hostsetup("fleet", "status", run_id, "--report", str(report), env=env(fleet))
        return status.returncode == 0 and "apply" in json.dumps(
            json.loads(report.read_text())["hosts"][0]["tasks"])

    wait_for(stored, 30, "the detached run to send hv1's apply")
    pid = json.loads(report.read_text())["runner"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), 10, "the run's process to die")
    res = hostsetup("fleet", "status", run_id, "--report", str(report), env=env(fleet))
    assert res.returncode == 1, res.stdout
    data = json.loads(report.read_text())
    assert data["state"] == "abandoned"
    assert "hosts not reported above are in an unknown state" in data["stopped"]
    # hv1's agent still finishes the task it was given; nothing else was sent.
    wait_for(lambda: mirrors(member(fleet, "hv1")) != {}, 30, "hv1's apply")
    assert mirrors(member(fleet, "hv2")) == {}


# ------------------------------------------------------------------ failure modes


def test_worker_process_killed_mid_task_is_redelivered(fleet: Sandbox, tmp_path: Path) -> None:
    slow_start(member(fleet, "hv1"))
    report = tmp_path / "r.json"
    run = Background(fleet, "apply", "--answers", answers(fleet), "--report", str(report))
    run.wait_line(f"[hv1] apply: running - starting {SLOW_UNIT}")
    _main, *pool = agent_pids(member(fleet, "hv1"))
    assert len(pool) == 1  # concurrency 1: the pool process running the task
    os.kill(pool[0], signal.SIGKILL)
    assert run.finish() == 0, "".join(run.output)
    data = json.loads(report.read_text())
    assert statuses(data) == {h: "applied" for h in HOSTS}
    assert data["hosts"][0]["apply"]["redelivered"] is True
    assert "note: redelivered (an earlier attempt's worker died)" in data["hosts"][0]["errors"]
    assert unit_state(member(fleet, "hv1"), SLOW_UNIT) == "active"
    log = journal(member(fleet, "hv1"))
    assert "WorkerLostError" in log or "signal 9" in log


def test_agent_killed_mid_task_is_reported_then_redelivered(fleet: Sandbox,
                                                            tmp_path: Path) -> None:
    slow_start(member(fleet, "hv1"))
    report = tmp_path / "r.json"
    run = Background(fleet, "apply", "--answers", answers(fleet), "--report", str(report),
                     "--agent-wait", "1")
    run.wait_line(f"[hv1] apply: running - starting {SLOW_UNIT}")
    # The whole agent, as a crash; then stopped, or systemd would restart it (5 s).
    systemctl(member(fleet, "hv1"), "kill", "--signal=SIGKILL", AGENT)
    systemctl(member(fleet, "hv1"), "stop", AGENT)
    assert run.finish() == 1, "".join(run.output)
    data = json.loads(report.read_text())
    hv1 = data["hosts"][0]
    assert hv1["status"] == "unknown"
    assert "its agent stopped during the apply" in hv1["errors"][0]
    # The canary failed: the other hosts were not touched.
    assert statuses(data)["hv2"] == statuses(data)["hv3"] == "skipped"
    assert mirrors(member(fleet, "hv2")) == {}
    # A new agent (short visibility timeout) gets the unacknowledged task again.
    conf = (f"[agent]\nbroker = {fleet.env['HOSTSETUP_REDIS_URL']}\n"
            f"password = file:{host_mod.REDIS_PASSWORD}\nvisibility_timeout = 6\n")
    time.sleep(6)  # the task was delivered more than a visibility timeout ago
    restart_agent(fleet, "hv1", conf)
    try:
        app = fleet_mod.make_app(fleet_mod.broker_config(None, None, {}, env(fleet)))
        result = app.AsyncResult(hv1["tasks"]["apply"])
        wait_for(lambda: result.state == "SUCCESS", 30, "the redelivered apply on hv1")
        assert result.result["redelivered"] is True and result.result["exit_code"] == 0
        assert mirrors(member(fleet, "hv1")) == {"span-hv1": "vm1"}
    finally:  # back to the normal agent (the short timeout also shortens its time limit)
        restart_agent(fleet, "hv1")


def test_redis_restart_during_run(fleet: Sandbox, tmp_path: Path) -> None:
    slow_start(member(fleet, "hv1"))
    report = tmp_path / "r.json"
    run = Background(fleet, "apply", "--answers", answers(fleet), "--report", str(report))
    run.wait_line(f"[hv1] apply: running - starting {SLOW_UNIT}")
    redis_component.restart(fleet)
    assert run.finish() == 0, "".join(run.output)
    data = json.loads(report.read_text())
    assert statuses(data) == {h: "applied" for h in HOSTS}
    assert {h: mirrors(member(fleet, h)) for h in HOSTS} == {
        "hv1": {"span-hv1": "vm1"}, "hv2": {"span-hv2": "vm2"}, "hv3": {"span-hv3": "vm1"}}


def test_host_without_agent_is_reported_and_nothing_applied(fleet: Sandbox,
                                                            tmp_path: Path) -> None:
    text = Path(answers(fleet)).read_text() + "- name: hv9\n"
    extra = tmp_path / "fleet.yaml"
    extra.write_text(text)
    t0 = time.monotonic()
    res, data = run_fleet(fleet, "apply", "--answers", str(extra), "--agent-wait", "1",
                          report=tmp_path / "r.json")
    assert time.monotonic() - t0 < 60  # bounded, not a hang
    assert res.returncode == 5, res.stdout + res.stderr
    assert statuses(data) == {"hv1": "pending", "hv2": "pending", "hv3": "pending",
                              "hv9": "no agent"}
    assert "no agent is consuming queue hostsetup.host.hv9" in data["hosts"][3]["errors"][0]
    assert data["stopped"] == "plan failed on some host: nothing applied"
    assert all(mirrors(member(fleet, h)) == {} for h in HOSTS)


def test_invalid_plan_on_one_host_applies_nothing(fleet: Sandbox, tmp_path: Path) -> None:
    data = answers_mod.read_yaml(Path(answers(fleet)))
    data["hosts"][2]["services"] = {"require": ["nosuch.service"]}
    f = tmp_path / "fleet.yaml"
    manage.write_yaml(f, data)
    res, data = run_fleet(fleet, "apply", "--answers", str(f), report=tmp_path / "r.json")
    assert res.returncode == 3, res.stdout + res.stderr
    assert statuses(data) == {"hv1": "pending", "hv2": "pending", "hv3": "invalid"}
    assert data["hosts"][2]["errors"] == [
        "services.require[0]: unit 'nosuch.service' is not installed on this host"]
    assert data["stopped"] == "plan failed on some host: nothing applied"
    assert all(mirrors(member(fleet, h)) == {} for h in HOSTS)


@pytest.mark.parametrize(("max_fail", "applied_last"), [("0", False), ("50%", True)])
def test_max_fail_stops_later_batches(fleet: Sandbox, tmp_path: Path, max_fail: str,
                                      applied_last: bool) -> None:
    slow_start(member(fleet, "hv2"), "/bin/false")
    res, data = run_fleet(fleet, "apply", "--answers", answers(fleet), "--batch-size", "1",
                          "--max-fail", max_fail, report=tmp_path / "r.json")
    assert res.returncode == 1, res.stdout + res.stderr
    assert data["batches"] == [["hv1"], ["hv2"], ["hv3"]]
    got = statuses(data)
    assert got["hv1"] == "applied" and got["hv2"] == "failed"
    assert f"{SLOW_UNIT} ended with job result 'failed'" in " ".join(data["hosts"][1]["errors"])
    assert got["hv3"] == ("applied" if applied_last else "skipped")
    assert (mirrors(member(fleet, "hv3")) != {}) is applied_last
    if not applied_last:
        assert "more than max_fail 0: later batches not run" in data["stopped"]


def test_agent_refuses_pickle_and_foreign_task_names(fleet: Sandbox, tmp_path: Path) -> None:
    from kombu import Connection, Exchange, Queue

    marker = tmp_path / "unpickled"
    cfg = fleet_mod.broker_config(None, None, {}, env(fleet))
    app = fleet_mod.make_app(cfg)
    name = fleet_mod.queue_name("hv1")

    def push(task: str, args: list[Any], serializer: str) -> str:
        task_id = uuid.uuid4().hex
        headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id,
                   "parent_id": None, "group": None, "retries": 0, "eta": None,
                   "expires": None, "timelimit": [None, None], "origin": "test"}
        body = (args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
        with Connection(cfg.full_url()) as conn:
            conn.Producer().publish(body, serializer=serializer, headers=headers,
                                    exchange=Exchange(name), routing_key=name,
                                    declare=[Queue(name, Exchange(name), routing_key=name)])
        return task_id

    # Unpickling this payload would create the marker file.
    evil = push(fleet_mod.TASK_RUN, [Opener(str(marker))], "pickle")
    foreign = push("os.system", [f"touch {marker}"], "json")
    builtin = push("celery.accumulate", [1], "json")  # a Celery built-in: removed too
    # A good message sent after them is answered: they were taken and refused.
    good = app.send_task(fleet_mod.TASK_RUN, queue=name,
                         args=[{"host": "hv1", "mode": "plan", "answers": {"version": 1}}])
    assert good.get(timeout=30)["exit_code"] == 0
    assert not marker.exists()
    assert app.AsyncResult(evil).state == "PENDING"  # never decoded, never run
    for task_id in (foreign, builtin):
        assert app.AsyncResult(task_id).state == "FAILURE"  # refused as unregistered
    log = journal(member(fleet, "hv1"))
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "Received unregistered task of type 'os.system'" in log
    assert "Received unregistered task of type 'celery.accumulate'" in log
    # A message meant for another host is refused by the task itself.
    other = app.send_task(fleet_mod.TASK_RUN, queue=name,
                          args=[{"host": "hv2", "mode": "apply", "answers": {"version": 1}}])
    assert "refused: task for host 'hv2'" in other.get(timeout=30)["errors"][0]


class Opener:
    """Pickles as a call to open(path, 'w'): what an attacker's payload would do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_pickle_payload_really_opens(tmp_path: Path) -> None:
    """The marker check above is meaningful: unpickling this object does create the file."""
    marker = tmp_path / "m"
    pickle.loads(pickle.dumps(Opener(str(marker))))  # noqa: S301 - the point of the test
    assert marker.exists()


def tls_broker(sb: Sandbox) -> tuple[str, Path]:
    """A redis-server speaking only TLS (own CA, password): its URL and its dir."""
    import redis

    d = sb.path("tls", "x").parent
    sb.run("openssl", ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                       "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
                       "-subj", "/CN=hostsetup-test-ca"])
    sb.run("openssl", ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
                       "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr"])
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sb.run("openssl", ["openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem",
                       "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "1",
                       "-extfile", f"{d}/san.ext", "-out", f"{d}/server.pem"])
    port = redis_component.free_port()
    (d / "password").write_text("tls-secret\n")
    conf = d / "redis.conf"
    conf.write_text(f"port 0\ntls-port {port}\nbind 127.0.0.1\ndir {d}\nsave \"\"\n"
                    f"tls-cert-file {d}/server.pem\ntls-key-file {d}/server.key\n"
                    f"tls-ca-cert-file {d}/ca.pem\ntls-auth-clients no\n"
                    "requirepass tls-secret\n")

    def ready() -> bool:
        try:
            client = redis.Redis(host="127.0.0.1", port=port, ssl=True, socket_timeout=1,
                                 ssl_ca_certs=f"{d}/ca.pem", password="tls-secret")
            return bool(client.ping())
        except redis.RedisError:
            return False

    sb.spawn("redis-tls", ["redis-server", str(conf)], ready=ready)
    return f"rediss://127.0.0.1:{port}/0", d


def test_fleet_over_tls_with_password_reference(fleet: Sandbox, tmp_path: Path) -> None:
    sb = Sandbox(dir=tmp_path / "tls")
    try:
        url, d = tls_broker(sb)
        conf = tmp_path / "agent.conf"
        conf.write_text(f"[agent]\nbroker = {url}\npassword = file:{d}/password\n"
                        f"ca_certs = {d}/ca.pem\n")
        host = member(fleet, "hv1")
        sb.spawn("agent-hv1", [sys.executable, "-m", "wizard", "agent", "--config", str(conf),
                               "--name", "hv1"], env=host.env)
        one = tmp_path / "one.yaml"
        one.write_text("version: 1\nservices:\n"
                       f"  bus: {host.env['HOSTSETUP_DBUS_ADDRESS']}\n"
                       "  require: [libvirtd.service]\nhosts:\n- name: hv1\n")
        no_env = {"HOSTSETUP_REDIS_URL": "", "HOSTSETUP_REDIS_PASSWORD": ""}
        args = ["fleet", "plan", "--answers", str(one), "--config", str(conf)]
        wait_for(lambda: hostsetup(*args, env=no_env).returncode == 4, 60, "the TLS agent")
        res = hostsetup(*args, env=no_env)
        assert "[hv1] plan: pending (1 changes)" in res.stdout, res.stdout + res.stderr
        # Without the CA the server's certificate is not trusted: no connection.
        conf.write_text(f"[agent]\nbroker = {url}\npassword = file:{d}/password\n")
        res = hostsetup(*args, env=no_env)
        assert res.returncode == 5 and "certificate verify failed" in res.stderr
    finally:
        sb.stop()


@pytest.mark.parametrize("interrupt", [False, True], ids=["to-the-end", "ctrl-c"])
def test_progress_window_on_a_terminal(fleet: Sandbox, tmp_path: Path, interrupt: bool) -> None:
    """On a terminal, `fleet apply` shows each host's progress in a snack window,
    then restores the terminal and prints the per-host result; Ctrl-C stops waiting."""
    from tmux import Terminal

    slow_start(member(fleet, "hv1"))
    exports = " ".join(f"{k}={v}" for k, v in env(fleet).items() if k.startswith("HOSTSETUP_"))
    t = Terminal(f"env {exports} {ROOT}/.venv/bin/python -m wizard fleet apply "
                 f"--answers {answers(fleet)}", cwd=tmp_path)
    try:
        screen = t.wait_for(f"apply: running - starting {SLOW_UNIT}")
        assert "fleet apply: run" in screen and "hv2" in screen and "hv3" in screen
        assert "Fleet run in progress" in screen
        if interrupt:
            t.send("C-c")
            assert t.exit_code(30) == 130
            assert "interrupted" in t.screen()
            settings = t.stty().split()
            assert "icanon" in settings and "echo" in settings
            return
        assert t.exit_code(60) == 0
        done = t.wait_for("3 applied")
        assert "Fleet run in progress" not in done  # the window is gone
        assert "hv1" in done and "applied" in done
        settings = t.stty().split()
        assert "icanon" in settings and "echo" in settings
    finally:
        t.close()
    assert mirrors(member(fleet, "hv3")) == {"span-hv3": "vm1"}

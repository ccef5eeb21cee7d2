"""``sandbox up --hosts N`` through the CLI: full hosts, one agent each, a fleet run."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from helpers import hostsetup

from wizard.sandbox.core import Sandbox, alive


def read_env(path: Path) -> dict[str, str]:
    """``DIR/env`` (lines of ``export K=V``) as a dict."""
    pairs = (shlex.split(line.removeprefix("export "))[0].split("=", 1)
             for line in path.read_text().splitlines() if line)
    return {k: v for k, v in pairs}


def test_sandbox_fleet_of_full_hosts(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    try:
        res = hostsetup("sandbox", "up", "--dir", str(d), "--hosts", "2", timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"answers: {d / 'fleet-answers.yaml'}" in res.stdout
        env = read_env(d / "env")
        password = Path(env["HOSTSETUP_REDIS_PASSWORD"].removeprefix("file:")).read_text().strip()
        fleet = Sandbox.load(d)
        agents = [p for p in fleet.procs if p.name.startswith("agent-")]
        assert [p.name for p in agents] == ["agent-hv1", "agent-hv2"]
        for proc in agents:  # the Redis password is never on a command line
            assert password not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        # Every host is a full host: each has every component's daemons of its own.
        hosts = {name: Sandbox.load(d / name) for name in ("hv1", "hv2")}
        assert hosts["hv1"].env["HOSTSETUP_OVSDB"] != hosts["hv2"].env["HOSTSETUP_OVSDB"]
        assert set(hosts["hv1"].answers) == set(hosts["hv2"].answers) >= {"services", "ovs_mirror"}
        status = hostsetup("sandbox", "status", "--dir", str(d))
        assert status.returncode == 0 and "hv2/ovsdb-server" in status.stdout

        report = tmp_path / "apply.json"
        res = hostsetup("fleet", "apply", "--answers", str(d / "fleet-answers.yaml"),
                        "--report", str(report), env=env, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        data = json.loads(report.read_text())
        assert {h["name"]: h["status"] for h in data["hosts"]} == {"hv1": "applied",
                                                                   "hv2": "applied"}
        assert set(data["hosts"][0]["steps"]) == set(hosts["hv1"].answers)
        for name, port in (("hv1", "vm1"), ("hv2", "vm2")):
            out = subprocess.run(["ovs-vsctl", f"--db={hosts[name].env['HOSTSETUP_OVSDB']}",
                                  "--bare", "--columns=name", "list", "Mirror"],
                                 capture_output=True, text=True, check=True).stdout
            assert out.split() == [f"span-{name}"], port
        res = hostsetup("fleet", "plan", "--answers", str(d / "fleet-answers.yaml"), env=env,
                        timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        res = hostsetup("sandbox", "down", "--dir", str(d), timeout=120)
    assert res.returncode == 0
    assert "stopped agent-hv1" in res.stdout and "hv2: ovsdb-server" in res.stdout
    assert hostsetup("sandbox", "status", "--dir", str(d)).stdout == ""
    assert not any(alive(p.pid) for p in fleet.procs)

"""``sandbox up --hosts N`` through the CLI: real hosts, each running the agent as the
systemd unit of ``deploy/``, and a fleet run on them."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from helpers import hostsetup

from sandbox import host
from sandbox.core import Sandbox, alive

HOSTS = ("hv1", "hv2", "hv3")


def read_env(path: Path) -> dict[str, str]:
    """``DIR/env`` (lines of ``export K=V``) as a dict."""
    pairs = (shlex.split(line.removeprefix("export "))[0].split("=", 1)
             for line in path.read_text().splitlines() if line)
    return {k: v for k, v in pairs}


def agent_cmdlines(sb: Sandbox) -> list[str]:
    """Command lines of the host's agent processes (its cgroups, seen from outside)."""
    cgroup = Path(host.CGROUP_TREES[0], sb.env["HOSTSETUP_HOST_CGROUP"])
    lines = []
    for pid in host._cgroup_pids(cgroup):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "hostsetup agent" in line:
            lines.append(line)
    return lines


def test_fleet_of_real_hosts_with_agent_units(tmp_path: Path) -> None:
    d = tmp_path / "fleet"
    try:
        res = hostsetup("sandbox", "up", "--dir", str(d), "--hosts", "3", timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"answers: {d / 'fleet-answers.yaml'}" in res.stdout
        env = read_env(d / "env")
        password = Path(env["HOSTSETUP_REDIS_PASSWORD"].removeprefix("file:")).read_text().strip()
        fleet = Sandbox.load(d)
        hosts = {name: Sandbox.load(d / name) for name in HOSTS}
        for name, sb in hosts.items():
            # The agent is the deploy/ unit, enabled and running under the host's systemd.
            state = [subprocess.run(host.exec_argv(sb, "systemctl", query, "hostsetup-agent"),
                                    capture_output=True, text=True).stdout.strip()
                     for query in ("is-active", "is-enabled")]
            assert state == ["active", "enabled"], name
            lines = agent_cmdlines(sb)
            assert lines and all(password not in line for line in lines)  # never on a cmdline
        assert not [p for p in fleet.procs if p.name.startswith("agent-")]
        # Every host is a host of its own: its own systemd, OVS, libvirtd.
        assert hosts["hv1"].env["HOSTSETUP_OVSDB"] != hosts["hv2"].env["HOSTSETUP_OVSDB"]
        text = (d / "fleet-answers.yaml").read_text()
        assert "unix:" not in text  # the agents use each host's defaults
        status = hostsetup("sandbox", "status", "--dir", str(d))
        assert status.returncode == 0 and "hv2/systemd-nspawn" in status.stdout

        report = tmp_path / "apply.json"
        res = hostsetup("fleet", "apply", "--answers", str(d / "fleet-answers.yaml"),
                        "--report", str(report), env=env, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        data = json.loads(report.read_text())
        assert {h["name"]: h["status"] for h in data["hosts"]} == dict.fromkeys(HOSTS, "applied")
        assert data["batches"] == [["hv1"], ["hv2", "hv3"]]  # canary, then the rest
        assert set(data["hosts"][0]["steps"]) == set(hosts["hv1"].answers)
        for name, sb in hosts.items():
            out = subprocess.run(["ovs-vsctl", f"--db={sb.env['HOSTSETUP_OVSDB']}",
                                  "--bare", "--columns=name", "list", "Mirror"],
                                 capture_output=True, text=True, check=True).stdout
            assert out.split() == [f"span-{name}"]
        res = hostsetup("fleet", "plan", "--answers", str(d / "fleet-answers.yaml"), env=env,
                        timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        res = hostsetup("sandbox", "down", "--dir", str(d), timeout=120)
    assert res.returncode == 0
    assert "hv2: systemd-nspawn" in res.stdout
    assert hostsetup("sandbox", "status", "--dir", str(d)).stdout == ""
    assert not any(alive(p.pid) for p in fleet.procs)

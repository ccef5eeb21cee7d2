"""`hostsetup sandbox up` with every component, then plan / apply / plan on it."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import hostsetup

from wizard.sandbox.core import Sandbox, alive


def test_full_sandbox_plan_apply_plan(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    res = hostsetup("sandbox", "up", "--dir", str(d), timeout=300)
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        env = (d / "env").read_text()
        for key in ("HOSTSETUP_DBUS_ADDRESS", "HOSTSETUP_OVSDB", "HOSTSETUP_VSPHERE_URL",
                    "HOSTSETUP_VSPHERE_THUMBPRINT", "HOSTSETUP_LIBVIRT_URI",
                    "HOSTSETUP_REDIS_URL"):
            assert f"export {key}=" in env, key
        status = hostsetup("sandbox", "status", "--dir", str(d))
        assert status.returncode == 0, status.stdout

        answers = str(d / "answers.yaml")
        res = hostsetup("plan", "--answers", answers, "--report", str(tmp_path / "p.json"))
        assert res.returncode == 4, res.stdout + res.stderr
        planned = json.loads((tmp_path / "p.json").read_text())
        names = [s["name"] for s in planned["steps"]]
        assert names == ["services", "ovs_mirror", "vsphere_network", "ivshmem"]
        assert all(s["status"] == "pending" for s in planned["steps"]), planned

        res = hostsetup("apply", "--answers", answers, "--report", str(tmp_path / "a.json"),
                        timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        applied = json.loads((tmp_path / "a.json").read_text())
        assert all(s["status"] == "applied" for s in applied["steps"]), applied

        res = hostsetup("plan", "--answers", answers)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        pids = [p.pid for p in Sandbox.load(d).procs] if (d / "state.json").exists() else []
        down = hostsetup("sandbox", "down", "--dir", str(d), timeout=120)
    assert down.returncode == 0, down.stderr
    assert pids and not any(alive(pid) for pid in pids)
    assert hostsetup("sandbox", "status", "--dir", str(d)).returncode == 1

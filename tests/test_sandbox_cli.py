"""`hostsetup sandbox up` with every component, then plan / apply / plan on it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import ROOT, hostsetup
from tmux import Terminal, apply_and_finish

from sandbox.core import Sandbox, alive


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
        # Open vSwitch and libvirtd are stopped: their steps are checked once the
        # services step has started them.
        assert [s["status"] for s in planned["steps"]] == [
            "pending", "deferred", "pending", "deferred"], planned

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


def leftovers(d: Path) -> list[str]:
    """What a sandbox host in ``d`` leaves outside ``d``: cgroups, network namespaces."""
    from sandbox import host
    from sandbox.core import Sandbox

    sb = Sandbox(dir=d.resolve())
    found = [f"{tree}/{host.cgroup_name(sb)}" for tree in host.CGROUP_TREES
             if Path(tree, host.cgroup_name(sb)).exists()]
    return found + sorted(n for n in host.existing_namespaces() if n.startswith(host.prefix(sb)))


def test_up_down_up_in_the_same_dir(tmp_path: Path) -> None:
    """A second `sandbox up` (e.g. a second `make demo`) in a dir left by `down` works."""
    d = tmp_path / "again"
    try:
        for _ in range(2):
            res = hostsetup("sandbox", "up", "--dir", str(d), timeout=300)
            assert res.returncode == 0, res.stdout + res.stderr
            assert leftovers(d), "the host's cgroups and namespaces exist while it runs"
            leader = Sandbox.load(d).env["HOSTSETUP_HOST_PID"]
            res = hostsetup("apply", "--answers", str(d / "answers.yaml"), timeout=300)
            assert res.returncode == 0, res.stdout + res.stderr
            down = hostsetup("sandbox", "down", "--dir", str(d), timeout=120)
            assert down.returncode == 0, down.stderr
            assert not alive(int(leader))
            assert leftovers(d) == []
    finally:
        hostsetup("sandbox", "down", "--dir", str(d), timeout=120)


def test_product_inside_a_host_on_default_answers(tmp_path: Path) -> None:
    """`sandbox shell`: apply and the wizard run inside the host with answers that name
    no address (system bus, default OVSDB socket, qemu:///system, /etc/libvirt/hooks)."""
    d = tmp_path / "in"
    hostsetup_bin = str(ROOT / ".venv" / "bin" / "hostsetup")
    inside = str(d / "inside-answers.yaml")
    try:
        res = hostsetup("sandbox", "up", "--dir", str(d), timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        text = (d / "inside-answers.yaml").read_text()
        assert "unix:" not in text and "qemu:///" not in text and str(d / "run") not in text

        def shell(*argv: str) -> subprocess.CompletedProcess[str]:
            return hostsetup("sandbox", "shell", "--dir", str(d), "--", *argv, timeout=300)

        assert shell("hostname").stdout.strip() == "sandbox"  # inside the host
        res = shell(hostsetup_bin, "plan", "--answers", inside)
        assert res.returncode == 4, res.stdout + res.stderr
        assert "now OVSDB unreachable at unix:/var/run/openvswitch/db.sock" in res.stdout

        # The wizard, inside, on its terminal: review, Apply, summary.
        t = Terminal(f"{hostsetup_bin} sandbox shell --dir {d} -- {hostsetup_bin} "
                     f"--answers {inside} --report {d / 'wizard.json'} --log {d / 'w.log'}",
                     cwd=tmp_path)
        try:
            t.wait_for("[*] Host services")
            assert apply_and_finish(t, timeout=180) == 0
        finally:
            t.close()
        steps = json.loads((d / "wizard.json").read_text())["steps"]
        assert {s["name"]: s["status"] for s in steps} == {
            "services": "applied", "ovs_mirror": "applied", "vsphere_network": "applied",
            "ivshmem": "applied"}
        res = shell(hostsetup_bin, "apply", "--answers", inside)
        assert res.returncode == 0 and "nothing to change" in res.stdout, res.stdout
    finally:
        hostsetup("sandbox", "down", "--dir", str(d), timeout=120)


def test_without_the_checkout_the_sandbox_command_says_how_to_get_it(tmp_path: Path) -> None:
    """The sandbox is not installed with the product: an installed hostsetup (no
    checkout beside it) says where the sandbox is instead of failing on an import."""
    script = (
        "import sys\nfrom unittest import mock\nimport wizard.cli as cli\n"
        f"with mock.patch.object(cli, '__file__', {str(tmp_path / 'wizard' / 'cli.py')!r}):\n"
        f"    sys.exit(cli.main(['sandbox', 'status', '--dir', {str(tmp_path)!r}]))\n")
    res = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "the sandbox is not installed with hostsetup" in res.stderr
    assert "Traceback" not in res.stderr

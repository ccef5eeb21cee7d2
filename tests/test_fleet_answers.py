"""Fleet answers (``hosts:``), batching rules and broker settings; no services needed."""

from __future__ import annotations

import json
import ssl
import subprocess
from pathlib import Path

import pytest
from helpers import ROOT, hostsetup

from wizard import answers, fleet

FLEET = """\
version: 1
services:
  bus: system
  timeout: 5
  require: [libvirtd.service, ssh.service]
hosts:
- name: hv1
- name: hv2
  services:
    timeout: 7
    require: [ssh.service]
- name: hv3
  services: null
"""


def load(tmp_path: Path, text: str) -> answers.Answers:
    f = tmp_path / "fleet.yaml"
    f.write_text(text)
    return answers.load(f)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(answers.AnswersError) as exc:
        load(tmp_path, text)
    return exc.value.problems


def test_overrides_are_deep_merged(tmp_path: Path) -> None:
    loaded = load(tmp_path, FLEET)
    assert [h.name for h in loaded.hosts] == ["hv1", "hv2", "hv3"]
    hv1, hv2, hv3 = (h.answers.sections for h in loaded.hosts)
    assert hv1["services"].require == ["libvirtd.service", "ssh.service"]
    # Mappings merged (bus kept from the base), lists replaced.
    assert (hv2["services"].bus, hv2["services"].timeout) == ("system", 7)
    assert hv2["services"].require == ["ssh.service"]
    assert hv3 == {}  # null removes the section: hv3 runs no services step
    assert loaded.hosts[1].data["services"]["timeout"] == 7  # what the agent receives


def test_problems_name_host_key_and_line(tmp_path: Path) -> None:
    text = FLEET.replace("    timeout: 7\n", "    timeout: -7\n    startt: yes\n")
    text += "- name: hv4\n  services:\n    require: [not a unit]\n- name: hv1\n"
    assert problems(tmp_path, text) == [
        "hosts[4].name (line 18): 'hv1' is listed twice (also hosts[0])"]
    text = text.removesuffix("- name: hv1\n")
    assert problems(tmp_path, text) == [
        "hosts[1] (hv2).services.timeout (line 10): Input should be greater than 0 (got -7)",
        "hosts[1] (hv2).services.startt (line 11): unknown key",
        "hosts[3] (hv4).services.require (line 17): 'not a unit' is not a systemd unit name "
        "(e.g. libvirtd.service)",
    ]


def test_base_problem_listed_once_with_the_hosts_it_affects(tmp_path: Path) -> None:
    text = FLEET.replace("  timeout: 5\n", "  timeout: -2\n")
    # hv2 overrides the timeout, hv3 drops the section: only hv1 inherits the bad value.
    assert problems(tmp_path, text) == [
        "services.timeout (line 4): Input should be greater than 0 (got -2) (hosts hv1)"]


def test_host_entry_shape(tmp_path: Path) -> None:
    text = "version: 1\nhosts:\n- name: -bad\n- services: {}\n- name: ok\n  nosuchstep: {}\n"
    got = problems(tmp_path, text)
    assert got[0].startswith("hosts[0].name (line 3): String should match pattern")
    assert "hosts[1].name (line 4): required answer missing" in got
    assert "hosts[2].nosuchstep (line 6): unknown key" in got
    assert problems(tmp_path, "version: 1\nhosts: []\n") == [
        "hosts (line 2): expected a list of hosts, each with a 'name' (and optional "
        "per-host overrides)"]


def test_schema_includes_hosts() -> None:
    res = hostsetup("schema")
    schema = json.loads(res.stdout)
    host = schema["$defs"]["FleetHost"]
    assert host["required"] == ["name"]
    assert "services" in host["properties"] and host["additionalProperties"] is False


def test_single_host_commands_refuse_a_fleet_file(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(FLEET)
    res = hostsetup("plan", "--answers", str(f))
    assert res.returncode == 2 and "run it with 'hostsetup fleet plan'" in res.stderr


def test_fleet_command_errors(tmp_path: Path) -> None:
    f = tmp_path / "fleet.yaml"
    f.write_text(FLEET.replace("timeout: 7", "timeout: -1"))
    nothing_listens = {"HOSTSETUP_REDIS_URL": "redis://127.0.0.1:1/0"}
    res = hostsetup("fleet", "plan", "--answers", str(f), env=nothing_listens)
    assert res.returncode == 3 and "hosts[1] (hv2).services.timeout (line 10)" in res.stderr
    f.write_text(FLEET)
    res = hostsetup("fleet", "plan", "--answers", str(f), env=nothing_listens)
    assert res.returncode == 5 and "broker unreachable at redis://127.0.0.1:1/0" in res.stderr
    res = hostsetup("fleet", "apply", "--answers", str(f), "--max-fail", "x%",
                    env=nothing_listens)
    assert res.returncode == 2 and "max_fail 'x%': expected a count" in res.stderr
    res = hostsetup("fleet", "plan", "--answers", str(f), "--broker", "http://h/0",
                    "--config", str(tmp_path / "none.conf"))
    assert res.returncode == 2 and "'http://h/0' is not a redis:// or rediss:// URL" in res.stderr
    res = hostsetup("agent", "--broker", "redis://127.0.0.1:1/0", "--name", "bad name")
    assert res.returncode == 2 and "agent name 'bad name' is not a host name" in res.stderr
    assert "Traceback" not in res.stderr


def test_batches_and_max_fail() -> None:
    names = [f"h{i}" for i in range(7)]
    assert fleet.batches(names, 1, 0) == [["h0"], names[1:]]
    assert fleet.batches(names, 2, 3) == [["h0", "h1"], ["h2", "h3", "h4"], ["h5", "h6"]]
    assert fleet.batches(names[:1], 1, 0) == [["h0"]]
    assert fleet.batches([], 1, 0) == []
    assert fleet.allowed_failures("2", 50) == 2
    assert fleet.allowed_failures("10%", 50) == 5
    assert fleet.allowed_failures("10%", 9) == 0
    for bad in ("-1", "x", "101%", "1.5"):
        with pytest.raises(ValueError, match="expected a count"):
            fleet.parse_max_fail(bad)


def test_broker_password_and_tls_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss/word\n")
    conf = tmp_path / "agent.conf"
    conf.write_text(f"[agent]\nbroker = rediss://redis.example.net:6380/0\n"
                    f"password = file:{secret}\nca_certs = /etc/ca.pem\nname = hv7\n")
    values = fleet.load_config(conf)
    cfg = fleet.broker_config(None, None, values, {})
    assert values["name"] == "hv7"
    assert cfg.full_url() == "rediss://:p%40ss%2Fword@redis.example.net:6380/0"
    assert "p@ss" not in repr(cfg) and fleet.safe_url(cfg.full_url()) == \
        "rediss://:***@redis.example.net:6380/0"
    assert cfg.ssl_options() == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}
    # The command line and the environment come before agent.conf.
    monkeypatch.setenv("HS_PW", "other")
    cfg = fleet.broker_config("redis://h:1/2", "env:HS_PW", values, {})
    assert cfg.full_url() == "redis://:other@h:1/2" and cfg.ssl_options() is None
    with pytest.raises(fleet.FleetError, match="environment variable HS_NOPE is not set"):
        fleet.broker_config("redis://h:1/2", "env:HS_NOPE", {}, {}).full_url()
    with pytest.raises(fleet.FleetError, match=r"secret reference env:NAME or file:PATH \(value "
                       "not shown") as exc:
        fleet.broker_config("redis://h:1/2", "hunter2", {}, {})
    assert "hunter2" not in str(exc.value)
    with pytest.raises(fleet.FleetError, match=r"--broker redis://:\*\*\*@h:1/2: a password on"):
        fleet.broker_config("redis://:hunter2@h:1/2", None, {}, {})
    with pytest.raises(fleet.FleetError, match="no broker"):
        fleet.broker_config(None, None, {}, {})
    assert fleet.time_limit(fleet.VISIBILITY_TIMEOUT) < fleet.VISIBILITY_TIMEOUT


def test_deploy_files(tmp_path: Path) -> None:
    """The shipped unit verifies with systemd-analyze; the example config loads."""
    deploy = ROOT / "deploy"
    unit = (deploy / "hostsetup-agent.service").read_text()
    assert "ExecStart=/opt/hostsetup/.venv/bin/hostsetup agent --config " \
        "/etc/hostsetup/agent.conf" in unit
    local = tmp_path / "hostsetup-agent.service"  # the same unit, aimed at this checkout
    local.write_text(unit.replace("/opt/hostsetup/.venv", str(ROOT / ".venv")))
    res = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True,
                         text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    cfg = fleet.broker_config(None, None, fleet.load_config(deploy / "agent.conf.example"), {})
    assert cfg.url.startswith("rediss://") and cfg.password.startswith("file:")
    assert cfg.ssl_options() is not None and cfg.visibility_timeout == fleet.VISIBILITY_TIMEOUT

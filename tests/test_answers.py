"""The answers file: validation with key paths and lines, schema, template, examples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT, hostsetup

from wizard import answers


def test_three_mistakes_all_named_with_lines(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        "version: 1\n"
        "interactive: [services, nosuchstep]\n"
        "services:\n"
        "  bus: system\n"
        "  timeout: -5\n"
        "  startt: true\n"
    )
    res = hostsetup("plan", "--answers", str(f))
    assert res.returncode == 3
    err = res.stderr
    assert "3 problem(s)" in err
    assert "interactive[1] (line 2):" in err and "nosuchstep" in err
    assert "services.timeout (line 5): Input should be greater than 0 (got -5)" in err
    assert "services.startt (line 6): unknown key" in err
    assert "Traceback" not in err


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("version: 1\nservices:\n  bus: [system\n")
    res = hostsetup("apply", "--answers", str(f))
    assert res.returncode == 3
    assert "(line 4): not valid YAML" in res.stderr or "(line 3)" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_version_and_unreadable_file(tmp_path: Path) -> None:
    f = tmp_path / "a.yaml"
    f.write_text("services: {}\n")
    res = hostsetup("apply", "--answers", str(f))
    assert res.returncode == 3 and "version (line 1): required answer missing" in res.stderr
    res = hostsetup("apply", "--answers", str(tmp_path / "none.yaml"))
    assert res.returncode == 3 and "cannot read" in res.stderr


def test_secret_value_is_never_echoed() -> None:
    from pydantic import ValidationError

    from steps.base import SecretRef, StepModel, resolve_secret

    class M(StepModel):
        password: SecretRef

    with pytest.raises(ValidationError) as exc:
        M(password="hunter2-in-clear")
    problems = [str(p) for p in answers.errors_of(exc.value, None, ("x",))]
    assert problems == ["x.password: must be a secret reference env:NAME or file:PATH "
                        "(value not shown)"]
    assert "hunter2" not in str(problems)
    os.environ["HS_TEST_SECRET"] = "s3cret"
    assert resolve_secret(M(password="env:HS_TEST_SECRET").password) == "s3cret"
    with pytest.raises(ValueError, match="HS_TEST_UNSET is not set"):
        resolve_secret("env:HS_TEST_UNSET")


def test_schema_is_json_schema_of_every_step() -> None:
    res = hostsetup("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    from steps import REGISTRY

    assert schema["required"] == ["version"]
    for step in REGISTRY:
        assert step.name in schema["properties"]


def test_template_validates(tmp_path: Path) -> None:
    res = hostsetup("answers-template")
    assert res.returncode == 0
    assert res.stdout.startswith("# hostsetup answers file")
    f = tmp_path / "t.yaml"
    f.write_text(res.stdout)
    loaded = answers.load(f)
    from steps import REGISTRY

    assert [s.name for s in loaded.selected()] == [s.name for s in REGISTRY]


@pytest.mark.parametrize("example", sorted((ROOT / "examples" / "answers").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    assert answers.load(example).sections


def test_usage_error_exits_2() -> None:
    assert hostsetup("plan").returncode == 2  # --answers missing
    assert hostsetup("frobnicate").returncode == 2


def test_template_hosts_example_validates(tmp_path: Path) -> None:
    text = hostsetup("answers-template").stdout
    start = text.index("# hosts:")
    uncommented = text[:start] + "\n".join(
        line.removeprefix("# ") for line in text[start:].splitlines())
    f = tmp_path / "fleet.yaml"
    f.write_text(uncommented)
    loaded = answers.load(f)
    assert [h.name for h in loaded.hosts] == ["hv1", "hv2", "hv3"]

"""The command line's options: where they may be given."""

from __future__ import annotations

from pathlib import Path

import pytest

from wizard.cli import build_parser


@pytest.mark.parametrize("argv, log, report", [
    (["--log", "a.log", "--report", "a.json", "plan", "--answers", "x.yaml"], "a.log", "a.json"),
    (["plan", "--answers", "x.yaml", "--log", "b.log"], "b.log", None),
    (["--log", "a.log", "apply", "--answers", "x.yaml", "--log", "b.log"], "b.log", None),
    (["plan", "--answers", "x.yaml"], None, None),
    ([], None, None),
])
def test_log_and_report_before_or_after_the_subcommand(argv: list[str], log: str | None,
                                                       report: str | None) -> None:
    args = build_parser().parse_args(argv)
    assert args.log == (Path(log) if log else None)
    assert args.report == (Path(report) if report else None)

"""hostsetup: the program (CLI, answers, screens, runner, report, fleet, sandbox)."""

__version__ = "0.1.0"

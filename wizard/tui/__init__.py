"""The wizard on screen: newt/snack windows.

- :mod:`wizard.tui.widgets`: the screen (keys, resize, Ctrl-C) and small windows;
- :mod:`wizard.tui.questions`: a step's questions, pickers and record lists;
- :mod:`wizard.tui.flow`: the pages (declared as data), apply and the summary;
- :mod:`wizard.tui.fleet`: the fleet run's progress window.

Importing this package loads snack only (the first screen must come fast).
"""

from wizard.tui.fleet import FleetProgress
from wizard.tui.flow import run_wizard

__all__ = ["FleetProgress", "run_wizard"]

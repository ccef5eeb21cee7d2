"""The exit codes of ``hostsetup``: the stable contract documented in the README.

Standard library only, so the CLI can use them before any heavy import.
"""

EXIT_OK = 0  # done, or nothing to change
EXIT_FAILED = 1  # a step failed
EXIT_USAGE = 2  # bad command line (or the wizard without a terminal)
EXIT_INVALID = 3  # answers invalid or required answers missing
EXIT_PENDING = 4  # plan found changes pending
EXIT_UNREACHABLE = 5  # a backend is unreachable
EXIT_INTERRUPTED_RUN = 6  # an earlier run was interrupted (resume, undo or ignore it)
EXIT_INTERRUPTED = 130  # Ctrl-C, or Cancel in the wizard

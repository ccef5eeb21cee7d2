"""The adapters: one module per system, the only code that imports its library.

Only :mod:`backends.bundle` loads them (lazily, from its table); steps never
import this package (an import-linter rule), they see :mod:`backends.interfaces`.
"""

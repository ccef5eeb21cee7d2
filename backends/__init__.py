"""Thin adapters, one per system; the only modules that import those libraries.

Steps import :mod:`backends.interfaces` only; the wizard builds the real
bundle (:mod:`wizard.backends`).
"""

"""Everything hostsetup knows of the systems it configures.

- :mod:`backends.interfaces`: protocols, value types, errors and one typed
  accessor per system; all that steps may import.
- :mod:`backends.adapters`: one adapter per system, the only modules that
  import that system's library (steps may not import them).
- :mod:`backends.bundle`: the real bundle, a table kind -> adapter, loaded lazily.
"""

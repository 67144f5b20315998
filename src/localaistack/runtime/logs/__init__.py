"""Per-run logs: ``format`` (the records on disk), ``writer`` (``LogWriter``, used by the
supervisor) and ``reader`` (iterate, tail, follow, format for ``las logs``).

The format and both sides' guarantees are specified in docs/logs.md.  This package imports
nothing, so that the supervisor, which imports ``writer``, does not load the readers.
"""

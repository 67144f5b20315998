"""The ``las`` command line: parse, call control and runtime, format output."""

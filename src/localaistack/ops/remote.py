"""The operations over HTTP: a client of `las serve` (written in issue #19, H2b)."""

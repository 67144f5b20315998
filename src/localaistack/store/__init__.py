"""Durable state shared by control and runtime: paths and the SQLite store."""

"""Isolated environments the suite restores into: PostgreSQL, Redis, object and secret stores.

Each is a context manager with three providers (embedded, docker, external) chosen by name.
"""

"""Isolated environments the suite restores into: PostgreSQL, Redis, an object store, a secret store.

Each is a context manager with three providers (embedded, docker, external) chosen by name.
"""

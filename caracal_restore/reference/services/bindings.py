"""The Gateway's binding map of release 2026.06 (FACTS-2026.06 §2.9).

A map ``zone_id + "\\x00" + resource_identifier`` → application id, plus the revision it was
loaded at. ``reload`` reads the singleton revision, the whole ``gateway_resource_bindings``
table, and the revision again, up to 5 times until both reads agree. ``reload_if_changed``
reads only the revision and reloads when it *differs* from the cached one — so rows edited
without a revision bump keep the old map ("stale binding revision"), on purpose.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from caracal_restore.reference.services.common import Database

MAX_ATTEMPTS = 5


class BindingError(Exception):
    """The revision row or binding table could not be read (``/ready``: postgres_unreachable)."""


def _revision(conn: psycopg.Connection[Any]) -> int:
    rows = conn.execute("SELECT version FROM gateway_binding_revision WHERE id = true").fetchall()
    if not rows:
        raise BindingError("gateway binding revision row missing")
    if len(rows) > 1:
        raise BindingError("gateway binding revision query returned multiple rows")
    version = int(rows[0][0])
    if version < 0:
        raise BindingError(f"gateway binding revision {version} is negative")
    return version


class BindingCache:
    """The in-memory binding map and the revision it reflects."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._map: dict[str, str] = {}
        self.revision: int | None = None

    def reload(self) -> None:
        """Full reload (``BindingError`` on any failure, the map unchanged)."""
        try:
            for _ in range(MAX_ATTEMPTS):
                with self._db.transaction() as conn:
                    before = _revision(conn)
                    rows = conn.execute(
                        "SELECT resource_identifier, zone_id, application_id"
                        " FROM gateway_resource_bindings"
                    ).fetchall()
                    after = _revision(conn)
                if before == after:
                    with self._lock:
                        self._map = {f"{zone}\x00{res}": str(app) for res, zone, app in rows}
                        self.revision = after
                    return
        except psycopg.Error as exc:
            raise BindingError(f"gateway bindings: {type(exc).__name__}") from None
        raise BindingError("gateway binding revision kept changing during reload")

    def reload_if_changed(self) -> bool:
        """Reload only when the stored revision differs from the cached one; True if reloaded."""
        try:
            with self._db.transaction() as conn:
                current = _revision(conn)
        except psycopg.Error as exc:
            raise BindingError(f"gateway binding revision: {type(exc).__name__}") from None
        if current == self.revision:
            return False
        self.reload()
        return True

    def lookup(self, zone_id: str, resource_identifier: str) -> str | None:
        """The application a (zone, resource) is bound to, from the cached map."""
        with self._lock:
            return self._map.get(f"{zone_id}\x00{resource_identifier}")

    def __len__(self) -> int:
        with self._lock:
            return len(self._map)

"""The Gateway's revocation state of release 2026.06 (FACTS-2026.06 §5.2–5.3).

Two sources, both in memory: the Postgres snapshot (start-up fatal, reloaded every 30 s, fresh
for 70 s) and the ``caracal.sessions.revoke`` stream, read with the single shared group
``gateway-revocation`` created from id ``0``; entries whose ``_sig`` (STREAMS_HMAC_KEY) does not
verify are dropped and acknowledged; ``session_id``, ``agent_session_id`` and
``delegation_edge_id``/``edge_id`` are marked revoked for 24 h.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis as redis_lib

from caracal_restore.chainhash import stream_signature
from caracal_restore.reference.services.common import Database, ensure_group

log = logging.getLogger(__name__)

STREAM = "caracal.sessions.revoke"
GROUP = "gateway-revocation"
FRESH_SECONDS = 70.0
MARK_SECONDS = 86400.0
SNAPSHOT_QUERIES = (
    "SELECT id FROM sessions WHERE status = 'revoked'"
    " AND expires_at > now() - interval '86400 seconds'",
    "SELECT id FROM agent_sessions WHERE status IN ('suspended', 'terminated')"
    " AND updated_at > now() - interval '86400 seconds'",
    "SELECT id FROM delegation_edges WHERE status = 'revoked' AND revoked_at IS NOT NULL"
    " AND revoked_at > now() - interval '86400 seconds'",
)
_MARKED_FIELDS = (b"session_id", b"agent_session_id", b"delegation_edge_id", b"edge_id")


class Revocations:
    """Revoked anchors known to this Gateway."""

    def __init__(self, db: Database, streams_key: bytes) -> None:
        self._db = db
        self._key = streams_key
        self._lock = threading.Lock()
        self._snapshot: frozenset[str] = frozenset()
        self._marks: dict[str, float] = {}
        self._loaded_at: float | None = None
        self.consumer = f"gateway-{socket.gethostname()}-{os.getpid()}"

    def reload(self) -> int:
        """Replace the snapshot from Postgres (raises ``psycopg.Error``); returns the count."""
        ids: set[str] = set()
        with self._db.transaction() as conn:
            for query in SNAPSHOT_QUERIES:
                ids.update(str(row[0]) for row in conn.execute(query).fetchall())
        with self._lock:
            self._snapshot = frozenset(ids)
            self._loaded_at = time.monotonic()
        return self.count()

    def fresh(self) -> bool:
        """True while the last snapshot is at most 70 s old."""
        with self._lock:
            loaded = self._loaded_at
        return loaded is not None and time.monotonic() - loaded <= FRESH_SECONDS

    def count(self) -> int:
        """Revoked anchors in memory (snapshot plus unexpired stream marks)."""
        now = time.monotonic()
        with self._lock:
            live = {k for k, until in self._marks.items() if until > now}
            return len(self._snapshot | live)

    def is_revoked(self, anchors: Iterable[object]) -> bool:
        """True when any of the given ids is revoked."""
        now = time.monotonic()
        with self._lock:
            for anchor in anchors:
                if not anchor:
                    continue
                key = str(anchor)
                if key in self._snapshot or self._marks.get(key, 0.0) > now:
                    return True
        return False

    def mark(self, ids: Iterable[str]) -> None:
        """Mark ids revoked for 24 h."""
        until = time.monotonic() + MARK_SECONDS
        with self._lock:
            for value in ids:
                if value:
                    self._marks[value] = until

    def handle(self, fields: Mapping[bytes, bytes]) -> bool:
        """Apply one stream entry; False when its signature does not verify (dropped)."""
        given = fields.get(b"_sig", b"").decode(errors="replace")
        expected = stream_signature(self._key, STREAM, dict(fields))
        if not given or not hmac.compare_digest(given, expected):
            log.warning("gateway: dropped a revocation entry with a bad _sig")
            return False
        self.mark(fields[f].decode(errors="replace") for f in _MARKED_FIELDS if fields.get(f))
        return True

    def consume(self, client: redis_lib.Redis, stopping: threading.Event) -> None:
        """Read the stream with the shared group until stopped."""
        created = False
        while not stopping.is_set():
            try:
                if not created:
                    ensure_group(client, STREAM, GROUP, "0")
                    created = True
                reply: Any = client.xreadgroup(GROUP, self.consumer, {STREAM: ">"}, count=100,
                                          block=200)
            except redis_lib.RedisError:
                created = False
                stopping.wait(0.5)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self.handle(fields or {})
                    try:
                        client.xack(STREAM, GROUP, entry_id)
                    except redis_lib.RedisError:
                        break


"""The STS revocation consumer of release 2026.06 (FACTS-2026.06 §5.1–5.2, §5.4).

Group ``sts-revocation`` on ``caracal.sessions.revoke`` (created at ``$`` when missing),
consumer ``sts-<host>-<pid>-revocations``. At start, pending entries idle for more than 30 s
(a restored Redis keeps the old consumer's PEL) are claimed. Each entry: ``_sig`` must verify
under STREAMS_HMAC_KEY (else dropped and acknowledged); ``zone_id`` and ``session_id`` or
``agent_session_id`` are required; with ``session_id`` the session and its descendants (over
``parent_id``) become ``revoked`` — the only way a Coordinator-originated revocation reaches
``sessions`` at 2026.06. Failures count in ``stream-failure:caracal.sessions.revoke:<id>``
(24 h); the fifth dead-letters to ``caracal.sessions.revoke.dead`` and acknowledges.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
import redis as redis_lib

from caracal_restore.chainhash import stream_signature
from caracal_restore.reference.services.common import Database, ensure_group

log = logging.getLogger(__name__)

STREAM = "caracal.sessions.revoke"
GROUP = "sts-revocation"
DEAD_STREAM = "caracal.sessions.revoke.dead"
CLAIM_IDLE_MS = 30_000
MAX_FAILURES = 5
RETRY_SECONDS = 5.0
REVOKE_TREE = (
    "WITH RECURSIVE tree AS ("
    " SELECT id FROM sessions WHERE zone_id = %(zone)s AND id = %(sid)s"
    " UNION SELECT s.id FROM sessions s JOIN tree t ON s.parent_id = t.id)"
    " UPDATE sessions SET status = 'revoked'"
    " WHERE id IN (SELECT id FROM tree) AND status = 'active'"
)


class _Failed(Exception):
    """Processing failed; the entry stays pending until its fifth failure."""


class StsRevocationConsumer:
    """Applies signed revocation entries to ``sessions``."""

    def __init__(self, db: Database, client: redis_lib.Redis, streams_key: bytes) -> None:
        self._db, self._redis, self._key = db, client, streams_key
        self.consumer = f"sts-{socket.gethostname()}-{os.getpid()}-revocations"

    def run(self, stopping: threading.Event) -> None:
        """Claim stale pending entries once, then read new ones; retry our PEL every 5 s."""
        ready = False
        last_retry = 0.0
        while not stopping.is_set():
            try:
                if not ready:
                    ensure_group(self._redis, STREAM, GROUP, "$")
                    self._claim_idle()
                    ready = True
                if time.monotonic() - last_retry >= RETRY_SECONDS:
                    last_retry = time.monotonic()
                    self._read("0", block=None)
                self._read(">", block=200)
            except redis_lib.RedisError:
                ready = False
                stopping.wait(0.5)

    def _claim_idle(self) -> None:
        cursor: Any = "0-0"
        while True:
            # The claimed entries join our PEL; the next PEL read processes them.
            reply: Any = self._redis.xautoclaim(STREAM, GROUP, self.consumer, CLAIM_IDLE_MS,
                                                start_id=cursor, count=100)
            cursor = reply[0]
            if cursor in (b"0-0", "0-0"):
                return

    def _read(self, start: str, *, block: int | None) -> None:
        reply: Any = self._redis.xreadgroup(GROUP, self.consumer, {STREAM: start}, count=100,
                                            block=block)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self.handle(entry_id, fields or {})

    def handle(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> None:
        """Verify and apply one entry; acknowledge unless it should be retried."""
        if not fields:  # trimmed from the stream while pending
            self._redis.xack(STREAM, GROUP, entry_id)
            return
        given = fields.get(b"_sig", b"").decode(errors="replace")
        if not given or not hmac.compare_digest(given,
                                                stream_signature(self._key, STREAM, dict(fields))):
            log.warning("sts: dropped a revocation entry with a bad _sig")
            self._redis.xack(STREAM, GROUP, entry_id)
            return
        try:
            self._apply({k.decode(): v.decode(errors="replace") for k, v in fields.items()})
        except _Failed as exc:
            self._count_failure(entry_id, fields, str(exc))
            return
        self._redis.xack(STREAM, GROUP, entry_id)

    def _apply(self, values: Mapping[str, str]) -> None:
        zone, sid = values.get("zone_id", ""), values.get("session_id", "")
        if not zone or not (sid or values.get("agent_session_id")):
            raise _Failed("missing session_id or agent_session_id")
        if not sid:
            return
        try:
            with self._db.transaction() as conn:
                conn.execute(REVOKE_TREE, {"zone": zone, "sid": sid})
        except psycopg.Error as exc:
            raise _Failed(f"revoke session: {type(exc).__name__}") from None

    def _count_failure(self, entry_id: bytes, fields: Mapping[bytes, bytes], error: str) -> None:
        key = f"stream-failure:{STREAM}:{entry_id.decode()}"
        failures = int(self._redis.incr(key))
        self._redis.expire(key, 86400)
        if failures < MAX_FAILURES:
            return
        dead = {"original_id": entry_id.decode(), "error": error,
                "values": json.dumps({k.decode(): v.decode(errors="replace")
                                      for k, v in fields.items()}, separators=(",", ":"))}
        dead["_sig"] = stream_signature(self._key, DEAD_STREAM, dead)
        self._redis.xadd(DEAD_STREAM, dead)  # type: ignore[arg-type]
        self._redis.xack(STREAM, GROUP, entry_id)

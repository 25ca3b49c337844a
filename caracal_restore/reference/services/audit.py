"""Reference audit ingestor of release 2026.06 (FACTS-1.0 §4.2–4.5, FACTS-2026.06 §4).

Consumer group ``audit-ingestor`` on ``caracal.audit.events`` (created at ``0`` when missing,
so entries restored with Redis are ingested too). Per message: ``data`` missing → DLQ
``missing_data_field``; ``sig`` missing or wrong → DLQ ``hmac_verify_failed``; JSON without
``id``/``zone_id``/``occurred_at`` → DLQ ``json_parse_error:<err>``; then one READ COMMITTED
transaction: per-zone advisory lock, jsonb round trip, chain head by ``ORDER BY chain_seq DESC
NULLS LAST LIMIT 1``, content hash and chain HMAC, ``chain_seq`` + 1, ``ON CONFLICT (id,
occurred_at) DO NOTHING``; a duplicate whose content differs raises an
``audit_ingest_alerts`` row ``content_mismatch_on_replay`` and goes to DLQ
``tamper_on_replay``. XACK follows (at 2026.06 even when the DLQ write failed). No NUL
stripping (2026.06), and never the one-time rehash: this service does not touch
``audit_chain_rehash``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
import redis as redis_lib

from caracal_restore.chainhash import chain_hmac, content_hash, parse_hmac_key, producer_signature
from caracal_restore.chainhead import zone_head
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.reference.services.common import (
    Database,
    Request,
    Response,
    RunningService,
    StartupError,
    ensure_group,
    json_response,
    ready_failed,
    redis_client,
    require_secret,
    starting,
)
from caracal_restore.reference.services.producer import AUDIT_STREAM

log = logging.getLogger(__name__)

GROUP = "audit-ingestor"
DLQ_STREAM = "caracal.audit.events.dlq"
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$"
)


class _Rejected(Exception):
    """A message that goes to the DLQ with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_rfc3339(text: str) -> dt.datetime:
    """An RFC 3339 timestamp as aware UTC, truncated to microseconds (``ValueError`` if bad)."""
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"occurred_at {text!r} is not RFC 3339")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    micros = int((match.group(7) or "").ljust(6, "0")[:6])
    zone = match.group(8)
    offset = dt.timedelta(0)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    moment = dt.datetime(year, month, day, hour, minute, second, micros,
                         tzinfo=dt.timezone(offset))
    return moment.astimezone(dt.UTC)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def insert_event(conn: psycopg.Connection[Any], key: bytes | None, data: str,
                 event: Mapping[str, Any], sig: str | None) -> str:
    """Insert one wire event into its zone's chain: ``inserted``, ``duplicate`` or ``tamper``.

    ``data`` is the wire JSON text and ``event`` its decoding; the JSON fields are taken from
    ``data`` by the server, so their hashed text is exactly ``jsonb::text`` of the raw value.
    """
    zone_id = str(event["zone_id"])
    occurred_at = parse_rfc3339(str(event["occurred_at"]))
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (zone_id,))
    det, diag, meta = conn.execute(
        "SELECT NULLIF((d -> 'determining_policies_json')::text, 'null'),"
        " NULLIF((d -> 'diagnostics_json')::text, 'null'),"
        " NULLIF((d -> 'metadata_json')::text, 'null') FROM (SELECT %s::jsonb AS d) AS wire",
        (data,),
    ).fetchone() or (None, None, None)
    # The ingestor's ORDER BY chain_seq DESC NULLS LAST LIMIT 1, through the index.
    head = zone_head(conn, zone_id)
    prev, prev_seq = (head[0] or "", head[1] or 0) if head else ("", 0)
    texts = {f: _text(event.get(f)) for f in (
        "id", "event_type", "request_id", "decision", "policy_set_id",
        "policy_set_version_id", "manifest_sha", "evaluation_status")}
    digest = content_hash(
        id=str(texts["id"]), zone_id=zone_id, event_type=texts["event_type"] or "",
        request_id=texts["request_id"], decision=texts["decision"],
        policy_set_id=texts["policy_set_id"],
        policy_set_version_id=texts["policy_set_version_id"],
        manifest_sha=texts["manifest_sha"], evaluation_status=texts["evaluation_status"],
        determining_policies_json=det, diagnostics_json=diag, metadata_json=meta,
        occurred_at=occurred_at,
    )
    inserted = conn.execute(
        "INSERT INTO audit_events (id, zone_id, event_type, request_id, decision, policy_set_id,"
        " policy_set_version_id, manifest_sha, evaluation_status, determining_policies_json,"
        " diagnostics_json, metadata_json, occurred_at, content_sha256, prev_content_sha256,"
        " chain_hmac, chain_seq, ingest_signature)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s, %s,"
        " %s, %s, %s, %s) ON CONFLICT (id, occurred_at) DO NOTHING RETURNING 1",
        (texts["id"], zone_id, texts["event_type"], texts["request_id"], texts["decision"],
         texts["policy_set_id"], texts["policy_set_version_id"], texts["manifest_sha"],
         texts["evaluation_status"], det, diag, meta, occurred_at, digest, prev or None,
         chain_hmac(key, digest, prev), prev_seq + 1, sig),
    ).fetchone()
    if inserted:
        return "inserted"
    stored = conn.execute(
        "SELECT content_sha256 FROM audit_events WHERE id = %s AND occurred_at = %s",
        (texts["id"], occurred_at),
    ).fetchone()
    if stored is not None and stored[0] != digest:
        conn.execute(
            "INSERT INTO audit_ingest_alerts (event_id, zone_id, kind, detail)"
            " VALUES (%s, %s, 'content_mismatch_on_replay', %s)",
            (texts["id"], zone_id, f"stored={stored[0]} incoming={digest}"),
        )
        return "tamper"
    return "duplicate"


class _Ingestor:
    """The consumer loop and its readiness state."""

    def __init__(self, db: Database, rds: redis_lib.Redis, key: bytes | None) -> None:
        self.db, self.redis, self.key = db, rds, key
        self.consumer = os.environ.get("HOSTNAME") or f"audit-{socket.gethostname()}-{os.getpid()}"
        self.healthy = threading.Event()
        self.ingested = 0

    def run(self, stopping: threading.Event) -> None:
        """Drain our own PEL, then read new entries until stopped."""
        start, grouped = "0", False
        while not stopping.is_set():
            try:
                if not grouped:
                    ensure_group(self.redis, AUDIT_STREAM, GROUP, "0")
                    grouped = True
                reply: Any = self.redis.xreadgroup(GROUP, self.consumer, {AUDIT_STREAM: start},
                                                   count=100,
                                                   block=None if start == "0" else 200)
                self.healthy.set()
                entries = reply[0][1] if reply else []
                if start == "0" and not entries:
                    start = ">"
                    continue
                if not all([self.handle(entry_id, fields or {}) for entry_id, fields in entries]):
                    # A transient PostgreSQL error: the entry stays pending; retry the PEL.
                    start = "0"
                    stopping.wait(0.5)
            except redis_lib.RedisError:
                self.healthy.clear()
                start, grouped = "0", False
                stopping.wait(0.5)

    def handle(self, entry_id: bytes, fields: Mapping[bytes, bytes]) -> bool:
        """Verify, insert and acknowledge one message (or dead-letter it); False to retry later."""
        if not fields:  # a PEL entry whose data was trimmed comes back empty
            self.redis.xack(AUDIT_STREAM, GROUP, entry_id)
            return True
        try:
            event, sig = self._decode(fields)
            with self.db.transaction() as conn:
                outcome = insert_event(conn, self.key, fields[b"data"].decode(), event, sig)
            if outcome == "tamper":
                raise _Rejected("tamper_on_replay")
            self.ingested += outcome == "inserted"
        except _Rejected as exc:
            self._dead_letter(entry_id, fields, exc.reason)
        except psycopg.OperationalError:
            log.warning("audit: transient PostgreSQL error; the entry stays pending")
            return False
        except psycopg.Error as exc:
            self._dead_letter(entry_id, fields, f"pg_permanent_error:{type(exc).__name__}")
        self.redis.xack(AUDIT_STREAM, GROUP, entry_id)
        return True

    def _decode(self, fields: Mapping[bytes, bytes]) -> tuple[dict[str, Any], str | None]:
        data = fields.get(b"data")
        if data is None:
            raise _Rejected("missing_data_field")
        sig = fields.get(b"sig")
        if self.key is not None:
            expected = producer_signature(self.key, data)
            if sig is None or not hmac.compare_digest(expected, sig.decode(errors="replace")):
                raise _Rejected("hmac_verify_failed")
        try:
            event = json.loads(data)
            if not isinstance(event, dict):
                raise ValueError("event is not an object")
            for name in ("id", "zone_id", "occurred_at"):
                if not event.get(name):
                    raise ValueError(f"missing {name}")
            parse_rfc3339(str(event["occurred_at"]))
        except ValueError as exc:
            raise _Rejected(f"json_parse_error:{exc}") from None
        return event, sig.decode() if sig is not None else None

    def _dead_letter(self, entry_id: bytes, fields: Mapping[bytes, bytes], reason: str) -> None:
        entry: dict[bytes, bytes] = {b"reason": reason.encode(), b"src_id": entry_id,
                                     b"received_at": str(int(time.time() * 1000)).encode()}
        for name, value in fields.items():
            entry[b"src_" + name] = value  # src_id ends up holding the event id, as in 2026.06
        try:
            self.redis.xadd(DLQ_STREAM, entry)  # type: ignore[arg-type]
        except redis_lib.RedisError:
            log.error("audit: DLQ write failed; the entry is acknowledged anyway (2026.06)")


def start_audit(
    *, pg: PgEndpoint, redis: RedisEndpoint, secrets: Mapping[str, str]
) -> RunningService:
    """Start the reference audit ingestor; use as a context manager.

    ``secrets`` maps secret file names to values; ``auditHmacKey`` is required.
    """
    try:
        key = parse_hmac_key(require_secret(secrets, "auditHmacKey", "audit"))
    except ValueError as exc:
        raise StartupError(f"audit: {exc}") from None
    with starting("audit") as life:
        rds = redis_client(redis)
        life.on_stop(rds.close)
        ingestor = _Ingestor(Database(pg), rds, key)
        life.worker("consumer", ingestor.run)

        def route(req: Request) -> Response:
            if req.path == "/health":
                if ingestor.healthy.is_set():
                    return Response(200)
                return ready_failed("consumer_unhealthy")
            if req.path == "/ready":
                if not ingestor.healthy.is_set():
                    return ready_failed("consumer_unhealthy")
                try:
                    ingestor.db.ping(timeout=2)
                except psycopg.Error:
                    return ready_failed("postgres_unreachable")
                try:
                    rds.ping()
                except redis_lib.RedisError:
                    return ready_failed("redis_unreachable")
                return json_response(200, {"ready": True})
            return json_response(404, {"error": "not_found"})

        return life.running(life.serve(route))

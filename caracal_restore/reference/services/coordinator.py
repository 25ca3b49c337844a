"""Reference Coordinator of release 1.0: the two calls of the protected-request flow.

FACTS-1.0 §14.5 steps 2–3, §2.6, §5, §18: ``POST /zones/{zone}/agents`` starts a governed
Session and ``POST /zones/{zone}/delegations`` creates a delegation edge, each authorised by a
``use=session`` mandate whose scope holds ``agent:lifecycle`` (verified ES256 against the STS
JWKS, its authority record still active), each made idempotent by the ``idempotency-key``
header through ``coordinator_idempotency_receipts`` (digest = HMAC-SHA256(IDEMPOTENCY_HMAC_KEY,
``caracal:coordinator:idempotency:v1\\0`` ‖ key); a replay with the same request returns the
stored response, another request under the same key is refused). Each write also records an
unsigned, payload-less ``admin_audit_events`` row in the zone chain (Compose gives the
Coordinator no AUDIT_HMAC_KEY) and a ``caracal_outbox`` row that is published at once to its
stream with ``_sig`` (STREAMS_HMAC_KEY; JSON nulls written as ``null``).

Subset, stated: no operator routes (suspend/resume/terminate, listings), no sweepers,
retention cleaner or invocation queue; ``/ready`` checks Postgres (dead outbox rows) and Redis.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

import httpx
import psycopg
import redis as redis_lib
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore import chainhash
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.reference.gen_audit import admin_hash_fields
from caracal_restore.reference.gen_common import compact
from caracal_restore.reference.redis_state import OUTBOX_MAXLEN, flatten_payload
from caracal_restore.reference.services import tokens
from caracal_restore.reference.services.common import (
    Database,
    HttpError,
    Request,
    Response,
    RunningService,
    StartupError,
    json_response,
    redis_client,
    require_secret,
    starting,
    uuid7,
)
from caracal_restore.reference.v1_0.gen_authority import (
    IDEMPOTENCY_RETENTION,
    key_digest,
    request_digest,
)

log = logging.getLogger(__name__)

LIFECYCLE_SCOPE = "agent:lifecycle"
JWKS_TTL = 300.0
_ROUTE = re.compile(r"^/zones/([^/]+)/(agents|delegations)$")


def _fail(status: int, error: str, description: str) -> HttpError:
    return HttpError(status, {"error": error, "error_description": description})


class _Coordinator:
    """Request handling; one instance per running Coordinator."""

    def __init__(self, db: Database, rds: redis_lib.Redis, http: httpx.Client, sts_url: str,
                 idempotency_key: bytes, streams_key: bytes) -> None:
        self.db, self.redis, self.http = db, rds, http
        self.sts_url = sts_url.rstrip("/")
        self._idempotency_key, self._streams_key = idempotency_key, streams_key
        self._jwks: dict[str, tuple[float, dict[str, ec.EllipticCurvePublicKey]]] = {}
        self._lock = threading.Lock()
        self.issuer = sts_url.rstrip("/")

    def route(self, req: Request) -> Response:
        """Health, readiness and the two POST routes."""
        if req.path == "/health":
            return json_response(200, {"ok": True})
        if req.path == "/ready":
            return self.ready()
        match = _ROUTE.match(req.path)
        if match is None or req.method != "POST":
            return json_response(404, {"error": "not_found"})
        zone_id, kind = match.group(1), match.group(2)
        claims = self._authorise(req, zone_id)
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            raise _fail(400, "invalid_request", "body is not JSON") from None
        if not isinstance(body, dict):
            raise _fail(400, "invalid_request", "body is not a JSON object")
        operation = "session.start.v2" if kind == "agents" else "delegation.create.v2"
        create = self._start_session if kind == "agents" else self._create_delegation
        return self._idempotent(req, zone_id, claims, operation, body, create)

    def ready(self) -> Response:
        """Postgres (no dead Coordinator outbox row) and Redis."""
        try:
            with self.db.transaction(connect_timeout=2) as conn:
                dead = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM caracal_outbox WHERE producer = 'coordinator'"
                    " AND status = 'dead')").fetchone()
        except psycopg.Error:
            return json_response(503, {"ok": False, "error": "postgres_unreachable",
                                       "dependency": "postgres"})
        if dead and dead[0]:
            return json_response(503, {"ok": False, "error": "outbox_dead",
                                       "dependency": "outbox"})
        try:
            self.redis.ping()
        except redis_lib.RedisError:
            return json_response(503, {"ok": False, "error": "redis_unreachable",
                                       "dependency": "redis"})
        return json_response(200, {"ok": True})

    # -------------------------------------------------------------------- authorisation

    def _authorise(self, req: Request, zone_id: str) -> dict[str, Any]:
        auth = req.header("Authorization") or ""
        if not auth.startswith("Bearer "):
            raise _fail(401, "unauthorized", "missing bearer token")
        token = auth[7:].strip()
        try:
            header, _ = tokens.peek(token)
            keys = self._keys(zone_id, str(header.get("kid", "")))
            claims = tokens.verify_es256(token, keys)
        except tokens.TokenError:
            raise _fail(401, "unauthorized", "invalid token") from None
        aud = claims.get("aud")
        if (claims.get("zone_id") != zone_id or claims.get("use") != "session"
                or self.issuer not in (aud if isinstance(aud, list) else [aud])
                or not isinstance(claims.get("exp"), int) or claims["exp"] < time.time()):
            raise _fail(401, "unauthorized", "invalid token")
        if LIFECYCLE_SCOPE not in str(claims.get("scope", "")).split():
            raise _fail(403, "forbidden", f"scope {LIFECYCLE_SCOPE} required")
        with self.db.transaction() as conn:
            record = conn.execute(
                "SELECT status FROM authority_records WHERE zone_id = %s AND id = %s",
                (zone_id, claims.get("sid")),
            ).fetchone()
        if record is None or record[0] != "active":
            raise _fail(401, "unauthorized", "session revoked")
        return claims

    def _keys(self, zone_id: str, kid: str) -> dict[str, ec.EllipticCurvePublicKey]:
        with self._lock:
            cached = self._jwks.get(zone_id)
        if cached and kid in cached[1] and time.monotonic() - cached[0] < JWKS_TTL:
            return cached[1]
        try:
            reply = self.http.get(f"{self.sts_url}/.well-known/jwks.json",
                                  params={"zone_id": zone_id}, timeout=5)
        except httpx.HTTPError:
            return cached[1] if cached else {}
        keys = {}
        if reply.status_code == 200:
            for jwk in reply.json().get("keys", []):
                try:
                    keys[str(jwk["kid"])] = tokens.jwk_public_key(jwk)
                except (KeyError, tokens.TokenError):
                    continue
            with self._lock:
                self._jwks[zone_id] = (time.monotonic(), keys)
        return keys

    # --------------------------------------------------------------------- idempotency

    def _idempotent(self, req: Request, zone_id: str, claims: Mapping[str, Any], operation: str,
                    body: dict[str, Any], create: Any) -> Response:
        key = req.header("idempotency-key")
        scope_id = str(claims.get("client_id", ""))
        with self.db.transaction() as conn:
            digest = key_digest(self._idempotency_key, key) if key else None
            if digest is not None:
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                             (f"idempotency:{zone_id}:{scope_id}",))
                stored = conn.execute(
                    "SELECT request_digest, response_status, response_json::text"
                    " FROM coordinator_idempotency_receipts WHERE operation = %s AND"
                    " zone_id = %s AND scope_id = %s AND key_digest = %s AND expires_at > now()",
                    (operation, zone_id, scope_id, digest),
                ).fetchone()
                if stored is not None:
                    if bytes(stored[0]) != request_digest(body):
                        raise _fail(409, "idempotency_conflict",
                                    "idempotency-key reused with another request")
                    return Response(int(stored[1]), stored[2].encode(),
                                    [("Content-Type", "application/json"),
                                     ("Idempotent-Replayed", "true")])
            status, response, outbox = create(conn, zone_id, claims, body)
            if digest is not None:
                conn.execute(
                    "INSERT INTO coordinator_idempotency_receipts (id, operation, zone_id,"
                    " scope_id, key_digest, request_digest, resource_type, resource_id,"
                    " response_status, response_json, created_at, expires_at) VALUES (%s, %s,"
                    " %s, %s, %s, %s, %s, %s, %s, %s, now(), now() + %s)",
                    (uuid7(), operation, zone_id, scope_id, digest, request_digest(body),
                     "session" if operation == "session.start.v2" else "delegation_edge",
                     response.get("agent_session_id") or response.get("delegation_edge_id"),
                     status, compact(response), IDEMPOTENCY_RETENTION),
                )
            self._admin_audit(conn, req, zone_id, claims, status)
        self._publish(outbox)
        return json_response(status, response)

    # -------------------------------------------------------------------------- writes

    def _start_session(self, conn: psycopg.Connection[Any], zone_id: str,
                       claims: Mapping[str, Any], body: Mapping[str, Any]
                       ) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        app_id = str(body.get("application_id") or "")
        if app_id != claims.get("client_id"):
            raise _fail(403, "forbidden", "application_id must be the caller's application")
        ttl = int(body.get("ttl_seconds") or 3600)
        labels = [str(x) for x in body.get("labels") or [app_id]]
        if ttl <= 0:
            raise _fail(400, "invalid_request", "ttl_seconds must be positive")
        session_id = uuid7()
        conn.execute(
            "INSERT INTO sessions (id, zone_id, application_id, subject_authority_record_id,"
            " status, labels, ttl_seconds, metadata_json, lifecycle) VALUES (%s, %s, %s, %s,"
            " 'active', %s, %s, %s, 'task')",
            (session_id, zone_id, app_id, claims["sid"], labels, ttl,
             compact(body.get("metadata") or {})),
        )
        outbox = self._outbox(conn, "caracal.agents.lifecycle", f"spawn:{session_id}", {
            "event": "spawn", "zone_id": zone_id, "parent_id": None,
            "application_id": app_id, "agent_session_id": session_id})
        return 201, {"agent_session_id": session_id, "status": "active", "depth": 0,
                     "labels": labels, "ttl_seconds": ttl}, [outbox]

    def _create_delegation(self, conn: psycopg.Connection[Any], zone_id: str,
                           claims: Mapping[str, Any], body: Mapping[str, Any]
                           ) -> tuple[int, dict[str, Any], list[dict[str, Any]]]:
        issuer = str(body.get("issuer_application_id") or "")
        receiver = str(body.get("receiver_application_id") or "")
        source, target = str(body.get("source_session_id")), str(body.get("target_session_id"))
        if issuer != claims.get("client_id") or source == target:
            raise _fail(403, "forbidden", "invalid delegation parties")
        rows = dict(conn.execute(
            "SELECT id, application_id FROM sessions WHERE zone_id = %s AND id = ANY(%s)"
            " AND status = 'active'", (zone_id, [source, target])).fetchall())
        if rows.get(source) != issuer or rows.get(target) != receiver:
            raise _fail(404, "not_found", "source or target session not found")
        constraints = body.get("constraints") or {}
        resources = constraints.get("resources") or []
        resource_id = None
        if resources:
            row = conn.execute("SELECT id FROM resources WHERE zone_id = %s AND identifier = %s"
                               " AND archived_at IS NULL", (zone_id, resources[0])).fetchone()
            if row is None:
                raise _fail(404, "not_found", "resource not found")
            resource_id = row[0]
        ttl = int(body.get("ttl_seconds") or 3600)
        edge_id = uuid7()
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"delegation:{zone_id}",))
        conn.execute(
            "INSERT INTO delegation_edges (id, zone_id, source_session_id, target_session_id,"
            " issuer_application_id, receiver_application_id, resource_id, scopes,"
            " constraints_json, status, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " 'active', now() + %s)",
            (edge_id, zone_id, source, target, issuer, receiver, resource_id,
             [str(s) for s in body.get("scopes") or []], compact(constraints),
             dt.timedelta(seconds=ttl)),
        )
        epoch_row = conn.execute(
            "INSERT INTO delegation_graph_epochs (zone_id, epoch) VALUES (%s, 1)"
            " ON CONFLICT (zone_id) DO UPDATE SET epoch = delegation_graph_epochs.epoch + 1,"
            " updated_at = now() RETURNING epoch", (zone_id,)).fetchone()
        epoch = int(epoch_row[0]) if epoch_row else 1
        outbox = self._outbox(conn, "caracal.delegations.invalidate", f"edge_create:{edge_id}", {
            "epoch": epoch, "event": "edge_create", "edge_id": edge_id, "zone_id": zone_id,
            "source_session_id": source, "target_session_id": target})
        return 201, {"delegation_edge_id": edge_id, "edge_version": 0, "epoch": epoch}, [outbox]

    def _outbox(self, conn: psycopg.Connection[Any], topic: str, dedupe: str,
                payload: Mapping[str, Any]) -> dict[str, Any]:
        row = {"id": uuid7(), "topic": topic, "dedupe_key": dedupe,
               "payload_json": compact(dict(payload))}
        conn.execute(
            "INSERT INTO caracal_outbox (id, producer, topic, dedupe_key, payload_json)"
            " VALUES (%(id)s, 'coordinator', %(topic)s, %(dedupe_key)s, %(payload_json)s)", row)
        return row

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        """Publish committed outbox rows now (the publisher's job), then mark them published."""
        for row in rows:
            fields: dict[str, str] = {"outbox_id": row["id"], "dedupe_key": row["dedupe_key"],
                                      **flatten_payload(row["payload_json"], "null")}
            fields["_sig"] = chainhash.stream_signature(self._streams_key, row["topic"], fields)
            try:
                self.redis.xadd(row["topic"], fields,  # type: ignore[arg-type]
                                maxlen=OUTBOX_MAXLEN, approximate=True)
            except redis_lib.RedisError:
                log.warning("coordinator: publish failed; the row stays pending")
                continue
            with self.db.transaction() as conn:
                conn.execute("UPDATE caracal_outbox SET status = 'published', attempts = 1,"
                             " published_at = now(), updated_at = now() WHERE id = %s",
                             (row["id"],))

    def _admin_audit(self, conn: psycopg.Connection[Any], req: Request, zone_id: str,
                     claims: Mapping[str, Any], status: int) -> None:
        """The zone chain's next row: no payload, no key (chain_hmac NULL)."""
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (zone_id,))
        head = conn.execute(
            "SELECT content_sha256, chain_seq FROM admin_audit_events WHERE zone_id IS NOT"
            " DISTINCT FROM %s ORDER BY chain_seq DESC NULLS LAST LIMIT 1", (zone_id,),
        ).fetchone()
        prev, seq = (str(head[0] or ""), int(head[1] or 0)) if head else ("", 0)
        now = dt.datetime.now(dt.UTC)
        row = {
            "id": uuid7(), "request_id": req.header("X-Request-Id") or uuid7(),
            "actor_id": str(claims.get("sub", "")), "actor_name": str(claims.get("client_id", "")),
            "actor_scope": str(claims.get("scope", "")), "action": f"{req.method} {req.path}",
            "method": req.method, "path": req.path, "zone_id": zone_id, "entity_type": None,
            "entity_id": None, "status_code": status,
            "occurred_at": now.replace(microsecond=now.microsecond // 1000 * 1000),
        }
        content = chainhash.admin_content_hash(admin_hash_fields(row, ""))
        conn.execute(
            "INSERT INTO admin_audit_events (id, request_id, actor_id, actor_name, actor_scope,"
            " action, method, path, zone_id, entity_type, entity_id, status_code, occurred_at,"
            " content_sha256, prev_content_sha256, chain_hmac, chain_seq) VALUES (%(id)s,"
            " %(request_id)s, %(actor_id)s, %(actor_name)s, %(actor_scope)s, %(action)s,"
            " %(method)s, %(path)s, %(zone_id)s, %(entity_type)s, %(entity_id)s,"
            " %(status_code)s, %(occurred_at)s, %(content)s, %(prev)s, NULL, %(seq)s)",
            {**row, "content": content, "prev": prev or None, "seq": seq + 1},
        )


def start_coordinator(*, pg: PgEndpoint, redis: RedisEndpoint, secrets: Mapping[str, str],
                      sts_url: str) -> RunningService:
    """Start the reference 1.0 Coordinator as ``caracalcoordinator``; a context manager.

    ``secrets`` needs ``idempotencyHmacKey``, ``streamsHmacKey`` and
    ``coordinatorDatabaseUrl`` (its password; host and port come from ``pg``).
    """
    from caracal_restore.reference.v1_0.deployment import service_login

    try:
        idem = bytes.fromhex(require_secret(secrets, "idempotencyHmacKey", "coordinator"))
        streams = bytes.fromhex(require_secret(secrets, "streamsHmacKey", "coordinator"))
    except ValueError:
        raise StartupError(
            "coordinator: IDEMPOTENCY_HMAC_KEY / STREAMS_HMAC_KEY is not hex") from None
    if len(idem) < 32 or len(streams) < 32:
        raise StartupError("coordinator: HMAC keys must decode to >= 32 bytes")
    db = Database(service_login(pg, secrets, "coordinatorDatabaseUrl", "coordinator"))
    with starting("coordinator") as life:
        rds = redis_client(redis)
        life.on_stop(rds.close)
        http = httpx.Client(trust_env=False, follow_redirects=False)
        life.on_stop(http.close)
        coordinator = _Coordinator(db, rds, http, sts_url, idem, streams)
        return life.running(life.serve(coordinator.route))


__all__ = ["start_coordinator"]

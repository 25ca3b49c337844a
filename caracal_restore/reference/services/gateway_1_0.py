"""Reference Gateway of release 1.0: routing from the STS, per-host revocation group.

Facts: FACTS-1.0 §8 (no bindings; routing = ``upstreams[<resource>]`` from the STS), §9.2–9.3
(snapshot of ``authority_records``/``sessions``/``delegation_edges``; group
``gateway-revocation:<hostname>`` created at ``$``), §13 (readiness), §14.5 (protected
request). The 2026.06 reference Gateway is reused for JWKS caching, ES256 verification, the
upstream target resolution (loopback or ``resolve`` only), audit events and the forced
snapshot reload; this module replaces the request path:

peek (``exp``, ``zone_id``, ``client_id``; bearer ≤ 4096 bytes; > 35 s left; no path
traversal) → ES256 against the STS JWKS → one-shot ``seen:jti:<jti>`` for every use but
``session`` → revocation (``sid``, ``root_sid``, ``agent_session_id``,
``delegation_edge_id``) → signed exchange to STS *as the mandate's client* with a 64-hex
nonce and ``gateway_request_id`` → forward to the directive's URL with its credential.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets as secrets_lib
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import httpx
import redis as redis_lib

from caracal_restore.chainhash import parse_hmac_key
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.reference.services import gwsig_1_0, tokens
from caracal_restore.reference.services.common import (
    Database,
    HttpError,
    Request,
    Response,
    RunningService,
    StartupError,
    ensure_group,
    json_response,
    metrics_response,
    ready_failed,
    ready_ok,
    redis_client,
    replay_dir_writable,
    require_secret,
    starting,
)
from caracal_restore.reference.services.gateway import (
    _HOP_BY_HOP,
    MAX_BEARER,
    MIN_REMAINING,
    _Gateway,
    _unauthorized,
    request_id_of,
)
from caracal_restore.reference.services.producer import AuditProducer
from caracal_restore.reference.services.revocations import STREAM, Revocations

log = logging.getLogger(__name__)

#: 1.0 snapshot (FACTS-1.0 §9.3): terminated Sessions only (not suspended/expired).
SNAPSHOT_QUERIES_1_0 = (
    "SELECT id FROM authority_records WHERE status = 'revoked'"
    " AND expires_at > now() - interval '86400 seconds'",
    "SELECT id FROM sessions WHERE status = 'terminated'"
    " AND updated_at > now() - interval '86400 seconds'",
    "SELECT id FROM delegation_edges WHERE status = 'revoked' AND revoked_at IS NOT NULL"
    " AND revoked_at > now() - interval '86400 seconds'",
)


def group_name(hostname: str | None = None) -> str:
    """The Gateway's per-host revocation group, ``gateway-revocation:<hostname>``."""
    return f"gateway-revocation:{hostname or socket.gethostname()}"


class Revocations10(Revocations):
    """The 1.0 snapshot queries and the per-host group read from ``$``."""

    def __init__(self, db: Database, streams_key: bytes, hostname: str | None = None) -> None:
        super().__init__(db, streams_key)
        host = hostname or socket.gethostname()
        self.group = group_name(host)
        self.consumer = f"gateway-{host}-{os.getpid()}"

    def reload(self) -> int:
        """Replace the snapshot from Postgres (raises ``psycopg.Error``); returns the count."""
        ids: set[str] = set()
        with self._db.transaction() as conn:
            for query in SNAPSHOT_QUERIES_1_0:
                ids.update(str(row[0]) for row in conn.execute(query).fetchall())
        with self._lock:
            self._snapshot = frozenset(ids)
            self._loaded_at = time.monotonic()
        return self.count()

    def consume(self, client: redis_lib.Redis, stopping: threading.Event) -> None:
        """Read the stream with this host's group (created at ``$``) until stopped."""
        created = False
        while not stopping.is_set():
            try:
                if not created:
                    ensure_group(client, STREAM, self.group, "$")
                    created = True
                reply: Any = client.xreadgroup(self.group, self.consumer, {STREAM: ">"},
                                               count=100, block=200)
            except redis_lib.RedisError:
                created = False
                stopping.wait(0.5)
                continue
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self.handle(fields or {})
                    try:
                        client.xack(STREAM, self.group, entry_id)
                    except redis_lib.RedisError:
                        break


class Gateway10(_Gateway):
    """The 1.0 request path on top of the 2026.06 reference Gateway's helpers."""

    def route(self, req: Request) -> Response:
        """Health, readiness, metrics and reload; everything else is a protected request."""
        if req.path == "/health":
            return Response(200)
        if req.path == "/ready":
            return self.ready()
        if req.path == "/metrics":
            return metrics_response(req, self.metrics_bearer, {
                "caracal_gateway_revocations_loaded": ("gauge", self.revocations.count())})
        if req.path == "/internal/revocations/reload" and req.method == "POST":
            return self.reload_revocations(req)
        request_id = request_id_of(req)
        try:
            response = self.protected(req, request_id)
        except HttpError as exc:
            response = json_response(exc.status, {**exc.body, "requestId": request_id})
        response.headers.append(("X-Request-Id", request_id))
        return response

    def ready(self) -> Response:
        """Redis, snapshot freshness, replay dir, STS /health (no bindings at 1.0)."""
        try:
            self.redis.ping()
        except redis_lib.RedisError:
            return ready_failed("redis_unreachable")
        if not self.revocations.fresh():
            return ready_failed("revocation_snapshot_stale")
        if not replay_dir_writable(self.replay_dir):
            return ready_failed("audit_replay_unavailable")
        try:
            status = self.http.get(f"{self.sts_url}/health", timeout=2).status_code
        except httpx.HTTPError:
            return ready_failed("sts_unreachable")
        return ready_ok() if 200 <= status < 300 else ready_failed("sts_unavailable")

    def protected(self, req: Request, request_id: str) -> Response:
        """Authorize, exchange, forward, audit."""
        started = time.monotonic()
        if req.header("X-Caracal-Client-ID") is not None:
            raise HttpError(400, {"error": "invalid_request",
                                  "error_description": "X-Caracal-Client-ID is not accepted"})
        auth = req.header("Authorization") or ""
        if not auth.startswith("Bearer ") or len(auth) - 7 > MAX_BEARER:
            raise _unauthorized("missing or invalid bearer token")
        bearer = auth[7:].strip()
        resource = req.header("X-Caracal-Resource") or ""
        if not resource:
            raise HttpError(400, {"error": "invalid_request",
                                  "error_description": "X-Caracal-Resource is required"})
        try:
            _header, peeked = tokens.peek(bearer)
        except tokens.TokenError:
            raise _unauthorized("invalid token") from None
        exp = peeked.get("exp")
        if not isinstance(exp, int) or exp - time.time() <= MIN_REMAINING:
            raise _unauthorized("credential_expired_not_renewable")
        zone_id = str(peeked.get("zone_id") or "")
        client_id = str(peeked.get("client_id") or "")
        if any(unquote(seg) == ".." for seg in req.path.split("/")):
            raise HttpError(400, {"error": "invalid_request", "error_description": "invalid path"})
        claims = self._verify(zone_id, bearer)
        if claims.get("use") != "session" and not self.redis.set(
                f"seen:jti:{claims.get('jti')}", request_id, nx=True,
                ex=max(1, int(claims["exp"] - time.time()))):
            self._emit(zone_id, request_id, "replay_detected", "deny", "complete",
                       {"application_id": client_id, "resource": resource,
                        "jti": claims.get("jti")})
            raise _unauthorized("token replay detected")
        if not self.revocations.fresh():
            raise HttpError(503, {"error": "unavailable",
                                  "error_description": "revocation state unavailable"})
        if self.revocations.is_revoked(claims.get(k) for k in (
                "sid", "root_sid", "agent_session_id", "delegation_edge_id")):
            raise _unauthorized("session revoked")
        exchanged = self._exchange(req, request_id, zone_id, client_id, resource, bearer)
        if isinstance(exchanged, Response):
            return exchanged
        directive = (exchanged.get("upstreams") or {}).get(resource)
        if not directive or not directive.get("url"):
            raise HttpError(403, {"error": "access_denied",
                                  "error_description": "resource upstream not configured"})
        upstream = self._forward(req, request_id, directive, str(exchanged["access_token"]))
        self._emit(zone_id, request_id, "gateway_resource_request", "allow", "executed", {
            "application_id": client_id, "resource": resource,
            "subject_fingerprint": hashlib.sha256(bearer.encode()).hexdigest()[:16],
            "method": req.method, "path": req.path, "gateway_status": upstream.status,
            "latency_ms": int((time.monotonic() - started) * 1000),
            "upstream_status": upstream.status,
            "result_class": "success" if upstream.status < 400 else "upstream_error",
        })
        upstream.headers.append(("X-Caracal-Token-Expires-In",
                                 str(exchanged.get("expires_in", ""))))
        return upstream

    def _exchange(self, req: Request, request_id: str, zone_id: str, application_id: str,
                  resource: str, bearer: str) -> dict[str, Any] | Response:
        """The signed exchange (64-hex nonce, body hash, ``gateway_request_id``)."""
        form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("zone_id", zone_id), ("application_id", application_id),
            ("subject_token", bearer),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("resource", resource), ("request_method", req.method), ("request_path", req.path),
            ("gateway_request_id", request_id),
        ]
        body = urlencode(form).encode()
        timestamp, nonce, path = str(int(time.time())), gwsig_1_0.new_nonce(), "/oauth/2/token"
        headers = {
            "Content-Type": "application/x-www-form-urlencoded", "X-Request-Id": request_id,
            gwsig_1_0.HEADER_TIMESTAMP: timestamp, gwsig_1_0.HEADER_REQUEST: nonce,
            gwsig_1_0.HEADER_SIGNATURE: gwsig_1_0.signature(self._gateway_key, timestamp, nonce,
                                                            "POST", path, body),
        }
        try:
            reply = self.http.post(f"{self.sts_url}{path}", content=body, headers=headers,
                                   timeout=30)
        except httpx.HTTPError:
            raise HttpError(502, {"error": "bad_gateway",
                                  "error_description": "sts unreachable"}) from None
        if reply.status_code != 200:
            content_type = reply.headers.get("Content-Type", "application/json")
            return Response(reply.status_code, reply.content, [("Content-Type", content_type)])
        data = reply.json()
        return data if isinstance(data, dict) else {}

    def _forward(self, req: Request, request_id: str, directive: Mapping[str, Any],
                 mandate: str) -> Response:
        """Forward to the directive's URL, replacing the client's credential by the mode's."""
        target, host = self._target(str(directive["url"]), req.path, req.raw_query)
        headers = [(k, v) for k, v in req.header_items
                   if k.lower() not in _HOP_BY_HOP and k.lower() != "authorization"
                   and not k.lower().startswith("x-caracal-")
                   and k.lower() not in ("x-request-id", "traceparent")]
        trace = f"00-{secrets_lib.token_hex(16)}-{secrets_lib.token_hex(8)}-01"
        headers += [("Host", host), ("X-Request-Id", request_id), ("Traceparent", trace),
                    ("X-Forwarded-Proto", "http")]
        mode = directive.get("auth_mode")
        if mode == "caracal_jwt":
            headers.append((str(directive.get("auth_header") or "Authorization"),
                            f"{directive.get('auth_scheme') or 'Bearer'} {mandate}"))
        elif mode == "provider_apikey":
            scheme = str(directive.get("auth_scheme") or "")
            value = f"{scheme} {directive['credential']}" if scheme else str(
                directive["credential"])
            headers.append((str(directive.get("auth_header") or "X-Api-Key"), value))
        try:
            reply = self.http.request(req.method, target, headers=headers,
                                      content=req.body or None, timeout=30)
        except httpx.HTTPError:
            raise HttpError(502, {"error": "bad_gateway",
                                  "error_description": "upstream request failed"}) from None
        out = [(k, v) for k, v in reply.headers.multi_items()
               if k.lower() not in _HOP_BY_HOP and k.lower() not in ("content-encoding",
                                                                     "x-request-id")]
        return Response(reply.status_code, reply.content, out)


def start_gateway(*, pg: PgEndpoint, redis: RedisEndpoint, secrets: Mapping[str, str],
                  replay_dir: Path, sts_url: str, resolve: Mapping[str, str] | None = None,
                  poll_seconds: float = 30.0, hostname: str | None = None) -> RunningService:
    """Start the reference 1.0 Gateway as ``caracalgateway`` (snapshot first, fatal on error).

    ``secrets`` needs ``auditHmacKey``, ``streamsHmacKey``, ``gatewayStsHmacKey``,
    ``caracalAdminToken`` and ``gatewayDatabaseUrl``; ``hostname`` names the per-host
    revocation group (default: this host's name).
    """
    from caracal_restore.reference.v1_0.deployment import service_login

    try:
        audit_key = parse_hmac_key(require_secret(secrets, "auditHmacKey", "gateway"))
        streams_key = gwsig_1_0.parse_hex_key(require_secret(secrets, "streamsHmacKey",
                                                             "gateway"), "STREAMS_HMAC_KEY")
        gateway_key = gwsig_1_0.parse_hex_key(require_secret(secrets, "gatewayStsHmacKey",
                                                             "gateway"), "GATEWAY_STS_HMAC_KEY")
    except ValueError as exc:
        raise StartupError(f"gateway: {exc}") from None
    admin_token = require_secret(secrets, "caracalAdminToken", "gateway")
    db = Database(service_login(pg, secrets, "gatewayDatabaseUrl", "gateway"))
    revocations = Revocations10(db, streams_key, hostname)
    try:
        revocations.reload()
    except Exception as exc:
        raise StartupError(f"revocation snapshot failed: {type(exc).__name__}") from None
    with starting("gateway") as life:
        rds = redis_client(redis)
        life.on_stop(rds.close)
        http = httpx.Client(trust_env=False, follow_redirects=False)
        life.on_stop(http.close)
        producer = AuditProducer(rds, audit_key, Path(replay_dir), "gateway")
        try:
            producer.replay_pending()
        except redis_lib.RedisError as exc:
            raise StartupError(f"gateway: audit replay failed: {type(exc).__name__}") from None
        gateway = Gateway10(
            bindings=None,  # type: ignore[arg-type]  # no bindings at 1.0; never read here
            revocations=revocations, rds=rds, producer=producer, http=http, sts_url=sts_url,
            gateway_key=gateway_key, admin_token=admin_token, replay_dir=Path(replay_dir),
            resolve=resolve or {})
        gateway.metrics_bearer = secrets.get("metricsBearer") or None

        def poll() -> None:
            revocations.reload()

        life.every("poll", poll_seconds, poll)
        life.worker("revocations", lambda stopping: revocations.consume(rds, stopping))
        return life.running(life.serve(gateway.route))


__all__ = ["SNAPSHOT_QUERIES_1_0", "Gateway10", "Revocations10", "group_name", "start_gateway"]

"""Reference Gateway of release 2026.06: bindings, revocations, protected requests.

Facts: FACTS-2026.06 §2.9 (bindings), §5.2–5.3 (revocation), §7.1 and §7.3 (readiness, requests).

A protected request (any method and path) carries ``Authorization: Bearer <session mandate>``
and ``X-Caracal-Resource``. The Gateway peeks the zone from the token, looks the (zone,
resource) up in its cached binding map, verifies ES256 against the STS JWKS (cached 5 min),
refuses revoked anchors, exchanges the mandate at the STS with a signed request *as the
binding's application*, and forwards to the directive's upstream URL. Upstream hosts must be
loopback or named in ``resolve`` (``{"canary.caracal.test": "127.0.0.1:PORT"}``, like curl's
``--resolve``): the suite never sends traffic off loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets as secrets_lib
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
import redis as redis_lib
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore.chainhash import parse_hmac_key
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.reference.services import gwsig, tokens
from caracal_restore.reference.services.bindings import BindingCache, BindingError
from caracal_restore.reference.services.common import (
    Database,
    HttpError,
    Request,
    Response,
    RunningService,
    StartupError,
    json_response,
    metrics_response,
    ready_failed,
    ready_ok,
    redis_client,
    replay_dir_writable,
    require_secret,
    starting,
    uuid7,
)
from caracal_restore.reference.services.producer import AuditEvent, AuditProducer
from caracal_restore.reference.services.revocations import Revocations

log = logging.getLogger(__name__)

JWKS_TTL = 300.0
MAX_BEARER = 4096
MIN_REMAINING = 35
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
               "trailer", "transfer-encoding", "upgrade", "host", "content-length"}


def request_id_of(req: Request) -> str:
    """The client's X-Request-Id when 1..128 printable ASCII chars, else a new UUIDv7."""
    given = req.header("X-Request-Id") or ""
    if 1 <= len(given) <= 128 and all(0x21 <= ord(c) <= 0x7E for c in given):
        return given
    return uuid7()


def _loopback_literal(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Gateway:
    """Request handling; one instance per running Gateway."""

    def __init__(self, *, bindings: BindingCache, revocations: Revocations, rds: redis_lib.Redis,
                 producer: AuditProducer, http: httpx.Client, sts_url: str, gateway_key: bytes,
                 admin_token: str, replay_dir: Path, resolve: Mapping[str, str]) -> None:
        self.bindings, self.revocations, self.redis = bindings, revocations, rds
        self.producer, self.http, self.sts_url = producer, http, sts_url.rstrip("/")
        self._gateway_key, self._admin_token = gateway_key, admin_token
        self.replay_dir = replay_dir
        self.resolve = {k.lower(): v for k, v in resolve.items()}
        self._jwks: dict[str, tuple[float, dict[str, ec.EllipticCurvePublicKey]]] = {}
        self._jwks_lock = threading.Lock()
        self.metrics_bearer: str | None = None
        self.binding_denials = 0

    def route(self, req: Request) -> Response:
        """Health, readiness and the reload endpoint; everything else is a protected request."""
        if req.path == "/health":
            return Response(200)
        if req.path == "/ready":
            return self.ready()
        if req.path == "/metrics":
            return metrics_response(req, self.metrics_bearer, {
                "caracal_gateway_bindings_loaded": ("gauge", len(self.bindings)),
                "caracal_gateway_denials_binding_total": ("counter", self.binding_denials)})
        if req.path == "/internal/revocations/reload" and req.method == "POST":
            return self.reload_revocations(req)
        request_id = request_id_of(req)
        try:
            response = self.protected(req, request_id)
        except HttpError as exc:
            response = json_response(exc.status, {**exc.body, "requestId": request_id})
        response.headers.append(("X-Request-Id", request_id))
        return response

    # ----------------------------------------------------------------------- operations

    def ready(self) -> Response:
        """Bindings (if changed), Redis, snapshot freshness, replay dir, STS /health."""
        try:
            self.bindings.reload_if_changed()
        except BindingError as exc:
            log.warning("gateway ready: %s", exc)
            return ready_failed("postgres_unreachable")
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
        if not 200 <= status < 300:
            return ready_failed("sts_unavailable")
        return ready_ok()

    def reload_revocations(self, req: Request) -> Response:
        """Forced snapshot reload, behind the admin bearer token (404 otherwise)."""
        given = req.header("Authorization") or ""
        expected = f"Bearer {self._admin_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return Response(404, b"not found\n", [("Content-Type", "text/plain; charset=utf-8")])
        try:
            count = self.revocations.reload()
        except Exception:
            log.warning("gateway: forced revocation reload failed", exc_info=True)
            return ready_failed("revocation_reload_failed")
        return json_response(200, {"ok": True, "revocations": count})

    # --------------------------------------------------------------- protected requests

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
        application_id = self.bindings.lookup(zone_id, resource)
        if application_id is None:
            self.binding_denials += 1
            raise HttpError(403, {"error": "access_denied",
                                  "error_description": "resource not configured"})
        if any(unquote(seg) == ".." for seg in req.path.split("/")):
            raise HttpError(400, {"error": "invalid_request", "error_description": "invalid path"})
        claims = self._verify(zone_id, bearer)
        if claims.get("use") == "resource" and not self.redis.set(
                f"seen:jti:{claims.get('jti')}", request_id, nx=True,
                ex=max(1, int(claims["exp"] - time.time()))):
            self._emit(zone_id, request_id, "replay_detected", "deny", "complete",
                       {"application_id": application_id, "resource": resource,
                        "jti": claims.get("jti")})
            raise _unauthorized("token replay detected")
        if not self.revocations.fresh():
            raise HttpError(503, {"error": "unavailable",
                                  "error_description": "revocation state unavailable"})
        if self.revocations.is_revoked(claims.get(k) for k in (
                "sid", "root_sid", "agent_session_id", "delegation_edge_id")):
            raise _unauthorized("session revoked")
        exchanged = self._exchange(req, request_id, zone_id, application_id, resource, bearer)
        if isinstance(exchanged, Response):
            return exchanged
        directive = (exchanged.get("upstreams") or {}).get(resource)
        if not directive or not directive.get("url"):
            raise HttpError(403, {"error": "access_denied",
                                  "error_description": "resource upstream not configured"})
        upstream = self._forward(req, request_id, directive, str(exchanged["access_token"]))
        metadata = {
            "application_id": application_id, "resource": resource,
            "subject_fingerprint": hashlib.sha256(bearer.encode()).hexdigest()[:16],
            "method": req.method, "path": req.path, "gateway_status": upstream.status,
            "latency_ms": int((time.monotonic() - started) * 1000),
            "upstream_status": upstream.status,
            "result_class": "success" if upstream.status < 400 else "upstream_error",
        }
        self._emit(zone_id, request_id, "gateway_resource_request", "allow", "executed", metadata)
        expires_in = str(exchanged.get("expires_in", ""))
        upstream.headers.append(("X-Caracal-Token-Expires-In", expires_in))
        return upstream

    def _verify(self, zone_id: str, bearer: str) -> dict[str, Any]:
        header, _ = tokens.peek(bearer)
        kid = str(header.get("kid", ""))
        keys = self._keys(zone_id, refresh=False)
        if kid not in keys:
            keys = self._keys(zone_id, refresh=True)
        try:
            return tokens.verify_es256(bearer, keys)
        except tokens.TokenError:
            raise _unauthorized("invalid token") from None

    def _keys(self, zone_id: str, *, refresh: bool) -> dict[str, ec.EllipticCurvePublicKey]:
        now = time.monotonic()
        with self._jwks_lock:
            cached = self._jwks.get(zone_id)
        if cached and not refresh and now - cached[0] < JWKS_TTL:
            return cached[1]
        try:
            reply = self.http.get(f"{self.sts_url}/.well-known/jwks.json",
                                  params={"zone_id": zone_id}, timeout=5)
        except httpx.HTTPError:
            return cached[1] if cached else {}
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        if reply.status_code == 200:
            for jwk in reply.json().get("keys", []):
                try:
                    keys[str(jwk["kid"])] = tokens.jwk_public_key(jwk)
                except (KeyError, tokens.TokenError):
                    continue
            with self._jwks_lock:
                self._jwks[zone_id] = (now, keys)
        return keys

    def _exchange(self, req: Request, request_id: str, zone_id: str, application_id: str,
                  resource: str, bearer: str) -> dict[str, Any] | Response:
        form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("zone_id", zone_id), ("application_id", application_id),
            ("subject_token", bearer),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("resource", resource), ("request_method", req.method), ("request_path", req.path),
        ]
        timestamp = str(int(time.time()))
        path = "/oauth/2/token"
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Request-Id": request_id,
            gwsig.HEADER_TIMESTAMP: timestamp,
            gwsig.HEADER_REQUEST: request_id,
            gwsig.HEADER_SIGNATURE: gwsig.signature(self._gateway_key, timestamp, request_id,
                                                    "POST", path, form),
        }
        try:
            reply = self.http.post(f"{self.sts_url}{path}", content=gwsig.encode_form(form),
                                   headers=headers, timeout=30)
        except httpx.HTTPError:
            raise HttpError(502, {"error": "bad_gateway",
                                  "error_description": "sts unreachable"}) from None
        if reply.status_code != 200:
            # STS errors are passed through as they are.
            content_type = reply.headers.get("Content-Type", "application/json")
            return Response(reply.status_code, reply.content, [("Content-Type", content_type)])
        body = reply.json()
        return body if isinstance(body, dict) else {}

    def _target(self, url: str, path: str, query: str) -> tuple[str, str]:
        """The URL to connect to (host resolved) and the Host header to send."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = self.resolve.get(f"{host}:{port}") or self.resolve.get(host)
        if address is None and _loopback_literal(host):
            address = parts.netloc.rsplit("@", 1)[-1]
        if address is None or not _loopback_literal(address.rsplit(":", 1)[0].strip("[]")):
            raise HttpError(502, {"error": "bad_gateway",
                                  "error_description": "upstream host not allowed"})
        joined = parts.path.rstrip("/") + path
        merged = "&".join(q for q in (parts.query, query) if q)
        return urlunsplit((parts.scheme, address, joined, merged, "")), parts.netloc

    def _forward(self, req: Request, request_id: str, directive: Mapping[str, Any],
                 mandate: str) -> Response:
        target, host = self._target(str(directive["url"]), req.path, req.raw_query)
        headers = [(k, v) for k, v in req.header_items
                   if k.lower() not in _HOP_BY_HOP and k.lower() != "authorization"
                   and not k.lower().startswith("x-caracal-")
                   and k.lower() not in ("x-request-id", "traceparent")]
        trace = f"00-{secrets_lib.token_hex(16)}-{secrets_lib.token_hex(8)}-01"
        headers += [("Host", host), ("X-Request-Id", request_id), ("Traceparent", trace),
                    ("X-Forwarded-Proto", "http")]
        if req.header("Host"):
            headers.append(("X-Forwarded-Host", req.header("Host") or ""))
        if directive.get("auth_mode") == "caracal_jwt":
            headers.append((str(directive.get("auth_header") or "Authorization"),
                            f"{directive.get('auth_scheme') or 'Bearer'} {mandate}"))
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

    def _emit(self, zone_id: str, request_id: str, event_type: str, decision: str, status: str,
              metadata: Mapping[str, Any]) -> None:
        self.producer.emit(AuditEvent(zone_id=zone_id, event_type=event_type,
                                      request_id=request_id, decision=decision,
                                      evaluation_status=status, determining_policies=None,
                                      diagnostics=None, metadata=metadata))


def _unauthorized(description: str) -> HttpError:
    return HttpError(401, {"error": "invalid_token", "error_description": description})


def start_gateway(
    *,
    pg: PgEndpoint,
    redis: RedisEndpoint,
    secrets: Mapping[str, str],
    replay_dir: Path,
    sts_url: str,
    resolve: Mapping[str, str] | None = None,
    poll_seconds: float = 30.0,
) -> RunningService:
    """Start the reference Gateway (bindings and snapshot loaded first, fatal on error).

    ``secrets`` maps file names to values (``auditHmacKey``, ``streamsHmacKey``,
    ``gatewayStsHmacKey``, ``caracalAdminToken``); ``resolve`` maps upstream host names (or
    ``host:port``) to loopback ``address:port``; ``poll_seconds`` is the binding/snapshot period.
    ``/metrics`` (bearer ``metricsBearer`` when given) exposes ``caracal_gateway_bindings_loaded``
    and ``caracal_gateway_denials_binding_total``.
    """
    try:
        audit_key = parse_hmac_key(require_secret(secrets, "auditHmacKey", "gateway"))
        streams_key = gwsig.parse_hex_key(require_secret(secrets, "streamsHmacKey", "gateway"),
                                          "STREAMS_HMAC_KEY")
        gateway_key = gwsig.parse_hex_key(require_secret(secrets, "gatewayStsHmacKey", "gateway"),
                                          "GATEWAY_STS_HMAC_KEY")
    except ValueError as exc:
        raise StartupError(f"gateway: {exc}") from None
    admin_token = require_secret(secrets, "caracalAdminToken", "gateway")
    db = Database(pg)
    bindings = BindingCache(db)
    try:
        bindings.reload()
    except BindingError as exc:
        raise StartupError(str(exc)) from None
    revocations = Revocations(db, streams_key)
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
        gateway = _Gateway(bindings=bindings, revocations=revocations, rds=rds, producer=producer,
                           http=http, sts_url=sts_url, gateway_key=gateway_key,
                           admin_token=admin_token, replay_dir=Path(replay_dir),
                           resolve=resolve or {})
        gateway.metrics_bearer = secrets.get("metricsBearer") or None

        def poll() -> None:
            try:
                bindings.reload_if_changed()
            except BindingError as exc:
                log.warning("gateway: binding poll failed: %s", exc)
            revocations.reload()

        life.every("poll", poll_seconds, poll)
        life.worker("revocations", lambda stopping: revocations.consume(rds, stopping))
        return life.running(life.serve(gateway.route))

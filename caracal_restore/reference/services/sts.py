"""Reference STS of release 2026.06: readiness, JWKS, token endpoint (FACTS-2026.06 §3.4, §7).

It exists to exercise the suite's checks on restored data, not to reimplement Caracal: it
reads and writes the tables a 2026.06 STS touches, as their owner, with the same algorithms
(Argon2id client secrets, bare ZONE_KEK seals, ES256 mandates, signed audit events) and the
same HTTP surfaces (status codes and bodies are the facts' own). ``/ready`` never decrypts a
key, so a wrong ZONE_KEK shows only at JWKS (500) and token issuance (500).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import redis as redis_lib
from argon2.low_level import Type, hash_secret_raw
from psycopg.types.json import Jsonb

from caracal_restore.chainhash import parse_hmac_key
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.reference.services import gwsig, signing, tokens
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
    uuid7,
)
from caracal_restore.reference.services.policygate import (
    Evaluator,
    PolicyOutcome,
    PolicyUnavailable,
    decide,
    default_evaluator,
)
from caracal_restore.reference.services.producer import AuditEvent, AuditProducer
from caracal_restore.reference.services.sts_revocation import StsRevocationConsumer

log = logging.getLogger(__name__)

GRANT_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
#: Stream groups /ready ensures (stream, group), created at ``$`` like the provisioner does.
READY_GROUPS = (
    ("caracal.sessions.revoke", "sts-revocation"),
    ("caracal.policy.invalidate", "opa-engine"),
    ("caracal.keys.invalidate", "sts-keys"),
)
DEFAULT_TTL = 900
MAX_SESSION_TTL = 3600
MAX_RESOURCE_TTL = 900
CLOCK_LEEWAY = 60


def _error(status: int, error: str, description: str) -> HttpError:
    return HttpError(status, {"error": error, "error_description": description})


INVALID_CLIENT = (401, "access_denied", "invalid client credentials")
POLICY_DENIED = (403, "access_denied", "policy denied")
POLICY_UNAVAILABLE = (503, "policy_eval_failed", "policy evaluation unavailable")
ISSUANCE_FAILED = (500, "internal_error", "token issuance failed")
INVALID_SUBJECT = (401, "invalid_token", "invalid subject_token")
BAD_GATEWAY_SIG = (401, "access_denied", "invalid gateway exchange signature")


def load_zone_kek(value: str) -> bytes:
    """ZONE_KEK as the 2026.06 STS validates it at start (hex, 32 bytes, not weak)."""
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise StartupError(f"ZONE_KEK: encoding/hex: {exc}") from None
    if len(raw) != 32:
        raise StartupError(f"ZONE_KEK must be 32 bytes, got {len(raw)}")
    if raw == bytes(32):
        raise StartupError("ZONE_KEK must not be all zeros")
    if len(set(raw)) == 1:
        raise StartupError("ZONE_KEK must not repeat the same byte")
    if all((raw[i] - raw[i - 1]) % 256 == 1 for i in range(1, 32)):
        raise StartupError("ZONE_KEK must not use a sequential byte pattern")
    if any(raw == raw[:p] * (32 // p) for p in (2, 4, 8, 16)):
        raise StartupError("ZONE_KEK must not use a repeating byte pattern")
    return raw


def verify_client_secret(stored: str | None, secret: str) -> bool:
    """Check a secret against ``argon2id$<saltB64>$<hashB64>`` (t=3, m=65536, p=2)."""
    if not stored or not secret:
        return False
    parts = stored.split("$")
    if len(parts) != 3 or parts[0] != "argon2id":
        return False
    try:
        salt = base64.b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        expected = base64.b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    except (binascii.Error, ValueError):
        return False
    if not salt or not expected:
        return False
    actual = hash_secret_raw(secret.encode(), salt, time_cost=3, memory_cost=65536,
                             parallelism=2, hash_len=len(expected), type=Type.ID)
    return hmac.compare_digest(actual, expected)


def _scopes(value: str) -> list[str]:
    return [s for s in value.split(" ") if s]


class _Sts:
    """Request handling; one instance per running STS."""

    def __init__(self, db: Database, rds: redis_lib.Redis, producer: AuditProducer, kek: bytes,
                 gateway_key: bytes, replay_dir: Path, evaluate: Evaluator) -> None:
        self.db, self.redis, self.producer = db, rds, producer
        self._kek, self._gateway_key = kek, gateway_key
        self.replay_dir, self.evaluate = replay_dir, evaluate
        self.issuer = ""
        self.metrics_bearer: str | None = None
        self.jwks_invalid_keys = 0

    def route(self, req: Request) -> Response:
        """Dispatch by path."""
        if req.path == "/health":
            return Response(200)
        if req.path == "/ready":
            return self.ready()
        if req.path == "/metrics":
            return metrics_response(req, self.metrics_bearer, {
                "caracal_sts_jwks_invalid_keys_total": ("counter", self.jwks_invalid_keys)})
        if req.path == "/.well-known/jwks.json" and req.method == "GET":
            return self.jwks(req)
        if req.path == "/oauth/2/token" and req.method == "POST":
            request_id = req.header("X-Request-Id") or uuid7()
            try:
                response = self.token(req, request_id)
            except HttpError as exc:
                response = json_response(exc.status, exc.body)
            response.headers.append(("X-Request-Id", request_id))
            return response
        return json_response(404, {"error": "not_found", "error_description": "not found"})

    # ---------------------------------------------------------------- readiness and JWKS

    def ready(self) -> Response:
        """PG ping, Redis ping, replay dir, stream groups — never a key decryption."""
        try:
            self.db.ping(timeout=2)
        except psycopg.Error:
            return ready_failed("postgres_unreachable")
        try:
            self.redis.ping()
        except redis_lib.RedisError:
            return ready_failed("redis_unreachable")
        if not replay_dir_writable(self.replay_dir):
            return ready_failed("audit_replay_unavailable")
        try:
            for stream, group in READY_GROUPS:
                ensure_group(self.redis, stream, group, "$")
        except redis_lib.RedisError:
            return ready_failed("stream_consumers_not_ready")
        return ready_ok()

    def jwks(self, req: Request) -> Response:
        """The zone's verification keys; undecryptable ones skipped, 500 when none is left."""
        zone_id = req.query().get("zone_id", "")
        if not zone_id:
            raise _error(400, "invalid_request", "zone_id is required")
        with self.db.transaction() as conn:
            rows = signing.verification_rows(conn, zone_id)
        if not rows:
            raise _error(404, "resource_not_found", "zone signing key not found")
        keys = []
        for row in rows:
            try:
                opened = signing.open_row(self._kek, row)
            except signing.KeyUnavailable:
                log.warning("jwks: skipped invalid signing key (reason decrypt) kid=%s", row.kid)
                self.jwks_invalid_keys += 1
                continue
            keys.append(tokens.public_jwk(opened.kid, opened.private_key.public_key()))
        if not keys:
            raise _error(500, "internal_error", "signing key decryption failed")
        return json_response(200, {"keys": keys},
                             [("Cache-Control", "public, max-age=300, must-revalidate")])

    # --------------------------------------------------------------------- token endpoint

    def token(self, req: Request, request_id: str) -> Response:
        """Client-credentials or Gateway-signed token exchange."""
        items = parse_qsl(req.body.decode(errors="replace"), keep_blank_values=True)
        form: dict[str, str] = {}
        for name, value in items:
            form.setdefault(name, value)
        if form.get("grant_type") != GRANT_TOKEN_EXCHANGE:
            raise _error(400, "unsupported_grant_type", "unsupported grant_type")
        zone_id, app_id = form.get("zone_id", ""), form.get("application_id", "")
        if not zone_id or not app_id:
            raise _error(400, "invalid_request", "zone_id and application_id are required")
        resource = form.get("resource", "")
        gateway = req.header(gwsig.HEADER_SIGNATURE) is not None
        if gateway:
            request_id = self._check_gateway_signature(req, items)
        if not resource:
            raise _error(400, "invalid_request", "at least one resource is required")
        with self.db.transaction() as conn:
            app = conn.execute(
                "SELECT client_secret_hash FROM applications WHERE zone_id = %s AND id = %s"
                " AND archived_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                (zone_id, app_id),
            ).fetchone()
            if app is None:
                raise _error(*INVALID_CLIENT)
            subject: dict[str, Any] | None = None
            if gateway:
                subject = self._check_subject(conn, zone_id, app_id, form.get("subject_token", ""))
            elif not verify_client_secret(app[0], form.get("client_secret", "")):
                raise _error(*INVALID_CLIENT)
            res = conn.execute(
                "SELECT r.scopes, r.upstream_url, p.provider_kind FROM resources r"
                " JOIN providers p ON p.id = r.credential_provider_id AND p.zone_id = r.zone_id"
                " WHERE r.zone_id = %s AND r.identifier = %s AND r.archived_at IS NULL",
                (zone_id, resource),
            ).fetchone()
            if res is None:
                raise _error(400, "invalid_target", "resource not found")
            requested = _scopes(form.get("scope", ""))
            if any(s not in (res[0] or []) for s in requested):
                raise _error(400, "invalid_scope", "requested scope is not allowed for resource")
            ttl = self._ttl(form.get("ttl_seconds", ""), MAX_RESOURCE_TTL if gateway
                            else MAX_SESSION_TTL)
            outcome = self._decide(conn, zone_id, app_id, resource, request_id, requested)
            try:
                key = signing.active_key(conn, self._kek, zone_id)
            except signing.KeyUnavailable as exc:
                log.error("token issuance failed: %s", exc)
                raise _error(*ISSUANCE_FAILED) from None
            now = int(time.time())
            sid = uuid7()
            if subject is None:
                scope = " ".join(requested)
                claims: dict[str, Any] = {
                    "iss": self.issuer, "sub": app_id, "aud": [self.issuer], "exp": now + ttl,
                    "iat": now, "jti": uuid7(), "zone_id": zone_id, "client_id": app_id,
                    "scope": scope, "sid": sid, "root_sid": sid, "use": "session",
                    "sub_type": "application", "target": [resource],
                }
                parent = None
            else:
                scope = " ".join(requested) if requested else str(subject.get("scope", ""))
                claims = {
                    "iss": self.issuer, "sub": subject["sub"], "aud": [resource],
                    "exp": now + ttl, "iat": now, "jti": uuid7(), "zone_id": zone_id,
                    "client_id": app_id, "scope": scope, "sid": sid,
                    "root_sid": subject.get("root_sid") or subject["sid"], "use": "resource",
                    "sub_type": subject.get("sub_type", "application"), "target": [resource],
                }
                for extra in ("agent_session_id", "delegation_edge_id"):
                    if subject.get(extra):
                        claims[extra] = subject[extra]
                parent = str(subject["sid"])
            access_token = tokens.sign_es256(key.private_key, key.kid, claims)
            conn.execute(
                "INSERT INTO sessions (id, zone_id, session_type, subject_id, parent_id, status,"
                " expires_at, authenticated_at, claims_json) VALUES (%s, %s, 'application', %s,"
                " %s, 'active', to_timestamp(%s), now(), %s)",
                (sid, zone_id, claims["sub"], parent, claims["exp"], Jsonb(claims)),
            )
        self.redis.set(f"audit:jti:{claims['jti']}", f"{app_id}|{now}", ex=ttl)
        metadata: dict[str, Any] = {
            "application_id": app_id, "resource": resource, "requested_scopes": requested,
            "session_id": sid, "agent_session_id": claims.get("agent_session_id", ""),
            "delegation_edge_id": claims.get("delegation_edge_id", ""),
            "runtime_credential_injection": False,
        }
        if subject is not None:
            metadata.update(parent_session_id=parent, request_method=form.get("request_method", ""),
                            request_path=form.get("request_path", ""))
        self._audit(zone_id, request_id, outcome, metadata)
        body: dict[str, Any] = {
            "access_token": access_token, "token_type": "Bearer", "expires_in": ttl,
            "scope": scope, "issued_token_type": ACCESS_TOKEN_TYPE,
            "target_resources": [resource],
        }
        if subject is not None:
            body["upstreams"] = {resource: self._directive(res[1], res[2], access_token)}
        return json_response(200, body, [("Cache-Control", "no-store")])

    def _ttl(self, value: str, cap: int) -> int:
        try:
            ttl = int(value or 0)
        except ValueError:
            raise _error(400, "invalid_request", "ttl_seconds must be an integer") from None
        ttl = ttl or DEFAULT_TTL
        if ttl < 0 or ttl > cap:
            raise _error(400, "invalid_request", f"ttl_seconds must be between 1 and {cap}")
        return ttl

    def _decide(self, conn: psycopg.Connection[Any], zone_id: str, app_id: str, resource: str,
                request_id: str, requested: list[str]) -> PolicyOutcome:
        try:
            outcome = decide(conn, self.evaluate, zone_id, app_id, resource)
        except PolicyUnavailable as exc:
            log.warning("policy evaluation unavailable: %s", exc)
            raise _error(*POLICY_UNAVAILABLE) from None
        if not outcome.allowed:
            self._audit(zone_id, request_id, outcome, {
                "application_id": app_id, "resource": resource, "requested_scopes": requested})
            raise _error(*POLICY_DENIED)
        return outcome

    def _audit(self, zone_id: str, request_id: str, outcome: PolicyOutcome,
               metadata: Mapping[str, Any]) -> None:
        self.producer.emit(AuditEvent(
            zone_id=zone_id, event_type="token_exchange", request_id=request_id,
            decision=outcome.decision, evaluation_status=outcome.evaluation_status,
            determining_policies=outcome.determining_policies, diagnostics=outcome.diagnostics,
            metadata=metadata, policy_set_id=outcome.policy_set_id,
            policy_set_version_id=outcome.policy_set_version_id,
            manifest_sha=outcome.manifest_sha,
        ))

    @staticmethod
    def _directive(upstream_url: str | None, provider_kind: str, mandate: str) -> dict[str, Any]:
        if not upstream_url:
            raise _error(403, "access_denied", "resource upstream not configured")
        if provider_kind == "none":
            return {"url": upstream_url, "auth_mode": "none"}
        if provider_kind == "caracal_mandate":
            return {"url": upstream_url, "auth_mode": "caracal_jwt",
                    "auth_header": "Authorization", "auth_scheme": "Bearer"}
        # Provider credentials are not part of the reference deployment.
        raise _error(500, "internal_error", "upstream directive build failed")

    # ------------------------------------------------------------ Gateway-signed exchange

    def _check_gateway_signature(self, req: Request, items: list[tuple[str, str]]) -> str:
        timestamp = req.header(gwsig.HEADER_TIMESTAMP) or ""
        request_id = req.header(gwsig.HEADER_REQUEST) or ""
        given = req.header(gwsig.HEADER_SIGNATURE) or ""
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            raise _error(*BAD_GATEWAY_SIG) from None
        expected = gwsig.signature(self._gateway_key, timestamp, request_id, req.method,
                                   req.path, items)
        if not request_id or skew > gwsig.MAX_SKEW_SECONDS or not hmac.compare_digest(
                expected, given.lower()):
            raise _error(*BAD_GATEWAY_SIG)
        if not self.redis.set(gwsig.nonce_key(request_id), "1", nx=True,
                              ex=gwsig.NONCE_TTL_SECONDS):
            raise _error(*BAD_GATEWAY_SIG)
        return request_id

    def _check_subject(self, conn: psycopg.Connection[Any], zone_id: str, app_id: str,
                       token: str) -> dict[str, Any]:
        """Verify a presented session mandate against every key of the zone's set."""
        rows = signing.verification_rows(conn, zone_id)
        public = {}
        try:
            for row in rows:
                opened = signing.open_row(self._kek, row)
                public[opened.kid] = opened.private_key.public_key()
        except signing.KeyUnavailable as exc:
            log.warning("load signing keys for zone %s: %s", zone_id, exc)
            raise _error(*INVALID_SUBJECT) from None
        try:
            claims = tokens.verify_es256(token, public)
        except tokens.TokenError:
            raise _error(*INVALID_SUBJECT) from None
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if (claims.get("iss") != self.issuer or self.issuer not in audiences
                or not isinstance(claims.get("exp"), int)
                or claims["exp"] + CLOCK_LEEWAY < time.time()
                or claims.get("use") != "session" or claims.get("zone_id") != zone_id
                or not claims.get("sid") or not claims.get("sub")):
            raise _error(*INVALID_SUBJECT)
        session = conn.execute(
            "SELECT status, expires_at, subject_id FROM sessions WHERE zone_id = %s AND id = %s",
            (zone_id, claims["sid"]),
        ).fetchone()
        if (session is None or session[0] != "active"
                or session[1] <= dt.datetime.now(dt.UTC) or session[2] != claims["sub"]):
            raise _error(*INVALID_SUBJECT)
        if claims.get("client_id") != app_id:
            raise _error(403, "access_denied", "session client mismatch")
        return claims


def start_sts(
    *,
    pg: PgEndpoint,
    redis: RedisEndpoint,
    secrets: Mapping[str, str],
    replay_dir: Path,
    issuer_url: str | None = None,
    evaluate: Evaluator | None = None,
) -> RunningService:
    """Start the reference STS (replays pending audit files first); use as a context manager.

    ``secrets`` maps secret file names to values (``zoneKek``, ``auditHmacKey``,
    ``gatewayStsHmacKey``, ``streamsHmacKey``); ``issuer_url`` defaults to the STS's own URL.
    Besides HTTP it consumes ``caracal.sessions.revoke`` as group ``sts-revocation``.
    ``/metrics`` (bearer ``metricsBearer`` when given) exposes
    ``caracal_sts_jwks_invalid_keys_total``.
    """
    kek = load_zone_kek(require_secret(secrets, "zoneKek", "sts"))
    try:
        audit_key = parse_hmac_key(require_secret(secrets, "auditHmacKey", "sts"))
        gateway_key = gwsig.parse_hex_key(require_secret(secrets, "gatewayStsHmacKey", "sts"),
                                          "GATEWAY_STS_HMAC_KEY")
        streams_key = gwsig.parse_hex_key(require_secret(secrets, "streamsHmacKey", "sts"),
                                          "STREAMS_HMAC_KEY")
    except ValueError as exc:
        raise StartupError(f"sts: {exc}") from None
    with starting("sts") as life:
        rds = redis_client(redis)
        life.on_stop(rds.close)
        producer = AuditProducer(rds, audit_key, Path(replay_dir), "sts")
        try:
            replayed = producer.replay_pending()
        except redis_lib.RedisError as exc:
            raise StartupError(f"sts: audit replay failed: {type(exc).__name__}") from None
        if replayed:
            log.info("sts: replayed %d pending audit events", replayed)
        db = Database(pg)
        sts = _Sts(db, rds, producer, kek, gateway_key, Path(replay_dir),
                   evaluate or default_evaluator())
        life.worker("revocations", StsRevocationConsumer(db, rds, streams_key).run)
        url = life.serve(sts.route)
        sts.issuer = issuer_url or url
        sts.metrics_bearer = secrets.get("metricsBearer") or None
        return life.running(url)

"""Reference STS of release 1.0: CSS1 keys, data-document policy, three mandate uses.

Facts: FACTS-1.0 §7 (SECRET_STORE_KEK, CSS1, keyring by kekId), §8 (routing from
``resources``), §9.2 (``sts-revocation`` → ``authority_records``), §14 (token endpoint,
bootstrap, delegated mint, Gateway exchange). It reuses the 2026.06 reference STS for what
did not change (HTTP plumbing, readiness, JWKS shape, client-secret hashes, audit events)
and replaces what did:

- keys: ``secrets.envelope`` opened with ``[SECRET_STORE_KEK, SECRET_STORE_KEK_PREVIOUS]``;
- bootstrap exchange (client secret, ``scope=agent:lifecycle``) → ``use=session`` mandate;
- delegated mint (client secret + ``agent_session_id`` + ``delegation_edge_id``): the
  governed Session must be active and the edge active, unexpired, pointing at it and received
  by the caller, the resource inside the edge's constraints, the scopes inside the edge's
  scopes and granted to a session label → one-shot ``use=gateway`` mandate (≤ 15 min);
- Gateway exchange (signed, 64-hex nonce, ``gateway_request_id``): the subject must be a
  ``use=gateway`` mandate of the caller whose authority record, Session and edge are still
  active → ``use=resource`` mandate and ``upstreams[<resource>]`` built from
  ``resources.upstream_url`` and the provider (``none``; ``caracal_mandate`` → the mandate;
  ``api_key``/``bearer_token`` → the provider secret config opened from ``secret_store``).

Subset, stated: no user-subject federation, no step-up/approvals, no JTI registry beyond
``audit:jti:<jti>``, no operation enforcement on ``enforced`` resources (their declared
operations are not matched), no rate limits.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import psycopg
import redis as redis_lib
from psycopg.types.json import Jsonb

from caracal_restore import envelope
from caracal_restore.chainhash import parse_hmac_key
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.reference.services import gwsig_1_0, signing_1_0, tokens
from caracal_restore.reference.services.common import (
    Database,
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
from caracal_restore.reference.services.policygate_1_0 import (
    BOOTSTRAP_SCOPE,
    PolicyOutcome,
    PolicyUnavailable,
    decide_bootstrap,
    decide_mint,
    load_bundle,
)
from caracal_restore.reference.services.producer import AuditProducer
from caracal_restore.reference.services.sts import (
    ACCESS_TOKEN_TYPE,
    CLOCK_LEEWAY,
    GRANT_TOKEN_EXCHANGE,
    INVALID_CLIENT,
    INVALID_SUBJECT,
    ISSUANCE_FAILED,
    POLICY_DENIED,
    POLICY_UNAVAILABLE,
    _error,
    _scopes,
    _Sts,
    verify_client_secret,
)
from caracal_restore.reference.services.sts_revocation import StsRevocationConsumer

log = logging.getLogger(__name__)

MAX_GATEWAY_TTL = 900
BAD_GATEWAY_SIG = (401, "access_denied", "invalid gateway exchange signature")
DELEGATION_INVALID = (403, "access_denied", "delegation not valid for this session")
#: RevokeAuthorityRecord: the record and its descendants, keeping an earlier time/reason.
REVOKE_RECORDS = (
    "WITH RECURSIVE tree AS ("
    " SELECT id FROM authority_records WHERE zone_id = %(zone)s AND id = %(sid)s"
    " UNION SELECT r.id FROM authority_records r JOIN tree t ON r.parent_id = t.id)"
    " UPDATE authority_records SET status = 'revoked', revoked_at = COALESCE(revoked_at, now()),"
    " revoked_reason = COALESCE(revoked_reason, %(reason)s)"
    " WHERE id IN (SELECT id FROM tree) AND status <> 'revoked'"
)


def load_keyring(current: str, previous: str | None = None) -> list[bytes]:
    """SECRET_STORE_KEK (+ _PREVIOUS) as STS validates them: hex, 32 bytes, not weak."""
    ring = []
    for name, value in (("SECRET_STORE_KEK", current), ("SECRET_STORE_KEK_PREVIOUS", previous)):
        if value is None:
            continue
        try:
            raw = bytes.fromhex(value.strip())
        except ValueError as exc:
            raise StartupError(f"{name}: encoding/hex: {exc}") from None
        if len(raw) != 32:
            raise StartupError(f"{name} must be 32 bytes, got {len(raw)}")
        steps = {(raw[i] - raw[i - 1]) % 256 for i in range(1, 32)}
        if len(set(raw)) == 1 or steps in ({1}, {255}) or raw == raw[:2] * 16:
            raise StartupError(f"{name} is weak")
        ring.append(raw)
    return ring


class RevocationConsumer(StsRevocationConsumer):
    """``sts-revocation`` at 1.0: ``session_id`` revokes an authority record and its subtree."""

    def _apply(self, values: Mapping[str, str]) -> None:
        from caracal_restore.reference.services.sts_revocation import _Failed

        zone, sid = values.get("zone_id", ""), values.get("session_id", "")
        if not zone or not (sid or values.get("agent_session_id")):
            raise _Failed("missing session_id or agent_session_id")
        if not sid:
            return
        try:
            with self._db.transaction() as conn:
                conn.execute(REVOKE_RECORDS, {"zone": zone, "sid": sid,
                                              "reason": values.get("reason") or "session_revoked"})
        except psycopg.Error as exc:
            raise _Failed(f"revoke authority record: {type(exc).__name__}") from None


class Sts10(_Sts):
    """The 1.0 token endpoint and JWKS on top of the 2026.06 reference STS plumbing."""

    def __init__(self, db: Database, rds: redis_lib.Redis, producer: AuditProducer,
                 keyring: Sequence[bytes], gateway_key: bytes, replay_dir: Path) -> None:
        super().__init__(db, rds, producer, keyring[0], gateway_key, replay_dir,
                         lambda *_: None)
        self._keyring = list(keyring)

    # ------------------------------------------------------------------------ JWKS

    def jwks(self, req: Request) -> Response:
        """The zone's verification keys (CSS1); undecryptable ones skipped, 500 if none."""
        zone_id = req.query().get("zone_id", "")
        if not zone_id:
            raise _error(400, "invalid_request", "zone_id is required")
        with self.db.transaction() as conn:
            rows = signing_1_0.verification_rows(conn, zone_id)
        if not rows:
            raise _error(404, "resource_not_found", "zone signing key not found")
        keys = []
        for row in rows:
            try:
                opened = signing_1_0.open_row(self._keyring, row)
            except signing_1_0.KeyUnavailable as exc:
                log.warning("jwks: skipped invalid signing key kid=%s: %s", row.kid, exc)
                self.jwks_invalid_keys += 1
                continue
            keys.append(tokens.public_jwk(opened.kid, opened.private_key.public_key()))
        if not keys:
            raise _error(500, "internal_error", "signing key decryption failed")
        return json_response(200, {"keys": keys},
                             [("Cache-Control", "public, max-age=300, must-revalidate")])

    # ---------------------------------------------------------------- token endpoint

    def token(self, req: Request, request_id: str) -> Response:
        """Bootstrap, delegated mint or Gateway exchange, by what the request carries."""
        content_type = (req.header("Content-Type") or "").split(";")[0].strip()
        if content_type != "application/x-www-form-urlencoded":
            raise _error(415, "invalid_request", "content type must be form-urlencoded")
        if req.raw_query:
            raise _error(400, "invalid_request", "query string not allowed")
        items = parse_qsl(req.body.decode(errors="replace"), keep_blank_values=True)
        names = [k for k, _ in items if k != "resource"]
        if len(names) != len(set(names)):
            raise _error(400, "invalid_request", "duplicate form field")
        form = dict(items)
        if form.get("grant_type") != GRANT_TOKEN_EXCHANGE:
            raise _error(400, "unsupported_grant_type", "unsupported grant_type")
        zone_id, app_id = form.get("zone_id", ""), form.get("application_id", "")
        if not zone_id or not app_id:
            raise _error(400, "invalid_request", "zone_id and application_id are required")
        gateway = req.header(gwsig_1_0.HEADER_SIGNATURE) is not None
        if gateway:
            self._check_signature(req, form, request_id)
        resource = form.get("resource", "")
        if not resource:
            raise _error(400, "invalid_request", "at least one resource is required")
        requested = _scopes(form.get("scope", ""))
        with self.db.transaction() as conn:
            app = conn.execute(
                "SELECT client_secret_hash FROM applications WHERE zone_id = %s AND id = %s"
                " AND archived_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                (zone_id, app_id),
            ).fetchone()
            if app is None:
                raise _error(*INVALID_CLIENT)
            if not gateway and not verify_client_secret(app[0], form.get("client_secret", "")):
                raise _error(*INVALID_CLIENT)
            res = self._resource(conn, zone_id, resource)
            bundle = self._bundle(conn, zone_id)
            if gateway:
                claims, outcome, parent = self._gateway_exchange(
                    conn, zone_id, app_id, resource, form, bundle)
            elif form.get("agent_session_id") or form.get("delegation_edge_id"):
                claims, outcome, parent = self._mint(conn, zone_id, app_id, resource, requested,
                                                     form, bundle, res)
            else:
                claims, outcome, parent = self._bootstrap(zone_id, app_id, resource, requested,
                                                          form, bundle, res)
            if not outcome.allowed:
                self._audit(zone_id, request_id, outcome, {
                    "application_id": app_id, "resource": resource,
                    "requested_scopes": requested})
                raise _error(*POLICY_DENIED)
            try:
                key = signing_1_0.active_key(conn, self._keyring, zone_id)
            except signing_1_0.KeyUnavailable as exc:
                log.error("token issuance failed: %s", exc)
                raise _error(*ISSUANCE_FAILED) from None
            directive = (self._directive_1_0(conn, zone_id, res, claims)
                         if gateway else None)
            access_token = tokens.sign_es256(key.private_key, key.kid, claims)
            conn.execute(
                "INSERT INTO authority_records (id, zone_id, session_type, subject_id, parent_id,"
                " status, expires_at, authenticated_at, claims_json) VALUES (%s, %s,"
                " 'application', %s, %s, 'active', to_timestamp(%s), now(), %s)",
                (claims["sid"], zone_id, claims["sub"], parent, claims["exp"], Jsonb(claims)),
            )
        now = int(claims["iat"])
        self.redis.set(f"audit:jti:{claims['jti']}", f"{app_id}|{now}",
                       ex=max(1, int(claims["exp"]) - now))
        metadata: dict[str, Any] = {
            "application_id": app_id, "resource": resource, "requested_scopes": requested,
            "session_id": claims["sid"], "agent_session_id": claims.get("agent_session_id", ""),
            "delegation_edge_id": claims.get("delegation_edge_id", ""),
            "runtime_credential_injection": False, "use": claims["use"],
        }
        self._audit(zone_id, request_id, outcome, metadata)
        body: dict[str, Any] = {
            "access_token": access_token, "token_type": "Bearer",
            "expires_in": int(claims["exp"]) - now, "scope": claims["scope"],
            "issued_token_type": ACCESS_TOKEN_TYPE, "target_resources": [resource],
        }
        if directive is not None:
            body["upstreams"] = {resource: directive}
        return json_response(200, body, [("Cache-Control", "no-store")])

    def _resource(self, conn: psycopg.Connection[Any], zone_id: str,
                  resource: str) -> dict[str, Any]:
        row = conn.execute(
            "SELECT r.id, r.identifier, r.scopes, r.upstream_url, p.id, p.provider_kind,"
            " p.archived_at, p.config_json FROM resources r LEFT JOIN providers p"
            " ON p.id = r.credential_provider_id AND p.zone_id = r.zone_id"
            " WHERE r.zone_id = %s AND (r.identifier = %s OR r.id = %s) AND r.archived_at IS NULL",
            (zone_id, resource, resource),
        ).fetchone()
        if row is None:
            raise _error(400, "invalid_target", "resource not found")
        if row[4] is None or row[6] is not None:
            raise _error(403, "access_denied", "provider_unavailable")
        return {"id": row[0], "identifier": row[1], "scopes": list(row[2] or []),
                "upstream_url": row[3], "provider_id": row[4], "provider_kind": row[5],
                "config": row[7] or {}}

    def _bundle(self, conn: psycopg.Connection[Any], zone_id: str) -> Any:
        try:
            return load_bundle(conn, zone_id)
        except PolicyUnavailable as exc:
            log.warning("policy evaluation unavailable: %s", exc)
            raise _error(*POLICY_UNAVAILABLE) from None

    def _base_claims(self, zone_id: str, app_id: str, ttl: int, use: str, scope: str,
                     resource: str) -> dict[str, Any]:
        now = int(time.time())
        sid = uuid7()
        return {"iss": self.issuer, "sub": app_id, "aud": [self.issuer], "exp": now + ttl,
                "iat": now, "jti": uuid7(), "zone_id": zone_id, "client_id": app_id,
                "scope": scope, "sid": sid, "root_sid": sid, "use": use,
                "sub_type": "application", "target": [resource]}

    def _bootstrap(self, zone_id: str, app_id: str, resource: str, requested: list[str],
                   form: Mapping[str, str], bundle: Any, res: Mapping[str, Any]
                   ) -> tuple[dict[str, Any], PolicyOutcome, str | None]:
        mintable = set(res["scopes"]) | ({BOOTSTRAP_SCOPE} if res["upstream_url"] else set())
        if any(s not in mintable for s in requested):
            raise _error(400, "invalid_scope", "requested scope is not allowed for resource")
        ttl = self._ttl(form.get("ttl_seconds", ""), 3600)
        outcome = decide_bootstrap(bundle, app_id, resource, requested)
        return (self._base_claims(zone_id, app_id, ttl, "session", " ".join(requested),
                                  resource), outcome, None)

    def _mint(self, conn: psycopg.Connection[Any], zone_id: str, app_id: str, resource: str,
              requested: list[str], form: Mapping[str, str], bundle: Any,
              res: Mapping[str, Any]) -> tuple[dict[str, Any], PolicyOutcome, str | None]:
        session_id, edge_id = form.get("agent_session_id", ""), form.get("delegation_edge_id", "")
        session = conn.execute(
            "SELECT labels, subject_authority_record_id FROM sessions WHERE zone_id = %s"
            " AND id = %s AND status = 'active' AND application_id = %s",
            (zone_id, session_id, app_id),
        ).fetchone()
        edge = conn.execute(
            "SELECT source_session_id, target_session_id, scopes, constraints_json,"
            " resource_id FROM delegation_edges WHERE zone_id = %s AND id = %s"
            " AND status = 'active' AND expires_at > now() AND receiver_application_id = %s",
            (zone_id, edge_id, app_id),
        ).fetchone()
        if session is None or edge is None or edge[1] != session_id:
            raise _error(*DELEGATION_INVALID)
        allowed = (edge[3] or {}).get("resources") if isinstance(edge[3], dict) else None
        if ((allowed and resource not in allowed) or edge[4] not in (None, res["id"])
                or any(s not in (edge[2] or []) for s in requested)):
            raise _error(*DELEGATION_INVALID)
        if any(s not in res["scopes"] for s in requested):
            raise _error(400, "invalid_scope", "requested scope is not allowed for resource")
        ttl = self._ttl(form.get("ttl_seconds", ""), MAX_GATEWAY_TTL)
        epoch = conn.execute("SELECT epoch FROM delegation_graph_epochs WHERE zone_id = %s",
                             (zone_id,)).fetchone()
        outcome = decide_mint(bundle, app_id, resource, requested, session[0] or [])
        claims = self._base_claims(zone_id, app_id, ttl, "gateway", " ".join(requested),
                                   resource)
        claims.update(
            agent_session_id=session_id, delegation_edge_id=edge_id,
            source_session_id=edge[0], target_session_id=edge[1],
            delegation_path=[edge[0], edge[1]],
            delegation_chain=[{"application_id": app_id, "agent_session_id": session_id,
                               "delegation_edge_id": edge_id}],
            hop_count=1, delegation_graph_epoch=int(epoch[0]) if epoch else 0,
        )
        return claims, outcome, None

    def _gateway_exchange(self, conn: psycopg.Connection[Any], zone_id: str, app_id: str,
                          resource: str, form: Mapping[str, str], bundle: Any
                          ) -> tuple[dict[str, Any], PolicyOutcome, str | None]:
        subject = self._check_gateway_subject(conn, zone_id, app_id,
                                              form.get("subject_token", ""))
        if resource not in (subject.get("target") or []):
            raise _error(*INVALID_SUBJECT)
        labels = conn.execute("SELECT labels FROM sessions WHERE zone_id = %s AND id = %s",
                              (zone_id, subject.get("agent_session_id")),).fetchone()
        scopes = _scopes(str(subject.get("scope", "")))
        outcome = decide_mint(bundle, app_id, resource, scopes, labels[0] if labels else [])
        ttl = min(MAX_GATEWAY_TTL, max(1, int(subject["exp"]) - int(time.time())))
        claims = self._base_claims(zone_id, app_id, ttl, "resource", " ".join(scopes), resource)
        claims.update(aud=[resource], root_sid=subject.get("root_sid") or subject["sid"])
        for extra in ("agent_session_id", "delegation_edge_id", "source_session_id",
                      "target_session_id", "delegation_chain", "hop_count",
                      "delegation_graph_epoch"):
            if extra in subject:
                claims[extra] = subject[extra]
        return claims, outcome, str(subject["sid"])

    # ------------------------------------------------------------- Gateway signatures

    def _check_signature(self, req: Request, form: Mapping[str, str], request_id: str) -> None:
        timestamp = req.header(gwsig_1_0.HEADER_TIMESTAMP) or ""
        nonce = req.header(gwsig_1_0.HEADER_REQUEST) or ""
        given = req.header(gwsig_1_0.HEADER_SIGNATURE) or ""
        try:
            skew = abs(time.time() - int(timestamp))
        except ValueError:
            raise _error(*BAD_GATEWAY_SIG) from None
        expected = gwsig_1_0.signature(self._gateway_key, timestamp, nonce, req.method,
                                       req.path, req.body)
        if (not gwsig_1_0.is_nonce(nonce) or skew > gwsig_1_0.MAX_SKEW_SECONDS
                or not hmac.compare_digest(expected, given.lower())
                or form.get("gateway_request_id") != request_id):
            raise _error(*BAD_GATEWAY_SIG)
        if not self.redis.set(gwsig_1_0.nonce_key(nonce), "1", nx=True,
                              ex=gwsig_1_0.NONCE_TTL_SECONDS):
            raise _error(*BAD_GATEWAY_SIG)

    def _check_gateway_subject(self, conn: psycopg.Connection[Any], zone_id: str, app_id: str,
                               token: str) -> dict[str, Any]:
        """A ``use=gateway`` mandate of this app whose record, Session and edge are active."""
        public = {}
        try:
            for row in signing_1_0.verification_rows(conn, zone_id):
                opened = signing_1_0.open_row(self._keyring, row)
                public[opened.kid] = opened.private_key.public_key()
        except signing_1_0.KeyUnavailable as exc:
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
                or claims.get("use") != "gateway" or claims.get("zone_id") != zone_id
                or not claims.get("sid")):
            raise _error(*INVALID_SUBJECT)
        record = conn.execute(
            "SELECT status, expires_at, subject_id FROM authority_records WHERE zone_id = %s"
            " AND id = %s", (zone_id, claims["sid"]),
        ).fetchone()
        if (record is None or record[0] != "active" or record[1] <= dt.datetime.now(dt.UTC)
                or record[2] != claims.get("sub")):
            raise _error(*INVALID_SUBJECT)
        if claims.get("client_id") != app_id:
            raise _error(403, "access_denied", "session client mismatch")
        live = conn.execute(
            "SELECT (SELECT status FROM sessions WHERE zone_id = %(z)s AND id = %(s)s),"
            " (SELECT status FROM delegation_edges WHERE zone_id = %(z)s AND id = %(e)s)",
            {"z": zone_id, "s": claims.get("agent_session_id"),
             "e": claims.get("delegation_edge_id")},
        ).fetchone()
        if live != ("active", "active"):
            raise _error(*INVALID_SUBJECT)
        return claims

    def _directive_1_0(self, conn: psycopg.Connection[Any], zone_id: str,
                       res: Mapping[str, Any], claims: Mapping[str, Any]) -> dict[str, Any]:
        """``upstreams[<resource>]`` from the resource row and its provider (§8, §14.5)."""
        if not res["upstream_url"]:
            raise _error(403, "access_denied", "resource upstream not configured")
        kind = res["provider_kind"]
        if kind == "none":
            return {"url": res["upstream_url"], "auth_mode": "none"}
        if kind == "caracal_mandate":
            return {"url": res["upstream_url"], "auth_mode": "caracal_jwt",
                    "auth_header": "Authorization", "auth_scheme": "Bearer"}
        if kind in ("api_key", "bearer_token"):
            ref = PROFILE.provider_secret_ref.format(zone_id=zone_id,
                                                     provider_id=res["provider_id"])
            row = conn.execute("SELECT envelope FROM secret_store WHERE ref = %s",
                               (ref,)).fetchone()
            try:
                config = json.loads(envelope.css1_open(self._keyring, bytes(row[0]), ref)
                                    ) if row else None
            except (envelope.EnvelopeError, ValueError):
                config = None
            if not isinstance(config, dict) or not config.get(kind):
                log.error("provider credential unavailable for %s", ref)
                raise _error(502, "http_request_failed", "provider_credential_unavailable")
            header = (str(res["config"].get("header_name") or "X-Api-Key")
                      if kind == "api_key" else "Authorization")
            return {"url": res["upstream_url"], "auth_mode": "provider_apikey",
                    "auth_header": header, "auth_scheme": "Bearer" if kind == "bearer_token"
                    else "", "credential": str(config[kind]),
                    "auth_location": "header"}
        raise _error(500, "internal_error", "upstream directive build failed")


def _login(pg: PgEndpoint, secrets: Mapping[str, str], dsn_secret: str,
           service: str) -> PgEndpoint:
    """The service's own login (user and password from its DSN secret) on ``pg``'s server."""
    from caracal_restore.reference.v1_0.deployment import service_login

    return service_login(pg, secrets, dsn_secret, service)


def start_sts(*, pg: PgEndpoint, redis: RedisEndpoint, secrets: Mapping[str, str],
              replay_dir: Path, issuer_url: str | None = None) -> RunningService:
    """Start the reference 1.0 STS on ``pg``'s server as ``caracalsts``; a context manager.

    ``secrets`` maps file names to values: ``secretStoreKek`` (and optionally
    ``SECRET_STORE_KEK_PREVIOUS``), ``auditHmacKey``, ``gatewayStsHmacKey``,
    ``streamsHmacKey``, ``stsDatabaseUrl``.
    """
    keyring = load_keyring(require_secret(secrets, "secretStoreKek", "sts"),
                           secrets.get("SECRET_STORE_KEK_PREVIOUS") or None)
    try:
        audit_key = parse_hmac_key(require_secret(secrets, "auditHmacKey", "sts"))
        gateway_key = gwsig_1_0.parse_hex_key(require_secret(secrets, "gatewayStsHmacKey", "sts"),
                                              "GATEWAY_STS_HMAC_KEY")
        streams_key = gwsig_1_0.parse_hex_key(require_secret(secrets, "streamsHmacKey", "sts"),
                                              "STREAMS_HMAC_KEY")
    except ValueError as exc:
        raise StartupError(f"sts: {exc}") from None
    db = Database(_login(pg, secrets, "stsDatabaseUrl", "sts"))
    with starting("sts") as life:
        rds = redis_client(redis)
        life.on_stop(rds.close)
        producer = AuditProducer(rds, audit_key, Path(replay_dir), "sts")
        try:
            producer.replay_pending()
        except redis_lib.RedisError as exc:
            raise StartupError(f"sts: audit replay failed: {type(exc).__name__}") from None
        sts = Sts10(db, rds, producer, keyring, gateway_key, Path(replay_dir))
        life.worker("revocations", RevocationConsumer(db, rds, streams_key).run)
        url = life.serve(sts.route)
        sts.issuer = issuer_url or url
        sts.metrics_bearer = secrets.get("metricsBearer") or None
        return life.running(url)


__all__ = ["REVOKE_RECORDS", "RevocationConsumer", "Sts10", "load_keyring", "start_sts"]

"""Reference services of release 2026.06 against an embedded PostgreSQL 18 and Redis.

Each test builds its own zone (canary application with a known secret, provider kind
``none``, canary resource, gateway binding, allow policy, sealed signing key) so that tests do
not depend on one another; the services of the module are shared.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg.types.json import Jsonb

from caracal_restore.chainhash import (
    AUDIT_HASH_SELECT,
    chain_hmac,
    content_hash_parts,
    parse_hmac_key,
    stream_signature,
)
from caracal_restore.envelope import parse_kek, zone_seal
from caracal_restore.environments import postgres, redis
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.reference.policy import render_policy
from caracal_restore.reference.schema import apply_schema
from caracal_restore.reference.secrets import generate_secrets
from caracal_restore.reference.services import (
    RunningService,
    StartupError,
    start_audit,
    start_gateway,
    start_sts,
    start_upstream,
)
from caracal_restore.waiting import until

CANARY_HOST = "canary.caracal.test"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclasses.dataclass(frozen=True)
class Stack:
    """The shared environment and services of this module."""

    pg: PgEndpoint
    redis: RedisEndpoint
    secrets: dict[str, str] = dataclasses.field(repr=False)
    sts: RunningService
    gateway: RunningService
    audit: RunningService
    upstream: RunningService
    resolve: dict[str, str]
    tmp: Path


@dataclasses.dataclass(frozen=True)
class Canary:
    """One zone's canary rows."""

    zone_id: str
    application_id: str
    client_secret: str = dataclasses.field(repr=False)
    resource_identifier: str
    kid: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Embedded PG + Redis with the 2026.06 schema, and the four services started on them."""
    tmp = tmp_path_factory.mktemp("services")
    with postgres.embedded() as pg, redis.embedded() as rs:
        endpoint = pg.create_database("caracal")
        with psycopg.connect(endpoint.conninfo(), autocommit=True) as conn:
            apply_schema(conn, months=[dt.date.today()])
            conn.execute("INSERT INTO gateway_binding_revision (id, version) VALUES (true, 1)"
                         " ON CONFLICT (id) DO NOTHING")
        values = generate_secrets()
        (tmp / "sts").mkdir()
        (tmp / "gateway").mkdir()
        with start_upstream() as upstream, \
                start_audit(pg=endpoint, redis=rs.endpoint, secrets=values) as audit, \
                start_sts(pg=endpoint, redis=rs.endpoint, secrets=values,
                          replay_dir=tmp / "sts") as sts:
            resolve = {CANARY_HOST: upstream.url.removeprefix("http://")}
            with start_gateway(pg=endpoint, redis=rs.endpoint, secrets=values,
                               replay_dir=tmp / "gateway", sts_url=sts.url,
                               resolve=resolve) as gateway:
                yield Stack(endpoint, rs.endpoint, values, sts, gateway, audit, upstream,
                            resolve, tmp)


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    """An HTTP client that never uses a proxy from the environment."""
    with httpx.Client(trust_env=False, timeout=30) as c:
        yield c


def _db(stack: Stack) -> psycopg.Connection[Any]:
    return psycopg.connect(stack.pg.conninfo(), autocommit=True)


def _hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    raw = hash_secret_raw(secret.encode(), salt, time_cost=3, memory_cost=65536, parallelism=2,
                          hash_len=32, type=Type.ID)
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    return f"argon2id${b64(salt)}${b64(raw)}"


def _bump_revision(conn: psycopg.Connection[Any]) -> None:
    conn.execute("UPDATE gateway_binding_revision SET version = version + 1, updated_at = now()"
                 " WHERE id = true")


@pytest.fixture
def canary(stack: Stack, client: httpx.Client) -> Canary:
    """A fresh zone with every row the canary exchange and protected request need."""
    n = uuid.uuid4().hex[:10]
    zone, app, provider, resource = f"zone-{n}", f"app-{n}", f"prov-{n}", f"res-{n}"
    identifier = f"https://canary-{n}.caracal.test/api"
    secret = "cs_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    ciphertext, nonce = zone_seal(parse_kek(stack.secrets["zoneKek"]), pem)
    kid = str(uuid.uuid4())
    rego = render_policy(f"pol-{n}", [(app, identifier)])
    manifest = [{"policy_version_id": f"pv-{n}"}]
    manifest_text = json.dumps(manifest, separators=(",", ":"))
    with _db(stack) as conn, conn.transaction():
        conn.execute("INSERT INTO zones (id, name, slug, dek_ciphertext) VALUES (%s, %s, %s,"
                     " gen_random_bytes(32))", (zone, zone, zone))
        conn.execute("INSERT INTO applications (id, zone_id, name, registration_method,"
                     " client_secret_hash) VALUES (%s, %s, 'canary', 'managed', %s)",
                     (app, zone, _hash_secret(secret)))
        conn.execute("INSERT INTO providers (id, zone_id, name, identifier, provider_kind)"
                     " VALUES (%s, %s, 'none', 'provider://none', 'none')", (provider, zone))
        conn.execute("INSERT INTO resources (id, zone_id, name, identifier, upstream_url,"
                     " credential_provider_id, scopes) VALUES (%s, %s, 'canary', %s, %s, %s,"
                     " ARRAY['read'])",
                     (resource, zone, identifier, f"http://{CANARY_HOST}/echo", provider))
        conn.execute("INSERT INTO gateway_resource_bindings (resource_identifier, application_id,"
                     " zone_id) VALUES (%s, %s, %s)", (identifier, app, zone))
        _bump_revision(conn)
        conn.execute("INSERT INTO policies (id, zone_id, name, created_by) VALUES (%s, %s,"
                     " 'canary', 'test')", (f"pol-{n}", zone))
        conn.execute("INSERT INTO policy_versions (id, policy_id, version, content,"
                     " content_sha256) VALUES (%s, %s, 1, %s, %s)",
                     (f"pv-{n}", f"pol-{n}", rego, hashlib.sha256(rego.encode()).hexdigest()))
        conn.execute("INSERT INTO policy_sets (id, zone_id, name) VALUES (%s, %s, 'canary')",
                     (f"ps-{n}", zone))
        conn.execute("INSERT INTO policy_set_versions (id, policy_set_id, version, manifest_json,"
                     " manifest_sha256) VALUES (%s, %s, 1, %s, %s)",
                     (f"psv-{n}", f"ps-{n}", Jsonb(manifest),
                      hashlib.sha256(manifest_text.encode()).hexdigest()))
        conn.execute("INSERT INTO policy_set_bindings (zone_id, policy_set_id, active_version_id)"
                     " VALUES (%s, %s, %s)", (zone, f"ps-{n}", f"psv-{n}"))
        conn.execute("INSERT INTO secrets (id, zone_id, entity_id, name, type, ciphertext, nonce,"
                     " dek_id, version) VALUES (%s, %s, %s, 'zone_signing_key', 'token', %s, %s,"
                     " 'zoneKek', 1)", (kid, zone, zone, ciphertext, nonce))
    # /ready makes the Gateway notice the revision bump.
    assert client.get(f"{stack.gateway.url}/ready").status_code == 200
    return Canary(zone, app, secret, identifier, kid)


def _exchange(client: httpx.Client, sts: RunningService, canary: Canary,
              **extra: str) -> httpx.Response:
    form = {"grant_type": GRANT, "zone_id": canary.zone_id,
            "application_id": canary.application_id, "client_secret": canary.client_secret,
            "resource": canary.resource_identifier, **extra}
    return client.post(f"{sts.url}/oauth/2/token", data=form)


def _protected(client: httpx.Client, stack: Stack, canary: Canary, token: str,
               request_id: str | None = None, path: str = "/v1/items?x=1") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", "X-Caracal-Resource": canary.resource_identifier,
               "X-Request-Id": request_id or f"req-{uuid.uuid4().hex}"}
    return client.get(f"{stack.gateway.url}{path}", headers=headers)


def _audit_rows(stack: Stack, zone_id: str, count: int) -> list[tuple[Any, ...]]:
    """Wait until the zone's chain has ``count`` rows; return them in chain order."""

    def probe() -> list[tuple[Any, ...]] | None:
        with _db(stack) as conn:
            rows = conn.execute(
                f"SELECT {AUDIT_HASH_SELECT}, content_sha256, prev_content_sha256, chain_hmac,"
                " chain_seq, ingest_signature FROM audit_events WHERE zone_id = %s"
                " ORDER BY chain_seq", (zone_id,)).fetchall()
        return rows if len(rows) >= count else None

    return until(probe, timeout=20, interval=0.1, what=f"{count} audit rows of {zone_id}")


# --------------------------------------------------------------------------- readiness


def test_ready_bodies(stack: Stack, client: httpx.Client) -> None:
    """/health is 200 empty; /ready answers the 2026.06 bodies on all three services."""
    for service in (stack.sts, stack.gateway):
        health = client.get(f"{service.url}/health")
        assert (health.status_code, health.content) == (200, b"")
        ready = client.get(f"{service.url}/ready")
        assert (ready.status_code, ready.json()) == (200, {"ok": True, "ready": True})
    ready = client.get(f"{stack.audit.url}/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    rds = _redis(stack)
    try:
        groups = {g["name"].decode() for s in ("caracal.sessions.revoke",
                                               "caracal.policy.invalidate",
                                               "caracal.keys.invalidate")
                  for g in rds.xinfo_groups(s)}
    finally:
        rds.close()
    assert {"sts-revocation", "opa-engine", "sts-keys", "gateway-revocation"} <= groups


def _redis(stack: Stack) -> Any:
    import redis as redis_lib

    return redis_lib.Redis.from_url(stack.redis.url())


# ------------------------------------------------------------------- exchange and JWKS


def test_minted_token_verifies_against_jwks_with_pyjwt(stack: Stack, client: httpx.Client,
                                                       canary: Canary) -> None:
    """The canary exchange mints an ES256 session mandate that PyJWT verifies via the JWKS."""
    reply = _exchange(client, stack.sts, canary, scope="read")
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["target_resources"] == [canary.resource_identifier]
    assert "upstreams" not in body
    jwks = client.get(f"{stack.sts.url}/.well-known/jwks.json",
                      params={"zone_id": canary.zone_id})
    assert jwks.status_code == 200
    assert jwks.headers["Cache-Control"] == "public, max-age=300, must-revalidate"
    (entry,) = jwks.json()["keys"]
    assert {k: entry[k] for k in ("kty", "crv", "use", "kid", "alg")} == {
        "kty": "EC", "crv": "P-256", "use": "sig", "kid": canary.kid, "alg": "ES256"}
    token = body["access_token"]
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": canary.kid, "typ": "JWT"}
    claims = jwt.decode(token, jwt.PyJWK(entry).key, algorithms=["ES256"],
                        audience=stack.sts.url, issuer=stack.sts.url)
    assert claims["use"] == "session"
    assert claims["sub_type"] == "application"
    assert claims["sid"] == claims["root_sid"]
    assert claims["client_id"] == claims["sub"] == canary.application_id
    assert claims["zone_id"] == canary.zone_id
    assert claims["scope"] == "read"
    assert claims["target"] == [canary.resource_identifier]
    assert uuid.UUID(claims["jti"]).version == 7
    with _db(stack) as conn:
        row = conn.execute("SELECT session_type, subject_id, parent_id, status FROM sessions"
                           " WHERE id = %s", (claims["sid"],)).fetchone()
    assert row == ("application", canary.application_id, None, "active")
    rds = _redis(stack)
    try:
        assert rds.get(f"audit:jti:{claims['jti']}").decode().startswith(
            f"{canary.application_id}|")
    finally:
        rds.close()


def test_exchange_refusals(stack: Stack, client: httpx.Client, canary: Canary) -> None:
    """Bad secret → 401, no resource → 400, no active binding → 403 policy denied."""
    bad = _exchange(client, stack.sts, canary, client_secret="cs_wrong")
    assert (bad.status_code, bad.json()) == (401, {
        "error": "access_denied", "error_description": "invalid client credentials"})
    none = _exchange(client, stack.sts, canary, resource="")
    assert none.status_code == 400
    assert none.json()["error_description"] == "at least one resource is required"
    with _db(stack) as conn:
        conn.execute("UPDATE policy_set_bindings SET active_version_id = NULL WHERE zone_id = %s",
                     (canary.zone_id,))
    denied = _exchange(client, stack.sts, canary)
    assert (denied.status_code, denied.json()) == (403, {
        "error": "access_denied", "error_description": "policy denied"})
    with _db(stack) as conn:
        conn.execute("UPDATE policy_set_bindings b SET active_version_id = v.id"
                     " FROM policy_set_versions v WHERE v.policy_set_id = b.policy_set_id"
                     " AND b.zone_id = %s", (canary.zone_id,))
        conn.execute("UPDATE policy_set_versions SET manifest_json ="
                     " '[{\"policy_version_id\": \"gone\"}]' WHERE policy_set_id IN"
                     " (SELECT policy_set_id FROM policy_set_bindings WHERE zone_id = %s)",
                     (canary.zone_id,))
    incomplete = _exchange(client, stack.sts, canary)
    assert (incomplete.status_code, incomplete.json()) == (503, {
        "error": "policy_eval_failed", "error_description": "policy evaluation unavailable"})


# --------------------------------------------------------------------- protected request


def test_protected_request_reaches_upstream_and_chains_audit(stack: Stack, client: httpx.Client,
                                                             canary: Canary) -> None:
    """Canary exchange, then a Gateway request reaching the upstream; audit chained by seq."""
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    (first,) = _audit_rows(stack, canary.zone_id, 1)
    request_id = f"req-{uuid.uuid4().hex}"
    reply = _protected(client, stack, canary, token, request_id)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Request-Id"] == request_id
    assert int(reply.headers["X-Caracal-Token-Expires-In"]) > 0
    echo = reply.json()
    assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/echo/v1/items", "x=1")
    headers = {k.lower(): v for k, v in echo["headers"].items()}
    assert headers["x-request-id"] == request_id
    assert headers["host"] == CANARY_HOST
    assert "authorization" not in headers
    assert not any(k.startswith("x-caracal-") for k in headers)

    rows = _audit_rows(stack, canary.zone_id, 3)
    key = parse_hmac_key(stack.secrets["auditHmacKey"])
    prev = None
    for seq, row in enumerate(rows, start=1):
        fields, micros = [str(v) for v in row[:12]], int(row[12])
        content, prev_stored, mac, chain_seq, sig = row[13:18]
        assert chain_seq == seq
        assert content == content_hash_parts(fields, micros)
        assert prev_stored == prev
        assert mac == chain_hmac(key, content, prev)
        assert sig  # the producer's signature was kept
        prev = content
    assert rows[0][:13] == first[:13]
    later = {(r[2], r[3]) for r in rows[1:]}
    assert later == {("token_exchange", request_id), ("gateway_resource_request", request_id)}
    by_type = {r[2]: r for r in rows[1:]}
    assert by_type["token_exchange"][4] == "allow"
    assert by_type["token_exchange"][8] == "complete"
    assert by_type["gateway_resource_request"][4:9:4] == ("allow", "executed")
    with _db(stack) as conn:
        parent = conn.execute(
            "SELECT count(*) FROM sessions c JOIN sessions p ON p.id = c.parent_id"
            " WHERE c.zone_id = %s", (canary.zone_id,)).fetchone()
    assert parent == (1,)


def test_gateway_refusals(stack: Stack, client: httpx.Client, canary: Canary) -> None:
    """X-Caracal-Client-ID → 400; upstream neither loopback nor resolved → 502; wrong app → 403."""
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    reply = client.get(f"{stack.gateway.url}/x", headers={
        "Authorization": f"Bearer {token}", "X-Caracal-Resource": canary.resource_identifier,
        "X-Caracal-Client-ID": canary.application_id})
    assert reply.status_code == 400
    with _db(stack) as conn:
        conn.execute("UPDATE resources SET upstream_url = 'http://elsewhere.invalid/' WHERE"
                     " zone_id = %s", (canary.zone_id,))
    refused = _protected(client, stack, canary, token)
    assert refused.status_code == 502
    assert refused.json()["error_description"] == "upstream host not allowed"
    with _db(stack) as conn:
        conn.execute("INSERT INTO applications (id, zone_id, name, registration_method)"
                     " VALUES (%s, %s, 'other', 'managed')", (f"other-{canary.zone_id}",
                                                              canary.zone_id))
        conn.execute("UPDATE gateway_resource_bindings SET application_id = %s WHERE zone_id = %s",
                     (f"other-{canary.zone_id}", canary.zone_id))
        _bump_revision(conn)
    assert client.get(f"{stack.gateway.url}/ready").status_code == 200
    mismatch = _protected(client, stack, canary, token)
    assert (mismatch.status_code, mismatch.json()) == (403, {
        "error": "access_denied", "error_description": "session client mismatch"})


def test_replayed_gateway_request_id_is_refused_by_sts(stack: Stack, client: httpx.Client,
                                                       canary: Canary) -> None:
    """The request id is the STS nonce: reusing it within 120 s → 401 from STS."""
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    request_id = f"req-{uuid.uuid4().hex}"
    assert _protected(client, stack, canary, token, request_id).status_code == 200
    again = _protected(client, stack, canary, token, request_id)
    assert again.status_code == 401
    assert again.json()["error_description"] == "invalid gateway exchange signature"


# ------------------------------------------------------------------------------ symptoms


def test_wrong_zone_kek(stack: Stack, client: httpx.Client, canary: Canary) -> None:
    """Wrong ZONE_KEK: /ready 200, JWKS 500, token 500 — and no key row is minted."""
    wrong = dict(stack.secrets, zoneKek=secrets.token_bytes(32).hex())
    replay = stack.tmp / f"sts-wrong-{uuid.uuid4().hex[:6]}"
    replay.mkdir()
    with start_sts(pg=stack.pg, redis=stack.redis, secrets=wrong, replay_dir=replay) as sts:
        ready = client.get(f"{sts.url}/ready")
        assert (ready.status_code, ready.json()) == (200, {"ok": True, "ready": True})
        jwks = client.get(f"{sts.url}/.well-known/jwks.json", params={"zone_id": canary.zone_id})
        assert (jwks.status_code, jwks.json()) == (500, {
            "error": "internal_error", "error_description": "signing key decryption failed"})
        token = _exchange(client, sts, canary)
        assert (token.status_code, token.json()) == (500, {
            "error": "internal_error", "error_description": "token issuance failed"})
        missing = client.get(f"{sts.url}/.well-known/jwks.json", params={"zone_id": "nope"})
        assert (missing.status_code, missing.json()) == (404, {
            "error": "resource_not_found", "error_description": "zone signing key not found"})
        assert client.get(f"{sts.url}/.well-known/jwks.json").status_code == 400
        metrics = client.get(f"{sts.url}/metrics", headers={
            "Authorization": f"Bearer {stack.secrets['metricsBearer']}"}).text
        assert "caracal_sts_jwks_invalid_keys_total 1" in metrics.splitlines()
    with _db(stack) as conn:
        count = conn.execute("SELECT count(*) FROM secrets WHERE zone_id = %s",
                             (canary.zone_id,)).fetchone()
    assert count == (1,)


def test_missing_signing_key_is_minted_silently(stack: Stack, client: httpx.Client,
                                               canary: Canary) -> None:
    """No secrets row at all: the STS mints and stores a new key (the trap, reproduced)."""
    with _db(stack) as conn:
        conn.execute("DELETE FROM secrets WHERE zone_id = %s", (canary.zone_id,))
    reply = _exchange(client, stack.sts, canary)
    assert reply.status_code == 200
    with _db(stack) as conn:
        row = conn.execute("SELECT id, version, dek_id FROM secrets WHERE zone_id = %s",
                           (canary.zone_id,)).fetchone()
    assert row is not None
    assert row[0] != canary.kid
    assert row[1:] == (1, "zoneKek")
    assert jwt.get_unverified_header(reply.json()["access_token"])["kid"] == row[0]


def test_binding_revision_governs_routing(stack: Stack, client: httpx.Client,
                                         canary: Canary) -> None:
    """A deleted binding keeps routing until the revision changes (stale), then 403."""
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    with _db(stack) as conn:
        conn.execute("DELETE FROM gateway_resource_bindings WHERE zone_id = %s",
                     (canary.zone_id,))
    assert client.get(f"{stack.gateway.url}/ready").status_code == 200
    assert _protected(client, stack, canary, token).status_code == 200  # stale map
    with _db(stack) as conn:
        _bump_revision(conn)
    assert client.get(f"{stack.gateway.url}/ready").status_code == 200
    request_id = f"req-{uuid.uuid4().hex}"
    denied = _protected(client, stack, canary, token, request_id)
    assert (denied.status_code, denied.json()) == (403, {
        "error": "access_denied", "error_description": "resource not configured",
        "requestId": request_id})
    assert client.get(f"{stack.gateway.url}/metrics").status_code == 401
    metrics = client.get(f"{stack.gateway.url}/metrics", headers={
        "Authorization": f"Bearer {stack.secrets['metricsBearer']}"}).text.splitlines()
    with _db(stack) as conn:
        bound = conn.execute("SELECT count(*) FROM gateway_resource_bindings").fetchone()
    assert bound is not None
    assert f"caracal_gateway_bindings_loaded {bound[0]}" in metrics
    assert any(m.startswith("caracal_gateway_denials_binding_total ") and not m.endswith(" 0")
               for m in metrics)


def test_missing_revision_row(stack: Stack, client: httpx.Client) -> None:
    """No revision row: the running Gateway is not ready, a new one does not start."""
    with _db(stack) as conn:
        deleted = conn.execute("DELETE FROM gateway_binding_revision RETURNING version"
                               ).fetchone()
    assert deleted is not None
    version = deleted[0]
    try:
        ready = client.get(f"{stack.gateway.url}/ready")
        assert (ready.status_code, ready.json()) == (503, {
            "ok": False, "ready": False, "reason": "postgres_unreachable"})
        with pytest.raises(StartupError, match="gateway binding revision row missing"):
            start_gateway(pg=stack.pg, redis=stack.redis, secrets=stack.secrets,
                          replay_dir=stack.tmp / "gateway", sts_url=stack.sts.url)
    finally:
        with _db(stack) as conn:
            conn.execute("INSERT INTO gateway_binding_revision (id, version) VALUES (true, %s)",
                         (version,))
    assert client.get(f"{stack.gateway.url}/ready").status_code == 200


def test_revoked_session_mandate_is_refused(stack: Stack, client: httpx.Client,
                                           canary: Canary) -> None:
    """Revoked in Postgres (snapshot reload) or on the stream: the mandate gets 401."""
    admin = stack.secrets["caracalAdminToken"]
    reload_url = f"{stack.gateway.url}/internal/revocations/reload"
    assert client.post(reload_url, headers={"Authorization": "Bearer wrong"}).status_code == 404
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    with _db(stack) as conn:
        conn.execute("UPDATE sessions SET status = 'revoked' WHERE id = %s", (sid,))
    reloaded = client.post(reload_url, headers={"Authorization": f"Bearer {admin}"})
    assert reloaded.status_code == 200
    assert reloaded.json()["ok"] is True
    assert reloaded.json()["revocations"] >= 1
    refused = _protected(client, stack, canary, token)
    assert (refused.status_code, refused.json()["error_description"]) == (401, "session revoked")

    other = _exchange(client, stack.sts, canary).json()["access_token"]
    other_sid = jwt.decode(other, options={"verify_signature": False})["sid"]
    fields = {"zone_id": canary.zone_id, "session_id": other_sid, "reason": "grant_revoked"}
    fields["_sig"] = stream_signature(bytes.fromhex(stack.secrets["streamsHmacKey"]),
                                      "caracal.sessions.revoke", fields)
    rds = _redis(stack)
    try:
        rds.xadd("caracal.sessions.revoke", fields)
    finally:
        rds.close()
    until(lambda: _protected(client, stack, canary, other).status_code == 401, timeout=10,
          what="the Gateway to consume the signed revocation entry")


def test_pending_replay_file_is_ingested_at_sts_start(stack: Stack, client: httpx.Client,
                                                      canary: Canary) -> None:
    """A pending file in the STS replay dir is XADDed at start, deleted, and ingested."""
    replay = stack.tmp / f"sts-replay-{uuid.uuid4().hex[:6]}"
    replay.mkdir()
    event_id = str(uuid.uuid4())
    line = json.dumps({
        "id": event_id, "zone_id": canary.zone_id, "event_type": "token_exchange",
        "request_id": "req-replayed", "decision": "allow", "evaluation_status": "complete",
        "determining_policies_json": ["pol"], "diagnostics_json": [],
        "metadata_json": {"application_id": canary.application_id},
        "occurred_at": "2026-06-30T10:00:00.123456789Z"}, separators=(",", ":"))
    pending = replay / f"pending-4242-{time.time_ns()}.ndjson"
    pending.write_text(line + "\nnot json\n")
    with start_sts(pg=stack.pg, redis=stack.redis, secrets=stack.secrets, replay_dir=replay):
        assert not pending.exists()
    (row,) = _audit_rows(stack, canary.zone_id, 1)
    assert row[0] == event_id
    assert row[16] == 1
    assert row[14] is None
    with _db(stack) as conn:
        occurred = conn.execute("SELECT occurred_at FROM audit_events WHERE id = %s",
                                (event_id,)).fetchone()
    assert occurred == (dt.datetime(2026, 6, 30, 10, 0, 0, 123456, tzinfo=dt.UTC),)


# --------------------------------------------------------------- streams and evidence


def test_sts_consumes_signed_revocations(stack: Stack, client: httpx.Client,
                                         canary: Canary) -> None:
    """A signed entry revokes the session and its descendants; a badly signed one is dropped."""
    key = bytes.fromhex(stack.secrets["streamsHmacKey"])
    kept = jwt.decode(_exchange(client, stack.sts, canary).json()["access_token"],
                      options={"verify_signature": False})["sid"]
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    assert _protected(client, stack, canary, token).status_code == 200  # makes a child session
    rds = _redis(stack)
    try:
        forged = {"zone_id": canary.zone_id, "session_id": kept, "reason": "grant_revoked",
                  "_sig": "00" * 32}
        rds.xadd("caracal.sessions.revoke", forged)
        fields = {"zone_id": canary.zone_id, "session_id": sid, "reason": "grant_revoked"}
        fields["_sig"] = stream_signature(key, "caracal.sessions.revoke", fields)
        rds.xadd("caracal.sessions.revoke", fields)
    finally:
        rds.close()

    def statuses() -> dict[str, str] | None:
        with _db(stack) as conn:
            rows = conn.execute("SELECT id, parent_id, status FROM sessions WHERE zone_id = %s",
                                (canary.zone_id,)).fetchall()
        tree = {r[0]: r[2] for r in rows if sid in (r[0], r[1])}
        return {**tree, kept: dict((r[0], r[2]) for r in rows)[kept]} if all(
            s == "revoked" for s in tree.values()) else None

    seen = until(statuses, timeout=10, what="the STS to revoke the session tree")
    assert len(seen) == 3
    assert seen[kept] == "active"


def test_ingestor_dead_letters_and_alerts(stack: Stack, canary: Canary) -> None:
    """Unsigned → DLQ hmac_verify_failed; same id and time, other content → tamper alert."""
    key = parse_hmac_key(stack.secrets["auditHmacKey"])
    event_id = str(uuid.uuid4())
    base: dict[str, Any] = {
        "id": event_id, "zone_id": canary.zone_id, "event_type": "token_exchange",
        "request_id": "req-x", "decision": "allow", "evaluation_status": "complete",
        "determining_policies_json": None, "diagnostics_json": None,
        "occurred_at": "2026-07-01T00:00:00Z"}
    data = json.dumps(base, separators=(",", ":")).encode()
    changed = json.dumps({**base, "decision": "deny"}, separators=(",", ":")).encode()
    rds = _redis(stack)
    try:
        rds.xadd("caracal.audit.events", {"id": base["id"], "data": data, "sig": "ab" * 32})
        rds.xadd("caracal.audit.events", {"id": base["id"], "data": data,
                                          "sig": hmac.new(key, data, "sha256").hexdigest()})
        rds.xadd("caracal.audit.events", {"id": base["id"], "data": changed,
                                          "sig": hmac.new(key, changed, "sha256").hexdigest()})
        (row,) = _audit_rows(stack, canary.zone_id, 1)
        assert row[4] == "allow"

        def dead() -> list[dict[bytes, bytes]] | None:
            found = [f for _id, f in rds.xrange("caracal.audit.events.dlq")
                     if f.get(b"src_id") == event_id.encode()]
            return found if len(found) == 2 else None

        reasons = {f[b"reason"] for f in until(dead, timeout=10, what="two DLQ entries")}
    finally:
        rds.close()
    assert reasons == {b"hmac_verify_failed", b"tamper_on_replay"}
    with _db(stack) as conn:
        alerts = conn.execute("SELECT kind FROM audit_ingest_alerts WHERE event_id = %s",
                              (base["id"],)).fetchall()
    assert alerts == [("content_mismatch_on_replay",)]


def test_stopped_services_leave_no_threads_and_logs_hold_no_secrets(
        stack: Stack, client: httpx.Client, canary: Canary,
        caplog: pytest.LogCaptureFixture) -> None:
    """Every thread a service started ends at stop; no secret value reaches a log line."""
    caplog.set_level(logging.DEBUG)
    before = set(threading.enumerate())
    replay = stack.tmp / f"sts-threads-{uuid.uuid4().hex[:6]}"
    replay.mkdir()
    wrong = dict(stack.secrets, zoneKek=secrets.token_bytes(32).hex())
    with start_upstream() as upstream, \
            start_audit(pg=stack.pg, redis=stack.redis, secrets=stack.secrets) as audit, \
            start_sts(pg=stack.pg, redis=stack.redis, secrets=wrong, replay_dir=replay) as sts:
        assert client.get(f"{upstream.url}/x").status_code == 200
        assert client.get(f"{audit.url}/ready").status_code in (200, 503)
        assert _exchange(client, sts, canary).status_code == 500
        assert _exchange(client, stack.sts, canary, client_secret="cs_bad").status_code == 401
        token = _exchange(client, stack.sts, canary).json()["access_token"]
        assert _protected(client, stack, canary, token).status_code == 200
        started = set(threading.enumerate()) - before
    assert started
    until(lambda: not any(t.is_alive() for t in started), timeout=5,
          what="the stopped services' threads to end")
    text = caplog.text
    for name, value in {**stack.secrets, "client secret": canary.client_secret,
                        "wrong kek": wrong["zoneKek"]}.items():
        assert value not in text, f"{name} appears in the logs"


def test_sts_claims_a_restored_pending_revocation(stack: Stack, client: httpx.Client,
                                                  canary: Canary) -> None:
    """An entry left pending for a departed consumer (idle > 30 s) is claimed at STS start."""
    token = _exchange(client, stack.sts, canary).json()["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    fields: dict[Any, Any] = {"zone_id": canary.zone_id, "session_id": sid,
                              "reason": "grant_revoked"}
    fields["_sig"] = stream_signature(bytes.fromhex(stack.secrets["streamsHmacKey"]),
                                      "caracal.sessions.revoke", fields)
    # A Redis of its own, so the module's running STS cannot take the entry first.
    with redis.embedded() as restored:
        rds = restored.client()
        try:
            rds.xgroup_create("caracal.sessions.revoke", "sts-revocation", id="$",
                              mkstream=True)
            entry = rds.xadd("caracal.sessions.revoke", fields)
            rds.xreadgroup("sts-revocation", "sts-old-1-revocations",
                           {"caracal.sessions.revoke": ">"})
            rds.xclaim("caracal.sessions.revoke", "sts-revocation", "sts-old-1-revocations", 0,
                       [entry], idle=120_000)
        finally:
            rds.close()
        replay = stack.tmp / f"sts-claim-{uuid.uuid4().hex[:6]}"
        replay.mkdir()
        with start_sts(pg=stack.pg, redis=restored.endpoint, secrets=stack.secrets,
                       replay_dir=replay):

            def revoked() -> bool:
                with _db(stack) as conn:
                    row = conn.execute("SELECT status FROM sessions WHERE id = %s",
                                       (sid,)).fetchone()
                return row == ("revoked",)

            until(revoked, timeout=10, what="the new STS to claim and apply the pending entry")


def test_producer_spills_when_redis_refuses_and_replays(stack: Stack) -> None:
    """XADD failure → a 0600 pending file in wire key order; replay XADDs it and deletes it."""
    import redis as redis_lib
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from caracal_restore.environments.base import free_port
    from caracal_restore.reference.services.producer import AuditEvent, AuditProducer

    replay = stack.tmp / f"spill-{uuid.uuid4().hex[:6]}"
    key = parse_hmac_key(stack.secrets["auditHmacKey"])
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1,
                           retry=Retry(NoBackoff(), 0))
    event = AuditEvent(zone_id="zone-spill", event_type="token_exchange", request_id="r1",
                       decision="allow", evaluation_status="complete",
                       determining_policies=["p"], diagnostics=[], metadata={"a": 1},
                       occurred_at=dt.datetime(2026, 6, 21, 12, 0, 0, 120000, tzinfo=dt.UTC))
    try:
        AuditProducer(dead, key, replay, "test").emit(event)
    finally:
        dead.close()
    (pending,) = replay.glob("pending-*.ndjson")
    assert pending.name.startswith(f"pending-{os.getpid()}-")
    assert pending.stat().st_mode & 0o777 == 0o600
    line = pending.read_bytes()
    assert line == (
        b'{"id":"' + event.id.encode() + b'","zone_id":"zone-spill","event_type":"token_exchange",'
        b'"request_id":"r1","decision":"allow","evaluation_status":"complete",'
        b'"determining_policies_json":["p"],"diagnostics_json":[],"metadata_json":{"a":1},'
        b'"occurred_at":"2026-06-21T12:00:00.12Z"}\n')
    live = _redis(stack)
    try:
        assert AuditProducer(live, key, replay, "test").replay_pending() == 1
        assert not pending.exists()
        entries = [f for _id, f in live.xrange("caracal.audit.events")
                   if f[b"id"] == event.id.encode()]
    finally:
        live.close()
    assert entries == [{b"id": event.id.encode(), b"data": line.rstrip(b"\n"),
                        b"sig": hmac.new(key, line.rstrip(b"\n"), "sha256").hexdigest().encode()}]


def test_generated_deployment_serves_the_canary(tmp_path: Path) -> None:
    """On the reference generator's data, as the owner: canary flow, chain continues, no new key."""
    from caracal_restore.reference.generator import Volume, build_source_database

    values = generate_secrets()
    (tmp_path / "sts").mkdir()
    (tmp_path / "gateway").mkdir()
    with postgres.embedded() as pg, redis.embedded() as rs:
        data = build_source_database(pg, seed=11, volume=Volume(audit_events=200, months=3),
                                     secrets=values, now=dt.datetime.now(dt.UTC),
                                     canary_upstream_url=f"http://{CANARY_HOST}/echo")
        assert data.database is not None
        owner = PgEndpoint(pg.admin.host, pg.admin.port, "caracal", data.database,
                           values["postgresPassword"])
        cn = data.canary
        with start_upstream() as upstream, \
                start_audit(pg=owner, redis=rs.endpoint, secrets=values), \
                start_sts(pg=owner, redis=rs.endpoint, secrets=values,
                          replay_dir=tmp_path / "sts") as sts, \
                start_gateway(pg=owner, redis=rs.endpoint, secrets=values,
                              replay_dir=tmp_path / "gateway", sts_url=sts.url,
                              resolve={CANARY_HOST: upstream.url.removeprefix("http://")}
                              ) as gateway, \
                httpx.Client(trust_env=False, timeout=30) as c:
            for service in (sts, gateway):
                assert c.get(f"{service.url}/ready").json() == {"ok": True, "ready": True}
            minted = c.post(f"{sts.url}/oauth/2/token", data={
                "grant_type": GRANT, "zone_id": cn.zone_id, "application_id": cn.application_id,
                "client_secret": cn.client_secret, "resource": cn.resource_identifier})
            assert minted.status_code == 200, minted.text
            assert jwt.get_unverified_header(minted.json()["access_token"])["kid"] in \
                cn.signing_key_ids
            reply = c.get(f"{gateway.url}/canary", headers={
                "Authorization": f"Bearer {minted.json()['access_token']}",
                "X-Caracal-Resource": cn.resource_identifier})
            assert reply.status_code == 200, reply.text
            assert reply.json()["path"] == "/echo/canary"
            head = data.chain_heads[cn.zone_id]

            def appended() -> list[tuple[Any, ...]] | None:
                with psycopg.connect(owner.conninfo()) as conn:
                    rows = conn.execute(
                        "SELECT chain_seq, prev_content_sha256, content_sha256 FROM audit_events"
                        " WHERE zone_id = %s AND chain_seq > %s ORDER BY chain_seq",
                        (cn.zone_id, head.last_seq)).fetchall()
                return rows if len(rows) >= 3 else None

            rows = until(appended, timeout=20, what="three new audit rows after the head")
            with psycopg.connect(owner.conninfo()) as conn:
                keys = conn.execute("SELECT count(*) FROM secrets WHERE zone_id = %s",
                                    (cn.zone_id,)).fetchone()
    assert [r[0] for r in rows] == [head.last_seq + 1, head.last_seq + 2, head.last_seq + 3]
    assert rows[0][1] == head.head_content_sha256
    assert [r[1] for r in rows[1:]] == [r[2] for r in rows[:-1]]
    assert keys == (len(cn.signing_key_ids),)

"""The reference 1.0 deployment: verify.sh on its schema, exact envelopes and chains, receipts,
retention at ``now``, Redis, and the services' canary and protected request.

(A whole ``--caracal-release 1.0`` run is tested in ``test_release_1_0.py``.)"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore import audit_chain, chainhash, envelope
from caracal_restore.diagnose.revocation import revocation_coverage
from caracal_restore.environments import objectstore, postgres
from caracal_restore.profiles.release_1_0 import PROFILE, SERVICE_DSNS
from caracal_restore.reference.gen_common import Volume, verify_client_secret
from caracal_restore.reference.services import tokens
from caracal_restore.reference.v1_0 import gen_authority, generator, schema
from caracal_restore.reference.v1_0.deployment import (
    SOURCE_GATEWAY_GROUP,
    build_reference_1_0,
    service_login,
    start_services_1_0,
)
from caracal_restore.reference.v1_0.secrets import generate_secrets, render_derived

NOW = dt.datetime.now(dt.UTC).replace(microsecond=123456)
UPSTREAM = "http://canary.caracal.test/echo"
SMALL = Volume(zones=2, applications_per_zone=2, resources_per_zone=2, sessions_per_zone=10,
               agents_per_zone=8, edges_per_zone=6, audit_events=500, admin_audit_events=40,
               months=14)
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclasses.dataclass(frozen=True)
class Built:
    """A populated 1.0 database on a throwaway server, its secrets and what was generated."""

    pg: postgres.PostgresServer
    data: generator.ReferenceData
    secrets: dict[str, str] = dataclasses.field(repr=False)

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        """A superuser connection to the ``caracal`` database."""
        return self.pg.connect("caracal", **kwargs)


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    """A reference 1.0 database at NOW (action: build_source_database)."""
    values = generate_secrets()
    with postgres.embedded() as pg:
        data = generator.build_source_database(pg, seed=1001, volume=SMALL, secrets=values,
                                               now=NOW, canary_upstream_url=UPSTREAM)
        yield Built(pg, data, values)


# ------------------------------------------------------------------- schema = verify.sh


def test_verify_sh_checks_pass_on_the_reference_schema(built: Built) -> None:
    """FACTS-1.0 §3.3 checks 1-5, 7-10 evaluated read-only on the reference database."""
    with built.connect() as conn:
        def one(query: str, *args: Any) -> Any:
            row = conn.execute(query, args).fetchone()
            return row[0] if row else None

        for table in PROFILE.verify_tables:
            assert one("SELECT to_regclass(%s)", f"public.{table}") is not None, table
        for table in PROFILE.retired_tables:
            assert one("SELECT to_regclass(%s)", f"public.{table}") is None, table
        for index in PROFILE.verify_indexes:
            assert one("SELECT to_regclass(%s)", f"public.{index}") is not None
        for role, table, privilege in PROFILE.verify_privileges:
            assert one("SELECT has_table_privilege(%s, %s, %s)", role, table, privilege)
        for table, column in PROFILE.verify_columns:
            assert one("SELECT count(*) FROM information_schema.columns WHERE table_schema ="
                       " 'public' AND table_name = %s AND column_name = %s", table, column) == 1
        for table, constraint in PROFILE.verify_constraints:
            assert one("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass AND"
                       " conname = %s", table, constraint) == 1
        for trigger in PROFILE.immutable_triggers:
            assert one("SELECT count(*) FROM pg_trigger WHERE tgname = %s AND NOT tgisinternal",
                       trigger) == 1
        for table in PROFILE.rls_enabled_tables:
            assert one("SELECT relrowsecurity AND NOT relforcerowsecurity FROM pg_class WHERE"
                       " oid = %s::regclass", table), table
            assert one("SELECT count(*) FROM pg_policies WHERE tablename = %s AND policyname ="
                       " 'zone_isolation'", table) == 1, table
        for name, definition in PROFILE.verify_fk_definitions:
            assert one("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
                       name) == definition
        month = schema.month_start(NOW.date())
        for n in range(4):
            name = schema.partition_name(schema.add_months(month, n))
            assert one("SELECT to_regclass(%s)", f"public.{name}") is not None, name
        rows = conn.execute("SELECT version FROM public.schema_migrations ORDER BY 1").fetchall()
        assert tuple(r[0] for r in rows) == PROFILE.migrations


def test_audit_login_cannot_update_or_delete_audit_events(built: Built) -> None:
    """verify.sh check 6, as the audit service's own login (rolled back either way)."""
    db = built.pg.admin.with_db("caracal")
    login = service_login(db, built.secrets, "auditDatabaseUrl", "audit")
    for statement in ("UPDATE audit_events SET decision = 'x' WHERE false",
                      "DELETE FROM audit_events WHERE false"):
        with psycopg.connect(login.conninfo()) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            conn.rollback()


def test_service_dsns_log_in_as_their_roles(built: Built) -> None:
    db = built.pg.admin.with_db("caracal")
    for name, role, _password, dbname in SERVICE_DSNS:
        if dbname != "caracal":
            continue
        with psycopg.connect(service_login(db, built.secrets, name, role).conninfo()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (role,)


def test_secret_set_is_17_primary_plus_8_derived() -> None:
    values = generate_secrets()
    assert set(values) == {s.name for s in PROFILE.secrets}
    primary = {s.name: values[s.name] for s in PROFILE.primary_secrets}
    assert render_derived(primary) == {s.name: values[s.name] for s in PROFILE.derived_secrets}
    assert values["authDatabaseUrl"].endswith("@postgres:5432/caracal_auth")
    assert values["stsDatabaseUrl"].startswith(f"postgres://caracalsts:{values['stsDbPassword']}@")


# ------------------------------------------------------------------ envelopes and chains


def test_every_sealed_location_opens_with_the_kek(built: Built) -> None:
    """CSS1: kekId first, then the location's AAD; keys are P-256; a wrong KEK is named."""
    kek = envelope.parse_kek(built.secrets["secretStoreKek"])
    other = envelope.parse_kek(generate_secrets()["secretStoreKek"])
    counts = {}
    with built.connect() as conn:
        for spec in PROFILE.sealed_locations:
            aad = spec.aad_column or "%s::text"
            where = " AND ".join(filter(None, [f"{spec.column} IS NOT NULL", spec.where]))
            rows = conn.execute(f"SELECT {spec.column}, {aad} FROM {spec.table} WHERE {where}",
                                () if spec.aad_column else (spec.aad,)).fetchall()
            counts[spec.id] = len(rows)
            for sealed, location in rows:
                assert envelope.css1_header(bytes(sealed)).kek_id == envelope.kek_id(kek)
                plain = envelope.css1_open(kek, bytes(sealed), location)
                if spec.plaintext == "ec-p256-pem":
                    key = serialization.load_pem_private_key(plain, password=None)
                    assert isinstance(key, ec.EllipticCurvePrivateKey)
                    assert key.curve.name == "secp256r1"
                with pytest.raises(envelope.EnvelopeError, match="different KEK"):
                    envelope.css1_open(other, bytes(sealed), location)
    assert counts["signing-keys"] >= 2
    assert counts["secret-store"] >= 2 * 2 + 2 * 2 + 2  # custody, provider configs, workloads
    assert counts["provider-connection-access-tokens"] > 0
    assert counts["notification-sink-secrets"] == 1


def test_custody_copies_match_client_secret_hashes(built: Built) -> None:
    kek = envelope.parse_kek(built.secrets["secretStoreKek"])
    canary = built.data.canary
    with built.connect() as conn:
        rows = conn.execute(
            "SELECT a.id, s.ref, s.envelope, a.client_secret_hash FROM applications a"
            " JOIN secret_store s ON s.ref = 'zones/' || a.zone_id || '/applications/' || a.id"
            " || '/clientSecret'").fetchall()
        dcr = conn.execute("SELECT count(*) FROM secret_store s JOIN applications a ON s.ref LIKE"
                           " '%%/applications/' || a.id || '/clientSecret' WHERE"
                           " a.registration_method = 'dcr'").fetchone()
    assert len(rows) == SMALL.zones * SMALL.applications_per_zone
    assert dcr == (0,)
    for app_id, ref, sealed, stored in rows:
        secret = envelope.css1_open(kek, bytes(sealed), ref).decode()
        assert verify_client_secret(secret, stored)
        if app_id == canary.application_id:
            assert secret == canary.client_secret


def test_audit_and_admin_chains_verify(built: Built) -> None:
    with built.connect() as conn:
        audit = audit_chain.verify_audit_chain(conn, hmac_key=built.secrets["auditHmacKey"])
        admin = audit_chain.verify_admin_chain(conn, built.secrets["auditHmacKey"])
        coordinator_rows = conn.execute("SELECT count(*) FROM admin_audit_events WHERE"
                                        " chain_hmac IS NULL").fetchone()
    assert audit.ok, audit.summary()
    assert audit.hmac_checked
    assert audit.rows_checked == built.data.counts["audit_events"]
    assert admin.ok, admin.summary()
    assert None in admin.zones  # the 1.0 global chain
    assert coordinator_rows is not None
    assert sum(z.unsigned_rows for z in admin.zones.values()) == coordinator_rows[0] > 0
    assert sum(z.hmac_checked for z in admin.zones.values()) == (
        built.data.counts["admin_audit_events"] - coordinator_rows[0])


def test_policies_are_data_documents_with_exact_hashes(built: Built) -> None:
    with built.connect() as conn:
        versions = conn.execute("SELECT content, content_sha256 FROM policy_versions").fetchall()
        sets = conn.execute("SELECT manifest_json::text, manifest_sha256 FROM"
                            " policy_set_versions").fetchall()
        active = conn.execute("SELECT zone_id, count(*) FROM policy_set_bindings WHERE"
                              " active_version_id IS NOT NULL GROUP BY 1").fetchall()
    for content, sha in versions:
        assert content.startswith("# caracal:data-document\npackage caracal.authz\n")
        assert hashlib.sha256(content.encode()).hexdigest() == sha
    for manifest, sha in sets:
        compact = json.dumps(json.loads(manifest), separators=(",", ":"))
        assert hashlib.sha256(compact.encode()).hexdigest() == sha
    assert sorted(n for _z, n in active) == [1] * SMALL.zones


# ------------------------------------------------------------ receipts, revocation, retention


def test_idempotency_receipts_digest_their_keys(built: Built) -> None:
    key = bytes.fromhex(built.secrets["idempotencyHmacKey"])
    receipts = {r.receipt_id: r for r in built.data.receipts}
    assert receipts
    with built.connect() as conn:
        rows = conn.execute("SELECT id, operation, key_digest, created_at, expires_at FROM"
                            " coordinator_idempotency_receipts").fetchall()
    assert {r[0] for r in rows} == set(receipts)
    for rid, operation, digest, created, expires in rows:
        assert operation == receipts[rid].operation
        assert bytes(digest) == gen_authority.key_digest(key, receipts[rid].key)
        assert expires - created == dt.timedelta(seconds=604_800)
        assert expires > NOW


def test_data_is_what_retention_leaves_at_now(built: Built) -> None:
    """FACTS-1.0 §12 windows evaluated at NOW: nothing a cleaner would delete is left."""
    window = dt.timedelta(days=min(generator.DEFAULT_AUDIT_RETENTION_DAYS, 365))
    with built.connect() as conn:
        def count(query: str, *args: Any) -> int:
            row = conn.execute(query, args).fetchone()
            return int(row[0]) if row else 0

        assert count("SELECT retention_days FROM audit_retention") == 300
        for name in schema.monthly_partitions(conn):
            month = dt.date(int(name[14:18]), int(name[19:21]), 1)
            assert schema.partition_bounds(month)[1] > NOW - window, name
        assert built.data.dropped_partitions
        # One tree just past SESSION_RETENTION_DAYS (no cleaner run since): its leaf, which
        # the next run deletes, and its root, kept while the leaf exists (leaf-first).
        past = NOW - dt.timedelta(days=90)
        terminal = ("SELECT count(*) FROM sessions s WHERE status IN ('terminated', 'expired')"
                    " AND terminated_at < %s AND terminated_at >= %s AND {} (SELECT 1 FROM"
                    " sessions c WHERE c.parent_id = s.id)")
        recent = past - gen_authority.PAST_SESSION_WINDOW
        assert count(terminal.format("NOT EXISTS"), past, recent) == 1
        assert count(terminal.format("EXISTS"), past, recent) == 1
        assert count("SELECT count(*) FROM sessions WHERE terminated_at < %s", recent) == 0
        assert count("SELECT count(*) FROM delegation_edges WHERE status IN ('revoked',"
                     " 'expired') AND COALESCE(revoked_at, expires_at) < %s",
                     NOW - dt.timedelta(days=90)) == 0
        assert count("SELECT count(*) FROM caracal_outbox WHERE status = 'published' AND"
                     " updated_at < %s", NOW - dt.timedelta(days=7)) == 0
        assert count("SELECT count(*) FROM coordinator_idempotency_receipts WHERE"
                     " expires_at <= %s", NOW) == 0
        assert count("SELECT count(*) FROM authority_records WHERE status = 'active' AND"
                     " expires_at < %s", NOW - dt.timedelta(seconds=300)) == 0
        assert count("SELECT count(*) FROM sessions WHERE status = 'active' AND lifecycle ="
                     " 'task' AND started_at + ttl_seconds * interval '1 second' < %s", NOW) == 0
        assert count("SELECT count(*) FROM delegation_edges WHERE status = 'active' AND"
                     " expires_at < %s", NOW) == 0


def test_revocation_state_is_consistent(built: Built) -> None:
    with built.connect() as conn:
        def count(query: str) -> int:
            row = conn.execute(query).fetchone()
            return int(row[0]) if row else 0

        assert count("SELECT count(*) FROM authority_records WHERE status = 'revoked' AND"
                     " (revoked_at IS NULL OR revoked_reason IS NULL)") == 0
        assert count("SELECT count(*) FROM authority_records WHERE status <> 'revoked' AND"
                     " (revoked_at IS NOT NULL OR revoked_reason IS NOT NULL)") == 0
        assert count("SELECT count(*) FROM delegation_edges e JOIN sessions s ON s.id IN"
                     " (e.source_session_id, e.target_session_id) WHERE e.status = 'active'"
                     " AND s.status IN ('terminated', 'expired')") == 0
        assert count("SELECT count(*) FROM sessions WHERE status = 'expired' AND"
                     " termination_reason IS DISTINCT FROM 'ttl'") == 0
        assert count("SELECT count(*) FROM sessions WHERE status IN ('terminated', 'expired')"
                     " AND termination_reason IS NULL") == 0
        assert count("SELECT count(*) FROM caracal_outbox o JOIN authority_records r ON r.id ="
                     " o.payload_json->>'session_id' WHERE o.topic = 'caracal.sessions.revoke'"
                     " AND o.status = 'published' AND r.status = 'active'") == 0


def test_context_is_deterministic_for_a_seed_and_now() -> None:
    values = generate_secrets()
    tiny = dataclasses.replace(SMALL, zones=1, applications_per_zone=1)
    first, _ = generator.build_context(seed=7, volume=tiny, secrets=values, now=NOW,
                                       canary_upstream_url=UPSTREAM)
    second, _ = generator.build_context(seed=7, volume=tiny, secrets=values, now=NOW,
                                        canary_upstream_url=UPSTREAM)
    for table in ("zones", "applications", "resources", "authority_records", "sessions",
                  "delegation_edges", "coordinator_idempotency_receipts", "caracal_outbox"):
        assert [r.get("id") for r in first.rows[table]] == [r.get("id") for r in
                                                            second.rows[table]], table


# ----------------------------------------------------------- deployment, Redis and services


@dataclasses.dataclass
class Live:
    """A 1.0 source deployment with its reference services started on it."""

    deployment: Any
    urls: Any
    http: httpx.Client


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    """build_reference_1_0, then start_services_1_0 on the source itself."""
    workdir = Path(tempfile.mkdtemp(prefix="caracal-ref10-"))
    workdir.chmod(0o755)
    try:
        with objectstore.embedded() as srv:
            archive = srv.bucket("archive", create=True, object_lock=True)
            with build_reference_1_0(archive=archive, volume=Volume(zones=2, audit_events=120),
                                     workdir=workdir) as dep, start_services_1_0(
                    db=dep.owner_db, redis=dep.redis.endpoint, secrets=dep.secrets,
                    replay=dep.replay) as urls, httpx.Client(trust_env=False, timeout=30) as http:
                yield Live(dep, urls, http)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_redis_has_the_1_0_groups_and_signed_entries(live: Live) -> None:
    secrets = live.deployment.secrets
    client: Any = live.deployment.redis.client()
    key = bytes.fromhex(secrets["streamsHmacKey"])
    try:
        groups = {g["name"].decode() for g in client.xinfo_groups("caracal.sessions.revoke")}
        assert SOURCE_GATEWAY_GROUP in groups
        assert "sts-revocation" in groups
        signed = 0
        for stream in PROFILE.signed_streams:
            for _id, fields in client.xrange(stream):
                assert fields[b"_sig"].decode() == chainhash.stream_signature(key, stream, fields)
                signed += 1
        spawns = [f for _i, f in client.xrange("caracal.agents.lifecycle")
                  if f.get(b"event") == b"spawn"]
        with psycopg.connect(live.deployment.owner_db.conninfo()) as conn:
            coverage = revocation_coverage(conn, client, "authority_records")
    finally:
        client.close()
    assert signed > 0
    assert any(f[b"parent_id"] == b"null" for f in spawns)  # the 1.0 publisher writes "null"
    assert coverage
    assert all(c.holds for c in coverage), [c for c in coverage if not c.holds]


def test_services_are_ready(live: Live) -> None:
    urls = live.urls
    assert live.http.get(f"{urls.sts_url}/ready").json() == {"ok": True, "ready": True}
    assert live.http.get(f"{urls.gateway_url}/ready").json() == {"ok": True, "ready": True}
    assert live.http.get(f"{urls.audit_url}/ready").json() == {"ready": True}
    assert live.http.get(f"{urls.coordinator_url}/ready").json() == {"ok": True}
    client: Any = live.deployment.redis.client()
    try:
        groups = {g["name"].decode() for g in client.xinfo_groups("caracal.sessions.revoke")}
    finally:
        client.close()
    # This Gateway's host is new: it made its own group (at $) next to the source's.
    assert {SOURCE_GATEWAY_GROUP, f"gateway-revocation:{socket.gethostname()}"} <= groups


def test_sts_applies_a_signed_revocation_to_authority_records(live: Live) -> None:
    """``sts-revocation``: a signed entry revokes the record (COALESCE time and reason)."""
    sid = tokens.peek(_exchange(live, scope="agent:lifecycle").json()["access_token"])[1]["sid"]
    key = bytes.fromhex(live.deployment.secrets["streamsHmacKey"])
    fields = {"zone_id": live.deployment.data.canary.zone_id, "session_id": sid,
              "reason": "reference_test", "outbox_id": f"test-{time.time_ns()}"}
    fields["_sig"] = chainhash.stream_signature(key, "caracal.sessions.revoke", fields)
    client: Any = live.deployment.redis.client()
    try:
        client.xadd("caracal.sessions.revoke", fields)
    finally:
        client.close()
    row = None
    with psycopg.connect(live.deployment.owner_db.conninfo(), autocommit=True) as conn:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            row = conn.execute("SELECT status, revoked_reason, revoked_at IS NOT NULL FROM"
                               " authority_records WHERE id = %s", (sid,)).fetchone()
            if row and row[0] == "revoked":
                break
            time.sleep(0.2)
    assert row == ("revoked", "reference_test", True)


def _exchange(live: Live, **fields: str) -> httpx.Response:
    canary = live.deployment.data.canary
    form = {"grant_type": TOKEN_EXCHANGE, "zone_id": canary.zone_id,
            "application_id": canary.application_id, "client_secret": canary.client_secret,
            "resource": canary.resource_identifier, **fields}
    return live.http.post(f"{live.urls.sts_url}/oauth/2/token", data=form)


def test_bootstrap_needs_exactly_agent_lifecycle(live: Live) -> None:
    canary = live.deployment.data.canary
    ok = _exchange(live, scope="agent:lifecycle")
    assert ok.status_code == 200, ok.text
    header, claims = tokens.peek(ok.json()["access_token"])
    assert header["kid"] in canary.signing_key_ids  # an existing key, none minted
    assert claims["use"] == "session"
    assert claims["aud"] == [live.urls.sts_url]
    assert _exchange(live, scope="read").status_code == 403  # no rule matched
    wrong = _exchange(live, scope="agent:lifecycle", client_secret="cs_wrong")
    assert wrong.json() == {"error": "access_denied",
                            "error_description": "invalid client credentials"}


def test_protected_request_through_sessions_and_a_delegation(live: Live) -> None:
    """§14.5: bootstrap → two Sessions → delegation → use=gateway mint → Gateway → upstream."""
    canary = live.deployment.data.canary
    urls, http = live.urls, live.http
    bearer = {"Authorization": "Bearer " + _exchange(live, scope="agent:lifecycle").json()[
        "access_token"]}
    agents = []
    for i in range(2):
        reply = http.post(f"{urls.coordinator_url}/zones/{canary.zone_id}/agents", headers={
            **bearer, "idempotency-key": f"canary-{i}-{time.time_ns()}"}, json={
            "application_id": canary.application_id, "ttl_seconds": 600})
        assert reply.status_code == 201, reply.text
        agents.append(reply.json()["agent_session_id"])
    edge = http.post(f"{urls.coordinator_url}/zones/{canary.zone_id}/delegations",
                     headers=bearer, json={
                         "issuer_application_id": canary.application_id,
                         "source_session_id": agents[0], "target_session_id": agents[1],
                         "receiver_application_id": canary.application_id, "scopes": ["read"],
                         "constraints": {"resources": [canary.resource_identifier]},
                         "ttl_seconds": 600})
    assert edge.status_code == 201, edge.text
    edge_id = edge.json()["delegation_edge_id"]
    minted = _exchange(live, scope="read", agent_session_id=agents[1],
                       delegation_edge_id=edge_id)
    assert minted.status_code == 200, minted.text
    mandate = minted.json()["access_token"]
    assert tokens.peek(mandate)[1]["use"] == "gateway"
    request_id = f"canary-{time.time_ns()}"
    headers = {"Authorization": f"Bearer {mandate}",
               "X-Caracal-Resource": canary.resource_identifier, "X-Request-Id": request_id}
    reply = http.get(f"{urls.gateway_url}/ping", headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.headers["X-Request-Id"] == request_id
    assert reply.json()["path"] == "/echo/ping"
    assert "Authorization" not in reply.json()["headers"]
    again = http.get(f"{urls.gateway_url}/ping", headers=headers)
    assert again.status_code == 401
    assert again.json()["error_description"] == "token replay detected"
    with psycopg.connect(live.deployment.owner_db.conninfo()) as conn:
        deadline = time.monotonic() + 15
        rows: list[Any] = []
        while time.monotonic() < deadline and len(rows) < 3:
            rows = conn.execute("SELECT event_type, decision, chain_seq FROM audit_events"
                                " WHERE request_id = %s ORDER BY chain_seq",
                                (request_id,)).fetchall()
            time.sleep(0.2)
        receipts = conn.execute("SELECT count(*) FROM coordinator_idempotency_receipts WHERE"
                                " resource_id = ANY(%s)", (agents,)).fetchone()
    # The replay reused the request id: its replay_detected deny joins the same request.
    assert sorted(r[:2] for r in rows) == [("gateway_resource_request", "allow"),
                                           ("replay_detected", "deny"),
                                           ("token_exchange", "allow")]
    assert receipts == (2,)


def test_idempotent_session_start_replays_the_response(live: Live) -> None:
    canary = live.deployment.data.canary
    bearer = {"Authorization": "Bearer " + _exchange(live, scope="agent:lifecycle").json()[
        "access_token"], "idempotency-key": f"replayed-{time.time_ns()}"}
    url = f"{live.urls.coordinator_url}/zones/{canary.zone_id}/agents"
    body = {"application_id": canary.application_id, "ttl_seconds": 300}
    first = live.http.post(url, headers=bearer, json=body)
    second = live.http.post(url, headers=bearer, json=body)
    other = live.http.post(url, headers=bearer, json={**body, "ttl_seconds": 301})
    assert first.status_code == second.status_code == 201
    assert second.json()["agent_session_id"] == first.json()["agent_session_id"]
    assert other.status_code == 409


def test_wrong_kek_is_ready_but_cannot_sign(live: Live, tmp_path: Path) -> None:
    """S1: another valid KEK → /ready 200, JWKS 500, exchange 500; the old one as
    SECRET_STORE_KEK_PREVIOUS restores signing (keyring routed by kekId)."""
    dep = live.deployment
    wrong = generate_secrets()["secretStoreKek"]
    replay = {"sts": tmp_path / "sts", "gateway": tmp_path / "gateway"}
    for path in replay.values():
        path.mkdir()
    for previous, jwks_status in ((None, 500), (dep.secrets["secretStoreKek"], 200)):
        values = {**dep.secrets, "secretStoreKek": wrong}
        if previous:
            values["SECRET_STORE_KEK_PREVIOUS"] = previous
        with start_services_1_0(db=dep.owner_db, redis=dep.redis.endpoint, secrets=values,
                                replay=replay) as urls:
            assert live.http.get(f"{urls.sts_url}/ready").status_code == 200
            canary = dep.data.canary
            jwks = live.http.get(f"{urls.sts_url}/.well-known/jwks.json",
                                 params={"zone_id": canary.zone_id})
            assert jwks.status_code == jwks_status
            reply = live.http.post(f"{urls.sts_url}/oauth/2/token", data={
                "grant_type": TOKEN_EXCHANGE, "zone_id": canary.zone_id,
                "application_id": canary.application_id, "client_secret": canary.client_secret,
                "resource": canary.resource_identifier, "scope": "agent:lifecycle"})
            if previous is None:
                assert reply.status_code == 500
                assert reply.json()["error_description"] == "token issuance failed"
            else:
                assert reply.status_code == 200


def test_revoked_anchor_is_refused_by_the_gateway(live: Live) -> None:
    """A mandate whose authority record was revoked → 401 ``session revoked``."""
    canary = live.deployment.data.canary
    minted = _exchange(live, scope="agent:lifecycle").json()["access_token"]
    sid = tokens.peek(minted)[1]["sid"]
    with psycopg.connect(live.deployment.owner_db.conninfo(), autocommit=True) as conn:
        conn.execute("UPDATE authority_records SET status = 'revoked', revoked_at = now(),"
                     " revoked_reason = 'test' WHERE id = %s", (sid,))
    admin = live.deployment.secrets["caracalAdminToken"]
    reload = live.http.post(f"{live.urls.gateway_url}/internal/revocations/reload",
                            headers={"Authorization": f"Bearer {admin}"})
    assert reload.status_code == 200
    reply = live.http.get(f"{live.urls.gateway_url}/x", headers={
        "Authorization": f"Bearer {minted}", "X-Caracal-Resource": canary.resource_identifier})
    assert reply.status_code == 401
    assert reply.json()["error_description"] == "session revoked"

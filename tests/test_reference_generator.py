"""The reference data generator: determinism, exact chains and seals, retention compliance."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg import sql

from caracal_restore import chainhash, envelope
from caracal_restore.environments import postgres
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.redact import REDACTOR
from caracal_restore.reference import generator, policy, schema
from caracal_restore.reference.secrets import generate_secrets

NOW = dt.datetime(2026, 6, 21, 12, 34, 56, 123456, tzinfo=dt.UTC)
UPSTREAM = "http://127.0.0.1:9/canary"
SMALL = generator.Volume(zones=2, applications_per_zone=2, resources_per_zone=2,
                         sessions_per_zone=8, agents_per_zone=6, edges_per_zone=5,
                         audit_events=600, admin_audit_events=10, months=3)


@dataclasses.dataclass(frozen=True)
class Built:
    """A populated database, its connection, its secrets and what the generator reported."""

    conn: psycopg.Connection
    data: generator.ReferenceData
    secrets: dict[str, str] = dataclasses.field(repr=False)


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """A throwaway PostgreSQL 18 (started for this module, removed after)."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture(scope="module")
def built(pg: postgres.PostgresServer) -> Iterator[Built]:
    """The default-volume reference database at NOW (action: build_source_database)."""
    values = generate_secrets()
    data = generator.build_source_database(pg, seed=2606, volume=generator.Volume(),
                                           secrets=values, now=NOW, canary_upstream_url=UPSTREAM)
    assert data.database is not None
    with pg.connect(data.database) as conn:
        yield Built(conn, data, values)


def _small(pg: postgres.PostgresServer, name: str, seed: int, volume: generator.Volume,
           values: dict[str, str] | None = None) -> tuple[psycopg.Connection, Any]:
    pg.create_database(name)
    conn = pg.connect(name)
    schema.apply_schema(conn, months=generator.span_months(NOW, volume.months))
    data = generator.populate(conn, seed=seed, volume=volume, secrets=values or generate_secrets(),
                              now=NOW, canary_upstream_url=UPSTREAM)
    return conn, data


#: Columns that identify a row (and, for the chains, content that must be reproducible).
ID_COLUMNS = {
    "gateway_resource_bindings": ("zone_id", "resource_identifier", "application_id"),
    "policy_set_bindings": ("zone_id", "policy_set_id", "active_version_id"),
    "agent_topology": ("parent_id", "child_id"),
    "delegation_graph_epochs": ("zone_id", "epoch"),
    "schema_migrations": ("version",),
    "audit_export_watermark": ("name", "last_exported_hour"),
    "gateway_binding_revision": ("id", "version"),
    "audit_chain_rehash": ("id",),
    "audit_events": ("id", "chain_seq", "content_sha256"),
    "admin_audit_events": ("id", "chain_seq", "content_sha256"),
}


def _ids(conn: psycopg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The identifying columns of every state table, sorted."""
    out = {}
    for table in PROFILE.state_tables:
        cols = sql.SQL(", ").join(map(sql.Identifier, ID_COLUMNS.get(table, ("id",))))
        query = sql.SQL("SELECT {} FROM {}").format(cols, sql.Identifier(table))
        out[table] = sorted(conn.execute(query).fetchall())
    return out


def test_ids_are_deterministic_for_a_seed(pg: postgres.PostgresServer) -> None:
    """Same seed and now: same ids in every table (keys and nonces differ); a new seed differs."""
    a, data_a = _small(pg, "det_a", 11, SMALL)
    b, data_b = _small(pg, "det_b", 11, SMALL)
    c, data_c = _small(pg, "det_c", 12, SMALL)
    try:
        ids_a, ids_b = _ids(a), _ids(b)
        assert ids_a == ids_b
        assert data_a.zone_ids == data_b.zone_ids
        assert data_a.counts == data_b.counts
        assert data_a.canary.application_id == data_b.canary.application_id
        assert data_a.canary.client_secret != data_b.canary.client_secret
        assert set(_ids(c)["zones"]).isdisjoint(ids_a["zones"])
        assert data_c.zone_ids != data_a.zone_ids
    finally:
        for conn in (a, b, c):
            conn.close()


def _verify_chain(conn: psycopg.Connection, key: bytes) -> dict[str, list[int]]:
    """Recompute every row from the server's own text; return the surviving seqs per zone."""
    rows = conn.execute(
        f"SELECT zone_id, chain_seq, content_sha256, prev_content_sha256, chain_hmac, "
        f"ingest_signature, {chainhash.AUDIT_HASH_SELECT} FROM audit_events"
        " ORDER BY zone_id, chain_seq"
    ).fetchall()
    seqs: dict[str, list[int]] = {}
    previous: dict[str, tuple[int, str]] = {}
    for zone, seq, content, prev, mac, sig, *fields in rows:
        texts, micros = [str(f) for f in fields[:-1]], int(fields[-1])
        assert chainhash.content_hash_parts(texts, micros) == content, (zone, seq)
        assert chainhash.chain_hmac(key, content, prev) == mac, (zone, seq)
        assert sig
        assert len(sig) == 64
        if zone in previous and previous[zone][0] == seq - 1:
            assert prev == previous[zone][1], (zone, seq)
        if seq == 1:
            assert prev is None
        previous[zone] = (seq, content)
        seqs.setdefault(zone, []).append(seq)
    return seqs


def test_audit_chain_recomputes_from_the_database(built: Built) -> None:
    """Every content hash, HMAC and prev link verifies; retention left chains starting > 1."""
    seqs = _verify_chain(built.conn, chainhash.parse_hmac_key(built.secrets["auditHmacKey"]))
    assert set(seqs) == set(built.data.zone_ids)
    for zone, zone_seqs in seqs.items():
        head = built.data.chain_heads[zone]
        assert zone_seqs[0] == head.first_seq > 1  # the dropped month held the genesis
        assert zone_seqs == list(range(head.first_seq, head.last_seq + 1))  # no late events
        assert len(zone_seqs) == head.rows
    assert built.data.dropped_partitions == ("audit_events_y2025m05",)


def test_audit_rows_sit_in_their_partitions(built: Built) -> None:
    """No row in the default partition; every row in its month; current month + 3 exist."""
    conn = built.conn
    assert conn.execute("SELECT count(*) FROM audit_events_default").fetchone() == (0,)
    wrong = conn.execute(
        "SELECT count(*) FROM audit_events WHERE tableoid::regclass::text <>"
        " 'audit_events_y' || to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY\"m\"MM')"
    ).fetchone()
    assert wrong == (0,)
    parts = schema.monthly_partitions(conn)
    for n in range(4):
        assert schema.partition_name(schema.add_months(NOW.date(), n)) in parts
    assert tuple(parts) == built.data.audit_partitions
    oldest = min(r[0] for r in conn.execute("SELECT occurred_at FROM audit_events").fetchall())
    assert oldest >= NOW - dt.timedelta(days=365) - dt.timedelta(days=31)


def test_late_events_leave_holes_only_where_partitions_were_dropped(
    pg: postgres.PostgresServer,
) -> None:
    """With late ingestion, dropped months punch holes mid-chain: exactly their rows are gone."""
    from caracal_restore.reference import gen_audit

    values = generate_secrets()
    volume = dataclasses.replace(SMALL, months=14, audit_events=3000, late_audit_events=60)
    conn, data = _small(pg, "late", 5, volume, values)
    try:
        seqs = _verify_chain(conn, chainhash.parse_hmac_key(values["auditHmacKey"]))
    finally:
        conn.close()
    ctx = generator.build_context(seed=5, volume=volume, secrets=values, now=NOW,
                                  canary_upstream_url=UPSTREAM)
    expected: dict[str, list[int]] = {}
    counters: dict[str, int] = {}
    cutoff = min(schema.partition_bounds(dt.date(int(p[14:18]), int(p[19:21]), 1))[0]
                 for p in data.audit_partitions)
    for event in gen_audit.build_audit_events(ctx):
        counters[event["zone_id"]] = counters.get(event["zone_id"], 0) + 1
        if event["occurred_at"] >= cutoff:
            expected.setdefault(event["zone_id"], []).append(counters[event["zone_id"]])
    assert seqs == expected
    gaps = sum(1 for s in seqs.values() for a, b in itertools.pairwise(s) if b != a + 1)
    assert gaps > 0
    assert data.dropped_partitions


def test_admin_audit_chain_as_compose_writes_it(built: Built) -> None:
    """Zone rows only, chain_hmac NULL, content hash recomputable, links contiguous from 1."""
    rows = built.conn.execute(
        "SELECT id, request_id, actor_id, actor_name, actor_scope, action, method, path, zone_id,"
        " entity_type, entity_id, status_code, payload_json, occurred_at, content_sha256,"
        " prev_content_sha256, chain_hmac, chain_seq FROM admin_audit_events"
        " ORDER BY zone_id, chain_seq").fetchall()
    assert len(rows) == 50
    last: dict[str, tuple[int, str]] = {}
    for r in rows:
        payload = r[12]
        text = generator.compact({"rls_mode": payload["rls_mode"],
                                  "rls_zone_guc": payload["rls_zone_guc"]}) if payload else ""
        fields = [*(x or "" for x in r[:11]), str(r[11]), text, generator.iso_millis(r[13])]
        assert chainhash.admin_content_hash(fields) == r[14]
        assert r[16] is None
        assert r[8] is not None
        seq, prev = last.get(r[8], (0, None))
        assert r[17] == seq + 1
        assert r[15] == prev
        last[r[8]] = (r[17], r[14])


def test_sealed_values_open_with_the_zone_kek(built: Built) -> None:
    """Signing keys open and parse as P-256; provider configs and grant tokens open."""
    kek = envelope.parse_kek(built.secrets["zoneKek"])
    conn = built.conn
    keys = conn.execute("SELECT id, zone_id, entity_id, name, type, ciphertext, nonce, dek_id,"
                        " version FROM secrets ORDER BY zone_id, version").fetchall()
    assert {k[1] for k in keys} == set(built.data.zone_ids)
    for kid, zone, entity, name, kind, ct, nonce, dek_id, _version in keys:
        pem = envelope.zone_open(kek, ct, nonce)
        assert pem.startswith(b"-----BEGIN EC PRIVATE KEY-----"), kid
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
        assert (entity, name, kind, dek_id) == (zone, "zone_signing_key", "token", "zoneKek")
    canary_keys = [k[0] for k in keys if k[1] == built.data.canary.zone_id]
    assert tuple(canary_keys) == built.data.canary.signing_key_ids
    providers = conn.execute("SELECT secret_config_ct, secret_config_nonce, secret_config_keys,"
                             " provider_kind FROM providers").fetchall()
    sealed = [p for p in providers if p[0] is not None]
    assert {p[3] for p in sealed} == {"api_key", "oauth2_authorization_code"}
    for ct, nonce, names, _kind in sealed:
        assert sorted(json.loads(envelope.zone_open(kek, ct, nonce))) == sorted(names)
    tokens = conn.execute("SELECT access_token_ct, refresh_token_ct FROM provider_grants")
    for access, refresh in tokens.fetchall():
        assert envelope.zone_open_packed(kek, access).startswith(b"at_")
        assert envelope.zone_open_packed(kek, refresh).startswith(b"rt_")
    other = envelope.parse_kek(generate_secrets()["zoneKek"])
    with pytest.raises(envelope.EnvelopeError):
        envelope.zone_open(other, keys[0][5], keys[0][6])


def test_canary_is_ready_for_an_exchange(built: Built) -> None:
    """The canary secret verifies, the active Rego allows it, its binding routes upstream."""
    canary, conn = built.data.canary, built.conn
    assert REDACTOR(canary.client_secret) != canary.client_secret
    assert "client_secret" not in repr(canary)
    assert canary.client_secret not in repr(built.data)
    stored = conn.execute("SELECT client_secret_hash, registration_method, archived_at FROM"
                          " applications WHERE id = %s", (canary.application_id,)).fetchone()
    assert stored is not None
    assert stored[1:] == ("managed", None)
    assert stored[0].startswith("argon2id$")
    assert stored[0].count("$") == 2
    assert generator.verify_client_secret(canary.client_secret, stored[0])
    assert not generator.verify_client_secret(canary.client_secret + "x", stored[0])
    active = conn.execute(
        "SELECT v.id, v.manifest_json, v.manifest_sha256 FROM policy_set_bindings b"
        " JOIN policy_set_versions v ON v.id = b.active_version_id WHERE b.zone_id = %s",
        (canary.zone_id,)).fetchall()
    assert len(active) == 1
    assert active[0][0] == canary.policy_set_version_id
    pv_ids = [m["policy_version_id"] for m in active[0][1]]
    content = conn.execute("SELECT content FROM policy_versions WHERE id = ANY(%s)",
                           (pv_ids,)).fetchall()
    result = policy.evaluate(content[0][0], canary.application_id, canary.resource_identifier)
    assert result == policy.allow_result(canary.policy_id)
    assert policy.evaluate(content[0][0], "someone-else", canary.resource_identifier) == \
        policy.DENY_RESULT
    binding = conn.execute("SELECT application_id FROM gateway_resource_bindings WHERE zone_id = %s"
                           " AND resource_identifier = %s",
                           (canary.zone_id, canary.resource_identifier)).fetchone()
    assert binding == (canary.application_id,)
    upstream = conn.execute("SELECT upstream_url FROM resources WHERE id = %s",
                            (canary.resource_id,)).fetchone()
    assert upstream == (UPSTREAM,)


def test_policy_hashes_and_one_active_set_per_zone(built: Built) -> None:
    """content_sha256 and manifest_sha256 are SHA-256 of the stored text; one active per zone."""
    conn = built.conn
    for content, sha in conn.execute("SELECT content, content_sha256 FROM policy_versions"):
        assert hashlib.sha256(content.encode()).hexdigest() == sha
    for manifest, sha in conn.execute("SELECT manifest_json, manifest_sha256 FROM"
                                      " policy_set_versions"):
        assert generator.manifest_sha256([m["policy_version_id"] for m in manifest]) == sha
    active = conn.execute("SELECT zone_id, count(*) FROM policy_set_bindings WHERE"
                          " active_version_id IS NOT NULL GROUP BY 1").fetchall()
    assert sorted(active) == sorted((z, 1) for z in built.data.zone_ids)


def test_gateway_bindings_are_complete_and_consistent(built: Built) -> None:
    """Each routed resource has a binding to a live managed app; revision counts the changes."""
    conn = built.conn
    unbound = conn.execute(
        "SELECT r.identifier FROM resources r LEFT JOIN gateway_resource_bindings b"
        " ON b.zone_id = r.zone_id AND b.resource_identifier = r.identifier"
        " WHERE r.archived_at IS NULL AND r.upstream_url IS NOT NULL"
        " AND r.identifier <> 'caracal-control' AND b.zone_id IS NULL").fetchall()
    assert unbound == []
    orphans = conn.execute(
        "SELECT b.resource_identifier FROM gateway_resource_bindings b"
        " LEFT JOIN resources r ON r.zone_id = b.zone_id AND r.identifier = b.resource_identifier"
        " AND r.archived_at IS NULL LEFT JOIN applications a ON a.zone_id = b.zone_id"
        " AND a.id = b.application_id AND a.archived_at IS NULL"
        " AND a.registration_method = 'managed' AND (a.expires_at IS NULL OR a.expires_at > %s)"
        " WHERE r.id IS NULL OR a.id IS NULL", (NOW,)).fetchall()
    assert orphans == []
    revision = conn.execute("SELECT id, version FROM gateway_binding_revision").fetchall()
    bindings = conn.execute("SELECT count(*) FROM gateway_resource_bindings").fetchone()
    assert bindings is not None
    assert revision == [(True, built.data.binding_revision)]
    assert built.data.binding_revision >= bindings[0] >= 1


def test_revocation_state_is_consistent(built: Built) -> None:
    """Revoke events name revoked sessions unless still pending; no dead outbox rows."""
    conn = built.conn
    assert conn.execute("SELECT count(*) FROM event_outbox WHERE dispatched_at IS NULL"
                        " AND available_at = 'infinity'").fetchone() == (0,)
    states: dict[bool, int] = dict(conn.execute(
        "SELECT dispatched_at IS NULL, count(*) FROM event_outbox GROUP BY 1").fetchall())
    assert states.get(True)
    assert states.get(False)
    streams = {r[0] for r in conn.execute("SELECT DISTINCT stream_name FROM event_outbox")}
    assert streams == {"caracal.sessions.revoke", "caracal.policy.invalidate"}
    status: dict[str, str] = dict(conn.execute("SELECT id, status FROM sessions").fetchall())
    for (payload,) in conn.execute("SELECT payload_json FROM event_outbox"
                                   " WHERE stream_name = 'caracal.sessions.revoke'"):
        assert payload["reason"] == "grant_revoked"
        assert payload["grant_id"]
        assert status[payload["session_id"]] == "revoked"
    rows = conn.execute("SELECT dedupe_key, status, payload_json FROM caracal_outbox"
                        " WHERE topic = 'caracal.sessions.revoke'").fetchall()
    assert rows
    assert {r[1] for r in rows} <= {"published", "pending"}
    for dedupe, state, payload in rows:
        assert dedupe.split(":")[0] in ("agent_suspend", "agent_terminate", "delegation")
        if state == "published":
            assert status[payload["session_id"]] == "revoked", dedupe
    agents = conn.execute("SELECT status, count(*) FROM agent_sessions GROUP BY 1").fetchall()
    assert {"active", "suspended", "terminated"} <= {a[0] for a in agents}
    edges: dict[str, int] = dict(
        conn.execute("SELECT status, count(*) FROM delegation_edges GROUP BY 1").fetchall())
    assert edges.get("revoked")
    assert edges.get("active")
    assert conn.execute("SELECT count(*) FROM delegation_edges WHERE status = 'revoked'"
                        " AND (revoked_at IS NULL OR edge_version < 1)").fetchone() == (0,)
    epochs = conn.execute("SELECT count(*) FROM delegation_graph_epochs WHERE epoch < 1")
    assert epochs.fetchone() == (0,)


def test_data_is_retention_compliant_at_now(built: Built) -> None:
    """Nothing the 06.21 cleaners or sweepers would change at NOW is present."""
    conn, now = built.conn, NOW
    checks = {
        "terminal edges past DELEGATION_RETENTION_DAYS": (
            "SELECT count(*) FROM delegation_edges WHERE status IN ('revoked','expired') AND"
            " COALESCE(revoked_at, expires_at, updated_at, created_at) < %(now)s - interval"
            " '90 days'"),
        "active edges past expiry": (
            "SELECT count(*) FROM delegation_edges WHERE status = 'active'"
            " AND expires_at < %(now)s"),
        "coordinator outbox past OUTBOX_RETENTION_DAYS": (
            "SELECT count(*) FROM caracal_outbox WHERE producer = 'coordinator' AND status IN"
            " ('published','dead') AND updated_at < %(now)s - interval '7 days'"),
        "dead coordinator rows": "SELECT count(*) FROM caracal_outbox WHERE status = 'dead'",
        "active tasks past TTL": (
            "SELECT count(*) FROM agent_sessions WHERE status = 'active' AND lifecycle = 'task'"
            " AND spawned_at + ttl_seconds * interval '1 second' < %(now)s"),
        "active services past lease": (
            "SELECT count(*) FROM agent_sessions WHERE status = 'active'"
            " AND lifecycle = 'service' AND heartbeat_deadline_at < %(now)s"),
        "rows in the future": (
            "SELECT (SELECT count(*) FROM audit_events WHERE occurred_at > %(now)s"
            " OR ingested_at > %(now)s) + (SELECT count(*) FROM admin_audit_events"
            " WHERE occurred_at > %(now)s)"),
        "expired DCR apps older than a day": (
            "SELECT count(*) FROM applications WHERE registration_method = 'dcr'"
            " AND archived_at IS NULL AND expires_at < %(now)s - interval '1 day'"),
    }
    for what, query in checks.items():
        assert conn.execute(query, {"now": now}).fetchone() == (0,), what
    for name in built.data.audit_partitions:
        month = dt.date(int(name[14:18]), int(name[19:21]), 1)
        assert schema.partition_bounds(month)[1] > now - dt.timedelta(days=365), name
    watermark = conn.execute("SELECT name, last_exported_hour FROM audit_export_watermark")
    assert watermark.fetchall() == [("parquet-hourly", dt.datetime(2026, 6, 21, 11,
                                                                   tzinfo=dt.UTC))]
    assert conn.execute("SELECT id FROM audit_chain_rehash").fetchall() == [(1,)]


def test_counts_and_ledger(built: Built) -> None:
    """ReferenceData counts match the tables; the ledger holds the 47 versions."""
    assert generator.table_counts(built.conn) == dict(built.data.counts)
    for table, n in built.data.counts.items():
        assert n > 0 or table == "audit_ingest_alerts", table
    versions = [r[0] for r in built.conn.execute("SELECT version FROM schema_migrations"
                                                 " ORDER BY 1")]
    assert versions == list(PROFILE.migrations)
    owner = built.conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'zones'")
    assert owner.fetchone() == ("caracal",)


@pytest.mark.slow
def test_policy_convention_render_and_evaluate() -> None:
    """render_policy/evaluate: allow blocks per pair, default deny, None outside the package."""
    text = policy.render_policy("pol-1", [("app-1", "res-a"), ('app "2"', "rés-b"),
                                          ("app-1", "res-a")])
    assert text.startswith("package caracal.authz\n\nimport rego.v1\n\ndefault result := ")
    assert text.count("result := {") == 3
    assert "\tinput.principal.id == \"app-1\"\n\tinput.resource.identifier == \"res-a\"\n}" in text
    assert policy.evaluate(text, "app-1", "res-a") == policy.allow_result("pol-1")
    assert policy.evaluate(text, 'app "2"', "rés-b") == policy.allow_result("pol-1")
    assert policy.evaluate(text, "app-1", "rés-b") == policy.DENY_RESULT
    assert policy.evaluate("package other\n", "app-1", "res-a") is None
    assert policy.evaluate("package caracal.authz\n", "app-1", "res-a") is None
    odd = text.replace('input.resource.identifier == "res-a"', "some_other_rule(input)")
    assert policy.evaluate(odd, "app-1", "res-a") == policy.DENY_RESULT


def test_wire_json_fast_path_matches_the_reference_encoding() -> None:
    """The single-dumps wire encoding equals the field-by-field Go struct encoding."""
    from caracal_restore.reference import gen_audit

    occurred = dt.datetime(2026, 6, 1, 8, 0, 0, 120000, tzinfo=dt.UTC)
    base = {"id": "e1", "zone_id": "z1", "event_type": "token_exchange", "request_id": "r1",
            "decision": "allow", "policy_set_id": "", "policy_set_version_id": "psv",
            "manifest_sha": "abc", "evaluation_status": "complete", "occurred_at": occurred}
    cases: tuple[tuple[Any, Any, Any], ...] = (
        (["p"], [], {"é": 1.5, "a": [True, None]}), ([], [], None))
    for objects in cases:
        texts = {"determining_policies_json": generator.compact(objects[0]),
                 "diagnostics_json": generator.compact(objects[1]),
                 "metadata_json": None if objects[2] is None else generator.compact(objects[2])}
        wire = generator.audit_wire_json({**base, **texts})
        assert gen_audit._wire_fast(dict(base), objects) == wire
        assert json.loads(wire)["occurred_at"] == "2026-06-01T08:00:00.12Z"
        assert ("metadata_json" in json.loads(wire)) == (objects[2] is not None)

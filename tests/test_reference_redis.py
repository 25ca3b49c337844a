"""The reference Redis state: provisioning, signed outbox entries, PELs, and an AOF restore."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib
from psycopg.types.json import Jsonb

from caracal_restore.chainhash import producer_signature, stream_signature
from caracal_restore.environments import postgres, redis
from caracal_restore.reference import redis_state
from caracal_restore.reference.redis_state import (
    AUDIT_GROUP,
    AUDIT_STREAM,
    GATEWAY_GROUP,
    REVOKE_STREAM,
    STREAMS,
    STS_GROUP,
)
from caracal_restore.reference.replay import wire_json
from caracal_restore.waiting import until

STREAMS_KEY = secrets.token_bytes(32)
AUDIT_KEY = secrets.token_bytes(32)
T0 = dt.datetime(2026, 6, 20, 9, 0, tzinfo=dt.UTC)

MINIMAL_SCHEMA = """
CREATE TABLE sessions (id text PRIMARY KEY, zone_id text NOT NULL,
    status text NOT NULL DEFAULT 'active');
CREATE TABLE event_outbox (id text PRIMARY KEY, stream_name text NOT NULL,
    payload_json jsonb NOT NULL, attempts integer NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT now(), dispatched_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE caracal_outbox (id text PRIMARY KEY, producer text NOT NULL, topic text NOT NULL,
    dedupe_key text NOT NULL, payload_json jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending', published_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE audit_events (id text NOT NULL, zone_id text NOT NULL, event_type text NOT NULL,
    request_id text, decision text, policy_set_id text, policy_set_version_id text,
    manifest_sha text, evaluation_status text, determining_policies_json jsonb,
    diagnostics_json jsonb, metadata_json jsonb, occurred_at timestamptz NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(), content_sha256 text,
    prev_content_sha256 text, chain_hmac text, chain_seq bigint, ingest_signature text,
    PRIMARY KEY (id, occurred_at));
"""

#: (session id, status): s1..s6 revoked, a1..a4 still active (STS has not consumed yet), x1
#: expired (its zone was deleted).
SESSIONS = ([(f"s{i}", "revoked") for i in range(1, 7)] + [(f"a{i}", "active") for i in range(1, 5)]
            + [("x1", "expired")])


def _seed(conn: psycopg.Connection[Any]) -> None:
    """Outbox rows of both producers, sessions in both states, and a few ingested audit rows."""
    conn.execute(MINIMAL_SCHEMA)
    for sid, status in SESSIONS:
        conn.execute("INSERT INTO sessions VALUES (%s, 'zone-a', %s)", (sid, status))
    minute = dt.timedelta(minutes=1)
    api = [  # (id, stream, payload, dispatched minute or None, dead)
        ("eo-01", REVOKE_STREAM, {"zone_id": "zone-a", "session_id": "s1",
                                  "reason": "grant_revoked", "grant_id": "g1"}, 1, False),
        ("eo-02", REVOKE_STREAM, {"zone_id": "zone-a", "session_id": "s2",
                                  "reason": "dcr_shutdown"}, 2, False),
        ("eo-03", REVOKE_STREAM, {"zone_id": "zone-a", "delegation_edge_id": "e1",
                                  "reason": "dcr_shutdown"}, 3, False),
        ("eo-04", "caracal.policy.invalidate", {"zone_id": "zone-a", "version": 7,
                                                "force": True}, 4, False),
        ("eo-05", REVOKE_STREAM, {"zone_id": "zone-a", "session_id": "a4",
                                  "reason": "grant_revoked", "grant_id": "g2"}, None, False),
        ("eo-06", REVOKE_STREAM, {"zone_id": "zone-a", "session_id": "s6",
                                  "reason": "grant_revoked", "grant_id": "g3"}, None, True),
        ("eo-07", REVOKE_STREAM, {"zone_id": "zone-a", "session_id": "x1",
                                  "reason": "grant_revoked", "grant_id": "g4"}, None, True),
    ]
    for oid, stream, payload, minutes, dead in api:
        conn.execute(
            "INSERT INTO event_outbox (id, stream_name, payload_json, dispatched_at, available_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            (oid, stream, Jsonb(payload), None if minutes is None else T0 + minutes * minute,
             "infinity" if dead else T0),
        )
    coordinator = [  # (id, session, agent session, edge, status, published minute)
        ("co-01", "s3", "ag1", None, "published", 5),
        ("co-02", "a1", "ag2", None, "published", 6),
        ("co-03", "s4", "ag3", "e2", "published", 7),
        ("co-04", "a2", "ag4", None, "published", 8),
        ("co-05", "s5", "ag5", None, "published", 9),
        ("co-06", "a3", "ag6", None, "published", 10),
        ("co-07", "a3", "ag7", None, "pending", None),
    ]
    for oid, sid, agent, edge, status, minutes in coordinator:
        payload = {"zone_id": "zone-a", "session_id": sid, "agent_session_id": agent,
                   "reason": "delegation_revoked" if edge else "terminated"}
        dedupe = f"agent_terminate:{agent}"
        if edge:
            payload["delegation_edge_id"] = edge
            dedupe = f"delegation:{edge}:subject:{sid}"
        conn.execute(
            "INSERT INTO caracal_outbox (id, producer, topic, dedupe_key, payload_json, status,"
            " published_at) VALUES (%s, 'coordinator', %s, %s, %s, %s, %s)",
            (oid, REVOKE_STREAM, dedupe, Jsonb(payload), status,
             None if minutes is None else T0 + minutes * minute),
        )
    for i in range(4):
        event: dict[str, Any] = {
            "id": f"ev-{i}", "zone_id": "zone-a", "event_type": "token_exchange",
            "request_id": f"req-{i}", "decision": "allow", "evaluation_status": "complete",
            "determining_policies_json": '[{"policy": "caracal-bootstrap"}]',
            "diagnostics_json": "[]", "occurred_at": T0 + dt.timedelta(seconds=i)}
        sig = producer_signature(AUDIT_KEY, wire_json(event))
        conn.execute(
            "INSERT INTO audit_events (id, zone_id, event_type, request_id, decision,"
            " evaluation_status, determining_policies_json, diagnostics_json, occurred_at,"
            " ingested_at, chain_seq, ingest_signature) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s, %s)",
            (event["id"], "zone-a", "token_exchange", event["request_id"], "allow", "complete",
             event["determining_policies_json"], "[]", event["occurred_at"],
             event["occurred_at"] + dt.timedelta(milliseconds=40), i + 1, sig),
        )


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """An embedded PostgreSQL for this module."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture(scope="module")
def source_db(pg: postgres.PostgresServer) -> str:
    """A database with the outbox, session and audit tables the Redis state is built from."""
    pg.create_database("minimal")
    with pg.connect(pg.database_name("minimal")) as conn:
        _seed(conn)
    return pg.database_name("minimal")


@pytest.fixture
def conn(pg: postgres.PostgresServer, source_db: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection to the seeded source database."""
    with pg.connect(source_db) as connection:
        yield connection


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[redis.RedisServer]:
    """A fresh embedded Redis for one test."""
    with redis.embedded(workdir=tmp_path) as server:
        yield server


@pytest.fixture
def client(cache: redis.RedisServer) -> Iterator[redis_lib.Redis]:
    """A bytes client of the fresh Redis."""
    c = cache.client()
    yield c
    c.close()


@pytest.fixture
def published(
    client: redis_lib.Redis, conn: psycopg.Connection[Any]
) -> redis_state.RedisStateSummary:
    """Provisioned streams with the source's outbox rows published and partly consumed."""
    redis_state.provision(client)
    return redis_state.publish_state(client, conn, streams_hmac_key=STREAMS_KEY,
                                     audit_hmac_key=AUDIT_KEY, pending=3)


def test_provision_creates_the_nine_streams_and_their_groups(client: redis_lib.Redis) -> None:
    """Every provisioned stream exists with its groups; re-running tolerates BUSYGROUP."""
    redis_state.provision(client)
    redis_state.provision(client)
    for spec in STREAMS:
        assert client.type(spec.name) == b"stream", spec.name
        groups = {g["name"].decode() for g in client.xinfo_groups(spec.name)}
        expected = set(spec.groups) | ({GATEWAY_GROUP} if spec.name == REVOKE_STREAM else set())
        assert groups == expected, spec.name
    ratelimit = redis_state.stream_entries(client, "caracal.providers.ratelimit")
    assert ratelimit[-1][1] == {"init": "1"}
    gateway = client.xinfo_groups(REVOKE_STREAM)
    assert {g["name"]: g["last-delivered-id"] for g in gateway}[GATEWAY_GROUP.encode()] == b"0-0"


def test_provisioned_streams_match_the_release_profile() -> None:
    """The stream table agrees with the 2026.06 profile's (both are FACTS-1.0 §11.1)."""
    profile = pytest.importorskip("caracal_restore.profiles.release_2026_06")
    assert tuple(profile.PROFILE.streams) == STREAMS


def test_every_published_entry_carries_a_valid_origin_signature(
    client: redis_lib.Redis,
    conn: psycopg.Connection[Any],
    published: redis_state.RedisStateSummary,
) -> None:
    """Each dispatched outbox row is one entry: payload fields, outbox_id (+dedupe_key), _sig."""
    expected: dict[str, dict[str, str]] = {}
    for oid, payload in conn.execute(
        "SELECT id, payload_json FROM event_outbox WHERE dispatched_at IS NOT NULL"
    ).fetchall():
        expected[oid] = {k: _flat(v) for k, v in payload.items()} | {"outbox_id": oid}
    for oid, payload, dedupe in conn.execute(
        "SELECT id, payload_json, dedupe_key FROM caracal_outbox WHERE status = 'published'"
    ).fetchall():
        expected[oid] = payload | {"outbox_id": oid, "dedupe_key": dedupe}
    seen = {}
    for stream in (REVOKE_STREAM, "caracal.policy.invalidate"):
        for _entry_id, fields in redis_state.stream_entries(client, stream):
            sig = fields.pop("_sig")
            assert sig == stream_signature(STREAMS_KEY, stream, fields)
            seen[fields["outbox_id"]] = fields
    assert seen == expected
    assert published.published == len(expected)


def _flat(value: object) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def test_revocation_invariant_holds_with_pending_and_undelivered_entries(
    client: redis_lib.Redis,
    conn: psycopg.Connection[Any],
    published: redis_state.RedisStateSummary,
) -> None:
    """FACTS-2026.06 §5.4: each row's session is revoked or its entry is still owed to STS."""
    coverage = redis_state.revocation_coverage(conn, client)
    assert [c for c in coverage if not c.holds] == []
    states = {c.outbox_id: c.state for c in coverage}
    assert states["co-07"] == "outbox-pending"
    assert states["eo-06"] == "revoked"  # dead row, but its session was revoked directly
    assert states["eo-07"] == "expired"  # dead row, session unusable anyway
    assert {"pending", "undelivered", "revoked"} <= set(states.values())
    pel = client.xpending(REVOKE_STREAM, STS_GROUP)
    assert pel["pending"] == len(published.revocation_pending) >= 3
    assert published.revocation_undelivered == ("co-05", "co-06")
    for sid in ("a1", "a2"):  # delivered, not revoked: must be pending
        assert any(c.session_id == sid and c.state == "pending" for c in coverage)
    sts = published.stream(REVOKE_STREAM).group(STS_GROUP)
    assert sts.pending == pel["pending"]
    assert published.stream(REVOKE_STREAM).group(GATEWAY_GROUP).pending == 1


def test_invariant_reports_an_acknowledged_entry_whose_session_stayed_active(
    client: redis_lib.Redis,
    conn: psycopg.Connection[Any],
    published: redis_state.RedisStateSummary,
) -> None:
    """Acknowledging a pending entry for an active session is a lost revocation."""
    entries = redis_state.stream_entries(client, REVOKE_STREAM)
    sessions = {entry_id: fields.get("session_id") for entry_id, fields in entries}
    pel = redis_state.snapshot(client)[REVOKE_STREAM]["groups"][STS_GROUP]["pel"]
    target = next(entry_id for entry_id, *_ in pel if sessions[entry_id] == "a1")
    client.xack(REVOKE_STREAM, STS_GROUP, target)
    broken = [c for c in redis_state.revocation_coverage(conn, client) if not c.holds]
    assert [(c.outbox_id, c.session_id, c.state) for c in broken] == [("co-02", "a1", "acked")]


def test_invariant_reports_a_dead_outbox_row_whose_session_stayed_active(
    client: redis_lib.Redis,
    conn: psycopg.Connection[Any],
    published: redis_state.RedisStateSummary,
) -> None:
    """A dead (never dispatched) row for an active session is a lost revocation too."""
    with conn.transaction(force_rollback=True):
        conn.execute("UPDATE sessions SET status = 'active' WHERE id = 's6'")
        broken = [c for c in redis_state.revocation_coverage(conn, client) if not c.holds]
    assert [(c.outbox_id, c.state) for c in broken] == [("eo-06", "outbox-dead")]


def test_audit_stream_holds_signed_events_not_yet_ingested(
    client: redis_lib.Redis,
    conn: psycopg.Connection[Any],
    published: redis_state.RedisStateSummary,
) -> None:
    """Audit messages carry id, data, sig; the backlog is absent from audit_events, half read."""
    entries = redis_state.stream_entries(client, AUDIT_STREAM)
    ingested = {r[0]: r[1] for r in conn.execute("SELECT id, ingest_signature FROM audit_events")}
    assert len(entries) == len(published.audit_acked) + len(published.audit_backlog)
    for _entry_id, fields in entries:
        assert set(fields) == {"id", "data", "sig"}
        assert fields["sig"] == producer_signature(AUDIT_KEY, fields["data"].encode())
        assert json.loads(fields["data"])["id"] == fields["id"]
    assert set(published.audit_acked) <= set(ingested)
    assert len(published.audit_acked) == 4
    for _entry_id, fields in entries:
        if fields["id"] in ingested:
            assert fields["sig"] == ingested[fields["id"]]
    assert not set(published.audit_backlog) & set(ingested)
    group = published.stream(AUDIT_STREAM).group(AUDIT_GROUP)
    assert group.pending == len(published.audit_backlog) // 2 == 3
    assert group.lag == 3


def test_snapshot_survives_an_appendonlydir_restore(
    client: redis_lib.Redis,
    cache: redis.RedisServer,
    published: redis_state.RedisStateSummary,
    tmp_path: Path,
) -> None:
    """A Redis started on a copy of the rewritten AOF has the same streams, groups and PELs."""
    before = redis_state.snapshot(client)
    assert before[REVOKE_STREAM]["groups"][STS_GROUP]["pel"]
    client.bgrewriteaof()
    until(lambda: _rewrite_done(client), timeout=30, what="BGREWRITEAOF finished")
    assert cache.datadir is not None
    copy = tmp_path / "bundle" / "appendonlydir"
    shutil.copytree(cache.datadir / "appendonlydir", copy)
    assert (copy / "appendonly.aof.manifest").is_file()
    with redis.embedded(appendonlydir=copy, workdir=tmp_path) as restored:
        other = restored.client()
        try:
            after = redis_state.snapshot(other)
            first_pending = before[REVOKE_STREAM]["groups"][STS_GROUP]["pel"][0][0]
            other.xack(REVOKE_STREAM, STS_GROUP, first_pending)
            changed = redis_state.snapshot(other)
        finally:
            other.close()
    assert after == before
    assert changed != before  # the comparison sees a single acknowledged PEL entry
    assert json.loads(json.dumps(after)) == json.loads(json.dumps(before))


def _rewrite_done(client: redis_lib.Redis) -> bool:
    info = client.info("persistence")
    return info["aof_rewrite_in_progress"] == 0 and info["aof_rewrite_scheduled"] == 0


def test_summary_lists_every_stream_and_no_key_material(
    published: redis_state.RedisStateSummary,
) -> None:
    """The summary names each stream with its length and last id, and never the HMAC keys."""
    names = {s.name for s in published.streams}
    assert {spec.name for spec in STREAMS} <= names
    text = repr(published)
    for key in (STREAMS_KEY, AUDIT_KEY):
        assert key.hex() not in text
    revoke = published.stream(REVOKE_STREAM)
    assert revoke.length == 9
    assert revoke.last_id.startswith(str(int((T0 + dt.timedelta(minutes=10)).timestamp() * 1000)))


@pytest.fixture(scope="module")
def generated(pg: postgres.PostgresServer) -> tuple[str, dict[str, str]]:
    """A small database from the reference generator, with its secrets."""
    generator = pytest.importorskip("caracal_restore.reference.generator")
    from caracal_restore.reference.secrets import generate_secrets

    values = generate_secrets()
    volume = generator.Volume(zones=2, applications_per_zone=2, resources_per_zone=2,
                              sessions_per_zone=10, agents_per_zone=8, edges_per_zone=4,
                              audit_events=200, admin_audit_events=5, months=2)
    data = generator.build_source_database(
        pg, seed=2606, volume=volume, secrets=values,
        now=dt.datetime(2026, 6, 21, 12, 34, 56, tzinfo=dt.UTC),
        canary_upstream_url="http://127.0.0.1:9/canary",
    )
    assert data.database is not None
    return data.database, values


def test_generated_database_publishes_a_consistent_redis_state(
    pg: postgres.PostgresServer, generated: tuple[str, dict[str, str]], client: redis_lib.Redis
) -> None:
    """On the generator's data every entry is signed and the §5.4 invariant holds."""
    database, values = generated
    streams_key = bytes.fromhex(values["streamsHmacKey"])
    with pg.connect(database) as source:
        redis_state.provision(client)
        summary = redis_state.publish_state(
            client, source, streams_hmac_key=streams_key,
            audit_hmac_key=bytes.fromhex(values["auditHmacKey"]))
        coverage = redis_state.revocation_coverage(source, client)
        dispatched = source.execute(
            "SELECT (SELECT count(*) FROM event_outbox WHERE dispatched_at IS NOT NULL)"
            " + (SELECT count(*) FROM caracal_outbox WHERE status = 'published')").fetchone()
    assert dispatched is not None
    assert summary.published == dispatched[0] > 0
    assert coverage
    assert [c for c in coverage if not c.holds] == []
    sts = summary.stream(REVOKE_STREAM).group(STS_GROUP)
    assert sts.pending == len(summary.revocation_pending) >= 1
    assert sts.lag == len(summary.revocation_undelivered) >= 1
    for stream in {s.name for s in summary.streams} - {AUDIT_STREAM, "caracal.providers.ratelimit"}:
        for _entry_id, fields in redis_state.stream_entries(client, stream):
            sig = fields.pop("_sig")
            assert sig == stream_signature(streams_key, stream, fields), stream

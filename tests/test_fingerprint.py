"""Tests of caracal_restore.fingerprint on an embedded PostgreSQL 18 (order independence,
sensitivity to one changed value, release-specific tables, and the same-snapshot guarantee)."""

from __future__ import annotations

import hashlib
import itertools
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from caracal_restore.bundle import open_bundle, take_backup
from caracal_restore.environments import postgres
from caracal_restore.environments.base import run_tool
from caracal_restore.fingerprint import (
    compare_state,
    compare_tables,
    file_hashes,
    take_fingerprint,
)

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, doc jsonb, blob bytea, note text, seen timestamptz);
CREATE TABLE tags (label text);
CREATE TABLE audit_events (
    id text NOT NULL, zone_id text NOT NULL, chain_seq bigint, content_sha256 text,
    occurred_at timestamptz NOT NULL, PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE TABLE audit_events_y2026m11 PARTITION OF audit_events
    FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00');
CREATE TABLE policy_set_bindings (zone_id text, policy_set_id text, active_version_id text,
    PRIMARY KEY (zone_id, policy_set_id));
CREATE TABLE sessions (id text PRIMARY KEY, status text NOT NULL);
CREATE TABLE agent_sessions (id text PRIMARY KEY, status text NOT NULL);
CREATE TABLE delegation_edges (id text PRIMARY KEY, status text NOT NULL);
CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz DEFAULT now());
"""

STATE = """
INSERT INTO audit_events VALUES
    ('e1', 'z1', 1, 'h1', '2026-11-02T10:00:00Z'), ('e2', 'z1', 2, 'h2', '2026-11-03T10:00:00Z'),
    ('e3', 'z2', 1, 'k1', '2027-03-01T00:00:00Z');
INSERT INTO policy_set_bindings VALUES ('z1', 'ps-a', 'psv-2'), ('z1', 'ps-b', NULL);
INSERT INTO sessions VALUES ('s1', 'active'), ('s2', 'revoked');
INSERT INTO agent_sessions VALUES ('a1', 'active'), ('a2', 'suspended'), ('a3', 'terminated');
INSERT INTO delegation_edges VALUES ('d1', 'revoked'), ('d2', 'active');
INSERT INTO schema_migrations VALUES ('0001_init', '2026-11-01T00:00:00Z'),
    ('0002_roles', '2026-11-01T00:00:01Z');
"""

ROWS = [
    (i, json.dumps({"n": i, "tags": ["a", "b"]}), bytes([i % 256, 0, 255]), f"row {i}",
     f"2026-11-0{1 + i % 9}T12:00:00Z")
    for i in range(1, 201)
]


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """An embedded PostgreSQL 18 for this module (action: initdb + start)."""
    with postgres.embedded() as server:
        yield server


_names = itertools.count()


def _database(pg: postgres.PostgresServer, rows: list[tuple[object, ...]] = ROWS) -> str:
    """A new database with the tiny Caracal-like schema, ``rows`` inserted in the given order."""
    name = f"fp_{next(_names)}"
    pg.create_database(name)
    with pg.connect(name) as conn:
        conn.execute(SCHEMA)
        conn.execute(STATE)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s, %s, %s)", rows)
    return name


def _fingerprint(pg: postgres.PostgresServer, name: str, **kwargs: object) -> dict:
    with pg.connect(name) as conn:
        return take_fingerprint(conn, **kwargs)  # type: ignore[arg-type]


def test_same_rows_in_another_physical_order_give_the_same_fingerprint(pg) -> None:
    """Inserting in reverse order (and churning pages with updates) changes no digest."""
    forward = _database(pg)
    backward = _database(pg, list(reversed(ROWS)))
    with pg.connect(backward) as conn:
        conn.execute("UPDATE items SET note = note || 'x'")
        conn.execute("UPDATE items SET note = left(note, -1)")
    first, second = _fingerprint(pg, forward), _fingerprint(pg, backward)
    assert compare_tables(first, second) == []
    assert first["tables"]["items"]["rows"] == 200
    assert compare_state(first, second) == []


@pytest.mark.parametrize(
    "change",
    [
        pytest.param("DELETE FROM items WHERE id = 17", id="one-row-deleted"),
        pytest.param("UPDATE items SET doc = jsonb_set(doc, '{n}', '18') WHERE id = 17",
                     id="one-jsonb-value"),
        pytest.param("UPDATE items SET blob = '\\x110001'::bytea WHERE id = 17",
                     id="one-bytea-byte"),
        pytest.param("UPDATE items SET seen = seen + interval '1 microsecond' WHERE id = 17",
                     id="one-microsecond"),
    ],
)
def test_one_changed_value_changes_the_digest(pg, change: str) -> None:
    """A single row, JSON value, byte or microsecond is enough to make the table differ."""
    source, restored = _database(pg), _database(pg)
    with pg.connect(restored) as conn:
        conn.execute(change)
    problems = compare_tables(_fingerprint(pg, source), _fingerprint(pg, restored))
    assert len(problems) == 1
    assert problems[0].startswith("items: ")


def test_duplicates_count_as_a_multiset(pg) -> None:
    """(a, a, b) and (a, b, b) have the same row count but different digests."""
    left, right = _database(pg), _database(pg)
    with pg.connect(left) as conn:
        conn.execute("INSERT INTO tags VALUES ('a'), ('a'), ('b')")
    with pg.connect(right) as conn:
        conn.execute("INSERT INTO tags VALUES ('a'), ('b'), ('b')")
    problems = compare_tables(_fingerprint(pg, left), _fingerprint(pg, right))
    assert problems == [problems[0]]
    assert problems[0].startswith("tags: same 3 rows but content differs")


def test_digest_does_not_depend_on_session_settings(pg) -> None:
    """A client with another time zone, date style or bytea format gets the same digest."""
    name = _database(pg)
    plain = _fingerprint(pg, name)
    options = "-c TimeZone=Asia/Tokyo -c DateStyle=German -c bytea_output=escape"
    endpoint = pg.admin.with_db(name)
    with psycopg.connect(endpoint.conninfo(), autocommit=True, options=options) as conn:
        tuned = take_fingerprint(conn)
    assert compare_tables(plain, tuned) == []


def test_partitions_and_their_parent_total(pg) -> None:
    """Every partition is fingerprinted and the partitioned parent carries the total."""
    tables = _fingerprint(pg, _database(pg))["tables"]
    parent = tables["audit_events"]
    assert parent["kind"] == "partitioned"
    assert tables["audit_events_y2026m11"] == {
        "kind": "partition", "parent": "audit_events", "rows": 2,
        "sha256": tables["audit_events_y2026m11"]["sha256"],
    }
    assert tables["audit_events_default"]["rows"] == 1
    total = (int(tables["audit_events_y2026m11"]["sha256"], 16)
             + int(tables["audit_events_default"]["sha256"], 16)) % 2**256
    assert (parent["rows"], parent["sha256"]) == (3, f"{total:064x}")


def test_access_and_evidence_state(pg) -> None:
    """Partitions, chain heads, activation, revocations and ledger read as the data says."""
    fp = _fingerprint(pg, _database(pg))
    assert fp["audit_partitions"] == [
        {"name": "audit_events_default", "bound": "DEFAULT"},
        {"name": "audit_events_y2026m11",
         "bound": "FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00')"},
    ]
    assert fp["heads"] == {
        "z1": {"count": 2, "min_seq": 1, "max_seq": 2, "content_sha256": "h2"},
        "z2": {"count": 1, "min_seq": 1, "max_seq": 1, "content_sha256": "k1"},
    }
    assert fp["policy_activation"] == {"z1": [
        {"policy_set_id": "ps-a", "active_version_id": "psv-2"},
        {"policy_set_id": "ps-b", "active_version_id": None},
    ]}
    assert fp["revoked"] == {"sessions": ["s2"], "agents": ["a2", "a3"], "edges": ["d1"]}
    assert fp["ledger"] == ["0001_init", "0002_roles"]
    assert fp["binding_revision"] is None
    assert fp["redis"] is None


def test_a_fingerprint_of_some_parts_reads_only_those(pg) -> None:
    """``parts`` keeps the header and the named readings, each equal to the full reading's."""
    name = _database(pg)
    whole = _fingerprint(pg, name)
    some = _fingerprint(pg, name, parts=("tables", "revoked"))
    assert set(some) == {"format", "database", "taken_at", "tables", "revoked"}
    assert (some["tables"], some["revoked"]) == (whole["tables"], whole["revoked"])
    with pytest.raises(ValueError, match="unknown fingerprint parts"):
        _fingerprint(pg, name, parts=("tables", "head"))


def test_release_specific_tables_may_be_absent(pg) -> None:
    """A 1.0 database has no gateway table; 1.0 names (authority_records) are passed in."""
    name = _database(pg)
    one_oh = _fingerprint(pg, name, sessions_table="authority_records", agents_table="sessions")
    assert one_oh["binding_revision"] is None
    assert one_oh["revoked"] == {"sessions": None, "agents": [], "edges": ["d1"]}
    with pg.connect(name) as conn:
        conn.execute("CREATE TABLE gateway_binding_revision (id boolean PRIMARY KEY DEFAULT true"
                     " CHECK (id), version bigint NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO gateway_binding_revision VALUES (true, 7)")
    assert _fingerprint(pg, name)["binding_revision"] == 7


def test_compare_tables_puts_the_first_differing_table_first() -> None:
    """Differences come in the source's table order, missing and extra tables named."""
    row = {"kind": "table", "parent": None, "rows": 1, "sha256": "0" * 64}
    expected = {"a": row, "b": row, "c": row, "d": row}
    actual = {"a": row, "b": {**row, "rows": 2}, "c": {**row, "sha256": "1" * 64}, "e": row}
    assert compare_tables(expected, actual) == [
        "b: 1 rows in the source, 2 after restore",
        "c: same 1 rows but content differs (sha256 0000000000000000… vs 1111111111111111…)",
        "d: in the source (1 rows), missing after restore",
        "e: not in the source, present after restore",
    ]


def test_file_hashes_leave_out_the_fingerprint(tmp_path: Path) -> None:
    """The files map covers every file by POSIX path except fingerprint.json itself."""
    (tmp_path / "postgres").mkdir()
    (tmp_path / "postgres" / "x.dump").write_bytes(b"PGDMP")
    (tmp_path / "fingerprint.json").write_text("{}")
    assert file_hashes(tmp_path) == {"postgres/x.dump": hashlib.sha256(b"PGDMP").hexdigest()}


def test_row_committed_after_the_snapshot_is_in_neither_fingerprint_nor_dump(
    pg, tmp_path: Path
) -> None:
    """take_backup dumps in the fingerprint's snapshot: a later row is in neither of them."""
    source = _database(pg)

    def hook(db: str, conn: psycopg.Connection) -> dict:
        fp = take_fingerprint(conn)
        with pg.connect(db) as other:  # a concurrent writer, committed before pg_dump starts
            other.execute("INSERT INTO items (id, note) VALUES (100000, 'late')")
        return fp

    archive = take_backup(tmp_path, pg_admin=pg.admin, tools=pg.tools, project="caracal",
                          stamp="20261201T101010Z", fingerprint_hook=hook,
                          exclude_databases=[n for n in _all_databases(pg) if n != source])
    with tarfile.open(archive) as tar:
        assert "caracalBackup-20261201T101010Z/fingerprint.json" in tar.getnames()
    bundle = open_bundle(archive, tmp_path / "open", tools=pg.tools)
    assert bundle.fingerprint is not None
    recorded = bundle.fingerprint["databases"][source]
    assert recorded["tables"]["items"]["rows"] == 200

    restored = pg.create_database(f"{source}_restored")
    run_tool([pg.tools.path("pg_restore"), "--exit-on-error", "--no-owner",
              f"--dbname={restored.dbname}", bundle.dumps[source]],
             env=restored.libpq_env(), what="pg_restore")
    after_restore = _fingerprint(pg, restored.dbname)
    assert compare_tables(recorded, after_restore) == []
    assert compare_state(recorded, after_restore) == []
    assert compare_tables(recorded, _fingerprint(pg, source)) == [
        "items: 200 rows in the source, 201 after restore"
    ]


def _all_databases(pg: postgres.PostgresServer) -> list[str]:
    with pg.connect() as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]

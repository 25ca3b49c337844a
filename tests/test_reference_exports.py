"""Replay volume files and hourly Parquet audit exports of the reference deployment."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import secrets
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caracal_restore.chainhash import AUDIT_HASH_SELECT, chain_hmac, content_hash_parts
from caracal_restore.environments import objectstore, postgres
from caracal_restore.environments.objectstore import ObjectStore, ObjectStoreServer
from caracal_restore.parquet_export import (
    EXPECTED_SIGNATURE,
    ArchiveIndex,
    ArchiveRow,
    arrow_schema,
    object_key,
    read_archive,
    verify_archive_chain,
)
from caracal_restore.reference import exports, replay

AUDIT_KEY = secrets.token_bytes(32)
H0 = dt.datetime(2026, 6, 20, 22, 0, tzinfo=dt.UTC)

# ------------------------------------------------------------------------------ replay files


def test_wire_json_is_go_marshal_shaped() -> None:
    """Keys in struct order, omitempty fields dropped, raw JSON compacted, HTML-safe escaping."""
    event = {
        "occurred_at": dt.datetime(2026, 6, 21, 8, 5, 3, 120000, tzinfo=dt.UTC),
        "metadata_json": None,
        "zone_id": "zone-a",
        "id": "ev-1",
        "event_type": "token_exchange",
        "request_id": "r<1>&",
        "decision": "allow",
        "policy_set_id": "",
        "evaluation_status": "complete",
        "determining_policies_json": '[ {"policy": "caracal-bootstrap"} ]',
        "diagnostics_json": None,
    }
    assert replay.wire_json(event) == (
        b'{"id":"ev-1","zone_id":"zone-a","event_type":"token_exchange",'
        b'"request_id":"r\\u003c1\\u003e\\u0026","decision":"allow",'
        b'"evaluation_status":"complete","determining_policies_json":'
        b'[{"policy":"caracal-bootstrap"}],"diagnostics_json":null,'
        b'"occurred_at":"2026-06-21T08:05:03.12Z"}'
    )
    assert replay.rfc3339(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T03:04:05Z"
    assert replay.go_json({"b": "é\n\x01\u2028", "a": [True, None, 2, 1.0, 5e-05, 1e-07]}) == (
        '{"a":[true,null,2,1,0.00005,1e-7],"b":"é\\n\\u0001\\u2028"}'
    )


def test_replay_files_round_trip(tmp_path: Path) -> None:
    """Written files follow the name/mode grammar and parse back to the same events."""
    start = dt.datetime(2026, 6, 21, 8, 0, 0, 123456, tzinfo=dt.UTC)
    events = replay.undelivered_events(["zone-a", "zone-b"], count=7, start=start,
                                       producer="gateway", seed="t")
    paths = replay.write_replay_files(tmp_path, events, pid=1, files=3)
    assert len(paths) == 3
    directory = tmp_path / "audit-replay"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    nanos = []
    for path in paths:
        match = replay.NAME_PATTERN.fullmatch(path.name)
        assert match
        assert match.group(1) == "1"
        nanos.append(int(match.group(2)))
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().endswith(b"\n")
    assert nanos == sorted(nanos)
    assert len(set(nanos)) == 3
    scan = replay.parse_replay_dir(tmp_path)
    assert scan.problems == ()
    assert scan.dir_mode == 0o750
    assert scan.event_ids == tuple(e["id"] for e in events)
    assert [f.events for f in scan.files] == [3, 2, 2]
    first = scan.events[0]
    assert first.occurred_at == start
    assert (first.zone_id, first.event_type, first.decision) == (
        "zone-a", "gateway_resource_request", "allow")
    for line in paths[0].read_text().splitlines():
        assert next(iter(json.loads(line))) == "id"
        assert set(json.loads(line)) <= replay.WIRE_KEYS


def test_replay_grammar_errors_are_reported(tmp_path: Path) -> None:
    """Bad names, non-JSON lines, missing ids, bad timestamps, extra keys, torn writes."""
    directory = tmp_path / "audit-replay"
    directory.mkdir()
    good = {"id": "e1", "zone_id": "z", "occurred_at": "2026-06-21T08:00:00Z"}
    (directory / "pending-1-2.ndjson").write_text(
        "\n".join([
            json.dumps(good),
            "not json",
            json.dumps({**good, "id": ""}),
            json.dumps({**good, "occurred_at": "21/06/2026"}),
            json.dumps({**good, "id": "e5", "extra": 1}),
            "[1, 2]",
            "",
            json.dumps({**good, "id": "e8", "occurred_at": "2026-06-21T10:00:00.123456789+02:00"}),
            json.dumps({**good, "id": "e9", "occurred_at": "2026-06-21t08:00:00z"}),
        ])  # no final newline
    )
    (directory / "pending-x-2.ndjson").write_text(json.dumps(good) + "\n")
    (directory / ".ready-123").write_text("")
    scan = replay.parse_replay_dir(tmp_path)
    text = "\n".join(scan.problems)
    assert "pending-1-2.ndjson:2: not JSON" in text
    assert "pending-1-2.ndjson:3: id missing or empty" in text
    assert "pending-1-2.ndjson:4: occurred_at missing or not RFC 3339" in text
    assert "pending-1-2.ndjson:5: keys outside the wire set ['extra']" in text
    assert "pending-1-2.ndjson:6: not a JSON object" in text
    assert "pending-1-2.ndjson:9: occurred_at missing or not RFC 3339" in text
    assert "not newline-terminated" in text
    assert "pending-x-2.ndjson: name is not pending-<digits>-<digits>.ndjson" in text
    assert len(scan.problems) == 8
    assert scan.event_ids == ("e1", "e5", "e8", "e1")
    assert scan.events[2].occurred_at == dt.datetime(2026, 6, 21, 8, 0, 0, 123456, tzinfo=dt.UTC)


def test_missing_replay_directory_is_reported_as_absent(tmp_path: Path) -> None:
    """A volume without audit-replay scans as absent, not as an error."""
    scan = replay.parse_replay_dir(tmp_path)
    assert (scan.exists, scan.files, scan.problems) == (False, (), ())


# ------------------------------------------------------------------------------ audit export

AUDIT_TABLES = """
CREATE TABLE audit_events (id text NOT NULL, zone_id text NOT NULL, event_type text NOT NULL,
    request_id text, decision text, policy_set_id text, policy_set_version_id text,
    manifest_sha text, evaluation_status text, determining_policies_json jsonb,
    diagnostics_json jsonb, metadata_json jsonb, occurred_at timestamptz NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(), content_sha256 text,
    prev_content_sha256 text, chain_hmac text, chain_seq bigint, ingest_signature text,
    PRIMARY KEY (id, occurred_at)) PARTITION BY RANGE (occurred_at);
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE TABLE audit_export_watermark (name text PRIMARY KEY,
    last_exported_hour timestamptz NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
"""


def _ingest(conn: psycopg.Connection[Any], event: dict[str, Any], ingested_at: dt.datetime) -> None:
    """Insert one event and chain it the way the audit ingestor does (per zone, server JSON)."""
    zone = event["zone_id"]
    head = conn.execute(
        "SELECT COALESCE(content_sha256, ''), COALESCE(chain_seq, 0) FROM audit_events"
        " WHERE zone_id = %s ORDER BY chain_seq DESC NULLS LAST LIMIT 1", (zone,)
    ).fetchone()
    prev, seq = head if head else ("", 0)
    conn.execute(
        "INSERT INTO audit_events (id, zone_id, event_type, request_id, decision,"
        " policy_set_id, evaluation_status, determining_policies_json, diagnostics_json,"
        " metadata_json, occurred_at, ingested_at) VALUES (%s, %s, %s, %s, %s, %s, %s,"
        " %s::jsonb, %s::jsonb, %s::jsonb, %s, %s)",
        (event["id"], zone, event["event_type"], event["request_id"], event["decision"],
         event.get("policy_set_id"), "complete", event["determining"], "[]",
         event.get("metadata"), event["occurred_at"], ingested_at),
    )
    row = conn.execute(
        f"SELECT {AUDIT_HASH_SELECT} FROM audit_events WHERE id = %s", (event["id"],)
    ).fetchone()
    assert row is not None
    content = content_hash_parts([str(v) for v in row[:12]], int(row[12]))
    conn.execute(
        "UPDATE audit_events SET content_sha256 = %s, prev_content_sha256 = NULLIF(%s, ''),"
        " chain_hmac = %s, chain_seq = %s WHERE id = %s",
        (content, prev, chain_hmac(AUDIT_KEY, content, prev), seq + 1, event["id"]),
    )


def _seed_audit(conn: psycopg.Connection[Any]) -> None:
    """Events over four hours and two zones; hour 2 is empty; hour 4 is past the watermark."""
    conn.execute(AUDIT_TABLES)
    offsets = [0, 5, 17, 59.9, 61, 62, 185, 190, 240, 250]  # minutes after H0
    for i, minutes in enumerate(offsets):
        ingested = H0 + dt.timedelta(minutes=minutes)
        event = {
            "id": str(uuid.UUID(int=i + 1)),
            "zone_id": "zone-b" if i % 3 == 0 else "zone-a",
            "event_type": "token_exchange",
            "request_id": f"req-{i}",
            "decision": "Deny" if i % 4 == 1 else "allow",
            "policy_set_id": None if i % 2 else "ps-1",
            "determining": '[{"policy": "p"}]',
            "metadata": None if i % 2 else '{"zeta": 1, "a": "<b>"}',
            "occurred_at": ingested - dt.timedelta(seconds=3, microseconds=i * 1357),
        }
        _ingest(conn, event, ingested)


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """An embedded PostgreSQL for the export tests."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture
def audit_conn(pg: postgres.PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    """A fresh database with ten chained audit events ingested over five hours."""
    name = f"audit_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    with pg.connect(pg.database_name(name)) as conn:
        _seed_audit(conn)
        yield conn
    pg.drop_database(pg.database_name(name))


@pytest.fixture(scope="module")
def s3() -> Iterator[ObjectStoreServer]:
    """An embedded S3 (moto) server."""
    with objectstore.embedded() as server:
        yield server


@pytest.fixture
def bucket(s3: ObjectStoreServer) -> ObjectStore:
    """A fresh versioned bucket."""
    return s3.bucket(f"audit-{uuid.uuid4().hex[:12]}", create=True)


THROUGH = H0 + dt.timedelta(hours=3, minutes=30)


def test_export_writes_one_object_per_hour_with_the_exact_schema(
    audit_conn: psycopg.Connection[Any], bucket: ObjectStore
) -> None:
    """Keys follow the hour layout, empty hours have no object, columns and types are exact."""
    summary = exports.export_hours(audit_conn, bucket, through_hour=THROUGH)
    hours = [H0, H0 + dt.timedelta(hours=1), H0 + dt.timedelta(hours=3)]
    assert [o.key for o in bucket.list("audit/")] == [object_key(h) for h in hours]
    assert object_key(H0 + dt.timedelta(hours=3)) == "audit/2026/06/21/2026-06-21T01.parquet"
    assert (summary.written, summary.skipped, summary.rows) == (3, 0, 8)
    assert summary.watermark == H0 + dt.timedelta(hours=3)
    table = pq.read_table(io.BytesIO(bucket.get(object_key(H0))))
    assert table.schema.equals(arrow_schema())
    assert tuple((f.name, str(f.type)) for f in table.schema) == EXPECTED_SIGNATURE
    rows = table.to_pylist()
    db = {r[0]: r[1:] for r in audit_conn.execute(
        "SELECT id, decision, occurred_at, metadata_json::text, policy_set_id FROM audit_events")}
    for row in rows:
        decision, occurred, metadata, policy_set = db[row["event_id"]]
        assert (row["class_uid"], row["type_uid"]) == (6003, 600301)
        assert (row["metadata_version"], row["product_name"]) == ("1.7.0", "caracal")
        deny = decision.lower() == "deny"
        assert (row["severity_id"], row["activity_id"]) == ((2, 2) if deny else (1, 1))
        micros = (occurred - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
        assert row["time"] == micros // 1000
        assert row["metadata_json"] == (metadata or "")
        assert row["policy_set_id"] == (policy_set or "")
        assert row["determining_policies_json"] == '[{"policy": "p"}]'


def test_rows_per_object_are_the_rows_ingested_in_that_hour(
    audit_conn: psycopg.Connection[Any], bucket: ObjectStore
) -> None:
    """Each object holds exactly its hour's rows by ingested_at, ordered zone_id, chain_seq."""
    exports.export_hours(audit_conn, bucket, through_hour=THROUGH)
    expected: dict[str, list[tuple[str, int, str]]] = {}
    for zone, seq, event_id, hour in audit_conn.execute(
        "SELECT zone_id, chain_seq, id, date_trunc('hour', ingested_at) FROM audit_events"
        " WHERE ingested_at < %s ORDER BY zone_id, chain_seq", (THROUGH.replace(minute=0)
                                                                 + dt.timedelta(hours=1),)
    ):
        expected.setdefault(object_key(hour), []).append((zone, seq, event_id))
    for key, rows in expected.items():
        table = pq.read_table(io.BytesIO(bucket.get(key)))
        got = list(zip(table["zone_id"].to_pylist(), table["chain_seq"].to_pylist(),
                       table["event_id"].to_pylist(), strict=True))
        assert got == rows, key
    index = read_archive(bucket)
    assert index.problems == []
    assert {k: len(v) for k, v in index.event_ids_by_key().items()} == {
        k: len(v) for k, v in expected.items()}


def test_export_never_overwrites_an_existing_object(
    audit_conn: psycopg.Connection[Any], bucket: ObjectStore
) -> None:
    """If-None-Match: a present key is left alone, a second run writes nothing new."""
    sentinel = b"written earlier by another leader"
    bucket.put(object_key(H0), sentinel)
    first = exports.export_hours(audit_conn, bucket, through_hour=THROUGH)
    assert next((o.key, o.written) for o in first.objects) == (object_key(H0), False)
    second = exports.export_hours(audit_conn, bucket)  # through the stored watermark
    assert (second.written, second.skipped) == (0, 3)
    assert bucket.get(object_key(H0)) == sentinel
    assert {o.key: o.versions for o in bucket.list("audit/")} == {
        o.key: 1 for o in second.objects}


def test_watermark_bounds_the_export_and_is_saved(
    audit_conn: psycopg.Connection[Any], bucket: ObjectStore
) -> None:
    """Rows ingested after the watermark hour are not exported; the watermark never moves back."""
    exports.export_hours(audit_conn, bucket, through_hour=H0 + dt.timedelta(minutes=10))
    assert [o.key for o in bucket.list("audit/")] == [object_key(H0)]
    exports.export_hours(audit_conn, bucket, through_hour=THROUGH)
    exports.export_hours(audit_conn, bucket, through_hour=H0)
    row = audit_conn.execute(
        "SELECT last_exported_hour FROM audit_export_watermark WHERE name = 'parquet-hourly'"
    ).fetchone()
    assert row is not None
    assert row[0] == H0 + dt.timedelta(hours=3)
    assert len(bucket.list("audit/")) == 3
    later = exports.export_hours(audit_conn, bucket, through_hour=H0 + dt.timedelta(hours=5),
                                 save_watermark=False)
    assert later.written == 1
    row = audit_conn.execute(
        "SELECT last_exported_hour FROM audit_export_watermark WHERE name = 'parquet-hourly'"
    ).fetchone()
    assert row == (H0 + dt.timedelta(hours=3),)


def test_export_rows_matches_export_hours(
    audit_conn: psycopg.Connection[Any], s3: ObjectStoreServer
) -> None:
    """Exporting rows held in memory gives the same objects as exporting from the database."""
    from_db = s3.bucket(f"audit-{uuid.uuid4().hex[:12]}", create=True)
    from_rows = s3.bucket(f"audit-{uuid.uuid4().hex[:12]}", create=True)
    exports.export_hours(audit_conn, from_db, through_hour=THROUGH)
    cur = audit_conn.execute(
        "SELECT id, zone_id, event_type, request_id, decision, policy_set_id,"
        " policy_set_version_id, manifest_sha, evaluation_status,"
        " determining_policies_json::text AS determining_policies_json,"
        " diagnostics_json::text AS diagnostics_json, metadata_json::text AS metadata_json,"
        " occurred_at, ingested_at, content_sha256, chain_hmac, chain_seq FROM audit_events"
    )
    names = [d.name for d in cur.description or ()]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    summary = exports.export_rows(rows, from_rows, through_hour=THROUGH)
    assert summary.written == 3
    for info in from_db.list("audit/"):
        a = pq.read_table(io.BytesIO(from_db.get(info.key)))
        b = pq.read_table(io.BytesIO(from_rows.get(info.key)))
        assert a.equals(b), info.key


def test_archive_chain_verifies_and_detects_an_altered_chain_hmac(
    audit_conn: psycopg.Connection[Any], s3: ObjectStoreServer
) -> None:
    """The chain over all objects holds; one altered chain_hmac is named by zone and seq."""
    good = s3.bucket(f"audit-{uuid.uuid4().hex[:12]}", create=True)
    exports.export_hours(audit_conn, good, through_hour=H0 + dt.timedelta(hours=5))
    index = read_archive(good)
    assert index.problems == []
    assert index.duplicates == {}
    assert sum(o.rows for o in index.objects) == 10
    assert all(o.schema_ok and o.versions == 1 for o in index.objects)
    assert verify_archive_chain(index, AUDIT_KEY, require_genesis=True) == []
    assert verify_archive_chain(index, secrets.token_bytes(32))  # a wrong key fails every row

    tampered = s3.bucket(f"audit-{uuid.uuid4().hex[:12]}", create=True)
    target = object_key(H0 + dt.timedelta(hours=1))
    for info in good.list("audit/"):
        data = good.get(info.key)
        if info.key == target:
            table = pq.read_table(io.BytesIO(data))
            hmacs = table["chain_hmac"].to_pylist()
            hmacs[0] = "0" * 64
            column = table.schema.get_field_index("chain_hmac")
            table = table.set_column(column, table.schema.field(column),
                                     pa.array(hmacs, pa.string()))
            sink = io.BytesIO()
            pq.write_table(table, sink)
            data = sink.getvalue()
            altered = (table["zone_id"][0].as_py(), table["chain_seq"][0].as_py())
        tampered.put(info.key, data)
    problems = verify_archive_chain(read_archive(tampered), AUDIT_KEY)
    assert len(problems) == 1
    assert problems[0].startswith(f"zone {altered[0]} chain_seq {altered[1]} ")


def test_archive_gaps_and_duplicates_are_reported(
    audit_conn: psycopg.Connection[Any], bucket: ObjectStore
) -> None:
    """A missing middle hour leaves unverifiable links; a copied row is a duplicate."""
    exports.export_hours(audit_conn, bucket, through_hour=H0 + dt.timedelta(hours=5))
    index = read_archive(bucket)
    middle = object_key(H0 + dt.timedelta(hours=1))
    pruned = dataclasses.replace(
        index,
        rows={k: r for k, r in index.rows.items() if r.key != middle},
        objects=[o for o in index.objects if o.key != middle],
    )
    gaps = verify_archive_chain(pruned, AUDIT_KEY)
    assert gaps
    assert all("missing from the archive" in p for p in gaps)
    bucket.put("audit/2026/06/20/2026-06-20T22-copy.parquet", bucket.get(object_key(H0)))
    again = read_archive(bucket)
    assert any("key is not audit/" in p for p in again.problems)
    assert again.duplicates
    assert any("exported more than once" in p for p in verify_archive_chain(again, AUDIT_KEY))


def test_export_of_a_database_with_no_watermark_needs_an_hour(
    audit_conn: psycopg.Connection[Any], bucket: ObjectStore
) -> None:
    """Without a stored watermark the caller must say through which hour to export."""
    with pytest.raises(LookupError, match="parquet-hourly"):
        exports.export_hours(audit_conn, bucket)
    assert bucket.list("audit/") == []


def test_generated_database_exports_match_the_rows_and_chain(
    pg: postgres.PostgresServer, bucket: ObjectStore
) -> None:
    """Export of the generator's database: objects by ingested_at hour, chain verifies (A5.2/3)."""
    generator = pytest.importorskip("caracal_restore.reference.generator")
    from caracal_restore.reference.secrets import generate_secrets

    values = generate_secrets()
    volume = generator.Volume(zones=2, applications_per_zone=2, resources_per_zone=2,
                              sessions_per_zone=6, agents_per_zone=4, edges_per_zone=3,
                              audit_events=150, admin_audit_events=5, months=2)
    data = generator.build_source_database(
        pg, seed=7, volume=volume, secrets=values,
        now=dt.datetime(2026, 6, 21, 12, 34, 56, tzinfo=dt.UTC),
        canary_upstream_url="http://127.0.0.1:9/canary",
    )
    assert data.database is not None
    try:
        with pg.connect(data.database) as conn:
            summary = exports.export_hours(conn, bucket)
            assert summary.watermark == data.export_watermark
            db = {(r[0], r[1]): r[2:] for r in conn.execute(
                "SELECT zone_id, chain_seq, id, content_sha256, chain_hmac, decision,"
                " event_type, request_id, object_key_hour FROM (SELECT *,"
                " date_trunc('hour', ingested_at) AS object_key_hour FROM audit_events) t"
                " WHERE ingested_at < %s", (data.export_watermark + dt.timedelta(hours=1),))}
    finally:
        pg.drop_database(data.database)
    index = read_archive(bucket)
    assert index.problems == []
    assert index.rows.keys() == db.keys()
    for ident, row in index.rows.items():
        event_id, content, link, decision, event_type, request_id, hour = db[ident]
        assert (row.event_id, row.content_sha256, row.chain_hmac) == (event_id, content, link)
        assert (row.decision, row.event_type, row.request_id) == (decision, event_type,
                                                                  request_id or "")
        assert row.key == object_key(hour)
    assert verify_archive_chain(index, bytes.fromhex(values["auditHmacKey"])) == []


def test_archive_chain_without_a_key_requires_empty_hmacs() -> None:
    """With no AUDIT_HMAC_KEY the writer stores chain_hmac '': such rows verify, a row that
    carries a value does not (and a link is still required: a gap is reported)."""
    def row(ident: str, mac: str) -> ArchiveRow:
        return ArchiveRow(ident, f"c-{ident}", mac, 0, "allow", "token_exchange", "", "k")

    index = ArchiveIndex(rows={("z", 1): row("a", ""), ("z", 2): row("b", ""),
                               ("z", 4): row("d", "")})
    assert verify_archive_chain(index, None) == [
        "zone z: chain_seq 3..3 missing from the archive; link of chain_seq 4 (k) cannot be "
        "verified"]
    index.rows[("z", 2)] = row("b", "f" * 64)
    problems = verify_archive_chain(index, b"")
    assert [p for p in problems if "does not match" in p] == [
        "zone z chain_seq 2 (event b, k): chain_hmac does not match HMAC(content_sha256 | "
        "previous content_sha256)"]

"""Fault injection for the offline audit chain verifier (caracal_restore.audit_chain).

A module fixture writes a small Caracal-shaped evidence database (3 zones, monthly partitions
plus the default one, a late event, unsigned dev-mode rows, an admin chain); every test clones
it with ``CREATE DATABASE … TEMPLATE``, injects exactly one defect and asserts the verifier
names that defect and nothing else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caracal_restore import chainhash
from caracal_restore.audit_chain import (
    BENIGN,
    CAUSES,
    KINDS,
    UNVERIFIED,
    VERIFIED,
    ArchivedEvent,
    Finding,
    archive_from_parquet,
    audit_partitions,
    chain_heads,
    verify_admin_chain,
    verify_audit_chain,
)
from caracal_restore.environments import postgres
from tests.harness import Clone, template_copies

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
ZONES = ("zone-alpha", "zone-beta", "zone-gamma")
ROWS_PER_ZONE = 100
UTC = dt.UTC

SCHEMA = """
CREATE TABLE audit_events (
    id text NOT NULL, zone_id text NOT NULL, event_type text NOT NULL, request_id text,
    decision text, policy_set_id text, policy_set_version_id text, manifest_sha text,
    evaluation_status text, determining_policies_json jsonb, diagnostics_json jsonb,
    metadata_json jsonb, occurred_at timestamptz NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now(), content_sha256 text,
    prev_content_sha256 text, chain_hmac text, chain_seq bigint, ingest_signature text,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE TABLE audit_events_y2026m01 PARTITION OF audit_events
    FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE audit_events_y2026m02 PARTITION OF audit_events
    FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
CREATE TABLE audit_events_y2026m03 PARTITION OF audit_events
    FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
CREATE TABLE audit_events_y2026m04 PARTITION OF audit_events
    FOR VALUES FROM ('2026-04-01') TO ('2026-05-01');
CREATE INDEX audit_events_zone_chain ON audit_events (zone_id, chain_seq DESC);
CREATE TABLE audit_chain_rehash (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1), completed_at timestamptz DEFAULT now()
);
CREATE TABLE admin_audit_events (
    id text PRIMARY KEY, request_id text NOT NULL, actor_id text, actor_name text,
    actor_scope text, action text NOT NULL, method text NOT NULL, path text NOT NULL,
    zone_id text, entity_type text, entity_id text, status_code integer NOT NULL,
    payload_json jsonb, occurred_at timestamptz NOT NULL DEFAULT now(), content_sha256 text,
    prev_content_sha256 text, chain_hmac text, chain_seq bigint
);
CREATE INDEX admin_audit_events_chain ON admin_audit_events (zone_id, chain_seq DESC);
"""

AUDIT_COLUMNS = (
    "id", "zone_id", "event_type", "request_id", "decision", "policy_set_id",
    "policy_set_version_id", "manifest_sha", "evaluation_status", "determining_policies_json",
    "diagnostics_json", "metadata_json", "occurred_at", "content_sha256", "prev_content_sha256",
    "chain_hmac", "chain_seq",
)

JSON_VARIANTS = (
    None,
    '{"zeta":1,"a":[1,2],"bb":{"y":"é","x":null}}',
    '[{"id":"pol-7","effect":"allow","rule":{"path":"data.caracal.authz","line":12}}]',
    '{"session_id":"s-1","agent_labels":{"team":"żółw","tier":"ß"},"note":"日本語 ✓"}',
    '{"nested":{"deeper":{"deepest":["α",{"k":"v"}]}},"n":-1.5e3,"t":true}',
)


# ------------------------------------------------------------------------------ writer


@dataclasses.dataclass(frozen=True)
class Event:
    """One audit event as a producer sends it (JSON as the producer's text)."""

    zone_id: str
    seq: int
    occurred_at: dt.datetime
    signed: bool
    fields: tuple[str | None, ...]  # event_type .. metadata_json (10 values)

    @property
    def id(self) -> str:
        """Deterministic event id."""
        return f"evt-{self.zone_id}-{self.seq:07d}"


class Canon:
    """PostgreSQL's jsonb::text of producer JSON, cached (what the writer hashes)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.cache: dict[str, str] = {}

    def __call__(self, text: str | None) -> str | None:
        """Canonical text of one JSON value (None stays None)."""
        if text is None:
            return None
        if text not in self.cache:
            row = self.conn.execute("SELECT %s::jsonb::text", (text,)).fetchone()
            assert row is not None
            self.cache[text] = row[0]
        return self.cache[text]


def chained_rows(events: Iterable[Event], canon: Canon, key: bytes) -> Iterator[tuple[Any, ...]]:
    """Rows of audit_events exactly as Caracal's ingestor would store them (per-zone chains)."""
    prev: dict[str, str | None] = {}
    for e in events:
        et, rid, dec, ps, psv, msha, status, dp, diag, meta = (
            e.fields[0], *e.fields[1:7], *(canon(j) for j in e.fields[7:10])
        )
        content = chainhash.content_hash(
            id=e.id, zone_id=e.zone_id, event_type=et or "", request_id=rid, decision=dec,
            policy_set_id=ps, policy_set_version_id=psv, manifest_sha=msha,
            evaluation_status=status, determining_policies_json=dp, diagnostics_json=diag,
            metadata_json=meta, occurred_at=e.occurred_at,
        )
        before = prev.get(e.zone_id)
        mac = chainhash.chain_hmac(key if e.signed else None, content, before)
        prev[e.zone_id] = content
        yield (e.id, e.zone_id, et, rid, dec, ps, psv, msha, status, dp, diag, meta,
               e.occurred_at, content, before, mac, e.seq)


def write_rows(conn: psycopg.Connection[Any], rows: Iterator[tuple[Any, ...]]) -> int:
    """COPY rows into audit_events; returns how many."""
    n = 0
    with conn.cursor() as cur, cur.copy(
        f"COPY audit_events ({', '.join(AUDIT_COLUMNS)}) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def make_fields(rng: random.Random, i: int) -> tuple[str | None, ...]:
    """Producer fields of one event: NULLs, empty strings, nested and non-ASCII JSON."""
    return (
        rng.choice(("token_exchange", "gateway_resource_request", "step_up_issued")),
        rng.choice((None, "", f"req-{i}")),
        rng.choice(("allow", "deny", "pending")),
        rng.choice((None, "ps-1")),
        rng.choice((None, "psv-2")),
        rng.choice((None, "", "ab" * 32)),
        "ok",
        *(rng.choice(JSON_VARIANTS) for _ in range(3)),
    )


def base_events() -> list[Event]:
    """3 zones x 100 events from January to April 2026, a late event and May rows."""
    rng = random.Random(20260621)
    start = dt.datetime(2026, 1, 3, tzinfo=UTC)
    span = dt.timedelta(days=115) / ROWS_PER_ZONE
    events = []
    for z, zone in enumerate(ZONES):
        for seq in range(1, ROWS_PER_ZONE + 1):
            at = start + span * (seq - 1) + dt.timedelta(microseconds=rng.randrange(10**9))
            if zone == "zone-gamma" and seq == 90:  # drained late from a replay file
                at = dt.datetime(2026, 2, 14, 9, 30, 1, 123456, tzinfo=UTC)
            if zone == "zone-beta" and seq > ROWS_PER_ZONE - 2:  # no partition: default
                at = dt.datetime(2026, 5, 2, 8, seq % 60, 0, 654321, tzinfo=UTC)
            signed = not (zone == "zone-gamma" and seq <= 10)  # dev mode: no key yet
            events.append(Event(zone, seq, at, signed, make_fields(rng, z * 1000 + seq)))
    return events


# ------------------------------------------------------------------- admin chain writer


def iso_ms(at: dt.datetime) -> str:
    """JavaScript toISOString()."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def admin_rows() -> Iterator[tuple[Any, ...]]:
    """Admin chains as the API (signed, payload) and Coordinator (unsigned, no payload) write."""
    at = dt.datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    plans: dict[str | None, list[dict[str, Any] | None]] = {
        None: [{"rls_mode": "control_plane_wildcard", "rls_zone_guc": "*"}] * 4,
        "zone-alpha": [
            {"rls_mode": "zone_scoped", "rls_zone_guc": "zone-alpha", "change_kind": "update",
             "changed_fields": ["name", "scopes"]},
            None,
            None,
            {"rls_mode": "zone_scoped", "rls_zone_guc": "zone-alpha", "operator": "ops-é"},
            {"b_long_key": 1, "a": "unknown writer order"},  # not recomputable from jsonb
            None,
        ],
    }
    for zone, payloads in plans.items():
        prev = None
        for seq, payload in enumerate(payloads, 1):
            at += dt.timedelta(milliseconds=1234)
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False) if payload else ""
            fields = [f"adm-{zone}-{seq}", f"req-{seq}", "actor-1", "Ops Ω", "admin",
                      f"action-{seq}", "POST", "/v1/things", zone or "", "thing", f"t-{seq}",
                      "200", text, iso_ms(at)]
            content = chainhash.admin_content_hash(fields)
            mac = chainhash.chain_hmac(KEY, content, prev) if payload else None
            yield (*fields[:8], zone, *fields[9:11], 200, text or None, at, content, prev, mac,
                   seq)
            prev = content


# ---------------------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class Base:
    """The template database and what the writer knows about it."""

    name: str
    rows: int
    heads: dict[str, tuple[int, str]]
    archive: Path


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """A throwaway PostgreSQL 18 on loopback (action: initdb + start)."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture(scope="module")
def base(pg: postgres.PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Base:
    """The evidence database every test clones (action: write chains, export Parquet)."""
    pg.create_database("chain_base")
    events = base_events()
    with pg.connect("chain_base") as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO audit_chain_rehash DEFAULT VALUES")
        rows = list(chained_rows(events, Canon(conn), KEY))
        write_rows(conn, iter(rows))
        with conn.cursor() as cur, cur.copy(
            "COPY admin_audit_events (id, request_id, actor_id, actor_name, actor_scope, action,"
            " method, path, zone_id, entity_type, entity_id, status_code, payload_json,"
            " occurred_at, content_sha256, prev_content_sha256, chain_hmac, chain_seq)"
            " FROM STDIN"
        ) as copy:
            for admin in admin_rows():
                copy.write_row(admin)
    heads = {}
    for row in rows:
        heads[row[1]] = (row[16], row[13])
    archive = tmp_path_factory.mktemp("export") / "2026-04-30T23.parquet"
    ms = [int(r[12].timestamp() * 1000) for r in rows]
    pq.write_table(pa.table({
        "class_uid": pa.array([6003] * len(rows), pa.int32()),
        "time": pa.array(ms, pa.int64()),
        "zone_id": [r[1] for r in rows],
        "event_id": [r[0] for r in rows],
        "content_sha256": [r[13] for r in rows],
        "chain_hmac": [r[15] for r in rows],
        "chain_seq": pa.array([r[16] for r in rows], pa.int64()),
    }), archive)
    return Base("chain_base", len(rows), heads, archive)


@pytest.fixture
def clone(pg: postgres.PostgresServer, base: Base) -> Iterator[Clone]:
    """Fresh copies of the base database for one defect each (action: CREATE … TEMPLATE)."""
    with template_copies(pg, base.name, "chain") as make:
        yield make


def forge(conn: psycopg.Connection[Any], zone: str, seq: int, key: bytes, *,
          decision: str, new_id: str | None = None) -> None:
    """Rewrite (or, with new_id, duplicate) a row with a valid content hash and key's HMAC."""
    row = conn.execute(
        f"SELECT {', '.join(AUDIT_COLUMNS[:9])}, determining_policies_json::text,"
        " diagnostics_json::text, metadata_json::text, occurred_at, prev_content_sha256"
        " FROM audit_events WHERE zone_id = %s AND chain_seq = %s", (zone, seq),
    ).fetchone()
    assert row is not None
    values = dict(zip(AUDIT_COLUMNS[:13], row[:13], strict=True))
    old_id, prev = values["id"], row[13]
    values.update(decision=decision, id=new_id or old_id)
    content = chainhash.content_hash(**values)
    mac = chainhash.chain_hmac(key, content, prev)
    if new_id:
        conn.execute(
            "INSERT INTO audit_events (id, zone_id, event_type, request_id, decision,"
            " policy_set_id, policy_set_version_id, manifest_sha, evaluation_status,"
            " determining_policies_json, diagnostics_json, metadata_json, occurred_at,"
            " content_sha256, prev_content_sha256, chain_hmac, chain_seq)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (*values.values(), content, prev, mac, seq),
        )
        return
    conn.execute(
        "UPDATE audit_events SET decision = %s, content_sha256 = %s, chain_hmac = %s"
        " WHERE zone_id = %s AND chain_seq = %s", (decision, content, mac, zone, seq),
    )


def kinds(report: Any) -> dict[str, int]:
    """Finding counts of a report (only non-zero)."""
    return dict(report.counts)


# ------------------------------------------------------------------------- audit chain


def test_clean_restore_has_no_findings(clone: Clone, base: Base) -> None:
    """A faithful copy verifies with the key and the backup's heads: zero findings."""
    conn = clone()
    report = verify_audit_chain(conn, hmac_key=KEY, expected_heads=base.heads)
    assert kinds(report) == {}, report.summary()
    assert report.ok
    assert report.causes() == set()
    assert report.rows_checked == base.rows
    assert report.hmac_checked
    assert sum(z.unsigned_rows for z in report.zones.values()) == 10  # dev-mode rows
    assert sum(z.hmac_checked for z in report.zones.values()) == base.rows - 10
    assert {z: (s.head_seq, s.head_sha256) for z, s in report.zones.items()} == base.heads
    assert {s.first_seq for s in report.zones.values()} == {1}
    assert chain_heads(conn) == base.heads
    assert report.events_per_s > 0


def test_clean_restore_without_key_skips_hmac(clone: Clone, base: Base) -> None:
    """Without AUDIT_HMAC_KEY the links and contents are still verified; HMACs are not."""
    report = verify_audit_chain(clone(), batch_size=7)
    assert kinds(report) == {}
    assert not report.hmac_checked
    assert report.rows_checked == base.rows


def test_read_only_connection_and_open_transaction(pg: postgres.PostgresServer,
                                                   clone: Clone) -> None:
    """The verifier only reads: a read-only session works, so does a caller's transaction."""
    name = clone().info.dbname
    with pg.connect(name, options="-c default_transaction_read_only=on") as conn:
        assert verify_audit_chain(conn, hmac_key=KEY).ok
    with pg.connect(name, autocommit=False) as conn:
        conn.execute("SELECT 1")
        assert verify_audit_chain(conn, hmac_key=KEY).ok
        conn.rollback()


def test_deleted_row_is_one_gap(clone: Clone) -> None:
    """A row deleted mid-chain is one gap; the broken link after it is not counted twice."""
    conn = clone()
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'zone-alpha' AND chain_seq = 50")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"gap": 1}, report.summary()
    assert report.findings == (report.findings[0],)
    assert (report.findings[0].zone_id, report.findings[0].chain_seq) == ("zone-alpha", 50)
    assert report.causes() == {"missing audit rows"}
    assert report.zones["zone-alpha"].missing_rows == 1
    assert not report.ok


def test_edited_decision_is_content_mismatch(clone: Clone) -> None:
    """An edited ``decision`` changes the content hash and nothing else."""
    conn = clone()
    conn.execute("UPDATE audit_events SET decision = 'allow-edited'"
                 " WHERE zone_id = 'zone-beta' AND chain_seq = 20")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"content_mismatch": 1}, report.summary()
    assert report.findings[0].chain_seq == 20
    assert report.causes() == {"tampered rows"}


def test_wrong_key_is_hmac_mismatch_all(clone: Clone) -> None:
    """A wrong AUDIT_HMAC_KEY fails every signed row and is diagnosed as the key, once."""
    report = verify_audit_chain(clone(), hmac_key=OTHER_KEY.hex())
    assert kinds(report) == {"hmac_mismatch_all": 1}, report.summary()
    assert report.causes() == {"wrong AUDIT_HMAC_KEY"}


def test_forged_head_row_is_hmac_mismatch_some(clone: Clone) -> None:
    """A head row re-hashed and re-signed with another key fails only its HMAC."""
    conn = clone()
    forge(conn, "zone-alpha", ROWS_PER_ZONE, OTHER_KEY, decision="allow")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"hmac_mismatch_some": 1}, report.summary()
    assert report.findings[0].chain_seq == ROWS_PER_ZONE
    assert report.causes() == {"tampered rows"}


def test_forged_middle_row_also_breaks_the_next_link(clone: Clone) -> None:
    """Forging a middle row cannot fix its successor's prev: HMAC failure plus a link break."""
    conn = clone()
    forge(conn, "zone-beta", 33, OTHER_KEY, decision="allow")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"hmac_mismatch_some": 1, "link_break": 1}, report.summary()
    assert [f.chain_seq for f in report.findings] == [34, 33]


def test_partial_restore_is_truncated_head(clone: Clone, base: Base) -> None:
    """Rows missing at the head are invisible to links but not to the backup's heads."""
    conn = clone()
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'zone-beta' AND chain_seq > 60")
    assert verify_audit_chain(conn, hmac_key=KEY).ok  # no fingerprint: nothing to see
    report = verify_audit_chain(conn, hmac_key=KEY, expected_heads=base.heads)
    assert kinds(report) == {"truncated_head": 1}, report.summary()
    assert report.findings[0].zone_id == "zone-beta"
    assert report.causes() == {"partial restore"}


def test_absent_zone_is_truncated_head(clone: Clone, base: Base) -> None:
    """A zone in the backup's heads with no restored rows is a partial restore."""
    conn = clone()
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'zone-gamma'")
    report = verify_audit_chain(conn, hmac_key=KEY, expected_heads=base.heads)
    assert kinds(report) == {"truncated_head": 1}, report.summary()
    assert "absent" in report.findings[0].detail


def test_rows_after_the_backup_are_beyond_head(clone: Clone, base: Base) -> None:
    """A restore holding more than the backup (services ran on it) is not the backup."""
    conn = clone()
    heads = dict(base.heads)
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'zone-alpha' AND chain_seq > 90")
    heads["zone-alpha"] = chain_heads(conn)["zone-alpha"]
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'zone-alpha' AND chain_seq > 80")
    report = verify_audit_chain(conn, hmac_key=KEY, expected_heads=heads)
    assert kinds(report) == {"truncated_head": 1}
    report = verify_audit_chain(clone(), hmac_key=KEY, expected_heads=heads)
    assert kinds(report) == {"beyond_head": 1}, report.summary()


def test_dropped_oldest_partition_is_retention_only(clone: Clone) -> None:
    """Dropping the oldest month leaves prefix holes consistent with retention, unverified."""
    conn = clone()
    conn.execute("DROP TABLE audit_events_y2026m01")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"retention_hole": 3}, report.summary()
    assert report.ok
    assert report.retention == {UNVERIFIED: 3}
    assert all(s.first_seq and s.first_seq > 1 for s in report.zones.values())
    assert all(UNVERIFIED in f.detail for f in report.findings)
    assert report.causes() == {"expected retention"}
    assert audit_partitions(conn)[0].name == "audit_events_y2026m02"


def test_late_event_hole_needs_the_archive(clone: Clone, base: Base) -> None:
    """A dropped month can hold a late event mid-chain: a gap without archive, verified with."""
    conn = clone()
    conn.execute("DROP TABLE audit_events_y2026m01")
    conn.execute("DROP TABLE audit_events_y2026m02")
    blind = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(blind) == {"retention_hole": 3, "gap": 1}, blind.summary()
    assert [(f.zone_id, f.chain_seq) for f in blind.of_kind("gap")] == [("zone-gamma", 90)]
    archive = archive_from_parquet([base.archive])
    report = verify_audit_chain(conn, hmac_key=KEY, archive=archive, expected_heads=base.heads)
    assert kinds(report) == {"retention_hole": 4}, report.summary()
    assert report.retention == {VERIFIED: 4}
    assert report.ok


def test_archive_that_does_not_link_is_a_gap(clone: Clone, base: Base) -> None:
    """An archived copy whose hash the surviving row does not link to proves nothing."""
    conn = clone()
    conn.execute("DROP TABLE audit_events_y2026m01, audit_events_y2026m02")
    archive = archive_from_parquet([base.archive])
    late = archive[("zone-gamma", 90)]
    archive[("zone-gamma", 90)] = dataclasses.replace(late, content_sha256="0" * 64)
    report = verify_audit_chain(conn, archive=archive)
    assert kinds(report) == {"retention_hole": 3, "gap": 1}, report.summary()
    assert "does not link" in report.of_kind("gap")[0].detail
    keyed = verify_audit_chain(conn, hmac_key=KEY, archive=archive)
    assert kinds(keyed) == {"retention_hole": 3, "gap": 1, "hmac_mismatch_some": 1}


def test_archive_differs_from_restored_row(clone: Clone, base: Base) -> None:
    """A surviving row must equal its exported copy."""
    archive = archive_from_parquet([base.archive])
    archive[("zone-beta", 5)] = dataclasses.replace(archive[("zone-beta", 5)], chain_hmac="x")
    report = verify_audit_chain(clone(), hmac_key=KEY, archive=archive)
    assert kinds(report) == {"archive_mismatch": 1}, report.summary()


def test_deleted_rows_in_a_live_partition_are_not_retention(clone: Clone, base: Base) -> None:
    """Archived rows whose month still has a partition were deleted, not retained out."""
    conn = clone()
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'zone-alpha' AND chain_seq < 5")
    report = verify_audit_chain(conn, archive=archive_from_parquet([base.archive]))
    assert kinds(report) == {"gap": 1}, report.summary()
    assert "still exists" in report.findings[0].detail


def test_duplicated_seq(clone: Clone) -> None:
    """A second, otherwise valid row with the same chain_seq is a duplicate and nothing else."""
    conn = clone()
    forge(conn, "zone-alpha", 30, KEY, decision="deny", new_id="evt-duplicate")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"duplicate_seq": 1}, report.summary()
    assert report.findings[0].chain_seq == 30
    assert report.rows_checked == 301


def test_swapped_seq_is_reordered(clone: Clone) -> None:
    """Two rows whose chain_seq were swapped link out of order: reordered, not missing."""
    conn = clone()
    conn.execute("UPDATE audit_events SET chain_seq = CASE chain_seq WHEN 40 THEN 41 ELSE 40 END"
                 " WHERE zone_id = 'zone-alpha' AND chain_seq IN (40, 41)")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert set(kinds(report)) == {"reordered_seq"}, report.summary()
    assert {f.chain_seq for f in report.findings} <= {40, 41, 42}


def test_null_seq_is_unsequenced(clone: Clone) -> None:
    """A row taken out of the chain numbering is reported, and leaves a gap behind."""
    conn = clone()
    conn.execute("UPDATE audit_events SET chain_seq = NULL"
                 " WHERE zone_id = 'zone-beta' AND chain_seq = 10")
    report = verify_audit_chain(conn)
    assert kinds(report) == {"unsequenced": 1, "gap": 1}, report.summary()


def test_missing_marker_row(clone: Clone) -> None:
    """An empty audit_chain_rehash on a populated table would let Audit launder the chains."""
    conn = clone()
    conn.execute("DELETE FROM audit_chain_rehash")
    report = verify_audit_chain(conn, hmac_key=KEY)
    assert kinds(report) == {"marker_missing": 1}, report.summary()
    assert report.causes() == {"missing rehash marker"}


def test_missing_marker_table(clone: Clone) -> None:
    """A restore without the audit_chain_rehash table is flagged."""
    conn = clone()
    conn.execute("DROP TABLE audit_chain_rehash")
    assert kinds(verify_audit_chain(conn, hmac_key=KEY)) == {"marker_table_missing": 1}


def test_missing_audit_table(clone: Clone) -> None:
    """No audit_events at all is a partial restore, not a crash."""
    conn = clone()
    conn.execute("DROP TABLE audit_events")
    report = verify_audit_chain(conn)
    assert kinds(report) == {"table_missing": 1}
    assert report.causes() == {"partial restore"}


def test_zone_filter_and_example_cap(clone: Clone) -> None:
    """Only the zones asked for are read; findings keep at most max_examples each."""
    conn = clone()
    conn.execute("UPDATE audit_events SET decision = 'x'")
    report = verify_audit_chain(conn, zones={"zone-alpha"}, max_examples=5)
    assert list(report.zones) == ["zone-alpha"]
    assert report.rows_checked == ROWS_PER_ZONE
    assert report.counts == {"content_mismatch": ROWS_PER_ZONE}
    assert len(report.findings) == 5
    assert report.as_dict()["counts"] == {"content_mismatch": ROWS_PER_ZONE}


def test_causes_cover_every_kind() -> None:
    """Every finding kind maps to a symptom-table cause, and only retention is benign."""
    assert set(CAUSES) == set(KINDS)
    assert {"retention_hole"} == BENIGN
    assert {CAUSES[k] for k in ("gap", "hmac_mismatch_all", "truncated_head")} == {
        "missing audit rows", "wrong AUDIT_HMAC_KEY", "partial restore"}
    finding = Finding("gap", "z", 3, "d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.kind = "x"  # type: ignore[misc]
    assert finding.cause == "missing audit rows"
    assert ArchivedEvent("e", "c", "h", 1).time_ms == 1


# ------------------------------------------------------------------------- admin chain


# RC-2.4 takes the verifier's HMAC counts only where they are its own reading's (every row,
# the same key, none failing); any other case reads again. (defect, the verifier's key)
_HMAC_CASES = {
    "clean": ("", KEY),
    "another key": ("", OTHER_KEY),
    "forged row": ("forge", KEY),
    "unsigned rows": ("UPDATE audit_events SET chain_hmac = NULL WHERE chain_seq < 5", KEY),
    "empty signatures": ("UPDATE audit_events SET chain_hmac = '' WHERE chain_seq = 7", KEY),
    "NULL chain_seq": ("UPDATE audit_events SET chain_seq = NULL"
                       " WHERE zone_id = 'zone-beta' AND chain_seq = 10", KEY),
    "escaped field": ("UPDATE audit_events SET request_id = E'a\\tb'"
                      " WHERE zone_id = 'zone-alpha' AND chain_seq = 3", KEY),
}


@pytest.mark.parametrize("case", list(_HMAC_CASES))
def test_chain_hmac_counts_stand_for_rc_2_4_only_when_they_are_its_reading(
        clone: Clone, case: str) -> None:
    """The verifier's counts equal RC-2.4's own reading, or are not used (None)."""
    from caracal_restore.inspect import secrets as inspect_secrets

    defect, verifier_key = _HMAC_CASES[case]
    conn = clone()
    if defect == "forge":
        forge(conn, "zone-alpha", 30, OTHER_KEY, decision="allow")
    elif defect:
        conn.execute(defect)
    report = verify_audit_chain(conn, hmac_key=verifier_key)
    rows = inspect_secrets.table_rows(conn, "audit_events")
    derived = inspect_secrets.chain_hmacs_as_verified(report, KEY, rows)
    read = inspect_secrets.verify_chain_hmacs(conn, "audit_events", KEY)
    if case in ("another key", "forged row"):
        assert derived is None
    else:
        assert derived == dataclasses.replace(read, failures=()), case
        # A row the verifier did not read (rows counted apart from it): not its reading.
        assert inspect_secrets.chain_hmacs_as_verified(report, KEY, rows + 1) is None
    assert derived is None or read.failed == 0
    assert inspect_secrets.chain_hmacs_as_verified(
        verify_audit_chain(conn), KEY, rows) is None  # no key: no HMAC was recomputed


def test_admin_chain_clean(clone: Clone) -> None:
    """Admin chains verify: links always, HMAC where signed, content where recomputable."""
    report = verify_admin_chain(clone(), KEY)
    assert kinds(report) == {}, report.summary()
    assert set(report.zones) == {None, "zone-alpha"}
    assert report.rows_checked == 10
    assert report.zones["zone-alpha"].content_not_recomputable == 1
    assert report.zones["zone-alpha"].unsigned_rows == 3
    assert report.zones[None].hmac_checked == 4
    assert any("not recomputable" in note for note in report.notes)


def test_admin_chain_defects(clone: Clone) -> None:
    """Edited coordinator row, deleted global row and wrong key are each diagnosed."""
    conn = clone()
    conn.execute("UPDATE admin_audit_events SET action = 'edited'"
                 " WHERE zone_id = 'zone-alpha' AND chain_seq = 2")
    assert kinds(verify_admin_chain(conn, KEY)) == {"content_mismatch": 1}
    conn = clone()
    conn.execute("DELETE FROM admin_audit_events WHERE zone_id IS NULL AND chain_seq = 2")
    report = verify_admin_chain(conn, KEY)
    assert kinds(report) == {"gap": 1}, report.summary()
    assert (report.findings[0].zone_id, report.findings[0].chain_seq) == (None, 2)
    assert kinds(verify_admin_chain(clone(), OTHER_KEY)) == {"hmac_mismatch_all": 1}


def test_admin_payload_rows_are_only_best_effort(clone: Clone) -> None:
    """FACTS-1.0 §5: an edited payload cannot be told from JS key order; a sub-ms time can."""
    conn = clone()
    conn.execute("UPDATE admin_audit_events SET payload_json = payload_json || '{\"x\": 1}'"
                 " WHERE zone_id = 'zone-alpha' AND chain_seq = 1")
    report = verify_admin_chain(conn, KEY)
    assert kinds(report) == {}
    assert report.zones["zone-alpha"].content_not_recomputable == 2
    conn.execute("UPDATE admin_audit_events SET occurred_at = occurred_at + interval '7 us'"
                 " WHERE zone_id = 'zone-alpha' AND chain_seq = 3")
    report = verify_admin_chain(conn, KEY)
    assert kinds(report) == {"content_mismatch": 1}, report.summary()
    assert "sub-millisecond" in report.findings[0].detail


# -------------------------------------------------------------- memory and throughput

#: A small and a three-times larger zone: per-zone accumulation would show as growth too.
BIG_ZONES = {"big-small": 50_000, "big-large": 150_000}

_PROBE = textwrap.dedent("""
    import json, os, resource, sys, tracemalloc
    import psycopg
    from caracal_restore.audit_chain import verify_audit_chain

    key = bytes.fromhex(os.environ["PROBE_KEY"])
    with psycopg.connect(os.environ["PROBE_DSN"], autocommit=True) as conn:
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        timed = verify_audit_chain(conn, hmac_key=key)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        small = verify_audit_chain(conn, hmac_key=key, zones={"big-small"}, batch_size=5000)
        small_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        full = verify_audit_chain(conn, hmac_key=key, batch_size=5000)
        full_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    json.dump({"rows": timed.rows_checked, "ok": timed.ok and full.ok, "counts": full.counts,
               "small_rows": small.rows_checked, "full_rows": full.rows_checked,
               "events_per_s": timed.events_per_s, "elapsed_s": timed.elapsed_s,
               "rss_growth_kb": rss1 - rss0, "small_peak": small_peak, "full_peak": full_peak},
              sys.stdout)
""")


@pytest.mark.slow
def test_memory_stays_flat_and_throughput(pg: postgres.PostgresServer) -> None:
    """Verifying 200k rows costs no more memory than 50k: rows stream, never accumulate."""
    pg.create_database("chain_big")
    try:
        with pg.connect("chain_big") as conn:
            conn.execute(SCHEMA)
            conn.execute("INSERT INTO audit_chain_rehash DEFAULT VALUES")
            rng = random.Random(7)
            start = dt.datetime(2026, 1, 1, tzinfo=UTC)
            events = (
                Event(zone, seq, start + dt.timedelta(seconds=seq * 40, microseconds=len(zone)),
                      True, make_fields(rng, seq))
                for zone, count in BIG_ZONES.items() for seq in range(1, count + 1)
            )
            canon = Canon(conn)
            for text in JSON_VARIANTS:  # warm: no query may run on conn while COPY streams
                canon(text)
            written = write_rows(conn, chained_rows(events, canon, KEY))
            conn.execute("ANALYZE audit_events")
        env = dict(os.environ, PROBE_DSN=pg.endpoint("chain_big").conninfo(),
                   PROBE_KEY=KEY.hex(), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
    finally:
        pg.drop_database("chain_big")
    probe = json.loads(out.stdout)
    assert written == sum(BIG_ZONES.values()) == probe["rows"] == probe["full_rows"]
    assert probe["small_rows"] == BIG_ZONES["big-small"]
    assert probe["ok"], probe["counts"]
    small_mb, full_mb = probe["small_peak"] / 2**20, probe["full_peak"] / 2**20
    print(f"\naudit chain verifier: {probe['rows']} rows in {probe['elapsed_s']:.2f} s = "
          f"{probe['events_per_s']:,.0f} events/s (batch 20000, HMAC on); peak RSS growth "
          f"{probe['rss_growth_kb'] / 1024:.1f} MB; traced peak {small_mb:.1f} MB for 50k rows, "
          f"{full_mb:.1f} MB for 200k (batch 5000)")
    assert small_mb < 32, f"verifying 50k rows peaked at {small_mb:.1f} MB of Python objects"
    assert full_mb < small_mb * 1.25 + 1, (
        f"4x the rows (3x in one zone) peaked at {full_mb:.1f} MB vs {small_mb:.1f} MB: "
        "rows accumulate"
    )
    assert probe["rss_growth_kb"] < 128 * 1024

"""The three ways of verifying the audit chain agree on every finding.

One small reference database (``build_source_database``, 3000 audit events, late events whose
months retention dropped, an export archive captured just before retention) is the template;
each case clones it (``CREATE DATABASE … TEMPLATE``), injects one defect of the symptom table's
fault list that concerns the chain, and verifies the clone three times: the client verifier's
streaming pass (``verify_audit_chain``), its ordered scan (``ordered=True``, the reference
behaviour) and the in-database verifier (``verify_audit_chain_sql``). All three must report the
same counts, the same findings (kind, zone, chain_seq, detail) and the same zone summaries, and
the findings must be the ones the defect calls for.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from caracal_restore import chainhash
from caracal_restore.audit_chain import (
    UNVERIFIED,
    VERIFIED,
    ArchivedEvent,
    Report,
    chain_heads,
    verify_audit_chain,
)
from caracal_restore.audit_chain_sql import verify_audit_chain_sql
from caracal_restore.environments import postgres
from caracal_restore.reference.generator import Volume, build_source_database
from caracal_restore.reference.secrets import generate_secrets
from tests.harness import Clone, template_copies

NOW = dt.datetime(2026, 6, 21, 12, 0, tzinfo=dt.UTC)
OTHER_KEY = bytes(range(100, 132))
HASHED = chainhash.AUDIT_HASHED_FIELDS


@dataclasses.dataclass(frozen=True)
class Source:
    """The template database and what its writer knows about it."""

    name: str
    key: bytes = dataclasses.field(repr=False)
    heads: dict[str, tuple[int, str]]
    archive: dict[tuple[str, int], ArchivedEvent]
    zones: tuple[str, ...]


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """A throwaway PostgreSQL 18 with pgcrypto on loopback (action: initdb + start)."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture(scope="module")
def source(pg: postgres.PostgresServer) -> Source:
    """The reference database every case clones (action: generate, archive, retention)."""
    secrets = generate_secrets()
    archive: dict[tuple[str, int], ArchivedEvent] = {}

    def export(conn: psycopg.Connection[Any], watermark: dt.datetime) -> None:
        rows = conn.execute(
            "SELECT zone_id, chain_seq, id, content_sha256, COALESCE(chain_hmac, ''),"
            " (extract(epoch FROM occurred_at) * 1000)::bigint FROM audit_events"
        ).fetchall()
        for zone, seq, event_id, content, mac, ms in rows:
            archive[(zone, int(seq))] = ArchivedEvent(event_id, content, mac, int(ms))

    data = build_source_database(
        pg, seed=7, volume=Volume(audit_events=3000, late_audit_events=30), secrets=secrets,
        now=NOW, canary_upstream_url="http://canary.caracal.test/echo", before_retention=export,
    )
    assert data.dropped_partitions, "retention must have dropped a month"
    with pg.connect(data.database) as conn:
        heads = chain_heads(conn)
    return Source(data.database or "caracal", chainhash.parse_hmac_key(secrets["auditHmacKey"]),
                  heads, archive, tuple(sorted(heads)))


@pytest.fixture
def clone(pg: postgres.PostgresServer, source: Source) -> Iterator[Clone]:
    """Fresh copies of the source for one defect each (action: CREATE … TEMPLATE)."""
    with template_copies(pg, source.name, "agree") as make:
        yield make


def _view(report: Report) -> dict[str, Any]:
    """Everything a verifier reports except timing."""
    return {
        "rows": report.rows_checked,
        "counts": dict(report.counts),
        "findings": [dataclasses.astuple(f) for f in report.findings],
        "zones": {z: dataclasses.astuple(s) for z, s in report.zones.items()},
        "retention": dict(report.retention),
        "hmac_checked": report.hmac_checked,
        "notes": report.notes,
    }


def agree(conn: psycopg.Connection[Any], **kwargs: Any) -> Report:
    """Verify three ways; assert they agree; return the streaming pass's report."""
    streamed = verify_audit_chain(conn, **kwargs)
    ordered = verify_audit_chain(conn, ordered=True, **kwargs)
    in_db = verify_audit_chain_sql(conn, **kwargs)
    assert _view(streamed) == _view(ordered), streamed.summary() + "\n--\n" + ordered.summary()
    assert _view(in_db) == _view(ordered), in_db.summary() + "\n--\n" + ordered.summary()
    return streamed


def where(report: Report, kind: str) -> list[tuple[str | None, int | None]]:
    """(zone, chain_seq) of the stored findings of one kind."""
    return [(f.zone_id, f.chain_seq) for f in report.of_kind(kind)]


def middle(conn: psycopg.Connection[Any], zone: str) -> int:
    """A chain_seq in the middle of a zone's surviving chain, away from retention holes."""
    row = conn.execute(
        "SELECT max(chain_seq) - 5 FROM audit_events WHERE zone_id = %s", (zone,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def forge(conn: psycopg.Connection[Any], zone: str, seq: int, key: bytes, *, decision: str,
          new_id: str | None = None) -> None:
    """Rewrite (or, with new_id, duplicate) a row with a valid content hash under ``key``."""
    row = conn.execute(
        f"SELECT {', '.join(HASHED[:9])}, determining_policies_json::text,"
        " diagnostics_json::text, metadata_json::text, occurred_at, prev_content_sha256,"
        " ingested_at FROM audit_events WHERE zone_id = %s AND chain_seq = %s", (zone, seq),
    ).fetchone()
    assert row is not None
    values = dict(zip((*HASHED, "occurred_at"), row[:13], strict=True))
    prev, ingested = row[13], row[14]
    values.update(decision=decision, id=new_id or values["id"])
    content = chainhash.content_hash(**values)
    mac = chainhash.chain_hmac(key, content, prev)
    if new_id is None:
        conn.execute("UPDATE audit_events SET decision = %s, content_sha256 = %s,"
                     " chain_hmac = %s WHERE zone_id = %s AND chain_seq = %s",
                     (decision, content, mac, zone, seq))
        return
    columns = (*HASHED, "occurred_at", "ingested_at", "content_sha256", "prev_content_sha256",
               "chain_hmac", "chain_seq")
    conn.execute(
        f"INSERT INTO audit_events ({', '.join(columns)})"
        f" VALUES ({', '.join(['%s'] * len(columns))})",
        (*values.values(), ingested, content, prev, mac, seq),
    )


# ---------------------------------------------------------------------------------- cases


def test_clean_restore(clone: Clone, source: Source) -> None:
    """Key, heads and archive: only retention holes, every one verified against the archive."""
    report = agree(clone(), hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole"}, report.summary()
    assert report.ok
    assert set(report.retention) == {VERIFIED}
    assert report.rows_checked > 2000


def test_clean_restore_without_archive_or_key(clone: Clone, source: Source) -> None:
    """Without the archive the late-event holes are gaps; without a key no HMAC is checked."""
    report = agree(clone(), expected_heads=source.heads)
    assert set(report.counts) <= {"retention_hole", "gap"}, report.summary()
    assert report.counts["retention_hole"] == len(source.zones)
    assert report.retention == {UNVERIFIED: len(source.zones)}
    assert not report.hmac_checked


def test_row_deleted_mid_chain(clone: Clone, source: Source) -> None:
    """One audit row deleted mid-chain: one gap where it was."""
    conn = clone()
    zone = source.zones[0]
    seq = middle(conn, zone)
    conn.execute("DELETE FROM audit_events WHERE zone_id = %s AND chain_seq = %s", (zone, seq))
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole", "gap"}, report.summary()
    assert where(report, "gap") == [(zone, seq)]


def test_decision_edited(clone: Clone, source: Source) -> None:
    """One row's decision edited: a content mismatch at that row, nothing else."""
    conn = clone()
    zone = source.zones[1]
    seq = middle(conn, zone)
    conn.execute("UPDATE audit_events SET decision = 'allow-edited'"
                 " WHERE zone_id = %s AND chain_seq = %s", (zone, seq))
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole", "content_mismatch"}, report.summary()
    assert where(report, "content_mismatch") == [(zone, seq)]


def test_wrong_hmac_key(clone: Clone, source: Source) -> None:
    """A wrong AUDIT_HMAC_KEY: every signed row fails, diagnosed once as the key."""
    report = agree(clone(), hmac_key=OTHER_KEY, expected_heads=source.heads)
    assert report.counts["hmac_mismatch_all"] == 1, report.summary()
    assert "hmac_mismatch_some" not in report.counts
    assert report.causes() >= {"wrong AUDIT_HMAC_KEY"}


def test_rows_after_a_point_removed(clone: Clone, source: Source) -> None:
    """A restore that stops short: the backup's heads show the truncated zone."""
    conn = clone()
    zone = source.zones[2]
    cut = middle(conn, zone) - 20
    conn.execute("DELETE FROM audit_events WHERE zone_id = %s AND chain_seq > %s", (zone, cut))
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole", "truncated_head"}, report.summary()
    assert where(report, "truncated_head") == [(zone, cut)]


def test_old_partition_dropped(clone: Clone, source: Source) -> None:
    """Retention drops the oldest month: holes the archive proves, or plausible without it."""
    conn = clone()
    row = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_events'::regclass AND c.relname ~ '_y[0-9]{4}m[0-9]{2}$'"
        " ORDER BY c.relname LIMIT 1"
    ).fetchone()
    assert row is not None
    conn.execute(f'DROP TABLE "{row[0]}"')
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole"}, report.summary()
    assert set(report.retention) == {VERIFIED}
    blind = agree(conn, hmac_key=source.key, expected_heads=source.heads)
    assert "retention_hole" in blind.counts


def test_chain_seq_duplicated(clone: Clone, source: Source) -> None:
    """A second, validly signed row with an existing chain_seq: a duplicate, not its archive's."""
    conn = clone()
    zone = source.zones[0]
    seq = middle(conn, zone)
    forge(conn, zone, seq, source.key, decision="deny", new_id="evt-duplicate")
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole", "duplicate_seq", "archive_mismatch"}, (
        report.summary())
    assert where(report, "duplicate_seq") == [(zone, seq)]
    assert where(report, "archive_mismatch") == [(zone, seq)]
    assert set(agree(conn, hmac_key=source.key).counts) <= {"retention_hole", "gap",
                                                             "duplicate_seq"}


def test_marker_row_missing(clone: Clone, source: Source) -> None:
    """An empty audit_chain_rehash on a populated table is flagged by both."""
    conn = clone()
    conn.execute("DELETE FROM audit_chain_rehash")
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert set(report.counts) == {"retention_hole", "marker_missing"}, report.summary()


def test_forged_row(clone: Clone, source: Source) -> None:
    """A row rewritten and re-signed with another key: its HMAC, and its successor's link."""
    conn = clone()
    zone = source.zones[1]
    seq = middle(conn, zone)
    forge(conn, zone, seq, OTHER_KEY, decision="allow-forged")
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads)
    assert {"hmac_mismatch_some", "link_break"} <= set(report.counts), report.summary()
    assert where(report, "hmac_mismatch_some") == [(zone, seq)]
    assert where(report, "link_break") == [(zone, seq + 1)]


def test_reordered_and_unsequenced_rows(clone: Clone, source: Source) -> None:
    """Swapped chain_seq and a NULL chain_seq take the ordered scan's rare paths in both."""
    conn = clone()
    zone = source.zones[0]
    seq = middle(conn, zone)
    conn.execute("UPDATE audit_events SET chain_seq = CASE chain_seq WHEN %s THEN %s ELSE %s END"
                 " WHERE zone_id = %s AND chain_seq IN (%s, %s)",
                 (seq, seq + 1, seq, zone, seq, seq + 1))
    conn.execute("UPDATE audit_events SET chain_seq = NULL WHERE zone_id = %s"
                 " AND chain_seq = %s", (source.zones[2], middle(conn, source.zones[2])))
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive)
    assert {"reordered_seq", "unsequenced", "gap"} <= set(report.counts), report.summary()


def test_many_defects_keep_the_same_examples(clone: Clone, source: Source) -> None:
    """Every row of a zone edited, and a cap of 3: the same 3 examples and the same counts."""
    conn = clone()
    zone = source.zones[0]
    conn.execute("UPDATE audit_events SET decision = 'x' WHERE zone_id = %s", (zone,))
    conn.execute("UPDATE audit_events SET chain_hmac = 'ff' WHERE zone_id = %s"
                 " AND chain_seq %% 7 = 0", (source.zones[1],))
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   archive=source.archive, max_examples=3)
    assert report.counts["content_mismatch"] > 3
    assert len(report.of_kind("content_mismatch")) == 3
    assert report.counts["hmac_mismatch_some"] > 3
    assert report.counts["archive_mismatch"] > 3


def test_zone_filter(clone: Clone, source: Source) -> None:
    """Only the zones asked for are verified, and a zone the heads name but not the data."""
    conn = clone()
    conn.execute("DELETE FROM audit_events WHERE zone_id = %s", (source.zones[2],))
    report = agree(conn, hmac_key=source.key, expected_heads=source.heads,
                   zones={source.zones[1], source.zones[2]})
    assert set(report.zones) == {source.zones[1], source.zones[2]}
    assert where(report, "truncated_head") == [(source.zones[2], None)]


def test_in_database_hmac_without_pgcrypto(clone: Clone, source: Source,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pgcrypto the server computes the HMAC from the key pads: same findings."""
    from caracal_restore import audit_chain_sql

    conn = clone()
    zone = source.zones[1]
    forge(conn, zone, middle(conn, zone), OTHER_KEY, decision="allow-forged")
    with_pgcrypto = verify_audit_chain_sql(conn, hmac_key=source.key)
    monkeypatch.setattr(audit_chain_sql, "_hmac_function", lambda _conn: None)
    by_hand = verify_audit_chain_sql(conn, hmac_key=source.key)
    assert _view(by_hand) == _view(with_pgcrypto)
    assert by_hand.counts["hmac_mismatch_some"] == 1
    wrong = verify_audit_chain_sql(conn, hmac_key=bytes(range(200, 232)))
    assert "hmac_mismatch_all" in wrong.counts, wrong.summary()

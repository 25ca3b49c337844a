"""The streaming pass of the audit chain verifier: parallel partitions, link balance, escapes.

``verify_audit_chain`` reads ``audit_events`` unordered (``COPY … TO STDOUT``), optionally
split by partition over worker processes that share the verifier's exported snapshot, and
proves each zone's links with a keyed multiset balance; these tests pin down that the split
changes nothing, that the balance rejects every kind of broken chain (so the ordered scan
classifies it), and that rows whose text needs COPY escapes hash like any other.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from caracal_restore import audit_chain, chainhash
from caracal_restore.audit_chain import (
    _WorkerJob,
    _ZoneTally,
    leaf_partitions,
    stream_query,
    tally_stream,
    verify_audit_chain,
)
from caracal_restore.audit_chain_sql import verify_audit_chain_sql
from caracal_restore.environments import postgres
from caracal_restore.reference.generator import Volume, build_source_database
from caracal_restore.reference.secrets import generate_secrets
from tests.harness import Clone, template_copies

NOW = dt.datetime(2026, 6, 21, 12, 0, tzinfo=dt.UTC)
OTHER_KEY = bytes(range(100, 132))


@dataclasses.dataclass(frozen=True)
class Source:
    """The template database and its audit key."""

    name: str
    key: bytes = dataclasses.field(repr=False)


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """A throwaway PostgreSQL 18 on loopback (action: initdb + start)."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture(scope="module")
def source(pg: postgres.PostgresServer) -> Source:
    """A small reference database: 3 zones, a dozen monthly partitions (action: generate)."""
    secrets = generate_secrets()
    data = build_source_database(
        pg, seed=11, volume=Volume(audit_events=3000, late_audit_events=10), secrets=secrets,
        now=NOW, canary_upstream_url="http://canary.caracal.test/echo",
    )
    return Source(data.database or "caracal", chainhash.parse_hmac_key(secrets["auditHmacKey"]))


@pytest.fixture
def clone(pg: postgres.PostgresServer, source: Source) -> Iterator[Clone]:
    """Fresh copies of the source (action: CREATE … TEMPLATE)."""
    with template_copies(pg, source.name, "par") as make:
        yield make


def _view(report: Any) -> tuple[Any, ...]:
    """A report without its timing."""
    return (report.rows_checked, dict(report.counts),
            [dataclasses.astuple(f) for f in report.findings],
            {z: dataclasses.astuple(s) for z, s in report.zones.items()}, report.retention)


def test_workers_change_nothing(clone: Clone, source: Source) -> None:
    """Two worker processes over the partitions report exactly what one process reports."""
    conn = clone()
    assert len(leaf_partitions(conn)) > 4
    zone = conn.execute("SELECT min(zone_id) FROM audit_events").fetchone()[0]  # type: ignore[index]
    conn.execute("UPDATE audit_events SET decision = 'edited' WHERE zone_id = %s"
                 " AND chain_seq %% 50 = 0", (zone,))
    for key in (source.key, OTHER_KEY, None):
        one = verify_audit_chain(conn, hmac_key=key, workers=1, max_examples=3)
        two = verify_audit_chain(conn, hmac_key=key, workers=2, max_examples=3)
        assert _view(one) == _view(two), two.summary()
    assert one.counts["content_mismatch"] > 3


def test_workers_on_a_clean_and_a_broken_chain(clone: Clone, source: Source) -> None:
    """The workers' balance is per zone across partitions: a deleted row still shows."""
    conn = clone()
    clean = verify_audit_chain(conn, hmac_key=source.key, workers=3)
    assert set(clean.counts) <= {"retention_hole", "gap"}, clean.summary()
    row = conn.execute("SELECT zone_id, max(chain_seq) - 3 FROM audit_events GROUP BY zone_id"
                       " ORDER BY 1 LIMIT 1").fetchone()
    assert row is not None
    conn.execute("DELETE FROM audit_events WHERE zone_id = %s AND chain_seq = %s", row)
    report = verify_audit_chain(conn, hmac_key=source.key, workers=3)
    assert (row[0], row[1]) in [(f.zone_id, f.chain_seq) for f in report.of_kind("gap")]
    assert _view(report) == _view(verify_audit_chain(conn, hmac_key=source.key, ordered=True))


def test_workers_fall_back_inside_a_callers_transaction(pg: postgres.PostgresServer,
                                                        clone: Clone, source: Source) -> None:
    """A snapshot can only be exported from our own transaction: else one process reads."""
    name = clone().info.dbname
    with pg.connect(name, autocommit=False) as conn:
        conn.execute("SELECT 1")
        report = verify_audit_chain(conn, hmac_key=source.key, workers=2)
        assert report.rows_checked > 2000
        conn.rollback()


def test_worker_failure_is_an_error_not_a_pass(clone: Clone, source: Source,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that cannot run raises; nothing is reported as verified."""
    monkeypatch.setattr(audit_chain, "_WORKER_MAIN", "raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="worker failed"):
        verify_audit_chain(clone(), hmac_key=source.key, workers=2)


def test_worker_job_hides_its_secrets() -> None:
    """The key and the password travel on the worker's stdin and never show in a repr."""
    job = _WorkerJob("host=127.0.0.1", "pw-secret", "snap", ("p",), b"k" * 32, b"l" * 32,
                     None, None, 5)
    assert "pw-secret" not in repr(job)
    assert "kkkk" not in repr(job)


def test_assign_balances_by_size() -> None:
    """Largest partitions first onto the least loaded worker; every partition once."""
    parts = [("a", 100), ("b", 90), ("c", 50), ("d", 40), ("e", 10), ("f", 0)]
    plan = audit_chain._assign(parts, 2)
    assert sorted(n for names in plan for n in names) == list("abcdef")
    loads = [sum(dict(parts)[n] for n in names) for names in plan]
    assert max(loads) - min(loads) <= 20
    assert audit_chain._assign(parts[:1], 4) == [("a",)]


# --------------------------------------------------------------------- the link balance


def _line(zone: str, seq: int | None, content: str, prev: str, fields: list[str],
          nanos: int = 1_750_000_000_000_000_000) -> bytes:
    """One text-COPY line of the streaming query (no escapes needed)."""
    cols = [zone, "\\N" if seq is None else str(seq), content, prev, "", *fields, str(nanos)]
    return ("\t".join(cols) + "\n").encode()


def _chain(n: int, start: int = 1, prev: str = "") -> list[tuple[int, str, str, list[str]]]:
    """A valid chain segment: (seq, content, prev, fields) rows."""
    out = []
    for seq in range(start, start + n):
        fields = [f"evt-{seq}", "z", "t", "", "allow", "", "", "", "ok", "null", "null", "null"]
        message = chainhash.canonical_message([f.encode() for f in fields],
                                              1_750_000_000_000_000_000)
        content = chainhash.content_hash_bytes(message).decode()
        out.append((seq, content, prev, fields))
        prev = content
    return out


def _balanced(rows: Sequence[tuple[int | None, str, str, list[str]]], *, pieces: int = 1
              ) -> bool:
    """Whether the streaming pass's balance accepts these rows as one zone's chain.

    ``pieces`` > 1 feeds them as that many streams (partitions) into separate tallies merged
    afterwards, as worker processes do.
    """
    link_key = os.urandom(32)
    lines = [_line("z", s, c, p, f) for s, c, p, f in rows]
    tallies: dict[bytes, _ZoneTally] = {}
    for i in range(pieces):
        part: dict[bytes, _ZoneTally] = {}
        tally_stream(lines[i::pieces], part, key=None, link_key=link_key, archive=None, cap=5)
        for zone, tally in part.items():
            if zone in tallies:
                tallies[zone].merge(tally, 5)
            else:
                tallies[zone] = tally
    _, value = audit_chain._link_hasher(link_key)
    (tally,) = tallies.values()
    assert tally.content_bad == 0
    return tally.balanced(value)


def test_balance_accepts_whole_chains_and_retention_prefixes() -> None:
    """Any order of a whole chain balances, so does one whose prefix retention removed."""
    rows = _chain(50)
    assert _balanced(rows)
    assert _balanced(list(reversed(rows)))
    assert _balanced(rows[20:])  # starts at 21 with a predecessor hash: a retention prefix
    assert _balanced(rows, pieces=3)  # interleaved over three merged streams
    assert not _balanced(rows[:10] + rows[11:], pieces=2)


@pytest.mark.parametrize("defect", ["deleted", "duplicated", "swapped", "relinked", "null",
                                    "renumbered", "zero"])
def test_balance_rejects_broken_chains(defect: str) -> None:
    """Every irregularity the ordered scan classifies makes the zone unbalanced."""
    rows: list[tuple[int | None, str, str, list[str]]] = list(_chain(30))
    if defect == "deleted":
        del rows[10]
    elif defect == "duplicated":
        rows.append(rows[10])
    elif defect == "swapped":
        (s1, c1, p1, f1), (s2, c2, p2, f2) = rows[10], rows[11]
        rows[10], rows[11] = (s2, c1, p1, f1), (s1, c2, p2, f2)
    elif defect == "relinked":
        s, c, _, f = rows[10]
        rows[10] = (s, c, "0" * 64, f)
    elif defect == "null":
        s, c, p, f = rows[10]
        rows[10] = (None, c, p, f)
    elif defect == "renumbered":
        rows = [(s + 1 if s is not None and s > 10 else s, c, p, f) for s, c, p, f in rows]
    else:
        s, c, p, f = rows[0]
        rows[0] = (0, c, p, f)
    assert not _balanced(rows)


def test_rows_needing_copy_escapes_hash_like_any_other(clone: Clone, source: Source) -> None:
    """Tabs, newlines, backslashes, 0x1F and non-ASCII in hashed fields: no false findings."""
    conn = clone()
    zone, seq, content = conn.execute(
        "SELECT zone_id, chain_seq, content_sha256 FROM audit_events"
        " ORDER BY zone_id, chain_seq DESC LIMIT 1").fetchone()  # type: ignore[misc]
    odd = "tab\there\nnew line\\back\\\\slash\x1funit\rcr\x08bs ż✓"
    meta = conn.execute("SELECT %s::jsonb::text", ('{"note": "quote \\" and \\\\ and \\t"}',)
                        ).fetchone()[0]  # type: ignore[index]
    at = NOW - dt.timedelta(hours=1)
    new_content = chainhash.content_hash(
        id="evt-odd", zone_id=zone, event_type=odd, request_id=odd, decision="allow",
        policy_set_id=None, policy_set_version_id="", manifest_sha=None,
        evaluation_status="ok", determining_policies_json=None, diagnostics_json="[]",
        metadata_json=meta, occurred_at=at)
    conn.execute(
        "INSERT INTO audit_events (id, zone_id, event_type, request_id, decision,"
        " policy_set_version_id, evaluation_status, diagnostics_json, metadata_json,"
        " occurred_at, content_sha256, prev_content_sha256, chain_hmac, chain_seq)"
        " VALUES ('evt-odd', %s, %s, %s, 'allow', '', 'ok', '[]', %s, %s, %s, %s, %s, %s)",
        (zone, odd, odd, meta, at, new_content, content,
         chainhash.chain_hmac(source.key, new_content, content), seq + 1),
    )
    query, params = stream_query("audit_events", {zone})
    with conn.cursor() as cur, cur.copy(query, params) as copy:
        escaped = [bytes(row) for row in copy if b"evt-odd" in bytes(row)]
    assert len(escaped) == 1
    assert b"\\" in escaped[0]  # the odd row really went through the escaped path
    for report in (verify_audit_chain(conn, hmac_key=source.key),
                   verify_audit_chain(conn, hmac_key=source.key, workers=2),
                   verify_audit_chain_sql(conn, hmac_key=source.key)):
        assert set(report.counts) <= {"retention_hole", "gap"}, report.summary()
        assert report.zones[zone].head_sha256 == new_content


def test_a_latin1_client_still_hashes_utf8(pg: postgres.PostgresServer, clone: Clone,
                                           source: Source) -> None:
    """The hashes cover UTF-8 bytes: a session in another client encoding changes nothing."""
    name = clone().info.dbname
    with pg.connect(name, options="-c client_encoding=LATIN1") as conn:
        non_latin1 = conn.execute(
            "SELECT count(*) FROM audit_events WHERE metadata_json::text ~ '[^\\x01-\\xff]'"
        ).fetchone()
        assert non_latin1 is not None
        assert non_latin1[0] > 0  # rows LATIN1 could not even carry
        report = verify_audit_chain(conn, hmac_key=source.key)
        assert set(report.counts) <= {"retention_hole", "gap"}, report.summary()
        assert conn.execute("SHOW client_encoding").fetchone() == ("LATIN1",)

"""caracal_restore.chainhead returns the rows of the ``NULLS LAST`` head queries it replaces
(the ingestor's lookup and the fingerprint's ``DISTINCT ON``), on an embedded PostgreSQL 18
with the schemas' partitioned table and ``(zone_id, chain_seq DESC)`` index."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from caracal_restore.chainhead import head_contents, zone_head
from caracal_restore.environments import postgres

SCHEMA = """
CREATE TABLE audit_events (
    id text NOT NULL, zone_id text NOT NULL, chain_seq bigint, content_sha256 text,
    occurred_at timestamptz NOT NULL, PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE TABLE audit_events_y2026m10 PARTITION OF audit_events
    FOR VALUES FROM ('2026-10-01 00:00:00+00') TO ('2026-11-01 00:00:00+00');
CREATE TABLE audit_events_y2026m11 PARTITION OF audit_events
    FOR VALUES FROM ('2026-11-01 00:00:00+00') TO ('2026-12-01 00:00:00+00');
CREATE INDEX audit_events_zone_chain ON audit_events (zone_id, chain_seq DESC);
"""

# zone: rows (id, chain_seq, content_sha256, occurred_at)
ROWS: dict[str, list[tuple[str, int | None, str | None, str]]] = {
    # a chain over two partitions and the default one, head in the earlier month
    "spread": [("a1", 1, "s1", "2026-10-02"), ("a2", 2, "s2", "2026-11-03"),
               ("a3", 3, "s3", "2026-10-30"), ("a4", 4, "s4", "2027-02-01")],
    # rows without chain_seq beside sequenced ones: the sequenced head wins
    "mixed": [("b1", None, "n1", "2026-11-05"), ("b2", 7, "m7", "2026-10-05"),
              ("b3", 6, "m6", "2026-11-06"), ("b4", None, None, "2026-11-07")],
    # only unsequenced rows: one of them, chain_seq NULL
    "unsequenced": [("c1", None, "u1", "2026-11-01")],
    # two rows at the highest chain_seq: the lowest id for the fingerprint
    "tied": [("d9", 5, "t9", "2026-11-02"), ("d2", 5, "t2", "2026-10-09"),
             ("d5", 4, "t5", "2026-11-09")],
    # a head without a content hash
    "hashless": [("e1", 1, None, "2026-11-02")],
}


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection[Any]]:
    """A database holding ``ROWS`` (action: initdb + start an embedded server)."""
    with postgres.embedded() as server:
        server.create_database("heads")
        with server.connect("heads") as connection:
            connection.execute(SCHEMA)
            with connection.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit_events VALUES (%s, %s, %s, %s, %s)",
                    [(i, zone, seq, sha, at) for zone, rows in ROWS.items()
                     for i, seq, sha, at in rows])
            connection.commit()
            yield connection


@pytest.mark.parametrize("zone", [*ROWS, "absent"])
def test_zone_head_is_the_ingestors_head(conn: psycopg.Connection[Any], zone: str) -> None:
    """The row of ``ORDER BY chain_seq DESC NULLS LAST LIMIT 1`` for every kind of zone."""
    expected = conn.execute(
        "SELECT content_sha256, chain_seq FROM audit_events WHERE zone_id = %s"
        " ORDER BY chain_seq DESC NULLS LAST LIMIT 1", (zone,)).fetchone()
    assert zone_head(conn, zone) == expected


def test_zone_head_of_several_unsequenced_rows_is_one_of_them(
        conn: psycopg.Connection[Any]) -> None:
    """With no chain_seq in the zone, NULLS LAST may return any row: so may zone_head."""
    head = zone_head(conn, "mixed")
    assert head == ("m7", 7)
    conn.execute("DELETE FROM audit_events WHERE zone_id = 'mixed' AND chain_seq IS NOT NULL")
    try:
        assert zone_head(conn, "mixed") in {("n1", None), (None, None)}
    finally:
        conn.rollback()


def test_head_contents_equal_distinct_on(conn: psycopg.Connection[Any]) -> None:
    """Per zone, the content hash DISTINCT ON (zone_id) … NULLS LAST, id picks, given the
    zone's highest chain_seq (None when the zone has none)."""
    expected = dict(conn.execute(
        "SELECT DISTINCT ON (zone_id) zone_id, content_sha256 FROM audit_events"
        " ORDER BY zone_id, chain_seq DESC NULLS LAST, id").fetchall())
    tops = dict(conn.execute(
        "SELECT zone_id, max(chain_seq) FROM audit_events GROUP BY zone_id").fetchall())
    assert tops["unsequenced"] is None
    assert expected["tied"] == "t2"
    assert head_contents(conn, "audit_events", tops) == expected


def test_only_chain_tables_are_named(conn: psycopg.Connection[Any]) -> None:
    """A table name that holds no chain is refused before any SQL is built from it."""
    with pytest.raises(ValueError, match="no chain in table"):
        zone_head(conn, "z", "pg_authid")

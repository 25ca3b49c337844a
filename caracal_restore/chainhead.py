"""A zone's chain head, read through the ``(zone_id, chain_seq DESC)`` index.

Caracal's ingestor takes a zone's head with ``ORDER BY chain_seq DESC NULLS LAST LIMIT 1``
(FACTS-1.0 §4.3), and the fingerprint's heads pick, per zone, the row with the highest
``chain_seq`` (NULLs last), the lowest ``id`` among equals. Both schemas index audit rows on
``(zone_id, chain_seq DESC)``, whose order is ``DESC NULLS FIRST``: a ``NULLS LAST`` ordering
cannot use it, so PostgreSQL reads and sorts every row of the zone in every partition (~0.3 s
per lookup at 1 000 000 events, and the reference ingestor makes one per event). The queries
here return the same rows, asking the index for the highest non-NULL ``chain_seq`` first and
for a row without one only when the zone has none (tests/test_chainhead.py compares them with
the ``NULLS LAST`` forms).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg import sql

#: Tables holding a zone chain (``zone_id``, ``chain_seq``, ``content_sha256``).
CHAIN_TABLES = frozenset({"audit_events", "admin_audit_events"})


def _table(table: str | sql.Composable) -> sql.Composable:
    if isinstance(table, sql.Composable):
        return table
    if table not in CHAIN_TABLES:
        raise ValueError(f"no chain in table {table!r}")
    return sql.Identifier(table)


def zone_head(conn: psycopg.Connection[Any], zone_id: str,
              table: str | sql.Composable = "audit_events") -> tuple[str | None, int | None] | None:
    """``(content_sha256, chain_seq)`` of the row the ingestor's head lookup returns.

    That is the zone's highest ``chain_seq``; when every row of the zone has a NULL
    ``chain_seq``, one of those rows (as ``NULLS LAST`` returns one of them); None when the
    zone has no row.
    """
    query = sql.SQL(
        "SELECT content_sha256, chain_seq FROM ("
        " (SELECT content_sha256, chain_seq, 0 AS unsequenced FROM {t}"
        "   WHERE zone_id = %(zone)s AND chain_seq IS NOT NULL ORDER BY chain_seq DESC LIMIT 1)"
        " UNION ALL"
        " (SELECT content_sha256, chain_seq, 1 FROM {t}"
        "   WHERE zone_id = %(zone)s AND chain_seq IS NULL LIMIT 1)"
        ") AS top ORDER BY unsequenced LIMIT 1"
    ).format(t=_table(table))
    row = conn.execute(query, {"zone": zone_id}).fetchone()
    return None if row is None else (row[0], row[1])


def head_contents(conn: psycopg.Connection[Any], table: str | sql.Composable,
                  tops: Mapping[str, int | None]) -> dict[str, str | None]:
    """Per zone of ``tops`` (zone → its highest ``chain_seq``, None when all are NULL): the
    ``content_sha256`` of ``DISTINCT ON (zone_id) … ORDER BY zone_id, chain_seq DESC NULLS
    LAST, id``, each found through the index (one statement)."""
    t = _table(table)
    sequenced = {zone: top for zone, top in tops.items() if top is not None}
    unsequenced = [zone for zone, top in tops.items() if top is None]
    out: dict[str, str | None] = {}
    if sequenced:
        out.update(conn.execute(sql.SQL(
            "SELECT z.zone, (SELECT e.content_sha256 FROM {t} e"
            " WHERE e.zone_id = z.zone AND e.chain_seq = z.top ORDER BY e.id LIMIT 1)"
            " FROM unnest(%s::text[], %s::bigint[]) AS z(zone, top)"
        ).format(t=t), (list(sequenced), list(sequenced.values()))).fetchall())
    if unsequenced:
        out.update(conn.execute(sql.SQL(
            "SELECT z.zone, (SELECT e.content_sha256 FROM {t} e"
            " WHERE e.zone_id = z.zone AND e.chain_seq IS NULL ORDER BY e.id LIMIT 1)"
            " FROM unnest(%s::text[]) AS z(zone)"
        ).format(t=t), (unsequenced,)).fetchall())
    return out

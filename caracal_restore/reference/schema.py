"""Apply the reference 2026.06 schema and manage its monthly audit partitions.

The DDL lives in ``schema_2026_06.sql`` (ours, written from FACTS-2026.06 §2). Monthly
partitions are created the way the 06.21 audit service does it — direct DDL as the owner,
``audit_events_y<YYYY>m<MM>`` with bounds from the first of the month to the first of the
next — except that the bounds carry an explicit UTC offset, so the stored bound is the same
whatever the session's TimeZone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from importlib import resources

import psycopg
from psycopg import sql

from caracal_restore.profiles.release_2026_06 import PROFILE

SCHEMA_FILE = "schema_2026_06.sql"
PARTITION_PARENT = "audit_events"
DEFAULT_PARTITION = "audit_events_default"


def schema_sql() -> str:
    """The DDL text of the reference 2026.06 schema."""
    return resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def month_start(day: dt.date) -> dt.date:
    """The first day of the month containing ``day``."""
    return dt.date(day.year, day.month, 1)


def add_months(month: dt.date, n: int) -> dt.date:
    """The first day of the month ``n`` months after (or before) ``month``'s month."""
    index = month.year * 12 + (month.month - 1) + n
    return dt.date(index // 12, index % 12 + 1, 1)


def month_range(first: dt.date, last: dt.date) -> list[dt.date]:
    """First days of every month from ``first``'s month to ``last``'s month inclusive."""
    out: list[dt.date] = []
    cur, end = month_start(first), month_start(last)
    while cur <= end:
        out.append(cur)
        cur = add_months(cur, 1)
    return out


def partition_name(month: dt.date) -> str:
    """Name of the monthly audit partition, e.g. ``audit_events_y2026m11``."""
    return f"audit_events_y{month.year:04d}m{month.month:02d}"


def partition_bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """UTC start (inclusive) and end (exclusive) of a monthly partition."""
    start = month_start(month)
    end = add_months(start, 1)
    return (
        dt.datetime(start.year, start.month, 1, tzinfo=dt.UTC),
        dt.datetime(end.year, end.month, 1, tzinfo=dt.UTC),
    )


def ensure_partition(conn: psycopg.Connection, month: dt.date) -> str:
    """Create the monthly partition of ``month`` if it does not exist; return its name."""
    start, end = partition_bounds(month)
    name = partition_name(month)
    stmt = sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
    ).format(
        sql.Identifier(name),
        sql.Identifier(PARTITION_PARENT),
        sql.Literal(start.strftime("%Y-%m-%d %H:%M:%S+00")),
        sql.Literal(end.strftime("%Y-%m-%d %H:%M:%S+00")),
    )
    conn.execute(stmt)
    return name


def drop_partition(conn: psycopg.Connection, month: dt.date) -> str:
    """Drop a monthly partition (``DROP TABLE IF EXISTS``, as the 06.21 retention loop does)."""
    name = partition_name(month)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
    return name


def monthly_partitions(conn: psycopg.Connection) -> list[str]:
    """Names of the monthly children of ``audit_events`` (default partition excluded), sorted."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_events'::regclass AND c.relname <> %s ORDER BY 1",
        (DEFAULT_PARTITION,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def insert_ledger(
    conn: psycopg.Connection,
    versions: Iterable[str] = PROFILE.migrations,
    *,
    applied_at: dt.datetime | None = None,
) -> None:
    """Insert the migration ledger rows (one per version; ``applied_at`` default now())."""
    with conn.cursor() as cur:
        for i, version in enumerate(versions):
            if applied_at is None:
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            else:
                at = applied_at + dt.timedelta(milliseconds=40 * i)
                cur.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (version, at),
                )


def apply_schema(
    conn: psycopg.Connection,
    *,
    months: Sequence[dt.date],
    applied_at: dt.datetime | None = None,
) -> None:
    """Create the whole 2026.06 schema, the given monthly partitions and the 47 ledger rows."""
    with conn.transaction():
        conn.execute(schema_sql().encode())
        for month in sorted({month_start(m) for m in months}):
            ensure_partition(conn, month)
        insert_ledger(conn, applied_at=applied_at)

"""AS-7 and RC-EXP-2 share one reading of the restored rows (``exports.read_hours``): both
verdicts equal what each control computed from a reading of its own, on an embedded
PostgreSQL 18 and an archive index with every kind of hour (before the archive, whole, a row
absent, a row under another id, no object)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from caracal_restore.environments import postgres
from caracal_restore.inspect.assets import export_coverage
from caracal_restore.parquet_export import ArchiveIndex, ArchiveObject, ArchiveRow, object_key
from caracal_restore.retention import exports

H = [dt.datetime(2026, 11, 1, h, tzinfo=dt.UTC) for h in range(6)]
WATERMARK = H[4]

# (zone, seq, id, ingested hour): H0 precedes the archive's first object; H1 is whole; H2's
# object lacks a2; H3's object holds b2 at another chain_seq (and another id at b2's); H4
# has no object; H5 is after the watermark (not read).
RESTORED = [
    ("z1", 1, "a0", H[0]), ("z1", 2, "a1", H[1]), ("z2", 1, "b1", H[1]),
    ("z1", 3, "a2", H[2]), ("z1", 4, "a3", H[2]), ("z2", 2, "b2", H[3]), ("z2", 3, "b3", H[3]),
    ("z1", 5, "a4", H[4]), ("z1", 6, "a5", H[5]),
]
ARCHIVED = [("z1", 2, "a1", H[1]), ("z2", 1, "b1", H[1]), ("z1", 4, "a3", H[2]),
            ("z2", 2, "x9", H[3]), ("z2", 3, "b3", H[3]), ("z2", 9, "b2", H[3])]


def _index() -> ArchiveIndex:
    index = ArchiveIndex()
    for hour in (H[1], H[2], H[3]):
        index.objects.append(ArchiveObject(object_key(hour), hour, 1, 1, 2, ()))
    for zone, seq, ident, hour in ARCHIVED:
        index.rows[(zone, seq)] = ArchiveRow(ident, f"c-{ident}", f"m-{ident}", 0, "allow",
                                             "token_exchange", "", object_key(hour))
    return index


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection[Any]]:
    """The restored rows in a database of their own (action: initdb + start a server)."""
    with postgres.embedded() as server:
        server.create_database("hours")
        with server.connect("hours") as connection:
            connection.execute(
                "CREATE TABLE audit_events (zone_id text, chain_seq bigint, id text,"
                " content_sha256 text, chain_hmac text, occurred_at timestamptz,"
                " ingested_at timestamptz, decision text, event_type text, request_id text)")
            with connection.cursor() as cur:
                cur.executemany(
                    "INSERT INTO audit_events VALUES (%s, %s, %s, %s, %s, 'epoch', %s,"
                    " 'allow', 'token_exchange', '')",
                    [(z, s, i, f"c-{i}", f"m-{i}", h + dt.timedelta(minutes=7))
                     for z, s, i, h in RESTORED])
            connection.commit()
            yield connection


def _own_reading(conn: psycopg.Connection[Any], index: ArchiveIndex
                 ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """AS-7 as it read before: every id per hour, against every id per object."""
    by_hour: dict[dt.datetime, set[str]] = {}
    for ident, hour in conn.execute(
            "SELECT id, date_trunc('hour', ingested_at) FROM audit_events WHERE ingested_at < %s",
            (WATERMARK + dt.timedelta(hours=1),)).fetchall():
        by_hour.setdefault(hour.astimezone(dt.UTC), set()).add(ident)
    contents = index.event_ids_by_key()
    missing, incomplete = [], []
    for hour in sorted(by_hour):
        key = object_key(hour)
        if key not in contents:
            missing.append(f"{key} ({len(by_hour[hour])} rows)")
        elif absent := by_hour[hour] - contents[key]:
            incomplete.append(f"{key} lacks {len(absent)} of its {len(by_hour[hour])} rows "
                              f"(e.g. {sorted(absent)[0]})")
    return tuple(missing), tuple(incomplete)


def test_as7_verdict_equals_its_own_reading(conn: psycopg.Connection[Any]) -> None:
    """Hours without an object (before the archive, or a gap) are missing; an object lacking
    a restored id is incomplete; an id held at another chain_seq is no gap for AS-7."""
    index = _index()
    reading = exports.read_hours(conn, index, WATERMARK)
    seen = export_coverage(WATERMARK, reading.rows_by_hour, reading.unconfirmed, index)
    assert (seen.missing, seen.incomplete) == _own_reading(conn, index)
    assert seen.missing == (f"{object_key(H[0])} (1 rows)", f"{object_key(H[4])} (1 rows)")
    assert seen.incomplete == (f"{object_key(H[2])} lacks 1 of its 2 rows (e.g. a2)",)
    assert (seen.hours_with_rows, seen.rows, seen.objects_read) == (5, 8, 3)


def test_rc_exp2_verdict_from_the_shared_reading(conn: psycopg.Connection[Any]) -> None:
    """RC-EXP-2 from the shared reading: from the archive's first hour (H0 is not compared),
    the object gap, the absent row and the row under another id."""
    index = _index()
    shared = exports.evaluate_hours(exports.read_hours(conn, index, WATERMARK), index)
    assert shared.observed["restored rows in the exported hours"] == 7
    assert shared.observed["hours with rows"] == 4
    kinds = sorted((f.kind, f.subject) for f in shared.findings)
    assert kinds == [("object_missing", object_key(H[4])), ("row_differs", "archive"),
                     ("rows_missing", object_key(H[2]))]
    assert "zone z2 chain_seq 2 in " in shared.message()


def test_no_object_up_to_the_watermark(conn: psycopg.Connection[Any]) -> None:
    """An archive whose first object follows the watermark: every hour is missing for AS-7,
    and RC-EXP-2 names the rows the archive should hold."""
    index = ArchiveIndex(objects=[ArchiveObject(object_key(H[5]), H[5], 1, 1, 0, ())])
    reading = exports.read_hours(conn, index, WATERMARK)
    assert not reading.compared
    seen = export_coverage(WATERMARK, reading.rows_by_hour, reading.unconfirmed, index)
    assert len(seen.missing) == 5
    assert not seen.incomplete
    result = exports.evaluate_hours(reading, index)
    assert [f.kind for f in result.findings] == ["archive_empty"]
    assert "8 restored rows were ingested by then" in result.message()

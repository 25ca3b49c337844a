"""The reference Audit service's hourly Parquet export (writer side; FACTS-1.0 §6, 06.21 §4.5).

Every UTC hour with rows whose ``ingested_at`` lies in ``[H, H+1h)``, through the watermark
hour, becomes ``audit/<YYYY>/<MM>/<DD>/<YYYY-MM-DD>T<HH>.parquet`` (rows ordered
``zone_id, chain_seq``), written with ``If-None-Match: *`` so an existing object is never
overwritten. The reference generator drops partitions older than the retention window, so
the orchestration exports *before* that drop: ``export_hours`` reads a pre-retention
database, ``export_rows`` takes rows from anywhere.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq

from caracal_restore.chainhash import unix_nanos
from caracal_restore.environments.objectstore import ObjectStore
from caracal_restore.parquet_export import (
    CLASS_UID,
    COLUMNS,
    METADATA_VERSION,
    PRODUCT_NAME,
    TYPE_UID,
    WATERMARK_NAME,
    arrow_schema,
    object_key,
)

#: SELECT list of the exporter: NULL text and NULL JSON both become ``''``.
_TEXT = ("id", "zone_id", "event_type", "request_id", "decision", "policy_set_id",
         "policy_set_version_id", "manifest_sha", "evaluation_status")
_JSON = ("determining_policies_json", "diagnostics_json", "metadata_json")
_SELECT = ", ".join(
    [f"COALESCE({c}, '') AS {c}" for c in _TEXT]
    + [f"COALESCE({c}::text, '') AS {c}" for c in _JSON]
    + ["occurred_at", "ingested_at", "COALESCE(content_sha256, '') AS content_sha256",
       "COALESCE(chain_hmac, '') AS chain_hmac", "COALESCE(chain_seq, 0) AS chain_seq",
       "date_trunc('hour', ingested_at AT TIME ZONE 'UTC') AS hour"]
)
_HOUR = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class ExportedObject:
    """One hour's object: its key, row count, and whether this run wrote it."""

    key: str
    hour: dt.datetime
    rows: int
    written: bool


@dataclasses.dataclass(frozen=True)
class ExportSummary:
    """What an export run did (objects it wrote or found already present)."""

    watermark: dt.datetime | None
    objects: tuple[ExportedObject, ...]

    @property
    def rows(self) -> int:
        """Rows in all objects of this run."""
        return sum(o.rows for o in self.objects)

    @property
    def written(self) -> int:
        """Objects this run created."""
        return sum(1 for o in self.objects if o.written)

    @property
    def skipped(self) -> int:
        """Objects that already existed and were left alone (If-None-Match)."""
        return sum(1 for o in self.objects if not o.written)


def hour_floor(moment: dt.datetime) -> dt.datetime:
    """The UTC hour a timestamp falls in."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def export_hours(
    conn: psycopg.Connection[Any],
    store: ObjectStore,
    *,
    through_hour: dt.datetime | None = None,
    save_watermark: bool = True,
) -> ExportSummary:
    """Export every hour through ``through_hour`` (default: the stored watermark) and save it.

    The watermark row ``parquet-hourly`` is set to ``through_hour`` (never moved back), as
    the exporter saves it after each hour, unless ``save_watermark`` is false (a caller that
    writes the row itself, like the generator). Rows are streamed hour by hour from a
    server-side cursor, so memory holds one hour at a time.
    """
    if through_hour is None:
        row = conn.execute(
            "SELECT last_exported_hour FROM audit_export_watermark WHERE name = %s",
            (WATERMARK_NAME,),
        ).fetchone()
        if row is None:
            raise LookupError(
                "no audit_export_watermark row 'parquet-hourly': pass through_hour to export"
            )
        through_hour = row[0]
    assert through_hour is not None
    last = hour_floor(through_hour)
    objects = []
    with conn.transaction(), conn.cursor(name="caracal_audit_export") as cur:
        cur.itersize = 2000
        cur.execute(
            f"SELECT {_SELECT} FROM audit_events WHERE ingested_at < %s"
            " ORDER BY hour, zone_id, chain_seq",
            (last + _HOUR,),
        )
        names = [d.name for d in cur.description or ()]
        for hour, rows in _by_hour(dict(zip(names, r, strict=True)) for r in cur):
            objects.append(_write_hour(store, hour, rows))
    if not save_watermark:
        return ExportSummary(last, tuple(objects))
    with conn.transaction():
        conn.execute(
            "INSERT INTO audit_export_watermark (name, last_exported_hour, updated_at)"
            " VALUES (%s, %s, now()) ON CONFLICT (name) DO UPDATE SET"
            " last_exported_hour = GREATEST(audit_export_watermark.last_exported_hour,"
            " EXCLUDED.last_exported_hour), updated_at = EXCLUDED.updated_at",
            (WATERMARK_NAME, last),
        )
    return ExportSummary(last, tuple(objects))


def export_rows(
    rows: Iterable[Mapping[str, Any]],
    store: ObjectStore,
    *,
    through_hour: dt.datetime | None = None,
) -> ExportSummary:
    """Export rows given in memory (``audit_events`` column names; JSON as ``jsonb::text``).

    For an orchestration that must export before partitions are dropped without a database
    cursor. Rows need ``ingested_at``; hours after ``through_hour`` are left out.
    """
    last = hour_floor(through_hour) if through_hour is not None else None
    buckets: dict[dt.datetime, list[dict[str, Any]]] = {}
    for row in rows:
        hour = hour_floor(row["ingested_at"])
        if last is None or hour <= last:
            buckets.setdefault(hour, []).append(_normalise(row))
    objects = []
    for hour in sorted(buckets):
        ordered = sorted(buckets[hour], key=lambda r: (r["zone_id"], r["chain_seq"]))
        objects.append(_write_hour(store, hour, ordered))
    return ExportSummary(last, tuple(objects))


def _normalise(row: Mapping[str, Any]) -> dict[str, Any]:
    out = {c: row.get(c) or "" for c in _TEXT + _JSON}
    for c in ("content_sha256", "chain_hmac"):
        out[c] = row.get(c) or ""
    out["chain_seq"] = int(row.get("chain_seq") or 0)
    out["occurred_at"] = row["occurred_at"]
    return out


def _by_hour(
    rows: Iterator[dict[str, Any]],
) -> Iterator[tuple[dt.datetime, list[dict[str, Any]]]]:
    """Group rows (already ordered by hour) into one list per UTC hour."""
    hour: dt.datetime | None = None
    bucket: list[dict[str, Any]] = []
    for row in rows:
        this = row["hour"].replace(tzinfo=dt.UTC)
        if hour is not None and this != hour:
            yield hour, bucket
            bucket = []
        hour = this
        bucket.append(row)
    if hour is not None:
        yield hour, bucket


def _write_hour(
    store: ObjectStore, hour: dt.datetime, rows: list[dict[str, Any]]
) -> ExportedObject:
    """Write one hour's object unless it exists already (If-None-Match: *)."""
    key = object_key(hour)
    written = store.put(key, to_parquet(rows), if_none_match=True)
    return ExportedObject(key, hour, len(rows), written)


def to_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Parquet bytes of rows in the OCSF export mapping."""
    columns: dict[str, list[Any]] = {name: [] for name, _ in COLUMNS}
    for row in rows:
        deny = str(row["decision"]).casefold() == "deny"
        values = {
            "class_uid": CLASS_UID,
            "type_uid": TYPE_UID,
            "severity_id": 2 if deny else 1,
            "activity_id": 2 if deny else 1,
            "time": unix_nanos(row["occurred_at"]) // 1_000_000,
            "metadata_version": METADATA_VERSION,
            "product_name": PRODUCT_NAME,
            "event_id": row["id"],
        }
        for name, _ in COLUMNS:
            columns[name].append(values[name] if name in values else row[name])
    table = pa.table(columns, schema=arrow_schema())
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()

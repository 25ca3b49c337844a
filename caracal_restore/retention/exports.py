"""Audit export watermarks and the Parquet archive, against the restored database (FACTS-1.0 §6,
§20 A5/R1; FACTS-2026.06 §4.5).

The exporter writes one object per UTC hour of ``ingested_at`` up to the watermark
``parquet-hourly`` and never overwrites one (``If-None-Match: *``). So, as of the backup: the
watermark equals the source's; every hour up to it that has rows has its object holding
exactly those rows; the chain links verify across all objects; every event retention removed
from PostgreSQL is still in the archive; and no key has a second version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from caracal_restore import fingerprint as fp
from caracal_restore.chainhash import EPOCH
from caracal_restore.environments.objectstore import ObjectInfo, ObjectStore
from caracal_restore.parquet_export import (
    WATERMARK_NAME,
    ArchiveIndex,
    ArchiveObject,
    object_key,
    read_archive,
    read_archive_rows,
    verify_archive_chain,
)
from caracal_restore.pgcopy import copy_line_batches, split_escaped
from caracal_restore.retention.audit import ChainHoles
from caracal_restore.retention.common import (
    AUDIT_TABLE,
    Evaluation,
    iso,
    ranges,
    show_ranges,
)

_HOUR = dt.timedelta(hours=1)
WATERMARK_TABLE = "audit_export_watermark"


# ------------------------------------------------------------------------------ reading


class _ReadAhead:
    """An ObjectStore view whose ``get_many`` is fed by a thread running ahead of the reader.

    ``read_archive`` lists once and then reads the objects in order; a thread fetches them
    (``get_many``: one kept-alive connection) while the reader parses the ones already here,
    and at most ``window`` fetched objects wait in memory.
    """

    def __init__(self, store: ObjectStore, window: int) -> None:
        self._store = store
        self._window = window

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return self._store.list(prefix)

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes | OSError]]:
        done = object()
        ahead: queue.Queue[Any] = queue.Queue(maxsize=self._window)
        stop = threading.Event()

        def offer(item: object) -> bool:
            while not stop.is_set():
                try:
                    ahead.put(item, timeout=0.5)
                    return True
                except queue.Full:
                    continue
            return False

        def fetch() -> None:
            try:
                for item in self._store.get_many(keys):
                    if not offer(item):
                        return
            except BaseException as exc:  # handed to the reader, raised there
                offer(exc)
                return
            offer(done)

        worker = threading.Thread(target=fetch, name="archive-read", daemon=True)
        worker.start()
        try:
            while (item := ahead.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(timeout=30)


def _ahead(store: ObjectStore, window: int) -> ObjectStore:
    """``store`` when its ``get_many`` reads ahead itself (pipelined GETs: a thread beside it
    only adds hand-overs and GIL switches, ~3 s of CPU per 10 000 objects while both cores
    are free, little when the other one is busy), else a view whose thread fetches ahead."""
    if store.reads_ahead:
        return store
    return _ReadAhead(store, window)  # type: ignore[return-value]


def read_index(store: ObjectStore, *, window: int = 64) -> ArchiveIndex:
    """``read_archive`` with the objects fetched ahead of parsing (thousands of them)."""
    return read_archive(_ahead(store, window))


def read_index_rows(store: ObjectStore, *, window: int = 64
                    ) -> tuple[list[ArchiveObject], list[str], pa.Table]:
    """``read_archive_rows`` (the columnar reading a run saves) with the same read-ahead."""
    return read_archive_rows(_ahead(store, window))


def read_watermark(conn: psycopg.Connection[Any], name: str = WATERMARK_NAME
                   ) -> tuple[dt.datetime, dt.datetime] | None:
    """(last_exported_hour, updated_at) of the watermark row, or None when it is absent."""
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{WATERMARK_TABLE}",)
                          ).fetchone()
    if not exists or not exists[0]:
        raise LookupError(f"the restored database has no table {WATERMARK_TABLE}")
    row = conn.execute(
        sql.SQL("SELECT last_exported_hour, updated_at FROM {} WHERE name = %s").format(
            sql.Identifier(WATERMARK_TABLE)), (name,)).fetchone()
    return (row[0], row[1]) if row else None


def watermark_hour(conn: psycopg.Connection[Any], name: str = WATERMARK_NAME
                   ) -> dt.datetime | None:
    """The restored ``last_exported_hour`` (None when the row is absent)."""
    row = read_watermark(conn, name)
    return row[0] if row else None


# ------------------------------------------------------------------------- RC-EXP-1


def watermark_matches_source(
    conn: psycopg.Connection[Any],
    *,
    source_tables: Mapping[str, Any] | None,
    source_value: tuple[dt.datetime, dt.datetime] | None = None,
    name: str = WATERMARK_NAME,
) -> Evaluation:
    """RC-EXP-1: the restored watermark row is the source's (digest in the fingerprint).

    ``source_tables`` is the fingerprint's per-table digests of the source database (taken in
    the dump's snapshot); ``source_value`` the row read from a live source when there is no
    fingerprint. With neither, the comparison cannot be made (LookupError).
    """
    restored = read_watermark(conn, name)
    result = Evaluation(observed={
        "restored": {"name": name, "last_exported_hour": iso(restored[0]) if restored else None,
                     "updated_at": iso(restored[1]) if restored else None},
    })
    if restored is None:
        result.add("watermark_missing", name,
                   f"{WATERMARK_TABLE} has no row {name!r}: a restarted exporter would export "
                   "only the current target hour and never the backlog")
    if source_tables is not None:
        expected = source_tables.get(WATERMARK_TABLE)
        if expected is None:
            raise LookupError(f"the source fingerprint has no digest of {WATERMARK_TABLE}")
        actual = fp.take_fingerprint(conn, tables=[WATERMARK_TABLE],
                                     parts=("tables",))["tables"][WATERMARK_TABLE]
        result.observed["source digest"] = {"rows": expected["rows"],
                                            "sha256": expected["sha256"]}
        result.observed["restored digest"] = {"rows": actual["rows"], "sha256": actual["sha256"]}
        if (actual["rows"], actual["sha256"]) != (expected["rows"], expected["sha256"]):
            result.add("watermark_differs", name,
                       f"{WATERMARK_TABLE} differs from the source's at backup time: source "
                       f"{expected['rows']} row(s) sha256 {expected['sha256'][:16]}…, restored "
                       f"{actual['rows']} row(s) sha256 {actual['sha256'][:16]}… (restored "
                       f"last_exported_hour {iso(restored[0]) if restored else None})")
        return result
    if source_value is not None:
        result.observed["source"] = {"last_exported_hour": iso(source_value[0]),
                                     "updated_at": iso(source_value[1])}
        if restored is not None and tuple(restored) != tuple(source_value):
            result.add("watermark_differs", name,
                       f"restored watermark {iso(restored[0])} (updated {iso(restored[1])}) is "
                       f"not the source's {iso(source_value[0])} (updated "
                       f"{iso(source_value[1])})")
        return result
    raise LookupError(
        "the source's watermark is unknown: the bundle has no fingerprint.json and no live "
        f"source was given (restored value: {result.observed['restored']})")


# ------------------------------------------------------------------------- RC-EXP-2


@dataclasses.dataclass
class _HourTally:
    rows: int = 0
    missing: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class HourRows:
    """One pass over the restored rows ingested through the watermark's hour.

    Each row is compared with the archive as it streams (RC-EXP-2, from the archive's first
    hour) and counted under its hour (AS-7, every hour): the two controls share one reading of
    a million rows instead of two. A row found in its hour's object under its own event id is
    in that object; the ids of the others are kept for AS-7's exact look-up.
    """

    watermark: dt.datetime | None
    #: The archive's first hour (None: the archive holds no object).
    first: dt.datetime | None
    #: Restored rows ingested through the watermark's hour.
    rows: int = 0
    #: Rows per UTC hour of ``ingested_at``, every hour through the watermark's.
    rows_by_hour: dict[dt.datetime, int] = dataclasses.field(default_factory=dict)
    #: Per compared hour, the event ids not found in its object at their (zone_id, chain_seq).
    unconfirmed: dict[dt.datetime, set[str]] = dataclasses.field(default_factory=dict)
    #: Rows compared with the archive (hours from ``first``), per hour.
    tallies: dict[dt.datetime, _HourTally] = dataclasses.field(default_factory=dict)
    #: Compared rows whose object or fields differ from the archive's, as sentences.
    wrong: list[str] = dataclasses.field(default_factory=list)

    @property
    def compared(self) -> bool:
        """Whether any hour could be compared (a watermark, and an object up to it)."""
        return (self.watermark is not None and self.first is not None
                and self.first <= self.watermark)


def _db_rows(conn: psycopg.Connection[Any], hi: dt.datetime) -> Iterator[tuple[Any, ...]]:
    """Restored rows with ``ingested_at`` before ``hi``, streamed (exporter's NULL handling).

    The server computes what is compared per row: the UTC hour of ``ingested_at`` (seconds
    since the epoch) and the export's millisecond ``time`` (``floor(occurred_at µs / 1000)``,
    exact: ``extract`` is numeric). ``ingested_at`` comes as microseconds since the epoch and
    becomes a datetime only for a message (two datetimes per row cost ~1 s at 1 000 000 rows).
    The rows come through ``COPY … TO STDOUT`` (text) and are split here: 2.6 s of CPU at
    1 000 000 rows, client and server, where a server-side cursor took 3.8 s.
    """
    query = sql.SQL("COPY ({}) TO STDOUT").format(_db_rows_select())
    encoding = conn.info.encoding
    for lines in copy_line_batches(conn, query, (hi,)):
        for line in lines:
            if b"\\" in line:  # a NULL, or an escaped tab, newline or backslash in a value
                yield _typed(split_escaped(line), encoding)
                continue
            f = line.decode(encoding).split("\t")
            yield (f[0], int(f[1]), f[2], f[3], f[4], int(f[5]), int(f[6]), int(f[7]), f[8],
                   f[9], f[10])


def _db_rows_select() -> sql.Composed:
    """The ``SELECT`` whose rows ``_db_rows`` reads (parameter: the high ``ingested_at``)."""
    return sql.SQL(
        "SELECT zone_id::text, COALESCE(chain_seq, 0), COALESCE(id::text, ''),"
        " COALESCE(content_sha256, ''), COALESCE(chain_hmac, ''),"
        " floor(extract(epoch FROM occurred_at) * 1000)::bigint,"
        " extract(epoch FROM date_trunc('hour', ingested_at AT TIME ZONE 'UTC'))::bigint,"
        " floor(extract(epoch FROM ingested_at) * 1000000)::bigint,"
        " COALESCE(decision, ''), COALESCE(event_type, ''), COALESCE(request_id, '')"
        " FROM {} WHERE ingested_at < %s"
    ).format(sql.Identifier(AUDIT_TABLE))


#: Fields of ``_db_rows`` that are integers (chain_seq, time, hour, ingested µs).
_INTS = frozenset({1, 5, 6, 7})


def _typed(fields: list[bytes | None], encoding: str) -> tuple[Any, ...]:
    """One row of ``_db_rows`` from its unescaped fields (a NULL stays None)."""
    return tuple(None if v is None else int(v) if i in _INTS else v.decode(encoding)
                 for i, v in enumerate(fields))


_FIELDS = ("event_id", "content_sha256", "chain_hmac", "time", "decision", "event_type",
           "request_id")


def read_hours(conn: psycopg.Connection[Any], index: ArchiveIndex,
               watermark: dt.datetime | None) -> HourRows:
    """Read the restored rows ingested through ``watermark``'s hour once (see ``HourRows``).

    A row of an hour from the archive's first is looked up by ``(zone_id, chain_seq)``: it
    must be in its hour's object with the same event id, ``content_sha256``, ``chain_hmac``,
    millisecond ``time``, decision, event type and request id.
    """
    reading = HourRows(watermark, index.hours[0] if index.hours else None)
    if watermark is None:
        return reading
    compare_from = reading.first if reading.compared else None
    rows = index.rows
    counts: dict[int, int] = {}
    hours: dict[int, tuple[str, set[str], _HourTally] | None] = {}
    for (zone, seq, event_id, content, mac, time_ms, hour_epoch, ingested_us, decision, etype,
         req) in _db_rows(conn, watermark + _HOUR):
        counts[hour_epoch] = counts.get(hour_epoch, 0) + 1
        if hour_epoch in hours:
            known = hours[hour_epoch]
        else:
            hour = dt.datetime.fromtimestamp(hour_epoch, dt.UTC)
            known = hours[hour_epoch] = (
                (object_key(hour), reading.unconfirmed.setdefault(hour, set()),
                 reading.tallies.setdefault(hour, _HourTally()))
                if compare_from is not None and hour >= compare_from else None)
        if known is None:  # an hour before the archive's first: counted only
            continue
        key, unconfirmed, tally = known
        tally.rows += 1
        row = rows.get((zone, seq))
        if row is None or row.key != key:
            unconfirmed.add(event_id)
            tally.missing.append(int(seq))
            if row is not None:
                ingested = EPOCH + dt.timedelta(microseconds=ingested_us)
                reading.wrong.append(f"zone {zone} chain_seq {seq} (ingested {iso(ingested)}) "
                                     f"is in {row.key}, not {key}")
            continue
        expected = (event_id, content, mac, time_ms, decision, etype, req)
        got = (row.event_id, row.content_sha256, row.chain_hmac, row.time_ms, row.decision,
               row.event_type, row.request_id)
        if expected != got:
            if row.event_id != event_id:
                unconfirmed.add(event_id)
            diff = [n for n, a, b in zip(_FIELDS, expected, got, strict=True) if a != b]
            reading.wrong.append(f"zone {zone} chain_seq {seq} in {key}: {', '.join(diff)} "
                                 "differ from the restored row")
    reading.rows = sum(counts.values())
    reading.rows_by_hour = {dt.datetime.fromtimestamp(e, dt.UTC): n for e, n in counts.items()}
    return reading


def evaluate_hours(reading: HourRows, index: ArchiveIndex) -> Evaluation:
    """RC-EXP-2: every hour up to the watermark with rows has its object, equal to the database.

    Hours run from the archive's first object (exports start when the exporter was enabled)
    to the restored watermark. For every restored row ingested in hour H the object of H
    holds the same event with the same ``content_sha256``, ``chain_hmac``, ``chain_seq``,
    ``zone_id``, ``decision``, ``event_type``, ``request_id`` and millisecond ``time``.
    Exported rows absent from the database are retention's (RC-AUD-5, RC-EXP-4).
    """
    result = Evaluation()
    watermark, first = reading.watermark, reading.first
    present = {o.key for o in index.objects}
    result.observed["archive objects"] = len(index.objects)
    result.observed["archive rows"] = len(index.rows)
    result.observed["watermark"] = iso(watermark)
    for problem in index.problems:
        result.add("unreadable_object", "archive", problem)
    if watermark is None:
        result.add("no_watermark", WATERMARK_NAME,
                   "the restored database has no export watermark: no hour can be checked")
        return result
    if not reading.compared:
        n = reading.rows
        result.observed["rows ingested up to the watermark"] = n
        if n:
            result.add("archive_empty", "archive",
                       f"the watermark says hours through {iso(watermark)} were exported and "
                       f"{n} restored rows were ingested by then, but the archive holds no "
                       "object up to that hour")
        return result
    result.observed["hours checked"] = f"{iso(first)} .. {iso(watermark)}"
    result.observed["restored rows in the exported hours"] = sum(
        t.rows for t in reading.tallies.values())
    result.observed["hours with rows"] = len(reading.tallies)
    missing_objects = []
    for hour, tally in sorted(reading.tallies.items()):
        key = object_key(hour)
        if key not in present:
            missing_objects.append(key)
            result.add("object_missing", key,
                       f"hour {iso(hour)} has {tally.rows} restored rows but no object {key}")
        elif tally.missing:
            result.add("rows_missing", key,
                       f"object {key} lacks {len(tally.missing)} of the hour's {tally.rows} "
                       f"restored rows (chain_seq {show_ranges(ranges(tally.missing))})")
    result.observed["missing objects"] = missing_objects[:50]
    wrong = reading.wrong
    for text in wrong[:50]:
        result.add("row_differs", "archive", text)
    if len(wrong) > 50:
        result.add("row_differs", "archive", f"… and {len(wrong) - 50} more rows differ")
    return result


# ------------------------------------------------------------------------- RC-EXP-3


def chain_across_export(index: ArchiveIndex, hmac_key: bytes | None) -> Evaluation:
    """RC-EXP-3: ``chain_hmac`` of every exported row links to the previous row of its zone."""
    problems = verify_archive_chain(index, hmac_key)
    zones = index.zones()
    result = Evaluation(observed={
        "zones": {z: {"rows": len(s), "first chain_seq": s[0], "last chain_seq": s[-1]}
                  for z, s in zones.items() if s},
        "rows": len(index.rows),
        "hmac key": "AUDIT_HMAC_KEY from the restored secrets" if hmac_key else "none (unsigned)",
    })
    if not index.rows:
        raise LookupError("the archive holds no exported rows: there is no chain to verify")
    for problem in problems:
        result.add("chain_link", "archive", problem)
    return result


# ------------------------------------------------------------------------- RC-EXP-4


def continuity(holes: ChainHoles, index: ArchiveIndex, watermark: dt.datetime | None
               ) -> Evaluation:
    """RC-EXP-4: nothing aged out of PostgreSQL before it was exported.

    Every chain_seq absent from a restored zone chain below its head — the prefix retention
    dropped, or a hole inside — must be in the archive.
    """
    result = Evaluation(observed={
        "zones": {z: {"first chain_seq": h[0], "last chain_seq": h[1], "rows": h[2]}
                  for z, h in sorted(holes.heads.items())},
        "absent chain_seq ranges": {z: show_ranges(g, 20) for z, g in sorted(holes.gaps.items())},
        "absent events": holes.missing_count(),
        "export watermark": iso(watermark),
    })
    covered = 0
    for zone, spans in sorted(holes.gaps.items()):
        uncovered: list[int] = []
        for lo, hi in spans:
            for seq in range(lo, hi + 1):
                if (zone, seq) in index.rows:
                    covered += 1
                else:
                    uncovered.append(seq)
        if uncovered:
            where = "the start of the chain" if uncovered[0] == 1 else "inside the chain"
            result.add("not_exported", zone,
                       f"zone {zone}: chain_seq {show_ranges(ranges(uncovered))} "
                       f"({len(uncovered)} events, from {where}) are gone from the restored "
                       "database and are not in the archive: evidence aged out before it was "
                       "exported")
    result.observed["absent events found in the archive"] = covered
    return result


# ------------------------------------------------------------------------- RC-EXP-5


def write_once(index: ArchiveIndex, versioning: str | None) -> Evaluation:
    """RC-EXP-5: no export object was overwritten (one version per key on a versioned bucket)."""
    result = Evaluation(observed={"bucket versioning": versioning,
                                  "objects": len(index.objects)})
    if versioning != "Enabled":
        raise LookupError(
            f"the archive bucket's versioning is {versioning or 'not enabled'}: an overwrite "
            "leaves no second version, so write-once cannot be observed")
    multi = {k: n for k, n in index.version_counts.items() if n != 1}
    result.observed["keys with more than one version"] = dict(sorted(multi.items())[:50])
    for key, n in sorted(multi.items()):
        result.add("overwritten", key, f"{key} has {n} versions: it was written more than once")
    return result


def bucket_versioning(store: ObjectStore) -> str | None:
    """The bucket's versioning status (``Enabled``, ``Suspended``) or None (never enabled)."""
    client = getattr(store, "client", None)
    if client is None:
        return None
    status = client.get_bucket_versioning(Bucket=store.bucket).get("Status")
    return str(status) if status else None

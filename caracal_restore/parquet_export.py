"""Audit export archive (S3 Parquet, FACTS-1.0 §6): layout, schema, reader and chain verifier.

The Audit service writes one object per UTC hour of ``ingested_at``,
``audit/<YYYY>/<MM>/<DD>/<YYYY-MM-DD>T<HH>.parquet``, one row per event in the OCSF 1.7.0
Authorization Activity mapping below. The archive cannot re-derive content hashes (time
is in milliseconds, NULL JSON is ``""``), but its ``chain_hmac`` links can be checked
across all objects (FACTS-1.0 §20 A5.3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import gc
import hmac
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from caracal_restore.chainhash import chain_hmac_bytes
from caracal_restore.environments.objectstore import ObjectStore

#: Exact column names and types of an export object, in order.
COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("class_uid", pa.int32()),
    ("type_uid", pa.int32()),
    ("severity_id", pa.int32()),
    ("activity_id", pa.int32()),
    ("time", pa.int64()),
    ("zone_id", pa.string()),
    ("request_id", pa.string()),
    ("policy_set_version_id", pa.string()),
    ("decision", pa.string()),
    ("metadata_version", pa.string()),
    ("product_name", pa.string()),
    ("event_id", pa.string()),
    ("event_type", pa.string()),
    ("policy_set_id", pa.string()),
    ("manifest_sha", pa.string()),
    ("evaluation_status", pa.string()),
    ("determining_policies_json", pa.string()),
    ("diagnostics_json", pa.string()),
    ("metadata_json", pa.string()),
    ("content_sha256", pa.string()),
    ("chain_hmac", pa.string()),
    ("chain_seq", pa.int64()),
)
CLASS_UID = 6003
TYPE_UID = 600301
METADATA_VERSION = "1.7.0"
PRODUCT_NAME = "caracal"
WATERMARK_NAME = "parquet-hourly"
PREFIX = "audit/"
KEY_PATTERN = re.compile(
    r"audit/(\d{4})/(\d{2})/(\d{2})/(\d{4})-(\d{2})-(\d{2})T(\d{2})\.parquet"
)
#: Columns the reader keeps per row.
_READ = ("zone_id", "chain_seq", "event_id", "content_sha256", "chain_hmac", "time",
         "decision", "event_type", "request_id")


def arrow_schema() -> pa.Schema:
    """The export schema (every column required, as parquet-go writes a Go struct)."""
    return pa.schema([pa.field(name, kind, nullable=False) for name, kind in COLUMNS])


def object_key(hour: dt.datetime) -> str:
    """The object key of one UTC hour."""
    h = hour.astimezone(dt.UTC)
    return f"audit/{h:%Y}/{h:%m}/{h:%d}/{h:%Y-%m-%d}T{h:%H}.parquet"


def hour_of_key(key: str) -> dt.datetime | None:
    """The UTC hour an object key names, or None when the key is not in the export layout."""
    match = KEY_PATTERN.fullmatch(key)
    if not match:
        return None
    y, m, d, y2, m2, d2, hh = match.groups()
    if (y, m, d) != (y2, m2, d2):
        return None
    try:
        return dt.datetime(int(y), int(m), int(d), int(hh), tzinfo=dt.UTC)
    except ValueError:
        return None


def schema_signature(schema: pa.Schema) -> tuple[tuple[str, str], ...]:
    """Column names and types of a schema, comparable with ``==``."""
    return tuple((field.name, str(field.type)) for field in schema)


EXPECTED_SIGNATURE = tuple((name, str(kind)) for name, kind in COLUMNS)


class ArchiveRow(NamedTuple):
    """The verifiable fields of one exported event (a tuple: a million are built per read)."""

    event_id: str
    content_sha256: str
    chain_hmac: str
    time_ms: int
    decision: str
    event_type: str
    request_id: str
    key: str


_ROW_FIELDS = ArchiveRow._fields


@dataclasses.dataclass(frozen=True)
class ArchiveObject:
    """One object of the archive: where it is, which hour it names, and what it holds."""

    key: str
    hour: dt.datetime | None
    size: int
    versions: int
    rows: int
    schema: tuple[tuple[str, str], ...]

    @property
    def schema_ok(self) -> bool:
        """True when the object's columns are exactly the export schema."""
        return self.schema == EXPECTED_SIGNATURE


@dataclasses.dataclass
class ArchiveIndex:
    """Every object and row of an export archive, keyed for comparison with the database."""

    objects: list[ArchiveObject] = dataclasses.field(default_factory=list)
    rows: dict[tuple[str, int], ArchiveRow] = dataclasses.field(default_factory=dict)
    #: (zone_id, chain_seq) found more than once, with every object key that holds it.
    duplicates: dict[tuple[str, int], list[str]] = dataclasses.field(default_factory=dict)
    #: The second and later copies of those positions (``rows`` holds the first).
    duplicate_rows: list[tuple[tuple[str, int], ArchiveRow]] = dataclasses.field(
        default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def version_counts(self) -> dict[str, int]:
        """Versions per object key (write-once objects have exactly one)."""
        return {o.key: o.versions for o in self.objects}

    @property
    def hours(self) -> list[dt.datetime]:
        """Hours named by the objects, in order."""
        return sorted(o.hour for o in self.objects if o.hour is not None)

    def event_ids_by_key(self) -> dict[str, set[str]]:
        """Event ids per object key."""
        out: dict[str, set[str]] = {o.key: set() for o in self.objects}
        for row in self.rows.values():
            out.setdefault(row.key, set()).add(row.event_id)
        for _ident, row in self.duplicate_rows:
            out.setdefault(row.key, set()).add(row.event_id)
        return out

    def save(self, folder: Path) -> None:
        """Write the index to ``folder`` (Arrow IPC rows + JSON), for ``load`` in another
        process: the archive is read once per run, not once per check process."""
        rows = _rows_table(list(self.rows.items()) + self.duplicate_rows)
        save_rows(folder, self.objects, self.problems, rows)

    @staticmethod
    def load_objects(folder: Path) -> list[ArchiveObject]:
        """The objects of an index written by ``save`` (not its rows)."""
        return _saved_objects(json.loads((folder / "index.json").read_text(encoding="utf-8")))

    @classmethod
    def load(cls, folder: Path) -> ArchiveIndex:
        """An index written by ``save`` (duplicates are found again while loading)."""
        meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        index = cls(problems=list(meta["problems"]), objects=_saved_objects(meta))
        # tuple.__new__ makes each row in C; ArchiveRow._make would call Python code per row.
        make = functools.partial(tuple.__new__, ArchiveRow)
        with _bulk_build(), pa.memory_map(str(folder / "rows.arrow")) as source:
            reader = pa.ipc.open_file(source)
            for i in range(reader.num_record_batches):
                batch = reader.get_batch(i)
                idents = list(zip(*(_values(batch, n) for n in ("zone_id", "chain_seq")),
                                  strict=True))
                rows = map(make, zip(*(_values(batch, n) for n in _ROW_FIELDS), strict=True))
                if index.rows.keys().isdisjoint(idents) and len(set(idents)) == len(idents):
                    index.rows.update(zip(idents, rows, strict=True))  # no duplicate: in bulk
                else:
                    for ident, row in zip(idents, rows, strict=True):
                        _add(index, ident, row)
        if len(index.rows) != int(meta["rows"]):
            raise ValueError(f"{folder}: {len(index.rows)} positions loaded, "
                             f"{meta['rows']} saved")
        return index

    def zones(self) -> dict[str, list[int]]:
        """Sorted chain_seq values per zone."""
        out: dict[str, list[int]] = {}
        for zone, seq in self.rows:
            out.setdefault(zone, []).append(seq)
        return {z: sorted(s) for z, s in sorted(out.items())}


#: Saved columns with few distinct values (zones, object keys, decisions, event types): each
#: distinct string is made once per batch and shared by its rows, not made once per row
#: (~250 MB less per loaded index at 1 000 000 exported rows, and less time making them).
_SHARED_STRINGS = frozenset({"zone_id", "key", "decision", "event_type"})


def _values(batch: pa.RecordBatch, name: str) -> list[Any]:
    """One column of a saved batch as Python values (``_SHARED_STRINGS`` made once each)."""
    column = batch.column(name)
    if name not in _SHARED_STRINGS:
        # Through NumPy when nothing is null: ~40 % faster than to_pylist, the same values.
        return (column.to_numpy(zero_copy_only=False).tolist() if not column.null_count
                else column.to_pylist())
    encoded = pc.dictionary_encode(column)
    distinct = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
    return distinct[encoded.indices.fill_null(len(encoded.dictionary)).to_numpy()].tolist()


def _saved_objects(meta: dict[str, Any]) -> list[ArchiveObject]:
    """The objects recorded in a saved index's ``index.json`` (schemas listed once each)."""
    schemas = [tuple((str(a), str(b)) for a, b in schema) for schema in meta["schemas"]]
    return [ArchiveObject(key, dt.datetime.fromisoformat(hour) if hour else None, int(size),
                          int(versions), int(rows), schemas[schema])
            for key, hour, size, versions, rows, schema in meta["objects"]]


_SAVED_ROW_TYPES = (("event_id", pa.string()), ("content_sha256", pa.string()),
                    ("chain_hmac", pa.string()), ("time_ms", pa.int64()),
                    ("decision", pa.string()), ("event_type", pa.string()),
                    ("request_id", pa.string()), ("key", pa.string()))
assert tuple(name for name, _ in _SAVED_ROW_TYPES) == _ROW_FIELDS
_SAVED_SCHEMA = pa.schema([("zone_id", pa.string()), ("chain_seq", pa.int64()),
                          *_SAVED_ROW_TYPES])


def _rows_table(rows: list[tuple[tuple[str, int], ArchiveRow]]) -> pa.Table:
    """``(zone, chain_seq), row`` pairs as a table in ``save_rows``' layout, in their order."""
    return pa.table({
        "zone_id": pa.array([z for (z, _), _r in rows], pa.string()),
        "chain_seq": pa.array([q for (_, q), _r in rows], pa.int64()),
        **{name: pa.array([getattr(r, name) for _i, r in rows], kind)
           for name, kind in _SAVED_ROW_TYPES},
    })


#: Rows per batch of a saved index (about: ``read_archive_rows`` ends one at an object's end).
SAVED_BATCH = 65536


def save_rows(folder: Path, objects: list[ArchiveObject], problems: list[str],
              table: pa.Table) -> int:
    """Write an index's rows (``zone_id``, ``chain_seq`` and ``ArchiveRow``'s fields, first
    copies before later ones) and its objects and problems, for ``ArchiveIndex.load``; returns
    the number of distinct (zone, chain_seq) positions."""
    folder.mkdir(parents=True, exist_ok=True)
    # Batches of ~65 536 rows, not one per object read (~100 rows each): loading converts a
    # batch at a time, and 10 000 small batches cost ~0.5 s more at 1 000 000 rows. The
    # positions are grouped over such chunks too (4x faster than over 10 000 of them).
    if table.num_rows and table.column(0).num_chunks * SAVED_BATCH > 2 * table.num_rows:
        table = table.combine_chunks()  # small chunks (not ``read_archive_rows``' tables)
    with pa.OSFile(str(folder / "rows.arrow"), "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=SAVED_BATCH)
    positions = (table.group_by(["zone_id", "chain_seq"]).aggregate([]).num_rows
                 if table.num_rows else 0)
    schemas: dict[tuple[tuple[str, str], ...], int] = {}
    meta = {
        "rows": positions,
        # Thousands of objects share one schema signature (the export's): it is written once.
        "objects": [[o.key, o.hour.isoformat() if o.hour else None, o.size, o.versions,
                     o.rows, schemas.setdefault(o.schema, len(schemas))] for o in objects],
        "schemas": [[list(c) for c in schema] for schema in schemas],
        "problems": problems,
    }
    (folder / "index.json").write_text(json.dumps(meta), encoding="utf-8")
    return positions


def read_archive_rows(store: ObjectStore, *, prefix: str = PREFIX
                      ) -> tuple[list[ArchiveObject], list[str], pa.Table]:
    """``read_archive`` without building a Python object per row: its objects, problems and
    rows as one Arrow table in ``save_rows``' layout (what the run's background reading saves).

    An object of exactly the export schema has its rows taken column by column; any other is
    read by ``read_archive``'s own row-by-row code, so both readings agree on every object.
    """
    problems: list[str] = []
    parts: list[pa.Table] = []
    run = _ColumnRun()

    def read(data: bytes, key: str) -> tuple[tuple[tuple[str, str], ...], int]:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        schema = schema_signature(parquet.schema_arrow)
        if schema == EXPECTED_SIGNATURE:
            # One thread: an hourly object is small, and a thread pool per read costs more
            # than it saves (0.15 instead of 0.23 ms per object).
            table = parquet.read(columns=list(_READ), use_threads=False)
            if not any(table.column(n).null_count for n in ("zone_id", "chain_seq", "time")):
                run.add(table, key)
                return schema, table.num_rows
        # The row-by-row reader decides what such an object holds (and how it fails); the
        # objects read column by column before it go first, so the rows keep their order.
        parts.extend(run.take())
        schema, count, rows = _object_row_list(data, key, problems)
        if rows:
            parts.append(_rows_table(rows))
        return schema, count

    objects = _read_objects(store, prefix, problems, read)
    parts.extend(run.take())
    table = pa.concat_tables(parts) if parts else _SAVED_SCHEMA.empty_table()
    return objects, problems, table


class _ColumnRun:
    """Consecutive objects of the export schema, read column by column, made into tables of
    ``save_rows``' layout ~``SAVED_BATCH`` rows at a time: per object, only its columns are
    kept, and the conversions run once over them all (not once per object of ~100 rows: ~0.2
    ms less per object)."""

    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.keys: list[str] = []
        self.counts: list[int] = []
        self.rows = 0
        self.done: list[pa.Table] = []

    def add(self, table: pa.Table, key: str) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.keys.append(key)
            self.counts.append(table.num_rows)
            self.rows += table.num_rows
            if self.rows >= SAVED_BATCH:
                self.done.append(self._made())

    def take(self) -> list[pa.Table]:
        """The rows added so far, in tables of about ``SAVED_BATCH`` rows each, one chunk
        per column (what ``save_rows`` writes as they are); starts a new run."""
        if self.tables:
            self.done.append(self._made())
        done, self.done = self.done, []
        return done

    def _made(self) -> pa.Table:
        """The objects added since the last table made, as one table; they are dropped."""
        tables, keys, counts = self.tables, self.keys, self.counts
        self.tables, self.keys, self.counts, self.rows = [], [], [], 0

        # "permissive": objects may differ in what the schema signature leaves out
        # (nullability, metadata).
        table = pa.concat_tables(tables, promote_options="permissive")
        text = {name: pc.fill_null(table.column(name), "")
                for name in ("event_id", "content_sha256", "chain_hmac", "decision",
                             "event_type", "request_id")}
        key = pc.take(pa.array(keys, pa.string()),
                      pa.array(np.repeat(np.arange(len(keys)), counts)))
        return pa.table({"zone_id": table.column("zone_id"),
                         "chain_seq": table.column("chain_seq"),
                         **text, "time_ms": table.column("time"), "key": key},
                        ).select(["zone_id", "chain_seq", *_ROW_FIELDS]).combine_chunks()


def read_archive(store: ObjectStore, *, prefix: str = PREFIX) -> ArchiveIndex:
    """Read every object under ``prefix``, in key order, into an index of its rows."""
    index = ArchiveIndex()
    with _bulk_build():
        index.objects = _read_objects(store, prefix, index.problems,
                                      lambda data, key: _read_object(data, key, index))
    return index


@contextlib.contextmanager
def _bulk_build() -> Iterator[None]:
    """Pause the cyclic garbage collector while an index's million row tuples are made.

    Every row tuple is a tracked container, so the collector would run again and again during
    the build, each time over all the rows made so far: at 1 000 000 rows, loading a saved index
    took 4.6 s with it and 1.7 s without. The rows hold no cycles; nothing is left uncollected.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_objects(
    store: ObjectStore, prefix: str, problems: list[str],
    read: Callable[[bytes, str], tuple[tuple[tuple[str, str], ...], int]],
) -> list[ArchiveObject]:
    """List ``prefix``, fetch every object in key order and hand its bytes to ``read`` (which
    keeps its rows and returns its schema signature and row count); every object, and a problem
    for each key, object or schema that is not an export's."""
    objects: list[ArchiveObject] = []
    listed = store.list(prefix)
    for info, (key, data) in zip(listed, store.get_many(i.key for i in listed), strict=True):
        assert key == info.key
        hour = hour_of_key(info.key)
        if hour is None:
            problems.append(
                f"{info.key}: key is not audit/<YYYY>/<MM>/<DD>/<YYYY-MM-DD>T<HH>.parquet"
            )
        try:
            if isinstance(data, OSError):
                raise data
            schema, count = read(data, info.key)
        except (pa.ArrowException, OSError, ValueError) as exc:
            problems.append(f"{info.key}: not a readable Parquet object ({exc})")
            schema, count = (), 0
        obj = ArchiveObject(info.key, hour, info.size, info.versions, count, schema)
        if schema and not obj.schema_ok:
            problems.append(f"{info.key}: schema {list(schema)} is not the export schema")
        objects.append(obj)
    return objects


def _read_object(
    data: bytes, key: str, index: ArchiveIndex
) -> tuple[tuple[tuple[str, str], ...], int]:
    """Add one object's rows to the index; return its schema signature and row count."""
    schema, count, rows = _object_row_list(data, key, index.problems)
    for ident, row in rows:
        _add(index, ident, row)
    return schema, count


def _object_row_list(
    data: bytes, key: str, problems: list[str]
) -> tuple[tuple[tuple[str, str], ...], int, list[tuple[tuple[str, int], ArchiveRow]]]:
    """One object's schema signature, row count and rows in the object's order."""
    parquet = pq.ParquetFile(pa.BufferReader(data))
    schema = schema_signature(parquet.schema_arrow)
    names = {name for name, _ in schema}
    missing = [c for c in _READ if c not in names]
    if missing:
        problems.append(f"{key}: missing columns {missing}")
        return schema, parquet.metadata.num_rows, []
    table = parquet.read(columns=list(_READ), use_threads=False)
    columns = [table.column(name).to_pylist() for name in _READ]
    rows = [((str(zone), int(seq)), ArchiveRow(
            event_id=event_id or "", content_sha256=content or "", chain_hmac=mac or "",
            time_ms=int(time_ms), decision=decision or "", event_type=event_type or "",
            request_id=request_id or "", key=key))
            for zone, seq, event_id, content, mac, time_ms, decision, event_type, request_id
            in zip(*columns, strict=True)]
    return schema, table.num_rows, rows


def _add(index: ArchiveIndex, ident: tuple[str, int], row: ArchiveRow) -> None:
    """One exported row into the index (a second copy of a position is a duplicate)."""
    held = index.rows.get(ident)
    if held is not None:
        index.duplicates.setdefault(ident, [held.key]).append(row.key)
        index.duplicate_rows.append((ident, row))
        return
    index.rows[ident] = row


def verify_archive_chain(
    index: ArchiveIndex, hmac_key: bytes | None, *, require_genesis: bool = False
) -> list[str]:
    """Check every row's chain_hmac against the previous chain_seq's content hash, per zone.

    Genesis (chain_seq 1) links to ``''``; a key of None or empty means rows must carry
    ``''``. A zone whose archive starts after seq 1 (export began later) has its first row
    unchecked unless ``require_genesis``; a missing seq in the middle and duplicated seqs
    are reported, as is every HMAC that does not match.
    """
    problems: list[str] = []
    # Without a key every row must carry '': chain_hmac of an empty key is not used then.
    mac = chain_hmac_bytes(hmac_key) if hmac_key else (lambda _content, _prev: b"")
    rows = index.rows
    for ident, keys in sorted(index.duplicates.items()):
        problems.append(f"zone {ident[0]} chain_seq {ident[1]}: exported more than once {keys}")
    for zone, seqs in index.zones().items():
        previous: int | None = None
        previous_content = b""  # the previous chain_seq's content hash, as bytes
        for seq in seqs:
            row = rows[(zone, seq)]
            content = row.content_sha256.encode()
            if seq == 1:
                link: bytes | None = b""
            elif previous == seq - 1:
                link = previous_content
            else:
                link = None
                if previous is not None:
                    problems.append(
                        f"zone {zone}: chain_seq {previous + 1}..{seq - 1} missing from the "
                        f"archive; link of chain_seq {seq} ({row.key}) cannot be verified"
                    )
                elif require_genesis:
                    problems.append(f"zone {zone}: archive starts at chain_seq {seq}, not 1")
            if link is not None and not hmac.compare_digest(mac(content, link),
                                                            row.chain_hmac.encode()):
                problems.append(
                    f"zone {zone} chain_seq {seq} (event {row.event_id}, {row.key}): "
                    "chain_hmac does not match HMAC(content_sha256 | previous content_sha256)"
                )
            previous, previous_content = seq, content
    return problems

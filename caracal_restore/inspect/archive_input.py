"""Which audit export archive a run checks, and when the data prove there is none to check.

The reference run creates its own archive bucket. A user's bundle names its archive with
``--archive`` (an ``s3://`` bucket on the run's object store, or a directory). When none is
named, the archive checks are not applicable only when the data prove the source never
exported an hour and lost nothing an archive would have to hold: no ``parquet-hourly``
watermark row at the source at backup time (the fingerprint or the dump itself) nor in the
restore, and no absent position in any restored audit chain. Otherwise they cannot be
evaluated, and say what to pass.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg

from caracal_restore.environments import objectstore
from caracal_restore.errors import EnvironmentNotReady
from caracal_restore.parquet_export import WATERMARK_NAME
from caracal_restore.retention.audit import chain_holes
from caracal_restore.retention.exports import read_watermark

WATERMARK_TABLE = "audit_export_watermark"


def open_location(location: str, server: objectstore.ObjectStoreServer) -> objectstore.ObjectStore:
    """The store at an ``--archive`` location (checked by ``live_source.check_archive``)."""
    if location.startswith("s3://"):
        if server.provider == "dir":
            raise EnvironmentNotReady(
                f"--archive {location} names a bucket, but the run's object store is a "
                "directory (--object-store-provider dir); name the archive's directory instead")
        return server.bucket(location[5:].strip("/"))
    path = Path(location)
    if not path.is_dir():
        raise EnvironmentNotReady(f"--archive {location} is not a directory")
    return objectstore.DirStore(path.parent, path.name)


def never_exported(conn: psycopg.Connection[Any], source_watermark_rows: int | None) -> str | None:
    """Why no archive can hold anything of this source, or None when the data do not prove it.

    ``source_watermark_rows``: rows of ``audit_export_watermark`` at the source at backup time
    (fingerprint or dump; None when unknown).
    """
    if source_watermark_rows is None or source_watermark_rows > 0:
        return None
    try:
        restored = read_watermark(conn, WATERMARK_NAME)
    except LookupError:
        return None
    if restored is not None:
        return None
    holes = chain_holes(conn)
    if any(holes.gaps.values()):
        return None
    events = sum(n for _lo, _hi, n in holes.heads.values())
    return (f"the source never exported an audit hour: {WATERMARK_TABLE} held no "
            f"{WATERMARK_NAME!r} row at backup time and holds none after the restore, and "
            f"none of the {events} restored audit events is missing from its zone's chain, so "
            "there is nothing an archive would have to hold (name one with --archive to check "
            "it anyway)")


def dump_watermark(dump: Path, pg_restore: Path
                   ) -> tuple[int, tuple[dt.datetime, dt.datetime] | None]:
    """Rows of the export watermark in the dump (the source at backup time), and the
    ``parquet-hourly`` row's (last_exported_hour, updated_at) when it is there."""
    from caracal_restore.inspect.tables import read_dump

    contents = read_dump(dump, pg_restore, capture=[WATERMARK_TABLE], only=[WATERMARK_TABLE])
    if WATERMARK_TABLE not in contents.rows:
        raise LookupError(f"the dump holds no table {WATERMARK_TABLE}")
    columns = contents.columns_of.get(WATERMARK_TABLE, [])
    for row in contents.rows_of[WATERMARK_TABLE]:
        values = dict(zip(columns, row, strict=False))
        if values.get("name") == WATERMARK_NAME:
            hour, updated = values.get("last_exported_hour"), values.get("updated_at")
            if not hour or not updated or "\\N" in (hour, updated):
                raise LookupError(f"the dump's {WATERMARK_NAME!r} row has no time")
            return contents.rows[WATERMARK_TABLE], (dt.datetime.fromisoformat(hour),
                                                    dt.datetime.fromisoformat(updated))
    return contents.rows[WATERMARK_TABLE], None

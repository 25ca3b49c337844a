"""Asset "Audit exports": the long-term evidence in the archive covers the restored audit rows.

The Audit service writes one Parquet object per UTC hour of ``ingested_at`` and records the
last hour it exported in ``audit_export_watermark``. Every hour up to that watermark that has
rows in the restored ``audit_events`` must have its object in the archive, holding those rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from caracal_restore.environments.objectstore import ObjectStore
from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.inspect.tables import shorten
from caracal_restore.parquet_export import WATERMARK_NAME, ArchiveIndex
from caracal_restore.retention.exports import HourRows
from checks.assets.expectations import EXPORTS
from fixtures import evidence
from fixtures.controls import Severity, control


@control("AS-7", feature=EXPORTS, grade="verified", severity=Severity.CRITICAL)
def test_every_exported_hour_is_in_the_archive(exported_hour_rows: HourRows,
                                               archive_store: ObjectStore,
                                               archive_index: ArchiveIndex) -> None:
    """AS-7 Every hour with audit rows up to the export watermark has its object in the archive."""
    watermark = exported_hour_rows.watermark
    if watermark is None:
        pytest.skip(f"not applicable: no audit_export_watermark row {WATERMARK_NAME!r}: the "
                    "source ran without audit exports")
    seen = inspect_assets.export_coverage(watermark.astimezone(dt.UTC),
                                          exported_hour_rows.rows_by_hour,
                                          exported_hour_rows.unconfirmed, archive_index)
    evidence.json("archive coverage", {"bucket": archive_store.bucket,
                                       **dataclasses.asdict(seen)})
    assert not seen.missing, (
        f"{len(seen.missing)} of {seen.hours_with_rows} hours with audit rows up to the "
        f"watermark {seen.watermark} have no object in {archive_store.bucket}: "
        f"{shorten(list(seen.missing))}")
    assert not seen.incomplete, (
        f"archive objects lack restored audit rows: {shorten(list(seen.incomplete))}")

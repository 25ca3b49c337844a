"""Retention controls, row "Audit database": AUDIT_RETENTION_DAYS and the monthly partitions.

Evaluated on the restored database as of the backup's time (FACTS-2026.06 §6, §2.10;
FACTS-1.0 §12.1, §4.8): the retention loop runs every 6 h, creates the current month's
partition and the next three, and drops whole monthly partitions ending at or before
``now − AUDIT_RETENTION_DAYS``.
"""

from __future__ import annotations

from typing import Any

import psycopg

from caracal_restore.audit_chain import Report
from caracal_restore.diagnose import Diagnosis
from caracal_restore.parquet_export import ArchiveIndex
from caracal_restore.retention import BackupClock, RetentionSettings, audit
from caracal_restore.retention.audit import ChainHoles, Partition
from caracal_restore.retention.exports import watermark_hour
from checks.retention.expectations import control_of
from fixtures import evidence


@control_of("RC-AUD-1")
def test_no_audit_row_outlives_the_retention_window(
    restored_conn: psycopg.Connection[Any], backup_time: BackupClock,
    retention_settings: RetentionSettings,
) -> None:
    """RC-AUD-1 No audit event older than AUDIT_RETENTION_DAYS is kept at backup time.

    Retention drops whole monthly partitions, so rows of the partition straddling the cutoff
    legitimately remain; anything older than that month (with one 6 h loop of slack) is a
    partition retention failed to drop, or a default-partition row nothing will ever remove.
    """
    result = audit.rows_beyond_window(restored_conn, backup_time, retention_settings)
    evidence.json("audit rows against the retention window", result.evidence())
    assert result.ok, result.message()


@control_of("RC-AUD-2")
def test_expired_audit_partitions_are_dropped(
    audit_partitions: list[Partition], backup_time: BackupClock,
    retention_settings: RetentionSettings,
) -> None:
    """RC-AUD-2 Every monthly audit partition that ended before the window was dropped."""
    result = audit.expired_partitions(audit_partitions, backup_time, retention_settings)
    evidence.json("audit partitions against the retention window", result.evidence())
    assert result.ok, result.message()


@control_of("RC-AUD-3")
def test_partitions_exist_for_the_backup_month_and_three_ahead(
    audit_partitions: list[Partition], backup_time: BackupClock,
    retention_settings: RetentionSettings,
) -> None:
    """RC-AUD-3 Partitions exist for the backup month and the 3 months the loop creates ahead."""
    result = audit.rolling_partitions(audit_partitions, backup_time, retention_settings)
    evidence.json("rolling partition window", result.evidence())
    assert result.ok, result.message()


@control_of("RC-AUD-4")
def test_default_partition_blocks_no_partition(
    restored_conn: psycopg.Connection[Any], audit_partitions: list[Partition],
    backup_time: BackupClock, retention_settings: RetentionSettings,
) -> None:
    """RC-AUD-4 audit_events_default holds no row of a month that has or needs its own partition.

    Such a row makes ``CREATE TABLE … PARTITION OF`` fail for that month, and the retention
    tick aborts before dropping anything — from then on (FACTS-1.0 §12.1). The months
    affected are named.
    """
    result = audit.default_partition_hazard(restored_conn, audit_partitions, backup_time,
                                            retention_settings)
    evidence.json("default partition by month", result.evidence())
    assert result.ok, result.message()


@control_of("RC-AUD-5")
def test_events_missing_from_the_database_are_retentions(
    restored_conn: psycopg.Connection[Any], archive_index: ArchiveIndex,
    audit_partitions: list[Partition], chain_holes: ChainHoles, backup_time: BackupClock,
    retention_settings: RetentionSettings, chain_diagnosis: tuple[Diagnosis, Report],
) -> None:
    """RC-AUD-5 Exported events absent from the restored chains are those of dropped partitions.

    Every event the archive holds (up to the restored watermark) but the restored database
    does not must belong to a month whose partition retention dropped; the offline chain
    verifier must classify every hole as retention too.
    """
    result = audit.missing_rows_are_retention(archive_index, chain_holes, audit_partitions,
                                              watermark_hour(restored_conn), backup_time,
                                              retention_settings)
    audit.agree_with_chain_check(result, chain_diagnosis[1])
    evidence.json("events missing from the restored chains", result.evidence())
    assert result.ok, result.message()

"""The retention-controls table of the operations page, evaluated on restored data.

Pure functions: each takes what the restored environment shows (a read-only connection, an
archive index, a Redis client, the run's times) and returns an ``Evaluation`` — violations,
warnings and the observations behind them. The checks in ``checks/retention`` observe,
attach the evaluation as evidence and assert it holds.

Modules: ``common`` (settings, the backup clock, slack rules), ``audit`` (AUDIT_RETENTION_DAYS,
partitions), ``exports`` (watermark and Parquet archive), ``archive`` (Object Lock),
``coordinator`` (delegation/outbox retention, sweepers), ``streams`` (Redis bounds and
persistence), ``backups`` (RPO, retained bundles, encryption, secrets kept out, RTO).
"""

from __future__ import annotations

from caracal_restore.retention.common import (
    BackupClock,
    Evaluation,
    Finding,
    RetentionSettings,
    backup_clock,
    settings_from,
)

__all__ = [
    "BackupClock",
    "Evaluation",
    "Finding",
    "RetentionSettings",
    "backup_clock",
    "settings_from",
]

"""The retention-controls table as data: one row per control the checks evidence.

``feature`` is the row of the operations page's "Retention controls" table the control belongs
to (the Allure feature, spelled as on the page); ``control`` names the entry of that row's
"Controls" column. Clauses are stable ids: never renumber or reuse them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from fixtures.controls import F, Grade, Severity, control

AUDIT = "Audit database"
COORDINATOR = "Coordinator data"
STREAMS = "Redis streams"
BACKUPS = "Backups"


@dataclasses.dataclass(frozen=True)
class RetentionControl:
    """One control of the retention table: id, table row, control, evidence grade, severity."""

    clause: str
    feature: str
    control: str
    grade: Grade
    severity: Severity
    statement: str


CONTROLS: tuple[RetentionControl, ...] = (
    RetentionControl("RC-AUD-1", AUDIT, "AUDIT_RETENTION_DAYS", "verified", Severity.NORMAL,
                     "No audit row older than the retention window (partition granularity, "
                     "one 6 h loop of slack) at backup time."),
    RetentionControl("RC-AUD-2", AUDIT, "partitions", "verified", Severity.NORMAL,
                     "Monthly partitions that ended before the window were dropped."),
    RetentionControl("RC-AUD-3", AUDIT, "partitions", "verified", Severity.CRITICAL,
                     "Partitions exist for the backup month and the 3 months ahead."),
    RetentionControl("RC-AUD-4", AUDIT, "partitions", "verified", Severity.CRITICAL,
                     "The default partition holds no row of a month that has or needs its "
                     "own partition."),
    RetentionControl("RC-AUD-5", AUDIT, "AUDIT_RETENTION_DAYS", "verified", Severity.CRITICAL,
                     "Exported events missing from the database are exactly those of "
                     "dropped partitions; the chain verifier agrees."),
    RetentionControl("RC-EXP-1", AUDIT, "audit export watermarks", "verified",
                     Severity.CRITICAL, "The parquet-hourly watermark equals the source's."),
    RetentionControl("RC-EXP-2", AUDIT, "audit export watermarks", "verified",
                     Severity.CRITICAL, "Every hour up to the watermark with rows has its "
                     "object, holding exactly those rows."),
    RetentionControl("RC-EXP-3", AUDIT, "audit export watermarks", "verified",
                     Severity.CRITICAL, "The chain links verify across the export under the "
                     "restored AUDIT_HMAC_KEY."),
    RetentionControl("RC-EXP-4", AUDIT, "audit export watermarks", "verified",
                     Severity.CRITICAL, "Nothing aged out of PostgreSQL before it was "
                     "exported."),
    RetentionControl("RC-EXP-5", AUDIT, "audit export watermarks", "verified",
                     Severity.NORMAL, "No export object was overwritten."),
    RetentionControl("RC-ARC-1", AUDIT, "immutable archive", "configured", Severity.CRITICAL,
                     "The archive bucket enforces Object Lock COMPLIANCE with a default "
                     "retention of at least the archive minimum."),
    RetentionControl("RC-CRD-1", COORDINATOR, "DELEGATION_RETENTION_DAYS", "verified",
                     Severity.NORMAL, "No terminal delegation edge older than the window."),
    RetentionControl("RC-CRD-2", COORDINATOR, "OUTBOX_RETENTION_DAYS", "verified",
                     Severity.NORMAL, "No Coordinator outbox row the release deletes "
                     "(published; 2026.06 also dead) older than the window."),
    RetentionControl("RC-CRD-3", COORDINATOR, "sweeper intervals", "verified", Severity.NORMAL,
                     "The expire, TTL and lease sweepers kept pace with their intervals."),
    RetentionControl("RC-CRD-4", COORDINATOR, "SESSION_RETENTION_DAYS", "verified",
                     Severity.NORMAL, "No terminal Session without a child Session older than "
                     "the window (release 1.0)."),
    RetentionControl("RC-CRD-5", COORDINATOR, "idempotency receipts", "verified",
                     Severity.NORMAL, "No Coordinator idempotency receipt kept past its "
                     "expiry (release 1.0)."),
    RetentionControl("RC-RDS-1", STREAMS, "provisioner intended max lengths", "verified",
                     Severity.MINOR, "Each bounded stream is a stream; over-bound lengths are "
                     "flagged as the provisioner does."),
    RetentionControl("RC-RDS-2", STREAMS, "managed Redis retention", "configured",
                     Severity.NORMAL, "Redis persists streams (AOF) and never evicts them."),
    RetentionControl("RC-BAK-1", BACKUPS, "platform backup policy (RPO)", "verified",
                     Severity.CRITICAL, "The newest backup was within the RPO at restore."),
    RetentionControl("RC-BAK-2", BACKUPS, "platform backup policy (retention)", "verified",
                     Severity.NORMAL, "The backup location keeps 1..CARACAL_BACKUP_RETAIN "
                     "bundles."),
    RetentionControl("RC-BAK-3", BACKUPS, "platform backup policy (encryption)", "verified",
                     Severity.CRITICAL, "The bundle is encrypted."),
    RetentionControl("RC-BAK-4", BACKUPS, "legal/compliance requirements (secrets)",
                     "verified", Severity.CRITICAL, "No secret value is inside the bundle."),
    RetentionControl("RC-BAK-5", BACKUPS, "platform backup policy (RTO)", "demonstrated",
                     Severity.CRITICAL, "The measured restore finished within the RTO."),
)

BY_CLAUSE = {c.clause: c for c in CONTROLS}


def control_of(clause: str) -> Callable[[F], F]:
    """``@control(...)`` with the feature, grade and severity the table gives the clause."""
    row = BY_CLAUSE[clause]
    return control(row.clause, feature=row.feature, grade=row.grade, severity=row.severity)

"""Shared pieces of the retention verdicts: findings, settings, the clock they are evaluated at.

Every retention control is evaluated **as of the backup's time** (the instant the dump's
snapshot was taken), not the wall clock of the run: a bundle that was compliant when it was
taken stays compliant however old it is when the suite restores it. Sweepers run
periodically, so each window gets the slack the facts describe: one run interval (the sweep
may not have run yet) and, for batched deletes, one batch left for the next run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

UTC = dt.UTC

#: The 06.21 (and HEAD) audit retention loop runs at start and then every 6 h (FACTS-2026.06
#: §6, FACTS-1.0 §12.1); it is not configurable.
AUDIT_RETENTION_TICK = dt.timedelta(hours=6)
#: The audit table, its default partition (never dropped) and the export watermark row name
#: (FACTS-2026.06 §2.10, FACTS-1.0 §2.3 and §6: identical in both releases).
AUDIT_TABLE = "audit_events"
AUDIT_DEFAULT_PARTITION = "audit_events_default"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One violation (or warning) of a retention control, in words an auditor can act on."""

    kind: str
    subject: str
    detail: str


@dataclasses.dataclass
class Evaluation:
    """The outcome of one control: violations, warnings and what was observed (evidence)."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    warnings: list[Finding] = dataclasses.field(default_factory=list)
    observed: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Why the control does not exist in this release (``not applicable: ...``); None when
    #: it was evaluated. A check skips with this reason, never passes.
    not_applicable: str | None = None

    @property
    def ok(self) -> bool:
        """True when the control holds (warnings do not count)."""
        return not self.findings

    def add(self, kind: str, subject: str, detail: str) -> None:
        """Record a violation."""
        self.findings.append(Finding(kind, subject, detail))

    def warn(self, kind: str, subject: str, detail: str) -> None:
        """Record a warning-level finding (the control holds; the finding is evidence)."""
        self.warnings.append(Finding(kind, subject, detail))

    def message(self, limit: int = 8) -> str:
        """The violations as one assertion message (first ``limit`` of them)."""
        return summarize(self.findings, limit)

    def evidence(self) -> dict[str, Any]:
        """Observations, violations and warnings as one JSON-ready document."""
        doc: dict[str, Any] = {
            "observed": self.observed,
            "violations": [dataclasses.asdict(f) for f in self.findings],
            "warnings": [dataclasses.asdict(f) for f in self.warnings],
        }
        if self.not_applicable is not None:
            doc["not applicable"] = self.not_applicable
        return doc


def summarize(findings: Sequence[Finding], limit: int = 8) -> str:
    """``n violation(s): detail; detail; … and k more``."""
    if not findings:
        return "no violations"
    shown = "; ".join(f.detail for f in findings[:limit])
    more = f"; … and {len(findings) - limit} more" if len(findings) > limit else ""
    noun = "violation" if len(findings) == 1 else "violations"
    return f"{len(findings)} {noun}: {shown}{more}"


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    """The retention windows and sweeper schedule the source ran with (settings + release)."""

    audit_retention: dt.timedelta
    audit_tick: dt.timedelta
    partitions_ahead: int
    partition_format: str
    delegation_retention: dt.timedelta
    outbox_retention: dt.timedelta
    cleanup_interval: dt.timedelta
    cleanup_batch: int
    ttl_sweep_interval: dt.timedelta
    ttl_sweep_batch: int
    lease_sweep_interval: dt.timedelta
    outbox_statuses: tuple[str, ...]
    delegation_child_guard: bool
    archive_min_retention_days: int
    #: ``AUDIT_RETENTION_DAYS`` as configured, and the console override the restored database
    #: holds (None: the release has none, or no row). ``audit_retention`` is the window the
    #: audit loop applies: ``min(override, AUDIT_RETENTION_DAYS)`` (FACTS-1.0 §12.1).
    audit_retention_ceiling_days: int | None = None
    audit_retention_override_days: int | None = None
    #: Coordinator ``SESSION_RETENTION_DAYS`` (None: the release deletes no Sessions).
    session_retention: dt.timedelta | None = None

    def partition_name(self, month: dt.datetime) -> str:
        """The monthly partition name of a month (``audit_events_y2026m11``)."""
        return self.partition_format.format(year=month.year, month=month.month)

    def as_evidence(self) -> dict[str, Any]:
        """The settings in the units the facts use."""
        extra: dict[str, Any] = {}
        if self.audit_retention_override_days is not None:
            extra["AUDIT_RETENTION_DAYS (configured ceiling)"] = self.audit_retention_ceiling_days
            extra["audit_retention override row (days)"] = self.audit_retention_override_days
        if self.session_retention is not None:
            extra["SESSION_RETENTION_DAYS"] = self.session_retention.days
        return extra | {
            "AUDIT_RETENTION_DAYS": self.audit_retention.days,
            "audit retention loop interval (h)": self.audit_tick.total_seconds() / 3600,
            "partitions created ahead (months)": self.partitions_ahead,
            "DELEGATION_RETENTION_DAYS": self.delegation_retention.days,
            "OUTBOX_RETENTION_DAYS": self.outbox_retention.days,
            "RETENTION_CLEANUP_INTERVAL_MS": int(self.cleanup_interval.total_seconds() * 1000),
            "RETENTION_CLEANUP_BATCH_SIZE": self.cleanup_batch,
            "TTL_SWEEP_INTERVAL_MS": int(self.ttl_sweep_interval.total_seconds() * 1000),
            "SWEEPER_BATCH_SIZE": self.ttl_sweep_batch,
            "SERVICE_LEASE_SWEEP_INTERVAL_MS": int(
                self.lease_sweep_interval.total_seconds() * 1000),
            "coordinator outbox statuses deleted": list(self.outbox_statuses),
            "delegation retention keeps edges with an active child": self.delegation_child_guard,
            "archive minimum COMPLIANCE retention (days)": self.archive_min_retention_days,
        }


def settings_from(
    *,
    defaults: Iterable[tuple[str, int]],
    audit_retention_days: int,
    delegation_retention_days: int,
    outbox_retention_days: int,
    cleanup_interval_ms: int,
    cleanup_batch: int,
    archive_min_retention_days: int,
    partition_format: str,
    partitions_ahead: int,
    outbox_statuses: Sequence[str],
    delegation_child_guard: bool,
    audit_retention_override_days: int | None = None,
    session_retention_days: int | None = None,
) -> RetentionSettings:
    """Settings from the suite's options (the source's env values) and the release's defaults.

    ``audit_retention_override_days``: the console override row the restored database holds
    (1.0); the audit window is then the smaller of it and ``AUDIT_RETENTION_DAYS``.
    ``session_retention_days``: SESSION_RETENTION_DAYS the source ran with; used only when the
    release has that control (its defaults name it), else the window stays None.
    """
    release = dict(defaults)
    effective_audit_days = (audit_retention_days if audit_retention_override_days is None
                            else min(audit_retention_override_days, audit_retention_days))
    session_days = release.get("SESSION_RETENTION_DAYS")
    if session_days is not None and session_retention_days is not None:
        session_days = session_retention_days
    for name in ("TTL_SWEEP_INTERVAL_MS", "SWEEPER_BATCH_SIZE",
                 "SERVICE_LEASE_SWEEP_INTERVAL_MS"):
        if name not in release:
            raise KeyError(f"the release profile has no default for {name}")
    if not partition_format or partitions_ahead < 1:
        raise ValueError("the release profile names no monthly audit partition format")
    return RetentionSettings(
        audit_retention=dt.timedelta(days=effective_audit_days),
        audit_tick=AUDIT_RETENTION_TICK,
        partitions_ahead=partitions_ahead,
        partition_format=partition_format,
        delegation_retention=dt.timedelta(days=delegation_retention_days),
        outbox_retention=dt.timedelta(days=outbox_retention_days),
        cleanup_interval=dt.timedelta(milliseconds=cleanup_interval_ms),
        cleanup_batch=cleanup_batch,
        ttl_sweep_interval=dt.timedelta(milliseconds=release["TTL_SWEEP_INTERVAL_MS"]),
        ttl_sweep_batch=release["SWEEPER_BATCH_SIZE"],
        lease_sweep_interval=dt.timedelta(
            milliseconds=release["SERVICE_LEASE_SWEEP_INTERVAL_MS"]),
        outbox_statuses=tuple(outbox_statuses),
        delegation_child_guard=delegation_child_guard,
        archive_min_retention_days=archive_min_retention_days,
        audit_retention_ceiling_days=audit_retention_days,
        audit_retention_override_days=audit_retention_override_days,
        session_retention=(dt.timedelta(days=session_days) if session_days is not None
                           else None),
    )


@dataclasses.dataclass(frozen=True)
class BackupClock:
    """The instant the restored data represents, and the other times of the run."""

    at: dt.datetime
    basis: str
    created_at: dt.datetime
    taken_at: dt.datetime | None
    restored_at: dt.datetime | None

    def as_evidence(self) -> dict[str, Any]:
        """The times, ISO 8601 UTC."""
        return {
            "evaluated as of": self.at.isoformat(),
            "basis": self.basis,
            "bundle createdAt": self.created_at.isoformat(),
            "fingerprint taken_at": self.taken_at.isoformat() if self.taken_at else None,
            "restored_at": self.restored_at.isoformat() if self.restored_at else None,
        }


def backup_clock(created_at: str, taken_at: str | None, restored_at: str | None) -> BackupClock:
    """The backup's time: the dump snapshot's ``taken_at`` when known, else ``createdAt``."""
    created = _utc(dt.datetime.fromisoformat(created_at))
    taken = _utc(dt.datetime.fromisoformat(taken_at)) if taken_at else None
    restored = _utc(dt.datetime.fromisoformat(restored_at)) if restored_at else None
    if taken is not None:
        return BackupClock(taken, "fingerprint taken_at (the dump's snapshot)", created, taken,
                           restored)
    return BackupClock(created, "manifest createdAt (no fingerprint in the bundle)", created,
                       None, restored)


def _utc(moment: dt.datetime) -> dt.datetime:
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


def month_start(moment: dt.datetime) -> dt.datetime:
    """The first instant (UTC) of the month containing ``moment``."""
    m = moment.astimezone(UTC)
    return dt.datetime(m.year, m.month, 1, tzinfo=UTC)


def add_months(month: dt.datetime, n: int) -> dt.datetime:
    """The first instant of the month ``n`` months after ``month``'s month."""
    index = month.year * 12 + (month.month - 1) + n
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def iso(moment: dt.datetime | None) -> str | None:
    """ISO 8601 in UTC (None stays None)."""
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def ranges(values: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted integers folded into inclusive ranges: 1,2,3,7 -> (1,3),(7,7)."""
    out: list[tuple[int, int]] = []
    for v in sorted(set(values)):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def show_ranges(spans: Sequence[tuple[int, int]], limit: int = 6) -> str:
    """``1..3, 7`` (first ``limit`` ranges)."""
    text = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in spans[:limit])
    return text + (f", … ({len(spans) - limit} more ranges)" if len(spans) > limit else "")


def band_rule(
    eligible_since: Mapping[str, dt.datetime],
    *,
    at: dt.datetime,
    interval: dt.timedelta,
    batch: int,
) -> tuple[list[str], list[str], list[str]]:
    """Split rows a periodic batched sweeper should have handled by when they became eligible.

    Returns (violations, left_for_next_run, not_yet_swept): a row eligible within the last
    interval may simply not have been swept yet; a row eligible in the interval before that
    may have been left by a run that hit its batch limit (tolerated while they fit in one
    batch); a row eligible before that was eligible at two consecutive runs: a violation.
    When more rows than one batch sit in the middle band, they are violations too.
    """
    violations, middle, recent = [], [], []
    for key, since in eligible_since.items():
        if since >= at - interval:
            recent.append(key)
        elif since >= at - 2 * interval:
            middle.append(key)
        else:
            violations.append(key)
    if len(middle) > batch:
        violations.extend(middle)
        middle = []
    return sorted(violations), sorted(middle), sorted(recent)

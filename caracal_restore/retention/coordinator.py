"""Coordinator data: DELEGATION_RETENTION_DAYS, OUTBOX_RETENTION_DAYS and the sweepers
(FACTS-2026.06 §6, FACTS-1.0 §12.2, §20 R2).

The Coordinator's retention cleaner runs every RETENTION_CLEANUP_INTERVAL_MS and deletes at
most RETENTION_CLEANUP_BATCH_SIZE rows per statement: terminal delegation edges whose
``COALESCE(revoked_at, expires_at, updated_at, created_at)`` is older than the window (2026.06
has no active-child guard), and Coordinator outbox rows in a terminal status whose
``updated_at`` is older than the outbox window (2026.06 deletes dead rows too). Its first step
expires active edges past ``expires_at``; the TTL sweeper terminates task agents past their
TTL and the lease sweeper suspends service agents past their heartbeat deadline.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from caracal_restore.retention.common import (
    BackupClock,
    Evaluation,
    RetentionSettings,
    band_rule,
    iso,
)

EDGES = "delegation_edges"
OUTBOX = "caracal_outbox"
_EDGE_KEY = "COALESCE(e.revoked_at, e.expires_at, e.updated_at, e.created_at)"
_SHOWN_IDS = 50


def _edge_query(settings: RetentionSettings) -> sql.Composed:
    guard: sql.Composable = sql.SQL("")
    if settings.delegation_child_guard:
        guard = sql.SQL(
            " AND NOT EXISTS (SELECT 1 FROM {t} c WHERE c.parent_edge_id = e.id"
            " AND c.status = 'active' AND c.expires_at > %(at)s)").format(t=sql.Identifier(EDGES))
    return sql.SQL(
        "SELECT e.id, e.zone_id, e.status, " + _EDGE_KEY + " FROM {t} e"
        " WHERE e.status IN ('revoked', 'expired') AND " + _EDGE_KEY + " < %(before)s{guard}"
        " ORDER BY 4, 1"
    ).format(t=sql.Identifier(EDGES), guard=guard)


def terminal_edges(
    conn: psycopg.Connection[Any], clock: BackupClock, settings: RetentionSettings
) -> Evaluation:
    """RC-CRD-1: no terminal delegation edge older than DELEGATION_RETENTION_DAYS (+ slack)."""
    window = settings.delegation_retention
    rows = conn.execute(_edge_query(settings),
                        {"before": clock.at - window, "at": clock.at}).fetchall()
    since = {str(r[0]): r[3] + window for r in rows}
    violations, left, recent = band_rule(since, at=clock.at, interval=settings.cleanup_interval,
                                         batch=settings.cleanup_batch)
    by_id = {str(r[0]): r for r in rows}
    result = Evaluation(observed={
        "predicate": "status IN ('revoked','expired') AND COALESCE(revoked_at, expires_at, "
                     "updated_at, created_at) < backup time − DELEGATION_RETENTION_DAYS"
                     + (" AND no active unexpired child edge" if settings.delegation_child_guard
                        else " (no active-child guard in this release)"),
        "eligible at backup time": len(rows),
        "tolerated: not swept yet (eligible within one cleanup interval)": _ids(recent),
        "tolerated: left for the next run (within one batch)": _ids(left),
    })
    for edge_id in violations:
        _id, zone, status, key = by_id[edge_id]
        result.add("edge_beyond_window", edge_id,
                   f"delegation edge {edge_id} (zone {zone}, {status}) retained since "
                   f"{iso(key)}, {(clock.at - key).days} days before the backup: older than "
                   f"DELEGATION_RETENTION_DAYS={window.days} plus one cleanup interval "
                   f"({settings.cleanup_interval}) and one batch ({settings.cleanup_batch})")
    return result


def _outbox_query() -> sql.Composed:
    return sql.SQL(
        "SELECT id, topic, status, updated_at FROM {t} WHERE producer = 'coordinator'"
        " AND status = ANY(%(statuses)s) AND updated_at < %(before)s ORDER BY updated_at, id"
    ).format(t=sql.Identifier(OUTBOX))


def terminal_outbox(
    conn: psycopg.Connection[Any], clock: BackupClock, settings: RetentionSettings
) -> Evaluation:
    """RC-CRD-2: no terminal Coordinator outbox row older than OUTBOX_RETENTION_DAYS (+ slack)."""
    window = settings.outbox_retention
    rows = conn.execute(_outbox_query(), {"statuses": list(settings.outbox_statuses),
                                          "before": clock.at - window}).fetchall()
    since = {str(r[0]): r[3] + window for r in rows}
    violations, left, recent = band_rule(since, at=clock.at, interval=settings.cleanup_interval,
                                         batch=settings.cleanup_batch)
    by_id = {str(r[0]): r for r in rows}
    result = Evaluation(observed={
        "predicate": f"producer = 'coordinator' AND status IN {tuple(settings.outbox_statuses)} "
                     "AND updated_at < backup time − OUTBOX_RETENTION_DAYS",
        "eligible at backup time": len(rows),
        "tolerated: not swept yet (eligible within one cleanup interval)": _ids(recent),
        "tolerated: left for the next run (within one batch)": _ids(left),
    })
    for row_id in violations:
        _id, topic, status, updated = by_id[row_id]
        result.add("outbox_beyond_window", row_id,
                   f"caracal_outbox row {row_id} ({status}, topic {topic}) last updated "
                   f"{iso(updated)}, {(clock.at - updated).days} days before the backup: older "
                   f"than OUTBOX_RETENTION_DAYS={window.days} plus one cleanup interval and one "
                   "batch")
    return result


def expected_deletions(
    conn: psycopg.Connection[Any], restore_time: dt.datetime | None, settings: RetentionSettings
) -> dict[str, Any]:
    """What the Coordinator's first cleaner run after start deletes, at the restore-time clock.

    Same predicates as the cleaner, evaluated on the restored snapshot at ``restore_time``
    (FACTS-1.0 §12.4: windows apply relative to the restore-time clock). Also the active
    edges its first step would expire (deleted by a later run, once past the window).
    """
    if restore_time is None:
        return {"clock": None, "not computed": "the run recorded no restore time"}
    edges = conn.execute(_edge_query(settings), {
        "before": restore_time - settings.delegation_retention, "at": restore_time}).fetchall()
    outbox = conn.execute(_outbox_query(), {
        "statuses": list(settings.outbox_statuses),
        "before": restore_time - settings.outbox_retention}).fetchall()
    expiring = conn.execute(
        sql.SQL("SELECT id FROM {t} WHERE status = 'active' AND expires_at < %s ORDER BY id"
                ).format(t=sql.Identifier(EDGES)), (restore_time,)).fetchall()
    return {
        "clock": iso(restore_time),
        "delegation_edges deleted": {"count": len(edges),
                                     "ids": [str(r[0]) for r in edges[:200]]},
        "caracal_outbox rows deleted": {"count": len(outbox),
                                        "ids": [str(r[0]) for r in outbox[:200]]},
        "active edges expired by the first step": {"count": len(expiring),
                                                   "ids": [str(r[0]) for r in expiring[:200]]},
        "runs needed at the batch size": max(
            -(-len(edges) // settings.cleanup_batch), -(-len(outbox) // settings.cleanup_batch)),
    }


def sweepers_kept_pace(
    conn: psycopg.Connection[Any],
    clock: BackupClock,
    settings: RetentionSettings,
    *,
    agent_table: str,
    started_column: str,
) -> Evaluation:
    """RC-CRD-3: each sweeper had handled, by backup time, what it was due to handle.

    The cleaner's expire step (active edges past ``expires_at``), the TTL sweeper (active
    task agents past ``<start> + ttl_seconds``) and the service lease sweeper (active service
    agents past ``heartbeat_deadline_at``): each with one run interval of slack, and for the
    batched ones one batch left for the next run.
    """
    at = clock.at
    result = Evaluation(observed={})
    checks = (
        ("cleaner expire step", "active edge past expires_at",
         sql.SQL("SELECT id, expires_at FROM {t} WHERE status = 'active' AND expires_at < %s"
                 ).format(t=sql.Identifier(EDGES)),
         settings.cleanup_interval, settings.cleanup_batch),
        ("TTL sweeper", "active task agent past its TTL",
         sql.SQL("SELECT id, {s} + make_interval(secs => ttl_seconds) FROM {t}"
                 " WHERE lifecycle = 'task' AND status = 'active' AND ttl_seconds IS NOT NULL"
                 " AND {s} + make_interval(secs => ttl_seconds) < %s").format(
             t=sql.Identifier(agent_table), s=sql.Identifier(started_column)),
         settings.ttl_sweep_interval, settings.ttl_sweep_batch),
        ("service lease sweeper", "active service agent past its heartbeat deadline",
         sql.SQL("SELECT id, heartbeat_deadline_at FROM {t} WHERE lifecycle = 'service'"
                 " AND status = 'active' AND heartbeat_deadline_at < %s").format(
             t=sql.Identifier(agent_table)),
         settings.lease_sweep_interval, 0),
    )
    for sweeper, what, query, interval, batch in checks:
        rows = conn.execute(query, (at,)).fetchall()
        due = {str(r[0]): r[1] for r in rows}
        violations, left, recent = band_rule(due, at=at, interval=interval, batch=batch)
        result.observed[sweeper] = {
            "interval": str(interval), "batch": batch or "unbatched", "due at backup time":
            len(rows), "tolerated (within one interval / one batch)": _ids(recent + left)}
        for row_id in violations:
            result.add("sweeper_behind", row_id,
                       f"{sweeper}: {what} — {row_id} was due {iso(due[row_id])}, "
                       f"{_ago(at - due[row_id])} before the backup (interval {interval})")
    return result


def _ids(ids: list[str]) -> dict[str, Any]:
    """A count and the first ``_SHOWN_IDS`` ids (evidence stays readable for large backlogs)."""
    return {"count": len(ids), "ids": ids[:_SHOWN_IDS]}


def _ago(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400} days"
    if seconds >= 3600:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


def live_comparison_note(services_mode: str) -> str:
    """Why the deletions the Coordinator makes after start are (not) compared with the set."""
    if services_mode == "reference":
        return ("not evaluated: the reference services (STS, Gateway, Audit ingestor) do not "
                "implement the Coordinator's retention cleaner, so no deletion happens to compare")
    if services_mode == "external":
        return ("not evaluated: the suite is given no Coordinator endpoint or live database to "
                "observe its deletions; compare this set with the live copy by hand")
    return "not evaluated: --services none (offline run)"

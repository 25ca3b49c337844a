"""Coordinator data: DELEGATION_RETENTION_DAYS, SESSION_RETENTION_DAYS, OUTBOX_RETENTION_DAYS,
idempotency receipts and the sweepers (FACTS-2026.06 §6, FACTS-1.0 §12.2, §20 R2).

The Coordinator's retention cleaner runs every RETENTION_CLEANUP_INTERVAL_MS and deletes at
most RETENTION_CLEANUP_BATCH_SIZE rows per statement: terminal delegation edges whose
``COALESCE(revoked_at, expires_at, updated_at, created_at)`` is older than the window (1.0
keeps those an active unexpired child edge points at; 2026.06 has no such guard), Coordinator
outbox rows in a status the release deletes whose ``updated_at`` is older than the outbox
window (1.0: published only, dead and pending rows are kept; 2026.06 deletes dead rows too),
and at 1.0 also terminal Sessions older than SESSION_RETENTION_DAYS that have no child
Session (leaf-first) and idempotency receipts past ``expires_at``. Its first step expires
active edges past ``expires_at``; the TTL sweeper terminates task agents past their TTL and
the lease sweeper suspends service agents past their heartbeat deadline.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
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

    def describe(row: Any) -> str:
        edge_id, zone, status, key = row
        return (f"delegation edge {edge_id} (zone {zone}, {status}) retained since {iso(key)}, "
                f"{(clock.at - key).days} days before the backup: older than "
                f"DELEGATION_RETENTION_DAYS={window.days} plus one cleanup interval "
                f"({settings.cleanup_interval}) and one batch ({settings.cleanup_batch})")

    return _banded(rows, lambda r: r[3] + window, clock, settings, describe,
                   kind="edge_beyond_window", observed={
        "predicate": "status IN ('revoked','expired') AND COALESCE(revoked_at, expires_at, "
                     "updated_at, created_at) < backup time − DELEGATION_RETENTION_DAYS"
                     + (" AND no active unexpired child edge" if settings.delegation_child_guard
                        else " (no active-child guard in this release)")})


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

    def describe(row: Any) -> str:
        row_id, topic, status, updated = row
        return (f"caracal_outbox row {row_id} ({status}, topic {topic}) last updated "
                f"{iso(updated)}, {(clock.at - updated).days} days before the backup: older "
                f"than OUTBOX_RETENTION_DAYS={window.days} plus one cleanup interval and one "
                "batch")

    return _banded(rows, lambda r: r[3] + window, clock, settings, describe,
                   kind="outbox_beyond_window", observed={
        "predicate": f"producer = 'coordinator' AND status IN {tuple(settings.outbox_statuses)} "
                     "AND updated_at < backup time − OUTBOX_RETENTION_DAYS (other statuses are "
                     "kept by this release's cleaner)"})


#: Sessions nest at most this deep (``MAX_DEPTH`` of the 1.0 Coordinator's agents route; a
#: child deeper than it is refused). The cleaner deletes Sessions leaf-first, one level of a
#: tree per run, so a Session that is childless now may have waited one run for each level of
#: descendants it had: at most ``SESSION_MAX_DEPTH - depth`` runs.
SESSION_MAX_DEPTH = 10


def _session_query(table: str, *, with_child: bool) -> sql.Composed:
    """Terminal Sessions ended before ``before``: the childless ones, or those with a child."""
    child = sql.SQL("EXISTS" if with_child else "NOT EXISTS")
    return sql.SQL(
        "SELECT s.id, s.zone_id, s.status, s.terminated_at, s.depth FROM {t} s"
        " WHERE s.status IN ('terminated', 'expired') AND s.terminated_at < %(before)s"
        " AND {child} (SELECT 1 FROM {t} c WHERE c.parent_id = s.id)"
        " ORDER BY s.terminated_at, s.id"
    ).format(t=sql.Identifier(table), child=child)


def session_window(settings: RetentionSettings, retention_days: int) -> dt.timedelta | None:
    """SESSION_RETENTION_DAYS as the source ran with it; None when the release has no such
    control (its defaults do not name it: 2026.06 never deletes agent sessions)."""
    if settings.session_retention is None:
        return None
    return dt.timedelta(days=retention_days)


def terminal_sessions(
    conn: psycopg.Connection[Any], clock: BackupClock, settings: RetentionSettings, *,
    table: str, release: str, retention_days: int,
) -> Evaluation:
    """RC-CRD-4: no childless terminal Session older than SESSION_RETENTION_DAYS (+ slack).

    A terminated or expired Session whose ``terminated_at`` is older than the window is
    deleted once it has no child Session at all; one with a child is kept (leaf-first). Slack:
    one cleanup interval per level of descendants the Session may have had (at most
    ``SESSION_MAX_DEPTH - depth``: each run peels one level) plus the usual interval and batch.
    """
    window = session_window(settings, retention_days)
    if window is None:
        return Evaluation(not_applicable=(
            f"not applicable: release {release} has no SESSION_RETENTION_DAYS: its Coordinator "
            "never deletes agent sessions (FACTS-2026.06 §6)"))
    interval = settings.cleanup_interval
    params = {"before": clock.at - window}
    rows = conn.execute(_session_query(table, with_child=False), params).fetchall()
    kept = conn.execute(_session_query(table, with_child=True), params).fetchall()

    def peel(depth: int | None) -> dt.timedelta:
        return max(0, SESSION_MAX_DEPTH - (depth or 0)) * interval

    def describe(row: Any) -> str:
        session_id, zone, status, ended, depth = row
        return (f"{table} row {session_id} (zone {zone}, {status}, depth {depth}, no child "
                f"session) ended {iso(ended)}, {(clock.at - ended).days} days before the "
                f"backup: older than SESSION_RETENTION_DAYS={window.days} plus the leaf-first "
                f"slack ({peel(depth)}), one cleanup interval ({interval}) and one batch "
                f"({settings.cleanup_batch})")

    return _banded(rows, lambda r: r[3] + window + peel(r[4]), clock, settings, describe,
                   kind="session_beyond_window", observed={
        "table": table,
        "SESSION_RETENTION_DAYS": window.days,
        "predicate": "status IN ('terminated','expired') AND terminated_at < backup time − "
                     "SESSION_RETENTION_DAYS AND no child session (parent_id) at all",
        "slack": f"one cleanup interval ({interval}) per level of descendants the session may "
                 f"have had (at most {SESSION_MAX_DEPTH} − depth: leaf-first, one level per "
                 "run), then one interval and one batch",
        "kept: older than the window but with a child session (leaf-first)": _ids(
            [str(r[0]) for r in kept]),
    })


def _receipt_query(table: str) -> sql.Composed:
    return sql.SQL(
        "SELECT id, operation, zone_id, expires_at FROM {t} WHERE expires_at <= %(at)s"
        " ORDER BY expires_at, id"
    ).format(t=sql.Identifier(table))


def expired_receipts(
    conn: psycopg.Connection[Any], clock: BackupClock, settings: RetentionSettings, *,
    table: str, release: str,
) -> Evaluation:
    """RC-CRD-5: no idempotency receipt past its ``expires_at`` (+ one interval, one batch).

    ``table`` is the release's receipts table ('' when it has none: not applicable).
    """
    if not table:
        return Evaluation(not_applicable=(
            f"not applicable: release {release} has no coordinator_idempotency_receipts table "
            "(agent spawn idempotency is a column of agent_sessions, FACTS-2026.06 §2.6)"))
    rows = conn.execute(_receipt_query(table), {"at": clock.at}).fetchall()
    total = conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(
        t=sql.Identifier(table))).fetchone()

    def describe(row: Any) -> str:
        receipt_id, operation, zone, expires = row
        return (f"{table} row {receipt_id} (zone {zone}, {operation}) expired {iso(expires)}, "
                f"{_ago(clock.at - expires)} before the backup: the cleaner deletes receipts "
                f"at expires_at; allowed one cleanup interval ({settings.cleanup_interval}) "
                f"and one batch ({settings.cleanup_batch})")

    return _banded(rows, lambda r: r[3], clock, settings, describe,
                   kind="receipt_beyond_expiry", observed={
        "table": table, "receipts": total[0] if total else 0,
        "predicate": "expires_at <= backup time"})


def expected_deletions(
    conn: psycopg.Connection[Any], restore_time: dt.datetime | None, settings: RetentionSettings,
    *, session_table: str = "", session_retention: dt.timedelta | None = None,
    receipt_table: str = "",
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
    out: dict[str, Any] = {
        "clock": iso(restore_time),
        "delegation_edges deleted": {"count": len(edges),
                                     "ids": [str(r[0]) for r in edges[:200]]},
        "caracal_outbox rows deleted": {"count": len(outbox),
                                        "ids": [str(r[0]) for r in outbox[:200]]},
        "active edges expired by the first step": {"count": len(expiring),
                                                   "ids": [str(r[0]) for r in expiring[:200]]},
    }
    counts = [len(edges), len(outbox)]
    if session_table and session_retention is not None:
        sessions = conn.execute(_session_query(session_table, with_child=False),
                                {"before": restore_time - session_retention}).fetchall()
        out[f"{session_table} rows deleted (first level, leaf-first)"] = {
            "count": len(sessions), "ids": [str(r[0]) for r in sessions[:200]]}
        counts.append(len(sessions))
    if receipt_table:
        receipts = conn.execute(_receipt_query(receipt_table), {"at": restore_time}).fetchall()
        out[f"{receipt_table} rows deleted"] = {"count": len(receipts),
                                                "ids": [str(r[0]) for r in receipts[:200]]}
        counts.append(len(receipts))
    out["runs needed at the batch size"] = max(-(-n // settings.cleanup_batch) for n in counts)
    return out


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


def _banded(
    rows: Sequence[Any], eligible_since: Callable[[Any], dt.datetime], clock: BackupClock,
    settings: RetentionSettings, describe: Callable[[Any], str], *, kind: str,
    observed: dict[str, Any],
) -> Evaluation:
    """Judge rows (id first) the batched retention cleaner deletes once they are eligible.

    ``band_rule`` with one cleanup interval and one batch of slack; the observations gain the
    count and the tolerated rows, and each violation is described in the auditor's words.
    """
    since = {str(r[0]): eligible_since(r) for r in rows}
    violations, left, recent = band_rule(since, at=clock.at, interval=settings.cleanup_interval,
                                         batch=settings.cleanup_batch)
    result = Evaluation(observed=observed | {
        "eligible at backup time": len(rows),
        "tolerated: not swept yet (eligible within one cleanup interval)": _ids(recent),
        "tolerated: left for the next run (within one batch)": _ids(left),
    })
    by_id = {str(r[0]): r for r in rows}
    for row_id in violations:
        result.add(kind, row_id, describe(by_id[row_id]))
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

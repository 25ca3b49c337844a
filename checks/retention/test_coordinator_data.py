"""Retention controls, row "Coordinator data": DELEGATION_RETENTION_DAYS, OUTBOX_RETENTION_DAYS,
sweeper intervals, and at release 1.0 SESSION_RETENTION_DAYS and idempotency receipts
(FACTS-2026.06 §6, FACTS-1.0 §12.2, §20 R2).

Evaluated on the restored database as of the backup's time, with one cleanup interval and one
cleanup batch of slack. Because the windows apply to the restore-time clock once the
Coordinator starts (FACTS-1.0 §12.4), each check also attaches the set of rows the first
cleaner run would delete after a start at restore time.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from caracal_restore.profiles import Profile
from caracal_restore.retention import BackupClock, Evaluation, RetentionSettings, coordinator
from caracal_restore.runstate import RunState
from checks.retention.expectations import control_of
from fixtures import evidence
from fixtures.options import SuiteConfig


def _attach_expected_deletions(conn: psycopg.Connection[Any], clock: BackupClock,
                               settings: RetentionSettings, run_state: RunState,
                               profile: Profile, config: SuiteConfig) -> None:
    """Evidence: what the services would delete after start, and whether that was compared."""
    expected = coordinator.expected_deletions(
        conn, clock.restored_at, settings, session_table=profile.agent_table,
        session_retention=coordinator.session_window(settings, config.session_retention_days),
        receipt_table=profile.idempotency_table)
    expected["comparison with the live copy"] = coordinator.live_comparison_note(
        run_state.services.mode)
    evidence.json("expected deletions at the restore-time clock", expected)


@control_of("RC-CRD-1")
def test_no_terminal_delegation_edge_outlives_its_window(
    restored_conn: psycopg.Connection[Any], backup_time: BackupClock,
    retention_settings: RetentionSettings, run_state: RunState, profile: Profile,
    suite_config: SuiteConfig,
) -> None:
    """RC-CRD-1 No revoked or expired delegation edge older than DELEGATION_RETENTION_DAYS.

    Age is ``COALESCE(revoked_at, expires_at, updated_at, created_at)``. Release 1.0 keeps an
    edge an active unexpired child edge (``parent_edge_id``) points at; 2026.06 deletes such
    edges even then (no active-child guard).
    """
    result = coordinator.terminal_edges(restored_conn, backup_time, retention_settings)
    evidence.json("terminal delegation edges against the window", result.evidence())
    _attach_expected_deletions(restored_conn, backup_time, retention_settings, run_state,
                               profile, suite_config)
    assert result.ok, result.message()


@control_of("RC-CRD-2")
def test_no_terminal_coordinator_outbox_row_outlives_its_window(
    restored_conn: psycopg.Connection[Any], backup_time: BackupClock,
    retention_settings: RetentionSettings, run_state: RunState, profile: Profile,
    suite_config: SuiteConfig,
) -> None:
    """RC-CRD-2 No Coordinator outbox row the release deletes older than OUTBOX_RETENTION_DAYS.

    ``caracal_outbox`` rows with producer ``coordinator``, by ``updated_at``: published rows;
    2026.06 deletes dead rows too, 1.0 keeps them. Pending rows are never deleted.
    """
    result = coordinator.terminal_outbox(restored_conn, backup_time, retention_settings)
    evidence.json("coordinator outbox against the window", result.evidence())
    _attach_expected_deletions(restored_conn, backup_time, retention_settings, run_state,
                               profile, suite_config)
    assert result.ok, result.message()


@control_of("RC-CRD-3")
def test_sweepers_kept_pace_with_their_intervals(
    restored_conn: psycopg.Connection[Any], backup_time: BackupClock,
    retention_settings: RetentionSettings, profile: Profile,
) -> None:
    """RC-CRD-3 The Coordinator sweepers had done their work by backup time.

    No active edge past ``expires_at`` beyond one RETENTION_CLEANUP_INTERVAL_MS, no active
    task agent past its TTL beyond one TTL_SWEEP_INTERVAL_MS, no active service agent past its
    heartbeat deadline beyond one SERVICE_LEASE_SWEEP_INTERVAL_MS (batched sweepers may leave
    one batch for their next run).
    """
    result = coordinator.sweepers_kept_pace(restored_conn, backup_time, retention_settings,
                                            agent_table=profile.agent_table,
                                            started_column=profile.agent_started_column)
    evidence.json("sweepers at backup time", result.evidence())
    assert result.ok, result.message()


def _skip_if_not_applicable(result: Evaluation) -> None:
    """A control the release does not have is skipped with the stated reason, never passed."""
    if result.not_applicable is not None:
        pytest.skip(result.not_applicable)


@control_of("RC-CRD-4")
def test_no_childless_terminal_session_outlives_its_window(
    restored_conn: psycopg.Connection[Any], backup_time: BackupClock,
    retention_settings: RetentionSettings, profile: Profile, suite_config: SuiteConfig,
    run_state: RunState,
) -> None:
    """RC-CRD-4 No terminated or expired Session older than SESSION_RETENTION_DAYS without a child.

    Age is ``terminated_at``; a Session with a child Session is kept (the cleaner deletes
    leaf-first, one level per run), so each level of descendants it may have had adds one
    cleanup interval of slack. Release 1.0 only: 2026.06 never deletes agent sessions.
    """
    result = coordinator.terminal_sessions(
        restored_conn, backup_time, retention_settings, table=profile.agent_table,
        release=profile.release, retention_days=suite_config.session_retention_days)
    evidence.json("terminal sessions against the window", result.evidence())
    _skip_if_not_applicable(result)
    _attach_expected_deletions(restored_conn, backup_time, retention_settings, run_state,
                               profile, suite_config)
    assert result.ok, result.message()


@control_of("RC-CRD-5")
def test_no_idempotency_receipt_outlives_its_expiry(
    restored_conn: psycopg.Connection[Any], backup_time: BackupClock,
    retention_settings: RetentionSettings, profile: Profile, run_state: RunState,
    suite_config: SuiteConfig,
) -> None:
    """RC-CRD-5 No Coordinator idempotency receipt kept past its expires_at.

    The cleaner deletes ``coordinator_idempotency_receipts`` with ``expires_at <= now()``
    (expiry set at write time from IDEMPOTENCY_RETENTION_SECONDS); one cleanup interval and one
    batch of slack. Release 1.0 only: 2026.06 has no receipts table.
    """
    result = coordinator.expired_receipts(restored_conn, backup_time, retention_settings,
                                          table=profile.idempotency_table,
                                          release=profile.release)
    evidence.json("idempotency receipts against their expiry", result.evidence())
    _skip_if_not_applicable(result)
    _attach_expected_deletions(restored_conn, backup_time, retention_settings, run_state,
                               profile, suite_config)
    assert result.ok, result.message()

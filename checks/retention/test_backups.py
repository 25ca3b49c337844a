"""Retention controls, row "Backups": platform backup policy and legal/compliance requirements.

RPO and RTO against the run's own measurements, the number of bundles a backup location keeps
(CARACAL_BACKUP_RETAIN), encryption of the bundle, and secrets kept out of it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from caracal_restore.inspect.assets import LeakScan
from caracal_restore.retention import BackupClock, backups
from caracal_restore.runstate import BundleInfo, RunState
from checks.retention.expectations import control_of
from fixtures import evidence
from fixtures.options import SuiteConfig
from fixtures.retention import BackupHistory


@control_of("RC-BAK-1")
def test_newest_backup_within_rpo(
    backup_history: BackupHistory, backup_time: BackupClock, suite_config: SuiteConfig,
) -> None:
    """RC-BAK-1 The newest backup was at most --rpo hours old when the restore ran.

    The newest of the restored bundle and the bundles of the backup location, by manifest
    ``createdAt``, against the restore's own time.
    """
    result = backups.recovery_point(backup_history.restored, backup_history.bundles,
                                    backup_time.restored_at, suite_config.rpo)
    evidence.json("recovery point", result.evidence())
    assert result.ok, result.message()


@control_of("RC-BAK-2")
def test_backup_location_keeps_the_retained_bundles(
    backup_history: BackupHistory, suite_config: SuiteConfig,
) -> None:
    """RC-BAK-2 The backup location keeps at least one and at most --backup-retain bundles.

    The location is ``--backup-location`` or, without it, the one the restored bundle was
    fetched from; CARACAL_BACKUP_RETAIN keeps the newest N there.
    """
    result = backups.retained(backup_history.location, backup_history.bundles,
                              suite_config.backup_retain, explicit=backup_history.explicit)
    evidence.json("retained bundles", result.evidence())
    assert result.ok, result.message()


@control_of("RC-BAK-3")
def test_bundle_is_encrypted(restored_bundle: BundleInfo) -> None:
    """RC-BAK-3 The backup bundle was stored encrypted (the operations page's encrypted backup)."""
    result = backups.encrypted(Path(restored_bundle.source).name, restored_bundle.encrypted)
    evidence.json("bundle encryption", result.evidence())
    assert result.ok, result.message()


@control_of("RC-BAK-4")
def test_secrets_are_not_inside_the_bundle(bundle_secret_scan: LeakScan) -> None:
    """RC-BAK-4 No runtime secret value is inside the bundle: secrets are backed up separately.

    Every restored secret is searched for, in every encoding, in each file of the extracted
    bundle, in the SQL its dumps render to, and in the Redis restored from its AOF.
    """
    scan = bundle_secret_scan
    result = backups.secrets_separate(scan)
    evidence.json("secret scan of the bundle", result.evidence())
    assert result.ok, result.message()


@control_of("RC-BAK-5")
def test_restore_within_rto(run_state: RunState, suite_config: SuiteConfig) -> None:
    """RC-BAK-5 The measured restore (sum of its timed phases) finished within --rto seconds."""
    result = backups.recovery_time(run_state.restore_timings, suite_config.rto)
    evidence.json("recovery time", result.evidence()
                  | {"measured at": dt.datetime.now(dt.UTC).isoformat()})
    assert result.ok, result.message()

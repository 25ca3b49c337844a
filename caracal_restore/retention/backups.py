"""Backups: the platform backup policy (FACTS-1.0 §16.1; the operations page's "Backups" row).

RPO: the newest backup was at most ``--rpo`` hours old when the restore ran. Retention: a
backup location keeps at most ``CARACAL_BACKUP_RETAIN`` bundles (and at least one). The
bundle is encrypted; secrets travel separately (the bundle scan of
``caracal_restore.inspect.assets``, shared with the asset checks). RTO: the measured restore
took at most ``--rto`` seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from caracal_restore.inspect.assets import LeakScan
from caracal_restore.retention.common import Evaluation, iso


def location_of(source: str) -> str:
    """The backup location a bundle was fetched from (its directory or s3:// prefix)."""
    if source.startswith("s3://"):
        bucket, _, key = source[5:].partition("/")
        parent = str(PurePosixPath(key).parent) if "/" in key else ""
        return f"s3://{bucket}/" + (f"{parent}/" if parent else "")
    return str(PurePosixPath(source).parent)


def recovery_point(
    restored_bundle: tuple[str, dt.datetime],
    history: Sequence[tuple[str, dt.datetime]] | None,
    restored_at: dt.datetime | None,
    rpo_hours: int,
) -> Evaluation:
    """RC-BAK-1: the newest backup's age when the restore ran is within the RPO."""
    if restored_at is None:
        raise LookupError("the run recorded no restore time: the backup's age is unknown")
    candidates = [restored_bundle, *(history or ())]
    name, newest = max(candidates, key=lambda c: c[1])
    age = restored_at - newest
    result = Evaluation(observed={
        "restored bundle": {"name": restored_bundle[0], "createdAt": iso(restored_bundle[1])},
        "newest backup": {"name": name, "createdAt": iso(newest)},
        "bundles in the backup location": len(history) if history is not None else None,
        "restored_at": iso(restored_at),
        "age at restore (hours)": round(age.total_seconds() / 3600, 4),
        "RPO (hours)": rpo_hours,
    })
    if age.total_seconds() < -300:
        result.add("backup_from_future", name,
                   f"the newest backup {name} is dated {iso(newest)}, after the restore at "
                   f"{iso(restored_at)}: the clocks disagree, its age cannot be trusted")
    elif age > dt.timedelta(hours=rpo_hours):
        result.add("rpo_exceeded", name,
                   f"the newest backup {name} was {age.total_seconds() / 3600:.2f} h old when "
                   f"the restore ran ({iso(newest)} → {iso(restored_at)}), more than the RPO "
                   f"of {rpo_hours} h")
    return result


def retained(location: str, history: Sequence[tuple[str, dt.datetime]], retain: int,
             *, explicit: bool) -> Evaluation:
    """RC-BAK-2: the backup location keeps between 1 and ``retain`` bundles."""
    result = Evaluation(observed={
        "location": location,
        "location given by": "--backup-location" if explicit else "the restored bundle's source",
        "bundles (newest first)": [{"name": n, "createdAt": iso(t)} for n, t in history],
        "CARACAL_BACKUP_RETAIN": retain,
    })
    if not history:
        result.add("no_backups", location,
                   f"{location} holds no caracalBackup-*.tar.gz bundle: nothing is retained")
    elif len(history) > retain:
        extra = ", ".join(n for n, _ in history[retain:][:5])
        result.add("too_many", location,
                   f"{location} keeps {len(history)} bundles, more than CARACAL_BACKUP_RETAIN="
                   f"{retain}: pruning is not running (oldest beyond the limit: {extra})")
    return result


def encrypted(bundle_name: str, is_encrypted: bool) -> Evaluation:
    """RC-BAK-3: the bundle was stored encrypted (age)."""
    result = Evaluation(observed={"bundle": bundle_name, "age-encrypted": is_encrypted})
    if not is_encrypted:
        result.add("plaintext_bundle", bundle_name,
                   f"bundle {bundle_name} was stored unencrypted: the database, Redis data and "
                   "replay files are readable by anyone who can read the backup location")
    return result


def secrets_separate(scan: LeakScan) -> Evaluation:
    """RC-BAK-4: no runtime secret value is inside the bundle (scan shared with the assets)."""
    if not scan.secrets or not scan.sources:
        raise LookupError(f"nothing was scanned: {len(scan.secrets)} secrets, "
                          f"{len(scan.sources)} bundle locations")
    result = Evaluation(observed={
        "secrets searched": list(scan.secrets),
        "forms searched": scan.needles,
        "locations scanned": list(scan.sources),
        "bytes scanned": scan.bytes_scanned,
    })
    for leak in scan.leaks:
        result.add("secret_in_bundle", leak.secret,
                   f"secret {leak.secret} is inside the bundle ({leak.form}) at {leak.where}: "
                   "secrets must be backed up separately, in the secret manager")
    return result


def recovery_time(timings: Mapping[str, float], rto_seconds: int) -> Evaluation:
    """RC-BAK-5: the measured restore (sum of timed phases) is within the RTO."""
    if not timings:
        raise LookupError("the restore recorded no timed phases: no restore time was measured")
    total = sum(timings.values())
    result = Evaluation(observed={
        "phases (s)": dict(timings), "total (s)": round(total, 3), "RTO (s)": rto_seconds})
    if total > rto_seconds:
        slowest = max(timings.items(), key=lambda kv: kv[1])
        result.add("rto_exceeded", "restore",
                   f"the restore took {total:.1f} s, more than the RTO of {rto_seconds} s "
                   f"(slowest phase {slowest[0]}: {slowest[1]:.1f} s)")
    return result

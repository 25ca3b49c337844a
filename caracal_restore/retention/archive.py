"""The immutable archive: audit exports under S3 Object Lock in COMPLIANCE mode.

The exporter itself only guarantees no-overwrite (``If-None-Match: *``) and sends no
object-lock headers (FACTS-1.0 §6), so immutability must come from the bucket: Object Lock
enabled with a default retention rule in COMPLIANCE mode at least as long as the archive must
be kept. A configuration is only worth something on a substrate that enforces it, so the
verdict starts from what the substrate was *observed* to enforce.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from caracal_restore.environments.objectstore import ImmutabilityProbe
from caracal_restore.errors import EnvironmentNotReady
from caracal_restore.retention.common import Evaluation

#: Days per year in an Object Lock default retention given in years.
_YEAR_DAYS = 365


def require_enforcing(probe: ImmutabilityProbe) -> None:
    """Raise EnvironmentNotReady when the substrate does not enforce Object Lock."""
    if not probe.enforces_object_lock:
        notes = "; ".join(probe.notes) or "no observation recorded"
        raise EnvironmentNotReady(
            f"object store substrate {probe.substrate} does not enforce Object Lock: {notes} — "
            "an immutability verdict on it would prove nothing; run against a substrate that "
            "enforces COMPLIANCE retention (AWS S3, MinIO with object locking)")


def default_retention_days(rule: Mapping[str, Any]) -> int | None:
    """Days of an Object Lock DefaultRetention (``Days`` or ``Years``), None when neither.

    Some S3 implementations return both fields, the unused one as 0.
    """
    days, years = int(rule.get("Days") or 0), int(rule.get("Years") or 0)
    if days:
        return days
    if years:
        return years * _YEAR_DAYS
    return None


def object_lock(
    probe: ImmutabilityProbe,
    configuration: Mapping[str, Any] | None,
    *,
    bucket: str,
    min_days: int,
) -> Evaluation:
    """RC-ARC-1: Object Lock enabled, default COMPLIANCE retention of at least ``min_days``."""
    result = Evaluation(observed={
        "substrate probe": dataclasses.asdict(probe) | {
            "enforces_object_lock": probe.enforces_object_lock},
        "bucket": bucket,
        "object lock configuration": dict(configuration) if configuration else None,
        "required": f"COMPLIANCE, at least {min_days} days",
    })
    require_enforcing(probe)
    if not configuration or configuration.get("ObjectLockEnabled") != "Enabled":
        result.add("lock_disabled", bucket,
                   f"bucket {bucket} does not have Object Lock enabled: exported evidence can be "
                   "deleted or replaced")
        return result
    rule = (configuration.get("Rule") or {}).get("DefaultRetention")
    if not rule:
        result.add("no_default_retention", bucket,
                   f"bucket {bucket} has Object Lock enabled but no default retention rule; the "
                   "exporter sends no lock headers, so its objects are written unlocked")
        return result
    mode = rule.get("Mode")
    days = default_retention_days(rule)
    if mode != "COMPLIANCE":
        result.add("not_compliance", bucket,
                   f"bucket {bucket} default retention mode is {mode}, not COMPLIANCE "
                   "(GOVERNANCE can be bypassed by privileged users)")
    if days is None or days < min_days:
        result.add("retention_too_short", bucket,
                   f"bucket {bucket} default retention is {days} days, shorter than the "
                   f"required {min_days}")
    return result

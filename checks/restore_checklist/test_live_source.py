"""Restore checklist step 1, against the live source: the restore is what the source still holds.

A bundle from Caracal's own backup.sh carries no fingerprint, so the running source
(``--source-dsn``, read-only) is the witness — one that kept writing after the backup. Each
comparison asks only what must still hold: the same ledger, audit and admin audit chains that
are prefixes of the source's, revocations that still hold. What the source's own retention
explains since the backup is reported, not failed. With a fingerprint the fingerprint stays
the reference (RC-1.4, RC-3.2) and these do not apply; with no live source they are not
evaluated, visibly.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import psycopg
import pytest

from caracal_restore import live_source
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.inspect import source as inspect_source
from caracal_restore.inspect.tables import shorten
from caracal_restore.profiles import Profile
from checks.restore_checklist.expectations import LIVE_COMPARISONS, STEP1, LiveComparison
from fixtures import evidence
from fixtures.controls import Severity, control


@control("RC-1.7", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
@pytest.mark.parametrize("comparison", LIVE_COMPARISONS, ids=attrgetter("clause"))
def test_restore_is_what_the_live_source_still_holds(
    comparison: LiveComparison, profile: Profile, live_source_db: PgEndpoint,
    restored_conn: psycopg.Connection[Any],
) -> None:
    """RC-1.7 What the restore holds, the live source still holds (where it may have moved on)."""
    with live_source.connect(live_source_db) as source:
        identity = inspect_source.source_identity(source)
        result = inspect_source.compare(restored_conn, source, profile, comparison.key)
    evidence.json("live source (read-only)", identity)
    evidence.json("comparison with the live source", {
        "requires": comparison.requires, "checked": result.checked,
        "findings": len(result.findings), "explained_by_the_source_since": len(result.reported),
        "observed": result.observed})
    assert not result.findings, (
        f"{comparison.key}: {len(result.findings)} difference(s) from the live source in "
        f"{result.checked} compared: {shorten(list(result.findings))}; required: "
        f"{comparison.requires}")

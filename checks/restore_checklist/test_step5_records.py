"""Restore checklist step 5: confirm audit query, policy-set activation state, Gateway
bindings, sessions, agents and delegation records.

The records are read on the pristine restored copy and compared with the bundle's fingerprint
(taken in the dump's snapshot); a bundle without one (Caracal's own backup.sh) is judged by
internal consistency, and the evidence says so. The audit query and the Gateway's loaded
bindings are confirmed through the running services (not evaluated with --services none).
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter
from typing import Any

import httpx
import psycopg
import pytest

from caracal_restore import live
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.profiles import Profile
from caracal_restore.runstate import ServicesInfo
from checks.restore_checklist.live_expectations import (
    AUDIT_QUERY,
    AUDIT_SAMPLE_PER_ZONE,
    BINDINGS_LOADED,
    RESTORED_RECORDS,
    RecordRow,
)
from fixtures import evidence
from fixtures.controls import Severity, control
from fixtures.services import service_url


@control("RC-5", feature="Confirm records after the restore", grade="verified",
         severity=Severity.CRITICAL)
@pytest.mark.parametrize("row", RESTORED_RECORDS, ids=attrgetter("clause"))
def test_record_confirmed_on_restored_copy(row: RecordRow, profile: Profile,
                                           restored_conn: psycopg.Connection[Any],
                                           source_fingerprint: Mapping[str, Any] | None) -> None:
    """RC-5 The restored record equals the source's (or is internally consistent without one)."""
    finding = live.confirm_record(row.record, restored_conn, profile, source_fingerprint)
    if finding.not_applicable:
        pytest.skip(finding.not_applicable)
    evidence.json(f"{row.title}: restored copy", finding.evidence())
    problems = finding.problems
    assert not problems, f"{row.title} (compared by {finding.basis}): " + "; ".join(problems)


@control("RC-5", feature="Confirm records after the restore", grade="verified",
         severity=Severity.CRITICAL)
@pytest.mark.parametrize("row", [AUDIT_QUERY], ids=attrgetter("clause"))
def test_audit_query_returns_source_events(
    row: RecordRow, live_services: ServicesInfo, profile: Profile, live_db: PgEndpoint,
    restored_conn: psycopg.Connection[Any], live_conn: psycopg.Connection[Any],
    source_fingerprint: Mapping[str, Any] | None, restored_audit_key: bytes,
) -> None:
    """RC-5 Querying the running deployment's audit log by request id returns the source's events.

    A sample of request ids spread over every zone's chain; the expected events are the
    restored rows, proven to be the source's (zone heads equal the fingerprint's; content hash
    and chain HMAC recompute with the restored key); ids, decisions and chain columns must match.
    """
    finding = live.confirm_audit_query(
        restored_conn, live_conn, profile, source_fingerprint, restored_audit_key,
        per_zone=AUDIT_SAMPLE_PER_ZONE, queried=live_db.where)
    evidence.json(f"{row.title}: through the services", finding.evidence())
    problems = finding.problems
    assert not problems, f"{row.title} (compared by {finding.basis}): " + "; ".join(problems)


@control("RC-5", feature="Confirm records after the restore", grade="verified",
         severity=Severity.CRITICAL)
@pytest.mark.parametrize("row", [BINDINGS_LOADED], ids=attrgetter("clause"))
def test_gateway_loaded_restored_bindings(
    row: RecordRow, live_services: ServicesInfo, profile: Profile,
    restored_conn: psycopg.Connection[Any], restored_secrets: Mapping[str, str],
    http_client: httpx.Client,
) -> None:
    """RC-5 The running Gateway loaded exactly the restored bindings (its gauge vs the table)."""
    finding = live.confirm_bindings_loaded(
        http_client, service_url(live_services, "gateway_url", "Gateway"),
        restored_secrets.get(profile.metrics_bearer_secret), restored_conn, profile)
    if finding.not_applicable:
        pytest.skip(finding.not_applicable)
    evidence.json(f"{row.title}: through the services", finding.evidence())
    problems = finding.problems
    assert not problems, f"{row.title} (compared by {finding.basis}): " + "; ".join(problems)

"""Restore checklist step 4: start services and verify /ready.

Readiness proves the services started on the restored data (database, Redis, replay volume,
stream groups; the Gateway also reloads its bindings) — it does not prove that signing keys
decrypt or that routing works. Step 6 (the canary) is therefore required for the checklist to
pass; a green step 4 alone does not demonstrate a working restore.
"""

from __future__ import annotations

from operator import attrgetter

import httpx
import pytest

from caracal_restore import live
from caracal_restore.profiles import Profile
from caracal_restore.runstate import ServicesInfo
from checks.restore_checklist.live_expectations import READY_DEADLINE_SECONDS, READY_ROWS, ReadyRow
from fixtures import evidence
from fixtures.controls import Severity, control
from fixtures.services import service_url


@control("RC-4", feature="Start services and verify /ready", grade="verified",
         severity=Severity.CRITICAL)
@pytest.mark.parametrize("row", READY_ROWS, ids=attrgetter("clause"))
def test_service_answers_ready(row: ReadyRow, live_services: ServicesInfo, profile: Profile,
                               http_client: httpx.Client) -> None:
    """RC-4 STS and Gateway answer /ready with the release's exact ready body within a deadline.

    Readiness does not cover signing keys or bindings: step 6 (RC-6) must pass too.
    """
    url = service_url(live_services, row.url_field, row.service)
    expected = getattr(profile, row.body_field)
    seen = live.wait_ready(http_client, row.service, url, expected,
                           timeout=READY_DEADLINE_SECONDS)
    evidence.json(f"{row.service} /ready", {
        **seen.evidence(), "expected_body": expected, "release": profile.release,
        "note": "readiness does not prove keys or bindings; step 6 (RC-6) is required"})
    assert seen.ready, (
        f"{row.service} at {url} did not become ready within {READY_DEADLINE_SECONDS:.0f}s: "
        f"last answer {seen.status} {seen.body!r} (reason {seen.reason or 'none given'}); "
        f"release {profile.release} requires 200 {expected}"
    )

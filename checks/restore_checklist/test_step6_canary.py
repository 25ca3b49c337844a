"""Restore checklist step 6: run a canary token exchange and a protected Gateway request.

The canary application's client-credentials exchange at the restored STS must return a mandate
signed by a zone signing key that the source already had (the STS silently mints a new key
when it finds none — that would break every token issued before the backup), verified with
PyJWT against the restored JWKS. The mandate must then carry a protected request through the
Gateway to the canary upstream, and the audit events of both must land in the audit log,
continuing the zone's HMAC chain from the restored head. This is the step that demonstrates
the restore works; readiness (step 4) alone does not.
"""

from __future__ import annotations

from caracal_restore import live
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.profiles import Profile
from checks.restore_checklist.live_expectations import EVIDENCE_DEADLINE_SECONDS
from fixtures import evidence
from fixtures.controls import Severity, control


@control("RC-6.exchange", feature="Canary token exchange and protected Gateway request",
         grade="demonstrated", severity=Severity.BLOCKER)
def test_canary_exchange_returns_mandate_signed_by_restored_key(
    canary_exchange: live.CanaryExchange, profile: Profile,
) -> None:
    """RC-6.exchange The canary exchange returns a mandate signed by a restored key (none minted).

    The mandate verifies with PyJWT against the restored JWKS; its kid is one of the source's
    zone signing keys, and the zone's signing-key rows did not grow.
    """
    problems = live.exchange_problems(canary_exchange, profile)
    evidence.json("canary exchange verdict inputs", canary_exchange.evidence())
    assert not problems, (
        f"canary exchange for application {canary_exchange.application_id} in zone "
        f"{canary_exchange.zone_id} (request id {canary_exchange.request_id}): "
        + "; ".join(problems)
    )


@control("RC-6.request", feature="Canary token exchange and protected Gateway request",
         grade="demonstrated", severity=Severity.BLOCKER)
def test_protected_request_reaches_canary_upstream(canary_request: live.CanaryRequest) -> None:
    """RC-6.request A protected request with the canary's mandate reaches the canary upstream.

    Bearer mandate, X-Caracal-Resource and a fresh X-Request-Id through the Gateway: 2xx from
    the upstream, which echoes the request id the Gateway forwarded.
    """
    problems = live.request_problems(canary_request)
    evidence.json("protected request", canary_request.evidence())
    assert not problems, "; ".join(problems)


@control("RC-6.evidence", feature="Canary token exchange and protected Gateway request",
         grade="demonstrated", severity=Severity.BLOCKER)
def test_canary_audit_events_continue_restored_chain(
    canary_exchange: live.CanaryExchange, canary_request: live.CanaryRequest,
    live_db: PgEndpoint, profile: Profile, restored_audit_key: bytes,
) -> None:
    """RC-6.evidence The canary's audit events land and continue the zone's chain from the restore.

    token_exchange (bootstrap and Gateway exchanges) and gateway_resource_request rows with the
    canary's request ids; the first row after the restored head links to it (prev hash, seq + 1)
    and every new row's content hash and chain HMAC recompute with the restored key.
    """
    seen = live.await_canary_evidence(live_db.conninfo(), profile, canary_exchange,
                                      canary_request, timeout=EVIDENCE_DEADLINE_SECONDS)
    evidence.json("canary audit evidence", seen.evidence())
    problems = live.evidence_problems(seen, profile, restored_audit_key)
    assert not problems, "; ".join(problems)

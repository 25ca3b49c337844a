"""Symptom "Revocation state is incomplete" — restore Postgres revocation/session state and replay
Redis revocation events where needed.

Postgres is authoritative: revoked sessions, stopped agents and revoked edges must equal the
source's. Redis carries what is in flight: every revocation in the outboxes is applied in
Postgres or still owed to ``sts-revocation`` (FACTS-2026.06 §5.4); anything else is listed with
the exact event to replay. The replay itself is an explicit remediation (``--remediate
revocations``) that writes only to the live copy the services run on.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter
from typing import Any

import httpx
import psycopg
import pytest

from caracal_restore.diagnose import SYMPTOM_REVOCATION, Diagnosis
from caracal_restore.diagnose import kek as kek_diag
from caracal_restore.diagnose import revocation as revocation_diag
from caracal_restore.diagnose.remediate import ReplayReport
from caracal_restore.errors import EnvironmentNotReady
from caracal_restore.profiles import Profile
from caracal_restore.runstate import ServicesInfo
from checks.symptoms.expectations import REVOKED_KINDS, RevokedKind
from fixtures import evidence
from fixtures.controls import Severity, control


def _urls(services: ServicesInfo) -> tuple[str, str]:
    if not (services.gateway_url and services.sts_url):
        raise EnvironmentNotReady(f"services mode {services.mode!r} names no Gateway/STS URL")
    return services.gateway_url, services.sts_url


@control("SY-4.a", feature=SYMPTOM_REVOCATION, grade="verified", severity=Severity.CRITICAL)
@pytest.mark.parametrize("kind", REVOKED_KINDS, ids=attrgetter("clause"))
def test_postgres_revocation_state_is_restored(revocation_diagnosis: Diagnosis,
                                               kind: RevokedKind) -> None:
    """SY-4.a The restored Postgres revocation state equals the source's: revoked sessions,
    stopped agent sessions and revoked delegation edges."""
    found = revocation_diagnosis.only("revocation-postgres")
    found = Diagnosis(found.symptom, tuple(f for f in found.findings
                                           if f.subject.startswith(kind.subject + " ")))
    evidence.json(f"{kind.noun}: counts", {
        "source": (revocation_diagnosis.observed.get("revoked_in_source") or {}).get(kind.kind),
        "restored": revocation_diagnosis.observed["revoked_after_restore"].get(kind.kind)})
    evidence.text("basis", "\n".join(revocation_diagnosis.notes) or "fingerprint of the source")
    assert not found.present, found.explain()


@control("SY-4.b", feature=SYMPTOM_REVOCATION, grade="verified", severity=Severity.CRITICAL)
def test_no_revocation_is_lost_with_redis(revocation_diagnosis: Diagnosis) -> None:
    """SY-4.b Every revocation in the outboxes is applied in Postgres or still owed to
    sts-revocation in the restored Redis; lost ones are listed with the exact event to replay."""
    found = revocation_diagnosis.only("revocation-redis-lost")
    coverage = revocation_diagnosis.observed["coverage"]
    evidence.json("outbox revocations and where each stands", coverage)
    evidence.json("events to replay", revocation_diagnosis.observed["to_replay"])
    assert coverage, "no revocation outbox row carries a session_id: the invariant is vacuous"
    assert not found.present, found.explain()


@control("SY-4.c", feature=SYMPTOM_REVOCATION, grade="demonstrated", severity=Severity.CRITICAL)
def test_gateway_refuses_mandates_of_revoked_anchors(
    live_services: ServicesInfo, service_http: httpx.Client,
    restored_conn: psycopg.Connection[Any], restored_secrets: Mapping[str, str],
    profile: Profile, lookback_anchors: list[revocation_diag.Anchor],
) -> None:
    """SY-4.c A mandate bound to a revoked session, agent or edge the Gateway must know (its 24 h
    snapshot look-back) is refused with '401 session revoked' (1.0: one-shot use=gateway
    mandates, the probe resource routed by resources.upstream_url)."""
    gateway_url, sts_url = _urls(live_services)
    diagnosis = revocation_diag.probe_enforcement(
        service_http, gateway_url=gateway_url, issuer=sts_url,
        conn=restored_conn,
        kek=kek_diag.keyring(restored_secrets, profile.kek_secret, profile.kek_previous_env),
        anchors=lookback_anchors, flow=profile.canary_flow,
        fmt=profile.kek_format or "zone-chacha20",
        control_audience=profile.control_audience or "caracal-control")
    evidence.json("probes", diagnosis.observed)
    evidence.text("notes", "\n".join(diagnosis.notes) or "every anchor probed")
    assert diagnosis.observed["probes"], "no anchor could be probed: " + "; ".join(diagnosis.notes)
    assert not diagnosis.present, diagnosis.explain()


@control("SY-4.d", feature=SYMPTOM_REVOCATION, grade="demonstrated", severity=Severity.CRITICAL)
@pytest.mark.destructive
def test_replayed_revocations_hold_on_the_live_copy(revocation_replay: ReplayReport) -> None:
    """SY-4.d Remediation (--remediate revocations): after replaying the lost revocation events
    on the live copy, every outbox revocation there is applied or owed to sts-revocation."""
    evidence.json("replay report", revocation_replay.as_dict())
    assert not revocation_replay.lost_after, (
        f"{SYMPTOM_REVOCATION}: after the replay {len(revocation_replay.lost_after)} revocation(s) "
        "are still lost: " + ", ".join(f"{c.outbox} {c.outbox_id} ({c.state})"
                                       for c in revocation_replay.lost_after))

"""Symptom "Restored STS cannot decrypt keys" — ZONE_KEK does not match the database secrets.

Release 2026.06 seals without a key id, so a mismatch shows only as failed opens: every value
failing names a wrong KEK, some failing names damaged rows. The silent trap — signing-key rows
that did not survive, so STS mints a new key and every earlier token stops verifying — is its
own control, offline and online. Release 1.0 seals CSS1 envelopes that carry their KEK's id:
there the kekIds are compared with the restored SECRET_STORE_KEK and SECRET_STORE_KEK_PREVIOUS
before anything is opened, so a mismatch names the key it is about.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from caracal_restore.diagnose import SYMPTOM_KEK, Diagnosis
from caracal_restore.diagnose import kek as kek_diag
from caracal_restore.errors import EnvironmentNotReady
from caracal_restore.profiles import Profile
from caracal_restore.runstate import CanaryInputs, ServicesInfo
from fixtures import evidence
from fixtures.controls import Severity, control

KEK_CAUSES = ("kek-mismatch", "kek-previous-mismatch", "kek-unusable", "sealed-rows-corrupt")


def _sts(services: ServicesInfo) -> str:
    if not services.sts_url:
        raise EnvironmentNotReady(f"services mode {services.mode!r} names no STS URL")
    return services.sts_url


@control("SY-1.a", feature=SYMPTOM_KEK, grade="verified", severity=Severity.CRITICAL)
def test_sealed_values_open_under_the_restored_kek(kek_diagnosis: Diagnosis) -> None:
    """SY-1.a Every value sealed under the KEK (ZONE_KEK at 2026.06, SECRET_STORE_KEK and its
    _PREVIOUS at 1.0: signing keys, provider secrets, tokens) opens with the restored key;
    failures name the mismatched key or the damaged rows."""
    found = kek_diagnosis.only(*KEK_CAUSES)
    evidence.json("sealed values per location", kek_diagnosis.observed.get("sealed_values", {}))
    evidence.json("values that did not open", kek_diagnosis.observed.get("failed_opens", []))
    evidence.json("diagnosis", found.as_dict())
    assert kek_diagnosis.observed.get("sealed_values") or found.present, (
        "no sealed value was found to open: the restored database holds no zone signing key, "
        "provider secret or provider token, so the restored zoneKek is unverified")
    assert not found.present, found.explain()


@control("SY-1.b", feature=SYMPTOM_KEK, grade="verified", severity=Severity.CRITICAL)
def test_signing_key_rows_survive_the_restore(kek_diagnosis: Diagnosis) -> None:
    """SY-1.b Every zone signing key of the source is restored, and every zone that issued tokens
    has one (else STS silently mints a new key and every earlier token stops verifying)."""
    found = kek_diagnosis.only("signing-keys-missing")
    evidence.json("signing keys per zone", kek_diagnosis.observed.get("signing_keys_per_zone"))
    evidence.json("token lineage rows per zone",
                  kek_diagnosis.observed.get("token_lineage_rows_per_zone"))
    evidence.json("secrets table: source vs restored", kek_diagnosis.observed.get("secrets_table"))
    evidence.text("basis and notes",
                  "\n".join(kek_diagnosis.notes) or "fingerprint of the source")
    assert not found.present, found.explain()


@control("SY-1.c", feature=SYMPTOM_KEK, grade="demonstrated", severity=Severity.CRITICAL)
def test_sts_publishes_every_restored_signing_key(
    live_services: ServicesInfo, service_http: httpx.Client, restored_zones: list[str],
    restored_signing_keys: Mapping[str, list[kek_diag.SigningKeyRow]],
    kek_diagnosis: Diagnosis,
) -> None:
    """SY-1.c The STS's JWKS of every zone publishes exactly the restored verification keys (no
    '500 signing key decryption failed', no key skipped, no key minted after the restore)."""
    diagnosis = kek_diag.probe_jwks(service_http, _sts(live_services), restored_signing_keys,
                                    restored_zones, offline=kek_diagnosis)
    evidence.json("JWKS per zone", diagnosis.observed)
    assert not diagnosis.present, diagnosis.explain()


@control("SY-1.d", feature=SYMPTOM_KEK, grade="demonstrated", severity=Severity.CRITICAL)
def test_canary_exchange_signs_with_a_restored_key(
    live_services: ServicesInfo, service_http: httpx.Client, live_canary: CanaryInputs,
    restored_signing_keys: Mapping[str, list[kek_diag.SigningKeyRow]],
    kek_diagnosis: Diagnosis, profile: Profile,
) -> None:
    """SY-1.d A canary token exchange succeeds and its token is signed with a restored signing
    key ('500 token issuance failed' or a freshly minted key id name this symptom's cause)."""
    exchange = kek_diag.canary_exchange(
        service_http, _sts(live_services), zone_id=live_canary.zone_id,
        application_id=live_canary.application_id, client_secret=live_canary.client_secret,
        resource=live_canary.resource_identifier, scope=profile.canary_scope)
    diagnosis = kek_diag.probe_canary_exchange(exchange, live_canary.zone_id,
                                               restored_signing_keys, offline=kek_diagnosis)
    observed: dict[str, Any] = dict(diagnosis.observed)
    evidence.json("canary exchange", observed)
    assert not diagnosis.present, diagnosis.explain()

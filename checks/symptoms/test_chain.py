"""Symptom "Audit chain verification fails" — missing audit rows, wrong AUDIT_HMAC_KEY, or
partial restore.

The offline verifier reads the restored ``audit_events`` chain by chain with the restored
``auditHmacKey``, the backup's chain heads and the export archive; retention holes the archive
explains are not defects. The ``audit_chain_rehash`` marker is checked on its own: without it the
2026.06 audit service rewrites every chain under its current key on start, laundering a wrong key
or tampering.
"""

from __future__ import annotations

from caracal_restore.audit_chain import Report
from caracal_restore.diagnose import SYMPTOM_CHAIN, Diagnosis
from fixtures import evidence
from fixtures.controls import Severity, control

MARKER = "chain-marker-missing"


@control("SY-2.a", feature=SYMPTOM_CHAIN, grade="verified", severity=Severity.CRITICAL)
def test_audit_chain_verifies(chain_diagnosis: tuple[Diagnosis, Report]) -> None:
    """SY-2.a Every zone's audit chain verifies under the restored AUDIT_HMAC_KEY up to the
    backup's heads; a failure names missing rows, a wrong key or a partial restore."""
    diagnosis, report = chain_diagnosis
    found = diagnosis.only(*(diagnosis.causes - {MARKER}))
    evidence.text("verifier summary", report.summary())
    evidence.json("verifier report", diagnosis.observed)
    evidence.text("basis", "\n".join(diagnosis.notes) or "fingerprint heads and export archive")
    assert report.rows_checked > 0 or found.present, (
        "audit_events holds no row: there is no chain to verify")
    assert not found.present, found.explain()


@control("SY-2.b", feature=SYMPTOM_CHAIN, grade="verified", severity=Severity.CRITICAL)
def test_rehash_marker_is_restored(chain_diagnosis: tuple[Diagnosis, Report]) -> None:
    """SY-2.b The audit_chain_rehash marker row is restored with the audit rows (else an Audit
    service running as the table owner, as every 2026.06 service does, re-signs every chain
    under its current key on start)."""
    diagnosis, _report = chain_diagnosis
    found = diagnosis.only(MARKER)
    evidence.json("marker findings", found.as_dict())
    assert not found.present, found.explain()

"""Symptom "Audit chain verification fails" — the admin audit chain (``admin_audit_events``).

The API and the Coordinator chain every mutating admin request per zone (NULL zone: the global
chain) under the same AUDIT_HMAC_KEY as the audit events; Caracal itself never verifies it, so
a restore that loses, edits or re-keys these rows shows only here.
"""

from __future__ import annotations

from caracal_restore.audit_chain import Report
from caracal_restore.diagnose import SYMPTOM_CHAIN, Diagnosis
from fixtures import evidence
from fixtures.controls import Severity, control


@control("SY-2.c", feature=SYMPTOM_CHAIN, grade="verified", severity=Severity.CRITICAL)
def test_admin_audit_chain_verifies(admin_chain_diagnosis: tuple[Diagnosis, Report]) -> None:
    """SY-2.c Every admin audit chain (admin_audit_events, per zone and global) links, its
    recomputable content hashes match and its signed rows verify under the restored
    AUDIT_HMAC_KEY, with as many rows as the source."""
    diagnosis, report = admin_chain_diagnosis
    evidence.text("verifier summary", report.summary())
    evidence.json("verifier report", diagnosis.observed)
    evidence.text("basis", "\n".join(diagnosis.notes) or "fingerprint of the source")
    assert report.rows_checked > 0 or diagnosis.present, (
        "admin_audit_events holds no row: there is no admin chain to verify")
    assert not diagnosis.present, diagnosis.explain()

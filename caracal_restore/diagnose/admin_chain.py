"""Symptom "Audit chain verification fails", second chain — the admin audit chain.

``admin_audit_events`` is its own hash chain (one per ``zone_id``, NULL zone = the global chain),
written synchronously by the API and the Coordinator and keyed by the same ``AUDIT_HMAC_KEY``
(FACTS-1.0 §5); Caracal has no verifier for it (§22.4). ``audit_chain.verify_admin_chain``
checks its links, content hashes (where the database still allows them to be recomputed) and
the HMACs of signed rows (Compose's Coordinator rows are unsigned); this module sorts what it
finds into the page's causes, and adds the one thing the verifier cannot see: rows lost after
the last head (fewer rows than the source's fingerprint while every chain links).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from caracal_restore import audit_chain
from caracal_restore.diagnose import SYMPTOM_CHAIN, Diagnosis, Finding
from caracal_restore.diagnose._common import fingerprint_table, table_digests

TABLE = "admin_audit_events"

#: The verifier's cause wording -> our admin-chain cause id.
CAUSE_OF: Mapping[str, str] = {
    "missing audit rows": "admin-chain-missing-rows",
    "wrong AUDIT_HMAC_KEY": "admin-chain-wrong-hmac-key",
    "partial restore": "admin-chain-partial-restore",
    "tampered rows": "admin-chain-tampered",
    "duplicated audit rows": "admin-chain-tampered",
}


def diagnose(conn: psycopg.Connection[Any], *, hmac_key_hex: str | None,
             fingerprint: Mapping[str, Any] | None,
             hmac_secret: str = "auditHmacKey") -> tuple[Diagnosis, audit_chain.Report]:
    """Verify every admin audit chain and name the cause of every finding."""
    findings: list[Finding] = []
    notes: list[str] = []
    key = hmac_key_hex or None
    if key is None:
        findings.append(Finding("admin-chain-wrong-hmac-key", f"secret {hmac_secret}",
                                "absent from the restored secret store: admin audit HMACs "
                                "cannot be verified"))
    report = audit_chain.verify_admin_chain(conn, key)
    for f in report.findings:
        where = "global chain" if f.zone_id is None else f"zone {f.zone_id}"
        if f.chain_seq is not None:
            where += f" chain_seq {f.chain_seq}"
        findings.append(Finding(CAUSE_OF.get(f.cause, "admin-chain-tampered"),
                                f"{TABLE} {where}", f"[{f.kind}] {f.detail}", f.zone_id))
    shown = {f.kind for f in report.findings}
    for kind in sorted(k for k, n in report.counts.items() if n and k not in shown):
        findings.append(Finding(CAUSE_OF.get(audit_chain.CAUSES.get(kind, ""),
                                             "admin-chain-tampered"),
                                TABLE, f"[{kind}] {report.counts[kind]} findings"))
    observed = report.as_dict()
    observed["findings"] = observed["findings"][:200]
    observed["hmac_key_supplied"] = key is not None
    source = fingerprint_table(fingerprint, TABLE)
    if source is None:
        notes.append("no source fingerprint: rows lost after the last head of a chain cannot "
                     "be told from a complete chain")
    elif report.rows_checked:
        now = table_digests(conn, [TABLE])[TABLE]
        observed["table"] = {"source": source, "restored": now}
        lost = source["rows"] - now["rows"]
        in_chain = sum(z.missing_rows for z in report.zones.values())
        if lost > in_chain:
            findings.append(Finding(
                "admin-chain-partial-restore", f"table {TABLE}",
                f"{lost} of the source's {source['rows']} rows are missing after restore, "
                f"{lost - in_chain} of them past the chains' restored heads"))
    return Diagnosis(SYMPTOM_CHAIN, tuple(findings), observed, tuple(notes)), report

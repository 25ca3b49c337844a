"""Symptom "Audit chain verification fails" — missing audit rows, wrong AUDIT_HMAC_KEY, or
partial restore.

A thin layer over ``caracal_restore.audit_chain``: it runs the offline verifier over the
restored ``audit_events`` with the restored ``auditHmacKey``, the chain heads of the backup's
fingerprint (a head that stops short is a partial restore) and the export archive's index
(``parquet_export.read_archive``; a hole whose rows were exported and whose partition is gone is
retention, not tampering), and sorts the verifier's findings into the page's causes. The
marker-row hazard (an empty ``audit_chain_rehash`` makes the 2026.06 audit service rewrite every
chain under the current key, FACTS-2026.06 §4) is its own cause. Rows stream through the
verifier's server-side cursor, so memory stays flat whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import psycopg

from caracal_restore import audit_chain
from caracal_restore.diagnose import SYMPTOM_CHAIN, Diagnosis, Finding
from caracal_restore.parquet_export import ArchiveIndex

#: The verifier's cause wording -> our cause id. Retention holes are benign (not findings).
CAUSE_OF: Mapping[str, str] = {
    "missing audit rows": "chain-missing-rows",
    "wrong AUDIT_HMAC_KEY": "chain-wrong-hmac-key",
    "partial restore": "chain-partial-restore",
    "tampered rows": "chain-tampered",
    "duplicated audit rows": "chain-duplicated",
    "missing rehash marker": "chain-marker-missing",
    "rows newer than the backup": "chain-beyond-head",
}
BENIGN_CAUSES = frozenset({"expected retention"})


def expected_heads(fingerprint: Mapping[str, Any] | None) -> dict[str, tuple[int, str]] | None:
    """``{zone: (max chain_seq, its content_sha256)}`` from a fingerprint's ``heads``."""
    if not fingerprint or fingerprint.get("heads") is None:
        return None
    return {zone: (int(h["max_seq"]), str(h["content_sha256"]))
            for zone, h in fingerprint["heads"].items() if h.get("max_seq") is not None}


def archived_events(index: ArchiveIndex) -> Mapping[tuple[str, int], audit_chain.ArchivedEvent]:
    """The archive index in the verifier's form, keyed (zone_id, chain_seq): its rows carry
    the verifier's fields (``event_id``, ``content_sha256``, ``chain_hmac``, ``time_ms``), so
    they are handed over as they are, not copied."""
    return cast(Mapping[tuple[str, int], audit_chain.ArchivedEvent], index.rows)


def diagnose(
    conn: psycopg.Connection[Any],
    *,
    hmac_key_hex: str | None,
    fingerprint: Mapping[str, Any] | None,
    archive: ArchiveIndex | None,
    batch_size: int = 20000,
    hmac_secret: str = "auditHmacKey",
) -> tuple[Diagnosis, audit_chain.Report]:
    """Verify the restored chains and name the cause of every non-benign finding."""
    notes: list[str] = []
    findings: list[Finding] = []
    heads = expected_heads(fingerprint)
    if heads is None:
        notes.append("no source fingerprint: a truncated head (partial restore) cannot be told "
                     "from a complete chain; internal consistency only")
    events = None
    if archive is None:
        notes.append("no export archive: retention holes are judged from the partitions only "
                      "(unverified)")
    else:
        events = archived_events(archive)
        notes += [f"archive: {p}" for p in archive.problems[:20]]
    key = hmac_key_hex or None
    if key is None:
        findings.append(Finding("chain-wrong-hmac-key", f"secret {hmac_secret}",
                                "absent from the restored secret store: chain HMACs cannot be "
                                "verified (and Audit would write unsigned rows)"))
    report = audit_chain.verify_audit_chain(conn, hmac_key=key, expected_heads=heads,
                                            archive=events, batch_size=batch_size)
    duplicated = {(f.zone_id, f.chain_seq) for f in report.findings if f.kind == "duplicate_seq"}
    for f in report.findings:
        if f.cause in BENIGN_CAUSES:
            continue
        cause_id = CAUSE_OF.get(f.cause, "chain-other")
        if f.kind == "archive_mismatch" and (f.zone_id, f.chain_seq) in duplicated:
            # The extra row at a duplicated chain_seq is bound to differ from the exported one.
            cause_id = "chain-duplicated"
        where = f"zone {f.zone_id}" if f.zone_id else "audit_events"
        if f.chain_seq is not None:
            where += f" chain_seq {f.chain_seq}"
        findings.append(Finding(cause_id, where, f"[{f.kind}] {f.detail}", f.zone_id))
    stored = {k for k, n in report.counts.items() if n}
    shown = {f.kind for f in report.findings}
    for kind in sorted(stored - shown):
        if audit_chain.CAUSES.get(kind) in BENIGN_CAUSES:
            continue
        cause_id = CAUSE_OF.get(audit_chain.CAUSES.get(kind, ""), "chain-other")
        findings.append(Finding(cause_id, "audit_events",
                                f"[{kind}] {report.counts[kind]} findings (no example kept)"))
    observed = report.as_dict()
    observed["findings"] = observed["findings"][:200]
    observed["hmac_key_supplied"] = key is not None
    observed["expected_heads_from_fingerprint"] = heads is not None
    observed["archive_rows"] = len(events) if events is not None else None
    return Diagnosis(SYMPTOM_CHAIN, tuple(findings), observed, tuple(notes)), report


def counts_by_cause(diagnosis: Diagnosis) -> dict[str, int]:
    """Findings per cause id (for summaries)."""
    out: dict[str, int] = {}
    for f in diagnosis.findings:
        out[f.cause] = out.get(f.cause, 0) + 1
    return out

"""Diagnostics of the operations page's symptom table: each names which listed cause is present.

The page (``Back Up and Retain Data``, section *Symptoms*) has four rows. Each row is one
family here, in its own module: ``kek`` (Restored STS cannot decrypt keys), ``chain`` (Audit
chain verification fails), ``routing`` (Gateway cannot route) and ``revocation`` (Revocation
state is incomplete); ``remediate`` holds the one explicit remediation (replaying revocation
events). A family looks at a restored environment and returns a ``Diagnosis``: the findings it
saw, each tied to a ``Cause`` — one of the causes the page lists, or a named cause the page does
not list (corrupted rows, tampering, orphans) so a symptom is never reported without one — plus
the observations a reader needs to re-check it. Nothing here decides a verdict: the checks do.

Findings and observations carry ids, counts and reasons, never key material.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

#: The symptom rows of the operations page, spelled exactly (Allure ``feature`` labels).
SYMPTOM_KEK = "Restored STS cannot decrypt keys"
SYMPTOM_CHAIN = "Audit chain verification fails"
SYMPTOM_ROUTING = "Gateway cannot route"
SYMPTOM_REVOCATION = "Revocation state is incomplete"

#: Each symptom row's "Check" column, spelled exactly.
PAGE_CHECKS: Mapping[str, str] = {
    SYMPTOM_KEK: "ZONE_KEK does not match the database secrets.",
    SYMPTOM_CHAIN: "Missing audit rows, wrong AUDIT_HMAC_KEY, or partial restore.",
    SYMPTOM_ROUTING: "Missing gateway binding rows or stale binding revision.",
    SYMPTOM_REVOCATION: "Restore Postgres revocation/session state and replay Redis revocation "
                        "events where needed.",
}

#: Marks a cause the page's "Check" column does not list (named so it is never anonymous).
NOT_ON_PAGE = "not listed on the page"


@dataclasses.dataclass(frozen=True)
class Cause:
    """One cause of a symptom: a stable id, its symptom row, and how the page words it."""

    id: str
    symptom: str
    title: str
    #: The page's wording of this cause, or ``NOT_ON_PAGE``.
    page_cause: str
    #: What to do about it (one sentence).
    remedy: str


_CAUSES: tuple[Cause, ...] = (
    # Restored STS cannot decrypt keys
    Cause("kek-mismatch", SYMPTOM_KEK, "ZONE_KEK does not match the database secrets",
          "ZONE_KEK does not match the database secrets",
          "restore the zoneKek secret that was backed up with this database"),
    Cause("kek-previous-mismatch", SYMPTOM_KEK,
          "SECRET_STORE_KEK_PREVIOUS does not match the envelopes sealed before a KEK rotation",
          "ZONE_KEK does not match the database secrets",
          "restore SECRET_STORE_KEK_PREVIOUS as it was backed up with this database (or finish "
          "the rotation on the source before backing up)"),
    Cause("kek-unusable", SYMPTOM_KEK, "the restored ZONE_KEK secret is missing or malformed",
          "ZONE_KEK does not match the database secrets",
          "restore the zoneKek secret (64 lowercase hex characters)"),
    Cause("sealed-rows-corrupt", SYMPTOM_KEK,
          "some sealed rows are damaged (the ZONE_KEK opens the others)", NOT_ON_PAGE,
          "restore the damaged rows from the backup; the KEK is right"),
    Cause("signing-keys-missing", SYMPTOM_KEK,
          "zone signing-key rows are missing (STS would mint a new key and break every "
          "earlier token)", NOT_ON_PAGE,
          "restore the secrets rows before starting STS"),
    # Audit chain verification fails
    Cause("chain-missing-rows", SYMPTOM_CHAIN, "missing audit rows", "Missing audit rows",
          "restore audit_events completely (a dump taken in one snapshot)"),
    Cause("chain-wrong-hmac-key", SYMPTOM_CHAIN, "wrong AUDIT_HMAC_KEY", "wrong AUDIT_HMAC_KEY",
          "restore the auditHmacKey secret that wrote the chain"),
    Cause("chain-partial-restore", SYMPTOM_CHAIN, "partial restore", "partial restore",
          "restore the whole backup: the chain heads stop short of the source's"),
    Cause("chain-tampered", SYMPTOM_CHAIN, "audit rows were edited after they were written",
          NOT_ON_PAGE, "treat as tampering: compare with the export archive and the source"),
    Cause("chain-duplicated", SYMPTOM_CHAIN, "audit rows are duplicated", NOT_ON_PAGE,
          "restore audit_events once, into an empty table"),
    Cause("chain-marker-missing", SYMPTOM_CHAIN,
          "the audit_chain_rehash marker row is missing (starting Audit would rewrite every "
          "chain under the current key)", NOT_ON_PAGE,
          "restore audit_chain_rehash with the data BEFORE starting the Audit service"),
    Cause("chain-beyond-head", SYMPTOM_CHAIN, "audit rows newer than the backup", NOT_ON_PAGE,
          "the restored copy was written to after the restore; verify a pristine copy"),
    Cause("chain-other", SYMPTOM_CHAIN, "another chain defect the verifier named", NOT_ON_PAGE,
          "read the verifier's finding"),
    # Audit chain verification fails: the admin audit chain (admin_audit_events)
    Cause("admin-chain-missing-rows", SYMPTOM_CHAIN, "missing admin audit rows",
          "Missing audit rows", "restore admin_audit_events completely"),
    Cause("admin-chain-wrong-hmac-key", SYMPTOM_CHAIN,
          "wrong AUDIT_HMAC_KEY (admin audit chain)", "wrong AUDIT_HMAC_KEY",
          "restore the auditHmacKey secret that signed the admin audit rows"),
    Cause("admin-chain-partial-restore", SYMPTOM_CHAIN, "partial restore (admin audit chain)",
          "partial restore", "restore the whole backup: admin audit rows stop short of the "
          "source's"),
    Cause("admin-chain-tampered", SYMPTOM_CHAIN,
          "admin audit rows were edited or duplicated after they were written", NOT_ON_PAGE,
          "treat as tampering: compare with the source"),
    # Gateway cannot route
    Cause("binding-missing", SYMPTOM_ROUTING, "missing gateway binding rows",
          "Missing gateway binding rows",
          "restore gateway_resource_bindings, then bump gateway_binding_revision"),
    Cause("binding-orphan", SYMPTOM_ROUTING,
          "gateway bindings point at missing or archived resources/applications", NOT_ON_PAGE,
          "restore the resources/applications rows, or remove the stray bindings and bump the "
          "revision"),
    Cause("revision-stale", SYMPTOM_ROUTING, "stale binding revision", "stale binding revision",
          "bump gateway_binding_revision.version (or restart the Gateway) so it reloads"),
    Cause("revision-missing", SYMPTOM_ROUTING,
          "the gateway_binding_revision row is missing, duplicated or negative (the Gateway "
          "cannot start)", "stale binding revision",
          "restore the singleton row (id true, version as in the source)"),
    Cause("revision-differs", SYMPTOM_ROUTING,
          "the binding revision differs from the source's", "stale binding revision",
          "restore gateway_binding_revision as backed up"),
    # Gateway cannot route, at 1.0 (no bindings: routing comes from resources, FACTS-1.0 §8)
    Cause("resource-missing", SYMPTOM_ROUTING,
          "resources rows are missing (1.0 routes from resources: no upstream for them)",
          "Missing gateway binding rows",
          "restore the resources table completely (a dump taken in one snapshot)"),
    Cause("resource-route-changed", SYMPTOM_ROUTING,
          "resources restored without their upstream URL, or with other routing columns than "
          "the source", "Missing gateway binding rows",
          "restore resources as backed up (upstream_url, credential_provider_id, scopes, "
          "operations)"),
    Cause("provider-missing", SYMPTOM_ROUTING,
          "a routed resource's credential provider is missing or archived (STS denies the "
          "exchange: provider_unavailable)", "Missing gateway binding rows",
          "restore the providers rows the resources name"),
    Cause("retired-binding-table", SYMPTOM_ROUTING,
          "retired gateway binding tables exist (a pre-1.0 dump restored into 1.0: verify.sh "
          "fails)", NOT_ON_PAGE,
          "restore a 1.0 backup, or migrate the old data; 1.0 routes from resources"),
    # Revocation state is incomplete
    Cause("revocation-postgres", SYMPTOM_REVOCATION,
          "Postgres revocation/session state was not restored",
          "Restore Postgres revocation/session state",
          "restore sessions, agent_sessions and delegation_edges from the backup"),
    Cause("revocation-redis-lost", SYMPTOM_REVOCATION,
          "revocation events were lost with Redis (published, neither applied nor still owed "
          "to sts-revocation)", "replay Redis revocation events where needed",
          "replay the listed events (--remediate revocations) or requeue their outbox rows"),
    Cause("revocation-not-enforced", SYMPTOM_REVOCATION,
          "the Gateway accepts a mandate bound to a revoked anchor",
          "Restore Postgres revocation/session state",
          "restore the revocation state and reload the Gateway's snapshot"),
)

CAUSES: Mapping[str, Cause] = {c.id: c for c in _CAUSES}


def cause(cause_id: str) -> Cause:
    """A cause by id (KeyError for an unknown one)."""
    return CAUSES[cause_id]


def causes_of(symptom: str) -> tuple[Cause, ...]:
    """Every cause of one symptom row, in declaration order."""
    return tuple(c for c in _CAUSES if c.symptom == symptom)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One observed defect: which cause it points to, what it is about, and what was seen."""

    cause: str
    subject: str
    detail: str
    zone_id: str | None = None

    def __post_init__(self) -> None:
        if self.cause not in CAUSES:
            raise ValueError(f"unknown cause {self.cause!r}")

    @property
    def symptom(self) -> str:
        """The symptom row this finding belongs to."""
        return CAUSES[self.cause].symptom


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What one family saw on a restored environment."""

    symptom: str
    findings: tuple[Finding, ...]
    #: JSON-ready observations (ids, counts, statuses; never key material).
    observed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: How the family judged (basis of comparison, what it could not decide).
    notes: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        """True when the symptom is present (at least one finding)."""
        return bool(self.findings)

    @property
    def causes(self) -> set[str]:
        """Ids of every cause found."""
        return {f.cause for f in self.findings}

    def of(self, *cause_ids: str) -> list[Finding]:
        """The findings of the given causes."""
        return [f for f in self.findings if f.cause in cause_ids]

    def only(self, *cause_ids: str) -> Diagnosis:
        """The same diagnosis restricted to some causes (one check = one control)."""
        return dataclasses.replace(self, findings=tuple(self.of(*cause_ids)))

    def explain(self, limit: int = 8) -> str:
        """An auditor's sentence per cause: the symptom, the cause, the page's wording, examples."""
        if not self.findings:
            return f"{self.symptom}: no finding"
        lines = []
        for c in _ordered_causes(self.causes):
            found = self.of(c.id)
            page = ("the page's cause: " + c.page_cause if c.page_cause != NOT_ON_PAGE
                    else NOT_ON_PAGE)
            lines.append(f"{self.symptom} — cause: {c.title} ({page}); {len(found)} finding(s); "
                         f"remedy: {c.remedy}")
            lines += [f"  - {f.subject}: {f.detail}" for f in found[:limit]]
            if len(found) > limit:
                lines.append(f"  - … and {len(found) - limit} more (see the attachment)")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form for evidence attachments."""
        return {
            "symptom": self.symptom,
            "present": self.present,
            "causes": [{"id": c.id, "title": c.title, "page_cause": c.page_cause}
                       for c in _ordered_causes(self.causes)],
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "observed": dict(self.observed),
            "notes": list(self.notes),
        }


def _ordered_causes(ids: Iterable[str]) -> list[Cause]:
    wanted = set(ids)
    return [c for c in _CAUSES if c.id in wanted]

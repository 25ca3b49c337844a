"""The restore checklist's data tables (steps 1-3): clauses with stable ids.

``clause`` is the pytest parameter id and Allure parameter: never renumber or reuse one.
Release-specific names (tables, columns, secrets) are not here: each clause names what it
covers by a release-independent key, and the check reads the names from the release profile.
"""

from __future__ import annotations

import dataclasses

#: The checklist rows, spelled as the operations page spells them (Allure feature).
STEP1 = "Restore Postgres into an isolated environment"
STEP2 = "Restore required secrets into the environment secret store"
STEP3 = "Run migration verification"


@dataclasses.dataclass(frozen=True)
class TableGroup:
    """A group of restored tables compared with the source (key of profile ``table_groups``)."""

    clause: str
    key: str
    covers: str


#: Every table belongs to exactly one group; ``other`` catches whatever no group names, so a
#: table the profile does not know is still compared.
TABLE_GROUPS = (
    TableGroup("RC-1.4.product", "product", "zones, applications, providers, resources"),
    TableGroup("RC-1.4.keys", "keys", "zone signing keys, provider credentials, admin tokens"),
    TableGroup("RC-1.4.policies", "policies",
               "policies, versions, policy sets, versions, activation bindings"),
    TableGroup("RC-1.4.grants", "grants", "Caracal access grants"),
    TableGroup("RC-1.4.sessions", "sessions", "STS sessions (token lineage), step-up challenges"),
    TableGroup("RC-1.4.agents", "agents", "agent sessions, topology, services, invocations"),
    TableGroup("RC-1.4.delegations", "delegations", "delegation edges and graph epochs"),
    TableGroup("RC-1.4.outboxes", "outboxes", "API and Coordinator outboxes"),
    TableGroup("RC-1.4.gateway", "gateway", "gateway resource bindings, binding revision"),
    TableGroup("RC-1.4.audit", "audit", "audit events (every partition), ingest alerts, rehash "
                                        "marker, export watermark"),
    TableGroup("RC-1.4.admin-audit", "admin-audit", "admin audit events"),
    TableGroup("RC-1.4.ledger", "ledger", "migration ledger"),
    TableGroup("RC-1.4.other", "other", "every table of either schema that no group names"),
)


@dataclasses.dataclass(frozen=True)
class ConsistencyRule:
    """An internal-consistency rule of the restored data (FACTS-1.0 §20 A1.6-A1.8)."""

    clause: str
    key: str
    requires: str


CONSISTENCY_RULES = (
    ConsistencyRule("RC-1.6.policy-hashes", "policy-hashes",
                    "every policy version's content_sha256 is the SHA-256 of its content"),
    ConsistencyRule("RC-1.6.manifest-hashes", "manifest-hashes",
                    "every policy-set version's manifest_sha256 is the SHA-256 of its compact "
                    "manifest, and the manifest lists existing policy versions"),
    ConsistencyRule("RC-1.6.one-active-per-zone", "one-active-per-zone",
                    "at most one active policy-set binding per zone, where the release "
                    "requires it"),
    ConsistencyRule("RC-1.6.references", "references",
                    "every reference the release relies on, and every declared foreign key, "
                    "resolves"),
    ConsistencyRule("RC-1.6.sequences", "sequences",
                    "every owned sequence hands out values above its column's largest"),
)


@dataclasses.dataclass(frozen=True)
class LiveComparison:
    """A comparison with the live source where it may have moved on since the backup."""

    clause: str
    key: str
    requires: str


LIVE_COMPARISONS = (
    LiveComparison("RC-1.7.ledger", "ledger",
                   "the restored migration ledger equals the live source's"),
    LiveComparison("RC-1.7.audit-chains", "audit-chains",
                   "every restored audit_events row equals the source's row at its zone and "
                   "chain_seq (content_sha256, chain_hmac), and the source's rows up to each "
                   "restored head are restored; rows the source's retention dropped since are "
                   "reported"),
    LiveComparison("RC-1.7.admin-audit-chains", "admin-audit-chains",
                   "every restored admin audit chain is a prefix of the source's (nothing "
                   "prunes it)"),
    LiveComparison("RC-1.7.revocations", "revocations",
                   "every revocation the restore holds still holds at the source; rows the "
                   "source deleted since, or suspensions it lifted, are reported"),
)


@dataclasses.dataclass(frozen=True)
class SealedClause:
    """A location sealed under the release's KEK (key of profile ``sealed_locations``)."""

    clause: str
    key: str
    holds: str


#: Key of the clause that opens every sealed location of the profile no other clause names.
OTHER_SEALED = "other"

SEALED = (
    SealedClause("RC-2.3.signing-keys", "signing-keys", "zone signing keys (P-256 PEM)"),
    SealedClause("RC-2.3.provider-secret-configs", "provider-secret-configs",
                 "provider secret configurations (JSON)"),
    SealedClause("RC-2.3.provider-grant-access-tokens", "provider-grant-access-tokens",
                 "provider user access tokens (2026.06)"),
    SealedClause("RC-2.3.provider-grant-refresh-tokens", "provider-grant-refresh-tokens",
                 "provider user refresh tokens (2026.06)"),
    SealedClause("RC-2.3.secret-store", "secret-store", "custody copies of secrets (1.0)"),
    SealedClause("RC-2.3.provider-connection-access-tokens", "provider-connection-access-tokens",
                 "provider connection access tokens (1.0)"),
    SealedClause("RC-2.3.provider-connection-refresh-tokens",
                 "provider-connection-refresh-tokens", "provider connection refresh tokens (1.0)"),
    SealedClause("RC-2.3.notification-sink-secrets", "notification-sink-secrets",
                 "notification sink secrets (1.0)"),
    SealedClause("RC-2.3.operator-plan-secrets", "operator-plan-secrets",
                 "operator plan secrets (1.0)"),
    SealedClause("RC-2.3.other", OTHER_SEALED,
                 "every other location the release seals under its KEK"),
)


@dataclasses.dataclass(frozen=True)
class ChainTable:
    """A table whose rows carry ``chain_hmac`` under the audit HMAC key (same name in every
    release)."""

    clause: str
    table: str


AUDIT_CHAINS = (
    ChainTable("RC-2.4.audit-events", "audit_events"),
    ChainTable("RC-2.4.admin-audit-events", "admin_audit_events"),
)
#: The table the audit chain verification (SY-2.a) reads: it recomputes every row's chain_hmac
#: once per run, and RC-2.4 takes its counts when they cover the whole table under the same key.
CHAIN_VERIFIED_TABLE = "audit_events"


@dataclasses.dataclass(frozen=True)
class VerifyRule:
    """One of verify.sh's checks a-f, evaluated read-only (FACTS-2026.06 §1.4)."""

    clause: str
    letter: str
    requires: str


VERIFY_RULES = {
    "a": VerifyRule("RC-3.3a", "a", "every table verify.sh lists exists"),
    "b": VerifyRule("RC-3.3b", "b", "the retired tables are absent"),
    "c": VerifyRule("RC-3.3c", "c", "the audit role can neither UPDATE nor DELETE audit rows"),
    "d": VerifyRule("RC-3.3d", "d", "the immutability triggers exist and are enabled"),
    "e": VerifyRule("RC-3.3e", "e",
                    "row-level security is on with exactly one zone_isolation policy"),
    "f": VerifyRule("RC-3.3f", "f",
                    "monthly audit partitions exist for the backup's month and the months "
                    "ahead"),
}

"""Release profiles: where each asset of the operations page lives in one Caracal release.

Checks never branch on a release with ``if``; they read the parameter they need from the
profile the run selected (``--caracal-release``, or detected from the restored ledger).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SecretSpec:
    """One runtime secret file: its name, the env var that consumes it, and its hex length."""

    name: str
    env_var: str
    hex_len: int | None  # None for derived URLs
    derived: bool = False


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    """A provisioned Redis stream, its consumer groups and its intended maximum length."""

    name: str
    groups: tuple[str, ...]
    intended_max_len: int | None


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    """A reference between tables that must resolve in restored data (FK-backed or not)."""

    child_table: str
    child_columns: tuple[str, ...]
    parent_table: str
    parent_columns: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SealedSpec:
    """One location sealed under the release's KEK, and what its plaintext must parse as.

    ``nonce_column`` empty: the packed layout (nonce prefixed to the ciphertext).
    ``plaintext``: ``ec-p256-pem`` (zone signing key), ``json`` (provider secret config) or
    ``text`` (provider token).
    """

    id: str
    table: str
    column: str
    nonce_column: str
    plaintext: str
    #: CSS1 (1.0): the location AAD, or the column whose value is the AAD (``secret_store``:
    #: ``ref``); the row id column; an SQL filter on the rows ('' = all).
    aad: str = ""
    aad_column: str = ""
    id_column: str = "id"
    where: str = ""


@dataclasses.dataclass(frozen=True)
class Profile:
    """Everything a check needs to know about one release (names are facts: match exactly)."""

    release: str
    #: Ledger version whose presence identifies the release family.
    probe_version: str
    ledger_table: str
    migrations: tuple[str, ...]
    #: Databases every deployment of the release has (backup.sh dumps every non-template
    #: database but ``postgres``, so a bundle lists at least these).
    databases: tuple[str, ...]
    #: Tables the release's verify.sh requires (to_regclass) and retired tables it forbids.
    verify_tables: tuple[str, ...]
    retired_tables: tuple[str, ...]
    rls_tables: tuple[str, ...]
    immutable_triggers: tuple[str, ...]
    #: Access/evidence tables compared row for row with the fingerprint.
    state_tables: tuple[str, ...]
    secrets: tuple[SecretSpec, ...]
    kek_secret: str
    audit_hmac_secret: str
    streams_hmac_secret: str
    gateway_sts_hmac_secret: str
    admin_token_secret: str
    streams: tuple[StreamSpec, ...]
    #: STS lineage table ("sessions" at 2026.06) and agent table ("agent_sessions").
    lineage_table: str
    agent_table: str
    agent_subject_column: str
    has_gateway_bindings: bool
    gateway_revocation_group: str
    ready_body_sts: str
    ready_body_gateway: str
    retention_defaults: tuple[tuple[str, int], ...]
    #: Provider-native credential table (``provider_grants`` at 2026.06, FACTS-2026.06 §12).
    provider_credential_table: str = ""
    #: Agent statuses the Gateway's revocation snapshot loads (FACTS-2026.06 §5.3, §12).
    gateway_snapshot_agent_statuses: tuple[str, ...] = ()
    #: Secret file of the Coordinator operator token.
    coordinator_token_secret: str = ""
    # ---- added for release 1.0 (every field has a default; 2026.06 fills them too) ----
    #: Databases only some deployments have (1.0's web auth database ``caracal_auth`` exists
    #: only once the web service created it, FACTS-1.0 §1): a bundle may lack them.
    optional_databases: tuple[str, ...] = ()
    #: Pinned migration file hashes as (file name, sha256): ``released.sha256`` at 1.0,
    #: FACTS-2026.06 Appendix A.1 (ours; the release ships none) at 2026.06.
    migration_manifest: tuple[tuple[str, str], ...] = ()
    #: Where the manifest comes from (evidence text).
    migration_manifest_source: str = ""
    #: Env var of the retiring KEK during a rotation ('' when the release has none).
    kek_previous_env: str = ""
    #: Canary flow: ``session-mandate`` (2026.06: bootstrap mandate straight to the
    #: Gateway through a binding) or ``gateway-mandate`` (1.0: Coordinator sessions + a
    #: delegation + a ``use=gateway`` mint).
    canary_flow: str = "session-mandate"
    #: Column of ``secrets`` holding a zone signing key's seal.
    signing_key_column: str = ""
    #: Table of sealed custody copies keyed by ref ('' when the release has none).
    secret_store_table: str = ""
    #: Ref template of a managed application's client-secret custody copy ('' = none:
    #: the canary secret must be supplied).
    client_secret_ref: str = ""
    #: Ref templates of the other ``secret_store`` families.
    provider_secret_ref: str = ""
    workload_secret_ref: str = ""
    #: Coordinator idempotency receipts (FACTS-1.0 §2.6): table, HMAC key secret, the
    #: key-digest message prefix, the operations the CHECK allows, digest length.
    idempotency_table: str = ""
    idempotency_hmac_secret: str = ""
    idempotency_key_prefix: bytes = b""
    idempotency_operations: tuple[str, ...] = ()
    #: Revocation columns compared after a restore (S4.1).
    lineage_revocation_columns: tuple[str, ...] = ("status",)
    agent_revocation_columns: tuple[str, ...] = ("status", "terminated_at")
    #: Start time column of the agent table (``spawned_at`` / ``started_at``).
    agent_started_column: str = "spawned_at"
    #: How the Gateway's revocation group is created: start id, and one group per host
    #: (``gateway-revocation:<host>``) or one shared group.
    gateway_revocation_group_start: str = "0"
    gateway_revocation_group_per_host: bool = False
    #: /ready failure reasons of STS and Gateway, and the success bodies of the others.
    ready_reasons_sts: tuple[str, ...] = ()
    ready_reasons_gateway: tuple[str, ...] = ()
    ready_body_audit: str = '{"ready":true}'
    ready_body_api: str = '{"ok":true}'
    ready_body_coordinator: str = '{"ok":true}'
    mandate_uses: tuple[str, ...] = ("session", "resource")
    #: Gateway→STS nonce: ``request-id`` (2026.06) or ``hex64`` + ``gateway_request_id``.
    gateway_nonce: str = "request-id"
    #: Policy content: ``rego-result`` (raw Rego defining result) or ``data-document``.
    policy_format: str = "rego-result"
    #: True when STS recomputes ``manifest_sha256`` and refuses a mismatch.
    sts_checks_manifest_sha: bool = False
    #: Coordinator outbox statuses the retention cleaner deletes after OUTBOX_RETENTION_DAYS.
    outbox_retention_statuses: tuple[str, ...] = ("published", "dead")
    #: True when delegation retention keeps edges with an active unexpired child edge.
    delegation_retention_child_guard: bool = False
    #: Table of the console audit-retention override ('' = none).
    audit_retention_override_table: str = ""
    #: SECURITY DEFINER partition functions (ensure, drop); () = direct DDL.
    audit_partition_functions: tuple[str, ...] = ()
    #: Service roles the migrations create, and whether they log in (per-service DSNs).
    service_roles: tuple[str, ...] = ()
    service_roles_login: bool = False
    #: Derived DSN secret file -> the role it logs in as.
    service_dsn_secrets: tuple[tuple[str, str], ...] = ()
    #: Identity the services connect as: ``owner`` or ``per-service``.
    db_identity: str = "owner"
    #: Admin audit: whether the global (zone_id NULL) chain exists, and which writers sign
    #: (``none`` in 2026.06 Compose; ``api`` in 1.0 Compose, Coordinator rows unsigned).
    admin_audit_global_chain: bool = False
    admin_audit_signed_by: str = "none"
    #: Extra verify.sh checks of the release: index names, (table, column) pairs,
    #: (table, constraint) pairs, (constraint, exact definition) pairs,
    #: (role, table, privilege) triples.
    verify_indexes: tuple[str, ...] = ()
    verify_columns: tuple[tuple[str, str], ...] = ()
    verify_constraints: tuple[tuple[str, str], ...] = ()
    verify_fk_definitions: tuple[tuple[str, str], ...] = ()
    verify_privileges: tuple[tuple[str, str, str], ...] = ()
    #: Every table with RLS enabled (``rls_tables`` is verify.sh's checked subset).
    rls_enabled_tables: tuple[str, ...] = ()
    #: Resource columns routing depends on (S3).
    resource_routing_columns: tuple[str, ...] = ()
    #: True when pgcrypto is used by the release (not only declared).
    pgcrypto_used: bool = False
    #: Lowest PostgreSQL major the release's migrations apply on.
    postgres_min_major: int = 15
    #: Live checklist (steps 4-6). The audit evidence table.
    audit_table: str = ""
    #: Secret file of the /metrics bearer (``METRICS_BEARER``).
    metrics_bearer_secret: str = ""
    #: Identifier of the control resource, which never has a gateway binding (``CONTROL_AUDIENCE``).
    control_audience: str = ""
    #: Gateway routing tables (empty on a release without bindings).
    binding_table: str = ""
    binding_revision_table: str = ""
    #: Gauge of the bindings a running Gateway has loaded.
    bindings_loaded_metric: str = ""
    #: Zone signing keys: table and ``name`` of their rows (``kid`` = row id).
    signing_key_table: str = ""
    signing_key_name: str = ""
    #: Tables whose rows are "agents" and "delegation records" (checklist step 5).
    agent_record_tables: tuple[str, ...] = ()
    delegation_record_tables: tuple[str, ...] = ()
    #: Canary token exchange (step 6): the ``use`` claim of the bootstrap mandate and the
    #: ``scope`` the bootstrap exchange must request ("" = none).
    canary_mandate_use: str = ""
    canary_scope: str = ""
    #: Audit events of the canary flow: (event_type, decision, evaluation_status).
    canary_exchange_event: tuple[str, str, str] = ("", "", "")
    canary_request_event: tuple[str, str, str] = ("", "", "")
    #: HTTP surfaces a real deployment offers for each step-5 record (shown in evidence).
    record_surfaces: tuple[tuple[str, str], ...] = ()
    #: Restore checklist steps 1-3 and the asset table (offline checks).
    #: Table groups compared with the source fingerprint: (group id, tables); partitions
    #: belong to their parent's group, and every other table to the catch-all ``other``.
    table_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: References that must resolve in restored data (FACTS-1.0 §20 A1.7).
    references: tuple[ReferenceSpec, ...] = ()
    #: True when the release allows at most one active policy-set binding per zone.
    one_active_policy_set_per_zone: bool = False
    #: Envelope format of the KEK (``zone-chacha20`` at 2026.06, ``css1`` at 1.0) and what it seals.
    kek_format: str = ""
    sealed_locations: tuple[SealedSpec, ...] = ()
    #: Streams whose entries carry ``_sig`` (HMAC with the streams key).
    signed_streams: tuple[str, ...] = ()
    #: Derived secrets re-rendered from primaries: (name, template). Placeholders naming a
    #: primary secret take its value; the others (hosts, ports, names) are read from the value.
    derived_templates: tuple[tuple[str, str], ...] = ()
    #: The role every service connects as (``databaseUrl``'s user) and the audit role.
    db_owner: str = ""
    audit_role: str = ""
    #: Monthly audit partition names (``str.format`` with year, month) and months kept ahead.
    audit_partition_format: str = ""
    audit_partition_months_ahead: int = 0
    #: Secret files of the database and Redis credentials (primary and derived).
    pg_password_secret: str = ""
    redis_password_secret: str = ""
    database_url_secret: str = ""
    redis_url_secret: str = ""

    def secret(self, name: str) -> SecretSpec:
        """The spec of one secret by file name."""
        for spec in self.secrets:
            if spec.name == name:
                return spec
        raise KeyError(f"release {self.release} has no secret {name!r}")

    @property
    def primary_secrets(self) -> tuple[SecretSpec, ...]:
        return tuple(s for s in self.secrets if not s.derived)

    @property
    def derived_secrets(self) -> tuple[SecretSpec, ...]:
        return tuple(s for s in self.secrets if s.derived)

    @property
    def migration_files(self) -> tuple[str, ...]:
        """The ``.up.sql`` file names of the ledger versions (``<version>.up.sql``)."""
        return tuple(f"{v}.up.sql" for v in self.migrations)

    def is_gateway_revocation_group(self, name: str) -> bool:
        """True for a Gateway revocation consumer group name of this release."""
        base = self.gateway_revocation_group.split(":", 1)[0]
        if self.gateway_revocation_group_per_host:
            return name.startswith(base + ":") and len(name) > len(base) + 1
        return name == self.gateway_revocation_group

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
class Profile:
    """Everything a check needs to know about one release (names are facts: match exactly)."""

    release: str
    #: Ledger version whose presence identifies the release family.
    probe_version: str
    ledger_table: str
    migrations: tuple[str, ...]
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

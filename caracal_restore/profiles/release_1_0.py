"""Release profile of Caracal 1.0 (HEAD ``6b5b47f21``, the current release line).

Every name below is a fact from ``FACTS-1.0.md``: ledger §3.1, frozen manifest §3.2,
verify.sh §3.3, roles/RLS §2.2, sealed columns §2.4/§7.2, streams §11, retention §12,
readiness §13, canary §14, secrets §15. Where FACTS-2026.06 §12 parameterises a verifier,
the 1.0 ("HEAD profile") column is used.
"""

from __future__ import annotations

from caracal_restore.profiles import (
    Profile,
    ReferenceSpec,
    SealedSpec,
    SecretSpec,
    StreamSpec,
)

#: The ledger of a correct 1.0 install (FACTS-1.0 §3.1), in sort order.
MIGRATIONS: tuple[str, ...] = (
    "0001_baseline",
    "0002_approval_hardening",
    "0003_operator_run_token_usage",
)

#: ``infra/postgres/migrations/released.sha256`` at 1.0 (FACTS-1.0 §3.2): all six files.
RELEASED_SHA256: tuple[tuple[str, str], ...] = (
    ("0001_baseline.down.sql", "afa717fe1ea1b7f3159a7ca3726fc4213828823a9465fe423416c0e2d33e85d1"),
    ("0001_baseline.up.sql", "79a6a9db6ecbb27dac2ea70a649baeec045ddad085c4659c6e27b9971a432841"),
    ("0002_approval_hardening.down.sql",
     "ea94b27f0fda489640e2ca199e9d89653e16f9c3314abe5ea4443478e29550c7"),
    ("0002_approval_hardening.up.sql",
     "15f833c3aa6649f887ec136f545560e4b63a477d8bca77be1284063bd94e5581"),
    ("0003_operator_run_token_usage.down.sql",
     "7a68dd8a22867a74d9988d57c9031f02b4425bd8a95c5578af59dda497716d28"),
    ("0003_operator_run_token_usage.up.sql",
     "86d36dfe00d8b3f21fe835cd7ba78344937ecd43a4cce18a14448d7be83710c0"),
)

#: The 28 tables verify.sh requires (check 1), in its order.
VERIFY_TABLES: tuple[str, ...] = (
    "admin_audit_events",
    "admin_tokens",
    "agent_invocations",
    "agent_services",
    "sessions",
    "agent_topology",
    "applications",
    "audit_events",
    "audit_events_default",
    "audit_export_watermark",
    "audit_ingest_alerts",
    "caracal_outbox",
    "coordinator_idempotency_receipts",
    "delegated_grants",
    "delegation_edges",
    "delegation_graph_epochs",
    "event_outbox",
    "policies",
    "policy_set_bindings",
    "policy_set_versions",
    "policy_sets",
    "policy_versions",
    "providers",
    "resources",
    "secrets",
    "authority_records",
    "step_up_challenges",
    "zones",
)

#: Tables verify.sh forbids (check 5): the retired gateway binding tables among them.
RETIRED_TABLES: tuple[str, ...] = (
    "gateway_binding_revision",
    "gateway_resource_bindings",
    "invitations",
    "teams",
)

#: The 19 tables verify.sh checks for RLS + exactly one ``zone_isolation`` policy (check 8).
RLS_TABLES: tuple[str, ...] = (
    "providers",
    "applications",
    "authority_records",
    "secrets",
    "delegated_grants",
    "policies",
    "policy_sets",
    "policy_set_bindings",
    "resources",
    "audit_events",
    "sessions",
    "delegation_edges",
    "agent_services",
    "agent_invocations",
    "step_up_challenges",
    "admin_audit_events",
    "admin_tokens",
    "delegation_graph_epochs",
    "coordinator_idempotency_receipts",
)

#: Every table with RLS enabled (not forced) and one ``zone_isolation`` policy (§2.2).
RLS_ENABLED_TABLES: tuple[str, ...] = (
    "admin_audit_events",
    "admin_tokens",
    "agent_invocations",
    "agent_services",
    "coordinator_idempotency_receipts",
    "sessions",
    "applications",
    "audit_events",
    "delegated_grants",
    "delegation_edges",
    "delegation_graph_epochs",
    "operator_conversations",
    "operator_message_run_events",
    "operator_message_runs",
    "operator_plan_secrets",
    "operator_turns",
    "operator_zone_memory",
    "policies",
    "policy_set_bindings",
    "policy_sets",
    "provider_connections",
    "providers",
    "resources",
    "secret_store",
    "secrets",
    "authority_records",
    "step_up_challenges",
    "subject_issuers",
)

#: Access/evidence tables compared row for row after a restore (FACTS-1.0 §20 A1.4, plus
#: the other 1.0 state tables a real bundle carries).
STATE_TABLES: tuple[str, ...] = (
    "zones",
    "applications",
    "providers",
    "resources",
    "workloads",
    "subject_issuers",
    "policies",
    "policy_versions",
    "policy_sets",
    "policy_set_versions",
    "policy_set_bindings",
    "delegated_grants",
    "authority_records",
    "sessions",
    "agent_topology",
    "delegation_edges",
    "delegation_graph_epochs",
    "agent_services",
    "agent_invocations",
    "step_up_challenges",
    "secrets",
    "secret_store",
    "provider_connections",
    "admin_tokens",
    "sts_rate_limit",
    "admin_audit_events",
    "audit_events",
    "audit_export_watermark",
    "audit_ingest_alerts",
    "audit_retention",
    "audit_chain_rehash",
    "caracal_outbox",
    "event_outbox",
    "coordinator_idempotency_receipts",
    "notification_sinks",
    "notification_deliveries",
    "schema_migrations",
)

#: Service login roles of 1.0 (NOLOGIN in the baseline; migrate.sh gives them passwords).
SERVICE_ROLES: tuple[str, ...] = (
    "caracalapi",
    "caracalaudit",
    "caracalauth",
    "caracalcoordinator",
    "caracalgateway",
    "caracalsts",
)

#: Runtime secret files (FACTS-1.0 §15): 17 primary, then the 8 derived URLs.
SECRETS: tuple[SecretSpec, ...] = (
    SecretSpec("postgresPassword", "POSTGRES_PASSWORD", 48),
    SecretSpec("redisPassword", "REDIS_PASSWORD", 48),
    SecretSpec("caracalAdminToken", "CARACAL_ADMIN_TOKEN", 64),
    SecretSpec("caracalCoordinatorToken", "CARACAL_COORDINATOR_TOKEN", 64),
    SecretSpec("caracalAuthSecret", "CARACAL_AUTH_SECRET", 64),
    SecretSpec("metricsBearer", "METRICS_BEARER", 64),
    SecretSpec("secretStoreKek", "SECRET_STORE_KEK", 64),
    SecretSpec("auditHmacKey", "AUDIT_HMAC_KEY", 64),
    SecretSpec("streamsHmacKey", "STREAMS_HMAC_KEY", 64),
    SecretSpec("idempotencyHmacKey", "IDEMPOTENCY_HMAC_KEY", 64),
    SecretSpec("gatewayStsHmacKey", "GATEWAY_STS_HMAC_KEY", 64),
    SecretSpec("apiDbPassword", "CARACAL_API_DB_PASSWORD", 48),
    SecretSpec("stsDbPassword", "CARACAL_STS_DB_PASSWORD", 48),
    SecretSpec("gatewayDbPassword", "CARACAL_GATEWAY_DB_PASSWORD", 48),
    SecretSpec("auditDbPassword", "CARACAL_AUDIT_DB_PASSWORD", 48),
    SecretSpec("coordinatorDbPassword", "CARACAL_COORDINATOR_DB_PASSWORD", 48),
    SecretSpec("authDbPassword", "CARACAL_AUTH_DB_PASSWORD", 48),
    SecretSpec("databaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("apiDatabaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("stsDatabaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("gatewayDatabaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("auditDatabaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("coordinatorDatabaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("authDatabaseUrl", "DATABASE_URL", None, derived=True),
    SecretSpec("redisUrl", "REDIS_URL", None, derived=True),
)

#: Derived service DSN file -> (role, password file, database) (FACTS-1.0 §15).
SERVICE_DSNS: tuple[tuple[str, str, str, str], ...] = (
    ("apiDatabaseUrl", "caracalapi", "apiDbPassword", "caracal"),
    ("stsDatabaseUrl", "caracalsts", "stsDbPassword", "caracal"),
    ("gatewayDatabaseUrl", "caracalgateway", "gatewayDbPassword", "caracal"),
    ("auditDatabaseUrl", "caracalaudit", "auditDbPassword", "caracal"),
    ("coordinatorDatabaseUrl", "caracalcoordinator", "coordinatorDbPassword", "caracal"),
    ("authDatabaseUrl", "caracalauth", "authDbPassword", "caracal_auth"),
)

#: Provisioned streams and groups (FACTS-1.0 §11.1).
STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("caracal.audit.events", ("audit-ingestor", "siem-export"), 1_000_000),
    StreamSpec("caracal.audit.events.dlq", ("audit-dlq-observer",), 100_000),
    StreamSpec("caracal.policy.invalidate", ("opa-engine",), 10_000),
    StreamSpec("caracal.sessions.revoke", ("sts-revocation",), 10_000),
    StreamSpec("caracal.keys.invalidate", ("sts-keys",), 10_000),
    StreamSpec("caracal.agents.lifecycle", ("coordinator-relay",), None),
    StreamSpec("caracal.invocations.lifecycle", ("invocations-observer",), None),
    StreamSpec("caracal.delegations.invalidate", ("delegations-observer",), None),
    StreamSpec("caracal.providers.ratelimit", (), 1),
)

#: Streams whose entries carry ``_sig`` (FACTS-1.0 §20 A2.3).
SIGNED_STREAMS: tuple[str, ...] = (
    "caracal.sessions.revoke",
    "caracal.policy.invalidate",
    "caracal.keys.invalidate",
    "caracal.agents.lifecycle",
    "caracal.delegations.invalidate",
    "caracal.invocations.lifecycle",
)

#: Code/Compose defaults of the retention controls and sweepers (FACTS-1.0 §12).
RETENTION_DEFAULTS: tuple[tuple[str, int], ...] = (
    ("AUDIT_RETENTION_DAYS", 365),
    ("AUDIT_TAMPER_ROLLING_HOURS", 4),
    ("DELEGATION_RETENTION_DAYS", 90),
    ("SESSION_RETENTION_DAYS", 90),
    ("OUTBOX_RETENTION_DAYS", 7),
    ("IDEMPOTENCY_RETENTION_SECONDS", 604_800),
    ("GENERATED_IDEMPOTENCY_RETENTION_SECONDS", 86_400),
    ("RETENTION_CLEANUP_INTERVAL_MS", 900_000),
    ("RETENTION_CLEANUP_BATCH_SIZE", 500),
    ("TTL_SWEEP_INTERVAL_MS", 60_000),
    ("SWEEPER_BATCH_SIZE", 500),
    ("SERVICE_LEASE_SWEEP_INTERVAL_MS", 30_000),
    ("SERVICE_AGENT_LEASE_SECONDS", 120),
    ("DEADLINE_SWEEP_INTERVAL_MS", 5_000),
    ("OUTBOX_INTERVAL_MS", 1_000),
    ("OUTBOX_BATCH_SIZE", 50),
    ("OUTBOX_MAX_ATTEMPTS", 10),
    ("STREAMS_MAXLEN", 100_000),
    ("OUTBOX_STREAM_MAXLEN", 100_000),
)

#: Everything sealed under SECRET_STORE_KEK, with its location AAD (FACTS-1.0 §7.2).
SEALED_LOCATIONS: tuple[SealedSpec, ...] = (
    SealedSpec("secret-store", "secret_store", "envelope", "", "text", aad_column="ref",
               id_column="ref"),
    SealedSpec("signing-keys", "secrets", "envelope", "", "ec-p256-pem",
               aad="caracal/secrets/zoneSigningKey", where="name = 'zone_signing_key'"),
    SealedSpec("provider-connection-access-tokens", "provider_connections", "access_token_ct",
               "", "text", aad="caracal/providerConnections/accessToken"),
    SealedSpec("provider-connection-refresh-tokens", "provider_connections", "refresh_token_ct",
               "", "text", aad="caracal/providerConnections/refreshToken"),
    SealedSpec("notification-sink-secrets", "notification_sinks", "secret_ct", "", "text",
               aad="caracal/notificationSinks/secret"),
    SealedSpec("operator-plan-secrets", "operator_plan_secrets", "envelope", "", "json",
               aad="caracal/operatorPlanSecrets/values", id_column="step_id"),
)

#: HTTP surfaces of the step-5 records at 1.0 (FACTS-1.0 §4.10, §20 C5); the key
#: ``gateway_bindings`` keeps the page's word for what 1.0 calls resource routing.
RECORD_SURFACES: tuple[tuple[str, str], ...] = (
    ("audit_query", "API GET /v1/zones/{z}/audit?request_id=<id> and "
     "/v1/zones/{z}/audit/by-request/{id} (admin bearer; chain columns not returned); Audit "
     "GET /api/audit/search?zone_id=&request_id= (needs AUDIT_ADMIN_TOKEN, 404 when unset)"),
    ("policy_activation", "API GET /v1/zones/{z}/policy-sets/{id}/activation-status; STS "
     "GET /internal/policy/status/{zone} (signed with GATEWAY_STS_HMAC_KEY)"),
    ("gateway_bindings", "no binding tables at 1.0: routing = resources.upstream_url + "
     "credential_provider_id, returned by STS as upstreams[<resource>] on a Gateway exchange"),
    ("sessions", "API GET /v1/zones/{z}/authority-records (admin bearer)"),
    ("agents", "API GET /v1/zones/{z}/sessions; Coordinator GET /zones/{z}/agents (bearer "
     "CARACAL_COORDINATOR_TOKEN)"),
    ("delegations", "Coordinator GET /zones/{z}/delegations/active (bearer "
     "CARACAL_COORDINATOR_TOKEN)"),
)

#: Table groups of the 1.0 schema compared with the source (checklist step 1); ``gateway``
#: holds what routes a request at 1.0 (resources and their providers).
TABLE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("product", ("zones", "applications", "workloads", "subject_issuers")),
    ("keys", ("secrets", "secret_store", "provider_connections", "admin_tokens")),
    ("policies", ("policies", "policy_versions", "policy_sets", "policy_set_versions",
                  "policy_set_bindings", "sts_rate_limit")),
    ("grants", ("delegated_grants",)),
    ("sessions", ("authority_records", "step_up_challenges")),
    ("agents", ("sessions", "agent_topology", "agent_services", "agent_invocations",
                "coordinator_idempotency_receipts")),
    ("delegations", ("delegation_edges", "delegation_graph_epochs")),
    ("outboxes", ("event_outbox", "caracal_outbox")),
    ("gateway", ("resources", "providers")),
    ("audit", ("audit_events", "audit_ingest_alerts", "audit_chain_rehash",
               "audit_export_watermark", "audit_retention")),
    ("admin-audit", ("admin_audit_events",)),
    ("notifications", ("notification_sinks", "notification_deliveries")),
    ("ledger", ("schema_migrations",)),
)

#: References restored data must resolve (FACTS-1.0 §20 A1.7, §2.5-2.7).
REFERENCES: tuple[ReferenceSpec, ...] = (
    ReferenceSpec("sessions", ("zone_id", "subject_authority_record_id"), "authority_records",
                  ("zone_id", "id")),
    ReferenceSpec("delegation_edges", ("zone_id", "source_session_id"), "sessions",
                  ("zone_id", "id")),
    ReferenceSpec("delegation_edges", ("zone_id", "target_session_id"), "sessions",
                  ("zone_id", "id")),
    ReferenceSpec("resources", ("zone_id", "credential_provider_id"), "providers",
                  ("zone_id", "id")),
    ReferenceSpec("policy_set_bindings", ("active_version_id",), "policy_set_versions", ("id",)),
    ReferenceSpec("policy_set_versions", ("policy_set_id",), "policy_sets", ("id",)),
    ReferenceSpec("policy_versions", ("policy_id",), "policies", ("id",)),
    ReferenceSpec("authority_records", ("parent_id",), "authority_records", ("id",)),
    ReferenceSpec("secrets", ("zone_id",), "zones", ("id",)),
    ReferenceSpec("secret_store", ("zone_id",), "zones", ("id",)),
)

#: Derived secret files (FACTS-1.0 §15): placeholders naming a primary take its value.
DERIVED_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("databaseUrl", "postgres://{pg_user}:{postgresPassword}@{pg_host}:{pg_port}/{pg_db}"),
    ("apiDatabaseUrl", "postgres://caracalapi:{apiDbPassword}@{pg_host}:{pg_port}/{pg_db}"),
    ("stsDatabaseUrl", "postgres://caracalsts:{stsDbPassword}@{pg_host}:{pg_port}/{pg_db}"),
    ("gatewayDatabaseUrl",
     "postgres://caracalgateway:{gatewayDbPassword}@{pg_host}:{pg_port}/{pg_db}"),
    ("auditDatabaseUrl", "postgres://caracalaudit:{auditDbPassword}@{pg_host}:{pg_port}/{pg_db}"),
    ("coordinatorDatabaseUrl",
     "postgres://caracalcoordinator:{coordinatorDbPassword}@{pg_host}:{pg_port}/{pg_db}"),
    ("authDatabaseUrl",
     "postgres://caracalauth:{authDbPassword}@{pg_host}:{pg_port}/{pg_auth_db}"),
    ("redisUrl", "redis://:{redisPassword}@{redis_host}:{redis_port}"),
)

READY_REASONS_STS: tuple[str, ...] = (
    "postgres_unreachable", "redis_unavailable", "redis_unreachable", "audit_evidence_lost",
    "audit_replay_unavailable", "stream_consumers_not_ready",
)
READY_REASONS_GATEWAY: tuple[str, ...] = (
    "redis_unreachable", "revocation_snapshot_stale", "audit_evidence_lost",
    "audit_replay_unavailable", "sts_unavailable", "sts_unreachable",
)

#: verify.sh checks 2, 3, 4 and 9 (FACTS-1.0 §3.3).
VERIFY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("sessions", "lease_generation"),
    ("operator_message_runs", "input_tokens"),
    ("operator_message_runs", "output_tokens"),
    ("operator_message_runs", "usage_by_provider_model"),
    ("operator_message_runs", "served_provider_id"),
    ("operator_message_runs", "served_model"),
)
VERIFY_CONSTRAINTS: tuple[tuple[str, str], ...] = (
    ("operator_message_runs", "operator_message_runs_input_tokens_check"),
    ("operator_message_runs", "operator_message_runs_output_tokens_check"),
    ("operator_message_runs", "operator_message_runs_usage_by_provider_model_check"),
)
PARENT_FK_DEFINITION = (
    "FOREIGN KEY (zone_id, parent_edge_id) REFERENCES delegation_edges(zone_id, id)"
    " ON DELETE SET NULL (parent_edge_id)"
)

PROFILE = Profile(
    release="1.0",
    probe_version="0002_approval_hardening",
    ledger_table="public.schema_migrations",
    migrations=MIGRATIONS,
    databases=("caracal",),
    optional_databases=("caracal_auth",),
    verify_tables=VERIFY_TABLES,
    retired_tables=RETIRED_TABLES,
    rls_tables=RLS_TABLES,
    immutable_triggers=("policy_versions_immutable", "policy_set_versions_immutable"),
    state_tables=STATE_TABLES,
    secrets=SECRETS,
    kek_secret="secretStoreKek",
    audit_hmac_secret="auditHmacKey",
    streams_hmac_secret="streamsHmacKey",
    gateway_sts_hmac_secret="gatewayStsHmacKey",
    admin_token_secret="caracalAdminToken",
    streams=STREAMS,
    lineage_table="authority_records",
    agent_table="sessions",
    agent_subject_column="subject_authority_record_id",
    has_gateway_bindings=False,
    gateway_revocation_group="gateway-revocation:<host>",
    ready_body_sts='{"ok":true,"ready":true}',
    ready_body_gateway='{"ok":true,"ready":true}',
    retention_defaults=RETENTION_DEFAULTS,
    provider_credential_table="provider_connections",
    gateway_snapshot_agent_statuses=("terminated",),
    coordinator_token_secret="caracalCoordinatorToken",
    migration_manifest=RELEASED_SHA256,
    migration_manifest_source="infra/postgres/migrations/released.sha256 (FACTS-1.0 §3.2)",
    kek_format="css1",
    kek_previous_env="SECRET_STORE_KEK_PREVIOUS",
    sealed_locations=SEALED_LOCATIONS,
    signing_key_column="envelope",
    secret_store_table="secret_store",
    client_secret_ref="zones/{zone_id}/applications/{application_id}/clientSecret",
    provider_secret_ref="zones/{zone_id}/providers/{provider_id}/secretConfig",
    workload_secret_ref="zones/{zone_id}/workloads/{workload_id}/secret",
    idempotency_table="coordinator_idempotency_receipts",
    idempotency_hmac_secret="idempotencyHmacKey",
    idempotency_key_prefix=b"caracal:coordinator:idempotency:v1\x00",
    idempotency_operations=("session.start.v2", "delegation.create.v2", "invocation.create.v2"),
    lineage_revocation_columns=("status", "revoked_at", "revoked_reason"),
    agent_revocation_columns=("status", "terminated_at", "termination_reason"),
    agent_started_column="started_at",
    gateway_revocation_group_start="$",
    gateway_revocation_group_per_host=True,
    ready_reasons_sts=READY_REASONS_STS,
    ready_reasons_gateway=READY_REASONS_GATEWAY,
    canary_flow="gateway-mandate",
    canary_scope="agent:lifecycle",
    canary_mandate_use="session",
    canary_exchange_event=("token_exchange", "allow", "complete"),
    canary_request_event=("gateway_resource_request", "allow", "executed"),
    mandate_uses=("session", "gateway", "resource"),
    gateway_nonce="hex64",
    policy_format="data-document",
    sts_checks_manifest_sha=True,
    one_active_policy_set_per_zone=True,
    outbox_retention_statuses=("published",),
    delegation_retention_child_guard=True,
    audit_retention_override_table="audit_retention",
    audit_partition_functions=("audit_partition_ensure", "audit_partition_drop"),
    service_roles=SERVICE_ROLES,
    service_roles_login=True,
    service_dsn_secrets=tuple((f, role) for f, role, _pw, _db in SERVICE_DSNS),
    db_identity="per-service",
    admin_audit_global_chain=True,
    admin_audit_signed_by="api",
    verify_indexes=("sessions_terminal_retention_idx",),
    verify_columns=VERIFY_COLUMNS,
    verify_constraints=VERIFY_CONSTRAINTS,
    verify_fk_definitions=(("delegation_edges_zone_parent_fk", PARENT_FK_DEFINITION),),
    verify_privileges=(("caracalcoordinator", "public.sessions", "DELETE"),),
    rls_enabled_tables=RLS_ENABLED_TABLES,
    signed_streams=SIGNED_STREAMS,
    resource_routing_columns=("identifier", "upstream_url", "credential_provider_id", "scopes",
                              "operations", "operation_enforcement"),
    pgcrypto_used=False,
    postgres_min_major=17,
    metrics_bearer_secret="metricsBearer",
    control_audience="caracal-control",
    binding_table="",
    binding_revision_table="",
    bindings_loaded_metric="",
    signing_key_table="secrets",
    signing_key_name="zone_signing_key",
    agent_record_tables=("sessions", "agent_topology"),
    delegation_record_tables=("delegation_edges", "delegation_graph_epochs"),
    record_surfaces=RECORD_SURFACES,
    table_groups=TABLE_GROUPS,
    references=REFERENCES,
    derived_templates=DERIVED_TEMPLATES,
    db_owner="caracal",
    audit_role="caracalaudit",
    audit_partition_format="audit_events_y{year:04d}m{month:02d}",
    audit_partition_months_ahead=3,
    pg_password_secret="postgresPassword",
    redis_password_secret="redisPassword",
    database_url_secret="databaseUrl",
    redis_url_secret="redisUrl",
    audit_table="audit_events",
)

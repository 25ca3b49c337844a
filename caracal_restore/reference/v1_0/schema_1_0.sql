-- Reference schema of Caracal release 1.0 (HEAD 6b5b47f21): the access and evidence tables
-- after its three migrations, written by this project from the facts (FACTS-1.0 §2, §3.3).
-- Table, column, constraint, index, trigger, function, policy and role names are facts; the
-- DDL text is ours. Applied in one transaction by
-- caracal_restore.reference.v1_0.schema.apply_schema(); monthly audit partitions are made
-- afterwards by public.audit_partition_ensure().

CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA public;

-- Service roles: NOLOGIN NOBYPASSRLS here; apply_schema gives them LOGIN and the passwords
-- of the secret set, as migrate.sh does. Roles are cluster-wide, so a second database on the
-- same cluster finds them already there.
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['caracalapi', 'caracalaudit', 'caracalauth',
                             'caracalcoordinator', 'caracalgateway', 'caracalsts'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another database's apply
            END;
        END IF;
    END LOOP;
    EXECUTE 'ALTER ROLE caracalauth CREATEDB';
END
$roles$;

-- ---------------------------------------------------------------- ledger (qualified)

CREATE TABLE public.schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- product state

CREATE TABLE public.zones (
    id                   text PRIMARY KEY,
    name                 text NOT NULL,
    slug                 text NOT NULL UNIQUE,
    dcr_enabled          boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    archived_at          timestamptz,
    owner_account_id     text,
    operator_governed    boolean NOT NULL DEFAULT false,
    created_by           text,
    updated_by           text
);

CREATE TABLE public.providers (
    id                     text PRIMARY KEY,
    zone_id                text NOT NULL REFERENCES public.zones (id),
    name                   text NOT NULL,
    identifier             text NOT NULL,
    config_json            jsonb NOT NULL DEFAULT '{}',
    secret_config_keys     text[] NOT NULL DEFAULT '{}',
    provider_kind          text NOT NULL CHECK (provider_kind IN (
        'none', 'caracal_mandate', 'oauth2_authorization_code', 'oauth2_client_credentials',
        'api_key', 'bearer_token', 'http_basic')),
    archived_at            timestamptz,
    connectivity_failed_at timestamptz,
    created_by             text,
    updated_by             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone_id, id)
);
CREATE UNIQUE INDEX providers_zone_identifier_active_idx
    ON public.providers (zone_id, identifier) WHERE archived_at IS NULL;

CREATE TABLE public.applications (
    id                  text PRIMARY KEY,
    zone_id             text NOT NULL REFERENCES public.zones (id),
    name                text NOT NULL,
    registration_method text NOT NULL CHECK (registration_method IN ('managed', 'dcr')),
    credential_type     text NOT NULL DEFAULT 'token' CHECK (credential_type = 'token'),
    client_secret_hash  text,
    traits              text[] NOT NULL DEFAULT '{}',
    expires_at          timestamptz,
    archived_at         timestamptz,
    created_by          text,
    updated_by          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (registration_method <> 'dcr' OR expires_at IS NOT NULL),
    UNIQUE (zone_id, id)
);

CREATE TABLE public.resources (
    id                     text PRIMARY KEY,
    zone_id                text NOT NULL REFERENCES public.zones (id),
    name                   text NOT NULL,
    identifier             text NOT NULL,
    upstream_url           text,
    credential_provider_id text NOT NULL REFERENCES public.providers (id),
    scopes                 text[] NOT NULL DEFAULT '{}',
    operations             jsonb NOT NULL DEFAULT '[]',
    operation_enforcement  text NOT NULL DEFAULT 'enforced'
                           CHECK (operation_enforcement IN ('enforced', 'transport_uniform')),
    archived_at            timestamptz,
    created_by             text,
    updated_by             text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT resources_zone_provider_fk FOREIGN KEY (zone_id, credential_provider_id)
        REFERENCES public.providers (zone_id, id),
    UNIQUE (zone_id, id)
);
CREATE UNIQUE INDEX resources_zone_identifier_active_idx
    ON public.resources (zone_id, identifier) WHERE archived_at IS NULL;

CREATE TABLE public.workloads (
    id          text PRIMARY KEY,
    zone_id     text NOT NULL REFERENCES public.zones (id),
    name        text NOT NULL,
    secret_hash text NOT NULL,
    bindings    jsonb NOT NULL DEFAULT '[]',
    created_by  text,
    updated_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.subject_issuers (
    id          text PRIMARY KEY,
    zone_id     text NOT NULL REFERENCES public.zones (id),
    issuer      text NOT NULL,
    jwks_url    text NOT NULL,
    audience    text NOT NULL,
    archived_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- key material

-- Zone signing keys: CSS1 envelopes under SECRET_STORE_KEK (AAD caracal/secrets/zoneSigningKey).
CREATE TABLE public.secrets (
    id         text PRIMARY KEY,
    zone_id    text NOT NULL REFERENCES public.zones (id),
    entity_id  text NOT NULL,
    name       text NOT NULL,
    type       text NOT NULL CHECK (type IN ('token', 'password')),
    envelope   bytea NOT NULL,
    version    integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX secrets_zone_entity_idx ON public.secrets (zone_id, entity_id);

-- Custody copies and provider secret configs, keyed by ref (AAD = ref).
CREATE TABLE public.secret_store (
    ref        text PRIMARY KEY,
    zone_id    text NOT NULL REFERENCES public.zones (id),
    envelope   bytea NOT NULL,
    version    integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX secret_store_zone_idx ON public.secret_store (zone_id);

CREATE TABLE public.provider_connections (
    id                    text PRIMARY KEY,
    zone_id               text NOT NULL REFERENCES public.zones (id),
    subject_id            text NOT NULL,
    provider_id           text NOT NULL,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'revoked', 'expired')),
    access_token_ct       bytea,
    refresh_token_ct      bytea,
    expires_at            timestamptz,
    refreshed_at          timestamptz,
    refresh_token_version integer NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_connections_zone_provider_fk FOREIGN KEY (zone_id, provider_id)
        REFERENCES public.providers (zone_id, id)
);

CREATE TABLE public.admin_tokens (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    token_sha256 bytea NOT NULL,
    token_hash   text,
    scope        text NOT NULL CHECK (scope IN ('global', 'zone')),
    capability   text NOT NULL DEFAULT 'write' CHECK (capability IN ('read', 'write', 'approve')),
    zone_id      text REFERENCES public.zones (id),
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK ((scope = 'global' AND zone_id IS NULL) OR (scope = 'zone' AND zone_id IS NOT NULL))
);
CREATE UNIQUE INDEX admin_tokens_token_sha256_live_idx
    ON public.admin_tokens (token_sha256) WHERE revoked_at IS NULL;

CREATE TABLE public.sts_rate_limit (
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    limit_per_minute integer NOT NULL CHECK (limit_per_minute >= 1),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text
);

-- ---------------------------------------------------------------- policies

CREATE TABLE public.policies (
    id          text PRIMARY KEY,
    zone_id     text NOT NULL REFERENCES public.zones (id),
    name        text NOT NULL,
    description text,
    archived_at timestamptz,
    created_by  text NOT NULL,
    updated_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX policies_zone_name_active_idx
    ON public.policies (zone_id, name) WHERE archived_at IS NULL;

CREATE TABLE public.policy_versions (
    id             text PRIMARY KEY,
    policy_id      text NOT NULL REFERENCES public.policies (id),
    version        integer NOT NULL,
    content        text NOT NULL,
    content_sha256 text NOT NULL,
    schema_version text,
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    archived_at    timestamptz,
    UNIQUE (policy_id, version)
);

CREATE TABLE public.policy_sets (
    id          text PRIMARY KEY,
    zone_id     text NOT NULL REFERENCES public.zones (id),
    name        text NOT NULL,
    description text,
    archived_at timestamptz,
    created_by  text,
    updated_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX policy_sets_zone_name_active_idx
    ON public.policy_sets (zone_id, name) WHERE archived_at IS NULL;

CREATE TABLE public.policy_set_versions (
    id              text PRIMARY KEY,
    policy_set_id   text NOT NULL REFERENCES public.policy_sets (id),
    version         integer NOT NULL,
    manifest_json   jsonb NOT NULL,
    manifest_sha256 text NOT NULL,
    schema_version  text,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    archived_at     timestamptz,
    UNIQUE (policy_set_id, version)
);

CREATE FUNCTION public.reject_policy_version_mutation() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'policy_versions rows are immutable'
        USING ERRCODE = 'integrity_constraint_violation', DETAIL = TG_OP || ' refused';
END
$fn$;

CREATE TRIGGER policy_versions_immutable
    BEFORE UPDATE OR DELETE ON public.policy_versions
    FOR EACH ROW EXECUTE FUNCTION public.reject_policy_version_mutation();
CREATE TRIGGER policy_set_versions_immutable
    BEFORE UPDATE OR DELETE ON public.policy_set_versions
    FOR EACH ROW EXECUTE FUNCTION public.reject_policy_version_mutation();

CREATE TABLE public.policy_set_bindings (
    zone_id           text NOT NULL REFERENCES public.zones (id),
    policy_set_id     text NOT NULL REFERENCES public.policy_sets (id),
    active_version_id text REFERENCES public.policy_set_versions (id),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone_id, policy_set_id)
);
CREATE UNIQUE INDEX policy_set_bindings_one_active_per_zone
    ON public.policy_set_bindings (zone_id) WHERE active_version_id IS NOT NULL;

-- ---------------------------------------------------------------- grants

CREATE TABLE public.delegated_grants (
    id             text PRIMARY KEY,
    zone_id        text NOT NULL REFERENCES public.zones (id),
    application_id text,
    user_id        text NOT NULL,
    resource_id    text NOT NULL REFERENCES public.resources (id),
    scopes         text[] NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'revoked', 'expired')),
    created_by     text,
    updated_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delegated_grants_zone_application_fk FOREIGN KEY (zone_id, application_id)
        REFERENCES public.applications (zone_id, id),
    CONSTRAINT delegated_grants_zone_resource_fk FOREIGN KEY (zone_id, resource_id)
        REFERENCES public.resources (zone_id, id)
);

-- ---------------------------------------------------------------- STS lineage

CREATE TABLE public.authority_records (
    id               text PRIMARY KEY,
    zone_id          text NOT NULL REFERENCES public.zones (id),
    session_type     text NOT NULL CHECK (session_type IN ('user', 'application')),
    subject_id       text NOT NULL,
    parent_id        text REFERENCES public.authority_records (id),
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'revoked', 'expired')),
    expires_at       timestamptz NOT NULL,
    authenticated_at timestamptz NOT NULL,
    claims_json      jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    revoked_reason   text,
    UNIQUE (zone_id, id)
);
CREATE INDEX authority_records_active_expires_idx
    ON public.authority_records (expires_at) WHERE status = 'active';
CREATE INDEX authority_records_zone_active_expires_idx
    ON public.authority_records (zone_id, expires_at) WHERE status = 'active';
CREATE INDEX authority_records_zone_created_idx
    ON public.authority_records (zone_id, created_at DESC, id DESC);
CREATE INDEX authority_records_zone_subject_status_idx
    ON public.authority_records (zone_id, subject_id, status);
CREATE INDEX authority_records_zone_subject_idx
    ON public.authority_records (zone_id, subject_id);

-- ---------------------------------------------------------------- governed Sessions

CREATE TABLE public.sessions (
    id                          text PRIMARY KEY,
    zone_id                     text NOT NULL REFERENCES public.zones (id),
    application_id              text NOT NULL,
    parent_id                   text REFERENCES public.sessions (id),
    subject_authority_record_id text NOT NULL,
    status                      text NOT NULL DEFAULT 'active'
                                CHECK (status IN ('active', 'suspended', 'terminated', 'expired')),
    depth                       integer NOT NULL DEFAULT 0,
    labels                      text[] NOT NULL DEFAULT '{}',
    max_children                integer NOT NULL DEFAULT 10,
    child_count                 integer NOT NULL DEFAULT 0,
    started_at                  timestamptz NOT NULL DEFAULT now(),
    last_active_at              timestamptz,
    terminated_at               timestamptz,
    ttl_seconds                 integer DEFAULT 3600,
    metadata_json               jsonb,
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    lifecycle                   text NOT NULL DEFAULT 'task'
                                CHECK (lifecycle IN ('task', 'service')),
    last_heartbeat_at           timestamptz,
    heartbeat_deadline_at       timestamptz,
    termination_reason          text,
    lease_generation            bigint NOT NULL DEFAULT 0 CHECK (lease_generation >= 0),
    UNIQUE (zone_id, id),
    CONSTRAINT sessions_zone_application_fk FOREIGN KEY (zone_id, application_id)
        REFERENCES public.applications (zone_id, id),
    CONSTRAINT sessions_zone_parent_fk FOREIGN KEY (zone_id, parent_id)
        REFERENCES public.sessions (zone_id, id),
    CONSTRAINT sessions_zone_authority_record_fk FOREIGN KEY (zone_id, subject_authority_record_id)
        REFERENCES public.authority_records (zone_id, id),
    CONSTRAINT sessions_lifecycle_fields_check CHECK (
        (lifecycle = 'task' AND ttl_seconds > 0
            AND last_heartbeat_at IS NULL AND heartbeat_deadline_at IS NULL)
        OR (lifecycle = 'service' AND ttl_seconds IS NULL
            AND last_heartbeat_at IS NOT NULL AND heartbeat_deadline_at IS NOT NULL)),
    CONSTRAINT sessions_terminal_fields_check CHECK (
        (status IN ('terminated', 'expired') AND terminated_at IS NOT NULL)
        OR (status IN ('active', 'suspended') AND terminated_at IS NULL))
);
CREATE INDEX sessions_zone_status_idx ON public.sessions (zone_id, status);
CREATE INDEX sessions_terminal_retention_idx ON public.sessions (terminated_at, id)
    WHERE status IN ('terminated', 'expired');

CREATE TABLE public.agent_topology (
    parent_id text NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
    child_id  text NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
    PRIMARY KEY (parent_id, child_id)
);

CREATE TABLE public.agent_services (
    id                text PRIMARY KEY,
    zone_id           text NOT NULL REFERENCES public.zones (id),
    application_id    text NOT NULL,
    endpoint_url      text NOT NULL,
    protocol_versions text[] NOT NULL DEFAULT '{}',
    capabilities      text[] NOT NULL DEFAULT '{}',
    health            text NOT NULL DEFAULT 'unknown',
    metadata_json     jsonb,
    last_heartbeat_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_services_zone_application_fk FOREIGN KEY (zone_id, application_id)
        REFERENCES public.applications (zone_id, id)
);

CREATE TABLE public.agent_invocations (
    id                  text PRIMARY KEY,
    zone_id             text NOT NULL REFERENCES public.zones (id),
    service_id          text REFERENCES public.agent_services (id) ON DELETE SET NULL,
    source_session_id   text REFERENCES public.sessions (id) ON DELETE SET NULL,
    target_session_id   text REFERENCES public.sessions (id) ON DELETE SET NULL,
    method              text NOT NULL,
    params_json         jsonb,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'running', 'completed', 'failed',
                                          'cancelled', 'timed_out')),
    attempts            integer NOT NULL DEFAULT 0,
    error_json          jsonb,
    deadline_at         timestamptz,
    started_at          timestamptz,
    completed_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.coordinator_idempotency_receipts (
    id              text PRIMARY KEY,
    operation       text NOT NULL CHECK (operation IN ('session.start.v2',
                                                       'delegation.create.v2',
                                                       'invocation.create.v2')),
    zone_id         text NOT NULL REFERENCES public.zones (id),
    scope_id        text NOT NULL,
    key_digest      bytea NOT NULL CHECK (octet_length(key_digest) = 32),
    request_digest  bytea NOT NULL CHECK (octet_length(request_digest) = 32),
    resource_type   text NOT NULL,
    resource_id     text NOT NULL,
    response_status smallint NOT NULL CHECK (response_status BETWEEN 200 AND 299),
    response_json   jsonb NOT NULL CHECK (octet_length(response_json::text) <= 65536),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    CHECK (expires_at > created_at),
    UNIQUE (operation, zone_id, scope_id, key_digest)
);
CREATE INDEX coordinator_idempotency_receipts_expires_idx
    ON public.coordinator_idempotency_receipts (expires_at);

-- ---------------------------------------------------------------- delegations

CREATE TABLE public.delegation_edges (
    id                      text PRIMARY KEY,
    zone_id                 text NOT NULL REFERENCES public.zones (id),
    source_session_id       text NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
    target_session_id       text NOT NULL REFERENCES public.sessions (id) ON DELETE CASCADE,
    issuer_application_id   text NOT NULL,
    receiver_application_id text NOT NULL,
    resource_id             text REFERENCES public.resources (id),
    scopes                  text[] NOT NULL DEFAULT '{}',
    constraints_json        jsonb,
    status                  text NOT NULL DEFAULT 'active'
                            CHECK (status IN ('active', 'revoked', 'expired')),
    expires_at              timestamptz NOT NULL,
    edge_version            integer NOT NULL DEFAULT 0,
    revoked_at              timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    parent_edge_id          text,
    UNIQUE (zone_id, id),
    CHECK (source_session_id <> target_session_id),
    CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
    CONSTRAINT delegation_edges_zone_source_fk FOREIGN KEY (zone_id, source_session_id)
        REFERENCES public.sessions (zone_id, id) ON DELETE CASCADE,
    CONSTRAINT delegation_edges_zone_target_fk FOREIGN KEY (zone_id, target_session_id)
        REFERENCES public.sessions (zone_id, id) ON DELETE CASCADE,
    CONSTRAINT delegation_edges_zone_parent_fk FOREIGN KEY (zone_id, parent_edge_id)
        REFERENCES public.delegation_edges (zone_id, id) ON DELETE SET NULL (parent_edge_id)
);
CREATE INDEX delegation_edges_zone_status_idx ON public.delegation_edges (zone_id, status);
CREATE INDEX delegation_edges_parent_edge_idx ON public.delegation_edges (parent_edge_id);

CREATE TABLE public.delegation_graph_epochs (
    zone_id    text PRIMARY KEY REFERENCES public.zones (id) ON DELETE CASCADE,
    epoch      bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.step_up_challenges (
    id                          text PRIMARY KEY,
    zone_id                     text NOT NULL REFERENCES public.zones (id),
    session_id                  text,
    challenge_type              text NOT NULL DEFAULT 'human_approval'
                                CHECK (challenge_type IN ('human_approval')),
    metadata_json               jsonb,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    expires_at                  timestamptz NOT NULL,
    satisfied_at                timestamptz,
    principal_id                text,
    resource_set_hash           bytea,
    consumed_at                 timestamptz,
    approver_subject_id         text,
    application_id              text,
    tier                        text,
    approver_class              text,
    privacy_mode                text,
    rejected_at                 timestamptz,
    decision_reason             text,
    approver_session_id         text,
    subject_anchor              text,
    consumed_authority_record_id text
);
CREATE INDEX step_up_challenges_sweep_idx ON public.step_up_challenges
    (GREATEST(COALESCE(consumed_at, '-infinity'), COALESCE(rejected_at, '-infinity'),
              expires_at));

-- ---------------------------------------------------------------- outboxes

CREATE TABLE public.event_outbox (
    id            text PRIMARY KEY,
    stream_name   text NOT NULL,
    payload_json  jsonb NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    available_at  timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    locked_by     text,
    last_error    text,
    dispatched_at timestamptz,
    request_id    text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_outbox_dispatch_ready ON public.event_outbox (available_at)
    WHERE dispatched_at IS NULL;
CREATE INDEX event_outbox_undispatched_age ON public.event_outbox (created_at)
    WHERE dispatched_at IS NULL;

CREATE TABLE public.caracal_outbox (
    id           text PRIMARY KEY,
    producer     text NOT NULL CHECK (producer IN ('api', 'coordinator')),
    topic        text NOT NULL,
    dedupe_key   text NOT NULL,
    payload_json jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'published', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    available_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (producer, topic, dedupe_key)
);
CREATE INDEX caracal_outbox_pending_idx ON public.caracal_outbox (created_at)
    WHERE status = 'pending';

-- ---------------------------------------------------------------- notifications

CREATE TABLE public.notification_sinks (
    id                   text PRIMARY KEY,
    zone_id              text NOT NULL REFERENCES public.zones (id),
    name                 text NOT NULL,
    url                  text NOT NULL,
    secret_ct            bytea NOT NULL,
    event_types          text[] NOT NULL DEFAULT '{}',
    active               boolean NOT NULL DEFAULT true,
    cursor_chain_seq     bigint NOT NULL DEFAULT 0,
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.notification_deliveries (
    id              text PRIMARY KEY,
    sink_id         text NOT NULL REFERENCES public.notification_sinks (id) ON DELETE CASCADE,
    zone_id         text NOT NULL,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    payload_json    jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    available_at    timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    abandoned_at    timestamptz,
    response_status integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sink_id, event_id)
);

-- ---------------------------------------------------------------- operator (RLS / verify.sh)

CREATE TABLE public.operator_ai_providers (
    slug       text PRIMARY KEY,
    label      text NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.operator_conversation_counters (
    zone_id     text PRIMARY KEY REFERENCES public.zones (id),
    next_number bigint NOT NULL DEFAULT 1
);

CREATE TABLE public.operator_conversations (
    id         text PRIMARY KEY,
    zone_id    text NOT NULL REFERENCES public.zones (id),
    title      text NOT NULL DEFAULT '',
    status     text NOT NULL DEFAULT 'open',
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.operator_turns (
    id              text PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES public.operator_conversations (id) ON DELETE CASCADE,
    zone_id         text NOT NULL,
    seq             bigint NOT NULL,
    role            text NOT NULL,
    content         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.operator_message_runs (
    id                      text PRIMARY KEY,
    zone_id                 text NOT NULL,
    conversation_id         text NOT NULL REFERENCES public.operator_conversations (id)
                            ON DELETE CASCADE,
    state                   text NOT NULL,
    last_event_seq          bigint NOT NULL DEFAULT 0,
    started_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    completed_at            timestamptz,
    input_tokens            bigint NOT NULL DEFAULT 0,
    output_tokens           bigint NOT NULL DEFAULT 0,
    usage_by_provider_model jsonb NOT NULL DEFAULT '[]',
    served_provider_id      text,
    served_model            text,
    CONSTRAINT operator_message_runs_input_tokens_check CHECK (input_tokens >= 0),
    CONSTRAINT operator_message_runs_output_tokens_check CHECK (output_tokens >= 0),
    CONSTRAINT operator_message_runs_usage_by_provider_model_check
        CHECK (jsonb_typeof(usage_by_provider_model) = 'array')
);

CREATE TABLE public.operator_message_run_events (
    id              text PRIMARY KEY,
    run_id          text NOT NULL REFERENCES public.operator_message_runs (id) ON DELETE CASCADE,
    zone_id         text NOT NULL,
    conversation_id text NOT NULL,
    event_seq       bigint NOT NULL,
    state           text NOT NULL,
    payload         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.operator_plan_secrets (
    conversation_id text NOT NULL,
    zone_id         text NOT NULL,
    plan_seq        bigint NOT NULL,
    step_id         text NOT NULL,
    envelope        bytea NOT NULL,
    secret_keys     text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, plan_seq, step_id)
);

CREATE TABLE public.operator_zone_memory (
    id              text PRIMARY KEY,
    zone_id         text NOT NULL,
    conversation_id text,
    text            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- evidence

CREATE TABLE public.audit_events (
    id                        text NOT NULL,
    zone_id                   text NOT NULL,
    event_type                text NOT NULL,
    request_id                text,
    decision                  text,
    policy_set_id             text,
    policy_set_version_id     text,
    manifest_sha              text,
    evaluation_status         text,
    determining_policies_json jsonb,
    diagnostics_json          jsonb,
    metadata_json             jsonb,
    occurred_at               timestamptz NOT NULL,
    ingested_at               timestamptz NOT NULL DEFAULT now(),
    content_sha256            text,
    prev_content_sha256       text,
    chain_hmac                text,
    chain_seq                 bigint,
    ingest_signature          text,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE INDEX audit_events_zone_chain ON public.audit_events (zone_id, chain_seq DESC);
CREATE INDEX audit_events_zone_id_occurred_at_idx
    ON public.audit_events (zone_id, occurred_at DESC);
CREATE INDEX audit_events_request_id_idx ON public.audit_events (request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX audit_events_session_idx ON public.audit_events ((metadata_json ->> 'session_id'))
    WHERE metadata_json ? 'session_id';
CREATE INDEX audit_events_agent_session_idx
    ON public.audit_events ((metadata_json ->> 'agent_session_id'))
    WHERE metadata_json ? 'agent_session_id';
CREATE INDEX audit_events_agent_labels_idx ON public.audit_events
    USING gin ((metadata_json -> 'agent_labels'));

CREATE TABLE public.audit_events_default PARTITION OF public.audit_events DEFAULT;

-- Partition management the audit role may call (SECURITY DEFINER, owner = migration user).
CREATE FUNCTION public.audit_partition_ensure(month date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
DECLARE
    first date := date_trunc('month', month)::date;
BEGIN
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS public.%I PARTITION OF public.audit_events'
        ' FOR VALUES FROM (%L) TO (%L)',
        'audit_events_y' || to_char(first, 'YYYY') || 'm' || to_char(first, 'MM'),
        (first::timestamp AT TIME ZONE 'UTC'),
        ((first + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
END
$fn$;

CREATE FUNCTION public.audit_partition_drop(part_name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $fn$
BEGIN
    IF part_name !~ '^audit_events_y[0-9]{4}m[0-9]{2}$' THEN
        RAISE EXCEPTION 'invalid audit partition name %', part_name;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = 'public.audit_events'::regclass
                     AND c.relname = part_name) THEN
        RETURN;
    END IF;
    EXECUTE format('DROP TABLE public.%I', part_name);
END
$fn$;

REVOKE ALL ON FUNCTION public.audit_partition_ensure(date) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.audit_partition_drop(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.audit_partition_ensure(date) TO caracalaudit;
GRANT EXECUTE ON FUNCTION public.audit_partition_drop(text) TO caracalaudit;

CREATE TABLE public.audit_ingest_alerts (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL,
    zone_id     text NOT NULL,
    kind        text NOT NULL,
    detail      text,
    observed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_ingest_alerts_zone_observed_idx
    ON public.audit_ingest_alerts (zone_id, observed_at DESC);

CREATE TABLE public.audit_chain_rehash (
    id           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    completed_at timestamptz DEFAULT now()
);

CREATE TABLE public.audit_export_watermark (
    name               text PRIMARY KEY,
    last_exported_hour timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.audit_retention (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    retention_days integer NOT NULL CHECK (retention_days >= 1),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text
);

CREATE TABLE public.admin_audit_events (
    id                  text PRIMARY KEY,
    request_id          text NOT NULL,
    actor_id            text,
    actor_name          text,
    actor_scope         text,
    action              text NOT NULL,
    method              text NOT NULL,
    path                text NOT NULL,
    zone_id             text,
    entity_type         text,
    entity_id           text,
    status_code         integer NOT NULL,
    payload_json        jsonb,
    occurred_at         timestamptz NOT NULL DEFAULT now(),
    content_sha256      text,
    prev_content_sha256 text,
    chain_hmac          text,
    chain_seq           bigint
);
CREATE INDEX admin_audit_events_chain ON public.admin_audit_events (zone_id, chain_seq DESC);
CREATE INDEX admin_audit_events_actor_idx ON public.admin_audit_events (actor_id, occurred_at DESC)
    WHERE actor_id IS NOT NULL;
CREATE INDEX admin_audit_events_request_idx ON public.admin_audit_events (request_id);
CREATE INDEX admin_audit_events_zone_occurred_idx
    ON public.admin_audit_events (zone_id, occurred_at DESC);

-- ---------------------------------------------------------------- row-level security (§2.2)

DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['admin_audit_events', 'admin_tokens', 'agent_invocations',
                             'agent_services', 'coordinator_idempotency_receipts', 'sessions',
                             'applications', 'audit_events', 'delegated_grants',
                             'delegation_edges', 'delegation_graph_epochs',
                             'operator_conversations', 'operator_message_run_events',
                             'operator_message_runs', 'operator_plan_secrets', 'operator_turns',
                             'operator_zone_memory', 'policies', 'policy_set_bindings',
                             'policy_sets', 'provider_connections', 'providers', 'resources',
                             'secret_store', 'secrets', 'authority_records',
                             'step_up_challenges', 'subject_issuers'] LOOP
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY zone_isolation ON public.%I'
            ' USING ((current_setting(''caracal.zone_id'', true) = ''*'')'
            ' OR (zone_id = current_setting(''caracal.zone_id'', true)))'
            ' WITH CHECK ((current_setting(''caracal.zone_id'', true) = ''*'')'
            ' OR (zone_id = current_setting(''caracal.zone_id'', true)))', t);
    END LOOP;
END
$rls$;

-- ---------------------------------------------------------------- grants (§2.2 and what the
-- reference services need; a service role sees RLS rows only with caracal.zone_id set)

GRANT SELECT, INSERT ON public.audit_events TO caracalaudit;
GRANT SELECT ON public.audit_events TO caracalapi;
GRANT SELECT, INSERT, UPDATE ON public.audit_export_watermark TO caracalaudit;
GRANT SELECT, INSERT ON public.audit_ingest_alerts TO caracalaudit;
GRANT USAGE, SELECT ON SEQUENCE public.audit_ingest_alerts_id_seq TO caracalaudit;
GRANT SELECT, INSERT, DELETE, UPDATE ON public.audit_chain_rehash TO caracalaudit;
GRANT ALL ON public.audit_retention TO caracalapi;
GRANT SELECT ON public.audit_retention TO caracalaudit;
GRANT SELECT, INSERT ON public.admin_audit_events TO caracalapi, caracalcoordinator;

GRANT SELECT, INSERT, UPDATE ON public.secrets TO caracalsts;
GRANT ALL ON public.secrets TO caracalapi;
GRANT SELECT ON public.secret_store TO caracalsts;
GRANT ALL ON public.secret_store TO caracalapi;

GRANT SELECT, INSERT, UPDATE, DELETE ON public.sessions TO caracalcoordinator;
GRANT SELECT, UPDATE ON public.sessions TO caracalapi;
GRANT SELECT ON public.sessions TO caracalsts, caracalgateway;

GRANT SELECT, INSERT, UPDATE ON public.authority_records TO caracalsts;
GRANT SELECT, UPDATE ON public.authority_records TO caracalapi;
GRANT SELECT ON public.authority_records TO caracalcoordinator, caracalgateway;

GRANT SELECT, INSERT, UPDATE ON public.delegation_edges TO caracalcoordinator;
GRANT SELECT ON public.delegation_edges TO caracalsts, caracalgateway;
GRANT SELECT, UPDATE ON public.delegation_edges TO caracalapi;

GRANT ALL ON public.event_outbox TO caracalapi;
GRANT INSERT ON public.event_outbox TO caracalsts;
GRANT SELECT, INSERT, UPDATE ON public.caracal_outbox TO caracalapi, caracalcoordinator;

GRANT SELECT ON public.policy_versions TO caracalsts;
GRANT SELECT, INSERT, UPDATE ON public.policy_versions TO caracalapi;
GRANT SELECT ON public.resources, public.providers, public.applications, public.zones
    TO caracalgateway;

GRANT ALL ON public.zones, public.applications, public.providers, public.resources,
    public.workloads, public.subject_issuers, public.provider_connections,
    public.delegated_grants, public.policies, public.policy_sets, public.policy_set_bindings,
    public.admin_tokens, public.sts_rate_limit, public.notification_sinks,
    public.notification_deliveries, public.step_up_challenges TO caracalapi;
GRANT SELECT, INSERT ON public.policy_set_versions TO caracalapi;
GRANT SELECT ON public.zones, public.applications, public.resources, public.providers,
    public.policy_sets, public.policy_set_bindings, public.policy_set_versions,
    public.delegated_grants, public.sts_rate_limit, public.provider_connections,
    public.workloads, public.subject_issuers, public.delegation_graph_epochs TO caracalsts;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.step_up_challenges TO caracalsts;
GRANT SELECT ON public.zones, public.applications, public.resources TO caracalcoordinator;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.coordinator_idempotency_receipts,
    public.agent_topology, public.agent_services, public.agent_invocations
    TO caracalcoordinator;
GRANT SELECT, INSERT, UPDATE ON public.delegation_graph_epochs TO caracalcoordinator;

-- Reference schema of Caracal release 2026.06 (v2026.06.21): the final state of its 47
-- migrations, written by this project from the facts (FACTS-2026.06 §2). Table, column,
-- constraint, index, trigger, policy and role names are facts; the DDL text is ours.
-- Applied in one transaction by caracal_restore.reference.schema.apply_schema().

CREATE EXTENSION IF NOT EXISTS pgcrypto;

-- Service roles (NOLOGIN, no passwords, unused at runtime). Roles are cluster-wide, so a
-- second database on the same cluster finds them already there.
DO $roles$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['caracalsts', 'caracalapi', 'caracalaudit',
                             'caracalcoordinator', 'caracalgateway'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created concurrently by another database's apply
            END;
        END IF;
    END LOOP;
END
$roles$;

-- ---------------------------------------------------------------- ledger (unqualified)

CREATE TABLE schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------- product state

CREATE TABLE zones (
    id             text PRIMARY KEY,
    name           text NOT NULL,
    slug           text NOT NULL UNIQUE,
    dek_ciphertext bytea NOT NULL,
    kek_arn        text,
    dcr_enabled    boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    archived_at    timestamptz
);

CREATE TABLE providers (
    id                  text PRIMARY KEY,
    zone_id             text NOT NULL REFERENCES zones (id),
    name                text NOT NULL,
    identifier          text NOT NULL,
    config_json         jsonb NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    archived_at         timestamptz,
    secret_config_ct    bytea,
    secret_config_nonce bytea,
    secret_config_keys  text[] NOT NULL DEFAULT '{}',
    provider_kind       text NOT NULL CHECK (provider_kind IN (
        'none', 'caracal_mandate', 'oauth2_authorization_code',
        'oauth2_client_credentials', 'api_key', 'bearer_token')),
    UNIQUE (zone_id, id)
);
CREATE UNIQUE INDEX providers_zone_identifier_active_idx
    ON providers (zone_id, identifier) WHERE archived_at IS NULL;

CREATE TABLE applications (
    id                  text PRIMARY KEY,
    zone_id             text NOT NULL REFERENCES zones (id),
    name                text NOT NULL,
    registration_method text NOT NULL CHECK (registration_method IN ('managed', 'dcr')),
    credential_type     text NOT NULL DEFAULT 'token' CHECK (credential_type = 'token'),
    client_secret_hash  text,
    traits              text[] NOT NULL DEFAULT '{}',
    expires_at          timestamptz,
    archived_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (registration_method <> 'dcr' OR expires_at IS NOT NULL),
    UNIQUE (zone_id, id)
);

CREATE TABLE resources (
    id                     text PRIMARY KEY,
    zone_id                text NOT NULL REFERENCES zones (id),
    name                   text NOT NULL,
    identifier             text NOT NULL,
    upstream_url           text,
    credential_provider_id text NOT NULL REFERENCES providers (id),
    scopes                 text[] NOT NULL DEFAULT '{}',
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    archived_at            timestamptz,
    CONSTRAINT resources_zone_id_identifier_key UNIQUE (zone_id, identifier),
    CONSTRAINT resources_zone_provider_fk FOREIGN KEY (zone_id, credential_provider_id)
        REFERENCES providers (zone_id, id),
    UNIQUE (zone_id, id)
);

-- Zone signing keys, sealed under ZONE_KEK (split layout: ct‖tag + nonce).
CREATE TABLE secrets (
    id         text PRIMARY KEY,
    zone_id    text NOT NULL REFERENCES zones (id),
    entity_id  text NOT NULL,
    name       text NOT NULL,
    type       text NOT NULL CHECK (type IN ('token', 'password')),
    ciphertext bytea NOT NULL,
    nonce      bytea NOT NULL,
    dek_id     text NOT NULL,
    version    integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX secrets_zone_entity_idx ON secrets (zone_id, entity_id);

-- Provider-native user credentials (packed seals: nonce‖ct‖tag).
CREATE TABLE provider_grants (
    id                    text PRIMARY KEY,
    zone_id               text NOT NULL REFERENCES zones (id),
    user_id               text NOT NULL,
    resource_id           text NOT NULL,
    provider_id           text NOT NULL,
    scopes                text[] NOT NULL DEFAULT '{}',
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'revoked', 'expired')),
    access_token_ct       bytea,
    refresh_token_ct      bytea,
    expires_at            timestamptz,
    refreshed_at          timestamptz,
    refresh_token_version integer NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT provider_grants_zone_resource_fk FOREIGN KEY (zone_id, resource_id)
        REFERENCES resources (zone_id, id),
    CONSTRAINT provider_grants_zone_provider_fk FOREIGN KEY (zone_id, provider_id)
        REFERENCES providers (zone_id, id)
);
CREATE UNIQUE INDEX provider_grants_active_unique
    ON provider_grants (zone_id, user_id, resource_id, provider_id) WHERE status = 'active';

CREATE TABLE admin_tokens (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    token_sha256 bytea NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('global', 'zone')),
    zone_id      text REFERENCES zones (id),
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    token_hash   text,
    CHECK ((scope = 'global' AND zone_id IS NULL) OR (scope = 'zone' AND zone_id IS NOT NULL))
);
CREATE UNIQUE INDEX admin_tokens_token_sha256_live_idx
    ON admin_tokens (token_sha256) WHERE revoked_at IS NULL;

-- ---------------------------------------------------------------- policies

CREATE TABLE policies (
    id          text PRIMARY KEY,
    zone_id     text NOT NULL REFERENCES zones (id),
    name        text NOT NULL,
    description text,
    owner_type  text NOT NULL DEFAULT 'customer',
    archived_at timestamptz,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone_id, name)
);

CREATE TABLE policy_versions (
    id             text PRIMARY KEY,
    policy_id      text NOT NULL REFERENCES policies (id),
    version        integer NOT NULL,
    content        text NOT NULL,
    content_sha256 text NOT NULL,
    schema_version text,
    created_by     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    archived_at    timestamptz,
    UNIQUE (policy_id, version)
);

CREATE FUNCTION reject_policy_version_mutation() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION 'policy_versions rows are immutable'
        USING ERRCODE = 'integrity_constraint_violation', DETAIL = TG_OP || ' refused';
END
$fn$;

CREATE TRIGGER policy_versions_immutable
    BEFORE UPDATE OR DELETE ON policy_versions
    FOR EACH ROW EXECUTE FUNCTION reject_policy_version_mutation();

CREATE TABLE policy_sets (
    id          text PRIMARY KEY,
    zone_id     text NOT NULL REFERENCES zones (id),
    name        text NOT NULL,
    description text,
    scope_type  text NOT NULL DEFAULT 'zone',
    owner_type  text NOT NULL DEFAULT 'customer',
    archived_at timestamptz,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone_id, name)
);

CREATE TABLE policy_set_versions (
    id              text PRIMARY KEY,
    policy_set_id   text NOT NULL REFERENCES policy_sets (id),
    version         integer NOT NULL,
    manifest_json   jsonb NOT NULL,
    manifest_sha256 text NOT NULL,
    schema_version  text,
    created_by      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    archived_at     timestamptz,
    UNIQUE (policy_set_id, version)
);

CREATE TABLE policy_set_bindings (
    zone_id           text NOT NULL REFERENCES zones (id),
    policy_set_id     text NOT NULL REFERENCES policy_sets (id),
    active_version_id text REFERENCES policy_set_versions (id),
    shadow_version_id text REFERENCES policy_set_versions (id),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone_id, policy_set_id)
);

-- ---------------------------------------------------------------- grants

CREATE TABLE delegated_grants (
    id             text PRIMARY KEY,
    zone_id        text NOT NULL REFERENCES zones (id),
    application_id text NOT NULL,
    user_id        text NOT NULL,
    resource_id    text NOT NULL REFERENCES resources (id),
    scopes         text[] NOT NULL DEFAULT '{}',
    status         text NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'revoked', 'expired')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delegated_grants_zone_application_fk FOREIGN KEY (zone_id, application_id)
        REFERENCES applications (zone_id, id),
    CONSTRAINT delegated_grants_zone_resource_fk FOREIGN KEY (zone_id, resource_id)
        REFERENCES resources (zone_id, id)
);

-- ---------------------------------------------------------------- STS token lineage

CREATE TABLE sessions (
    id               text PRIMARY KEY,
    zone_id          text NOT NULL REFERENCES zones (id),
    session_type     text NOT NULL CHECK (session_type IN ('user', 'application')),
    subject_id       text NOT NULL,
    parent_id        text REFERENCES sessions (id),
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'revoked', 'expired')),
    expires_at       timestamptz NOT NULL,
    authenticated_at timestamptz NOT NULL,
    claims_json      jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (zone_id, id)
);
CREATE INDEX sessions_zone_subject_status_idx ON sessions (zone_id, subject_id, status);
CREATE INDEX sessions_active_expires_idx ON sessions (expires_at) WHERE status = 'active';

-- ---------------------------------------------------------------- governed agent runs

CREATE TABLE agent_sessions (
    id                    text PRIMARY KEY,
    zone_id               text NOT NULL REFERENCES zones (id),
    application_id        text NOT NULL,
    parent_id             text REFERENCES agent_sessions (id),
    subject_session_id    text NOT NULL,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'suspended', 'terminated', 'expired')),
    depth                 integer NOT NULL DEFAULT 0,
    labels                text[] NOT NULL DEFAULT '{}',
    max_children          integer NOT NULL DEFAULT 10,
    child_count           integer NOT NULL DEFAULT 0,
    spawned_at            timestamptz NOT NULL DEFAULT now(),
    last_active_at        timestamptz,
    terminated_at         timestamptz,
    ttl_seconds           integer DEFAULT 3600,
    metadata_json         jsonb,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    lifecycle             text NOT NULL DEFAULT 'task' CHECK (lifecycle IN ('task', 'service')),
    last_heartbeat_at     timestamptz,
    heartbeat_deadline_at timestamptz,
    idempotency_key       text,
    UNIQUE (zone_id, id),
    CONSTRAINT agent_sessions_zone_application_fk FOREIGN KEY (zone_id, application_id)
        REFERENCES applications (zone_id, id),
    CONSTRAINT agent_sessions_zone_parent_fk FOREIGN KEY (zone_id, parent_id)
        REFERENCES agent_sessions (zone_id, id),
    CONSTRAINT agent_sessions_zone_session_fk FOREIGN KEY (zone_id, subject_session_id)
        REFERENCES sessions (zone_id, id)
);
CREATE UNIQUE INDEX agent_sessions_idempotency_live_idx
    ON agent_sessions (zone_id, application_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND status IN ('active', 'suspended');
CREATE INDEX agent_sessions_zone_status_idx ON agent_sessions (zone_id, status);

CREATE TABLE agent_topology (
    parent_id  text NOT NULL REFERENCES agent_sessions (id) ON DELETE CASCADE,
    child_id   text NOT NULL REFERENCES agent_sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (parent_id, child_id)
);

CREATE TABLE agent_services (
    id               text PRIMARY KEY,
    zone_id          text NOT NULL REFERENCES zones (id),
    agent_session_id text NOT NULL REFERENCES agent_sessions (id) ON DELETE CASCADE,
    application_id   text NOT NULL,
    name             text NOT NULL,
    description      text,
    status           text NOT NULL DEFAULT 'available'
                     CHECK (status IN ('available', 'unavailable')),
    metadata_json    jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_services_zone_application_fk FOREIGN KEY (zone_id, application_id)
        REFERENCES applications (zone_id, id)
);
CREATE UNIQUE INDEX agent_services_zone_name_idx ON agent_services (zone_id, name);

CREATE TABLE agent_invocations (
    id                text PRIMARY KEY,
    zone_id           text NOT NULL REFERENCES zones (id),
    service_id        text REFERENCES agent_services (id) ON DELETE SET NULL,
    source_session_id text REFERENCES agent_sessions (id) ON DELETE SET NULL,
    target_session_id text REFERENCES agent_sessions (id) ON DELETE SET NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'running', 'completed', 'failed',
                                        'cancelled', 'timed_out')),
    input_json        jsonb,
    output_json       jsonb,
    error             text,
    deadline_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);
CREATE INDEX agent_invocations_zone_status_idx ON agent_invocations (zone_id, status);

-- ---------------------------------------------------------------- delegations

CREATE TABLE delegation_edges (
    id                      text PRIMARY KEY,
    zone_id                 text NOT NULL REFERENCES zones (id),
    source_session_id       text NOT NULL REFERENCES agent_sessions (id) ON DELETE CASCADE,
    target_session_id       text NOT NULL REFERENCES agent_sessions (id) ON DELETE CASCADE,
    issuer_application_id   text NOT NULL,
    receiver_application_id text NOT NULL,
    resource_id             text REFERENCES resources (id),
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
    CONSTRAINT delegation_edges_zone_source_fk FOREIGN KEY (zone_id, source_session_id)
        REFERENCES agent_sessions (zone_id, id) ON DELETE CASCADE,
    CONSTRAINT delegation_edges_zone_target_fk FOREIGN KEY (zone_id, target_session_id)
        REFERENCES agent_sessions (zone_id, id) ON DELETE CASCADE,
    CONSTRAINT delegation_edges_zone_issuer_fk FOREIGN KEY (zone_id, issuer_application_id)
        REFERENCES applications (zone_id, id),
    CONSTRAINT delegation_edges_zone_receiver_fk FOREIGN KEY (zone_id, receiver_application_id)
        REFERENCES applications (zone_id, id),
    CONSTRAINT delegation_edges_parent_edge_id_fkey FOREIGN KEY (parent_edge_id)
        REFERENCES delegation_edges (id) ON DELETE SET NULL
);
CREATE INDEX delegation_edges_zone_status_idx ON delegation_edges (zone_id, status);
CREATE INDEX delegation_edges_parent_edge_idx ON delegation_edges (parent_edge_id);

CREATE TABLE delegation_graph_epochs (
    zone_id    text PRIMARY KEY REFERENCES zones (id) ON DELETE CASCADE,
    epoch      bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE step_up_challenges (
    id                  text PRIMARY KEY,
    zone_id             text NOT NULL REFERENCES zones (id),
    session_id          text,
    challenge_type      text NOT NULL DEFAULT 'human_approval'
                        CHECK (challenge_type IN ('human_approval')),
    metadata_json       jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    satisfied_at        timestamptz,
    principal_id        text,
    resource_set_hash   bytea,
    consumed_at         timestamptz,
    approver_subject_id text,
    application_id      text,
    tier                text,
    approver_class      text,
    privacy_mode        text,
    rejected_at         timestamptz,
    decision_reason     text,
    approver_session_id text
);
CREATE INDEX step_up_challenges_zone_idx ON step_up_challenges (zone_id, created_at DESC);

-- ---------------------------------------------------------------- outboxes

CREATE TABLE event_outbox (
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
CREATE INDEX event_outbox_dispatch_ready ON event_outbox (available_at)
    WHERE dispatched_at IS NULL;
CREATE INDEX event_outbox_undispatched_age ON event_outbox (created_at)
    WHERE dispatched_at IS NULL;

CREATE TABLE caracal_outbox (
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
CREATE INDEX caracal_outbox_pending_idx ON caracal_outbox (created_at) WHERE status = 'pending';

-- ---------------------------------------------------------------- gateway routing

-- No foreign keys on purpose: orphans are possible at 06.21 (the verifier checks them).
CREATE TABLE gateway_resource_bindings (
    resource_identifier text NOT NULL,
    application_id      text NOT NULL,
    zone_id             text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (zone_id, resource_identifier)
);
CREATE INDEX gateway_resource_bindings_zone_idx ON gateway_resource_bindings (zone_id);

CREATE TABLE gateway_binding_revision (
    id         boolean NOT NULL DEFAULT true PRIMARY KEY CHECK (id),
    version    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO gateway_binding_revision (id, version) VALUES (true, 1);

-- ---------------------------------------------------------------- evidence

CREATE TABLE audit_events (
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

CREATE INDEX audit_events_zone_chain ON audit_events (zone_id, chain_seq DESC);
CREATE INDEX audit_events_zone_id_occurred_at_idx ON audit_events (zone_id, occurred_at DESC);
CREATE INDEX audit_events_request_id_idx ON audit_events (request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX audit_events_agent_session_idx ON audit_events ((metadata_json ->> 'agent_session_id'))
    WHERE metadata_json ? 'agent_session_id';
CREATE INDEX audit_events_agent_labels_idx ON audit_events
    USING gin ((metadata_json -> 'agent_labels'));

CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;

CREATE TABLE audit_ingest_alerts (
    id          bigserial PRIMARY KEY,
    event_id    text NOT NULL,
    zone_id     text NOT NULL,
    kind        text NOT NULL,
    detail      text,
    observed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_ingest_alerts_zone_observed_idx
    ON audit_ingest_alerts (zone_id, observed_at DESC);

CREATE TABLE audit_chain_rehash (
    id           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    completed_at timestamptz DEFAULT now()
);

CREATE TABLE audit_export_watermark (
    name               text PRIMARY KEY,
    last_exported_hour timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE admin_audit_events (
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
CREATE INDEX admin_audit_events_chain ON admin_audit_events (zone_id, chain_seq DESC);
CREATE INDEX admin_audit_events_actor_idx ON admin_audit_events (actor_id, occurred_at DESC)
    WHERE actor_id IS NOT NULL;
CREATE INDEX admin_audit_events_request_idx ON admin_audit_events (request_id);
CREATE INDEX admin_audit_events_zone_occurred_idx ON admin_audit_events (zone_id, occurred_at DESC);

-- ---------------------------------------------------------------- row-level security

DO $rls$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['providers', 'applications', 'sessions', 'secrets',
                             'delegated_grants', 'policies', 'policy_sets',
                             'policy_set_bindings', 'resources', 'audit_events',
                             'agent_sessions', 'delegation_edges', 'agent_services',
                             'agent_invocations', 'gateway_resource_bindings',
                             'step_up_challenges', 'admin_audit_events', 'admin_tokens',
                             'delegation_graph_epochs', 'provider_grants'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY zone_isolation ON %I'
            ' USING (current_setting(''caracal.zone_id'', true) = ''*'''
            ' OR zone_id = current_setting(''caracal.zone_id'', true))'
            ' WITH CHECK (current_setting(''caracal.zone_id'', true) = ''*'''
            ' OR zone_id = current_setting(''caracal.zone_id'', true))', t);
    END LOOP;
END
$rls$;

-- ---------------------------------------------------------------- grants (FACTS-2026.06 §2.1)

GRANT SELECT, INSERT ON audit_events TO caracalaudit;
GRANT SELECT, INSERT, UPDATE ON audit_export_watermark TO caracalaudit;
GRANT SELECT, INSERT ON audit_ingest_alerts TO caracalaudit;
GRANT USAGE, SELECT ON SEQUENCE audit_ingest_alerts_id_seq TO caracalaudit;

GRANT SELECT ON zones, applications, resources, providers, gateway_binding_revision,
    gateway_resource_bindings TO caracalgateway;

GRANT SELECT, UPDATE ON gateway_binding_revision TO caracalapi;
GRANT ALL ON gateway_resource_bindings, zones, applications, providers, resources,
    delegated_grants, provider_grants, secrets, policies, policy_sets,
    policy_set_bindings TO caracalapi;
GRANT SELECT, INSERT ON policy_versions, policy_set_versions TO caracalapi;
GRANT SELECT, UPDATE ON sessions, agent_sessions, delegation_edges TO caracalapi;

GRANT SELECT, INSERT, UPDATE ON sessions, delegated_grants, provider_grants, secrets,
    step_up_challenges TO caracalsts;

GRANT SELECT, INSERT, UPDATE ON agent_sessions, agent_topology, agent_services,
    agent_invocations, delegation_edges, delegation_graph_epochs, caracal_outbox
    TO caracalcoordinator;
GRANT SELECT ON sessions, resources, gateway_resource_bindings, zones, applications
    TO caracalcoordinator;

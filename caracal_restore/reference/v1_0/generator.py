"""Deterministic data generator: a Caracal 1.0 database written the way Caracal 1.0 writes it.

``populate`` fills a database that ``v1_0.schema.apply_schema`` created;
``build_source_database`` does both (plus the empty ``caracal_auth`` database of the web
auth service) on a ``PostgresServer``. Ids and choices come from ``random.Random(seed)``;
key material, salts, nonces and secrets are fresh randomness (registered with the
redactor). The work is split by owner of the data: ``gen_product`` (API product state, keys,
custody copies, policies), ``gen_authority`` (STS lineage, Coordinator sessions, delegations,
receipts, outboxes) and ``gen_evidence`` (audit chain, retention, admin audit, markers). The
data is retention-compliant at ``now`` (FACTS-1.0 §12).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from caracal_restore.environments.base import PgEndpoint
from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.reference import generator as generator_2026_06
from caracal_restore.reference.gen_common import (
    UTC,
    Context,
    Volume,
    copy_rows,
    installed_at,
    span_months,
)
from caracal_restore.reference.generator import Canary, ChainHead, ensure_owner, table_counts
from caracal_restore.reference.v1_0 import gen_authority, gen_evidence, gen_product, schema
from caracal_restore.reference.v1_0.gen_authority import Receipt
from caracal_restore.reference.v1_0.secrets import AUTH_DB

if TYPE_CHECKING:
    from caracal_restore.environments.postgres import PostgresServer

__all__ = ["Canary", "ReferenceData", "Volume", "build_context", "build_source_database",
           "populate"]

#: The console's audit retention override (min'd with AUDIT_RETENTION_DAYS = 365).
DEFAULT_AUDIT_RETENTION_DAYS = 300

#: Tables written by COPY, in foreign-key order (zones go first, by INSERT).
WRITE_ORDER = (
    "providers", "applications", "resources", "workloads", "subject_issuers", "secrets",
    "secret_store", "provider_connections", "admin_tokens", "sts_rate_limit",
    "audit_retention", "notification_sinks", "policies", "policy_versions", "policy_sets",
    "policy_set_versions", "policy_set_bindings", "delegated_grants", "authority_records",
    "sessions", "agent_topology", "agent_services", "agent_invocations", "delegation_edges",
    "delegation_graph_epochs", "step_up_challenges", "coordinator_idempotency_receipts",
    "event_outbox", "caracal_outbox",
)

BeforeRetention = Callable[[psycopg.Connection[Any], dt.datetime], None]


@dataclasses.dataclass(frozen=True)
class ReferenceData:
    """What populate wrote: ids, the canary, counts, chain heads, partitions, receipts."""

    seed: int
    now: dt.datetime
    zone_ids: tuple[str, ...]
    canary: Canary
    counts: Mapping[str, int]
    chain_heads: Mapping[str, ChainHead]
    admin_chain_heads: Mapping[str, ChainHead]
    audit_partitions: tuple[str, ...]
    dropped_partitions: tuple[str, ...]
    export_watermark: dt.datetime
    audit_retention_days: int
    #: Plaintext idempotency keys of the receipts (not secrets: request keys).
    receipts: tuple[Receipt, ...] = ()
    database: str | None = None


def build_context(*, seed: int, volume: Volume, secrets: Mapping[str, str], now: dt.datetime,
                  canary_upstream_url: str,
                  audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS
                  ) -> tuple[Context, list[Receipt]]:
    """Build every non-audit row in memory (same ids as ``populate`` for a seed and ``now``)."""
    if min(volume.zones, volume.applications_per_zone, volume.resources_per_zone,
           volume.sessions_per_zone, volume.months) < 1:
        raise ValueError("the reference deployment needs >= 1 zone, application, resource,"
                         " session and month")
    ctx = Context(seed=seed, volume=volume, secrets=secrets, now=now,
                  canary_upstream_url=canary_upstream_url, profile=PROFILE)
    for step in (gen_product.build_zones, gen_product.build_providers,
                 gen_product.build_applications, gen_product.build_resources,
                 gen_product.build_workloads, gen_product.build_subject_issuers,
                 gen_product.build_signing_keys,
                 gen_product.build_admin_tokens, gen_product.build_provider_connections,
                 gen_product.build_notification_sinks, gen_product.build_policies,
                 gen_authority.build):
        step(ctx)
    gen_product.build_singletons(ctx, audit_retention_days=audit_retention_days)
    receipts = gen_authority.convert(
        ctx, bytes.fromhex(secrets[PROFILE.idempotency_hmac_secret]))
    return ctx, receipts


def write_state(conn: psycopg.Connection[Any], ctx: Context) -> None:
    """Write every non-audit row in foreign-key order, in one transaction."""
    with conn.transaction():
        copy_rows(conn, "zones", ctx.rows["zones"])
        for table in WRITE_ORDER:
            rows = ctx.rows[table]
            if table == "authority_records":
                rows = sorted(rows, key=lambda r: r["created_at"])
            copy_rows(conn, table, rows)


def _canary(ctx: Context) -> Canary:
    c = ctx.canary
    return Canary(
        zone_id=c["zone_id"], application_id=c["application_id"],
        client_secret=ctx.canary_secret, resource_id=c["resource_id"],
        resource_identifier=c["resource_identifier"], upstream_url=ctx.canary_upstream_url,
        policy_id=c["policy_id"], policy_set_id=c["policy_set_id"],
        policy_set_version_id=c["policy_set_version_id"], manifest_sha256=c["manifest_sha256"],
        signing_key_ids=tuple(ctx.zones[0].signing_keys),
    )


def populate(
    conn: psycopg.Connection[Any],
    *,
    seed: int,
    volume: Volume,
    secrets: Mapping[str, str],
    now: dt.datetime,
    canary_upstream_url: str,
    before_retention: BeforeRetention | None = None,
    audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS,
) -> ReferenceData:
    """Fill a database that has the 1.0 schema with deterministic reference data.

    ``conn`` should be in autocommit mode (each phase runs in its own transaction).
    ``secrets`` needs ``secretStoreKek``, ``auditHmacKey``, ``idempotencyHmacKey`` and
    ``caracalAdminToken``. ``before_retention(conn, watermark)`` runs after the audit events
    are written and before retention drops expired partitions.
    """
    ctx, receipts = build_context(seed=seed, volume=volume, secrets=secrets, now=now,
                                  canary_upstream_url=canary_upstream_url,
                                  audit_retention_days=audit_retention_days)
    write_state(conn, ctx)
    partitions, dropped = gen_evidence.write_audit(conn, ctx, before_retention)
    with conn.transaction():
        gen_evidence.write_admin_audit(conn, ctx)
        watermark = gen_evidence.write_markers(conn, ctx)
    return ReferenceData(
        seed=seed, now=ctx.now, zone_ids=tuple(z.id for z in ctx.zones), canary=_canary(ctx),
        counts=table_counts(conn, PROFILE.state_tables),
        chain_heads=generator_2026_06._chain_heads(conn, "audit_events"),
        admin_chain_heads=generator_2026_06._chain_heads(conn, "admin_audit_events"),
        audit_partitions=tuple(partitions), dropped_partitions=tuple(dropped),
        export_watermark=watermark, audit_retention_days=audit_retention_days,
        receipts=tuple(receipts),
    )


def build_source_database(
    pg: PostgresServer,
    *,
    seed: int,
    volume: Volume,
    secrets: Mapping[str, str],
    now: dt.datetime,
    canary_upstream_url: str,
    owner: str = "caracal",
    before_retention: BeforeRetention | None = None,
    audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS,
) -> ReferenceData:
    """Create ``caracal`` (schema, span + 3 months, logins, data) and an empty ``caracal_auth``.

    On a cluster the suite owns, the ``caracal`` login superuser gets ``postgresPassword`` and
    owns the database and every object (``databaseUrl`` is true for it); the service roles log
    in with their own passwords; ``caracal_auth`` belongs to ``caracalauth`` (the web auth
    service creates its own tables, which the reference deployment does not model).
    """
    endpoint = pg.create_database("caracal")
    if pg.owns_cluster:
        ensure_owner(pg, owner, secrets["postgresPassword"])
        with pg.connect() as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(endpoint.dbname), sql.Identifier(owner)))
        endpoint = PgEndpoint(endpoint.host, endpoint.port, owner, endpoint.dbname,
                              secrets["postgresPassword"])
    now = now.astimezone(UTC)
    with psycopg.connect(endpoint.conninfo(), autocommit=True) as conn:
        schema.apply_schema(conn, months=span_months(now, volume.months),
                            applied_at=installed_at(now, volume.months), secrets=secrets)
        data = populate(conn, seed=seed, volume=volume, secrets=secrets, now=now,
                        canary_upstream_url=canary_upstream_url,
                        before_retention=before_retention,
                        audit_retention_days=audit_retention_days)
    auth = pg.create_database(AUTH_DB)
    with pg.connect() as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} OWNER TO caracalauth").format(
            sql.Identifier(auth.dbname)))
    return dataclasses.replace(data, database=endpoint.dbname)

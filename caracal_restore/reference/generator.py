"""Deterministic data generator: a 2026.06 Caracal database written the way Caracal writes it.

``populate`` fills a database that ``schema.apply_schema`` created; ``build_source_database``
does both on a ``PostgresServer``. Identifiers and choices come from ``random.Random(seed)``,
so a seed and a ``now`` give the same ids every time; key material, salts, nonces and the
canary secret are fresh randomness (registered with the redactor).

The work is split by owner of the data in Caracal: ``gen_product`` (API product state,
keys, policies, gateway bindings), ``gen_sessions`` (STS lineage, grants, step-up),
``gen_agents`` (Coordinator agents, delegations, outbox) and ``gen_audit`` (audit chain,
retention tick, admin audit, export watermark). The data is retention-compliant at ``now``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from caracal_restore.environments.base import PgEndpoint
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.reference import gen_agents, gen_audit, gen_product, gen_sessions, schema
from caracal_restore.reference.gen_audit import (
    EXPORT_WATERMARK_NAME,
    admin_hash_fields,
    audit_wire_json,
    export_watermark,
    retention_loop,
)
from caracal_restore.reference.gen_common import (
    UTC,
    Context,
    Volume,
    compact,
    copy_rows,
    go_time,
    hash_client_secret,
    installed_at,
    iso_millis,
    manifest_sha256,
    span_months,
    span_start,
    uuid7,
    verify_client_secret,
)

if TYPE_CHECKING:
    from caracal_restore.environments.postgres import PostgresServer

__all__ = [
    "EXPORT_WATERMARK_NAME",
    "Canary",
    "ChainHead",
    "ReferenceData",
    "Volume",
    "admin_hash_fields",
    "audit_wire_json",
    "build_context",
    "build_source_database",
    "compact",
    "export_watermark",
    "go_time",
    "hash_client_secret",
    "installed_at",
    "iso_millis",
    "manifest_sha256",
    "populate",
    "retention_loop",
    "span_months",
    "span_start",
    "table_counts",
    "uuid7",
    "verify_client_secret",
]

#: Tables written by COPY, in foreign-key order (zones go first, by INSERT).
WRITE_ORDER = (
    "providers", "applications", "resources", "secrets", "provider_grants", "admin_tokens",
    "policies", "policy_versions", "policy_sets", "policy_set_versions", "policy_set_bindings",
    "delegated_grants", "sessions", "agent_sessions", "agent_topology", "agent_services",
    "agent_invocations", "delegation_edges", "delegation_graph_epochs", "step_up_challenges",
    "event_outbox", "caracal_outbox", "gateway_resource_bindings",
)


@dataclasses.dataclass(frozen=True)
class Canary:
    """What the canary exchange and the protected Gateway request need (secret hidden)."""

    zone_id: str
    application_id: str
    client_secret: str = dataclasses.field(repr=False)
    resource_id: str = ""
    resource_identifier: str = ""
    upstream_url: str = ""
    policy_id: str = ""
    policy_set_id: str = ""
    policy_set_version_id: str = ""
    manifest_sha256: str = ""
    signing_key_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ChainHead:
    """The surviving part of one zone's chain (audit or admin audit) after retention."""

    zone_id: str
    first_seq: int
    last_seq: int
    rows: int
    head_content_sha256: str


@dataclasses.dataclass(frozen=True)
class ReferenceData:
    """What populate wrote: ids, the canary, counts, chain heads, partitions, watermark."""

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
    binding_revision: int
    database: str | None = None


def write_state(conn: psycopg.Connection, ctx: Context) -> None:
    """Write every non-audit row in foreign-key order, then the binding revision."""
    with conn.transaction():
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO zones (id, name, slug, dek_ciphertext, dcr_enabled, created_at,"
                " updated_at) VALUES (%(id)s, %(name)s, %(slug)s, gen_random_bytes(32),"
                " %(dcr_enabled)s, %(created_at)s, %(updated_at)s)",
                ctx.rows["zones"],
            )
        for zone in ctx.zones:
            ctx.rows["sessions"] += [
                {k: v for k, v in s.items() if not k.startswith("_")} for s in zone.sessions
            ]
            ctx.rows["agent_sessions"] += sorted(zone.agents, key=lambda a: a["spawned_at"])
        for table in WRITE_ORDER:
            copy_rows(conn, table, ctx.rows[table])
        conn.execute(
            "UPDATE gateway_binding_revision SET version = %s, updated_at = %s WHERE id",
            (max(1, ctx.binding_changes), ctx.binding_changed_at),
        )


def _chain_heads(conn: psycopg.Connection, table: str) -> dict[str, ChainHead]:
    query = sql.SQL(
        "SELECT DISTINCT ON (zone_id) zone_id, min(chain_seq) OVER w, chain_seq,"
        " count(*) OVER w, content_sha256 FROM {} WHERE zone_id IS NOT NULL"
        " WINDOW w AS (PARTITION BY zone_id) ORDER BY zone_id, chain_seq DESC"
    ).format(sql.Identifier(table))
    return {
        r[0]: ChainHead(r[0], int(r[1]), int(r[2]), int(r[3]), r[4])
        for r in conn.execute(query).fetchall()
    }


def table_counts(
    conn: psycopg.Connection, tables: Iterable[str] = PROFILE.state_tables
) -> dict[str, int]:
    """Row count of each table."""
    out: dict[str, int] = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        found = row.fetchone()
        out[table] = int(found[0]) if found else 0
    return out


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


def build_context(
    *,
    seed: int,
    volume: Volume,
    secrets: Mapping[str, str],
    now: dt.datetime,
    canary_upstream_url: str,
) -> Context:
    """Build every non-audit row in memory (no database needed; same ids as ``populate``)."""
    if min(volume.zones, volume.applications_per_zone, volume.resources_per_zone,
           volume.sessions_per_zone, volume.months) < 1:
        raise ValueError("the reference deployment needs >= 1 zone, application, resource,"
                         " session and month")
    ctx = Context(seed=seed, volume=volume, secrets=secrets, now=now,
                  canary_upstream_url=canary_upstream_url)
    for build in (
        gen_product.build_zones, gen_product.build_providers, gen_product.build_applications,
        gen_product.build_resources, gen_product.build_bindings, gen_product.build_signing_keys,
        gen_product.build_admin_tokens, gen_product.build_provider_grants,
        gen_product.build_policies, gen_sessions.build_sessions, gen_agents.build_agents,
        gen_agents.build_edges, gen_sessions.build_delegated_grants, gen_sessions.build_step_up,
    ):
        build(ctx)
    return ctx


#: Called with the connection and the export watermark just before retention runs.
BeforeRetention = Callable[[psycopg.Connection, dt.datetime], None]


def populate(
    conn: psycopg.Connection,
    *,
    seed: int,
    volume: Volume,
    secrets: Mapping[str, str],
    now: dt.datetime,
    canary_upstream_url: str,
    before_retention: BeforeRetention | None = None,
) -> ReferenceData:
    """Fill a database that has the 2026.06 schema with deterministic reference data.

    ``conn`` should be in autocommit mode (each phase runs in its own transaction).
    ``secrets`` needs ``zoneKek``, ``auditHmacKey`` and ``caracalAdminToken``.
    ``before_retention(conn, watermark)`` runs after the audit events are written and before
    retention drops expired partitions (the reference deployment exports them there).
    """
    ctx = build_context(seed=seed, volume=volume, secrets=secrets, now=now,
                        canary_upstream_url=canary_upstream_url)
    write_state(conn, ctx)
    partitions, dropped = gen_audit.write_audit(conn, ctx, before_retention)
    with conn.transaction():
        gen_audit.write_admin_audit(conn, ctx)
        watermark = gen_audit.write_markers(conn, ctx)
    return ReferenceData(
        seed=seed, now=ctx.now, zone_ids=tuple(z.id for z in ctx.zones), canary=_canary(ctx),
        counts=table_counts(conn), chain_heads=_chain_heads(conn, "audit_events"),
        admin_chain_heads=_chain_heads(conn, "admin_audit_events"),
        audit_partitions=tuple(partitions), dropped_partitions=tuple(dropped),
        export_watermark=watermark, binding_revision=max(1, ctx.binding_changes),
    )


def ensure_owner(pg: PostgresServer, user: str, password: str) -> None:
    """Create (or re-password) the login superuser that owns the database, like POSTGRES_USER."""
    with pg.connect() as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        verb = sql.SQL("ALTER" if exists else "CREATE")
        admin.execute(sql.SQL("{} ROLE {} WITH LOGIN SUPERUSER PASSWORD {}").format(
            verb, sql.Identifier(user), sql.Literal(password)))


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
) -> ReferenceData:
    """Create database ``caracal``, apply the schema (span + 3 months) and populate it.

    On a cluster the suite owns, the ``caracal`` login superuser gets ``postgresPassword``
    (as the Postgres image's ``POSTGRES_USER`` does) and owns the database and every object,
    so ``databaseUrl`` is true for it; on an external server the admin role owns them.
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
                            applied_at=installed_at(now, volume.months))
        data = populate(conn, seed=seed, volume=volume, secrets=secrets, now=now,
                        canary_upstream_url=canary_upstream_url,
                        before_retention=before_retention)
    return dataclasses.replace(data, database=endpoint.dbname)

"""Reference generator 1.0, evidence: audit chain, retention tick, admin audit, markers.

The audit chain algorithm is identical at 1.0 (FACTS-1.0 §4.3–4.5), so events are built,
canonicalised and chained by ``reference.gen_audit``. What 1.0 changes is around it:

- retention (§12.1): partitions are ensured/dropped through ``audit_partition_ensure`` /
  ``audit_partition_drop``, with the window ``min(audit_retention.retention_days,
  AUDIT_RETENTION_DAYS)``;
- admin audit (§5): a global chain (``zone_id`` NULL) next to the zone chains; API rows carry
  a payload built in the order ``rls_mode, rls_zone_guc, [operator], change_kind,
  changed_fields, [secret_rotated]`` and are signed with AUDIT_HMAC_KEY, Coordinator rows
  (Compose gives it no key) have no payload and ``chain_hmac`` NULL — interleaved in the
  same zone chains.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import psycopg

from caracal_restore import chainhash
from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.reference import gen_audit
from caracal_restore.reference.gen_common import (
    UTC,
    Context,
    ZoneState,
    compact,
    copy_rows,
    span_start,
)
from caracal_restore.reference.v1_0 import schema

AUDIT_RETENTION_DAYS = dict(PROFILE.retention_defaults)["AUDIT_RETENTION_DAYS"]
#: API payload keys in insertion order (FACTS-1.0 §5).
_PAYLOAD_ORDER = ("rls_mode", "rls_zone_guc", "operator", "change_kind", "changed_fields",
                  "secret_rotated")


def effective_retention(conn: psycopg.Connection[Any]) -> dt.timedelta:
    """``min(audit_retention override, AUDIT_RETENTION_DAYS)`` as the audit loop reads it."""
    row = conn.execute("SELECT retention_days FROM audit_retention WHERE singleton").fetchone()
    days = min(int(row[0]), AUDIT_RETENTION_DAYS) if row else AUDIT_RETENTION_DAYS
    return dt.timedelta(days=days)


def retention_loop(conn: psycopg.Connection[Any], now: dt.datetime) -> tuple[list[str], list[str]]:
    """The 1.0 audit retention tick: ensure current..+3 months, drop expired partitions."""
    this_month = schema.month_start(now.astimezone(UTC).date())
    for n in range(4):
        schema.ensure_partition(conn, schema.add_months(this_month, n))
    cutoff = now - effective_retention(conn)
    dropped: list[str] = []
    for name in schema.monthly_partitions(conn):
        month = dt.date(int(name[14:18]), int(name[19:21]), 1)
        if schema.partition_bounds(month)[1] <= cutoff:
            dropped.append(schema.drop_partition(conn, month))
    return schema.monthly_partitions(conn), dropped


def write_audit(
    conn: psycopg.Connection[Any],
    ctx: Context,
    before_retention: Callable[[psycopg.Connection[Any], dt.datetime], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Generate, chain and COPY the audit events; export hook; then the retention tick."""
    events = gen_audit.build_audit_events(ctx)
    with conn.transaction():
        gen_audit.canonicalise(conn, events)
        gen_audit.chain(events, ctx.audit_key)
        copy_rows(conn, "audit_events", events)
    if before_retention is not None:
        before_retention(conn, gen_audit.export_watermark(ctx.now))
    return retention_loop(conn, ctx.now)


def api_payload(zone_id: str | None, change_kind: str | None = None,
                changed_fields: list[str] | None = None) -> str:
    """The JSON.stringify text an API row hashes (insertion order of FACTS-1.0 §5)."""
    payload: dict[str, Any] = {
        "rls_mode": "control_plane_wildcard", "rls_zone_guc": "*",
    } if zone_id is None else {"rls_mode": "zone_scoped", "rls_zone_guc": zone_id}
    if change_kind is not None:
        payload["change_kind"] = change_kind
        payload["changed_fields"] = changed_fields or []
    assert list(payload) == [k for k in _PAYLOAD_ORDER if k in payload]
    return compact(payload)


def _api_row(ctx: Context, zone: ZoneState | None, at: dt.datetime) -> dict[str, Any]:
    """One API row (admin bearer, signed)."""
    rng = ctx.rng
    if zone is None:
        method, path, kind, fields, status = rng.choice([
            ("POST", "/v1/admin-tokens", "create", ["capability", "name", "scope"], 201),
            ("PUT", "/v1/audit-retention", "update", ["retention_days"], 200),
            ("PUT", "/v1/mint-rate-limit", "update", ["limit_per_minute"], 200),
        ])
        entity_type = entity_id = None
    else:
        entity_type = rng.choice(["applications", "resources", "policies", "workloads"])
        entity_id = ctx.id_at(at)
        method, kind, fields, status = rng.choice([
            ("POST", "create", ["name"], 201), ("PATCH", "update", ["name"], 200),
            ("DELETE", "archive", ["archived_at"], 200),
        ])
        path = f"/v1/zones/{zone.id}/{entity_type}" + ("" if method == "POST"
                                                       else f"/{entity_id}")
    return {
        "id": ctx.id_at(at), "request_id": ctx.id_at(at), "actor_id": ctx.bootstrap_token_id,
        "actor_name": "bootstrap", "actor_scope": "global", "action": f"{method} {path}",
        "method": method, "path": path, "zone_id": zone.id if zone else None,
        "entity_type": entity_type, "entity_id": entity_id, "status_code": status,
        "payload_json": api_payload(None, kind, fields), "occurred_at": at,
    }


def _coordinator_row(ctx: Context, zone: ZoneState, at: dt.datetime) -> dict[str, Any]:
    """One Coordinator operator row (no payload; unsigned in Compose)."""
    agents = [a["id"] for a in zone.agents] or [ctx.id_at(at)]
    agent = ctx.rng.choice(agents)
    verb = ctx.rng.choice(["suspend", "resume"])
    path = f"/zones/{zone.id}/agents/{agent}/{verb}"
    return {
        "id": ctx.id_at(at), "request_id": ctx.id_at(at), "actor_id": "caracal-operator",
        "actor_name": "caracal-operator", "actor_scope": "agent:lifecycle coordinator.admin",
        "action": f"PATCH {path}", "method": "PATCH", "path": path, "zone_id": zone.id,
        "entity_type": "agents", "entity_id": agent, "status_code": 200, "payload_json": None,
        "occurred_at": at,
    }


def write_admin_audit(conn: psycopg.Connection[Any], ctx: Context) -> None:
    """Admin audit rows: global chain + zone chains, API rows signed, Coordinator rows not."""
    rng = ctx.rng
    start = span_start(ctx.now, ctx.volume.months)
    times = sorted(ctx.between(start, ctx.now) for _ in range(ctx.volume.admin_audit_events))
    heads: dict[str | None, tuple[str, int]] = {}
    rows = []
    for raw in times:
        at = raw.replace(microsecond=raw.microsecond // 1000 * 1000)
        roll = rng.random()
        if roll < 0.2:
            row = _api_row(ctx, None, at)
        elif roll < 0.75:
            row = _api_row(ctx, rng.choice(ctx.zones), at)
        else:
            row = _coordinator_row(ctx, rng.choice(ctx.zones), at)
        payload = row["payload_json"] or ""
        content = chainhash.admin_content_hash(gen_audit.admin_hash_fields(row, payload))
        prev, seq = heads.get(row["zone_id"], ("", 0))
        signed = row["payload_json"] is not None
        row.update(content_sha256=content, prev_content_sha256=prev or None,
                   chain_hmac=chainhash.chain_hmac(ctx.audit_key, content, prev) if signed
                   else None, chain_seq=seq + 1)
        heads[row["zone_id"]] = (content, seq + 1)
        rows.append(row)
    copy_rows(conn, "admin_audit_events", rows)


def write_markers(conn: psycopg.Connection[Any], ctx: Context) -> dt.datetime:
    """Rehash marker, export watermark, and the notification sink cursors (<= zone head)."""
    watermark = gen_audit.write_markers(conn, ctx)
    conn.execute(
        "UPDATE notification_sinks s SET cursor_chain_seq = COALESCE((SELECT max(chain_seq)"
        " FROM audit_events a WHERE a.zone_id = s.zone_id), 0)"
    )
    return watermark

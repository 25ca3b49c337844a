"""Reference generator, evidence: the audit chain, the retention loop, admin audit, watermark.

The audit chain follows FACTS-1.0 §4.3–4.5 (unchanged at 06.21): per zone, ``chain_seq``
1..N in ingestion order, genesis prev NULL, content hash over the server's own
``jsonb::text`` (obtained with one COPY into a temporary table and one SELECT back),
``chain_hmac`` with AUDIT_HMAC_KEY, ``ingest_signature`` = the producer's HMAC over the wire
JSON. Then the 06.21 retention tick runs at ``now`` (FACTS-2026.06 §6): partitions for the
current month + 3 are ensured and monthly partitions whose end <= now − 365 days are dropped,
which leaves every chain starting after seq 1.

Admin audit rows are written as Compose writes them at 06.21 (FACTS-2026.06 §4): zone rows
only (the global chain could never be written) and ``chain_hmac`` NULL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

from caracal_restore import chainhash
from caracal_restore.reference import schema
from caracal_restore.reference.gen_common import (
    AUDIT_RETENTION,
    US,
    UTC,
    Context,
    ZoneState,
    compact,
    copy_rows,
    go_time,
    iso_millis,
    span_start,
)

EXPORT_WATERMARK_NAME = "parquet-hourly"
EVENT_TYPES = (
    ("token_exchange", 55),
    ("gateway_resource_request", 30),
    ("control.invoke", 7),
    ("step_up_issued", 3),
    ("step_up_consumed", 2),
    ("replay_detected", 2),
    ("jti_collision", 1),
)
_WIRE_KEYS = ("id", "zone_id", "event_type", "request_id", "decision")
_WIRE_OPTIONAL = ("policy_set_id", "policy_set_version_id", "manifest_sha")


def audit_wire_json(event: Mapping[str, Any]) -> bytes:
    """The ``data`` a Go producer sends: struct key order, omitempty fields, raw JSON inlined.

    The three JSON fields are taken as the producer's own bytes (``event[...]`` texts).
    """
    parts = [f'"{k}":{compact(event[k] or "")}' for k in _WIRE_KEYS]
    parts += [f'"{k}":{compact(event[k])}' for k in _WIRE_OPTIONAL if event[k]]
    parts.append(f'"evaluation_status":{compact(event["evaluation_status"] or "")}')
    parts.append(f'"determining_policies_json":{event["determining_policies_json"] or "null"}')
    parts.append(f'"diagnostics_json":{event["diagnostics_json"] or "null"}')
    if event["metadata_json"]:
        parts.append(f'"metadata_json":{event["metadata_json"]}')
    parts.append(f'"occurred_at":"{go_time(event["occurred_at"])}"')
    return ("{" + ",".join(parts) + "}").encode()


def _wire_fast(event: dict[str, Any], objects: tuple[Any, Any, Any]) -> bytes:
    """Same bytes as ``audit_wire_json`` from the JSON objects, with a single dumps call."""
    doc: dict[str, Any] = {k: event[k] or "" for k in _WIRE_KEYS}
    doc.update((k, event[k]) for k in _WIRE_OPTIONAL if event[k])
    doc["evaluation_status"] = event["evaluation_status"] or ""
    doc["determining_policies_json"], doc["diagnostics_json"] = objects[0], objects[1]
    if objects[2] is not None:
        doc["metadata_json"] = objects[2]
    doc["occurred_at"] = go_time(event["occurred_at"])
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _event(
    ctx: Context, zone: ZoneState, routed: list[str], etype: str, occurred: dt.datetime
) -> tuple[dict[str, Any], tuple[Any, Any, Any]]:
    """One event as its producer would emit it, plus its three JSON objects."""
    rng = ctx.rng
    psv, sha = "", ""
    for set_version, set_sha, when in zone.set_versions:
        if when <= occurred:
            psv, sha = set_version, set_sha
    app = rng.choice(zone.managed_apps)
    resource = rng.choice(routed)
    decision = "allow" if rng.random() < 0.85 else "deny"
    status = "complete"
    determining: Any = []
    diagnostics: Any = []
    metadata: Any
    if etype == "token_exchange":
        if decision == "allow":
            determining = [zone.policy_id]
        else:
            diagnostics = [{"code": "policy_denied", "message": "no rule matched"}]
        metadata = {
            "application_id": app,
            "resource": resource,
            "requested_scopes": rng.sample(["read", "write"], rng.randint(0, 2)),
            "session_id": ctx.id_at(occurred),
            "agent_session_id": "",
            "delegation_edge_id": "",
            "runtime_credential_injection": False,
        }
        if rng.random() < 0.2:
            metadata["agent_session_id"] = ctx.id_at(occurred)
            metadata["agent_labels"] = rng.sample(["researcher", "planner", "executor"], 2)
    elif etype == "gateway_resource_request":
        status, psv, sha = "executed", "", ""
        metadata = {
            "resource": resource,
            "method": rng.choice(["GET", "POST"]),
            "path": f"/v1/items/{rng.randint(1, 9999)}",
            "status": rng.choice([200, 200, 201, 403]),
            "upstream_latency_ms": round(rng.uniform(1, 250), 3),
            "application_id": app,
        }
    elif etype.startswith("step_up"):
        decision = "pending" if etype == "step_up_issued" else "consumed"
        metadata = {
            "challenge_id": ctx.id_at(occurred),
            "tier": "high",
            "approver": {"class": "human", "note": "revu par l'équipe ✓"},
        }
    elif etype == "control.invoke":
        psv, sha = "", ""
        metadata = None if rng.random() < 0.5 else {"operation": "zones.list", "ok": True}
    else:  # replay_detected, jti_collision
        decision = "deny"
        metadata = {"jti": ctx.id_at(occurred), "resource": resource,
                    "nested": {"b": [1, 2.5], "a": None}}
    event = {
        "id": ctx.id_at(occurred),
        "zone_id": zone.id,
        "event_type": etype,
        "request_id": ctx.id_at(occurred),
        "decision": decision,
        "policy_set_id": "",  # the STS leaves it empty
        "policy_set_version_id": psv,
        "manifest_sha": sha,
        "evaluation_status": status,
        "occurred_at": occurred,
    }
    return event, (determining, diagnostics, metadata)


def _busy_offsets(rng: Any, span_us: int, volume: Any) -> list[int]:
    """Event offsets (µs from the span's start) grouped into busy hours of the span."""
    hour_us = 3600 * 1_000_000
    span_hours = max(span_us // hour_us, 1)
    per_hour = max(int(volume.audit_events_per_busy_hour), 1)
    busy = min(span_hours, -(-volume.audit_events // per_hour) or 1)
    hours = rng.sample(range(span_hours), busy)
    # The span's first month always sees traffic, so retention leaves holes in every run.
    hours[0] = rng.randrange(min(span_hours, 24 * 28))
    return [min(rng.choice(hours) * hour_us + rng.randrange(hour_us), span_us - 1)
            for _ in range(volume.audit_events)]


def build_audit_events(ctx: Context) -> list[dict[str, Any]]:
    """Events in ingestion order, each with its producer JSON texts and producer signature."""
    rng, now, volume = ctx.rng, ctx.now, ctx.volume
    start = span_start(now, volume.months)
    span_us = max((now - start) // US - 1_000_000, 1)
    offsets = sorted(_busy_offsets(rng, span_us, volume))
    late = set(rng.sample(range(len(offsets)), min(volume.late_audit_events, len(offsets))))
    zones = ctx.zones
    weights = [max(1, 3 - z.index) for z in zones]
    routed = {z.id: [r["identifier"] for r in (ctx.routed_resources(z) or z.resources)]
              for z in zones}
    types = [t for t, _ in EVENT_TYPES]
    type_weights = [w for _, w in EVENT_TYPES]
    events: list[dict[str, Any]] = []
    for i, off in enumerate(offsets):
        occurred = start + dt.timedelta(microseconds=off)
        zone = rng.choices(zones, weights)[0]
        event, objects = _event(ctx, zone, routed[zone.id], rng.choices(types, type_weights)[0],
                                occurred)
        delay = dt.timedelta(microseconds=rng.randint(300, 2_000_000))
        if i in late:  # drained from a replay file days later (FACTS-1.0 §4.8)
            delay = dt.timedelta(days=rng.randint(3, 20), microseconds=rng.randrange(10**6))
        event["ingested_at"] = min(occurred + delay, now)
        event["ingest_signature"] = chainhash.producer_signature(
            ctx.audit_key, _wire_fast(event, objects))
        event["determining_policies_json"] = compact(objects[0])
        event["diagnostics_json"] = compact(objects[1])
        event["metadata_json"] = compact(objects[2]) if objects[2] is not None else None
        events.append(event)
    events.sort(key=lambda e: (e["ingested_at"], e["id"]))
    return events


def canonicalise(conn: psycopg.Connection, events: list[dict[str, Any]]) -> None:
    """Replace each JSON text by the server's own ``jsonb::text`` (one COPY, one SELECT)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _reference_json"
        " (ord integer PRIMARY KEY, dp jsonb, diag jsonb, meta jsonb) ON COMMIT DROP"
    )
    stmt = "COPY _reference_json (ord, dp, diag, meta) FROM STDIN"
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for i, e in enumerate(events):
            copy.write_row(
                (i, e["determining_policies_json"], e["diagnostics_json"], e["metadata_json"])
            )
    rows = conn.execute(
        "SELECT ord, dp::text, diag::text, meta::text FROM _reference_json ORDER BY ord"
    ).fetchall()
    for i, dp, diag, meta in rows:
        e = events[i]
        e["determining_policies_json"], e["diagnostics_json"], e["metadata_json"] = dp, diag, meta


def chain(events: list[dict[str, Any]], key: bytes) -> None:
    """Content hash, prev link, HMAC and seq per zone, in ingestion order."""
    heads: dict[str, tuple[str, int]] = {}
    text_fields, json_fields = chainhash.AUDIT_TEXT_FIELDS, chainhash.AUDIT_JSON_FIELDS
    for e in events:
        fields = [e[f] or "" for f in text_fields] + [e[f] or "null" for f in json_fields]
        content = chainhash.content_hash_parts(fields, (e["occurred_at"] - chainhash.EPOCH) // US)
        prev, seq = heads.get(e["zone_id"], ("", 0))
        e["content_sha256"] = content
        e["prev_content_sha256"] = prev or None
        e["chain_hmac"] = chainhash.chain_hmac(key, content, prev)
        e["chain_seq"] = seq + 1
        heads[e["zone_id"]] = (content, seq + 1)


def retention_loop(
    conn: psycopg.Connection, now: dt.datetime, retention: dt.timedelta = AUDIT_RETENTION
) -> tuple[list[str], list[str]]:
    """The 06.21 audit retention tick: ensure current..+3 months, drop expired partitions."""
    this_month = schema.month_start(now.astimezone(UTC).date())
    for n in range(4):
        schema.ensure_partition(conn, schema.add_months(this_month, n))
    cutoff = now - retention
    dropped: list[str] = []
    for name in schema.monthly_partitions(conn):
        month = dt.date(int(name[14:18]), int(name[19:21]), 1)
        if schema.partition_bounds(month)[1] <= cutoff:
            dropped.append(schema.drop_partition(conn, month))
    return schema.monthly_partitions(conn), dropped


def write_audit(
    conn: psycopg.Connection,
    ctx: Context,
    before_retention: Callable[[psycopg.Connection, dt.datetime], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Generate, chain and COPY the audit events; then run the retention tick at ``now``.

    ``before_retention(conn, watermark)`` runs between the two — where the hourly exporter
    has already archived the events that retention is about to drop.
    """
    events = build_audit_events(ctx)
    with conn.transaction():
        canonicalise(conn, events)
        chain(events, ctx.audit_key)
        copy_rows(conn, "audit_events", events)
    if before_retention is not None:
        before_retention(conn, export_watermark(ctx.now))
    return retention_loop(conn, ctx.now)


def admin_hash_fields(row: Mapping[str, Any], payload_text: str) -> list[str]:
    """The admin audit content-hash inputs of a row (``payload_text`` = JSON.stringify or '')."""
    return [
        *(row[k] or "" for k in ("id", "request_id", "actor_id", "actor_name", "actor_scope",
                                 "action", "method", "path", "zone_id", "entity_type",
                                 "entity_id")),
        str(row["status_code"]),
        payload_text,
        iso_millis(row["occurred_at"]),
    ]


def write_admin_audit(conn: psycopg.Connection, ctx: Context) -> None:
    """Admin audit rows per zone chain, as Compose writes them (no HMAC key, no global rows)."""
    rng, zones = ctx.rng, ctx.zones
    start = span_start(ctx.now, ctx.volume.months)
    times = sorted(ctx.between(start, ctx.now) for _ in range(ctx.volume.admin_audit_events))
    heads: dict[str, tuple[str, int]] = {}
    rows = []
    for raw in times:
        at = raw.replace(microsecond=raw.microsecond // 1000 * 1000)
        zone = rng.choice(zones)
        if rng.random() < 0.7:  # API onResponse hook row
            entity = rng.choice(["applications", "resources", "policies", "grants"])
            method = rng.choice(["POST", "PATCH", "DELETE"])
            actor = (ctx.bootstrap_token_id, "bootstrap", "global")
            path = f"/v1/zones/{zone.id}/{entity}"
            payload: str | None = compact({"rls_mode": "zone_scoped", "rls_zone_guc": zone.id})
            action = f"{method} /v1/zones/:zoneId/{entity}"
            status = 201 if method == "POST" else 200
        else:  # Coordinator operator row, no payload
            agent = rng.choice(zone.agents)["id"] if zone.agents else ctx.id_at(at)
            entity, method, payload, action, status = "agents", "PATCH", None, "agent.suspend", 200
            actor = ("caracal-operator", "caracal-operator", "coordinator.admin")
            path = f"/zones/{zone.id}/agents/{agent}/suspend"
        row: dict[str, Any] = {
            "id": ctx.id_at(at), "request_id": ctx.id_at(at), "actor_id": actor[0],
            "actor_name": actor[1], "actor_scope": actor[2], "action": action,
            "method": method, "path": path, "zone_id": zone.id, "entity_type": entity,
            "entity_id": ctx.id_at(at), "status_code": status, "payload_json": payload,
            "occurred_at": at,
        }
        content = chainhash.admin_content_hash(admin_hash_fields(row, payload or ""))
        prev, seq = heads.get(zone.id, ("", 0))
        row.update(content_sha256=content, prev_content_sha256=prev or None, chain_hmac=None,
                   chain_seq=seq + 1)
        heads[zone.id] = (content, seq + 1)
        rows.append(row)
    copy_rows(conn, "admin_audit_events", rows)


def export_watermark(now: dt.datetime) -> dt.datetime:
    """The exporter's target hour at ``now``: the current UTC hour truncated, minus one hour."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


def write_markers(conn: psycopg.Connection, ctx: Context) -> dt.datetime:
    """The rehash marker row and the ``parquet-hourly`` export watermark; returns the latter."""
    conn.execute("INSERT INTO audit_chain_rehash (id, completed_at) VALUES (1, %s)",
                 (ctx.installed + dt.timedelta(minutes=3),))
    watermark = export_watermark(ctx.now)
    saved = min(ctx.now, watermark + dt.timedelta(hours=1, seconds=65))
    conn.execute(
        "INSERT INTO audit_export_watermark (name, last_exported_hour, updated_at)"
        " VALUES (%s, %s, %s)",
        (EXPORT_WATERMARK_NAME, watermark, saved),
    )
    return watermark

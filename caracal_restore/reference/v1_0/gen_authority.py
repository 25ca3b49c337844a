"""Reference generator 1.0, authority and Coordinator state: authority records, governed
Sessions, topology, services, invocations, delegation edges, grants, step-up challenges,
idempotency receipts and the Coordinator outbox.

The shapes and planned states come from the 2026.06 builders (``gen_sessions``,
``gen_agents``), whose lineage and agent logic is the same at 1.0; ``convert`` then writes
them the way 1.0 stores them (FACTS-1.0 §2.6, §9.1, §12.2–12.3, §18):

- STS lineage rows become ``authority_records`` with ``revoked_at``/``revoked_reason`` (set by
  the API for a revoked grant, by STS when it consumed a Coordinator revocation); the API
  reaper has marked active records past ``expires_at`` (by more than its 300 s period)
  ``expired``.
- Agent rows become governed ``sessions`` (``started_at``, ``subject_authority_record_id``,
  ``termination_reason``, ``lease_generation``): a root task ended by the TTL sweeper is
  ``expired``, a descendant of an ended parent ``terminated``/``parent_terminated``; a
  termination also revoked the active delegation edges touching the session.
- Recent Coordinator creates carry idempotency receipts: ``key_digest`` =
  HMAC-SHA256(IDEMPOTENCY_HMAC_KEY, ``caracal:coordinator:idempotency:v1\\0`` ‖ key),
  ``request_digest`` = SHA-256 of the canonical JSON request, expiry 7 days after.
- Sessions retention (§12.2 step 3): every terminal Session is inside SESSION_RETENTION_DAYS
  except one tree in the first zone, a root and its child terminated together just past the
  window: the cleaner has not run since, and it deletes leaf-first, so the root is kept while
  its child exists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.reference import gen_agents, gen_sessions
from caracal_restore.reference.gen_common import OUTBOX_RETENTION, Context, ZoneState, compact

RETENTION = dict(PROFILE.retention_defaults)
IDEMPOTENCY_RETENTION = dt.timedelta(seconds=RETENTION["IDEMPOTENCY_RETENTION_SECONDS"])
SESSION_RETENTION = dt.timedelta(days=RETENTION["SESSION_RETENTION_DAYS"])
#: How long before ``now`` the retained tree crossed SESSION_RETENTION_DAYS (less than one
#: RETENTION_CLEANUP_INTERVAL_MS: no cleaner run since).
PAST_SESSION_WINDOW = dt.timedelta(minutes=10)
REAPER_PERIOD = dt.timedelta(seconds=300)
#: How long after the Coordinator published a revocation STS applied it.
STS_APPLY_DELAY = dt.timedelta(milliseconds=40)


@dataclasses.dataclass(frozen=True)
class Receipt:
    """An idempotency receipt's plaintext key (kept so tests can recompute the digest)."""

    receipt_id: str
    operation: str
    key: str


def key_digest(key: bytes, idempotency_key: str) -> bytes:
    """``key_digest`` of a receipt (FACTS-1.0 §2.6)."""
    message = PROFILE.idempotency_key_prefix + idempotency_key.encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def request_digest(request: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical (sorted-key, compact) JSON of a request body."""
    text = json.dumps(dict(request), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


def build(ctx: Context) -> None:
    """Lineage, agents, edges, grants and step-up in the 2026.06 shapes (same ids)."""
    for step in (gen_sessions.build_sessions, gen_agents.build_agents, gen_agents.build_edges,
                 gen_sessions.build_delegated_grants, gen_sessions.build_step_up):
        step(ctx)


def convert(ctx: Context, idempotency_key: bytes) -> list[Receipt]:
    """Rewrite the built rows as 1.0 stores them; returns the receipts' plaintext keys."""
    revocations = _revocation_times(ctx)
    for zone in ctx.zones:
        _authority_records(ctx, zone, revocations)
    ctx.rows["agent_topology"] = [{"parent_id": r["parent_id"], "child_id": r["child_id"]}
                                  for r in ctx.rows["agent_topology"]]
    for zone in ctx.zones:
        ctx.rows["sessions"] += _sessions(ctx, zone)
    _revoke_edges_of_ended_sessions(ctx)
    ctx.rows["agent_services"], ctx.rows["agent_invocations"] = [], []
    for zone in ctx.zones:
        _services_and_invocations(ctx, zone)
    _lifecycle_outbox(ctx)
    for row in ctx.rows["step_up_challenges"]:
        row["subject_anchor"] = row["session_id"]
        row["consumed_authority_record_id"] = row["session_id"] if row["consumed_at"] else None
    receipts = _receipts(ctx, idempotency_key)
    _session_tree_past_the_window(ctx)
    return receipts


# ------------------------------------------------------------------- authority records


def _revocation_times(ctx: Context) -> dict[str, tuple[dt.datetime, str]]:
    """session_id -> (when it was revoked, reason) for each applied revocation event."""
    out: dict[str, tuple[dt.datetime, str]] = {}

    def note(sid: str, at: dt.datetime, reason: str) -> None:
        if sid not in out or at < out[sid][0]:
            out[sid] = (at, reason)

    for row in ctx.rows["event_outbox"]:  # the API revoked in the same transaction
        payload = json.loads(row["payload_json"])
        if row["stream_name"] == "caracal.sessions.revoke" and "session_id" in payload:
            note(payload["session_id"], row["created_at"], payload.get("reason", ""))
    for row in ctx.rows["caracal_outbox"]:  # STS applied what it consumed
        payload = json.loads(row["payload_json"])
        if (row["topic"] == "caracal.sessions.revoke" and row["status"] == "published"
                and "session_id" in payload):
            note(payload["session_id"], row["published_at"] + STS_APPLY_DELAY,
                 payload.get("reason", ""))
    # Coordinator events whose published outbox rows retention has already deleted: the
    # subject was revoked when the agent stopped or the edge was revoked (gen_agents' rule).
    settle = dt.timedelta(seconds=1)
    for zone in ctx.zones:
        agents = {a["id"]: a for a in zone.agents}
        for agent in zone.agents:
            if agent["status"] == "suspended":
                note(agent["subject_session_id"], agent["updated_at"] + settle,
                     "service_heartbeat_lost")
            elif agent["status"] == "terminated" and agent["parent_id"] is None:
                ttl = agent["terminated_at"] - agent["spawned_at"] == dt.timedelta(hours=1)
                note(agent["subject_session_id"], agent["terminated_at"] + settle,
                     "ttl" if ttl else "manual")
        for edge in ctx.rows["delegation_edges"]:
            target = agents.get(edge["target_session_id"])
            if edge["status"] == "revoked" and target is not None:
                note(target["subject_session_id"], edge["revoked_at"] + settle,
                     "delegation_revoked")
    return out


def _authority_records(ctx: Context, zone: ZoneState,
                       revocations: Mapping[str, tuple[dt.datetime, str]]) -> None:
    """1.0 rows of the zone's lineage: revocation time/reason inherited down the tree."""
    by_id = {s["id"]: s for s in zone.sessions}
    for record in zone.sessions:
        record["revoked_at"] = record["revoked_reason"] = None
        if record["status"] == "revoked":
            at, reason = _first_revocation(record, by_id, revocations)
            record["revoked_at"] = max(at, record["created_at"])
            record["revoked_reason"] = reason or "session_revoked"
        elif record["status"] == "active" and record["expires_at"] < ctx.now - REAPER_PERIOD:
            record["status"] = "expired"  # the API authority-record reaper (§12.3)
        ctx.rows["authority_records"].append(
            {k: v for k, v in record.items() if not k.startswith("_")})


def _first_revocation(record: Mapping[str, Any], by_id: Mapping[str, Mapping[str, Any]],
                      revocations: Mapping[str, tuple[dt.datetime, str]]
                      ) -> tuple[dt.datetime, str]:
    """The earliest revocation of the record or an ancestor (RevokeAuthorityRecord recurses)."""
    found: list[tuple[dt.datetime, str]] = []
    node: Mapping[str, Any] | None = record
    while node is not None:
        if node["id"] in revocations:
            found.append(revocations[node["id"]])
        node = by_id.get(node["parent_id"]) if node["parent_id"] else None
    return min(found) if found else (record["created_at"], "")


# ------------------------------------------------------------------------- sessions


def _sessions(ctx: Context, zone: ZoneState) -> list[dict[str, Any]]:
    """Governed Sessions (1.0 columns), oldest first."""
    by_id = {a["id"]: a for a in zone.agents}
    rows = []
    for agent in sorted(zone.agents, key=lambda a: a["spawned_at"]):
        status, reason = agent["status"], None
        if status == "terminated":
            parent = by_id.get(agent["parent_id"]) if agent["parent_id"] else None
            ttl = agent["ttl_seconds"]
            if parent is not None and parent["status"] == "terminated" and (
                    parent["terminated_at"] == agent["terminated_at"]):
                reason = "parent_terminated"
            elif parent is None and ttl and (agent["terminated_at"] - agent["spawned_at"]
                                             == dt.timedelta(seconds=ttl)):
                status, reason = "expired", "ttl"  # the TTL sweeper ends roots as expired
            else:
                reason = "requested"
        rows.append({
            "id": agent["id"], "zone_id": zone.id, "application_id": agent["application_id"],
            "parent_id": agent["parent_id"],
            "subject_authority_record_id": agent["subject_session_id"], "status": status,
            "depth": agent["depth"], "labels": agent["labels"],
            "max_children": agent["max_children"], "child_count": agent["child_count"],
            "started_at": agent["spawned_at"], "last_active_at": agent["last_active_at"],
            "terminated_at": agent["terminated_at"], "ttl_seconds": agent["ttl_seconds"],
            "metadata_json": agent["metadata_json"], "updated_at": agent["updated_at"],
            "lifecycle": agent["lifecycle"], "last_heartbeat_at": agent["last_heartbeat_at"],
            "heartbeat_deadline_at": agent["heartbeat_deadline_at"],
            "termination_reason": reason,
            "lease_generation": 1 + ctx.rng.randrange(3) if agent["lifecycle"] == "service"
            else 0,
        })
    return rows


def _revoke_edges_of_ended_sessions(ctx: Context) -> None:
    """A 1.0 termination revoked the active edges touching the session (epoch bump each)."""
    ended = {s["id"]: s["terminated_at"] for s in ctx.rows["sessions"]
             if s["status"] in ("terminated", "expired")}
    epochs = {e["zone_id"]: e for e in ctx.rows["delegation_graph_epochs"]}
    for edge in ctx.rows["delegation_edges"]:
        ends = [ended[s] for s in (edge["source_session_id"], edge["target_session_id"])
                if s in ended]
        if edge["status"] != "active" or not ends:
            continue
        at = max(min(ends), edge["created_at"])
        edge.update(status="revoked", revoked_at=at, updated_at=at,
                    edge_version=edge["edge_version"] + 1)
        epoch = epochs[edge["zone_id"]]
        epoch["epoch"] += 1
        epoch["updated_at"] = max(epoch["updated_at"], at)


def _services_and_invocations(ctx: Context, zone: ZoneState) -> None:
    """Service registry entries (1.0 columns) and a few invocations from tasks to services."""
    sessions = [s for s in ctx.rows["sessions"] if s["zone_id"] == zone.id]
    services = [s for s in sessions if s["lifecycle"] == "service"]
    registry = []
    for si, session in enumerate(services):
        row = {
            "id": ctx.id_at(session["started_at"]), "zone_id": zone.id,
            "application_id": session["application_id"],
            "endpoint_url": f"http://agents.caracal.test/service-{zone.index}-{si + 1}",
            "protocol_versions": ["a2a/0.3"], "capabilities": ["summarise"],
            "health": "healthy" if session["status"] == "active" else "unreachable",
            "metadata_json": compact({"session_id": session["id"]}),
            "last_heartbeat_at": session["last_heartbeat_at"],
            "created_at": session["started_at"], "updated_at": session["updated_at"],
        }
        registry.append(row)
        ctx.rows["agent_services"].append(row)
    tasks = [s for s in sessions if s["lifecycle"] == "task"]
    for ii in range(min(3, len(tasks))):
        source = tasks[ii]
        service = registry[ii % len(registry)] if registry else None
        target = services[ii % len(services)] if services else None
        at = ctx.between(source["started_at"], source["terminated_at"] or ctx.now)
        status = ("completed", "failed", "pending")[ii % 3]
        ctx.rows["agent_invocations"].append({
            "id": ctx.id_at(at), "zone_id": zone.id,
            "service_id": service["id"] if service else None,
            "source_session_id": source["id"], "target_session_id": target["id"] if target
            else None, "method": "summarise", "params_json": compact({"task": "summarise"}),
            "status": status, "attempts": 1,
            "error_json": compact({"error": "upstream timeout"}) if status == "failed" else None,
            "deadline_at": max(at, ctx.now) + dt.timedelta(minutes=10),
            "started_at": at if status != "pending" else None,
            "completed_at": at + dt.timedelta(seconds=2) if status != "pending" else None,
            "created_at": at, "updated_at": at,
        })


def _lifecycle_outbox(ctx: Context) -> None:
    """``caracal.agents.lifecycle`` spawn events of the sessions started in the outbox window."""
    for session in ctx.rows["sessions"]:
        at = session["started_at"]
        if at < ctx.now - OUTBOX_RETENTION + dt.timedelta(hours=1):
            continue
        ctx.coordinator_outbox("caracal.agents.lifecycle", f"spawn:{session['id']}", at, {
            "event": "spawn", "zone_id": session["zone_id"], "parent_id": session["parent_id"],
            "application_id": session["application_id"], "agent_session_id": session["id"],
        }, published=True)


def _session_tree_past_the_window(ctx: Context) -> None:
    """A root Session and its child, terminated together just past SESSION_RETENTION_DAYS.

    The root was ended by hand (``requested``) and took its child along
    (``parent_terminated``, same ``terminated_at``: the subtree is terminated in one
    statement, which leaves the root's ``child_count`` as it was). Both crossed the window
    ``PAST_SESSION_WINDOW`` ago and no cleaner run has happened since: the child is a leaf
    the next run deletes, the root is kept while its child exists (leaf-first). Their subject
    is an application's authority record, long expired (the API reaper marked it), so no
    revocation follows the termination. Built last, so the other rows keep their ids.
    """
    zone = ctx.zones[0]
    ended = ctx.now - SESSION_RETENTION - PAST_SESSION_WINDOW
    started = ended - dt.timedelta(minutes=30)
    if not zone.managed_apps or started - dt.timedelta(minutes=1) < zone.created_at + (
            dt.timedelta(hours=1)):
        return  # a zone younger than the window cannot hold such a tree
    app = zone.managed_apps[-1]  # not the canary's, when the zone has another
    minted = started - dt.timedelta(minutes=1)
    record = {
        "id": ctx.id_at(minted), "zone_id": zone.id, "session_type": "application",
        "subject_id": app, "parent_id": None, "status": "expired",
        "expires_at": minted + dt.timedelta(hours=1), "authenticated_at": minted,
        "claims_json": compact({"client_id": app, "sub_type": "application", "use": "session",
                                "scope": ""}),
        "created_at": minted, "revoked_at": None, "revoked_reason": None,
    }
    ctx.rows["authority_records"].append(record)
    root_id = ctx.id_at(started)
    child_started = started + dt.timedelta(minutes=5)
    child_id = ctx.id_at(child_started)
    for sid, parent, depth, at, reason in (
            (root_id, None, 0, started, "requested"),
            (child_id, root_id, 1, child_started, "parent_terminated")):
        ctx.rows["sessions"].append({
            "id": sid, "zone_id": zone.id, "application_id": app, "parent_id": parent,
            "subject_authority_record_id": record["id"], "status": "terminated",
            "depth": depth, "labels": ["planner"], "max_children": 10,
            "child_count": 1 if parent is None else 0, "started_at": at,
            "last_active_at": ended, "terminated_at": ended, "ttl_seconds": 3600,
            "metadata_json": compact({"purpose": "reference", "retention": "leaf-first"}),
            "updated_at": ended, "lifecycle": "task", "last_heartbeat_at": None,
            "heartbeat_deadline_at": None, "termination_reason": reason,
            "lease_generation": 0,
        })
    ctx.rows["agent_topology"].append({"parent_id": root_id, "child_id": child_id})


# ------------------------------------------------------------------- idempotency receipts


def _receipts(ctx: Context, idempotency_key: bytes) -> list[Receipt]:
    """Receipts of the session starts and delegation creates still inside their 7 days."""
    keys: list[Receipt] = []
    oldest = ctx.now - IDEMPOTENCY_RETENTION + dt.timedelta(minutes=20)
    creates: list[tuple[str, str, str, dt.datetime, str, dict[str, Any], dict[str, Any]]] = []
    for s in ctx.rows["sessions"]:
        if s["started_at"] >= oldest:
            request = {"application_id": s["application_id"], "labels": s["labels"],
                       "ttl_seconds": s["ttl_seconds"], "lifecycle": s["lifecycle"]}
            creates.append(("session.start.v2", s["zone_id"], s["application_id"],
                            s["started_at"], "session", request,
                            {"agent_session_id": s["id"], "status": "active",
                             "depth": s["depth"]}))
    for e in ctx.rows["delegation_edges"]:
        if e["created_at"] >= oldest:
            request = {"issuer_application_id": e["issuer_application_id"],
                       "source_session_id": e["source_session_id"],
                       "target_session_id": e["target_session_id"],
                       "receiver_application_id": e["receiver_application_id"],
                       "scopes": e["scopes"]}
            creates.append(("delegation.create.v2", e["zone_id"], e["issuer_application_id"],
                            e["created_at"], "delegation_edge", request,
                            {"delegation_edge_id": e["id"], "edge_version": 0}))
    for operation, zone_id, scope_id, at, kind, request, response in creates:
        if ctx.rng.random() < 0.4:  # callers that sent no idempotency-key header
            continue
        plain = f"idem-{ctx.hex(24)}"
        resource_id = response.get("agent_session_id") or response["delegation_edge_id"]
        row = {
            "id": ctx.id_at(at), "operation": operation, "zone_id": zone_id,
            "scope_id": scope_id, "key_digest": key_digest(idempotency_key, plain),
            "request_digest": request_digest(request), "resource_type": kind,
            "resource_id": resource_id, "response_status": 201,
            "response_json": compact(response), "created_at": at,
            "expires_at": at + IDEMPOTENCY_RETENTION,
        }
        ctx.rows["coordinator_idempotency_receipts"].append(row)
        keys.append(Receipt(row["id"], operation, plain))
    return keys

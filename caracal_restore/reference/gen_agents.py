"""Reference generator, Coordinator side: agent sessions, topology, services, invocations,
delegation edges, graph epochs and the Coordinator outbox.

States are consistent with the 06.21 sweepers at ``now`` (no active task past its TTL, no
service past its lease, no active edge past expiry) and with the retention cleaner (no
terminal edge older than DELEGATION_RETENTION_DAYS, no published row older than
OUTBOX_RETENTION_DAYS). A published revocation has had its STS effect (the subject session
is revoked); a pending one has not (FACTS-2026.06 §5.4).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from caracal_restore.reference.gen_common import (
    DELEGATION_RETENTION,
    OUTBOX_RETENTION,
    RETENTION,
    Context,
    ZoneState,
    compact,
)

#: The first agents of every zone, so each zone has every state the checks look at.
AGENT_PLAN = (
    "service_active",
    "service_suspended",
    "task_active",
    "task_terminated_recent",
    "task_terminated_now",
)


def build_agents(ctx: Context) -> None:
    """Agent sessions (task/service), topology, services, invocations."""
    for zone in ctx.zones:
        reserved: set[str] = set()
        for k in range(ctx.volume.agents_per_zone):
            plan = AGENT_PLAN[k] if k < len(AGENT_PLAN) else None
            _agent(ctx, zone, plan, reserved)
        for agent in zone.agents:
            agent["child_count"] = sum(1 for a in zone.agents if a["parent_id"] == agent["id"])
        _services_and_invocations(ctx, zone)


def _subject_for(
    ctx: Context, zone: ZoneState, spawned: dt.datetime, reserved: set[str], *, dedicated: bool
) -> str:
    """A root session created before ``spawned``; ``dedicated``: an unused user session."""
    before = [
        s
        for s in zone.sessions
        if s["created_at"] <= spawned and s["parent_id"] is None and s["id"] not in reserved
    ]
    if dedicated:
        used = {a["subject_session_id"] for a in zone.agents}
        free = [s for s in before if s["session_type"] == "user" and s["id"] not in used]
        if free:
            reserved.add(free[-1]["id"])
            return str(free[-1]["id"])
    pool = before[-3:] if before else zone.sessions[:1]
    return str(ctx.rng.choice(pool)["id"])


def _agent(ctx: Context, zone: ZoneState, plan: str | None, reserved: set[str]) -> None:
    """One agent: a child of an earlier task (unplanned only) or a root in a planned state."""
    parents = [
        a
        for a in zone.agents
        if a["lifecycle"] == "task"
        and a["status"] in ("active", "terminated")
        and sum(1 for c in zone.agents if c["parent_id"] == a["id"]) < a["max_children"]
    ]
    parent = (
        ctx.rng.choice(parents) if (plan is None and parents and ctx.rng.random() < 0.4) else None
    )
    row: dict[str, Any] = {
        "zone_id": zone.id,
        "application_id": ctx.rng.choice(zone.managed_apps),
        "parent_id": None,
        "depth": 0,
        "labels": sorted(
            ctx.rng.sample(["researcher", "planner", "executor", "reviewer"], ctx.rng.randint(1, 2))
        ),
        "max_children": 10,
        "child_count": 0,
        "ttl_seconds": 3600,
        "lifecycle": "task",
        "last_heartbeat_at": None,
        "heartbeat_deadline_at": None,
        "terminated_at": None,
        "idempotency_key": f"idem-{ctx.hex(16)}" if ctx.rng.random() < 0.3 else None,
        "metadata_json": compact({"purpose": "reference", "run": ctx.rng.randint(1, 999)}),
    }
    if parent is not None:
        spawned = _child_agent(ctx, row, parent)
    else:
        plan = plan or _random_plan(ctx.rng.random())
        spawned = _root_agent(ctx, row, plan)
        dedicated = plan in ("service_suspended", "task_terminated_recent", "task_terminated_now")
        row["subject_session_id"] = _subject_for(ctx, zone, spawned, reserved, dedicated=dedicated)
    row.update(id=ctx.id_at(spawned), spawned_at=spawned)
    zone.agents.append(row)
    if parent is not None:
        ctx.rows["agent_topology"].append(
            {"parent_id": parent["id"], "child_id": row["id"], "created_at": spawned}
        )


def _random_plan(roll: float) -> str:
    """The state of an unplanned root agent: mostly active or ended tasks, some services."""
    for limit, plan in (
        (0.12, "service_active"),
        (0.25, "service_suspended"),
        (0.65, "task_active"),
    ):
        if roll < limit:
            return plan
    return "task_terminated"


def _child_agent(ctx: Context, row: dict[str, Any], parent: dict[str, Any]) -> dt.datetime:
    """A task spawned by ``parent``; it shares the subject and ends with a terminated parent."""
    now = ctx.now
    row.update(
        parent_id=parent["id"],
        depth=parent["depth"] + 1,
        subject_session_id=parent["subject_session_id"],
    )
    spawned = ctx.between(parent["spawned_at"], parent["terminated_at"] or now)
    status = (
        "terminated"
        if parent["status"] == "terminated"
        else ctx.rng.choice(("active", "active", "terminated"))
    )
    if status == "terminated":
        ended = parent["terminated_at"] or ctx.between(spawned, now)
        row.update(terminated_at=ended, last_active_at=ended, updated_at=ended)
    else:
        row.update(last_active_at=ctx.between(spawned, now))
        row["updated_at"] = row["last_active_at"]
    row["status"] = status
    return spawned


def _root_agent(ctx: Context, row: dict[str, Any], plan: str) -> dt.datetime:
    """A root agent in the state ``plan`` names, consistent with the sweepers at ``now``."""
    now, lease = ctx.now, dt.timedelta(seconds=RETENTION["SERVICE_AGENT_LEASE_SECONDS"])
    if plan.startswith("service"):
        row.update(lifecycle="service", ttl_seconds=None)
        spawned = ctx.between(now - dt.timedelta(days=20), now - dt.timedelta(hours=2))
        if plan == "service_active":
            beat = now - dt.timedelta(seconds=ctx.rng.randint(5, 60))
            row.update(status="active", updated_at=beat)
        else:  # lease sweeper suspended it (service_heartbeat_lost)
            beat = ctx.between(
                max(spawned, now - dt.timedelta(days=2)), now - dt.timedelta(hours=1)
            )
            row.update(status="suspended", updated_at=beat + lease + dt.timedelta(seconds=20))
        row.update(last_heartbeat_at=beat, heartbeat_deadline_at=beat + lease, last_active_at=beat)
        return spawned
    if plan == "task_active":  # inside its TTL
        spawned = now - dt.timedelta(seconds=ctx.rng.randint(60, 3000))
        row.update(status="active", last_active_at=ctx.between(spawned, now))
        row["updated_at"] = row["last_active_at"]
        return spawned
    if plan == "task_terminated_now":  # terminated by hand minutes ago (event not yet out)
        spawned = now - dt.timedelta(seconds=ctx.rng.randint(1800, 3000))
        ended = now - dt.timedelta(seconds=ctx.rng.randint(120, 1200))
    elif plan == "task_terminated_recent":  # the TTL sweeper ended it in the last days
        spawned = ctx.between(now - dt.timedelta(days=3), now - dt.timedelta(hours=3))
        ended = spawned + dt.timedelta(seconds=3600)
    else:  # ended by the TTL sweeper or by hand, up to 60 days ago
        spawned = ctx.between(now - dt.timedelta(days=60), now - dt.timedelta(hours=2))
        ended = spawned + dt.timedelta(
            seconds=3600 if ctx.rng.random() < 0.5 else ctx.rng.randint(60, 3000)
        )
    row.update(status="terminated", terminated_at=ended, last_active_at=ended, updated_at=ended)
    return spawned


def _services_and_invocations(ctx: Context, zone: ZoneState) -> None:
    """A registry entry per service agent and a few invocations from tasks to services."""
    services = [a for a in zone.agents if a["lifecycle"] == "service"]
    for si, agent in enumerate(services):
        ctx.rows["agent_services"].append(
            {
                "id": ctx.id_at(agent["spawned_at"]),
                "zone_id": zone.id,
                "agent_session_id": agent["id"],
                "application_id": agent["application_id"],
                "name": f"reference-service-{si + 1}",
                "description": "Reference service",
                "status": "available" if agent["status"] == "active" else "unavailable",
                "metadata_json": compact({"version": "1"}),
                "created_at": agent["spawned_at"],
                "updated_at": agent["updated_at"],
            }
        )
    tasks = [a for a in zone.agents if a["lifecycle"] == "task"]
    zone_services = [s for s in ctx.rows["agent_services"] if s["zone_id"] == zone.id]
    for ii in range(min(3, len(tasks))):
        source = tasks[ii]
        service = zone_services[ii % len(zone_services)] if zone_services else None
        at = ctx.between(source["spawned_at"], source["terminated_at"] or ctx.now)
        status = ("completed", "failed", "pending")[ii % 3]
        ctx.rows["agent_invocations"].append(
            {
                "id": ctx.id_at(at),
                "zone_id": zone.id,
                "service_id": service["id"] if service else None,
                "source_session_id": source["id"],
                "target_session_id": service["agent_session_id"] if service else None,
                "status": status,
                "input_json": compact({"task": "summarise"}),
                "output_json": compact({"ok": True}) if status == "completed" else None,
                "error": "upstream timeout" if status == "failed" else None,
                "deadline_at": max(at, ctx.now) + dt.timedelta(minutes=10),
                "created_at": at,
                "updated_at": at,
                "completed_at": at + dt.timedelta(seconds=2) if status != "pending" else None,
            }
        )


def build_edges(ctx: Context) -> None:
    """Delegation edges (active, revoked, expired), epochs and Coordinator outbox rows."""
    for zone in ctx.zones:
        if len(zone.agents) < 2:
            _epoch(ctx, zone, [])
            continue
        mutations: list[tuple[dt.datetime, str, dict[str, Any]]] = []
        edges: list[dict[str, Any]] = []
        for _k in range(ctx.volume.edges_per_zone):
            source, target = ctx.rng.sample(zone.agents, 2)
            edges.append(_edge(ctx, zone, source, target, edges, mutations))
        edges.sort(key=lambda e: e["created_at"])
        ctx.rows["delegation_edges"] += edges
        _epoch(ctx, zone, mutations)
    _agent_lifecycle_outbox(ctx)


def _edge(
    ctx: Context,
    zone: ZoneState,
    source: dict[str, Any],
    target: dict[str, Any],
    earlier: list[dict[str, Any]],
    mutations: list[tuple[dt.datetime, str, dict[str, Any]]],
) -> dict[str, Any]:
    """One edge between two agents; revoked/expired ones stay inside the retention window."""
    now = ctx.now
    lower = max(
        source["spawned_at"],
        target["spawned_at"],
        now - DELEGATION_RETENTION + dt.timedelta(days=2),
    )
    roll = ctx.rng.random()
    status = "active"
    if lower < now - dt.timedelta(minutes=10):
        status = "revoked" if roll < 0.3 else "expired" if roll < 0.45 else "active"
    created = (
        ctx.between(lower, now - dt.timedelta(minutes=5))
        if status != "active"
        else ctx.between(lower, now)
    )
    chain = [
        e for e in earlier if e["target_session_id"] == source["id"] and e["created_at"] <= created
    ]
    routed = ctx.routed_resources(zone)
    row: dict[str, Any] = {
        "id": ctx.id_at(created),
        "zone_id": zone.id,
        "source_session_id": source["id"],
        "target_session_id": target["id"],
        "issuer_application_id": source["application_id"],
        "receiver_application_id": target["application_id"],
        "resource_id": ctx.rng.choice(routed)["id"] if routed and ctx.rng.random() < 0.7 else None,
        "scopes": ["read"],
        "constraints_json": compact({"max_hops": 2}),
        "status": status,
        "edge_version": 0,
        "revoked_at": None,
        "created_at": created,
        "updated_at": created,
        "parent_edge_id": chain[-1]["id"] if chain else None,
    }
    mutations.append((created, "create", row))
    if status == "active":
        row["expires_at"] = now + dt.timedelta(hours=ctx.rng.randint(1, 168))
    elif status == "revoked":
        revoked = ctx.between(created + dt.timedelta(seconds=1), now)
        row.update(
            revoked_at=revoked,
            updated_at=revoked,
            edge_version=1,
            expires_at=created + dt.timedelta(days=ctx.rng.randint(1, 30)),
        )
        mutations.append((revoked, "revoke", row))
    else:
        expires = ctx.between(created + dt.timedelta(minutes=1), now - dt.timedelta(minutes=2))
        row.update(
            expires_at=expires,
            updated_at=min(now, expires + dt.timedelta(seconds=ctx.rng.randint(1, 900))),
        )
        mutations.append((row["updated_at"], "expire", row))
    return row


def _epoch(
    ctx: Context, zone: ZoneState, mutations: list[tuple[dt.datetime, str, dict[str, Any]]]
) -> None:
    """Number the zone's graph mutations (the epoch) and emit their outbox effects."""
    mutations.sort(key=lambda m: m[0])
    for epoch, (at, kind, edge) in enumerate(mutations, start=1):
        if kind == "revoke":
            _revocation(
                ctx,
                zone,
                at,
                edge["target_session_id"],
                extra={"delegation_edge_id": edge["id"], "reason": "delegation_revoked"},
                dedupe=f"delegation:{edge['id']}:subject:{{subject}}",
            )
        elif kind == "expire" and at >= ctx.now - OUTBOX_RETENTION:
            ctx.coordinator_outbox(
                "caracal.delegations.invalidate",
                f"edge_expire:{zone.id}:{epoch}",
                at,
                {
                    "event": "edge_expire",
                    "zone_id": zone.id,
                    "affected_edges": 1,
                    "edge_ids": [edge["id"]],
                    "epoch": epoch,
                },
                published=True,
            )
    last = mutations[-1][0] if mutations else zone.created_at
    ctx.rows["delegation_graph_epochs"].append(
        {"zone_id": zone.id, "epoch": len(mutations), "updated_at": last}
    )


def _agent_lifecycle_outbox(ctx: Context) -> None:
    """Suspend/terminate revocation events of root agents (subtree operations)."""
    for zone in ctx.zones:
        for agent in zone.agents:
            if agent["status"] == "suspended":
                at = agent["updated_at"]
                _revocation(
                    ctx,
                    zone,
                    at,
                    agent["id"],
                    extra={"reason": "service_heartbeat_lost"},
                    dedupe=f"agent_suspend:{agent['id']}",
                )
            elif agent["status"] == "terminated" and agent["parent_id"] is None:
                at = agent["terminated_at"]
                reason = "ttl" if at - agent["spawned_at"] == dt.timedelta(hours=1) else "manual"
                _revocation(
                    ctx,
                    zone,
                    at,
                    agent["id"],
                    extra={"reason": reason},
                    dedupe=f"agent_terminate:{agent['id']}",
                )


def _revocation(
    ctx: Context,
    zone: ZoneState,
    at: dt.datetime,
    agent_id: str,
    *,
    extra: Mapping[str, Any],
    dedupe: str,
) -> None:
    """A Coordinator caracal.sessions.revoke event and, once published, its STS effect.

    ``dedupe`` is the dedupe key; ``{subject}`` in it is replaced by the subject session id.
    """
    agent = next(a for a in zone.agents if a["id"] == agent_id)
    subject_id = agent["subject_session_id"]
    subject = next(s for s in zone.sessions if s["id"] == subject_id)
    if subject["session_type"] == "application":
        return
    others = [
        a
        for a in zone.agents
        if a["subject_session_id"] == subject_id
        and a["id"] != agent_id
        and a["status"] in ("active", "suspended")
    ]
    if others:
        return
    payload = {"zone_id": zone.id, "session_id": subject_id, "agent_session_id": agent_id, **extra}
    recent = at >= ctx.now - OUTBOX_RETENTION + dt.timedelta(hours=1)
    pending = at >= ctx.now - dt.timedelta(minutes=30)
    if recent:
        ctx.coordinator_outbox(
            "caracal.sessions.revoke",
            dedupe.format(subject=subject_id),
            at,
            payload,
            published=not pending,
        )
    if not pending:  # STS consumed the published entry (older rows were already pruned)
        ctx.revoke_session_tree(zone, subject_id)

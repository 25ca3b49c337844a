"""Reference generator, STS side: token lineage sessions, access grants, step-up challenges.

A revoked access grant revokes its user's active sessions and queues one
``caracal.sessions.revoke`` event per session in ``event_outbox`` (FACTS-2026.06 §2.4, §5.2).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from caracal_restore.reference.gen_common import Context, ZoneState, compact


def build_sessions(ctx: Context) -> None:
    """STS token lineage: application and user sessions, resource mandates as children."""
    for zone in ctx.zones:
        roots: list[dict[str, Any]] = []
        for k in range(ctx.volume.sessions_per_zone):
            parent = (
                roots[ctx.rng.randrange(len(roots))] if (roots and ctx.rng.random() < 0.3) else None
            )
            if parent is not None:
                created = min(
                    ctx.now, parent["created_at"] + dt.timedelta(seconds=ctx.rng.randint(1, 600))
                )
                session = _session(
                    ctx,
                    zone,
                    created,
                    parent["session_type"],
                    parent["subject_id"],
                    parent["_client"],
                    parent=parent,
                    ttl=900,
                )
            else:
                created = _session_time(ctx, zone, k)
                if ctx.rng.random() < 0.4 or not zone.users:
                    app = ctx.rng.choice(zone.managed_apps)
                    session = _session(ctx, zone, created, "application", app, app)
                else:
                    session = _session(
                        ctx,
                        zone,
                        created,
                        "user",
                        ctx.rng.choice(zone.users),
                        ctx.rng.choice(zone.managed_apps),
                    )
                roots.append(session)
        zone.sessions.sort(key=lambda s: s["created_at"])


def _session_time(ctx: Context, zone: ZoneState, k: int) -> dt.datetime:
    roll = ctx.rng.random()
    if k < 2 or roll < 0.3:
        return ctx.between(ctx.now - dt.timedelta(hours=2), ctx.now - dt.timedelta(seconds=30))
    if roll < 0.6:
        return ctx.between(ctx.now - dt.timedelta(days=30), ctx.now)
    return ctx.between(zone.created_at + dt.timedelta(days=1), ctx.now)


def _session(
    ctx: Context,
    zone: ZoneState,
    created: dt.datetime,
    kind: str,
    subject: str,
    client: str,
    *,
    parent: dict[str, Any] | None = None,
    ttl: int | None = None,
) -> dict[str, Any]:
    ttl = ttl or ctx.rng.choice((900, 1800, 3600))
    use = "resource" if parent else "session"
    claims = {"client_id": client, "sub_type": kind, "use": use, "scope": "read" if parent else ""}
    row = {
        "id": ctx.id_at(created),
        "zone_id": zone.id,
        "session_type": kind,
        "subject_id": subject,
        "parent_id": parent["id"] if parent else None,
        "status": "active",
        "expires_at": created + dt.timedelta(seconds=ttl),
        "authenticated_at": parent["authenticated_at"] if parent else created,
        "claims_json": compact(claims),
        "created_at": created,
        "_client": client,
    }
    zone.sessions.append(row)
    return row


def build_delegated_grants(ctx: Context) -> None:
    """Access grants; a revoked grant revoked its user's sessions and queued events."""
    pending_marked = False
    for zone in ctx.zones:
        routed = ctx.routed_resources(zone)
        if not routed or not zone.users:
            continue
        subjects = [s["subject_id"] for s in zone.sessions if s["session_type"] == "user"]
        for gi in range(4):
            status = ("active", "revoked", "active", "expired")[gi]
            user = (
                ctx.rng.choice(subjects)
                if status == "revoked" and subjects
                else zone.users[gi % len(zone.users)]
            )
            created = zone.created_at + dt.timedelta(days=1 + gi)
            updated = created
            grant_id = ctx.id_at(created)
            if status == "revoked":
                updated = ctx.between(
                    max(created + dt.timedelta(minutes=1), ctx.now - dt.timedelta(days=20)),
                    ctx.now - dt.timedelta(minutes=10),
                )
                request_id = ctx.id_at(updated)
                for s in zone.sessions:
                    if (
                        s["subject_id"] == user
                        and s["status"] == "active"
                        and s["created_at"] <= updated
                    ):
                        s["status"] = "revoked"
                        row = ctx.outbox_event(
                            "caracal.sessions.revoke",
                            updated,
                            {
                                "zone_id": zone.id,
                                "session_id": s["id"],
                                "reason": "grant_revoked",
                                "grant_id": grant_id,
                            },
                            request_id=request_id,
                        )
                        if not pending_marked:
                            _mark_pending(ctx, row)
                            pending_marked = True
            elif status == "expired":
                updated = created + dt.timedelta(days=30)
            ctx.rows["delegated_grants"].append(
                {
                    "id": grant_id,
                    "zone_id": zone.id,
                    "application_id": ctx.rng.choice(zone.managed_apps),
                    "user_id": user,
                    "resource_id": routed[gi % len(routed)]["id"],
                    "scopes": ["read"],
                    "status": status,
                    "created_at": created,
                    "updated_at": updated,
                }
            )
    if not pending_marked and ctx.rows["event_outbox"]:
        _mark_pending(ctx, max(ctx.rows["event_outbox"], key=lambda r: r["created_at"]))


def _mark_pending(ctx: Context, row: dict[str, Any]) -> None:
    """An undispatched (not dead) outbox row: one failed attempt, retry due."""
    row.update(
        dispatched_at=None,
        attempts=1,
        last_error="redis: connection refused",
        available_at=row["created_at"] + dt.timedelta(seconds=2),
    )


def build_step_up(ctx: Context) -> None:
    """Two human-approval challenges per zone (one consumed, one rejected)."""
    for zone in ctx.zones:
        for ci, outcome in enumerate(("consumed", "rejected")):
            session = zone.sessions[-1 - ci] if len(zone.sessions) > ci else None
            at = ctx.between(ctx.now - dt.timedelta(days=10), ctx.now - dt.timedelta(hours=1))
            done = at + dt.timedelta(minutes=3)
            ctx.rows["step_up_challenges"].append(
                {
                    "id": ctx.id_at(at),
                    "zone_id": zone.id,
                    "session_id": session["id"] if session else None,
                    "challenge_type": "human_approval",
                    "metadata_json": compact({"resource": "reference-svc-2", "reason": "tier"}),
                    "created_at": at,
                    "expires_at": at + dt.timedelta(minutes=15),
                    "satisfied_at": done if outcome == "consumed" else None,
                    "principal_id": session["subject_id"] if session else None,
                    "resource_set_hash": hashlib.sha256(f"{zone.id}:{ci}".encode()).digest(),
                    "consumed_at": done + dt.timedelta(seconds=5)
                    if outcome == "consumed"
                    else None,
                    "approver_subject_id": zone.users[0] if zone.users else None,
                    "application_id": zone.managed_apps[0],
                    "tier": "high",
                    "approver_class": "human",
                    "privacy_mode": "standard",
                    "rejected_at": done if outcome == "rejected" else None,
                    "decision_reason": "approved" if outcome == "consumed" else "denied",
                    "approver_session_id": None,
                }
            )

"""Symptom "Revocation state is incomplete" — restore Postgres revocation/session state and
replay Redis revocation events where needed.

Postgres is authoritative (FACTS-2026.06 §5.1): revoked ``sessions``, suspended/terminated
``agent_sessions`` and revoked ``delegation_edges`` must equal the source's (the fingerprint's
``revoked``). Redis carries what is in flight (§5.2): a Coordinator suspension changes
``agent_sessions`` at once, but the subject ``sessions`` row becomes ``revoked`` only when STS
consumes the ``caracal.sessions.revoke`` entry. The §5.4 invariant: every revocation outbox row
carrying ``session_id = X`` has ``sessions[X]`` revoked, or its entry (matched on ``outbox_id``)
is still undelivered or pending for ``sts-revocation`` in the restored Redis, or the row is not
yet published (its dispatcher will publish it); an expired session is benign. Anything else is a
revocation lost with Redis, listed with the exact event to replay (``remediate``).

Online (``probe_enforcement``): a mandate bound to a revoked anchor the Gateway must know (its
snapshot's 24 h look-back, §5.3) is refused with ``401 session revoked``.

This module also holds the read-only Redis helpers the reference deployment's tests use
(``snapshot``, ``stream_entries``, ``revocation_coverage``): verifier logic lives here, not in
the reference deployment.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import psycopg
import redis as redis_lib
from psycopg import sql

from caracal_restore import fingerprint as fp
from caracal_restore.diagnose import SYMPTOM_REVOCATION, Diagnosis, Finding
from caracal_restore.diagnose._common import DiagnosticError, error_of, exists, has_column
from caracal_restore.diagnose.mandate import (
    ZoneKey,
    active_key,
    gateway_claims,
    session_claims,
    sign,
)

REVOKE_STREAM = "caracal.sessions.revoke"
STS_GROUP = "sts-revocation"
#: The Gateway snapshot's look-back (§5.3): anchors revoked within it must be refused.
LOOKBACK_SECONDS = 86400
#: Coverage states that satisfy the §5.4 invariant.
HOLDING = frozenset({"revoked", "expired", "pending", "undelivered", "outbox-pending"})
SESSION_REVOKED = "session revoked"

Client = redis_lib.Redis
_PAGE = 10_000


# ------------------------------------------------------------------------ Redis reading


def as_text(value: Any) -> str:
    """Bytes as UTF-8 text (undecodable bytes kept via surrogateescape), anything else str()."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)


def as_map(value: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat pair list as a dict with text keys."""
    if isinstance(value, Mapping):
        return {as_text(k): v for k, v in value.items()}
    items = list(value)
    return {as_text(items[i]): items[i + 1] for i in range(0, len(items), 2)}


def decode_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    """Stream entry fields as text."""
    return {as_text(k): as_text(v) for k, v in fields.items()}


def int_or_none(value: Any) -> int | None:
    """int(value), or None for None."""
    return None if value is None else int(value)


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable (ms, seq) pair."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0))


def stream_names(client: Client) -> list[str]:
    """Every stream key, sorted."""
    return sorted(as_text(k) for k in client.scan_iter(_type="STREAM", count=1000))


def stream_entries(client: Client, stream: str) -> list[tuple[str, dict[str, str]]]:
    """All entries of a stream as (id, fields) text pairs, read in pages."""
    out: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        page: Any = client.xrange(stream, min=start, max="+", count=_PAGE)
        out.extend((as_text(i), decode_fields(f or {})) for i, f in page or [])
        if len(page or []) < _PAGE:
            return out
        start = "(" + out[-1][0]


def snapshot(client: Client) -> dict[str, Any]:
    """Every stream: type, length, ids, entries, groups with last-delivered-id, lag and PELs.

    Only what a restore must preserve is included: consumer seen/active times are left out;
    a PEL entry is (id, consumer, delivery time ms, delivery count). Values are text (bytes
    decoded as UTF-8 with surrogateescape), so snapshots compare with ``==`` and serialise
    with ``json.dumps``.
    """
    out: dict[str, Any] = {}
    for name in stream_names(client):
        info = as_map(client.execute_command("XINFO", "STREAM", name, "FULL", "COUNT", "0"))
        groups = {}
        for raw_group in info.get("groups") or []:
            group = as_map(raw_group)
            groups[as_text(group["name"])] = {
                "last_delivered_id": as_text(group["last-delivered-id"]),
                "entries_read": int_or_none(group.get("entries-read")),
                "lag": int_or_none(group.get("lag")),
                "pel": [(as_text(p[0]), as_text(p[1]), int(p[2]), int(p[3]))
                        for p in group.get("pending") or []],
                "consumers": sorted(as_text(as_map(c)["name"])
                                    for c in group.get("consumers") or []),
            }
        out[name] = {
            "type": as_text(client.type(name)),
            "length": int(info["length"]),
            "last_generated_id": as_text(info["last-generated-id"]),
            "max_deleted_entry_id": as_text(info.get("max-deleted-entry-id", "")),
            "entries_added": int_or_none(info.get("entries-added")),
            "entries": [(as_text(e[0]), decode_fields(as_map(e[1])))
                        for e in info.get("entries") or []],
            "groups": groups,
        }
    return out


# ------------------------------------------------------------------- §5.4 invariant


@dataclasses.dataclass(frozen=True)
class RevocationCoverage:
    """How one revocation outbox row carrying a ``session_id`` is accounted for."""

    outbox: str  # "event_outbox" or "caracal_outbox"
    outbox_id: str
    session_id: str
    session_status: str | None
    #: revoked | expired | pending | undelivered | outbox-pending (hold);
    #: acked | missing | no-group | outbox-dead (violations)
    state: str

    @property
    def holds(self) -> bool:
        """True when the row satisfies FACTS-2026.06 §5.4 (an expired session is benign)."""
        return self.state in HOLDING


def revocation_coverage(conn: psycopg.Connection[Any], client: Client,
                        sessions_table: str = "sessions") -> list[RevocationCoverage]:
    """Classify every revocation outbox row with a session_id against sessions and Redis.

    A row holds when ``sessions[X].status`` is ``revoked`` (or ``expired``, or its
    ``expires_at`` has passed: no token of it is usable), or its entry (matched on
    ``outbox_id``) is still undelivered or pending for ``sts-revocation``, or the row itself is
    not yet published (its dispatcher will publish it). ``acked``, ``missing`` (published but
    not in Redis), ``no-group`` (the stream has no ``sts-revocation`` group: STS would create
    it at ``$`` and never read the entry) and ``outbox-dead`` rows are violations.
    """
    table = sql.Identifier(sessions_table)
    expired = (sql.SQL("s.expires_at <= now()") if has_column(conn, sessions_table, "expires_at")
               else sql.SQL("false"))
    query = sql.SQL(
        "SELECT 'event_outbox', o.id::text, o.payload_json->>'session_id', s.status, {expired},"
        " CASE WHEN o.dispatched_at IS NOT NULL THEN 'published'"
        " WHEN o.available_at = 'infinity' THEN 'dead' ELSE 'pending' END"
        " FROM event_outbox o LEFT JOIN {table} s ON s.id = o.payload_json->>'session_id'"
        " WHERE o.stream_name = %s AND o.payload_json ? 'session_id'"
        " UNION ALL "
        "SELECT 'caracal_outbox', o.id::text, o.payload_json->>'session_id', s.status, {expired},"
        " o.status FROM caracal_outbox o"
        " LEFT JOIN {table} s ON s.id = o.payload_json->>'session_id'"
        " WHERE o.topic = %s AND o.producer = 'coordinator' AND o.payload_json ? 'session_id'"
        " ORDER BY 1, 2").format(expired=expired, table=table)
    # Redis first: STS commits the revocation before it acknowledges the entry, so an entry
    # seen acknowledged here has its session revoked in any later read of Postgres.
    where = entry_positions(client)
    rows = conn.execute(query, (REVOKE_STREAM, REVOKE_STREAM)).fetchall()
    out = []
    for outbox, outbox_id, session_id, status, time_expired, outbox_state in rows:
        position = where.get(outbox_id)
        if status in {"revoked", "expired"}:
            state = status
        elif time_expired:
            state = "expired"
        elif position in {"pending", "undelivered"}:
            state = position
        elif outbox_state == "pending":
            state = "outbox-pending"
        elif outbox_state == "dead":
            state = "outbox-dead"
        else:
            state = position or "missing"
        out.append(RevocationCoverage(outbox, outbox_id, session_id, status, state))
    return out


def entry_positions(client: Client) -> dict[str, str]:
    """outbox_id -> pending | undelivered | acked | no-group for the sts-revocation group."""
    if not client.exists(REVOKE_STREAM):
        return {}
    groups = {as_text(g["name"]): g for g in client.xinfo_groups(REVOKE_STREAM)}
    pel: set[str] = set()
    if STS_GROUP in groups:
        last = id_key(as_text(groups[STS_GROUP]["last-delivered-id"]))
        start = "-"
        while True:
            batch = client.xpending_range(REVOKE_STREAM, STS_GROUP, start, "+", 1000)
            pel |= {as_text(p["message_id"]) for p in batch}
            if len(batch) < 1000:
                break
            start = "(" + as_text(batch[-1]["message_id"])
    out: dict[str, str] = {}
    for entry_id, fields in stream_entries(client, REVOKE_STREAM):
        outbox_id = fields.get("outbox_id")
        if outbox_id is None:
            continue
        if STS_GROUP not in groups:
            out.setdefault(outbox_id, "no-group")
        elif entry_id in pel:
            out[outbox_id] = "pending"
        elif id_key(entry_id) > last:
            out[outbox_id] = "undelivered"
        else:
            out.setdefault(outbox_id, "acked")
    return out


# ------------------------------------------------------------------------------ replay


def flatten_payload(payload: Any) -> dict[str, str]:
    """Outbox payload as the dispatchers write stream fields: flat strings, nulls dropped."""
    if isinstance(payload, str):
        payload = json.loads(payload)
    if not isinstance(payload, Mapping):
        raise DiagnosticError(f"outbox payload is not a JSON object: {type(payload).__name__}")
    fields: dict[str, str] = {}
    for key, value in payload.items():
        if value is None:
            continue
        if isinstance(value, bool):
            fields[key] = "true" if value else "false"
        elif isinstance(value, str):
            fields[key] = value
        elif isinstance(value, int | float):
            fields[key] = str(int(value)) if float(value).is_integer() else repr(value)
        else:
            fields[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return fields


@dataclasses.dataclass(frozen=True)
class ReplayEvent:
    """One revocation event to replay: where it came from and the stream fields to publish."""

    outbox: str
    outbox_id: str
    session_id: str
    state: str
    stream: str
    #: The entry's fields as its dispatcher published them (``_sig`` is added when replayed).
    fields: Mapping[str, str]


def replay_events(conn: psycopg.Connection[Any],
                  lost: Sequence[RevocationCoverage]) -> list[ReplayEvent]:
    """The exact stream entries that would replay each lost row (``outbox_id`` matches)."""
    out = []
    for c in lost:
        if c.outbox == "event_outbox":
            row = conn.execute("SELECT stream_name, payload_json, NULL FROM event_outbox"
                               " WHERE id::text = %s", (c.outbox_id,)).fetchone()
        else:
            row = conn.execute("SELECT topic, payload_json, dedupe_key FROM caracal_outbox"
                               " WHERE id::text = %s", (c.outbox_id,)).fetchone()
        if row is None:
            continue
        fields = flatten_payload(row[1])
        fields["outbox_id"] = c.outbox_id
        if row[2] is not None:
            fields["dedupe_key"] = str(row[2])
        out.append(ReplayEvent(c.outbox, c.outbox_id, c.session_id, c.state, row[0], fields))
    return out


# ------------------------------------------------------------------------------ offline

KINDS = ("sessions", "agents", "edges")


def restored_revoked(conn: psycopg.Connection[Any], *, sessions_table: str,
                     agents_table: str) -> dict[str, list[str] | None]:
    """Revoked ids after restore, by the fingerprint's own definition (``fingerprint.revoked``)."""
    return fp.revoked(conn, sessions_table=sessions_table, agents_table=agents_table)


def _status_of(conn: psycopg.Connection[Any], kind: str, ident: str, sessions_table: str,
               agents_table: str) -> str:
    table = {"sessions": sessions_table, "agents": agents_table, "edges": "delegation_edges"}[kind]
    row = conn.execute(sql.SQL("SELECT status FROM {} WHERE id::text = %s").format(
        sql.Identifier(table)), (ident,)).fetchone()
    return str(row[0]) if row else "absent"


def diagnose_offline(
    conn: psycopg.Connection[Any],
    client: Client | None,
    *,
    fingerprint: Mapping[str, Any] | None,
    sessions_table: str = "sessions",
    agents_table: str = "agent_sessions",
) -> Diagnosis:
    """Postgres revocation state against the source, and the §5.4 invariant against Redis."""
    findings: list[Finding] = []
    notes: list[str] = []
    observed: dict[str, Any] = {}
    for table in (sessions_table, agents_table, "delegation_edges", "event_outbox",
                  "caracal_outbox"):
        if not exists(conn, table):
            raise DiagnosticError(f"table {table} is missing from the restored database")
    restored = restored_revoked(conn, sessions_table=sessions_table, agents_table=agents_table)
    observed["revoked_after_restore"] = {k: len(v or []) for k, v in restored.items()}
    source_revoked: dict[str, set[str]] = {}
    if fingerprint and fingerprint.get("revoked"):
        source = fingerprint["revoked"]
        observed["revoked_in_source"] = {k: len(source.get(k) or []) for k in KINDS}
        for kind in KINDS:
            want, have = set(source.get(kind) or []), set(restored.get(kind) or [])
            source_revoked[kind] = want
            for ident in sorted(want - have):
                status = _status_of(conn, kind, ident, sessions_table, agents_table)
                findings.append(Finding("revocation-postgres", f"{kind[:-1]} {ident}",
                                        f"revoked in the source, {status} after restore"))
            for ident in sorted(have - want):
                status = _status_of(conn, kind, ident, sessions_table, agents_table)
                findings.append(Finding("revocation-postgres", f"{kind[:-1]} {ident}",
                                        f"not revoked in the source, {status} after restore"))
    else:
        notes.append("no source fingerprint: Postgres revocation state checked for internal "
                     "consistency (every outbox revocation's agent/edge is revoked)")
        findings += _outbox_targets(conn, agents_table)
    if client is None:
        notes.append("no Redis was restored: in-flight revocations are judged from Postgres "
                     "alone (every published, unapplied row counts as lost)")
        coverage = _coverage_without_redis(conn, sessions_table)
    else:
        coverage = revocation_coverage(conn, client, sessions_table)
    lost = [c for c in coverage if not c.holds]
    attributed = [c for c in lost if c.session_id in source_revoked.get("sessions", set())]
    to_replay = [c for c in lost if c not in attributed]
    events = replay_events(conn, to_replay)
    for event in events:
        findings.append(Finding(
            "revocation-redis-lost", f"{event.outbox} {event.outbox_id}",
            f"revokes session {event.session_id}, which is still active; the entry is "
            f"{_STATE_WORDS.get(event.state, event.state)} — replay {event.stream} entry "
            f"{dict(event.fields)}"))
    if attributed:
        notes.append(f"{len(attributed)} outbox row(s) whose session the source had revoked are "
                     "reported as Postgres state (their stream entries are gone too)")
    observed["coverage"] = [dataclasses.asdict(c) | {"holds": c.holds} for c in coverage]
    observed["to_replay"] = [dataclasses.asdict(e) for e in events]
    return Diagnosis(SYMPTOM_REVOCATION, tuple(findings), observed, tuple(notes))


_STATE_WORDS = {
    "acked": "acknowledged by sts-revocation without the session being revoked",
    "missing": "published but no longer in the restored Redis",
    "no-group": "in a stream with no sts-revocation group (STS would start at $ and skip it)",
    "outbox-dead": "dead in the outbox (never dispatched)",
}


def _coverage_without_redis(conn: psycopg.Connection[Any],
                            sessions_table: str) -> list[RevocationCoverage]:
    class _NoRedis:
        def exists(self, *_: Any) -> int:
            return 0

    return revocation_coverage(conn, _NoRedis(), sessions_table)  # type: ignore[arg-type]


def _outbox_targets(conn: psycopg.Connection[Any], agents_table: str) -> list[Finding]:
    """Coordinator writes the agent/edge change and its outbox row together: both must be there."""
    findings = []
    rows = conn.execute(sql.SQL(
        "SELECT o.id::text, o.payload_json->>'agent_session_id', a.status,"
        " o.payload_json->>'delegation_edge_id', e.status FROM ("
        "  SELECT id, payload_json FROM caracal_outbox WHERE topic = %s"
        "  UNION ALL SELECT id, payload_json FROM event_outbox WHERE stream_name = %s) o"
        " LEFT JOIN {agents} a ON a.id = o.payload_json->>'agent_session_id'"
        " LEFT JOIN delegation_edges e ON e.id = o.payload_json->>'delegation_edge_id'"
        " ORDER BY 1").format(agents=sql.Identifier(agents_table)),
        (REVOKE_STREAM, REVOKE_STREAM)).fetchall()
    for outbox_id, agent, agent_status, edge, edge_status in rows:
        if agent and agent_status not in ("suspended", "terminated", "expired"):
            findings.append(Finding("revocation-postgres", f"agent {agent}",
                                    f"outbox row {outbox_id} revokes it, but it is "
                                    f"{agent_status or 'absent'}"))
        if edge and edge_status not in ("revoked", "expired"):
            findings.append(Finding("revocation-postgres", f"edge {edge}",
                                    f"outbox row {outbox_id} revokes it, but it is "
                                    f"{edge_status or 'absent'}"))
    return findings


# ------------------------------------------------------------------------------- online


@dataclasses.dataclass(frozen=True)
class Anchor:
    """A revoked id the Gateway must refuse: its kind, zone and (sessions) subject."""

    kind: str  # session | agent | edge
    id: str
    zone_id: str
    subject_id: str | None
    status: str


def lookback_anchors(conn: psycopg.Connection[Any], revoked: Mapping[str, Iterable[str] | None], *,
                     sessions_table: str = "sessions",
                     agents_table: str = "agent_sessions",
                     agent_statuses: Sequence[str] = ()) -> list[Anchor]:
    """The given revoked ids that fall in the Gateway snapshot's look-back window (§5.3).

    Windows use the restored rows' own timestamps: sessions whose ``expires_at``, agents whose
    ``updated_at``, edges whose ``revoked_at`` is within the last 24 h (the ids come from the
    source's fingerprint when there is one, so a session restored as active still counts).
    ``agent_statuses``: the stopped statuses the release's Gateway snapshot loads (1.0:
    ``terminated`` only, FACTS-1.0 §9.3); an agent restored in another stopped status is not
    one the Gateway must refuse, one restored as active still is (the restore lost its stop).
    """
    window = sql.SQL("now() - make_interval(secs => %s)")
    agent_filter = (sql.SQL(" AND (status = ANY(%s) OR status NOT IN"
                            " ('suspended', 'terminated', 'expired'))")
                    if agent_statuses else sql.SQL(""))
    queries = {
        "session": sql.SQL("SELECT id::text, zone_id::text, subject_id, status FROM {t}"
                           " WHERE id::text = ANY(%s) AND expires_at > {w} ORDER BY id").format(
            t=sql.Identifier(sessions_table), w=window),
        "agent": sql.SQL("SELECT id::text, zone_id::text, NULL, status FROM {t}"
                         " WHERE id::text = ANY(%s) AND updated_at > {w}{f} ORDER BY id").format(
            t=sql.Identifier(agents_table), w=window, f=agent_filter),
        "edge": sql.SQL("SELECT id::text, zone_id::text, NULL, status FROM delegation_edges"
                        " WHERE id::text = ANY(%s) AND revoked_at IS NOT NULL"
                        " AND revoked_at > {w} ORDER BY id").format(w=window),
    }
    kinds = {"session": "sessions", "agent": "agents", "edge": "edges"}
    out: list[Anchor] = []
    for kind, query in queries.items():
        ids = sorted(revoked.get(kinds[kind]) or [])
        if not ids:
            continue
        args: tuple[Any, ...] = (ids, LOOKBACK_SECONDS)
        if kind == "agent" and agent_statuses:
            args += (list(agent_statuses),)
        for ident, zone, subject, status in conn.execute(query, args):
            out.append(Anchor(kind, ident, zone, subject, status))
    return out


@dataclasses.dataclass(frozen=True)
class EnforcementProbe:
    """One probe mandate sent to the Gateway and what it answered."""

    anchor_kind: str
    anchor_id: str
    zone_id: str
    resource: str
    status: int
    description: str

    @property
    def refused_as_revoked(self) -> bool:
        """401 session revoked: the Gateway knows the anchor is revoked."""
        return self.status == 401 and self.description == SESSION_REVOKED


def _zone_binding(conn: psycopg.Connection[Any], zone: str) -> tuple[str, str] | None:
    row = conn.execute("SELECT resource_identifier, application_id::text"
                       " FROM gateway_resource_bindings WHERE zone_id = %s ORDER BY 1 LIMIT 1",
                       (zone,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def _zone_route(conn: psycopg.Connection[Any], zone: str,
                control_audience: str) -> tuple[str, str] | None:
    """1.0: a resource the Gateway routes (``resources.upstream_url``) and a live application.

    The Gateway refuses a revoked anchor before it asks STS for the upstream, so the probe only
    needs a resource the Gateway would route and a client the mandate can name.
    """
    resource = conn.execute(
        "SELECT identifier FROM resources WHERE zone_id = %s AND archived_at IS NULL"
        " AND COALESCE(upstream_url, '') <> '' AND identifier <> %s ORDER BY identifier LIMIT 1",
        (zone, control_audience)).fetchone()
    app = conn.execute(
        "SELECT id::text FROM applications WHERE zone_id = %s AND archived_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > now()) ORDER BY id LIMIT 1",
        (zone,)).fetchone()
    return (str(resource[0]), str(app[0])) if resource and app else None


def _send(client: httpx.Client, gateway_url: str, token: str, resource: str) -> tuple[int, str]:
    reply = client.get(f"{gateway_url.rstrip('/')}/caracal-restore/revocation-probe",
                       headers={"Authorization": f"Bearer {token}",
                                "X-Caracal-Resource": resource,
                                "X-Request-Id": f"caracal-restore-{uuid.uuid4()}"})
    return error_of(reply)


#: Refusals the Gateway itself makes before it asks STS: a control mandate must pass them all.
GATEWAY_REFUSALS = frozenset({
    "invalid token", "missing or invalid bearer token", "credential_expired_not_renewable",
    "token replay detected", "revocation state unavailable", SESSION_REVOKED,
})


def _probe_claims(flow: str, anchor: Anchor | None, *, issuer: str, zone_id: str, app: str,
                  resource: str) -> dict[str, Any]:
    """The probe's claims: bound to ``anchor`` (None: the control, bound to nothing revoked).

    ``session-mandate`` (2026.06): a ``use=session`` mandate. ``gateway-mandate`` (1.0): a
    one-shot ``use=gateway`` mandate with a fresh jti, anchored where the 1.0 Gateway looks
    (``sid``/``root_sid`` = an authority record, ``agent_session_id`` = a governed Session,
    ``delegation_edge_id`` = an edge; FACTS-1.0 §8 step 2, §14.4).
    """
    extra: dict[str, str] = {}
    sid, subject = None, None
    if anchor is not None:
        if anchor.kind == "session":
            sid, subject = anchor.id, anchor.subject_id
        elif anchor.kind == "agent":
            extra["agent_session_id"] = anchor.id
        else:
            extra["delegation_edge_id"] = anchor.id
    claims = gateway_claims if flow == "gateway-mandate" else session_claims
    return claims(issuer=issuer, zone_id=zone_id, client_id=app, resource=resource, sid=sid,
                  subject=subject, extra=extra)


def probe_enforcement(
    client: httpx.Client,
    *,
    gateway_url: str,
    issuer: str,
    conn: psycopg.Connection[Any],
    kek: bytes | Sequence[bytes],
    anchors: Sequence[Anchor],
    limit: int = 60,
    flow: str = "session-mandate",
    fmt: str = "zone-chacha20",
    control_audience: str = "caracal-control",
) -> Diagnosis:
    """Present a mandate bound to each revoked anchor; each must get 401 session revoked.

    Per zone a control mandate bound to nothing revoked goes first: it must pass the Gateway's
    signature check and not be refused as revoked, or the probes could not tell anything.
    ``flow``/``fmt``: the release's canary flow and envelope format (``gateway-mandate`` and
    ``css1`` at 1.0, where the probe resource comes from ``resources.upstream_url`` and ``kek``
    is the keyring SECRET_STORE_KEK, SECRET_STORE_KEK_PREVIOUS).
    """
    findings: list[Finding] = []
    notes: list[str] = []
    probes: list[EnforcementProbe] = []
    controls: dict[str, Any] = {}
    keys: dict[str, ZoneKey] = {}
    for anchor in list(anchors)[:limit]:
        route = (_zone_route(conn, anchor.zone_id, control_audience)
                 if flow == "gateway-mandate" else _zone_binding(conn, anchor.zone_id))
        if route is None:
            notes.append(f"{anchor.kind} {anchor.id}: zone {anchor.zone_id} has no "
                         + ("routed resource and live application" if flow == "gateway-mandate"
                            else "binding") + ", so no protected request can carry it")
            continue
        resource, app = route
        if anchor.zone_id not in keys:
            keys[anchor.zone_id] = active_key(conn, kek, anchor.zone_id, fmt=fmt)
            control = _probe_claims(flow, None, issuer=issuer, zone_id=anchor.zone_id, app=app,
                                    resource=resource)
            status, description = _send(client, gateway_url, sign(keys[anchor.zone_id], control),
                                        resource)
            controls[anchor.zone_id] = {"status": status, "description": description}
            if description in GATEWAY_REFUSALS or description == "resource not configured":
                raise DiagnosticError(
                    f"zone {anchor.zone_id}: a control mandate bound to nothing revoked got "
                    f"{status} {description!r}, so refusals of revoked anchors would prove "
                    "nothing")
        claims = _probe_claims(flow, anchor, issuer=issuer, zone_id=anchor.zone_id, app=app,
                               resource=resource)
        status, description = _send(client, gateway_url, sign(keys[anchor.zone_id], claims),
                                    resource)
        probe = EnforcementProbe(anchor.kind, anchor.id, anchor.zone_id, resource, status,
                                 description)
        probes.append(probe)
        if probe.refused_as_revoked:
            continue
        revoked_now = anchor.status in ("revoked", "suspended", "terminated", "expired")
        findings.append(Finding(
            "revocation-not-enforced" if revoked_now else "revocation-postgres",
            f"{anchor.kind} {anchor.id}",
            f"a mandate bound to it got {status} {description!r} from the Gateway, not 401 "
            f"{SESSION_REVOKED!r}" + ("" if revoked_now else
                                      f" (the restored row is {anchor.status})"),
            anchor.zone_id))
    if len(anchors) > limit:
        notes.append(f"probed the first {limit} of {len(anchors)} anchors")
    observed = {"controls": controls,
                "probes": [dataclasses.asdict(p) | {"refused_as_revoked": p.refused_as_revoked}
                           for p in probes]}
    return Diagnosis(SYMPTOM_REVOCATION, tuple(findings), observed, tuple(notes))

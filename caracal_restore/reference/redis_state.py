"""The reference deployment's Redis: provisioned streams, published outbox entries, consumer state.

``provision`` does what ``infra/redis/provision-streams.sh`` and the services' start-up do
(FACTS-1.0 §11.1, FACTS-2026.06 §5.2/§6); ``publish_state`` replays the dispatched outbox
rows of PostgreSQL onto the streams exactly as the API dispatcher and the Coordinator
publisher would, then lets the consumers read part of them; ``snapshot`` reads back every
stream with its groups and PELs so a restored Redis can be compared with its source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
import redis as redis_lib
from psycopg import sql

from caracal_restore.chainhash import producer_signature, stream_signature, unix_nanos

# The verifier's reading of Redis lives in the library; re-exported for the reference's users.
from caracal_restore.diagnose.revocation import (
    RevocationCoverage as RevocationCoverage,
)
from caracal_restore.diagnose.revocation import as_text as _text
from caracal_restore.diagnose.revocation import int_or_none as _int_or_none
from caracal_restore.diagnose.revocation import (
    revocation_coverage as revocation_coverage,
)
from caracal_restore.diagnose.revocation import snapshot as snapshot
from caracal_restore.diagnose.revocation import stream_entries as stream_entries
from caracal_restore.diagnose.revocation import stream_names as _stream_names
from caracal_restore.profiles import StreamSpec
from caracal_restore.reference.replay import undelivered_events, wire_json

#: The provisioner's nine streams and groups (FACTS-1.0 §11.1, unchanged at 06.21).
STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec("caracal.audit.events", ("audit-ingestor", "siem-export"), 1_000_000),
    StreamSpec("caracal.audit.events.dlq", ("audit-dlq-observer",), 100_000),
    StreamSpec("caracal.policy.invalidate", ("opa-engine",), 10_000),
    StreamSpec("caracal.sessions.revoke", ("sts-revocation",), 10_000),
    StreamSpec("caracal.keys.invalidate", ("sts-keys",), 10_000),
    StreamSpec("caracal.agents.lifecycle", ("coordinator-relay",), None),
    StreamSpec("caracal.invocations.lifecycle", ("invocations-observer",), None),
    StreamSpec("caracal.delegations.invalidate", ("delegations-observer",), None),
    StreamSpec("caracal.providers.ratelimit", (), 1),
)
RATELIMIT_STREAM = "caracal.providers.ratelimit"
REVOKE_STREAM = "caracal.sessions.revoke"
AUDIT_STREAM = "caracal.audit.events"
STS_GROUP = "sts-revocation"
GATEWAY_GROUP = "gateway-revocation"
AUDIT_GROUP = "audit-ingestor"
#: Groups the services create at start (stream, group, start id): 06.21 Gateway reads from 0.
RUNTIME_GROUPS: tuple[tuple[str, str, str], ...] = ((REVOKE_STREAM, GATEWAY_GROUP, "0"),)
#: Publish-time trim of the API dispatcher and the Coordinator publisher.
OUTBOX_MAXLEN = 100_000
#: Consumer names as the services build them (host = container id, pid 1 in a container).
STS_CONSUMER = "sts-5d2e9c41b7a3-1-revocations"
GATEWAY_CONSUMER = "gateway-8e41d0c7a2f5-1"
AUDIT_CONSUMER = "audit-worker-0"
#: Groups nobody consumes in the reference deployment (no SIEM exporter runs).
IDLE_GROUPS = frozenset({"siem-export"})

Client = redis_lib.Redis
_PAGE = 10_000


# ---------------------------------------------------------------------------- provisioning


def provision(client: Client, streams: Sequence[StreamSpec] = STREAMS,
              runtime_groups: Sequence[tuple[str, str, str]] = RUNTIME_GROUPS) -> None:
    """Create the streams and groups (``$``, MKSTREAM, BUSYGROUP tolerated) and runtime groups."""
    for spec in streams:
        for group in spec.groups:
            _create_group(client, spec.name, group, "$")
        if spec.name == RATELIMIT_STREAM:
            client.xadd(RATELIMIT_STREAM, {"init": "1"}, maxlen=1, approximate=True)
    for stream, group, start in runtime_groups:
        _create_group(client, stream, group, start)


def _create_group(client: Client, stream: str, group: str, start: str) -> None:
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis_lib.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# ------------------------------------------------------------------------------ summaries


@dataclasses.dataclass(frozen=True)
class GroupState:
    """A consumer group as Redis reports it."""

    name: str
    last_delivered_id: str
    pending: int
    entries_read: int | None
    lag: int | None


@dataclasses.dataclass(frozen=True)
class StreamState:
    """A stream's length, last generated id and groups."""

    name: str
    length: int
    last_id: str
    groups: tuple[GroupState, ...]

    def group(self, name: str) -> GroupState:
        """One group by name."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(f"{self.name} has no group {name!r}")


@dataclasses.dataclass(frozen=True)
class RedisStateSummary:
    """What ``publish_state`` left in Redis (no key material, only ids and counts)."""

    streams: tuple[StreamState, ...]
    published: int
    #: outbox ids of revocation entries delivered to sts-revocation but not acknowledged.
    revocation_pending: tuple[str, ...]
    #: outbox ids of revocation entries never delivered to sts-revocation.
    revocation_undelivered: tuple[str, ...]
    #: event ids on caracal.audit.events not yet ingested (pending or undelivered).
    audit_backlog: tuple[str, ...]
    #: event ids of already-ingested audit events whose stream entries were acknowledged.
    audit_acked: tuple[str, ...]

    def stream(self, name: str) -> StreamState:
        """One stream by name."""
        for stream in self.streams:
            if stream.name == name:
                return stream
        raise KeyError(f"no stream {name!r}")


# ------------------------------------------------------------------------------ publishing


@dataclasses.dataclass(frozen=True)
class _Published:
    """One outbox row turned into a stream entry."""

    outbox_id: str
    stream: str
    at: dt.datetime
    fields: dict[str, str]


def publish_state(
    client: Client,
    conn: psycopg.Connection[Any],
    *,
    streams_hmac_key: bytes,
    audit_hmac_key: bytes,
    pending: int = 3,
    undelivered: int = 2,
    audit_events: Iterable[Mapping[str, Any]] | None = None,
    audit_backlog: int = 6,
    audit_acked_tail: int = 5,
    lineage_table: str = "sessions",
    gateway_group: str = GATEWAY_GROUP,
    coordinator_nulls: str | None = None,
) -> RedisStateSummary:
    """Publish the dispatched outbox rows, then let consumers read and acknowledge part of them.

    Call ``provision`` first (the groups must exist, as in a running deployment).

    ``sts-revocation`` reads all but the newest ``undelivered`` revocation entries (at most
    a quarter of them) and acknowledges each one whose ``session_id`` is already ``revoked``
    in ``sessions`` (or that has none), except ``pending`` of them; entries for sessions
    that are not revoked stay in the PEL, so the FACTS-2026.06 §5.4 invariant holds by
    construction. ``gateway-revocation`` reads the same entries and leaves one pending.
    ``audit_events`` (wire dicts, default: ``audit_backlog`` generated ones) go onto
    ``caracal.audit.events`` after the ``audit_acked_tail`` newest ingested rows, which are
    included only when their wire JSON reproduces the stored ``ingest_signature``; the
    ingestor has acknowledged the ingested ones and read about half of the rest.
    """
    ids = _IdClock(client)
    published = _outbox_entries(conn, coordinator_nulls=coordinator_nulls)
    for entry in published:
        fields: dict[Any, Any] = dict(entry.fields)
        fields["_sig"] = stream_signature(streams_hmac_key, entry.stream, fields)
        client.xadd(entry.stream, fields, id=ids.next(entry.stream, entry.at),
                    maxlen=OUTBOX_MAXLEN, approximate=True)
    revoked = _revoked_sessions(conn, published, lineage_table=lineage_table)
    pel, tail = _consume_revocations(client, revoked, pending=pending, undelivered=undelivered,
                                     gateway_group=gateway_group)
    _consume_other_streams(client, {e.stream for e in published})
    acked, backlog = _publish_audit(
        client, conn, ids, audit_hmac_key,
        audit_events=audit_events, backlog=audit_backlog, tail=audit_acked_tail,
    )
    return RedisStateSummary(
        streams=tuple(stream_state(client, s) for s in _stream_names(client)),
        published=len(published),
        revocation_pending=tuple(pel),
        revocation_undelivered=tuple(tail),
        audit_backlog=tuple(backlog),
        audit_acked=tuple(acked),
    )


class _IdClock:
    """Stream ids as ``XADD *`` would have made them at each publish time, kept monotonic."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._last: dict[str, tuple[int, int]] = {}

    def next(self, stream: str, at: dt.datetime) -> str:
        if stream not in self._last:
            self._last[stream] = _last_id(self._client, stream)
        last_ms, last_seq = self._last[stream]
        ms = unix_nanos(at) // 1_000_000
        nxt = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        self._last[stream] = nxt
        return f"{nxt[0]}-{nxt[1]}"


def _last_id(client: Client, stream: str) -> tuple[int, int]:
    if not client.exists(stream):
        return (0, 0)
    last = _text(client.xinfo_stream(stream)["last-generated-id"])
    ms, seq = last.split("-")
    return (int(ms), int(seq))


def _outbox_entries(conn: psycopg.Connection[Any], *,
                    coordinator_nulls: str | None = None) -> list[_Published]:
    """Dispatched API rows and published Coordinator rows, in publish order, as stream fields."""
    rows: list[_Published] = []
    api = conn.execute(
        "SELECT id::text, stream_name, payload_json, dispatched_at FROM event_outbox"
        " WHERE dispatched_at IS NOT NULL"
    ).fetchall()
    for outbox_id, stream, payload, at in api:
        fields = _flatten(payload)
        fields["outbox_id"] = outbox_id
        rows.append(_Published(outbox_id, stream, at, fields))
    coordinator = conn.execute(
        "SELECT id::text, topic, dedupe_key, payload_json,"
        " COALESCE(published_at, updated_at, created_at) FROM caracal_outbox"
        " WHERE status = 'published'"
    ).fetchall()
    for outbox_id, topic, dedupe_key, payload, at in coordinator:
        fields = _flatten(payload, coordinator_nulls)
        fields["outbox_id"] = outbox_id
        fields["dedupe_key"] = dedupe_key
        rows.append(_Published(outbox_id, topic, at, fields))
    rows.sort(key=lambda r: (r.at, r.outbox_id))
    return rows


def _flatten(payload: Any, nulls: str | None = None) -> dict[str, str]:
    """A flat payload as the dispatchers write it: every value as a string.

    JSON nulls are dropped, or written as ``nulls`` when given (the 1.0 Coordinator
    publisher writes the string ``null``, as a real 1.0 bundle shows).
    """
    if isinstance(payload, str):
        payload = json.loads(payload)
    if not isinstance(payload, Mapping):
        raise ValueError(f"outbox payload is not a JSON object: {type(payload).__name__}")
    fields: dict[str, str] = {}
    for key, value in payload.items():
        if value is None:
            if nulls is not None:
                fields[key] = nulls
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


#: Public name of the dispatchers' flattening (the 1.0 reference Coordinator publishes with it).
flatten_payload = _flatten


def _revoked_sessions(conn: psycopg.Connection[Any], published: list[_Published], *,
                      lineage_table: str = "sessions") -> set[str]:
    wanted = sorted({e.fields["session_id"] for e in published
                     if e.stream == REVOKE_STREAM and "session_id" in e.fields})
    if not wanted:
        return set()
    rows = conn.execute(
        sql.SQL("SELECT id FROM {} WHERE status = 'revoked' AND id = ANY(%s)").format(
            sql.Identifier(lineage_table)), (wanted,)
    ).fetchall()
    return {row[0] for row in rows}


def _consume_revocations(
    client: Client, revoked: set[str], *, pending: int, undelivered: int,
    gateway_group: str = GATEWAY_GROUP,
) -> tuple[list[str], list[str]]:
    """STS and Gateway read the revocation stream; return (PEL outbox ids, undelivered ones)."""
    entries = [e for e in stream_entries(client, REVOKE_STREAM) if "outbox_id" in e[1]]
    # "A few" undelivered: never more than a quarter of the stream, one when there are >= 2.
    few = min(max(undelivered, 0), max(len(entries) // 4, 1 if len(entries) >= 2 else 0))
    cut = len(entries) - few
    delivered, tail = entries[:cut], entries[cut:]
    if not delivered:
        return [], [f["outbox_id"] for _, f in tail]
    _read_ids(client.xreadgroup(STS_GROUP, STS_CONSUMER, {REVOKE_STREAM: ">"},
                                count=len(delivered)))
    gateway_read = _read_ids(client.xreadgroup(gateway_group, GATEWAY_CONSUMER,
                                               {REVOKE_STREAM: ">"}, count=len(delivered)))
    # An entry whose session is not revoked yet must stay in the PEL: STS read it, then
    # stopped before RevokeSession committed (FACTS-2026.06 §5.4).
    held = {i for i, f in delivered if "session_id" in f and f["session_id"] not in revoked}
    # Keep the newest safe entries pending too: STS revoked, then stopped before XACK.
    safe = [i for i, _ in delivered if i not in held]
    extra = max(pending - len(held), 0)
    if extra:
        held.update(safe[-extra:])
    acked = [i for i in safe if i not in held]
    if acked:
        client.xack(REVOKE_STREAM, STS_GROUP, *acked)
    # The Gateway marks everything it read and acknowledges all but its newest entry.
    if len(gateway_read) > 1:
        client.xack(REVOKE_STREAM, gateway_group, *gateway_read[:-1])
    pel = [f["outbox_id"] for i, f in delivered if i in held]
    return pel, [f["outbox_id"] for _, f in tail]


def _consume_other_streams(client: Client, streams: set[str]) -> None:
    """Every other provisioned consumer has read and acknowledged everything published to it."""
    for stream in sorted(streams - {REVOKE_STREAM, AUDIT_STREAM}):
        for group in client.xinfo_groups(stream):
            name = _text(group["name"])
            if name in IDLE_GROUPS:
                continue
            ids = _read_ids(client.xreadgroup(name, f"{name}-reference-1", {stream: ">"}))
            if ids:
                client.xack(stream, name, *ids)


def _read_ids(result: Any) -> list[str]:
    """Entry ids of an XREADGROUP reply (RESP2 list or RESP3 map shape)."""
    if not result:
        return []
    per_stream = result.values() if isinstance(result, Mapping) else [r[1] for r in result]
    ids = []
    for items in per_stream:
        for item in items:
            if isinstance(item, list | tuple) and item and item[0] is not None:
                ids.append(_text(item[0]))
    return ids


def _publish_audit(
    client: Client,
    conn: psycopg.Connection[Any],
    ids: _IdClock,
    key: bytes,
    *,
    audit_events: Iterable[Mapping[str, Any]] | None,
    backlog: int,
    tail: int,
) -> tuple[list[str], list[str]]:
    """Signed audit messages: the acknowledged tail of ingested rows, then the backlog."""
    acked: list[str] = []
    for row in _ingested_tail(conn, tail):
        data = wire_json(row["event"])
        sig = producer_signature(key, data)
        if row["ingest_signature"] not in (None, sig):
            continue  # the stored signature covers bytes we cannot reproduce: leave it out
        client.xadd(AUDIT_STREAM, {"id": row["event"]["id"], "data": data, "sig": sig},
                    id=ids.next(AUDIT_STREAM, row["ingested_at"]))
        acked.append(row["event"]["id"])
    if audit_events is None:
        audit_events = _default_backlog(conn, backlog)
    events = list(audit_events)
    for event in events:
        data = wire_json(event)
        at = event["occurred_at"]
        client.xadd(AUDIT_STREAM,
                    {"id": str(event["id"]), "data": data, "sig": producer_signature(key, data)},
                    id=ids.next(AUDIT_STREAM, at if isinstance(at, dt.datetime) else _now(conn)))
    if acked:
        read = _read_ids(client.xreadgroup(AUDIT_GROUP, AUDIT_CONSUMER, {AUDIT_STREAM: ">"},
                                           count=len(acked)))
        client.xack(AUDIT_STREAM, AUDIT_GROUP, *read)
    half = (len(events) + 1) // 2
    if half:
        client.xreadgroup(AUDIT_GROUP, AUDIT_CONSUMER, {AUDIT_STREAM: ">"}, count=half)
    return acked, [str(e["id"]) for e in events]


def _ingested_tail(conn: psycopg.Connection[Any], tail: int) -> list[dict[str, Any]]:
    if tail <= 0:
        return []
    rows = conn.execute(
        "SELECT id, zone_id, event_type, request_id, decision, policy_set_id,"
        " policy_set_version_id, manifest_sha, evaluation_status,"
        " determining_policies_json::text, diagnostics_json::text, metadata_json::text,"
        " occurred_at, ingested_at, ingest_signature"
        " FROM (SELECT * FROM audit_events ORDER BY ingested_at DESC, id DESC LIMIT %s) t"
        " ORDER BY ingested_at, zone_id, chain_seq",
        (tail,),
    ).fetchall()
    names = ("id", "zone_id", "event_type", "request_id", "decision", "policy_set_id",
             "policy_set_version_id", "manifest_sha", "evaluation_status",
             "determining_policies_json", "diagnostics_json", "metadata_json", "occurred_at")
    return [
        {"event": dict(zip(names, row[:13], strict=True)), "ingested_at": row[13],
         "ingest_signature": row[14]}
        for row in rows
    ]


def _default_backlog(conn: psycopg.Connection[Any], count: int) -> list[dict[str, Any]]:
    if count <= 0:
        return []
    zones = [r[0] for r in conn.execute(
        "SELECT DISTINCT zone_id FROM audit_events ORDER BY 1").fetchall()]
    if not zones:
        zones = [r[0] for r in conn.execute("SELECT id FROM zones ORDER BY id").fetchall()]
    row = conn.execute("SELECT max(ingested_at) FROM audit_events").fetchone()
    start = (row[0] if row and row[0] else _now(conn)) + dt.timedelta(seconds=1)
    return undelivered_events(zones, count=count, start=start, producer="sts", seed="redis-backlog")


def _now(conn: psycopg.Connection[Any]) -> dt.datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- observation


def stream_state(client: Client, name: str) -> StreamState:
    """Length, last id and groups of one stream."""
    info = client.xinfo_stream(name)
    groups = tuple(
        GroupState(
            name=_text(g["name"]),
            last_delivered_id=_text(g["last-delivered-id"]),
            pending=int(g["pending"]),
            entries_read=_int_or_none(g.get("entries-read")),
            lag=_int_or_none(g.get("lag")),
        )
        for g in client.xinfo_groups(name)
    )
    return StreamState(name, int(info["length"]), _text(info["last-generated-id"]), groups)

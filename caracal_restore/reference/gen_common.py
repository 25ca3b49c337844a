"""Shared pieces of the reference data generator: formats, ids, time span and the build context.

Formats here are facts (FACTS-2026.06 §2.2, §2.3, §4; FACTS-1.0 §4.1, §5, §14.2): the
application secret hash ``argon2id$<salt>$<hash>``, the manifest hash over compact JSON, Go's
RFC 3339 time on the audit wire, JavaScript's ISO time in the admin audit hash.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import random
import secrets as os_random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from argon2.low_level import Type, hash_secret_raw
from psycopg import sql

from caracal_restore import chainhash, envelope
from caracal_restore.profiles import Profile
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.redact import REDACTOR
from caracal_restore.reference import schema

UTC = dt.UTC
US = dt.timedelta(microseconds=1)
CONTROL_AUDIENCE = "caracal-control"
ARGON2_PARAMS: dict[str, int] = {"time_cost": 3, "memory_cost": 65536, "parallelism": 2,
                                 "hash_len": 32}
RETENTION: dict[str, int] = dict(PROFILE.retention_defaults)
AUDIT_RETENTION = dt.timedelta(days=RETENTION["AUDIT_RETENTION_DAYS"])
DELEGATION_RETENTION = dt.timedelta(days=RETENTION["DELEGATION_RETENTION_DAYS"])
OUTBOX_RETENTION = dt.timedelta(days=RETENTION["OUTBOX_RETENTION_DAYS"])


@dataclasses.dataclass(frozen=True)
class Volume:
    """How much data to generate (per zone unless the name says otherwise)."""

    zones: int = 3
    applications_per_zone: int = 3
    resources_per_zone: int = 3
    sessions_per_zone: int = 20
    agents_per_zone: int = 10
    edges_per_zone: int = 8
    audit_events: int = 5000
    admin_audit_events: int = 50
    months: int = 14
    #: Audit events drained late (ingested days after they occurred): with retention they
    #: leave holes in the middle of a chain (FACTS-1.0 §4.8). Off by default.
    late_audit_events: int = 0
    #: Audit traffic comes in busy hours: events are spread over about
    #: ``audit_events / audit_events_per_busy_hour`` distinct hours of the span, so the hourly
    #: export writes that many objects (1 spreads them over every hour of the span).
    audit_events_per_busy_hour: int = 25


# --------------------------------------------------------------------------- formats


def uuid7(rng: random.Random, at: dt.datetime) -> str:
    """A UUIDv7-shaped id whose time part is ``at`` and whose random bits come from ``rng``."""
    ms = (at - chainhash.EPOCH) // dt.timedelta(milliseconds=1)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | rng.getrandbits(12) << 64
        | 0b10 << 62
        | rng.getrandbits(62)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def compact(value: Any) -> str:
    """Compact JSON as JavaScript's JSON.stringify / Go's json.Marshal write it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    """Lowercase hex SHA-256 of UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


def b64_nopad(raw: bytes) -> str:
    """Standard base64 without padding."""
    return base64.b64encode(raw).decode().rstrip("=")


def _b64_decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_client_secret(secret: str, salt: bytes | None = None) -> str:
    """``argon2id$<saltB64>$<hashB64>`` exactly as the 06.21 API stores application secrets."""
    salt = salt if salt is not None else os_random.token_bytes(16)
    raw = hash_secret_raw(secret.encode(), salt, type=Type.ID, **ARGON2_PARAMS)
    return f"argon2id${b64_nopad(salt)}${b64_nopad(raw)}"


def unknown_secret_hash() -> str:
    """A well-formed hash whose secret nobody knows (cheap stand-in for non-canary apps)."""
    return f"argon2id${b64_nopad(os_random.token_bytes(16))}${b64_nopad(os_random.token_bytes(32))}"


def verify_client_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` matches a stored ``argon2id$salt$hash`` value."""
    kind, salt_b64, hash_b64 = stored.split("$")
    if kind != "argon2id":
        return False
    raw = hash_secret_raw(secret.encode(), _b64_decode(salt_b64), type=Type.ID, **ARGON2_PARAMS)
    return raw == _b64_decode(hash_b64)


def new_client_secret() -> str:
    """A fresh application client secret: ``cs_`` + base64url(32 random bytes)."""
    value = "cs_" + base64.urlsafe_b64encode(os_random.token_bytes(32)).decode().rstrip("=")
    REDACTOR.add(value)
    return value


def manifest_sha256(policy_version_ids: Sequence[str]) -> str:
    """SHA-256 hex of the compact manifest JSON ``[{"policy_version_id":"…"},…]``."""
    return sha256_hex(compact([{"policy_version_id": v} for v in policy_version_ids]))


def go_time(at: dt.datetime) -> str:
    """Go's RFC 3339 with trimmed nanoseconds, UTC ``Z`` (the audit wire format)."""
    at = at.astimezone(UTC)
    base = at.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{at.microsecond:06d}".rstrip("0")
    return f"{base}.{frac}Z" if frac else f"{base}Z"


def iso_millis(at: dt.datetime) -> str:
    """JavaScript ``toISOString()`` (millisecond precision, ``Z``)."""
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S") + f".{at.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------- time span


def span_start(now: dt.datetime, months: int) -> dt.datetime:
    """Start of the first month of a ``months``-month span ending in ``now``'s month."""
    first = schema.add_months(schema.month_start(now.astimezone(UTC).date()),
                              -(max(months, 1) - 1))
    return dt.datetime(first.year, first.month, 1, tzinfo=UTC)


def span_months(now: dt.datetime, months: int, ahead: int = 3) -> list[dt.date]:
    """Monthly partitions a database of that span needs: the span plus ``ahead`` months."""
    last = schema.add_months(schema.month_start(now.astimezone(UTC).date()), ahead)
    return schema.month_range(span_start(now, months).date(), last)


def installed_at(now: dt.datetime, months: int) -> dt.datetime:
    """When the reference deployment was installed (two days before its first audit month)."""
    return span_start(now, months) - dt.timedelta(days=2)


def copy_rows(conn: psycopg.Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """COPY dict rows (all with the same keys) into a table."""
    if not rows:
        return
    columns = list(rows[0])
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur, cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row([row[c] for c in columns])


# --------------------------------------------------------------------------- build context


@dataclasses.dataclass
class ZoneState:
    """What the builders remember about one zone while generating it."""

    id: str
    index: int
    created_at: dt.datetime
    managed_apps: list[str] = dataclasses.field(default_factory=list)
    users: list[str] = dataclasses.field(default_factory=list)
    resources: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    provider_none: str = ""
    providers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    policy_id: str = ""
    policy_versions: list[str] = dataclasses.field(default_factory=list)
    policy_set_id: str = ""
    #: (policy_set_version id, manifest_sha256, created_at), oldest first
    set_versions: list[tuple[str, str, dt.datetime]] = dataclasses.field(default_factory=list)
    sessions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    agents: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    signing_keys: list[str] = dataclasses.field(default_factory=list)


class Context:
    """The seeded generator, the clock, the keys and every row built so far (by table)."""

    def __init__(self, *, seed: int, volume: Volume, secrets: Mapping[str, str],
                 now: dt.datetime, canary_upstream_url: str, profile: Profile = PROFILE) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.seed = seed
        self.rng = random.Random(seed)
        self.volume = volume
        self.now = now.astimezone(UTC)
        # ``profile`` names the KEK/HMAC/admin-token secret files (1.0 reuses this context).
        self.kek = envelope.parse_kek(secrets[profile.kek_secret])
        self.audit_key = chainhash.parse_hmac_key(secrets[profile.audit_hmac_secret])
        self.admin_token = secrets[profile.admin_token_secret]
        self.canary_upstream_url = canary_upstream_url
        self.installed = installed_at(self.now, volume.months)
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.zones: list[ZoneState] = []
        self.binding_changes = 0
        self.binding_changed_at = self.installed
        self.bootstrap_token_id = ""
        self.canary_secret = new_client_secret()
        self.canary: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Context(seed={self.seed}, now={self.now.isoformat()}, zones={len(self.zones)})"

    def between(self, lo: dt.datetime, hi: dt.datetime) -> dt.datetime:
        """A uniformly random instant in [lo, hi] (microsecond precision; ``lo`` if hi < lo)."""
        span = (hi - lo) // US
        return lo if span <= 0 else lo + dt.timedelta(microseconds=self.rng.randrange(span + 1))

    def id_at(self, at: dt.datetime) -> str:
        """A UUIDv7-shaped id for an object created at ``at``."""
        return uuid7(self.rng, at)

    def hex(self, n: int) -> str:
        """``n`` random hex characters from the seeded generator."""
        return f"{self.rng.getrandbits(4 * n):0{n}x}"

    def routed_resources(self, zone: ZoneState) -> list[dict[str, Any]]:
        """Unarchived non-control resources with an upstream (each must have a binding)."""
        return [r for r in zone.resources if r["upstream_url"] and r["archived_at"] is None
                and r["identifier"] != CONTROL_AUDIENCE]

    def revoke_session_tree(self, zone: ZoneState, session_id: str) -> None:
        """STS RevokeSession: the session and every descendant through ``parent_id``."""
        todo = [session_id]
        while todo:
            sid = todo.pop()
            for s in zone.sessions:
                if s["id"] == sid:
                    s["status"] = "revoked"
                elif s["parent_id"] == sid and s["status"] != "revoked":
                    todo.append(s["id"])

    def outbox_event(self, stream: str, at: dt.datetime, payload: Mapping[str, Any], *,
                     request_id: str | None = None) -> dict[str, Any]:
        """An API ``event_outbox`` row, dispatched 250 ms after it was written."""
        row = {
            "id": self.id_at(at), "stream_name": stream, "payload_json": compact(dict(payload)),
            "attempts": 1, "available_at": at, "locked_until": None, "locked_by": None,
            "last_error": None,
            "dispatched_at": min(at + dt.timedelta(milliseconds=250), self.now),
            "request_id": request_id or self.id_at(at), "created_at": at,
        }
        self.rows["event_outbox"].append(row)
        return row

    def coordinator_outbox(self, topic: str, dedupe_key: str, at: dt.datetime,
                           payload: Mapping[str, Any], *, published: bool) -> None:
        """A Coordinator ``caracal_outbox`` row (published 0.8 s later, or still pending)."""
        published_at = min(self.now, at + dt.timedelta(milliseconds=800)) if published else None
        self.rows["caracal_outbox"].append({
            "id": self.id_at(at), "producer": "coordinator", "topic": topic,
            "dedupe_key": dedupe_key, "payload_json": compact(dict(payload)),
            "status": "published" if published else "pending",
            "attempts": 1 if published else 0, "available_at": at,
            "published_at": published_at, "created_at": at,
            "updated_at": published_at or at,
        })

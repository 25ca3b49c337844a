"""Deterministic data generator: a 2026.06 Caracal database written the way Caracal writes it.

``populate`` fills a database that ``schema.apply_schema`` created. Identifiers and choices
come from ``random.Random(seed)`` (so a seed and a ``now`` give the same ids every time);
key material, salts and nonces are fresh randomness. What is exact, because the checks
depend on it (FACTS-2026.06 and FACTS-1.0):

- zone signing keys: P-256 ``EC PRIVATE KEY`` PEM sealed with ZONE_KEK (split layout),
  provider secret configs sealed the same way, provider grant tokens packed;
- application client secrets: ``argon2id$<salt>$<hash>`` (t=3, m=65536, p=2, 32 bytes);
- policy versions and policy-set manifests with their SHA-256 columns;
- gateway bindings for every unarchived non-control resource with an upstream, and a
  revision counter equal to the number of binding changes;
- outbox payloads of ``caracal.sessions.revoke`` / ``caracal.policy.invalidate``;
- the per-zone audit chain (content hash over the server's own ``jsonb::text``, chain HMAC,
  producer signature over the wire JSON), then the 06.21 retention loop at ``now``;
- the admin-audit chain as Compose writes it (zone rows only, ``chain_hmac`` NULL).

The data is retention-compliant at ``now``: nothing the Coordinator cleaner or the audit
retention loop would delete or change at ``now`` is present.
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
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from argon2 import PasswordHasher
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from psycopg import sql

from caracal_restore import chainhash, envelope
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.redact import REDACTOR
from caracal_restore.reference import policy as rego
from caracal_restore.reference import schema

if TYPE_CHECKING:
    from caracal_restore.environments.postgres import PostgresServer

UTC = dt.UTC
US = dt.timedelta(microseconds=1)
CONTROL_AUDIENCE = "caracal-control"
EXPORT_WATERMARK_NAME = "parquet-hourly"
SIGNING_KEY_NAME = "zone_signing_key"
ARGON2_PARAMS = {"time_cost": 3, "memory_cost": 65536, "parallelism": 2, "hash_len": 32}

_RETENTION = dict(PROFILE.retention_defaults)
AUDIT_RETENTION = dt.timedelta(days=_RETENTION["AUDIT_RETENTION_DAYS"])
DELEGATION_RETENTION = dt.timedelta(days=_RETENTION["DELEGATION_RETENTION_DAYS"])
OUTBOX_RETENTION = dt.timedelta(days=_RETENTION["OUTBOX_RETENTION_DAYS"])


# --------------------------------------------------------------------------- public records


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
    """The surviving part of one zone's audit chain after retention."""

    zone_id: str
    first_seq: int
    last_seq: int
    rows: int
    head_content_sha256: str


@dataclasses.dataclass(frozen=True)
class ReferenceData:
    """What populate wrote: ids, the canary, counts and the audit chain heads."""

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


# --------------------------------------------------------------------------- small helpers


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


def hash_client_secret(secret: str, salt: bytes | None = None) -> str:
    """``argon2id$<saltB64>$<hashB64>`` exactly as the 06.21 API stores application secrets."""
    salt = salt if salt is not None else os_random.token_bytes(16)
    raw = hash_secret_raw(secret.encode(), salt, type=Type.ID, **ARGON2_PARAMS)
    return f"argon2id${b64_nopad(salt)}${b64_nopad(raw)}"


def verify_client_secret(secret: str, stored: str) -> bool:
    """True when ``secret`` matches a stored ``argon2id$salt$hash`` value."""
    kind, salt_b64, hash_b64 = stored.split("$")
    if kind != "argon2id":
        return False
    salt = base64.b64decode(salt_b64 + "=" * (-len(salt_b64) % 4))
    expected = base64.b64decode(hash_b64 + "=" * (-len(hash_b64) % 4))
    raw = hash_secret_raw(secret.encode(), salt, type=Type.ID, **ARGON2_PARAMS)
    return raw == expected


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


def audit_wire_json(event: Mapping[str, Any]) -> bytes:
    """The ``data`` bytes a Go producer sends for an event (struct key order, omitempty)."""
    parts = [
        f'"id":{compact(event["id"])}',
        f'"zone_id":{compact(event["zone_id"])}',
        f'"event_type":{compact(event["event_type"])}',
        f'"request_id":{compact(event["request_id"] or "")}',
        f'"decision":{compact(event["decision"] or "")}',
    ]
    for key in ("policy_set_id", "policy_set_version_id", "manifest_sha"):
        if event[key]:
            parts.append(f'"{key}":{compact(event[key])}')
    parts.append(f'"evaluation_status":{compact(event["evaluation_status"] or "")}')
    parts.append(f'"determining_policies_json":{event["determining_policies_json"] or "null"}')
    parts.append(f'"diagnostics_json":{event["diagnostics_json"] or "null"}')
    if event["metadata_json"]:
        parts.append(f'"metadata_json":{event["metadata_json"]}')
    parts.append(f'"occurred_at":{compact(go_time(event["occurred_at"]))}')
    return ("{" + ",".join(parts) + "}").encode()


def span_start(now: dt.datetime, months: int) -> dt.datetime:
    """Start of the first month of a ``months``-month span ending in ``now``'s month."""
    first = schema.add_months(schema.month_start(now.date()), -(max(months, 1) - 1))
    return dt.datetime(first.year, first.month, 1, tzinfo=UTC)


def span_months(now: dt.datetime, months: int, ahead: int = 3) -> list[dt.date]:
    """Monthly partitions a database of that span needs: the span plus ``ahead`` months."""
    last = schema.add_months(schema.month_start(now.date()), ahead)
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


# --------------------------------------------------------------------------- the builder


@dataclasses.dataclass
class _Zone:
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
    set_versions: list[tuple[str, str, dt.datetime]] = dataclasses.field(default_factory=list)
    sessions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    agents: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    signing_keys: list[str] = dataclasses.field(default_factory=list)


class _Builder:
    """Builds every row in memory (deterministic ids), then writes them in FK order."""

    def __init__(
        self,
        *,
        seed: int,
        volume: Volume,
        secrets: Mapping[str, str],
        now: dt.datetime,
        canary_upstream_url: str,
    ) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self.seed = seed
        self.rng = random.Random(seed)
        self.volume = volume
        self.now = now.astimezone(UTC)
        self.kek = envelope.parse_kek(secrets[PROFILE.kek_secret])
        self.audit_key = chainhash.parse_hmac_key(secrets[PROFILE.audit_hmac_secret])
        self.admin_token = secrets[PROFILE.admin_token_secret]
        self.canary_upstream_url = canary_upstream_url
        self.installed = installed_at(self.now, volume.months)
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.zones: list[_Zone] = []
        self.binding_changes = 0
        self.binding_changed_at = self.installed
        self.canary_secret = new_client_secret()
        self.canary: dict[str, Any] = {}

    # ---------------------------------------------------------------- randomness helpers

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

    # ---------------------------------------------------------------- product state

    def build_zones(self) -> None:
        """Zones (dek_ciphertext is filled by SQL at insert time)."""
        for zi in range(self.volume.zones):
            created = self.installed + dt.timedelta(hours=1 + zi)
            zone = _Zone(id=self.id_at(created), index=zi, created_at=created)
            self.zones.append(zone)
            self.rows["zones"].append({
                "id": zone.id, "name": f"Reference zone {zi + 1}", "slug": f"reference-{zi + 1}",
                "dcr_enabled": zi % 2 == 1, "created_at": created, "updated_at": created,
            })

    def _seal_config(self, config: Mapping[str, str]) -> tuple[bytes, bytes]:
        REDACTOR.add(*config.values())
        return envelope.zone_seal(self.kek, compact(dict(config)).encode())

    def build_providers(self) -> None:
        """provider-none-<zone> plus api_key, OAuth and caracal_mandate providers per zone."""
        for zone in self.zones:
            at = zone.created_at + dt.timedelta(minutes=5)
            zone.provider_none = f"provider-none-{zone.id}"
            specs: list[tuple[str, str, str, str, dict[str, Any], dict[str, str] | None]] = [
                (zone.provider_none, "none", "none", "provider://none", {}, None),
                (self.id_at(at), "Reference API key", "api_key", "provider://reference/api-key",
                 {"header_name": "X-Api-Key"},
                 {"api_key": "ak_" + os_random.token_urlsafe(24)}),
                (self.id_at(at), "Reference OAuth", "oauth2_authorization_code",
                 "provider://reference/oauth",
                 {"authorize_url": "http://idp.caracal.test/authorize",
                  "token_url": "http://idp.caracal.test/token",
                  "client_id": f"ref-client-{self.hex(8)}"},
                 {"client_secret": "ocs_" + os_random.token_urlsafe(24)}),
                (self.id_at(at), "Reference mandate", "caracal_mandate",
                 "provider://reference/mandate", {}, None),
            ]
            for pid, name, kind, identifier, config, secret in specs:
                ct, nonce = self._seal_config(secret) if secret else (None, None)
                row = {
                    "id": pid, "zone_id": zone.id, "name": name, "identifier": identifier,
                    "config_json": compact(config), "created_at": at, "updated_at": at,
                    "secret_config_ct": ct, "secret_config_nonce": nonce,
                    "secret_config_keys": sorted(secret) if secret else [],
                    "provider_kind": kind,
                }
                zone.providers.append(row)
                self.rows["providers"].append(row)

    def build_applications(self) -> None:
        """Managed apps (the canary is zone 1's first), one archived app, DCR apps."""
        for zone in self.zones:
            at = zone.created_at + dt.timedelta(minutes=10)
            for ai in range(self.volume.applications_per_zone):
                canary = zone.index == 0 and ai == 0
                secret = self.canary_secret if canary else new_client_secret()
                app_id = self.id_at(at)
                zone.managed_apps.append(app_id)
                self.rows["applications"].append({
                    "id": app_id, "zone_id": zone.id,
                    "name": "canary" if canary else f"reference-app-{ai + 1}",
                    "registration_method": "managed", "credential_type": "token",
                    "client_secret_hash": hash_client_secret(secret),
                    "traits": ["canary"] if canary else self.rng.sample(
                        ["agent", "service", "batch"], self.rng.randint(0, 2)),
                    "expires_at": None, "archived_at": None, "created_at": at,
                })
                if canary:
                    self.canary.update(zone_id=zone.id, application_id=app_id)
                at += dt.timedelta(minutes=1)
            if zone.index == 0:
                self.rows["applications"].append(self._app(zone, at, "retired-app", "managed",
                                                           archived=True))
            if zone.index % 2 == 1:
                self.rows["applications"].append(self._app(zone, self.now - dt.timedelta(
                    hours=3), "dcr-client", "dcr", expires=self.now + dt.timedelta(days=30)))
            zone.users = [f"usr_{self.hex(12)}" for _ in range(4)]

    def _app(self, zone: _Zone, at: dt.datetime, name: str, method: str, *,
             archived: bool = False, expires: dt.datetime | None = None) -> dict[str, Any]:
        return {
            "id": self.id_at(at), "zone_id": zone.id, "name": name,
            "registration_method": method, "credential_type": "token",
            "client_secret_hash": hash_client_secret(new_client_secret()),
            "traits": [], "expires_at": expires,
            "archived_at": at + dt.timedelta(days=3) if archived else None, "created_at": at,
        }

    def build_resources(self) -> None:
        """Control resource, gateway-routed resources (one is the canary), one archived."""
        for zone in self.zones:
            at = zone.created_at + dt.timedelta(minutes=20)
            kinds = list(zone.providers)
            self._resource(zone, at, "Control", CONTROL_AUDIENCE, None, zone.provider_none,
                           ["agent:lifecycle", "coordinator.admin"])
            for ri in range(self.volume.resources_per_zone):
                at += dt.timedelta(minutes=1)
                if zone.index == 0 and ri == 0:
                    res = self._resource(zone, at, "Canary echo", "canary-echo",
                                         self.canary_upstream_url, zone.provider_none,
                                         ["read", "write"])
                    self.canary.update(resource_id=res["id"], resource_identifier="canary-echo")
                    continue
                identifier = f"reference-svc-{ri + 1}"
                provider = kinds[ri % len(kinds)]["id"]
                self._resource(zone, at, f"Reference service {ri + 1}", identifier,
                               f"http://canary.caracal.test/{identifier}", provider,
                               self.rng.sample(["read", "write", "admin"], 2))
            at += dt.timedelta(minutes=1)
            retired = self._resource(zone, at, "Retired service", "reference-retired",
                                     "http://canary.caracal.test/reference-retired",
                                     zone.provider_none, ["read"])
            retired["archived_at"] = at + dt.timedelta(days=20)
            retired["updated_at"] = retired["archived_at"]

    def _resource(self, zone: _Zone, at: dt.datetime, name: str, identifier: str,
                  upstream: str | None, provider_id: str, scopes: list[str]) -> dict[str, Any]:
        row = {
            "id": self.id_at(at), "zone_id": zone.id, "name": name, "identifier": identifier,
            "upstream_url": upstream, "credential_provider_id": provider_id, "scopes": scopes,
            "created_at": at, "updated_at": at, "archived_at": None,
        }
        zone.resources.append(row)
        self.rows["resources"].append(row)
        return row

    def routed_resources(self, zone: _Zone) -> list[dict[str, Any]]:
        """Unarchived non-control resources with an upstream (each must have a binding)."""
        return [r for r in zone.resources if r["upstream_url"] and r["archived_at"] is None
                and r["identifier"] != CONTROL_AUDIENCE]

    def build_bindings(self) -> None:
        """Gateway bindings as the API's syncGatewayBinding leaves them, with the revision."""
        for zone in self.zones:
            for res in zone.resources:
                if not res["upstream_url"] or res["identifier"] == CONTROL_AUDIENCE:
                    continue
                if res["identifier"] == self.canary.get("resource_identifier") and \
                        zone.id == self.canary["zone_id"]:
                    app = self.canary["application_id"]
                else:
                    app = self.rng.choice(zone.managed_apps)
                self._binding_change(res["created_at"])
                if res["archived_at"] is not None:  # DELETE archived it and removed the binding
                    self._binding_change(res["archived_at"])
                    continue
                row = {"resource_identifier": res["identifier"], "application_id": app,
                       "zone_id": zone.id, "created_at": res["created_at"],
                       "updated_at": res["created_at"]}
                others = [a for a in zone.managed_apps if a != app]
                if others and res["identifier"] != "canary-echo" and self.rng.random() < 0.3:
                    # rebound once to another app, then back (two upserts)
                    for when in (res["created_at"] + dt.timedelta(days=1),
                                 res["created_at"] + dt.timedelta(days=2)):
                        self._binding_change(when)
                    row["updated_at"] = res["created_at"] + dt.timedelta(days=2)
                self.rows["gateway_resource_bindings"].append(row)

    def _binding_change(self, at: dt.datetime) -> None:
        self.binding_changes += 1
        self.binding_changed_at = max(self.binding_changed_at, at)

    def build_signing_keys(self) -> None:
        """One or two zone signing keys per zone (P-256 SEC1 PEM sealed under ZONE_KEK)."""
        for zone in self.zones:
            versions = 2 if zone.index == 0 else self.rng.choice((1, 2))
            first = zone.created_at + dt.timedelta(minutes=30)
            times = [first]
            if versions == 2:
                times.append(self.between(max(first + dt.timedelta(hours=1),
                                              self.now - dt.timedelta(days=40)),
                                          self.now - dt.timedelta(days=2)))
            for version, at in enumerate(times, start=1):
                key = ec.generate_private_key(ec.SECP256R1())
                pem = key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
                ct, nonce = envelope.zone_seal(self.kek, pem)
                kid = self.id_at(at)
                zone.signing_keys.append(kid)
                self.rows["secrets"].append({
                    "id": kid, "zone_id": zone.id, "entity_id": zone.id,
                    "name": SIGNING_KEY_NAME, "type": "token", "ciphertext": ct, "nonce": nonce,
                    "dek_id": PROFILE.kek_secret, "version": version, "created_at": at,
                    "updated_at": at,
                })

    def build_admin_tokens(self) -> None:
        """The env-bootstrap token row (+ a revoked predecessor and a zone token)."""
        hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=2, hash_len=32,
                                salt_len=16)
        boot = self.installed + dt.timedelta(minutes=1)
        old = "old-" + os_random.token_hex(16)
        zone_token = os_random.token_hex(32)
        REDACTOR.add(old, zone_token)
        rotated = self.installed + dt.timedelta(days=1)
        self.rows["admin_tokens"] += [
            {"id": self.id_at(boot), "name": "bootstrap",
             "token_sha256": hashlib.sha256(old.encode()).digest(), "scope": "global",
             "zone_id": None, "created_by": "env-bootstrap", "created_at": boot,
             "last_used_at": boot, "revoked_at": rotated, "token_hash": None},
            {"id": self.id_at(rotated), "name": "bootstrap",
             "token_sha256": hashlib.sha256(self.admin_token.encode()).digest(),
             "scope": "global", "zone_id": None, "created_by": "env-bootstrap",
             "created_at": rotated, "last_used_at": self.now - dt.timedelta(minutes=7),
             "revoked_at": None, "token_hash": hasher.hash(self.admin_token)},
            {"id": self.id_at(rotated), "name": "zone operator",
             "token_sha256": hashlib.sha256(zone_token.encode()).digest(), "scope": "zone",
             "zone_id": self.zones[0].id if self.zones else None, "created_by": "admin",
             "created_at": rotated, "last_used_at": None, "revoked_at": None,
             "token_hash": hasher.hash(zone_token)},
        ]
        self.bootstrap_token_id = self.rows["admin_tokens"][1]["id"]

    def build_provider_grants(self) -> None:
        """User credentials for the OAuth provider (packed seals of access/refresh tokens)."""
        for zone in self.zones:
            oauth = next(p for p in zone.providers
                         if p["provider_kind"] == "oauth2_authorization_code")
            routed = self.routed_resources(zone)
            if not routed:
                continue
            for ui, user in enumerate(zone.users[:3]):
                at = self.between(zone.created_at + dt.timedelta(days=1),
                                  self.now - dt.timedelta(days=1))
                status = ("active", "revoked", "expired")[ui % 3]
                access = "at_" + os_random.token_urlsafe(24)
                refresh = "rt_" + os_random.token_urlsafe(24)
                REDACTOR.add(access, refresh)
                self.rows["provider_grants"].append({
                    "id": self.id_at(at), "zone_id": zone.id, "user_id": user,
                    "resource_id": routed[ui % len(routed)]["id"], "provider_id": oauth["id"],
                    "scopes": ["read"], "status": status,
                    "access_token_ct": envelope.zone_seal_packed(self.kek, access.encode()),
                    "refresh_token_ct": envelope.zone_seal_packed(self.kek, refresh.encode()),
                    "expires_at": at + dt.timedelta(hours=1), "refreshed_at": at,
                    "refresh_token_version": ui, "created_at": at, "updated_at": at,
                })

    # ---------------------------------------------------------------- policies

    def build_policies(self) -> None:
        """One policy (two versions), one policy set (two versions), an active binding."""
        for zone in self.zones:
            at = zone.created_at + dt.timedelta(hours=1)
            zone.policy_id = self.id_at(at)
            self.rows["policies"].append({
                "id": zone.policy_id, "zone_id": zone.id, "name": "reference-access",
                "description": "Reference deployment access policy", "owner_type": "customer",
                "archived_at": None, "created_by": "env-bootstrap", "created_at": at,
                "updated_at": at,
            })
            bound = {(b["application_id"], b["resource_identifier"])
                     for b in self.rows["gateway_resource_bindings"] if b["zone_id"] == zone.id}
            extra = [(a, r["identifier"]) for a in zone.managed_apps
                     for r in self.routed_resources(zone)]
            allows_v2 = sorted(bound) + self.rng.sample(extra, min(2, len(extra)))
            allows_v1 = sorted(bound)[:1]
            v2_at = self.between(max(at + dt.timedelta(hours=1), self.now - dt.timedelta(days=60)),
                                 self.now - dt.timedelta(days=5))
            for version, (allows, when) in enumerate(((allows_v1, at), (allows_v2, v2_at)), 1):
                content = rego.render_policy(zone.policy_id, allows)
                pv = self.id_at(when)
                zone.policy_versions.append(pv)
                self.rows["policy_versions"].append({
                    "id": pv, "policy_id": zone.policy_id, "version": version,
                    "content": content, "content_sha256": sha256_hex(content),
                    "schema_version": "1", "created_by": "env-bootstrap", "created_at": when,
                    "archived_at": None,
                })
            zone.policy_set_id = self.id_at(at)
            self.rows["policy_sets"].append({
                "id": zone.policy_set_id, "zone_id": zone.id, "name": "reference",
                "description": None, "scope_type": "zone", "owner_type": "customer",
                "archived_at": None, "created_by": "env-bootstrap", "created_at": at,
                "updated_at": at,
            })
            for version, pv in enumerate(zone.policy_versions, 1):
                when = at if version == 1 else v2_at + dt.timedelta(minutes=2)
                manifest = [{"policy_version_id": pv}]
                psv = self.id_at(when)
                sha = manifest_sha256([pv])
                zone.set_versions.append((psv, sha, when))
                self.rows["policy_set_versions"].append({
                    "id": psv, "policy_set_id": zone.policy_set_id, "version": version,
                    "manifest_json": compact(manifest), "manifest_sha256": sha,
                    "schema_version": "1", "created_by": "env-bootstrap", "created_at": when,
                    "archived_at": None,
                })
            shadow = zone.set_versions[0][0] if zone.index == 1 else None
            for psv, _sha, when in zone.set_versions:
                activated = when + dt.timedelta(seconds=30)
                self._outbox_event("caracal.policy.invalidate", activated, {
                    "zone_id": zone.id, "policy_set_id": zone.policy_set_id,
                    "policy_set_version_id": psv,
                    "shadow_version_id": shadow if psv == zone.set_versions[-1][0] else None,
                })
            self.rows["policy_set_bindings"].append({
                "zone_id": zone.id, "policy_set_id": zone.policy_set_id,
                "active_version_id": zone.set_versions[-1][0], "shadow_version_id": shadow,
                "updated_at": zone.set_versions[-1][2] + dt.timedelta(seconds=30),
            })
            if zone.index == 0:
                self.canary.update(policy_id=zone.policy_id, policy_set_id=zone.policy_set_id,
                                   policy_set_version_id=zone.set_versions[-1][0],
                                   manifest_sha256=zone.set_versions[-1][1])

    def _outbox_event(self, stream: str, at: dt.datetime, payload: Mapping[str, Any],
                      *, request_id: str | None = None) -> dict[str, Any]:
        row = {
            "id": self.id_at(at), "stream_name": stream, "payload_json": compact(dict(payload)),
            "attempts": 1, "available_at": at, "locked_until": None, "locked_by": None,
            "last_error": None, "dispatched_at": min(at + dt.timedelta(milliseconds=250),
                                                     self.now),
            "request_id": request_id or self.id_at(at), "created_at": at,
        }
        self.rows["event_outbox"].append(row)
        return row

    # ---------------------------------------------------------------- STS sessions, grants

    def build_sessions(self) -> None:
        """STS token lineage: application and user sessions, resource mandates as children."""
        for zone in self.zones:
            roots: list[dict[str, Any]] = []
            for k in range(self.volume.sessions_per_zone):
                parent = roots[self.rng.randrange(len(roots))] if (
                    roots and self.rng.random() < 0.3) else None
                if parent is not None:
                    created = min(self.now, parent["created_at"] + dt.timedelta(
                        seconds=self.rng.randint(1, 600)))
                    session = self._session(zone, created, parent["session_type"],
                                            parent["subject_id"], parent["_client"],
                                            parent=parent, ttl=900)
                else:
                    created = self._session_time(zone, k)
                    if self.rng.random() < 0.4 or not zone.users:
                        app = self.rng.choice(zone.managed_apps)
                        session = self._session(zone, created, "application", app, app)
                    else:
                        session = self._session(zone, created, "user",
                                                self.rng.choice(zone.users),
                                                self.rng.choice(zone.managed_apps))
                    roots.append(session)
            zone.sessions.sort(key=lambda s: s["created_at"])

    def _session_time(self, zone: _Zone, k: int) -> dt.datetime:
        roll = self.rng.random()
        if k < 2 or roll < 0.3:
            return self.between(self.now - dt.timedelta(hours=2), self.now - dt.timedelta(
                seconds=30))
        if roll < 0.6:
            return self.between(self.now - dt.timedelta(days=30), self.now)
        return self.between(zone.created_at + dt.timedelta(days=1), self.now)

    def _session(self, zone: _Zone, created: dt.datetime, kind: str, subject: str,
                 client: str, *, parent: dict[str, Any] | None = None,
                 ttl: int | None = None) -> dict[str, Any]:
        ttl = ttl or self.rng.choice((900, 1800, 3600))
        use = "resource" if parent else "session"
        claims = {"client_id": client, "sub_type": kind, "use": use,
                  "scope": "read" if parent else ""}
        row = {
            "id": self.id_at(created), "zone_id": zone.id, "session_type": kind,
            "subject_id": subject, "parent_id": parent["id"] if parent else None,
            "status": "active", "expires_at": created + dt.timedelta(seconds=ttl),
            "authenticated_at": parent["authenticated_at"] if parent else created,
            "claims_json": compact(claims), "created_at": created, "_client": client,
        }
        zone.sessions.append(row)
        return row

    def revoke_session_tree(self, zone: _Zone, session_id: str) -> None:
        """STS RevokeSession: the session and every descendant through parent_id."""
        todo = [session_id]
        while todo:
            sid = todo.pop()
            for s in zone.sessions:
                if s["id"] == sid:
                    s["status"] = "revoked"
                elif s["parent_id"] == sid and s["status"] != "revoked":
                    todo.append(s["id"])

    def build_delegated_grants(self) -> None:
        """Access grants; a revoked grant revoked its user's sessions and queued events."""
        pending_marked = False
        for zone in self.zones:
            routed = self.routed_resources(zone)
            if not routed or not zone.users:
                continue
            subjects = [s["subject_id"] for s in zone.sessions if s["session_type"] == "user"]
            for gi in range(4):
                status = ("active", "revoked", "active", "expired")[gi]
                user = (self.rng.choice(subjects) if status == "revoked" and subjects
                        else zone.users[gi % len(zone.users)])
                created = zone.created_at + dt.timedelta(days=1 + gi)
                updated = created
                grant_id = self.id_at(created)
                if status == "revoked":
                    updated = self.between(max(created + dt.timedelta(minutes=1),
                                               self.now - dt.timedelta(days=20)),
                                           self.now - dt.timedelta(minutes=10))
                    request_id = self.id_at(updated)
                    for s in zone.sessions:
                        if (s["subject_id"] == user and s["status"] == "active"
                                and s["created_at"] <= updated):
                            s["status"] = "revoked"
                            row = self._outbox_event("caracal.sessions.revoke", updated, {
                                "zone_id": zone.id, "session_id": s["id"],
                                "reason": "grant_revoked", "grant_id": grant_id,
                            }, request_id=request_id)
                            if not pending_marked:
                                self._mark_pending(row)
                                pending_marked = True
                elif status == "expired":
                    updated = created + dt.timedelta(days=30)
                self.rows["delegated_grants"].append({
                    "id": grant_id, "zone_id": zone.id,
                    "application_id": self.rng.choice(zone.managed_apps), "user_id": user,
                    "resource_id": routed[gi % len(routed)]["id"], "scopes": ["read"],
                    "status": status, "created_at": created, "updated_at": updated,
                })
        if not pending_marked and self.rows["event_outbox"]:
            self._mark_pending(max(self.rows["event_outbox"], key=lambda r: r["created_at"]))

    def _mark_pending(self, row: dict[str, Any]) -> None:
        """An undispatched (not dead) outbox row: one failed attempt, retry due."""
        row.update(dispatched_at=None, attempts=1, last_error="redis: connection refused",
                   available_at=row["created_at"] + dt.timedelta(seconds=2))

    def build_step_up(self) -> None:
        """Two human-approval challenges per zone (one consumed, one rejected)."""
        for zone in self.zones:
            for ci, outcome in enumerate(("consumed", "rejected")):
                session = zone.sessions[-1 - ci] if len(zone.sessions) > ci else None
                at = self.between(self.now - dt.timedelta(days=10), self.now - dt.timedelta(
                    hours=1))
                done = at + dt.timedelta(minutes=3)
                self.rows["step_up_challenges"].append({
                    "id": self.id_at(at), "zone_id": zone.id,
                    "session_id": session["id"] if session else None,
                    "challenge_type": "human_approval",
                    "metadata_json": compact({"resource": "reference-svc-2", "reason": "tier"}),
                    "created_at": at, "expires_at": at + dt.timedelta(minutes=15),
                    "satisfied_at": done if outcome == "consumed" else None,
                    "principal_id": session["subject_id"] if session else None,
                    "resource_set_hash": hashlib.sha256(f"{zone.id}:{ci}".encode()).digest(),
                    "consumed_at": done + dt.timedelta(seconds=5) if outcome == "consumed"
                    else None,
                    "approver_subject_id": zone.users[0] if zone.users else None,
                    "application_id": zone.managed_apps[0], "tier": "high",
                    "approver_class": "human", "privacy_mode": "standard",
                    "rejected_at": done if outcome == "rejected" else None,
                    "decision_reason": "approved" if outcome == "consumed" else "denied",
                    "approver_session_id": None,
                })

    # ---------------------------------------------------------------- Coordinator state

    #: The first agents of every zone, so each zone has every state the checks look at.
    AGENT_PLAN = ("service_active", "service_suspended", "task_active", "task_terminated_recent",
                  "task_terminated_now")

    def build_agents(self) -> None:
        """Agent sessions (task/service), topology, services, invocations."""
        for zone in self.zones:
            reserved: set[str] = set()
            for k in range(self.volume.agents_per_zone):
                plan = self.AGENT_PLAN[k] if k < len(self.AGENT_PLAN) else None
                self._agent(zone, plan, reserved)
            for agent in zone.agents:
                agent["child_count"] = sum(1 for a in zone.agents if a["parent_id"] == agent["id"])
            self._services_and_invocations(zone)

    def _subject_for(self, zone: _Zone, spawned: dt.datetime, reserved: set[str], *,
                     dedicated: bool) -> str:
        """A root session created before ``spawned``; ``dedicated``: an unused user session."""
        before = [s for s in zone.sessions if s["created_at"] <= spawned
                  and s["parent_id"] is None and s["id"] not in reserved]
        if dedicated:
            used = {a["subject_session_id"] for a in zone.agents}
            free = [s for s in before if s["session_type"] == "user" and s["id"] not in used]
            if free:
                reserved.add(free[-1]["id"])
                return str(free[-1]["id"])
        pool = before[-3:] if before else zone.sessions[:1]
        return str(self.rng.choice(pool)["id"])

    def _agent(self, zone: _Zone, plan: str | None, reserved: set[str]) -> None:
        now = self.now
        parents = [a for a in zone.agents if a["lifecycle"] == "task"
                   and a["status"] in ("active", "terminated")
                   and sum(1 for c in zone.agents if c["parent_id"] == a["id"]) < a["max_children"]]
        parent = self.rng.choice(parents) if (
            plan is None and parents and self.rng.random() < 0.4) else None
        row: dict[str, Any] = {
            "zone_id": zone.id, "application_id": self.rng.choice(zone.managed_apps),
            "parent_id": None, "depth": 0,
            "labels": sorted(self.rng.sample(["researcher", "planner", "executor", "reviewer"],
                                             self.rng.randint(1, 2))),
            "max_children": 10, "child_count": 0, "ttl_seconds": 3600, "lifecycle": "task",
            "last_heartbeat_at": None, "heartbeat_deadline_at": None, "terminated_at": None,
            "idempotency_key": f"idem-{self.hex(16)}" if self.rng.random() < 0.3 else None,
            "metadata_json": compact({"purpose": "reference", "run": self.rng.randint(1, 999)}),
        }
        if parent is not None:
            spawned = self._child_agent(row, parent)
        else:
            if plan is None:
                roll = self.rng.random()
                plan = ("service_active" if roll < 0.12 else "service_suspended" if roll < 0.25
                        else "task_active" if roll < 0.65 else "task_terminated")
            spawned = self._root_agent(row, plan)
            dedicated = plan in ("service_suspended", "task_terminated_recent",
                                 "task_terminated_now")
            row["subject_session_id"] = self._subject_for(zone, spawned, reserved,
                                                          dedicated=dedicated)
        row.update(id=self.id_at(spawned), spawned_at=spawned)
        zone.agents.append(row)
        if parent is not None:
            self.rows["agent_topology"].append({"parent_id": parent["id"], "child_id": row["id"],
                                                "created_at": spawned})

    def _child_agent(self, row: dict[str, Any], parent: dict[str, Any]) -> dt.datetime:
        """A task spawned by ``parent``; it shares the subject and ends with a terminated parent."""
        now = self.now
        row.update(parent_id=parent["id"], depth=parent["depth"] + 1,
                   subject_session_id=parent["subject_session_id"])
        spawned = self.between(parent["spawned_at"], parent["terminated_at"] or now)
        status = "terminated" if parent["status"] == "terminated" else self.rng.choice(
            ("active", "active", "terminated"))
        if status == "terminated":
            ended = parent["terminated_at"] or self.between(spawned, now)
            row.update(terminated_at=ended, last_active_at=ended, updated_at=ended)
        else:
            row.update(last_active_at=self.between(spawned, now))
            row["updated_at"] = row["last_active_at"]
        row["status"] = status
        return spawned

    def _root_agent(self, row: dict[str, Any], plan: str) -> dt.datetime:
        """A root agent in the state ``plan`` names, consistent with the sweepers at ``now``."""
        now, lease = self.now, dt.timedelta(seconds=_RETENTION["SERVICE_AGENT_LEASE_SECONDS"])
        if plan.startswith("service"):
            row.update(lifecycle="service", ttl_seconds=None)
            spawned = self.between(now - dt.timedelta(days=20), now - dt.timedelta(hours=2))
            if plan == "service_active":
                beat = now - dt.timedelta(seconds=self.rng.randint(5, 60))
                row.update(status="active", updated_at=beat)
            else:  # lease sweeper suspended it (service_heartbeat_lost)
                beat = self.between(max(spawned, now - dt.timedelta(days=2)),
                                    now - dt.timedelta(hours=1))
                row.update(status="suspended", updated_at=beat + lease + dt.timedelta(seconds=20))
            row.update(last_heartbeat_at=beat, heartbeat_deadline_at=beat + lease,
                       last_active_at=beat)
            return spawned
        if plan == "task_active":  # inside its TTL
            spawned = now - dt.timedelta(seconds=self.rng.randint(60, 3000))
            row.update(status="active", last_active_at=self.between(spawned, now))
            row["updated_at"] = row["last_active_at"]
            return spawned
        if plan == "task_terminated_now":  # terminated by hand minutes ago (event not yet out)
            spawned = now - dt.timedelta(seconds=self.rng.randint(1800, 3000))
            ended = now - dt.timedelta(seconds=self.rng.randint(120, 1200))
        elif plan == "task_terminated_recent":  # the TTL sweeper ended it in the last days
            spawned = self.between(now - dt.timedelta(days=3), now - dt.timedelta(hours=3))
            ended = spawned + dt.timedelta(seconds=3600)
        else:  # ended by the TTL sweeper or by hand, up to 60 days ago
            spawned = self.between(now - dt.timedelta(days=60), now - dt.timedelta(hours=2))
            ended = spawned + dt.timedelta(seconds=3600 if self.rng.random() < 0.5
                                           else self.rng.randint(60, 3000))
        row.update(status="terminated", terminated_at=ended, last_active_at=ended,
                   updated_at=ended)
        return spawned

    def _services_and_invocations(self, zone: _Zone) -> None:
        services = [a for a in zone.agents if a["lifecycle"] == "service"]
        for si, agent in enumerate(services):
            self.rows["agent_services"].append({
                "id": self.id_at(agent["spawned_at"]), "zone_id": zone.id,
                "agent_session_id": agent["id"], "application_id": agent["application_id"],
                "name": f"reference-service-{si + 1}", "description": "Reference service",
                "status": "available" if agent["status"] == "active" else "unavailable",
                "metadata_json": compact({"version": "1"}),
                "created_at": agent["spawned_at"], "updated_at": agent["updated_at"],
            })
        tasks = [a for a in zone.agents if a["lifecycle"] == "task"]
        zone_services = [s for s in self.rows["agent_services"] if s["zone_id"] == zone.id]
        for ii in range(min(3, len(tasks))):
            source = tasks[ii]
            service = zone_services[ii % len(zone_services)] if zone_services else None
            at = self.between(source["spawned_at"], source["terminated_at"] or self.now)
            status = ("completed", "failed", "pending")[ii % 3]
            self.rows["agent_invocations"].append({
                "id": self.id_at(at), "zone_id": zone.id,
                "service_id": service["id"] if service else None,
                "source_session_id": source["id"],
                "target_session_id": service["agent_session_id"] if service else None,
                "status": status, "input_json": compact({"task": "summarise"}),
                "output_json": compact({"ok": True}) if status == "completed" else None,
                "error": "upstream timeout" if status == "failed" else None,
                "deadline_at": max(at, self.now) + dt.timedelta(minutes=10),
                "created_at": at, "updated_at": at,
                "completed_at": at + dt.timedelta(seconds=2) if status != "pending" else None,
            })

    def build_edges(self) -> None:
        """Delegation edges (active, revoked, expired), epochs and Coordinator outbox rows."""
        for zone in self.zones:
            if len(zone.agents) < 2:
                self._epoch(zone, [])
                continue
            mutations: list[tuple[dt.datetime, str, dict[str, Any]]] = []
            edges: list[dict[str, Any]] = []
            for _k in range(self.volume.edges_per_zone):
                source, target = self.rng.sample(zone.agents, 2)
                edges.append(self._edge(zone, source, target, edges, mutations))
            edges.sort(key=lambda e: e["created_at"])
            self.rows["delegation_edges"] += edges
            self._epoch(zone, mutations)
        self._agent_lifecycle_outbox()

    def _edge(self, zone: _Zone, source: dict[str, Any], target: dict[str, Any],
              earlier: list[dict[str, Any]],
              mutations: list[tuple[dt.datetime, str, dict[str, Any]]]) -> dict[str, Any]:
        now = self.now
        lower = max(source["spawned_at"], target["spawned_at"],
                    now - DELEGATION_RETENTION + dt.timedelta(days=2))
        roll = self.rng.random()
        status = "active"
        if lower < now - dt.timedelta(minutes=10):
            status = "revoked" if roll < 0.3 else "expired" if roll < 0.45 else "active"
        created = self.between(lower, now - dt.timedelta(minutes=5)) if status != "active" \
            else self.between(lower, now)
        chain = [e for e in earlier if e["target_session_id"] == source["id"]
                 and e["created_at"] <= created]
        routed = self.routed_resources(zone)
        row: dict[str, Any] = {
            "id": self.id_at(created), "zone_id": zone.id,
            "source_session_id": source["id"], "target_session_id": target["id"],
            "issuer_application_id": source["application_id"],
            "receiver_application_id": target["application_id"],
            "resource_id": self.rng.choice(routed)["id"] if routed and self.rng.random() < 0.7
            else None,
            "scopes": ["read"], "constraints_json": compact({"max_hops": 2}),
            "status": status, "edge_version": 0, "revoked_at": None,
            "created_at": created, "updated_at": created,
            "parent_edge_id": chain[-1]["id"] if chain else None,
        }
        mutations.append((created, "create", row))
        if status == "active":
            row["expires_at"] = now + dt.timedelta(hours=self.rng.randint(1, 168))
        elif status == "revoked":
            revoked = self.between(created + dt.timedelta(seconds=1), now)
            row.update(revoked_at=revoked, updated_at=revoked, edge_version=1,
                       expires_at=created + dt.timedelta(days=self.rng.randint(1, 30)))
            mutations.append((revoked, "revoke", row))
        else:
            expires = self.between(created + dt.timedelta(minutes=1), now - dt.timedelta(
                minutes=2))
            row.update(expires_at=expires,
                       updated_at=min(now, expires + dt.timedelta(seconds=self.rng.randint(
                           1, 900))))
            mutations.append((row["updated_at"], "expire", row))
        return row

    def _epoch(self, zone: _Zone, mutations: list[tuple[dt.datetime, str, dict[str, Any]]]) -> None:
        mutations.sort(key=lambda m: m[0])
        for epoch, (at, kind, edge) in enumerate(mutations, start=1):
            if kind == "revoke":
                self._revocation(zone, at, edge["target_session_id"], "delegation",
                                 extra={"delegation_edge_id": edge["id"],
                                        "reason": "delegation_revoked"},
                                 dedupe=lambda subject, e=edge: f"delegation:{e['id']}:subject:"
                                 f"{subject}")
            elif kind == "expire" and at >= self.now - OUTBOX_RETENTION:
                self._coordinator_outbox("caracal.delegations.invalidate",
                                         f"edge_expire:{zone.id}:{epoch}", at, {
                                             "event": "edge_expire", "zone_id": zone.id,
                                             "affected_edges": 1, "edge_ids": [edge["id"]],
                                             "epoch": epoch}, published=True)
        last = mutations[-1][0] if mutations else zone.created_at
        self.rows["delegation_graph_epochs"].append({
            "zone_id": zone.id, "epoch": len(mutations), "updated_at": last})

    def _agent_lifecycle_outbox(self) -> None:
        for zone in self.zones:
            for agent in zone.agents:
                if agent["status"] == "suspended":
                    at = agent["updated_at"]
                    self._revocation(zone, at, agent["id"], "suspend",
                                     extra={"reason": "service_heartbeat_lost"},
                                     dedupe=lambda _s, a=agent: f"agent_suspend:{a['id']}")
                elif agent["status"] == "terminated" and agent["parent_id"] is None:
                    at = agent["terminated_at"]
                    reason = "ttl" if at - agent["spawned_at"] == dt.timedelta(hours=1) \
                        else "manual"
                    self._revocation(zone, at, agent["id"], "terminate",
                                     extra={"reason": reason},
                                     dedupe=lambda _s, a=agent: f"agent_terminate:{a['id']}")

    def _revocation(self, zone: _Zone, at: dt.datetime, agent_id: str, kind: str, *,
                    extra: Mapping[str, Any], dedupe: Any) -> None:
        """A Coordinator caracal.sessions.revoke event and, once published, its STS effect."""
        agent = next(a for a in zone.agents if a["id"] == agent_id)
        subject_id = agent["subject_session_id"]
        subject = next(s for s in zone.sessions if s["id"] == subject_id)
        if subject["session_type"] == "application":
            return
        others = [a for a in zone.agents if a["subject_session_id"] == subject_id
                  and a["id"] != agent_id and a["status"] in ("active", "suspended")]
        if others:
            return
        payload = {"zone_id": zone.id, "session_id": subject_id, "agent_session_id": agent_id,
                   **extra}
        recent = at >= self.now - OUTBOX_RETENTION + dt.timedelta(hours=1)
        pending = at >= self.now - dt.timedelta(minutes=30)
        if recent:
            self._coordinator_outbox("caracal.sessions.revoke", dedupe(subject_id), at, payload,
                                     published=not pending)
        if not pending:  # STS consumed the published entry (older rows were already pruned)
            self.revoke_session_tree(zone, subject_id)

    def _coordinator_outbox(self, topic: str, dedupe_key: str, at: dt.datetime,
                            payload: Mapping[str, Any], *, published: bool) -> None:
        published_at = min(self.now, at + dt.timedelta(milliseconds=800)) if published else None
        self.rows["caracal_outbox"].append({
            "id": self.id_at(at), "producer": "coordinator", "topic": topic,
            "dedupe_key": dedupe_key, "payload_json": compact(dict(payload)),
            "status": "published" if published else "pending",
            "attempts": 1 if published else 0, "available_at": at,
            "published_at": published_at, "created_at": at,
            "updated_at": published_at or at,
        })

    # ---------------------------------------------------------------- write

    def write_state(self, conn: psycopg.Connection) -> None:
        """Write every non-audit row in foreign-key order."""
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO zones (id, name, slug, dek_ciphertext, dcr_enabled, created_at,"
                    " updated_at) VALUES (%(id)s, %(name)s, %(slug)s, gen_random_bytes(32),"
                    " %(dcr_enabled)s, %(created_at)s, %(updated_at)s)",
                    self.rows["zones"],
                )
            for zone in self.zones:
                self.rows["sessions"] += [{k: v for k, v in s.items() if not k.startswith("_")}
                                          for s in zone.sessions]
                self.rows["agent_sessions"] += sorted(zone.agents, key=lambda a: a["spawned_at"])
            for table in ("providers", "applications", "resources", "secrets",
                          "provider_grants", "admin_tokens", "policies", "policy_versions",
                          "policy_sets", "policy_set_versions", "policy_set_bindings",
                          "delegated_grants", "sessions", "agent_sessions", "agent_topology",
                          "agent_services", "agent_invocations", "delegation_edges",
                          "delegation_graph_epochs", "step_up_challenges", "event_outbox",
                          "caracal_outbox", "gateway_resource_bindings"):
                copy_rows(conn, table, self.rows[table])
            conn.execute(
                "UPDATE gateway_binding_revision SET version = %s, updated_at = %s WHERE id",
                (max(1, self.binding_changes), self.binding_changed_at),
            )


# --------------------------------------------------------------------------- audit evidence


_EVENT_TYPES = (
    ("token_exchange", 55), ("gateway_resource_request", 30), ("control.invoke", 7),
    ("step_up_issued", 3), ("step_up_consumed", 2), ("replay_detected", 2),
    ("jti_collision", 1),
)


def _audit_events(b: _Builder) -> list[dict[str, Any]]:
    """Events in ingestion order, with wire-JSON texts (not yet canonicalised)."""
    rng, now, volume = b.rng, b.now, b.volume
    start = span_start(now, volume.months)
    span_us = (now - start) // US - 1_000_000
    offsets = sorted(rng.randrange(max(span_us, 1)) for _ in range(volume.audit_events))
    late = set(rng.sample(range(len(offsets)), min(volume.late_audit_events, len(offsets))))
    zones = b.zones
    weights = [max(1, 3 - z.index) for z in zones]
    types = [t for t, _ in _EVENT_TYPES]
    type_weights = [w for _, w in _EVENT_TYPES]
    events: list[dict[str, Any]] = []
    for i, off in enumerate(offsets):
        occurred = start + dt.timedelta(microseconds=off)
        zone = rng.choices(zones, weights)[0]
        etype = rng.choices(types, type_weights)[0]
        delay = dt.timedelta(microseconds=rng.randint(300, 2_000_000))
        if i in late:
            delay = dt.timedelta(days=rng.randint(3, 20), microseconds=rng.randrange(10**6))
        ingested = min(occurred + delay, now)
        event = _event(b, zone, etype, occurred, ingested)
        event["ingest_signature"] = chainhash.producer_signature(b.audit_key,
                                                                 audit_wire_json(event))
        events.append(event)
    events.sort(key=lambda e: (e["ingested_at"], e["id"]))
    return events


def _event(b: _Builder, zone: _Zone, etype: str, occurred: dt.datetime,
           ingested: dt.datetime) -> dict[str, Any]:
    rng = b.rng
    psv, sha = "", ""
    for set_version, set_sha, when in zone.set_versions:
        if when <= occurred:
            psv, sha = set_version, set_sha
    app = rng.choice(zone.managed_apps)
    resources = b.routed_resources(zone) or zone.resources
    resource = rng.choice(resources)["identifier"]
    decision = "allow" if rng.random() < 0.85 else "deny"
    status, determining, diagnostics = "complete", "[]", "[]"
    metadata: dict[str, Any] | None
    if etype == "token_exchange":
        if decision == "allow":
            determining = compact([zone.policy_id])
        else:
            diagnostics = compact([{"code": "policy_denied", "message": "no rule matched"}])
        metadata = {"application_id": app, "resource": resource,
                    "requested_scopes": rng.sample(["read", "write"], rng.randint(0, 2)),
                    "session_id": b.id_at(occurred), "agent_session_id": "",
                    "delegation_edge_id": "", "runtime_credential_injection": False}
        if rng.random() < 0.2:
            metadata["agent_session_id"] = b.id_at(occurred)
            metadata["agent_labels"] = rng.sample(["researcher", "planner", "executor"], 2)
    elif etype == "gateway_resource_request":
        status, psv, sha = "executed", "", ""
        metadata = {"resource": resource, "method": rng.choice(["GET", "POST"]),
                    "path": f"/v1/items/{rng.randint(1, 9999)}", "status": rng.choice(
                        [200, 200, 201, 403]), "upstream_latency_ms": round(
                        rng.uniform(1, 250), 3), "application_id": app}
    elif etype.startswith("step_up"):
        decision = "pending" if etype == "step_up_issued" else "consumed"
        metadata = {"challenge_id": b.id_at(occurred), "tier": "high",
                    "approver": {"class": "human", "note": "revu par l'équipe ✓"}}
    elif etype == "control.invoke":
        psv, sha = "", ""
        metadata = None if rng.random() < 0.5 else {"operation": "zones.list", "ok": True}
    else:  # replay_detected, jti_collision
        decision = "deny"
        metadata = {"jti": b.id_at(occurred), "resource": resource, "nested": {"b": [1, 2.5],
                                                                              "a": None}}
    return {
        "id": b.id_at(occurred), "zone_id": zone.id, "event_type": etype,
        "request_id": b.id_at(occurred), "decision": decision, "policy_set_id": "",
        "policy_set_version_id": psv, "manifest_sha": sha, "evaluation_status": status,
        "determining_policies_json": determining, "diagnostics_json": diagnostics,
        "metadata_json": compact(metadata) if metadata is not None else None,
        "occurred_at": occurred, "ingested_at": ingested,
    }


def _canonicalise(conn: psycopg.Connection, events: list[dict[str, Any]]) -> None:
    """Replace each JSON text by the server's own ``jsonb::text`` (one COPY, one SELECT)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS _reference_json"
        " (ord integer PRIMARY KEY, dp jsonb, diag jsonb, meta jsonb) ON COMMIT DROP"
    )
    with conn.cursor() as cur, cur.copy("COPY _reference_json (ord, dp, diag, meta) FROM STDIN") as cp:
        for i, e in enumerate(events):
            cp.write_row((i, e["determining_policies_json"], e["diagnostics_json"],
                          e["metadata_json"]))
    rows = conn.execute(
        "SELECT ord, dp::text, diag::text, meta::text FROM _reference_json ORDER BY ord"
    ).fetchall()
    for ord_, dp, diag, meta in rows:
        e = events[ord_]
        e["determining_policies_json"], e["diagnostics_json"], e["metadata_json"] = dp, diag, meta


def _chain(events: list[dict[str, Any]], key: bytes) -> None:
    """Content hash, prev link, HMAC and seq per zone, in ingestion order; producer sig."""
    heads: dict[str, tuple[str, int]] = {}
    for e in events:
        fields = [e[f] or "" for f in chainhash.AUDIT_TEXT_FIELDS] + [
            e[f] if e[f] else "null" for f in chainhash.AUDIT_JSON_FIELDS]
        content = chainhash.content_hash_parts(fields, (e["occurred_at"] - chainhash.EPOCH) // US)
        prev, seq = heads.get(e["zone_id"], ("", 0))
        e.update(content_sha256=content, prev_content_sha256=prev or None,
                 chain_hmac=chainhash.chain_hmac(key, content, prev), chain_seq=seq + 1)
        heads[e["zone_id"]] = (content, seq + 1)


def write_audit(conn: psycopg.Connection, b: _Builder) -> tuple[list[str], list[str]]:
    """Generate, chain and COPY the audit events; then run the retention loop at ``now``."""
    events = _audit_events(b)
    with conn.transaction():
        _canonicalise(conn, events)
        _chain(events, b.audit_key)
        copy_rows(conn, "audit_events", events)
    return retention_loop(conn, b.now)


def retention_loop(conn: psycopg.Connection, now: dt.datetime,
                   retention: dt.timedelta = AUDIT_RETENTION) -> tuple[list[str], list[str]]:
    """The 06.21 audit retention tick: ensure current..+3 months, drop expired partitions."""
    this_month = schema.month_start(now.date())
    for n in range(4):
        schema.ensure_partition(conn, schema.add_months(this_month, n))
    cutoff = now - retention
    dropped: list[str] = []
    for name in schema.monthly_partitions(conn):
        month = dt.date(int(name[14:18]), int(name[19:21]), 1)
        if schema.partition_bounds(month)[1] <= cutoff:
            dropped.append(schema.drop_partition(conn, month))
    return schema.monthly_partitions(conn), dropped


def write_admin_audit(conn: psycopg.Connection, b: _Builder) -> None:
    """Admin audit rows per zone chain, as Compose writes them (no HMAC key, no global rows)."""
    rng, zones = b.rng, b.zones
    if not zones:
        return
    start = span_start(b.now, b.volume.months)
    times = sorted(b.between(start, b.now) for _ in range(b.volume.admin_audit_events))
    heads: dict[str, tuple[str, int]] = {}
    rows = []
    for at in times:
        at = at.replace(microsecond=at.microsecond // 1000 * 1000)
        zone = rng.choice(zones)
        if rng.random() < 0.7:  # API hook row
            entity = rng.choice(["applications", "resources", "policies", "grants"])
            method = rng.choice(["POST", "PATCH", "DELETE"])
            actor = (b.bootstrap_token_id, "bootstrap", "global")
            path = f"/v1/zones/{zone.id}/{entity}"
            payload: str | None = compact({"rls_mode": "zone_scoped", "rls_zone_guc": zone.id})
            action, status = f"{method} /v1/zones/:zoneId/{entity}", 201 if method == "POST" else 200
        else:  # Coordinator operator row, no payload
            agent = rng.choice(zone.agents)["id"] if zone.agents else b.id_at(at)
            entity, method = "agents", "PATCH"
            actor = ("caracal-operator", "caracal-operator", "coordinator.admin")
            path = f"/zones/{zone.id}/agents/{agent}/suspend"
            payload, action, status = None, "agent.suspend", 200
        row: dict[str, Any] = {
            "id": b.id_at(at), "request_id": b.id_at(at), "actor_id": actor[0],
            "actor_name": actor[1], "actor_scope": actor[2], "action": action,
            "method": method, "path": path, "zone_id": zone.id, "entity_type": entity,
            "entity_id": b.id_at(at), "status_code": status, "payload_json": payload,
            "occurred_at": at,
        }
        content = chainhash.admin_content_hash([
            row["id"], row["request_id"], row["actor_id"], row["actor_name"], row["actor_scope"],
            row["action"], row["method"], row["path"], row["zone_id"], row["entity_type"],
            row["entity_id"], str(row["status_code"]), payload or "", iso_millis(at)])
        prev, seq = heads.get(zone.id, ("", 0))
        row.update(content_sha256=content, prev_content_sha256=prev or None, chain_hmac=None,
                   chain_seq=seq + 1)
        heads[zone.id] = (content, seq + 1)
        rows.append(row)
    copy_rows(conn, "admin_audit_events", rows)


def export_watermark(now: dt.datetime) -> dt.datetime:
    """The exporter's target hour at ``now``: the current UTC hour truncated, minus one hour."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=1)


# --------------------------------------------------------------------------- entry points


def _chain_heads(conn: psycopg.Connection, table: str) -> dict[str, ChainHead]:
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT ON (zone_id) zone_id, min(chain_seq) OVER w, chain_seq, count(*) OVER w,"
        " content_sha256 FROM {} WHERE zone_id IS NOT NULL"
        " WINDOW w AS (PARTITION BY zone_id) ORDER BY zone_id, chain_seq DESC"
    ).format(sql.Identifier(table))).fetchall()
    return {r[0]: ChainHead(r[0], int(r[1]), int(r[2]), int(r[3]), r[4]) for r in rows}


def table_counts(conn: psycopg.Connection, tables: Iterable[str] = PROFILE.state_tables
                 ) -> dict[str, int]:
    """Row count of each table."""
    out = {}
    for table in tables:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        out[table] = int(row.fetchone()[0])  # type: ignore[index]
    return out


def populate(
    conn: psycopg.Connection,
    *,
    seed: int,
    volume: Volume,
    secrets: Mapping[str, str],
    now: dt.datetime,
    canary_upstream_url: str,
) -> ReferenceData:
    """Fill a database that has the 2026.06 schema with deterministic reference data."""
    b = _Builder(seed=seed, volume=volume, secrets=secrets, now=now,
                 canary_upstream_url=canary_upstream_url)
    if min(volume.zones, volume.applications_per_zone, volume.resources_per_zone,
           volume.sessions_per_zone, volume.months) < 1:
        raise ValueError("the reference deployment needs >= 1 zone, application, resource,"
                         " session and month")
    b.build_zones()
    b.build_providers()
    b.build_applications()
    b.build_resources()
    b.build_bindings()
    b.build_signing_keys()
    b.build_admin_tokens()
    b.build_provider_grants()
    b.build_policies()
    b.build_sessions()
    b.build_agents()
    b.build_edges()
    b.build_delegated_grants()
    b.build_step_up()
    b.write_state(conn)
    partitions, dropped = write_audit(conn, b)
    with conn.transaction():
        write_admin_audit(conn, b)
        conn.execute("INSERT INTO audit_chain_rehash (id, completed_at) VALUES (1, %s)",
                     (b.installed + dt.timedelta(minutes=3),))
        watermark = export_watermark(b.now)
        hour = b.now.replace(minute=0, second=0, microsecond=0)
        conn.execute(
            "INSERT INTO audit_export_watermark (name, last_exported_hour, updated_at)"
            " VALUES (%s, %s, %s)",
            (EXPORT_WATERMARK_NAME, watermark, min(b.now, hour + dt.timedelta(seconds=65))),
        )
    zone0 = b.zones[0]
    canary = Canary(
        zone_id=b.canary["zone_id"], application_id=b.canary["application_id"],
        client_secret=b.canary_secret, resource_id=b.canary["resource_id"],
        resource_identifier=b.canary["resource_identifier"], upstream_url=canary_upstream_url,
        policy_id=b.canary["policy_id"], policy_set_id=b.canary["policy_set_id"],
        policy_set_version_id=b.canary["policy_set_version_id"],
        manifest_sha256=b.canary["manifest_sha256"],
        signing_key_ids=tuple(zone0.signing_keys),
    )
    return ReferenceData(
        seed=seed, now=b.now, zone_ids=tuple(z.id for z in b.zones), canary=canary,
        counts=table_counts(conn), chain_heads=_chain_heads(conn, "audit_events"),
        admin_chain_heads=_chain_heads(conn, "admin_audit_events"),
        audit_partitions=tuple(partitions), dropped_partitions=tuple(dropped),
        export_watermark=watermark, binding_revision=max(1, b.binding_changes),
    )


def ensure_owner(pg: PostgresServer, user: str, password: str) -> None:
    """Create (or re-password) the login superuser that owns the database, like POSTGRES_USER."""
    with pg.connect() as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        admin.execute(sql.SQL(verb + " ROLE {} WITH LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(password)))


def build_source_database(
    pg: PostgresServer,
    *,
    seed: int,
    volume: Volume,
    secrets: Mapping[str, str],
    now: dt.datetime,
    canary_upstream_url: str,
    owner: str = "caracal",
) -> ReferenceData:
    """Create database ``caracal`` owned by ``caracal``, apply the schema and populate it.

    On a cluster the suite owns, the ``caracal`` login superuser gets ``postgresPassword``
    (as the Postgres image's ``POSTGRES_USER`` does), so ``databaseUrl`` is true for it; on
    an external server the admin role is used as owner instead.
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
                        canary_upstream_url=canary_upstream_url)
    return dataclasses.replace(data, database=endpoint.dbname)

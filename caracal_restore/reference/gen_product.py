"""Reference generator, product state: zones, providers, applications, resources, gateway
bindings, zone signing keys, admin tokens, provider grants, policies and policy sets.

Sealed values use ZONE_KEK exactly as 06.21 does (FACTS-2026.06 §3.2): signing keys and
provider secret configs in the split layout, provider grant tokens packed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets as os_random
from collections.abc import Mapping
from typing import Any

from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore import envelope
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.redact import REDACTOR
from caracal_restore.reference import policy as rego
from caracal_restore.reference.gen_common import (
    CONTROL_AUDIENCE,
    Context,
    ZoneState,
    b64_nopad,
    compact,
    hash_client_secret,
    manifest_sha256,
    sha256_hex,
    unknown_secret_hash,
)

SIGNING_KEY_NAME = "zone_signing_key"
CANARY_RESOURCE = "canary-echo"


def build_zones(ctx: Context) -> None:
    """Zones (dek_ciphertext is filled by SQL at insert time)."""
    for zi in range(ctx.volume.zones):
        created = ctx.installed + dt.timedelta(hours=1 + zi)
        zone = ZoneState(id=ctx.id_at(created), index=zi, created_at=created)
        ctx.zones.append(zone)
        ctx.rows["zones"].append(
            {
                "id": zone.id,
                "name": f"Reference zone {zi + 1}",
                "slug": f"reference-{zi + 1}",
                "dcr_enabled": zi % 2 == 1,
                "created_at": created,
                "updated_at": created,
            }
        )


def _seal_config(ctx: Context, config: Mapping[str, str]) -> tuple[bytes, bytes]:
    REDACTOR.add(*config.values())
    return envelope.zone_seal(ctx.kek, compact(dict(config)).encode())


def build_providers(ctx: Context) -> None:
    """provider-none-<zone> plus api_key, OAuth and caracal_mandate providers per zone."""
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=5)
        zone.provider_none = f"provider-none-{zone.id}"
        specs: list[tuple[str, str, str, str, dict[str, Any], dict[str, str] | None]] = [
            (zone.provider_none, "none", "none", "provider://none", {}, None),
            (
                ctx.id_at(at),
                "Reference API key",
                "api_key",
                "provider://reference/api-key",
                {"header_name": "X-Api-Key"},
                {"api_key": "ak_" + os_random.token_urlsafe(24)},
            ),
            (
                ctx.id_at(at),
                "Reference OAuth",
                "oauth2_authorization_code",
                "provider://reference/oauth",
                {
                    "authorize_url": "http://idp.caracal.test/authorize",
                    "token_url": "http://idp.caracal.test/token",
                    "client_id": f"ref-client-{ctx.hex(8)}",
                },
                {"client_secret": "ocs_" + os_random.token_urlsafe(24)},
            ),
            (
                ctx.id_at(at),
                "Reference mandate",
                "caracal_mandate",
                "provider://reference/mandate",
                {},
                None,
            ),
        ]
        for pid, name, kind, identifier, config, secret in specs:
            ct, nonce = _seal_config(ctx, secret) if secret else (None, None)
            row = {
                "id": pid,
                "zone_id": zone.id,
                "name": name,
                "identifier": identifier,
                "config_json": compact(config),
                "created_at": at,
                "updated_at": at,
                "secret_config_ct": ct,
                "secret_config_nonce": nonce,
                "secret_config_keys": sorted(secret) if secret else [],
                "provider_kind": kind,
            }
            zone.providers.append(row)
            ctx.rows["providers"].append(row)


def build_applications(ctx: Context) -> None:
    """Managed apps (the canary is zone 1's first), one archived app, DCR apps."""
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=10)
        for ai in range(ctx.volume.applications_per_zone):
            canary = zone.index == 0 and ai == 0
            app_id = ctx.id_at(at)
            zone.managed_apps.append(app_id)
            ctx.rows["applications"].append(
                {
                    "id": app_id,
                    "zone_id": zone.id,
                    "name": "canary" if canary else f"reference-app-{ai + 1}",
                    "registration_method": "managed",
                    "credential_type": "token",
                    # Only the canary's secret is known and kept; the others are shown once by
                    # the API and never stored, so a well-formed hash of an unknown secret is exact.
                    "client_secret_hash": hash_client_secret(ctx.canary_secret)
                    if canary
                    else unknown_secret_hash(),
                    "traits": ["canary"]
                    if canary
                    else ctx.rng.sample(["agent", "service", "batch"], ctx.rng.randint(0, 2)),
                    "expires_at": None,
                    "archived_at": None,
                    "created_at": at,
                }
            )
            if canary:
                ctx.canary.update(zone_id=zone.id, application_id=app_id)
            at += dt.timedelta(minutes=1)
        if zone.index == 0:
            ctx.rows["applications"].append(
                _app(ctx, zone, at, "retired-app", "managed", archived=True)
            )
        if zone.index % 2 == 1:
            ctx.rows["applications"].append(
                _app(
                    ctx,
                    zone,
                    ctx.now - dt.timedelta(hours=3),
                    "dcr-client",
                    "dcr",
                    expires=ctx.now + dt.timedelta(days=30),
                )
            )
        zone.users = [f"usr_{ctx.hex(12)}" for _ in range(4)]


def _app(
    ctx: Context,
    zone: ZoneState,
    at: dt.datetime,
    name: str,
    method: str,
    *,
    archived: bool = False,
    expires: dt.datetime | None = None,
) -> dict[str, Any]:
    return {
        "id": ctx.id_at(at),
        "zone_id": zone.id,
        "name": name,
        "registration_method": method,
        "credential_type": "token",
        "client_secret_hash": unknown_secret_hash(),
        "traits": [],
        "expires_at": expires,
        "archived_at": at + dt.timedelta(days=3) if archived else None,
        "created_at": at,
    }


def build_resources(ctx: Context) -> None:
    """Control resource, gateway-routed resources (one is the canary), one archived."""
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=20)
        kinds = list(zone.providers)
        _resource(
            ctx,
            zone,
            at,
            "Control",
            CONTROL_AUDIENCE,
            None,
            zone.provider_none,
            ["agent:lifecycle", "coordinator.admin"],
        )
        for ri in range(ctx.volume.resources_per_zone):
            at += dt.timedelta(minutes=1)
            if zone.index == 0 and ri == 0:
                res = _resource(
                    ctx,
                    zone,
                    at,
                    "Canary echo",
                    "canary-echo",
                    ctx.canary_upstream_url,
                    zone.provider_none,
                    ["read", "write"],
                )
                ctx.canary.update(resource_id=res["id"], resource_identifier="canary-echo")
                continue
            identifier = f"reference-svc-{ri + 1}"
            provider = kinds[ri % len(kinds)]["id"]
            _resource(
                ctx,
                zone,
                at,
                f"Reference service {ri + 1}",
                identifier,
                f"http://canary.caracal.test/{identifier}",
                provider,
                ctx.rng.sample(["read", "write", "admin"], 2),
            )
        at += dt.timedelta(minutes=1)
        retired = _resource(
            ctx,
            zone,
            at,
            "Retired service",
            "reference-retired",
            "http://canary.caracal.test/reference-retired",
            zone.provider_none,
            ["read"],
        )
        retired["archived_at"] = at + dt.timedelta(days=20)
        retired["updated_at"] = retired["archived_at"]


def _resource(
    ctx: Context,
    zone: ZoneState,
    at: dt.datetime,
    name: str,
    identifier: str,
    upstream: str | None,
    provider_id: str,
    scopes: list[str],
) -> dict[str, Any]:
    row = {
        "id": ctx.id_at(at),
        "zone_id": zone.id,
        "name": name,
        "identifier": identifier,
        "upstream_url": upstream,
        "credential_provider_id": provider_id,
        "scopes": scopes,
        "created_at": at,
        "updated_at": at,
        "archived_at": None,
    }
    zone.resources.append(row)
    ctx.rows["resources"].append(row)
    return row


def build_bindings(ctx: Context) -> None:
    """Gateway bindings as the API's syncGatewayBinding leaves them, with the revision."""
    for zone in ctx.zones:
        for res in zone.resources:
            if not res["upstream_url"] or res["identifier"] == CONTROL_AUDIENCE:
                continue
            if (
                res["identifier"] == ctx.canary.get("resource_identifier")
                and zone.id == ctx.canary["zone_id"]
            ):
                app = ctx.canary["application_id"]
            else:
                app = ctx.rng.choice(zone.managed_apps)
            _binding_change(ctx, res["created_at"])
            if res["archived_at"] is not None:  # DELETE archived it and removed the binding
                _binding_change(ctx, res["archived_at"])
                continue
            row = {
                "resource_identifier": res["identifier"],
                "application_id": app,
                "zone_id": zone.id,
                "created_at": res["created_at"],
                "updated_at": res["created_at"],
            }
            others = [a for a in zone.managed_apps if a != app]
            if others and res["identifier"] != "canary-echo" and ctx.rng.random() < 0.3:
                # rebound once to another app, then back (two upserts)
                for when in (
                    res["created_at"] + dt.timedelta(days=1),
                    res["created_at"] + dt.timedelta(days=2),
                ):
                    _binding_change(ctx, when)
                row["updated_at"] = res["created_at"] + dt.timedelta(days=2)
            ctx.rows["gateway_resource_bindings"].append(row)


def _binding_change(ctx: Context, at: dt.datetime) -> None:
    ctx.binding_changes += 1
    ctx.binding_changed_at = max(ctx.binding_changed_at, at)


def build_signing_keys(ctx: Context) -> None:
    """One or two zone signing keys per zone (P-256 SEC1 PEM sealed under ZONE_KEK)."""
    for zone in ctx.zones:
        versions = 2 if zone.index == 0 else ctx.rng.choice((1, 2))
        first = zone.created_at + dt.timedelta(minutes=30)
        times = [first]
        if versions == 2:
            times.append(
                ctx.between(
                    max(first + dt.timedelta(hours=1), ctx.now - dt.timedelta(days=40)),
                    ctx.now - dt.timedelta(days=2),
                )
            )
        for version, at in enumerate(times, start=1):
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            REDACTOR.add(pem.decode())
            ct, nonce = envelope.zone_seal(ctx.kek, pem)
            kid = ctx.id_at(at)
            zone.signing_keys.append(kid)
            ctx.rows["secrets"].append(
                {
                    "id": kid,
                    "zone_id": zone.id,
                    "entity_id": zone.id,
                    "name": SIGNING_KEY_NAME,
                    "type": "token",
                    "ciphertext": ct,
                    "nonce": nonce,
                    "dek_id": PROFILE.kek_secret,
                    "version": version,
                    "created_at": at,
                    "updated_at": at,
                }
            )


def build_admin_tokens(ctx: Context) -> None:
    """The env-bootstrap token row (+ a revoked predecessor and a zone token)."""
    hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=2, hash_len=32, salt_len=16)
    boot = ctx.installed + dt.timedelta(minutes=1)
    old = "old-" + os_random.token_hex(16)
    zone_token = os_random.token_hex(32)
    REDACTOR.add(old, zone_token)
    rotated = ctx.installed + dt.timedelta(days=1)
    ctx.rows["admin_tokens"] += [
        {
            "id": ctx.id_at(boot),
            "name": "bootstrap",
            "token_sha256": hashlib.sha256(old.encode()).digest(),
            "scope": "global",
            "zone_id": None,
            "created_by": "env-bootstrap",
            "created_at": boot,
            "last_used_at": boot,
            "revoked_at": rotated,
            "token_hash": None,
        },
        {
            "id": ctx.id_at(rotated),
            "name": "bootstrap",
            "token_sha256": hashlib.sha256(ctx.admin_token.encode()).digest(),
            "scope": "global",
            "zone_id": None,
            "created_by": "env-bootstrap",
            "created_at": rotated,
            "last_used_at": ctx.now - dt.timedelta(minutes=7),
            "revoked_at": None,
            "token_hash": hasher.hash(ctx.admin_token),
        },
        {
            "id": ctx.id_at(rotated),
            "name": "zone operator",
            "token_sha256": hashlib.sha256(zone_token.encode()).digest(),
            "scope": "zone",
            "zone_id": ctx.zones[0].id if ctx.zones else None,
            "created_by": "admin",
            "created_at": rotated,
            "last_used_at": None,
            "revoked_at": None,
            "token_hash": _unknown_phc(),
        },
    ]
    ctx.bootstrap_token_id = ctx.rows["admin_tokens"][1]["id"]


def _unknown_phc() -> str:
    """A well-formed Argon2id PHC string of a secret nobody keeps (no hashing cost)."""
    salt, digest = (b64_nopad(os_random.token_bytes(n)) for n in (16, 32))
    return f"$argon2id$v=19$m=65536,t=3,p=2${salt}${digest}"


def build_provider_grants(ctx: Context) -> None:
    """User credentials for the OAuth provider (packed seals of access/refresh tokens)."""
    for zone in ctx.zones:
        oauth = next(p for p in zone.providers if p["provider_kind"] == "oauth2_authorization_code")
        routed = ctx.routed_resources(zone)
        if not routed:
            continue
        for ui, user in enumerate(zone.users[:3]):
            at = ctx.between(zone.created_at + dt.timedelta(days=1), ctx.now - dt.timedelta(days=1))
            status = ("active", "revoked", "expired")[ui % 3]
            access = "at_" + os_random.token_urlsafe(24)
            refresh = "rt_" + os_random.token_urlsafe(24)
            REDACTOR.add(access, refresh)
            ctx.rows["provider_grants"].append(
                {
                    "id": ctx.id_at(at),
                    "zone_id": zone.id,
                    "user_id": user,
                    "resource_id": routed[ui % len(routed)]["id"],
                    "provider_id": oauth["id"],
                    "scopes": ["read"],
                    "status": status,
                    "access_token_ct": envelope.zone_seal_packed(ctx.kek, access.encode()),
                    "refresh_token_ct": envelope.zone_seal_packed(ctx.kek, refresh.encode()),
                    "expires_at": at + dt.timedelta(hours=1),
                    "refreshed_at": at,
                    "refresh_token_version": ui,
                    "created_at": at,
                    "updated_at": at,
                }
            )


# ---------------------------------------------------------------- policies


def build_policies(ctx: Context) -> None:
    """One policy (two versions), one policy set (two versions), an active binding."""
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(hours=1)
        zone.policy_id = ctx.id_at(at)
        ctx.rows["policies"].append(
            {
                "id": zone.policy_id,
                "zone_id": zone.id,
                "name": "reference-access",
                "description": "Reference deployment access policy",
                "owner_type": "customer",
                "archived_at": None,
                "created_by": "env-bootstrap",
                "created_at": at,
                "updated_at": at,
            }
        )
        bound = {
            (b["application_id"], b["resource_identifier"])
            for b in ctx.rows["gateway_resource_bindings"]
            if b["zone_id"] == zone.id
        }
        extra = [
            (a, r["identifier"]) for a in zone.managed_apps for r in ctx.routed_resources(zone)
        ]
        allows_v2 = sorted(bound) + ctx.rng.sample(extra, min(2, len(extra)))
        allows_v1 = sorted(bound)[:1]
        v2_at = ctx.between(
            max(at + dt.timedelta(hours=1), ctx.now - dt.timedelta(days=60)),
            ctx.now - dt.timedelta(days=5),
        )
        for version, (allows, when) in enumerate(((allows_v1, at), (allows_v2, v2_at)), 1):
            content = rego.render_policy(zone.policy_id, allows)
            pv = ctx.id_at(when)
            zone.policy_versions.append(pv)
            ctx.rows["policy_versions"].append(
                {
                    "id": pv,
                    "policy_id": zone.policy_id,
                    "version": version,
                    "content": content,
                    "content_sha256": sha256_hex(content),
                    "schema_version": "1",
                    "created_by": "env-bootstrap",
                    "created_at": when,
                    "archived_at": None,
                }
            )
        zone.policy_set_id = ctx.id_at(at)
        ctx.rows["policy_sets"].append(
            {
                "id": zone.policy_set_id,
                "zone_id": zone.id,
                "name": "reference",
                "description": None,
                "scope_type": "zone",
                "owner_type": "customer",
                "archived_at": None,
                "created_by": "env-bootstrap",
                "created_at": at,
                "updated_at": at,
            }
        )
        for version, pv in enumerate(zone.policy_versions, 1):
            when = at if version == 1 else v2_at + dt.timedelta(minutes=2)
            manifest = [{"policy_version_id": pv}]
            psv = ctx.id_at(when)
            sha = manifest_sha256([pv])
            zone.set_versions.append((psv, sha, when))
            ctx.rows["policy_set_versions"].append(
                {
                    "id": psv,
                    "policy_set_id": zone.policy_set_id,
                    "version": version,
                    "manifest_json": compact(manifest),
                    "manifest_sha256": sha,
                    "schema_version": "1",
                    "created_by": "env-bootstrap",
                    "created_at": when,
                    "archived_at": None,
                }
            )
        shadow = zone.set_versions[0][0] if zone.index == 1 else None
        for psv, _sha, when in zone.set_versions:
            activated = when + dt.timedelta(seconds=30)
            ctx.outbox_event(
                "caracal.policy.invalidate",
                activated,
                {
                    "zone_id": zone.id,
                    "policy_set_id": zone.policy_set_id,
                    "policy_set_version_id": psv,
                    "shadow_version_id": shadow if psv == zone.set_versions[-1][0] else None,
                },
            )
        ctx.rows["policy_set_bindings"].append(
            {
                "zone_id": zone.id,
                "policy_set_id": zone.policy_set_id,
                "active_version_id": zone.set_versions[-1][0],
                "shadow_version_id": shadow,
                "updated_at": zone.set_versions[-1][2] + dt.timedelta(seconds=30),
            }
        )
        if zone.index == 0:
            ctx.canary.update(
                policy_id=zone.policy_id,
                policy_set_id=zone.policy_set_id,
                policy_set_version_id=zone.set_versions[-1][0],
                manifest_sha256=zone.set_versions[-1][1],
            )

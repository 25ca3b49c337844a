"""Reference generator 1.0, product state: zones, providers, applications, resources,
workloads, zone signing keys, custody copies, admin tokens, provider connections,
notification sinks, policies (data documents) and policy sets.

Everything secret is a CSS1 envelope under SECRET_STORE_KEK with its location's AAD
(FACTS-1.0 §7.2): signing keys in ``secrets.envelope`` (AAD ``caracal/secrets/zoneSigningKey``),
provider secret configs, managed applications' client secrets and workload secrets in
``secret_store`` (AAD = ref), provider tokens and sink secrets in their columns. Routing
comes from ``resources.upstream_url`` + ``credential_provider_id`` — there are no bindings.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets as os_random
from collections.abc import Mapping
from typing import Any

from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore import envelope
from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.redact import REDACTOR
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
from caracal_restore.reference.policy import render_data_document

SIGNING_KEY_NAME = "zone_signing_key"
CANARY_RESOURCE = "canary-echo"
#: The control resource's scopes (the API seeds it; nothing routes to it).
CONTROL_SCOPES = ["agent:lifecycle", "coordinator.admin"]


def _seal(ctx: Context, plaintext: bytes, aad: str) -> bytes:
    return envelope.css1_seal(ctx.kek, plaintext, aad)


def _store(ctx: Context, zone: ZoneState, ref: str, value: str, at: dt.datetime,
           version: int = 1) -> None:
    """One ``secret_store`` row: the value sealed with AAD = ref (the caller registers the
    value with the redactor: builders register theirs in one call, each call recompiles)."""
    ctx.rows["secret_store"].append({
        "ref": ref, "zone_id": zone.id, "envelope": _seal(ctx, value.encode(), ref),
        "version": version, "created_at": at, "updated_at": at,
    })


def build_zones(ctx: Context) -> None:
    """Zones (1.0 columns; no ``dek_ciphertext``)."""
    for zi in range(ctx.volume.zones):
        created = ctx.installed + dt.timedelta(hours=1 + zi)
        zone = ZoneState(id=ctx.id_at(created), index=zi, created_at=created)
        ctx.zones.append(zone)
        ctx.rows["zones"].append({
            "id": zone.id, "name": f"Reference zone {zi + 1}", "slug": f"reference-{zi + 1}",
            "dcr_enabled": zi % 2 == 1, "created_at": created, "updated_at": created,
            "archived_at": None, "owner_account_id": None, "operator_governed": False,
            "created_by": "env-bootstrap", "updated_by": None,
        })


def _client_secret() -> str:
    """``cs_`` + base64url(32 random bytes) (registered by the caller)."""
    return "cs_" + base64.urlsafe_b64encode(os_random.token_bytes(32)).decode().rstrip("=")


def build_providers(ctx: Context) -> None:
    """provider-none-<zone> plus api_key, bearer_token, OAuth and caracal_mandate providers."""
    found: list[str] = []
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=5)
        zone.provider_none = f"provider-none-{zone.id}"
        specs: list[tuple[str, str, str, str, dict[str, Any], dict[str, str] | None]] = [
            (zone.provider_none, "none", "none", "provider://none", {}, None),
            (ctx.id_at(at), "Reference API key", "api_key", "provider://reference/api-key",
             {"header_name": "X-Api-Key", "auth_location": "header"},
             {"api_key": "ak_" + os_random.token_urlsafe(24)}),
            (ctx.id_at(at), "Reference bearer", "bearer_token", "provider://reference/bearer",
             {}, {"bearer_token": "bt_" + os_random.token_urlsafe(24)}),
            (ctx.id_at(at), "Reference OAuth", "oauth2_authorization_code",
             "provider://reference/oauth",
             {"authorize_url": "http://idp.caracal.test/authorize",
              "token_url": "http://idp.caracal.test/token",
              "client_id": f"ref-client-{ctx.hex(8)}"},
             {"client_secret": "ocs_" + os_random.token_urlsafe(24)}),
            (ctx.id_at(at), "Reference mandate", "caracal_mandate",
             "provider://reference/mandate", {}, None),
        ]
        for pid, name, kind, identifier, config, secret in specs:
            row = {
                "id": pid, "zone_id": zone.id, "name": name, "identifier": identifier,
                "config_json": compact(config), "secret_config_keys": sorted(secret or {}),
                "provider_kind": kind, "archived_at": None, "connectivity_failed_at": None,
                "created_by": "env-bootstrap", "updated_by": None, "created_at": at,
                "updated_at": at,
            }
            if secret:
                ref = PROFILE.provider_secret_ref.format(zone_id=zone.id, provider_id=pid)
                found += [compact(secret), *secret.values()]
                _store(ctx, zone, ref, compact(secret), at)
            zone.providers.append(row)
            ctx.rows["providers"].append(row)
    REDACTOR.add(*found)


def build_applications(ctx: Context) -> None:
    """Managed apps with custody copies (the canary is zone 1's first), one archived, DCR apps.

    Every managed application's client secret is known (its custody copy), so each hash is a
    real Argon2id hash of it; DCR applications get no custody copy (FACTS-1.0 §2.4).
    """
    found: list[str] = []
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=10)
        for ai in range(ctx.volume.applications_per_zone):
            canary = zone.index == 0 and ai == 0
            app_id = ctx.id_at(at)
            secret = ctx.canary_secret if canary else _client_secret()
            found.append(secret)
            zone.managed_apps.append(app_id)
            ctx.rows["applications"].append(_app(
                ctx, zone, app_id, at, "canary" if canary else f"reference-app-{ai + 1}",
                "managed", secret_hash=hash_client_secret(secret),
                traits=["canary"] if canary else ctx.rng.sample(["tier:gold", "tier:silver",
                                                                 "batch"],
                                                                ctx.rng.randint(0, 2))))
            ref = PROFILE.client_secret_ref.format(zone_id=zone.id, application_id=app_id)
            _store(ctx, zone, ref, secret, at)
            if canary:
                ctx.canary.update(zone_id=zone.id, application_id=app_id)
            at += dt.timedelta(minutes=1)
        if zone.index == 0:
            retired = ctx.id_at(at)
            # Archived: no custody copy kept (the rotation sweep covers active apps only).
            row = _app(ctx, zone, retired, at, "retired-app", "managed",
                       secret_hash=unknown_secret_hash())
            row["archived_at"] = at + dt.timedelta(days=3)
            ctx.rows["applications"].append(row)
        if zone.index % 2 == 1:
            at = ctx.now - dt.timedelta(hours=3)
            row = _app(ctx, zone, ctx.id_at(at), at, "dcr-client", "dcr",
                       secret_hash=unknown_secret_hash())
            row["expires_at"] = ctx.now + dt.timedelta(days=30)
            ctx.rows["applications"].append(row)
        zone.users = [f"user:{ctx.hex(8)}@reference.test" for _ in range(4)]
    REDACTOR.add(*found)


def _app(ctx: Context, zone: ZoneState, app_id: str, at: dt.datetime, name: str, method: str,
         *, secret_hash: str, traits: list[str] | None = None) -> dict[str, Any]:
    return {
        "id": app_id, "zone_id": zone.id, "name": name, "registration_method": method,
        "credential_type": "token", "client_secret_hash": secret_hash, "traits": traits or [],
        "expires_at": None, "archived_at": None, "created_by": "env-bootstrap",
        "updated_by": None, "created_at": at, "updated_at": at,
    }


def build_resources(ctx: Context) -> None:
    """Control resource, gateway-routed resources (one is the canary), one archived."""
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=20)
        _resource(ctx, zone, at, "Control", CONTROL_AUDIENCE, None, zone.provider_none,
                  CONTROL_SCOPES, enforcement="enforced")
        kinds = [p for p in zone.providers if p["provider_kind"] != "oauth2_authorization_code"]
        for ri in range(ctx.volume.resources_per_zone):
            at += dt.timedelta(minutes=1)
            if zone.index == 0 and ri == 0:
                res = _resource(ctx, zone, at, "Canary echo", CANARY_RESOURCE,
                                ctx.canary_upstream_url, zone.provider_none, ["read", "write"],
                                enforcement="transport_uniform")
                ctx.canary.update(resource_id=res["id"], resource_identifier=CANARY_RESOURCE)
                continue
            identifier = f"reference-svc-{ri + 1}"
            scopes = sorted(ctx.rng.sample(["read", "write", "admin"], 2))
            operations = [{"method": "GET", "path": "/items", "scope": scopes[0]},
                          {"method": "POST", "path": "/items", "scope": scopes[1]}]
            _resource(ctx, zone, at, f"Reference service {ri + 1}", identifier,
                      f"http://canary.caracal.test/{identifier}",
                      kinds[ri % len(kinds)]["id"], scopes, enforcement="enforced",
                      operations=operations)
        at += dt.timedelta(minutes=1)
        retired = _resource(ctx, zone, at, "Retired service", "reference-retired",
                            "http://canary.caracal.test/reference-retired", zone.provider_none,
                            ["read"], enforcement="transport_uniform")
        retired["archived_at"] = at + dt.timedelta(days=20)
        retired["updated_at"] = retired["archived_at"]


def _resource(ctx: Context, zone: ZoneState, at: dt.datetime, name: str, identifier: str,
              upstream: str | None, provider_id: str, scopes: list[str], *, enforcement: str,
              operations: list[dict[str, str]] | None = None) -> dict[str, Any]:
    row = {
        "id": ctx.id_at(at), "zone_id": zone.id, "name": name, "identifier": identifier,
        "upstream_url": upstream, "credential_provider_id": provider_id, "scopes": scopes,
        "operations": compact(operations or []), "operation_enforcement": enforcement,
        "archived_at": None, "created_by": "env-bootstrap", "updated_by": None,
        "created_at": at, "updated_at": at,
    }
    zone.resources.append(row)
    ctx.rows["resources"].append(row)
    return row


def build_workloads(ctx: Context) -> None:
    """One workload per zone: an Argon2id-hashed secret and its custody copy."""
    found: list[str] = []
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=40)
        routed = ctx.routed_resources(zone)
        secret = "ws_" + os_random.token_urlsafe(32)[:43]
        found.append(secret)
        workload_id = ctx.id_at(at)
        bindings = [{"env": f"SVC{i}_TOKEN", "resource": r["identifier"], "scopes": ["read"]}
                    for i, r in enumerate(routed[:2])]
        ctx.rows["workloads"].append({
            "id": workload_id, "zone_id": zone.id, "name": f"nightly-sync-{zone.index + 1}",
            "secret_hash": hash_client_secret(secret), "bindings": compact(bindings),
            "created_by": "env-bootstrap", "updated_by": None, "created_at": at,
            "updated_at": at,
        })
        ref = PROFILE.workload_secret_ref.format(zone_id=zone.id, workload_id=workload_id)
        _store(ctx, zone, ref, secret, at)
    REDACTOR.add(*found)


def build_subject_issuers(ctx: Context) -> None:
    """One federated subject issuer per zone (user subjects' IdP)."""
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(minutes=45)
        ctx.rows["subject_issuers"].append({
            "id": ctx.id_at(at), "zone_id": zone.id, "issuer": "https://idp.reference.test",
            "jwks_url": "https://idp.reference.test/.well-known/jwks.json",
            "audience": f"caracal-{zone.index + 1}", "archived_at": None, "created_at": at,
            "updated_at": at,
        })


def build_signing_keys(ctx: Context) -> None:
    """One or two zone signing keys per zone (P-256 SEC1 PEM in a CSS1 envelope)."""
    aad = envelope.AAD_ZONE_SIGNING_KEY
    found: list[str] = []
    for zone in ctx.zones:
        versions = 2 if zone.index == 0 else ctx.rng.choice((1, 2))
        first = zone.created_at + dt.timedelta(minutes=30)
        times = [first]
        if versions == 2:
            times.append(ctx.between(
                max(first + dt.timedelta(hours=1), ctx.now - dt.timedelta(days=40)),
                ctx.now - dt.timedelta(days=2)))
        for version, at in enumerate(times, start=1):
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
            found.append(pem.decode())
            kid = ctx.id_at(at)
            zone.signing_keys.append(kid)
            ctx.rows["secrets"].append({
                "id": kid, "zone_id": zone.id, "entity_id": zone.id, "name": SIGNING_KEY_NAME,
                "type": "token", "envelope": _seal(ctx, pem, aad), "version": version,
                "created_at": at, "updated_at": at,
            })
    REDACTOR.add(*found)


def build_admin_tokens(ctx: Context) -> None:
    """The env-bootstrap row (+ a revoked predecessor), console-derived tokens, a zone token."""
    hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=2, hash_len=32,
                            salt_len=16)
    boot = ctx.installed + dt.timedelta(minutes=1)
    rotated = ctx.installed + dt.timedelta(days=1)
    old = "old-" + os_random.token_hex(16)
    others = [os_random.token_hex(32) for _ in range(4)]
    REDACTOR.add(old, *others)

    def row(at: dt.datetime, name: str, token: str, created_by: str, *, capability: str = "write",
            scope: str = "global", zone_id: str | None = None, revoked: dt.datetime | None = None,
            phc: str | None = None) -> dict[str, Any]:
        return {
            "id": ctx.id_at(at), "name": name,
            "token_sha256": hashlib.sha256(token.encode()).digest(),
            "token_hash": phc if phc is not None else _unknown_phc(), "scope": scope,
            "capability": capability, "zone_id": zone_id, "created_by": created_by,
            "created_at": at, "last_used_at": None if revoked else at, "revoked_at": revoked,
        }

    ctx.rows["admin_tokens"] += [
        row(boot, "bootstrap", old, "env-bootstrap", revoked=rotated),
        row(rotated, "bootstrap", ctx.admin_token, "env-bootstrap",
            phc=hasher.hash(ctx.admin_token)),
        row(rotated, "console-read-only", others[0], "env-derived", capability="read"),
        row(rotated, "console-write", others[1], "env-derived-write"),
        row(rotated, "console-approve", others[2], "env-derived-approve", capability="approve"),
        row(rotated, "zone operator", others[3], "admin", capability="read", scope="zone",
            zone_id=ctx.zones[0].id if ctx.zones else None),
    ]
    ctx.rows["admin_tokens"][1]["last_used_at"] = ctx.now - dt.timedelta(minutes=7)
    ctx.bootstrap_token_id = ctx.rows["admin_tokens"][1]["id"]


def _unknown_phc() -> str:
    """A well-formed Argon2id PHC string of a secret nobody keeps (no hashing cost)."""
    salt, digest = (b64_nopad(os_random.token_bytes(n)) for n in (16, 32))
    return f"$argon2id$v=19$m=65536,t=3,p=2${salt}${digest}"


def build_provider_connections(ctx: Context) -> None:
    """User connections to the OAuth provider (access/refresh tokens in CSS1 envelopes)."""
    found: list[str] = []
    for zone in ctx.zones:
        oauth = next(p for p in zone.providers
                     if p["provider_kind"] == "oauth2_authorization_code")
        for ui, user in enumerate(zone.users[:3]):
            at = ctx.between(zone.created_at + dt.timedelta(days=1),
                             ctx.now - dt.timedelta(days=1))
            access = "at_" + os_random.token_urlsafe(24)
            refresh = "rt_" + os_random.token_urlsafe(24)
            found += [access, refresh]
            ctx.rows["provider_connections"].append({
                "id": ctx.id_at(at), "zone_id": zone.id, "subject_id": user,
                "provider_id": oauth["id"], "status": ("active", "revoked", "expired")[ui % 3],
                "access_token_ct": _seal(ctx, access.encode(), envelope.AAD_PROVIDER_ACCESS_TOKEN),
                "refresh_token_ct": _seal(ctx, refresh.encode(),
                                          envelope.AAD_PROVIDER_REFRESH_TOKEN),
                "expires_at": at + dt.timedelta(hours=1), "refreshed_at": at,
                "refresh_token_version": ui, "created_at": at, "updated_at": at,
            })
    REDACTOR.add(*found)


def build_notification_sinks(ctx: Context) -> None:
    """One webhook sink in the first zone, its signing secret sealed (cursor set later)."""
    if not ctx.zones:
        return
    zone = ctx.zones[0]
    at = zone.created_at + dt.timedelta(days=2)
    secret = "whsec_" + os_random.token_urlsafe(32)
    REDACTOR.add(secret)
    ctx.rows["notification_sinks"].append({
        "id": ctx.id_at(at), "zone_id": zone.id, "name": "ops-webhook",
        "url": "http://127.0.0.1:9/caracal-hook",
        "secret_ct": _seal(ctx, secret.encode(), envelope.AAD_NOTIFICATION_SINK),
        "event_types": ["step_up_issued", "step_up_decided", "step_up_consumed"],
        "active": True, "cursor_chain_seq": 0, "consecutive_failures": 0,
        "last_success_at": None, "last_failure_at": None, "last_error": None,
        "created_at": at, "updated_at": at,
    })


# ---------------------------------------------------------------- policies


def grants_document(ctx: Context, zone: ZoneState, owners: Mapping[str, str],
                    roles: Mapping[str, Mapping[str, list[str]]]) -> str:
    """The zone's data document: every managed app by id, each routed resource's owner/roles."""
    app_ids = {app: app for app in zone.managed_apps}
    grants = {res: {"application": owners[res], "roles": dict(roles[res])} for res in owners}
    return render_data_document(app_ids, grants)


def build_policies(ctx: Context) -> None:
    """Per zone: a grants policy (two versions) in the active set, and an inactive set.

    The grants document makes each routed resource's owner able to bootstrap on it and grants
    the role named after the owner (the SDK's default session label) the resource's scopes
    — the canary resource is owned by the canary application (FACTS-1.0 §14.3, §14.5).
    """
    for zone in ctx.zones:
        at = zone.created_at + dt.timedelta(hours=1)
        routed = ctx.routed_resources(zone)
        owners = {r["identifier"]: (ctx.canary["application_id"]
                                    if r["identifier"] == ctx.canary.get("resource_identifier")
                                    and zone.id == ctx.canary["zone_id"]
                                    else ctx.rng.choice(zone.managed_apps)) for r in routed}
        roles = {r["identifier"]: {owners[r["identifier"]]: list(r["scopes"])} for r in routed}
        narrow = {res: {app: scopes[:1] for app, scopes in rs.items()}
                  for res, rs in roles.items()}
        zone.policy_id = ctx.id_at(at)
        v2_at = ctx.between(max(at + dt.timedelta(hours=1), ctx.now - dt.timedelta(days=60)),
                            ctx.now - dt.timedelta(days=5))
        _policy(ctx, zone, zone.policy_id, "application-grants", at,
                [(grants_document(ctx, zone, owners, narrow), at),
                 (grants_document(ctx, zone, owners, roles), v2_at)])
        zone.policy_set_id = ctx.id_at(at)
        _policy_set(ctx, zone, zone.policy_set_id, "reference", at,
                    [(zone.policy_versions[0], at),
                     (zone.policy_versions[1], v2_at + dt.timedelta(minutes=2))])
        # A second set whose binding stays inactive: one active set per zone (unique index).
        spare_at = at + dt.timedelta(minutes=30)
        spare_policy, spare_set = ctx.id_at(spare_at), ctx.id_at(spare_at)
        spare_versions = _policy(ctx, zone, spare_policy, "baseline-application-bindings",
                                 spare_at, [(grants_document(ctx, zone, {}, {}), spare_at)],
                                 remember=False)
        spare = _policy_set(ctx, zone, spare_set, "baseline", spare_at,
                            [(spare_versions[0], spare_at)], remember=False)
        activated = zone.set_versions[-1][2] + dt.timedelta(seconds=30)
        for psv, _sha, when in [spare[0], *zone.set_versions]:
            ctx.outbox_event("caracal.policy.invalidate", when + dt.timedelta(seconds=30),
                             {"zone_id": zone.id,
                              "policy_set_id": spare_set if psv == spare[0][0]
                              else zone.policy_set_id,
                              "policy_set_version_id": psv})
        ctx.rows["policy_set_bindings"] += [
            {"zone_id": zone.id, "policy_set_id": spare_set, "active_version_id": None,
             "updated_at": activated},
            {"zone_id": zone.id, "policy_set_id": zone.policy_set_id,
             "active_version_id": zone.set_versions[-1][0], "updated_at": activated},
        ]
        if zone.index == 0:
            ctx.canary.update(policy_id=zone.policy_id, policy_set_id=zone.policy_set_id,
                              policy_set_version_id=zone.set_versions[-1][0],
                              manifest_sha256=zone.set_versions[-1][1])


def _policy(ctx: Context, zone: ZoneState, policy_id: str, name: str, at: dt.datetime,
            versions: list[tuple[str, dt.datetime]], *, remember: bool = True) -> list[str]:
    ctx.rows["policies"].append({
        "id": policy_id, "zone_id": zone.id, "name": name, "description": None,
        "archived_at": None, "created_by": "env-bootstrap", "updated_by": None,
        "created_at": at, "updated_at": at,
    })
    ids = []
    for number, (content, when) in enumerate(versions, 1):
        pv = ctx.id_at(when)
        ids.append(pv)
        ctx.rows["policy_versions"].append({
            "id": pv, "policy_id": policy_id, "version": number, "content": content,
            "content_sha256": sha256_hex(content), "schema_version": "1",
            "created_by": "env-bootstrap", "created_at": when, "archived_at": None,
        })
    if remember:
        zone.policy_versions.extend(ids)
    return ids


def _policy_set(ctx: Context, zone: ZoneState, set_id: str, name: str, at: dt.datetime,
                versions: list[tuple[str, dt.datetime]], *,
                remember: bool = True) -> list[tuple[str, str, dt.datetime]]:
    ctx.rows["policy_sets"].append({
        "id": set_id, "zone_id": zone.id, "name": name, "description": None,
        "archived_at": None, "created_by": "env-bootstrap", "updated_by": None,
        "created_at": at, "updated_at": at,
    })
    out = []
    for number, (pv, when) in enumerate(versions, 1):
        psv, sha = ctx.id_at(when), manifest_sha256([pv])
        out.append((psv, sha, when))
        ctx.rows["policy_set_versions"].append({
            "id": psv, "policy_set_id": set_id, "version": number,
            "manifest_json": compact([{"policy_version_id": pv}]), "manifest_sha256": sha,
            "schema_version": "1", "created_by": "env-bootstrap", "created_at": when,
            "archived_at": None,
        })
    if remember:
        zone.set_versions.extend(out)
    return out


def build_singletons(ctx: Context, *, audit_retention_days: int) -> None:
    """``sts_rate_limit`` and the console's ``audit_retention`` override."""
    at = ctx.installed + dt.timedelta(hours=2)
    ctx.rows["sts_rate_limit"].append({"singleton": True, "limit_per_minute": 600,
                                       "updated_at": at, "updated_by": ctx.bootstrap_token_id})
    ctx.rows["audit_retention"].append({
        "singleton": True, "retention_days": audit_retention_days, "updated_at": at,
        "updated_by": f"admin:{ctx.bootstrap_token_id}",
    })

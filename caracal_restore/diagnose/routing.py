"""Symptom "Gateway cannot route" — missing gateway binding rows or stale binding revision.

Release 2026.06 routes through ``gateway_resource_bindings`` (PK ``(zone_id,
resource_identifier)``, no foreign keys) and the singleton ``gateway_binding_revision``; the
Gateway reloads its in-memory map only when the stored revision *differs* from the one it last
loaded (FACTS-2026.06 §2.9). Offline (``diagnose_offline``): every unarchived non-control
resource with an ``upstream_url`` has a binding; every binding matches an unarchived resource
and an unarchived, managed, unexpired application of its zone; the revision row exists exactly
once with ``version >= 0`` and equals the source's; and binding rows that differ from the
source's (fingerprint digest) while the counter is unchanged are a stale revision — a Gateway
that cached that revision keeps the old map. Online (``probe_routes``, ``probe_bindings_loaded``):
a protected request per resource that must route is not refused with ``403 resource not
configured``, and ``caracal_gateway_bindings_loaded`` equals the table's row count.

Release 1.0 has no binding tables (FACTS-1.0 §8): the Gateway gets the upstream from STS, which
builds it from ``resources.upstream_url`` and the resource's credential provider. There
(``diagnose_resources_offline``) the symptom means resources rows lost (fewer than the source,
or rows of grants and delegation edges naming a resource that is gone), resources restored
without their upstream URL or with other routing columns (the table differs from the source's),
a routed resource whose provider is missing or archived, or the retired binding tables present
(a pre-1.0 dump restored into 1.0; its verify.sh fails).

The route probe's bearer is an unsigned token carrying only ``zone_id`` and ``exp``: the Gateway
looks the binding up before it verifies a signature (§7.3 step 4), so the probe tells "no
binding" (403) from "bound" (any later refusal) without any key, and never reaches an upstream.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from caracal_restore.diagnose import SYMPTOM_ROUTING, Diagnosis, Finding
from caracal_restore.diagnose._common import (
    DiagnosticError,
    error_of,
    exists,
    fingerprint_table,
    table_digests,
)

#: The control resource (``CONTROL_AUDIENCE`` default) never has a binding (§2.9).
CONTROL_AUDIENCE = "caracal-control"
BINDINGS = "gateway_resource_bindings"
REVISION = "gateway_binding_revision"
NOT_CONFIGURED = "resource not configured"


@dataclasses.dataclass(frozen=True)
class Route:
    """A (zone, resource identifier) the Gateway must route, and whether a binding row exists."""

    zone_id: str
    resource_identifier: str
    bound: bool


def routes(conn: psycopg.Connection[Any], control_audience: str = CONTROL_AUDIENCE) -> list[Route]:
    """Every unarchived non-control resource with an upstream URL, with its binding's presence."""
    rows = conn.execute(
        "SELECT r.zone_id::text, r.identifier, b.resource_identifier IS NOT NULL"
        " FROM resources r LEFT JOIN gateway_resource_bindings b"
        "   ON b.zone_id = r.zone_id AND b.resource_identifier = r.identifier"
        " WHERE r.archived_at IS NULL AND COALESCE(r.upstream_url, '') <> ''"
        "   AND r.identifier <> %s ORDER BY 1, 2", (control_audience,)).fetchall()
    return [Route(z, i, bool(b)) for z, i, b in rows]


def revision_rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, int]]:
    """Every row of the revision table (there must be exactly one: (true, v >= 0))."""
    return [(r[0], int(r[1])) for r in conn.execute(
        "SELECT id, version FROM gateway_binding_revision ORDER BY version").fetchall()]


def orphans(conn: psycopg.Connection[Any],
            control_audience: str = CONTROL_AUDIENCE) -> list[tuple[str, str, str, str]]:
    """Bindings the Gateway would follow into nothing: (zone, resource, application, reason)."""
    rows = conn.execute(
        "SELECT b.zone_id::text, b.resource_identifier, b.application_id::text,"
        " r.identifier IS NOT NULL, r.archived_at IS NOT NULL,"
        " a.id IS NOT NULL, a.archived_at IS NOT NULL, a.registration_method,"
        " a.expires_at IS NOT NULL AND a.expires_at <= now(),"
        " x.id IS NOT NULL"
        " FROM gateway_resource_bindings b"
        " LEFT JOIN resources r ON r.zone_id = b.zone_id AND r.identifier = b.resource_identifier"
        " LEFT JOIN applications a ON a.zone_id = b.zone_id AND a.id = b.application_id"
        " LEFT JOIN applications x ON x.id = b.application_id AND x.zone_id <> b.zone_id"
        " ORDER BY 1, 2").fetchall()
    out = []
    for zone, res, app, r_in, r_arch, a_in, a_arch, method, a_exp, elsewhere in rows:
        reasons = []
        if res == control_audience:
            reasons.append("binds the control resource, which never has a binding")
        elif not r_in:
            reasons.append(f"no resources row with identifier {res!r} in the zone")
        elif r_arch:
            reasons.append("its resource is archived")
        if not a_in:
            reasons.append("its application is in another zone" if elsewhere
                           else "its application does not exist")
        elif a_arch:
            reasons.append("its application is archived")
        elif method != "managed":
            reasons.append(f"its application is registered {method!r}, not 'managed'")
        elif a_exp:
            reasons.append("its application has expired")
        if reasons:
            out.append((zone, res, app, "; ".join(reasons)))
    return out


# ------------------------------------------------------------------------------- offline


def diagnose_offline(conn: psycopg.Connection[Any], *, fingerprint: Mapping[str, Any] | None,
                     control_audience: str = CONTROL_AUDIENCE) -> Diagnosis:
    """Bindings cover the routed resources, point at live rows, and match the revision."""
    for table in (BINDINGS, REVISION, "resources", "applications"):
        if not exists(conn, table):
            raise DiagnosticError(f"table {table} is missing from the restored database; the "
                                  "release's schema was not restored")
    findings: list[Finding] = []
    notes: list[str] = []
    wanted = routes(conn, control_audience)
    for r in wanted:
        if not r.bound:
            findings.append(Finding(
                "binding-missing", f"zone {r.zone_id} resource {r.resource_identifier}",
                "an unarchived resource with an upstream_url has no gateway_resource_bindings "
                "row: the Gateway answers 403 resource not configured", r.zone_id))
    stray = orphans(conn, control_audience)
    for zone, res, app, reason in stray:
        findings.append(Finding("binding-orphan", f"zone {zone} binding {res} -> {app}", reason,
                                zone))
    revs = revision_rows(conn)
    if len(revs) != 1 or revs[0][0] is not True or revs[0][1] < 0:
        why = ("no row: the Gateway cannot start (gateway binding revision row missing)"
               if not revs else f"rows {revs}: the Gateway refuses a duplicated, non-singleton or "
               "negative revision")
        findings.append(Finding("revision-missing", f"table {REVISION}", why))
    restored_rev = revs[0][1] if len(revs) == 1 else None
    digests = table_digests(conn, [BINDINGS])[BINDINGS]
    observed: dict[str, Any] = {
        "routes": [dataclasses.asdict(r) for r in wanted],
        "orphans": [dict(zip(("zone_id", "resource_identifier", "application_id", "reason"), o,
                             strict=True)) for o in stray],
        "revision_rows": [[str(i), v] for i, v in revs],
        "bindings_table": digests,
    }
    source = fingerprint_table(fingerprint, BINDINGS)
    source_rev = fingerprint.get("binding_revision") if fingerprint else None
    if not fingerprint:
        notes.append("no source fingerprint: a stale revision (rows changed while the counter "
                     "stayed) cannot be decided; bindings checked for internal consistency only")
    else:
        observed["source"] = {"bindings_table": source, "binding_revision": source_rev}
        findings += _against_source(findings, digests, source, source_rev, restored_rev)
    return Diagnosis(SYMPTOM_ROUTING, tuple(findings), observed, tuple(notes))


def _against_source(found: list[Finding], digests: Mapping[str, Any],
                    source: Mapping[str, Any] | None, source_rev: int | None,
                    restored_rev: int | None) -> list[Finding]:
    """Compare with the source: lost rows, changed rows under an unchanged counter."""
    out: list[Finding] = []
    if source_rev is not None and restored_rev is not None and restored_rev != source_rev:
        out.append(Finding("revision-differs", f"table {REVISION}",
                           f"version {restored_rev} after restore, {source_rev} in the source"))
    if source is None or source["sha256"] == digests["sha256"]:
        return out
    if digests["rows"] < source["rows"]:
        out.append(Finding("binding-missing", f"table {BINDINGS}",
                           f"{source['rows'] - digests['rows']} of the source's {source['rows']} "
                           "binding rows are missing after restore"))
        return out
    explained = any(f.cause in ("binding-missing", "binding-orphan") for f in found)
    if not explained and restored_rev is not None and restored_rev == source_rev:
        out.append(Finding(
            "revision-stale", f"table {BINDINGS}",
            f"binding rows differ from the source ({digests['rows']} rows, content sha256 "
            f"{digests['sha256'][:16]}… vs {source['sha256'][:16]}…) while "
            f"gateway_binding_revision is still {restored_rev}: a Gateway that loaded revision "
            f"{restored_rev} keeps routing with the old map"))
    return out


# ------------------------------------------------------------------ offline, release 1.0

#: Tables that reference a resource by ``resource_id`` (FACTS-1.0 §2.6).
RESOURCE_REFERENCES = ("delegated_grants", "delegation_edges")


def resource_routes(conn: psycopg.Connection[Any],
                    control_audience: str = CONTROL_AUDIENCE) -> list[dict[str, Any]]:
    """Every unarchived non-control resource: its upstream URL and its provider's state."""
    rows = conn.execute(
        "SELECT r.zone_id::text, r.id::text, r.identifier, r.upstream_url,"
        " r.credential_provider_id::text, p.id IS NOT NULL, p.archived_at IS NOT NULL,"
        " p.provider_kind FROM resources r LEFT JOIN providers p"
        "   ON p.zone_id = r.zone_id AND p.id = r.credential_provider_id"
        " WHERE r.archived_at IS NULL AND r.identifier <> %s ORDER BY 1, 3",
        (control_audience,)).fetchall()
    keys = ("zone_id", "id", "identifier", "upstream_url", "provider_id", "provider_exists",
            "provider_archived", "provider_kind")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _upstream_problem(url: str | None) -> str:
    """Why an upstream URL cannot route ('' when it can)."""
    if not url:
        return "no upstream_url"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"upstream_url {url!r} is not an http(s) URL with a host"
    return ""


def _dangling_resources(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """resource ids named by grants or delegation edges that no resources row has."""
    out: dict[str, list[str]] = {}
    for table in RESOURCE_REFERENCES:
        if not exists(conn, table):
            continue
        rows = conn.execute(sql.SQL(
            "SELECT DISTINCT t.resource_id::text FROM {} t WHERE t.resource_id IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM resources r WHERE r.id = t.resource_id)"
            " ORDER BY 1").format(sql.Identifier(table))).fetchall()
        for (resource_id,) in rows:
            out.setdefault(resource_id, []).append(table)
    return out


def diagnose_resources_offline(conn: psycopg.Connection[Any], *,
                               fingerprint: Mapping[str, Any] | None,
                               control_audience: str = CONTROL_AUDIENCE) -> Diagnosis:
    """Release 1.0: resources and providers restored as routed, no retired binding table."""
    for table in ("resources", "providers"):
        if not exists(conn, table):
            raise DiagnosticError(f"table {table} is missing from the restored database; the "
                                  "release's schema was not restored")
    findings: list[Finding] = []
    notes: list[str] = []
    retired = [t for t in (BINDINGS, REVISION) if exists(conn, t)]
    for table in retired:
        findings.append(Finding("retired-binding-table", f"table {table}",
                                "exists, but release 1.0 retired it (verify.sh fails while it "
                                "exists): the dump predates 1.0"))
    wanted = resource_routes(conn, control_audience)
    unrouted = []
    for r in wanted:
        subject = f"zone {r['zone_id']} resource {r['identifier']}"
        problem = _upstream_problem(r["upstream_url"])
        if problem and r["upstream_url"]:
            findings.append(Finding("resource-route-changed", subject,
                                    f"{problem}: STS cannot build its upstream", r["zone_id"]))
        elif problem:
            unrouted.append(r)
        if not r["upstream_url"]:
            continue
        if not r["provider_exists"]:
            findings.append(Finding("provider-missing", subject,
                                    f"its credential provider {r['provider_id']} does not exist",
                                    r["zone_id"]))
        elif r["provider_archived"]:
            findings.append(Finding("provider-missing", subject,
                                    f"its credential provider {r['provider_id']} is archived: "
                                    "STS denies the exchange (provider_unavailable)",
                                    r["zone_id"]))
    dangling = _dangling_resources(conn)
    for resource_id, tables in sorted(dangling.items()):
        findings.append(Finding("resource-missing", f"resource {resource_id}",
                                f"named by {' and '.join(tables)} but has no resources row"))
    digests = table_digests(conn, ["resources", "providers"])
    observed: dict[str, Any] = {
        "routes": [{k: v for k, v in r.items() if k != "provider_exists"} for r in wanted],
        "without_upstream": [f"{r['zone_id']}/{r['identifier']}" for r in unrouted],
        "dangling_resource_ids": dangling,
        "retired_tables_present": retired,
        "tables": digests,
    }
    if not fingerprint:
        notes.append("no source fingerprint: lost or changed resources rows cannot be told from "
                     "resources that never routed; checked for internal consistency only")
        return Diagnosis(SYMPTOM_ROUTING, tuple(findings), observed, tuple(notes))
    source = {t: fingerprint_table(fingerprint, t) for t in ("resources", "providers")}
    observed["source"] = source
    findings += _resources_against_source(findings, digests, source, unrouted)
    return Diagnosis(SYMPTOM_ROUTING, tuple(findings), observed, tuple(notes))


def _resources_against_source(found: list[Finding], digests: Mapping[str, Any],
                              source: Mapping[str, Mapping[str, Any] | None],
                              unrouted: list[dict[str, Any]]) -> list[Finding]:
    """Rows lost, or changed while the count stayed (the routing columns are in the digest)."""
    out: list[Finding] = []
    res, now = source.get("resources"), digests["resources"]
    if res is not None and now["rows"] < res["rows"]:
        if not any(f.cause == "resource-missing" for f in found):
            out.append(Finding("resource-missing", "table resources",
                               f"{res['rows'] - now['rows']} of the source's {res['rows']} rows "
                               "are missing after restore"))
    elif res is not None and now["sha256"] != res["sha256"]:
        if unrouted:
            out += [Finding("resource-route-changed",
                            f"zone {r['zone_id']} resource {r['identifier']}",
                            "restored without an upstream_url while the resources table differs "
                            "from the source's: STS returns no upstream (403 resource upstream "
                            "not configured)", r["zone_id"]) for r in unrouted]
        elif not any(f.cause == "resource-route-changed" for f in found):
            out.append(Finding("resource-route-changed", "table resources",
                               f"{now['rows']} rows as in the source, content differs (sha256 "
                               f"{now['sha256'][:16]}… vs {res['sha256'][:16]}…): an upstream "
                               "URL, provider or other routing column changed"))
    prov, now_p = source.get("providers"), digests["providers"]
    if prov is not None and now_p["rows"] < prov["rows"] and not any(
            f.cause == "provider-missing" for f in found):
        out.append(Finding("provider-missing", "table providers",
                           f"{prov['rows'] - now_p['rows']} of the source's {prov['rows']} rows "
                           "are missing after restore"))
    return out


# -------------------------------------------------------------------------------- online


def _b64(obj: Mapping[str, Any] | bytes) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def probe_token(zone_id: str, lifetime: int = 300) -> str:
    """An unsigned bearer with only what the Gateway reads before its binding lookup."""
    claims = {"zone_id": zone_id, "exp": int(time.time()) + lifetime, "use": "session",
              "sid": f"caracal-restore-probe-{uuid.uuid4()}"}
    header = {"alg": "ES256", "kid": "caracal-restore-route-probe", "typ": "JWT"}
    return f"{_b64(header)}.{_b64(claims)}.{_b64(bytes(64))}"


@dataclasses.dataclass(frozen=True)
class RouteProbe:
    """One route probe's outcome."""

    zone_id: str
    resource_identifier: str
    status: int
    description: str

    @property
    def routed(self) -> bool:
        """The Gateway found a binding (it refused later, at the signature, as expected)."""
        return not (self.status == 403 and self.description == NOT_CONFIGURED)


def probe_route(client: httpx.Client, gateway_url: str, zone_id: str, resource: str) -> RouteProbe:
    """Send one protected request with the probe bearer."""
    reply = client.get(f"{gateway_url.rstrip('/')}/caracal-restore/route-probe",
                       headers={"Authorization": f"Bearer {probe_token(zone_id)}",
                                "X-Caracal-Resource": resource,
                                "X-Request-Id": f"caracal-restore-{uuid.uuid4()}"})
    status, description = error_of(reply)
    if status in (200, 502):
        raise DiagnosticError(f"route probe for {zone_id}/{resource} got {status}: the Gateway "
                              "accepted an unsigned bearer")
    return RouteProbe(zone_id, resource, status, description)


def probe_routes(client: httpx.Client, gateway_url: str, wanted: Sequence[Route]) -> Diagnosis:
    """Probe every route; a 403 'resource not configured' names why the Gateway cannot route."""
    findings: list[Finding] = []
    probes = [probe_route(client, gateway_url, r.zone_id, r.resource_identifier) for r in wanted]
    for route, probe in zip(wanted, probes, strict=True):
        if probe.routed:
            continue
        if route.bound:
            findings.append(Finding(
                "revision-stale", f"zone {route.zone_id} resource {route.resource_identifier}",
                "403 resource not configured although the database holds the binding: the "
                "Gateway's map predates it (revision unchanged since it loaded)", route.zone_id))
        else:
            findings.append(Finding(
                "binding-missing", f"zone {route.zone_id} resource {route.resource_identifier}",
                "403 resource not configured: no binding row", route.zone_id))
    observed = {"probes": [dataclasses.asdict(p) | {"routed": p.routed} for p in probes]}
    return Diagnosis(SYMPTOM_ROUTING, tuple(findings), observed)


def bindings_loaded(client: httpx.Client, gateway_url: str, bearer: str | None) -> int:
    """``caracal_gateway_bindings_loaded`` from the Gateway's /metrics."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    reply = client.get(f"{gateway_url.rstrip('/')}/metrics", headers=headers)
    if reply.status_code != 200:
        raise DiagnosticError(f"Gateway /metrics answered {reply.status_code}")
    for line in reply.text.splitlines():
        name, _, value = line.partition(" ")
        if name == "caracal_gateway_bindings_loaded":
            return int(float(value))
    raise DiagnosticError("Gateway /metrics has no caracal_gateway_bindings_loaded sample")


def probe_bindings_loaded(loaded: int, table_rows: int) -> Diagnosis:
    """The Gateway's cached map must hold exactly the bindings its database holds."""
    findings = []
    if loaded != table_rows:
        findings.append(Finding(
            "revision-stale", "Gateway binding map",
            f"caracal_gateway_bindings_loaded is {loaded}, gateway_resource_bindings holds "
            f"{table_rows} rows: the Gateway did not reload (revision unchanged)"))
    return Diagnosis(SYMPTOM_ROUTING, tuple(findings),
                     {"bindings_loaded": loaded, "table_rows": table_rows})

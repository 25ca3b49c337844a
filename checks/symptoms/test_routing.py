"""Symptom "Gateway cannot route" — missing gateway binding rows or stale binding revision.

Release 2026.06 routes through ``gateway_resource_bindings`` (no foreign keys) and the singleton
``gateway_binding_revision``; the Gateway reloads only when the revision differs from the one it
cached. Release 1.0 has no bindings: its Gateway gets the upstream from STS, built from
``resources.upstream_url`` and the resource's provider, so there SY-3.f-h check the resources,
their providers and that the retired binding tables are gone; each family is skipped as not
applicable on the other release.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import psycopg

from caracal_restore.diagnose import SYMPTOM_ROUTING, Diagnosis
from caracal_restore.diagnose import routing as routing_diag
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.errors import EnvironmentNotReady
from caracal_restore.profiles import Profile
from caracal_restore.runstate import ServicesInfo
from fixtures import evidence
from fixtures.controls import Severity, control


def _gateway(services: ServicesInfo) -> str:
    if not services.gateway_url:
        raise EnvironmentNotReady(f"services mode {services.mode!r} names no Gateway URL")
    return services.gateway_url


@control("SY-3.a", feature=SYMPTOM_ROUTING, grade="verified", severity=Severity.CRITICAL)
def test_every_routed_resource_has_a_binding(routing_diagnosis: Diagnosis) -> None:
    """SY-3.a Every unarchived non-control resource with an upstream_url has a gateway binding,
    and no binding row of the source is missing."""
    found = routing_diagnosis.only("binding-missing")
    evidence.json("resources that must route", routing_diagnosis.observed["routes"])
    evidence.json("bindings table: restored vs source", {
        "restored": routing_diagnosis.observed["bindings_table"],
        "source": routing_diagnosis.observed.get("source")})
    assert routing_diagnosis.observed["routes"] or found.present, (
        "no unarchived resource with an upstream_url exists: nothing routes through the Gateway")
    assert not found.present, found.explain()


@control("SY-3.b", feature=SYMPTOM_ROUTING, grade="verified")
def test_bindings_point_at_live_resources_and_applications(routing_diagnosis: Diagnosis) -> None:
    """SY-3.b Every binding matches an unarchived resource and an unarchived, managed, unexpired
    application of its own zone (the table has no foreign keys: orphans are possible)."""
    found = routing_diagnosis.only("binding-orphan")
    evidence.json("orphan bindings", routing_diagnosis.observed["orphans"])
    assert not found.present, found.explain()


@control("SY-3.c", feature=SYMPTOM_ROUTING, grade="verified", severity=Severity.CRITICAL)
def test_binding_revision_is_restored_and_current(routing_diagnosis: Diagnosis) -> None:
    """SY-3.c The gateway_binding_revision row exists exactly once, equals the source's, and the
    binding rows have not changed under it (a stale revision keeps a running Gateway's old map)."""
    found = routing_diagnosis.only("revision-missing", "revision-differs", "revision-stale")
    evidence.json("revision rows", routing_diagnosis.observed["revision_rows"])
    evidence.json("source", routing_diagnosis.observed.get("source"))
    evidence.text("basis", "\n".join(routing_diagnosis.notes) or "fingerprint of the source")
    assert not found.present, found.explain()


@control("SY-3.d", feature=SYMPTOM_ROUTING, grade="demonstrated", severity=Severity.CRITICAL)
def test_gateway_routes_every_resource(bindings_release: Profile, live_services: ServicesInfo,
                                       service_http: httpx.Client,
                                       restored_conn: psycopg.Connection[Any]) -> None:
    """SY-3.d A protected request to every resource that must route finds its binding at the
    Gateway (no '403 resource not configured')."""
    wanted = routing_diag.routes(
        restored_conn, bindings_release.control_audience or routing_diag.CONTROL_AUDIENCE)
    diagnosis = routing_diag.probe_routes(service_http, _gateway(live_services), wanted)
    evidence.json("route probes", diagnosis.observed)
    assert wanted, "no resource must route: the probe proved nothing"
    assert not diagnosis.present, diagnosis.explain()


@control("SY-3.e", feature=SYMPTOM_ROUTING, grade="demonstrated")
def test_gateway_loaded_every_binding(bindings_release: Profile, live_services: ServicesInfo,
                                      service_http: httpx.Client, services_db: PgEndpoint,
                                      restored_secrets: Mapping[str, str]) -> None:
    """SY-3.e The Gateway's caracal_gateway_bindings_loaded equals the binding rows of the
    database it runs on (a difference is a map it did not reload: a stale revision)."""
    loaded = routing_diag.bindings_loaded(
        service_http, _gateway(live_services),
        restored_secrets.get(bindings_release.metrics_bearer_secret or "metricsBearer"))
    with psycopg.connect(services_db.conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM gateway_resource_bindings").fetchone()
    rows = int(row[0]) if row else 0
    diagnosis = routing_diag.probe_bindings_loaded(loaded, rows)
    evidence.json("Gateway map vs table", diagnosis.observed)
    assert not diagnosis.present, diagnosis.explain()


# ------------------------------------------------------------- release 1.0: from resources


@control("SY-3.f", feature=SYMPTOM_ROUTING, grade="verified", severity=Severity.CRITICAL)
def test_resources_are_restored_as_routed(resource_routing_diagnosis: Diagnosis) -> None:
    """SY-3.f (1.0) Every resources row of the source is restored, with its upstream URL and
    routing columns (the Gateway's upstream comes from resources.upstream_url via STS)."""
    found = resource_routing_diagnosis.only("resource-missing", "resource-route-changed")
    evidence.json("resources that route", resource_routing_diagnosis.observed["routes"])
    evidence.json("resources and providers: restored vs source", {
        "restored": resource_routing_diagnosis.observed["tables"],
        "source": resource_routing_diagnosis.observed.get("source")})
    evidence.json("ids named by grants or edges without a resources row",
                  resource_routing_diagnosis.observed["dangling_resource_ids"])
    evidence.text("basis", "\n".join(resource_routing_diagnosis.notes)
                  or "fingerprint of the source")
    assert any(r["upstream_url"] for r in resource_routing_diagnosis.observed["routes"]) or (
        found.present), "no unarchived resource has an upstream_url: nothing routes"
    assert not found.present, found.explain()


@control("SY-3.g", feature=SYMPTOM_ROUTING, grade="verified", severity=Severity.CRITICAL)
def test_routed_resources_have_live_providers(resource_routing_diagnosis: Diagnosis) -> None:
    """SY-3.g (1.0) Every routed resource's credential provider is restored and not archived
    (else STS denies the exchange: provider_unavailable)."""
    found = resource_routing_diagnosis.only("provider-missing")
    evidence.json("resources and their providers", resource_routing_diagnosis.observed["routes"])
    assert not found.present, found.explain()


@control("SY-3.h", feature=SYMPTOM_ROUTING, grade="verified")
def test_retired_binding_tables_are_absent(resource_routing_diagnosis: Diagnosis) -> None:
    """SY-3.h (1.0) The retired gateway_resource_bindings and gateway_binding_revision tables
    are absent (their presence means a pre-1.0 dump; the release's verify.sh fails)."""
    found = resource_routing_diagnosis.only("retired-binding-table")
    evidence.json("retired binding tables present",
                  resource_routing_diagnosis.observed["retired_tables_present"])
    assert not found.present, found.explain()

"""Fault injection: one defect at a time in a copy of a clean restore; the right diagnosis fires.

One run is built for the module (``prepared_run``). Each fault takes an independent copy of the
restored environment (``clone_run``), injects exactly one defect, and runs the four symptom
diagnoses of ``caracal_restore.diagnose`` on it: the defect's symptom must fire with exactly the
expected cause(s), and no other symptom may fire. A few representative defects (and the clean
restore) also go through the real checks in a pytest subprocess (``run_checks_on``) to prove the
checks wire the diagnoses; the online probes and the revocation replay run against reference
services started on a copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib

from caracal_restore.diagnose import (
    SYMPTOM_CHAIN,
    SYMPTOM_KEK,
    SYMPTOM_REVOCATION,
    SYMPTOM_ROUTING,
    Diagnosis,
)
from caracal_restore.diagnose import chain as chain_diag
from caracal_restore.diagnose import kek as kek_diag
from caracal_restore.diagnose import revocation as revocation_diag
from caracal_restore.diagnose import routing as routing_diag
from caracal_restore.diagnose._common import http_client
from caracal_restore.envelope import parse_kek
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.redact import REDACTOR
from caracal_restore.runstate import RunState
from tests.harness import ClonedRun, clone_run, prepared_run, run_checks_on
from tests.symptom_faults import (
    REVOKE,
    STS_GROUP,
    Env,
    clean,
    delete_audit_row,
    delete_marker,
    diagnose,
    drop_oldest_partition,
    duplicate_chain_seq,
    edit_decision,
    env_of,
    in_flight,
    one,
    secrets_of,
    truncate_head,
    unrevoke_edge,
    wrong_hmac_key,
)

pytestmark = pytest.mark.slow

#: "The other zone": the one with the most signing keys that is not the canary's.
ZONE_SQL = ("SELECT z.id FROM zones z WHERE z.id <> %s ORDER BY (SELECT count(*) FROM secrets s"
            " WHERE s.zone_id = z.id) DESC, z.id LIMIT 1")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """One clean run (reference source, encrypted bundle, restore, reference services)."""
    with prepared_run(audit_events=1500) as run:
        yield env_of(run, ZONE_SQL)


def diagnose_all(clone: ClonedRun, env: Env,
                 fingerprint: Mapping[str, Any] | None = None) -> dict[str, Diagnosis]:
    """The four offline diagnoses of a (broken) copy, as the checks' fixtures compute them,
    keyed by symptom."""
    found = diagnose(clone, env, PROFILE, ("kek", "chain", "routing", "revocation"), fingerprint)
    return {d.symptom: d for d in found.values()}


def assert_only(diagnoses: Mapping[str, Diagnosis], symptom: str | None,
                causes: set[str]) -> Diagnosis | None:
    """``symptom`` fires with exactly ``causes``; every other symptom is silent."""
    fired = None
    for name, diagnosis in diagnoses.items():
        if name == symptom:
            assert diagnosis.causes == causes, diagnosis.explain()
            fired = diagnosis
        else:
            assert not diagnosis.present, f"{name} fired too:\n{diagnosis.explain()}"
    return fired


# ------------------------------------------------------------------------- injections


_one = one


def _zones(conn: psycopg.Connection[Any]) -> list[str]:
    """Zones with signing keys, bindings and audit rows; the canary's zone first."""
    return [r[0] for r in conn.execute(
        "SELECT z.id FROM zones z ORDER BY (SELECT count(*) FROM secrets s"
        " WHERE s.zone_id = z.id) DESC, z.id").fetchall()]


def _other_zone(conn: psycopg.Connection[Any], env: Env) -> str:
    return env.other_zone(conn)


def wrong_kek(clone: ClonedRun, env: Env) -> None:
    clone.secrets().write("zoneKek", os.urandom(32).hex())


def corrupt_sealed_row(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        kid = _one(conn, "SELECT id FROM secrets WHERE zone_id = %s LIMIT 1",
                   _other_zone(conn, env))
        conn.execute("UPDATE secrets SET ciphertext = set_byte(ciphertext, 5,"
                     " get_byte(ciphertext, 5) # 255) WHERE id = %s", (kid,))


def delete_zone_signing_keys(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        conn.execute("DELETE FROM secrets WHERE zone_id = %s", (_other_zone(conn, env),))


def delete_binding(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        conn.execute("DELETE FROM gateway_resource_bindings WHERE (zone_id, resource_identifier)"
                     " = (SELECT zone_id, resource_identifier FROM gateway_resource_bindings"
                     " WHERE zone_id = %s ORDER BY 2 LIMIT 1)", (_other_zone(conn, env),))


def stale_binding(clone: ClonedRun, env: Env) -> None:
    """Rebind a resource to another valid application by SQL, without bumping the revision."""
    with clone.connect() as conn:
        zone = _other_zone(conn, env)
        res, app = _one(conn, "SELECT resource_identifier, application_id FROM"
                              " gateway_resource_bindings WHERE zone_id = %s ORDER BY 1 LIMIT 1",
                        zone)
        other = _one(conn, "SELECT id FROM applications WHERE zone_id = %s AND id <> %s"
                           " AND archived_at IS NULL AND registration_method = 'managed'"
                           " ORDER BY id LIMIT 1", zone, app)
        conn.execute("UPDATE gateway_resource_bindings SET application_id = %s"
                     " WHERE zone_id = %s AND resource_identifier = %s", (other, zone, res))


def delete_revision(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        conn.execute("DELETE FROM gateway_binding_revision")


def orphan_binding(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        zone = _other_zone(conn, env)
        app = _one(conn, "SELECT application_id FROM gateway_resource_bindings"
                         " WHERE zone_id = %s LIMIT 1", zone)
        conn.execute("INSERT INTO gateway_resource_bindings (resource_identifier,"
                     " application_id, zone_id) VALUES ('ghost-service', %s, %s)", (app, zone))


def reactivate_revoked_session(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        sid = sorted(env.fingerprint["revoked"]["sessions"])[0]
        conn.execute("UPDATE sessions SET status = 'active' WHERE id = %s", (sid,))


def reactivate_stopped_agent(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        agent = sorted(env.fingerprint["revoked"]["agents"])[0]
        conn.execute("UPDATE agent_sessions SET status = 'active', terminated_at = NULL"
                     " WHERE id = %s", (agent,))


@dataclasses.dataclass(frozen=True)
class Fault:
    """One defect, the symptom it must produce and the cause(s) the diagnosis must name."""

    id: str
    inject: Callable[[ClonedRun, Env], None]
    symptom: str | None
    causes: frozenset[str]


FAULTS = (
    Fault("clean-restore", clean, None, frozenset()),
    Fault("wrong-kek", wrong_kek, SYMPTOM_KEK, frozenset({"kek-mismatch"})),
    Fault("one-sealed-row-corrupted", corrupt_sealed_row, SYMPTOM_KEK,
          frozenset({"sealed-rows-corrupt"})),
    Fault("zone-signing-keys-deleted", delete_zone_signing_keys, SYMPTOM_KEK,
          frozenset({"signing-keys-missing"})),
    Fault("audit-row-deleted-mid-chain", delete_audit_row, SYMPTOM_CHAIN,
          frozenset({"chain-missing-rows"})),
    Fault("audit-decision-edited", edit_decision, SYMPTOM_CHAIN, frozenset({"chain-tampered"})),
    Fault("wrong-audit-hmac-key", wrong_hmac_key, SYMPTOM_CHAIN,
          frozenset({"chain-wrong-hmac-key"})),
    Fault("audit-rows-after-a-point-removed", truncate_head, SYMPTOM_CHAIN,
          frozenset({"chain-partial-restore"})),
    Fault("old-partition-dropped-by-retention", drop_oldest_partition, None, frozenset()),
    Fault("chain-seq-duplicated", duplicate_chain_seq, SYMPTOM_CHAIN,
          frozenset({"chain-duplicated"})),
    Fault("rehash-marker-missing", delete_marker, SYMPTOM_CHAIN,
          frozenset({"chain-marker-missing"})),
    Fault("binding-row-deleted", delete_binding, SYMPTOM_ROUTING,
          frozenset({"binding-missing"})),
    Fault("binding-changed-revision-unchanged", stale_binding, SYMPTOM_ROUTING,
          frozenset({"revision-stale"})),
    Fault("revision-row-deleted", delete_revision, SYMPTOM_ROUTING,
          frozenset({"revision-missing"})),
    Fault("orphan-binding", orphan_binding, SYMPTOM_ROUTING, frozenset({"binding-orphan"})),
    Fault("revoked-session-restored-active", reactivate_revoked_session, SYMPTOM_REVOCATION,
          frozenset({"revocation-postgres"})),
    Fault("stopped-agent-restored-active", reactivate_stopped_agent, SYMPTOM_REVOCATION,
          frozenset({"revocation-postgres"})),
    Fault("revoked-edge-restored-active", unrevoke_edge, SYMPTOM_REVOCATION,
          frozenset({"revocation-postgres"})),
)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
def test_one_defect_one_diagnosis(env: Env, fault: Fault) -> None:
    """Inject one defect into a copy: its symptom fires with its cause, nothing else fires."""
    with clone_run(env.run) as clone:
        fault.inject(clone, env)
        diagnoses = diagnose_all(clone, env)
    assert_only(diagnoses, fault.symptom, set(fault.causes))


# ------------------------------------------------------------- details of some diagnoses


def test_wrong_kek_names_every_zone_and_not_corruption(env: Env) -> None:
    """Every sealed value fails: one kek-mismatch finding per zone, no per-row corruption."""
    with clone_run(env.run) as clone:
        wrong_kek(clone, env)
        with clone.connect() as conn:
            zones = set(_zones(conn))
        kek = diagnose_all(clone, env)[SYMPTOM_KEK]
    assert {f.zone_id for f in kek.of("kek-mismatch")} == zones
    sealed = kek.observed["sealed_values"]
    assert {loc: v["failed"] == v["rows"] for loc, v in sealed.items()} == dict.fromkeys(
        sealed, True)
    assert set(sealed) == {s.id for s in PROFILE.sealed_locations}


def test_corrupted_row_is_named_with_its_zone(env: Env) -> None:
    """Some rows fail under a KEK that opens the others: the damaged row is named."""
    with clone_run(env.run) as clone:
        corrupt_sealed_row(clone, env)
        with clone.connect() as conn:
            zone = _other_zone(conn, env)
        kek = diagnose_all(clone, env)[SYMPTOM_KEK]
    (finding,) = kek.of("sealed-rows-corrupt")
    assert finding.zone_id == zone
    assert finding.subject.startswith("signing-keys row ")
    assert "authentication failed" in finding.detail


def test_missing_signing_keys_name_the_zone(env: Env) -> None:
    """The silent trap names the zone that issued tokens but has no key, and the lost rows."""
    with clone_run(env.run) as clone:
        with clone.connect() as conn:
            zone = _other_zone(conn, env)
        delete_zone_signing_keys(clone, env)
        kek = diagnose_all(clone, env)[SYMPTOM_KEK]
    subjects = {f.subject for f in kek.of("signing-keys-missing")}
    assert f"zone {zone}" in subjects
    assert "table secrets" in subjects


def test_retention_hole_is_verified_against_the_archive(env: Env) -> None:
    """A dropped partition leaves holes the archive explains: no finding, holes recorded."""
    with clone_run(env.run) as clone:
        drop_oldest_partition(clone, env)
        with clone.connect() as conn:
            diagnosis, report = chain_diag.diagnose(
                conn, hmac_key_hex=secrets_of(clone)["auditHmacKey"],
                fingerprint=env.fingerprint, archive=env.archive)
    assert not diagnosis.present, diagnosis.explain()
    assert report.counts.get("retention_hole", 0) >= 1
    assert report.retention.get("verified against the archive", 0) >= 1


def test_stale_revision_is_not_reported_for_a_missing_row(env: Env) -> None:
    """A deleted binding is 'missing rows', not also 'stale revision' (the loss explains it)."""
    with clone_run(env.run) as clone:
        delete_binding(clone, env)
        routing = diagnose_all(clone, env)[SYMPTOM_ROUTING]
    subjects = {f.subject for f in routing.findings}
    assert "table gateway_resource_bindings" in subjects
    assert any(s.startswith("zone ") and " resource " in s for s in subjects)


# ----------------------------------------------------------- revocation: Redis in flight


def _in_flight(clone: ClonedRun, env: Env, position: str | tuple[str, ...]
               ) -> tuple[str, str, dict[str, Any]]:
    """The source's state 'revocation published, STS not yet applied' for one session."""
    return in_flight(clone, env, position)


def test_revocation_still_owed_in_redis_is_not_a_finding(env: Env) -> None:
    """Published, not yet applied, still pending/undelivered for STS: the invariant holds."""
    with clone_run(env.run) as clone:
        sid, _entry, fingerprint = _in_flight(clone, env, ("pending", "undelivered"))
        diagnoses = diagnose_all(clone, env, fingerprint)
    assert_only(diagnoses, None, set())
    states = {c["session_id"]: c["state"]
              for c in diagnoses[SYMPTOM_REVOCATION].observed["coverage"]}
    assert states[sid] in {"pending", "undelivered"}


@pytest.mark.parametrize("loss", ["xdel", "xack", "delconsumer"])
def test_revocation_lost_with_redis_lists_the_event_to_replay(env: Env, loss: str) -> None:
    """The entry is deleted, or its pending delivery dropped: 'replay Redis revocation events'."""
    with clone_run(env.run) as clone:
        position = "pending" if loss != "xdel" else ("pending", "undelivered")
        sid, entry, fingerprint = _in_flight(clone, env, position)
        assert clone.redis_url is not None
        client = redis_lib.Redis.from_url(clone.redis_url)
        try:
            if loss == "xdel":
                assert client.xdel(REVOKE, entry) == 1
            elif loss == "xack":
                assert client.xack(REVOKE, STS_GROUP, entry) == 1
            else:
                consumers = [c["name"] for c in client.xinfo_consumers(REVOKE, STS_GROUP)
                             if c["pending"]]
                for consumer in consumers:
                    client.xgroup_delconsumer(REVOKE, STS_GROUP, consumer)
        finally:
            client.close()
        diagnoses = diagnose_all(clone, env, fingerprint)
    revocation = assert_only(diagnoses, SYMPTOM_REVOCATION, {"revocation-redis-lost"})
    assert revocation is not None
    lost = [f for f in revocation.findings if sid in f.detail]
    assert lost, revocation.explain()
    replay = revocation.observed["to_replay"]
    assert any(e["session_id"] == sid and e["fields"]["session_id"] == sid
               and e["stream"] == REVOKE and "outbox_id" in e["fields"] for e in replay)


# ------------------------------------------------------------------------------ online


@contextlib.contextmanager
def _services_on(clone: ClonedRun, secrets: Mapping[str, str]) -> Iterator[RunState]:
    """Reference services on the copy with the given secrets; the copy's state pointing at them."""
    from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
    from caracal_restore.reference.deployment import start_services
    from caracal_restore.runstate import ServicesInfo

    db = PgEndpoint(clone.db.host, clone.db.port, "caracal", clone.db.dbname,
                    secrets["postgresPassword"])
    redis_ep = clone.state.restored_redis
    assert isinstance(redis_ep, RedisEndpoint)
    with start_services(db=db, redis=redis_ep, secrets=secrets, replay=clone.replay) as running:
        yield dataclasses.replace(clone.state, services=ServicesInfo(
            mode="reference", sts_url=running.sts_url, gateway_url=running.gateway_url,
            audit_url=running.audit_url, upstream_url=running.upstream_url, live_db=db,
            live_redis=redis_ep, live_replay={k: str(v) for k, v in clone.replay.items()}))


def test_online_wrong_kek_is_jwks_500_and_issuance_500(env: Env) -> None:
    """STS started with another valid KEK: /ready is fine, JWKS and issuance fail with 500."""
    with clone_run(env.run) as clone:
        secrets = secrets_of(clone)
        with clone.connect() as conn:
            keys, zones = kek_diag.signing_keys(conn), _zones(conn)
            offline_ok = kek_diag.diagnose_offline(conn, secrets["zoneKek"], fingerprint=None)
        secrets["zoneKek"] = os.urandom(32).hex()
        REDACTOR.add(secrets["zoneKek"])
        canary = env.run.state.canary
        assert canary is not None
        with _services_on(clone, secrets) as state, http_client() as client:
            assert state.services.sts_url is not None
            assert client.get(f"{state.services.sts_url}/ready").status_code == 200
            with clone.connect() as conn:
                offline = kek_diag.diagnose_offline(conn, secrets["zoneKek"], fingerprint=None)
            jwks = kek_diag.probe_jwks(client, state.services.sts_url, keys, zones,
                                       offline=offline)
            exchange = kek_diag.canary_exchange(
                client, state.services.sts_url, zone_id=canary.zone_id,
                application_id=canary.application_id, client_secret=canary.client_secret,
                resource=canary.resource_identifier)
    assert not offline_ok.present
    assert jwks.causes == {"kek-mismatch"}
    assert {f.zone_id for f in jwks.findings} == set(zones)
    assert all(v["status"] == 500 for v in jwks.observed.values())
    assert (exchange.status, exchange.description) == (500, "token issuance failed")
    canary_diag = kek_diag.probe_canary_exchange(exchange, canary.zone_id, keys, offline=offline)
    assert canary_diag.causes == {"kek-mismatch"}


def test_online_missing_keys_make_sts_mint_a_new_key(env: Env) -> None:
    """Signing keys of the canary zone deleted: the exchange 'works' with a minted key id."""
    canary = env.run.state.canary
    assert canary is not None
    with clone_run(env.run, services=True) as clone:
        with clone.connect() as conn:
            keys = kek_diag.signing_keys(conn)
            conn.execute("DELETE FROM secrets WHERE zone_id = %s", (canary.zone_id,))
        assert clone.state.services.sts_url is not None
        with http_client() as client:
            exchange = kek_diag.canary_exchange(
                client, clone.state.services.sts_url, zone_id=canary.zone_id,
                application_id=canary.application_id, client_secret=canary.client_secret,
                resource=canary.resource_identifier)
            jwks = kek_diag.probe_jwks(client, clone.state.services.sts_url, keys,
                                       [canary.zone_id])
    assert exchange.status == 200
    diagnosis = kek_diag.probe_canary_exchange(exchange, canary.zone_id, keys)
    assert diagnosis.causes == {"signing-keys-missing"}
    assert "minted" in diagnosis.findings[0].detail
    assert jwks.causes == {"signing-keys-missing"}, jwks.explain()


def test_online_routing_and_enforcement_probes(env: Env) -> None:
    """On a services copy: a removed binding is 403 'resource not configured' once reloaded;
    an unreloaded change shows in caracal_gateway_bindings_loaded; a revoked session restored
    as active is no longer refused by the Gateway."""
    with clone_run(env.run, services=True) as clone:
        services = clone.state.services
        assert services.gateway_url
        assert services.sts_url
        secrets = secrets_of(clone)
        assert clone.redis_url is not None
        client_r = redis_lib.Redis.from_url(clone.redis_url)
        try:
            in_stream = {f.get("session_id") for _i, f in
                         revocation_diag.stream_entries(client_r, REVOKE)}
        finally:
            client_r.close()
        with clone.connect() as conn, http_client() as client:
            wanted = routing_diag.routes(conn)
            clean_probe = routing_diag.probe_routes(client, services.gateway_url, wanted)
            anchors = revocation_diag.lookback_anchors(conn, env.fingerprint["revoked"])
            kek = parse_kek(secrets["zoneKek"])
            enforced = revocation_diag.probe_enforcement(
                client, gateway_url=services.gateway_url, issuer=services.sts_url, conn=conn,
                kek=kek, anchors=anchors)
            # Delete one binding without a bump: the Gateway keeps its old map (stale).
            zone, res = _one(conn, "SELECT zone_id, resource_identifier FROM"
                                   " gateway_resource_bindings WHERE zone_id = %s ORDER BY 2"
                                   " LIMIT 1", _other_zone(conn, env))
            conn.execute("DELETE FROM gateway_resource_bindings WHERE zone_id = %s"
                         " AND resource_identifier = %s", (zone, res))
            client.get(f"{services.gateway_url}/ready")
            count = _one(conn, "SELECT count(*) FROM gateway_resource_bindings")
            stale = routing_diag.probe_bindings_loaded(
                routing_diag.bindings_loaded(client, services.gateway_url,
                                             secrets.get("metricsBearer")), count)
            # Bump the revision: the Gateway reloads, the route is gone.
            conn.execute("UPDATE gateway_binding_revision SET version = version + 1")
            assert client.get(f"{services.gateway_url}/ready").status_code == 200
            gone = routing_diag.probe_routes(client, services.gateway_url,
                                             routing_diag.routes(conn))
            # A revoked session no stream entry names, restored as active (and unexpired, so in
            # the Gateway's look-back); the Gateway reloads its snapshot.
            session = sorted(set(env.fingerprint["revoked"]["sessions"]) - in_stream)[0]
            conn.execute("UPDATE sessions SET status = 'active', expires_at = now() +"
                         " interval '1 hour' WHERE id = %s", (session,))
            reloaded = client.post(f"{services.gateway_url}/internal/revocations/reload",
                                   headers={"Authorization":
                                            f"Bearer {secrets['caracalAdminToken']}"})
            assert reloaded.status_code == 200
            after = revocation_diag.probe_enforcement(
                client, gateway_url=services.gateway_url, issuer=services.sts_url, conn=conn,
                kek=kek, anchors=revocation_diag.lookback_anchors(conn,
                                                                  env.fingerprint["revoked"]))
    assert not clean_probe.present, clean_probe.explain()
    assert len(clean_probe.observed["probes"]) == len(wanted) > 0
    assert not enforced.present, enforced.explain()
    assert {p["anchor_kind"] for p in enforced.observed["probes"]} >= {"session", "agent"}
    assert stale.causes == {"revision-stale"}, stale.explain()
    assert gone.causes == {"binding-missing"}, gone.explain()
    assert [f.subject for f in gone.findings] == [f"zone {zone} resource {res}"]
    assert after.causes == {"revocation-postgres"}, after.explain()
    assert [f.subject for f in after.findings] == [f"session {session}"]


# ------------------------------------------------------------------ through the checks


def _names(outcomes: Mapping[str, Any], status: str) -> set[str]:
    return {name for name, o in outcomes.items() if o.status == status}


SYMPTOM_CHECKS = "symptoms"
#: Release 1.0's routing checks (resources, providers, retired binding tables).
RESOURCE_CHECKS = {"test_resources_are_restored_as_routed",
                   "test_routed_resources_have_live_providers",
                   "test_retired_binding_tables_are_absent"}


def test_checks_pass_on_the_clean_restore_with_services(env: Env, tmp_path: Path) -> None:
    """The real checks, online ones included, pass on the clean restore; SY-4.d is not run,
    the 1.0 resource-routing checks do not apply."""
    outcomes = run_checks_on(env.run.state, "-k", SYMPTOM_CHECKS, workdir=env.run.workdir)
    skipped = _names(outcomes, "skipped")
    assert skipped == {"test_replayed_revocations_hold_on_the_live_copy"} | RESOURCE_CHECKS, (
        outcomes)
    assert "not requested" in outcomes["test_replayed_revocations_hold_on_the_live_copy"].message
    for name in RESOURCE_CHECKS:
        assert "not applicable" in outcomes[name].message, outcomes[name]
    passed = _names(outcomes, "passed")
    assert len(passed) == 17, outcomes
    assert "test_admin_audit_chain_verifies" in passed
    assert {o.status for o in outcomes.values()} == {"passed", "skipped"}


#: Defects of four different controls injected together for one run of the real checks:
#: (defect, the one check it must fail, words its message must contain).
WIRING = (
    (wrong_kek, "test_sealed_values_open_under_the_restored_kek",
     "cause: ZONE_KEK does not match the database secrets"),
    (delete_zone_signing_keys, "test_signing_key_rows_survive_the_restore",
     "cause: zone signing-key rows are missing"),
    (edit_decision, "test_audit_chain_verifies", "cause: audit rows were edited"),
    (delete_marker, "test_rehash_marker_is_restored", "audit_chain_rehash marker row is missing"),
    (delete_binding, "test_every_routed_resource_has_a_binding",
     "cause: missing gateway binding rows (the page's cause: Missing gateway binding rows)"),
    (reactivate_revoked_session, "test_postgres_revocation_state_is_restored[SY-4.a.sessions]",
     "the page's cause: Restore Postgres revocation/session state"),
    (reactivate_stopped_agent, "test_postgres_revocation_state_is_restored[SY-4.a.agents]",
     "revoked in the source, active after restore"),
    (unrevoke_edge, "test_postgres_revocation_state_is_restored[SY-4.a.edges]",
     "revoked in the source, active after restore"),
)
#: Offline checks none of the WIRING defects concerns: they must pass beside them.
UNCONCERNED = {"test_bindings_point_at_live_resources_and_applications",
               "test_binding_revision_is_restored_and_current",
               "test_no_revocation_is_lost_with_redis",
               "test_admin_audit_chain_verifies"}


def test_checks_fail_with_the_cause_in_their_message(env: Env) -> None:
    """Representative defects through the real checks (one subprocess): exactly the checks of
    those controls fail, each naming its cause; every other offline check passes; the online
    ones are reported not evaluated (no services), the remediation not requested."""
    with clone_run(env.run) as clone:
        for inject, _check, _words in WIRING:
            inject(clone, env)
        outcomes = run_checks_on(clone.state, "-k", SYMPTOM_CHECKS, workdir=env.run.workdir)
    assert _names(outcomes, "failed") == {check for _i, check, _w in WIRING}, outcomes
    assert not _names(outcomes, "broken"), outcomes
    for _inject, check, words in WIRING:
        assert words in outcomes[check].message, outcomes[check].message
    for outcome in outcomes.values():
        if outcome.status == "skipped":
            assert any(w in outcome.message for w in ("not evaluated", "not requested",
                                                      "not applicable")), outcome.message
    assert _names(outcomes, "passed") == UNCONCERNED, outcomes


def _with_fingerprint(state: RunState, fingerprint: Mapping[str, Any], where: Path) -> RunState:
    """The same run, its bundle seen through a directory whose fingerprint.json is replaced.

    Used to stand for a source whose revocation was still in flight at backup time: every other
    entry of the bundle is a symlink to the original.
    """
    assert state.bundle is not None
    original = Path(state.bundle.root)
    where.mkdir(parents=True)
    for entry in original.iterdir():
        if entry.name != "fingerprint.json":
            (where / entry.name).symlink_to(entry)
    whole = json.loads((original / "fingerprint.json").read_text())
    whole["databases"]["caracal"] = dict(fingerprint)
    (where / "fingerprint.json").write_text(json.dumps(whole))
    return dataclasses.replace(state, bundle=dataclasses.replace(state.bundle, root=str(where)))


def test_remediation_only_with_the_option_and_then_the_invariant_holds(env: Env) -> None:
    """A revocation lost with Redis on a services copy: without --remediate nothing is written;
    with it the event is re-published to the live Redis, STS applies it, the invariant holds."""
    with clone_run(env.run, services=True) as clone:
        assert clone.redis_url is not None
        client = redis_lib.Redis.from_url(clone.redis_url)
        try:
            sid, entry, fingerprint = _in_flight(clone, env, ("pending", "undelivered", "acked"))
            client.xdel(REVOKE, entry)
            length = client.xlen(REVOKE)
            state = _with_fingerprint(clone.state, fingerprint,
                                      clone.secrets_dir.parent / "bundle-view")
            names = ("test_no_revocation_is_lost_with_redis or "
                     "test_replayed_revocations_hold_on_the_live_copy")
            without = run_checks_on(state, "-k", names, workdir=env.run.workdir)
            assert without["test_replayed_revocations_hold_on_the_live_copy"].status == "skipped"
            assert client.xlen(REVOKE) == length, "the replay ran without being asked"
            with clone.connect() as conn:
                assert _one(conn, "SELECT status FROM sessions WHERE id = %s", sid) == "active"
            with_option = run_checks_on(state, "-k", names, "--remediate", "revocations",
                                        workdir=env.run.workdir)
            replayed = with_option["test_replayed_revocations_hold_on_the_live_copy"]
            assert replayed.status == "passed", replayed.message
            assert client.xlen(REVOKE) == length + 1
            deadline = time.monotonic() + 20
            with clone.connect() as conn:
                while _one(conn, "SELECT status FROM sessions WHERE id = %s", sid) != "revoked":
                    assert time.monotonic() < deadline, "STS never applied the replayed event"
                    time.sleep(0.2)
                coverage = revocation_diag.revocation_coverage(conn, client)
        finally:
            client.close()
    assert [c for c in coverage if not c.holds] == []
    assert without["test_no_revocation_is_lost_with_redis"].status == "failed"
    assert "replay" in without["test_no_revocation_is_lost_with_redis"].message

"""Fault injection on release 1.0: one defect at a time in a copy of a clean 1.0 restore.

The 1.0 counterpart of ``test_symptoms_fault_injection`` (2026.06): one 1.0 run is built for the
module (``prepared_run(reference_release="1.0")``), each fault takes an independent copy
(``clone_run``), injects one defect translated to 1.0 (a SECRET_STORE_KEK or
SECRET_STORE_KEK_PREVIOUS whose kekId matches no envelope, resources restored without their
upstream URL or provider instead of bindings, a leftover retired binding table, revocations lost
in ``authority_records``, audit and admin audit chain breaks), and runs every symptom family the
way the checks do (``diagnose.by_profile``): the defect's families fire with exactly the expected
causes, every other family is silent, and a clean copy has zero findings. The online revocation
probe (SY-4.c) runs through the real checks against the reference 1.0 Gateway: it passes on the
clean restore and fails when a revoked authority record comes back active.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pytest
import redis as redis_lib

from caracal_restore import envelope
from caracal_restore.diagnose import Diagnosis
from caracal_restore.diagnose import revocation as revocation_diag
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.runstate import RunState, ServicesInfo
from tests.harness import ClonedRun, clone_run, prepared_run, run_checks_on
from tests.symptom_faults import (
    REVOKE,
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
    mid,
    new_key,
    one,
    secrets_of,
    truncate_head,
    unrevoke_edge,
    wrong_hmac_key,
)

pytestmark = pytest.mark.slow

KEK = PROFILE.kek_secret
PREVIOUS = PROFILE.kek_previous_env


#: "The other zone": not the canary's, with signing keys, routed resources and audit rows.
ZONE_SQL = ("SELECT z.id FROM zones z WHERE z.id <> %s"
            " AND EXISTS (SELECT 1 FROM secrets s WHERE s.zone_id = z.id)"
            " AND EXISTS (SELECT 1 FROM resources r WHERE r.zone_id = z.id"
            "   AND r.upstream_url IS NOT NULL AND r.archived_at IS NULL)"
            " AND EXISTS (SELECT 1 FROM audit_events a WHERE a.zone_id = z.id)"
            " ORDER BY z.id LIMIT 1")


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """One clean 1.0 run (reference source, bundle, restore, reference 1.0 services)."""
    with prepared_run(reference_release="1.0", audit_events=1500) as run:
        assert run.state.release == PROFILE.release
        yield env_of(run, ZONE_SQL)


FAMILIES = ("kek", "chain", "admin-chain", "routing", "revocation")


def diagnose_all(clone: ClonedRun, env: Env,
                 fingerprint: Mapping[str, Any] | None = None) -> dict[str, Diagnosis]:
    """Every offline family of a (broken) copy, exactly as the checks' fixtures compute them."""
    return diagnose(clone, env, PROFILE, FAMILIES, fingerprint)


def assert_only(diagnoses: Mapping[str, Diagnosis], expected: Mapping[str, set[str]]) -> None:
    """The families in ``expected`` fire with exactly those causes; every other one is silent."""
    for family, diagnosis in diagnoses.items():
        if family in expected:
            assert diagnosis.causes == expected[family], f"{family}:\n{diagnosis.explain()}"
        else:
            assert not diagnosis.present, f"{family} fired too:\n{diagnosis.explain()}"


# ------------------------------------------------------------------------- injections


def _routed_resource(conn: psycopg.Connection[Any], env: Env) -> tuple[str, str]:
    """(id, credential_provider_id) of a routed resource of the other zone."""
    return one(conn, "SELECT id, credential_provider_id FROM resources WHERE zone_id = %s"
                     " AND upstream_url IS NOT NULL AND archived_at IS NULL"
                     " AND identifier <> %s ORDER BY identifier LIMIT 1",
               env.other_zone(conn), PROFILE.control_audience)


def wrong_kek(clone: ClonedRun, env: Env) -> None:
    """Another valid SECRET_STORE_KEK: no envelope carries its kekId."""
    clone.secrets().write(KEK, new_key())


def _rotate_one_zone(clone: ClonedRun, env: Env) -> str:
    """A KEK rotation in progress: one zone's secret_store re-sealed under a new current key.

    Returns the old key (now the retiring key); the store's SECRET_STORE_KEK is the new one.
    """
    old_hex = secrets_of(clone)[KEK]
    old, new_hex = envelope.parse_kek(old_hex), new_key()
    new = envelope.parse_kek(new_hex)
    with clone.connect() as conn:
        rows = conn.execute("SELECT ref, envelope FROM secret_store WHERE zone_id = %s",
                            (env.other_zone(conn),)).fetchall()
        assert rows, "the other zone holds no secret_store row"
        for ref, sealed in rows:
            plain = envelope.css1_open(old, bytes(sealed), ref)
            conn.execute("UPDATE secret_store SET envelope = %s, version = version + 1"
                         " WHERE ref = %s", (envelope.css1_seal(new, plain, ref), ref))
    clone.secrets().write(KEK, new_hex)
    return old_hex


def rotation_with_previous(clone: ClonedRun, env: Env) -> None:
    """Mid-rotation, restored with SECRET_STORE_KEK_PREVIOUS: healthy (every kekId known)."""
    clone.secrets().write(PREVIOUS, _rotate_one_zone(clone, env))


def rotation_without_previous(clone: ClonedRun, env: Env) -> None:
    """Mid-rotation, SECRET_STORE_KEK_PREVIOUS not restored."""
    _rotate_one_zone(clone, env)


def rotation_with_wrong_previous(clone: ClonedRun, env: Env) -> None:
    """Mid-rotation, another valid key restored as SECRET_STORE_KEK_PREVIOUS."""
    _rotate_one_zone(clone, env)
    clone.secrets().write(PREVIOUS, new_key())


def corrupt_sealed_row(clone: ClonedRun, env: Env) -> None:
    """One signing-key envelope's sealed value damaged (its kekId intact)."""
    with clone.connect() as conn:
        kid = one(conn, "SELECT id FROM secrets WHERE zone_id = %s AND name = %s LIMIT 1",
                  env.other_zone(conn), PROFILE.signing_key_name)
        conn.execute("UPDATE secrets SET envelope = set_byte(envelope, length(envelope) - 1,"
                     " get_byte(envelope, length(envelope) - 1) # 255) WHERE id = %s", (kid,))


def delete_zone_signing_keys(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        conn.execute("DELETE FROM secrets WHERE zone_id = %s AND name = %s",
                     (env.other_zone(conn), PROFILE.signing_key_name))


def _admin_zone(conn: psycopg.Connection[Any]) -> str:
    """The zone with the longest admin audit chain."""
    return str(one(conn, "SELECT zone_id FROM admin_audit_events WHERE zone_id IS NOT NULL"
                         " GROUP BY zone_id ORDER BY count(*) DESC, zone_id LIMIT 1"))


def delete_admin_row(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        zone, seq = mid(conn, env, "admin_audit_events", _admin_zone(conn))
        conn.execute("DELETE FROM admin_audit_events WHERE zone_id = %s AND chain_seq = %s",
                     (zone, seq))


def edit_admin_action(clone: ClonedRun, env: Env) -> None:
    """An admin row without payload (its hash is recomputable) gets another action."""
    with clone.connect() as conn:
        row_id = one(conn, "SELECT id FROM admin_audit_events WHERE payload_json IS NULL"
                           " AND zone_id IS NOT NULL ORDER BY zone_id, chain_seq"
                           " OFFSET 1 LIMIT 1")
        conn.execute("UPDATE admin_audit_events SET action = action || '.edited'"
                     " WHERE id = %s", (row_id,))


def truncate_admin_head(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        zone = _admin_zone(conn)
        conn.execute("DELETE FROM admin_audit_events WHERE zone_id = %s AND chain_seq >"
                     " (SELECT max(chain_seq) - 3 FROM admin_audit_events WHERE zone_id = %s)",
                     (zone, zone))


def remove_upstream(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        resource, _provider = _routed_resource(conn, env)
        conn.execute("UPDATE resources SET upstream_url = NULL WHERE id = %s", (resource,))


def wrong_upstream(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        resource, _provider = _routed_resource(conn, env)
        conn.execute("UPDATE resources SET upstream_url = 'http://elsewhere.invalid/api'"
                     " WHERE id = %s", (resource,))


def delete_resource(clone: ClonedRun, env: Env) -> None:
    """A resources row lost by a partial restore (grants and edges still name it)."""
    with clone.connect() as conn:
        resource, _provider = _routed_resource(conn, env)
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM resources WHERE id = %s", (resource,))


def archive_provider(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        _resource, provider = _routed_resource(conn, env)
        conn.execute("UPDATE providers SET archived_at = now() WHERE id = %s", (provider,))


def leftover_binding_table(clone: ClonedRun, env: Env) -> None:
    """A pre-1.0 dump's binding table restored next to the 1.0 schema."""
    with clone.connect() as conn:
        conn.execute("CREATE TABLE gateway_resource_bindings (resource_identifier text,"
                     " zone_id text, application_id text,"
                     " PRIMARY KEY (zone_id, resource_identifier))")


def reactivate_revoked_record(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        sid = sorted(env.fingerprint["revoked"]["sessions"])[0]
        conn.execute("UPDATE authority_records SET status = 'active', revoked_at = NULL,"
                     " revoked_reason = NULL WHERE id = %s", (sid,))


def reactivate_terminated_session(clone: ClonedRun, env: Env) -> None:
    with clone.connect() as conn:
        session = one(conn, "SELECT id FROM sessions WHERE status = 'terminated'"
                            " AND id = ANY(%s) ORDER BY id LIMIT 1",
                      env.fingerprint["revoked"]["agents"])
        conn.execute("UPDATE sessions SET status = 'active', terminated_at = NULL,"
                     " termination_reason = NULL WHERE id = %s", (session,))


@dataclasses.dataclass(frozen=True)
class Fault:
    """One defect and the causes it must produce, per family (none: every family silent)."""

    id: str
    inject: Callable[[ClonedRun, Env], None]
    expected: Mapping[str, frozenset[str]]


def _f(id_: str, inject: Callable[[ClonedRun, Env], None], **expected: set[str]) -> Fault:
    return Fault(id_, inject, {k.replace("_", "-"): frozenset(v) for k, v in expected.items()})


FAULTS = (
    _f("clean-restore", clean),
    _f("wrong-secret-store-kek", wrong_kek, kek={"kek-mismatch"}),
    _f("kek-rotation-restored-with-previous", rotation_with_previous),
    _f("kek-rotation-previous-missing", rotation_without_previous,
       kek={"kek-previous-mismatch"}),
    _f("kek-rotation-previous-wrong", rotation_with_wrong_previous,
       kek={"kek-previous-mismatch"}),
    _f("one-sealed-row-corrupted", corrupt_sealed_row, kek={"sealed-rows-corrupt"}),
    _f("zone-signing-keys-deleted", delete_zone_signing_keys, kek={"signing-keys-missing"}),
    _f("audit-row-deleted-mid-chain", delete_audit_row, chain={"chain-missing-rows"}),
    _f("audit-decision-edited", edit_decision, chain={"chain-tampered"}),
    _f("wrong-audit-hmac-key", wrong_hmac_key, chain={"chain-wrong-hmac-key"},
       admin_chain={"admin-chain-wrong-hmac-key"}),
    _f("audit-rows-after-a-point-removed", truncate_head, chain={"chain-partial-restore"}),
    _f("old-partition-dropped-by-retention", drop_oldest_partition),
    _f("chain-seq-duplicated", duplicate_chain_seq, chain={"chain-duplicated"}),
    _f("rehash-marker-missing", delete_marker, chain={"chain-marker-missing"}),
    _f("admin-audit-row-deleted-mid-chain", delete_admin_row,
       admin_chain={"admin-chain-missing-rows"}),
    _f("admin-audit-action-edited", edit_admin_action, admin_chain={"admin-chain-tampered"}),
    _f("admin-audit-rows-after-head-removed", truncate_admin_head,
       admin_chain={"admin-chain-partial-restore"}),
    _f("resource-upstream-url-removed", remove_upstream, routing={"resource-route-changed"}),
    _f("resource-upstream-url-wrong", wrong_upstream, routing={"resource-route-changed"}),
    _f("resource-row-lost", delete_resource, routing={"resource-missing"}),
    _f("resource-provider-archived", archive_provider, routing={"provider-missing"}),
    _f("retired-binding-table-left", leftover_binding_table,
       routing={"retired-binding-table"}),
    _f("authority-record-revocation-lost", reactivate_revoked_record,
       revocation={"revocation-postgres"}),
    _f("terminated-session-restored-active", reactivate_terminated_session,
       revocation={"revocation-postgres"}),
    _f("revoked-edge-restored-active", unrevoke_edge, revocation={"revocation-postgres"}),
)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
def test_one_defect_one_diagnosis(env: Env, fault: Fault) -> None:
    """Inject one 1.0 defect into a copy: its families fire with its causes, nothing else."""
    with clone_run(env.run) as clone:
        fault.inject(clone, env)
        diagnoses = diagnose_all(clone, env)
    assert_only(diagnoses, {k: set(v) for k, v in fault.expected.items()})


# ------------------------------------------------------------- details of some diagnoses


def test_kek_mismatch_names_the_key_and_its_kek_ids(env: Env) -> None:
    """kekIds first: the wrong current key and the missing retiring key are told apart."""
    with clone_run(env.run) as clone:
        wrong_kek(clone, env)
        current = diagnose_all(clone, env)["kek"]
    with clone_run(env.run) as clone:
        rotation_without_previous(clone, env)
        with clone.connect() as conn:
            zone = env.other_zone(conn)
        previous = diagnose_all(clone, env)["kek"]
    assert all("SECRET_STORE_KEK (kekId" in f.detail for f in current.findings)
    assert current.observed["restored_previous_kek_id"] is None
    assert previous.causes == {"kek-previous-mismatch"}
    assert all("SECRET_STORE_KEK_PREVIOUS is absent" in f.detail
               and "sealed before a rotation" in f.detail for f in previous.findings)
    # The rotated zone still has envelopes under the old key (its signing keys), so it is named.
    assert zone in {f.zone_id for f in previous.findings}


def test_lost_resource_is_named_by_the_rows_that_reference_it(env: Env) -> None:
    """A resources row lost while grants/edges still name it: the id is in the finding."""
    with clone_run(env.run) as clone:
        with clone.connect() as conn:
            resource, _provider = _routed_resource(conn, env)
        delete_resource(clone, env)
        routing = diagnose_all(clone, env)["routing"]
    assert f"resource {resource}" in {f.subject for f in routing.findings}, routing.explain()


def test_revocation_owed_in_redis_holds_and_its_loss_names_the_event(env: Env) -> None:
    """An authority-record revocation still owed to sts-revocation is not a finding; deleting
    its entry from the restored Redis is 'replay Redis revocation events', with the event."""
    with clone_run(env.run) as clone:
        sid, entry, fingerprint = in_flight(
            clone, env, ("pending", "undelivered"), lineage_table=PROFILE.lineage_table,
            reset="status = 'active', revoked_at = NULL, revoked_reason = NULL")
        owed = diagnose_all(clone, env, fingerprint)
        assert clone.redis_url is not None
        client = redis_lib.Redis.from_url(clone.redis_url)
        try:
            assert client.xdel(REVOKE, entry) == 1
        finally:
            client.close()
        lost = diagnose_all(clone, env, fingerprint)
    assert_only(owed, {})
    assert_only(lost, {"revocation": {"revocation-redis-lost"}})
    replay = lost["revocation"].observed["to_replay"]
    assert any(e["session_id"] == sid and e["fields"]["session_id"] == sid
               and e["stream"] == REVOKE for e in replay), replay


# ------------------------------------------------------------------ online, 1.0 Gateway


@contextlib.contextmanager
def _services_on(clone: ClonedRun) -> Iterator[RunState]:
    """Reference 1.0 services on the copy; the copy's state pointing at them."""
    from caracal_restore.reference.v1_0.deployment import start_services_1_0

    secrets = secrets_of(clone)
    db = PgEndpoint(clone.db.host, clone.db.port, PROFILE.db_owner, clone.db.dbname,
                    secrets[PROFILE.pg_password_secret])
    redis_ep = clone.state.restored_redis
    assert isinstance(redis_ep, RedisEndpoint)
    with start_services_1_0(db=db, redis=redis_ep, secrets=secrets,
                            replay=clone.replay) as running:
        yield dataclasses.replace(clone.state, services=ServicesInfo(
            mode="reference", sts_url=running.sts_url, gateway_url=running.gateway_url,
            audit_url=running.audit_url, upstream_url=running.upstream_url, live_db=db,
            live_redis=redis_ep, live_replay={k: str(v) for k, v in clone.replay.items()},
            coordinator_url=running.coordinator_url))


REFUSES = "test_gateway_refuses_mandates_of_revoked_anchors"


def test_symptom_checks_pass_on_the_clean_1_0_restore(env: Env) -> None:
    """The real symptom checks on the clean 1.0 run (services up): every one passes or is
    skipped as not applicable/not requested; SY-4.c is evaluated against the 1.0 Gateway."""
    outcomes = run_checks_on(env.run.state, "--caracal-release=1.0", "-k", "symptoms",
                             workdir=env.run.workdir)
    bad = {n: o for n, o in outcomes.items() if o.status not in ("passed", "skipped")
           or (o.status == "skipped" and "not applicable" not in o.message
               and "not requested" not in o.message)}
    assert not bad, bad
    for name in (REFUSES, "test_resources_are_restored_as_routed",
                 "test_routed_resources_have_live_providers",
                 "test_retired_binding_tables_are_absent", "test_admin_audit_chain_verifies"):
        assert outcomes[name].status == "passed", (name, outcomes[name])


def test_gateway_accepts_a_revoked_mandate_when_the_revocation_is_lost(env: Env) -> None:
    """SY-4.c through the real check: a revoked authority record restored active (and
    unexpired, so inside the Gateway's look-back) is no longer refused by the 1.0 Gateway; the
    check fails naming it. The record is a root and a leaf no revocation entry names (an entry
    still owed to sts-revocation, for it or an ancestor, would heal it when the restored STS
    starts: that is not a loss)."""
    with clone_run(env.run) as clone:
        assert clone.redis_url is not None
        client = redis_lib.Redis.from_url(clone.redis_url)
        try:
            in_stream = [f["session_id"] for _i, f in
                         revocation_diag.stream_entries(client, REVOKE) if "session_id" in f]
        finally:
            client.close()
        with clone.connect() as conn:
            sid = one(conn, "SELECT id FROM authority_records WHERE id = ANY(%s)"
                            " AND id <> ALL(%s) AND parent_id IS NULL AND NOT EXISTS (SELECT 1 FROM"
                            "   authority_records c WHERE c.parent_id = authority_records.id)"
                            " ORDER BY id LIMIT 1", env.fingerprint["revoked"]["sessions"],
                      in_stream)
            conn.execute("UPDATE authority_records SET status = 'active', revoked_at = NULL,"
                         " revoked_reason = NULL, expires_at = now() + interval '1 hour'"
                         " WHERE id = %s", (sid,))
        with _services_on(clone) as state:
            outcomes = run_checks_on(state, "--caracal-release=1.0", "-k", REFUSES,
                                     workdir=env.run.workdir)
    outcome = outcomes[REFUSES]
    assert outcome.status == "failed", outcome
    assert f"session {sid}" in outcome.message, outcome.message
    assert "restored row is active" in outcome.message, outcome.message

"""Self-tests of the live restore-checklist checks (steps 4 /ready, 5 records, 6 canary).

One prepared run is shared by the module. Each fault-injection test breaks one thing — on a
clone of the restored environment with its own services, or only in the run state — runs the
real checks and shows that the check guarding against it fires while the others still pass.
Fast unit tests of the verdict helpers come first.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from caracal_restore import live
from caracal_restore.chainhash import chain_hmac, content_hash_parts
from caracal_restore.environments.base import free_port
from caracal_restore.profiles.registry import profile_for
from caracal_restore.runstate import ServicesInfo
from tests.harness import Outcome, PreparedRun, clone_run, prepared_run, run_checks_on

LIVE = "step4 or step5 or step6"
NOT_EVALUATED = "not evaluated: --services none"
PROFILE = profile_for("2026.06")

READY = {"test_service_answers_ready[RC-4.sts]", "test_service_answers_ready[RC-4.gateway]"}
RESTORED = {f"test_record_confirmed_on_restored_copy[RC-5.{c}]" for c in (
    "policy-activation", "gateway-bindings", "sessions", "agents", "delegations")}
SERVED = {"test_audit_query_returns_source_events[RC-5.audit-query]",
          "test_gateway_loaded_restored_bindings[RC-5.bindings-loaded]"}
EXCHANGE = "test_canary_exchange_returns_mandate_signed_by_restored_key"
REQUEST = "test_protected_request_reaches_canary_upstream"
EVIDENCE = "test_canary_audit_events_continue_restored_chain"
CANARY = {EXCHANGE, REQUEST, EVIDENCE}
ALL_LIVE = READY | RESTORED | SERVED | CANARY


# ------------------------------------------------------------------------------ unit tests


def _row(seq: int, prev: str | None, key: bytes, **over: Any) -> live.AuditRow:
    fields = (f"id-{seq}", "zone-1", "token_exchange", f"req-{seq}", "allow", "", "", "",
              "complete", "null", "null", "null")
    content = content_hash_parts(list(fields), 1_700_000_000_000_000 + seq)
    values: dict[str, Any] = dict(
        id=fields[0], zone_id="zone-1", event_type=fields[2], request_id=fields[3],
        decision="allow", evaluation_status="complete", chain_seq=seq, content_sha256=content,
        prev_content_sha256=prev, chain_hmac=chain_hmac(key, content, prev), fields=fields,
        epoch_micros=1_700_000_000_000_000 + seq)
    values.update(over)
    return live.AuditRow(**values)


def test_continuation_accepts_a_linked_chain_and_names_each_break() -> None:
    """A chain continuing the head passes; a wrong prev, a gap and a bad HMAC are each named."""
    key = bytes(range(32))
    head = live.ChainHead("zone-1", 10, "h" * 64)
    first = _row(11, head.content_sha256, key)
    second = _row(12, first.content_sha256, key)
    assert live.continuation_problems(head, [first, second], key) == []

    forked = _row(11, "f" * 64, key)
    (msg,) = live.continuation_problems(head, [forked], key)
    assert "first new row" in msg
    assert "restored head's content_sha256" in msg
    gap = _row(13, first.content_sha256, key)
    assert any("expected 12" in p for p in live.continuation_problems(head, [first, gap], key))
    forged = dataclasses.replace(second, chain_hmac="0" * 64)
    assert any("chain_hmac does not verify" in p
               for p in live.continuation_problems(head, [first, forged], key))
    assert "no row was appended" in live.continuation_problems(head, [], key)[0]


def test_exchange_verdict_names_a_minted_key() -> None:
    """A mandate whose kid the source never had is reported as a newly minted key."""
    check = live.MandateCheck({"alg": "ES256", "kid": "new"}, {
        "use": "session", "zone_id": "z", "client_id": "a", "sub": "a", "target": ["r"]}, None)
    ex = live.CanaryExchange(
        zone_id="z", application_id="a", resource="r", request_id="rid", status=200, record={},
        error=None, token_type="Bearer", mandate="t", jwks_record={}, check=check,
        source_kids=("old",), restored_kids=(), live_kids_before=(), live_kids_after=("new",),
        restored_head=live.ChainHead("z", 0, None))
    problems = live.exchange_problems(ex, PROFILE)
    assert all("a new signing key was minted" in p for p in problems)
    assert len(problems) == 2
    assert live.exchange_problems(dataclasses.replace(
        ex, source_kids=("new",), restored_kids=("new",), live_kids_before=("new",)),
        PROFILE) == []


def test_gateway_mandate_flow_without_a_coordinator_is_not_evaluated() -> None:
    """Release 1.0's canary needs the Coordinator: without its URL the check is broken
    (not evaluable), never passed."""
    with live.http_client() as client, pytest.raises(live.NotEvaluable, match="Coordinator"):
        live.canary_exchange(
            client, "http://127.0.0.1:1", zone_id="z", application_id="a", client_secret="s" * 8,
            resource="r", profile=profile_for("1.0"), restored_conn=None,  # type: ignore[arg-type]
            live_conn=None, source_kids=())  # type: ignore[arg-type]


class _Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"ok": False, "ready": False, "reason": "redis_unreachable"}).encode()
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_ready_tells_not_ready_from_unreachable() -> None:
    """A 503 body is 'not ready' with its reason; a closed port raises ServiceUnreachable."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ready)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        with live.http_client() as client:
            seen = live.wait_ready(client, "STS", f"http://127.0.0.1:{server.server_port}",
                                   PROFILE.ready_body_sts, timeout=0.5, interval=0.1)
            assert (seen.ready, seen.status, seen.reason) == (False, 503, "redis_unreachable")
            with pytest.raises(live.ServiceUnreachable, match=r"STS at http://127\.0\.0\.1"):
                live.wait_ready(client, "STS", f"http://127.0.0.1:{free_port()}",
                                PROFILE.ready_body_sts, timeout=0.5, interval=0.1)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_http_records_hide_credentials() -> None:
    """Evidence of an exchange holds no Authorization header, token or client secret."""
    request = httpx.Request("POST", "http://127.0.0.1:1/oauth/2/token",
                            headers={"Authorization": "Bearer abc.def.ghi"})
    response = httpx.Response(200, json={"access_token": "abc.def.ghi", "token_type": "Bearer"},
                              request=request)
    record = json.dumps(live.http_record(response, {"client_secret": "cs_topsecret"}))
    assert "abc.def.ghi" not in record
    assert "cs_topsecret" not in record
    assert "authorization" not in record.lower()


# ------------------------------------------------------------------------ fault injection


@pytest.fixture(scope="module")
def run() -> Iterator[PreparedRun]:
    """One full run (reference services on a live copy) shared by the module."""
    with prepared_run() as built:
        yield built


def _check(outcomes: dict[str, Outcome], name: str, status: str, *needles: str) -> None:
    got = outcomes[name]
    assert got.status == status, f"{name}: {got}"
    for needle in needles:
        assert needle in got.message, f"{name}: {needle!r} not in {got.message!r}"


def _others_pass(outcomes: dict[str, Outcome], *broken: str) -> None:
    assert set(outcomes) <= ALL_LIVE, sorted(outcomes)
    rest = {n: o for n, o in outcomes.items() if n not in broken}
    assert all(o.status == "passed" for o in rest.values()), rest


@pytest.mark.slow
def test_clean_run_passes_every_live_check(run: PreparedRun) -> None:
    """On the pipeline's own restore and live copy, steps 4, 5 and 6 all pass."""
    outcomes = run_checks_on(run.state, "-k", LIVE, workdir=run.workdir)
    assert set(outcomes) == ALL_LIVE, sorted(outcomes)
    _others_pass(outcomes)


@pytest.mark.slow
def test_offline_run_reports_live_checks_not_evaluated(run: PreparedRun) -> None:
    """--services none: steps 4, 6 and the served records are skipped with the reason."""
    state = dataclasses.replace(run.state, services=ServicesInfo(mode="none"))
    outcomes = run_checks_on(state, "-k", LIVE, workdir=run.workdir)
    assert set(outcomes) == ALL_LIVE, sorted(outcomes)
    for name in READY | SERVED | CANARY:
        _check(outcomes, name, "skipped", NOT_EVALUATED)
    _others_pass(outcomes, *(READY | SERVED | CANARY))


@pytest.mark.slow
def test_unreachable_sts_is_broken_and_unready_gateway_failed(run: PreparedRun) -> None:
    """STS at a closed port: broken, naming it; a Gateway answering 503: failed with its reason."""
    closed = f"http://127.0.0.1:{free_port()}"
    with clone_run(run, services=True) as clone:
        with clone.connect() as conn:
            conn.execute("DELETE FROM gateway_binding_revision")
        state = dataclasses.replace(clone.state, services=dataclasses.replace(
            clone.state.services, sts_url=closed))
        # Both /ready rows wait out their deadline: run them side by side.
        outcomes = run_checks_on(state, "-k", "step4 or step6", "-n", "2",
                                 workdir=run.workdir)
    _check(outcomes, "test_service_answers_ready[RC-4.sts]", "broken", "STS", closed,
           "never answered /ready")
    _check(outcomes, "test_service_answers_ready[RC-4.gateway]", "failed", "Gateway",
           "503", "reason postgres_unreachable")
    for name in CANARY:
        _check(outcomes, name, "broken", "STS", closed)


@pytest.mark.slow
def test_deactivated_policy_set_fails_activation_and_exchange(run: PreparedRun) -> None:
    """active_version_id NULL: step 5 names the zone; the canary exchange gets 403."""
    zone = run.state.canary.zone_id  # type: ignore[union-attr]
    with clone_run(run, services=True) as clone:
        with clone.connect() as conn:
            conn.execute("UPDATE policy_set_bindings SET active_version_id = NULL"
                         " WHERE zone_id = %s", (zone,))
        outcomes = run_checks_on(clone.state, "-k", LIVE, workdir=run.workdir)
    activation = "test_record_confirmed_on_restored_copy[RC-5.policy-activation]"
    _check(outcomes, activation, "failed", f"zone {zone}", "none (deactivated)")
    _check(outcomes, EXCHANGE, "failed", "403", "policy denied")
    _check(outcomes, REQUEST, "failed", "exchange was refused")
    _check(outcomes, EVIDENCE, "failed", "not demonstrated")
    _others_pass(outcomes, activation, *CANARY)


@pytest.mark.slow
def test_missing_signing_keys_are_caught_as_a_minted_key(run: PreparedRun) -> None:
    """The canary zone's key rows removed: the STS mints a key silently; step 6 says so."""
    zone = run.state.canary.zone_id  # type: ignore[union-attr]
    with clone_run(run, services=True) as clone:
        with clone.connect() as conn:
            conn.execute("DELETE FROM secrets WHERE zone_id = %s AND name = %s",
                         (zone, PROFILE.signing_key_name))
        outcomes = run_checks_on(clone.state, "-k", LIVE, workdir=run.workdir)
    _check(outcomes, EXCHANGE, "failed", "a new signing key was minted")
    _others_pass(outcomes, EXCHANGE)


@pytest.mark.slow
def test_without_fingerprint_records_are_judged_by_internal_consistency(run: PreparedRun) -> None:
    """A backup.sh bundle (no fingerprint): an orphaned binding is still caught, basis named."""
    canary = run.state.canary
    assert canary is not None
    with clone_run(run) as clone:
        with clone.connect() as conn:
            conn.execute("UPDATE gateway_resource_bindings SET application_id = 'ghost-app'"
                         " WHERE zone_id = %s AND resource_identifier = %s",
                         (canary.zone_id, canary.resource_identifier))
        bundle = clone.state.bundle
        assert bundle is not None
        state = dataclasses.replace(
            clone.state, comparison_basis="internal consistency",
            bundle=dataclasses.replace(bundle, has_fingerprint=False))
        outcomes = run_checks_on(state, "-k", "step5", workdir=run.workdir)
    bindings = "test_record_confirmed_on_restored_copy[RC-5.gateway-bindings]"
    _check(outcomes, bindings, "failed", "internal consistency", "ghost-app",
           "does not exist in that zone")
    _others_pass({n: o for n, o in outcomes.items() if n in RESTORED}, bindings)
    for name in SERVED:
        _check(outcomes, name, "skipped", NOT_EVALUATED)


@pytest.mark.slow
def test_deleted_binding_fails_the_protected_request(run: PreparedRun) -> None:
    """The canary's binding deleted and the revision bumped: the Gateway answers 403."""
    canary = run.state.canary
    assert canary is not None
    with clone_run(run, services=True) as clone:
        with clone.connect() as conn:
            conn.execute("DELETE FROM gateway_resource_bindings WHERE zone_id = %s"
                         " AND resource_identifier = %s",
                         (canary.zone_id, canary.resource_identifier))
            conn.execute("UPDATE gateway_binding_revision SET version = version + 1,"
                         " updated_at = now() WHERE id = true")
        outcomes = run_checks_on(clone.state, "-k", LIVE, workdir=run.workdir)
    bindings = "test_record_confirmed_on_restored_copy[RC-5.gateway-bindings]"
    _check(outcomes, REQUEST, "failed", "403", "resource not configured")
    _check(outcomes, EVIDENCE, "failed", "not demonstrated", "resource not configured")
    _check(outcomes, bindings, "failed", "binding revision", repr(canary.resource_identifier))
    _others_pass(outcomes, REQUEST, EVIDENCE, bindings)



@pytest.mark.slow
def test_lost_revocations_and_tampered_audit_row_fail_their_records(run: PreparedRun) -> None:
    """One revoked session, stopped agent and revoked edge un-revoked, and an audit head row
    altered: the sessions, agents, delegations and audit-query records each name theirs."""
    zone = run.state.canary.zone_id  # type: ignore[union-attr]
    with clone_run(run, services=True) as clone:
        with clone.connect() as conn:
            session = _one(conn, "UPDATE sessions SET status = 'active' WHERE id = (SELECT id"
                           " FROM sessions WHERE status = 'revoked' ORDER BY id LIMIT 1)"
                           " RETURNING id")
            agent = _one(conn, "UPDATE agent_sessions SET status = 'active', terminated_at ="
                         " NULL WHERE id = (SELECT id FROM agent_sessions WHERE status ="
                         " 'terminated' ORDER BY id LIMIT 1) RETURNING id")
            edge = _one(conn, "UPDATE delegation_edges SET status = 'active', revoked_at = NULL"
                        " WHERE id = (SELECT id FROM delegation_edges WHERE status = 'revoked'"
                        " ORDER BY id LIMIT 1) RETURNING id")
            # The sample spans each zone's chain up to the source's head: alter that head.
            head = _one(conn, "UPDATE audit_events SET decision = CASE decision WHEN 'allow'"
                        " THEN 'deny' ELSE 'allow' END WHERE zone_id = %s AND chain_seq = %s"
                        " RETURNING id", (zone, _source_head(run, zone)))
        outcomes = run_checks_on(clone.state, "-k", "step5", workdir=run.workdir)
    record = "test_record_confirmed_on_restored_copy[RC-5.{}]"
    _check(outcomes, record.format("sessions"), "failed", session, "not after the restore")
    _check(outcomes, record.format("agents"), "failed", agent, "not after the restore")
    _check(outcomes, record.format("delegations"), "failed", edge, "not after the restore")
    audit = "test_audit_query_returns_source_events[RC-5.audit-query]"
    _check(outcomes, audit, "failed", head, "does not recompute")
    _others_pass(outcomes, audit, *(record.format(r) for r in ("sessions", "agents",
                                                               "delegations")))


def _source_head(run: PreparedRun, zone: str) -> int:
    """The source's last chain_seq of a zone, from the bundle's fingerprint."""
    assert run.state.bundle is not None
    data = json.loads((Path(run.state.bundle.root) / "fingerprint.json").read_text())
    return int(data["databases"]["caracal"]["heads"][zone]["max_seq"])


def _one(conn: Any, query: str, params: tuple[Any, ...] = ()) -> str:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return str(row[0])


@pytest.mark.slow
def test_stale_binding_map_fails_bindings_loaded(run: PreparedRun) -> None:
    """A binding deleted without a revision bump: the running Gateway keeps its old map."""
    canary = run.state.canary
    assert canary is not None
    with clone_run(run, services=True) as clone:
        with clone.connect() as conn:
            _one(conn, "DELETE FROM gateway_resource_bindings WHERE (zone_id, resource_identifier)"
                 " = (SELECT zone_id, resource_identifier FROM gateway_resource_bindings WHERE"
                 " zone_id <> %s ORDER BY 1, 2 LIMIT 1) RETURNING resource_identifier",
                 (canary.zone_id,))
        outcomes = run_checks_on(clone.state, "-k", "step5 or step6", workdir=run.workdir)
    loaded = "test_gateway_loaded_restored_bindings[RC-5.bindings-loaded]"
    bindings = "test_record_confirmed_on_restored_copy[RC-5.gateway-bindings]"
    _check(outcomes, loaded, "failed", "caracal_gateway_bindings_loaded = 9",
           "has 8 gateway_resource_bindings rows")
    _check(outcomes, bindings, "failed", "gateway_resource_bindings: 9 rows in the source, 8")
    _others_pass(outcomes, loaded, bindings)


@pytest.mark.slow
def test_services_signing_with_another_audit_key_fail_the_evidence(run: PreparedRun) -> None:
    """Services started with an AUDIT_HMAC_KEY other than the restored one: the canary's rows
    land, but their chain HMACs do not verify with the restored key."""
    from caracal_restore.environments.base import PgEndpoint
    from caracal_restore.reference.deployment import start_services

    with clone_run(run) as clone:
        store = clone.secrets()
        values = {name: store.read(name) for name in store.names()}
        wrong = dict(values, auditHmacKey=secrets.token_hex(32))
        db = PgEndpoint(clone.db.host, clone.db.port, "caracal", clone.db.dbname,
                        values["postgresPassword"])
        redis = clone.state.restored_redis
        assert redis is not None
        with start_services(db=db, redis=redis, secrets=wrong, replay=clone.replay) as running:
            state = dataclasses.replace(clone.state, services=ServicesInfo(
                mode="reference", sts_url=running.sts_url, gateway_url=running.gateway_url,
                audit_url=running.audit_url, upstream_url=running.upstream_url, live_db=db,
                live_redis=redis, live_replay={k: str(v) for k, v in clone.replay.items()}))
            outcomes = run_checks_on(state, "-k", "step6", workdir=run.workdir)
    _check(outcomes, EVIDENCE, "failed", "chain_hmac does not verify with the restored")
    _others_pass(outcomes, EVIDENCE)

"""Self-tests of the Coordinator retention checks on release 1.0 (FACTS-1.0 §12.2, §20 R2).

One 1.0 run is built for the module (the 1.0 reference source, its bundle, the restore; no
services). Each scenario copies the restored environment (``clone_run``) and injects either one
violation — which must make its own "Coordinator data" check fail, naming it, while the other
Coordinator checks pass — or rows the 1.0 cleaner rightly keeps (the guards), which must fail
nothing: a terminal Session past the window that still has a child (leaf-first), an old
terminal edge an active unexpired child edge points at, old dead and pending Coordinator
outbox rows, a receipt that expired within one cleanup interval. The clean run is a scenario
too; its evidence shows the reference data exercises both sides (a root past the window kept
by its child, unexpired receipts).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import json
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from caracal_restore.profiles.release_1_0 import PROFILE
from tests.conftest import run_checks
from tests.harness import ClonedRun, PreparedRun, clone_run, prepared_run
from tests.test_retention import ONLY_AT_1_0, Result, _read_results, _result

pytestmark = pytest.mark.slow

UTC = dt.UTC
#: The clauses of the "Coordinator data" checks (each run selects their module only).
CLAUSES = frozenset({"RC-CRD-1", "RC-CRD-2", "RC-CRD-3", "RC-CRD-4", "RC-CRD-5"})
SELECT = ("--caracal-release=1.0", "-k", "test_coordinator_data", "-p", "no:hypothesispytest")
PARALLEL_RUNS = 2
SESSIONS, RECEIPTS = PROFILE.agent_table, PROFILE.idempotency_table


def _one(conn: Any, query: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return tuple(row)


# ------------------------------------------------------------------------- the scenarios


Inject = Callable[[ClonedRun, dt.datetime], None]


def nothing(clone: ClonedRun, at: dt.datetime) -> None:
    """Nothing injected."""


def old_childless_session(clone: ClonedRun, at: dt.datetime) -> None:
    """A terminated Session without children that ended 200 days before the backup."""
    with clone.connect() as conn:
        (sid,) = _one(conn, f"SELECT id FROM {SESSIONS} s WHERE status = 'terminated' AND NOT"
                            f" EXISTS (SELECT 1 FROM {SESSIONS} c WHERE c.parent_id = s.id)"
                            " ORDER BY id LIMIT 1")
        ended = at - dt.timedelta(days=200)
        conn.execute(f"UPDATE {SESSIONS} SET started_at = %s, last_active_at = %s,"
                     " terminated_at = %s, updated_at = %s WHERE id = %s",
                     (ended - dt.timedelta(minutes=30), ended, ended, ended, sid))


def expired_receipt(clone: ClonedRun, at: dt.datetime) -> None:
    """An idempotency receipt that expired two days before the backup is still there."""
    with clone.connect() as conn:
        (rid,) = _one(conn, f"SELECT id FROM {RECEIPTS} ORDER BY id LIMIT 1")
        expired = at - dt.timedelta(days=2)
        conn.execute(f"UPDATE {RECEIPTS} SET created_at = %s, expires_at = %s WHERE id = %s",
                     (expired - dt.timedelta(days=7), expired, rid))


def old_edge_whose_child_is_revoked(clone: ClonedRun, at: dt.datetime) -> None:
    """An edge revoked 200 days ago whose only child edge is revoked too: nothing keeps it."""
    with clone.connect() as conn:
        child, parent = _edge_pair(conn, at)
        conn.execute("UPDATE delegation_edges SET status = 'revoked', revoked_at = %s,"
                     " updated_at = %s, parent_edge_id = %s WHERE id = %s",
                     (at - dt.timedelta(days=1), at - dt.timedelta(days=1), parent, child))
        _revoke_long_ago(conn, parent, at)


def published_outbox_row_kept(clone: ClonedRun, at: dt.datetime) -> None:
    """A published Coordinator outbox row last updated 30 days before the backup."""
    with clone.connect() as conn:
        (oid,) = _one(conn, "SELECT id FROM caracal_outbox WHERE producer = 'coordinator' AND"
                            " status = 'published' ORDER BY id LIMIT 1")
        conn.execute("UPDATE caracal_outbox SET updated_at = %s, published_at = %s"
                     " WHERE id = %s", (at - dt.timedelta(days=30), at - dt.timedelta(days=30),
                                        oid))


def rows_the_cleaner_keeps(clone: ClonedRun, at: dt.datetime) -> None:
    """The 1.0 guards: rows past a window that the cleaner rightly keeps.

    A root Session ended 200 days ago with an active child Session (leaf-first: never deleted
    while it has a child); an edge revoked 200 days ago that an active, unexpired edge names as
    its parent; dead and pending Coordinator outbox rows 30 days old (1.0 deletes published
    rows only); a receipt that expired five minutes before the backup (within one interval).
    """
    with clone.connect() as conn:
        parent, zone = _one(conn, f"SELECT id, zone_id FROM {SESSIONS} s WHERE status ="
                                  " 'terminated' AND parent_id IS NULL AND NOT EXISTS (SELECT"
                                  f" 1 FROM {SESSIONS} c WHERE c.parent_id = s.id)"
                                  " ORDER BY id LIMIT 1")
        (child,) = _one(conn, f"SELECT id FROM {SESSIONS} WHERE status = 'active' AND"
                              " zone_id = %s AND parent_id IS NULL AND id <> %s ORDER BY id"
                              " LIMIT 1", (zone, parent))
        ended = at - dt.timedelta(days=200)
        conn.execute(f"UPDATE {SESSIONS} SET started_at = %s, last_active_at = %s,"
                     " terminated_at = %s, updated_at = %s WHERE id = %s",
                     (ended - dt.timedelta(minutes=30), ended, ended, ended, parent))
        conn.execute(f"UPDATE {SESSIONS} SET parent_id = %s, depth = 1 WHERE id = %s",
                     (parent, child))
        edge_child, edge_parent = _edge_pair(conn, at)
        conn.execute("UPDATE delegation_edges SET parent_edge_id = %s WHERE id = %s",
                     (edge_parent, edge_child))
        _revoke_long_ago(conn, edge_parent, at)
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM caracal_outbox WHERE producer = 'coordinator' AND status ="
            " 'published' ORDER BY id LIMIT 2").fetchall()]
        assert len(ids) == 2, "fewer than two published Coordinator outbox rows"
        old = at - dt.timedelta(days=30)
        conn.execute("UPDATE caracal_outbox SET status = 'dead', attempts = 10, updated_at = %s"
                     " WHERE id = %s", (old, ids[0]))
        conn.execute("UPDATE caracal_outbox SET status = 'pending', published_at = NULL,"
                     " updated_at = %s WHERE id = %s", (old, ids[1]))
        (rid,) = _one(conn, f"SELECT id FROM {RECEIPTS} ORDER BY id DESC LIMIT 1")
        expired = at - dt.timedelta(minutes=5)
        conn.execute(f"UPDATE {RECEIPTS} SET created_at = %s, expires_at = %s WHERE id = %s",
                     (expired - dt.timedelta(days=7), expired, rid))


def _edge_pair(conn: Any, at: dt.datetime) -> tuple[str, str]:
    """An active unexpired edge and another edge of its zone (child, future parent)."""
    child, parent = _one(conn, "SELECT c.id, p.id FROM delegation_edges c JOIN delegation_edges"
                               " p ON p.zone_id = c.zone_id AND p.id <> c.id WHERE c.status ="
                               " 'active' AND c.expires_at > %s AND p.parent_edge_id IS NULL"
                               " ORDER BY c.id, p.id LIMIT 1", (at,))
    return str(child), str(parent)


def _revoke_long_ago(conn: Any, edge_id: str, at: dt.datetime) -> None:
    when = at - dt.timedelta(days=200)
    conn.execute("UPDATE delegation_edges SET status = 'revoked', revoked_at = %s,"
                 " updated_at = %s, edge_version = edge_version + 1 WHERE id = %s",
                 (when, when, edge_id))


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One injection (or setting) and the checks (clause -> phrase of the message) it must fail."""

    id: str
    inject: Inject = dataclasses.field(repr=False)
    fails: Mapping[str, str]
    args: tuple[str, ...] = ()


SCENARIOS = (
    Scenario("clean", nothing, {}),
    Scenario("RC-CRD-4-old-childless-session", old_childless_session,
             {"RC-CRD-4": "no child session) ended"}),
    Scenario("RC-CRD-5-expired-receipt", expired_receipt,
             {"RC-CRD-5": "2 days before the backup"}),
    Scenario("RC-CRD-1-old-edge-whose-child-is-revoked", old_edge_whose_child_is_revoked,
             {"RC-CRD-1": "days before the backup"}),
    Scenario("RC-CRD-2-published-outbox-row-kept", published_outbox_row_kept,
             {"RC-CRD-2": "(published, topic"}),
    Scenario("guards-rows-the-cleaner-keeps", rows_the_cleaner_keeps, {}),
    # The source ran with a 1-day window: the clean data's older terminal Sessions are then
    # violations (the setting reaches the check).
    Scenario("RC-CRD-4-source-ran-with-one-day", nothing,
             {"RC-CRD-4": "older than SESSION_RETENTION_DAYS=1 plus"},
             args=("--session-retention-days=1",)),
)


# -------------------------------------------------------------------------- running them


@pytest.fixture(scope="module")
def run() -> Iterator[PreparedRun]:
    """One 1.0 run for the module (no services: the checks read the restored database)."""
    with prepared_run(reference_release="1.0", services="none", audit_events=150) as built:
        assert built.state.release == PROFILE.release
        yield built


def _backup_at(run: PreparedRun) -> dt.datetime:
    assert run.state.bundle is not None
    doc = json.loads((Path(run.state.bundle.root) / "fingerprint.json").read_text())
    return dt.datetime.fromisoformat(doc["databases"]["caracal"]["taken_at"]).astimezone(UTC)


def _scenario(run: PreparedRun, scenario: Scenario, at: dt.datetime) -> Result:
    """Inject the scenario into a clone and run the real Coordinator checks on it."""
    out = run.workdir / f"retention-1-0-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    try:
        with clone_run(run) as clone:
            scenario.inject(clone, at)
            state_file = clone.state.write(out / "state.json")
            proc = run_checks([f"--run-state={state_file}", *SELECT, *scenario.args], out)
            result = _read_results(out / "allure")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    missing = sorted(CLAUSES - set(result.outcomes))
    assert not missing, f"checks that did not run: {missing}\n{proc.stdout[-3000:]}"
    return result


@pytest.fixture(scope="module")
def results(run: PreparedRun) -> dict[str, Result | BaseException]:
    """Every scenario in its own clone, the Coordinator checks run on each (two at a time)."""
    at = _backup_at(run)
    out: dict[str, Result | BaseException] = {}
    with concurrent.futures.ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        futures = {s.id: pool.submit(_scenario, run, s, at) for s in SCENARIOS}
        for sid, future in futures.items():
            try:
                out[sid] = future.result()
            except Exception as exc:  # reported by the scenario's own test
                out[sid] = exc
    return out


# --------------------------------------------------------------------------------- tests


def test_every_1_0_only_control_has_a_violation_here() -> None:
    """The controls 2026.06 lacks (skipped in tests/test_retention.py) are injected here."""
    targeted = {clause for s in SCENARIOS for clause in s.fails}
    assert ONLY_AT_1_0 <= targeted <= CLAUSES


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_violation_fires_only_its_check(results: Mapping[str, Result | BaseException],
                                        scenario: Scenario) -> None:
    """The targeted check fails naming the violation; every other Coordinator check passes
    (the guard scenario and the clean run fail nothing)."""
    outcomes = _result(results, scenario.id).outcomes
    assert set(outcomes) == CLAUSES, sorted(outcomes)
    for clause, outcome in sorted(outcomes.items()):
        if clause in scenario.fails:
            assert outcome.status == "failed", (clause, outcome)
            assert scenario.fails[clause] in outcome.message, (clause, outcome.message)
        else:
            assert outcome.status == "passed", (clause, outcome)


KEPT = "kept: older than the window but with a child session (leaf-first)"
NOT_SWEPT = "tolerated: not swept yet (eligible within one cleanup interval)"


def test_clean_data_exercise_both_sides(results: Mapping[str, Result | BaseException]) -> None:
    """The clean 1.0 data holds a root Session past the window kept by its child (the child a
    leaf the next run deletes) and unexpired receipts: the checks looked at real rows."""
    found = _result(results, "clean").evidence
    sessions = found["RC-CRD-4"]["terminal sessions against the window"]["observed"]
    assert sessions[KEPT]["count"] == 1
    assert sessions["eligible at backup time"] == 1
    assert sessions[NOT_SWEPT]["count"] == 1
    receipts = found["RC-CRD-5"]["idempotency receipts against their expiry"]["observed"]
    assert receipts["receipts"] > 0
    assert receipts["eligible at backup time"] == 0


def test_guards_were_seen_not_ignored(results: Mapping[str, Result | BaseException]) -> None:
    """In the guard scenario the kept rows are in the evidence as kept or tolerated."""
    found = _result(results, "guards-rows-the-cleaner-keeps").evidence
    sessions = found["RC-CRD-4"]["terminal sessions against the window"]["observed"]
    assert sessions[KEPT]["count"] == 2
    receipts = found["RC-CRD-5"]["idempotency receipts against their expiry"]["observed"]
    assert receipts[NOT_SWEPT]["count"] == 1

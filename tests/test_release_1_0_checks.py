"""The real checks on release 1.0: a clean 1.0 restore passes, injected 1.0 defects fail.

One 1.0 run is built for the module (``prepared_run(reference_release="1.0")``: the 1.0
reference deployment, its bundle, the restore and the 1.0 reference services, Coordinator
included). The whole check suite runs on it in a pytest subprocess: every check passes or is
skipped with a stated reason. Then a few representative 1.0 defects, each in its own copy of
the restore (``clone_run``), must make the check that guards them fail, naming the cause —
the fault-injection harness on the second release.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest

from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.reference.v1_0.secrets import generate_secrets
from tests.harness import ClonedRun, Outcome, PreparedRun, clone_run, prepared_run, run_checks_on

pytestmark = pytest.mark.slow

#: The reasons a check may be skipped for (anything else would hide a check that never ran).
SKIP_REASONS = ("not applicable", "not evaluated", "not requested")


@pytest.fixture(scope="module")
def run_1_0() -> Iterator[PreparedRun]:
    """One clean 1.0 run: reference source, bundle, restore, reference services."""
    with prepared_run(reference_release="1.0", audit_events=1500) as run:
        assert run.state.release == PROFILE.release
        yield run


def _outcome(outcomes: Mapping[str, Outcome], name: str) -> Outcome:
    found = [o for n, o in outcomes.items() if n == name or n.startswith(name + "[")]
    assert len(found) == 1, f"{name}: {sorted(outcomes)}"
    return found[0]


def test_clean_1_0_restore_passes_every_check(run_1_0: PreparedRun) -> None:
    """Every check passes on a clean 1.0 restore, or is skipped with a stated reason."""
    outcomes = run_checks_on(run_1_0.state, "--caracal-release=1.0", workdir=run_1_0.workdir)
    bad = {name: o for name, o in outcomes.items()
           if o.status not in ("passed", "skipped")
           or (o.status == "skipped" and not any(r in o.message for r in SKIP_REASONS))}
    assert not bad, "\n".join(f"{n}: {o.status} {o.message[:400]}" for n, o in bad.items())
    passed = [n for n, o in outcomes.items() if o.status == "passed"]
    # The demonstrating checks of step 6 ran the 1.0 gateway-mandate flow end to end.
    for name in ("test_canary_exchange_returns_mandate_signed_by_restored_key",
                 "test_protected_request_reaches_canary_upstream",
                 "test_canary_audit_events_continue_restored_chain"):
        assert name in passed, outcomes.get(name)


def _wrong_kek(clone: ClonedRun) -> None:
    """Another valid SECRET_STORE_KEK: every CSS1 envelope names a kekId it does not have."""
    clone.secrets().write(PROFILE.kek_secret, generate_secrets()[PROFILE.kek_secret])


def _lost_revocation(clone: ClonedRun) -> None:
    """One revoked authority record restored as active (its revocation lost)."""
    with clone.connect() as conn:
        row = conn.execute(
            f"SELECT id FROM {PROFILE.lineage_table} WHERE status = 'revoked'"
            " ORDER BY id LIMIT 1").fetchone()
        assert row is not None, "the 1.0 reference has no revoked authority record"
        conn.execute(f"UPDATE {PROFILE.lineage_table} SET status = 'active', revoked_at = NULL,"
                     " revoked_reason = NULL WHERE id = %s", (row[0],))


def _missing_ledger_row(clone: ClonedRun) -> None:
    """The newest migration ledger row deleted."""
    with clone.connect() as conn:
        conn.execute(f"DELETE FROM {PROFILE.ledger_table} WHERE version = %s",
                     (PROFILE.migrations[-1],))


FAULTS = (
    pytest.param(_wrong_kek, "test_sealed_values_open_under_the_restored_kek", "kekid",
                 "SY-1.a", id="wrong-secret-store-kek"),
    pytest.param(_lost_revocation, "test_postgres_revocation_state_is_restored[SY-4.a.sessions]",
                 "revoked", "SY-4.a", id="lost-authority-record-revocation"),
    pytest.param(_missing_ledger_row, "test_ledger_is_exactly_the_release",
                 PROFILE.migrations[-1].lower(), "RC-3.1", id="missing-ledger-row"),
)


@pytest.mark.parametrize(("inject", "check", "cause", "control_id"), FAULTS)
def test_1_0_defect_fails_its_check(run_1_0: PreparedRun, inject: object, check: str,
                                    cause: str, control_id: str) -> None:
    """Each injected 1.0 defect makes its guarding check fail, and the message names the cause."""
    with clone_run(run_1_0) as clone:
        inject(clone)  # type: ignore[operator]
        outcomes = run_checks_on(clone.state, "--caracal-release=1.0", "-k",
                                 check.split("[", 1)[0], workdir=run_1_0.workdir)
    outcome = _outcome(outcomes, check)
    assert outcome.status == "failed", (control_id, outcome)
    assert cause in outcome.message.lower(), (control_id, outcome.message[:600])

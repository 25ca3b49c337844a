"""Restore checklist step 3: "Run migration verification" — read-only, never the mutating script.

The ledger holds exactly the release's migrations and exactly the source's, and verify.sh's
checks a-f hold on the restored database: tables present, retired tables absent, audit rows
unchangeable by the audit role (its statements authorised by the server, never run),
immutability triggers, row-level security, and the partition window evaluated at the
backup's own time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

from caracal_restore.environments.postgres import PostgresServer
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import migrations as inspect_migrations
from caracal_restore.inspect import tables as inspect_tables
from caracal_restore.profiles import Profile
from caracal_restore.runstate import RunState
from checks.restore_checklist.expectations import STEP3, VERIFY_RULES
from fixtures import evidence
from fixtures.controls import Severity, control


def _ledger_message(diff: inspect_migrations.LedgerDiff, against: str) -> str:
    parts = []
    if diff.missing:
        parts.append(f"missing {', '.join(diff.missing)}")
    if diff.unexpected:
        parts.append(f"not in {against}: {', '.join(diff.unexpected)}")
    if diff.duplicated:
        parts.append(f"recorded twice: {', '.join(diff.duplicated)}")
    return (f"the restored ledger ({diff.found} versions) differs from {against} "
            f"({diff.expected} versions): {'; '.join(parts)}")


def _restored_ledger(profile: Profile, conn: psycopg.Connection[Any]) -> list[str]:
    """The versions of the restored migration ledger (a missing ledger violates the step)."""
    found = inspect_migrations.read_ledger(conn, profile.ledger_table)
    assert found is not None, (f"the restored database has no ledger table "
                               f"{profile.ledger_table}: the migrations were not restored")
    return found


@control("RC-3.1", feature=STEP3, grade="verified", severity=Severity.CRITICAL)
def test_ledger_is_exactly_the_release(profile: Profile,
                                       restored_conn: psycopg.Connection[Any]) -> None:
    """RC-3.1 The migration ledger holds exactly the release's migration versions."""
    restored_ledger = _restored_ledger(profile, restored_conn)
    diff = inspect_migrations.diff_ledger(restored_ledger, profile.migrations)
    evidence.json("ledger against the release", {"release": profile.release,
                                                 "ledger": restored_ledger,
                                                 "diff": dataclasses.asdict(diff)})
    assert diff.equal, _ledger_message(diff, f"release {profile.release}")


@control("RC-3.2", feature=STEP3, grade="verified", severity=Severity.CRITICAL)
def test_ledger_equals_the_source(profile: Profile, restored_conn: psycopg.Connection[Any],
                                  source_fingerprint: Mapping[str, Any] | None,
                                  run_state: RunState, target_pg: PostgresServer) -> None:
    """RC-3.2 The migration ledger equals the source's (fingerprint, or the dump itself)."""
    restored_ledger = _restored_ledger(profile, restored_conn)
    if source_fingerprint is not None:
        basis, source = "the source fingerprint", source_fingerprint.get("ledger")
    else:
        if run_state.bundle is None:
            raise CannotEvaluate("the run has no opened bundle to read the source ledger from")
        name = profile.ledger_table.rpartition(".")[2]
        contents = inspect_tables.read_dump(
            Path(run_state.bundle.root) / "postgres" / "caracal.dump",
            target_pg.tools.path("pg_restore"), capture=[name])
        basis, source = "the dump (no fingerprint)", contents.first_column.get(name)
    if source is None:
        raise CannotEvaluate(f"{basis} records no ledger to compare with")
    diff = inspect_migrations.diff_ledger(restored_ledger, source)
    evidence.json("ledger against the source", {"basis": basis, "source": source,
                                                "restored": restored_ledger,
                                                "diff": dataclasses.asdict(diff)})
    assert diff.equal, _ledger_message(diff, basis)


@control("RC-3.3a", feature=STEP3, grade="verified", severity=Severity.CRITICAL)
def test_verify_a_tables_exist(profile: Profile, restored_conn: psycopg.Connection[Any]) -> None:
    """RC-3.3a verify.sh a: every table the release's verify.sh lists exists."""
    missing = inspect_tables.missing_tables(restored_conn, profile.verify_tables)
    evidence.json("verify.sh a", {"requires": VERIFY_RULES["a"].requires,
                                  "tables": profile.verify_tables, "missing": missing})
    assert not missing, (f"verify.sh check a fails: {len(missing)} of "
                         f"{len(profile.verify_tables)} tables missing: {', '.join(missing)}")


@control("RC-3.3b", feature=STEP3, grade="verified", severity=Severity.NORMAL)
def test_verify_b_retired_tables_absent(profile: Profile,
                                        restored_conn: psycopg.Connection[Any]) -> None:
    """RC-3.3b verify.sh b: the tables the release retired are absent."""
    present = inspect_migrations.present_tables(restored_conn, profile.retired_tables)
    evidence.json("verify.sh b", {"requires": VERIFY_RULES["b"].requires,
                                  "retired": profile.retired_tables, "present": present})
    assert not present, f"verify.sh check b fails: retired tables present: {', '.join(present)}"


@control("RC-3.3c", feature=STEP3, grade="demonstrated", severity=Severity.CRITICAL)
def test_verify_c_audit_role_cannot_change_audit_rows(profile: Profile,
                                                      restored_conn: psycopg.Connection[Any]
                                                      ) -> None:
    """RC-3.3c verify.sh c: the audit role can neither UPDATE nor DELETE audit_events rows."""
    probes = inspect_migrations.audit_write_probes(restored_conn, profile.audit_role)
    evidence.json("verify.sh c (each statement authorised by the server as the role with "
                  "EXPLAIN, in a read-only transaction: never run)",
                  [dataclasses.asdict(p) for p in probes])
    failed = [f"{p.statement}: {p.message}" for p in probes if p.outcome != "denied"]
    assert not failed, (f"verify.sh check c fails for role {profile.audit_role}: "
                        f"{'; '.join(failed)}; audit rows must be append-only for it")


@control("RC-3.3d", feature=STEP3, grade="verified", severity=Severity.CRITICAL)
def test_verify_d_immutability_triggers(profile: Profile,
                                        restored_conn: psycopg.Connection[Any]) -> None:
    """RC-3.3d verify.sh d: the release's immutability triggers exist (and are enabled)."""
    states = inspect_migrations.immutable_triggers(restored_conn, profile.immutable_triggers)
    evidence.json("verify.sh d", [dataclasses.asdict(s) for s in states])
    bad = [f"{s.name} is missing" if s.enabled is None else f"{s.name} is disabled"
           for s in states if s.enabled is None or s.enabled == "D"]
    assert not bad, f"verify.sh check d fails: {'; '.join(bad)}"


@control("RC-3.3e", feature=STEP3, grade="verified", severity=Severity.CRITICAL)
def test_verify_e_row_level_security(profile: Profile,
                                     restored_conn: psycopg.Connection[Any]) -> None:
    """RC-3.3e verify.sh e: RLS is enabled with exactly one zone_isolation policy per table."""
    states = inspect_migrations.rls_states(restored_conn, profile.rls_tables)
    evidence.json("verify.sh e", [dataclasses.asdict(s) for s in states])
    bad = [f"{s.table}: " + ("missing" if not s.exists else "RLS disabled" if not s.enabled
                             else f"{s.zone_isolation_policies} zone_isolation policies")
           for s in states if not (s.exists and s.enabled and s.zone_isolation_policies == 1)]
    assert not bad, (f"verify.sh check e fails on {len(bad)} of {len(states)} tables: "
                     f"{inspect_tables.shorten(bad)}")


@control("RC-3.3f", feature=STEP3, grade="verified", severity=Severity.NORMAL)
def test_verify_f_partitions_for_the_backup_month(profile: Profile, run_state: RunState,
                                                  restored_conn: psycopg.Connection[Any]) -> None:
    """RC-3.3f verify.sh f: audit partitions exist for the backup's month and the next ones."""
    anchor = run_state.created_at
    if anchor is None:
        raise CannotEvaluate("the bundle's creation time is unknown: no month to anchor on")
    window = inspect_migrations.partition_window(restored_conn, profile, anchor)
    evidence.json("verify.sh f (at the backup's time, not today's)", dataclasses.asdict(window))
    assert not window.findings, (
        f"verify.sh check f fails at the backup's time {window.anchor}: "
        f"{inspect_tables.shorten(list(window.findings))}")

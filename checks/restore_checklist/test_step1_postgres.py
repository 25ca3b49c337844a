"""Restore checklist step 1: "Restore Postgres into an isolated environment".

The restored database is apart from its source, every database of the manifest is there,
every table of the release exists, and each table holds what the source held: row counts and
content digests against the fingerprint taken in the dump's own snapshot (or, for a bundle
from Caracal's backup.sh, row counts and partitions against the dump itself). The internal
consistency rules of the data (hashes, references, sequences) hold on any basis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from operator import attrgetter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from caracal_restore.environments.base import PgEndpoint
from caracal_restore.environments.postgres import PostgresServer
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import tables as inspect_tables
from caracal_restore.profiles import Profile
from caracal_restore.runstate import RunState
from checks.restore_checklist.expectations import (
    CONSISTENCY_RULES,
    STEP1,
    TABLE_GROUPS,
    ConsistencyRule,
    TableGroup,
)
from fixtures import evidence
from fixtures.controls import Severity, control
from fixtures.options import SuiteConfig
from fixtures.restore import restored_fingerprint_name, take_restored_fingerprint
from fixtures.shared import once_per_run


def _bundle_root(run_state: RunState) -> Path:
    if run_state.bundle is None:
        raise CannotEvaluate("the run has no opened bundle to compare the restore with")
    return Path(run_state.bundle.root)


@pytest.fixture(scope="module")
def source_tables(run_state: RunState, source_fingerprint: Mapping[str, Any] | None,
                  target_pg: PostgresServer, profile: Profile) -> inspect_tables.SourceTables:
    """What the source held: the bundle's fingerprint, or else the dump itself (pg_restore)."""
    if source_fingerprint is not None:
        return inspect_tables.source_from_fingerprint(source_fingerprint)
    dump = _bundle_root(run_state) / "postgres" / "caracal.dump"
    contents = inspect_tables.read_dump(dump, target_pg.tools.path("pg_restore"))
    return inspect_tables.source_from_dump(contents)


@pytest.fixture(scope="module")
def restored_fingerprint(restored_db: PgEndpoint, profile: Profile,
                         pytestconfig: pytest.Config) -> dict[str, Any]:
    """A fingerprint of the restored database, taken read-only the way the backup took its own
    (once per run: the first process that needs it takes it, the others receive it)."""
    return once_per_run(pytestconfig, restored_fingerprint_name(profile),
                        lambda: take_restored_fingerprint(restored_db, profile))[0]


@control("RC-1.1", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
def test_target_is_isolated(run_state: RunState, restored_conn: psycopg.Connection[Any],
                            suite_config: SuiteConfig) -> None:
    """RC-1.1 The restore landed on an isolated server: linked to nothing outside the target."""
    target = run_state.restored_databases["caracal"]
    seen = inspect_tables.observe_isolation(restored_conn, target,
                                            remote_allowed=suite_config.allow_remote_target)
    evidence.json("isolation of the restore target", dataclasses.asdict(seen))
    assert not seen.findings, (
        f"the restored database {seen.target} is not isolated: "
        f"{inspect_tables.shorten(list(seen.findings))}; the checklist requires restoring into "
        "an isolated environment")


@control("RC-1.1", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
def test_target_is_not_the_source_cluster(run_state: RunState,
                                          restored_conn: psycopg.Connection[Any]) -> None:
    """RC-1.1 The restore target is not the source: another address and another cluster.

    Compared with the live source (``--source-dsn``, or the reference deployment the suite
    built): its address and ``pg_control_system().system_identifier``, read read-only.
    """
    if run_state.live_source_db is None:
        pytest.skip("not evaluated: no live source given (--source-dsn)")
    target = run_state.restored_databases["caracal"]
    seen = inspect_tables.observe_source_apart(restored_conn, target, run_state.live_source_db)
    evidence.json("restore target against the live source", dataclasses.asdict(seen))
    assert not seen.findings, (
        f"the restored database {seen.target} is not apart from the source {seen.source}: "
        f"{'; '.join(seen.findings)}; the checklist requires restoring into an isolated "
        "environment, never onto the source")


@control("RC-1.2", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
def test_every_manifest_database_is_restored(run_state: RunState, profile: Profile,
                                             restored_conn: psycopg.Connection[Any]) -> None:
    """RC-1.2 Every database the bundle's manifest lists (at least the release's) is restored."""
    manifest = inspect_tables.manifest_databases(_bundle_root(run_state))
    seen = inspect_tables.observe_databases(restored_conn, manifest, run_state.restored_databases,
                                            required=profile.databases,
                                            optional=profile.optional_databases)
    evidence.json("manifest databases on the target", dataclasses.asdict(seen))
    assert not seen.findings, (
        f"{inspect_tables.shorten(list(seen.findings))}; every database of manifest.txt "
        f"({', '.join(manifest)}) must be restored, and the manifest must list release "
        f"{profile.release}'s {', '.join(profile.databases)}")


@control("RC-1.3", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
def test_every_release_table_exists(profile: Profile,
                                    restored_conn: psycopg.Connection[Any]) -> None:
    """RC-1.3 Every table of the release's schema exists in the restored database."""
    wanted = inspect_tables.release_tables(profile)
    missing = inspect_tables.missing_tables(restored_conn, wanted)
    evidence.json("tables of the release", {"release": profile.release, "expected": wanted,
                                            "missing": missing})
    assert not missing, (
        f"{len(missing)} of the {len(wanted)} tables of release {profile.release} are missing "
        f"after restore: {', '.join(missing)}")


@control("RC-1.4", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
@pytest.mark.parametrize("group", TABLE_GROUPS, ids=attrgetter("clause"))
def test_tables_equal_the_source(group: TableGroup, profile: Profile,
                                 source_tables: inspect_tables.SourceTables,
                                 restored_fingerprint: dict[str, Any]) -> None:
    """RC-1.4 Each table of the group holds exactly the source's rows (count and content)."""
    restored = restored_fingerprint["tables"]
    members = inspect_tables.group_members(group.key, profile.table_groups, source_tables.tables,
                                           restored)
    if not members and group.key != inspect_tables.OTHER_GROUP:
        pytest.skip(f"not applicable: release {profile.release} has no table in group "
                    f"{group.key}")
    problems = inspect_tables.compare_tables(source_tables, restored, members)
    evidence.json("comparison", {
        "basis": source_tables.basis,
        "basis_note": "row counts and SHA-256 multiset digests from the fingerprint taken in "
                      "the dump's snapshot" if source_tables.basis == "fingerprint" else
                      "no fingerprint in the bundle: row counts of the dump itself "
                      "(content digests are not available)",
        "tables": {n: {"source": source_tables.tables.get(n), "restored": restored.get(n)}
                   for n in members},
    })
    assert not problems, (
        f"group {group.key}: {len(problems)} of {len(members)} table(s) differ from the "
        f"{source_tables.basis}: {inspect_tables.shorten(problems)}")


@control("RC-1.5", feature=STEP1, grade="verified", severity=Severity.CRITICAL)
def test_audit_partitions_equal_the_source(source_tables: inspect_tables.SourceTables,
                                           restored_fingerprint: dict[str, Any]) -> None:
    """RC-1.5 The audit partitions, their bounds and their row counts equal the source's."""
    restored = restored_fingerprint["audit_partitions"]
    problems = inspect_tables.compare_partitions(source_tables, restored,
                                                 restored_fingerprint["tables"])
    evidence.json("audit partitions", {"basis": source_tables.basis,
                                       "source": source_tables.partitions,
                                       "restored": restored})
    assert not problems, (
        f"audit_events partitions differ from the {source_tables.basis}: "
        f"{inspect_tables.shorten(problems)}")


@control("RC-1.6", feature=STEP1, grade="verified", severity=Severity.NORMAL)
@pytest.mark.parametrize("rule", CONSISTENCY_RULES, ids=attrgetter("clause"))
def test_restored_data_is_consistent(rule: ConsistencyRule, profile: Profile,
                                     run_state: RunState,
                                     restored_conn: psycopg.Connection[Any]) -> None:
    """RC-1.6 The restored data is internally consistent (hashes, references, sequences)."""
    result = inspect_tables.consistency(restored_conn, profile, rule.key)
    evidence.json("rule", {"rule": rule.key, "requires": rule.requires,
                           "comparison_basis_of_this_run": run_state.comparison_basis,
                           "note": result.note or "holds on any basis, with or without a "
                                                  "fingerprint", "checked": result.checked,
                           "findings": result.findings})
    if not result.applies:
        pytest.skip(f"not applicable: {result.note}")
    assert not result.findings, (
        f"{rule.key}: {len(result.findings)} violation(s) in {result.checked} checked: "
        f"{inspect_tables.shorten(list(result.findings))}; required: {rule.requires}")

"""Asset "Postgres database": every database of the bundle is restored, row for row.

Product state, policies, grants, sessions, audit events, agents, delegations, outboxes and
gateway bindings all live in PostgreSQL; the asset is restored when every database the
manifest lists exists on the target with the rows the source had (per table, against the
fingerprint, or the dump itself for a bundle from Caracal's backup.sh).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg

from caracal_restore.environments.postgres import PostgresServer
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.inspect import tables as inspect_tables
from caracal_restore.runstate import RunState
from checks.assets.expectations import POSTGRES
from fixtures import evidence
from fixtures.controls import Severity, control


def _source(db: str, root: Path, fingerprint: Mapping[str, Any] | None,
            pg: PostgresServer) -> tuple[str, Mapping[str, Any] | None]:
    """What the source held for one database: its fingerprint, else its dump's row counts."""
    if fingerprint is not None:
        return "fingerprint", fingerprint["databases"].get(db)
    contents = inspect_tables.read_dump(root / "postgres" / f"{db}.dump",
                                        pg.tools.path("pg_restore"))
    return "dump", {"tables": {n: {"rows": r, "kind": "table"}
                               for n, r in contents.rows.items()}}


@control("AS-1", feature=POSTGRES, grade="verified", severity=Severity.CRITICAL)
def test_every_database_is_restored_row_for_row(run_state: RunState, target_pg: PostgresServer,
                                                bundle_fingerprint: Mapping[str, Any] | None
                                                ) -> None:
    """AS-1 Every database of the manifest is restored with the source's rows in every table."""
    if run_state.bundle is None:
        raise CannotEvaluate("the run has no opened bundle to compare the restore with")
    root = Path(run_state.bundle.root)
    observed = []
    for db in inspect_tables.manifest_databases(root):
        endpoint = run_state.restored_databases.get(db)
        counts = None
        if endpoint is not None:
            with psycopg.connect(endpoint.read_only().conninfo(), autocommit=True) as conn:
                counts = inspect_assets.leaf_row_counts(conn)
        basis, source = _source(db, root, bundle_fingerprint, target_pg)
        observed.append((basis, inspect_assets.compare_rows(
            db, endpoint.dbname if endpoint else None, counts, source)))
    evidence.json("databases, rows restored and in the source",
                  [{"basis": b, **dataclasses.asdict(r)} for b, r in observed])
    problems = [d for _b, r in observed for d in r.differences]
    assert observed, "manifest.txt lists no database: nothing of the Postgres asset was backed up"
    assert not problems, (
        f"the Postgres asset is not restored as backed up ({len(problems)} difference(s), "
        f"compared with the {observed[0][0]}): {inspect_tables.shorten(problems)}")

"""Restore checklist (placeholder until the six steps land): the isolated PostgreSQL is usable."""

from __future__ import annotations

from caracal_restore.environments.postgres import PostgresServer
from fixtures import evidence
from fixtures.controls import control


@control("RC-0", feature="Isolated PostgreSQL", grade="configured")
def test_isolated_postgres_is_18_with_checksums(target_pg: PostgresServer) -> None:
    """RC-0 The isolated PostgreSQL is version 18 or newer with data checksums on."""
    facts = target_pg.server_facts()
    evidence.json("server facts", facts)
    assert int(facts["server_version_num"]) >= 180000, (
        f"server reports {facts['server_version']}; the restore target must be PostgreSQL >= 18"
    )
    assert facts["data_checksums"] == "on", (
        f"data_checksums is {facts['data_checksums']!r}; the target must be initialised "
        "with data checksums (Caracal's image runs initdb --data-checksums)"
    )

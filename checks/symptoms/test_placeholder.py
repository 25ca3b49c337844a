"""Symptoms (placeholder until the diagnostics land): pgcrypto is available on the target."""

from __future__ import annotations

from caracal_restore.environments.postgres import PostgresServer
from fixtures import evidence
from fixtures.controls import control


@control("SY-0", feature="pgcrypto available", grade="configured")
def test_pgcrypto_is_available(target_pg: PostgresServer) -> None:
    """SY-0 pgcrypto is installable on the target (Caracal's schema creates it; a dump fails without it)."""
    with target_pg.connect() as conn:
        row = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'pgcrypto'"
        ).fetchone()
    evidence.json("pg_available_extensions", {"pgcrypto": row[0] if row else None})
    assert row is not None, "pgcrypto is not available; a real Caracal dump fails to restore"

"""Plugin for tests/test_checklist_offline.py: the selected checks request ``scratch_db``.

Loaded with ``-p tests.scratch_probe`` into a run of the real checks. Every selected check also
gets a scratch clone (as a check that writes would), and before each check this records whether
the run's scratch template exists, in the file named by ``SCRATCH_PROBE_OUT``.
"""

from __future__ import annotations

import os

import psycopg
import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Make every selected check request a scratch clone."""
    for item in items:
        item.fixturenames.append("scratch_db")  # type: ignore[attr-defined]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Record, before the check's fixtures are made, whether the scratch template exists."""
    from fixtures.environment import current_run, current_stack

    state = current_run(item.config)
    with psycopg.connect(current_stack(item.config).pg.admin.conninfo(), autocommit=True) as c:
        exists = c.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                           (state.scratch_template,)).fetchone() is not None
    with open(os.environ["SCRATCH_PROBE_OUT"], "a", encoding="utf-8") as out:
        out.write(f"{item.name} {int(exists)}\n")

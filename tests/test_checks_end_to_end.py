"""The compliance checks run end to end on the embedded default, serially and under xdist."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_checks, server_processes


@pytest.fixture
def scratch() -> Path:
    path = Path(tempfile.mkdtemp(prefix="caracal-e2e-"))
    path.chmod(0o755)
    yield path  # type: ignore[misc]
    shutil.rmtree(path, ignore_errors=True)


def _results(allure_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in allure_dir.glob("*-result.json")]


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_checks_pass_with_one_result_per_check(scratch: Path, workers: list[str]) -> None:
    tmp = scratch / "tmp"
    tmp.mkdir(mode=0o755)
    result = run_checks([*workers], scratch,
                        env={"TMPDIR": str(tmp), "CARACAL_RESTORE_SERVICES": "none"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = run_checks(["--collect-only", "-q"], scratch)
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    results = _results(scratch / "allure")
    assert len(results) == len(ids), (len(results), ids)
    bad = [(r["name"], r["status"]) for r in results if r["status"] not in {"passed", "skipped"}]
    assert not bad, bad
    for r in results:
        if r["status"] == "skipped":
            # Offline (--services none) or not applicable: a skip must say why.
            reason = r.get("statusDetails", {}).get("message", "").removeprefix("Skipped: ")
            assert reason.startswith(("not evaluated", "not applicable", "not requested")), (
                r["name"], reason)
    assert (scratch / "junit.xml").exists()
    assert (scratch / "allure" / "environment.properties").exists()
    assert not server_processes(tmp), "a server outlived the run"
    left = [p for p in tmp.iterdir() if not p.name.startswith("pytest-of-")]
    assert not left, f"left behind: {left}"


def test_environment_failure_makes_checks_broken_not_passed(scratch: Path) -> None:
    result = run_checks(["--pg-bindir", str(scratch)], scratch)
    assert result.returncode == 1, result.stdout[-2000:]
    results = _results(scratch / "allure")
    assert results, "no results were written"
    statuses = {r["status"] for r in results}
    assert "passed" not in statuses
    messages = " ".join(r.get("statusDetails", {}).get("message", "") for r in results)
    assert "pgcrypto" in messages or "not usable" in messages or "Redis" in messages
    assert os.path.exists(scratch / "junit.xml")

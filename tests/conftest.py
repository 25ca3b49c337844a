"""Shared helpers of the suite's own tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def server_processes(*markers: Path | str) -> set[str]:
    """Live (non-zombie) processes whose command line contains one of ``markers``.

    PostgreSQL names its data directory on the command line and redis-server shows
    ``127.0.0.1:<port>`` as its title, so a test sees exactly its own servers, even while other
    tests run servers in parallel.
    """
    out = subprocess.run(
        ["ps", "-eww", "-o", "pid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    found = set()
    for line in out.splitlines():
        pid, stat, args = ([*line.strip().split(None, 2), "", ""])[:3]
        if not stat.startswith("Z") and any(str(m) in args for m in markers):
            found.add(f"{pid} {args}")
    return found


@pytest.fixture
def server_tmp() -> Iterator[Path]:
    """A scratch directory the unprivileged server account can reach (tmp_path cannot, as root)."""
    path = Path(tempfile.mkdtemp(prefix="caracal-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
def plugin_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for pytester subprocess runs that load our plugin from the repository."""
    for key in list(os.environ):
        if key.startswith("CARACAL_RESTORE_"):
            monkeypatch.delenv(key)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    monkeypatch.setenv("PYTHONPATH", path)
    return dict(os.environ)


def run_checks(args: list[str], tmp: Path, *, env: dict[str, str] | None = None,
               timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``pytest checks`` from the repository root in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "checks", "-p", "no:cacheprovider",
         f"--alluredir={tmp / 'allure'}", f"--junitxml={tmp / 'junit.xml'}",
         f"--reports-dir={tmp}", *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, check=False,
    )

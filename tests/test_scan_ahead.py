"""The run's background secret search of a bundle is used only for the same bundle and secrets."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from caracal_restore.environments.base import BACKGROUND_NICENESS
from caracal_restore.inspect import scan_ahead
from caracal_restore.inspect.assets import scan_bundle_files


def test_background_search_finds_what_a_search_in_place_finds(tmp_path: Path) -> None:
    root = tmp_path / "caracalBackup-20261124T120000Z"
    (root / "postgres").mkdir(parents=True)
    secrets = {"auditHmacKey": "ab" * 32, "redisPassword": "s3cr3t-redis-password-value"}
    (root / "manifest.txt").write_text("version: 1\n")
    (root / "postgres" / "globals.sql").write_text(f"-- leaked {'AB' * 32}\n")
    search = scan_ahead.start(root, secrets, None, tmp_path / "scan")
    assert search.wait(timeout=120)
    record = (tmp_path / "scan" / scan_ahead.RECORD).read_text()
    # A background reader: it yields the CPU to the backup and restore it overlaps.
    assert json.loads(record)["niceness"] == min(19, os.nice(0) + BACKGROUND_NICENESS)
    assert json.loads(record)["policy"] == ("idle" if sys.platform == "linux" else "other")
    assert all(value not in record and value.upper() not in record
               for value in secrets.values()), "the record holds a secret value"

    loaded = scan_ahead.load(tmp_path / "scan", root, secrets)
    assert loaded == scan_bundle_files(root, secrets)
    assert [(leak.secret, leak.where) for leak in loaded.leaks] == [
        ("auditHmacKey", "postgres/globals.sql")]
    # Another set of secrets, another bundle, or no reading: the checks search themselves.
    assert scan_ahead.load(tmp_path / "scan", root, {**secrets, "redisPassword": "x" * 20}) is None
    assert scan_ahead.load(tmp_path / "scan", tmp_path, secrets) is None
    assert scan_ahead.load(tmp_path / "absent", root, secrets) is None
    assert scan_ahead.load(None, root, secrets) is None


def test_a_check_waits_for_a_search_under_way(tmp_path: Path) -> None:
    """The run hands the checks the search's folder without waiting for it: loading it waits
    for the record while the search runs, and returns at once when its process is gone."""
    root = tmp_path / "caracalBackup-20261124T120000Z"
    (root / "postgres").mkdir(parents=True)
    secrets = {"auditHmacKey": "cd" * 32}
    (root / "postgres" / "globals.sql").write_text(f"-- leaked {'cd' * 32}\n")
    folder = tmp_path / "scan"
    search = scan_ahead.start(root, secrets, None, folder)
    try:
        assert not (folder / scan_ahead.RECORD).exists()  # its interpreter is still starting
        loaded = scan_ahead.load(folder, root, secrets, wait=120)
        assert loaded is not None
        assert [(leak.secret, leak.where) for leak in loaded.leaks] == [
            ("auditHmacKey", "postgres/globals.sql")]
    finally:
        search.stop()

    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / scan_ahead.PID).write_text(str(search.process.pid))  # reaped: no such process
    started = time.monotonic()
    assert scan_ahead.load(gone, root, secrets, wait=60) is None
    assert time.monotonic() - started < 5

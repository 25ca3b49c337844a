"""Search the opened bundle for secrets while the restore runs (once per run, in a child).

The bundle's files and its dumps rendered to SQL do not change once the bundle is opened and
validated, so a run can search them from that moment, side by side with ``pg_restore``: a child
process (its own interpreter) runs ``assets.scan_bundle_files`` and writes what it searched and
found — secret *names*, forms and places, never a value — to ``scan.json``. The secrets reach
the child on its stdin (never its command line or environment).

The run does not wait for the search: it hands the checks the folder, and the check process
that needs the search waits for the record there (``load(..., wait=...)``) while the child
runs; one that has failed or is gone leaves that check to search the bundle itself.

The record carries a salted SHA-256 of the secrets it searched for; the check process accepts
the record only when the same digest of the secrets *it* read from the restored secret store
matches, and otherwise searches the bundle itself. So the verdict never depends on this
reading, only the time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets as secrets_lib
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from caracal_restore.environments.base import (
    background_policy,
    collect_less_often,
    process_running,
    run_in_background,
    stop_process,
)
from caracal_restore.inspect.assets import Leak, LeakScan, scan_bundle_files

RECORD = "scan.json"
#: The searching process's id, for a waiting check process to tell whether it still runs.
PID = "scanner.pid"
#: How long a check process waits for a search still under way (the run's own limit).
WAIT = 1800.0


@dataclasses.dataclass
class ScanAhead:
    """A running background search of one opened bundle."""

    folder: Path
    process: subprocess.Popen[bytes]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the search; True when it completed and left its record."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return False
        return self.process.returncode == 0 and (self.folder / RECORD).is_file()

    def stop(self) -> None:
        """Stop the search (the run ended first, or failed)."""
        stop_process(self.process, grace=10)


def secrets_digest(secrets: Mapping[str, str], salt: str) -> str:
    """A salted SHA-256 of every secret name and value (to tell the same set from another)."""
    digest = hashlib.sha256(bytes.fromhex(salt))
    for name, value in sorted(secrets.items()):
        for part in (name, value):
            data = part.encode()
            digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


def start(root: Path, secrets: Mapping[str, str], pg_restore: Path | None,
          folder: Path) -> ScanAhead:
    """Start searching the extracted bundle ``root`` for ``secrets`` in a child process."""
    folder.mkdir(parents=True, exist_ok=True)
    job = json.dumps({"root": str(root), "secrets": dict(secrets), "folder": str(folder),
                      "pg_restore": str(pg_restore) if pg_restore else None}).encode()
    with (folder / "scan.log").open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                   stdout=out, stderr=subprocess.STDOUT)
    (folder / PID).write_text(str(process.pid), encoding="ascii")
    assert process.stdin is not None
    try:
        process.stdin.write(job)
    finally:
        process.stdin.close()
    return ScanAhead(folder, process)


def load(folder: Path | None, root: Path, secrets: Mapping[str, str], *,
         wait: float = 0.0) -> LeakScan | None:
    """The background search of ``root`` for exactly ``secrets`` (None: absent, another, or
    not complete within ``wait`` seconds while its process runs)."""
    if folder is None:
        return None
    deadline = time.monotonic() + wait
    while (not (folder / RECORD).exists() and process_running(folder / PID)
           and time.monotonic() < deadline):
        time.sleep(0.05)
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        if (record["root"] != str(root)
                or record["digest"] != secrets_digest(secrets, record["salt"])):
            return None
        scan = record["scan"]
        return LeakScan(tuple(scan["sources"]), int(scan["bytes_scanned"]),
                        int(scan["needles"]), tuple(scan["secrets"]),
                        tuple(Leak(**leak) for leak in scan["leaks"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main() -> int:
    """Child process: search the bundle named on stdin, write the record."""
    run_in_background()
    collect_less_often()
    job: dict[str, Any] = json.loads(sys.stdin.buffer.read())
    secrets: dict[str, str] = job["secrets"]
    pg_restore = Path(job["pg_restore"]) if job["pg_restore"] else None
    scan = scan_bundle_files(Path(job["root"]), secrets, pg_restore=pg_restore)
    salt = secrets_lib.token_hex(16)
    record = {"root": job["root"], "salt": salt, "digest": secrets_digest(secrets, salt),
              "scan": dataclasses.asdict(scan), "niceness": os.nice(0),
              "policy": background_policy()}
    folder = Path(job["folder"])
    partial = folder / (RECORD + ".partial")
    partial.write_text(json.dumps(record), encoding="utf-8")
    partial.rename(folder / RECORD)
    return 0


if __name__ == "__main__":
    sys.exit(main())

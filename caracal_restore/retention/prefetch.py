"""Read the audit export archive once per run, while the backup and restore are under way.

The archive is the source's, independent of the bundle, so a run can read it in the background
from the moment it knows the bucket: a child process (its own interpreter, so the pipeline's
work is not slowed by it) lists and reads every object with ``read_index_rows``
(columns, no Python object per row) and writes the index with ``save_rows``. The check
processes then load that one reading instead of fetching thousands of objects each; a run
whose prefetch failed or is absent reads the archive itself (``fixtures/retention.py``), so the
verdicts never depend on the prefetch, only the time.

The run does not wait for the reading: it hands the checks the folder, and the check processes
wait for the record there (``completed(..., wait=...)``) — until the reading is complete, has
failed (``failed.json``), or its process is gone. Meanwhile they start, list the archive and
do what needs no index.

The object store's location and credentials reach the child through its environment (never its
command line, which other users of the machine can read).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from caracal_restore.environments.base import (
    background_policy,
    collect_less_often,
    process_running,
    run_in_background,
    stop_process,
)
from caracal_restore.environments.objectstore import ObjectStoreServer

ENV = "CARACAL_RESTORE_PREFETCH_STORE"
#: Written next to the index once it is complete (what was read, where, and how long it took).
DONE = "done.json"
#: Written instead when the reading failed (the kind of error; the log has the rest).
FAILED = "failed.json"
#: The reading process's id, for a waiting check process to tell whether it still runs.
PID = "reader.pid"
#: How long a check process waits for a reading still under way (the run's own limit).
WAIT = 1800.0


@dataclasses.dataclass
class Prefetch:
    """A running background reading of one bucket into ``folder``."""

    bucket: str
    folder: Path
    process: subprocess.Popen[bytes]
    log: Path

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Wait for the reading; its record when complete, None when it failed (logged)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None
        return completed(self.folder, self.bucket)

    def stop(self) -> None:
        """Stop the reading (the run ended first, or failed)."""
        stop_process(self.process, grace=10)


def start(server: ObjectStoreServer, bucket: str, folder: Path) -> Prefetch:
    """Start reading ``bucket`` of ``server`` into ``folder`` in a child process."""
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env[ENV] = json.dumps({
        "provider": server.provider, "substrate": server.substrate,
        "endpoint_url": server.endpoint_url, "access_key": server.access_key,
        "secret_key": server.secret_key, "root": str(server.root) if server.root else None,
        "bucket": bucket, "folder": str(folder),
    })
    log = folder / "prefetch.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", __name__], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    (folder / PID).write_text(str(process.pid), encoding="ascii")
    return Prefetch(bucket, folder, process, log)


def completed(folder: Path, bucket: str, *, wait: float = 0.0) -> dict[str, Any] | None:
    """The record of a complete reading of ``bucket`` in ``folder``; None when there is none:
    absent, of another bucket, failed, or not complete within ``wait`` seconds while its
    process runs."""
    deadline = time.monotonic() + wait
    while True:
        record = _record(folder, bucket)
        if (record is not None or (folder / FAILED).exists() or not process_running(folder / PID)
                or time.monotonic() >= deadline):
            return record if record is not None else _record(folder, bucket)
        time.sleep(0.05)


def _record(folder: Path, bucket: str) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("bucket") == bucket else None


def main() -> int:
    """Child process: read the bucket named in the environment, save its index."""
    run_in_background()
    collect_less_often()
    from caracal_restore.parquet_export import save_rows
    from caracal_restore.retention.exports import read_index_rows

    spec = json.loads(os.environ.pop(ENV))
    server = ObjectStoreServer(
        spec["provider"], spec["substrate"], spec["endpoint_url"], spec["access_key"],
        spec["secret_key"], Path(spec["root"]) if spec["root"] else None)
    folder = Path(spec["folder"])
    started = time.time()
    try:
        objects, problems, rows = read_index_rows(server.bucket(spec["bucket"]))
        positions = save_rows(folder, objects, problems, rows)
    except BaseException as exc:
        (folder / FAILED).write_text(json.dumps({"error": type(exc).__name__}),
                                     encoding="utf-8")
        raise
    record = {"bucket": spec["bucket"], "objects": len(objects), "rows": positions,
              "started_at": started, "seconds": round(time.time() - started, 3),
              "niceness": os.nice(0),
              "policy": background_policy()}
    (folder / DONE).write_text(json.dumps(record), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One measurement in a fresh process, so that its peak RSS is its own.

Run by ``benchmarks.run``: ``python -m benchmarks.probe`` reads a JSON job on stdin (it holds
the connection password and the HMAC key, which therefore never appear on a command line) and
prints one JSON line with what it measured. Modes:

- ``hash``: the hashing limit — SHA-256 of the canonical bytes plus HMAC-SHA256 of
  ``content|prev`` (the verifier's own primitives), over the first ``sample`` rows of the table
  held in memory, in a tight loop, no database.
- ``read``: the read limit — ``COPY … TO STDOUT`` of exactly the verifier's columns, rows
  consumed and dropped (``streams`` > 1: that many processes over the partitions at once).
- ``client`` / ``ordered`` / ``sql``: ``verify_audit_chain`` (``workers``), its ordered scan,
  ``verify_audit_chain_sql``, with the key and the chain heads.

Peak RSS is the process's VmHWM; worker processes are reported by ``RUSAGE_CHILDREN`` (an upper
bound: a child's figure includes what it inherited at fork).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from caracal_restore import audit_chain, pgcopy
from caracal_restore.audit_chain import (
    STREAM_COLUMNS,
    chain_heads,
    leaf_partitions,
    stream_query,
    verify_audit_chain,
)
from caracal_restore.audit_chain_sql import verify_audit_chain_sql
from caracal_restore.chainhash import SEP, chain_hmac_bytes

REPO = Path(__file__).resolve().parents[1]


def _connect(job: dict[str, Any]) -> psycopg.Connection[Any]:
    """The job's connection (password from the job, never from argv)."""
    return psycopg.connect(job["conninfo"], password=job["password"], autocommit=True)


def hash_limit(job: dict[str, Any]) -> dict[str, Any]:
    """SHA-256 + HMAC-SHA256 over the same canonical bytes, in memory, in a tight loop."""
    messages: list[bytes] = []
    links: list[tuple[bytes, bytes]] = []
    total_bytes = 0
    with _connect(job) as conn, conn.cursor() as cur, cur.copy(
        f"COPY (SELECT {STREAM_COLUMNS} FROM audit_events LIMIT {int(job['sample'])}) TO STDOUT"
    ) as copy:
        for data in copy:
            line = bytes(data)
            if b"\\" in line:
                fields = pgcopy.split_escaped(line)
                stored, prev = fields[2] or b"", fields[3] or b""
                message = SEP.join(f or b"" for f in fields[5:])
            else:
                _, _, stored, prev, _, rest = line.split(b"\t", 5)
                message = rest[:-1].replace(b"\t", SEP)
            messages.append(message)
            links.append((stored, prev))
            total_bytes += len(message) + len(stored) + len(prev) + 1
    sha = hashlib.sha256
    mac = chain_hmac_bytes(bytes.fromhex(job["key_hex"]))
    done, started = 0, time.perf_counter()
    while True:
        for message, (stored, prev) in zip(messages, links, strict=True):
            sha(message).hexdigest()
            mac(stored, prev)
        done += len(messages)
        elapsed = time.perf_counter() - started
        if elapsed >= job.get("min_seconds", 3.0):
            break
    return {"rows": done, "elapsed_s": elapsed, "events_per_s": done / elapsed,
            "sample_rows": len(messages), "mean_bytes": total_bytes / max(len(messages), 1)}


def _read(conn: psycopg.Connection[Any], relations: Sequence[str]) -> int:
    """Read the verifier's columns of these relations and drop them."""
    rows = 0
    for relation in relations:
        query, params = stream_query(relation)
        with conn.cursor() as cur, cur.copy(query, params or None) as copy:
            for _ in copy:
                rows += 1
    return rows


def read_limit(job: dict[str, Any]) -> dict[str, Any]:
    """COPY … TO STDOUT of the verifier's columns, consumed and dropped (1..n streams)."""
    streams = int(job.get("streams", 1))
    if streams <= 1 or job.get("relations") is not None:
        with _connect(job) as conn:  # connected before the clock starts
            started = time.perf_counter()
            rows = _read(conn, job.get("relations") or ["audit_events"])
            elapsed = time.perf_counter() - started
    else:
        with _connect(job) as conn:
            plan = audit_chain._assign(leaf_partitions(conn), streams)
        children = [_spawn({**job, "relations": list(names)}) for names in plan]
        results = [_collect(child) for child in children]
        rows = sum(r["rows"] for r in results)
        # the streams run at once: the slowest one's reading time (process start excluded)
        elapsed = max(r["elapsed_s"] for r in results)
    return {"rows": rows, "elapsed_s": elapsed, "events_per_s": rows / elapsed,
            "streams": streams}


def verify(job: dict[str, Any]) -> dict[str, Any]:
    """One verification run (client streaming, ordered scan, or in-database)."""
    key = bytes.fromhex(job["key_hex"])
    with _connect(job) as conn:
        heads = chain_heads(conn)
        started = time.perf_counter()
        if job["mode"] == "client":
            report = verify_audit_chain(conn, hmac_key=key, expected_heads=heads,
                                        workers=int(job.get("workers", 1)))
        elif job["mode"] == "ordered":
            report = verify_audit_chain(conn, hmac_key=key, expected_heads=heads, ordered=True)
        else:
            report = verify_audit_chain_sql(conn, hmac_key=key, expected_heads=heads)
        elapsed = time.perf_counter() - started
    return {"rows": report.rows_checked, "elapsed_s": elapsed,
            "events_per_s": report.rows_checked / elapsed, "ok": report.ok,
            "counts": dict(report.counts), "workers": job.get("workers", 1)}


def _spawn(job: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start a probe process with a job on its stdin."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, (str(REPO), os.environ.get("PYTHONPATH")))))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.probe"], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(job).encode())
    proc.stdin.close()
    proc.stdin = None
    return proc


def _collect(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Wait for a probe process and parse its result."""
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"probe exited {proc.returncode}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in a fresh probe process; return its result (with peak RSS)."""
    return _collect(_spawn(job))


def current_rss_mb() -> float:
    """This process's resident set size now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0  # pragma: no cover


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover


def main() -> None:
    """Entry point: a job on stdin, one JSON line on stdout."""
    job = json.loads(sys.stdin.read())
    mode = job["mode"]
    cpu0 = os.times()
    if mode == "hash":
        result = hash_limit(job)
    elif mode == "read":
        result = read_limit(job)
    else:
        result = verify(job)
    cpu1 = os.times()
    result.update(
        mode=mode,
        peak_rss_mb=peak_rss_mb(),
        children_peak_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        cpu_s=(cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        children_cpu_s=(cpu1.children_user - cpu0.children_user)
        + (cpu1.children_system - cpu0.children_system),
    )
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: audit chain verification near the hardware's limits, and the suite against raw
``pg_dump``/``pg_restore``, on the reference deployment's database at several sizes.

    python -m benchmarks.run --events 100000,1000000,5000000 --out benchmarks/out/result.json

For each size, in a child process of its own (memory is returned between sizes):

1. an isolated stack (the restore target) and the reference source deployment
   (``build_reference``: ``build_source_database`` + exports + Redis + replay files) with that
   many audit events — generation is timed but not part of any figure;
2. the whole suite, right away (as a run backs up what it generated): ``run_pipeline`` exactly
   as a run does it (fingerprint + pg_dump + tar.gz bundle, age encryption, upload, fetch,
   decrypt, extract, validate, pg_restore, Redis, replay files, secrets, release detection,
   reference services on a writable copy) — with the already generated source handed in
   instead of generating it again — then ``python -m pytest checks -n auto`` against it;
3. raw ``pg_dump -Fc`` of the source + ``pg_restore`` into a new database on the target
   (``--no-owner --no-acl``: the target has no roles of its own);
4. on the source database, each ``--repeat`` times, interleaved: the hashing limit, the read
   limit (1 and 2 streams), the client verifier (1 and 2 worker processes), the in-database
   verifier, and (up to ``--ordered-max`` events) the ordered scan — each in a fresh process
   (``benchmarks.probe``) whose peak RSS is recorded.

The JSON result holds every repetition; the printed table shows medians and spreads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from benchmarks import probe

REPO = Path(__file__).resolve().parents[1]

#: Largest size at which the whole suite runs by default: at 5 000 000 events the run's
#: process (embedded moto S3 and reference services, in-process) passed 22 GB and was killed
#: by the kernel's OOM killer on a 23 GB machine.
SUITE_MAX = 1_000_000

#: Measurements taken on the source database, in the order one repetition runs them.
VERIFIER_MODES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("hash_limit", {"mode": "hash"}),
    ("read_limit_1", {"mode": "read", "streams": 1}),
    ("client_1", {"mode": "client", "workers": 1}),
    ("read_limit_2", {"mode": "read", "streams": 2}),
    ("client_2", {"mode": "client", "workers": 2}),
    ("in_database", {"mode": "sql"}),
)


def log(message: str) -> None:
    """Progress on stderr, with a timestamp."""
    sys.stderr.write(f"[{dt.datetime.now():%H:%M:%S}] {message}\n")
    sys.stderr.flush()


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (the machine is shared: context for every figure)."""
    return [round(x, 2) for x in os.getloadavg()]


def settle(*servers: Any) -> dict[str, float]:
    """Let the writes of what ran before reach the disk before a measured run (not timed).

    A run leaves up to ~2 GB of dirty pages behind (a restore's data and WAL, a dump); the
    kernel writes them back ~30 s after they were dirtied (``vm.dirty_expire_centisecs``): in the
    middle of the next measured run, which then pays for its predecessor's writes (the suite
    after raw, raw after the suite). Each measured run starts from the same state instead: a
    CHECKPOINT on each server, then sync(2). Returns the seconds it took and what was dirty."""
    from caracal_restore.environments.base import meminfo_bytes

    dirty = (meminfo_bytes("Dirty") or 0) + (meminfo_bytes("Writeback") or 0)
    started = time.perf_counter()
    for server in servers:
        with server.connect() as conn:
            conn.execute("CHECKPOINT")
    os.sync()
    return {"settle_s": round(time.perf_counter() - started, 2),
            "dirty_mb_before": round(dirty / 2**20)}


# --------------------------------------------------------------------------- one size


class RssSampler:
    """This process's RSS every half second, the maximum kept per named phase."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss = probe.current_rss_mb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


SAMPLER = RssSampler()


def _timed(times: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a function so that its duration is added to ``times[key]`` (RSS tagged with it)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, before = time.perf_counter(), SAMPLER.phase
        SAMPLER.phase = key
        try:
            return fn(*args, **kwargs)
        finally:
            SAMPLER.phase = before
            times[key] = times.get(key, 0.0) + time.perf_counter() - started
    return wrapper


def _timed_cm(times: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a context-manager function so that entering it is timed."""
    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started, before = time.perf_counter(), SAMPLER.phase
        SAMPLER.phase = key
        with fn(*args, **kwargs) as value:
            SAMPLER.phase = before
            times[key] = times.get(key, 0.0) + time.perf_counter() - started
            yield value
    return wrapper


def measure_verifiers(job: dict[str, Any], repeat: int, ordered_max: int, events: int,
                      sample: int) -> dict[str, list[dict[str, Any]]]:
    """Every verifier-side measurement, ``repeat`` times, interleaved."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in VERIFIER_MODES}
    for i in range(repeat):
        for name, extra in VERIFIER_MODES:
            result = probe.run({**job, **extra, "sample": sample})
            result["loadavg"] = loadavg()
            runs[name].append(result)
            log(f"  {name} #{i + 1}: {result['events_per_s']:,.0f} events/s, "
                f"{result['elapsed_s']:.1f} s, peak RSS {result['peak_rss_mb']:.0f} MB"
                + (f" (+ workers {result['children_peak_rss_mb']:.0f} MB)"
                   if result.get("children_peak_rss_mb") else "")
                + (f", findings {result['counts']}" if "counts" in result else ""))
    if events <= ordered_max:
        result = probe.run({**job, "mode": "ordered"})
        result["loadavg"] = loadavg()
        runs["ordered_scan"] = [result]
        log(f"  ordered_scan: {result['events_per_s']:,.0f} events/s")
    return runs


def raw_dump_restore(source: Any, target: Any, work: Path) -> dict[str, Any]:
    """``pg_dump -Fc`` of the source database, ``pg_restore`` into a new target database."""
    from caracal_restore.environments.base import run_tool

    dump = work / "raw.dump"
    endpoint = source.admin.with_db("caracal")
    started = time.perf_counter()
    run_tool([source.tools.path("pg_dump"), "--format=custom", f"--file={dump}"],
             env=endpoint.libpq_env(), what="raw pg_dump", timeout=14400)
    dumped = time.perf_counter() - started
    name = f"raw_restore_{os.getpid()}"
    target.create_database(name)
    try:
        started = time.perf_counter()
        run_tool([target.tools.path("pg_restore"), "--exit-on-error", "--no-password",
                  "--no-owner", "--no-acl", "-d", name, dump],
                 env=target.admin.libpq_env(), what="raw pg_restore", timeout=14400)
        restored = time.perf_counter() - started
    finally:
        target.drop_database(name)
    size = dump.stat().st_size
    dump.unlink()
    return {"dump_s": dumped, "restore_s": restored, "total_s": dumped + restored,
            "dump_bytes": size, "loadavg": loadavg()}


def _junit_slowest(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """The slowest checks of a JUnit XML report (setup + call + teardown, as pytest counts)."""
    if not path.exists():
        return []
    cases = [(f"{c.get('classname', '')}::{c.get('name', '')}", float(c.get("time", 0)))
             for c in ET.parse(path).getroot().iter("testcase")]
    return [(name, round(t, 1)) for name, t in sorted(cases, key=lambda x: -x[1])[:top]]


def _junit_counts(path: Path) -> dict[str, int]:
    """tests/failures/errors/skipped of a JUnit XML report."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if not path.exists():
        return counts
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def whole_suite(deployment: Any, stack: Any, events: int, work: Path,
                workers: str) -> dict[str, Any]:
    """The pipeline on the prebuilt source, then every check under xdist; all timed."""
    from caracal_restore import bundle as bundles
    from caracal_restore import fingerprint as fp
    from caracal_restore import pipeline
    from caracal_restore.reference import deployment as deployment_module

    times: dict[str, float] = {}

    @contextlib.contextmanager
    def prebuilt(**_: Any) -> Iterator[Any]:
        yield deployment

    spec = pipeline.PipelineSpec(services="reference", audit_events=events, workdir=work,
                                 archive_bucket=f"caracal-audit-archive-unused-{os.getpid()}")
    patches = (
        mock.patch.object(deployment_module, "build_reference", prebuilt),
        mock.patch.object(fp, "take_fingerprint", _timed(times, "fingerprint",
                                                          fp.take_fingerprint)),
        mock.patch.object(bundles, "take_backup", _timed(times, "take_backup",
                                                         bundles.take_backup)),
        mock.patch.object(bundles, "encrypt_file", _timed(times, "encrypt",
                                                          bundles.encrypt_file)),
        mock.patch.object(bundles, "open_bundle", _timed(times, "open_bundle",
                                                         bundles.open_bundle)),
        mock.patch.object(pipeline, "restore_bundle", _timed_cm(times, "restore",
                                                                pipeline.restore_bundle)),
        mock.patch.object(pipeline, "_services", _timed(times, "services",
                                                        pipeline._services)),
    )
    result: dict[str, Any] = {}
    tag = f"bench-{os.getpid()}"
    state_file = work / f"{tag}-state.json"
    junit = work / f"{tag}-junit.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")}
    checks: dict[str, Any] = {}

    def pending(facts: dict[str, Any]) -> None:
        """The pending state file: what the run will read, and its stack (credentials: 0600),
        as a controller that builds the run knows them."""
        partial = work / f"{tag}-state.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"pending": {**facts, "stack": stack.handoff()}}, fh)
        partial.replace(state_file)

    def told(**facts: Any) -> None:
        """What the run says while it builds (the restored data loaded, the restore complete):
        added to the pending state file, as a controller that builds the run learns it."""
        checks["early"] = {**checks.get("early", {}), **facts}
        pending(checks["early"])

    def start_checks() -> None:
        """As ``pytest checks -n`` does with the run it builds: the check processes start once
        the restored data is loaded, told where the archive's background reading is and the
        run's stack (a pending state file), and wait for the run's state (written whole, in its
        place, when it is ready)."""
        out = (work / f"{tag}-pytest.out").open("w")
        checks["out"] = out
        checks["proc"] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "checks", "-n", workers, "-p",
             "no:cacheprovider", "-q", f"--run-state={state_file}", "--run-state-wait=14400",
             f"--alluredir={work / (tag + '-allure')}", f"--junitxml={junit}"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
        )

    def loaded() -> None:
        """The restored data is loaded: say so in the pending state file, then start the
        check processes, which read it at once."""
        told(loaded=True)
        start_checks()

    # The controller of `pytest checks` builds the run after its pytest_configure, which sets
    # its collector as every process of a run of the checks has it (``collect_less_often``).
    # This process builds a run per measurement: the garbage of the one before is collected
    # first (untimed), not set aside with what lives on.
    from caracal_restore.environments.base import collect_less_often

    gc.collect()
    collect_less_often()
    with contextlib.ExitStack() as patched:
        for p in patches:
            patched.enter_context(p)
        started = time.perf_counter()
        SAMPLER.phase = "pipeline (other)"
        try:
            with pipeline.run_pipeline(
                    spec, stack, on_restore=lambda early: told(**early),
                    on_loaded=loaded,
                    on_restored=lambda databases, release: told(restored={
                        "databases": {k: dataclasses.asdict(v) for k, v in databases.items()},
                        "release": release}),
            ) as state:
                pipeline_s = time.perf_counter() - started
                restored_names = [e.dbname for e in state.restored_databases.values()]
                result["pipeline_errors"] = dict(state.errors)
                result["restore_timings"] = dict(state.restore_timings)
                state.write(work / f"{tag}-state.partial").replace(state_file)
                if "proc" not in checks:  # the run failed before its restore
                    start_checks()
                started = time.perf_counter()
                SAMPLER.phase = "checks (services and object store answering)"
                returncode = checks["proc"].wait(timeout=14400)
                checks_s = time.perf_counter() - started
                SAMPLER.phase = "idle"
                state_file.unlink()
                teardown_started = time.perf_counter()
            teardown_s = time.perf_counter() - teardown_started
        finally:
            if "proc" in checks:
                if checks["proc"].poll() is None:
                    checks["proc"].kill()
                    checks["proc"].wait()
                checks["out"].close()
        stdout = (work / f"{tag}-pytest.out").read_text(errors="replace")
    # The run leaves its restored databases to the stack's teardown: drop them, so that the
    # next repetition (--suite-repeat) on the same stack restores into empty ones.
    for name in restored_names:
        stack.pg.drop_database(name)
    result.update(
        rss_peaks_mb={k: round(v) for k, v in SAMPLER.peaks.items()},
        pipeline_s=pipeline_s, checks_s=checks_s, total_s=pipeline_s + checks_s,
        teardown_s=teardown_s, phases=times, checks_exit=returncode,
        checks=_junit_counts(junit), slowest_checks=_junit_slowest(junit),
        checks_tail=stdout[-1500:], loadavg=loadavg(),
    )
    backup = times.get("take_backup", 0.0) + times.get("encrypt", 0.0)
    result["backup_s"] = backup
    log(f"  suite: pipeline {pipeline_s:.1f} s (backup {backup:.1f} s of which fingerprint "
        f"{times.get('fingerprint', 0.0):.1f} s, open {times.get('open_bundle', 0.0):.1f} s, "
        f"restore {times.get('restore', 0.0):.1f} s, services {times.get('services', 0.0):.1f} s)"
        f", checks {checks_s:.1f} s, exit {returncode} {result['checks']}")
    return result


def _populate_timed(times: dict[str, float]) -> Callable[..., Any]:
    """``generator.populate``, timed into ``times``: ``populate`` the database's population
    alone, ``export`` its ``before_retention`` hook (the hourly exports it writes meanwhile)."""
    from caracal_restore.reference import generator

    original = generator.populate

    def populate(*args: Any, **kwargs: Any) -> Any:
        hook = kwargs.get("before_retention")
        if hook is not None:
            kwargs["before_retention"] = _timed(times, "export", hook)
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times["populate"] = time.perf_counter() - started - times.get("export", 0.0)
    return populate


def one_size(args: argparse.Namespace, events: int) -> dict[str, Any]:
    """Everything for one size (runs in its own process)."""
    from caracal_restore.environments.stack import StackSpec, start_stack
    from caracal_restore.pipeline import ARCHIVE_BUCKET
    from caracal_restore.reference import generator
    from caracal_restore.reference.deployment import build_reference
    from caracal_restore.reference.generator import Volume

    work = Path(tempfile.mkdtemp(prefix=f"caracal-bench-{events}-", dir=args.workdir))
    work.chmod(0o755)
    out: dict[str, Any] = {"events": events, "loadavg_start": loadavg()}
    try:
        with SAMPLER, start_stack(StackSpec(workdir=work)) as stack:
            SAMPLER.phase = "generate"
            # The source's exports go to an Object Lock bucket of their own, as the pipeline
            # makes one (COMPLIANCE, 365 days); the pipeline's own (empty) bucket is unused.
            archive = stack.objects.bucket(f"{ARCHIVE_BUCKET}-bench", create=True,
                                           object_lock=True, compliance_days=365)
            log(f"{events:,} events: generating the reference source")
            # The database's population on its own, as the reference deployment issue states
            # its target (100 000 events in under 60 s on 2 cores): timed here, not in a test.
            generated: dict[str, float] = {}
            started = time.perf_counter()
            with mock.patch.object(generator, "populate", _populate_timed(generated)), \
                    build_reference(archive=archive, seed=args.seed,
                                    volume=Volume(audit_events=events), workdir=work) as source:
                out["generate_s"] = time.perf_counter() - started
                out["populate_s"] = generated.get("populate")
                out["export_s"] = generated.get("export")
                out["generator_peak_rss_mb"] = (
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                owner = source.owner_db
                with source.pg.connect("caracal") as conn:
                    row = conn.execute("SELECT count(*) FROM audit_events").fetchone()
                    size = conn.execute(
                        "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
                        " WHERE inhparent = 'audit_events'::regclass").fetchone()
                out["audit_rows"] = int(row[0]) if row else 0
                out["audit_table_bytes"] = int(size[0]) if size and size[0] else 0
                log(f"  generated {out['audit_rows']:,} surviving rows in "
                    f"{out['generate_s']:.0f} s (the database populated in "
                    f"{out['populate_s'] or 0:.1f} s, exports {out['export_s'] or 0:.1f} s; "
                    f"{out['audit_table_bytes'] / 2**20:.0f} MB)")
                conninfo = owner.with_db("caracal")
                job = {"conninfo": _conninfo_without_password(conninfo),
                       "password": conninfo.password, "key_hex": source.secrets["auditHmacKey"]}
                # The suite first: a run backs its source up right after generating it, and
                # some checks compare times (backup age, sweeper intervals) with generation.
                if events in args.suite_events:
                    out["suite"], out["raw"], out["settle"] = [], [], []
                    for _ in range(args.suite_repeat):
                        out["settle"].append(settle(source.pg, stack.pg))
                        out["suite"].append(whole_suite(source, stack, events, work, args.xdist))
                        log("  raw pg_dump -Fc + pg_restore")
                        SAMPLER.phase = "raw dump and restore (this process waits)"
                        out["settle"].append(settle(source.pg, stack.pg))
                        out["raw"].append(raw_dump_restore(source.pg, stack.pg, work))
                        log(f"  raw: {out['raw'][-1]['total_s']:.1f} s "
                            f"(dump {out['raw'][-1]['dump_s']:.1f} s)")
                SAMPLER.phase = "verifier probes (this process waits)"
                if not args.no_verifiers:
                    out["verifiers"] = measure_verifiers(job, args.repeat, args.ordered_max,
                                                         events, args.hash_sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["loadavg_end"] = loadavg()
    out["size_process_rss_peaks_mb"] = {k: round(v) for k, v in SAMPLER.peaks.items()}
    return out


def _conninfo_without_password(endpoint: Any) -> str:
    """A libpq conninfo of an endpoint with the password left out (it travels separately)."""
    return (f"host={endpoint.host} port={endpoint.port} user={endpoint.user} "
            f"dbname={endpoint.dbname} connect_timeout=10")


# --------------------------------------------------------------------------- summary


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> str:
    """min..max of a list, for the table."""
    return f"{min(values):,.0f}..{max(values):,.0f}" if values else "-"


def summarise(size: dict[str, Any]) -> dict[str, Any]:
    """Medians, ratios and verdicts of one size."""
    s: dict[str, Any] = {"events": size["events"], "audit_rows": size.get("audit_rows"),
                         "generate_s": size.get("generate_s"),
                         "populate_s": size.get("populate_s"),
                         "export_s": size.get("export_s")}
    runs = size.get("verifiers", {})
    eps = {name: [r["events_per_s"] for r in rs] for name, rs in runs.items()}
    med = {name: _median(v) for name, v in eps.items()}
    s["events_per_s"] = {name: round(v) for name, v in med.items()}
    s["events_per_s_spread"] = {name: _spread(v) for name, v in eps.items()}
    if runs:
        limit_1 = min(med["hash_limit"], med["read_limit_1"])
        limit_2 = min(2 * med["hash_limit"], med["read_limit_2"])
        s["limit_1"] = round(limit_1)
        s["limit_2"] = round(limit_2)
        s["client_1_vs_limit"] = round(med["client_1"] / limit_1, 3)
        s["client_2_vs_limit"] = round(med["client_2"] / limit_2, 3)
        s["in_database_vs_limit"] = round(med["in_database"] / limit_1, 3)
        # per-run ratios against the same repetition's limits (noise moves both together)
        s["client_1_vs_limit_per_run"] = [
            round(c["events_per_s"] / min(h["events_per_s"], r["events_per_s"]), 3)
            for c, h, r in zip(runs["client_1"], runs["hash_limit"], runs["read_limit_1"],
                               strict=True)]
        s["peak_rss_mb"] = {name: round(max(r["peak_rss_mb"] for r in rs), 1)
                            for name, rs in runs.items()}
        s["workers_peak_rss_mb"] = round(max(r["children_peak_rss_mb"]
                                             for r in runs["client_2"]), 1)
        s["findings"] = runs["client_1"][0].get("counts")
    if size.get("suite"):
        suite = size["suite"]
        raw = size["raw"]
        s["suite_total_s"] = [round(x["total_s"], 1) for x in suite]
        s["suite_pipeline_s"] = [round(x["pipeline_s"], 1) for x in suite]
        s["suite_checks_s"] = [round(x["checks_s"], 1) for x in suite]
        s["suite_phases_s"] = {k: round(v, 1) for k, v in suite[0]["phases"].items()}
        s["suite_checks"] = suite[0]["checks"]
        s["raw_total_s"] = [round(x["total_s"], 1) for x in raw]
        s["raw_dump_s"] = [round(x["dump_s"], 1) for x in raw]
        s["raw_restore_s"] = [round(x["restore_s"], 1) for x in raw]
        s["suite_vs_raw"] = round(_median([x["total_s"] for x in suite])
                                  / _median([x["total_s"] for x in raw]), 2)
        # A run whose pipeline or checks failed did not do the work: its time decides nothing.
        s["suite_failed_runs"] = sum(1 for x in suite if x["checks_exit"] != 0
                                     or x.get("pipeline_errors"))
    return s


def verdicts(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's three targets, each with the figures that decide it."""
    out: dict[str, Any] = {}
    ratios = {s["events"]: s.get("client_1_vs_limit") for s in summaries if "limit_1" in s}
    if ratios:
        out["verifier_at_least_half_the_limit"] = {
            "met": all(isinstance(r, float) and r >= 0.5 for r in ratios.values()),
            "client_1_vs_min(hash,read)": ratios}
    rss = {s["events"]: s["peak_rss_mb"]["client_1"] for s in summaries if "peak_rss_mb" in s}
    if len(rss) > 1:
        lo, hi = min(rss), max(rss)
        out["memory_flat"] = {"met": rss[hi] <= rss[lo] * 1.25 + 8, "peak_rss_mb": rss}
    suite: dict[int, float] = {s["events"]: s["suite_vs_raw"] for s in summaries
                               if "suite_vs_raw" in s}
    failed = {s["events"]: s["suite_failed_runs"] for s in summaries
              if s.get("suite_failed_runs")}
    if 1_000_000 in suite:
        out["suite_within_2x_raw_at_1M"] = {
            "met": suite[1_000_000] <= 2.0 and not failed.get(1_000_000),
            "suite_vs_raw": suite, **({"failed_runs": failed} if failed else {})}
    elif suite:
        out["suite_vs_raw"] = {"met": None, "suite_vs_raw": suite,
                               "note": "1 000 000 events not measured"}
    return out


def print_table(summaries: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    """The human summary."""
    print(f"\nmachine: {machine['cores']} cores, {machine['cpu']}, PostgreSQL "
          f"{machine.get('postgres', '?')}, Python {machine['python']}")
    header = ("events", "hash lim", "read 1", "client 1", "c1/lim", "read 2", "client 2",
              "c2/lim", "in-db", "RSS c1", "RSS c2 (wkr)", "suite s", "raw s", "suite/raw")
    print(" | ".join(f"{h:>11}" for h in header))
    for s in summaries:
        e = s.get("events_per_s", {})
        rss = s.get("peak_rss_mb", {})
        cells = (
            f"{s['events']:,}", f"{e.get('hash_limit', 0):,}", f"{e.get('read_limit_1', 0):,}",
            f"{e.get('client_1', 0):,}", f"{s.get('client_1_vs_limit', '-')}",
            f"{e.get('read_limit_2', 0):,}", f"{e.get('client_2', 0):,}",
            f"{s.get('client_2_vs_limit', '-')}", f"{e.get('in_database', 0):,}",
            f"{rss.get('client_1', '-')}", f"{rss.get('client_2', '-')} "
            f"({s.get('workers_peak_rss_mb', '-')})",
            f"{s.get('suite_total_s', '-')}", f"{s.get('raw_total_s', '-')}",
            f"{s.get('suite_vs_raw', '-')}",
        )
        print(" | ".join(f"{c:>11}" for c in cells))
    print("(events/s: median of the repetitions; spreads and every run are in the JSON)")


def machine_facts() -> dict[str, Any]:
    """Core count and versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    facts = {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
             "platform": platform.platform()}
    with contextlib.suppress(Exception):
        from caracal_restore.environments.pgbin import find_server
        server = find_server(min_major=18)
        facts["postgres"] = f"{server.major} ({server.origin})"
    return facts


# ------------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ints = lambda text: [int(x.replace("_", "")) for x in text.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=ints, default=[100_000, 1_000_000, 5_000_000],
                   help="audit event counts to generate (comma-separated)")
    p.add_argument("--suite-events", type=ints, default=None,
                   help="sizes at which the whole suite and raw dump/restore run (default: "
                        f"every size up to {SUITE_MAX:,}; above it the embedded object store "
                        "and services of a run outgrow a 23 GB machine)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of each verifier figure")
    p.add_argument("--suite-repeat", type=int, default=1,
                   help="repetitions of the suite and raw dump/restore")
    p.add_argument("--ordered-max", type=int, default=1_000_000,
                   help="largest size at which the ordered scan is also measured")
    p.add_argument("--hash-sample", type=int, default=200_000,
                   help="rows held in memory for the hashing limit")
    p.add_argument("--xdist", default="auto", help="pytest -n value for the checks")
    p.add_argument("--no-verifiers", action="store_true", help="only the suite and raw figures")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, default=None, help="where temporary data goes")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "result.json")
    p.add_argument("--one-size", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--partial-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.suite_events is None:
        args.suite_events = [n for n in args.events if n <= SUITE_MAX]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every size in its own process, then summarise."""
    args = parse_args(argv)
    if args.one_size is not None:
        result = one_size(args, args.one_size)
        args.partial_out.write_text(json.dumps(result, default=str))
        return 0
    machine = machine_facts()
    log(f"{machine['cores']} cores ({machine['cpu']}); sizes {args.events}; "
        f"load {loadavg()}")
    sizes = []
    passthrough = [
        f"--events={','.join(map(str, args.events))}",
        f"--suite-events={','.join(map(str, args.suite_events))}",
        f"--repeat={args.repeat}", f"--suite-repeat={args.suite_repeat}",
        f"--ordered-max={args.ordered_max}", f"--hash-sample={args.hash_sample}",
        f"--xdist={args.xdist}", f"--seed={args.seed}",
        *(["--no-verifiers"] if args.no_verifiers else []),
        *([f"--workdir={args.workdir}"] if args.workdir else []),
    ]
    for events in args.events:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            partial = Path(fh.name)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.run", *passthrough,
                 "--one-size", str(events), "--partial-out", str(partial)],
                cwd=REPO, check=False,
            )
            if proc.returncode != 0:
                log(f"{events:,} events: the run failed (exit {proc.returncode})")
                sizes.append({"events": events, "failed": proc.returncode})
                continue
            sizes.append(json.loads(partial.read_text()))
        finally:
            partial.unlink(missing_ok=True)
        child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        sizes[-1]["size_process_peak_rss_mb"] = child
    summaries = [summarise(s) for s in sizes if "failed" not in s]
    result = {"created": dt.datetime.now(dt.UTC).isoformat(), "machine": machine,
              "command": " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
              "summary": summaries, "targets": verdicts(summaries), "runs": sizes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(summaries, machine)
    print("targets:", json.dumps(result["targets"], indent=2))
    print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Readings made once per run: the archive read in the background, and results shared by xdist
workers. They must hand the checks exactly what reading it themselves would."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caracal_restore.environments import objectstore
from caracal_restore.environments.base import BACKGROUND_NICENESS
from caracal_restore.parquet_export import COLUMNS, ArchiveIndex, arrow_schema, object_key
from caracal_restore.retention import prefetch
from caracal_restore.retention.exports import read_index
from tests.conftest import REPO

HOUR = dt.datetime(2026, 5, 1, 10, tzinfo=dt.UTC)


def _object(rows: list[tuple[str, int]]) -> bytes:
    """An export object holding ``(zone, chain_seq)`` rows (other columns filled plainly)."""
    values: dict[str, list[object]] = {name: [] for name, _ in COLUMNS}
    for zone, seq in rows:
        for name, kind in COLUMNS:
            if name == "zone_id":
                values[name].append(zone)
            elif name == "chain_seq" or pa.types.is_integer(kind):
                values[name].append(seq)
            else:
                values[name].append(f"{name}-{zone}-{seq}")
    out = io.BytesIO()
    pq.write_table(pa.table(values, schema=arrow_schema()), out)
    return out.getvalue()


def _fill(store: objectstore.ObjectStore) -> None:
    store.put(object_key(HOUR), _object([("z1", 1), ("z1", 2), ("z2", 1)]))
    # chain_seq 2 of z1 exported a second time, in the next hour's object.
    store.put(object_key(HOUR + dt.timedelta(hours=1)), _object([("z1", 2), ("z1", 3)]))
    store.put("audit/not-an-export.txt", b"junk")


def _same(a: ArchiveIndex, b: ArchiveIndex) -> None:
    assert a.rows == b.rows
    assert a.objects == b.objects
    assert a.duplicates == b.duplicates
    assert a.duplicate_rows == b.duplicate_rows
    assert a.problems == b.problems
    assert a.event_ids_by_key() == b.event_ids_by_key()


def test_background_reading_equals_reading_in_place(tmp_path: Path) -> None:
    with objectstore.embedded() as server:
        # moto's state is per process: a bucket name of its own for each test.
        name = f"archive-{uuid.uuid4().hex[:8]}"
        store = server.bucket(name, create=True, object_lock=True, compliance_days=1)
        _fill(store)
        reading = prefetch.start(server, name, tmp_path / "cache")
        record = reading.wait(timeout=120)
        assert record is not None, (tmp_path / "cache" / "prefetch.log").read_text()
        direct = read_index(store)
    assert record["rows"] == len(direct.rows) == 4
    assert record["niceness"] == min(19, os.nice(0) + BACKGROUND_NICENESS)
    assert record["policy"] == ("idle" if sys.platform == "linux" else "other")
    assert direct.duplicates == {("z1", 2): [object_key(HOUR),
                                             object_key(HOUR + dt.timedelta(hours=1))]}
    assert any("not-an-export.txt" in p for p in direct.problems)
    _same(ArchiveIndex.load(tmp_path / "cache"), direct)
    # A record names its bucket: a reading of another bucket is never taken for this one.
    assert prefetch.completed(tmp_path / "cache", "another-bucket") is None


def test_failed_background_reading_leaves_no_record(tmp_path: Path) -> None:
    with objectstore.embedded() as server:
        reading = prefetch.start(server, f"no-such-bucket-{uuid.uuid4().hex[:8]}",
                                 tmp_path / "cache")
        assert reading.wait(timeout=120) is None
    assert "NoSuchBucket" in (tmp_path / "cache" / "prefetch.log").read_text()
    assert (tmp_path / "cache" / prefetch.FAILED).exists()


def test_a_check_process_waits_for_a_reading_under_way_but_not_for_a_failed_one(
        tmp_path: Path) -> None:
    """The run hands the checks the reading's folder without waiting for it to complete."""
    import time

    with objectstore.embedded() as server:
        name = f"archive-{uuid.uuid4().hex[:8]}"
        _fill(server.bucket(name, create=True))
        reading = prefetch.start(server, name, tmp_path / "cache")
        record = prefetch.completed(tmp_path / "cache", name, wait=120)
        assert record is not None
        assert record["rows"] == 4
        reading.wait(timeout=120)

        failing = prefetch.start(server, f"no-such-bucket-{uuid.uuid4().hex[:8]}",
                                 tmp_path / "failing")
        started = time.monotonic()
        assert prefetch.completed(tmp_path / "failing", "no-such-bucket", wait=120) is None
        assert time.monotonic() - started < 60, "waited for a reading that had failed"
        failing.wait(timeout=120)
    # A reading whose process is gone without a record is not waited for either.
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / prefetch.PID).write_text(str(failing.process.pid))
    started = time.monotonic()
    assert prefetch.completed(tmp_path / "gone", "any", wait=120) is None
    assert time.monotonic() - started < 5


def test_saved_index_loads_equal(tmp_path: Path) -> None:
    with objectstore.embedded() as server:
        store = server.bucket(f"archive-{uuid.uuid4().hex[:8]}", create=True)
        _fill(store)
        index = read_index(store)
    index.save(tmp_path / "saved")
    _same(ArchiveIndex.load(tmp_path / "saved"), index)


def test_a_shared_reading_is_made_once_per_run(pytester: pytest.Pytester,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest('pytest_plugins = ("fixtures.shared",)')
    pytester.makepyfile(test_shared=textwrap.dedent("""
        import os
        from pathlib import Path

        import pytest

        from fixtures.shared import once_per_run

        LOG = Path(os.environ["SHARED_LOG"])


        @pytest.fixture(scope="session")
        def reading(pytestconfig):
            def compute():
                with LOG.open("a") as log:
                    log.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
                return {"value": 42}
            return once_per_run(pytestconfig, "reading", compute)[0]


        @pytest.mark.parametrize("n", range(8))
        def test_reads(reading, n):
            assert reading == {"value": 42}
    """))
    log = pytester.path / "computed.log"
    monkeypatch.setenv("SHARED_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    assert len(log.read_text().split()) == 1, log.read_text()
    log.unlink()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=8)
    assert len(log.read_text().split()) == 1, log.read_text()


COLLECTOR = '''
import json, os

def pytest_collection_finish(session):
    with open(os.environ["CARACAL_TEST_COLLECTED"], "w") as out:
        json.dump({i.nodeid: list(i.fixturenames) for i in session.items}, out)
'''


def test_every_check_reading_the_archive_index_is_scheduled_with_the_others(
        tmp_path: Path) -> None:
    """The archive index is loaded by one worker only if every check that needs it (directly or
    through the chain verification) is in ``ARCHIVE_READERS`` or ``CHAIN_VERIFIERS``; apart,
    the chain verification is one scope of its own; the restored fingerprint's readers are one
    scope; the others run one by one; the scopes are collected in the order they are handed
    out in, and the checks that use the chain verification's result last in each."""
    import json
    import os
    import subprocess
    import sys

    from fixtures.shared import (
        AFTER_CHAIN,
        ARCHIVE_READERS,
        ARCHIVE_SCOPE,
        CHAIN_SCOPE,
        CHAIN_VERIFIERS,
        FINGERPRINT_READERS,
        FINGERPRINT_SCOPE,
        scope_of,
    )

    (tmp_path / "collector.py").write_text(COLLECTOR)
    out = tmp_path / "collected.json"
    env = {**os.environ, "CARACAL_TEST_COLLECTED": str(out),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "pytest", "checks", "--collect-only", "-q",
                    "-p", "collector", "-p", "no:cacheprovider"],
                   cwd=REPO, env=env, check=True, capture_output=True)
    collected: dict[str, list[str]] = json.loads(out.read_text())
    readers = {n for n, names in collected.items()
               if {"archive_index", "audit_archive", "chain_diagnosis"} & set(names)}
    verifiers = {n for n, names in collected.items() if "chain_diagnosis" in names}
    assert len(readers) >= 6, sorted(readers)
    assert {n for n in readers if scope_of(n) != ARCHIVE_SCOPE} == set()
    apart = {n for n in readers if scope_of(n, chain_apart=True) == CHAIN_SCOPE}
    assert apart
    assert apart <= verifiers
    assert {n for n in readers - apart
            if scope_of(n, chain_apart=True) != ARCHIVE_SCOPE} == set()
    assert all((REPO / module).is_file()
               for module in ARCHIVE_READERS + CHAIN_VERIFIERS + FINGERPRINT_READERS)
    fingerprinted = {n for n, names in collected.items() if "restored_fingerprint" in names}
    assert len(fingerprinted) >= 2, sorted(fingerprinted)
    assert {scope_of(n) for n in fingerprinted} == {FINGERPRINT_SCOPE}
    others = [n for n in collected if n not in readers
              and scope_of(n) not in (ARCHIVE_SCOPE, FINGERPRINT_SCOPE)]
    assert others
    assert all(scope_of(n) == n == scope_of(n, chain_apart=True) for n in others)
    # Handed out in collection order: the archive readers' scope, the chain verification, the
    # fingerprint's readers, the rest; the chain verification's users last in each group.
    order = list(collected)
    ranks = [0 if n.split("::")[0].endswith(ARCHIVE_READERS) else
             1 if n.split("::")[0].endswith(CHAIN_VERIFIERS) else
             2 if n.split("::")[0].endswith(FINGERPRINT_READERS) else 3 for n in order]
    assert ranks == sorted(ranks)
    for rank in set(ranks):
        group = [n for n, r in zip(order, ranks, strict=True) if r == rank]
        users = [n for n in group if AFTER_CHAIN & set(collected[n])]
        assert group[len(group) - len(users):] == users
    assert ranks.count(0) >= 6
    assert ranks.count(1) >= 1
    assert any("chain_verification" in collected[n] for n in others)  # RC-2.4


def test_the_chain_verification_goes_apart_only_when_a_second_index_fits() -> None:
    from fixtures.shared import INDEX_BYTES_PER_ROW, second_index_fits

    gib = 1 << 30
    assert second_index_fits(0, None)  # no archive: nothing to hold twice
    assert second_index_fits(1_000_000, 18 * gib)
    assert not second_index_fits(5_000_000, 18 * gib)
    assert second_index_fits(1000, 4 * 1000 * INDEX_BYTES_PER_ROW)
    assert not second_index_fits(1001, 4 * 1000 * INDEX_BYTES_PER_ROW)
    assert not second_index_fits(None, 18 * gib)  # rows unknown
    assert not second_index_fits(1000, None)  # memory unknown


@pytest.mark.parametrize("batch", [65536, 2])
def test_columnar_reading_equals_row_reading_on_odd_objects(tmp_path: Path, batch: int,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The run's columnar reading saves exactly what the row-by-row reader finds, also for an
    object of another schema (read row by row) holding duplicates, for null text values, and
    for an object after those that exports one of their positions again (the first copy stays
    first), whether the objects read column by column make one table or several."""
    from caracal_restore import parquet_export
    from caracal_restore.parquet_export import read_archive, read_archive_rows, save_rows

    monkeypatch.setattr(parquet_export, "SAVED_BATCH", batch)

    store = objectstore.DirStore(tmp_path / "store")
    _fill(store)
    odd = pa.table({**{name: pa.array([], kind) for name, kind in COLUMNS},
                    "extra": pa.array([], pa.string())})
    rows = [("z1", 5), ("z1", 5), ("z1", 1), ("z3", 1)]
    odd = pa.table({name: pa.array([zone if name == "zone_id" else seq if name == "chain_seq"
                                    else (seq if pa.types.is_integer(odd.schema.field(name).type)
                                          else f"{name}-{zone}-{seq}")
                                    for zone, seq in rows], odd.schema.field(name).type)
                    for name in odd.schema.names})
    out = io.BytesIO()
    pq.write_table(odd, out)
    store.put(object_key(HOUR + dt.timedelta(hours=2)), out.getvalue())
    nulls = pa.table({name: pa.array([None if name == "event_id" else
                                      ("z4" if name == "zone_id" else
                                       (7 if pa.types.is_integer(kind) else "x"))], kind)
                      for name, kind in COLUMNS})
    out = io.BytesIO()
    pq.write_table(nulls, out)
    store.put(object_key(HOUR + dt.timedelta(hours=3)), out.getvalue())
    store.put(object_key(HOUR + dt.timedelta(hours=4)), _object([("z3", 1), ("z5", 1)]))

    objects, problems, table = read_archive_rows(store)
    positions = save_rows(tmp_path / "saved", objects, problems, table)
    direct = read_archive(store)
    assert positions == len(direct.rows)
    assert any("is not the export schema" in p for p in direct.problems)
    assert len(direct.duplicate_rows) == 4
    assert direct.rows[("z4", 7)].event_id == ""
    assert direct.rows[("z3", 1)].key == object_key(HOUR + dt.timedelta(hours=2))
    _same(ArchiveIndex.load(tmp_path / "saved"), direct)


@pytest.mark.parametrize(("args", "expected"), [
    (["checks"], True),
    (["checks/retention/test_audit_exports.py::test_x"], True),
    (["tests"], False),
    (["checks", "tests/test_s3get.py"], False),
    ([], False),
])
def test_archive_readers_are_grouped_only_in_a_run_of_the_checks(args: list[str],
                                                                 expected: bool) -> None:
    """The suite's own tests keep xdist's scheduling (their modules share costly fixtures)."""
    from types import SimpleNamespace

    from fixtures.shared import runs_checks

    config = SimpleNamespace(rootpath=REPO, args=args,
                             invocation_params=SimpleNamespace(dir=REPO))
    assert runs_checks(config) is expected  # type: ignore[arg-type]


FEWER_COLLECTIONS = """
import gc, json
from caracal_restore.environments.base import GC_YOUNG_THRESHOLD, collect_less_often
before = (gc.get_threshold(), gc.get_freeze_count())
kept = [[i] for i in range(1000)]  # long-lived, made before: set aside
collect_less_often()
cycle = []
cycle.append(cycle)
del cycle
print(json.dumps({"before": before, "after": [gc.get_threshold(), gc.get_freeze_count()],
                  "young": GC_YOUNG_THRESHOLD, "collected": gc.collect()}))
"""


def test_a_check_process_collects_less_often() -> None:
    """``collect_less_often`` (a run of the checks) sets aside what exists and raises the youngest
    generation's threshold; garbage made afterwards is still collected. In a fresh process:
    the test process's own collector is left as it is."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", FEWER_COLLECTIONS], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    seen = json.loads(out)
    assert seen["before"][0][0] < seen["young"]  # CPython's default: 700
    assert seen["after"][0] == [seen["young"], *seen["before"][0][1:]]
    assert seen["after"][1] >= seen["before"][1] + 1000
    assert seen["collected"] >= 1  # the cycle made afterwards


def _saved_reading(folder: Path, bucket: str) -> ArchiveIndex:
    """A complete background reading of a small archive saved in ``folder`` (as the run's)."""
    from caracal_restore.parquet_export import read_archive_rows, save_rows

    store = objectstore.DirStore(folder.parent / f"{folder.name}-store")
    _fill(store)
    objects, problems, table = read_archive_rows(store)
    rows = save_rows(folder, objects, problems, table)
    (folder / prefetch.DONE).write_text(json.dumps({"bucket": bucket, "rows": rows}))
    return ArchiveIndex.load(folder)


def test_a_worker_loads_the_archive_reading_once_the_restore_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started before the run is ready loads the background reading in a thread, only
    after the restore (the run's path) is complete, and hands it to ``archive_index`` once; it
    does not load it with more than two workers, when a second copy would not fit in memory, or
    for another folder or bucket."""
    from types import SimpleNamespace

    from fixtures import retention, shared

    cache = tmp_path / "cache"
    direct = _saved_reading(cache, "archive")
    early = {"archive_bucket": "archive", "archive_cache": str(cache)}
    restored = tmp_path / "restored"

    def worker(count: int) -> SimpleNamespace:
        return SimpleNamespace(stash=pytest.Stash(), workerinput={"workercount": count})

    config = worker(2)
    retention.preload_archive(config, early, after=(restored,))  # type: ignore[arg-type]
    preload = config.stash[retention._PRELOAD]
    preload.thread.join(timeout=0.5)
    assert preload.thread.is_alive(), "loaded beside the restore"
    assert preload.index is None
    restored.touch()
    assert retention._preloaded(config, cache, "other") is None  # type: ignore[arg-type]
    loaded = retention._preloaded(config, cache, "archive")  # type: ignore[arg-type]
    assert loaded is not None
    _same(loaded, direct)
    assert retention._preloaded(config, cache, "archive") is None  # type: ignore[arg-type]

    many = worker(3)
    retention.preload_archive(many, early, after=(restored,))  # type: ignore[arg-type]
    assert retention._PRELOAD not in many.stash

    monkeypatch.setattr(retention, "memory_available", lambda: 1024)
    tight = worker(2)
    retention.preload_archive(tight, early, after=(restored,))  # type: ignore[arg-type]
    assert retention._preloaded(tight, cache, "archive") is None  # type: ignore[arg-type]
    assert shared.second_index_fits(len(direct.rows), 1024) is False

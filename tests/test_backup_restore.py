"""Backup and restore as a run: source untouched, restore.sh-compatible bundles, once per run,
bad input restores nothing, and the work directory is kept only when asked."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from caracal_restore import bundle as bundles
from caracal_restore import fingerprint as fp
from caracal_restore.environments import objectstore, postgres
from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint, run_tool
from caracal_restore.environments.stack import StackSpec, start_stack
from caracal_restore.pipeline import PipelineSpec, run_pipeline
from caracal_restore.reference.deployment import build_reference
from caracal_restore.reference.generator import Volume
from caracal_restore.runstate import RunState, ServicesInfo


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="caracal-br-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def source(scratch: Path) -> Iterator[Any]:
    with objectstore.embedded() as srv:
        archive = srv.bucket("archive", create=True, object_lock=True)
        with build_reference(archive=archive, volume=Volume(audit_events=300),
                             workdir=scratch) as deployment:
            yield deployment


def _state(deployment: Any) -> dict[str, Any]:
    with psycopg.connect(deployment.owner_db.conninfo(), autocommit=True) as conn:
        tables = fp.take_fingerprint(conn)
    client = deployment.redis.client()
    try:
        streams = fp.redis_stream_state(client)
        keys = sorted(client.scan_iter())
    finally:
        client.close()
    return {"db": tables, "streams": streams, "keys": keys}


def _backup(deployment: Any, out: Path) -> Path:
    client = deployment.redis.client()
    try:
        return bundles.take_backup(
            out, pg_admin=deployment.pg.admin, tools=deployment.pg.tools,
            redis_dir_provider=lambda: bundles.redis_aof_local(client, deployment.redis.datadir),
            redis_client=client, replay_dirs=dict(deployment.replay),
            fingerprint_hook=lambda db, conn: fp.take_fingerprint(conn),
        )
    finally:
        client.close()


def test_backup_leaves_the_source_untouched(source: Any, scratch: Path) -> None:
    before = _state(source)
    out = scratch / "untouched"
    out.mkdir()
    _backup(source, out)
    after = _state(source)
    assert fp.compare_tables(before["db"], after["db"]) == []
    assert fp.compare_state(before["db"], after["db"]) == []
    assert (before["streams"], before["keys"]) == (after["streams"], after["keys"])


def test_bundle_restores_with_restore_sh_steps_by_hand(source: Any, scratch: Path) -> None:
    """restore.sh's steps done by hand: psql globals (errors ignored), createdb, pg_restore
    --exit-on-error, AOF copied into a fresh Redis data dir. Our extra fingerprint.json is
    ignored, and the result equals the fingerprint."""
    out = scratch / "by-hand"
    out.mkdir()
    archive = _backup(source, out)
    extract = scratch / "by-hand-extract"
    shutil.unpack_archive(archive, extract)
    (root,) = list(extract.iterdir())
    manifest = (root / "manifest.txt").read_text()
    assert "version: 1\n" in manifest
    fingerprint = json.loads((root / "fingerprint.json").read_text())
    with postgres.embedded(workdir=scratch) as target:
        env = target.admin.libpq_env()
        subprocess.run([str(target.tools.path("psql")), "-X", "-q", "-d", "postgres", "-f",
                        str(root / "postgres" / "globals.sql")], env={**os.environ, **env},
                       capture_output=True, check=False)
        # globals.sql carries the source cluster's roles and their SCRAM verifiers (restore.sh
        # applies it as is): from here on the target's roles have the backup's passwords.
        env["PGPASSWORD"] = source.pg.admin.password
        for dump in sorted((root / "postgres").glob("*.dump")):
            db = dump.stem
            run_tool([target.tools.path("psql"), "-X", "-d", "postgres", "-c",
                      f'CREATE DATABASE "{db}" OWNER "caracal"'], env=env, what="createdb")
            run_tool([target.tools.path("pg_restore"), "--exit-on-error", "-d", db, dump],
                     env=env, what="pg_restore")
        restored_login = target.admin.with_login("postgres", source.pg.admin.password)
        with psycopg.connect(restored_login.with_db("caracal").conninfo(),
                             autocommit=True) as conn:
            restored = fp.take_fingerprint(conn)
        assert fp.compare_tables(fingerprint["databases"]["caracal"], restored) == []
    datadir = scratch / "by-hand-redis"
    shutil.copytree(root / "redis" / "appendonlydir", datadir / "appendonlydir")
    with redis_env.embedded(appendonlydir=datadir / "appendonlydir", workdir=scratch,
                            password=source.secrets["redisPassword"]) as rs:
        client = rs.client()
        try:
            state = fp.redis_stream_state(client)
        finally:
            client.close()
    assert state == fingerprint["redis"]


def test_bad_bundle_restores_nothing(scratch: Path) -> None:
    bad = scratch / "caracalBackup-20260101T000000Z.tar.gz"
    bad.write_bytes(b"this is not a tar.gz")
    secrets_dir = scratch / "bad-secrets"
    secrets_dir.mkdir()
    (secrets_dir / "zoneKek").write_text("ab" * 32)
    with start_stack(StackSpec(workdir=scratch)) as stack, run_pipeline(
        PipelineSpec(source="bundle", bundle=str(bad), bundle_secrets=secrets_dir,
                     services="none", workdir=scratch), stack,
    ) as state:
        assert "not a gzip" in state.errors["backup"] or "tar.gz" in state.errors["backup"]
        assert state.errors["restore"].startswith("not run")
        assert state.restored_databases == {}
        with stack.pg.connect() as conn:
            names = [r[0] for r in conn.execute("SELECT datname FROM pg_database")]
        assert "caracal" not in names, "a bad bundle must restore nothing"
        assert stack.secrets.names() == [], "no secret may be restored from a bad bundle"


STATE_CHECK = """
import os, json
from fixtures.controls import control

@control("AS-9{n}", feature="once", grade="configured")
def test_{n}(run_state):
    '''AS-9{n} Records which run this worker sees.'''
    out = os.environ["ONCE_DIR"]
    with open(os.path.join(out, str(os.getpid()) + "-{n}"), "w") as fh:
        json.dump({{"restored_at": run_state.restored_at,
                    "db": run_state.restored_databases["caracal"].port}}, fh)
"""


def _checks_package(pytester: pytest.Pytester, template: str, count: int) -> None:
    """A ``checks/assets`` package of ``count`` checks made from ``template``, with the suite's
    plugins (the shared directory's among them: under -n the run is built while workers start)."""
    pytester.makeconftest(
        "pytest_plugins = ('fixtures.options', 'fixtures.controls', 'fixtures.evidence',"
        " 'fixtures.environment', 'fixtures.restore', 'fixtures.shared')\n")
    (pytester.path / "checks" / "assets").mkdir(parents=True)
    (pytester.path / "checks" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "__init__.py").write_text("")
    for n in range(count):
        (pytester.path / "checks" / "assets" / f"test_{n}.py").write_text(template.format(n=n))


def test_restore_happens_once_under_xdist(pytester: pytest.Pytester,
                                          plugin_env: dict[str, str], scratch: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    marks = scratch / "once"
    marks.mkdir()
    monkeypatch.setenv("ONCE_DIR", str(marks))
    monkeypatch.setenv("TMPDIR", str(scratch))
    _checks_package(pytester, STATE_CHECK, 4)
    started = scratch / "started"
    started.mkdir()
    phases = scratch / "phases"
    phases.mkdir()
    (pytester.path / "worker_start.py").write_text(WORKER_START.format(out=str(started),
                                                                       phases=str(phases)))
    result = pytester.runpytest_subprocess(
        "checks", "-n", "2", "-p", "no:cacheprovider", "-p", "worker_start", "--services",
        "none", "--reference-audit-events", "200", f"--alluredir={scratch / 'once-allure'}")
    result.assert_outcomes(passed=4)
    seen = [json.loads(p.read_text()) for p in marks.iterdir()]
    pids = {p.name.split("-")[0] for p in marks.iterdir()}
    assert len(pids) == 2, "the run did not use two workers"
    assert len({json.dumps(s, sort_keys=True) for s in seen}) == 1, "workers saw different runs"
    # The workers started once the restored data was loaded, not as the restore began, and
    # before the run was ready (the run builds in a thread of its own, and the plugin makes the
    # restore's data load begin 5 s late and the run ready 5 s after it), and yet every check
    # saw the finished run.
    at = {p.name: float(p.read_text()) for p in phases.iterdir()}
    starts = [json.loads(p.read_text()) for p in started.iterdir()]
    assert len(starts) == 2
    assert at["loading"] < min(s["at"] for s in starts), "a worker started as the restore began"
    assert max(s["at"] for s in starts) < at["ready"], "the workers waited for the run"
    # ... told where the archive's background reading is, to load it once the restore is done.
    assert all(s["early"]["archive_bucket"] and s["early"]["archive_cache"] for s in starts)
    assert "caracal-restore: release 2026.06, source reference" in result.stdout.str()


WORKER_START = """
import contextlib
import json
import time

def pytest_configure(config):
    if hasattr(config, "workerinput"):
        handoff = config.workerinput.get("caracal_restore_run") or {{}}
        with open({out!r} + "/" + config.workerinput["workerid"], "w") as fh:
            json.dump({{"at": time.time(), "early": handoff.get("early")}}, fh)
        return
    # Controller: a restore whose data load begins 5 s late, and a run ready 5 s after its
    # restore (a tiny one takes less than a worker's start); when each begins is recorded.
    from caracal_restore import pipeline
    restore = pipeline.restore_bundle
    release = pipeline._release

    def mark(phase):
        with open({phases!r} + "/" + phase, "w") as fh:
            fh.write(repr(time.time()))

    @contextlib.contextmanager
    def slow_restore(*args, **kwargs):
        time.sleep(5)
        mark("loading")
        with restore(*args, **kwargs) as restored:
            yield restored

    def slow_release(*args, **kwargs):
        time.sleep(5)
        mark("ready")
        return release(*args, **kwargs)

    pipeline.restore_bundle = slow_restore
    pipeline._release = slow_release
"""

WAITING_CHECK = '''
from fixtures.controls import control

@control("AS-9{n}", feature="wait", grade="configured")
def test_{n}(run_state):
    """AS-9{n} Sees the run the state file describes."""
    assert run_state.release == "2026.06-wait"
'''


def _fake_state(where: Path) -> RunState:
    """A state whose stack is described but never reached (the checks below read no server);
    ``where`` holds its object and secret store folders (attaching makes the latter 0700)."""
    endpoint = PgEndpoint("127.0.0.1", 1, "postgres", "postgres", password="not-a-secret")
    stack = {
        "pg": {"provider": "external", "admin": dataclasses.asdict(endpoint),
               "tools": [str(where), 18], "owns_cluster": False, "name_prefix": "x",
               "datadir": None},
        "redis": {"provider": "external",
                  "endpoint": dataclasses.asdict(RedisEndpoint("127.0.0.1", 1)),
                  "version": "7.0"},
        "objects": {"provider": "dir", "substrate": "dir", "endpoint_url": None,
                    "access_key": None, "secret_key": None, "root": str(where / "objects")},
        "secrets": {"provider": "dir", "path": str(where / "secrets")},
    }
    return RunState(release="2026.06-wait", source_kind="bundle", comparison_basis="none",
                    stack=stack, bundle=None, restored_databases={}, restored_redis=None,
                    restored_replay={}, restore_timings={}, restore_notes=(),
                    restored_at=None, archive_bucket=None, canary=None,
                    services=ServicesInfo(mode="none"))


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_checks_wait_for_a_run_state_written_later(pytester: pytest.Pytester,
                                                   plugin_env: dict[str, str], scratch: Path,
                                                   workers: list[str]) -> None:
    """``--run-state-wait``: the checks start before the state file holds a state (it may say
    only what the run will read) and attach to it once it appears; a file that does not appear
    in time makes every check broken, saying so."""
    _checks_package(pytester, WAITING_CHECK, 2)
    state_file = scratch / f"later-{len(workers)}" / "state.json"
    state_file.parent.mkdir()
    command = [sys.executable, "-m", "pytest", "checks", *workers, "-p", "no:cacheprovider",
               f"--run-state={state_file}", f"--alluredir={state_file.parent / 'allure'}"]
    # What a run elsewhere says as its restore begins (and ends): waited past, not read as a state.
    state_file.write_text(json.dumps({"pending": {
        "archive_bucket": None, "archive_cache": None, "loaded": True}}))
    proc = subprocess.Popen([*command, "--run-state-wait=120"], cwd=pytester.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3)
        assert proc.poll() is None, proc.communicate()[0]
        _fake_state(state_file.parent).write(state_file.with_suffix(".partial")).replace(
            state_file)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "2 passed" in out, out

    state_file.unlink()
    late = subprocess.run([*command, "--run-state-wait=1"], cwd=pytester.path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert late.returncode != 0
    assert "did not appear within 1 s" in late.stdout, late.stdout
    assert "2 passed" not in late.stdout


def test_keep_workdir_keeps_bundle_and_data(scratch: Path) -> None:
    """--keep-workdir keeps the bundle and the data; the run also says, once each, when the
    restored data is loaded and what was restored (the hooks the check processes use)."""
    keep = scratch / "kept"
    keep.mkdir(mode=0o755)
    loaded: list[bool] = []
    restored: list[tuple[list[str], str]] = []
    with start_stack(StackSpec(workdir=keep, keep=True)) as stack, run_pipeline(
        PipelineSpec(services="none", audit_events=200, workdir=keep, keep=True), stack,
        on_loaded=lambda: loaded.append(True),
        on_restored=lambda databases, release: restored.append((sorted(databases), release)),
    ) as state:
        assert not state.errors
        assert loaded == [True]
        assert restored == [(sorted(state.restored_databases), state.release)]
        assert "caracal" in restored[0][0]
    kept = [p.name for p in keep.iterdir()]
    assert any(n.startswith("caracal-run-") for n in kept), kept
    assert any(n.startswith("caracal-pg-") for n in kept), kept
    run_dir = next(p for p in keep.iterdir() if p.name.startswith("caracal-run-"))
    assert list((run_dir / "backups").glob("caracalBackup-*.tar.gz*"))
    assert (run_dir / "age-identity.txt").exists()


def test_what_on_restored_starts_may_read_the_restored_database(scratch: Path) -> None:
    """``on_restored`` comes once the services' writable copy is made: a session it opens on
    the restored database (as the restored fingerprint taken ahead does) and holds while the
    services start does not stop PostgreSQL from copying the database for them (CREATE
    DATABASE waits 5 s for the template's other sessions to leave, then fails)."""
    held: list[psycopg.Connection[Any]] = []
    copies: list[bool] = []
    with start_stack(StackSpec(workdir=scratch)) as stack:
        live = stack.pg.database_name("caracal_live")

        def restored(databases: Any, release: str) -> None:
            with stack.pg.connect() as conn:
                copies.append(conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                           (live,)).fetchone() is not None)
            held.append(psycopg.connect(databases["caracal"].conninfo(), autocommit=True))

        try:
            with run_pipeline(PipelineSpec(services="reference", audit_events=200,
                                           workdir=scratch), stack,
                              on_restored=restored) as state:
                assert state.errors == {}
                assert state.services.sts_url
        finally:
            for conn in held:
                conn.close()
    assert copies == [True], "on_restored came before the services' copy was made"


def test_data_loaded_is_told_by_the_first_index_build_of_its_database(scratch: Path) -> None:
    """``restore.data_loaded`` calls back once an index build in the named database has begun
    (and only then: not for another database's); a server it cannot watch never calls back,
    and raises nothing."""
    from caracal_restore.restore import data_loaded

    with postgres.embedded(workdir=scratch) as pg:
        for name in ("watched", "other"):
            pg.create_database(name)
            with pg.connect(name) as conn:
                conn.execute("CREATE TABLE t (x int)")
        seen: dict[str, Any] = {}
        watched, other = threading.Event(), threading.Event()
        with pg.connect("watched") as writer:
            writer.execute("BEGIN")
            writer.execute("INSERT INTO t VALUES (1)")  # holds the build in its first phase

            def build() -> None:
                with pg.connect("watched") as conn:
                    conn.execute("CREATE INDEX CONCURRENTLY t_x ON t (x)")
                seen["built"] = True

            with data_loaded(pg, pg.database_name("watched"), watched.set, poll=0.02), \
                    data_loaded(pg, pg.database_name("other"), other.set, poll=0.02):
                assert not watched.wait(0.3), "told before any index build"
                builder = threading.Thread(target=build)
                builder.start()
                assert watched.wait(30), "an index build under way was not seen"
                writer.execute("COMMIT")
                builder.join(30)
            assert seen.get("built")
            assert not other.is_set(), "told by another database's index build"

    unreachable = dataclasses.replace(pg, admin=PgEndpoint("127.0.0.1", 1, "postgres",
                                                           "postgres", password="x"))
    called = threading.Event()
    with data_loaded(unreachable, "watched", called.set, poll=0.01):
        time.sleep(0.1)
    assert not called.is_set()


def test_loaded_stack_is_known_before_the_run_is_ready(scratch: Path) -> None:
    """The controller's early listing: the stack it builds, or the one a pending state file
    names, once the restored data is loaded; at once (None) when nothing is built here."""
    from fixtures.environment import RunHandle, loaded_stack

    where = scratch / "early-stack"
    where.mkdir()
    described = _fake_state(where).stack
    assert loaded_stack(RunHandle()) is None  # nothing built or awaited: no wait

    handle = RunHandle(builder=threading.Thread(), early={"stack": described})
    found: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: found.update(stack=loaded_stack(handle)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive(), "answered before the restored data was loaded"
    handle.loaded.set()
    waiter.join(10)
    assert found["stack"].objects.root == where / "objects"

    handle.early = {"stack": {"not": "a stack"}}
    assert loaded_stack(handle) is None


def test_workers_start_once_the_restored_data_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller lets xdist start the workers when the run says its restored data is
    loaded, not as the restore begins (their start slowed the data load), with what the run
    said at the restore's start about the archive's reading (pure logic: the stack and the
    pipeline are stand-ins)."""
    from types import SimpleNamespace

    from fixtures import environment

    steps: list[str] = []
    begun = threading.Event()

    @contextlib.contextmanager
    def pipeline(spec: Any, stack: Any, *, on_restore: Any, on_loaded: Any,
                 on_restored: Any) -> Iterator[Any]:
        on_restore({"archive_bucket": "b", "archive_cache": "/c"})
        steps.append(f"restore begun; workers started: {begun.is_set()}")
        on_loaded()
        steps.append(f"loaded; workers started: {begun.is_set()}")
        yield "state"

    monkeypatch.setattr(environment, "start_stack", lambda spec: contextlib.nullcontext("stack"))
    monkeypatch.setattr(environment, "stack_spec", lambda cfg: None)
    monkeypatch.setattr(environment, "pipeline_spec", lambda cfg: None)
    monkeypatch.setattr(environment, "run_pipeline", pipeline)
    handle = environment.RunHandle()
    cfg = SimpleNamespace(run_state=None)
    environment._build(handle, cfg, lambda state: state, begun, None)  # type: ignore[arg-type]
    assert steps == ["restore begun; workers started: False", "loaded; workers started: True"]
    assert handle.early == {"archive_bucket": "b", "archive_cache": "/c"}
    assert handle.loaded.is_set()
    assert handle.state == "state"
    assert handle.exit_stack is not None
    handle.exit_stack.close()


def test_selects_whole_module(tmp_path: Path) -> None:
    """The restored fingerprint is taken ahead only for a run that selects all of step 1:
    its module or a directory holding it named, nothing narrowing the selection."""
    from types import SimpleNamespace

    from fixtures.environment import selects_whole

    def config(*args: str, **option: Any) -> Any:
        return SimpleNamespace(
            args=list(args), rootpath=tmp_path,
            invocation_params=SimpleNamespace(dir=tmp_path),
            option=SimpleNamespace(**{"keyword": "", "markexpr": "", "deselect": None,
                                      **option}))

    module = ("checks/restore_checklist/test_step1_postgres.py",)
    assert selects_whole(config("checks"), module)
    assert selects_whole(config("checks/restore_checklist"), module)
    assert selects_whole(config("checks/restore_checklist/test_step1_postgres.py"), module)
    assert not selects_whole(config("checks/retention"), module)
    assert not selects_whole(config("checks/restore_checklist/test_step1_postgres.py::x"),
                             module)
    assert not selects_whole(config("checks", keyword="RC-1"), module)
    assert not selects_whole(config("checks", markexpr="critical"), module)
    assert not selects_whole(config("checks", deselect=["checks/x.py::y"]), module)


def test_pending_state_tells_what_was_restored() -> None:
    """A pending ``--run-state`` file that names the restored databases and release is told
    once; anything else it says there is not."""
    from fixtures.environment import _tell_restored

    told: list[tuple[Any, str]] = []
    endpoint = PgEndpoint("127.0.0.1", 5, "caracal", "caracal_x", password="not-a-secret")
    assert _tell_restored({"databases": {"caracal": dataclasses.asdict(endpoint)},
                           "release": "1.0"}, lambda d, r: told.append((d, r)))
    assert told == [({"caracal": endpoint}, "1.0")]
    for bad in (None, True, {"release": "1.0"}, {"databases": {"caracal": {"x": 1}},
                                                 "release": "1.0"}, {"databases": [1]}):
        assert not _tell_restored(bad, lambda d, r: told.append((d, r)))
    assert len(told) == 1


def test_restored_fingerprint_taken_ahead_is_the_checks_reading(server_tmp: Path) -> None:
    """The controller's fingerprint of the restored database, taken while the services start,
    is the ``once_per_run`` result step 1 receives (equal to one taken then), and a failure
    leaves no result, so the first check that needs it takes it itself."""
    from types import SimpleNamespace

    from caracal_restore.profiles.registry import profile_for
    from fixtures import shared
    from fixtures.restore import (
        fingerprint_ahead,
        restored_fingerprint_name,
        take_restored_fingerprint,
    )

    profile = profile_for("2026.06")
    with postgres.embedded(workdir=server_tmp) as pg:
        endpoint = pg.create_database("restored")
        with pg.connect(endpoint.dbname) as conn:
            conn.execute("CREATE TABLE policies (id int PRIMARY KEY, body jsonb)")
            conn.execute("INSERT INTO policies"
                         " SELECT g, '{\"a\": 1}' FROM generate_series(1, 50) g")

        def config(folder: Path, workers: int | None = 2) -> Any:
            folder.mkdir()
            stash = pytest.Stash()
            stash[shared._DIR] = folder
            return SimpleNamespace(option=SimpleNamespace(numprocesses=workers), stash=stash)

        name = restored_fingerprint_name(profile)
        ahead = config(server_tmp / "ahead")
        thread = fingerprint_ahead(ahead, {"caracal": endpoint}, "2026.06")
        assert thread is not None
        thread.join(60)
        def again() -> dict[str, Any]:
            pytest.fail("taken again")

        value, mine = shared.once_per_run(ahead, name, again)
        assert not mine
        assert value["tables"]["policies"]["rows"] == 50
        assert value["tables"] == take_restored_fingerprint(endpoint, profile)["tables"]

        broken = config(server_tmp / "broken")
        gone = dataclasses.replace(endpoint, port=1)
        thread = fingerprint_ahead(broken, {"caracal": gone}, "2026.06")
        assert thread is not None
        thread.join(60)
        value, mine = shared.once_per_run(broken, name,
                                          lambda: {"taken": "by the check"})
        assert mine
        assert value == {"taken": "by the check"}

        assert fingerprint_ahead(config(server_tmp / "one", None), {"caracal": endpoint},
                                 "2026.06") is None  # no workers: the check takes it
        assert fingerprint_ahead(ahead, {}, "2026.06") is None
        assert fingerprint_ahead(ahead, {"caracal": endpoint}, "9.9") is None

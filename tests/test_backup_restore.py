"""Backup and restore as a run: source untouched, restore.sh-compatible bundles, once per run,
bad input restores nothing, and the work directory is kept only when asked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from caracal_restore import bundle as bundles
from caracal_restore import fingerprint as fp
from caracal_restore.environments import objectstore, postgres
from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import run_tool
from caracal_restore.environments.stack import StackSpec, start_stack
from caracal_restore.pipeline import PipelineSpec, run_pipeline
from caracal_restore.reference.deployment import build_reference
from caracal_restore.reference.generator import Volume


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


def test_restore_happens_once_under_xdist(pytester: pytest.Pytester,
                                          plugin_env: dict[str, str], scratch: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    marks = scratch / "once"
    marks.mkdir()
    monkeypatch.setenv("ONCE_DIR", str(marks))
    monkeypatch.setenv("TMPDIR", str(scratch))
    pytester.makeconftest(
        "pytest_plugins = ('fixtures.options', 'fixtures.controls', 'fixtures.evidence',"
        " 'fixtures.environment', 'fixtures.restore')\n")
    (pytester.path / "checks" / "assets").mkdir(parents=True)
    (pytester.path / "checks" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "__init__.py").write_text("")
    for n in range(4):
        (pytester.path / "checks" / "assets" / f"test_{n}.py").write_text(STATE_CHECK.format(n=n))
    result = pytester.runpytest_subprocess(
        "checks", "-n", "2", "-p", "no:cacheprovider", "--services", "none",
        "--reference-audit-events", "200", f"--alluredir={scratch / 'once-allure'}")
    result.assert_outcomes(passed=4)
    seen = [json.loads(p.read_text()) for p in marks.iterdir()]
    pids = {p.name.split("-")[0] for p in marks.iterdir()}
    assert len(pids) == 2, "the run did not use two workers"
    assert len({json.dumps(s, sort_keys=True) for s in seen}) == 1, "workers saw different runs"


def test_keep_workdir_keeps_bundle_and_data(scratch: Path) -> None:
    keep = scratch / "kept"
    keep.mkdir(mode=0o755)
    with start_stack(StackSpec(workdir=keep, keep=True)) as stack, run_pipeline(
        PipelineSpec(services="none", audit_events=200, workdir=keep, keep=True), stack,
    ) as state:
        assert not state.errors
    kept = [p.name for p in keep.iterdir()]
    assert any(n.startswith("caracal-run-") for n in kept), kept
    assert any(n.startswith("caracal-pg-") for n in kept), kept
    run_dir = next(p for p in keep.iterdir() if p.name.startswith("caracal-run-"))
    assert list((run_dir / "backups").glob("caracalBackup-*.tar.gz*"))
    assert (run_dir / "age-identity.txt").exists()

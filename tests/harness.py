"""Harness for self-tests of the checks: build a run once, copy it, break one thing, run checks.

``prepared_run`` builds a complete run (isolated stack, reference source, encrypted bundle,
restore, reference services) in the test process. ``clone_run`` makes an independent copy of
the restored environment (database via TEMPLATE, Redis from the bundle's AOF, secret store,
replay directories, optionally its own services) that a test may break freely.
``run_checks_on`` runs the real checks against a state file and returns each check's outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.environments.postgres import PostgresServer
from caracal_restore.environments.secretstore import DirSecretStore
from caracal_restore.environments.stack import IsolatedStack, StackSpec, start_stack
from caracal_restore.pipeline import PipelineSpec, run_pipeline
from caracal_restore.runstate import RunState, ServicesInfo

REPO = Path(__file__).resolve().parent.parent


def fresh_object_store_state() -> None:
    """Forget moto's in-process S3 state before building a run in this process.

    The embedded object store is an in-process moto server whose buckets outlive the server:
    a second prepared run in one process (another module's, or the same module's again after
    xdist moved between modules) must not find the first one's buckets.
    """
    from moto.s3.models import s3_backends

    s3_backends.reset()


#: Makes a fresh writable copy of a template database and returns a connection to it.
Clone = Callable[[], psycopg.Connection[Any]]


@contextlib.contextmanager
def template_copies(pg: PostgresServer, template: str, prefix: str) -> Iterator[Clone]:
    """Fresh copies of ``template`` for one defect each (``CREATE DATABASE … TEMPLATE``),
    closed and dropped at the end."""
    made: list[tuple[str, psycopg.Connection[Any]]] = []

    def make() -> psycopg.Connection[Any]:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        pg.create_database(name, template=template)
        conn = pg.connect(name)
        made.append((name, conn))
        return conn

    try:
        yield make
    finally:
        for name, conn in made:
            conn.close()
            pg.drop_database(name)


@dataclasses.dataclass
class PreparedRun:
    """A built run and the stack it lives on."""

    state: RunState
    stack: IsolatedStack
    workdir: Path


@contextlib.contextmanager
def prepared_run(*, services: str = "reference", audit_events: int = 1500,
                 **spec: Any) -> Iterator[PreparedRun]:
    """Build a full run on an embedded stack; tear it down after."""
    workdir = Path(tempfile.mkdtemp(prefix="caracal-harness-"))
    workdir.chmod(0o755)
    try:
        with start_stack(StackSpec(workdir=workdir)) as stack, run_pipeline(
            PipelineSpec(services=services, audit_events=audit_events, workdir=workdir, **spec),
            stack,
        ) as state:
            if state.errors:
                raise RuntimeError(f"the prepared run failed: {state.errors}")
            yield PreparedRun(state, stack, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@dataclasses.dataclass
class ClonedRun:
    """An independent copy of a restored environment, free to break."""

    state: RunState
    db: PgEndpoint  # superuser, writable
    redis_url: str | None
    secrets_dir: Path
    replay: dict[str, Path]

    def connect(self) -> psycopg.Connection[Any]:
        """A writable superuser connection to the copy."""
        return psycopg.connect(self.db.conninfo(), autocommit=True)

    def secrets(self) -> DirSecretStore:
        """The copy's secret store."""
        return DirSecretStore(self.secrets_dir)


@contextlib.contextmanager
def clone_run(run: PreparedRun, *, services: bool = False) -> Iterator[ClonedRun]:
    """Copy the restored environment; with ``services`` start reference services on the copy."""
    state, stack = run.state, run.stack
    suffix = uuid.uuid4().hex[:8]
    source = state.restored_databases["caracal"]
    name = f"clone_{suffix}"
    with stack.pg.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(source.dbname)))
    base = Path(tempfile.mkdtemp(prefix=f"clone-{suffix}-", dir=run.workdir))
    base.chmod(0o755)
    try:
        with contextlib.ExitStack() as exits:
            secrets_dir = base / "secrets"
            shutil.copytree(Path(state.stack["secrets"]["path"]), secrets_dir)
            store = DirSecretStore(secrets_dir)
            values = {n: store.read(n) for n in store.names()}
            redis_url = None
            redis_endpoint = None
            if state.restored_redis is not None and state.bundle is not None:
                aof = Path(state.bundle.root) / "redis" / "appendonlydir"
                server = exits.enter_context(redis_env.embedded(
                    appendonlydir=aof, workdir=run.workdir, password=values.get("redisPassword")))
                redis_endpoint = server.endpoint
                redis_url = server.endpoint.url()
            replay = {}
            for service, path in state.restored_replay.items():
                dest = base / "replay" / service
                if path:
                    shutil.copytree(path, dest)
                else:
                    dest.mkdir(parents=True)
                replay[service] = dest
            db = source.with_db(name)
            services_info = ServicesInfo(mode="none")
            if services:
                from caracal_restore.reference.deployment import start_services

                live = PgEndpoint(db.host, db.port, "caracal", name, values["postgresPassword"])
                assert redis_endpoint is not None
                running = exits.enter_context(start_services(
                    db=live, redis=redis_endpoint, secrets=values, replay=replay))
                services_info = ServicesInfo(
                    mode="reference", sts_url=running.sts_url, gateway_url=running.gateway_url,
                    audit_url=running.audit_url, upstream_url=running.upstream_url,
                    live_db=live, live_redis=redis_endpoint,
                    live_replay={k: str(v) for k, v in replay.items()})
            stack_data = json.loads(json.dumps(state.stack))
            stack_data["secrets"] = {"provider": "dir", "path": str(secrets_dir)}
            cloned = dataclasses.replace(
                state,
                stack=stack_data,
                restored_databases={**state.restored_databases, "caracal": db},
                # No scratch template: it would be named for the original restored database, but
                # the defects are injected into this clone, so scratch_db must clone the clone.
                scratch_template=None,
                restored_redis=redis_endpoint,
                restored_replay={k: str(v) for k, v in replay.items()},
                services=services_info if services else dataclasses.replace(
                    state.services, mode="none"),
            )
            yield ClonedRun(cloned, db, redis_url, secrets_dir, replay)
    finally:
        stack.pg.drop_database(name)
        shutil.rmtree(base, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One check's result in a run: status and the failure/broken message."""

    status: str  # passed | failed | broken | skipped
    message: str


def run_checks_on(state: RunState, *args: str, workdir: Path,
                  timeout: float = 600) -> dict[str, Outcome]:
    """Run the real checks against ``state``; map each check's node id (name) to its outcome."""
    tag = uuid.uuid4().hex[:8]
    state_file = state.write(workdir / f"state-{tag}.json")
    results = workdir / f"allure-{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "checks", "-p", "no:cacheprovider", "-q",
         f"--run-state={state_file}", f"--alluredir={results}",
         f"--junitxml={workdir / f'junit-{tag}.xml'}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    outcomes = read_outcomes(results)
    if not outcomes:
        raise AssertionError(f"no check ran:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    state_file.unlink()
    shutil.rmtree(results, ignore_errors=True)
    return outcomes


def read_outcomes(results: Path) -> dict[str, Outcome]:
    """Each check's outcome in an Allure results directory, by name."""
    outcomes: dict[str, Outcome] = {}
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        message = data.get("statusDetails", {}).get("message", "") or ""
        outcomes[data["name"]] = Outcome(data["status"], message)
    return outcomes

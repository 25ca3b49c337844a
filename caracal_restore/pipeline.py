"""A run, end to end: provide the source, take (or accept) a bundle, restore it, start services.

``run_pipeline`` yields a ``RunState``. A phase that fails is recorded in ``RunState.errors``
(with everything after it skipped) instead of raising, so every check that depends on it is
reported *broken* with the cause — never passed, and never a crashed run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from caracal_restore import bundle as bundles
from caracal_restore import fingerprint as fp
from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import PgEndpoint
from caracal_restore.environments.secretstore import DirSecretStore
from caracal_restore.environments.stack import IsolatedStack
from caracal_restore.errors import SuiteError
from caracal_restore.inspect import scan_ahead
from caracal_restore.profiles.registry import detect_release
from caracal_restore.redact import REDACTOR
from caracal_restore.restore import RestoredEnvironment, data_loaded, restore_bundle
from caracal_restore.retention import prefetch
from caracal_restore.runstate import BundleInfo, CanaryInputs, RunState, ServicesInfo

log = logging.getLogger(__name__)

ARCHIVE_BUCKET = "caracal-audit-archive"
BACKUP_BUCKET = "caracal-backups"
PHASES = ("source", "backup", "restore", "release", "services")


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """What the run restores and how (built from the suite's settings)."""

    source: str = "reference"  # reference | bundle
    bundle: str | None = None
    bundle_secrets: Path | None = None
    age_identity: Path | None = None
    age_recipients: tuple[str, ...] = ()
    encrypt: bool = True
    release: str = "auto"
    services: str = "reference"
    sts_url: str | None = None
    gateway_url: str | None = None
    coordinator_url: str | None = None
    #: The canary a user named for their bundle (``--canary-*``); a reference run has its own.
    canary: CanaryInputs | None = None
    seed: int = 1
    audit_events: int = 5000
    zones: int = 3
    #: The archive bucket for a reference run (None: ``caracal-audit-archive-<run id>``, so
    #: two runs sharing one object store never see each other's locked objects).
    archive_bucket: str | None = None
    archive_retention_days: int = 365
    workdir: Path | None = None
    keep: bool = False
    pg_bindir: Path | None = None
    cache_dir: Path | None = None
    redis_binary: str | None = None
    #: Release of the reference source (``auto`` = 2026.06, the primary target; ``1.0``).
    reference_release: str = "2026.06"


class _Once:
    """A callback called at most once, from whichever thread comes first (None: nothing)."""

    def __init__(self, callback: Callable[[], object] | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class _Phases:
    """Runs phases in order; after the first failure the later ones are skipped."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[bool]:
        if self.errors:
            failed = next(iter(self.errors))
            self.errors[name] = f"not run: the {failed} phase failed"
            yield False
            return
        try:
            yield True
        except (SuiteError, OSError, RuntimeError, LookupError, ValueError,
                psycopg.Error) as exc:
            self.errors[name] = REDACTOR(f"{type(exc).__name__}: {exc}")
            log.error("run phase %s failed: %s", name, self.errors[name])


@contextlib.contextmanager
def run_pipeline(spec: PipelineSpec, stack: IsolatedStack, *,
                 on_restore: Callable[[dict[str, str | None]], object] | None = None,
                 on_loaded: Callable[[], object] | None = None,
                 on_restored: Callable[[Mapping[str, PgEndpoint], str], object] | None = None,
                 ) -> Iterator[RunState]:
    """Build the run on an isolated stack; tear down what it started when the block ends.

    ``on_restore`` is called as the restore begins, with what the run's state will say about
    the archive's background reading (``archive_bucket``, ``archive_cache``), so that the
    check processes can load it before the run is ready; ``on_loaded`` once, when the restored
    data is loaded: the last database's index builds have begun (``restore.data_loaded``; they
    use one backend, and the services' start, which follows, mostly copies files: a core is
    idle, and the check processes can start then), or at the latest when the restore is
    complete; ``on_restored`` with the restored databases
    and the release once the restore is complete, its release known and the services' writable
    copy made (what it starts may then read the restored databases while the services start).
    """
    phases = _Phases()
    work = Path(tempfile.mkdtemp(prefix="caracal-run-", dir=spec.workdir))
    work.chmod(0o755)
    with contextlib.ExitStack() as exits:
        if not spec.keep:
            exits.callback(shutil.rmtree, work, True)
        source_secrets: Mapping[str, str] = {}
        canary: CanaryInputs | None = None
        reference_info: dict[str, Any] | None = None
        archive_bucket: str | None = None
        live_source: PgEndpoint | None = None  # the reference source, read only by the checks
        opened: bundles.Bundle | None = None
        restored: RestoredEnvironment | None = None
        archive_reading: prefetch.Prefetch | None = None
        scanning: scan_ahead.ScanAhead | None = None
        release = spec.release
        services = ServicesInfo(mode=spec.services)
        basis = "internal consistency"

        with phases.phase("source") as ok:
            if ok:
                if spec.source == "reference":
                    deployment, bundle_path, identity, archive_reading = _reference_backup(
                        spec, stack, work, exits)
                    source_secrets = dict(deployment.secrets)
                    archive_bucket = deployment.archive_bucket
                    live_source = deployment.owner_db
                    c = deployment.data.canary
                    canary = CanaryInputs(c.zone_id, c.application_id, c.resource_identifier,
                                          c.client_secret, tuple(c.signing_key_ids))
                    reference_info = {
                        "seed": spec.seed, "now": deployment.data.now.isoformat(),
                        "counts": dict(deployment.data.counts),
                        "dropped_partitions": list(deployment.data.dropped_partitions),
                        "export_objects": deployment.export_objects,
                    }
                else:
                    if not spec.bundle or not spec.bundle_secrets:
                        raise SuiteError("--bundle needs --bundle-secrets (the secrets backed "
                                         "up separately, one file per secret)")
                    bundle_path, identity = spec.bundle, spec.age_identity
                    source_secrets = _read_secrets(spec.bundle_secrets)
                    canary = spec.canary
        with phases.phase("backup") as ok:
            if ok:
                client = None
                if str(bundle_path).startswith("s3://") and stack.objects.provider != "dir":
                    bucket = str(bundle_path)[5:].split("/", 1)[0]
                    client = stack.objects.bucket(bucket).client  # type: ignore[attr-defined]
                opened = bundles.open_bundle(
                    bundle_path, work / "fetched", identity_file=identity,
                    object_store_client=client, endpoint_url=stack.objects.endpoint_url,
                    tools=stack.pg.tools, whole_object=stack.objects.provider == "embedded",
                )
                basis = "fingerprint" if opened.fingerprint else "internal consistency"
                if source_secrets:
                    # The opened bundle no longer changes: search it while it is restored.
                    scanning = scan_ahead.start(opened.root, source_secrets,
                                                stack.pg.tools.path("pg_restore"),
                                                work / "secret-scan")
                    exits.callback(scanning.stop)
        with phases.phase("restore") as ok:
            if ok:
                assert opened is not None
                if on_restore is not None:
                    on_restore({"archive_bucket": archive_bucket,
                                "archive_cache": str(archive_reading.folder)
                                if archive_reading is not None else None})
                loaded = _Once(on_loaded)
                with contextlib.ExitStack() as watching:
                    if on_loaded is not None and opened.databases:
                        watching.enter_context(data_loaded(
                            stack.pg, stack.pg.database_name(opened.databases[-1]), loaded))
                    restored = exits.enter_context(restore_bundle(
                        opened, stack.pg, secrets=source_secrets, secret_store=stack.secrets,
                        workdir=work, keep=spec.keep, redis_binary=spec.redis_binary,
                    ))
                loaded()
        told_restored = _Once(None)
        with phases.phase("release") as ok:
            if ok:
                assert restored is not None
                release = _release(spec.release, restored.databases["caracal"])
                told_restored = _Once(_telling(on_restored, dict(restored.databases), release))
        scratch_template: str | None = None
        with phases.phase("services") as ok:
            if ok:
                assert restored is not None
                assert opened is not None
                # Only named here: copied before the checks run if one of them writes
                # (fixtures.restore), and dropped, if it was, when the run ends.
                scratch_template = stack.pg.database_name(SCRATCH_TEMPLATE)
                exits.callback(stack.pg.drop_database, scratch_template)
                services = _services(spec, stack, opened, restored, source_secrets, work,
                                     exits, release=release, copied=told_restored)
        told_restored()  # no copy made (no reference services), or their start failed
        # Neither background reading is waited for: the check processes that need one wait
        # for its record (``prefetch.completed``, ``scan_ahead.load``).
        archive_cache = str(archive_reading.folder) if archive_reading is not None else None
        secret_scan = str(scanning.folder) if scanning is not None else None
        yield RunState(
            release=release,
            source_kind=spec.source,
            comparison_basis=basis,
            stack=stack.handoff(),
            bundle=_bundle_info(opened) if opened else None,
            restored_databases=dict(restored.databases) if restored else {},
            restored_redis=restored.redis.endpoint if restored and restored.redis else None,
            restored_replay={k: str(v) if v else None for k, v in
                             (restored.replay if restored else {}).items()},
            restore_timings=dict(restored.timings) if restored else {},
            restore_notes=restored.notes if restored else (),
            restored_at=restored.restored_at.isoformat() if restored else None,
            archive_bucket=archive_bucket,
            archive_cache=archive_cache,
            secret_scan=secret_scan,
            scratch_template=scratch_template,
            canary=canary,
            services=services,
            live_source_db=live_source,
            reference=reference_info,
            errors=phases.errors,
        )


def _reference_backup(spec: PipelineSpec, stack: IsolatedStack, work: Path,
                      exits: contextlib.ExitStack
                      ) -> tuple[Any, str, Path | None, prefetch.Prefetch]:
    """Build the reference source, back it up (encrypted unless told otherwise), upload it."""
    from caracal_restore.reference.deployment import build_reference
    from caracal_restore.reference.generator import Volume

    # The operator's archive: Object Lock with a default COMPLIANCE retention (the page's
    # "immutable archive"); the retention checks probe what the substrate really enforces.
    run_id = uuid.uuid4().hex[:10]
    archive_name = spec.archive_bucket or f"{ARCHIVE_BUCKET}-{run_id}"
    archive = stack.objects.bucket(archive_name, create=True, object_lock=True,
                                   compliance_days=spec.archive_retention_days)
    volume = Volume(zones=spec.zones, audit_events=spec.audit_events)
    # Release 1.0 reference (a minimal switch: build_reference_1_0 has the same contract).
    release = reference_release(spec)
    build: Any = build_reference
    if release == "1.0":
        from caracal_restore.reference.v1_0.deployment import build_reference_1_0

        build = build_reference_1_0
    sessions_table, agents_table = fp.RELEASE_TABLES[release]
    deployment = exits.enter_context(build(
        archive=archive, seed=spec.seed, volume=volume, workdir=spec.workdir, keep=spec.keep,
        pg_bindir=spec.pg_bindir, cache_dir=spec.cache_dir, redis_binary=spec.redis_binary,
    ))
    # The archive is complete once the source is built: read it while the backup and restore
    # run (the checks load this one reading; without it they read the archive themselves).
    archive_reading = prefetch.start(stack.objects, deployment.archive_bucket, work / "archive")
    exits.callback(archive_reading.stop)
    _keep_services_alive(deployment.owner_db, agents_table)
    out = work / "backups"
    out.mkdir()
    client = deployment.redis.client()
    try:
        def hook(db: str, conn: psycopg.Connection[Any]) -> Mapping[str, Any]:
            return fp.take_fingerprint(conn, redis_client=None, sessions_table=sessions_table,
                                       agents_table=agents_table)

        archive_path = bundles.take_backup(
            out, pg_admin=deployment.pg.admin, tools=deployment.pg.tools,
            redis_dir_provider=lambda: bundles.redis_aof_local(client, deployment.redis.datadir),
            redis_client=client, replay_dirs=dict(deployment.replay), fingerprint_hook=hook,
        )
    finally:
        client.close()
    identity: Path | None = spec.age_identity
    if spec.encrypt:
        recipients = list(spec.age_recipients)
        if not recipients:
            identity, recipient = _new_identity(work)
            recipients = [recipient]
        archive_path = bundles.encrypt_file(archive_path, recipients)
    if stack.objects.provider == "dir":
        return deployment, str(archive_path), identity, archive_reading
    # One backup bucket per run: a bundle of another run with the same stamp can never be
    # fetched in its place (put is If-None-Match, and a refusal is an error here).
    backups = f"{BACKUP_BUCKET}-{run_id}"
    store = stack.objects.bucket(backups, create=True)
    key = archive_path.name
    if not store.put(key, archive_path.read_bytes(), if_none_match=True):
        raise SuiteError(f"s3://{backups}/{key} already exists; bundles are never overwritten")
    return deployment, f"s3://{backups}/{key}", identity, archive_reading


def _telling(on_restored: Callable[[Mapping[str, PgEndpoint], str], object] | None,
             databases: Mapping[str, PgEndpoint], release: str) -> Callable[[], None] | None:
    """``on_restored`` with what it is told, its failure logged: a head start for the checks,
    never the run's failure (None: nothing to tell)."""
    if on_restored is None:
        return None

    def tell() -> None:
        try:
            on_restored(databases, release)
        except Exception:
            log.warning("on_restored failed", exc_info=True)
    return tell


def reference_release(spec: PipelineSpec) -> str:
    """The release of the reference source: ``1.0`` when asked, else 2026.06 (``auto`` too)."""
    return "1.0" if spec.reference_release == "1.0" else "2026.06"


def _keep_services_alive(owner_db: PgEndpoint, agents_table: str) -> None:
    """Heartbeat the reference's active service agents just before the backup.

    A running Coordinator keeps every live service agent's lease fresh; the reference source
    has no Coordinator between generating its data and being backed up, so without this a slow
    machine would back up service agents whose lease lapsed moments ago — a state a real
    deployment is never in, and one the sweeper controls rightly flag.
    """
    lease = dt.timedelta(seconds=120)  # SERVICE_AGENT_LEASE_SECONDS default (both releases)
    with psycopg.connect(owner_db.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET last_heartbeat_at = now(), heartbeat_deadline_at = now() + %s,"
                " last_active_at = now() WHERE lifecycle = 'service' AND status = 'active'"
            ).format(sql.Identifier(agents_table)),
            (lease,),
        )


def _new_identity(work: Path) -> tuple[Path, str]:
    """A fresh age X25519 identity for this run (the recipient the bundle is encrypted to)."""
    import os

    import pyrage

    ident = pyrage.x25519.Identity.generate()
    path = work / "age-identity.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"# created by caracal-restore for one run\n{ident}\n")
    REDACTOR.add(str(ident))
    return path, str(ident.to_public())


def _read_secrets(root: Path) -> dict[str, str]:
    store = DirSecretStore.__new__(DirSecretStore)
    store.root = root
    return {name: store.read(name) for name in store.names()}


#: A copy of the restored ``caracal`` that no check connects to, for the destructive checks'
#: ``scratch_db`` clones: PostgreSQL copies a database only while no other session is connected
#: to it, and the checks read the restored database the whole run.
SCRATCH_TEMPLATE = "caracal_scratch_template"


def _release(requested: str, db: PgEndpoint) -> str:
    """The release to check: the one named, or the one the restored ledger identifies."""
    if requested != "auto":
        return requested
    with psycopg.connect(db.conninfo(), autocommit=True) as conn:
        versions = fp.ledger(conn) or []
    return detect_release(versions)


def _bundle_info(b: bundles.Bundle) -> BundleInfo:
    return BundleInfo(
        source=b.source, archive=str(b.archive), root=str(b.root), stamp=b.stamp,
        created_at=b.created_at.isoformat(), encrypted=b.encrypted, databases=b.databases,
        has_fingerprint=b.fingerprint is not None, warnings=tuple(b.warnings),
    )


def _services(spec: PipelineSpec, stack: IsolatedStack, opened: bundles.Bundle,
              restored: RestoredEnvironment, secrets: Mapping[str, str], work: Path,
              exits: contextlib.ExitStack, *, release: str = "2026.06",
              copied: Callable[[], None] = lambda: None) -> ServicesInfo:
    """Services for the live checks, on a writable copy so the restored data stays pristine.

    ``copied`` is called once that copy is made: PostgreSQL copies a database only while no
    other session is connected to it (``CREATE DATABASE`` waits 5 s for one to leave, then
    fails), so nothing may read the restored database before then.
    """
    if spec.services == "none":
        return ServicesInfo(mode="none")
    if spec.services == "external":
        return ServicesInfo(mode="external", sts_url=spec.sts_url, gateway_url=spec.gateway_url,
                            coordinator_url=spec.coordinator_url)
    from caracal_restore.reference.deployment import start_services

    start: Any = start_services
    if release == "1.0":  # the 1.0 reference services for 1.0 data
        from caracal_restore.reference.v1_0.deployment import start_services_1_0

        start = start_services_1_0

    source = restored.databases["caracal"]
    live_name = stack.pg.create_database("caracal_live", template=source.dbname).dbname
    exits.callback(stack.pg.drop_database, live_name)
    copied()
    password = secrets.get("postgresPassword", "")
    live_db = PgEndpoint(source.host, source.port, "caracal", live_name, password)
    live_redis = exits.enter_context(redis_env.embedded(
        binary=spec.redis_binary, appendonlydir=opened.redis_aof_dir, workdir=spec.workdir,
        keep=spec.keep, password=secrets.get("redisPassword"),
    ))
    replay = {}
    for service in ("sts", "gateway"):
        dest = work / "live-replay" / service
        src = restored.replay.get(service)
        if src is not None:
            shutil.copytree(src, dest)
        else:
            dest.mkdir(parents=True)
        replay[service] = dest
    running = exits.enter_context(start(
        db=live_db, redis=live_redis.endpoint, secrets=secrets, replay=replay))
    return ServicesInfo(
        mode="reference", sts_url=running.sts_url, gateway_url=running.gateway_url,
        audit_url=running.audit_url, upstream_url=running.upstream_url, live_db=live_db,
        live_redis=live_redis.endpoint, live_replay={k: str(v) for k, v in replay.items()},
        coordinator_url=getattr(running, "coordinator_url", None),
    )


def backup_age(created_at: dt.datetime, now: dt.datetime | None = None) -> dt.timedelta:
    """How old a backup is (the RPO measure)."""
    return (now or dt.datetime.now(dt.UTC)) - created_at

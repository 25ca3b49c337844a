"""One call builds a reference source deployment of Caracal 2026.06, and starts its services.

``build_reference`` starts its own PostgreSQL and Redis (never the restore target's), generates
the release's secrets, writes the database (schema, data, chained audit evidence), exports the
audit events to the archive bucket before retention drops old partitions, publishes the Redis
streams and consumer state, and writes undelivered events into the STS and Gateway replay
volumes. ``start_services`` runs the reference STS, Gateway, audit ingestor and canary upstream
on any database/Redis/secret set — the source, or a restored copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg

from caracal_restore.environments import postgres as pg_env
from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.environments.objectstore import ObjectStore
from caracal_restore.environments.secretstore import DirSecretStore
from caracal_restore.reference import exports, redis_state, replay
from caracal_restore.reference.generator import ReferenceData, Volume, build_source_database
from caracal_restore.reference.secrets import generate_secrets

log = logging.getLogger(__name__)

#: Host name of the canary upstream in resources.upstream_url; the Gateway resolves it to
#: the loopback port the upstream listens on (like Compose service names), never off-host.
CANARY_HOST = "canary.caracal.test"
CANARY_UPSTREAM_URL = f"http://{CANARY_HOST}/echo"
OWNER = "caracal"


@dataclasses.dataclass
class ReferenceDeployment:
    """A running reference source: its servers, secrets, replay volumes and generated data."""

    pg: pg_env.PostgresServer
    redis: redis_env.RedisServer
    secrets: Mapping[str, str] = dataclasses.field(repr=False)
    secrets_dir: Path
    replay: Mapping[str, Path]  # service -> its /var/lib/caracal root (holds audit-replay/)
    data: ReferenceData
    archive_bucket: str
    export_objects: int

    @property
    def owner_db(self) -> PgEndpoint:
        """The ``caracal`` database as its owner (the identity every 2026.06 service uses)."""
        return PgEndpoint(self.pg.admin.host, self.pg.admin.port, OWNER, "caracal",
                          self.secrets["postgresPassword"])


@contextlib.contextmanager
def build_reference(
    *,
    archive: ObjectStore,
    seed: int = 1,
    volume: Volume | None = None,
    now: dt.datetime | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    pg_server: Any = None,
    pg_bindir: Path | None = None,
    cache_dir: Path | None = None,
    redis_binary: str | None = None,
    replay_events: int = 6,
) -> Iterator[ReferenceDeployment]:
    """Build a complete 2026.06 source deployment; stop its servers when the block ends."""
    volume = volume or Volume()
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    secrets = generate_secrets()
    base = Path(tempfile.mkdtemp(prefix="caracal-source-", dir=workdir))
    try:
        with contextlib.ExitStack() as stack:
            pg = stack.enter_context(pg_env.embedded(
                bindir=pg_bindir, cache_dir=cache_dir, workdir=workdir, keep=keep,
                server=pg_server,
            ))
            rs = stack.enter_context(redis_env.embedded(
                binary=redis_binary, workdir=workdir, keep=keep,
                password=secrets["redisPassword"],
            ))
            exported: list[int] = []

            def export_before_retention(conn: psycopg.Connection[Any],
                                        watermark: dt.datetime) -> None:
                summary = exports.export_hours(conn, archive, through_hour=watermark,
                                               save_watermark=False)
                exported.append(len(summary.objects))

            data = build_source_database(
                pg, seed=seed, volume=volume, secrets=secrets, now=now,
                canary_upstream_url=CANARY_UPSTREAM_URL,
                before_retention=export_before_retention,
            )
            client = rs.client()
            try:
                redis_state.provision(client)
                owner = PgEndpoint(pg.admin.host, pg.admin.port, OWNER, "caracal",
                                   secrets["postgresPassword"])
                with psycopg.connect(owner.conninfo(), autocommit=True) as conn:
                    redis_state.publish_state(
                        client, conn,
                        streams_hmac_key=bytes.fromhex(secrets["streamsHmacKey"]),
                        audit_hmac_key=bytes.fromhex(secrets["auditHmacKey"]),
                    )
            finally:
                client.close()
            replay_roots = {}
            for index, service in enumerate(("sts", "gateway")):
                root = base / "replay" / service
                root.mkdir(parents=True)
                events = replay.undelivered_events(
                    list(data.zone_ids), count=replay_events, start=now - dt.timedelta(
                        minutes=5 - index), producer=service, seed=f"{seed}")
                replay.write_replay_files(root, events, pid=4100 + index, files=2)
                replay_roots[service] = root
            secrets_dir = base / "secrets"
            store = DirSecretStore(secrets_dir)
            for name, value in secrets.items():
                store.write(name, value)
            yield ReferenceDeployment(
                pg=pg, redis=rs, secrets=secrets, secrets_dir=secrets_dir,
                replay=replay_roots, data=data, archive_bucket=archive.bucket,
                export_objects=sum(exported),
            )
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class RunningReference:
    """URLs of the reference services started on one data set."""

    sts_url: str
    gateway_url: str
    audit_url: str
    upstream_url: str


@contextlib.contextmanager
def start_services(
    *,
    db: PgEndpoint,
    redis: RedisEndpoint,
    secrets: Mapping[str, str],
    replay: Mapping[str, Path],
) -> Iterator[RunningReference]:
    """Start upstream, audit ingestor, STS and Gateway on a data set; stop them after."""
    from caracal_restore.reference.services.audit import start_audit
    from caracal_restore.reference.services.gateway import start_gateway
    from caracal_restore.reference.services.sts import start_sts
    from caracal_restore.reference.services.upstream import start_upstream

    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(start_upstream())
        audit = stack.enter_context(start_audit(pg=db, redis=redis, secrets=secrets))
        sts = stack.enter_context(start_sts(pg=db, redis=redis, secrets=secrets,
                                            replay_dir=_replay_dir(replay["sts"])))
        port = upstream.url.rsplit(":", 1)[1].rstrip("/")
        gateway = stack.enter_context(start_gateway(
            pg=db, redis=redis, secrets=secrets, replay_dir=_replay_dir(replay["gateway"]),
            sts_url=sts.url, resolve={CANARY_HOST: f"127.0.0.1:{port}"},
        ))
        yield RunningReference(sts.url, gateway.url, audit.url, upstream.url)


def _replay_dir(root: Path) -> Path:
    """The audit-replay directory inside a service's /var/lib/caracal root."""
    path = root / replay.REPLAY_SUBDIR if (root / replay.REPLAY_SUBDIR).exists() else root
    path.mkdir(parents=True, exist_ok=True)
    return path

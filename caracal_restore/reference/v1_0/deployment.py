"""One call builds a reference source deployment of Caracal 1.0, and starts its services.

``build_reference_1_0`` has the contract of ``reference.deployment.build_reference``: its own
PostgreSQL and Redis (never the restore target's), the release's secrets (17 + 8), the
database (schema, logins, data, chained evidence) with the audit events exported to the
archive bucket *before* retention drops old partitions, the Redis streams and consumer state
(1.0 groups: the Gateway's ``gateway-revocation:<host>`` created at ``$``), and undelivered
events in the STS and Gateway replay volumes. ``start_services_1_0`` runs the reference 1.0
STS, Coordinator, Gateway, the audit ingestor and the canary upstream on any data set, each
service logging in with its own role (the per-service DSNs of §15) and
``caracal.zone_id='*'``.
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
from urllib.parse import unquote, urlsplit

import psycopg

from caracal_restore.environments import postgres as pg_env
from caracal_restore.environments import redis as redis_env
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.environments.objectstore import ObjectStore
from caracal_restore.environments.secretstore import DirSecretStore
from caracal_restore.profiles.release_1_0 import PROFILE
from caracal_restore.reference import exports, redis_state, replay
from caracal_restore.reference.deployment import CANARY_HOST, CANARY_UPSTREAM_URL, OWNER
from caracal_restore.reference.gen_common import Volume
from caracal_restore.reference.v1_0.generator import ReferenceData, build_source_database
from caracal_restore.reference.v1_0.secrets import generate_secrets

log = logging.getLogger(__name__)

#: Host name of the source's Gateway container (its revocation group is per host).
SOURCE_GATEWAY_HOST = "8e41d0c7a2f5"
SOURCE_GATEWAY_GROUP = f"gateway-revocation:{SOURCE_GATEWAY_HOST}"
#: Row-level security: the service pools see every zone (FACTS-1.0 §2.2).
ALL_ZONES = "-c caracal.zone_id=*"


@dataclasses.dataclass
class ReferenceDeployment:
    """A running 1.0 reference source: servers, secrets, replay volumes, generated data."""

    pg: pg_env.PostgresServer
    redis: redis_env.RedisServer
    secrets: Mapping[str, str] = dataclasses.field(repr=False)
    secrets_dir: Path
    replay: Mapping[str, Path]  # service -> its /var/lib/caracal root (holds audit-replay/)
    data: ReferenceData
    archive_bucket: str
    export_objects: int
    release: str = "1.0"

    @property
    def owner_db(self) -> PgEndpoint:
        """The ``caracal`` database as its owner (what ``databaseUrl`` names)."""
        return PgEndpoint(self.pg.admin.host, self.pg.admin.port, OWNER, "caracal",
                          self.secrets["postgresPassword"])


def service_login(pg: PgEndpoint, secrets: Mapping[str, str], dsn_secret: str,
                  service: str) -> PgEndpoint:
    """A service's own login on ``pg``'s server and database: user and password from its DSN
    secret (whose host names the Compose service), RLS opened with ``caracal.zone_id=*``."""
    dsn = secrets.get(dsn_secret, "")
    parts = urlsplit(dsn)
    if not parts.username or parts.password is None:
        from caracal_restore.reference.services.common import StartupError

        raise StartupError(f"{service}: secret file {dsn_secret!r} is missing or not a DSN")
    return PgEndpoint(pg.host, pg.port, unquote(parts.username), pg.dbname,
                      unquote(parts.password), options=ALL_ZONES)


def provision_redis(client: Any) -> None:
    """Streams and groups of the provisioner, plus the source Gateway's per-host group."""
    redis_state.provision(client, PROFILE.streams, runtime_groups=(
        (redis_state.REVOKE_STREAM, SOURCE_GATEWAY_GROUP, "$"),))


@contextlib.contextmanager
def build_reference_1_0(
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
    """Build a complete 1.0 source deployment; stop its servers when the block ends."""
    volume = volume or Volume()
    now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    secrets = generate_secrets()
    base = Path(tempfile.mkdtemp(prefix="caracal-source-1.0-", dir=workdir))
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
                provision_redis(client)
                owner = PgEndpoint(pg.admin.host, pg.admin.port, OWNER, "caracal",
                                   secrets["postgresPassword"])
                with psycopg.connect(owner.conninfo(), autocommit=True) as conn:
                    redis_state.publish_state(
                        client, conn,
                        streams_hmac_key=bytes.fromhex(secrets["streamsHmacKey"]),
                        audit_hmac_key=bytes.fromhex(secrets["auditHmacKey"]),
                        lineage_table="authority_records", gateway_group=SOURCE_GATEWAY_GROUP,
                        coordinator_nulls="null",
                    )
            finally:
                client.close()
            replay_roots = {}
            for index, service in enumerate(("sts", "gateway")):
                root = base / "replay" / service
                root.mkdir(parents=True)
                events = replay.undelivered_events(
                    list(data.zone_ids), count=replay_events,
                    start=now - dt.timedelta(minutes=5 - index), producer=service,
                    seed=f"{seed}")
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
    """URLs of the reference 1.0 services started on one data set."""

    sts_url: str
    gateway_url: str
    audit_url: str
    upstream_url: str
    coordinator_url: str


@contextlib.contextmanager
def start_services_1_0(
    *,
    db: PgEndpoint,
    redis: RedisEndpoint,
    secrets: Mapping[str, str],
    replay: Mapping[str, Path],
    gateway_hostname: str | None = None,
) -> Iterator[RunningReference]:
    """Start upstream, audit ingestor, STS, Coordinator and Gateway; stop them after.

    ``db`` names the server and database (its login is not used: every service logs in with
    its own DSN secret's role and password).
    """
    from caracal_restore.reference.deployment import _replay_dir
    from caracal_restore.reference.services.audit import start_audit
    from caracal_restore.reference.services.coordinator import start_coordinator
    from caracal_restore.reference.services.gateway_1_0 import start_gateway
    from caracal_restore.reference.services.sts_1_0 import start_sts
    from caracal_restore.reference.services.upstream import start_upstream

    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(start_upstream())
        audit_db = service_login(db, secrets, "auditDatabaseUrl", "audit")
        audit = stack.enter_context(start_audit(pg=audit_db, redis=redis, secrets=secrets))
        sts = stack.enter_context(start_sts(pg=db, redis=redis, secrets=secrets,
                                            replay_dir=_replay_dir(replay["sts"])))
        coordinator = stack.enter_context(start_coordinator(pg=db, redis=redis, secrets=secrets,
                                                            sts_url=sts.url))
        port = upstream.url.rsplit(":", 1)[1].rstrip("/")
        gateway = stack.enter_context(start_gateway(
            pg=db, redis=redis, secrets=secrets, replay_dir=_replay_dir(replay["gateway"]),
            sts_url=sts.url, resolve={CANARY_HOST: f"127.0.0.1:{port}"},
            hostname=gateway_hostname,
        ))
        yield RunningReference(sts.url, gateway.url, audit.url, upstream.url, coordinator.url)

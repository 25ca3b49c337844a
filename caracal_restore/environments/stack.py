"""An isolated stack: one PostgreSQL, one Redis, one object store and one secret store.

``start_stack`` starts (or attaches to) all four by provider name and stops them at the end.
``IsolatedStack.handoff()`` describes a running stack as plain data so another process (a
pytest-xdist worker) can ``attach`` to it without owning it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caracal_restore.environments import objectstore, postgres, redis, secretstore
from caracal_restore.environments.base import PgEndpoint, RedisEndpoint
from caracal_restore.environments.pgbin import ClientTools


@dataclasses.dataclass(frozen=True)
class StackSpec:
    """Which provider serves each part, and their options."""

    pg_provider: str = "embedded"
    pg_admin_dsn: str | None = dataclasses.field(default=None, repr=False)
    pg_bindir: Path | None = None
    pg_min_version: int = 18
    redis_provider: str = "embedded"
    redis_url: str | None = dataclasses.field(default=None, repr=False)
    redis_server: Path | None = None
    object_store_provider: str = "embedded"
    s3_endpoint_url: str | None = None
    secret_store_provider: str = "dir"
    secret_store_prefix: str | None = None
    allow_remote: bool = False
    cache_dir: Path | None = None
    workdir: Path | None = None
    keep: bool = False


@dataclasses.dataclass
class IsolatedStack:
    """The running parts of one isolated environment."""

    pg: postgres.PostgresServer
    redis: redis.RedisServer
    objects: objectstore.ObjectStoreServer
    secrets: secretstore.SecretStore
    owner: bool = True

    def providers(self) -> dict[str, str]:
        """Provider of each part, plus what the object store really is."""
        return {
            "postgres": self.pg.provider,
            "redis": self.redis.provider,
            "object_store": f"{self.objects.provider} ({self.objects.substrate})",
            "secret_store": self.secrets.provider,
        }

    def handoff(self) -> dict[str, Any]:
        """Plain data describing the stack (holds credentials: pass it only to our workers)."""
        pg = self.pg
        return {
            "pg": {
                "provider": pg.provider,
                "admin": dataclasses.asdict(pg.admin),
                "tools": [str(pg.tools.bindir), pg.tools.major],
                "owns_cluster": pg.owns_cluster,
                "name_prefix": pg.name_prefix,
                "datadir": str(pg.datadir) if pg.datadir else None,
            },
            "redis": {
                "provider": self.redis.provider,
                "endpoint": dataclasses.asdict(self.redis.endpoint),
                "version": self.redis.version,
            },
            "objects": {
                "provider": self.objects.provider,
                "substrate": self.objects.substrate,
                "endpoint_url": self.objects.endpoint_url,
                "access_key": self.objects.access_key,
                "secret_key": self.objects.secret_key,
                "root": str(self.objects.root) if self.objects.root else None,
            },
            "secrets": _secret_store_handoff(self.secrets),
        }

    @classmethod
    def attach(cls, data: dict[str, Any]) -> IsolatedStack:
        """Rebuild a stack another process started (this process will not stop it)."""
        pgd = data["pg"]
        pg = postgres.PostgresServer(
            pgd["provider"],
            PgEndpoint(**pgd["admin"]),
            ClientTools(Path(pgd["tools"][0]), int(pgd["tools"][1])),
            owns_cluster=pgd["owns_cluster"],
            name_prefix=pgd["name_prefix"],
            datadir=Path(pgd["datadir"]) if pgd["datadir"] else None,
        )
        rd = data["redis"]
        rs = redis.RedisServer(rd["provider"], RedisEndpoint(**rd["endpoint"]), rd["version"])
        od = data["objects"]
        objects = objectstore.ObjectStoreServer(
            od["provider"], od["substrate"], od["endpoint_url"], od["access_key"],
            od["secret_key"], Path(od["root"]) if od["root"] else None,
        )
        return cls(pg, rs, objects, _secret_store_attach(data["secrets"]), owner=False)


def _secret_store_handoff(store: secretstore.SecretStore) -> dict[str, Any]:
    if isinstance(store, secretstore.DirSecretStore):
        return {"provider": "dir", "path": str(store.root)}
    if isinstance(store, secretstore.EnvFileSecretStore):
        return {"provider": "env", "path": str(store.path)}
    if isinstance(store, secretstore.AwsSecretsManagerStore):
        return {"provider": "aws-secretsmanager", "prefix": store.prefix}
    raise TypeError(f"cannot hand off {store!r}")


def _secret_store_attach(data: dict[str, Any]) -> secretstore.SecretStore:
    if data["provider"] == "dir":
        return secretstore.DirSecretStore(Path(data["path"]))
    if data["provider"] == "env":
        return secretstore.EnvFileSecretStore(Path(data["path"]))
    return secretstore.AwsSecretsManagerStore(data["prefix"])


@contextlib.contextmanager
def start_stack(spec: StackSpec) -> Iterator[IsolatedStack]:
    """Start every part; stop all of them when the block ends (also on failure)."""
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(
            postgres.provide(
                spec.pg_provider,
                min_major=spec.pg_min_version,
                bindir=spec.pg_bindir,
                cache_dir=spec.cache_dir,
                admin_dsn=spec.pg_admin_dsn,
                workdir=spec.workdir,
                keep=spec.keep,
                allow_remote=spec.allow_remote,
            )
        )
        rs = stack.enter_context(_provide_redis(spec))
        objects = stack.enter_context(
            objectstore.provide(
                spec.object_store_provider,
                endpoint_url=spec.s3_endpoint_url,
                workdir=spec.workdir,
                keep=spec.keep,
                allow_remote=spec.allow_remote,
            )
        )
        secrets = stack.enter_context(
            secretstore.provide(
                spec.secret_store_provider,
                workdir=spec.workdir,
                keep=spec.keep,
                aws_prefix=spec.secret_store_prefix,
                endpoint_url=objects.endpoint_url if objects.provider == "embedded" else None,
            )
        )
        yield IsolatedStack(pg, rs, objects, secrets)


@contextlib.contextmanager
def _provide_redis(spec: StackSpec) -> Iterator[redis.RedisServer]:
    if spec.redis_provider == "embedded":
        with redis.embedded(
            binary=str(spec.redis_server) if spec.redis_server else None,
            workdir=spec.workdir,
            keep=spec.keep,
        ) as rs:
            yield rs
    elif spec.redis_provider == "docker":
        with redis.docker() as rs:
            yield rs
    elif spec.redis_provider == "external":
        if not spec.redis_url:
            raise postgres.EnvironmentNotReady("--redis-provider external needs --redis-url")
        with redis.external(spec.redis_url, allow_remote=spec.allow_remote) as rs:
            yield rs
    else:
        raise postgres.EnvironmentNotReady(
            f"unknown Redis provider {spec.redis_provider!r}; use {redis.PROVIDERS}"
        )

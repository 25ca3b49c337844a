"""STS/Gateway audit replay volumes: the wire encoding of audit events and the writer.

An event that STS or the Gateway could not XADD to ``caracal.audit.events`` is persisted to
``<volume>/audit-replay/pending-<pid>-<unixnano>.ndjson`` (file 0600, directory 0750), one
Go ``json.Marshal(audit.Event)`` per line (FACTS-1.0 §10, §4.1). The same encoding is the
``data`` field of an audit stream message, so the stream producer in ``redis_state`` uses it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from caracal_restore.chainhash import unix_nanos
from caracal_restore.replay_files import (  # noqa: F401 - re-exported for the writer's users
    DIR_MODE,
    FILE_MODE,
    JSON_FIELDS,
    MAX_LINE_BYTES,
    NAME_PATTERN,
    REPLAY_SUBDIR,
    WIRE_FIELDS,
    WIRE_KEYS,
    ReplayEvent,
    ReplayFile,
    ReplayScan,
    parse_replay_dir,
    parse_rfc3339,
)

# ------------------------------------------------------------------------------ encoding


def go_string(value: str) -> str:
    """A JSON string literal exactly as Go's encoding/json writes it (HTML-safe escaping)."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\b\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")  # Go replaces invalid UTF-8 (lone surrogates) with U+FFFD
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it (shortest digits, plain between 1e-6 and 1e21)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"Go cannot marshal {value!r}")
    text = repr(value)
    if value == 0 or 1e-6 <= abs(value) < 1e21:
        plain = format(decimal.Decimal(text), "f")
        return plain.rstrip("0").rstrip(".") if "." in plain else plain
    return text.replace("e-0", "e-")  # Go cleans e-07 to e-7, keeps e+21


def go_json(value: Any) -> str:
    """Compact JSON of a Python value as Go marshals it (map keys sorted, HTML escaping)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        return "{" + ",".join(f"{go_string(k)}:{go_json(v)}" for k, v in items) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def compact_raw_json(text: str) -> str:
    """A ``json.RawMessage`` as Go re-emits it: whitespace removed, key order kept, HTML-escaped."""
    json.loads(text)  # Go refuses to marshal invalid raw JSON; so do we
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            literal = text[i : j + 1]
            out.append(
                literal.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
                .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
            )
            i = j + 1
        elif ch in " \t\r\n":
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def rfc3339(moment: dt.datetime) -> str:
    """Go's RFC 3339 with nanoseconds: UTC, fractional seconds trimmed of zeros, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    utc = moment.astimezone(dt.UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def wire_json(event: Mapping[str, Any]) -> bytes:
    """The exact bytes Go's ``json.Marshal(audit.Event)`` produces for an event.

    Text fields are strings (``None`` counts as empty); JSON fields are raw JSON text (kept
    in its key order, compacted) or Python values (marshalled, map keys sorted); a missing
    JSON field is ``null`` (``metadata_json`` is omitted instead); ``occurred_at`` is an
    aware datetime or an RFC 3339 string.
    """
    unknown = set(event) - WIRE_KEYS
    if unknown:
        raise ValueError(f"not audit wire keys: {sorted(unknown)}")
    parts = []
    for name, omitempty in WIRE_FIELDS:
        value = event.get(name)
        if name == "occurred_at":
            if value is None:
                raise ValueError("occurred_at is required")
            text = rfc3339(value) if isinstance(value, dt.datetime) else str(value)
            encoded = go_string(text)
        elif name in JSON_FIELDS:
            if value is None or value == "":
                if omitempty:
                    continue
                encoded = "null"
            else:
                encoded = compact_raw_json(value) if isinstance(value, str) else go_json(value)
        else:
            text = "" if value is None else str(value)
            if omitempty and not text:
                continue
            encoded = go_string(text)
        parts.append(f"{go_string(name)}:{encoded}")
    return ("{" + ",".join(parts) + "}").encode()


# ------------------------------------------------------------------------ event generation


def uuid7(moment: dt.datetime, salt: str) -> str:
    """A UUIDv7 for ``moment`` whose random bits are derived from ``salt`` (reproducible)."""
    ms = unix_nanos(moment) // 1_000_000
    rand = int.from_bytes(hashlib.sha256(salt.encode()).digest()[:10], "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def undelivered_events(
    zone_ids: Sequence[str],
    *,
    count: int,
    start: dt.datetime,
    producer: str,
    seed: str = "",
) -> list[dict[str, Any]]:
    """Reproducible wire events a producer (``sts`` or ``gateway``) has not yet delivered."""
    if not zone_ids:
        raise ValueError("undelivered events need at least one zone id")
    if producer not in {"sts", "gateway"}:
        raise ValueError(f"producer must be 'sts' or 'gateway', not {producer!r}")
    events = []
    for i in range(count):
        occurred = start + dt.timedelta(milliseconds=137 * i, microseconds=(i * 7919) % 1000)
        salt = f"{seed}:{producer}:{i}"
        deny = i % 5 == 4
        request_id = "req_" + hashlib.sha256(salt.encode()).hexdigest()[:24]
        event: dict[str, Any] = {
            "id": uuid7(occurred, salt),
            "zone_id": zone_ids[i % len(zone_ids)],
            "event_type": "token_exchange" if producer == "sts" else "gateway_resource_request",
            "request_id": request_id,
            "decision": "deny" if deny else "allow",
            "evaluation_status": "complete" if producer == "sts" else "executed",
            "determining_policies_json": [] if deny else [{"policy": "caracal-bootstrap"}],
            "diagnostics_json": [],
            "metadata_json": {"producer": producer, "replay_index": i},
            "occurred_at": occurred,
        }
        events.append(event)
    return events


# --------------------------------------------------------------------------------- writer


def write_replay_files(
    root: Path,
    events: Iterable[Mapping[str, Any]],
    *,
    pid: int,
    files: int,
    owner: tuple[int, int] | None = None,
) -> list[Path]:
    """Write events as ``<root>/audit-replay/pending-<pid>-<unixnano>.ndjson`` files.

    Events are split into at most ``files`` consecutive chunks; each file is named after the
    nanosecond just after its newest event (strictly increasing), written 0600, fsync'd,
    and the directory (0750) fsync'd, as the services do. ``owner`` (uid, gid) chowns both.
    """
    if files < 1:
        raise ValueError("files must be >= 1")
    directory = root / REPLAY_SUBDIR
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(DIR_MODE)
    lines = [(wire_json(e), _nanos_of(e.get("occurred_at"))) for e in events]
    chunks = _split(lines, min(files, len(lines)))
    written: list[Path] = []
    last_nano = 0
    for chunk in chunks:
        nano = max(max(n for _, n in chunk) + 1, last_nano + 1)
        last_nano = nano
        path = directory / f"pending-{pid}-{nano}.ndjson"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.write(fd, b"".join(line + b"\n" for line, _ in chunk))
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        if owner is not None:
            os.chown(path, *owner)
        written.append(path)
    if owner is not None:
        os.chown(directory, *owner)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return written


def _nanos_of(value: Any) -> int:
    if isinstance(value, dt.datetime):
        return unix_nanos(value)
    if isinstance(value, str):
        return unix_nanos(parse_rfc3339(value))
    raise ValueError("every replayed event needs occurred_at")


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    if parts <= 0:
        return []
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out

"""STS/Gateway audit replay files: their grammar and a read-only scanner (FACTS-1.0 §10, §20 A3).

An event that STS or the Gateway could not XADD to ``caracal.audit.events`` is persisted to
``<volume>/audit-replay/pending-<pid>-<unixnano>.ndjson`` (file 0600, directory 0750), one
Go ``json.Marshal(audit.Event)`` per line. ``parse_replay_dir`` reads such a directory and
reports every departure from that grammar; the writer lives with the reference deployment.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

#: Directory under the volume root (``/var/lib/caracal``) that holds the replay files.
REPLAY_SUBDIR = "audit-replay"
FILE_MODE = 0o600
DIR_MODE = 0o750
#: Lines longer than this are skipped by the services' replay reader.
MAX_LINE_BYTES = 1 << 20
NAME_PATTERN = re.compile(r"pending-(\d+)-(\d+)\.ndjson")

#: Wire keys in Go struct order; ``True`` marks ``omitempty`` fields (omitted when empty).
WIRE_FIELDS: tuple[tuple[str, bool], ...] = (
    ("id", False),
    ("zone_id", False),
    ("event_type", False),
    ("request_id", False),
    ("decision", False),
    ("policy_set_id", True),
    ("policy_set_version_id", True),
    ("manifest_sha", True),
    ("evaluation_status", False),
    ("determining_policies_json", False),
    ("diagnostics_json", False),
    ("metadata_json", True),
    ("occurred_at", False),
)
WIRE_KEYS = frozenset(name for name, _ in WIRE_FIELDS)
JSON_FIELDS = frozenset({"determining_policies_json", "diagnostics_json", "metadata_json"})

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(text: str) -> dt.datetime:
    """Parse an RFC 3339 timestamp (up to 9 fractional digits), truncated to microseconds."""
    match = _RFC3339.fullmatch(text)
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, frac, zone = match.groups()
    micros = int((frac or "").ljust(6, "0")[:6])
    tz = dt.UTC
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = dt.timezone(sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                       micros, tzinfo=tz).astimezone(dt.UTC)


# ----------------------------------------------------------------------------------- scan


@dataclasses.dataclass(frozen=True)
class ReplayEvent:
    """One event line of a replay file, with the fields a continuity check compares."""

    file: str
    line: int
    id: str
    zone_id: str
    event_type: str | None
    request_id: str | None
    decision: str | None
    occurred_at: dt.datetime  # UTC, truncated to microseconds like the audit table


@dataclasses.dataclass(frozen=True)
class ReplayFile:
    """One file of the replay directory as found on disk."""

    name: str
    size: int
    mode: int
    uid: int
    gid: int
    pid: int | None
    unix_nanos: int | None
    events: int


@dataclasses.dataclass(frozen=True)
class ReplayScan:
    """What a replay directory holds and every way it departs from the file grammar."""

    directory: Path
    exists: bool
    dir_mode: int | None
    files: tuple[ReplayFile, ...]
    events: tuple[ReplayEvent, ...]
    problems: tuple[str, ...]

    @property
    def event_ids(self) -> tuple[str, ...]:
        """Event ids in file-name then line order (duplicates kept)."""
        return tuple(e.id for e in self.events)


def parse_replay_dir(root: Path) -> ReplayScan:
    """Scan ``<root>/audit-replay`` and validate names, lines and keys (FACTS-1.0 §20 A3.2)."""
    directory = root / REPLAY_SUBDIR
    if not directory.is_dir():
        return ReplayScan(directory, False, None, (), (), ())
    problems: list[str] = []
    files: list[ReplayFile] = []
    events: list[ReplayEvent] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        name = path.name
        if name.startswith(".ready-"):
            continue  # transient readiness probe files
        if not path.is_file() or path.is_symlink():
            problems.append(f"{name}: not a regular file")
            continue
        match = NAME_PATTERN.fullmatch(name)
        if not match:
            problems.append(f"{name}: name is not pending-<digits>-<digits>.ndjson")
        found = _scan_file(path, problems)
        events.extend(found)
        st = path.stat()
        files.append(
            ReplayFile(
                name=name,
                size=st.st_size,
                mode=st.st_mode & 0o7777,
                uid=st.st_uid,
                gid=st.st_gid,
                pid=int(match.group(1)) if match else None,
                unix_nanos=int(match.group(2)) if match else None,
                events=len(found),
            )
        )
    dir_mode = directory.stat().st_mode & 0o7777
    return ReplayScan(directory, True, dir_mode, tuple(files), tuple(events), tuple(problems))


def _scan_file(path: Path, problems: list[str]) -> list[ReplayEvent]:
    data = path.read_bytes()
    name = path.name
    if data and not data.endswith(b"\n"):
        problems.append(f"{name}: last line is not newline-terminated (torn write?)")
    found = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        where = f"{name}:{number}"
        if len(raw) > MAX_LINE_BYTES:
            problems.append(f"{where}: line longer than 1 MiB")
            continue
        event = _parse_line(raw, where, problems)
        if event is not None:
            found.append(dataclasses.replace(event, file=name, line=number))
    return found


def _parse_line(raw: bytes, where: str, problems: list[str]) -> ReplayEvent | None:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_pairs)
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{where}: not JSON ({type(exc).__name__})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{where}: not a JSON object")
        return None
    if "\x00dup" in obj:
        problems.append(f"{where}: duplicate keys {sorted(obj.pop(chr(0) + 'dup'))}")
    extra = set(obj) - WIRE_KEYS
    if extra:
        problems.append(f"{where}: keys outside the wire set {sorted(extra)}")
    ok = True
    for key in ("id", "zone_id"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            problems.append(f"{where}: {key} missing or empty")
            ok = False
    for key in ("event_type", "request_id", "decision", "policy_set_id",
                "policy_set_version_id", "manifest_sha", "evaluation_status"):
        if key in obj and not isinstance(obj[key], str):
            problems.append(f"{where}: {key} is not a string")
    occurred = obj.get("occurred_at")
    moment = None
    if isinstance(occurred, str):
        try:
            moment = parse_rfc3339(occurred)
        except ValueError:
            moment = None
    if moment is None:
        problems.append(f"{where}: occurred_at missing or not RFC 3339")
        ok = False
    if not ok or moment is None:
        return None
    return ReplayEvent(
        file="",
        line=0,
        id=obj["id"],
        zone_id=obj["zone_id"],
        event_type=_str_or_none(obj.get("event_type")),
        request_id=_str_or_none(obj.get("request_id")),
        decision=_str_or_none(obj.get("decision")),
        occurred_at=moment,
    )


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dups = []
    for key, value in pairs:
        if key in out:
            dups.append(key)
        out[key] = value
    if dups:
        out["\x00dup"] = dups
    return out


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None

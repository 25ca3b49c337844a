"""Redis streams: the provisioner's intended max lengths and the Redis's own retention settings
(FACTS-1.0 §11.1, §11.4, §20 R3; FACTS-2026.06 §6).

The provisioner compares each stream's length with its intended bound and only prints
``warn: <stream> length N exceeds intended bound M``: it never trims. The real trimming happens
at publish time (``MAXLEN ~ 100000`` on the API and Coordinator paths). A faithful verifier
flags an over-bound stream like the provisioner does, rather than failing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from caracal_restore.profiles import StreamSpec
from caracal_restore.retention.common import Evaluation

#: Redis settings that decide whether stream entries survive (Caracal's redis.conf:
#: ``appendonly yes``, ``appendfsync everysec``, ``save 3600 1``, ``maxmemory-policy
#: noeviction``), read with CONFIG GET.
PERSISTENCE_SETTINGS = ("appendonly", "appendfsync", "save", "maxmemory", "maxmemory-policy",
                        "aof-use-rdb-preamble", "appenddirname")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_bounds(client: Any, streams: Sequence[StreamSpec]) -> Evaluation:
    """RC-RDS-1: each bounded stream's XLEN against its intended bound.

    Over the bound: a warning, as the provisioner treats it. A key of a bounded stream's name
    that is not a stream: a violation (the provisioner's ``XGROUP CREATE … MKSTREAM`` fails
    on it, so the stream and its bound cannot be put back). An absent stream is recorded (the
    provisioner recreates it empty at start).
    """
    result = Evaluation(observed={"streams": {}})
    bounded = [s for s in streams if s.intended_max_len is not None]
    if not bounded:
        raise LookupError("the release profile names no stream with an intended max length")
    for spec in bounded:
        kind = _text(client.type(spec.name))
        entry: dict[str, Any] = {"type": kind, "intended_max_len": spec.intended_max_len}
        result.observed["streams"][spec.name] = entry
        if kind == "none":
            entry["xlen"] = None
            continue
        if kind != "stream":
            result.add("not_a_stream", spec.name,
                       f"{spec.name} is a {kind}, not a stream: the provisioner cannot create "
                       f"the stream or apply its intended bound {spec.intended_max_len}")
            continue
        length = int(client.xlen(spec.name))
        entry["xlen"] = length
        assert spec.intended_max_len is not None
        if length > spec.intended_max_len:
            result.warn("over_intended_bound", spec.name,
                        f"warn: {spec.name} length {length} exceeds intended bound "
                        f"{spec.intended_max_len}")
    result.observed["streams without an intended bound"] = [
        s.name for s in streams if s.intended_max_len is None]
    return result


def persistence(client: Any) -> Evaluation:
    """RC-RDS-2: the Redis keeps streams: AOF on and no eviction (Caracal's redis.conf).

    ``maxmemory-policy`` other than ``noeviction`` lets Redis delete stream keys under memory
    pressure — pending entries and consumer groups vanish; without AOF a restart loses them.
    """
    config: dict[str, str] = {}
    for name in PERSISTENCE_SETTINGS:
        found = client.config_get(name)
        for key, value in found.items():
            config[_text(key)] = _text(value)
    info = client.info("persistence")
    result = Evaluation(observed={
        "config": config,
        "info persistence": {k: info.get(k) for k in (
            "aof_enabled", "aof_rewrite_in_progress", "aof_last_write_status",
            "rdb_last_bgsave_status", "loading")},
    })
    if "maxmemory-policy" not in config or "appendonly" not in config:
        raise LookupError(f"CONFIG GET did not return appendonly/maxmemory-policy: {config}")
    if config["maxmemory-policy"] != "noeviction":
        result.add("eviction", "maxmemory-policy",
                   f"maxmemory-policy is {config['maxmemory-policy']}, not noeviction: Redis may "
                   "evict stream keys (entries, consumer groups, pending lists) under memory "
                   "pressure")
    if config["appendonly"] != "yes":
        result.add("no_aof", "appendonly",
                   "appendonly is no: stream entries written since the last RDB save are lost "
                   "on restart, and backup.sh's appendonlydir copy has nothing to copy")
    return result

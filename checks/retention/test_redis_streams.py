"""Retention controls, row "Redis streams": provisioner intended max lengths and managed Redis
retention (FACTS-1.0 §11.1, §11.4, §20 R3).

The restored Redis (loaded from the bundle's AOF) shows the streams as they were at backup
time.
"""

from __future__ import annotations

import redis as redis_lib

from caracal_restore.profiles import Profile
from caracal_restore.retention import streams
from checks.retention.expectations import control_of
from fixtures import evidence


@control_of("RC-RDS-1")
def test_streams_within_their_intended_max_lengths(
    restored_redis: redis_lib.Redis, profile: Profile,
) -> None:
    """RC-RDS-1 Every bounded stream is a stream; a length over its intended bound is flagged.

    How the control is defined decides the verdict: the provisioner's intended max lengths are
    warning-only (it prints ``warn: <stream> length N exceeds intended bound M`` and never
    trims; FACTS-1.0 §11.1 and §20 R3: "flag (warn, like the provisioner) rather than fail").
    So an over-bound stream passes with the warning recorded — as a WARNING step and in the
    evidence — and the check is of minor severity. It fails when a bounded stream's key holds
    another type: the provisioner cannot create that stream, so its bound cannot apply.
    """
    result = streams.stream_bounds(restored_redis, profile.streams)
    evidence.json("stream lengths against intended bounds", result.evidence())
    for warning in result.warnings:
        with evidence.step(f"WARNING {warning.detail}"):
            pass
    assert result.ok, result.message()


@control_of("RC-RDS-2")
def test_redis_keeps_streams(restored_redis: redis_lib.Redis) -> None:
    """RC-RDS-2 The restored Redis persists streams (AOF on) and never evicts them (noeviction).

    Recorded as configured evidence: the persistence settings of the Redis the data was
    restored into (Caracal's redis.conf: ``appendonly yes``, ``maxmemory-policy noeviction``).
    """
    result = streams.persistence(restored_redis)
    evidence.json("redis persistence configuration", result.evidence())
    assert result.ok, result.message()

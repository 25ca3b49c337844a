"""Asset "Redis snapshot or managed backup": stream state as it was at backup time.

Redis is optional operational recovery for stream pending entries; PostgreSQL stays
authoritative. The restored Redis holds every stream with its length and last id, every
consumer group with its delivery position and pending count, as the backup recorded them —
and the outbox rows PostgreSQL will still publish are noted beside them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import redis as redis_lib

from caracal_restore import fingerprint as fp
from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.inspect.tables import shorten
from caracal_restore.profiles import Profile
from checks.assets.expectations import REDIS
from fixtures import evidence
from fixtures.controls import Severity, control


@control("AS-6", feature=REDIS, grade="verified", severity=Severity.NORMAL)
def test_redis_streams_are_as_at_backup(profile: Profile, restored_redis: redis_lib.Redis,
                                        bundle_fingerprint: Mapping[str, Any] | None,
                                        restored_conn: psycopg.Connection[Any]) -> None:
    """AS-6 Streams, consumer groups and pending entries equal the backup's; outboxes noted."""
    actual = fp.redis_stream_state(restored_redis)
    expected = bundle_fingerprint.get("redis") if bundle_fingerprint else None
    problems = inspect_assets.provisioned_missing(actual, [(s.name, s.groups)
                                                           for s in profile.streams])
    if expected is not None:
        problems += inspect_assets.compare_redis(expected, actual)
    evidence.json("redis streams", {
        "basis": "fingerprint.json redis section" if expected is not None else
                 "no Redis state recorded in the bundle: only the provisioned streams and "
                 "groups are checked",
        "backup": expected, "restored": actual})
    evidence.json("postgres outboxes (authoritative; will publish again)",
                  inspect_assets.outbox_backlog(restored_conn))
    assert not problems, (
        f"the restored Redis differs from the backup in {len(problems)} place(s): "
        f"{shorten(problems)}")

"""Asset "STS/Gateway replay volumes": audit events waiting on disk survive the restore.

Offline: the restored replay directories hold exactly the bundle's files, byte for byte, and
every line is a valid replay record. Live: once the services start on the restored data,
every event in those files reaches audit_events exactly once, with the same fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from operator import attrgetter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib

from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.inspect.tables import shorten
from caracal_restore.runstate import RunState, ServicesInfo
from checks.assets.expectations import INGEST_TIMEOUT_S, REPLAY, REPLAY_VOLUMES, ReplayVolume
from fixtures import evidence
from fixtures.controls import Severity, control


def _backup_audit_stream_id(fingerprint: Mapping[str, Any] | None) -> str | None:
    """The audit stream's last id when the backup was taken (entries after it are replays)."""
    streams = (fingerprint or {}).get("redis") or {}
    return streams.get(inspect_assets.AUDIT_STREAM, {}).get("last_generated_id")


def _bundle_root(run_state: RunState) -> Path:
    if run_state.bundle is None:
        raise CannotEvaluate("the run has no opened bundle to compare the replay files with")
    return Path(run_state.bundle.root)


@control("AS-4", feature=REPLAY, grade="verified", severity=Severity.CRITICAL)
@pytest.mark.parametrize("volume", REPLAY_VOLUMES, ids=attrgetter("clause"))
def test_replay_files_are_restored(volume: ReplayVolume, run_state: RunState) -> None:
    """AS-4 The restored replay volume holds the bundle's files, unchanged and well formed."""
    seen = inspect_assets.compare_replay(_bundle_root(run_state), volume.service,
                                         run_state.restored_replay.get(volume.service))
    evidence.json("replay files: bundle and restored", dataclasses.asdict(seen))
    assert not seen.findings, (
        f"the {volume.service} replay volume is not restored as backed up: "
        f"{shorten(list(seen.findings))}")


@control("AS-5", feature=REPLAY, grade="demonstrated", severity=Severity.CRITICAL)
def test_replayed_events_are_ingested_once(live_services: ServicesInfo, run_state: RunState,
                                           bundle_fingerprint: Mapping[str, Any] | None
                                           ) -> None:
    """AS-5 With services running, every replayed event reaches audit_events exactly once."""
    events, problems = inspect_assets.bundle_replay_events(_bundle_root(run_state))
    if not events:
        pytest.skip("not applicable: the bundle's replay volumes hold no event to replay"
                    + (f" ({'; '.join(problems)})" if problems else ""))
    database = live_services.live_db or run_state.restored_databases["caracal"]
    live_redis = (redis_lib.Redis.from_url(live_services.live_redis.url())
                  if live_services.live_redis is not None else None)
    try:
        seen = inspect_assets.wait_for_ingestion(
            lambda: psycopg.connect(database.read_only().conninfo(), autocommit=True), events,
            timeout=INGEST_TIMEOUT_S, settled=inspect_assets.pipeline_settled(
                live_redis, live_services.live_replay, _backup_audit_stream_id(bundle_fingerprint))
            if live_redis is not None else None)
    finally:
        if live_redis is not None:
            live_redis.close()
    leftover = inspect_assets.leftover_replay_files(live_services.live_replay)
    evidence.json("replayed events in audit_events", {
        "database": database.where, **dataclasses.asdict(seen),
        "replay_files_left_in_live_volumes": leftover})
    assert not seen.missing, (
        f"{len(seen.missing)} of {seen.events} replayed events are not in audit_events of "
        f"{database.where} ({seen.ended} after {seen.waited_s:.1f}s, deadline "
        f"{seen.timeout_s:.0f}s): {shorten(list(seen.missing))}")
    assert not seen.duplicated, (
        f"replayed events ingested more than once: {shorten(list(seen.duplicated))}")
    assert not seen.mismatched, (
        f"replayed events stored differently: {shorten(list(seen.mismatched))}")
    assert not leftover, (f"replay files still waiting after every event was ingested: "
                          f"{leftover}; a service deletes a file once every line is sent")

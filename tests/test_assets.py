"""Self-tests of the asset checks (Postgres database, runtime secrets, replay volumes, Redis
snapshot, audit exports, encrypted backup).

One prepared run (with reference services) is shared by the module. The baseline runs every
asset check on it — encryption required — and all pass. Each scenario then breaks things in a
clone of the restored environment (rows, a secret, a replay file, a stream entry, an archive
object, the artifact's encryption; a secret planted in a copy of the bundle), runs the real
checks, and shows the guarding check fails naming the cause while the others pass. One clone
carries several defects only when their guarding checks are disjoint (asserted below).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
import redis as redis_lib

from caracal_restore.inspect import assets as inspect_assets
from caracal_restore.parquet_export import object_key
from caracal_restore.runstate import RunState
from caracal_restore.waiting import until
from tests.harness import ClonedRun, Outcome, PreparedRun, clone_run, prepared_run, run_checks_on

#: The asset modules (run_checks_on always collects checks/, so select them with -k).
MODULES = ("test_postgres_database", "test_runtime_secrets", "test_replay_volumes",
           "test_redis_snapshot", "test_audit_export_archive", "test_encrypted_backup")
ASSETS = " or ".join(MODULES)
OFFLINE = f"({ASSETS}) and not test_replayed_events_are_ingested_once"
ALL_ASSETS = {
    "test_every_database_is_restored_row_for_row",
    "test_secret_store_holds_the_inventory",
    "test_no_secret_is_inside_the_bundle",
    "test_replay_files_are_restored[AS-4.sts]",
    "test_replay_files_are_restored[AS-4.gateway]",
    "test_replayed_events_are_ingested_once",
    "test_redis_streams_are_as_at_backup",
    "test_every_exported_hour_is_in_the_archive",
    "test_backup_is_encrypted_when_required",
}
REVOKE = "caracal.sessions.revoke"


@pytest.fixture(scope="module")
def run() -> Iterator[PreparedRun]:
    """One full run with reference services (a small audit history keeps the archive small)."""
    # Its own archive bucket: moto keeps buckets per process, and another module's run in this
    # process may have filled (and locked) the default one.
    with prepared_run(services="reference", audit_events=600,
                      archive_bucket=f"caracal-audit-archive-{uuid.uuid4().hex[:8]}") as prepared:
        yield prepared


def assert_only(outcomes: dict[str, Outcome], expected: Mapping[str, tuple[str, ...]],
                ran: set[str]) -> None:
    """The expected checks failed naming every phrase; all others in ``ran`` passed."""
    __tracebackhide__ = True
    assert set(outcomes) == ran, sorted(outcomes)
    for name, phrases in expected.items():
        got = outcomes[name]
        assert got.status == "failed", f"{name}: {got}"
        missing = [p for p in phrases if p not in got.message]
        assert not missing, f"{name}: message lacks {missing}: {got.message}"
    others = {n: o for n, o in outcomes.items() if n not in expected and o.status != "passed"}
    assert not others, f"other checks did not pass: {others}"


def test_every_asset_check_passes_on_the_prepared_run(run: PreparedRun, tmp_path: Path) -> None:
    """Baseline: all asset checks pass, live ingestion and required encryption included."""
    outcomes = run_checks_on(run.state, "-k", ASSETS, "--require-encryption", workdir=tmp_path)
    assert_only(outcomes, {}, ALL_ASSETS)


# ------------------------------------------------------------------------- fault injection

#: Breaks one thing in a clone; returns a changed run state when the defect lives there.
Breaker = Callable[[ClonedRun, PreparedRun, Path, RunState], "RunState | None"]


@dataclasses.dataclass(frozen=True)
class Defect:
    """One injected defect and the check that must fail on it (with phrases it names)."""

    name: str
    breaker: Breaker = dataclasses.field(repr=False)
    expected: Mapping[str, tuple[str, ...]] = dataclasses.field(repr=False)
    args: tuple[str, ...] = ()


def _rows_deleted(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    with c.connect() as conn:
        conn.execute("DELETE FROM agent_topology")


def _secret_removed(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    (c.secrets().root / "metricsBearer").unlink()


def _secret_in_bundle(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> RunState:
    assert state.bundle is not None
    root = tmp / "bundle" / Path(state.bundle.root).name
    shutil.copytree(state.bundle.root, root)
    password = c.secrets().read("postgresPassword")
    with (root / "postgres" / "globals.sql").open("a") as fh:
        fh.write(f"ALTER ROLE caracal WITH LOGIN PASSWORD '{password}';\n")
    return dataclasses.replace(state, bundle=dataclasses.replace(state.bundle, root=str(root)))


def _replay_file_deleted(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    files = sorted((c.replay["sts"] / "audit-replay").glob("pending-*.ndjson"))
    assert files, "the prepared run has no STS replay file to delete"
    files[0].unlink()


def _replay_file_torn(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    files = sorted((c.replay["gateway"] / "audit-replay").glob("pending-*.ndjson"))
    assert files, "the prepared run has no Gateway replay file to tear"
    data = files[0].read_bytes()
    files[0].chmod(0o600)
    files[0].write_bytes(data[: len(data) // 2])


def _redis(c: ClonedRun) -> redis_lib.Redis:
    assert c.redis_url is not None
    return redis_lib.Redis.from_url(c.redis_url)


def _stream_entry_deleted(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    client = _redis(c)
    try:
        first = client.xrange(REVOKE, count=1)
        assert first, f"{REVOKE} is empty in the prepared run"
        client.xdel(REVOKE, first[0][0])  # type: ignore[arg-type]
    finally:
        client.close()


def _pending_acked(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    client = _redis(c)
    try:
        pending = client.xpending_range(REVOKE, "sts-revocation", min="-", max="+", count=1)
        assert pending, "sts-revocation has no pending entry in the prepared run"
        client.xack(REVOKE, "sts-revocation", pending[0]["message_id"])
    finally:
        client.close()


def _export_missing(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> RunState:
    """Copy the archive to a new bucket, leaving out the object of one hour with rows."""
    with c.connect() as conn:
        row = conn.execute(
            "SELECT date_trunc('hour', max(ingested_at) AT TIME ZONE 'UTC') FROM audit_events"
            " WHERE ingested_at < (SELECT last_exported_hour + interval '1 hour'"
            " FROM audit_export_watermark WHERE name = 'parquet-hourly')").fetchone()
    assert row is not None, "no audit row up to the export watermark"
    assert row[0] is not None, "no audit row up to the export watermark"
    victim = object_key(row[0].replace(tzinfo=dt.UTC))
    assert state.archive_bucket is not None
    source = run.stack.objects.bucket(state.archive_bucket)
    name = f"archive-copy-{uuid.uuid4().hex[:8]}"
    copy = run.stack.objects.bucket(name, create=True)
    client = getattr(copy, "client", None)
    for info in source.list():
        if info.key == victim:
            continue
        if client is not None:
            client.copy_object(Bucket=name, Key=info.key,
                               CopySource={"Bucket": state.archive_bucket, "Key": info.key})
        else:
            copy.put(info.key, source.get(info.key))
    return dataclasses.replace(state, archive_bucket=name)


def _artifact_plain(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> RunState:
    """Put the decrypted tar.gz where a backup is fetched from; the state still says
    'encrypted', so only a check that reads the artifact can tell."""
    assert state.bundle is not None
    key = f"plain-{uuid.uuid4().hex[:8]}-{Path(state.bundle.archive).name}"
    bucket = state.bundle.source[len("s3://"):].split("/", 1)[0]  # this run's backup bucket
    store = run.stack.objects.bucket(bucket)
    store.put(key, Path(state.bundle.archive).read_bytes())
    return dataclasses.replace(state, bundle=dataclasses.replace(
        state.bundle, source=f"s3://{bucket}/{key}", encrypted=True))


def _no_fingerprint_rows_deleted(c: ClonedRun, run: PreparedRun, tmp: Path,
                                 state: RunState) -> RunState:
    """A bundle as Caracal's backup.sh writes it (no fingerprint.json), and rows lost."""
    _rows_deleted(c, run, tmp, state)
    assert state.bundle is not None
    root = tmp / "plain-bundle" / Path(state.bundle.root).name
    shutil.copytree(state.bundle.root, root, ignore=shutil.ignore_patterns("fingerprint.json"))
    return dataclasses.replace(state, comparison_basis="internal consistency",
                               bundle=dataclasses.replace(state.bundle, root=str(root),
                                                          has_fingerprint=False))


DEFECTS = (
    Defect("rows-deleted", _rows_deleted, {
        "test_every_database_is_restored_row_for_row": (
            "caracal.agent_topology", "rows in the source, 0 after restore")}),
    Defect("no-fingerprint-rows-deleted", _no_fingerprint_rows_deleted, {
        "test_every_database_is_restored_row_for_row": (
            "compared with the dump", "caracal.agent_topology")}),
    Defect("secret-removed", _secret_removed, {
        "test_secret_store_holds_the_inventory": ("metricsBearer",)}),
    Defect("secret-in-bundle", _secret_in_bundle, {
        "test_no_secret_is_inside_the_bundle": ("postgresPassword", "postgres/globals.sql")}),
    Defect("replay-file-deleted", _replay_file_deleted, {
        "test_replay_files_are_restored[AS-4.sts]": ("is in the bundle but not restored",)}),
    Defect("replay-file-torn", _replay_file_torn, {
        "test_replay_files_are_restored[AS-4.gateway]": ("differs from the bundle's copy",
                                                         "not newline-terminated")}),
    Defect("stream-entry-deleted", _stream_entry_deleted, {
        "test_redis_streams_are_as_at_backup": (f"{REVOKE}: length",)}),
    Defect("pending-entry-acked", _pending_acked, {
        "test_redis_streams_are_as_at_backup": ("group sts-revocation pending",)}),
    Defect("export-object-missing", _export_missing, {
        "test_every_exported_hour_is_in_the_archive": ("have no object in archive-copy-",
                                                       ".parquet")}),
    Defect("artifact-not-encrypted", _artifact_plain, {
        "test_backup_is_encrypted_when_required": ("gzip (not encrypted)",
                                                   "--require-encryption is true")},
           args=("--require-encryption",)),
)
_BY_NAME = {d.name: d for d in DEFECTS}
SCENARIOS: dict[str, tuple[str, ...]] = {
    "one-per-asset": ("rows-deleted", "secret-removed", "secret-in-bundle",
                      "replay-file-deleted", "stream-entry-deleted", "export-object-missing",
                      "artifact-not-encrypted"),
    "second-kind": ("replay-file-torn", "pending-entry-acked"),
    "no-fingerprint": ("no-fingerprint-rows-deleted",),
}


def test_scenarios_cover_every_defect_once_with_disjoint_checks() -> None:
    """Every defect is injected exactly once, never beside another guarded by the same check."""
    listed = [name for names in SCENARIOS.values() for name in names]
    assert sorted(listed) == sorted(_BY_NAME)
    for scenario, names in SCENARIOS.items():
        checks = [check for name in names for check in _BY_NAME[name].expected]
        assert len(checks) == len(set(checks)), scenario


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_guarding_check_fires_and_only_it(scenario: str, run: PreparedRun,
                                               tmp_path: Path) -> None:
    """Break things in a clone: each guarding check fails naming its cause, the others pass."""
    expected: dict[str, tuple[str, ...]] = {}
    args: list[str] = []
    with clone_run(run) as c:
        state = c.state
        for name in SCENARIOS[scenario]:
            defect = _BY_NAME[name]
            state = defect.breaker(c, run, tmp_path, state) or state
            expected.update(defect.expected)
            args += defect.args
        outcomes = run_checks_on(state, "-k", OFFLINE, *args, workdir=tmp_path)
    assert_only(outcomes, expected, ALL_ASSETS - {"test_replayed_events_are_ingested_once"})


def test_missing_replayed_event_fails_the_live_check(run: PreparedRun, tmp_path: Path) -> None:
    """Services replay the restored files; an event that never lands in audit_events is named."""
    assert run.state.bundle is not None
    events, _problems = inspect_assets.bundle_replay_events(Path(run.state.bundle.root))
    assert events, "the prepared run's bundle holds no replay event"
    with clone_run(run, services=True) as c:
        with c.connect() as conn:
            until(lambda: conn.execute("SELECT count(DISTINCT id) FROM audit_events WHERE"
                                       " id = ANY(%s)", ([e.id for e in events],)
                                       ).fetchone()[0] == len(events),  # type: ignore[index]
                  timeout=60, interval=0.2, transient=(psycopg.OperationalError,),
                  what="the clone's services ingest the replayed events")
            conn.execute("DELETE FROM audit_events WHERE id = %s", (events[0].id,))
        outcomes = run_checks_on(c.state, "-k", "test_replayed_events_are_ingested_once",
                                 workdir=tmp_path)
    got = outcomes["test_replayed_events_are_ingested_once"]
    assert got.status == "failed", got
    assert events[0].id in got.message, got.message
    assert "pipeline settled" in got.message, got.message  # decided without waiting it out

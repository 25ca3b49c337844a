"""Self-tests of the retention-controls checks: each injected violation fires its own check only.

One run is built for the module (reference source, encrypted bundle, restore; no services).
``SCENARIOS`` is the table of injections: each copies the restored environment
(``clone_run``), an archive bucket or the bundle — or changes only a setting — and injects
exactly one violation. The real retention checks then run on every scenario in a subprocess
(a few at a time), and each scenario asserts that its targeted check failed with a message
naming the violation while every other retention check passed. The clean run is a scenario
too. The embedded object store (``moto+compliance-lock``) enforces COMPLIANCE retention, so
RC-ARC-1 is judged on it; that the check is *broken*, never passed, on a substrate that does
not enforce Object Lock (plain moto) is unit-tested at the end with the other pure verdicts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from caracal_restore.environments.objectstore import ImmutabilityProbe
from caracal_restore.parquet_export import ArchiveIndex, hour_of_key
from caracal_restore.retention import archive, backups, common, streams
from caracal_restore.retention.exports import read_index
from caracal_restore.runstate import RunState
from checks.retention.expectations import CONTROLS
from tests.conftest import run_checks
from tests.harness import Outcome, PreparedRun, clone_run, prepared_run

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
#: The retention checks only; hypothesis' plugin is not needed and costs seconds per run.
SELECT = ("-k", "retention", "-p", "no:hypothesispytest")
MODULES = ("test_audit_database", "test_audit_exports", "test_coordinator_data",
           "test_redis_streams", "test_backups")
PARALLEL_RUNS = 3
#: Controls release 2026.06 does not have: skipped here as not applicable; their violations
#: and guards are injected on a 1.0 run (tests/test_retention_1_0.py).
ONLY_AT_1_0 = frozenset({"RC-CRD-4", "RC-CRD-5"})
NOT_APPLICABLE = "not applicable: release 2026.06 has no "


def _check_names() -> dict[str, str]:
    """Control clause -> check function name, read from the check modules' markers."""
    out: dict[str, str] = {}
    for module in MODULES:
        mod = importlib.import_module(f"checks.retention.{module}")
        for name, func in vars(mod).items():
            if name.startswith("test_") and callable(func):
                marks = [m for m in getattr(func, "pytestmark", []) if m.name == "control"]
                assert len(marks) == 1, f"{name}: {len(marks)} control marks"
                out[str(marks[0].args[0])] = name
    return out


CHECKS = _check_names()


# ------------------------------------------------------------------------- the scenarios


@dataclasses.dataclass
class Context:
    """What an injection may use: the run, its archive, the backup time, a cleanup stack."""

    run: PreparedRun
    archive: ArchiveIndex
    backup_at: dt.datetime
    stack: contextlib.ExitStack

    def clone(self) -> Any:
        """An independent copy of the restored environment (torn down after the runs)."""
        return self.stack.enter_context(clone_run(self.run))

    def scratch(self, prefix: str) -> Path:
        """A directory removed after the runs."""
        path = self.run.workdir / f"{prefix}-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        self.stack.callback(shutil.rmtree, path, True)
        return path

    def archive_copy(self, *, skip: frozenset[str] = frozenset(),
                     twice: frozenset[str] = frozenset(), default_retention: bool = True
                     ) -> RunState:
        """The run's state pointed at a copy of the archive bucket (Object Lock on, with the
        source's default COMPLIANCE retention unless told otherwise; some keys left out or
        written twice)."""
        objects = self.run.stack.objects
        source = objects.bucket(_archive_bucket(self.run.state))
        conf = source.bucket_lock_configuration() or {}
        days = conf.get("Rule", {}).get("DefaultRetention", {}).get("Days")
        assert days, f"the source archive has no default retention in days: {conf}"
        name = f"archive-copy-{uuid.uuid4().hex[:8]}"
        target = objects.bucket(name, create=True, object_lock=True,
                                compliance_days=int(days) if default_retention else None)
        for info in source.list("audit/"):
            if info.key in skip:
                continue
            data = source.get(info.key)
            target.put(info.key, data)
            if info.key in twice:
                target.put(info.key, data)
        return dataclasses.replace(self.run.state, archive_bucket=name)


Injection = Callable[[Context], tuple[RunState, tuple[str, ...]]]


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One injected violation, and the check (clause -> phrase of its message) it must fail."""

    id: str
    inject: Injection = dataclasses.field(repr=False)
    fails: Mapping[str, str]


def _archive_bucket(state: RunState) -> str:
    assert state.archive_bucket is not None
    return state.archive_bucket


def _sql(conn_of: Any, statement: str, params: tuple[Any, ...] = ()) -> int:
    with conn_of.connect() as conn:
        return int(conn.execute(statement, params).rowcount)


def clean(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """Nothing injected."""
    return ctx.run.state, ()


def old_row_left_behind(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An event retention dropped is back (it lands in the default partition)."""
    clone = ctx.clone()
    with clone.connect() as conn:
        present = {(z, int(q)) for z, q in conn.execute(
            "SELECT zone_id, chain_seq FROM audit_events").fetchall()}
        (zone, seq), row = min(((i, r) for i, r in ctx.archive.rows.items() if i not in present),
                               key=lambda item: item[1].time_ms)
        prev = ctx.archive.rows.get((zone, seq - 1))
        occurred = EPOCH + dt.timedelta(milliseconds=row.time_ms)
        hour = hour_of_key(row.key)
        assert hour is not None
        ingested = min(max(occurred, hour), hour + dt.timedelta(minutes=59))
        conn.execute(
            "INSERT INTO audit_events (id, zone_id, event_type, request_id, decision,"
            " occurred_at, ingested_at, content_sha256, prev_content_sha256, chain_hmac,"
            " chain_seq) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (row.event_id, zone, row.event_type, row.request_id or None, row.decision or None,
             occurred, ingested, row.content_sha256, prev.content_sha256 if prev else None,
             row.chain_hmac, seq))
        where = conn.execute("SELECT tableoid::regclass::text FROM audit_events WHERE id = %s",
                             (row.event_id,)).fetchone()
    assert where == ("audit_events_default",)
    return clone.state, ()


def expired_partition_kept(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """A monthly partition of January 2024, long past the window, exists (empty)."""
    clone = ctx.clone()
    _sql(clone, "CREATE TABLE audit_events_y2024m01 PARTITION OF audit_events FOR VALUES"
                " FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00')")
    return clone.state, ()


def _ahead(ctx: Context, months: int) -> dt.datetime:
    return common.add_months(common.month_start(ctx.backup_at), months)


def future_partition_missing(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The partition of the backup month + 3 was never created."""
    clone = ctx.clone()
    month = _ahead(ctx, 3)
    _sql(clone, f"DROP TABLE audit_events_y{month.year:04d}m{month.month:02d}")
    return clone.state, ()


def default_row_in_future_month(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An event dated 5 months ahead (chained after a zone's head) lands in the default."""
    clone = ctx.clone()
    with clone.connect() as conn:
        found = conn.execute("SELECT zone_id, chain_seq, content_sha256 FROM audit_events"
                             " ORDER BY chain_seq DESC LIMIT 1").fetchone()
        assert found is not None
        zone, seq, content = found
        conn.execute(
            "INSERT INTO audit_events (id, zone_id, event_type, decision, occurred_at,"
            " content_sha256, prev_content_sha256, chain_hmac, chain_seq)"
            " VALUES (%s, %s, 'token_exchange', 'allow', %s, %s, %s, '', %s)",
            (str(uuid.uuid4()), zone, _ahead(ctx, 5) + dt.timedelta(days=3), "0" * 64, content,
             seq + 1))
    return clone.state, ()


def exported_hour_deleted(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An exported hour four months before the backup is deleted from PostgreSQL by hand."""
    target = ctx.backup_at - dt.timedelta(days=120)
    hour = min((o.hour for o in ctx.archive.objects if o.hour is not None and o.rows),
               key=lambda h: abs(h - target))
    clone = ctx.clone()
    deleted = _sql(clone, "DELETE FROM audit_events WHERE ingested_at >= %s"
                          " AND ingested_at < %s", (hour, hour + dt.timedelta(hours=1)))
    assert deleted > 0
    return clone.state, ()


def watermark_moved(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The restored watermark is five hours behind the source's."""
    clone = ctx.clone()
    _sql(clone, "UPDATE audit_export_watermark SET last_exported_hour = last_exported_hour"
                " - interval '5 hours' WHERE name = 'parquet-hourly'")
    return clone.state, ()


def _newest_object(ctx: Context) -> str:
    dated = [(o.hour, o.key) for o in ctx.archive.objects if o.hour is not None and o.rows]
    return max(dated)[1]


def export_hour_missing(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The watermark hour's object is gone (the newest: no hole inside the exported chain)."""
    return ctx.archive_copy(skip=frozenset({_newest_object(ctx)})), ()


def row_in_another_hour(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """A restored row's ingested_at moved to a later exported hour: the object of its new hour
    does not hold it, and the object that does is named with the row's (moved) ingestion time."""
    hours = {o.hour for o in ctx.archive.objects if o.hour is not None}
    clone = ctx.clone()
    with clone.connect() as conn:
        present = {(z, int(q)) for z, q in conn.execute(
            "SELECT zone_id::text, chain_seq FROM audit_events").fetchall()}
        # A surviving row of an hour with a later exported hour.
        later = {h: min((n for n in hours if h < n), default=None) for h in hours}
        (zone, seq), target = next(
            (ident, later[hour]) for ident, row in ctx.archive.rows.items()
            if ident in present and (hour := hour_of_key(row.key)) is not None
            and later.get(hour) is not None)
        assert target is not None
        moved = conn.execute(
            "UPDATE audit_events SET ingested_at = %s + (ingested_at - date_trunc('hour',"
            " ingested_at)) WHERE zone_id = %s AND chain_seq = %s", (target, zone, seq)).rowcount
        assert moved == 1
    return clone.state, ()


def wrong_hmac_key(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The restored AUDIT_HMAC_KEY is not the key the chain was written with."""
    clone = ctx.clone()
    clone.secrets().write("auditHmacKey", secrets.token_hex(32))
    return clone.state, ()


def aged_out_before_export(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The three oldest hours were never exported, and retention has dropped their rows."""
    dated = sorted((o.hour, o.key) for o in ctx.archive.objects if o.hour is not None)
    return ctx.archive_copy(skip=frozenset(key for _hour, key in dated[:3])), ()


def _middle_object(ctx: Context) -> str:
    return ctx.archive.objects[len(ctx.archive.objects) // 2].key


def object_overwritten(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """One export object was written a second time (same bytes)."""
    return ctx.archive_copy(twice=frozenset({_middle_object(ctx)})), ()


def unlocked_archive(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The archive bucket has Object Lock enabled but no default retention rule."""
    return ctx.archive_copy(default_retention=False), ()


def _first_id(clone: Any, query: str) -> str:
    with clone.connect() as conn:
        row = conn.execute(query).fetchone()
    assert row is not None, query
    return str(row[0])


ACTIVE_EDGE = "SELECT id FROM delegation_edges WHERE status = 'active' ORDER BY id LIMIT 1"
PUBLISHED = ("SELECT id FROM caracal_outbox WHERE producer = 'coordinator'"
             " AND status = 'published' ORDER BY id LIMIT 1")


def old_terminal_edge(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An edge revoked 200 days before the backup is still there."""
    clone = ctx.clone()
    when = ctx.backup_at - dt.timedelta(days=200)
    _sql(clone, "UPDATE delegation_edges SET status = 'revoked', revoked_at = %s,"
                " updated_at = %s WHERE id = %s", (when, when, _first_id(clone, ACTIVE_EDGE)))
    return clone.state, ()


def dead_outbox_row_kept(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """A Coordinator outbox row dead for 30 days is still there (06.21 deletes dead rows)."""
    clone = ctx.clone()
    _sql(clone, "UPDATE caracal_outbox SET status = 'dead', updated_at = %s WHERE id = %s",
         (ctx.backup_at - dt.timedelta(days=30), _first_id(clone, PUBLISHED)))
    return clone.state, ()


def old_parent_edge_with_active_child(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An edge revoked 200 days ago that an active, unexpired edge names as its parent: 06.21
    has no active-child guard, so it should have been deleted all the same."""
    clone = ctx.clone()
    with clone.connect() as conn:
        row = conn.execute(
            "SELECT c.id, p.id FROM delegation_edges c JOIN delegation_edges p ON p.zone_id ="
            " c.zone_id AND p.id <> c.id WHERE c.status = 'active' AND c.expires_at > %s"
            " ORDER BY c.id, p.id LIMIT 1", (ctx.backup_at,)).fetchone()
        assert row is not None, "no two edges of one zone with an active one"
        when = ctx.backup_at - dt.timedelta(days=200)
        conn.execute("UPDATE delegation_edges SET status = 'revoked', revoked_at = %s,"
                     " updated_at = %s WHERE id = %s", (when, when, row[1]))
        conn.execute("UPDATE delegation_edges SET parent_edge_id = %s WHERE id = %s",
                     (row[1], row[0]))
    return clone.state, ()


def old_rows_the_cleaner_keeps(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """Rows older than the outbox window the 06.21 cleaner never deletes: a pending Coordinator
    row (not yet published) and a published row of the API producer."""
    clone = ctx.clone()
    when = ctx.backup_at - dt.timedelta(days=30)
    with clone.connect() as conn:
        ids = [r[0] for r in conn.execute(PUBLISHED.replace("LIMIT 1", "LIMIT 2")).fetchall()]
        assert len(ids) == 2, "fewer than two published Coordinator outbox rows"
        conn.execute("UPDATE caracal_outbox SET status = 'pending', published_at = NULL,"
                     " updated_at = %s WHERE id = %s", (when, ids[0]))
        conn.execute("UPDATE caracal_outbox SET producer = 'api', updated_at = %s"
                     " WHERE id = %s", (when, ids[1]))
    return clone.state, ()


def edge_not_expired(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An active edge expired two days before the backup: the expire step did not run."""
    clone = ctx.clone()
    _sql(clone, "UPDATE delegation_edges SET expires_at = %s WHERE id = %s",
         (ctx.backup_at - dt.timedelta(days=2), _first_id(clone, ACTIVE_EDGE)))
    return clone.state, ()


def _redis(clone: Any) -> redis_lib.Redis:
    assert clone.redis_url is not None
    return redis_lib.Redis.from_url(clone.redis_url)


def over_long_stream(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """caracal.providers.ratelimit (intended bound 1) gets five more entries."""
    clone = ctx.clone()
    client = _redis(clone)
    with contextlib.closing(client):
        for i in range(5):
            client.xadd("caracal.providers.ratelimit", {"probe": str(i)})
    return clone.state, ()


def stream_of_another_type(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The key of caracal.keys.invalidate holds a string."""
    clone = ctx.clone()
    client = _redis(clone)
    with contextlib.closing(client):
        client.delete("caracal.keys.invalidate")
        client.set("caracal.keys.invalidate", "not a stream")
    return clone.state, ()


def evicting_redis(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The restored Redis may evict keys under memory pressure."""
    clone = ctx.clone()
    client = _redis(clone)
    with contextlib.closing(client):
        client.config_set("maxmemory-policy", "allkeys-lru")
    return clone.state, ()


def rpo_zero(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An RPO of 0 h: any backup is too old."""
    return ctx.run.state, ("--rpo", "0")


def too_many_bundles(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """A backup location with 8 bundles (all older than the restored one), retain 7."""
    assert ctx.run.state.bundle is not None
    created = dt.datetime.fromisoformat(ctx.run.state.bundle.created_at)
    location = ctx.scratch("backups")
    for hours in range(1, 9):
        stamp = (created - dt.timedelta(hours=hours)).strftime("%Y%m%dT%H%M%SZ")
        (location / f"caracalBackup-{stamp}.tar.gz").write_bytes(b"")
    return ctx.run.state, ("--backup-location", str(location))


def plaintext_bundle(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """The bundle was not encrypted."""
    bundle = ctx.run.state.bundle
    assert bundle is not None
    return dataclasses.replace(ctx.run.state,
                               bundle=dataclasses.replace(bundle, encrypted=False)), ()


def secret_in_bundle(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """A copy of the bundle whose replay directory holds the audit HMAC key."""
    bundle = ctx.run.state.bundle
    assert bundle is not None
    copy = ctx.scratch("leaky") / Path(bundle.root).name
    shutil.copytree(bundle.root, copy)
    key = (Path(ctx.run.state.stack["secrets"]["path"]) / "auditHmacKey").read_text().strip()
    (copy / "replay" / "sts" / "audit-replay" / "notes.txt").write_text(f"key={key}\n")
    return dataclasses.replace(ctx.run.state,
                               bundle=dataclasses.replace(bundle, root=str(copy))), ()


def rto_zero(ctx: Context) -> tuple[RunState, tuple[str, ...]]:
    """An RTO of 0 s: any measured restore is too slow."""
    return ctx.run.state, ("--rto", "0")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("clean", clean, {}),
    Scenario("RC-AUD-1-old-row-left-behind", old_row_left_behind,
             {"RC-AUD-1": "the default partition, which retention never prunes"}),
    Scenario("RC-AUD-2-expired-partition-kept", expired_partition_kept,
             {"RC-AUD-2": "partition audit_events_y2024m01 ends"}),
    Scenario("RC-AUD-3-future-partition-missing", future_partition_missing,
             {"RC-AUD-3": "is missing (required at backup time"}),
    Scenario("RC-AUD-4-default-row-in-future-month", default_row_in_future_month,
             {"RC-AUD-4": "audit_events_default holds 1 rows of"}),
    Scenario("RC-AUD-5-exported-hour-deleted", exported_hour_deleted,
             {"RC-AUD-5": "retention cannot have removed them: its partition"}),
    Scenario("RC-EXP-1-watermark-moved", watermark_moved,
             {"RC-EXP-1": "audit_export_watermark differs from the source's"}),
    Scenario("RC-EXP-2-export-hour-missing", export_hour_missing,
             {"RC-EXP-2": "restored rows but no object audit/"}),
    Scenario("RC-EXP-2-row-in-another-hour", row_in_another_hour,
             {"RC-EXP-2": "+00:00) is in audit/"}),
    Scenario("RC-EXP-3-wrong-hmac-key", wrong_hmac_key,
             {"RC-EXP-3": "chain_hmac does not match"}),
    # Evidence lost before export also leaves holes no archive explains: the chain verifier
    # agreeing (RC-AUD-5, the same "Audit database" row) is part of the diagnosis.
    Scenario("RC-EXP-4-aged-out-before-export", aged_out_before_export,
             {"RC-EXP-4": "evidence aged out before it was exported",
              "RC-AUD-5": "unexplained gaps"}),
    Scenario("RC-EXP-5-object-overwritten", object_overwritten,
             {"RC-EXP-5": "has 2 versions: it was written more than once"}),
    Scenario("RC-ARC-1-no-default-retention", unlocked_archive,
             {"RC-ARC-1": "has Object Lock enabled but no default retention rule"}),
    Scenario("RC-CRD-1-old-terminal-edge", old_terminal_edge,
             {"RC-CRD-1": "(zone"}),
    Scenario("RC-CRD-1-old-parent-edge-no-guard-at-2026.06",
             old_parent_edge_with_active_child, {"RC-CRD-1": "(zone"}),
    Scenario("RC-CRD-2-dead-outbox-row-kept", dead_outbox_row_kept,
             {"RC-CRD-2": "(dead, topic"}),
    Scenario("RC-CRD-2-pending-and-api-rows-kept", old_rows_the_cleaner_keeps, {}),
    Scenario("RC-CRD-3-edge-not-expired", edge_not_expired,
             {"RC-CRD-3": "cleaner expire step: active edge past expires_at"}),
    Scenario("RC-RDS-1-over-long-stream-warns", over_long_stream, {}),
    Scenario("RC-RDS-1-stream-of-another-type", stream_of_another_type,
             {"RC-RDS-1": "caracal.keys.invalidate is a string, not a stream"}),
    Scenario("RC-RDS-2-evicting-redis", evicting_redis,
             {"RC-RDS-2": "maxmemory-policy is allkeys-lru, not noeviction"}),
    Scenario("RC-BAK-1-rpo-exceeded", rpo_zero, {"RC-BAK-1": "more than the RPO of 0 h"}),
    Scenario("RC-BAK-2-too-many-bundles", too_many_bundles,
             {"RC-BAK-2": "keeps 8 bundles, more than CARACAL_BACKUP_RETAIN=7"}),
    Scenario("RC-BAK-3-plaintext-bundle", plaintext_bundle,
             {"RC-BAK-3": "was stored unencrypted"}),
    Scenario("RC-BAK-4-secret-in-bundle", secret_in_bundle,
             {"RC-BAK-4": "secret auditHmacKey is inside the bundle"}),
    Scenario("RC-BAK-5-rto-exceeded", rto_zero, {"RC-BAK-5": "more than the RTO of 0 s"}),
)


# -------------------------------------------------------------------------- running them


@dataclasses.dataclass
class Result:
    """One scenario's run: each retention check's outcome, JSON evidence and step names."""

    outcomes: dict[str, Outcome]
    evidence: dict[str, dict[str, Any]]
    steps: dict[str, list[str]]


def _read_results(results: Path) -> Result:
    by_name = {name: clause for clause, name in CHECKS.items()}
    out = Result({}, {}, {})
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        clause = by_name.get(data["name"])
        if clause is None:
            continue
        message = data.get("statusDetails", {}).get("message", "") or ""
        out.outcomes[clause] = Outcome(data["status"], message)
        attached: dict[str, Any] = {}
        steps: list[str] = []
        todo = [data]
        while todo:
            node = todo.pop()
            for item in node.get("attachments", []):
                if item["type"].endswith("json"):
                    attached[item["name"]] = json.loads((results / item["source"]).read_text())
            for step in node.get("steps", []):
                steps.append(step["name"])
                todo.append(step)
        out.evidence[clause], out.steps[clause] = attached, steps
    return out


def _run(run: PreparedRun, state: RunState, args: tuple[str, ...]) -> Result:
    """Run the real retention checks on ``state`` in a subprocess, keeping their evidence."""
    out = run.workdir / f"retention-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    state_file = state.write(out / "state.json")
    proc = run_checks([f"--run-state={state_file}", *SELECT, *args], out)
    result = _read_results(out / "allure")
    shutil.rmtree(out, ignore_errors=True)
    missing = sorted(set(CHECKS) - set(result.outcomes))
    assert not missing, f"checks that did not run: {missing}\n{proc.stdout[-3000:]}"
    return result


@pytest.fixture(scope="module")
def run() -> Iterator[PreparedRun]:
    """One complete run for the module (150 audit events over 14 months, no services).

    The archive bucket is the module's own: moto keeps buckets per process, and another
    module's run may already have filled (and locked) the default one.
    """
    with prepared_run(services="none", audit_events=150,
                      archive_bucket=f"archive-retention-{uuid.uuid4().hex[:8]}") as built:
        yield built


@pytest.fixture(scope="module")
def results(run: PreparedRun) -> dict[str, Result | BaseException]:
    """Every scenario injected, then the retention checks run on each (a few at a time)."""
    assert run.state.bundle is not None
    doc = json.loads((Path(run.state.bundle.root) / "fingerprint.json").read_text())
    backup_at = dt.datetime.fromisoformat(doc["databases"]["caracal"]["taken_at"])
    index = read_index(run.stack.objects.bucket(_archive_bucket(run.state)))
    out: dict[str, Result | BaseException] = {}
    with contextlib.ExitStack() as stack:
        ctx = Context(run, index, backup_at.astimezone(UTC), stack)
        injected: dict[str, tuple[RunState, tuple[str, ...]]] = {}
        for scenario in SCENARIOS:
            try:
                injected[scenario.id] = scenario.inject(ctx)
            except Exception as exc:  # reported by the scenario's own test
                out[scenario.id] = exc
        with concurrent.futures.ThreadPoolExecutor(PARALLEL_RUNS) as pool:
            futures = {sid: pool.submit(_run, run, state, args)
                       for sid, (state, args) in injected.items()}
            for sid, future in futures.items():
                try:
                    out[sid] = future.result()
                except Exception as exc:
                    out[sid] = exc
    return out


def _result(results: Mapping[str, Result | BaseException], scenario_id: str) -> Result:
    found = results[scenario_id]
    if isinstance(found, BaseException):
        raise found
    return found


# --------------------------------------------------------------------------------- tests


def test_every_control_has_one_check_and_one_scenario() -> None:
    assert set(CHECKS) == {c.clause for c in CONTROLS}
    targeted = {clause for s in SCENARIOS for clause in s.fails}
    assert targeted == {c.clause for c in CONTROLS} - ONLY_AT_1_0
    for clause, name in CHECKS.items():
        module = next(importlib.import_module(f"checks.retention.{m}") for m in MODULES
                      if hasattr(importlib.import_module(f"checks.retention.{m}"), name))
        assert (getattr(module, name).__doc__ or "").startswith(clause)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_violation_fires_only_its_check(results: Mapping[str, Result | BaseException],
                                        scenario: Scenario) -> None:
    """The targeted check fails naming the violation; every other retention check passes (the
    controls 2026.06 does not have are skipped as not applicable, never passed)."""
    outcomes = _result(results, scenario.id).outcomes
    for clause, outcome in sorted(outcomes.items()):
        if clause in scenario.fails:
            assert outcome.status == "failed", (clause, outcome)
            assert scenario.fails[clause] in outcome.message, (clause, outcome.message)
        elif clause in ONLY_AT_1_0:
            assert outcome.status == "skipped", (clause, outcome)
            assert NOT_APPLICABLE in outcome.message, (clause, outcome.message)
        else:
            assert outcome.status == "passed", (clause, outcome)


def test_over_long_stream_is_recorded_as_a_warning(
    results: Mapping[str, Result | BaseException]
) -> None:
    """RC-RDS-1 passes over the bound (warning-level) with the provisioner's warning recorded."""
    result = _result(results, "RC-RDS-1-over-long-stream-warns")
    found = result.evidence["RC-RDS-1"]["stream lengths against intended bounds"]
    warning = "warn: caracal.providers.ratelimit length 6 exceeds intended bound 1"
    assert [w["detail"] for w in found["warnings"]] == [warning]
    assert f"WARNING {warning}" in result.steps["RC-RDS-1"]
    clean_run = _result(results, "clean")
    assert clean_run.evidence["RC-RDS-1"]["stream lengths against intended bounds"][
        "warnings"] == []


def test_checks_evaluate_the_restored_data(results: Mapping[str, Result | BaseException]
                                           ) -> None:
    """The clean run's evidence shows the checks looked at data, not at nothing."""
    found = _result(results, "clean").evidence
    hours = found["RC-EXP-2"]["export hours against the restored rows"]["observed"]
    assert hours["restored rows in the exported hours"] > 0
    assert hours["hours with rows"] > 0
    holes = found["RC-EXP-4"]["evidence continuity"]["observed"]
    assert holes["absent events"] > 0
    assert holes["absent events found in the archive"] == holes["absent events"]
    missing = found["RC-AUD-5"]["events missing from the restored chains"]["observed"]
    assert sum(missing["absent from the database, explained by dropped partitions (by month)"]
               .values()) == holes["absent events"]
    probe = found["RC-ARC-1"]["substrate probe"]
    assert probe["enforces_object_lock"] is True
    assert probe["substrate"] == "moto+compliance-lock"
    lock = found["RC-ARC-1"]["archive object lock"]["observed"]["object lock configuration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    scan = found["RC-BAK-4"]["secret scan of the bundle"]["observed"]
    assert "auditHmacKey" in scan["secrets searched"]
    assert any("pg_restore" in s for s in scan["locations scanned"])


# ---------------------------------------------------------------- verdicts (no environment)


def _probe(enforces: bool) -> ImmutabilityProbe:
    return ImmutabilityProbe("minio" if enforces else "moto", True, enforces, True,
                             ("observed",))


@pytest.mark.parametrize(
    ("configuration", "phrase"),
    [
        (None, "does not have Object Lock enabled"),
        ({"ObjectLockEnabled": "Enabled"}, "no default retention rule"),
        ({"ObjectLockEnabled": "Enabled",
          "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 400}}}, "not COMPLIANCE"),
        ({"ObjectLockEnabled": "Enabled",
          "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}}},
         "30 days, shorter than the required 365"),
    ],
    ids=["no-lock", "no-default-retention", "governance", "too-short"],
)
def test_archive_lock_check_fires_on_an_enforcing_substrate(
    configuration: dict[str, Any] | None, phrase: str
) -> None:
    """RC-ARC-1's own function, called with a store on a substrate that enforces Object Lock."""
    module = importlib.import_module("checks.retention.test_audit_exports")
    store = _FakeStore(_probe(True), configuration)
    with pytest.raises(AssertionError, match=phrase):
        module.test_archive_enforces_compliance_object_lock(store, _settings())


def test_archive_lock_check_passes_a_compliant_bucket_and_refuses_moto() -> None:
    module = importlib.import_module("checks.retention.test_audit_exports")
    good = {"ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Years": 1}}}
    module.test_archive_enforces_compliance_object_lock(_FakeStore(_probe(True), good),
                                                        _settings())
    with pytest.raises(Exception, match="substrate moto does not enforce Object Lock"):
        module.test_archive_enforces_compliance_object_lock(_FakeStore(_probe(False), good),
                                                            _settings())
    assert archive.default_retention_days({"Years": 2}) == 730
    assert archive.default_retention_days({"Days": 0, "Years": 1}) == 365
    assert archive.default_retention_days({"Days": 400, "Years": 0}) == 400


@dataclasses.dataclass
class _FakeStore:
    probe: ImmutabilityProbe
    configuration: dict[str, Any] | None
    bucket: str = "caracal-audit-archive"

    def probe_immutability(self) -> ImmutabilityProbe:
        return self.probe

    def bucket_lock_configuration(self) -> dict[str, Any] | None:
        return self.configuration


def _settings() -> common.RetentionSettings:
    return common.settings_from(
        defaults=(("TTL_SWEEP_INTERVAL_MS", 60_000), ("SWEEPER_BATCH_SIZE", 500),
                  ("SERVICE_LEASE_SWEEP_INTERVAL_MS", 30_000)),
        audit_retention_days=365, delegation_retention_days=90, outbox_retention_days=7,
        cleanup_interval_ms=900_000, cleanup_batch=500, archive_min_retention_days=365,
        partition_format="audit_events_y{year:04d}m{month:02d}", partitions_ahead=3,
        outbox_statuses=("published", "dead"), delegation_child_guard=False)


def test_band_rule_tolerates_one_interval_and_one_batch() -> None:
    at = dt.datetime(2026, 6, 1, tzinfo=UTC)
    minute = dt.timedelta(minutes=1)
    since = {"recent": at - 5 * minute, "left": at - 20 * minute, "old": at - 31 * minute}
    violations, left, recent = common.band_rule(since, at=at, interval=15 * minute, batch=1)
    assert (violations, left, recent) == (["old"], ["left"], ["recent"])
    since["left2"] = at - 25 * minute  # two rows left over, batch of one: both are violations
    violations, left, _ = common.band_rule(since, at=at, interval=15 * minute, batch=1)
    assert (violations, left) == (["left", "left2", "old"], [])


def test_backup_clock_prefers_the_snapshot_time() -> None:
    clock = common.backup_clock("2026-06-01T10:00:00+00:00", "2026-06-01T10:00:02.5+00:00",
                                "2026-06-02T00:00:00+00:00")
    assert clock.at == dt.datetime(2026, 6, 1, 10, 0, 2, 500000, tzinfo=UTC)
    fallback = common.backup_clock("2026-06-01T10:00:00+00:00", None, None)
    assert fallback.at == fallback.created_at
    assert "createdAt" in fallback.basis


def test_backup_policy_verdicts() -> None:
    created = dt.datetime(2026, 6, 1, tzinfo=UTC)
    fresh = backups.recovery_point(("b1", created), [], created + dt.timedelta(hours=2), 24)
    stale = backups.recovery_point(("b1", created), [("b2", created + dt.timedelta(hours=1))],
                                   created + dt.timedelta(hours=26), 24)
    assert fresh.ok
    assert not stale.ok
    assert "b2 was 25.00 h old" in stale.message()
    assert not backups.retained("s3://x/", [], 7, explicit=False).ok
    assert backups.location_of("s3://bucket/a/b.tar.gz") == "s3://bucket/a/"
    assert backups.location_of("s3://bucket/b.tar.gz") == "s3://bucket/"
    assert backups.location_of("/var/backups/b.tar.gz") == "/var/backups"
    with pytest.raises(LookupError):
        backups.recovery_time({}, 10)
    with pytest.raises(LookupError, match="no restore time"):
        backups.recovery_point(("b1", created), [], None, 24)


def test_stream_bounds_warn_and_fail() -> None:
    class FakeRedis:
        def __init__(self, kinds: dict[str, tuple[str, int]]) -> None:
            self.kinds = kinds

        def type(self, name: str) -> bytes:
            return self.kinds.get(name, ("none", 0))[0].encode()

        def xlen(self, name: str) -> int:
            return self.kinds[name][1]

    from caracal_restore.profiles import StreamSpec

    specs = (StreamSpec("a", (), 10), StreamSpec("b", (), 1), StreamSpec("c", (), None))
    result = streams.stream_bounds(FakeRedis({"a": ("stream", 11), "b": ("stream", 1)}), specs)
    assert result.ok
    assert [w.subject for w in result.warnings] == ["a"]
    result = streams.stream_bounds(FakeRedis({"a": ("hash", 0)}), specs)
    assert not result.ok
    assert "a is a hash, not a stream" in result.message()


def test_export_rows_read_as_copy_equal_the_servers_values(run: PreparedRun) -> None:
    """RC-EXP-2 reads the restored rows through COPY text and splits them itself: values that
    COPY escapes (a tab, a newline, a backslash) and NULLs must come out as the server holds
    them, exactly as a cursor returns the same expressions."""
    import psycopg

    from caracal_restore.retention import exports

    pg = run.stack.pg
    db = pg.create_database(f"copyrows_{uuid.uuid4().hex[:8]}")
    try:
        with psycopg.connect(db.conninfo(), autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE audit_events (zone_id text, chain_seq bigint, id uuid,"
                " content_sha256 text, chain_hmac text, occurred_at timestamptz,"
                " ingested_at timestamptz, decision text, event_type text, request_id text)")
            conn.execute(
                "INSERT INTO audit_events VALUES"
                " ('z1', 1, gen_random_uuid(), 'c1', 'h1', '2026-01-01 00:00:00.123456+00',"
                "  '2026-01-01 00:30:00+00', 'allow', 'token_exchange', 'plain'),"
                " ('z\ttab', 2, gen_random_uuid(), 'c2', NULL, '2026-01-01 00:10:00+00',"
                "  '2026-01-01 00:40:00.999999+00', 'deny', 'e\nline', 'back\\slash'),"
                " (NULL, NULL, NULL, NULL, NULL, NULL, '2026-01-01 01:00:00+00', NULL, NULL,"
                "  E'\\x01\\x7f')")
            hi = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
            got = sorted(exports._db_rows(conn, hi), key=repr)
            expected = sorted((tuple(r) for r in conn.execute(exports._db_rows_select(),
                                                              (hi,))), key=repr)
        assert len(got) == 3
        assert got == expected
    finally:
        pg.drop_database(db.dbname)

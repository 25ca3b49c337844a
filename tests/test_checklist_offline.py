"""Self-tests of the offline restore-checklist checks (steps 1 Postgres, 2 secrets, 3 migrations).

One prepared run (no services) is shared by the module. A baseline shows every check of the
family passes on an untouched copy. Each defect breaks one thing (a row, a secret, a ledger
entry, a grant …) in a clone of the restored environment; the real checks run against it and
the check guarding that defect must fail with a message naming the cause, while every other
check of the family passes. To keep the module fast, one clone carries several defects whose
guarding checks are disjoint (asserted below), so each defect is still attributed to its own
check and every check not aimed at stays green.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import migrations as inspect_migrations
from caracal_restore.profiles.registry import profile_for
from caracal_restore.runstate import RunState
from tests.harness import ClonedRun, Outcome, PreparedRun, clone_run, prepared_run, run_checks_on

FAMILY = "test_step1 or test_step2 or test_step3"
PROFILE = profile_for("2026.06")
#: Checks (allure names) of the family: every run must have run all of them.
FAMILY_SIZE = 50

KEK_CLAUSES = ("signing-keys", "provider-secret-configs", "provider-grant-access-tokens",
               "provider-grant-refresh-tokens")


def group(name: str) -> str:
    """Allure name of one RC-1.4 table group."""
    return f"test_tables_equal_the_source[RC-1.4.{name}]"


@pytest.fixture(scope="module")
def run() -> Iterator[PreparedRun]:
    """One full run (reference source, encrypted bundle, restore) without services."""
    # Its own archive bucket: moto keeps buckets per process, and another module's run in this
    # process may have filled (and locked) the default one.
    with prepared_run(services="none",
                      archive_bucket=f"caracal-audit-archive-{uuid.uuid4().hex[:8]}") as prepared:
        yield prepared


def assert_only(outcomes: dict[str, Outcome], expected: Mapping[str, tuple[str, ...]]) -> None:
    """The expected checks failed naming every given phrase; every other one passed (or is
    not applicable)."""
    __tracebackhide__ = True
    assert len(outcomes) == FAMILY_SIZE, sorted(outcomes)
    for name, phrases in expected.items():
        got = outcomes.get(name)
        assert got is not None, f"{name} did not run: {sorted(outcomes)}"
        assert got.status == "failed", f"{name}: {got}"
        missing = [p for p in phrases if p not in got.message]
        assert not missing, f"{name}: message lacks {missing}: {got.message}"
    others = {n: o for n, o in outcomes.items() if n not in expected
              and not (o.status == "passed"
                       or (o.status == "skipped" and "not applicable" in o.message))}
    assert not others, f"other checks did not pass: {others}"


def _replace_secret(c: ClonedRun, name: str, value: str) -> None:
    store = c.secrets()
    (store.root / name).chmod(0o600)
    store.write(name, value)


def _execute(c: ClonedRun, *statements: str) -> None:
    with c.connect() as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def _month_partition(run: PreparedRun, months_ahead: int) -> str:
    assert run.state.created_at is not None
    starts = inspect_migrations.month_starts(run.state.created_at, months_ahead)
    month = starts[months_ahead]
    return PROFILE.audit_partition_format.format(year=month.year, month=month.month)


def _oldest_monthly_partition(c: ClonedRun) -> str:
    with c.connect() as conn:
        row = conn.execute(
            "SELECT min(c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_events'::regclass"
            " AND c.relname <> 'audit_events_default'").fetchone()
    assert row is not None
    return str(row[0])


def without_fingerprint(run: PreparedRun, tmp: Path, state: RunState) -> RunState:
    """The run's bundle copied without fingerprint.json: the checks compare with the dump."""
    assert run.state.bundle is not None
    root = tmp / "plain-bundle" / Path(run.state.bundle.root).name
    shutil.copytree(run.state.bundle.root, root, ignore=shutil.ignore_patterns("fingerprint.json"))
    return dataclasses.replace(
        state, comparison_basis="internal consistency",
        bundle=dataclasses.replace(run.state.bundle, root=str(root), has_fingerprint=False))


def _copy_bundle_with_manifest(run: PreparedRun, tmp: Path, extra_db: str,
                               state: RunState) -> RunState:
    assert run.state.bundle is not None
    root = tmp / "bundle" / Path(run.state.bundle.root).name
    shutil.copytree(run.state.bundle.root, root)
    manifest = root / "manifest.txt"
    manifest.write_text(manifest.read_text().replace("databases: ", f"databases: {extra_db} "))
    return dataclasses.replace(state, bundle=dataclasses.replace(run.state.bundle,
                                                                  root=str(root)))


# --------------------------------------------------------------------------------- baseline


def test_every_offline_check_passes_on_an_untouched_copy(run: PreparedRun,
                                                         tmp_path: Path) -> None:
    """Baseline: the whole family passes on a clone nobody broke (no false alarms)."""
    with clone_run(run) as c:
        outcomes = run_checks_on(c.state, "-k", FAMILY, workdir=tmp_path)
    assert_only(outcomes, {})
    names = set(outcomes)
    assert {group(g) for g, _t in PROFILE.table_groups} <= names
    assert "test_verify_c_audit_role_cannot_change_audit_rows" in names


# ------------------------------------------------------------------------- fault injection

#: Breaks one thing in a clone; returns a changed run state when the defect lives there.
Breaker = Callable[[ClonedRun, PreparedRun, Path, RunState], "RunState | None"]


@dataclasses.dataclass(frozen=True)
class Defect:
    """One injected defect and the checks that must fail on it (with phrases they name)."""

    name: str
    breaker: Breaker = dataclasses.field(repr=False)
    expected: Mapping[str, tuple[str, ...]] = dataclasses.field(repr=False)


def _rows_dropped(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "DELETE FROM step_up_challenges")


def _jsonb_changed(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "UPDATE providers SET config_json = config_json || '{\"tampered\": true}'"
                " WHERE id = (SELECT min(id) FROM providers)")


def _secret_removed(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    (c.secrets().root / "metricsBearer").unlink()


def _kek_replaced(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _replace_secret(c, "zoneKek", secrets.token_bytes(32).hex())


def _ledger_row_deleted(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "DELETE FROM schema_migrations WHERE version = '0047_audit_chain_rehash'")


def _target_is_source(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> RunState:
    return dataclasses.replace(state, live_source_db=c.db)


def _manifest_lists_more(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> RunState:
    return _copy_bundle_with_manifest(run, tmp, "caracal_auth", state)


def _table_dropped(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "DROP TABLE audit_chain_rehash")


def _partition_dropped(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, f"DROP TABLE {_oldest_monthly_partition(c)}")


def _policy_content_changed(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "ALTER TABLE policy_versions DISABLE TRIGGER policy_versions_immutable",
             "UPDATE policy_versions SET content = content || E'\\n# tampered'"
             " WHERE id = (SELECT min(id) FROM policy_versions)",
             "ALTER TABLE policy_versions ENABLE TRIGGER policy_versions_immutable")


def _database_url_wrong(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _replace_secret(c, "databaseUrl", f"postgres://caracal:{secrets.token_hex(24)}"
                                      "@postgres:5432/caracal")


def _audit_key_replaced(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _replace_secret(c, "auditHmacKey", secrets.token_bytes(32).hex())


def _streams_key_replaced(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _replace_secret(c, "streamsHmacKey", secrets.token_bytes(32).hex())


def _admin_token_replaced(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _replace_secret(c, "caracalAdminToken", secrets.token_bytes(32).hex())


def _db_password_replaced(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    password = secrets.token_bytes(24).hex()
    _replace_secret(c, "postgresPassword", password)
    _replace_secret(c, "databaseUrl", f"postgres://caracal:{password}@postgres:5432/caracal")


def _redis_password_replaced(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    password = secrets.token_bytes(24).hex()
    _replace_secret(c, "redisPassword", password)
    _replace_secret(c, "redisUrl", f"redis://:{password}@redis:6379")


def _retired_table_back(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "CREATE TABLE teams (id text PRIMARY KEY)")


def _audit_role_granted(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "GRANT UPDATE, DELETE ON audit_events TO caracalaudit")


def _trigger_dropped(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "DROP TRIGGER policy_versions_immutable ON policy_versions")


def _rls_disabled(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, "ALTER TABLE secrets DISABLE ROW LEVEL SECURITY")


def _window_partition_dropped(c: ClonedRun, run: PreparedRun, tmp: Path, state: RunState) -> None:
    _execute(c, f"DROP TABLE {_month_partition(run, 2)}")


def _dump_basis_rows_dropped(c: ClonedRun, run: PreparedRun, tmp: Path,
                             state: RunState) -> RunState:
    """A bundle as Caracal's backup.sh writes it (no fingerprint.json), and rows lost."""
    _rows_dropped(c, run, tmp, state)
    return without_fingerprint(run, tmp, state)


KEK_FAILS = {f"test_kek_opens_every_sealed_value[RC-2.3.{k}]":
             ("zoneKek does not open", "not the one the database was sealed with")
             for k in KEK_CLAUSES}

DEFECTS = (
    Defect("rows-dropped", _rows_dropped, {
        group("sessions"): ("step_up_challenges", "rows in the source, 0 after restore")}),
    Defect("jsonb-changed", _jsonb_changed, {
        group("product"): ("providers", "content differs")}),
    Defect("secret-removed", _secret_removed, {
        "test_secret_inventory_is_present_and_well_formed": (
            "metricsBearer missing from the secret store",)}),
    Defect("kek-replaced", _kek_replaced, KEK_FAILS),
    Defect("ledger-row-deleted", _ledger_row_deleted, {
        "test_ledger_is_exactly_the_release": ("missing 0047_audit_chain_rehash",),
        "test_ledger_equals_the_source": ("missing 0047_audit_chain_rehash",),
        group("ledger"): ("schema_migrations",)}),
    Defect("target-is-source", _target_is_source, {
        "test_target_is_not_the_source_cluster": ("restored onto the source server itself",
                                                  "the target is the source's cluster")}),
    Defect("manifest-database-not-restored", _manifest_lists_more, {
        "test_every_manifest_database_is_restored": ("caracal_auth",
                                                     "listed in manifest.txt but not restored")}),
    Defect("table-dropped", _table_dropped, {
        "test_every_release_table_exists": ("audit_chain_rehash",),
        group("audit"): ("audit_chain_rehash", "missing after restore")}),
    Defect("partition-dropped", _partition_dropped, {
        "test_audit_partitions_equal_the_source": ("missing after restore",),
        group("audit"): ("rows in the source",)}),
    Defect("policy-content-changed", _policy_content_changed, {
        "test_restored_data_is_consistent[RC-1.6.policy-hashes]": ("but content hashes to",),
        group("policies"): ("policy_versions", "content differs")}),
    Defect("database-url-wrong", _database_url_wrong, {
        "test_derived_secrets_rerender_from_the_primaries": (
            "databaseUrl does not carry the current postgresPassword",),
        "test_database_password_logs_in": ("databaseUrl", "password authentication failed")}),
    Defect("audit-key-replaced", _audit_key_replaced, {
        "test_audit_key_verifies_chain_hmacs[RC-2.4.audit-events]": (
            "auditHmacKey is not the key",),
        "test_audit_key_verifies_audit_stream": ("auditHmacKey is not the key",)}),
    Defect("streams-key-replaced", _streams_key_replaced, {
        "test_streams_key_verifies_stream_signatures": ("streamsHmacKey is not the key",)}),
    Defect("admin-token-replaced", _admin_token_replaced, {
        "test_admin_token_matches_its_stored_hash": ("sha256(caracalAdminToken)",)}),
    Defect("db-password-replaced", _db_password_replaced, {
        "test_database_password_logs_in": ("postgresPassword", "password authentication failed")}),
    Defect("redis-password-replaced", _redis_password_replaced, {
        "test_redis_password_logs_in": ("redisPassword", "invalid username-password")}),
    Defect("retired-table-present", _retired_table_back, {
        "test_verify_b_retired_tables_absent": ("teams",),
        group("other"): ("teams", "not in the source")}),
    Defect("audit-role-may-write", _audit_role_granted, {
        "test_verify_c_audit_role_cannot_change_audit_rows": ("caracalaudit may UPDATE",
                                                              "caracalaudit may DELETE")}),
    Defect("trigger-dropped", _trigger_dropped, {
        "test_verify_d_immutability_triggers": ("policy_versions_immutable is missing",)}),
    Defect("rls-disabled", _rls_disabled, {
        "test_verify_e_row_level_security": ("secrets: RLS disabled",)}),
    Defect("dump-basis-rows-dropped", _dump_basis_rows_dropped, {
        group("sessions"): ("differ from the dump", "step_up_challenges",
                            "rows in the dump, 0 after restore")}),
    Defect("window-partition-dropped", _window_partition_dropped, {
        "test_verify_f_partitions_for_the_backup_month": ("is missing", "backup's time"),
        "test_audit_partitions_equal_the_source": ("missing after restore",),
        group("audit"): ("missing after restore",)}),
)


#: Clones, each carrying defects guarded by different checks (disjoint expectations), so one
#: run of the family shows each check firing on its own defect while every other check passes.
#: Defects that share a guarding check are in different clones.
SCENARIOS: dict[str, tuple[str, ...]] = {
    "step1-data": ("rows-dropped", "jsonb-changed", "policy-content-changed", "table-dropped"),
    "step1-target": ("target-is-source", "manifest-database-not-restored",
                     "window-partition-dropped"),
    "step1-partition": ("partition-dropped",),
    "step2-keys": ("secret-removed", "kek-replaced", "audit-key-replaced",
                   "streams-key-replaced", "admin-token-replaced", "database-url-wrong"),
    "step2-passwords": ("db-password-replaced", "redis-password-replaced"),
    "no-fingerprint": ("dump-basis-rows-dropped",),
    "step3-verify": ("ledger-row-deleted", "retired-table-present", "audit-role-may-write",
                     "trigger-dropped", "rls-disabled"),
}
_BY_NAME = {d.name: d for d in DEFECTS}


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
    with clone_run(run) as c:
        state = c.state
        for name in SCENARIOS[scenario]:
            defect = _BY_NAME[name]
            state = defect.breaker(c, run, tmp_path, state) or state
            expected.update(defect.expected)
        outcomes = run_checks_on(state, "-k", FAMILY, workdir=tmp_path)
    assert_only(outcomes, expected)


# ------------------------------------------------------------------------------ unit tests


def test_weak_kek_patterns_are_named() -> None:
    """The KEK shape rules STS enforces are recognised (and a random key passes)."""
    from caracal_restore.inspect.secrets import weak_key_reason

    assert weak_key_reason(bytes(32)) == "is all zeros"
    assert weak_key_reason(b"\x07" * 32) == "repeats the same byte"
    assert weak_key_reason(bytes(range(32))) == "is a sequential byte pattern"
    assert weak_key_reason(b"\x01\x02\x03\x05" * 8) == "repeats a 4-byte pattern"
    assert weak_key_reason(secrets.token_bytes(32)) is None


def test_month_window_crosses_the_year() -> None:
    """Partition window months are computed from the anchor, across a year end."""
    starts = inspect_migrations.month_starts(dt.datetime(2026, 11, 24, tzinfo=dt.UTC), 3)
    assert [(s.year, s.month) for s in starts] == [(2026, 11), (2026, 12), (2027, 1),
                                                    (2027, 2), (2027, 3)]


def test_ledger_diff_names_missing_extra_and_repeated() -> None:
    """The ledger comparison reports each kind of difference."""
    diff = inspect_migrations.diff_ledger(["a", "b", "b", "x"], ["a", "b", "c"])
    assert diff.missing == ("c",)
    assert diff.unexpected == ("x",)
    assert diff.duplicated == ("b",)
    assert not diff.equal



def test_scratch_template_is_copied_before_checks_that_write(
        run: PreparedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL copies a database only while no other session is connected to it, and the
    checks read the restored one the whole run: when a selected check requests ``scratch_db``,
    the run copies a scratch template before any check starts (here under two workers), and
    each clone is made from it while the other checks read. A run without one makes no copy."""
    from fixtures.restore import copy_scratch_template

    state, pg = run.state, run.stack.pg
    assert state.scratch_template
    assert state.scratch_template != state.restored_databases["caracal"].dbname

    def template_exists() -> bool:
        with pg.connect() as admin:
            return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                 (state.scratch_template,)).fetchone() is not None

    assert not template_exists(), "the run copied a scratch template no check asked for"
    probe = tmp_path / "probe.txt"
    monkeypatch.setenv("SCRATCH_PROBE_OUT", str(probe))
    try:
        outcomes = run_checks_on(state, "-n", "2", "-p", "tests.scratch_probe", "-k",
                                 "test_verify_a or test_verify_b or test_verify_d",
                                 workdir=tmp_path)
        assert sorted(outcomes) == ["test_verify_a_tables_exist",
                                    "test_verify_b_retired_tables_absent",
                                    "test_verify_d_immutability_triggers"]
        assert {o.status for o in outcomes.values()} == {"passed"}, outcomes
        seen = dict(line.split() for line in probe.read_text().splitlines())
        assert seen == dict.fromkeys(outcomes, "1"), seen
        # Made once: a second copy is refused (and logged), never made over the first.
        assert template_exists()
        assert not copy_scratch_template(pg, state)
    finally:
        pg.drop_database(state.scratch_template)


#: Grants to the probed role, and what verify.sh's UPDATE and DELETE meet when really run.
_GRANTS = (
    ("none", "", ["denied", "denied"]),
    ("update", "GRANT UPDATE ON audit_events TO {role}", ["allowed", "denied"]),
    ("delete", "GRANT DELETE ON audit_events TO {role}", ["denied", "allowed"]),
    ("update-its-column", "GRANT UPDATE (decision) ON audit_events TO {role}",
     ["allowed", "denied"]),
    ("update-another-column", "GRANT UPDATE (zone_id) ON audit_events TO {role}",
     ["denied", "denied"]),
    ("all", "GRANT ALL ON audit_events TO {role}", ["allowed", "allowed"]),
)


def test_write_probes_meet_the_verdict_the_statements_meet_when_run(run: PreparedRun) -> None:
    """RC-3.3c puts verify.sh's UPDATE and DELETE to the server with EXPLAIN in a read-only
    transaction, on the restored database itself: for every kind of grant it must be refused
    or allowed exactly when the statement, really run as the role, is — and write nothing;
    where a statement-level trigger could refuse what the grants allow, it cannot decide."""
    import psycopg
    from psycopg import sql

    pg = run.stack.pg
    role = f"probe_role_{uuid.uuid4().hex[:8]}"
    db = pg.create_database(f"probe_{uuid.uuid4().hex[:8]}")
    with pg.connect() as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        for name, grant, expected in _GRANTS:
            with psycopg.connect(db.conninfo(), autocommit=True) as owner:
                owner.execute("DROP TABLE IF EXISTS audit_events")
                owner.execute("CREATE TABLE audit_events (zone_id text, decision text)"
                              " PARTITION BY LIST (zone_id)")
                owner.execute("CREATE TABLE audit_events_z PARTITION OF audit_events"
                              " FOR VALUES IN ('z')")
                owner.execute("INSERT INTO audit_events VALUES ('z', 'allow')")
                if grant:
                    owner.execute(grant.format(role=role))
                really = []
                for _verb, statement in inspect_migrations.AUDIT_WRITE_PROBES:
                    try:
                        with owner.transaction(force_rollback=True):
                            owner.execute(sql.SQL("SET LOCAL ROLE {}").format(
                                sql.Identifier(role)))
                            owner.execute(statement)
                        really.append("allowed")
                    except psycopg.errors.InsufficientPrivilege:
                        really.append("denied")
            with psycopg.connect(db.read_only().conninfo(), autocommit=True) as reading:
                probes = inspect_migrations.audit_write_probes(reading, role)
                assert [p.outcome for p in probes] == really, name
                assert reading.execute("SELECT zone_id, decision FROM audit_events"
                                       ).fetchall() == [("z", "allow")]
            assert really == expected, name
        # A statement-level trigger fires when verify.sh runs the statement, not when it is
        # explained: where the role may write, the probe cannot decide what verify.sh would see.
        with psycopg.connect(db.conninfo(), autocommit=True) as owner:
            owner.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                          " $$BEGIN RAISE EXCEPTION 'append-only'; END$$")
            owner.execute("CREATE TRIGGER refuse_writes BEFORE UPDATE OR DELETE ON audit_events"
                          " FOR EACH STATEMENT EXECUTE FUNCTION refuse()")
        with psycopg.connect(db.read_only().conninfo(), autocommit=True) as reading, \
                pytest.raises(CannotEvaluate, match="refuse_writes"):
            inspect_migrations.audit_write_probes(reading, role)
        with psycopg.connect(db.conninfo(), autocommit=True) as owner:
            owner.execute(sql.SQL("REVOKE ALL ON audit_events FROM {}").format(
                sql.Identifier(role)))
        with psycopg.connect(db.read_only().conninfo(), autocommit=True) as reading:
            assert [p.outcome for p in inspect_migrations.audit_write_probes(reading, role)] == [
                "denied", "denied"]  # refused by privileges: the trigger never gets a say
    finally:
        pg.drop_database(db.dbname)
        with pg.connect() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_chain_hmacs_are_recomputed_and_unsigned_rows_counted_in_one_pass(
        server_tmp: Path) -> None:
    """RC-2.4's reading: every signed row's chain_hmac recomputed over its stored content and
    prev (a NULL content hashes as ''); a NULL or empty chain_hmac counts as unsigned."""
    from caracal_restore.chainhash import chain_hmac_bytes
    from caracal_restore.environments import postgres
    from caracal_restore.inspect import secrets as inspect_secrets

    key = b"k" * 32
    mac = chain_hmac_bytes(key)
    rows = [  # (zone, seq, content, prev, chain_hmac)
        ("z1", 1, "aa", None, mac(b"aa", b"").decode()),
        ("z1", 2, "bb", "aa", mac(b"bb", b"aa").decode()),
        ("z1", 3, None, "bb", mac(b"", b"bb").decode()),
        ("z2", 7, "cc", "bb", mac(b"cc", b"xx").decode()),  # signed over another prev
        ("z2", 8, "dd", "cc", None),
        ("z2", 9, "ee", "dd", ""),
    ]
    with postgres.embedded(workdir=server_tmp) as pg:
        pg.create_database("hmacs")
        with pg.connect("hmacs") as conn:
            conn.execute("CREATE TABLE audit_events (id uuid DEFAULT gen_random_uuid(),"
                         " zone_id text, chain_seq bigint, content_sha256 text,"
                         " prev_content_sha256 text, chain_hmac text)")
            for row in rows:
                conn.execute("INSERT INTO audit_events (zone_id, chain_seq, content_sha256,"
                             " prev_content_sha256, chain_hmac) VALUES (%s, %s, %s, %s, %s)",
                             row)
            result = inspect_secrets.verify_chain_hmacs(conn, "audit_events", key)
            other_key = inspect_secrets.verify_chain_hmacs(conn, "audit_events", b"o" * 32)
    assert (result.signed, result.verified, result.unsigned, result.failed) == (4, 3, 2, 1)
    assert len(result.failures) == 1
    assert "zone z2 chain_seq 7" in result.failures[0]
    assert (other_key.signed, other_key.verified, other_key.failed) == (4, 0, 4)
    assert other_key.all_failed

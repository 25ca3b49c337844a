"""The reference 2026.06 schema: what verify.sh checks at 06.21, on an embedded PostgreSQL 18."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import psycopg
import pytest

from caracal_restore import envelope
from caracal_restore.environments import postgres
from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.reference import schema
from caracal_restore.reference.secrets import generate_secrets, render_derived

MONTHS = [dt.date(2026, 5, 1), dt.date(2026, 6, 1), dt.date(2026, 7, 1), dt.date(2026, 8, 1),
          dt.date(2026, 9, 1)]
ZONE_ISOLATION = (
    "((current_setting('caracal.zone_id'::text, true) = '*'::text) OR "
    "(zone_id = current_setting('caracal.zone_id'::text, true)))"
)


@pytest.fixture(scope="module")
def pg() -> Iterator[postgres.PostgresServer]:
    """A throwaway PostgreSQL 18 (started for this module, removed after)."""
    with postgres.embedded() as server:
        yield server


@pytest.fixture(scope="module")
def db(pg: postgres.PostgresServer) -> Iterator[psycopg.Connection]:
    """Database ``caracal`` with the reference schema applied (action: apply_schema)."""
    pg.create_database("caracal")
    with pg.connect("caracal") as conn:
        schema.apply_schema(conn, months=MONTHS)
        yield conn


def test_ledger_has_the_47_versions(db: psycopg.Connection) -> None:
    """The unqualified ledger holds exactly the 47 06.21 versions, in sort order."""
    rows = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(PROFILE.migrations)
    assert len(PROFILE.migrations) == 47
    assert PROFILE.probe_version in PROFILE.migrations


def test_verify_sh_tables_exist_and_retired_tables_do_not(db: psycopg.Connection) -> None:
    """verify.sh a/b: the 29 tables resolve in public; invitations and teams do not."""
    assert len(PROFILE.verify_tables) == 29
    for table in PROFILE.verify_tables:
        found = db.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()
        assert found is not None, table
        assert found[0] is not None, table
    for table in PROFILE.retired_tables:
        found = db.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()
        assert found is not None, table
        assert found[0] is None, table


def test_every_state_table_exists(db: psycopg.Connection) -> None:
    """Every table the profile compares row for row exists (incl. provider_grants, marker)."""
    for table in PROFILE.state_tables:
        found = db.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()
        assert found is not None, table
        assert found[0] is not None, table


def _seed_policy_version(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO zones (id, name, slug, dek_ciphertext)"
                 " VALUES ('z-trig', 'z', 'z-trig', gen_random_bytes(32))")
    conn.execute("INSERT INTO policies (id, zone_id, name, created_by)"
                 " VALUES ('p-trig', 'z-trig', 'p', 'test')")
    conn.execute("INSERT INTO policy_versions (id, policy_id, version, content, content_sha256)"
                 " VALUES ('pv-trig', 'p-trig', 1, 'package caracal.authz', 'x')")


def test_policy_versions_are_immutable(db: psycopg.Connection) -> None:
    """verify.sh d: the trigger exists and refuses UPDATE and DELETE of a policy version."""
    row = db.execute(
        "SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgname = 'policy_versions_immutable'"
        " AND NOT tgisinternal AND tgrelid = 'policy_versions'::regclass"
    ).fetchone()
    assert row == ("reject_policy_version_mutation",)
    with db.transaction(force_rollback=True):
        _seed_policy_version(db)
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"), \
                db.transaction():
            db.execute("UPDATE policy_versions SET content = 'x' WHERE id = 'pv-trig'")
        with pytest.raises(psycopg.errors.IntegrityConstraintViolation, match="immutable"), \
                db.transaction():
            db.execute("DELETE FROM policy_versions WHERE id = 'pv-trig'")


def test_rls_zone_isolation_policies(db: psycopg.Connection) -> None:
    """verify.sh e: RLS enabled (not forced) and exactly one zone_isolation policy per table."""
    assert len(PROFILE.rls_tables) == 19
    for table in (*PROFILE.rls_tables, "provider_grants"):
        rls = db.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class"
                         " WHERE oid = %s::regclass", (table,)).fetchone()
        assert rls == (True, False), table
        policies = db.execute(
            "SELECT policyname, qual, with_check FROM pg_policies"
            " WHERE schemaname = 'public' AND tablename = %s", (table,)).fetchall()
        assert policies == [("zone_isolation", ZONE_ISOLATION, ZONE_ISOLATION)], table
    count = db.execute("SELECT count(*) FROM pg_class WHERE relrowsecurity"
                       " AND relkind IN ('r', 'p')").fetchone()
    assert count == (20,)


def test_roles_and_audit_append_only(pg: postgres.PostgresServer, db: psycopg.Connection) -> None:
    """The five service roles are NOLOGIN; an audit login can INSERT but not UPDATE/DELETE."""
    roles = db.execute("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'caracal%'"
                       " ORDER BY 1").fetchall()
    assert roles == [(r, False) for r in ("caracalapi", "caracalaudit", "caracalcoordinator",
                                          "caracalgateway", "caracalsts")]
    db.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname ="
               " 'caracal_audit_ci') THEN CREATE ROLE caracal_audit_ci LOGIN PASSWORD"
               " 'audit-ci-test'; END IF; END $$")
    db.execute("GRANT caracalaudit TO caracal_audit_ci")
    endpoint = pg.endpoint("caracal")
    with psycopg.connect(host=endpoint.host, port=endpoint.port, dbname=endpoint.dbname,
                         user="caracal_audit_ci", password="audit-ci-test") as audit:
        audit.execute("SET caracal.zone_id = '*'")
        audit.execute("INSERT INTO audit_events (id, zone_id, event_type, occurred_at)"
                      " VALUES ('e1', 'z', 't', '2026-06-02T00:00:00Z')")
        for stmt in ("UPDATE audit_events SET decision = 'x' WHERE false",
                     "DELETE FROM audit_events WHERE false"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                audit.execute(stmt)
            audit.rollback()
    for role, table, privilege, expected in (
        ("caracalgateway", "gateway_binding_revision", "SELECT", True),
        ("caracalapi", "gateway_binding_revision", "UPDATE", True),
        ("caracalapi", "policy_versions", "UPDATE", False),
        ("caracalcoordinator", "caracal_outbox", "INSERT", True),
        ("caracalsts", "secrets", "UPDATE", True),
        ("caracalapi", "admin_audit_events", "SELECT", False),
        ("caracalaudit", "audit_chain_rehash", "SELECT", False),
    ):
        got = db.execute("SELECT has_table_privilege(%s, %s, %s)",
                         (role, table, privilege)).fetchone()
        assert got == (expected,), (role, table, privilege)


def test_partitions_and_bounds(db: psycopg.Connection) -> None:
    """Monthly partitions carry UTC bounds; the default partition exists; ensure is idempotent."""
    assert schema.partition_name(dt.date(2026, 11, 17)) == "audit_events_y2026m11"
    assert schema.monthly_partitions(db) == [schema.partition_name(m) for m in MONTHS]
    db.execute("SET TimeZone = 'Asia/Kolkata'")
    try:
        schema.ensure_partition(db, dt.date(2026, 10, 3))
        schema.ensure_partition(db, dt.date(2026, 10, 3))
    finally:
        db.execute("SET TimeZone = 'UTC'")
    bound = db.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class"
                       " WHERE relname = 'audit_events_y2026m10'").fetchone()
    assert bound == ("FOR VALUES FROM ('2026-10-01 00:00:00+00') TO ('2026-11-01 00:00:00+00')",)
    default = db.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class"
                         " WHERE relname = 'audit_events_default'").fetchone()
    assert default == ("DEFAULT",)
    schema.drop_partition(db, dt.date(2026, 10, 1))
    assert "audit_events_y2026m10" not in schema.monthly_partitions(db)


def test_structural_facts(db: psycopg.Connection) -> None:
    """Gateway tables have no FKs, the revision row is (true, 1), key PKs are as documented."""
    fks = db.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                     " AND conrelid = 'gateway_resource_bindings'::regclass").fetchone()
    assert fks == (0,)
    assert db.execute("SELECT id, version FROM gateway_binding_revision").fetchall() == [(True, 1)]

    def pk(table: str) -> list[str]:
        rows = db.execute(
            "SELECT a.attname FROM pg_constraint c JOIN LATERAL unnest(c.conkey)"
            " WITH ORDINALITY k(attnum, n) ON true JOIN pg_attribute a ON a.attrelid = c.conrelid"
            " AND a.attnum = k.attnum WHERE c.contype = 'p' AND c.conrelid = %s::regclass"
            " ORDER BY k.n", (table,)).fetchall()
        return [r[0] for r in rows]

    assert pk("gateway_resource_bindings") == ["zone_id", "resource_identifier"]
    assert pk("policy_set_bindings") == ["zone_id", "policy_set_id"]
    assert pk("audit_events") == ["id", "occurred_at"]
    parent_fk = db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                           " WHERE conname = 'delegation_edges_parent_edge_id_fkey'").fetchone()
    assert parent_fk == ("FOREIGN KEY (parent_edge_id) REFERENCES delegation_edges(id)"
                         " ON DELETE SET NULL",)
    cols = db.execute("SELECT column_name FROM information_schema.columns"
                      " WHERE table_name = 'sessions'").fetchall()
    assert "revoked_at" not in {c[0] for c in cols}
    for name in ("audit_events_zone_chain", "audit_events_agent_session_idx",
                 "audit_events_agent_labels_idx", "event_outbox_dispatch_ready",
                 "event_outbox_undispatched_age", "resources_zone_id_identifier_key",
                 "agent_sessions_zone_session_fk"):
        found = db.execute("SELECT 1 FROM pg_class WHERE relname = %s UNION ALL"
                           " SELECT 1 FROM pg_constraint WHERE conname = %s",
                           (name, name)).fetchone()
        assert found, name


def test_schema_applies_twice_in_one_cluster(pg: postgres.PostgresServer) -> None:
    """Roles are cluster-wide: a second database on the same cluster applies cleanly."""
    pg.create_database("caracal_second")
    with pg.connect("caracal_second") as conn:
        schema.apply_schema(conn, months=MONTHS[:1], applied_at=dt.datetime(2026, 1, 1,
                                                                            tzinfo=dt.UTC))
        first = conn.execute("SELECT min(applied_at) FROM schema_migrations").fetchone()
    assert first == (dt.datetime(2026, 1, 1, tzinfo=dt.UTC),)


def test_zone_kek_golden_vector() -> None:
    """FACTS-2026.06 §3.3: the Node-sealed vector is reproduced and opens without AAD."""
    kek = envelope.parse_kek("8f3d9a712c45e6b0d18f2a4c6e9b3d57a1c4f8020e6a9c3d5b7f1a2c4e6d8b90")
    nonce = bytes.fromhex("000102030405060708090a0b")
    plaintext = b"caracal v2026.06.21 zone kek vector"
    ct, got_nonce = envelope.zone_seal(kek, plaintext, nonce)
    assert got_nonce == nonce
    assert ct.hex() == (
        "cdbb212481ebc93fc8fd83b2c64d55d18c80776faf5ef64efaf1f59915f2376b19b30f379c975faee4588d"
        "713a6e5e729adff1"
    )
    assert envelope.zone_open(kek, ct, nonce) == plaintext


def test_generated_secrets_have_the_06_21_shapes() -> None:
    """Nine primary hex files of 48/64 chars plus the two derived URLs, fresh on every call."""
    a, b = generate_secrets(), generate_secrets()
    assert set(a) == {s.name for s in PROFILE.secrets}
    for spec in PROFILE.primary_secrets:
        value = a[spec.name]
        assert len(value) == spec.hex_len, spec.name
        assert value == value.lower(), spec.name
        bytes.fromhex(value)
        assert value != b[spec.name]
    assert a["databaseUrl"] == f"postgres://caracal:{a['postgresPassword']}@postgres:5432/caracal"
    assert a["redisUrl"] == f"redis://:{a['redisPassword']}@redis:6379"
    local = render_derived(a, pg_host="127.0.0.1", pg_port=15432, redis_host="127.0.0.1",
                           redis_port=16379)
    assert local == {
        "databaseUrl": f"postgres://caracal:{a['postgresPassword']}@127.0.0.1:15432/caracal",
        "redisUrl": f"redis://:{a['redisPassword']}@127.0.0.1:16379",
    }
    from caracal_restore.redact import REDACTOR

    assert all(REDACTOR(v) != v for v in a.values())

"""Release 1.0: its profile, release detection, the real 1.0 bundle, and a whole 1.0 run.

The real bundle (``/work/shared/caracal/real-1.0``) was written by Caracal 1.0's own
``backup.sh`` from a partial deployment (PG 15, Redis 7.0, no fingerprint). The suite must
restore it, detect 1.0 from its ledger, and verify offline everything it can: CSS1 envelopes,
audit and admin-audit chains, the admin token, the ledger, idempotency receipts, stream
signatures and the service logins. Properties of the bundle that the README explains (no
zone signing key, no rehash marker) are pinned here so a change shows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis as redis_lib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from caracal_restore import audit_chain, chainhash, envelope
from caracal_restore.environments.stack import StackSpec, start_stack
from caracal_restore.pipeline import PipelineSpec, run_pipeline
from caracal_restore.profiles import registry
from caracal_restore.profiles.release_1_0 import PROFILE, SERVICE_DSNS
from caracal_restore.profiles.release_2026_06 import PROFILE as PROFILE_2026_06
from caracal_restore.reference.v1_0.secrets import render_derived
from caracal_restore.runstate import RunState

REAL = Path("/work/shared/caracal/real-1.0")
REAL_BUNDLE = REAL / "caracalBackup-20261124T061910Z.tar.gz"
REAL_SECRETS = REAL / "secrets"
RC1_LEDGER = ("0001_baseline", "0002_resource_operations", "0003_operator")

needs_real = pytest.mark.skipif(not REAL_BUNDLE.exists(), reason="the real 1.0 bundle is absent")


# ------------------------------------------------------------------------ profile and ledger


def test_registry_knows_both_releases() -> None:
    assert registry.RELEASES == ("2026.06", "1.0")
    assert registry.profile_for("1.0") is PROFILE
    assert registry.profile_for("2026.06") is PROFILE_2026_06
    with pytest.raises(KeyError, match=r"known: 2026\.06, 1\.0"):
        registry.profile_for("0.2")


@pytest.mark.parametrize(("ledger", "release"), [
    (PROFILE_2026_06.migrations, "2026.06"),
    (PROFILE_2026_06.migrations[:10], "2026.06"),  # an older 06.21-family deployment
    (PROFILE.migrations, "1.0"),
    (PROFILE.migrations[:2], "1.0"),
])
def test_detect_release_by_probe_version(ledger: tuple[str, ...], release: str) -> None:
    assert registry.detect_release(ledger) == release


def test_rc1_ledger_is_named_unsupported() -> None:
    with pytest.raises(registry.UnsupportedRelease,
                       match=r"v2026\.07\.03-rc\.1 \(0002_resource_operations present.*"
                             r"unsupported"):
        registry.detect_release(RC1_LEDGER)


def test_unknown_ledger_names_what_was_found() -> None:
    with pytest.raises(LookupError, match=r"matches no known release \(found 2 versions: "
                                          r"0001_baseline, 0009_other\)"):
        registry.detect_release(["0009_other", "0001_baseline"])
    with pytest.raises(LookupError, match="found 0 versions: none"):
        registry.detect_release([])


def test_ledger_with_two_probes_is_refused() -> None:
    with pytest.raises(LookupError, match="more than one release"):
        registry.detect_release(["0001_init", "0002_approval_hardening"])


def test_profile_names_match_the_facts() -> None:
    assert PROFILE.migrations == ("0001_baseline", "0002_approval_hardening",
                                  "0003_operator_run_token_usage")
    assert PROFILE.ledger_table == "public.schema_migrations"
    assert len(PROFILE.verify_tables) == 28
    assert len(set(PROFILE.verify_tables)) == 28
    assert len(PROFILE.rls_tables) == 19
    assert set(PROFILE.rls_tables) <= set(PROFILE.rls_enabled_tables)
    assert len(PROFILE.rls_enabled_tables) == 28
    assert {"gateway_binding_revision", "gateway_resource_bindings"} <= set(
        PROFILE.retired_tables)
    assert not set(PROFILE.retired_tables) & set(PROFILE.verify_tables)
    assert len(PROFILE.primary_secrets) == 17
    assert len(PROFILE.derived_secrets) == 8
    for spec in PROFILE.primary_secrets:
        assert spec.hex_len in (48, 64)
    files = dict(PROFILE.migration_manifest)
    assert {f for f in files if f.endswith(".up.sql")} == set(PROFILE.migration_files)
    assert len(files) == 6
    assert PROFILE.kek_format == "css1"
    assert PROFILE.secret(PROFILE.kek_secret).env_var == "SECRET_STORE_KEK"
    assert PROFILE.idempotency_key_prefix == b"caracal:coordinator:idempotency:v1\x00"
    assert PROFILE.is_gateway_revocation_group("gateway-revocation:4f2a9c")
    assert not PROFILE.is_gateway_revocation_group("gateway-revocation")
    assert PROFILE_2026_06.is_gateway_revocation_group("gateway-revocation")
    assert dict(PROFILE.retention_defaults)["SESSION_RETENTION_DAYS"] == 90
    assert dict(PROFILE.retention_defaults)["IDEMPOTENCY_RETENTION_SECONDS"] == 604_800


def test_2026_06_profile_gained_the_same_parameters() -> None:
    """Every field the 1.0 profile fills is filled for 2026.06 too (FACTS-2026.06 §12)."""
    p = PROFILE_2026_06
    assert len(p.migration_manifest) == 47
    assert set(dict(p.migration_manifest)) == set(p.migration_files)
    assert p.agent_started_column == "spawned_at"
    assert PROFILE.agent_started_column == "started_at"
    assert p.gateway_revocation_group_start == "0"
    assert PROFILE.gateway_revocation_group_start == "$"
    assert p.canary_flow == "session-mandate"
    assert PROFILE.canary_flow == "gateway-mandate"
    assert p.outbox_retention_statuses == ("published", "dead")
    assert PROFILE.outbox_retention_statuses == ("published",)
    assert p.db_identity == "owner"
    assert PROFILE.db_identity == "per-service"
    assert set(p.rls_tables) <= set(p.rls_enabled_tables)


# --------------------------------------------------------------------------- the real bundle


@dataclasses.dataclass(frozen=True)
class RealRun:
    """The real bundle restored by the pipeline (services none), with its secrets."""

    state: RunState
    secrets: dict[str, str] = dataclasses.field(repr=False)

    def connect(self) -> psycopg.Connection[Any]:
        """A read-only superuser connection to the restored ``caracal`` database."""
        db = self.state.restored_databases["caracal"].read_only()
        return psycopg.connect(db.conninfo(), autocommit=True)


@pytest.fixture(scope="module")
def real_run() -> Iterator[RealRun]:
    """Run the pipeline on the real 1.0 bundle: fetch, restore, detect (services none)."""
    if not REAL_BUNDLE.exists():
        pytest.skip("the real 1.0 bundle is absent")
    workdir = Path(tempfile.mkdtemp(prefix="caracal-real10-"))
    workdir.chmod(0o755)
    secrets = {p.name: p.read_text() for p in REAL_SECRETS.iterdir()}
    try:
        spec = PipelineSpec(source="bundle", bundle=str(REAL_BUNDLE), bundle_secrets=REAL_SECRETS,
                            services="none", workdir=workdir)
        with start_stack(StackSpec(workdir=workdir)) as stack, run_pipeline(spec, stack) as state:
            yield RealRun(state, secrets)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@needs_real
def test_real_bundle_restores_and_is_detected_as_1_0(real_run: RealRun) -> None:
    state = real_run.state
    assert state.errors == {}
    assert state.release == "1.0"
    assert state.comparison_basis == "internal consistency"
    assert state.bundle is not None
    assert not state.bundle.has_fingerprint
    assert state.bundle.databases == ("caracal",)  # README: no caracal_auth database
    assert state.restored_redis is not None


@needs_real
def test_real_secret_set_is_the_1_0_inventory(real_run: RealRun) -> None:
    """17 primary hex files + 8 derived URLs (25 files), derived ones re-render exactly."""
    values = real_run.secrets
    assert set(values) == {s.name for s in PROFILE.secrets}
    for spec in PROFILE.primary_secrets:
        assert len(values[spec.name]) == spec.hex_len, spec.name
        bytes.fromhex(values[spec.name])
    primary = {s.name: values[s.name] for s in PROFILE.primary_secrets}
    assert render_derived(primary) == {s.name: values[s.name] for s in PROFILE.derived_secrets}


@needs_real
def test_real_ledger_is_the_three_1_0_versions(real_run: RealRun) -> None:
    with real_run.connect() as conn:
        rows = conn.execute("SELECT version FROM public.schema_migrations ORDER BY 1").fetchall()
    assert tuple(r[0] for r in rows) == PROFILE.migrations


@needs_real
def test_real_envelopes_open_with_the_secret_store_kek(real_run: RealRun) -> None:
    """Every CSS1 envelope names the KEK's id first, then opens with its location's AAD."""
    kek = envelope.parse_kek(real_run.secrets["secretStoreKek"])
    opened: dict[str, int] = {}
    with real_run.connect() as conn:
        for spec in PROFILE.sealed_locations:
            aad = f"{spec.aad_column}::text" if spec.aad_column else "%s::text"
            where = f"WHERE {spec.column} IS NOT NULL" + (f" AND {spec.where}"
                                                          if spec.where else "")
            params = () if spec.aad_column else (spec.aad,)
            rows = conn.execute(
                f"SELECT {spec.id_column}::text, {spec.column}, {aad} FROM {spec.table} {where}",
                params,
            ).fetchall()
            for row_id, sealed, row_aad in rows:
                sealed = bytes(sealed)
                assert envelope.css1_header(sealed).kek_id == envelope.kek_id(kek), row_id
                plain = envelope.css1_open([kek], sealed, row_aad)
                if spec.plaintext == "ec-p256-pem":
                    key = serialization.load_pem_private_key(plain, password=None)
                    assert isinstance(key, ec.EllipticCurvePrivateKey)
                    assert key.curve.name == "secp256r1"
            opened[spec.id] = len(rows)
    # README: 7 applications (6 managed custody copies), 2 provider secret configs, 1 workload
    # secret = 9 secret_store rows; 1 notification sink; Caracal's STS never ran, so the
    # bundle holds no zone signing key at all (a canary exchange would mint one).
    assert opened == {"secret-store": 9, "signing-keys": 0,
                      "provider-connection-access-tokens": 0,
                      "provider-connection-refresh-tokens": 0,
                      "notification-sink-secrets": 1, "operator-plan-secrets": 0}


@needs_real
def test_real_client_secret_custody_copies_match_the_hashes(real_run: RealRun) -> None:
    """The custody copy of each managed app opens and verifies against client_secret_hash."""
    from caracal_restore.reference.gen_common import verify_client_secret

    kek = envelope.parse_kek(real_run.secrets["secretStoreKek"])
    with real_run.connect() as conn:
        rows = conn.execute(
            "SELECT s.ref, s.envelope, a.client_secret_hash FROM secret_store s"
            " JOIN applications a ON s.ref = 'zones/' || a.zone_id || '/applications/' || a.id"
            " || '/clientSecret' WHERE a.registration_method = 'managed'"
        ).fetchall()
    assert len(rows) == 6
    for ref, sealed, stored in rows:
        secret = envelope.css1_open(kek, bytes(sealed), ref).decode()
        assert secret.startswith("cs_")
        assert len(secret) == 46
        assert verify_client_secret(secret, stored), ref


@needs_real
def test_real_audit_chain_verifies_except_the_rehash_marker(real_run: RealRun) -> None:
    """6 rows in 2 chains: content hashes and HMACs verify; the rehash marker is absent."""
    with real_run.connect() as conn:
        report = audit_chain.verify_audit_chain(conn,
                                                hmac_key=real_run.secrets["auditHmacKey"])
    assert report.rows_checked == 6
    assert report.hmac_checked
    assert {z: s.rows for z, s in report.zones.items()} == {
        "01a20c32-1b43-726b-a587-2011edeae34a": 4, "unknown": 2}
    assert all(s.hmac_checked == s.rows and s.hmac_failed == 0 for s in report.zones.values())
    # The Audit service never ran in the source (its rows were chained by a port), so
    # audit_chain_rehash is empty: starting Audit on this restore would re-sign every chain.
    assert {k: n for k, n in report.counts.items() if n} == {"marker_missing": 1}


@needs_real
def test_real_admin_audit_chain_links_and_hmacs_verify(real_run: RealRun) -> None:
    with real_run.connect() as conn:
        report = audit_chain.verify_admin_chain(conn, real_run.secrets["auditHmacKey"])
    assert report.ok, report.summary()
    assert report.rows_checked == 83
    assert None in report.zones  # the global chain (zone_id NULL) exists at 1.0
    assert sum(z.hmac_checked for z in report.zones.values()) == 72
    assert sum(z.unsigned_rows for z in report.zones.values()) == 11  # Coordinator rows


@needs_real
def test_real_admin_token_row_matches_the_secret(real_run: RealRun) -> None:
    token = real_run.secrets["caracalAdminToken"]
    with real_run.connect() as conn:
        rows = conn.execute(
            "SELECT token_sha256 FROM admin_tokens WHERE created_by = 'env-bootstrap'"
            " AND revoked_at IS NULL"
        ).fetchall()
    assert [bytes(r[0]) for r in rows] == [hashlib.sha256(token.encode()).digest()]


@needs_real
def test_real_idempotency_receipts_are_well_formed(real_run: RealRun) -> None:
    """Digests of 32 bytes, known operations, 2xx, a 7-day expiry (the key itself is unknown)."""
    with real_run.connect() as conn:
        rows = conn.execute(
            "SELECT operation, key_digest, request_digest, response_status, created_at,"
            " expires_at FROM coordinator_idempotency_receipts"
        ).fetchall()
    assert len(rows) == 2
    retention = dt.timedelta(seconds=dict(PROFILE.retention_defaults)[
        "IDEMPOTENCY_RETENTION_SECONDS"])
    for operation, key_digest, request_digest, status, created, expires in rows:
        assert operation in PROFILE.idempotency_operations
        assert len(bytes(key_digest)) == 32
        assert len(bytes(request_digest)) == 32
        assert 200 <= status <= 299
        assert expires - created == retention


@needs_real
def test_real_stream_signatures_verify(real_run: RealRun) -> None:
    """Every ``_sig`` verifies with streamsHmacKey, every audit ``sig`` with auditHmacKey."""
    endpoint = real_run.state.restored_redis
    assert endpoint is not None
    client: Any = redis_lib.Redis.from_url(endpoint.url())
    streams_key = bytes.fromhex(real_run.secrets["streamsHmacKey"])
    audit_key = bytes.fromhex(real_run.secrets["auditHmacKey"])
    signed = audit = 0
    try:
        for stream in PROFILE.signed_streams:
            for _id, fields in client.xrange(stream):
                assert b"_sig" in fields, stream
                expected = chainhash.stream_signature(streams_key, stream, fields)
                assert fields[b"_sig"].decode() == expected, stream
                signed += 1
        for _id, fields in client.xrange("caracal.audit.events"):
            assert fields[b"sig"].decode() == chainhash.producer_signature(audit_key,
                                                                            fields[b"data"])
            audit += 1
        groups = {g["name"].decode() for g in client.xinfo_groups("caracal.sessions.revoke")}
    finally:
        client.close()
    assert (signed, audit) == (14, 6)
    # The Gateway never ran: no gateway-revocation:<host> group; STS never consumed.
    assert groups == {"sts-revocation"}


@needs_real
def test_real_service_logins_authenticate(real_run: RealRun) -> None:
    """globals.sql restored the service roles' SCRAM verifiers: each DSN's password logs in."""
    db = real_run.state.restored_databases["caracal"]
    for name, role, password_file, dbname in SERVICE_DSNS:
        if dbname != "caracal":
            continue  # caracal_auth is not in this bundle
        login = dataclasses.replace(db, user=role, password=real_run.secrets[password_file])
        with psycopg.connect(login.conninfo(), autocommit=True) as conn:
            row = conn.execute("SELECT current_user").fetchone()
        assert row == (role,), name


# ------------------------------------------------------------- a whole 1.0 reference run


def test_pipeline_builds_restores_and_detects_a_1_0_reference() -> None:
    """``--caracal-release 1.0``: a 1.0 source, its bundle restored, 1.0 detected, services up."""
    workdir = Path(tempfile.mkdtemp(prefix="caracal-run10-"))
    workdir.chmod(0o755)
    try:
        spec = PipelineSpec(reference_release="1.0", audit_events=120, zones=2, workdir=workdir)
        with start_stack(StackSpec(workdir=workdir)) as stack, run_pipeline(spec, stack) as state:
            assert state.errors == {}
            assert state.release == "1.0"
            assert state.comparison_basis == "fingerprint"
            assert state.bundle is not None
            assert state.bundle.databases == PROFILE.databases + PROFILE.optional_databases
            assert state.services.mode == "reference"
            assert state.services.coordinator_url
            ready = httpx.get(f"{state.services.coordinator_url}/ready", trust_env=False)
            assert ready.json() == {"ok": True}
            db = state.restored_databases["caracal"]
            with psycopg.connect(db.conninfo()) as conn:
                ledger = conn.execute("SELECT version FROM public.schema_migrations"
                                      " ORDER BY 1").fetchall()
            assert tuple(r[0] for r in ledger) == PROFILE.migrations
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

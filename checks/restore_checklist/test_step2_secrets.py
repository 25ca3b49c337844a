"""Restore checklist step 2: "Restore required secrets into the environment secret store".

Every secret of the release's inventory is in the isolated secret store, well formed, and —
the part a file listing cannot show — belongs to the restored data: the KEK opens every
sealed value, the audit key verifies the chain HMACs and producer signatures, the streams key
verifies ``_sig``, the admin token matches its stored hashes, and the database and Redis
passwords log in to the restored servers. No secret value appears in any message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

import psycopg
import pytest
import redis as redis_lib

from caracal_restore.audit_chain import Report
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.inspect import secrets as inspect_secrets
from caracal_restore.inspect.tables import shorten
from caracal_restore.profiles import Profile
from caracal_restore.runstate import RunState
from checks.restore_checklist.expectations import (
    AUDIT_CHAINS,
    CHAIN_VERIFIED_TABLE,
    OTHER_SEALED,
    SEALED,
    STEP2,
    ChainTable,
    SealedClause,
)
from fixtures import evidence
from fixtures.controls import Severity, control


def _key(secrets: Mapping[str, str], name: str) -> bytes:
    """A hex key from the store; a missing or malformed key violates the control."""
    value = secrets.get(name)
    assert value, f"{name} is missing from the restored secret store"
    try:
        return inspect_secrets.parse_hex_key(value)
    except ValueError as exc:
        raise AssertionError(f"{name} {exc}") from None


def _signature_message(result: inspect_secrets.SignatureResult, key_name: str) -> str:
    cause = (f"{key_name} is not the key this evidence was signed with"
             if result.all_failed else "some signed values were changed or signed otherwise")
    return (f"{result.failed} of {result.signed} {result.what} signatures do not verify with "
            f"the restored {key_name} ({cause}); first: {shorten(list(result.failures), 3)}")


@control("RC-2.1", feature=STEP2, grade="configured", severity=Severity.CRITICAL)
def test_secret_inventory_is_present_and_well_formed(profile: Profile,
                                                      restored_secrets: Mapping[str, str]
                                                      ) -> None:
    """RC-2.1 Every secret of the release is in the secret store, as non-empty hex of its length."""
    shapes = inspect_secrets.inventory(profile, restored_secrets)
    evidence.json("secret inventory (no values)", [dataclasses.asdict(s) for s in shapes])
    bad = [f"{s.name} {s.problem}" for s in shapes if s.problem]
    assert not bad, (
        f"{len(bad)} of the {len(shapes)} secrets of release {profile.release} are not "
        f"restored as required: {shorten(bad)}")


@control("RC-2.2", feature=STEP2, grade="configured", severity=Severity.NORMAL)
def test_derived_secrets_rerender_from_the_primaries(profile: Profile,
                                                      restored_secrets: Mapping[str, str]
                                                      ) -> None:
    """RC-2.2 The derived secrets (database and Redis URLs) re-render from the primary secrets."""
    checks = inspect_secrets.derived_secrets(profile, restored_secrets)
    evidence.json("derived secrets (passwords shown as their names)",
                  [dataclasses.asdict(c) for c in checks])
    bad = [f for c in checks for f in c.findings]
    assert checks, f"release {profile.release} names no derived secret to check"
    assert not bad, f"{shorten(bad)}; derived secrets must be rendered from the primaries"


@control("RC-2.3", feature=STEP2, grade="demonstrated", severity=Severity.CRITICAL)
@pytest.mark.parametrize("sealed", SEALED, ids=attrgetter("clause"))
def test_kek_opens_every_sealed_value(sealed: SealedClause, profile: Profile,
                                      restored_secrets: Mapping[str, str],
                                      restored_conn: psycopg.Connection[Any]) -> None:
    """RC-2.3 The restored KEK opens every value sealed at this location, and it parses."""
    named = {c.key for c in SEALED}
    specs = [s for s in profile.sealed_locations
             if s.id == sealed.key or (sealed.key == OTHER_SEALED and s.id not in named)]
    if not specs:
        pytest.skip(f"not applicable: every location release {profile.release} seals is "
                    "covered by its own clause" if sealed.key == OTHER_SEALED else
                    f"not applicable: release {profile.release} seals no {sealed.holds}")
    kek = restored_secrets.get(profile.kek_secret)
    assert kek, f"{profile.kek_secret} is missing from the secret store: {sealed.holds} cannot open"
    results = [inspect_secrets.open_sealed(restored_conn, s, kek, profile.kek_format)
               for s in specs]
    evidence.json("sealed values opened", [dataclasses.asdict(r) for r in results])
    problems = [f"{profile.kek_secret}: {r.kek_problem}" for r in results if r.kek_problem]
    assert not problems, "; ".join(problems)
    rows = sum(r.rows for r in results)
    if rows == 0:
        pytest.skip("not applicable: no value is sealed at "
                    + ", ".join(f"{r.table}.{r.column}" for r in results))
    failures = [f for r in results for f in r.failures]
    opened = sum(r.opened for r in results)
    where = ", ".join(f"{r.table}.{r.column}" for r in results)
    assert not failures, (
        f"{profile.kek_secret} does not open {len(failures)} of {rows} {sealed.holds} "
        f"({where}): {shorten(failures, 3)}; "
        + ("the restored KEK is not the one the database was sealed with"
           if opened == 0 else "those values are damaged"))


@control("RC-2.4", feature=STEP2, grade="demonstrated", severity=Severity.CRITICAL)
@pytest.mark.parametrize("chain", AUDIT_CHAINS, ids=attrgetter("clause"))
def test_audit_key_verifies_chain_hmacs(chain: ChainTable, profile: Profile,
                                        restored_secrets: Mapping[str, str],
                                        restored_conn: psycopg.Connection[Any],
                                        chain_verification: Callable[[], Report | None]
                                        ) -> None:
    """RC-2.4 The restored audit HMAC key verifies the chain_hmac of every signed row."""
    key = _key(restored_secrets, profile.audit_hmac_secret)
    result, by = None, "this check"
    report = chain_verification() if chain.table == CHAIN_VERIFIED_TABLE else None
    if report is not None:  # the same recomputation, made once per run by the verifier
        rows = inspect_secrets.table_rows(restored_conn, chain.table)
        result = inspect_secrets.chain_hmacs_as_verified(report, key, rows)
        by = "the audit chain verification of SY-2.a (same key, every row)"
    if result is None:
        result = inspect_secrets.verify_chain_hmacs(restored_conn, chain.table, key)
    evidence.json("chain HMACs recomputed (all signed rows)",
                  {**dataclasses.asdict(result), "recomputed by": by})
    if result.signed == 0:
        pytest.skip(f"not applicable: no {chain.table} row carries a chain_hmac "
                    f"({result.unsigned} rows written without the key)")
    assert result.failed == 0, _signature_message(result, profile.audit_hmac_secret)


@control("RC-2.5", feature=STEP2, grade="demonstrated", severity=Severity.NORMAL)
def test_audit_key_verifies_audit_stream(profile: Profile, restored_secrets: Mapping[str, str],
                                         restored_redis: redis_lib.Redis) -> None:
    """RC-2.5 The restored audit HMAC key verifies every producer signature waiting in Redis."""
    key = _key(restored_secrets, profile.audit_hmac_secret)
    result = inspect_secrets.verify_audit_stream(restored_redis, key)
    evidence.json("audit stream signatures", dataclasses.asdict(result))
    if result.signed == 0:
        pytest.skip("not applicable: no signed audit event is waiting in the restored Redis")
    assert result.failed == 0, _signature_message(result, profile.audit_hmac_secret)


@control("RC-2.6", feature=STEP2, grade="demonstrated", severity=Severity.NORMAL)
def test_streams_key_verifies_stream_signatures(profile: Profile,
                                                restored_secrets: Mapping[str, str],
                                                restored_redis: redis_lib.Redis) -> None:
    """RC-2.6 The restored streams HMAC key verifies the ``_sig`` of every stream entry."""
    key = _key(restored_secrets, profile.streams_hmac_secret)
    result = inspect_secrets.verify_stream_sigs(restored_redis, key, profile.signed_streams)
    evidence.json("stream _sig verification", dataclasses.asdict(result))
    if result.signed == 0:
        pytest.skip("not applicable: no stream entry in the restored Redis carries _sig")
    assert result.failed == 0, _signature_message(result, profile.streams_hmac_secret)


@control("RC-2.7", feature=STEP2, grade="demonstrated", severity=Severity.CRITICAL)
def test_admin_token_matches_its_stored_hash(profile: Profile,
                                             restored_secrets: Mapping[str, str],
                                             restored_conn: psycopg.Connection[Any]) -> None:
    """RC-2.7 The restored admin token is the env-bootstrap token the database stores hashed."""
    token = restored_secrets.get(profile.admin_token_secret)
    assert token, f"{profile.admin_token_secret} is missing from the restored secret store"
    result = inspect_secrets.admin_token(restored_conn, token, profile.admin_token_secret)
    evidence.json("admin token against admin_tokens", dataclasses.asdict(result))
    assert not result.findings, "; ".join(result.findings)


@control("RC-2.8", feature=STEP2, grade="demonstrated", severity=Severity.CRITICAL)
def test_database_password_logs_in(profile: Profile, run_state: RunState,
                                   restored_secrets: Mapping[str, str]) -> None:
    """RC-2.8 The restored database password (and databaseUrl's) logs in to the restored server."""
    db = run_state.restored_databases["caracal"]
    probe = inspect_secrets.pg_login("a password nobody has", db.host, db.port, db.dbname,
                                     profile.db_owner, inspect_secrets.wrong_password())
    if probe.accepted:
        raise CannotEvaluate(f"{probe.where} accepts any password ({probe.answer}): a login "
                             "proves nothing about the restored password")
    logins = [probe]
    password = restored_secrets.get(profile.pg_password_secret)
    assert password, f"{profile.pg_password_secret} is missing from the restored secret store"
    logins.append(inspect_secrets.pg_login(profile.pg_password_secret, db.host, db.port,
                                           db.dbname, profile.db_owner, password))
    url_user, url_password = inspect_secrets.url_password(
        restored_secrets.get(profile.database_url_secret, ""))
    assert url_password, f"{profile.database_url_secret} is missing or carries no password"
    logins.append(inspect_secrets.pg_login(profile.database_url_secret, db.host, db.port,
                                           db.dbname, url_user or profile.db_owner, url_password))
    evidence.json("logins to the restored PostgreSQL", [dataclasses.asdict(x) for x in logins])
    refused = [f"{x.label} as {x.where}: {x.answer}" for x in logins[1:] if not x.accepted]
    assert not refused, (
        f"the restored server refuses the restored credentials: {'; '.join(refused)}; the "
        "services connect with them, so they could not start")


@control("RC-2.9", feature=STEP2, grade="demonstrated", severity=Severity.CRITICAL)
def test_redis_password_logs_in(profile: Profile, run_state: RunState,
                                restored_secrets: Mapping[str, str]) -> None:
    """RC-2.9 The restored Redis password (and redisUrl's) authenticates to the restored Redis."""
    if run_state.restored_redis is None:
        raise CannotEvaluate("the bundle held no Redis AOF, so no Redis was restored to log in to")
    where = run_state.restored_redis
    probe = inspect_secrets.redis_login("no password", where.host, where.port, None)
    if probe.accepted:
        raise CannotEvaluate(f"{probe.where} answers without AUTH: a login proves nothing "
                             "about the restored password")
    logins = [probe]
    password = restored_secrets.get(profile.redis_password_secret)
    assert password, f"{profile.redis_password_secret} is missing from the restored secret store"
    logins.append(inspect_secrets.redis_login(profile.redis_password_secret, where.host,
                                              where.port, password))
    _user, url_password = inspect_secrets.url_password(
        restored_secrets.get(profile.redis_url_secret, ""))
    assert url_password, f"{profile.redis_url_secret} is missing or carries no password"
    logins.append(inspect_secrets.redis_login(profile.redis_url_secret, where.host, where.port,
                                              url_password))
    evidence.json("logins to the restored Redis", [dataclasses.asdict(x) for x in logins])
    refused = [f"{x.label}: {x.answer}" for x in logins[1:] if not x.accepted]
    assert not refused, (
        f"the restored Redis refuses the restored credentials: {'; '.join(refused)}")

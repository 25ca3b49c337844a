"""Runtime secrets of a 1.0 deployment, generated the way Caracal's bootstrap does it.

Seventeen primary files, each the lowercase hex of N random bytes with no trailing newline,
and eight derived URLs re-rendered from them (FACTS-1.0 §15): the admin ``databaseUrl``, the
five service DSNs ``postgres://caracal<svc>:<svc password>@postgres:5432/caracal``,
``authDatabaseUrl`` (database ``caracal_auth``) and ``redisUrl``. Every value is registered
with the redactor.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Mapping

from caracal_restore.profiles.release_1_0 import PROFILE, SERVICE_DSNS
from caracal_restore.redact import REDACTOR

AUTH_DB = "caracal_auth"


def render_derived(
    primary: Mapping[str, str],
    *,
    pg_user: str = "caracal",
    pg_db: str = "caracal",
    pg_host: str = "postgres",
    pg_port: int = 5432,
    redis_host: str = "redis",
    redis_port: int = 6379,
) -> dict[str, str]:
    """The eight derived secrets for the given hosts and ports."""
    at = f"{pg_host}:{pg_port}"
    derived = {"databaseUrl": f"postgres://{pg_user}:{primary['postgresPassword']}@{at}/{pg_db}"}
    for name, role, password_file, db in SERVICE_DSNS:
        database = AUTH_DB if db == AUTH_DB else pg_db
        derived[name] = f"postgres://{role}:{primary[password_file]}@{at}/{database}"
    derived["redisUrl"] = f"redis://:{primary['redisPassword']}@{redis_host}:{redis_port}"
    REDACTOR.add(*derived.values())
    return derived


def generate_primary() -> dict[str, str]:
    """Fresh random values for the seventeen primary secret files."""
    out: dict[str, str] = {}
    for spec in PROFILE.primary_secrets:
        assert spec.hex_len is not None
        out[spec.name] = _random.token_bytes(spec.hex_len // 2).hex()
    REDACTOR.add(*out.values())
    return out


def generate_secrets(
    *,
    pg_user: str = "caracal",
    pg_db: str = "caracal",
    pg_host: str = "postgres",
    pg_port: int = 5432,
    redis_host: str = "redis",
    redis_port: int = 6379,
) -> dict[str, str]:
    """All 25 secret files of a fresh 1.0 deployment (new randomness on every call)."""
    primary = generate_primary()
    return primary | render_derived(primary, pg_user=pg_user, pg_db=pg_db, pg_host=pg_host,
                                    pg_port=pg_port, redis_host=redis_host,
                                    redis_port=redis_port)

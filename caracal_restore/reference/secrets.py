"""Runtime secrets of a 2026.06 deployment, generated the way Caracal's bootstrap does it.

Nine primary files, each the lowercase hex of N random bytes with no trailing newline
(FACTS-2026.06 §8), and two derived URLs re-rendered from them:
``postgres://<user>:<postgresPassword>@postgres:5432/<db>`` and
``redis://:<redisPassword>@redis:6379``. Every value is registered with the redactor.
"""

from __future__ import annotations

import secrets as _random
from collections.abc import Mapping

from caracal_restore.profiles.release_2026_06 import PROFILE
from caracal_restore.redact import REDACTOR


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
    """The two derived secrets (``databaseUrl``, ``redisUrl``) for the given hosts and ports."""
    derived = {
        "databaseUrl": (
            f"postgres://{pg_user}:{primary['postgresPassword']}@{pg_host}:{pg_port}/{pg_db}"
        ),
        "redisUrl": f"redis://:{primary['redisPassword']}@{redis_host}:{redis_port}",
    }
    REDACTOR.add(*derived.values())
    return derived


def generate_primary() -> dict[str, str]:
    """Fresh random values for the nine primary secret files."""
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
    """All eleven secret files of a fresh 2026.06 deployment (new randomness on every call)."""
    primary = generate_primary()
    return primary | render_derived(
        primary,
        pg_user=pg_user,
        pg_db=pg_db,
        pg_host=pg_host,
        pg_port=pg_port,
        redis_host=redis_host,
        redis_port=redis_port,
    )

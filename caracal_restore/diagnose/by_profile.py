"""Each symptom family run with one release profile's names (the one place that wires them).

The checks' fixtures and the fault-injection harness both call these, so a self-test diagnoses a
broken copy exactly as a run's checks would. Secrets are the restored store's values by file
name; ``fingerprint`` is the source database's (None: internal consistency only).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import redis as redis_lib

from caracal_restore.audit_chain import Report
from caracal_restore.diagnose import Diagnosis
from caracal_restore.diagnose import admin_chain as admin_chain_diag
from caracal_restore.diagnose import chain as chain_diag
from caracal_restore.diagnose import kek as kek_diag
from caracal_restore.diagnose import revocation as revocation_diag
from caracal_restore.diagnose import routing as routing_diag
from caracal_restore.diagnose._common import DiagnosticError
from caracal_restore.parquet_export import ArchiveIndex
from caracal_restore.profiles import Profile


def sealed_columns(profile: Profile) -> tuple[kek_diag.SealedColumn, ...]:
    """The release's sealed locations (the profile's table; 2026.06's when it names none)."""
    if profile.sealed_locations:
        return tuple(kek_diag.SealedColumn.from_spec(s) for s in profile.sealed_locations)
    return kek_diag.SEALED_2026_06


def kek(conn: psycopg.Connection[Any], secrets: Mapping[str, str], profile: Profile,
        fingerprint: Mapping[str, Any] | None, kids: Sequence[str] = ()) -> Diagnosis:
    """Every sealed value opened with the restored keyring; missing signing keys."""
    if profile.kek_format not in ("", "zone-chacha20", "css1"):
        raise DiagnosticError(f"release {profile.release}: unknown envelope format "
                              f"{profile.kek_format!r}")
    return kek_diag.diagnose_offline(
        conn, secrets.get(profile.kek_secret), fingerprint=fingerprint,
        lineage_table=profile.lineage_table, expected_kids=kids, kek_secret=profile.kek_secret,
        columns=sealed_columns(profile), fmt=profile.kek_format or "zone-chacha20",
        kek_env=profile.secret(profile.kek_secret).env_var,
        previous_hex=(secrets.get(profile.kek_previous_env) if profile.kek_previous_env
                      else None),
        previous_env=profile.kek_previous_env)


def chain(conn: psycopg.Connection[Any], secrets: Mapping[str, str], profile: Profile,
          fingerprint: Mapping[str, Any] | None,
          archive: ArchiveIndex | None) -> tuple[Diagnosis, Report]:
    """The audit_events chain verifier with the restored key, the heads and the archive."""
    return chain_diag.diagnose(conn, hmac_key_hex=secrets.get(profile.audit_hmac_secret),
                               fingerprint=fingerprint, archive=archive,
                               hmac_secret=profile.audit_hmac_secret)


def admin_chain(conn: psycopg.Connection[Any], secrets: Mapping[str, str], profile: Profile,
                fingerprint: Mapping[str, Any] | None) -> tuple[Diagnosis, Report]:
    """The admin_audit_events chains with the restored key."""
    return admin_chain_diag.diagnose(conn, hmac_key_hex=secrets.get(profile.audit_hmac_secret),
                                     fingerprint=fingerprint,
                                     hmac_secret=profile.audit_hmac_secret)


def routing(conn: psycopg.Connection[Any], profile: Profile,
            fingerprint: Mapping[str, Any] | None) -> Diagnosis:
    """Bindings (a release that has them) or resources and providers (1.0)."""
    audience = profile.control_audience or routing_diag.CONTROL_AUDIENCE
    if profile.has_gateway_bindings:
        return routing_diag.diagnose_offline(conn, fingerprint=fingerprint,
                                             control_audience=audience)
    return routing_diag.diagnose_resources_offline(conn, fingerprint=fingerprint,
                                                   control_audience=audience)


def revocation(conn: psycopg.Connection[Any], client: redis_lib.Redis | None, profile: Profile,
               fingerprint: Mapping[str, Any] | None) -> Diagnosis:
    """Postgres revocation state against the source; the in-flight invariant against Redis."""
    return revocation_diag.diagnose_offline(conn, client, fingerprint=fingerprint,
                                            sessions_table=profile.lineage_table,
                                            agents_table=profile.agent_table)

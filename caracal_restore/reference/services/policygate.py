"""The STS policy step of release 2026.06 (FACTS-2026.06 §2.3, §7.2).

Bundle: ``SELECT … FROM policy_set_bindings WHERE zone_id=$1 AND active_version_id IS NOT
NULL LIMIT 1`` (no ORDER BY, as the release does); the version's ``manifest_json`` lists
``{"policy_version_id"}`` entries that must all exist (else the bundle is incomplete: 503
``policy_eval_failed``); ``manifest_sha256`` is carried, not re-checked. No active binding →
deny-all (``manifest_sha`` ``no_active_policy_set``). Each version's Rego is evaluated with
the canary convention (``data.caracal.authz.result``): allow when any says allow with status
``complete``; a malformed result → 503; otherwise (deny or undefined) → 403 ``policy denied``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import psycopg

Evaluator = Callable[[str, str, str], "dict[str, Any] | None"]

NO_ACTIVE_POLICY_SET = "no_active_policy_set"


class PolicyUnavailable(Exception):
    """The bundle is incomplete or a result is malformed (HTTP 503 ``policy_eval_failed``)."""


@dataclasses.dataclass(frozen=True)
class PolicyOutcome:
    """What the policy step decided, with the identifiers audit events carry."""

    decision: str
    evaluation_status: str
    determining_policies: Any
    diagnostics: Any
    policy_set_id: str = ""
    policy_set_version_id: str = ""
    manifest_sha: str = NO_ACTIVE_POLICY_SET

    @property
    def allowed(self) -> bool:
        """True for an allow decision."""
        return self.decision == "allow"


def default_evaluator() -> Evaluator:
    """``reference.policy.evaluate`` (imported late: it is another module's file)."""
    from caracal_restore.reference.policy import evaluate

    return evaluate


def _manifest_ids(manifest: Any) -> list[str]:
    if isinstance(manifest, str):
        manifest = json.loads(manifest)
    if not isinstance(manifest, list):
        raise PolicyUnavailable("policy manifest is not a list")
    ids = []
    for entry in manifest:
        if not isinstance(entry, dict) or not entry.get("policy_version_id"):
            raise PolicyUnavailable("policy manifest entry without policy_version_id")
        ids.append(str(entry["policy_version_id"]))
    return ids


def decide(conn: psycopg.Connection[Any], evaluate: Evaluator, zone_id: str,
           application_id: str, resource_identifier: str) -> PolicyOutcome:
    """Load the zone's active bundle and evaluate it for one application and resource."""
    binding = conn.execute(
        "SELECT policy_set_id, active_version_id FROM policy_set_bindings"
        " WHERE zone_id = %s AND active_version_id IS NOT NULL LIMIT 1",
        (zone_id,),
    ).fetchone()
    if binding is None:
        return PolicyOutcome("deny", "complete", [], [])
    policy_set_id, version_id = str(binding[0]), str(binding[1])
    version = conn.execute(
        "SELECT manifest_json, manifest_sha256 FROM policy_set_versions WHERE id = %s",
        (version_id,),
    ).fetchone()
    if version is None:
        raise PolicyUnavailable(f"policy bundle incomplete: set version {version_id} missing")
    wanted = _manifest_ids(version[0])
    found = dict(conn.execute(
        "SELECT id, content FROM policy_versions WHERE id = ANY(%s)", (wanted,)
    ).fetchall())
    missing = [v for v in wanted if v not in found]
    if missing:
        raise PolicyUnavailable(f"policy bundle incomplete: missing versions {missing}")
    ids = {"policy_set_id": policy_set_id, "policy_set_version_id": version_id,
           "manifest_sha": str(version[1] or "")}
    denial: dict[str, Any] | None = None
    for version_id_ in wanted:
        result = evaluate(str(found[version_id_]), application_id, resource_identifier)
        if result is None:
            continue
        decision, status = result.get("decision"), result.get("evaluation_status")
        if decision not in ("allow", "deny") or status != "complete":
            raise PolicyUnavailable("policy result is not a complete allow/deny")
        if decision == "allow":
            return PolicyOutcome("allow", "complete", result.get("determining_policies", []),
                                 result.get("diagnostics", []), **ids)
        denial = denial or result
    if denial is None:
        return PolicyOutcome("deny", "complete", [], [], **ids)
    return PolicyOutcome("deny", "complete", denial.get("determining_policies", []),
                         denial.get("diagnostics", []), **ids)

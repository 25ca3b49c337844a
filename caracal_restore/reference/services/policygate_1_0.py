"""The STS policy step of release 1.0 (FACTS-1.0 §14.3–14.5, §17).

Bundle: the zone's one active ``policy_set_bindings`` row → ``policy_set_versions``; STS
recomputes ``manifest_sha256`` as SHA-256 of the compact manifest and refuses a mismatch
("policy manifest hash mismatch", HTTP 503); every referenced ``policy_versions`` row must
exist. Each version must be a data document (``reference.policy.parse_data_document``); a
module that is not one installs deny-all. No active binding → deny-all with ``manifest_sha``
``no_active_policy_set``.

The decision contract, as far as the reference needs it (our reading of the facts):

- bootstrap (``caracal-bootstrap``): the requested scopes are exactly ``{agent:lifecycle}``
  and ``app_ids[grants[resource].application]`` is the calling application, and no
  ``restrict`` entry names the resource;
- delegated mint (``caracal-<app>-mint``): some label of the presenting governed Session
  names a role of ``grants[resource].roles`` whose scopes contain every requested scope.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg

from caracal_restore.reference.policy import parse_data_document
from caracal_restore.reference.services.policygate import (
    NO_ACTIVE_POLICY_SET,
    PolicyOutcome,
    PolicyUnavailable,
)

__all__ = ["BOOTSTRAP_SCOPE", "Bundle", "PolicyOutcome", "PolicyUnavailable", "decide_bootstrap",
           "decide_mint", "load_bundle"]

BOOTSTRAP_SCOPE = "agent:lifecycle"
NO_RULE = [{"code": "no_rule_matched", "message": "no decision-contract rule matched"}]


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A zone's loaded policy bundle: merged data documents and the ids audit events carry."""

    app_ids: Mapping[str, str]
    grants: Mapping[str, Any]
    restrict: Mapping[str, Any]
    policy_set_version_id: str = ""
    manifest_sha: str = NO_ACTIVE_POLICY_SET
    valid: bool = True

    def outcome(self, decision: str, determining: Any, diagnostics: Any) -> PolicyOutcome:
        """An outcome carrying this bundle's ids (STS leaves ``policy_set_id`` empty)."""
        return PolicyOutcome(decision, "complete", determining, diagnostics, "",
                             self.policy_set_version_id, self.manifest_sha)


def manifest_sha256(manifest: Sequence[Mapping[str, Any]]) -> str:
    """SHA-256 hex of the compact ``[{"policy_version_id": …}]`` list (Go json.Marshal)."""
    entries = [{"policy_version_id": str(m["policy_version_id"])} for m in manifest]
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def load_bundle(conn: psycopg.Connection[Any], zone_id: str) -> Bundle:
    """The zone's active bundle (``PolicyUnavailable`` on a hash mismatch or a missing row)."""
    binding = conn.execute(
        "SELECT active_version_id FROM policy_set_bindings"
        " WHERE zone_id = %s AND active_version_id IS NOT NULL", (zone_id,),
    ).fetchall()
    if not binding:
        return Bundle({}, {}, {}, valid=False)
    version_id = str(binding[0][0])
    version = conn.execute(
        "SELECT manifest_json, manifest_sha256 FROM policy_set_versions WHERE id = %s",
        (version_id,),
    ).fetchone()
    if version is None:
        raise PolicyUnavailable(f"policy bundle incomplete: set version {version_id} missing")
    manifest = json.loads(version[0]) if isinstance(version[0], str) else version[0]
    if not isinstance(manifest, list) or not all(
            isinstance(m, dict) and m.get("policy_version_id") for m in manifest):
        raise PolicyUnavailable("policy manifest is not a list of policy_version_id entries")
    if manifest_sha256(manifest) != version[1]:
        raise PolicyUnavailable("policy manifest hash mismatch")
    wanted = [str(m["policy_version_id"]) for m in manifest]
    found = dict(conn.execute(
        "SELECT id, content FROM policy_versions WHERE id = ANY(%s)", (wanted,)).fetchall())
    missing = [v for v in wanted if v not in found]
    if missing:
        raise PolicyUnavailable(f"policy bundle incomplete: missing versions {missing}")
    app_ids: dict[str, str] = {}
    grants: dict[str, Any] = {}
    restrict: dict[str, Any] = {}
    valid = True
    for vid in wanted:
        doc = parse_data_document(str(found[vid]))
        if doc is None:
            valid = False  # a module that is not a data document: deny-all for the zone
            continue
        app_ids.update(doc.get("app_ids") or {})
        grants.update(doc.get("grants") or {})
        restrict.update(doc.get("restrict") or {})
    return Bundle(app_ids, grants, restrict, version_id, str(version[1] or ""), valid)


def decide_bootstrap(bundle: Bundle, application_id: str, resource: str,
                     scopes: Iterable[str]) -> PolicyOutcome:
    """The bootstrap rule: scope set exactly {agent:lifecycle}, the app owns the resource."""
    grant = bundle.grants.get(resource) if bundle.valid else None
    owner = bundle.app_ids.get(str(grant.get("application"))) if isinstance(grant, dict) else None
    if (set(scopes) == {BOOTSTRAP_SCOPE} and owner == application_id
            and resource not in bundle.restrict):
        return bundle.outcome("allow", [{"policy": "caracal-bootstrap"}], [])
    return bundle.outcome("deny", [], NO_RULE)


def decide_mint(bundle: Bundle, application_id: str, resource: str, scopes: Sequence[str],
                labels: Iterable[str]) -> PolicyOutcome:
    """The delegated mint rule: a session label's role on the resource covers the scopes."""
    grant = bundle.grants.get(resource) if bundle.valid else None
    roles = grant.get("roles") if isinstance(grant, dict) else None
    if scopes and isinstance(roles, dict) and resource not in bundle.restrict:
        for label in labels:
            granted = roles.get(label)
            if isinstance(granted, list) and set(scopes) <= set(granted):
                return bundle.outcome("allow", [{"policy": f"caracal-{application_id}-mint"}],
                                      [])
    return bundle.outcome("deny", [], NO_RULE)

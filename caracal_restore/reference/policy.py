"""The canary Rego convention shared by the reference generator and the reference STS.

At 2026.06 a zone's policy is raw Rego that must itself define ``data.caracal.authz.result``
(FACTS-2026.06 §7.2). The reference deployment writes one narrow shape of it::

    package caracal.authz

    import rego.v1

    default result := {"decision": "deny", ...}

    result := {"decision": "allow", ..., "determining_policies": ["<policy_id>"], ...} if {
    \tinput.principal.id == "<application_id>"
    \tinput.resource.identifier == "<resource identifier>"
    }

and ``evaluate`` interprets exactly that shape (equality tests on ``input`` paths), so the
reference STS does not need OPA. Text outside the shape never evaluates to allow.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

PACKAGE = "caracal.authz"

DENY_RESULT: dict[str, Any] = {
    "decision": "deny",
    "evaluation_status": "complete",
    "determining_policies": [],
    "diagnostics": [],
}

_PACKAGE_RE = re.compile(r"^package\s+caracal\.authz\s*$", re.MULTILINE)
_DEFAULT_RE = re.compile(r"^default\s+result\s*:=\s*(\{.*\})\s*$", re.MULTILINE)
_BLOCK_RE = re.compile(
    r"^result[ \t]*:=[ \t]*(\{[^\n]*\})[ \t]+if[ \t]*\{[ \t]*\n((?:[^\n]*\n)*?)\}[ \t]*$",
    re.MULTILINE,
)
_COND_RE = re.compile(r'^input((?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*==\s*("(?:[^"\\]|\\.)*")$')


def allow_result(policy_id: str) -> dict[str, Any]:
    """The result object an allow block yields for ``policy_id``."""
    return {
        "decision": "allow",
        "evaluation_status": "complete",
        "determining_policies": [policy_id],
        "diagnostics": [],
    }


def render_policy(policy_id: str, allows: Sequence[tuple[str, str]]) -> str:
    """Rego text allowing each (application id, resource identifier) pair, denying the rest."""
    parts = [
        f"package {PACKAGE}\n",
        "import rego.v1\n",
        f"default result := {json.dumps(DENY_RESULT)}\n",
    ]
    seen: set[tuple[str, str]] = set()
    for application_id, resource_identifier in allows:
        if (application_id, resource_identifier) in seen:
            continue
        seen.add((application_id, resource_identifier))
        parts.append(
            f"result := {json.dumps(allow_result(policy_id))} if {{\n"
            f"\tinput.principal.id == {json.dumps(application_id)}\n"
            f"\tinput.resource.identifier == {json.dumps(resource_identifier)}\n"
            "}\n"
        )
    return "\n".join(parts)


_MISSING = object()


def _lookup(doc: Mapping[str, Any], path: str) -> Any:
    value: Any = doc
    for key in path.strip(".").split("."):
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _block_matches(body: str, input_doc: Mapping[str, Any]) -> bool:
    conditions = [line.strip() for line in body.splitlines() if line.strip()]
    if not conditions:
        return False
    for line in conditions:
        match = _COND_RE.match(line)
        if not match:
            return False  # outside the convention: never allow
        expected = json.loads(match.group(2))
        if _lookup(input_doc, match.group(1)) != expected:
            return False
    return True


def evaluate_input(rego_text: str, input_doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """``data.caracal.authz.result`` for an input document, or None when undefined."""
    if not _PACKAGE_RE.search(rego_text):
        return None
    for match in _BLOCK_RE.finditer(rego_text):
        if _block_matches(match.group(2), input_doc):
            return dict(json.loads(match.group(1)))
    default = _DEFAULT_RE.search(rego_text)
    return dict(json.loads(default.group(1))) if default else None


def evaluate(
    rego_text: str, application_id: str, resource_identifier: str
) -> dict[str, Any] | None:
    """The result for a principal and a resource: first matching allow, else the default."""
    return evaluate_input(
        rego_text,
        {"principal": {"id": application_id}, "resource": {"identifier": resource_identifier}},
    )


# ------------------------------------------------------------------ release 1.0 (added)
#
# At 1.0 a zone's policies are data documents (FACTS-1.0 §14.3, §17): the admin SDK's
# ``authorGrantsDocument`` shape, which the platform's decision contract reads::
#
#     # caracal:data-document
#     package caracal.authz
#     import rego.v1
#     app_ids := {"<key>": "<application id>", ...}
#     grants := {"<resource>": {"application": "<key>", "roles": {"<role>": [scopes]}}}
#
# ``render_data_document`` writes that shape (compact JSON values); ``parse_data_document``
# reads it back, also accepting Rego object literals spread over lines with trailing commas.

DATA_DOCUMENT_MARKER = "# caracal:data-document"
_ASSIGN_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:=\s*", re.MULTILINE)
_TRAILING_COMMA_RE = re.compile(r",(\s*[}\]])")


def render_data_document(app_ids: Mapping[str, str],
                         grants: Mapping[str, Mapping[str, Any]]) -> str:
    """A data document granting ``grants`` to the applications of ``app_ids``."""
    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    return (
        f"{DATA_DOCUMENT_MARKER}\n"
        f"package {PACKAGE}\n"
        "import rego.v1\n"
        f"app_ids := {compact(dict(app_ids))}\n"
        f"grants := {compact(dict(grants))}\n"
    )


def parse_data_document(text: str) -> dict[str, Any] | None:
    """The top-level ``name := value`` assignments of a data document (None if not one)."""
    if not text.lstrip().startswith(DATA_DOCUMENT_MARKER) or not _PACKAGE_RE.search(text):
        return None
    matches = list(_ASSIGN_RE.finditer(text))
    doc: dict[str, Any] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        raw = _TRAILING_COMMA_RE.sub(r"\1", text[match.end():end].strip())
        try:
            doc[match.group(1)] = json.loads(raw)
        except ValueError:
            return None
    return doc

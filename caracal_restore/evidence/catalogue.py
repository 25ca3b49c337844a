"""The control catalogue: which framework controls each check evidences, from one data file.

``reports/catalogue.toml`` (or a ``.json`` file of the same shape) maps check ids and id
families (prefixes such as ``CL-``) to SOC 2, ISO/IEC 27001:2022 and NIST SP 800-53 controls.
The rule of the design is enforced twice: when the file is loaded (an entry that claims a
restore control must be ``grade = "demonstrated"`` or put the claim under
``when_demonstrated``) and for every collected check (a check that is not demonstrated may not
end up with a restore control).

Shape::

    [frameworks.nist]
    title = "NIST SP 800-53 Rev. 5"
    controls = { "CP-9" = "System backup", ... }

    [[family]]                  # every check whose id starts with RC- ...
    prefix = "RC-"
    epic = "Restore checklist"  # ... in this seed table (optional; ids may share a prefix)
    soc2 = ["A1.2"]
    nist = ["CP-9"]
    [family.when_demonstrated]
    nist = ["CP-9(1)", "CP-10"]   # added only for the family's demonstrated checks

    [checks."RC-BAK-3"]         # one check id; adds to every family it matches
    grade = "verified"          # optional: the grade the check must declare
    nist = ["SC-28"]

    [verdicts]
    not_applicable = ['^not applicable\\b']   # skip reasons that mean "does not apply"
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from caracal_restore.evidence import REPORTS_CONFIG_DIR

GRADES = ("configured", "verified", "demonstrated")
#: Framework keys, in report order, with the label name each gets in Allure.
FRAMEWORKS = ("soc2", "iso27001", "nist")
FRAMEWORK_NAMES = {"soc2": "SOC 2", "iso27001": "ISO/IEC 27001:2022", "nist": "NIST SP 800-53"}
#: The restore controls: only a demonstrated check (a restore plus a working function) may
#: claim them. This is the design's rule, so it lives in code, not in the data file.
RESTORE_CONTROLS: Mapping[str, frozenset[str]] = {
    "soc2": frozenset({"A1.3"}),
    "iso27001": frozenset({"A.8.13"}),
    "nist": frozenset({"CP-9(1)", "CP-10"}),
}
_ENTRY_KEYS = {"title", "grade", "epic", "when_demonstrated", *FRAMEWORKS}
_FAMILY_KEYS = {"prefix", *_ENTRY_KEYS}
EPICS = ("Assets", "Retention controls", "Restore checklist", "Symptoms")


def default_path() -> Path:
    """The repository's catalogue (``reports/catalogue.toml``)."""
    return REPORTS_CONFIG_DIR / "catalogue.toml"


class CatalogueError(ValueError):
    """The catalogue file is malformed or breaks the restore-control rule (lists every problem)."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True)
class Claims:
    """Framework controls a check evidences: framework key -> sorted control ids."""

    by_framework: Mapping[str, tuple[str, ...]]

    def restore_controls(self) -> list[str]:
        """The restore controls among the claims, as ``framework:control`` strings."""
        return [f"{FRAMEWORK_NAMES[fw]} {c}" for fw in FRAMEWORKS
                for c in self.by_framework.get(fw, ()) if c in RESTORE_CONTROLS[fw]]

    def items(self) -> list[tuple[str, str]]:
        """``(framework, control)`` pairs in report order."""
        return [(fw, c) for fw in FRAMEWORKS for c in self.by_framework.get(fw, ())]

    def as_dict(self) -> dict[str, list[str]]:
        """Plain data for JSON."""
        return {fw: list(self.by_framework.get(fw, ())) for fw in FRAMEWORKS}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One family or check entry of the catalogue."""

    key: str
    title: str | None
    grade: str | None
    claims: Mapping[str, tuple[str, ...]]
    when_demonstrated: Mapping[str, tuple[str, ...]]
    epic: str | None = None

    def applies(self, check_id: str, epic: str | None) -> bool:
        """True when this family covers ``check_id`` in seed table ``epic``."""
        return check_id.startswith(self.key) and (self.epic is None or self.epic == epic)


@dataclasses.dataclass(frozen=True)
class Framework:
    """A framework and the controls the catalogue may name."""

    key: str
    title: str
    controls: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """The loaded, validated catalogue."""

    path: Path
    frameworks: Mapping[str, Framework]
    families: tuple[Entry, ...]
    checks: Mapping[str, Entry]
    not_applicable: tuple[re.Pattern[str], ...]

    def entries_for(self, check_id: str, epic: str | None = None) -> list[Entry]:
        """Matching entries: every family covering the id (and seed table), then its own entry."""
        found = [e for e in self.families if e.applies(check_id, epic)]
        own = self.checks.get(check_id)
        if own is not None and (own.epic is None or own.epic == epic):
            found.append(own)
        return found

    def resolve(self, check_id: str, grade: str, epic: str | None = None) -> Claims:
        """The framework controls ``check_id`` (in seed table ``epic``) evidences at ``grade``."""
        merged: dict[str, set[str]] = {fw: set() for fw in FRAMEWORKS}
        for entry in self.entries_for(check_id, epic):
            for fw, controls in entry.claims.items():
                merged[fw].update(controls)
            if grade == "demonstrated":
                for fw, controls in entry.when_demonstrated.items():
                    merged[fw].update(controls)
        return Claims({fw: tuple(sorted(c)) for fw, c in merged.items() if c})

    def violations(self, check_id: str, grade: str, epic: str | None = None) -> list[str]:
        """Why ``check_id`` declared at ``grade`` is refused (empty when it is fine)."""
        entries = self.entries_for(check_id, epic)
        if not entries:
            where = f" in {epic!r}" if epic else ""
            return [f"{check_id}{where} is not in the control catalogue {self.path.name}: add "
                    "its id, or a [[family]] whose prefix (and epic) covers it"]
        problems = []
        for entry in entries:
            if entry.grade is not None and entry.grade != grade:
                problems.append(f"{check_id} declares grade {grade!r} but the catalogue entry "
                                f"{entry.key!r} requires {entry.grade!r}")
        restore = self.resolve(check_id, grade, epic).restore_controls()
        if restore and grade != "demonstrated":
            problems.append(f"{check_id} is {grade!r} but would claim {', '.join(restore)}: "
                            "only demonstrated checks may claim the restore controls")
        return problems

    def is_not_applicable(self, reason: str) -> bool:
        """True when a skip reason states that the control does not apply."""
        return any(p.search(reason) for p in self.not_applicable)


def load(path: Path | None = None) -> Catalogue:
    """Load and validate a catalogue (TOML or JSON); raise ``CatalogueError`` listing problems."""
    path = path or default_path()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogueError(path, [f"cannot read the catalogue: {exc.strerror}"]) from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CatalogueError(path, [f"not valid {path.suffix.lstrip('.') or 'toml'}: {exc}"]) \
            from None
    return parse(data, path)


def parse(data: Mapping[str, Any], path: Path) -> Catalogue:
    """Validate catalogue data (already parsed) and build the catalogue."""
    problems: list[str] = []
    frameworks = _frameworks(data.get("frameworks"), problems)
    raw_families = data.get("family", [])
    if not isinstance(raw_families, list):
        problems.append("family must be an array of tables ([[family]])")
        raw_families = []
    families = []
    for index, raw in enumerate(raw_families, start=1):
        prefix = raw.get("prefix") if isinstance(raw, Mapping) else None
        where = f"family #{index}" + (f" ({prefix!r})" if prefix else "")
        if not isinstance(prefix, str) or not prefix:
            problems.append(f"{where}: a non-empty prefix is required")
            continue
        families.append(_entry(where, prefix, raw, frameworks, problems, _FAMILY_KEYS))
    checks = {key: _entry(f"checks.{key}", key, value, frameworks, problems)
              for key, value in _table(data, "checks", problems).items()}
    patterns: list[re.Pattern[str]] = []
    for text in _table(data, "verdicts", problems).get("not_applicable", []):
        try:
            patterns.append(re.compile(str(text), re.IGNORECASE))
        except re.error as exc:
            problems.append(f"verdicts.not_applicable: {text!r} is not a regex ({exc})")
    unknown = set(data) - {"version", "frameworks", "family", "checks", "verdicts"}
    if unknown:
        problems.append(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    if problems:
        raise CatalogueError(path, problems)
    return Catalogue(path, frameworks, tuple(families), checks, tuple(patterns))


def _table(data: Mapping[str, Any], key: str, problems: list[str]) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        problems.append(f"{key} must be a table")
        return {}
    return value


def _frameworks(raw: Any, problems: list[str]) -> dict[str, Framework]:
    out: dict[str, Framework] = {}
    if not isinstance(raw, Mapping):
        problems.append("frameworks: a table per framework (soc2, iso27001, nist) is required")
        return out
    for key in FRAMEWORKS:
        table = raw.get(key)
        if not isinstance(table, Mapping) or not isinstance(table.get("controls"), Mapping):
            problems.append(f"frameworks.{key}: needs a title and a controls table")
            continue
        out[key] = Framework(key, str(table.get("title", FRAMEWORK_NAMES[key])),
                             {str(k): str(v) for k, v in table["controls"].items()})
    for key in set(raw) - set(FRAMEWORKS):
        problems.append(f"frameworks.{key}: unknown framework (use {', '.join(FRAMEWORKS)})")
    return out


def _controls(where: str, raw: Mapping[str, Any], frameworks: Mapping[str, Framework],
              problems: list[str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for fw in FRAMEWORKS:
        if fw not in raw:
            continue
        values = raw[fw]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            problems.append(f"{where}.{fw}: a list of control ids is required")
            continue
        known = frameworks.get(fw)
        for value in values:
            if known is not None and value not in known.controls:
                problems.append(f"{where}.{fw}: {value!r} is not a control of "
                                f"frameworks.{fw} ({', '.join(known.controls)})")
        out[fw] = tuple(sorted(set(values)))
    return out


def _entry(where: str, key: str, raw: Any, frameworks: Mapping[str, Framework],
           problems: list[str], allowed: set[str] = _ENTRY_KEYS) -> Entry:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a table")
        return Entry(key, None, None, {}, {})
    unknown = set(raw) - allowed
    if unknown:
        problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    grade = raw.get("grade")
    if grade is not None and grade not in GRADES:
        problems.append(f"{where}.grade: {grade!r} is not one of {', '.join(GRADES)}")
    claims = _controls(where, raw, frameworks, problems)
    conditional_raw = raw.get("when_demonstrated", {})
    if not isinstance(conditional_raw, Mapping):
        problems.append(f"{where}.when_demonstrated: must be a table")
        conditional_raw = {}
    conditional = _controls(f"{where}.when_demonstrated", conditional_raw, frameworks, problems)
    restore = [f"{FRAMEWORK_NAMES[fw]} {c}" for fw, cs in claims.items() for c in cs
               if c in RESTORE_CONTROLS[fw]]
    if restore and grade != "demonstrated":
        problems.append(
            f"{where} claims {', '.join(restore)} without grade = \"demonstrated\": only "
            "demonstrated checks may claim the restore controls (declare the grade, or move the "
            "claim under when_demonstrated)"
        )
    epic = raw.get("epic")
    if epic is not None and epic not in EPICS:
        problems.append(f"{where}.epic: {epic!r} is not a seed table ({', '.join(EPICS)})")
    return Entry(key, raw.get("title"), grade, claims, conditional, epic)


def framework_titles(catalogue: Catalogue) -> dict[str, str]:
    """``framework key -> title`` for reports."""
    return {k: f.title for k, f in catalogue.frameworks.items()}


def all_controls(catalogue: Catalogue) -> Iterable[tuple[str, str, str]]:
    """Every ``(framework, control, title)`` the catalogue knows, in report order."""
    for fw in FRAMEWORKS:
        framework = catalogue.frameworks.get(fw)
        if framework:
            for control, title in framework.controls.items():
                yield fw, control, title

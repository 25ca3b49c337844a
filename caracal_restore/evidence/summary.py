"""The summary for auditors: one row per control, what it was proven on, and what was not evaluated.

The plugin gathers one ``CheckResult`` per check (on the controller, from the test reports) and
the run's facts; ``build`` turns them into plain data (``summary.json``), and
``render_markdown`` / ``render_html`` into ``summary.md`` / ``summary.html``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from caracal_restore.evidence.catalogue import FRAMEWORK_NAMES, FRAMEWORKS

#: Check outcomes, from the most to the least serious; a control takes its worst check's.
VERDICT_ORDER = ("broken", "failed", "not run", "not evaluated", "xfailed", "waived",
                 "passed", "xpassed", "not applicable")
VERDICT_TEXT = {
    "broken": "broken (not evaluated: an error, see message)",
    "failed": "failed",
    "not run": "not run (deselected or never executed)",
    "not evaluated": "skipped: not evaluated",
    "xfailed": "expected failure marked in code (no waiver)",
    "waived": "waived",
    "passed": "passed",
    "xpassed": "passed (a waiver is no longer needed)",
    "not applicable": "skipped: not applicable",
}


@dataclasses.dataclass
class CheckResult:
    """One check's outcome with the control data it carries."""

    nodeid: str
    control_id: str
    verdict: str  # one of VERDICT_ORDER
    title: str = ""
    epic: str | None = None
    feature: str | None = None
    grade: str | None = None
    severity: str | None = None
    param: str | None = None
    claims: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    message: str = ""
    waiver: Mapping[str, str] | None = None
    duration: float = 0.0


@dataclasses.dataclass
class RunFacts:
    """What the run was: its identity, the backup and the restore it proved things on."""

    run_id: str
    started: str
    finished: str
    suite_version: str
    release: str | None = None
    source_kind: str | None = None
    comparison_basis: str | None = None
    services_mode: str | None = None
    bundle_stamp: str | None = None
    bundle_created_at: str | None = None
    bundle_encrypted: bool | None = None
    bundle_source: str | None = None
    restored_at: str | None = None
    restore_phases: Mapping[str, float] = dataclasses.field(default_factory=dict)
    rto_objective_seconds: int | None = None
    rpo_objective_hours: int | None = None
    environment_error: str | None = None
    phase_errors: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ci: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def restore_seconds(self) -> float | None:
        """The measured RTO: the sum of the timed restore phases."""
        return round(sum(self.restore_phases.values()), 3) if self.restore_phases else None

    @property
    def backup_age_seconds(self) -> float | None:
        """The measured RPO: how old the backup was when it was restored."""
        if not (self.bundle_created_at and self.restored_at):
            return None
        created = dt.datetime.fromisoformat(self.bundle_created_at)
        restored = dt.datetime.fromisoformat(self.restored_at)
        return round((restored - created).total_seconds(), 1)


@dataclasses.dataclass
class GateOutcome:
    """The gate's evaluation (computed also when the gate is not enforced)."""

    enforced: bool
    passed: bool
    reasons: list[str] = dataclasses.field(default_factory=list)
    expected: int = 0
    evaluated: int = 0
    expired_waivers: list[dict[str, str]] = dataclasses.field(default_factory=list)
    unused_waivers: list[dict[str, str]] = dataclasses.field(default_factory=list)


def worst(verdicts: Iterable[str]) -> str:
    """The verdict of a group: its worst member's; not-applicable skips count only when alone."""
    present = set(verdicts)
    if not present:
        return "not run"
    if present == {"not applicable"}:
        return "not applicable"
    present.discard("not applicable")
    return next(v for v in VERDICT_ORDER if v in present)


def control_verdict(results: Iterable[CheckResult]) -> str:
    """A control's verdict: the worst of its checks'."""
    return worst(r.verdict for r in results)


def build(results: Sequence[CheckResult], run: RunFacts, gate: GateOutcome,
          framework_titles: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Any]:
    """Plain data of the summary (``summary.json``); the renderers read only this."""
    by_control: dict[str, list[CheckResult]] = {}
    for result in sorted(results, key=lambda r: (r.control_id, r.nodeid)):
        by_control.setdefault(result.control_id, []).append(result)
    controls: list[dict[str, Any]] = []
    for control_id, checks in by_control.items():
        first = checks[0]
        claims: dict[str, set[str]] = {fw: set() for fw in FRAMEWORKS}
        for check in checks:
            for fw, ids in check.claims.items():
                claims[fw].update(ids)
        controls.append({
            "control": control_id,
            "title": first.title,
            "epic": first.epic,
            "feature": first.feature,
            "grade": first.grade,
            "severity": first.severity,
            "verdict": control_verdict(checks),
            "frameworks": {fw: sorted(ids) for fw, ids in claims.items() if ids},
            "checks": [{"nodeid": c.nodeid, "param": c.param, "verdict": c.verdict,
                        "message": c.message, "waiver": dict(c.waiver) if c.waiver else None,
                        "duration": round(c.duration, 3)} for c in checks],
        })
    framework_rows = []
    titles = framework_titles or {}
    for fw in FRAMEWORKS:
        evidencing: dict[str, list[dict[str, Any]]] = {}
        for row in controls:
            for control in row["frameworks"].get(fw, []):
                evidencing.setdefault(control, []).append(row)
        for control in sorted(set(titles.get(fw, {})) | set(evidencing)):
            rows = evidencing.get(control, [])
            verdict = worst(r["verdict"] for r in rows) if rows else "no check evidences it"
            framework_rows.append({
                "framework": fw, "control": control,
                "title": titles.get(fw, {}).get(control, ""),
                "verdict": verdict, "evidenced_by": [r["control"] for r in rows],
            })
    not_evaluated = [
        {"nodeid": c.nodeid, "control": c.control_id, "verdict": c.verdict,
         "why": c.message or VERDICT_TEXT[c.verdict]}
        for c in sorted(results, key=lambda r: r.nodeid)
        if c.verdict in ("broken", "not run", "not evaluated", "not applicable")
    ]
    counts: dict[str, int] = {}
    for result in results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    rto = run.restore_seconds
    rpo = run.backup_age_seconds
    return {
        "run": {**dataclasses.asdict(run), "restore_seconds": rto, "backup_age_seconds": rpo},
        "objectives": {
            "rto": {"objective_seconds": run.rto_objective_seconds, "measured_seconds": rto,
                    "met": None if rto is None or run.rto_objective_seconds is None
                    else rto <= run.rto_objective_seconds},
            "rpo": {"objective_hours": run.rpo_objective_hours, "measured_seconds": rpo,
                    "met": None if rpo is None or run.rpo_objective_hours is None
                    else rpo <= run.rpo_objective_hours * 3600},
        },
        "gate": dataclasses.asdict(gate),
        "counts": dict(sorted(counts.items())),
        "controls": controls,
        "framework_controls": framework_rows,
        "not_evaluated": not_evaluated,
        "waived": [{"nodeid": c.nodeid, "control": c.control_id, **dict(c.waiver or {})}
                   for c in results if c.verdict in ("waived", "xpassed") and c.waiver],
    }


def _fmt_seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def _met(flag: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[flag]


def _facts_rows(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    run = doc["run"]
    rto, rpo = doc["objectives"]["rto"], doc["objectives"]["rpo"]
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in run["restore_phases"].items()) or "—"
    rows = [
        ("Run id", run["run_id"]),
        ("Suite version", f"caracal-restore {run['suite_version']}"),
        ("Started / finished (UTC)", f"{run['started']} / {run['finished']}"),
        ("Caracal release", run["release"] or "—"),
        ("Source", f"{run['source_kind'] or '—'} (compared by {run['comparison_basis'] or '—'})"),
        ("Services", run["services_mode"] or "—"),
        ("Backup (bundle id)", run["bundle_stamp"] or "no bundle"),
        ("Backup source", run["bundle_source"] or "—"),
        ("Backup created", run["bundle_created_at"] or "—"),
        ("Backup encrypted", {True: "yes (age)", False: "NO", None: "—"}[run["bundle_encrypted"]]),
        ("Restored at", run["restored_at"] or "not restored"),
        ("Restore phases", phases),
        ("RTO (measured restore vs objective)",
         f"{_fmt_seconds(rto['measured_seconds'])} vs {rto['objective_seconds']} s: "
         f"{_met(rto['met'])}"),
        ("RPO (backup age at restore vs objective)",
         f"{_fmt_seconds(rpo['measured_seconds'])} vs {rpo['objective_hours']} h: "
         f"{_met(rpo['met'])}"),
    ]
    if run["environment_error"]:
        rows.append(("Environment error", run["environment_error"]))
    for phase, error in run["phase_errors"].items():
        rows.append((f"Failed phase {phase}", error))
    for key, value in run["ci"].items():
        rows.append((key, value))
    return rows


def _gate_lines(doc: Mapping[str, Any]) -> list[str]:
    gate = doc["gate"]
    state = "PASSED" if gate["passed"] else "FAILED"
    mode = "enforced (--gate)" if gate["enforced"] else "not enforced (run without --gate)"
    lines = [f"Gate: {state}, {mode}: {gate['evaluated']} of {gate['expected']} expected checks "
             "evaluated."]
    lines += [f"- {reason}" for reason in gate["reasons"]]
    return lines


def _md(text: Any) -> str:
    return str(text if text is not None else "—").replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: Mapping[str, Any]) -> str:
    """``summary.md``: the auditor's page."""
    out = ["# Restore verification summary", ""]
    counts = ", ".join(f"{v} {k}" for k, v in doc["counts"].items()) or "no checks ran"
    out += ["## Verdict", "", *_gate_lines(doc), "", f"Checks: {counts}.", ""]
    out += ["## Backup and restore this evidence was proven on", "", "| Fact | Value |",
            "| --- | --- |"]
    out += [f"| {_md(k)} | {_md(v)} |" for k, v in _facts_rows(doc)]
    out += ["", "## Controls", "",
            "One row per control of the suite; its verdict is its worst check's.", "",
            "| Control | Seed table | Row | Verdict | Grade | Severity | Checks | Frameworks |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in doc["controls"]:
        checks = "<br>".join(f"`{c['nodeid']}`: {c['verdict']}" for c in row["checks"])
        frameworks = "<br>".join(f"{FRAMEWORK_NAMES[fw]} {', '.join(ids)}"
                                 for fw, ids in row["frameworks"].items())
        verdict = VERDICT_TEXT.get(row["verdict"], row["verdict"])
        out.append(f"| **{_md(row['control'])}** {_md(row['title'])} | {_md(row['epic'])} | "
                   f"{_md(row['feature'])} | {_md(verdict)} | {_md(row['grade'])} | "
                   f"{_md(row['severity'])} | {checks or '—'} | {frameworks or '—'} |")
    out += ["", "## Framework controls", "",
            "| Framework | Control | Title | Verdict | Evidenced by |",
            "| --- | --- | --- | --- | --- |"]
    for row in doc["framework_controls"]:
        out.append(f"| {FRAMEWORK_NAMES[row['framework']]} | {_md(row['control'])} | "
                   f"{_md(row['title'])} | {_md(row['verdict'])} | "
                   f"{_md(', '.join(row['evidenced_by']) or '—')} |")
    out += ["", "## Not evaluated or not applicable, and why", ""]
    if doc["not_evaluated"]:
        out += ["| Check | Control | Outcome | Why |", "| --- | --- | --- | --- |"]
        out += [f"| `{_md(r['nodeid'])}` | {_md(r['control'])} | {_md(r['verdict'])} | "
                f"{_md(r['why'])} |" for r in doc["not_evaluated"]]
    else:
        out.append("Every expected check was evaluated.")
    out += ["", "## Waivers", ""]
    gate = doc["gate"]
    if doc["waived"] or gate["expired_waivers"] or gate["unused_waivers"]:
        out += ["| Check | State | Justification | Owner | Ticket | Expires |",
                "| --- | --- | --- | --- | --- | --- |"]
        for w in doc["waived"]:
            out.append(f"| `{_md(w['nodeid'])}` | applied | {_md(w.get('justification'))} | "
                       f"{_md(w.get('owner'))} | {_md(w.get('ticket'))} | "
                       f"{_md(w.get('expires'))} |")
        for state, entries in (("EXPIRED", gate["expired_waivers"]),
                               ("matches no check", gate["unused_waivers"])):
            for w in entries:
                out.append(f"| {_md(w['check'])} | {state} | {_md(w['justification'])} | "
                           f"{_md(w['owner'])} | {_md(w['ticket'])} | {_md(w['expires'])} |")
    else:
        out.append("No waivers.")
    out += ["", "Evidence: `allure-results/` (Allure), `junit.xml`, this summary "
            "(`summary.md`, `summary.html`, `summary.json`) and `evidence-manifest.json` "
            "(SHA-256 of every file; verify with `python -m caracal_restore.evidence verify "
            "<dir>`).", ""]
    return "\n".join(out)


def _h(text: Any) -> str:
    return html.escape(str(text if text is not None else "—"))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;"
    "vertical-align:top;text-align:left}th{background:#eee}.v-passed,.v-xpassed{color:#176f2c}"
    ".v-failed,.v-broken,.v-not-run,.gate-FAILED{color:#a40e26;font-weight:bold}"
    ".v-waived,.v-xfailed,.v-not-evaluated{color:#8a5a00}code{font-size:.9em}"
)


def _verdict(verdict: str) -> str:
    css = "v-" + verdict.replace(" ", "-")
    return f'<span class="{css}">{_h(VERDICT_TEXT.get(verdict, verdict))}</span>'


def render_html(doc: Mapping[str, Any]) -> str:
    """``summary.html``: the same content as ``summary.md``, self-contained."""
    gate = doc["gate"]
    state = "PASSED" if gate["passed"] else "FAILED"
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>Restore verification summary</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Restore verification summary</h1>", "<h2>Verdict</h2>",
             f'<p class="gate-{state}">{_h(_gate_lines(doc)[0])}</p>']
    if gate["reasons"]:
        parts.append("<ul>" + "".join(f"<li>{_h(r)}</li>" for r in gate["reasons"]) + "</ul>")
    counts = ", ".join(f"{v} {k}" for k, v in doc["counts"].items()) or "no checks ran"
    parts.append(f"<p>Checks: {_h(counts)}.</p>")
    parts.append("<h2>Backup and restore this evidence was proven on</h2>")
    parts.append(_table(["Fact", "Value"], ([_h(k), _h(v)] for k, v in _facts_rows(doc))))
    parts.append("<h2>Controls</h2>")
    rows = []
    for row in doc["controls"]:
        checks = "<br>".join(f"<code>{_h(c['nodeid'])}</code>: {_verdict(c['verdict'])}"
                             + (f"<br><small>{_h(c['message'])}</small>" if c["message"] else "")
                             for c in row["checks"])
        frameworks = "<br>".join(f"{_h(FRAMEWORK_NAMES[fw])} {_h(', '.join(ids))}"
                                 for fw, ids in row["frameworks"].items())
        rows.append([f"<b>{_h(row['control'])}</b> {_h(row['title'])}", _h(row["epic"]),
                     _h(row["feature"]), _verdict(row["verdict"]), _h(row["grade"]),
                     _h(row["severity"]), checks or "—", frameworks or "—"])
    parts.append(_table(["Control", "Seed table", "Row", "Verdict", "Grade", "Severity",
                         "Checks", "Frameworks"], rows))
    parts.append("<h2>Framework controls</h2>")
    parts.append(_table(["Framework", "Control", "Title", "Verdict", "Evidenced by"], (
        [_h(FRAMEWORK_NAMES[r["framework"]]), _h(r["control"]), _h(r["title"]),
         _verdict(r["verdict"]) if r["verdict"] in VERDICT_TEXT else _h(r["verdict"]),
         _h(", ".join(r["evidenced_by"]) or "—")] for r in doc["framework_controls"])))
    parts.append("<h2>Not evaluated or not applicable, and why</h2>")
    if doc["not_evaluated"]:
        parts.append(_table(["Check", "Control", "Outcome", "Why"], (
            [f"<code>{_h(r['nodeid'])}</code>", _h(r["control"]), _verdict(r["verdict"]),
             _h(r["why"])] for r in doc["not_evaluated"])))
    else:
        parts.append("<p>Every expected check was evaluated.</p>")
    parts.append("<h2>Waivers</h2>")
    waiver_rows = [[f"<code>{_h(w['nodeid'])}</code>", "applied", _h(w.get("justification")),
                    _h(w.get("owner")), _h(w.get("ticket")), _h(w.get("expires"))]
                   for w in doc["waived"]]
    for state_text, entries in (("EXPIRED", gate["expired_waivers"]),
                                ("matches no check", gate["unused_waivers"])):
        waiver_rows += [[_h(w["check"]), state_text, _h(w["justification"]), _h(w["owner"]),
                         _h(w["ticket"]), _h(w["expires"])] for w in entries]
    parts.append(_table(["Check", "State", "Justification", "Owner", "Ticket", "Expires"],
                        waiver_rows) if waiver_rows else "<p>No waivers.</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

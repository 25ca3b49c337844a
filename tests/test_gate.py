"""The --gate proves the run: fewer checks than expected, a broken check, a skip that is not a
stated not-applicable, or an expired waiver fails it; a valid waiver reports a failure as waived.

The gate's rules are shown on tiny fake checks (pytester: every other outcome is controlled, so
each rule alone decides the verdict), then on the real checks against one prepared run
(``tests.harness.prepared_run``, ``--run-state``) in subprocesses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO
from tests.harness import PreparedRun, fresh_object_store_state, prepared_run

CONFTEST = (
    "pytest_plugins = ('fixtures.options', 'fixtures.controls', 'fixtures.evidence', "
    "'fixtures.gate')\n"
)
CHECKS = '''
import os
import pytest
from fixtures.controls import control

def _outcome(clause):
    how = os.environ.get("GATE_" + clause.replace("-", "_").replace(".", "_"), "pass")
    if how == "fail":
        assert False, f"{clause}: observed 1, the control requires 0"
    if how == "broken":
        raise RuntimeError(f"{clause}: the service did not answer")
    if how.startswith("skip:"):
        pytest.skip(how[5:])

@control("AS-1", feature="Postgres database", grade="verified")
def test_one():
    """AS-1 The database is restored."""
    _outcome("AS-1")

@control("AS-2", feature="Runtime secrets", grade="verified")
@pytest.mark.parametrize("row", ["a", "b"], ids=["AS-2.a", "AS-2.b"])
def test_two(row):
    """AS-2 Every secret is restored."""
    _outcome(f"AS-2.{row}")
'''


def _today(days: int = 0) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=days)).isoformat()


@pytest.fixture
def fake(pytester: pytest.Pytester, plugin_env: dict[str, str]) -> pytest.Pytester:
    """A checks/ tree of three fake checks loading the real plugin."""
    pytester.makeconftest(CONFTEST)
    (pytester.path / "checks" / "assets").mkdir(parents=True)
    (pytester.path / "checks" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "test_x.py").write_text(CHECKS)
    return pytester


def _run(p: pytest.Pytester, *args: str, **outcomes: str) -> pytest.RunResult:
    env = {f"GATE_{k}": v for k, v in outcomes.items()}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return p.runpytest_subprocess("checks", "-p", "no:cacheprovider", *args)
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _summary(p: pytest.Pytester) -> dict[str, Any]:
    return json.loads((p.path / "reports" / "out" / "summary.json").read_text())


def _waivers(p: pytest.Pytester, *entries: dict[str, str]) -> Path:
    lines = []
    for entry in entries:
        lines.append("[[waiver]]")
        for key, value in entry.items():
            lines.append(f"{key} = {value}" if key == "expires" else f"{key} = {value!r}")
    path = p.path / "waivers.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _waiver(check: str, expires: str) -> dict[str, str]:
    return {"check": check, "justification": "fix scheduled with the next release",
            "owner": "sec@example.com", "ticket": "SEC-1", "expires": expires}


# --- the rules, on fake checks -------------------------------------------------------------


def test_full_green_run_passes_the_gate(fake: pytest.Pytester) -> None:
    result = _run(fake, "--gate")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*caracal-restore gate PASSED*", "3 of 3 expected checks "
                                 "evaluated"])
    assert _summary(fake)["gate"]["passed"] is True


@pytest.mark.parametrize("selection", [
    ["--deselect", "checks/assets/test_x.py::test_two[AS-2.b]"],
    ["-k", "not AS-2.b"],
    ["-n", "2", "--deselect", "checks/assets/test_x.py::test_two[AS-2.b]"],
], ids=["deselect", "keyword", "xdist"])
def test_one_check_deselected_fails_the_gate(fake: pytest.Pytester,
                                             selection: list[str]) -> None:
    result = _run(fake, "--gate", *selection)
    assert result.ret == 1, result.stdout.str()
    result.stdout.fnmatch_lines([
        "*caracal-restore gate FAILED*", "2 of 3 expected checks evaluated",
        "*1 expected checks did not run*checks/assets/test_x.py::test_two[[]AS-2.b[]]*",
    ])
    verdicts = {c["nodeid"]: c["verdict"] for row in _summary(fake)["controls"]
                for c in row["checks"]}
    assert verdicts["checks/assets/test_x.py::test_two[AS-2.b]"] == "not run"


def test_without_gate_a_filtered_run_is_not_failed_but_says_so(fake: pytest.Pytester) -> None:
    result = _run(fake, "--deselect", "checks/assets/test_x.py::test_one")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*gate (not enforced: run with --gate)*",
                                 "*1 expected checks did not run*"])
    gate = _summary(fake)["gate"]
    assert gate["enforced"] is False
    assert gate["passed"] is False


def test_partial_collection_fails_the_gate(fake: pytest.Pytester) -> None:
    result = fake.runpytest_subprocess("checks/assets/test_x.py::test_one", "-p",
                                       "no:cacheprovider", "--gate")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*only part of checks/ was collected*"])


def test_collection_error_fails_the_gate(fake: pytest.Pytester) -> None:
    (fake.path / "checks" / "assets" / "test_broken_module.py").write_text("import nowhere\n")
    result = _run(fake, "--gate", "--continue-on-collection-errors")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*collection errors in checks/assets/test_broken_module.py*"])


def test_baseline_of_expected_checks(fake: pytest.Pytester) -> None:
    baseline = fake.path / "expected.txt"
    baseline.write_text("# release 2026.06\nAS-1\nchecks/assets/test_x.py::test_two[AS-2.a]\n")
    assert _run(fake, "--gate", "--expected-checks", str(baseline)).ret == 0
    baseline.write_text("AS-1\nAS-3\nchecks/assets/test_gone.py::test_gone\n")
    result = _run(fake, "--gate", "--expected-checks", str(baseline))
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*2 checks listed in*were not collected: AS-3, "
                                 "checks/assets/test_gone.py::test_gone*"])


def test_broken_check_fails_the_gate(fake: pytest.Pytester) -> None:
    result = _run(fake, "--gate", AS_1="broken")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 checks are broken*checks/assets/test_x.py::test_one*"])
    (check,) = [c for row in _summary(fake)["controls"] for c in row["checks"]
                if c["nodeid"].endswith("test_one")]
    assert check["verdict"] == "broken"
    assert "did not answer" in check["message"]


def test_failed_check_fails_the_gate(fake: pytest.Pytester) -> None:
    result = _run(fake, "--gate", AS_2_a="fail")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 checks failed*AS-2.a*"])


@pytest.mark.parametrize(("reason", "passes"), [
    ("not applicable: release 1.0 has no gateway bindings", True),
    ("not requested: remediation runs only with --remediate revocations", True),
    ("not evaluated: --services none (offline run)", False),
    ("the target was slow", False),
])
def test_only_a_stated_not_applicable_skip_counts_as_evaluated(fake: pytest.Pytester,
                                                              reason: str,
                                                              passes: bool) -> None:
    result = _run(fake, "--gate", AS_1=f"skip:{reason}")
    assert (result.ret == 0) is passes, result.stdout.str()
    if not passes:
        result.stdout.fnmatch_lines(["*skipped without a stated not-applicable reason*"])


def test_valid_waiver_reports_the_failure_as_waived(fake: pytest.Pytester) -> None:
    waivers = _waivers(fake, _waiver("AS-2.a", _today(30)))
    alluredir = fake.path / "reports" / "out" / "allure-results"
    result = _run(fake, "--gate", "--waivers-file", str(waivers), AS_2_a="fail")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=2, xfailed=1)
    summary = _summary(fake)
    (waived,) = summary["waived"]
    assert waived["nodeid"].endswith("[AS-2.a]")
    assert waived["ticket"] == "SEC-1"
    row = next(r for r in summary["controls"] if r["control"] == "AS-2")
    assert row["verdict"] == "waived"
    (res,) = [json.loads(p.read_text()) for p in alluredir.glob("*-result.json")
              if "AS-2.a" in json.loads(p.read_text())["name"]]
    assert res["status"] == "skipped"
    assert res["statusDetails"]["message"].startswith("XFAIL waived AS-2.a until")
    md = (fake.path / "reports" / "out" / "summary.md").read_text()
    assert "| applied | fix scheduled with the next release | sec@example.com | SEC-1 |" in md


def test_waiver_by_parameter_and_node_id(fake: pytest.Pytester) -> None:
    waivers = _waivers(fake, _waiver("AS-2[AS-2.b]", _today(1)),
                       _waiver("checks/assets/test_x.py::test_one", _today(1)))
    result = _run(fake, "--gate", "--waivers-file", str(waivers), AS_2_b="fail", AS_1="fail")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1, xfailed=2)


def test_waiver_never_hides_a_broken_check(fake: pytest.Pytester) -> None:
    waivers = _waivers(fake, _waiver("AS-1", _today(30)))
    result = _run(fake, "--gate", "--waivers-file", str(waivers), AS_1="broken")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*1 checks are broken*"])


def test_expired_waiver_fails_the_gate_and_waives_nothing(fake: pytest.Pytester) -> None:
    waivers = _waivers(fake, _waiver("AS-2.a", _today(-1)))
    result = _run(fake, "--gate", "--waivers-file", str(waivers), AS_2_a="fail")
    assert result.ret == 1
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([f"*waiver for AS-2.a (ticket SEC-1, owner sec@example.com) "
                                 f"expired on {_today(-1)}: renew or remove it*"])
    # Even with the check now passing, the stale waiver fails the gate.
    assert _run(fake, "--gate", "--waivers-file", str(waivers)).ret == 1


def test_waiver_that_expires_today_still_holds(fake: pytest.Pytester) -> None:
    waivers = _waivers(fake, _waiver("AS-2.a", _today(0)))
    assert _run(fake, "--gate", "--waivers-file", str(waivers), AS_2_a="fail").ret == 0


def test_waiver_without_owner_is_a_usage_error(fake: pytest.Pytester) -> None:
    entry = _waiver("AS-2.a", _today(30))
    del entry["owner"]
    del entry["ticket"]
    waivers = _waivers(fake, _waiver("AS-1", _today(30)), entry)
    result = _run(fake, "--gate", "--waivers-file", str(waivers))
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*waiver #2 (check 'AS-2.a'): missing owner, ticket*"])


def test_named_waivers_file_must_exist(fake: pytest.Pytester) -> None:
    result = _run(fake, "--waivers-file", "nowhere.toml")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*cannot read the waivers file*nowhere.toml*"])


def test_xfail_in_code_is_not_a_waiver(fake: pytest.Pytester) -> None:
    (fake.path / "checks" / "assets" / "test_x.py").write_text(CHECKS.replace(
        '@control("AS-1"', '@pytest.mark.xfail(reason="known issue", strict=False)\n'
        '@control("AS-1"'))
    result = _run(fake, "--gate", AS_1="fail")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*marked as expected failures in code, not by a waiver*"])


# --- the real checks -----------------------------------------------------------------------


@dataclasses.dataclass
class Real:
    """A prepared run and what a full collection of the checks lists."""

    run: PreparedRun
    nodeids: list[str]
    tmp: Path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Real]:
    """One prepared run for the module's real gate runs."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "checks", "--collect-only", "-q",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True,
                          check=False, env=_env())
    nodeids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert nodeids, proc.stdout + proc.stderr
    fresh_object_store_state()
    with prepared_run(audit_events=300) as built:
        yield Real(built, nodeids, tmp_path_factory.mktemp("gate"))


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")}


def _gate_run(real: Real, name: str, *args: str, state: Any = None
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    reports = real.tmp / name
    state_file = (state or real.run.state).write(real.tmp / f"{name}.state.json")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "checks", "-p", "no:cacheprovider", "-q",
             "--gate", f"--run-state={state_file}", f"--reports-dir={reports}", *args],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    finally:
        state_file.unlink(missing_ok=True)
    summary = reports / "summary.json"
    assert summary.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(summary.read_text())


def _verdicts(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["nodeid"]: {**c, "control": row["control"]} for row in summary["controls"]
            for c in row["checks"]}


def _waiver_file(real: Real, name: str, check: str, expires: str) -> Path:
    path = real.tmp / f"{name}.toml"
    path.write_text(f'[[waiver]]\ncheck = "{check}"\njustification = "RPO breach accepted '
                    f'while the backup schedule moves"\nowner = "ops@example.com"\n'
                    f'ticket = "OPS-7"\nexpires = {expires}\n')
    return path


@pytest.mark.slow
def test_real_run_with_one_check_deselected_fails_the_gate(real: Real) -> None:
    dropped = real.nodeids[len(real.nodeids) // 2]
    proc, summary = _gate_run(real, "deselect", "--deselect", dropped)
    assert proc.returncode != 0
    assert summary["gate"]["enforced"]
    assert not summary["gate"]["passed"]
    assert summary["gate"]["expected"] == len(real.nodeids)
    assert any(r.startswith("1 expected checks did not run") and dropped in r
               for r in summary["gate"]["reasons"]), summary["gate"]["reasons"]
    assert _verdicts(summary)[dropped]["verdict"] == "not run"
    assert "caracal-restore gate FAILED" in proc.stdout
    assert dropped in proc.stdout


@pytest.mark.slow
def test_real_broken_checks_fail_the_gate(real: Real) -> None:
    broken_state = dataclasses.replace(
        real.run.state, errors={**real.run.state.errors,
                                "services": "RuntimeError: injected: services did not start"})
    proc, summary = _gate_run(real, "broken", state=broken_state)
    assert proc.returncode != 0
    broken = {n: v for n, v in _verdicts(summary).items() if v["verdict"] == "broken"}
    injected = [v for v in broken.values() if "injected: services did not start" in v["message"]]
    assert injected, sorted(broken)
    assert all("RestoreFailed" in v["message"] or "services" in v["message"] for v in injected)
    reason = next(r for r in summary["gate"]["reasons"] if "checks are broken" in r)
    assert int(reason.split()[0]) == len(broken)
    assert "passed" not in {v["verdict"] for v in injected}


@pytest.mark.slow
def test_real_expired_waiver_fails_the_gate_and_waives_nothing(real: Real) -> None:
    waivers = _waiver_file(real, "expired", "RC-BAK-1", _today(-3))
    proc, summary = _gate_run(real, "expired", "--rpo", "0", "--waivers-file", str(waivers))
    assert proc.returncode != 0
    assert any("waiver for RC-BAK-1 (ticket OPS-7, owner ops@example.com) expired on" in r
               for r in summary["gate"]["reasons"]), summary["gate"]["reasons"]
    rpo = [v for v in _verdicts(summary).values() if v["control"] == "RC-BAK-1"]
    assert rpo
    assert {v["verdict"] for v in rpo} == {"failed"}
    assert summary["gate"]["expired_waivers"][0]["ticket"] == "OPS-7"


@pytest.mark.slow
def test_real_valid_waiver_turns_the_failure_into_waived(real: Real) -> None:
    waivers = _waiver_file(real, "valid", "RC-BAK-1", _today(14))
    proc, summary = _gate_run(real, "valid", "--rpo", "0", "--waivers-file", str(waivers))
    rpo = [v for v in _verdicts(summary).values() if v["control"] == "RC-BAK-1"]
    assert rpo
    assert {v["verdict"] for v in rpo} == {"waived"}, rpo
    assert rpo[0]["waiver"]["ticket"] == "OPS-7"
    assert not any("RC-BAK-1" in r for r in summary["gate"]["reasons"]), summary["gate"]
    assert any(w["control"] == "RC-BAK-1" for w in summary["waived"])
    results = [json.loads(p.read_text()) for p in
               (real.tmp / "valid" / "allure-results").glob("*-result.json")]
    waived = [r for r in results if any(label["name"] == "control" and label["value"] ==
                                        "RC-BAK-1" for label in r["labels"])]
    assert waived
    assert all(r["status"] == "skipped" for r in waived)
    assert all(r["statusDetails"]["message"].startswith("XFAIL waived RC-BAK-1") for r in waived)
    assert "RC-BAK-1" in (real.tmp / "valid" / "summary.md").read_text()
    assert "xfailed" in proc.stdout or "XFAIL" in proc.stdout

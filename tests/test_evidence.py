"""Evidence for auditors: manifest and signature, catalogue rule, categories, executor, stable
history ids, the summary, and a secret scan of every file a real run writes.

One real run is prepared for the module (``tests.harness.prepared_run``); the checks run against
it in a subprocess (``--run-state``), twice, so history ids can be compared between runs.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from caracal_restore.diagnose import CAUSES, NOT_ON_PAGE, Diagnosis, Finding
from caracal_restore.evidence import REPORTS_CONFIG_DIR, catalogue, ci, manifest, report
from caracal_restore.evidence.__main__ import main as evidence_cli
from caracal_restore.redact import REDACTOR, secret_forms
from caracal_restore.runstate import RunState
from tests.conftest import REPO
from tests.harness import PreparedRun, fresh_object_store_state, prepared_run

# --- helpers -------------------------------------------------------------------------------


def _key(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return key


def _public(key: Ed25519PrivateKey, path: Path) -> Path:
    path.write_text(manifest.public_pem(key.public_key()))
    return path


def _evidence_tree(root: Path) -> None:
    (root / "allure-results").mkdir(parents=True)
    (root / "allure-results" / "a-result.json").write_text('{"status": "passed"}\n')
    (root / "allure-results" / "b-attachment.txt").write_text("observed rows: 12\n")
    (root / "junit.xml").write_text("<testsuites/>\n")
    (root / "summary.md").write_text("# summary\n")


def _checks(state: RunState, workdir: Path, reports: Path, *args: str,
            paths: tuple[str, ...] = ("checks",)) -> subprocess.CompletedProcess[str]:
    """Run the real checks against ``state`` with ``reports`` as the reports directory."""
    state_file = state.write(workdir / f"state-{reports.name}.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")}
    try:
        return subprocess.run(
            [sys.executable, "-m", "pytest", *paths, "-p", "no:cacheprovider", "-q",
             f"--run-state={state_file}", f"--reports-dir={reports}", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
        )
    finally:
        state_file.unlink(missing_ok=True)


def _results(reports: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (reports / "allure-results").glob("*-result.json")]


@dataclasses.dataclass
class RealRun:
    """A prepared run and two executions of the checks against it."""

    run: PreparedRun
    first: Path
    second: Path
    proc: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRun]:
    """One prepared run (300 audit events); the checks run against it twice."""
    base = tmp_path_factory.mktemp("evidence")
    fresh_object_store_state()
    with prepared_run(audit_events=300) as built:
        first = _checks(built.state, built.workdir, base / "first")
        assert _results(base / "first"), first.stdout[-3000:] + first.stderr[-3000:]
        second = _checks(built.state, built.workdir, base / "second")
        assert _results(base / "second"), second.stdout[-3000:] + second.stderr[-3000:]
        yield RealRun(built, base / "first", base / "second", first)


# --- manifest ------------------------------------------------------------------------------


def test_manifest_round_trip_signed(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _evidence_tree(root)
    key = _key(tmp_path / "key.pem")
    manifest.write(root, {"id": "run-1", "release": "2026.06"}, signing_key=key)
    doc = json.loads((root / manifest.MANIFEST).read_text())
    assert set(doc["files"]) == {"allure-results/a-result.json",
                                 "allure-results/b-attachment.txt", "junit.xml", "summary.md"}
    assert doc["suite"]["version"]
    assert doc["run"]["id"] == "run-1"
    assert doc["signature"]["public_key"] == manifest.public_pem(key.public_key())
    result = manifest.verify(root, public_key=key.public_key())
    assert result.ok, result.lines()
    assert result.signature == "valid"
    unsigned = manifest.verify(root)
    assert unsigned.ok
    assert unsigned.signature == "valid"
    assert any("--public-key" in n for n in unsigned.notes)


def test_verify_cli_exit_codes_and_listing(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "out"
    _evidence_tree(root)
    key = _key(tmp_path / "key.pem")
    manifest.write(root, {"id": "run-1"}, signing_key=key)
    pub = _public(key, tmp_path / "pub.pem")
    assert evidence_cli(["verify", str(root), "--public-key", str(pub)]) == 0
    assert "OK:" in capsys.readouterr().out
    (root / "junit.xml").write_text("<testsuites tests='9'/>\n")
    (root / "summary.md").unlink()
    (root / "extra.txt").write_text("planted\n")
    assert evidence_cli(["verify", str(root), "--public-key", str(pub)]) == 1
    out = capsys.readouterr().out
    assert "changed: junit.xml" in out
    assert "missing: summary.md" in out
    assert "added: extra.txt" in out
    assert "FAILED" in out


def test_verify_cli_runs_as_a_module(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _evidence_tree(root)
    manifest.write(root, {"id": "run-1"})
    proc = subprocess.run([sys.executable, "-m", "caracal_restore.evidence", "verify", str(root)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (root / "allure-results" / "a-result.json").write_text('{"status": "failed"}\n')
    proc = subprocess.run([sys.executable, "-m", "caracal_restore.evidence", "verify", str(root)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert "changed: allure-results/a-result.json" in proc.stdout


def test_bad_signature_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _evidence_tree(root)
    key = _key(tmp_path / "key.pem")
    manifest.write(root, {"id": "run-1"}, signing_key=key)
    sig = root / manifest.SIGNATURE
    good = sig.read_text()
    raw = bytearray(base64.b64decode(good))
    raw[0] ^= 0x01
    sig.write_text(base64.b64encode(bytes(raw)).decode())
    result = manifest.verify(root, public_key=key.public_key())
    assert not result.ok
    assert result.signature == "invalid"
    sig.write_text(good)
    other = Ed25519PrivateKey.generate()
    wrong = manifest.verify(root, public_key=other.public_key())
    assert not wrong.ok
    assert wrong.signature == "invalid"
    # An edited manifest (a file's hash swapped to hide a change) breaks the signature.
    doc = json.loads((root / manifest.MANIFEST).read_text())
    doc["run"]["release"] = "forged"
    (root / manifest.MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    assert manifest.verify(root).signature == "invalid"
    # A trusted key given but no signature at all: refused.
    sig.unlink()
    manifest.write(root, {"id": "run-2"})
    assert not manifest.verify(root, public_key=key.public_key()).ok


def test_signing_key_must_be_ed25519_pem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(manifest.ManifestError, match="not a PEM private key"):
        manifest.load_private_key(bad)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass-phrase")))
    with pytest.raises(manifest.ManifestError, match="encrypted"):
        manifest.load_private_key(encrypted)


def test_html_directory_is_derived_not_evidence(tmp_path: Path) -> None:
    root = tmp_path / "out"
    _evidence_tree(root)
    manifest.write(root, {"id": "r"}, exclude_dirs=("html",))
    (root / "html").mkdir()
    (root / "html" / "index.html").write_text("<html></html>")
    assert manifest.verify(root).ok
    (root / "html2").mkdir()
    (root / "html2" / "index.html").write_text("<html></html>")
    assert manifest.verify(root).added == ["html2/index.html"]


# --- catalogue -----------------------------------------------------------------------------


def test_repository_catalogue_loads() -> None:
    cat = catalogue.load()
    for fw, restricted in catalogue.RESTORE_CONTROLS.items():
        assert restricted <= set(cat.frameworks[fw].controls)
    claims = cat.resolve("RC-6.exchange", "demonstrated", "Restore checklist").as_dict()
    assert "CP-10" in claims["nist"]
    assert "A1.3" in claims["soc2"]
    assert "A.8.13" in claims["iso27001"]
    verified = cat.resolve("RC-4", "verified", "Restore checklist")
    assert not verified.restore_controls()
    # Retention ids share the RC- prefix; the epic keeps the two tables apart.
    retention = cat.resolve("RC-AUD-1", "verified", "Retention controls").as_dict()
    assert "AU-11" in retention["nist"]
    assert "CP-9" not in retention["nist"]


def _catalogue_data(**entry: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(_BASE))
    data["checks"] = {"RC-9": entry}
    return data


_BASE: dict[str, Any] = {
    "frameworks": {
        "soc2": {"title": "SOC 2", "controls": {"A1.2": "x", "A1.3": "y"}},
        "iso27001": {"title": "ISO", "controls": {"A.8.13": "backup"}},
        "nist": {"title": "NIST", "controls": {"CP-9": "backup", "CP-10": "recovery"}},
    },
    "family": [{"prefix": "RC-", "nist": ["CP-9"],
                "when_demonstrated": {"nist": ["CP-10"]}}],
}


def test_catalogue_refuses_a_non_demonstrated_entry_claiming_cp10(tmp_path: Path) -> None:
    with pytest.raises(catalogue.CatalogueError) as err:
        catalogue.parse(_catalogue_data(nist=["CP-10"]), tmp_path / "c.toml")
    assert "checks.RC-9 claims NIST SP 800-53 CP-10" in str(err.value)
    with pytest.raises(catalogue.CatalogueError, match="CP-10"):
        catalogue.parse(_catalogue_data(grade="verified", nist=["CP-10"]), tmp_path / "c.toml")
    ok = catalogue.parse(_catalogue_data(grade="demonstrated", nist=["CP-10"]),
                         tmp_path / "c.toml")
    assert ok.violations("RC-9", "demonstrated") == []
    assert any("requires 'demonstrated'" in v for v in ok.violations("RC-9", "verified"))
    assert any("only demonstrated" in v for v in ok.violations("RC-9", "verified"))
    # A family grants the restore controls to its demonstrated checks only.
    family = catalogue.parse(json.loads(json.dumps(_BASE)), tmp_path / "c.toml")
    assert family.resolve("RC-1", "verified").as_dict()["nist"] == ["CP-9"]
    assert family.resolve("RC-1", "demonstrated").as_dict()["nist"] == ["CP-10", "CP-9"]
    assert family.violations("XX-1", "verified")[0].startswith("XX-1 is not in the control")


def test_catalogue_refuses_unknown_controls_and_frameworks(tmp_path: Path) -> None:
    data = _catalogue_data(nist=["CP-99"])
    data["frameworks"]["pci"] = {"title": "PCI", "controls": {}}
    with pytest.raises(catalogue.CatalogueError) as err:
        catalogue.parse(data, tmp_path / "c.toml")
    text = str(err.value)
    assert "'CP-99' is not a control of frameworks.nist" in text
    assert "frameworks.pci: unknown framework" in text


CONFTEST = (
    "pytest_plugins = ('fixtures.options', 'fixtures.controls', 'fixtures.evidence', "
    "'fixtures.gate')\n"
)


def _fake_checks(pytester: pytest.Pytester, package: str, body: str) -> None:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "checks" / package).mkdir(parents=True)
    (pytester.path / "checks" / "__init__.py").write_text("")
    (pytester.path / "checks" / package / "__init__.py").write_text("")
    (pytester.path / "checks" / package / "test_x.py").write_text(body)


def test_collection_refuses_a_non_demonstrated_check_claiming_cp10(
        pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    _fake_checks(pytester, "retention", (
        "from fixtures.controls import control\n"
        "@control('RC-BAK-5', feature='Backups', grade='verified')\n"
        "def test_a():\n    '''RC-BAK-5 restore within the RTO.'''\n"
    ))
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider", "--co")
    assert result.ret == 4
    result.stderr.fnmatch_lines([
        "*RC-BAK-5 declares grade 'verified' but the catalogue entry 'RC-BAK-5' requires "
        "'demonstrated'*",
        "*only demonstrated checks may claim the restore controls*",
    ])


def test_collection_rule_under_xdist_names_the_offender(
        pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    _fake_checks(pytester, "retention", (
        "from fixtures.controls import control\n"
        "@control('RC-BAK-5', feature='Backups', grade='configured')\n"
        "def test_a():\n    '''RC-BAK-5 restore within the RTO.'''\n"
    ))
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider", "-n", "2")
    assert result.ret not in (0, 3)  # refused, and not as an INTERNALERROR
    result.stdout.fnmatch_lines(["*ERROR collecting checks/retention/test_x.py*",
                                 "*only demonstrated checks may claim the restore controls*"])


def test_collection_refuses_parameters_with_memory_addresses(
        pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    _fake_checks(pytester, "assets", (
        "import pytest\n"
        "from fixtures.controls import control\n"
        "class Row:\n    pass\n"
        "@control('AS-9', feature='f', grade='verified')\n"
        "@pytest.mark.parametrize('row', [Row()], ids=['AS-9.a'])\n"
        "def test_a(row):\n    '''AS-9 holds.'''\n"
    ))
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider", "--co")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*parameter 'row' has a repr with a memory address*"])


def test_labels_carry_story_and_framework_controls(
        pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    _fake_checks(pytester, "restore_checklist", (
        "import pytest\n"
        "from fixtures.controls import control\n"
        "@control('RC-6.x', feature='Canary', grade='demonstrated')\n"
        "@pytest.mark.parametrize('zone', ['zone-a'], ids=['RC-6.x.zone-a'])\n"
        "def test_a(zone):\n    '''RC-6.x canary works.'''\n"
    ))
    out = pytester.path / "allure"
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider",
                                           f"--alluredir={out}")
    result.assert_outcomes(passed=1)
    (res,) = [json.loads(p.read_text()) for p in out.glob("*-result.json")]
    labels = {(x["name"], x["value"]) for x in res["labels"]}
    assert {("epic", "Restore checklist"), ("feature", "Canary"), ("story", "RC-6.x.zone-a"),
            ("nist", "CP-10"), ("nist", "CP-9(1)"), ("soc2", "A1.3"), ("iso27001", "A.8.13"),
            ("tag", "NIST SP 800-53 CP-10"), ("evidence_grade", "demonstrated")} <= labels


# --- categories and executor ---------------------------------------------------------------


def _categories() -> list[dict[str, Any]]:
    data = json.loads((REPORTS_CONFIG_DIR / "categories.json").read_text())
    assert isinstance(data, list)
    assert data
    return data


def _category(message: str, status: str) -> str | None:
    """The first category Allure 2 puts a result in (Java: the whole message must match)."""
    found = [str(cat["name"]) for cat in _categories()
             if status in cat["matchedStatuses"] and re.fullmatch(cat["messageRegex"], message)]
    # Allure 3 gets the same categories as JavaScript regexes that are searched for.
    js = [str(cat["name"]) for cat in report.js_categories(_categories())
          if status in cat["matchedStatuses"] and re.search(cat["messageRegex"], message)]
    assert found[:1] == js[:1], (message, found, js)
    return found[0] if found else None


def test_categories_file_is_valid() -> None:
    names = set()
    for cat in _categories():
        assert set(cat) <= {"name", "matchedStatuses", "messageRegex", "traceRegex", "flaky"}
        assert cat["name"] not in names
        names.add(cat["name"])
        assert set(cat["matchedStatuses"]) <= {"failed", "broken", "passed", "skipped",
                                               "unknown"}
        re.compile(cat["messageRegex"])
    assert {"Restore failed", "Environment not ready"} <= names


@pytest.mark.parametrize("cause", sorted(CAUSES), ids=str)
def test_every_symptom_cause_lands_in_its_category(cause: str) -> None:
    found = CAUSES[cause]
    diagnosis = Diagnosis(found.symptom, (Finding(cause, "zone z1", "observed"),))
    message = f"AssertionError: {diagnosis.explain()}\nassert not True"
    category = _category(message, "failed")
    assert category is not None, message
    if found.page_cause != NOT_ON_PAGE:
        assert "not listed on the page" not in category, (cause, category)
    else:
        assert category.endswith("(cause not listed on the page)"), (cause, category)


@pytest.mark.parametrize(("message", "status", "expected"), [
    ("caracal_restore.errors.RestoreFailed: restore failed: pg_restore exited 1", "broken",
     "Restore failed"),
    ("caracal_restore.errors.EnvironmentNotReady: no isolated environment", "broken",
     "Environment not ready"),
    ("XFAIL waived SY-3.b until 2026-09-30 (ticket SEC-1, owner o): j\n\nAssertionError: x",
     "skipped", "Waived (accepted exception, see the waivers file)"),
    ("Skipped: not evaluated: --services none (offline run)", "skipped",
     "Not evaluated (the checklist is incomplete)"),
    ("Skipped: not applicable: release 1.0 has no gateway bindings", "skipped",
     "Not applicable to this release"),
])
def test_run_level_causes_land_in_their_category(message: str, status: str,
                                                 expected: str) -> None:
    assert _category(message, status) == expected


def test_executor_from_github_actions_env() -> None:
    env = {"GITHUB_ACTIONS": "true", "GITHUB_SERVER_URL": "https://github.com",
           "GITHUB_REPOSITORY": "acme/caracal-restore", "GITHUB_RUN_ID": "4242",
           "GITHUB_RUN_NUMBER": "17", "GITHUB_RUN_ATTEMPT": "2", "GITHUB_WORKFLOW": "restore",
           "GITHUB_JOB": "validate", "GITHUB_TOKEN": "ghs_do-not-read-me"}
    doc = ci.executor(env)
    assert doc == {
        "name": "GitHub Actions", "type": "github", "url": "https://github.com/acme/caracal-restore",
        "buildName": "restore #17 validate", "buildOrder": 17,
        "buildUrl": "https://github.com/acme/caracal-restore/actions/runs/4242/attempts/2",
    }
    assert "ghs_do-not-read-me" not in json.dumps(doc)
    assert ci.run_reference(env)["GITHUB_RUN_ID"] == "4242"


def test_executor_from_gitlab_env_and_local() -> None:
    env = {"GITLAB_CI": "true", "CI_PROJECT_URL": "https://gitlab.example/ops/restore",
           "CI_PROJECT_PATH": "ops/restore", "CI_PIPELINE_IID": "9", "CI_PIPELINE_ID": "900",
           "CI_JOB_NAME": "restore-validation", "CI_JOB_URL": "https://gitlab.example/j/1"}
    doc = ci.executor(env)
    assert doc["type"] == "gitlab"
    assert doc["buildOrder"] == 9
    assert doc["buildUrl"] == "https://gitlab.example/j/1"
    assert ci.executor({})["type"] == "local"


def test_executor_json_written_from_the_ci_env(pytester: pytest.Pytester,
                                               plugin_env: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/r",
                       "GITHUB_RUN_ID": "7", "GITHUB_RUN_NUMBER": "3"}.items():
        monkeypatch.setenv(key, value)
    _fake_checks(pytester, "assets", (
        "from fixtures.controls import control\n"
        "@control('AS-9', feature='f', grade='verified')\n"
        "def test_a():\n    '''AS-9 holds.'''\n"
    ))
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    results = pytester.path / "reports" / "out" / "allure-results"
    executor = json.loads((results / "executor.json").read_text())
    assert executor["type"] == "github"
    assert executor["buildOrder"] == 3
    assert (results / "categories.json").read_text() == (
        REPORTS_CONFIG_DIR / "categories.json").read_text()
    summary = json.loads((pytester.path / "reports" / "out" / "summary.json").read_text())
    assert summary["run"]["ci"]["GITHUB_RUN_ID"] == "7"


def test_allure3_config_carries_the_categories(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def runner(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        if cmd[-1] == "--version":
            return subprocess.CompletedProcess(cmd, 0, stdout="v20.11.0\n", stderr="")
        seen["config"] = json.loads(Path(cmd[cmd.index("--config") + 1]).read_text())
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    results = tmp_path / "allure-results"
    results.mkdir()
    (results / "x-result.json").write_text("{}")
    status = report.render(results, tmp_path / "html", history=tmp_path / "hist" / "h.jsonl",
                           which=lambda name: f"/usr/bin/{name}", runner=runner,
                           echo=lambda _line: None)
    assert status == 0
    config = seen["config"]
    assert config["historyPath"] == str((tmp_path / "hist" / "h.jsonl").resolve())
    assert config["output"] == str((tmp_path / "html").resolve())
    names = [c["name"] for c in config["categories"]]
    assert names == [c["name"] for c in _categories()]
    assert not any(c["messageRegex"].startswith("(?s)") for c in config["categories"])
    assert seen["cmd"][1:4] == ["--yes", report.ALLURE_PACKAGE, "generate"]


# --- report rendering ----------------------------------------------------------------------


def test_report_without_node_says_so_and_succeeds(tmp_path: Path) -> None:
    said: list[str] = []
    status = report.render(tmp_path / "allure-results", tmp_path / "html",
                           history=tmp_path / "history.jsonl", which=lambda _name: None,
                           echo=said.append)
    assert status == 0
    assert "Node.js is not available" in said[0]
    assert "remain the evidence" in said[0]
    assert not (tmp_path / "html").exists()


def test_report_with_old_node_says_so(tmp_path: Path) -> None:
    said: list[str] = []

    def runner(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 0, stdout="v18.19.0\n", stderr="")

    status = report.render(tmp_path / "r", tmp_path / "html", history=tmp_path / "h.jsonl",
                           which=lambda name: f"/usr/bin/{name}", runner=runner,
                           echo=said.append)
    assert status == 0
    assert "too old" in said[0]


def test_report_cli_without_node_on_path(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"  # an empty PATH: neither node nor npx can be found
    bindir.mkdir()
    env = {"PATH": str(bindir), "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "caracal_restore.evidence", "report",
         "--reports-dir", str(tmp_path / "out"), "--history", str(tmp_path / "h.jsonl")],
        cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Node.js is not available" in proc.stdout


# --- scheduled validation examples ---------------------------------------------------------


@pytest.mark.parametrize("path", [
    "examples/github-actions/restore-validation.yml",
    "examples/gitlab-ci/restore-validation.gitlab-ci.yml",
    "examples/kubernetes/restore-validation-cronjob.yaml",
])
def test_scheduled_examples_are_valid_and_gate_the_newest_bundle(path: str) -> None:
    yaml = pytest.importorskip("yaml")
    text = (REPO / path).read_text()
    doc = yaml.safe_load(text)
    assert doc
    script = text if "kubernetes" not in path else (
        REPO / "examples/kubernetes/run-validation.sh").read_text()
    for needle in ("newest-bundle", "--gate", "--bundle-secrets", "--signing-key",
                   "caracal_restore.evidence verify", "reports/out"):
        assert needle in script, (path, needle)
    assert "schedule" in text


# --- newest bundle -------------------------------------------------------------------------


def test_newest_bundle_of_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for stamp in ("20260101T000000Z", "20260301T120000Z", "20260201T000000Z"):
        (tmp_path / f"caracalBackup-{stamp}.tar.gz.age").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a bundle")
    assert evidence_cli(["newest-bundle", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().endswith("caracalBackup-20260301T120000Z.tar.gz.age")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert evidence_cli(["newest-bundle", str(empty)]) == 1


def test_newest_bundle_of_an_s3_prefix(tmp_path: Path) -> None:
    # In a subprocess: moto's in-process mock would reset the S3 state of a prepared run that
    # lives in this process.
    script = (
        "import boto3\n"
        "from moto import mock_aws\n"
        "from caracal_restore.evidence.__main__ import main\n"
        "with mock_aws():\n"
        "    s3 = boto3.client('s3', region_name='us-east-1')\n"
        "    s3.create_bucket(Bucket='backups')\n"
        "    for key in ('prod/caracalBackup-20260101T000000Z.tar.gz',\n"
        "                'prod/caracalBackup-20260401T000000Z.tar.gz',\n"
        "                'prod/older/caracalBackup-20990101T000000Z.tar.gz'):\n"
        "        s3.put_object(Bucket='backups', Key=key, Body=b'x')\n"
        "    raise SystemExit(main(['newest-bundle', 's3://backups/prod']))\n"
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "s3://backups/prod/caracalBackup-20260401T000000Z.tar.gz"


# --- a real run ----------------------------------------------------------------------------


def _secret_values(run: PreparedRun) -> dict[str, str]:
    """Every secret value of the prepared run, by where it was found (never printed)."""
    found: dict[str, str] = {}
    dirs = {Path(run.state.stack["secrets"]["path"])}
    dirs |= {p for p in run.workdir.rglob("secrets") if p.is_dir()}
    for directory in dirs:
        for path in directory.iterdir():
            if path.is_file():
                found[f"{directory.name}/{path.name}"] = path.read_text().strip()
    for path in run.workdir.rglob("age-identity*"):
        for line in path.read_text().splitlines():
            if line.startswith("AGE-SECRET-KEY-"):
                found[f"age identity {path.name}"] = line.strip()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, str) and ("password" in key or "secret" in key) and item:
                    found[f"state {where}.{key}"] = item
                else:
                    walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(json.loads(run.state.to_json()), "run")
    return {k: v for k, v in found.items() if len(v) >= 6}


@pytest.mark.slow
def test_secret_scan_of_every_evidence_file_finds_nothing(real: RealRun) -> None:
    secrets = _secret_values(real.run)
    assert len(secrets) >= 10, sorted(secrets)  # the scan must know what to look for
    forms = {name: secret_forms(value) for name, value in secrets.items()}
    files = [p for p in real.first.rglob("*") if p.is_file()]
    assert any(p.name == "summary.md" for p in files)
    assert len(files) > 50
    hits: list[str] = []
    for path in files:
        body = path.read_bytes().decode("latin-1")
        hits += [f"{path.relative_to(real.first)}: {name}" for name, variants in forms.items()
                 if any(v in body for v in variants)]
        if body in REDACTOR:  # every secret the preparation registered in this process
            hits.append(f"{path.relative_to(real.first)}: a secret registered by the run")
    assert not hits, "secret values in evidence:\n" + "\n".join(sorted(set(hits)))
    summary = json.loads((real.first / "summary.json").read_text())
    assert summary["scrubbed_files"] == [], (
        "evidence had to be scrubbed after the fact (a check or fixture attached a secret): "
        f"{summary['scrubbed_files']}")


@pytest.mark.slow
def test_history_ids_are_stable_across_runs(real: RealRun) -> None:
    def ids(reports: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        for res in _results(reports):
            assert res["fullName"] not in out or "[" in res["name"]
            out[f"{res['fullName']}::{res['name']}"] = res["historyId"]
        return out

    first, second = ids(real.first), ids(real.second)
    assert first == second
    assert len(set(first.values())) == len(first), "two checks share a history id"
    assert sum("[" in name for name in first) >= 3, "no parametrized check to compare"


@pytest.mark.slow
def test_summary_names_the_backup_restore_and_objectives(real: RealRun) -> None:
    doc = json.loads((real.first / "summary.json").read_text())
    state = real.run.state
    assert state.bundle is not None
    assert doc["run"]["bundle_stamp"] == state.bundle.stamp
    assert doc["run"]["bundle_created_at"] == state.bundle.created_at
    assert doc["run"]["restored_at"] == state.restored_at
    assert doc["objectives"]["rto"]["measured_seconds"] == pytest.approx(
        sum(state.restore_timings.values()), abs=0.01)
    assert doc["objectives"]["rto"]["objective_seconds"] == 3600
    assert doc["objectives"]["rpo"]["objective_hours"] == 24
    results = _results(real.first)
    assert {c["control"] for c in doc["controls"]} == {
        label["value"] for r in results for label in r["labels"] if label["name"] == "control"}
    assert sum(len(c["checks"]) for c in doc["controls"]) == len(results)
    epics = {label["value"] for r in results for label in r["labels"] if label["name"] == "epic"}
    assert epics == {"Assets", "Retention controls", "Restore checklist", "Symptoms"}
    md = (real.first / "summary.md").read_text()
    assert state.bundle.stamp in md
    assert "RTO (measured restore vs objective)" in md
    assert "## Not evaluated or not applicable, and why" in md
    assert (real.first / "summary.html").read_text().startswith("<!DOCTYPE html>")
    props = (real.first / "allure-results" / "environment.properties").read_text()
    assert f"bundle.id={state.bundle.stamp}" in props
    assert "caracal.release=" in props
    assert (real.first / "allure-results" / "executor.json").exists()


@pytest.mark.slow
def test_changing_any_evidence_file_fails_verification(real: RealRun, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(real.first, copy)
    assert manifest.verify(copy).ok
    files = sorted(p for p in manifest.evidence_files(copy, ("html",)))
    assert len(files) > 50
    for path in files:
        original = path.read_bytes()
        changed = bytearray(original or b"\0")
        changed[len(changed) // 2] ^= 0x20
        path.write_bytes(bytes(changed))
        result = manifest.verify(copy)
        rel = path.relative_to(copy).as_posix()
        assert result.changed == [rel], rel
        assert not result.ok
        path.write_bytes(original)
    removed = files[0]
    data = removed.read_bytes()
    removed.unlink()
    assert manifest.verify(copy).missing == [removed.relative_to(copy).as_posix()]
    removed.write_bytes(data)
    (copy / "allure-results" / "planted-result.json").write_text("{}")
    assert manifest.verify(copy).added == ["allure-results/planted-result.json"]


@pytest.mark.slow
def test_signed_run_verifies_with_the_public_key(real: RealRun, tmp_path: Path) -> None:
    key = _key(tmp_path / "signing.pem")
    reports = tmp_path / "signed"
    proc = _checks(real.run.state, real.run.workdir, reports, "--signing-key",
                   str(tmp_path / "signing.pem"), paths=("checks/assets",))
    assert (reports / manifest.SIGNATURE).exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads((reports / manifest.MANIFEST).read_text())
    assert doc["run"]["bundle"] == real.run.state.bundle.stamp  # type: ignore[union-attr]
    assert dt.datetime.fromisoformat(doc["run"]["finished"]) >= dt.datetime.fromisoformat(
        doc["run"]["started"])
    pub = _public(key, tmp_path / "pub.pem")
    assert evidence_cli(["verify", str(reports), "--public-key", str(pub)]) == 0
    assert str(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()) not in "".join(
        p.read_text(errors="replace") for p in reports.rglob("*") if p.is_file())


def test_results_sent_elsewhere_get_no_summary_unless_a_reports_dir_is_named(
        pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    _fake_checks(pytester, "assets", (
        "from fixtures.controls import control\n"
        "@control('AS-9', feature='f', grade='verified')\n"
        "def test_a():\n    '''AS-9 holds.'''\n"
    ))
    elsewhere = pytester.path / "elsewhere"
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider",
                                           f"--alluredir={elsewhere}")
    result.assert_outcomes(passed=1)
    assert (elsewhere / "environment.properties").exists()
    assert not (pytester.path / "reports" / "out" / "summary.md").exists()
    result.stdout.fnmatch_lines(["*no summary or manifest was written*--reports-dir*"])
    named = pytester.path / "named"
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider",
                                           f"--alluredir={elsewhere}", f"--reports-dir={named}")
    result.assert_outcomes(passed=1)
    assert (named / "summary.md").exists()
    assert (named / manifest.MANIFEST).exists()


def test_bad_signing_key_is_a_usage_error(pytester: pytest.Pytester,
                                          plugin_env: dict[str, str]) -> None:
    _fake_checks(pytester, "assets", (
        "from fixtures.controls import control\n"
        "@control('AS-9', feature='f', grade='verified')\n"
        "def test_a():\n    '''AS-9 holds.'''\n"
    ))
    (pytester.path / "key.pem").write_text("garbage")
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider",
                                           "--signing-key", "key.pem")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--signing-key*not a PEM private key*"])

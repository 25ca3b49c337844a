"""The check convention is enforced at collection: one control per check, named in its docstring."""

from __future__ import annotations

import pytest

CONFTEST = (
    "pytest_plugins = ('fixtures.options', 'fixtures.controls', 'fixtures.evidence')\n"
)


def _checks(pytester: pytest.Pytester, body: str) -> None:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "checks" / "assets").mkdir(parents=True)
    (pytester.path / "checks" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "__init__.py").write_text("")
    (pytester.path / "checks" / "assets" / "test_x.py").write_text(body)


def test_check_without_control_is_refused(pytester: pytest.Pytester,
                                          plugin_env: dict[str, str]) -> None:
    _checks(pytester, "def test_a():\n    '''no id'''\n")
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*test_a: no @control(...)*"])


def test_docstring_must_start_with_the_control_id(pytester: pytest.Pytester,
                                                  plugin_env: dict[str, str]) -> None:
    _checks(pytester, (
        "from fixtures.controls import control\n"
        "@control('AS-9', feature='f', grade='verified')\n"
        "def test_a():\n    '''Something else.'''\n"
    ))
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*docstring must start with 'AS-9'*"])


def test_scratch_db_requires_destructive(pytester: pytest.Pytester,
                                         plugin_env: dict[str, str]) -> None:
    _checks(pytester, (
        "import pytest\n"
        "from fixtures.controls import control\n"
        "@pytest.fixture\ndef scratch_db():\n    return 1\n"
        "@control('AS-9', feature='f', grade='verified')\n"
        "def test_a(scratch_db):\n    '''AS-9 writes.'''\n"
    ))
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider", "--co")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*uses scratch_db but is not marked destructive*"])


def test_epic_is_the_seed_table(pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    _checks(pytester, (
        "from fixtures.controls import control\n"
        "@control('AS-9', feature='Postgres database', grade='verified')\n"
        "def test_a():\n    '''AS-9 holds.'''\n    assert 1\n"
    ))
    out = pytester.path / "allure"
    result = pytester.runpytest_subprocess("checks", "-p", "no:cacheprovider",
                                           f"--alluredir={out}")
    result.assert_outcomes(passed=1)
    import json

    (res,) = [json.loads(p.read_text()) for p in out.glob("*-result.json")]
    labels = {(x["name"], x["value"]) for x in res["labels"]}
    assert {("epic", "Assets"), ("feature", "Postgres database"), ("control", "AS-9"),
            ("evidence_grade", "verified")} <= labels

"""Options: precedence CLI > env > ini > default, usage errors exit 4, no secrets shown."""

from __future__ import annotations

import pytest

PROBE = """
from fixtures.options import get_config

def test_show(pytestconfig):
    cfg = get_config(pytestconfig)
    print("SERVICES=" + cfg.services, "RELEASE=" + cfg.caracal_release,
          "SOURCE=" + cfg.sources["services"], "REPR=" + repr(cfg))
"""


@pytest.fixture
def probe(pytester: pytest.Pytester, plugin_env: dict[str, str]) -> pytest.Pytester:
    pytester.makepyfile(test_probe=PROBE)
    return pytester


def _run(p: pytest.Pytester, *args: str) -> pytest.RunResult:
    return p.runpytest_subprocess("-p", "fixtures.options", "-s", "-p", "no:cacheprovider", *args)


def test_default_applies(probe: pytest.Pytester) -> None:
    result = _run(probe)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*SERVICES=reference RELEASE=auto SOURCE=default*"])


def test_ini_beats_default(probe: pytest.Pytester) -> None:
    probe.makeini("[pytest]\ncaracal_restore_services = none\n")
    result = _run(probe)
    result.stdout.fnmatch_lines(["*SERVICES=none*SOURCE=ini*"])


def test_env_beats_ini(probe: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    probe.makeini("[pytest]\ncaracal_restore_services = none\n")
    monkeypatch.setenv("CARACAL_RESTORE_SERVICES", "reference")
    result = _run(probe)
    result.stdout.fnmatch_lines(["*SERVICES=reference*SOURCE=env*"])


def test_cli_beats_env(probe: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARACAL_RESTORE_SERVICES", "reference")
    result = _run(probe, "--services", "none")
    result.stdout.fnmatch_lines(["*SERVICES=none*SOURCE=cli*"])


def test_bad_env_choice_is_a_usage_error(probe: pytest.Pytester,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARACAL_RESTORE_PG_PROVIDER", "podman")
    result = _run(probe)
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*CARACAL_RESTORE_PG_PROVIDER='podman' is not one of*"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pg-provider", "external"], "*--pg-provider external needs --pg-admin-dsn*"),
        (["--pg-admin-dsn", "postgres://u:hunter2secret@127.0.0.1/db"],
         "*--pg-admin-dsn is set but --pg-provider is 'embedded'*"),
        (["--services", "external"], "*--services external needs --sts-url and --gateway-url*"),
        (["--redis-provider", "external"], "*--redis-provider external needs --redis-url*"),
        (["--pg-min-version", "15"], "*Caracal runs on PostgreSQL 18*"),
    ],
)
def test_missing_or_contradictory_settings(probe: pytest.Pytester, args: list[str],
                                           message: str) -> None:
    result = _run(probe, *args)
    assert result.ret == 4
    result.stderr.fnmatch_lines([message])
    assert "hunter2secret" not in result.stderr.str() + result.stdout.str()


def test_help_still_works_with_a_bad_env(probe: pytest.Pytester,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARACAL_RESTORE_GATE", "maybe")
    result = _run(probe, "--help")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--pg-provider*", "*CARACAL_RESTORE_PG_PROVIDER, ini*"])


def test_secret_never_in_repr_or_header(probe: pytest.Pytester,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARACAL_RESTORE_REDIS_URL", "redis://:s3cretvalue99@127.0.0.1:6379")
    result = _run(probe, "--redis-provider", "external")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "s3cretvalue99" not in out
    result.stdout.fnmatch_lines(["*redis_url=<set>*"])

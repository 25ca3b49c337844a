"""The canary of a user's own bundle: ``--canary-*`` settings make step 6 and SY-1.d evaluable.

Unit tests of the settings' validation come first (a partial, misplaced or malformed canary is a
usage error naming what is wrong, and never the secret). Then one reference run's bundle and
secrets are handed to the suite as a user's (``--bundle``, ``--bundle-secrets``, the canary
named on the command line and its client secret in the environment): the suite restores it,
starts services on it, and the step-6 checks and SY-1.d pass, with the secret nowhere in what
the run wrote. A wrong client secret fails the canary exchange check, saying so, and named
signing key ids are honoured. A release 1.0 bundle runs the Coordinator-driven canary from the
same four settings.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from caracal_restore.canary_input import BadCanaryInput, CanarySettings, canary_inputs
from caracal_restore.runstate import CanaryInputs
from tests.harness import REPO, Outcome, PreparedRun, prepared_run, read_outcomes

SECRET = "cs_" + "Q" * 43
GIVEN = CanarySettings(zone_id="zone-1", application_id="app-1", client_secret=SECRET,
                       resource="https://canary.example/api")

EXCHANGE = "test_canary_exchange_returns_mandate_signed_by_restored_key"
REQUEST = "test_protected_request_reaches_canary_upstream"
EVIDENCE = "test_canary_audit_events_continue_restored_chain"
SY_1_D = "test_canary_exchange_signs_with_a_restored_key"
CANARY_CHECKS = "step6 or " + SY_1_D


# ------------------------------------------------------------------------------ unit tests


def test_no_canary_settings_name_no_canary() -> None:
    assert canary_inputs(CanarySettings(), bundle=True) is None
    assert canary_inputs(CanarySettings(), bundle=False) is None


def test_a_complete_canary_becomes_the_run_inputs_without_showing_its_secret() -> None:
    got = canary_inputs(dataclasses.replace(GIVEN, signing_key_ids=" kid-a ,kid-b"), bundle=True)
    assert got == CanaryInputs("zone-1", "app-1", "https://canary.example/api", SECRET,
                               ("kid-a", "kid-b"))
    assert canary_inputs(GIVEN, bundle=True) == CanaryInputs(
        "zone-1", "app-1", "https://canary.example/api", SECRET, ())
    assert SECRET not in repr(got) + repr(GIVEN)


@pytest.mark.parametrize(("given", "bundle", "says"), [
    (CanarySettings(client_secret=SECRET), True,
     "missing --canary-zone-id, --canary-application-id, --canary-resource"),
    (dataclasses.replace(GIVEN, resource=None), True, "missing --canary-resource"),
    (CanarySettings(signing_key_ids="kid-a"), True, "missing --canary-zone-id"),
    (GIVEN, False, "a run that backs up the reference deployment brings its own canary"),
    (dataclasses.replace(GIVEN, application_id="app 1"), True,
     "--canary-application-id 'app 1' is not an id"),
    (dataclasses.replace(GIVEN, zone_id=""), True, "--canary-zone-id '' is not an id"),
    (dataclasses.replace(GIVEN, client_secret=SECRET + "\n"), True, "a copied newline?"),
    (dataclasses.replace(GIVEN, client_secret=""), True, "--canary-client-secret is empty"),
    (dataclasses.replace(GIVEN, client_secret="abc"), True, "too short"),
    (dataclasses.replace(GIVEN, signing_key_ids="kid-a,,kid-b"), True, "has an empty entry"),
    (dataclasses.replace(GIVEN, signing_key_ids="kid-a,kid-a"), True, "names a key twice"),
], ids=["secret-only", "no-resource", "kids-only", "no-bundle", "spaced-id", "empty-zone",
        "secret-newline", "empty-secret", "short-secret", "empty-kid", "twice-kid"])
def test_bad_canary_settings_are_refused_naming_why(given: CanarySettings, bundle: bool,
                                                    says: str) -> None:
    with pytest.raises(BadCanaryInput) as caught:
        canary_inputs(given, bundle=bundle)
    assert says in str(caught.value)
    assert SECRET not in str(caught.value)


def test_partial_canary_is_a_usage_error_before_anything_is_built(
        pytester: pytest.Pytester, plugin_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 4 with the missing settings named; the secret given in the environment is not shown."""
    pytester.makepyfile(test_probe="def test_never_runs():\n    raise AssertionError\n")
    pytester.mkdir("secrets")
    bundle = pytester.path / "caracalBackup-20260101T000000Z.tar.gz"
    bundle.write_bytes(b"")
    monkeypatch.setenv("CARACAL_RESTORE_CANARY_CLIENT_SECRET", SECRET)
    result = pytester.runpytest_subprocess(
        "-p", "fixtures.options", "-p", "no:cacheprovider", f"--bundle={bundle}",
        f"--bundle-secrets={pytester.path / 'secrets'}", "--canary-zone-id=zone-1")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*the canary of the bundle is only partly named: missing "
                                 "--canary-application-id, --canary-resource*"])
    assert SECRET not in result.stdout.str() + result.stderr.str()


def test_coordinator_url_without_external_services_is_a_usage_error(
        pytester: pytest.Pytester, plugin_env: dict[str, str]) -> None:
    """--coordinator-url names a Coordinator the user started: only with --services external."""
    pytester.makepyfile(test_probe="def test_never_runs():\n    raise AssertionError\n")
    result = pytester.runpytest_subprocess("-p", "fixtures.options", "-p", "no:cacheprovider",
                                           "--coordinator-url=http://127.0.0.1:4000")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--coordinator-url are only used with --services external*"])


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def run() -> Iterator[PreparedRun]:
    """One reference run: its bundle and secrets stand in for a user's (no services of its own)."""
    with prepared_run(services="none", audit_events=600, encrypt=False) as prepared:
        yield prepared


def _canary(run: PreparedRun) -> CanaryInputs:
    assert run.state.canary is not None
    return run.state.canary


def _run_as_user_bundle(run: PreparedRun, tmp_path: Path, *, secret: str,
                        extra: tuple[str, ...] = ()) -> tuple[dict[str, Outcome], str]:
    """The suite on the run's bundle as a user runs it: --bundle, --bundle-secrets, the canary
    named on the command line, its client secret in the environment; services on the restore."""
    assert run.state.bundle is not None
    canary = _canary(run)
    results = tmp_path / "allure"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARACAL_RESTORE_")}
    env["CARACAL_RESTORE_CANARY_CLIENT_SECRET"] = secret
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "checks", "-p", "no:cacheprovider", "-q",
         "-k", CANARY_CHECKS, f"--bundle={run.state.bundle.archive}",
         f"--bundle-secrets={run.state.stack['secrets']['path']}",
         f"--canary-zone-id={canary.zone_id}", f"--canary-application-id={canary.application_id}",
         f"--canary-resource={canary.resource_identifier}", *extra,
         f"--reports-dir={tmp_path / 'reports'}", f"--alluredir={results}",
         f"--junitxml={tmp_path / 'junit.xml'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    outcomes = read_outcomes(results)
    assert set(outcomes) == {EXCHANGE, REQUEST, EVIDENCE, SY_1_D}, (
        sorted(outcomes), proc.stdout[-3000:] + proc.stderr[-3000:])
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in
             p.read_bytes()]
    assert not leaks, f"the client secret is in {leaks}"
    assert secret not in proc.stdout + proc.stderr
    return outcomes, proc.stdout


@pytest.mark.slow
def test_user_bundle_with_a_named_canary_passes_step6_and_sy1d(run: PreparedRun,
                                                                tmp_path: Path) -> None:
    """Only the four required settings (signing keys taken from the restored copy): the suite
    restores the bundle, starts services on it, and the canary exchange, the protected request,
    their audit evidence and SY-1.d all pass; the secret is in nothing the run wrote."""
    outcomes, _ = _run_as_user_bundle(run, tmp_path, secret=_canary(run).client_secret)
    assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(outcomes, "passed"), \
        outcomes


@pytest.mark.slow
def test_wrong_client_secret_fails_the_canary_exchange_saying_so(run: PreparedRun,
                                                                 tmp_path: Path) -> None:
    """The named canary's secret is wrong: the exchange check fails with the STS's 401 'invalid
    client credentials'; the request and evidence checks fail as not demonstrated."""
    wrong = "cs_" + "W" * 43
    outcomes, _ = _run_as_user_bundle(run, tmp_path, secret=wrong)
    exchange = outcomes[EXCHANGE]
    assert exchange.status == "failed", exchange
    assert "the canary token exchange was refused" in exchange.message, exchange
    assert "401" in exchange.message, exchange
    assert "invalid client credentials" in exchange.message, exchange
    assert outcomes[REQUEST].status == "failed", outcomes[REQUEST]
    assert "exchange was refused" in outcomes[REQUEST].message
    assert outcomes[EVIDENCE].status == "failed", outcomes[EVIDENCE]
    assert "not demonstrated" in outcomes[EVIDENCE].message
    assert outcomes[SY_1_D].status != "passed", outcomes[SY_1_D]


@pytest.mark.slow
def test_named_signing_keys_are_the_reference_for_a_minted_key(run: PreparedRun,
                                                              tmp_path: Path) -> None:
    """--canary-signing-key-ids is honoured: a mandate signed with a key the user did not name
    as the source's fails the exchange check as a minted key (the named ids are not ignored);
    nothing else fires."""
    canary = _canary(run)
    outcomes, _ = _run_as_user_bundle(run, tmp_path, secret=canary.client_secret,
                                      extra=("--canary-signing-key-ids=kid-the-source-had",))
    exchange = outcomes[EXCHANGE]
    assert exchange.status == "failed", exchange
    assert "a new signing key was minted" in exchange.message, exchange
    assert "['kid-the-source-had']" in exchange.message, exchange
    rest = {n: o.status for n, o in outcomes.items() if n != EXCHANGE}
    assert rest == dict.fromkeys(rest, "passed"), outcomes


@pytest.mark.slow
def test_user_bundle_of_release_1_0_runs_the_coordinator_canary(tmp_path: Path) -> None:
    """Release 1.0: the same four settings suffice; the Coordinator Sessions, the delegation
    and the use=gateway mint run against the services the suite starts on the restore."""
    with prepared_run(services="none", audit_events=300, zones=2, encrypt=False,
                      reference_release="1.0") as run_1_0:
        outcomes, _ = _run_as_user_bundle(run_1_0, tmp_path,
                                          secret=_canary(run_1_0).client_secret)
    assert {n: o.status for n, o in outcomes.items()} == dict.fromkeys(outcomes, "passed"), \
        outcomes

"""Who ran the suite: Allure's ``executor.json`` built from the CI's environment variables.

GitHub Actions (``GITHUB_*``), GitLab CI (``CI_*`` with ``GITLAB_CI``) and, otherwise, a local
run. Only identifiers and URLs are read; no token or secret variable is ever looked at.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Any


def executor(env: Mapping[str, str]) -> dict[str, Any]:
    """The executor document for the environment ``env`` (pass ``os.environ``)."""
    if env.get("GITHUB_ACTIONS") == "true" or env.get("GITHUB_RUN_ID"):
        return _github(env)
    if env.get("GITLAB_CI") == "true" or env.get("CI_PIPELINE_ID"):
        return _gitlab(env)
    return {"name": "local", "type": "local", "buildName": f"local run on {platform.node()}"}


def _github(env: Mapping[str, str]) -> dict[str, Any]:
    server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
    repo = env.get("GITHUB_REPOSITORY", "")
    run_id = env.get("GITHUB_RUN_ID", "")
    attempt = env.get("GITHUB_RUN_ATTEMPT", "")
    url = f"{server}/{repo}/actions/runs/{run_id}" + (f"/attempts/{attempt}" if attempt else "")
    doc: dict[str, Any] = {
        "name": "GitHub Actions",
        "type": "github",
        "url": f"{server}/{repo}" if repo else server,
        "buildName": " ".join(x for x in (env.get("GITHUB_WORKFLOW", ""),
                                          f"#{env.get('GITHUB_RUN_NUMBER', '')}",
                                          env.get("GITHUB_JOB", "")) if x and x != "#"),
        "buildUrl": url,
    }
    if env.get("GITHUB_RUN_NUMBER", "").isdigit():
        doc["buildOrder"] = int(env["GITHUB_RUN_NUMBER"])
    return doc


def _gitlab(env: Mapping[str, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "GitLab CI",
        "type": "gitlab",
        "url": env.get("CI_PROJECT_URL", env.get("CI_SERVER_URL", "")),
        "buildName": " ".join(x for x in (env.get("CI_PROJECT_PATH", ""),
                                          f"pipeline {env.get('CI_PIPELINE_IID', '')}".strip(),
                                          env.get("CI_JOB_NAME", "")) if x and x != "pipeline"),
        "buildUrl": env.get("CI_JOB_URL", env.get("CI_PIPELINE_URL", "")),
    }
    if env.get("CI_PIPELINE_IID", "").isdigit():
        doc["buildOrder"] = int(env["CI_PIPELINE_IID"])
    return doc


def run_reference(env: Mapping[str, str]) -> dict[str, str]:
    """CI identifiers for the manifest and summary (empty for a local run)."""
    keys: tuple[str, ...]
    if env.get("GITHUB_RUN_ID"):
        keys = ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT", "GITHUB_SHA",
                "GITHUB_REF", "GITHUB_WORKFLOW")
    elif env.get("CI_PIPELINE_ID"):
        keys = ("CI_PROJECT_PATH", "CI_PIPELINE_ID", "CI_JOB_ID", "CI_COMMIT_SHA",
                "CI_COMMIT_REF_NAME")
    else:
        return {}
    return {k: env[k] for k in keys if env.get(k)}

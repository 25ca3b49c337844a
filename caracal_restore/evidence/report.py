"""Render the Allure results into HTML with Allure 3 (``npx allure generate``), keeping history.

Allure 3 is a Node.js tool (Node >= 20). When Node or npx is missing, or too old, nothing is
rendered and the function says so and succeeds: the raw results in ``allure-results/`` remain
the evidence. Allure 3 takes failure categories from its configuration (JavaScript regexes,
searched), not from ``categories.json`` in the results (Allure 2: Java regexes, whole message),
so the run's ``categories.json`` is converted into the configuration. History across runs is
kept in one JSON-lines file (``reports/history/``) that Allure 3 reads and appends to; CI jobs
carry it from run to run (see ``examples/``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from caracal_restore.evidence import REPORTS_CONFIG_DIR

#: The Allure 3 CLI package npx runs (pinned: a report renderer is part of the evidence chain).
ALLURE_PACKAGE = "allure@3.18.0"
MIN_NODE = 20

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def node_major(node: str, runner: Runner = subprocess.run) -> int | None:
    """The major version of ``node`` (None when it cannot be run)."""
    try:
        proc = runner([node, "--version"], capture_output=True, text=True, timeout=30,
                      check=False)
    except OSError:
        return None
    match = re.match(r"v?(\d+)\.", proc.stdout.strip())
    return int(match.group(1)) if proc.returncode == 0 and match else None


def js_regex(java: str) -> str:
    """An Allure 2 ``messageRegex`` (Java, whole-message match) as an Allure 3 one (JavaScript,
    searched): ``(?s).*X.*`` becomes ``X``; an unanchored end or start becomes ``$`` / ``^``."""
    pattern = java[4:] if java.startswith("(?s)") else java
    start = not pattern.startswith(".*")
    end = not pattern.endswith(".*") or pattern.endswith("\\.*")
    pattern = pattern[2:] if not start else pattern
    pattern = pattern[:-2] if not end else pattern
    return ("^" if start else "") + pattern + ("$" if end else "")


def js_categories(categories: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``categories.json`` (Allure 2 format, kept in the results) for Allure 3's config."""
    out = []
    for category in categories:
        converted = dict(category)
        for key in ("messageRegex", "traceRegex"):
            if key in converted:
                converted[key] = js_regex(str(converted[key]))
        out.append(converted)
    return out


def _config(template: Path, output: Path, history: Path, name: str | None,
            categories: Path | None) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(template.read_text()) if template.exists() else {}
    config["output"] = str(output.resolve())
    config["historyPath"] = str(history.resolve())
    if name:
        config["name"] = name
    if categories is not None and categories.exists() and "categories" not in config:
        config["categories"] = js_categories(json.loads(categories.read_text()))
    return config


def render(results: Path, output: Path, *, history: Path, template: Path | None = None,
           package: str = ALLURE_PACKAGE, name: str | None = None,
           which: Callable[[str], str | None] = shutil.which, runner: Runner = subprocess.run,
           echo: Callable[[str], None] = print) -> int:
    """Render ``results`` into ``output``; return the exit status for the CLI.

    0 when rendered or when Node/npx is unavailable (said so), 1 when there is nothing to render
    or Allure failed.
    """
    npx, node = which("npx"), which("node")
    if npx is None or node is None:
        missing = " and ".join(n for n, p in (("node", node), ("npx", npx)) if p is None)
        echo(f"Node.js is not available ({missing} not found on PATH): the HTML report was not "
             f"rendered. The raw Allure results in {results} remain the evidence; install "
             f"Node.js >= {MIN_NODE} to render them with Allure 3.")
        return 0
    major = node_major(node, runner)
    if major is None or major < MIN_NODE:
        echo(f"Node.js {major if major is not None else '(unknown version)'} is too old for "
             f"Allure 3 (needs >= {MIN_NODE}): the HTML report was not rendered. The raw Allure "
             f"results in {results} remain the evidence.")
        return 0
    if not results.is_dir() or not any(results.glob("*-result.json")):
        echo(f"no Allure results in {results}: run the checks first (tox -e checks)")
        return 1
    history.parent.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    template = template or REPORTS_CONFIG_DIR / "allurerc.json"
    with tempfile.TemporaryDirectory(prefix="caracal-allure-") as tmp:
        config_path = Path(tmp) / "allurerc.json"
        categories = results / "categories.json"
        if not categories.exists():
            categories = REPORTS_CONFIG_DIR / "categories.json"
        config_path.write_text(json.dumps(_config(template, output, history, name, categories),
                                          indent=2))
        command: Sequence[str] = [npx, "--yes", package, "generate", str(results.resolve()),
                                  "--config", str(config_path), "--output", str(output.resolve())]
        echo("rendering: " + " ".join(command))
        proc = runner(list(command), cwd=str(results.resolve().parent), text=True, check=False)
    if proc.returncode != 0:
        echo(f"Allure 3 failed (exit {proc.returncode}); the raw results in {results} remain the "
             "evidence")
        return 1
    echo(f"HTML report: {output / 'index.html'} (history: {history})")
    return 0

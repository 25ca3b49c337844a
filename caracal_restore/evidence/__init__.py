"""Evidence for auditors: control catalogue, waivers, run summary, signed manifest, HTML report.

Everything here is plain library code (no pytest): the plugin modules ``fixtures/evidence.py``
and ``fixtures/gate.py`` feed it, and ``python -m caracal_restore.evidence`` uses it to verify a
manifest, pick the newest bundle of a location and render the Allure HTML report.
"""

from __future__ import annotations

from pathlib import Path

#: The repository's report configuration (catalogue, categories, waivers, Allure config).
REPORTS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "reports"

"""Layout rules: our `fixtures` package is the repository's; the README documents every option."""

from __future__ import annotations

from pathlib import Path

import fixtures
from fixtures.options import SETTINGS
from tests.conftest import REPO


def test_fixtures_package_is_ours() -> None:
    assert Path(fixtures.__file__).resolve().parent == REPO / "fixtures"


def test_readme_documents_every_option() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [s.flag for s in SETTINGS if f"`{s.flag}`" not in readme or s.env not in readme]
    assert not missing, f"README lacks: {missing}"

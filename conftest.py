"""Root conftest: wiring only (pytest_plugins may live only here)."""

pytest_plugins = (
    "fixtures.options",
    "fixtures.shared",
    "fixtures.controls",
    "fixtures.evidence",
    "fixtures.environment",
    "fixtures.restore",
    "fixtures.services",
    "fixtures.diagnostics",
    "fixtures.retention",
    "fixtures.gate",
)

"""Checks of the operations page's table (see the module docstrings)."""

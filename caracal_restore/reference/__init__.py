"""A reference Caracal deployment that writes data exactly as Caracal does.

- ``schema``: the 2026.06 schema (our DDL from the facts), ledger and monthly audit partitions;
- ``secrets``: the runtime secret files of a 2026.06 deployment;
- ``policy``: the canary Rego convention (render and evaluate) shared with the reference STS;
- ``generator``: deterministic reference data (``populate``, ``build_source_database``).
"""

"""Checks of the operations page's symptom table: each row is a diagnostic that names its cause.

One module per row: ``test_kek`` (Restored STS cannot decrypt keys), ``test_chain`` (Audit chain
verification fails), ``test_routing`` (Gateway cannot route) and ``test_revocation`` (Revocation
state is incomplete). The diagnoses live in ``caracal_restore.diagnose``; the checks assert on
the part each control is about and attach what was observed.
"""

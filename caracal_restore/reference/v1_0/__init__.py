"""Reference deployment of Caracal release 1.0: schema, secrets, data generator, deployment.

The 2026.06 reference (``caracal_restore.reference``) is reused wherever 1.0 behaves the same
(audit chain, replay files, Parquet exports, Redis provisioning); this package holds what
1.0 changed (FACTS-1.0 §0): CSS1 envelopes under SECRET_STORE_KEK, ``secret_store``,
``authority_records`` and governed ``sessions``, routing from ``resources``, idempotency
receipts, the admin-audit global chain, per-service logins.
"""

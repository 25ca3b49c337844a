"""Retention controls, row "Audit database": audit export watermarks and the immutable archive.

The hourly Parquet archive (FACTS-1.0 §6, §20 A5/R1) is compared with the restored database
as of the backup's watermark; the archive bucket's Object Lock is judged only on a substrate
observed to enforce it (the probe's verdict, never the provider's name).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from caracal_restore.environments.objectstore import ObjectStore
from caracal_restore.parquet_export import ArchiveIndex
from caracal_restore.retention import RetentionSettings, archive, exports
from caracal_restore.retention.audit import ChainHoles
from checks.retention.expectations import control_of
from fixtures import evidence
from fixtures.retention import WatermarkSource


@control_of("RC-EXP-1")
def test_export_watermark_equals_the_source(
    restored_conn: psycopg.Connection[Any], watermark_source: WatermarkSource,
) -> None:
    """RC-EXP-1 The restored parquet-hourly watermark is the source's at backup time.

    Compared with the digest of ``audit_export_watermark`` in the bundle's fingerprint (taken
    in the dump's snapshot), or with a live source; without either it cannot be evaluated.
    """
    result = exports.watermark_matches_source(restored_conn,
                                              source_tables=watermark_source.tables,
                                              source_value=watermark_source.live_value)
    evidence.json("export watermark", result.evidence())
    assert result.ok, result.message()


@control_of("RC-EXP-2")
def test_every_exported_hour_has_its_object(
    exported_hour_rows: exports.HourRows, archive_index: ArchiveIndex,
) -> None:
    """RC-EXP-2 Every hour up to the watermark with rows has its Parquet object, equal to them.

    Same event ids, ``chain_hmac``, ``chain_seq`` and ``content_sha256`` (and zone, decision,
    event type, request id, millisecond time) as the restored rows ingested in that hour.
    """
    result = exports.evaluate_hours(exported_hour_rows, archive_index)
    evidence.json("export hours against the restored rows", result.evidence())
    assert result.ok, result.message()


@control_of("RC-EXP-3")
def test_chain_links_verify_across_the_export(
    archive_index: ArchiveIndex, audit_hmac_key: bytes,
) -> None:
    """RC-EXP-3 The archive's chain_hmac links verify across all objects under AUDIT_HMAC_KEY."""
    result = exports.chain_across_export(archive_index, audit_hmac_key)
    evidence.json("chain across the export", result.evidence())
    assert result.ok, result.message()


@control_of("RC-EXP-4")
def test_nothing_aged_out_before_it_was_exported(
    restored_conn: psycopg.Connection[Any], archive_index: ArchiveIndex, chain_holes: ChainHoles,
) -> None:
    """RC-EXP-4 Every event gone from the restored chains is in the archive (evidence continuity).

    Retention removes old partitions from PostgreSQL; the events they held survive only in the
    archive. Every absent chain_seq below a zone's head — the dropped prefix or a hole
    inside — must be found there.
    """
    result = exports.continuity(chain_holes, archive_index, exports.watermark_hour(restored_conn))
    evidence.json("evidence continuity", result.evidence())
    assert result.ok, result.message()


@control_of("RC-EXP-5")
def test_no_export_object_was_overwritten(
    archive_index: ArchiveIndex, archive_store: ObjectStore,
) -> None:
    """RC-EXP-5 Every export object was written once: one version per key on a versioned bucket.

    On a bucket without versioning an overwrite leaves no trace, so the control cannot be
    evaluated there (broken, not passed).
    """
    versioning = exports.bucket_versioning(archive_store)
    result = exports.write_once(archive_index, versioning)
    evidence.json("object versions", result.evidence())
    assert result.ok, result.message()


@control_of("RC-ARC-1")
def test_archive_enforces_compliance_object_lock(
    archive_store: ObjectStore, retention_settings: RetentionSettings,
) -> None:
    """RC-ARC-1 The archive bucket enforces Object Lock COMPLIANCE for the archive minimum.

    The substrate is probed first: a COMPLIANCE retention must resist being shortened and a
    locked version must resist deletion. On a substrate that does not enforce Object Lock the
    check is broken with that reason, never passed — plain moto (it accepts shortening a
    COMPLIANCE retention) or a ``dir`` store. The embedded default, ``moto+compliance-lock``,
    refuses both as S3 does, so there the configuration is judged: Object Lock enabled and a
    default COMPLIANCE retention of at least ``--archive-min-retention-days`` (the exporter
    sends no lock headers of its own, so without a default rule its objects are unlocked).
    """
    probe = archive_store.probe_immutability()
    evidence.json("substrate probe", dataclasses.asdict(probe)
                  | {"enforces_object_lock": probe.enforces_object_lock})
    archive.require_enforcing(probe)
    configuration = archive_store.bucket_lock_configuration()
    result = archive.object_lock(probe, configuration, bucket=archive_store.bucket,
                                 min_days=retention_settings.archive_min_retention_days)
    evidence.json("archive object lock", result.evidence())
    assert result.ok, result.message()

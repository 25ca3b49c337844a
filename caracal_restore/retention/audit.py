"""Audit database retention: AUDIT_RETENTION_DAYS and the monthly partitions (FACTS-2026.06 §6,
§2.10; FACTS-1.0 §12.1, §4.8).

The audit service's retention loop runs every 6 h: it creates the partitions of the current
month and the next three, then drops every monthly partition whose end is at or before
``now − AUDIT_RETENTION_DAYS``. Rows are never deleted one by one, so rows of the partition
that straddles the cutoff legitimately stay, and the default partition is never pruned. A row
of the default partition inside a month that has (or will need) its own partition blocks that
partition's creation for good.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from caracal_restore import audit_chain
from caracal_restore.chainhash import EPOCH
from caracal_restore.parquet_export import ArchiveIndex, ArchiveRow
from caracal_restore.retention.common import (
    AUDIT_DEFAULT_PARTITION,
    AUDIT_TABLE,
    UTC,
    BackupClock,
    Evaluation,
    RetentionSettings,
    add_months,
    iso,
    month_start,
    ranges,
    show_ranges,
)

_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


@dataclasses.dataclass(frozen=True)
class Partition:
    """One child of ``audit_events``: its bounds (None for DEFAULT/MINVALUE/MAXVALUE), rows."""

    name: str
    bound: str
    lower: dt.datetime | None
    upper: dt.datetime | None
    rows: int

    @property
    def is_default(self) -> bool:
        """True for the DEFAULT partition."""
        return self.bound.strip().upper() == "DEFAULT"

    def covers(self, lo: dt.datetime, hi: dt.datetime) -> bool:
        """True when the partition's range contains ``[lo, hi)``."""
        return (self.lower is not None and self.upper is not None
                and self.lower <= lo and hi <= self.upper)

    def overlaps(self, lo: dt.datetime, hi: dt.datetime) -> bool:
        """True when the partition's range intersects ``[lo, hi)``."""
        return (self.lower is not None and self.upper is not None
                and self.lower < hi and lo < self.upper)

    def holds(self, moment: dt.datetime) -> bool:
        """True when a row with this ``occurred_at`` belongs in the partition."""
        return (self.lower is not None and self.upper is not None
                and self.lower <= moment < self.upper)

    def as_evidence(self) -> dict[str, Any]:
        """Name, bound expression and row count."""
        return {"name": self.name, "bound": self.bound, "rows": self.rows}


def read_partitions(conn: psycopg.Connection[Any], table: str = AUDIT_TABLE) -> list[Partition]:
    """Every partition of the audit table with its bound and row count (read-only)."""
    if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone() == (None,):
        raise LookupError(f"the restored database has no table {table}")
    listing = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname",
        (f"public.{table}",),
    ).fetchall()
    counts = dict(conn.execute(
        sql.SQL("SELECT tableoid::regclass::text, count(*) FROM {} GROUP BY 1").format(
            sql.Identifier(table))
    ).fetchall())
    out = []
    for name, bound in listing:
        lower = upper = None
        match = _BOUND.fullmatch(bound or "")
        if match:
            lower, upper = (_literal(conn, text) for text in match.groups())
        rows = int(counts.get(name) or counts.get(f'"{name}"') or 0)
        out.append(Partition(str(name), str(bound), lower, upper, rows))
    return out


def _literal(conn: psycopg.Connection[Any], text: str) -> dt.datetime | None:
    """A bound literal ``'2026-11-01 00:00:00+00'`` as a timestamp (None for MIN/MAXVALUE)."""
    text = text.strip()
    if text.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    row = conn.execute("SELECT %s::timestamptz", (text.strip("'"),)).fetchone()
    assert row is not None
    value: dt.datetime = row[0]
    return value.astimezone(UTC)


def audit_retention_override(conn: psycopg.Connection[Any], table: str) -> int | None:
    """The console's audit-retention override row (FACTS-1.0 §12.1; None: no table or row)."""
    if not table:
        return None
    if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone() == (None,):
        return None
    row = conn.execute(sql.SQL("SELECT retention_days FROM {} ORDER BY updated_at DESC"
                               " LIMIT 1").format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else None


def retention_cutoffs(clock: BackupClock, settings: RetentionSettings) -> dict[str, dt.datetime]:
    """The cutoff at the backup time and the one the last loop run is sure to have applied."""
    cutoff = clock.at - settings.audit_retention
    swept = cutoff - settings.audit_tick
    return {"cutoff": cutoff, "swept_cutoff": swept, "boundary": month_start(swept)}


def rows_beyond_window(
    conn: psycopg.Connection[Any], clock: BackupClock, settings: RetentionSettings
) -> Evaluation:
    """RC-AUD-1: no row older than the month that held ``backup − days − one loop interval``.

    Monthly partitions ending at or before that instant were dropped by the last loop run,
    so a row older than the boundary can only be a partition retention failed to drop, or a
    row of the default partition that no retention will ever remove.
    """
    cuts = retention_cutoffs(clock, settings)
    result = Evaluation(observed={
        "cutoff (backup − AUDIT_RETENTION_DAYS)": iso(cuts["cutoff"]),
        "cutoff the last loop run surely applied (− 6 h)": iso(cuts["swept_cutoff"]),
        "rows must not be older than": iso(cuts["boundary"]),
    })
    rows = conn.execute(
        sql.SQL(
            "SELECT tableoid::regclass::text, count(*), min(occurred_at), max(occurred_at)"
            " FROM {} WHERE occurred_at < %s GROUP BY 1 ORDER BY 1"
        ).format(sql.Identifier(AUDIT_TABLE)),
        (cuts["boundary"],),
    ).fetchall()
    oldest = conn.execute(
        sql.SQL("SELECT min(occurred_at), count(*) FROM {}").format(sql.Identifier(AUDIT_TABLE))
    ).fetchone()
    result.observed["oldest occurred_at"] = iso(oldest[0]) if oldest else None
    result.observed["rows"] = int(oldest[1]) if oldest else 0
    result.observed["rows older than the boundary, by partition"] = {
        name: {"rows": int(n), "oldest": iso(lo), "newest": iso(hi)} for name, n, lo, hi in rows}
    for name, n, lo, hi in rows:
        where = ("the default partition, which retention never prunes"
                 if name.strip('"') == AUDIT_DEFAULT_PARTITION else f"partition {name}")
        result.add("row_beyond_window", name,
                   f"{n} audit_events rows in {where} occurred {iso(lo)}..{iso(hi)}, before "
                   f"{iso(cuts['boundary'])} (AUDIT_RETENTION_DAYS={settings.audit_retention.days}"
                   f" at backup time {iso(clock.at)}, 6 h loop slack)")
    return result


def expired_partitions(
    partitions: Sequence[Partition], clock: BackupClock, settings: RetentionSettings
) -> Evaluation:
    """RC-AUD-2: every monthly partition ending at or before the swept cutoff is gone."""
    cuts = retention_cutoffs(clock, settings)
    result = Evaluation(observed={
        "partitions": [p.as_evidence() for p in partitions],
        "partitions ending at or before this must be dropped": iso(cuts["swept_cutoff"]),
    })
    for p in partitions:
        if p.is_default:
            continue
        if p.upper is None:
            result.add("unbounded_partition", p.name,
                       f"partition {p.name} ({p.bound}) has no upper bound: retention can never "
                       "drop it")
        elif p.upper <= cuts["swept_cutoff"]:
            result.add("expired_partition", p.name,
                       f"partition {p.name} ends {iso(p.upper)}, at or before "
                       f"{iso(cuts['swept_cutoff'])}, yet it still exists ({p.rows} rows): the "
                       "retention loop did not drop it")
    return result


def required_months(clock: BackupClock, settings: RetentionSettings) -> list[dt.datetime]:
    """Months whose partitions the last loop run created: its month and the next ones."""
    first = month_start(clock.at - settings.audit_tick)
    return [add_months(first, n) for n in range(settings.partitions_ahead + 1)]


def rolling_partitions(
    partitions: Sequence[Partition], clock: BackupClock, settings: RetentionSettings
) -> Evaluation:
    """RC-AUD-3: the partitions of the backup month and the months the loop creates ahead."""
    months = required_months(clock, settings)
    by_name = {p.name: p for p in partitions}
    result = Evaluation(observed={
        "required": [settings.partition_name(m) for m in months],
        "present": sorted(by_name),
    })
    for month in months:
        name = settings.partition_name(month)
        lo, hi = month, add_months(month, 1)
        part = by_name.get(name)
        if part is None:
            result.add("partition_missing", name,
                       f"partition {name} for {lo:%Y-%m} is missing (required at backup time "
                       f"{iso(clock.at)}: current month + {settings.partitions_ahead})")
        elif not part.covers(lo, hi):
            result.add("partition_bounds", name,
                       f"partition {name} has bounds {part.bound}, not [{iso(lo)}, {iso(hi)})")
    return result


def default_partition_hazard(
    conn: psycopg.Connection[Any],
    partitions: Sequence[Partition],
    clock: BackupClock,
    settings: RetentionSettings,
) -> Evaluation:
    """RC-AUD-4: no default-partition row in a month that has, or will need, its own partition.

    The loop will try to create every month from the current one on; ``CREATE TABLE …
    PARTITION OF`` fails while the default partition holds a row of that month, and the tick
    aborts before dropping anything — for every tick after, until someone moves the rows.
    """
    first_target = month_start(clock.at - settings.audit_tick)
    rows = conn.execute(
        sql.SQL(
            "SELECT date_trunc('month', occurred_at AT TIME ZONE 'UTC'), count(*),"
            " min(occurred_at), max(occurred_at) FROM ONLY {} GROUP BY 1 ORDER BY 1"
        ).format(sql.Identifier(AUDIT_DEFAULT_PARTITION)),
    ).fetchall() if any(p.is_default for p in partitions) else []
    result = Evaluation(observed={
        "default partition rows by month": {
            f"{m:%Y-%m}": int(n) for m, n, _lo, _hi in rows},
        "months the retention loop creates from now on start at": f"{first_target:%Y-%m}",
    })
    if not any(p.is_default for p in partitions):
        result.observed["note"] = f"{AUDIT_DEFAULT_PARTITION} does not exist"
    affected = []
    for naive, n, lo, hi in rows:
        month = naive.replace(tzinfo=UTC)
        end = add_months(month, 1)
        owners = [p.name for p in partitions if not p.is_default and p.overlaps(month, end)]
        if month >= first_target or owners:
            affected.append(f"{month:%Y-%m}")
            why = (f"overlaps existing partition {', '.join(owners)}" if owners else
                   f"{settings.partition_name(month)} must still be created")
            result.add("default_partition_blocks", f"{month:%Y-%m}",
                       f"{AUDIT_DEFAULT_PARTITION} holds {n} rows of {month:%Y-%m} "
                       f"({iso(lo)}..{iso(hi)}); {why}, and CREATE TABLE … PARTITION OF fails "
                       "while they are there: retention stops for good")
    result.observed["months affected"] = affected
    return result


@dataclasses.dataclass(frozen=True)
class ChainHoles:
    """Per zone: the chain_seq values absent below the head, and the surviving range."""

    gaps: Mapping[str, list[tuple[int, int]]]
    heads: Mapping[str, tuple[int, int, int]]  # zone -> (min seq, max seq, rows)

    def absent(self, zone: str, seq: int) -> bool:
        """True when the restored table has no row (zone, seq)."""
        head = self.heads.get(zone)
        if head is None or seq > head[1] or seq < 1:
            return True
        return any(lo <= seq <= hi for lo, hi in self.gaps.get(zone, ()))

    def missing_count(self) -> int:
        """chain_seq values absent below the heads, all zones."""
        return sum(hi - lo + 1 for spans in self.gaps.values() for lo, hi in spans)


def chain_holes(conn: psycopg.Connection[Any]) -> ChainHoles:
    """Absent chain_seq ranges per zone (the prefix retention dropped, and any hole inside)."""
    gaps: dict[str, list[tuple[int, int]]] = {}
    rows = conn.execute(sql.SQL(
        "SELECT zone_id, COALESCE(prev, 0) + 1, chain_seq - 1 FROM ("
        " SELECT zone_id, chain_seq, lag(chain_seq) OVER (PARTITION BY zone_id"
        " ORDER BY chain_seq) AS prev FROM {} WHERE chain_seq IS NOT NULL) t"
        " WHERE chain_seq > COALESCE(prev, 0) + 1 ORDER BY 1, 2"
    ).format(sql.Identifier(AUDIT_TABLE))).fetchall()
    for zone, lo, hi in rows:
        gaps.setdefault(str(zone), []).append((int(lo), int(hi)))
    heads = {
        str(zone): (int(lo), int(hi), int(n))
        for zone, lo, hi, n in conn.execute(sql.SQL(
            "SELECT zone_id, min(chain_seq), max(chain_seq), count(*) FROM {}"
            " WHERE chain_seq IS NOT NULL GROUP BY 1"
        ).format(sql.Identifier(AUDIT_TABLE))).fetchall()
    }
    return ChainHoles(gaps, heads)


def occurred(row: ArchiveRow) -> dt.datetime:
    """The (millisecond) occurred_at of an exported event."""
    return EPOCH + dt.timedelta(milliseconds=row.time_ms)


def missing_rows_are_retention(
    index: ArchiveIndex,
    holes: ChainHoles,
    partitions: Sequence[Partition],
    watermark: dt.datetime | None,
    clock: BackupClock,
    settings: RetentionSettings,
) -> Evaluation:
    """RC-AUD-5: every exported event absent from the restored chains was in a dropped partition.

    Only objects up to the restored watermark count (later objects were exported after the
    backup). A missing event is explained by retention when no partition that still exists
    would hold it and its month ended at or before the backup's cutoff.
    """
    cutoff = clock.at - settings.audit_retention
    result = Evaluation(observed={
        "export watermark": iso(watermark),
        "cutoff (backup − AUDIT_RETENTION_DAYS)": iso(cutoff),
    })
    explained: dict[str, int] = {}
    unexplained: dict[tuple[str, str], list[int]] = {}
    considered = 0
    hours = {o.key: o.hour for o in index.objects}
    for (zone, seq), row in index.rows.items():
        hour = hours.get(row.key)
        if watermark is None or hour is None or hour > watermark:
            continue
        considered += 1
        if not holes.absent(zone, seq):
            continue
        when = occurred(row)
        month = month_start(when)
        holder = next((p for p in partitions if not p.is_default and p.holds(when)), None)
        if holder is None and add_months(month, 1) <= cutoff:
            explained[f"{month:%Y-%m}"] = explained.get(f"{month:%Y-%m}", 0) + 1
            continue
        reason = (f"its partition {holder.name} still exists" if holder is not None else
                  f"{month:%Y-%m} ends after the cutoff {iso(cutoff)}")
        unexplained.setdefault((zone, reason), []).append(seq)
    result.observed["exported events up to the watermark"] = considered
    result.observed["absent from the database, explained by dropped partitions (by month)"] = (
        explained)
    for (zone, reason), seqs in sorted(unexplained.items()):
        result.add("deleted_outside_retention", zone,
                   f"zone {zone}: exported chain_seq {show_ranges(ranges(seqs))} "
                   f"({len(seqs)} events) are absent from the restored audit_events, but "
                   f"retention cannot have removed them: {reason}")
    return result



def agree_with_chain_check(result: Evaluation, report: audit_chain.Report) -> None:
    """Add the offline chain verifier's view: its unexplained holes (kind ``gap``) are findings.

    The chain verifier (``caracal_restore.audit_chain``, run once per run by the symptom
    "Audit chain verification fails" over the restored chains and the same archive) classifies
    every hole of a restored chain as an expected ``retention_hole`` or a ``gap`` (missing
    rows). Retention and the chain check must agree.
    """
    gaps = report.of_kind("gap")
    result.observed["chain verifier"] = {
        "retention holes": report.counts.get("retention_hole", 0),
        "retention hole basis": dict(report.retention),
        "unexplained gaps": report.counts.get("gap", 0),
    }
    for finding in gaps:
        result.add("chain_check_gap", str(finding.zone_id),
                   f"the chain verifier finds zone {finding.zone_id} from chain_seq "
                   f"{finding.chain_seq} missing for a reason other than retention: "
                   f"{finding.detail}")
    if report.counts.get("gap", 0) > len(gaps):
        result.add("chain_check_gap", "audit_events",
                   f"… {report.counts['gap'] - len(gaps)} more gaps found by the chain verifier")

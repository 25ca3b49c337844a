"""Restore checklist step 1: PostgreSQL restored, isolated, complete and internally consistent.

Observations of the restored database (read-only) compared with the source: with a
fingerprint (taken in the dump's snapshot) per-table row counts and content digests; without
one (a bundle from Caracal's own backup.sh) the dump itself is the source, read with
``pg_restore`` (row counts and partition bounds), and the internal-consistency rules of
FACTS-1.0 §20 A1.6-A1.8 apply in both cases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from caracal_restore import fingerprint as fp
from caracal_restore.environments.base import PgEndpoint, is_loopback
from caracal_restore.inspect import CannotEvaluate
from caracal_restore.profiles import Profile, ReferenceSpec
from caracal_restore.redact import REDACTOR

Conn = psycopg.Connection[Any]
#: The partitioned evidence table and the catch-all group of tables no group names.
AUDIT_TABLE = "audit_events"
OTHER_GROUP = "other"
#: Findings listed in a message before "… and N more".
SHOWN = 5


def shorten(items: Sequence[str], limit: int = SHOWN) -> str:
    """The first ``limit`` items joined, with how many were left out."""
    head = "; ".join(items[:limit])
    return head + (f"; … and {len(items) - limit} more" if len(items) > limit else "")


# ----------------------------------------------------------------------------- isolation


@dataclasses.dataclass(frozen=True)
class Isolation:
    """Where the restore landed and every link it has to anything outside the target."""

    target: str
    loopback: bool
    remote_allowed: bool
    system_identifier: str
    in_recovery: bool
    replication_senders: int
    wal_receivers: int
    subscriptions: tuple[str, ...]
    foreign_servers: tuple[str, ...]
    findings: tuple[str, ...]


def observe_isolation(conn: Conn, target: PgEndpoint, *, remote_allowed: bool) -> Isolation:
    """Is the restored database linked to nothing outside the target (no replication, no
    subscription, no foreign server) and on a host named as isolated?"""
    row = conn.execute(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), pg_is_in_recovery(),"
        " (SELECT count(*) FROM pg_stat_replication), (SELECT count(*) FROM pg_stat_wal_receiver)"
    ).fetchone()
    assert row is not None
    system_id, recovery, senders, receivers = str(row[0]), bool(row[1]), int(row[2]), int(row[3])
    subs = tuple(r[0] for r in conn.execute("SELECT subname FROM pg_subscription ORDER BY 1"))
    servers = tuple(
        f"{name} ({', '.join(opts or []) or 'no options'})"
        for name, opts in conn.execute(
            "SELECT srvname, srvoptions FROM pg_foreign_server ORDER BY 1").fetchall()
    )
    findings: list[str] = []
    loopback = is_loopback(target.host)
    if not loopback and not remote_allowed:
        findings.append(f"the restore target {target.host}:{target.port} is not on loopback and "
                        "was not named as an isolated host (--allow-remote-target)")
    if recovery or receivers:
        findings.append("the target is a standby receiving WAL from another server")
    if senders:
        findings.append(f"the target streams WAL to {senders} other server(s)")
    if subs:
        findings.append(f"logical replication subscriptions pull from elsewhere: {', '.join(subs)}")
    if servers:
        findings.append(f"foreign servers reach outside the target: {', '.join(servers)}")
    return Isolation(
        target=f"{target.host}:{target.port}/{target.dbname}", loopback=loopback,
        remote_allowed=remote_allowed, system_identifier=system_id, in_recovery=recovery,
        replication_senders=senders, wal_receivers=receivers, subscriptions=subs,
        foreign_servers=servers, findings=tuple(findings),
    )


@dataclasses.dataclass(frozen=True)
class SourceApart:
    """The restore target against the live source: address and cluster identity."""

    target: str
    target_system_identifier: str
    source: str
    source_system_identifier: str
    findings: tuple[str, ...]


def observe_source_apart(conn: Conn, target: PgEndpoint, source: PgEndpoint) -> SourceApart:
    """Is the restore target another server than the live source (address and
    ``pg_control_system().system_identifier``)? An unreachable source cannot be compared."""
    row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    system_id = str(row[0])
    where = f"{source.host}:{source.port}"
    try:
        with psycopg.connect(source.read_only().conninfo(), autocommit=True,
                             connect_timeout=5) as src:
            got = src.execute("SELECT system_identifier::text FROM pg_control_system()"
                              ).fetchone()
    except psycopg.Error as exc:
        raise CannotEvaluate(REDACTOR(f"the live source {where} could not be reached to compare "
                                      f"cluster identities: {type(exc).__name__}")) from None
    source_id = str(got[0]) if got else ""
    findings = []
    if (source.host, source.port) == (target.host, target.port):
        findings.append(f"restored onto the source server itself ({where})")
    if source_id == system_id:
        findings.append(f"the target is the source's cluster (system identifier {system_id})")
    return SourceApart(f"{target.host}:{target.port}/{target.dbname}", system_id, where,
                       source_id, tuple(findings))


# ----------------------------------------------------------------------------- databases


@dataclasses.dataclass(frozen=True)
class DatabasePresence:
    """Each database the bundle's manifest lists: restored as which database, and found?"""

    manifest: tuple[str, ...]
    restored: dict[str, str | None]
    on_target: dict[str, bool]
    #: The release's databases every backup holds, and those only some deployments have.
    required: tuple[str, ...]
    optional_absent: tuple[str, ...]
    findings: tuple[str, ...]


def observe_databases(
    conn: Conn, manifest: Sequence[str], restored: Mapping[str, PgEndpoint],
    *, required: Sequence[str] = (), optional: Sequence[str] = (),
) -> DatabasePresence:
    """Every database of the manifest restored into a database that exists on the target, and
    every database the release always has listed in the manifest."""
    existing = {r[0] for r in conn.execute(
        "SELECT datname FROM pg_database WHERE NOT datistemplate").fetchall()}
    mapping = {db: (restored[db].dbname if db in restored else None) for db in manifest}
    found = {db: (name is not None and name in existing) for db, name in mapping.items()}
    findings = []
    if not manifest:
        findings.append("manifest.txt lists no database at all")
    findings += [f"{db}: every deployment of the release has it, but manifest.txt does not "
                 "list it" for db in required if db not in manifest]
    for db in manifest:
        if mapping[db] is None:
            findings.append(f"{db}: listed in manifest.txt but not restored")
        elif not found[db]:
            findings.append(f"{db}: restored as {mapping[db]!r}, which does not exist on the "
                            "target")
    return DatabasePresence(tuple(manifest), mapping, found, tuple(required),
                            tuple(db for db in optional if db not in manifest), tuple(findings))


def manifest_databases(bundle_root: Path) -> tuple[str, ...]:
    """The databases the bundle's ``manifest.txt`` lists (read from the extracted bundle)."""
    from caracal_restore.bundle import Manifest

    return Manifest.parse((bundle_root / "manifest.txt").read_text()).databases


def missing_tables(conn: Conn, names: Iterable[str]) -> list[str]:
    """Tables of ``public`` that ``to_regclass`` cannot find, in the order given."""
    wanted = list(dict.fromkeys(names))
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) AS t"
        " WHERE to_regclass('public.' || quote_ident(t)) IS NULL",
        (wanted,),
    ).fetchall()
    absent = {r[0] for r in rows}
    return [t for t in wanted if t in absent]


def release_tables(profile: Profile) -> list[str]:
    """Every table the release's schema has: verify.sh's list, compared tables and groups."""
    names = [*profile.verify_tables, *profile.state_tables]
    for _group, tables in profile.table_groups:
        names += tables
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------ the dump itself

_COPY = re.compile(rb'^COPY (?:"?public"?\.)?"?([^" (]+)"? \(')
_ATTACH = re.compile(
    rb'^ALTER TABLE ONLY (?:"?public"?\.)?"?([^" ]+)"?'
    rb' ATTACH PARTITION (?:"?public"?\.)?"?([^" ]+)"? (.*);$'
)


@dataclasses.dataclass(frozen=True)
class DumpContents:
    """What a custom-format dump holds, read with pg_restore: rows per table, partitions."""

    rows: dict[str, int]
    partitions: dict[str, list[dict[str, str]]]
    #: First-column values of the tables asked for (COPY text form), in dump order.
    first_column: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: Whole rows of the tables asked for (COPY text columns; ``\\N`` is NULL), in dump order.
    rows_of: dict[str, list[list[str]]] = dataclasses.field(default_factory=dict)
    #: Column names of the tables asked for, as their COPY statement lists them.
    columns_of: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def read_dump(dump: Path, pg_restore: Path, *, capture: Iterable[str] = (),
              only: Iterable[str] = (), timeout: float = 3600) -> DumpContents:
    """Stream ``pg_restore -f -`` of a dump and count each table's COPY rows (nothing restored).

    For the tables in ``capture`` the first column of every row is kept too (the ledger), and
    each whole row in ``rows``. ``only`` limits the read to those tables (``pg_restore -t``).
    """
    contents = DumpContents({}, {}, {name: [] for name in capture},
                            {name: [] for name in capture})
    tables = [f"--table={name}" for name in only]
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen([str(pg_restore), "--file=-", *tables, str(dump)],
                              stdout=subprocess.PIPE, stderr=errors) as proc:
            assert proc.stdout is not None
            try:
                _parse_dump(proc.stdout, contents)
            except BaseException:
                proc.kill()
                raise
            code = proc.wait(timeout=timeout)
        errors.seek(0)
        err = errors.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(REDACTOR(f"pg_restore could not read {dump.name} (exit {code}): "
                                    f"{err[-2000:]}"))
    for parts in contents.partitions.values():
        parts.sort(key=lambda p: p["name"])
    return contents


def _parse_dump(lines: Iterable[bytes], into: DumpContents) -> None:
    """COPY blocks (one line per row up to ``\\.``) and ATTACH PARTITION statements."""
    current: str | None = None
    for line in lines:
        if current is not None:
            if line.rstrip(b"\n") == b"\\.":
                current = None
            else:
                into.rows[current] += 1
                if current in into.first_column:
                    columns = line.rstrip(b"\n").decode(errors="replace").split("\t")
                    into.first_column[current].append(columns[0])
                    into.rows_of[current].append(columns)
            continue
        if line.startswith(b"COPY "):
            match = _COPY.match(line)
            if match:
                current = match.group(1).decode()
                into.rows.setdefault(current, 0)
                if current in into.rows_of:
                    listed = line.decode(errors="replace").split("(", 1)[1].rsplit(")", 1)[0]
                    into.columns_of[current] = [c.strip().strip('"') for c in listed.split(",")]
        elif line.startswith(b"ALTER TABLE ONLY") and b" ATTACH PARTITION " in line:
            match = _ATTACH.match(line.rstrip(b"\n"))
            if match:
                parent, child, bound = (g.decode() for g in match.groups())
                # The dump writes the bound exactly as pg_get_expr(relpartbound) prints it.
                into.partitions.setdefault(parent, []).append({"name": child, "bound": bound})


# ----------------------------------------------------------------------- the comparisons


@dataclasses.dataclass(frozen=True)
class SourceTables:
    """What the restored tables are compared with, and on which basis."""

    basis: str  # "fingerprint" (rows + content digests) | "dump" (row counts only)
    tables: Mapping[str, Mapping[str, Any]]
    partitions: list[dict[str, str]] | None


def source_from_fingerprint(fingerprint: Mapping[str, Any]) -> SourceTables:
    """The source as the bundle's fingerprint records it (taken in the dump's snapshot)."""
    return SourceTables("fingerprint", fingerprint["tables"], fingerprint.get("audit_partitions"))


def source_from_dump(contents: DumpContents) -> SourceTables:
    """The source as the dump itself holds it (no fingerprint: row counts, not digests)."""
    tables = {name: {"rows": n, "sha256": None, "kind": "table", "parent": None}
              for name, n in contents.rows.items()}
    for parent, parts in contents.partitions.items():
        for part in parts:
            if part["name"] in tables:
                tables[part["name"]] = {**tables[part["name"]], "parent": parent,
                                        "kind": "partition"}
    return SourceTables("dump", tables, contents.partitions.get(AUDIT_TABLE, []))


def group_members(
    group: str,
    groups: Sequence[tuple[str, Sequence[str]]],
    *catalogues: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Tables of one group (its tables and their partitions), or of ``other`` (all the rest)."""
    named = {g: set(t) for g, t in groups}
    everything: dict[str, str | None] = {}
    for catalogue in catalogues:
        for name, info in catalogue.items():
            everything.setdefault(name, info.get("parent"))
    grouped = set().union(*named.values()) if named else set()

    def in_group(name: str, tables: set[str]) -> bool:
        return name in tables or everything.get(name) in tables

    if group == OTHER_GROUP:
        return sorted(n for n in everything if not in_group(n, grouped))
    if group not in named:
        return []
    return sorted(n for n in everything if in_group(n, named[group]))


def compare_tables(source: SourceTables, restored: Mapping[str, Mapping[str, Any]],
                   members: Sequence[str]) -> list[str]:
    """Differences for ``members``, the first differing table first (fingerprint's wording)."""
    if source.basis == "fingerprint":
        exp = {n: source.tables[n] for n in members if n in source.tables}
        act = {n: restored[n] for n in members if n in restored}
        return fp.compare_tables(exp, act)
    problems = []
    for name in members:
        info = restored.get(name)
        if info is not None and info.get("kind") == "partitioned":
            continue  # its rows are its partitions'
        if name not in source.tables:
            problems.append(f"{name}: not in the dump, present after restore")
        elif info is None:
            problems.append(f"{name}: in the dump ({source.tables[name]['rows']} rows), "
                            "missing after restore")
        elif info["rows"] != source.tables[name]["rows"]:
            problems.append(f"{name}: {source.tables[name]['rows']} rows in the dump, "
                            f"{info['rows']} after restore")
    return problems


def compare_partitions(source: SourceTables, restored_partitions: list[dict[str, str]] | None,
                       restored_tables: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Children of ``audit_events``: same names, same bounds, same row counts as the source."""
    if source.partitions is None or restored_partitions is None:
        if source.partitions == restored_partitions:
            return []
        return [f"{AUDIT_TABLE} is partitioned in the {source.basis} "
                f"({_n(source.partitions)} partitions) but has {_n(restored_partitions)} "
                "after restore"]
    exp = {p["name"]: p["bound"] for p in source.partitions}
    act = {p["name"]: p["bound"] for p in restored_partitions}
    problems = []
    for name in sorted(exp.keys() | act.keys()):
        if name not in act:
            problems.append(f"{name} ({exp[name]}): in the {source.basis}, missing after restore")
        elif name not in exp:
            problems.append(f"{name} ({act[name]}): not in the {source.basis}, present after "
                            "restore")
        elif exp[name] != act[name]:
            problems.append(f"{name}: bound {act[name]!r} after restore, {exp[name]!r} in the "
                            f"{source.basis}")
        else:
            want = source.tables.get(name, {}).get("rows")
            got = restored_tables.get(name, {}).get("rows")
            if want is not None and got != want:
                problems.append(f"{name}: {want} rows in the {source.basis}, {got} after restore")
    return problems


def _n(value: list[Any] | None) -> str:
    return "no" if value is None else str(len(value))


# ------------------------------------------------------------------- internal consistency

CONSISTENCY_RULES = ("policy-hashes", "manifest-hashes", "one-active-per-zone", "references",
                     "sequences")


@dataclasses.dataclass(frozen=True)
class RuleResult:
    """One internal-consistency rule: how much it looked at and what did not hold."""

    rule: str
    checked: int
    findings: tuple[str, ...]
    applies: bool = True
    note: str = ""


def policy_hashes(conn: Conn) -> RuleResult:
    """Every ``policy_versions.content_sha256`` is the SHA-256 of its ``content`` (A1.6)."""
    total = _count(conn, "SELECT count(*) FROM policy_versions")
    bad = conn.execute(
        "SELECT id, content_sha256, encode(sha256(convert_to(content, 'UTF8')), 'hex')"
        " FROM policy_versions WHERE content_sha256 IS DISTINCT FROM"
        " encode(sha256(convert_to(content, 'UTF8')), 'hex') ORDER BY id"
    ).fetchall()
    return RuleResult("policy-hashes", total, tuple(
        f"policy_versions {i}: content_sha256 {str(s)[:16]}… but content hashes to {h[:16]}…"
        for i, s, h in bad))


def manifest_sha256(policy_version_ids: Sequence[str]) -> str:
    """SHA-256 hex of the compact manifest ``[{"policy_version_id":"…"},…]`` (the API's rule)."""
    body = json.dumps([{"policy_version_id": v} for v in policy_version_ids],
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def manifest_hashes(conn: Conn) -> RuleResult:
    """Every policy-set manifest hashes to its ``manifest_sha256`` and lists existing versions."""
    known = {r[0] for r in conn.execute("SELECT id FROM policy_versions").fetchall()}
    findings = []
    rows = conn.execute(
        "SELECT id, manifest_json::text, manifest_sha256 FROM policy_set_versions ORDER BY id"
    ).fetchall()
    for ident, text, stored in rows:
        try:
            entries = json.loads(text) if text is not None else None
            ids = [str(e["policy_version_id"]) for e in entries]  # type: ignore[union-attr]
        except (ValueError, TypeError, KeyError):
            findings.append(f"policy_set_versions {ident}: manifest_json is not a list of "
                            "{policy_version_id} entries")
            continue
        if manifest_sha256(ids) != stored:
            findings.append(f"policy_set_versions {ident}: manifest_sha256 {str(stored)[:16]}… "
                            f"does not match its manifest ({manifest_sha256(ids)[:16]}…)")
        missing = [v for v in ids if v not in known]
        if missing:
            findings.append(f"policy_set_versions {ident}: lists policy versions that do not "
                            f"exist: {', '.join(missing)}")
    return RuleResult("manifest-hashes", len(rows), tuple(findings))


def one_active_per_zone(conn: Conn, profile: Profile) -> RuleResult:
    """At most one active policy-set binding per zone, where the release requires it."""
    rows = conn.execute(
        "SELECT zone_id, count(*) FROM policy_set_bindings WHERE active_version_id IS NOT NULL"
        " GROUP BY zone_id ORDER BY zone_id").fetchall()
    if not profile.one_active_policy_set_per_zone:
        several = [z for z, n in rows if n > 1]
        return RuleResult("one-active-per-zone", len(rows), (), applies=False, note=(
            f"release {profile.release} allows several active bindings per zone; zones with "
            f"more than one: {', '.join(several) or 'none'}"))
    return RuleResult("one-active-per-zone", len(rows), tuple(
        f"zone {z}: {n} active policy-set bindings" for z, n in rows if n > 1))


_FOREIGN_KEYS = """
SELECT con.conname, cl.relname, pl.relname,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i)
  FROM pg_constraint con
  JOIN pg_class cl ON cl.oid = con.conrelid JOIN pg_namespace ns ON ns.oid = cl.relnamespace
  JOIN pg_class pl ON pl.oid = con.confrelid
 WHERE con.contype = 'f' AND ns.nspname = 'public' AND NOT cl.relispartition
 ORDER BY cl.relname, con.conname
"""


def references(conn: Conn, profile: Profile) -> RuleResult:
    """The release's references and every declared foreign key resolve in the restored rows."""
    specs: list[tuple[str, ReferenceSpec]] = [
        (f"{r.child_table}({', '.join(r.child_columns)})", r) for r in profile.references]
    for name, child, parent, ccols, pcols in conn.execute(_FOREIGN_KEYS).fetchall():
        specs.append((name, ReferenceSpec(child, tuple(ccols), parent, tuple(pcols))))
    findings = []
    for label, spec in specs:
        dangling = _dangling(conn, spec)
        if dangling:
            findings.append(
                f"{label}: {dangling} {spec.child_table} row(s) reference a missing "
                f"{spec.parent_table}({', '.join(spec.parent_columns)})")
    return RuleResult("references", len(specs), tuple(findings))


def _dangling(conn: Conn, spec: ReferenceSpec) -> int:
    pairs = list(zip(spec.child_columns, spec.parent_columns, strict=True))
    not_null = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(c)) for c, _ in pairs)
    match = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(p), sql.Identifier(c)) for c, p in pairs)
    query = sql.SQL(
        "SELECT count(*) FROM {} c WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})"
    ).format(sql.Identifier("public", spec.child_table), not_null,
             sql.Identifier("public", spec.parent_table), match)
    return _count(conn, query)


_OWNED_SEQUENCES = """
SELECT s.schemaname, s.sequencename, s.last_value, t.relname, a.attname,
       COALESCE((SELECT seqincrement FROM pg_sequence WHERE seqrelid = c.oid), 1)
  FROM pg_sequences s
  JOIN pg_class c ON c.relname = s.sequencename
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname
  JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
  JOIN pg_class t ON t.oid = d.refobjid
  JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
 WHERE s.schemaname = 'public'
 ORDER BY s.sequencename
"""


def sequences(conn: Conn) -> RuleResult:
    """Every owned sequence will hand out a value above its column's maximum (A1.8)."""
    rows = conn.execute(_OWNED_SEQUENCES).fetchall()
    findings = []
    for _schema, seq, last, table, column, step in rows:
        top = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
            sql.Identifier(column), sql.Identifier("public", table))).fetchone()
        highest = top[0] if top else None
        if highest is None:
            continue
        if step > 0 and (last is None or last < highest):
            findings.append(f"{seq}: last value {last}, but {table}.{column} already holds "
                            f"{highest}; the next insert would collide")
    return RuleResult("sequences", len(rows), tuple(findings))


def consistency(conn: Conn, profile: Profile, rule: str) -> RuleResult:
    """Evaluate one internal-consistency rule by name."""
    if rule == "policy-hashes":
        return policy_hashes(conn)
    if rule == "manifest-hashes":
        return manifest_hashes(conn)
    if rule == "one-active-per-zone":
        return one_active_per_zone(conn, profile)
    if rule == "references":
        return references(conn, profile)
    if rule == "sequences":
        return sequences(conn)
    raise KeyError(f"no consistency rule {rule!r}; known: {', '.join(CONSISTENCY_RULES)}")


def _count(conn: Conn, query: str | sql.Composed) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0

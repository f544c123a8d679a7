"""Database upkeep: ``check`` a jobforge SQLite file, ``repair`` a damaged one, ``recount`` the
counts per (type, status) after rows were written by other means than jobforge.

``repair`` copies every readable row into a fresh file built with the current schema, keeps the
damaged file beside it, and reports what could not be read. Neither needs the engine running;
``repair`` must not run while workers use the file (it refuses when one has a fresh heartbeat).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import time
from typing import Any, Optional

from .errors import JobforgeError

# Tables whose rows are facts; the rest (counters, windowed statistics) are derived and rebuilt.
# worker_types: the types workers published and their options (producers enqueue with them).
_COPIED_TABLES = {"jobs": "id", "job_logs": None, "schedules": "name", "worker_types": None}
_CHUNK = 500

# The counts per (type, status) recomputed from the rows (the engine keeps them in the same
# transaction as every change it makes; rows written by other means need a recount).
_RECOUNT_STATEMENTS = (
    "DELETE FROM job_type_counts",
    "INSERT INTO job_type_counts (type, status, n) "
    "SELECT type, status, count(*) FROM jobs GROUP BY 1, 2",
)
_COUNT_DRIFT_SQL = """
SELECT type, status, kept, actual FROM (
  SELECT c.type, c.status, c.n AS kept, COALESCE(j.n, 0) AS actual
    FROM job_type_counts c
    LEFT JOIN (SELECT type, status, count(*) AS n FROM jobs GROUP BY 1, 2) j
      ON j.type = c.type AND j.status = c.status
  UNION ALL
  SELECT j.type, j.status, 0, j.n
    FROM (SELECT type, status, count(*) AS n FROM jobs GROUP BY 1, 2) j
   WHERE NOT EXISTS (SELECT 1 FROM job_type_counts c WHERE c.type = j.type AND c.status = j.status)
) WHERE kept <> actual ORDER BY 1, 2
"""


class RepairError(JobforgeError):
    """The file cannot be repaired (not a database at all, or in use)."""


def _sqlite_only(path: str) -> None:
    from .engine import _is_postgres_url, _redacted

    if _is_postgres_url(path):
        raise RepairError(f"{_redacted(path)} is a PostgreSQL database; this works on SQLite files")


def _connect_ro(path: str) -> sqlite3.Connection:
    _sqlite_only(path)
    if not os.path.exists(path):
        raise RepairError(f"database '{path}' does not exist")
    conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True, timeout=5.0)
    conn.execute("PRAGMA query_only = 1")
    return conn


def check(path: str, *, quick: bool = False) -> dict[str, Any]:
    """SQLite's integrity check of the file: ``{"ok": bool, "problems": [...], "schema_version":
    n, "jobs": n or None}``. Raises ``RepairError`` when the file is not a database."""
    try:
        conn = _connect_ro(path)
    except sqlite3.DatabaseError as exc:
        raise RepairError(f"cannot open '{path}': {exc}") from exc
    try:
        try:
            pragma = "quick_check" if quick else "integrity_check"
            rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}(100)")]
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError:
            version = None
        try:
            jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
        except sqlite3.DatabaseError:
            jobs = None
        if rows == ["ok"] and not quick:
            try:
                drift = conn.execute(_COUNT_DRIFT_SQL).fetchall()
            except sqlite3.DatabaseError:
                drift = []  # an old schema without the counts table
            if drift:
                rows = [f"job_type_counts: {t}/{st} counts {kept}, the rows say {actual} "
                        "(fix with: jobforge db recount)" for t, st, kept, actual in drift]  # fmt: skip
    finally:
        conn.close()
    ok = rows == ["ok"]
    return {"path": path, "ok": ok, "problems": [] if ok else rows, "schema_version": version,
            "jobs": jobs}  # fmt: skip


def recount(path: str) -> dict[str, Any]:
    """Recomputes the counts per (type, status) that ``stats()`` reads from the rows, in one
    transaction (safe while workers run). Needed only after jobs were written by other means
    than jobforge (by hand, by a tool). Returns ``{"path", "changed": [...]}``: the counts that
    were wrong."""
    _sqlite_only(path)
    if not os.path.exists(path):
        raise RepairError(f"database '{path}' does not exist")
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            drift = conn.execute(_COUNT_DRIFT_SQL).fetchall()
            for statement in _RECOUNT_STATEMENTS:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        raise RepairError(f"cannot recount '{path}': {exc}") from exc
    finally:
        conn.close()
    changed = [{"type": t, "status": st, "was": kept, "now": actual}
               for t, st, kept, actual in drift]  # fmt: skip
    return {"path": path, "changed": changed}


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _max_rowid(conn: sqlite3.Connection, table: str) -> Optional[int]:
    for sql in (f"SELECT max(rowid) FROM {table}",
                f"SELECT rowid FROM {table} ORDER BY rowid DESC LIMIT 1"):  # fmt: skip
        try:
            row = conn.execute(sql).fetchone()
            return row[0] if row else None
        except sqlite3.DatabaseError:
            continue
    return None


def _rowids_from_indexes(conn: sqlite3.Connection, table: str, key: Optional[str]) -> dict:
    """rowid -> key (e.g. the job id) for every row some index of the table still lists. An
    index lives in other pages than the table, so it names rows a damaged table page hides."""
    found: dict[int, Any] = {}
    try:
        indexes = [r[1] for r in conn.execute(f"PRAGMA index_list({table})")]
    except sqlite3.DatabaseError:
        return found
    for index in indexes:
        try:
            cols = [r[2] for r in conn.execute(f"PRAGMA index_info({index})")]
            pick = key if key in cols else None
            sql = f"SELECT rowid{', ' + pick if pick else ''} FROM {table} INDEXED BY {index}"
            for row in conn.execute(sql):
                if pick or row[0] not in found:
                    found[row[0]] = row[1] if pick else found.get(row[0])
        except sqlite3.DatabaseError:
            continue  # a partial index cannot be scanned alone, or the index is damaged too
    return found


def _copy_table(
    src: sqlite3.Connection, dst: sqlite3.Connection, table: str, key: Optional[str]
) -> dict[str, Any]:
    """Copies readable rows by rowid ranges, then looks up one by one every row an index still
    lists but the range scans missed (a damaged page can end a scan early without an error)."""
    try:
        src_cols = _columns(src, table)
    except sqlite3.DatabaseError as exc:
        return {"copied": 0, "lost": None, "error": f"schema unreadable: {exc}"}
    if not src_cols:
        return {"copied": 0, "lost": 0, "missing": True}
    cols = [c for c in _columns(dst, table) if c in src_cols]
    col_list = ", ".join(cols)
    insert = f"INSERT OR IGNORE INTO {table} (rowid, {col_list}) VALUES (?{', ?' * len(cols)})"
    select = f"SELECT rowid, {col_list} FROM {table} WHERE rowid BETWEEN ? AND ?"
    listed = _rowids_from_indexes(src, table, key)
    top = max([_max_rowid(src, table) or 0, *listed.keys()], default=0)
    copied: set[int] = set()
    start = 1
    while start <= top:
        end = start + _CHUNK - 1
        try:
            rows = src.execute(select, (start, end)).fetchall()
        except sqlite3.DatabaseError:
            rows = []
            for rowid in range(start, end + 1):
                try:
                    row = src.execute(select, (rowid, rowid)).fetchone()
                except sqlite3.DatabaseError:
                    listed.setdefault(rowid, None)  # unreadable: certainly a row
                    continue
                if row is not None:
                    rows.append(row)
        dst.executemany(insert, rows)
        copied.update(r[0] for r in rows)
        start = end + 1
    # Rows an index knows that no scan returned: one more try each, else lost.
    lost = []
    for rowid in sorted(set(listed) - copied):
        try:
            row = src.execute(select, (rowid, rowid)).fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is not None:
            dst.execute(insert, row)
            copied.add(rowid)
        else:
            lost.append(rowid)
    out: dict[str, Any] = {"copied": len(copied), "lost": len(lost), "lost_rowids": lost[:1000]}
    if key:
        out[f"lost_{key}s"] = [listed[r] for r in lost if listed.get(r) is not None][:1000]
    return out


def _create_schema(engine_class, target: str) -> None:
    """Creates ``target`` with the current schema and closes it again."""
    import gc

    engine = engine_class(target, allow_unknown_types=True)
    engine.stop()
    del engine
    gc.collect()


def _code_schema_version(engine_class) -> int:
    """The schema version this jobforge creates (a fresh file in a temporary folder)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jobforge-schema-") as tmp:
        fresh = os.path.join(tmp, "schema.db")
        _create_schema(engine_class, fresh)
        conn = sqlite3.connect(fresh)
        try:
            return conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()


def _remove(target: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)


def _keep_mode_and_owner(target: str, st: os.stat_result) -> None:
    """Gives the fresh file (and its -wal/-shm) the damaged file's mode, owner and group."""
    for suffix in ("", "-wal", "-shm"):
        if not os.path.exists(target + suffix):
            continue
        os.chmod(target + suffix, stat.S_IMODE(st.st_mode))
        now = os.stat(target + suffix)
        if (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid):
            os.chown(target + suffix, st.st_uid, st.st_gid)


def repair(path: str, *, force: bool = False) -> dict[str, Any]:
    """Copies every readable row of ``path`` into a fresh file with the current schema, moves the
    damaged file to ``<path>.damaged-<time>`` and puts the fresh one in its place, with the same
    mode, owner and group. Returns what was copied and lost per table. Refuses while a worker has
    a fresh heartbeat (``force`` overrides), and a file whose schema is newer than this jobforge
    (its columns would be lost; ``force`` does not override). A row unreadable in a damaged page
    is lost: its rowid range is reported."""
    from .engine import Engine

    path = os.fspath(path)
    try:
        src = _connect_ro(path)
        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise RepairError(f"'{path}' is not a readable SQLite database: {exc}") from exc
    try:
        try:
            version = src.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError:
            version = 0  # unreadable header fields: repair what can be read
        code_version = _code_schema_version(Engine)
        if version > code_version:
            raise RepairError(
                f"'{path}' has schema version {version}, newer than this jobforge's "
                f"({code_version}): repairing it would drop what this version does not know; "
                "repair it with the jobforge that wrote it"
            )
        original = os.stat(path)
        if not force:
            try:
                fresh = src.execute(
                    "SELECT count(*) FROM workers WHERE state = 'running' AND heartbeat_at > ?",
                    (int(time.time() * 1000) - 60_000,),
                ).fetchone()[0]
            except sqlite3.DatabaseError:
                fresh = 0
            if fresh:
                raise RepairError(
                    f"{fresh} worker(s) heartbeated in the last minute; stop them first "
                    "(or pass force=True / --force)"
                )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = f"{path}.repairing-{stamp}"
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(target + suffix):
                os.remove(target + suffix)
        _create_schema(Engine, target)
        try:
            _keep_mode_and_owner(target, original)
        except OSError as exc:
            _remove(target)
            raise RepairError(
                f"cannot give the repaired copy of '{path}' its mode and owner ({exc}); run the "
                "repair as the file's owner or as root"
            ) from exc
        dst = sqlite3.connect(target)
        report: dict[str, Any] = {"path": path, "tables": {}}
        try:
            names = {r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            with dst:
                for table, key in _COPIED_TABLES.items():
                    if table in names:
                        report["tables"][table] = _copy_table(src, dst, table, key)
                for statement in _RECOUNT_STATEMENTS:
                    dst.execute(statement)  # the copied rows, counted
            dst.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            dst.close()
    finally:
        src.close()
    _keep_mode_and_owner(target, original)  # a -wal or -shm made while copying
    damaged = f"{path}.damaged-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            shutil.move(path + suffix, damaged + suffix)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            shutil.move(target + suffix, path + suffix)
    report["damaged_copy"] = damaged
    report["copied"] = sum(t.get("copied", 0) for t in report["tables"].values())
    report["lost"] = sum(t.get("lost") or 0 for t in report["tables"].values())
    report["check"] = check(path)
    return report

"""Read-only queries the dashboard needs and the engine's query API does not offer yet: keyset
pages of the job history (stable and fast at any depth, unlike OFFSET), a bounded text search,
the distinct job types and the running jobs per worker.

They run on the dashboard's own read-only SQLite connections (WAL: readers never block the
engine's writer) against the schema the SQLite store migrates to. Everything that changes state
goes through the engine; this module never writes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any, Optional

from ..job import STATUSES

# Columns of a history row: what a table line shows, not the payload or the result.
_ROW_COLUMNS = (
    "rowid, id, type, status, priority, progress, progress_current, progress_total, "
    "progress_message, error, attempts, max_attempts, parent_job_id, created_at, started_at, "
    "completed_at, run_at, cancel_requested"
)
_ROW_KEYS = (
    "rowid id type status priority progress progress_current progress_total message error "
    "attempts max_attempts parent_id created_at started_at completed_at run_at "
    "cancel_requested"
).split()

# A text search reads at most this many rows (newest first, after the filters) per request, so
# a search that matches nothing costs a bounded time even at millions of jobs; the page then
# says how far it looked and offers to look further.
SEARCH_WINDOW = 20_000
MAX_INT = (1 << 63) - 1  # SQLite's largest integer
MAX_OFFSET = (1 << 31) - 1  # the engine's jobs(offset=) is a C int


class QueryError(ValueError):
    """A malformed query parameter; the message names the parameter and the value."""


@dataclass(frozen=True)
class Cursor:
    """Position in the history order (created_at DESC, rowid DESC): the last row of a page."""

    created_at: int
    rowid: int

    def encode(self) -> str:
        return f"{self.created_at}.{self.rowid}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            created, rowid = text.split(".")
            cursor = cls(int(created), int(rowid))
            if not (0 <= cursor.created_at <= MAX_INT and 0 <= cursor.rowid <= MAX_INT):
                raise ValueError
            return cursor
        except ValueError:
            raise QueryError(
                f"cursor must be the next_cursor of a previous page, got {text[:40]!r}"
            ) from None


@dataclass
class Page:
    jobs: list[dict]
    next_cursor: Optional[str]  # None: no older jobs match
    searched: Optional[int] = None  # rows a text search looked at, when it hit its window

    def to_dict(self) -> dict:
        return {"jobs": self.jobs, "next_cursor": self.next_cursor, "searched": self.searched}


def _row(values: tuple) -> dict:
    out = dict(zip(_ROW_KEYS, values))
    for key in ("started_at", "completed_at", "run_at"):
        out[key] = out[key] or None
    out["progress_total"] = out["progress_total"] or None
    out["cancel_requested"] = bool(out["cancel_requested"])
    out["message"] = out["message"] or ""
    return out


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class StoreQueries:
    """Read-only queries on one SQLite file; one connection per calling thread."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            # Every character SQLite's URI parser would read as syntax is escaped (%, ?, #).
            uri = "file:" + urllib.parse.quote(self.path, safe="/") + "?mode=ro"
            con = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
            con.execute("PRAGMA query_only = ON")
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()

    # -- history ---------------------------------------------------------------------------
    def page(
        self,
        *,
        status: Optional[str] = None,
        type: Optional[str] = None,
        search: Optional[str] = None,
        cursor: Optional[str] = None,
        limit: int = 50,
        window: int = SEARCH_WINDOW,
    ) -> Page:
        """One page of jobs, newest first, after ``cursor`` (the ``next_cursor`` of the page
        before). ``status`` and ``type`` are served by the store's (status, created_at) and
        (type, created_at) indexes; ``search`` matches a prefix of the id or a substring of the
        type, message, error or payload and reads at most ``window`` rows per call."""
        if status is not None and status not in STATUSES:
            raise QueryError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        if not isinstance(limit, int) or not 1 <= limit <= 500:
            raise QueryError(f"limit must be between 1 and 500, got {limit!r}")
        where: list[str] = []
        params: list[Any] = []
        if status:
            where.append("status = ?")
            params.append(status)
        if type:
            where.append("type = ?")
            params.append(type)
        if cursor:
            c = Cursor.decode(cursor)
            where.append("(created_at, rowid) < (?, ?)")
            params += [c.created_at, c.rowid]
        base = " FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
        order = " ORDER BY created_at DESC, rowid DESC"
        con = self._con()
        search = (search or "").strip()
        if not search:
            rows = con.execute(
                f"SELECT {_ROW_COLUMNS}{base}{order} LIMIT ?", (*params, limit + 1)
            ).fetchall()
            return self._finish(rows, limit)
        pattern = "%" + _like_escape(search) + "%"
        match = " OR ".join(
            f"{column} LIKE ?1 ESCAPE '\\'"
            for column in ("id", "type", "progress_message", "error", "payload")
        )
        # Numbered parameters: ?1 the pattern, then the filters, the window and the limit.
        n = len(params)
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM (SELECT rowid AS rowid, * {self._number(base, start=2)}"
            f"{order} LIMIT ?{n + 2}) WHERE ({match}){order} LIMIT ?{n + 3}"
        )
        rows = con.execute(sql, (pattern, *params, window, limit + 1)).fetchall()
        if len(rows) > limit:
            return self._finish(rows, limit)
        # Fewer matches than a page: either the window reached the oldest job (done) or it
        # stopped inside the history; then continue from the window's last row.
        last = con.execute(
            f"SELECT created_at, rowid{base}{order} LIMIT 1 OFFSET ?", (*params, window - 1)
        ).fetchone()
        page = self._finish(rows, limit)
        if last is not None:
            page.next_cursor = Cursor(last[0], last[1]).encode()
            page.searched = window
        return page

    @staticmethod
    def _number(base: str, start: int) -> str:
        out, k = [], start
        for ch in base:
            if ch == "?":
                out.append(f"?{k}")
                k += 1
            else:
                out.append(ch)
        return "".join(out)

    @staticmethod
    def _finish(rows: list, limit: int) -> Page:
        jobs = [_row(r) for r in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = jobs[-1]
            next_cursor = Cursor(last["created_at"], last["rowid"]).encode()
        return Page(jobs, next_cursor)

    def plan(self, **kwargs: Any) -> list[str]:
        """The query plan of ``page(**kwargs)`` without a search (for tests and benchmarks)."""
        status, type_ = kwargs.get("status"), kwargs.get("type")
        where, params = [], []
        if status:
            where.append("status = ?")
            params.append(status)
        if type_:
            where.append("type = ?")
            params.append(type_)
        where.append("(created_at, rowid) < (?, ?)")
        params += [1 << 60, 1 << 60]
        sql = (
            f"EXPLAIN QUERY PLAN SELECT {_ROW_COLUMNS} FROM jobs WHERE "
            + " AND ".join(where)
            + " ORDER BY created_at DESC, rowid DESC LIMIT 51"
        )
        return [r[3] for r in self._con().execute(sql, params).fetchall()]

    # -- other reads -----------------------------------------------------------------------
    def job_types(self, limit: int = 200) -> list[str]:
        """Distinct job types in the store, by a skip scan of the (type, created_at) index:
        one index seek per type, not a pass over every job."""
        rows = (
            self._con()
            .execute(
                """
            WITH RECURSIVE t(type, n) AS (
              SELECT (SELECT min(type) FROM jobs), 1
              UNION ALL
              SELECT (SELECT min(type) FROM jobs WHERE type > t.type), n + 1
              FROM t WHERE t.type IS NOT NULL AND n < ?
            )
            SELECT type FROM t WHERE type IS NOT NULL
            """,
                (limit,),
            )
            .fetchall()
        )
        return [r[0] for r in rows]

    def running_owner_counts(self) -> dict[str, int]:
        """Running jobs per lease owner (the idx_jobs_running_owner partial index)."""
        rows = (
            self._con()
            .execute(
                "SELECT lease_owner, count(*) FROM jobs WHERE status = 'running' GROUP BY lease_owner"
            )
            .fetchall()
        )
        return {owner or "": n for owner, n in rows}

    def children_counts(self, parent_id: str) -> dict[str, int]:
        """A parent's children per status (the idx_jobs_parent_id partial index): exact for a
        batch of any size."""
        rows = (
            self._con()
            .execute(
                "SELECT status, count(*) FROM jobs WHERE parent_job_id = ? GROUP BY status",
                (parent_id,),
            )
            .fetchall()
        )
        return {status: n for status, n in rows}


class EngineQueries:
    """The same reads through the engine's query API, for a store that is not a SQLite file
    (say PostgreSQL): pages by offset (``o:N`` cursors), no text search, types from the
    per-type statistics. Used only when ``StoreQueries`` cannot open the store."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.path = engine.path

    def page(
        self,
        *,
        status: Optional[str] = None,
        type: Optional[str] = None,
        search: Optional[str] = None,
        cursor: Optional[str] = None,
        limit: int = 50,
        window: int = SEARCH_WINDOW,
    ) -> Page:
        if status is not None and status not in STATUSES:
            raise QueryError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        if not isinstance(limit, int) or not 1 <= limit <= 500:
            raise QueryError(f"limit must be between 1 and 500, got {limit!r}")
        if search:
            raise QueryError("text search needs the SQLite store; filter by status or type")
        offset = 0
        if cursor:
            try:
                kind, value = cursor.split(":")
                offset = int(value)
                if kind != "o" or not 0 <= offset <= MAX_OFFSET - limit - 1:
                    raise ValueError
            except ValueError:
                raise QueryError(
                    f"cursor must be the next_cursor of a previous page, got {cursor[:40]!r}"
                ) from None
        jobs = self.engine.jobs(status=status, type=type, limit=limit + 1, offset=offset)
        rows = [
            {
                "rowid": None, "id": j.id, "type": j.type, "status": j.status,
                "priority": j.priority, "progress": j.progress,
                "progress_current": j.progress_current, "progress_total": j.progress_total,
                "message": j.message, "error": j.error, "attempts": j.attempts,
                "max_attempts": j.max_attempts, "parent_id": j.parent_id,
                "created_at": j.created_at, "started_at": j.started_at,
                "completed_at": j.completed_at, "run_at": j.run_at,
                "cancel_requested": j.cancel_requested,
            }
            for j in jobs[:limit]
        ]  # fmt: skip
        next_cursor = f"o:{offset + limit}" if len(jobs) > limit else None
        return Page(rows, next_cursor)

    def job_types(self, limit: int = 200) -> list[str]:
        return sorted(self.engine.stats().get("types", {}))[:limit]

    def running_owner_counts(self) -> dict[str, int]:
        return {}

    def children_counts(self, parent_id: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        offset = 0
        while True:
            children = self.engine.jobs(parent=parent_id, limit=1000, offset=offset)
            for child in children:
                counts[child.status] = counts.get(child.status, 0) + 1
            if len(children) < 1000:
                return counts
            offset += 1000

    def close(self) -> None:
        pass


def open_queries(engine) -> StoreQueries | EngineQueries:
    """``StoreQueries`` on the engine's SQLite file, else ``EngineQueries``."""
    path = engine.path
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            if fh.read(16) == b"SQLite format 3\x00":
                return StoreQueries(path)
    return EngineQueries(engine)

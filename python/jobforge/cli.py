"""The ``jobforge`` command line (also ``python -m jobforge``).

    jobforge demo [--db PATH] [--fast] [--quiet]     a short live pipeline on a temporary database
    jobforge stats [--json]                          job counts per status
    jobforge list [--status S] [--type T] [--parent ID] [--limit N] [--json]
    jobforge show ID [--json]                        one job in full, with its last log lines
    jobforge logs ID [--level L] [--limit N] [--tail] [--follow] [--json]
                                                     a job's log lines; --follow until it ends
    jobforge health [--integrity] [--json]           ok / degraded / failing, with reasons
    jobforge db check [--quick] | migrate | recount | repair [--force] | cleanup --older-than DURATION
                                                     upkeep of the SQLite file (docs below)
    jobforge schedule list [--json]                  cron schedules with next and last fire
    jobforge schedule add NAME CRON TYPE [--payload JSON] [--priority P] [--timezone TZ]
                          [--misfire run_once|skip] [--queue Q] [--json]   create or replace
    jobforge schedule remove NAME [--json]
    jobforge run TYPE [--payload JSON] [--app MODULE:ATTR] [--json] [--no-progress]
                                                     run a processor here, now, without the queue
    jobforge enqueue TYPE [--payload JSON] [--priority P] [--delay S] [--max-attempts N]
                          [--timeout S] [--json]     prints the new job's id
    jobforge cancel ID [--json]
    jobforge retry ID [--json]
    jobforge worker --app MODULE:ATTR [--db PATH] [--concurrency N] [--heartbeat S] [--lease S]
                    [--allow-exec]
                                                     run jobs in this process until SIGTERM
    jobforge dashboard [--host H] [--port N] [--token T] [--poll S] [--allowed-host NAME]
                       [--max-sse-clients N] [--app MODULE:ATTR]
                                                     serve the web dashboard until Ctrl-C

Every command but ``demo`` works on the database given by ``--db PATH`` or the ``JOBFORGE_DB``
environment variable (``demo`` only uses ``--db``, never the environment, so it cannot write its
jobs into a real queue by accident). These commands open the file with
``jobforge.Engine(path, allow_unknown_types=True)`` and never start it: they run no jobs, so
``enqueue`` stores a job for the workers of another process. Only ``enqueue`` creates a missing
database; the other commands refuse to.

``dashboard`` serves the web dashboard (docs/dashboard.md) on ``--host`` (127.0.0.1) and
``--port`` (8765) until SIGINT or SIGTERM (exit 0); actions need the token it prints (or
``--token`` / ``JOBFORGE_DASHBOARD_TOKEN``). It opens the file as an observer that claims no jobs,
unless ``--app MODULE:ATTR`` asks it to run that app's processors as well.

``run`` calls ``engine.run_now`` in this process (no job is stored): on the native processors,
or with ``--app MODULE:ATTR`` on that app engine's processors; it uses no database of its own.
A rich progress bar follows the processor's progress when stdout is a terminal.

``schedule add`` creates the database if needed, like ``enqueue``; the schedule's jobs are made
by started engines on the file (``worker`` processes, applications), not by the command.

``worker`` imports MODULE (the current directory is on ``sys.path``), takes ATTR (a
``jobforge.Engine`` or a function returning one) and runs its processors in an engine of its own
on ``--db`` (default: the app engine's file, not ``JOBFORGE_DB``) with ``--concurrency`` threads.
SIGTERM or SIGINT stops it after the running jobs (exit 0); a second one exits at once (130);
SIGQUIT stops it at once, putting running jobs back in the queue (exit 0). See docs/workers.md.

Errors are one line on stderr (``--debug`` adds the traceback). Exit codes:

    0   success
    1   operational failure: the store failed (not a database, locked, disk full), ``run``'s
        processor raised or failed (its error is the line printed), a job could
        not be cancelled or retried in its current status, a demo job did not end as expected,
        the dashboard's port could not be bound, ``db check`` found problems, ``db repair``
        refused (workers use the file) or failed, or an unexpected error
    2   usage error or bad input: unknown option, malformed ``--payload`` JSON, invalid option
        value (priority out of 1..10, negative delay, ...), no database given, an ``--app``
        that does not name an importable engine, a bad cron expression, time zone or duration,
        ``run`` of a type that has no processor here or with a payload its native processor
        refuses
    3   not found: no job with that id, no schedule with that name, or the database file does
        not exist
    4   ``health`` only: the engine is degraded (reasons printed)
    5   ``health`` only: the engine is failing (reasons printed)
    130 interrupted (Ctrl-C; for ``worker``, a second stop signal)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DEGRADED = 4  # health: degraded
EXIT_FAILING = 5  # health: failing
EXIT_INTERRUPTED = 130

ENV_DB = "JOBFORGE_DB"
ENV_DASHBOARD_TOKEN = "JOBFORGE_DASHBOARD_TOKEN"
PROG = "jobforge"


class CliError(Exception):
    """An error reported as one line on stderr with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing -----------------------------------------------------------------------------

INT_MAX = (1 << 31) - 1  # counts, limits and offsets are C ints in the engine
MAX_SECONDS = 1e12  # ~31,700 years: any duration past this is a typo (and overflows ms)


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _int32(text: str) -> int:
    """A whole number the engine can take (its own checks then name the field)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_shown(text)}") from None
    if not -INT_MAX <= value <= INT_MAX:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of at most {INT_MAX}, got {_shown(text)}"
        )
    return value


def _priority(text: str) -> Any:
    from .engine import PRIORITIES

    if text in PRIORITIES:
        return text
    names = ", ".join(PRIORITIES)
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 1..10 or one of {names}, got {_shown(text)}"
        ) from None
    if not -INT_MAX <= value <= INT_MAX:  # 0 and 11 reach the engine, which names the range
        raise argparse.ArgumentTypeError(f"expected 1..10 or one of {names}, got {_shown(text)}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds, got {_shown(text)}"
        ) from None
    if not math.isfinite(value) or abs(value) > MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds of at most {MAX_SECONDS:g}, got {_shown(text)}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_shown(text)}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {_shown(text)}")
    if value > INT_MAX:
        raise argparse.ArgumentTypeError(f"expected at most {INT_MAX}, got {_shown(text)}")
    return value


_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def _duration(text: str) -> float:
    """Seconds from "7d", "12h", "30m", "45s", "1h30m" or a bare number of seconds."""
    import re

    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise argparse.ArgumentTypeError(
                f"expected a duration such as 7d, 12h, 30m, 45s or 1h30m, got {text!r}"
            ) from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not 0 <= seconds <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"expected a duration of 0 to {MAX_SECONDS:g} seconds, got {_shown(text)}"
        )
    return seconds


def build_parser() -> argparse.ArgumentParser:
    from .job import STATUSES

    # Options accepted both before and after the command; SUPPRESS keeps a subcommand from
    # overwriting a value given before it with its default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )  # fmt: skip
    with_db = argparse.ArgumentParser(add_help=False, parents=[common])
    with_db.add_argument(
        "--db", metavar="PATH", default=argparse.SUPPRESS,
        help=f"SQLite database file or postgresql:// URL (default: ${ENV_DB})",
    )  # fmt: skip
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="jobforge: background jobs run by a C++ engine on SQLite.",
        epilog=(
            f"The database comes from --db PATH or ${ENV_DB}. Exit codes: 0 ok, 1 operational "
            "failure, 2 usage or bad input, 3 job, schedule or database not found, 4/5 health "
            "degraded/failing, 130 interrupted."
        ),
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        help=f"SQLite database file or postgresql:// URL (default: ${ENV_DB})",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", parents=[common], help="run a short live demo pipeline",
        description=(
            "Runs a ~6 s media-library pipeline (scans, analyses, exports, cleanup) with live "
            "progress, a retried job, a permanently failing job and a cancelled one, then prints "
            f"a summary. Uses a temporary database unless --db is given (${ENV_DB} is ignored)."
        ),
    )  # fmt: skip
    demo.add_argument(
        "--db", metavar="PATH", default=argparse.SUPPRESS,
        help="keep the demo's jobs in this database file (created if missing)",
    )  # fmt: skip
    demo.add_argument("--fast", action="store_true", help="shorter steps (~2 s in all)")
    demo.add_argument(
        "--quiet", action="store_true", help="no progress bars or event log, just the summary"
    )
    demo.add_argument("--workers", type=_int32, default=4, metavar="N", help="worker threads (4)")

    stats = commands.add_parser(
        "stats", parents=[with_db, as_json], help="count jobs per status",
        description="Counts the jobs of the database per status.",
    )  # fmt: skip
    del stats

    lst = commands.add_parser(
        "list", parents=[with_db, as_json], help="list jobs, newest first",
        description="Lists jobs, newest first, optionally filtered.",
    )  # fmt: skip
    lst.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    lst.add_argument("--type", metavar="TYPE", help="only jobs of this type")
    lst.add_argument("--parent", metavar="ID", help="only children of this job")
    lst.add_argument("--limit", type=_count, default=50, metavar="N", help="at most N jobs (50)")
    lst.add_argument("--offset", type=_count, default=0, metavar="N", help="skip N jobs (0)")

    show = commands.add_parser(
        "show", parents=[with_db, as_json], help="show one job in full",
        description="Shows one job: options, progress, payload, result, error and traceback.",
    )  # fmt: skip
    show.add_argument("id", metavar="ID", help="job id")

    logs = commands.add_parser(
        "logs", parents=[with_db, as_json], help="print a job's log lines",
        description=(
            "Prints the lines a job logged with ctx.log, oldest first: time, level, stage, "
            "message and fields. --follow keeps printing new lines until the job ends."
        ),
    )  # fmt: skip
    logs.add_argument("id", metavar="ID", help="job id")
    logs.add_argument(
        "--level", choices=("debug", "info", "warning", "error"),
        help="only lines at this level or above",
    )  # fmt: skip
    logs.add_argument("--limit", type=_count, default=1000, metavar="N", help="at most N (1000)")
    logs.add_argument("--tail", action="store_true", help="the last N lines instead of the first")
    logs.add_argument(
        "--follow", "-f", action="store_true",
        help="keep printing new lines until the job is final (JSON: one object per line)",
    )  # fmt: skip

    health = commands.add_parser(
        "health", parents=[with_db, as_json], help="check the database, workers and queue",
        description=(
            "Prints engine.health(): the database (reachable; --integrity adds SQLite's quick "
            "check), the workers and their heartbeats, the queue and error rates, and a "
            "verdict. Exit code 0 ok, 4 degraded, 5 failing."
        ),
    )  # fmt: skip
    health.add_argument(
        "--integrity", action="store_true", help="also run SQLite's quick check (slow on big files)"
    )
    health.add_argument(
        "--max-wait", type=_seconds, default=300.0, metavar="S",
        help="a due job waiting longer than S seconds makes the engine degraded (300)",
    )  # fmt: skip

    db = commands.add_parser(
        "db", parents=[common], help="check, migrate or repair the database file",
        description="Upkeep of the SQLite file; see the subcommands.",
    )  # fmt: skip
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION")
    db_check = db_commands.add_parser(
        "check", parents=[with_db, as_json], help="SQLite's integrity check",
        description=(
            "Runs SQLite's integrity check (--quick: the faster quick_check) without opening an "
            "engine. Exit code 0 when the file is sound, 1 when problems were found (listed)."
        ),
    )  # fmt: skip
    db_check.add_argument("--quick", action="store_true", help="quick_check instead")
    db_commands.add_parser(
        "migrate", parents=[with_db, as_json], help="bring the schema up to date",
        description=(
            "Applies the engine's pending schema migrations (every engine does this when it "
            "opens a file; this command does only that) and prints the schema version."
        ),
    )  # fmt: skip
    db_commands.add_parser(
        "recount", parents=[with_db, as_json], help="recompute the job counts stats() reads",
        description=(
            "Recomputes the counts per (type, status) that stats() and the dashboard read, from "
            "the rows, in one transaction (safe while workers run). jobforge keeps them in the "
            "same transaction as every change it makes; this is needed only after rows were "
            "written by other means (by hand, by a tool). 'db check' reports counts that drifted."
        ),
    )  # fmt: skip
    db_repair = db_commands.add_parser(
        "repair", parents=[with_db, as_json], help="copy every readable row into a fresh file",
        description=(
            "Copies every readable row into a fresh file with the current schema, keeps the "
            "damaged file beside it (<file>.damaged-<time>) and reports what could not be read. "
            "Refuses while a worker heartbeated in the last minute (--force overrides)."
        ),
    )  # fmt: skip
    db_repair.add_argument(
        "--force", action="store_true", help="repair even if workers seem to use the file"
    )
    db_cleanup = db_commands.add_parser(
        "cleanup", parents=[with_db, as_json], help="delete finished jobs older than a duration",
        description=(
            "Deletes finished jobs (completed, failed, cancelled, timeout) that ended more than "
            "DURATION ago, with their log lines, in small transactions (engine.cleanup); jobs of "
            "a batch still running stay. Prints how many were deleted."
        ),
    )  # fmt: skip
    db_cleanup.add_argument(
        "--older-than", required=True, type=_duration, metavar="DURATION",
        help="e.g. 7d, 12h, 30m, 45s, 1h30m (a bare number is seconds)",
    )  # fmt: skip

    schedule = commands.add_parser(
        "schedule", parents=[common], help="list, add or remove cron schedules",
        description=(
            "Cron schedules (docs/workflows.md): every started engine on the file enqueues "
            "one job of the schedule's type at each fire time."
        ),
    )  # fmt: skip
    schedule_commands = schedule.add_subparsers(dest="schedule_command", metavar="ACTION")
    schedule_commands.add_parser(
        "list", parents=[with_db, as_json], help="the schedules with next and last fire",
        description="Lists the schedules by name: cron, type, next and last fire, time zone, "
        "misfire policy, priority, queue and the last job made.",
    )  # fmt: skip
    schedule_add = schedule_commands.add_parser(
        "add", parents=[with_db, as_json], help="create or replace a schedule",
        description=(
            "Creates the schedule NAME (or replaces it) to enqueue a TYPE job at every time "
            "CRON matches. CRON: five fields (minute hour day-of-month month day-of-week, e.g. "
            "'0 2 * * *'), @hourly, @daily, @weekly, @monthly, @yearly or '@every 30s'. "
            "Creates the database if needed."
        ),
    )  # fmt: skip
    schedule_add.add_argument("name", metavar="NAME", help="schedule name")
    schedule_add.add_argument("cron", metavar="CRON", help="cron expression (quote it)")
    schedule_add.add_argument("type", metavar="TYPE", help="type of the jobs it enqueues")
    schedule_add.add_argument(
        "--payload", metavar="JSON", default="null",
        help="payload of each job as JSON; @FILE reads it from a file, - from stdin (null)",
    )  # fmt: skip
    schedule_add.add_argument(
        "--priority", type=_priority, metavar="P",
        help="1 (highest) .. 10 (lowest) or urgent/high/normal/low/maintenance (default 5)",
    )  # fmt: skip
    schedule_add.add_argument(
        "--timezone", default="UTC", metavar="TZ",
        help="UTC (default) or a fixed offset such as +02:00 or UTC-8",
    )  # fmt: skip
    schedule_add.add_argument(
        "--misfire", default="run_once", choices=("run_once", "skip"),
        help="a fire missed while nothing ran: one job at start-up (run_once) or none (skip)",
    )  # fmt: skip
    schedule_add.add_argument("--queue", default="default", metavar="Q", help="queue (default)")
    schedule_remove = schedule_commands.add_parser(
        "remove", parents=[with_db, as_json], help="delete a schedule",
        description="Deletes the schedule NAME (its jobs already enqueued stay).",
    )  # fmt: skip
    schedule_remove.add_argument("name", metavar="NAME", help="schedule name")

    run = commands.add_parser(
        "run", parents=[common, as_json], help="run a processor now, here, without the queue",
        description=(
            "Runs the processor of TYPE in this process with engine.run_now: no job is stored, "
            "no retries, no timeout. Without --app only the native processors are known (scan, "
            "checksum, exec, noop, sleep). A progress bar follows the processor's progress when "
            "stdout is a terminal; the result is printed as JSON. A processor that raises or "
            "fails: its error as one line, exit code 1."
        ),
    )  # fmt: skip
    run.add_argument("type", metavar="TYPE", help="job type")
    run.add_argument(
        "--payload", metavar="JSON", default="null",
        help="payload as JSON; @FILE reads it from a file, - from stdin (default: null)",
    )  # fmt: skip
    run.add_argument(
        "--app", metavar="MODULE:ATTR",
        help="the engine whose processors to use, e.g. mymodule:engine",
    )  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    enqueue = commands.add_parser(
        "enqueue", parents=[with_db, as_json], help="store a new job for the workers",
        description=(
            "Stores a new job (creating the database if needed) and prints its id. The job runs "
            "when a worker process with a processor for TYPE serves this database; options not "
            "given are those its workers publish (docs/workers.md)."
        ),
    )  # fmt: skip
    enqueue.add_argument("type", metavar="TYPE", help="job type")
    enqueue.add_argument(
        "--payload", metavar="JSON", default="null",
        help="job payload as JSON; @FILE reads it from a file, - from stdin (default: null)",
    )  # fmt: skip
    enqueue.add_argument(
        "--priority", type=_priority, metavar="P",
        help="1 (highest) .. 10 (lowest) or urgent/high/normal/low/maintenance (default: what "
        "the workers serving TYPE publish, else 5)",
    )  # fmt: skip
    enqueue.add_argument("--delay", type=_seconds, default=0, metavar="S", help="start after S s")
    enqueue.add_argument(
        "--max-attempts", type=_int32, metavar="N",
        help="attempts before it fails (default: what the workers serving TYPE publish, else 3)",
    )  # fmt: skip
    enqueue.add_argument(
        "--timeout", type=_seconds, metavar="S",
        help="seconds an attempt may run (default: what the workers serving TYPE publish, else 300)",
    )  # fmt: skip
    enqueue.add_argument(
        "--retry-delay", type=_seconds, metavar="S", help="seconds between attempts"
    )
    enqueue.add_argument("--parent", metavar="ID", help="id of the parent job")

    cancel = commands.add_parser(
        "cancel", parents=[with_db, as_json], help="cancel a queued or running job",
        description=(
            "Cancels a job: a queued one at once; a running one is asked to stop and ends "
            "cancelled when its processor notices."
        ),
    )  # fmt: skip
    cancel.add_argument("id", metavar="ID", help="job id")

    retry = commands.add_parser(
        "retry", parents=[with_db, as_json], help="requeue a failed, cancelled or timed-out job",
        description="Puts a failed, cancelled or timed-out job back in the queue, attempts reset.",
    )  # fmt: skip
    retry.add_argument("id", metavar="ID", help="job id")

    worker = commands.add_parser(
        "worker", parents=[common], help="run the processors of an app in this process",
        description=(
            "Imports MODULE (the current directory is on sys.path) and runs the processors of "
            "its engine ATTR (a jobforge.Engine or a function returning one) in an engine of "
            "its own on the same file, until SIGTERM or SIGINT (stop after the running jobs; "
            "a second signal exits at once) or SIGQUIT (stop now, running jobs go back to the "
            "queue). Start several to use several cores; they share the queue safely."
        ),
    )  # fmt: skip
    worker.add_argument(
        "--app", required=True, metavar="MODULE:ATTR",
        help="the engine whose processors to run, e.g. mymodule:engine",
    )  # fmt: skip
    worker.add_argument(
        "--db", metavar="PATH", default=argparse.SUPPRESS,
        help="SQLite database file or postgresql:// URL (default: the app engine's)",
    )  # fmt: skip
    worker.add_argument(
        "--concurrency", type=_int32, metavar="N",
        help="worker threads in this process (default: the app engine's workers)",
    )  # fmt: skip
    worker.add_argument(
        "--heartbeat", type=_seconds, metavar="S",
        help="seconds between heartbeats (default: the app engine's heartbeat_interval)",
    )  # fmt: skip
    worker.add_argument(
        "--lease", type=_seconds, metavar="S",
        help="seconds a claimed job's lease lasts (default: the app engine's lease)",
    )  # fmt: skip
    worker.add_argument(
        "--allow-exec", action="store_true",
        help="run 'exec' jobs (any command, as this user) even if the app engine does not "
        "allow_exec; see docs/security.md",
    )  # fmt: skip

    dashboard = commands.add_parser(
        "dashboard", parents=[with_db], help="serve the web dashboard",
        description=(
            "Serves a web page of the database's jobs: live progress, history, workers, and "
            "actions (enqueue, cancel, retry, cancel all) that need the token printed at "
            "start-up. Opens the file as an observer: it runs no jobs unless --app is given. "
            "Needs the dashboard extra (pip install 'jobforge[dashboard]'). Ctrl-C stops it."
        ),
    )  # fmt: skip
    dashboard.add_argument(
        "--host", default="127.0.0.1", metavar="HOST",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )  # fmt: skip
    dashboard.add_argument(
        "--port", type=_count, default=8765, metavar="N", help="port (default 8765; 0: any free)"
    )
    dashboard.add_argument(
        "--token", metavar="T", default=os.environ.get(ENV_DASHBOARD_TOKEN),
        help=f"token the actions need, at least 16 characters (default: ${ENV_DASHBOARD_TOKEN}, "
        "else a random one)",
    )  # fmt: skip
    dashboard.add_argument(
        "--poll", type=_seconds, default=0.5, metavar="S",
        help="seconds between reads of the store for other processes' jobs (0.5)",
    )  # fmt: skip
    dashboard.add_argument(
        "--app", metavar="MODULE:ATTR",
        help="also run the processors of this app's engine in this process (like worker)",
    )  # fmt: skip
    dashboard.add_argument(
        "--concurrency",
        type=_int32,
        metavar="N",
        help="worker threads with --app (default: the app's)",
    )
    dashboard.add_argument(
        "--allowed-host", action="append", dest="allowed_hosts", metavar="HOST",
        help="a host name (or address) clients use in the URL; repeatable; needed with --host "
        "0.0.0.0 or ::, '*' accepts any (default: the --host address, or the loopback names)",
    )  # fmt: skip
    dashboard.add_argument(
        "--max-sse-clients", type=_count, default=100, metavar="N",
        help="live feeds (browser tabs) open at once; past it they get 503 (100)",
    )  # fmt: skip
    return parser


def _version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except Exception:  # noqa: BLE001 - --version must never fail
        return "unknown"


# -- helpers ----------------------------------------------------------------------------------------


def _db_path(args: argparse.Namespace) -> str:
    path = args.db or os.environ.get(ENV_DB)
    if not path:
        raise CliError(f"no database given: pass --db PATH or set {ENV_DB}", EXIT_USAGE)
    return path


def _open(args: argparse.Namespace, *, create: bool = False):
    """Opens the database without starting the engine; refuses a missing file unless create."""
    import jobforge

    path = _db_path(args)
    from .engine import _is_postgres_url

    if not create and not _is_postgres_url(path) and not os.path.exists(path):
        raise CliError(f"database '{path}' does not exist", EXIT_NOT_FOUND)
    # Never started, so it runs nothing: allow_exec only lets enqueue check exec payloads.
    return jobforge.Engine(path, allow_unknown_types=True, allow_exec=True)


def _get(engine, job_id: str):
    job = engine.get(job_id)
    if job is None:
        raise CliError(f"no job with id '{job_id}' in '{engine.path}'", EXIT_NOT_FOUND)
    return job


def _payload_limit() -> int:
    from . import _core

    return int(_core.MAX_PAYLOAD_BYTES)


def _read_payload_file(name: str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is refused before
    it is read (a device such as /dev/zero never ends, a FIFO may never open)."""
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise CliError(f"cannot read --payload file '{name}': {exc.strerror}", EXIT_USAGE) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise CliError(
            f"--payload file '{name}' is not a regular file (a device, FIFO, socket or "
            "directory); use - to read the payload from stdin",
            EXIT_USAGE,
        )
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1) if info.st_size <= limit else b""
        if info.st_size > limit or len(data) > limit:
            size = max(info.st_size, len(data))
            raise CliError(
                f"--payload file '{name}' is {size} bytes, more than the payload limit of "
                f"{limit} bytes",
                EXIT_USAGE,
            )
    return data


def _parse_payload(text: str) -> Any:
    source = "--payload"
    limit = _payload_limit()
    if text == "-":
        source = "--payload from stdin"
        stream = getattr(sys.stdin, "buffer", None)
        raw = stream.read(limit + 1) if stream is not None else sys.stdin.read(limit + 1)
        if len(raw) > limit:
            raise CliError(f"{source} is more than the payload limit of {limit} bytes", EXIT_USAGE)
        data: Any = raw
    elif text.startswith("@"):
        name = text[1:]
        source = f"--payload file '{name}'"
        data = _read_payload_file(name, limit)
    else:
        data = text
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CliError(f"{source} is not UTF-8 text (byte {exc.start})", EXIT_USAGE) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
            EXIT_USAGE,
        ) from None


def job_json(job) -> dict:
    """Everything about a job, JSON-ready (timestamps in Unix ms, durations in seconds)."""
    data = job.to_dict()
    data.update(
        is_final=job.is_final,
        cancel_requested=job.cancel_requested,
        retry_delay=job.retry_delay,
        timeout_at=job.timeout_at,
        duration=job.duration,
    )
    return data


def schedule_json(schedule) -> dict:
    """A cron schedule (``engine.schedules()``), JSON-ready, times in Unix ms; also the
    dashboard's ``GET /api/schedules``."""
    last = schedule.last_fire_at
    return {
        "name": schedule.name,
        "cron": schedule.cron,
        "type": schedule.type,
        "payload": schedule.payload,
        "priority": schedule.priority,
        "queue": schedule.queue,
        "timezone": schedule.timezone,
        "misfire": schedule.misfire,
        "next_fire_at": round(schedule.next_fire_at * 1000),
        "last_fire_at": None if last is None else round(last * 1000),
        "last_job_id": schedule.last_job_id,
    }


# Characters that a terminal would act on instead of showing: C0 controls (ESC starts a
# sequence that can clear the screen, move the cursor or set the title; CR rewrites the line;
# BEL rings), DEL, C1 controls (U+009B is a one-character CSI), and the line and bidirectional
# override marks that reorder or split what is shown. Job text comes from whoever enqueued the
# job or from a processor's error; the command line shows these escaped (\x1b, \u202e).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_IN_LINE = re.compile(_CONTROL.pattern[:-1] + "\t\n]")


def _escape_char(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _safe(text: Any, *, one_line: bool = False) -> str:
    """``text`` with the characters a terminal would act on written as escapes (tab and
    newline kept unless ``one_line``)."""
    text = "" if text is None else str(text)
    return (_CONTROL_IN_LINE if one_line else _CONTROL).sub(_escape_char, text)


def _json_escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def _dumps(value: Any, **kwargs: Any) -> str:
    """JSON with every control character escaped (json escapes only U+0000..U+001F)."""
    return _CONTROL.sub(_json_escape, json.dumps(value, ensure_ascii=False, **kwargs))


def _print_json(value: Any) -> None:
    sys.stdout.write(_dumps(value, indent=2) + "\n")


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)  # full ids and messages when piped
    return console


_STYLES = {
    "created": "dim", "queued": "blue", "running": "cyan", "completed": "green",
    "failed": "red", "cancelled": "yellow", "timeout": "magenta",
}  # fmt: skip


def _status(status: str) -> str:
    return f"[{_STYLES.get(status, '')}]{status}[/]"


def _when(ms: int | None, now_ms: int | None = None) -> str:
    if not ms:
        return "-"
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    stamp = _dt.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp} ({_ago(ms, now_ms)})"


def _ago(ms: int, now_ms: int) -> str:
    delta = (now_ms - ms) / 1000
    future = delta < 0
    delta = abs(delta)
    if delta < 60:
        text = f"{delta:.0f}s"
    elif delta < 3600:
        text = f"{delta / 60:.0f}m"
    elif delta < 86400:
        text = f"{delta / 3600:.1f}h"
    else:
        text = f"{delta / 86400:.1f}d"
    return f"in {text}" if future else f"{text} ago"


def _short_json(value: Any, width: int = 60) -> str:
    text = _dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- commands -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}", EXIT_USAGE)
    return demo.run(args.db, fast=args.fast, quiet=args.quiet, workers=args.workers)


def cmd_stats(args: argparse.Namespace) -> int:
    from .job import STATUSES

    stats = _open(args).stats()
    if args.json:
        _print_json(stats)
        return EXIT_OK
    from rich.table import Table

    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    for status in STATUSES:
        table.add_row(_status(status), str(stats.get(status, 0)))
    table.add_row("[bold]total", f"[bold]{stats.get('total', 0)}")
    console = _console()
    console.print(table)
    types = stats.get("types") or {}
    if types:
        from rich import box
        from rich.text import Text

        per_type = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for name in ("TYPE", "QUEUED", "RUNNING", "DONE", "FAILED", "P95 RUN", "ERRORS", "DONE/S"):
            per_type.add_column(name, justify="left" if name == "TYPE" else "right")
        for name, t in sorted(types.items()):
            c = t.get("counts", {})
            p95 = t.get("p95_run_ms")
            per_type.add_row(
                Text(_safe(name, one_line=True)), str(c.get("queued", 0)), str(c.get("running", 0)),
                str(c.get("completed", 0)), str(c.get("failed", 0)),
                "-" if p95 is None else f"{p95:.0f} ms", f"{100 * (t.get('error_rate') or 0):.1f}%",
                f"{t.get('completed_per_s') or 0:.1f}",
            )  # fmt: skip
        console.print(per_type)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    engine = _open(args)
    jobs = engine.jobs(
        status=args.status, type=args.type, parent=args.parent, limit=args.limit,
        offset=args.offset,
    )  # fmt: skip
    if args.json:
        _print_json([job_json(j) for j in jobs])
        return EXIT_OK
    console = _console()
    if not jobs:
        console.print("no jobs match", style="dim")
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    now = int(time.time() * 1000)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("ID", no_wrap=True, min_width=36)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PRIO", justify="right")
    table.add_column("PROGRESS", justify="right")
    table.add_column("TRIES", justify="right")
    table.add_column("CREATED", justify="right", no_wrap=True)
    table.add_column("MESSAGE / ERROR", overflow="ellipsis", no_wrap=True, max_width=60)
    for job in jobs:
        info = job.error if job.error and job.status != "completed" else job.message
        table.add_row(
            Text(_safe(job.id)), Text(_safe(job.type, one_line=True)), _status(job.status),
            str(job.priority), f"{job.progress}%", f"{job.attempts}/{job.max_attempts}",
            _ago(job.created_at or now, now), Text(_safe(info, one_line=True)),
        )  # fmt: skip
    console.print(table)
    shown = len(jobs)
    if shown == args.limit:
        console.print(f"[dim]first {shown} jobs; --limit and --offset show others")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    engine = _open(args)
    job = _get(engine, args.id)
    if args.json:
        _print_json(job_json(job))
        return EXIT_OK
    from rich.syntax import Syntax
    from rich.table import Table
    from rich.text import Text

    now = int(time.time() * 1000)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")

    def row(name: str, value: Any, markup: bool = False) -> None:
        grid.add_row(name, value if markup or not isinstance(value, str) else Text(_safe(value)))

    row("id", job.id)
    row("type", job.type)
    requested = " (cancel requested)" if job.cancel_requested and not job.is_final else ""
    row("status", _status(job.status) + requested, markup=True)
    row("priority", str(job.priority))
    progress = f"{job.progress}%"
    if job.progress_total:
        progress += f" ({job.progress_current:g}/{job.progress_total:g})"
    if job.message:
        progress += f"  {_safe(job.message, one_line=True)}"
    row("progress", progress)
    row("attempts", f"{job.attempts} of {job.max_attempts}")
    row("timeout", f"{job.timeout:g} s per attempt, retry delay {job.retry_delay:g} s")
    origin = "user" if job.user_initiated else "system"
    row("initiated by", origin)
    if job.parent_id:
        row("parent", job.parent_id)
    children = engine.jobs(parent=job.id, limit=10000)
    if children:
        counts: dict[str, int] = {}
        for child in children:
            counts[child.status] = counts.get(child.status, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        row("children", f"{len(children)} ({summary})")
    row("created", _when(job.created_at, now))
    row("queued", _when(job.queued_at, now))
    if job.run_at and job.status == "queued" and job.run_at > now:
        row("runs at", _when(job.run_at, now))
    row("started", _when(job.started_at, now))
    row("finished", _when(job.completed_at, now))
    if job.duration is not None:
        row("duration", f"{job.duration:.3f} s")
    row("payload", _pretty(job.payload))
    if job.result is not None or job.status == "completed":
        row("result", _pretty(job.result))
    if job.error:
        row("error", Text(_safe(job.error), style="red"))
    if job.stage:
        row("stage", job.stage)
    if job.outcome:
        row("outcome", ", ".join(f"{k} {v}" for k, v in job.outcome.items()))
    console = _console()
    console.print(grid)
    if job.error_detail:
        console.print("[bold]traceback of the last failed attempt:")
        console.print(Syntax(_safe(job.error_detail.rstrip()), "pytb", word_wrap=True))
    lines = engine.logs(job.id, limit=SHOW_LOG_LINES, tail=True)
    if lines:
        console.print(f"[bold]log (last {len(lines)} lines; jobforge logs {job.id} for all):")
        for line in lines:
            console.print(_log_text(line))
    return EXIT_OK


SHOW_LOG_LINES = 20
_LEVEL_STYLES = {"debug": "dim", "info": "", "warning": "yellow", "error": "red"}


def _log_text(line):
    from rich.text import Text

    stamp = _dt.datetime.fromtimestamp(line.at / 1000).strftime("%H:%M:%S.%f")[:-3]
    text = Text(f"{stamp} ", style="dim")
    text.append(f"{line.level:<7} ", style=_LEVEL_STYLES.get(line.level, ""))
    if line.stage:
        text.append(f"[{_safe(line.stage, one_line=True)}] ", style="cyan")
    text.append(_safe(line.message, one_line=True))
    fields = line.fields
    if fields:
        text.append(" " + " ".join(f"{_safe(k, one_line=True)}={_dumps(v)}"
                                   for k, v in fields.items()), style="dim")  # fmt: skip
    return text


def _log_json(line) -> dict:
    return line.to_dict()


def cmd_logs(args: argparse.Namespace) -> int:
    engine = _open(args)
    job = _get(engine, args.id)
    lines = engine.logs(job.id, level=args.level, limit=args.limit, tail=args.tail)
    console = None if args.json else _console()
    if not args.follow:
        if args.json:
            _print_json([_log_json(line) for line in lines])
        elif not lines:
            console.print("no log lines", style="dim")
        for line in [] if args.json else lines:
            console.print(_log_text(line))
        return EXIT_OK

    def emit(batch) -> None:
        for line in batch:
            if args.json:
                sys.stdout.write(_dumps(_log_json(line)) + "\n")
            else:
                console.print(_log_text(line))
        sys.stdout.flush()

    emit(lines)
    last = lines[-1].id if lines else 0
    while True:
        final = _get(engine, job.id).is_final  # read before the lines: none is missed at the end
        batch = engine.logs(job.id, level=args.level, limit=1000, after=last)
        emit(batch)
        if batch:
            last = batch[-1].id
        if final and len(batch) < 1000:
            return EXIT_OK
        if not batch:
            time.sleep(FOLLOW_INTERVAL)


FOLLOW_INTERVAL = 0.25  # seconds between reads of a followed job's log


def cmd_db(args: argparse.Namespace) -> int:
    from . import db

    if args.db_command is None:
        raise CliError("db needs an action: check, migrate, recount, repair or cleanup (jobforge db --help)",
                       EXIT_USAGE)  # fmt: skip
    if args.db_command == "cleanup":
        return _db_cleanup(args)
    path = _db_path(args)
    from .engine import _is_postgres_url, _redacted

    if _is_postgres_url(path):
        raise CliError(f"db {args.db_command} works on a SQLite file, not on the PostgreSQL "
                       f"database {_redacted(path)}", EXIT_USAGE)  # fmt: skip
    if not os.path.exists(path):
        raise CliError(f"database '{path}' does not exist", EXIT_NOT_FOUND)
    if args.db_command == "check":
        try:
            report = db.check(path, quick=args.quick)
        except db.RepairError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            _print_json(report)
        elif report["ok"]:
            print(f"ok: {path} (schema {report['schema_version']}, {report['jobs']} jobs)")
        else:
            print(f"{path}: {len(report['problems'])} problem(s) found:")
            for problem in report["problems"]:
                print(f"  {problem}")
            print(f"repair with: jobforge db repair --db {path}")
        return EXIT_OK if report["ok"] else EXIT_FAILURE
    if args.db_command == "recount":
        try:
            report = db.recount(path)
        except db.RepairError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            _print_json(report)
        elif not report["changed"]:
            print(f"{path}: the counts were right")
        else:
            print(f"{path}: {len(report['changed'])} count(s) corrected:")
            for c in report["changed"]:
                print(f"  {c['type']}/{c['status']}: {c['was']} -> {c['now']}")
        return EXIT_OK
    if args.db_command == "migrate":
        before = db.check(path, quick=True)["schema_version"]
        import jobforge

        jobforge.Engine(path, allow_unknown_types=True).close()
        after = db.check(path, quick=True)["schema_version"]
        if args.json:
            _print_json({"path": path, "schema_version_before": before,
                         "schema_version": after})  # fmt: skip
        elif before == after:
            print(f"{path}: schema {after}, up to date")
        else:
            print(f"{path}: migrated from schema {before} to {after}")
        return EXIT_OK
    try:
        report = db.repair(path, force=args.force)
    except db.RepairError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        _print_json(report)
        return EXIT_OK
    print(f"repaired {path}: {report['copied']} rows copied, {report['lost']} lost")
    for table, t in report["tables"].items():
        lost = f", {t.get('lost')} lost" if t.get("lost") else ""
        print(f"  {table}: {t.get('copied', 0)} copied{lost}")
    print(f"the damaged file is kept as {report['damaged_copy']}")
    state = "ok" if report["check"]["ok"] else "still has problems"
    print(f"integrity of the repaired file: {state}")
    return EXIT_OK


def _db_cleanup(args: argparse.Namespace) -> int:
    engine = _open(args)
    cutoff_ms = int((time.time() - args.older_than) * 1000)
    deleted = engine.cleanup(older_than=args.older_than)
    if args.json:
        _print_json({"path": engine.path, "deleted": deleted, "older_than_s": args.older_than,
                     "cutoff": cutoff_ms})  # fmt: skip
    else:
        stamp = _dt.datetime.fromtimestamp(cutoff_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
        print(f"deleted {deleted} finished job(s) that ended before {stamp} from {engine.path}")
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    action = args.schedule_command
    if action is None:
        raise CliError("schedule needs an action: list, add or remove (jobforge schedule --help)",
                       EXIT_USAGE)  # fmt: skip
    if action == "add":
        payload = _parse_payload(args.payload)
        engine = _open(args, create=True)
        existed = any(s.name == args.name for s in engine.schedules())
        try:
            made = engine.schedule(
                args.name, args.cron, args.type, payload, priority=args.priority,
                timezone=args.timezone, misfire=args.misfire, queue=args.queue,
            )  # fmt: skip
        except (ValueError, TypeError) as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        if args.json:
            _print_json(schedule_json(made))
        else:
            verb = "replaced" if existed else "added"
            next_ms = round(made.next_fire_at * 1000)
            print(f"{verb} schedule '{made.name}': {made.type} at '{made.cron}' "
                  f"({made.timezone}), next fire {_when(next_ms)}")  # fmt: skip
        return EXIT_OK
    engine = _open(args)
    if action == "remove":
        if not engine.unschedule(args.name):
            raise CliError(f"no schedule named '{args.name}' in '{engine.path}'", EXIT_NOT_FOUND)
        if args.json:
            _print_json({"removed": args.name})
        else:
            print(f"removed schedule '{args.name}'")
        return EXIT_OK
    schedules = engine.schedules()
    if args.json:
        _print_json([schedule_json(s) for s in schedules])
        return EXIT_OK
    console = _console()
    if not schedules:
        console.print("no schedules (jobforge schedule add NAME CRON TYPE)", style="dim")
        return EXIT_OK
    from rich import box
    from rich.table import Table
    from rich.text import Text

    now = int(time.time() * 1000)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for name in ("NAME", "CRON", "TYPE", "NEXT FIRE", "LAST FIRE", "TZ", "MISFIRE", "PRIO",
                 "QUEUE", "LAST JOB"):  # fmt: skip
        table.add_column(name, no_wrap=name != "NAME")
    for s in schedules:
        last = None if s.last_fire_at is None else round(s.last_fire_at * 1000)
        table.add_row(
            Text(_safe(s.name, one_line=True)), Text(_safe(s.cron, one_line=True)),
            Text(_safe(s.type, one_line=True)), _when(round(s.next_fire_at * 1000), now),
            _when(last, now) if last else "never", s.timezone, s.misfire,
            "-" if s.priority is None else str(s.priority), Text(_safe(s.queue, one_line=True)),
            s.last_job_id or "-",
        )  # fmt: skip
    console.print(table)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    payload = _parse_payload(args.payload)
    if args.app:
        from . import worker

        try:
            engine = worker.load_app(args.app)
        except worker.AppError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        return _run(engine, args, payload)
    import tempfile

    import jobforge

    # Native processors need no store: an engine on a throwaway file (run_now writes no row).
    with tempfile.TemporaryDirectory(prefix="jobforge-run-") as tmp:
        # The user runs a command of their own here: exec is allowed, with the environment.
        engine = jobforge.Engine(os.path.join(tmp, "run.db"), allow_exec=True,
                                 exec_inherit_env=True)  # fmt: skip
        try:
            return _run(engine, args, payload)
        finally:
            engine.close()


def _run(engine, args: argparse.Namespace, payload: Any) -> int:
    from .errors import JobforgeError

    known = engine.processor_types
    if args.type not in known:
        where = f"the app {args.app}" if args.app else "the native processors (--app adds yours)"
        raise CliError(
            f"unknown job type '{args.type}': no processor for it in {where}; known types: "
            f"{', '.join(sorted(known))}",
            EXIT_USAGE,
        )
    python_processor = args.type in engine._processors

    def progress(current: float, total: float, message: str) -> None:
        # Even without a bar: a native processor reporting progress takes the GIL here, so a
        # Ctrl-C (SIGINT) raises KeyboardInterrupt at its next report instead of after it ends.
        pass

    bar = None
    if not args.no_progress and sys.stdout.isatty():
        from rich import progress as rp

        bar = rp.Progress(
            rp.TextColumn("[bold]{task.fields[type]}"), rp.BarColumn(), rp.TaskProgressColumn(),
            rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("{task.description}"),
            console=_console(), transient=False,
        )  # fmt: skip
        task = bar.add_task("", total=None, type=args.type)

        def progress(current: float, total: float, message: str) -> None:  # noqa: F811
            bar.update(task, completed=current, total=total if total and total > 0 else None,
                       description=message or "")  # fmt: skip

        bar.start()
    started = time.monotonic()
    try:
        result = engine.run_now(args.type, payload, progress=progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - the processor's error, as one line
        if getattr(args, "debug", False):
            traceback.print_exc()
        if not python_processor and isinstance(exc, (ValueError, TypeError)):
            raise CliError(str(exc), EXIT_USAGE) from None  # a payload the processor refuses
        text = " ".join((str(exc) or "").split())
        kind = "" if isinstance(exc, JobforgeError) else f"{type(exc).__name__}: "
        raise CliError(f"{args.type} failed: {kind}{text}".rstrip(": ")) from None
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.monotonic() - started
    if args.json:
        _print_json({"type": args.type, "result": result, "seconds": round(seconds, 6)})
    elif sys.stdout.isatty():
        _console().print(_pretty(result))
    else:
        _print_json(result)
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    if not args.max_wait > 0:
        raise CliError(f"--max-wait must be more than 0 seconds, got {args.max_wait:g}", EXIT_USAGE)
    report = _open(args).health(integrity=args.integrity, max_wait=args.max_wait)
    code = {"ok": EXIT_OK, "degraded": EXIT_DEGRADED}.get(report["status"], EXIT_FAILING)
    if args.json:
        _print_json(report)
        return code
    from rich.text import Text

    style = {"ok": "green", "degraded": "yellow"}.get(report["status"], "red")
    console = _console()
    console.print(f"[bold {style}]{report['status']}[/]  {report['path']}")
    for reason in report.get("reasons", []):
        console.print(Text(f"  - {_safe(reason, one_line=True)}", style=style))
    db = report.get("database", {})
    integrity = db.get("integrity") or "not checked (--integrity)"
    console.print(f"database: reachable={db.get('reachable')}, integrity {integrity}")
    queue = report.get("queue", {})
    if queue:
        console.print(
            f"queue: {queue['queued']} queued, {queue['due']} due, oldest due waited "
            f"{queue['oldest_due_age']:.1f} s"
        )
    alive = [w for w in report.get("workers", []) if w.get("alive")]
    console.print(f"workers: {len(alive)} alive of {len(report.get('workers', []))} registered")
    for w in report.get("workers", []):
        mark = "alive" if w.get("alive") else w.get("state", "?")
        console.print(
            f"  {w['hostname']}:{w['pid']} v{w['version']} {mark}, heartbeat "
            f"{w['heartbeat_age']:.1f} s ago",
            style="" if w.get("alive") else "dim",
        )
    return code


def _pretty(value: Any):
    from rich.syntax import Syntax

    text = _dumps(value, indent=2)
    return Syntax(text, "json", word_wrap=True, background_color="default")


def cmd_enqueue(args: argparse.Namespace) -> int:
    payload = _parse_payload(args.payload)
    engine = _open(args, create=True)
    try:
        job = engine.enqueue(
            args.type, payload, priority=args.priority, max_attempts=args.max_attempts,
            timeout=args.timeout, delay=args.delay, retry_delay=args.retry_delay,
            parent=args.parent,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from exc
    if args.json:
        _print_json(job_json(job))
    else:
        print(job.id)
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    engine = _open(args)
    job = _get(engine, args.id)
    if job.is_final:
        raise CliError(f"job {job.id} is already {job.status}; nothing to cancel")
    if not engine.cancel(job.id):
        status = _get(engine, job.id).status
        raise CliError(f"job {job.id} could not be cancelled (status: {status})")
    job = _get(engine, job.id)
    if args.json:
        _print_json(job_json(job))
    elif job.status == "cancelled":
        print(f"cancelled {job.id}")
    else:
        print(
            f"cancel requested for {job.id} ({job.status}); it ends cancelled when its "
            "processor notices"
        )
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    engine = _open(args)
    job = _get(engine, args.id)
    if job.status not in ("failed", "cancelled", "timeout"):
        raise CliError(
            f"job {job.id} is {job.status}; only failed, cancelled or timeout jobs can be retried"
        )
    if not engine.retry(job.id):
        status = _get(engine, job.id).status
        raise CliError(f"job {job.id} could not be retried (status: {status})")
    job = _get(engine, job.id)
    if args.json:
        _print_json(job_json(job))
    else:
        print(f"requeued {job.id} ({job.status}, attempts reset)")
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    from . import worker

    if args.concurrency is not None and args.concurrency < 1:
        raise CliError(f"--concurrency must be at least 1, got {args.concurrency}", EXIT_USAGE)
    for name in ("heartbeat", "lease"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise CliError(f"--{name} must be more than 0 seconds, got {value:g}", EXIT_USAGE)
    # Set by a Supervisor (Engine.start(processes=N, app=...)) for the processes it spawns.
    notify_fd = os.environ.pop(worker.ENV_NOTIFY_FD, None)
    supervisor_pid = os.environ.pop(worker.ENV_SUPERVISOR_PID, None)
    # A spawned worker's database comes through its environment, never its command line.
    spawned_db = os.environ.pop(worker.ENV_WORKER_DB, None)
    if supervisor_pid and not worker.die_with_parent(signal.SIGTERM, int(supervisor_pid)):
        raise CliError("the supervisor that started this worker is gone")
    try:
        app = worker.load_app(args.app)
    except worker.AppError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except Exception:
        # An error inside the user's module: its traceback is what they need.
        sys.stderr.write(traceback.format_exc())
        raise CliError(f"importing the app '{args.app}' failed (traceback above)") from None
    if app.running:
        raise CliError(
            f"the engine of --app {args.app} is already running: the worker runs its own engine; "
            "start yours only under `if __name__ == '__main__':`",
            EXIT_USAGE,
        )
    engine = worker.worker_engine(
        app, db=args.db or spawned_db, concurrency=args.concurrency, heartbeat=args.heartbeat,
        lease=args.lease, allow_exec=args.allow_exec,
    )  # fmt: skip
    return worker.serve(engine, notify_fd=int(notify_fd) if notify_fd else None)


def cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        from .dashboard import make_server
    except ImportError as exc:
        raise CliError(
            f"the dashboard needs its extra: pip install 'jobforge[dashboard]' ({exc})"
        ) from None
    from .dashboard.app import MIN_TOKEN_LENGTH, bind_policy

    if args.token is not None and len(args.token) < MIN_TOKEN_LENGTH:
        raise CliError(
            f"--token (or ${ENV_DASHBOARD_TOKEN}) must be at least {MIN_TOKEN_LENGTH} "
            f"characters, got {len(args.token)} (leave it out for a random one)",
            EXIT_USAGE,
        )
    if not 1 <= args.max_sse_clients <= 100_000:
        raise CliError(
            f"--max-sse-clients must be 1..100000, got {args.max_sse_clients}", EXIT_USAGE
        )
    try:
        bind_policy(args.host, args.allowed_hosts)
    except ValueError as exc:
        raise CliError(str(exc).replace("allowed_hosts", "--allowed-host", 1), EXIT_USAGE) from None
    if not args.poll > 0:
        raise CliError(f"--poll must be more than 0 seconds, got {args.poll:g}", EXIT_USAGE)
    if args.port > 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}", EXIT_USAGE)
    if args.concurrency is not None and (args.app is None or args.concurrency < 1):
        raise CliError("--concurrency needs --app and must be at least 1", EXIT_USAGE)
    engine = None
    if args.app:
        from . import worker

        try:
            app = worker.load_app(args.app)
        except worker.AppError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        db = _db_path(args) if (args.db or os.environ.get(ENV_DB)) else None
        engine = worker.worker_engine(app, db=db, concurrency=args.concurrency)
        engine.start()
        target = engine
    else:
        path = _db_path(args)
        if not os.path.exists(path):
            from .engine import _redacted

            raise CliError(f"database '{_redacted(path)}' does not exist", EXIT_NOT_FOUND)
        target = path
    try:
        server = make_server(
            target, host=args.host, port=args.port, token=args.token, poll_interval=args.poll,
            allowed_hosts=args.allowed_hosts, max_sse_clients=args.max_sse_clients,
        )  # fmt: skip
    except OSError as exc:
        if engine is not None:
            engine.stop()
        raise CliError(str(exc)) from None
    url = server.url
    running = f", running jobs with {args.app}" if args.app else " (observer: runs no jobs)"
    print(f"jobforge dashboard on {url} for {server.dashboard.engine.path}{running}", flush=True)
    print(f"action token: {server.token}", flush=True)
    print(f"open {url}#token={server.token}", flush=True)
    if server.dashboard.token_for_reads:
        hosts = ", ".join(server.dashboard.allowed_hosts)
        print(
            f"warning: listening on {args.host}: reachable from other machines; every request "
            f"needs the token, and the Host must be one of: {hosts}. The traffic is not "
            "encrypted: put a TLS proxy in front of it",
            flush=True,
        )
    # The server runs on a thread (so uvicorn installs no signal handlers of its own); this
    # thread waits for SIGINT or SIGTERM and stops it: exit 0.
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        server.start()
        while not stop.wait(0.5):
            if not server.alive:
                raise CliError("the dashboard server stopped unexpectedly")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if engine is not None:
            engine.stop()
    return EXIT_OK


COMMANDS = {
    "dashboard": cmd_dashboard,
    "demo": cmd_demo,
    "stats": cmd_stats,
    "list": cmd_list,
    "show": cmd_show,
    "enqueue": cmd_enqueue,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "worker": cmd_worker,
    "logs": cmd_logs,
    "health": cmd_health,
    "db": cmd_db,
    "schedule": cmd_schedule,
    "run": cmd_run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code (see the module docstring)."""
    _tolerate_narrow_encodings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        return COMMANDS[args.command](args)
    except CliError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (e.g. `jobforge list | head`): not an error.
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback
        from .errors import StoreError

        if debug:
            traceback.print_exc()
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, StoreError):
            message = f"{type(exc).__name__}: {message}"
        hint = "" if debug else " (run with --debug for the traceback)"
        _error(message + ("" if isinstance(exc, StoreError) else hint))
        return EXIT_FAILURE


def _tolerate_narrow_encodings() -> None:
    # Tables and the demo use a few non-ASCII symbols (→, ✓, box lines); on a stream that cannot
    # encode them (say LC_ALL=C without UTF-8 mode), print a replacement instead of crashing.
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {_safe(message, one_line=True)}\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

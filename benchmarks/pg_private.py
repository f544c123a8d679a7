"""A private PostgreSQL server for fault tests: initdb in a temporary folder, a free port, trust
authentication, started and stopped with pg_ctl as user postgres (initdb refuses root). Outages
are stop() then start(); the machine's main cluster is never touched.

    with PrivatePostgres() as server:       # skips nothing: raise if unavailable
        url = server.new_schema_url()
        server.stop(); ...; server.start()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid

BIN = os.environ.get("JOBFORGE_PG_BIN", "/usr/lib/postgresql/15/bin")


def unavailable_reason() -> str | None:
    """Why a private server cannot run here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not os.path.exists(os.path.join(BIN, tool)):
            return f"{BIN}/{tool} is missing (PostgreSQL 15 server binaries)"
    if shutil.which("psql") is None:
        return "psql is missing"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser is missing (initdb refuses to run as root)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "no user 'postgres' to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    def __init__(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.root = tempfile.mkdtemp(prefix="jobforge-pg-")
        os.chmod(self.root, 0o777)
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self._run(
            os.path.join(BIN, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self.running = False
        self.start()

    def _run(self, *args: str, timeout: float = 120) -> str:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {out.stderr.strip() or out.stdout}")
        return out.stdout

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c max_connections=200 -c fsync=off -c full_page_writes=off"
        )
        self._run(os.path.join(BIN, "pg_ctl"), "-D", self.data, "-l", self.log, "-o", opts,
                  "-w", "-t", "60", "start")  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stops the server ("fast": clients are disconnected; "immediate": a crash)."""
        self._run(os.path.join(BIN, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t", "60",
                  "stop")  # fmt: skip
        self.running = False

    def psql(self, sql: str, url: str | None = None) -> str:
        out = subprocess.run(
            ["psql", url or self.url, "-v", "ON_ERROR_STOP=1", "-qAt", "-F", "\t", "-c", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()

    def new_schema_url(self) -> str:
        """A URL whose search_path is a fresh schema of its own."""
        schema = f"jobforge_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE SCHEMA {schema}")
        return f"{self.url}?options=-csearch_path%3D{schema}&application_name={schema}"

    def close(self) -> None:
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""The jobforge web dashboard: a page of live jobs, history, workers and actions, served by
Starlette + uvicorn, with a JSON API under ``/api`` and live updates by Server-Sent Events.

    jobforge dashboard --db jobs.db                 # prints the URL and the action token

    from jobforge.dashboard import serve
    serve(engine, port=8765)                        # in the process that runs the jobs

Needs the ``dashboard`` extra (``pip install 'jobforge[dashboard]'``). See docs/dashboard.md.
"""

from __future__ import annotations

from .app import Dashboard, DashboardServer, create_app, make_server, serve

__all__ = ["Dashboard", "DashboardServer", "create_app", "make_server", "serve"]

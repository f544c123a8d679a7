"""The OpenAPI 3.1 description of the dashboard's JSON API, served at ``/api/openapi.json``.
Written by hand next to the handlers in ``app.py``; docs/dashboard.md explains each endpoint."""

from __future__ import annotations

from .._core import __version__

_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ERROR = {
    "description": "error",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}}
        }
    },
}
_AUTH = [{"token": []}]


def _ok(description: str, schema: dict | None = None) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


_JOB = {"$ref": "#/components/schemas/Job"}
_ACTION_ERRORS = {"401": _ERROR, "403": _ERROR, "404": _ERROR, "409": _ERROR}

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "jobforge dashboard API",
        "version": __version__,
        "description": "On a loopback address reads are open; actions need `Authorization: "
        "Bearer TOKEN` (401 without a token, 403 with a wrong one; nothing changes either way). "
        "On any other address every /api path needs it. 429 with Retry-After after 10 wrong "
        "tokens from one address within 60 s. 400 for a Host header not allowed.",
    },
    "components": {
        "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Job": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "type": {"type": "string"},
                    "status": {
                        "enum": [
                            "created",
                            "queued",
                            "running",
                            "completed",
                            "failed",
                            "cancelled",
                            "timeout",
                        ]
                    },  # fmt: skip
                    "priority": {"type": "integer", "minimum": 1, "maximum": 10},
                    "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                    "progress_current": {"type": "number"},
                    "progress_total": {"type": ["number", "null"]},
                    "message": {"type": "string"},
                    "payload": {},
                    "result": {},
                    "error": {"type": ["string", "null"]},
                    "error_detail": {"type": ["string", "null"]},
                    "attempts": {"type": "integer"},
                    "max_attempts": {"type": "integer"},
                    "created_at": {"type": ["integer", "null"], "description": "Unix ms"},
                    "started_at": {"type": ["integer", "null"]},
                    "completed_at": {"type": ["integer", "null"]},
                },
            },
        },
    },
    "paths": {
        "/api/overview": {
            "get": {
                "summary": "Counts per status, queue depth, throughput, version",
                "responses": {"200": _ok("overview")},
            }
        },
        "/api/active": {
            "get": {
                "summary": "Running jobs (up to 100) with progress",
                "responses": {"200": _ok("running jobs")},
            }
        },
        "/api/jobs": {
            "get": {
                "summary": "History, newest first, one keyset page at a time",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string"}},
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "q",
                        "in": "query",
                        "description": "id prefix or text in type, message, error, payload",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "next_cursor of the previous page",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                    },
                ],
                "responses": {"200": _ok("a page: jobs, next_cursor, searched"), "400": _ERROR},
            },
            "post": {
                "summary": "Enqueue a job of a known type",
                "security": _AUTH,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["type"],
                                "properties": {
                                    "type": {"type": "string"},
                                    "payload": {},
                                    "priority": {"type": ["integer", "string"]},
                                    "delay": {"type": "number"},
                                    "max_attempts": {"type": "integer"},
                                    "timeout": {"type": "number"},
                                },
                            }
                        }
                    },
                },
                "responses": {"201": _ok("the new job", _JOB), "400": _ERROR, **_ACTION_ERRORS},
            },
        },
        "/api/jobs/{job_id}": {
            "get": {
                "summary": "One job in full, with children counts and logs",
                "parameters": [_JOB_ID],
                "responses": {"200": _ok("the job", _JOB), "404": _ERROR},
            }
        },
        "/api/jobs/{job_id}/logs": {
            "get": {
                "summary": "The job's log lines, oldest first, after line `after`",
                "parameters": [
                    _JOB_ID,
                    {"name": "after", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": _ok("logs"), "400": _ERROR, "404": _ERROR},
            }
        },
        "/api/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a queued or running job",
                "security": _AUTH,
                "parameters": [_JOB_ID],
                "responses": {"200": _ok("the job after the request", _JOB), **_ACTION_ERRORS},
            }
        },
        "/api/jobs/{job_id}/retry": {
            "post": {
                "summary": "Requeue a failed, cancelled or timed-out job",
                "security": _AUTH,
                "parameters": [_JOB_ID],
                "responses": {"200": _ok("the requeued job", _JOB), **_ACTION_ERRORS},
            }
        },
        "/api/cancel-all": {
            "post": {
                "summary": "Cancel every queued and running job",
                "security": _AUTH,
                "responses": {"200": _ok("{cancelled: n}"), "401": _ERROR, "403": _ERROR},
            }
        },
        "/api/auth": {
            "post": {
                "summary": "Check a token (changes nothing)",
                "security": _AUTH,
                "responses": {"200": _ok("ok"), "401": _ERROR, "403": _ERROR},
            }
        },
        "/api/health": {
            "get": {
                "summary": "engine.health(): ok / degraded / failing with reasons",
                "parameters": [
                    {
                        "name": "integrity",
                        "in": "query",
                        "description": "1: run SQLite's quick check (slow on big files)",
                        "schema": {"type": "integer"},
                    }
                ],
                "responses": {"200": _ok("health")},
            }
        },
        "/api/workers": {
            "get": {"summary": "Worker processes and heartbeats", "responses": {"200": _ok("")}}
        },
        "/api/types": {
            "get": {
                "summary": "Job types known here and in the store",
                "responses": {"200": _ok("")},
            }
        },
        "/api/schedules": {
            "get": {
                "summary": (
                    "Cron schedules: name, cron, type, payload, priority, queue, timezone, "
                    "misfire, next_fire_at, last_fire_at (Unix ms), last_job_id"
                ),
                "responses": {"200": _ok("")},
            }
        },
        "/api/events": {
            "get": {
                "summary": "Server-Sent Events: overview, active, jobs, logs",
                "parameters": [
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "description": "the token, when reads need it (EventSource sends no "
                        "headers)",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {"description": "text/event-stream"},
                    "503": {"description": "max_sse_clients feeds are open; Retry-After"},
                },
            }
        },
    },
}

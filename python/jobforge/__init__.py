"""jobforge: background jobs for Python, run by a multithreaded C++ engine on SQLite.

import jobforge

engine = jobforge.Engine("jobs.db", workers=4)

@engine.processor("resize", timeout=30, max_attempts=3)
def resize(ctx, payload):
    ctx.progress(50, total=100, message="half way")
    return {"path": payload["path"]}

with engine:
    job = engine.enqueue("resize", {"path": "a.jpg"}, priority=3)
    print(job.wait().result)
"""

from __future__ import annotations

from ._core import Context
from ._core import __version__ as __version__
from .backoff import Exponential, Fixed, Linear
from .engine import EVENT_TYPES, PRIORITIES, Engine, Subscription
from .errors import (
    InvalidTransition,
    JobCancelled,
    JobforgeError,
    PermanentError,
    Retry,
    SingletonError,
    StoreError,
    UnknownJobType,
    ValidationError,
)
from .job import ACTIVE_STATUSES, FINAL_STATUSES, STATUSES, Event, Job

__all__ = [
    "Engine",
    "Job",
    "Event",
    "Context",
    "Subscription",
    "JobforgeError",
    "StoreError",
    "ValidationError",
    "UnknownJobType",
    "JobCancelled",
    "InvalidTransition",
    "Retry",
    "PermanentError",
    "SingletonError",
    "Fixed",
    "Linear",
    "Exponential",
    "PRIORITIES",
    "EVENT_TYPES",
    "STATUSES",
    "FINAL_STATUSES",
    "ACTIVE_STATUSES",
]

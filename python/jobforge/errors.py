"""The exceptions jobforge raises. Every one is a :class:`JobforgeError`; input errors are also
``ValueError``/``TypeError`` so ordinary ``except ValueError`` code catches them."""

from __future__ import annotations


class JobforgeError(Exception):
    """Base class of every error jobforge raises on purpose."""


class StoreError(JobforgeError):
    """The store failed: the file is missing or not a database, the disk is full, it is locked."""


class ValidationError(JobforgeError, ValueError):
    """Bad input refused before anything was written; ``field`` names what was wrong."""

    def __init__(self, message: str = "", field: str = "") -> None:
        super().__init__(message)
        self.field = field


class UnknownJobType(ValidationError):
    """A job type has no registered processor."""


class JobCancelled(JobforgeError):
    """Raised inside a processor by ``ctx.check_cancelled()`` once the job was cancelled or timed
    out. Let it propagate: the job then ends ``cancelled`` (or ``timeout``)."""


class SingletonError(JobforgeError):
    """``start()`` of a singleton engine while another live one holds the same role."""


class InvalidTransition(JobforgeError):
    """A status change the lifecycle does not allow."""


__all__ = [
    "JobforgeError", "StoreError", "ValidationError", "UnknownJobType", "JobCancelled",
    "InvalidTransition",
]  # fmt: skip


class Retry(JobforgeError):
    """Raised by a processor to end this attempt and ask for another after ``delay`` seconds
    (the job's backoff when ``delay`` is None). Counts as an attempt: with none left, the job
    ends ``failed``."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None):
        super().__init__(message)
        if delay is not None and (isinstance(delay, bool) or not isinstance(delay, (int, float))):
            raise TypeError(f"delay must be a number of seconds, got {type(delay).__name__}")
        if delay is not None and not delay >= 0:
            raise ValidationError(f"delay must be 0 or more seconds, got {delay!r}", "delay")
        if delay is not None and delay > 1e12:  # ~31,700 years: the engine's limit for times
            raise ValidationError(f"delay must be at most 1e12 seconds, got {delay!r}", "delay")
        self.delay = delay


class PermanentError(JobforgeError):
    """Raised by a processor for a failure that another attempt cannot fix: the job ends
    ``failed`` at once, whatever attempts are left."""


__all__ += ["Retry", "PermanentError", "SingletonError"]


class QueueFull(JobforgeError):
    """``enqueue`` into a queue that already holds ``max_queue_size`` queued jobs. Nothing was
    written; try again later or raise the limit."""


__all__ += ["QueueFull"]

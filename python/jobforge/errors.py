"""The exceptions jobforge raises. Every one is a :class:`JobforgeError`; input errors are also
``ValueError``/``TypeError`` so ordinary ``except ValueError`` code catches them."""

from __future__ import annotations


class JobforgeError(Exception):
    """Base class of every error jobforge raises on purpose."""


class StoreError(JobforgeError):
    """The store failed: the file is missing or not a database, the disk is full, it is locked."""


class UnknownJobType(JobforgeError, ValueError):
    """A job type has no registered processor."""


class JobCancelled(JobforgeError):
    """Raised inside a processor by ``ctx.check_cancelled()`` once the job was cancelled or timed
    out. Let it propagate: the job then ends ``cancelled`` (or ``timeout``)."""


class InvalidTransition(JobforgeError):
    """A status change the lifecycle does not allow."""


__all__ = ["JobforgeError", "StoreError", "UnknownJobType", "JobCancelled", "InvalidTransition"]

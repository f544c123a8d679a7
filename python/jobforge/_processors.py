"""Adapts a user's Python processor to the engine: decodes the payload, calls the function with
the GIL held for that call only, and reports its end as a tuple the C++ side understands."""

from __future__ import annotations

import traceback
from typing import Any, Callable

from . import _json
from .errors import JobCancelled, PermanentError, Retry

ProcessorFn = Callable[[Any, Any], Any]


def make_adapter(fn: ProcessorFn):
    def adapter(ctx, payload_json: str):
        try:
            result = fn(ctx, _json.loads(payload_json))
        except JobCancelled as exc:
            return ("cancelled", str(exc) or "job was cancelled")
        except Retry as exc:
            delay_ms = -1 if exc.delay is None else int(round(exc.delay * 1000))
            return ("retry", _describe(exc), traceback.format_exc(), delay_ms)
        except PermanentError as exc:
            return ("error", _describe(exc), traceback.format_exc(), True)
        except BaseException as exc:  # noqa: BLE001 - any failure of user code fails the attempt
            return ("error", _describe(exc), traceback.format_exc(), False)
        try:
            return ("ok", _json.dumps(result, "result"))
        except (TypeError, ValueError) as exc:
            return ("error", _describe(exc), traceback.format_exc(), True)

    adapter.__wrapped__ = fn
    return adapter


def _describe(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__

"""The one place where Python values become JSON text and back."""

from __future__ import annotations

import json
import math
from typing import Any

_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
loads = json.loads


def dumps(value: Any, field: str = "payload") -> str:
    """Encodes ``value`` as compact JSON. On failure, raises ``TypeError`` (a value JSON cannot
    hold) or ``ValueError`` (NaN, infinity, a cycle) naming the offending key path, e.g.
    ``payload["images"][2]``."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        path, culprit, problem = _find_culprit(value, field, set())
        if problem is None:
            raise ValueError(f"{field} is not JSON-serialisable: {exc}") from None
        if problem == "type":
            raise TypeError(
                f"{path} is not JSON-serialisable: {type(culprit).__name__} {_short(culprit)}"
            ) from None
        raise ValueError(f"{path} is not JSON-serialisable: {problem}") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _find_culprit(value: Any, path: str, seen: set[int]):
    if value is None or isinstance(value, (str, bool, int)):
        return path, None, None
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return path, value, f"{value!r} has no JSON representation"
        return path, None, None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return path, value, "it contains itself (a reference cycle)"
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                key_path = f"{path}[{json.dumps(key) if isinstance(key, str) else repr(key)}]"
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    return key_path, key, "type"
                found = _find_culprit(item, key_path, seen)
                if found[2] is not None:
                    return found
        else:
            for index, item in enumerate(value):
                found = _find_culprit(item, f"{path}[{index}]", seen)
                if found[2] is not None:
                    return found
        seen.discard(id(value))
        return path, None, None
    return path, value, "type"

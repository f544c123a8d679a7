"""The one place where Python values become JSON text and back."""

from __future__ import annotations

import json
import math
from typing import Any

_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False)
# For text holding lone surrogates (valid in a Python str, not in UTF-8): \udXXX escapes.
_ascii_encoder = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=True)
loads = json.loads
_MAX_DEPTH = 500  # the engine refuses deeper JSON: what every reader can decode back


def dumps(value: Any, field: str = "payload") -> str:
    """Encodes ``value`` as compact JSON. On failure, raises ``TypeError`` (a value JSON cannot
    hold) or ``ValueError`` (NaN, infinity, a cycle) naming the offending key path, e.g.
    ``payload["images"][2]``."""
    try:
        text = _encoder.encode(value)
    except RecursionError:
        raise ValueError(f"{field} is nested more than {_MAX_DEPTH} levels deep") from None
    except (TypeError, ValueError) as exc:
        try:
            path, culprit, problem = _find_culprit(value, field, set())
        except RecursionError:
            raise ValueError(f"{field} is nested more than {_MAX_DEPTH} levels deep") from None
        if problem is None:
            raise ValueError(f"{field} is not JSON-serialisable: {exc}") from None
        if problem == "type":
            raise TypeError(
                f"{path} is not JSON-serialisable: {type(culprit).__name__} {_short(culprit)}"
            ) from None
        raise ValueError(f"{path} is not JSON-serialisable: {problem}") from None
    if not text.isascii():  # no bytes object made for the usual, ASCII text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _ascii_encoder.encode(value)  # lone surrogates travel as \udXXX escapes
    return text


def dumps_many(values: Any, field: str = "payloads") -> list[str]:
    """``dumps`` of every item of a sequence, without a per-item call while all goes well; on a
    failure the items are encoded one by one again, so the error names the item's path, e.g.
    ``payloads[3]["when"]``."""
    encode = _encoder.encode
    try:
        out = [encode(v) for v in values]
    except (TypeError, ValueError, RecursionError):
        return [dumps(v, f"{field}[{i}]") for i, v in enumerate(values)]
    for i, text in enumerate(out):
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                out[i] = _ascii_encoder.encode(values[i])
    return out


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__} object>"
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

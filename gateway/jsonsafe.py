"""Hardened JSON parsing: bounded nesting, one value per key, only characters XML can carry.

Python's ``json`` accepts things a gateway must not pass on: nesting thousands deep
(which ends in a RecursionError, a 500), the same key twice in one object (the last
silently wins, so two readers can disagree about one message), and strings with a NUL,
a lone surrogate or another character that XML 1.0 and UTF-8 cannot hold (which fail
later, deep in the envelope's serialisation). Each is refused here with its own code
and the JSON place where it was found.
"""
from __future__ import annotations

import json
import re
from typing import Any

from gateway import errors
from gateway.errors import Rejection

#: Deeper than any document we accept (a lab report is about six levels).
MAX_DEPTH = 64
#: Characters XML 1.0 forbids, and the halves of surrogate pairs that arrive alone.
_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise Rejection(errors.JSON_DUPLICATE_KEY, f"the key {key!r} appears twice in one object; "
                            "send each key once", key)
        obj[key] = value
    return obj


def _place(path: list[str | int]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path)) or "body"


def _check(value: Any) -> None:
    """Walk the parsed value without recursion: depth and characters of every key and string."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise Rejection(errors.JSON_TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels", _place(path[:MAX_DEPTH]))
        if isinstance(item, str):
            bad = _FORBIDDEN.search(item)
            if bad:
                raise Rejection(errors.INVALID_CHARACTER, f"the string holds U+{ord(bad.group()):04X}, which XML "
                                "and UTF-8 cannot carry", _place(path))
        elif isinstance(item, dict):
            for key, sub in item.items():
                bad = _FORBIDDEN.search(key)
                if bad:
                    raise Rejection(errors.INVALID_CHARACTER, f"a key holds U+{ord(bad.group()):04X}", _place(path))
                stack.append((sub, [*path, key]))
        elif isinstance(item, list):
            stack.extend((sub, [*path, i]) for i, sub in enumerate(item))


def loads(body: bytes) -> Any:
    """Parse a JSON request body or raise the Rejection that says what is wrong and where."""
    try:
        value = json.loads(body, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise Rejection(errors.JSON_TOO_DEEP, f"nested deeper than {MAX_DEPTH} levels", "body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Rejection(errors.MALFORMED_JSON, f"not valid JSON: {exc}", "body") from None
    _check(value)
    return value

"""Masking of patient data before anything reaches a log line or the audit table.

Validator messages quote the offending value, and that value may be a СНИЛС, an ЕНП,
a name or a birth date. The sender may see its own data in the error it gets back; the
operator's log and audit trail must not. But the same messages also quote what the
operator needs to act on: the element, the attribute, the schema facet and its pattern,
the XSD type, a charset, a Python type. Those are names from schemas and code, never
patient data, so they are left readable:

* a quoted token is kept when what stands before it names what it is (``Element '…'``,
  ``attribute '…'``, ``[facet '…']``, ``pattern '…'``, ``type '…'``, ``charset '…'``…),
  or what follows does (``'utf-8' codec``, ``'float' object``), or it is one of the
  builtin type names Python quotes in its errors; the members of an XSD enumeration
  (``the set {'A', 'B'}``) are the schema's values and are kept;
* every other quoted token is a value and is masked, whatever it looks like: masking
  by default keeps an unforeseen message safe;
* outside quotes, runs of seven or more digits (СНИЛС, ЕНП, policy numbers, HL7 birth
  dates ``19800101``) and calendar dates are masked; MessageIDs (UUIDs), hex digests
  and date-times (``2026-11-22T10:00:00``, a moment of the exchange, not a birthday)
  are left alone, since an operator looks messages up by them.
"""
from __future__ import annotations

import re
from collections.abc import Callable

#: What may stand right before a quoted token that is a name, not a value (lxml, libxml2, Python, ours).
_NAME_BEFORE = re.compile(
    r"(?:\b(?:[Ee]lement|[Aa]ttribute|facet|pattern|type|charset|encoding|namespace|prefix|keyref|key|unique|"
    r"[Ff]ield|[Cc]olumn|[Tt]able|[Qq]ueue|[Rr]oute|[Cc]hannel|participant|mnemonic|[Ss]egment|module|"
    r"length of|maximum length of|minimum length of|[Ll]ab|[Rr]egistry|[Oo]peration|[Ss]ervice|[Pp]ort|"
    r"[Kk]eyword|argument|[Mm]essage type|[Ss]tatus|[Cc]ode)\s*\[?)$"
)
#: What may follow a quoted token that is a name: ``'utf-8' codec``, ``'float' object``.
_NAME_AFTER = re.compile(r"^\s*(?:codec|object|is not a known|attribute)\b")
#: Names Python quotes in its own errors ("unsupported operand type(s) for +: 'float' and 'str'").
_PY_TYPES = frozenset({"int", "float", "str", "bytes", "bytearray", "bool", "dict", "list", "tuple", "set",
                       "NoneType", "object", "Decimal", "datetime", "date", "Element", "_Element"})
_QUOTED = re.compile(r"'([^'\n]*)'")
_ENUM_SET = re.compile(r"the set \{[^}]*\}")
_KEEP = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"  # a MessageID
    r"|\b[0-9a-fA-F]{32,}\b"                                                       # a digest, a fingerprint
    r"|\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"  # a date-time
)
_DIGITS = re.compile(r"\d[\d\s-]{5,}\d")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{2}\.\d{2}\.\d{4}\b")


def mask_value(value: str) -> str:
    """Keep the length and the last two characters, enough to tell two values apart."""
    if len(value) <= 2:
        return "*" * len(value)
    return "*" * (len(value) - 2) + value[-2:]


def _is_name(text: str, start: int, end: int, token: str) -> bool:
    return (token in _PY_TYPES or bool(_KEEP.fullmatch(token))
            or bool(_NAME_BEFORE.search(text[max(0, start - 40):start].rstrip(" ")))
            or bool(_NAME_AFTER.match(text[end:end + 30])))


def _outside(spans: list[tuple[int, int]], text: str, mask: Callable[[str], str]) -> str:
    """``mask`` applied to the text between the protected spans; the spans themselves stay as they are."""
    out, last = [], 0
    for start, end in spans:
        out.append(mask(text[last:start]))
        out.append(text[start:end])
        last = end
    out.append(mask(text[last:]))
    return "".join(out)


def mask_text(text: str) -> str:
    """Mask the values of patient data in a message meant for an operator; keep the names around them."""
    enums = [(m.start(), m.end()) for m in _ENUM_SET.finditer(text)]
    quoted = []
    for m in _QUOTED.finditer(text):
        if any(s <= m.start() < e for s, e in enums):
            continue
        keep = _is_name(text, m.start(), m.end(), m.group(1))
        quoted.append((m.start(), m.end(), m.group(0) if keep else "'" + mask_value(m.group(1)) + "'"))
    out, last = [], 0
    for start, end, replacement in quoted:
        out.append(text[last:start])
        out.append(replacement)
        last = end
    out.append(text[last:])
    text = "".join(out)
    protected = sorted([(m.start(), m.end()) for m in _ENUM_SET.finditer(text)]
                       + [(m.start(), m.end()) for m in _KEEP.finditer(text)])
    merged: list[tuple[int, int]] = []
    for start, end in protected:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    def digits_and_dates(part: str) -> str:
        return _DATE.sub("****-**-**", _DIGITS.sub(lambda m: mask_value(m.group(0)), part))

    return _outside(merged, text, digits_and_dates)

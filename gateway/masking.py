"""Masking of patient data before anything reaches a log line or the audit table.

Validator messages quote the offending value, and that value may be a СНИЛС, an ЕНП
or a birth date. The sender may see its own data in the error it gets back; the
operator's log and audit trail must not.
"""
from __future__ import annotations

import re

_QUOTED = re.compile(r"'([^']*)'")
_DIGITS = re.compile(r"\d[\d\s-]{5,}\d")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b\d{2}\.\d{2}\.\d{4}\b")


def mask_value(value: str) -> str:
    """Keep the length and the last two characters, enough to tell two values apart."""
    if len(value) <= 2:
        return "*" * len(value)
    return "*" * (len(value) - 2) + value[-2:]


def mask_text(text: str) -> str:
    """Mask quoted values, long digit runs (СНИЛС, ЕНП, policy numbers) and dates."""
    text = _QUOTED.sub(lambda m: "'" + mask_value(m.group(1)) + "'", text)
    text = _DIGITS.sub(lambda m: mask_value(m.group(0)), text)
    return _DATE.sub("****-**-**", text)

"""Check digits of Russian identifiers the payloads carry (research/formats.md §5).

A mistyped СНИЛС found at the gateway is a NAK the lab can fix today; found at the
MIS, it is a result filed under nobody, or under somebody else.
"""
from __future__ import annotations


def snils_valid(value: str) -> bool:
    """11 digits; numbers up to 001-001-998 carry no check (the ПФР rule)."""
    if len(value) != 11 or not value.isdigit():
        return False
    body, check = value[:9], int(value[9:])
    if int(body) <= 1001998:
        return True
    total = sum(int(d) * w for d, w in zip(body, range(9, 0, -1)))
    return (total % 101) % 100 == check


def enp_valid(value: str) -> bool:
    """16 digits, Luhn mod 10 (the ФФОМС algorithm reduces to it)."""
    if len(value) != 16 or not value.isdigit():
        return False
    total = 0
    for i, d in enumerate(reversed(value)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def ogrn_valid(value: str) -> bool:
    """ОГРН: 13 digits, the last = (the first 12 as a number mod 11) mod 10."""
    if len(value) != 13 or not value.isdigit():
        return False
    return int(value[:12]) % 11 % 10 == int(value[12])

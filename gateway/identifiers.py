"""Check digits of Russian identifiers the payloads carry (research/formats.md §5).

A mistyped СНИЛС found at the gateway is a NAK the lab can fix today; found at the
MIS, it is a result filed under nobody, or under somebody else. The same holds for an
organisation's ОГРН or ИНН sent to ФРМО: a typo found here is a precise refusal, found
there it is a "not found" that looks like an unregistered clinic.

Leading digits matter as much as the check digit: the first digit of a state
registration number says what it registers (Правила ведения ЕГРЮЛ, постановление
Правительства РФ от 19.06.2002 № 438, п. 8: 1 or 5 for an ОГРН, 2, 6–9 for other
record numbers; Правила ведения ЕГРИП, от 16.10.2003 № 630: 3 for an ОГРНИП, 4 for
other record numbers). A number with the right check digit and a leading 0 or 2 is
not an ОГРН, whatever its arithmetic says.
"""
from __future__ import annotations

_INN10_WEIGHTS = (2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN11_WEIGHTS = (7, 2, 4, 10, 3, 5, 9, 4, 6, 8)
_INN12_WEIGHTS = (3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)


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
    """ОГРН of a legal entity: 13 digits, first 1 or 5, last = (the first 12 mod 11) mod 10."""
    if len(value) != 13 or not value.isdigit() or value[0] not in "15":
        return False
    return int(value[:12]) % 11 % 10 == int(value[12])


def ogrnip_valid(value: str) -> bool:
    """ОГРНИП of an individual entrepreneur: 15 digits, first 3, last = (the first 14 mod 13) mod 10.

    The final ``mod 10`` matters for remainders 10–12 (python-stdnum 2.2 omits it and
    refuses valid numbers; research/formats.md §5.3).
    """
    if len(value) != 15 or not value.isdigit() or value[0] != "3":
        return False
    return int(value[:14]) % 13 % 10 == int(value[14])


def registration_number_valid(value: str) -> bool:
    """An organisation's state registration number: an ОГРН (13 digits) or an ОГРНИП (15).

    ФРМО registers private practitioners too, and they have an ОГРНИП, not an ОГРН.
    """
    return ogrn_valid(value) if len(value) == 13 else ogrnip_valid(value)


def inn_valid(value: str) -> bool:
    """ИНН: 10 digits (organisation) with one check digit, 12 (individual) with two.

    Each check digit is (Σ dᵢ·wᵢ mod 11) mod 10 over the digits before it. The first two
    digits are the code of the tax office's region, so ``00`` is no ИНН.
    """
    if len(value) not in (10, 12) or not value.isdigit() or value.startswith("00"):
        return False
    digits = [int(d) for d in value]

    def check(weights: tuple[int, ...]) -> int:
        return sum(d * w for d, w in zip(digits, weights)) % 11 % 10

    if len(value) == 10:
        return check(_INN10_WEIGHTS) == digits[9]
    return check(_INN11_WEIGHTS) == digits[10] and check(_INN12_WEIGHTS) == digits[11]

"""Just enough DER to write an RFC 3161 request and read the fields of its answer.

A timestamp request is five fields and the answer's TSTInfo a handful more; the
signature over them is checked by libcrypto (``signing.timestamps``). A general ASN.1
library would be a dependency for forty lines of tag-length-value, so these are here,
strict: a length that runs past its container, or an indefinite length (which DER
forbids), is refused rather than guessed at.
"""
from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from zdravlink.errors import SigningError

INTEGER, OCTET_STRING, NULL, OID, SEQUENCE = 0x02, 0x04, 0x05, 0x06, 0x30
BOOLEAN, GENERALIZED_TIME = 0x01, 0x18


class DerError(SigningError):
    """Bytes that are not the DER structure they should be."""


class Tlv(NamedTuple):
    tag: int
    value: bytes
    #: The whole element (tag, length and value) as it came: what a signature or a digest covers.
    raw: bytes


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _length(len(value)) + value


def sequence(*items: bytes) -> bytes:
    return encode(SEQUENCE, b"".join(items))


def integer(n: int) -> bytes:
    body = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    return encode(INTEGER, body)


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body.extend(reversed(chunk))
    return encode(OID, bytes(body))


def read(data: bytes, pos: int = 0) -> tuple[Tlv, int]:
    """The element at ``pos`` and the position after it."""
    if pos + 2 > len(data):
        raise DerError("truncated: no room for a tag and a length")
    start = pos
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise DerError("a length DER does not allow (indefinite, or longer than the data)")
        size = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        size = first
    end = pos + size
    if end > len(data):
        raise DerError(f"an element of {size} bytes runs past the end of its container")
    return Tlv(tag, data[pos:end], data[start:end]), end


def children(value: bytes) -> list[Tlv]:
    """The elements inside a constructed value (a SEQUENCE's fields), in order."""
    out, pos = [], 0
    while pos < len(value):
        tlv, pos = read(value, pos)
        out.append(tlv)
    return out


def one(data: bytes, tag: int) -> Tlv:
    """``data`` is exactly one element with this tag."""
    tlv, end = read(data)
    if tlv.tag != tag or end != len(data):
        raise DerError(f"expected one element of tag 0x{tag:02x}, got 0x{tlv.tag:02x} ({end} of {len(data)} bytes)")
    return tlv


def as_int(tlv: Tlv) -> int:
    if tlv.tag != INTEGER:
        raise DerError(f"expected an INTEGER, got tag 0x{tlv.tag:02x}")
    return int.from_bytes(tlv.value, "big", signed=True)


def as_oid(tlv: Tlv) -> str:
    if tlv.tag != OID or not tlv.value:
        raise DerError(f"expected an OBJECT IDENTIFIER, got tag 0x{tlv.tag:02x}")
    first = tlv.value[0]
    parts = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    n = 0
    for byte in tlv.value[1:]:
        n = (n << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(n)
            n = 0
    return ".".join(map(str, parts))


def as_time(tlv: Tlv) -> dt.datetime:
    """A GeneralizedTime in UTC (``YYYYMMDDHHMMSS[.fff]Z``), as RFC 3161 requires genTime to be."""
    if tlv.tag != GENERALIZED_TIME:
        raise DerError(f"expected a GeneralizedTime, got tag 0x{tlv.tag:02x}")
    text = tlv.value.decode("ascii")
    if not text.endswith("Z"):
        raise DerError(f"a GeneralizedTime not in UTC: {text!r}")
    whole, _, fraction = text[:-1].partition(".")
    try:
        stamp = dt.datetime.strptime(whole, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    except ValueError:
        raise DerError(f"not a GeneralizedTime: {text!r}") from None
    if fraction:
        stamp += dt.timedelta(microseconds=round(float(f"0.{fraction}") * 1_000_000))
    return stamp

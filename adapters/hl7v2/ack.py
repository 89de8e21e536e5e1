"""HL7 v2 acknowledgements (original mode) and the tolerant reading they depend on.

python-hl7 parses the messages and serialises the ACK, but the ACK's segments are
filled here rather than by ``hl7.Message.create_ack``, because that method:

* raises on real messages: ``TypeError`` when MSH-9 has no trigger component
  (``ORU``), ``IndexError`` when MSH stops before MSH-12;
* stamps MSH-7 in UTC without an offset, and an HL7 timestamp without an offset
  is read as the receiver's local time;
* drops MSH-18, so the partner cannot tell which character set the ACK is in;
* builds no ERR segment.

Its escaping (``hl7.util.escape``) is not used either: it rewrites every non-ASCII
character as ``\\X<code point>\\``, which garbles a Cyrillic or Polish reason that the
message's own character set carries as it is. Our own words that the character set
cannot carry are transliterated instead (``ack_text``), never turned into ``?``.

An ACK always answers in the sender's character set and with the sender's delimiters,
and copies the sender's fields (MSH-3..6, MSH-10, MSH-11/12, MSH-18) as raw text, escape
sequences included, so that the sender matches them byte for byte.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import hl7
from hl7.util import generate_message_control_id

from adapters.hl7v2.ack_text import fit
from zdravlink.errors import RefusedError

#: HL7 table 0357 (message error condition codes), v2.5 texts; 104 is from v2.7.
ERROR_CODES = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

#: HL7 table 0008; the C* codes are enhanced mode's commit acknowledgements.
ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")

#: HL7 table 0211 values (and the Windows code page names labs use instead) whose
#: encodings keep ASCII bytes single, so that MLLP framing and delimiters stay intact.
_CHARSETS = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "ISO IR100": "latin-1",
    "8859/1": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(2, 10)},
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    **{f"WINDOWS-125{n}": f"cp125{n}" for n in range(9)},
    **{f"CP125{n}": f"cp125{n}" for n in range(9)},
    "KOI8-R": "koi8-r",
}

_BOM = "\ufeff"
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")


@dataclass(frozen=True)
class AckError:
    """One ERR segment: where the problem is, its table 0357 code, and words for a person.

    ``segment`` empty means the error has no location (an internal error), and
    ``field`` 0 points at the whole segment (e.g. a missing or misplaced one).
    """

    segment: str
    sequence: int
    field: int
    component: int | None
    code: str
    reason: str
    severity: Literal["E", "W"] = "E"

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"{self.code!r} is not an HL7 table 0357 error code")
        if self.severity not in ("E", "W"):
            raise ValueError(f"severity must be E or W, not {self.severity!r}")
        if self.segment and not _SEGMENT_ID.match(self.segment):
            raise ValueError(f"{self.segment!r} is not a segment ID")


class Hl7Rejected(RefusedError, ValueError):
    """The message cannot be read as HL7 at all; ``error`` is what the AR's ERR says."""

    def __init__(self, error: AckError) -> None:
        super().__init__(error.reason)
        self.error = error

    @property
    def reason(self) -> str:
        return self.error.reason


class UnknownCharset(Hl7Rejected):
    """MSH-18 names a character set this gateway cannot decode."""

    def __init__(self, name: str) -> None:
        super().__init__(AckError("MSH", 1, 18, None, "103", f"unknown character set in MSH-18: {name!r}"))
        self.name = name


class Hl7ParseError(Hl7Rejected):
    """The text is not an HL7 message (no MSH first, unusable delimiters, bad bytes)."""

    def __init__(self, reason: str, code: str = "102") -> None:
        super().__init__(AckError("", 0, 0, None, code, reason))


def charset_of(message: bytes, default: str = "utf-8") -> str:
    """The Python codec for the message's MSH-18, read from the raw bytes.

    It has to be read before decoding, and works because every supported character
    set keeps the ASCII MSH delimiters as single bytes. Only the first repetition
    counts: further ones name ISO 2022 alternates, which a decoder does not switch
    to. Without a readable MSH the default is returned, and ``parse`` says why.
    """
    header = message.removeprefix(_BOM.encode()).lstrip()
    header = re.split(rb"[\r\n]", header, maxsplit=1)[0]
    if not header.startswith(b"MSH") or len(header) < 8:
        return default
    field_sep = header[3:4]
    fields = header.split(field_sep)
    if len(fields) < 18:
        return default
    repetition_sep = fields[1][1:2] or b"~"
    name = fields[17].split(repetition_sep)[0].decode("latin-1").strip()
    if not name:
        return default
    codec = _CHARSETS.get(" ".join(name.upper().split()))
    if codec is None:
        raise UnknownCharset(name)
    return codec


def decode(message: bytes, charset: str) -> str:
    """The message as text, its segments separated by CR only, ending in one CR.

    A CRLF always separates segments. A lone LF does so only where a segment ID and
    the field separator follow it (or at the very end): some senders end segments
    with LF, but others put LF inside a report text, which must stay in its field.
    """
    try:
        text = message.decode(charset)
    except UnicodeDecodeError as exc:
        raise Hl7ParseError(f"byte {exc.start} is not valid {charset}") from None
    text = text.lstrip(_BOM + " \t\r\n")
    text = text.replace("\r\n", "\r")
    if text.startswith("MSH") and len(text) > 3:
        text = re.sub(r"\n(?=[A-Z][A-Z0-9]{2}" + re.escape(text[3]) + ")", "\r", text)
    segments = [s.rstrip("\n") for s in text.split("\r") if s.strip()]
    return "\r".join(segments) + "\r"


def parse(text: str) -> hl7.Message:
    """A tolerant python-hl7 parse, after the checks python-hl7 does not make.

    python-hl7 accepts any text starting with ``MSH`` and takes whatever follows as
    delimiters; a frame holding two messages would silently become one.
    """
    if not text.startswith("MSH"):
        raise Hl7ParseError("the message does not begin with an MSH segment", "100")
    field_sep = text[3:4]
    end = text.find(field_sep, 4) if field_sep else -1
    encoding = text[4:end] if end > 0 else ""
    delimiters = field_sep + encoding
    if (
        len(encoding) not in (4, 5)  # v2.7 adds a truncation character
        or len(set(delimiters)) != len(delimiters)
        or any(c.isalnum() or c.isspace() for c in delimiters)
    ):
        raise Hl7ParseError("MSH-1/MSH-2 do not hold a usable set of delimiters")
    if "\rMSH" + field_sep in text:
        raise Hl7ParseError("more than one MSH segment in one message", "100")
    try:
        return hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted types, and their text quotes data
        raise Hl7ParseError(f"python-hl7 cannot parse it ({type(exc).__name__})") from None


def ack(
    message: bytes,
    code: str,
    errors: Sequence[AckError] = (),
    text: str | None = None,
    *,
    charset: str,
) -> bytes:
    """The original-mode ACK (MSH, MSA, one ERR per error) for a readable message.

    Raises ``Hl7ParseError`` when the message cannot be parsed; ``ack_for_unparseable``
    is for that case.
    """
    return _build(parse(decode(message, charset)), code, errors, text, charset)


def ack_to(
    original: hl7.Message,
    code: str,
    errors: Sequence[AckError] = (),
    text: str | None = None,
    *,
    charset: str,
) -> bytes:
    """``ack`` for a message already parsed: python-hl7 takes milliseconds per message, not worth twice."""
    return _build(original, code, errors, text, charset)


def ack_for_unparseable(raw: bytes, error: AckError | None = None) -> bytes:
    """An AR for a message that could not be read in full.

    If at least its MSH segment splits into fields, the AR is addressed to the sender
    and MSA-2 carries its MSH-10: a sender that sees its control ID rejected stops
    resending. The MSH is read as Latin-1, which maps bytes one to one, so whatever
    the real character set, the copied fields go back as the same bytes. When not
    even MSH is readable, MSA-2 is empty.
    """
    error = error or AckError("", 0, 0, None, "100", "the message is not readable as HL7")
    header = raw.removeprefix(_BOM.encode()).lstrip()
    header = re.split(rb"[\r\n]", header, maxsplit=1)[0]
    try:
        msh = parse(header.decode("latin-1") + "\r")
    except Hl7ParseError:
        msh = hl7.parse("MSH|^~\\&|||||||||P|2.5\r")
    return _build(msh, "AR", [error], None, "latin-1")


def ack_for_error(message: bytes, exc: Exception) -> bytes:
    """The ``on_error`` fallback of ``MllpServer``: an AR for a message its handler failed on.

    The ERR names the reason only when the message itself is at fault; an internal
    failure is reported as table 0357 code 207 without details, which are for our log.
    """
    if isinstance(exc, Hl7Rejected):
        return ack_for_unparseable(message, exc.error)
    internal = AckError("", 0, 0, None, "207", "the message could not be processed")
    try:
        return ack(message, "AR", [internal], charset=charset_of(message))
    except Hl7Rejected:
        return ack_for_unparseable(message, internal)


def _raw(segment: hl7.Segment, field: int) -> str:
    """A field as it was sent, escape sequences included, or '' when absent."""
    return str(segment(field)) if field < len(segment) else ""


def _version(msh: hl7.Segment, component_sep: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in _raw(msh, 12).split(component_sep)[0].split("."))
    except ValueError:
        return ()


def _build(
    original: hl7.Message,
    code: str,
    errors: Sequence[AckError],
    text: str | None,
    charset: str,
) -> bytes:
    if code not in ACK_CODES:
        raise ValueError(f"{code!r} is not an HL7 table 0008 acknowledgement code")
    _, field_sep, rep_sep, comp_sep, _ = original.separators
    source = original.segment("MSH")
    trigger = _raw(source, 9).split(rep_sep)[0].split(comp_sep)[1:2]
    msh = _segment(
        original, "MSH", field_sep, _raw(source, 2),
        _raw(source, 5), _raw(source, 6), _raw(source, 3), _raw(source, 4),
        datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z"), "",
        comp_sep.join(["ACK", trigger[0] if trigger else "", "ACK"]),
        generate_message_control_id(),
        _raw(source, 11), _raw(source, 12), "", "", "", "", "", _raw(source, 18),
    )
    while msh[-1] == [""]:  # MSH-18 is often empty: no run of trailing field separators
        msh.pop()
    fitted = fit(text, charset) if text else ""
    msa = _segment(original, "MSA", code, _raw(source, 10), *([_escape(fitted, original)] if fitted else []))
    # Before v2.5 the ERR segment had ERR-1 only; older receivers look nowhere else.
    legacy = _version(source, comp_sep) < (2, 5)
    errs = [_err(error, original, legacy, charset) for error in errors]
    ack_message = original.create_message([msh, msa, *errs])
    # The sender's fields came in this charset and our texts were fitted to it; "replace"
    # is only a last guard, so that no encoding slip can cost the lab its ACK.
    return str(ack_message).encode(charset, errors="replace")


def _segment(original: hl7.Message, *fields: str) -> hl7.Segment:
    """A segment in the original's delimiters; each field is raw, already escaped, text."""
    return original.create_segment([original.create_field([f]) for f in fields])


def _err(error: AckError, original: hl7.Message, legacy: bool, charset: str) -> hl7.Segment:
    """ERR-2 (v2.5 ERL ``SEG^seq^field^rep^comp``), ERR-3, ERR-4, ERR-8; ERR-1 if ``legacy``."""
    _, _, _, comp_sep, sub_sep = original.separators
    place: list[str] = []
    if error.segment:
        place = [error.segment, str(error.sequence)]
        if error.field:
            place.append(str(error.field))
            if error.component is not None:
                place += ["1", str(error.component)]  # ERL-4, the field repetition, comes first
    cause = [error.code, _escape(ERROR_CODES[error.code], original), "HL70357"]
    eld = ""
    if legacy:  # ELD: SEG^seq^field^code&text&table, the code a CE inside one component
        eld = comp_sep.join([*[*place, "", "", ""][:3], sub_sep.join(cause)])
    return _segment(
        original, "ERR", eld, comp_sep.join(place), comp_sep.join(cause), error.severity,
        "", "", "", _escape(fit(error.reason, charset), original),
    )


def _escape(text: str, original: hl7.Message) -> str:
    """Text safe in a field: the message's own delimiters as HL7 escape sequences.

    CR and LF would end the segment, so they go as hex escapes; any other character
    is left for the character set to carry.
    """
    esc = original.esc
    _, field_sep, rep_sep, comp_sep, sub_sep = original.separators
    names = {field_sep: "F", comp_sep: "S", rep_sep: "R", esc: "E", sub_sep: "T", "\r": "X0D", "\n": "X0A"}
    return "".join(esc + names[c] + esc if c in names else c for c in text)

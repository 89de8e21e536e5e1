"""MLLP framing (FrameReader) and HL7 ACK building, without sockets.

The ACK tests live here too: they need no network, and the brief for this module
allowed no separate file for them.
"""
from __future__ import annotations

from datetime import datetime

import hl7
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.hl7v2.ack import (
    AckError,
    Hl7ParseError,
    UnknownCharset,
    ack,
    ack_for_error,
    ack_for_unparseable,
    charset_of,
    decode,
    parse,
)
from adapters.hl7v2.mllp import CR, END, START, FrameReader, FrameTooLarge, frame

M1 = b"MSH|^~\\&|LAB|L1|GW|G1|20240102030405||ORU^R01|A1|P|2.5\rPID|1||123\r"
M2 = b"MSH|^~\\&|LAB|L1|GW|G1|20240102030406||ORU^R01|A2|P|2.5\rOBX|1|NM|GLU||5,4\r"


def feed_all(reader: FrameReader, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out += reader.feed(piece)
    return out


# --- FrameReader -------------------------------------------------------------------------

def test_frame_wraps_in_start_and_end_bytes():
    assert frame(b"abc") == b"\x0babc\x1c\x0d"
    assert (START, END, CR) == (b"\x0b", b"\x1c", b"\x0d")


def test_two_frames_fed_byte_by_byte():
    data = frame(M1) + frame(M2)
    reader = FrameReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i:i + 1])
        if i < len(frame(M1)) - 1:
            assert got == []  # nothing comes out before the 0x0D that ends the frame
    assert got == [M1, M2]
    assert reader.discarded == 0


def test_two_frames_cut_at_every_position():
    data = frame(M1) + frame(M2)
    for cut in range(len(data) + 1):
        reader = FrameReader()
        assert feed_all(reader, [data[:cut], data[cut:]]) == [M1, M2], cut
        assert reader.discarded == 0


def test_two_frames_cut_at_every_pair_of_positions():
    data = frame(b"MSH|a\r") + frame(b"MSH|bc\r")
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            got = feed_all(FrameReader(), [data[:i], data[i:j], data[j:]])
            assert got == [b"MSH|a\r", b"MSH|bc\r"], (i, j)


def test_end_pair_split_between_0x1c_and_0x0d():
    reader = FrameReader()
    assert reader.feed(START + M1 + END) == []
    assert reader.feed(CR) == [M1]
    assert reader.feed(START + M2 + END) == []
    assert reader.feed(CR + START + b"MSH|x") == [M2]


def test_two_messages_in_one_write():
    assert FrameReader().feed(frame(M1) + frame(M2)) == [M1, M2]


def test_stray_bytes_between_frames_are_discarded_and_counted():
    junk = b"\x00\n\r\n garbage \x00"
    reader = FrameReader()
    got = reader.feed(b"\n" + frame(M1) + junk + frame(M2) + b"\n")
    assert got == [M1, M2]
    assert reader.discarded == 1 + len(junk) + 1
    assert reader.abandoned == 0


def test_a_lone_0x1c_inside_a_frame_is_content():
    body = b"MSH|a\x1cb\r"
    reader = FrameReader()
    assert feed_all(reader, [START + b"MSH|a" + END, b"b\r" + END + CR]) == [body]


@pytest.mark.parametrize("size", [4097, 64 * 1024 + 5])
def test_a_frame_larger_than_a_read(size: int):
    body = b"MSH|" + bytes(65 + i % 26 for i in range(size - 4))
    data = frame(body) + frame(M1)
    reader = FrameReader()
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    assert feed_all(reader, chunks) == [body, M1]
    assert FrameReader().feed(data) == [body, M1]


def test_max_frame_size_is_inclusive():
    body = b"x" * 100
    assert FrameReader(max_frame_bytes=100).feed(frame(body)) == [body]
    with pytest.raises(FrameTooLarge):
        FrameReader(max_frame_bytes=99).feed(frame(body))


def test_max_frame_size_enforced_before_the_end_arrives():
    reader = FrameReader(max_frame_bytes=1000)
    assert reader.feed(START + b"y" * 600) == []
    with pytest.raises(FrameTooLarge):
        reader.feed(b"y" * 600)


def test_the_end_pair_counts_not_against_the_limit_when_split():
    # 100 content bytes then 0x1C at the end of a read: still within a 100-byte limit.
    reader = FrameReader(max_frame_bytes=100)
    assert reader.feed(START + b"z" * 100 + END) == []
    assert reader.feed(CR) == [b"z" * 100]


def test_a_new_start_inside_an_unfinished_frame_restarts():
    reader = FrameReader()
    got = reader.feed(START + b"MSH|broken" + START + M1 + END + CR)
    assert got == [M1]
    assert reader.abandoned == 1
    assert reader.discarded == len(b"MSH|broken")


def test_a_new_start_in_a_later_read_restarts_too():
    reader = FrameReader()
    assert reader.feed(START + b"MSH|half") == []
    assert reader.feed(b"-more" + START + M2[:10]) == []
    assert reader.feed(M2[10:] + END + CR) == [M2]
    assert (reader.abandoned, reader.discarded) == (1, len(b"MSH|half-more"))


_body = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in (0x0B, 0x1C)))


@given(bodies=st.lists(_body, min_size=1, max_size=4), cuts=st.lists(st.integers(0, 400), max_size=6))
def test_any_chunking_gives_the_same_messages(bodies: list[bytes], cuts: list[int]):
    data = b"".join(frame(b) for b in bodies)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    assert feed_all(FrameReader(), pieces) == bodies


# --- charset, decode, parse ---------------------------------------------------------------

def _with_msh18(value: str) -> bytes:
    return f"MSH|^~\\&|A|B|C|D|2024||ORU^R01|9|P|2.5||||||{value}\rPID|1\r".encode("ascii")


@pytest.mark.parametrize("value, codec", [
    ("8859/1", "latin-1"), ("8859/5", "iso8859-5"), ("8859/2", "iso8859-2"),
    ("UNICODE UTF-8", "utf-8"), ("UTF-8", "utf-8"), ("unicode  utf-8", "utf-8"),
    ("windows-1250", "cp1250"), ("WINDOWS-1251", "cp1251"), ("CP1251", "cp1251"),
    ("ASCII", "ascii"), ("8859/5~ISO IR87", "iso8859-5"),
])
def test_charset_of_maps_msh18(value: str, codec: str):
    assert charset_of(_with_msh18(value)) == codec


def test_charset_of_empty_msh18_gives_the_callers_default():
    assert charset_of(_with_msh18("")) == "utf-8"
    assert charset_of(_with_msh18(""), default="cp1251") == "cp1251"
    assert charset_of(M1, default="cp1251") == "cp1251"  # MSH stops before MSH-18
    assert charset_of(b"MSH\r|||||||||||||||||||||") == "utf-8"  # no field separator
    assert charset_of(b"PID|1\r") == "utf-8"


def test_charset_of_unknown_value_names_it():
    with pytest.raises(UnknownCharset) as info:
        charset_of(_with_msh18("EBCDIC-XYZ"))
    assert "EBCDIC-XYZ" in str(info.value)
    assert info.value.name == "EBCDIC-XYZ"
    assert (info.value.error.segment, info.value.error.field, info.value.error.code) == ("MSH", 18, "103")


def test_decode_normalises_segment_separators():
    crlf = M1.replace(b"\r", b"\r\n")
    lf = M1.replace(b"\r", b"\n")
    trailing_lf = M1[:-1] + b"\n"
    for raw in (M1, crlf, lf, trailing_lf, b"\n" + M1 + b"\r\n\r\n"):
        assert decode(raw, "ascii") == M1.decode(), raw


def test_decode_keeps_an_lf_inside_a_field():
    raw = b"MSH|^~\\&|A|B|C|D|2024||ORU^R01|9|P|2.5\rOBX|1|TX|X||line one\nline two|\r"
    text = decode(raw, "ascii")
    assert text.split("\r")[1] == "OBX|1|TX|X||line one\nline two|"
    assert parse(text).segment("OBX")(5)[0] == "line one\nline two"


def test_decode_rejects_bytes_invalid_in_the_charset():
    with pytest.raises(Hl7ParseError, match="byte 7 is not valid utf-8"):
        decode(b"MSH|^~\\\xff", "utf-8")


@pytest.mark.parametrize("text, reason", [
    ("PID|1\rMSH|^~\\&|A\r", "does not begin with an MSH"),
    ("hello world", "does not begin with an MSH"),
    ("MSH|^~\\&", "delimiters"),
    ("MSH|^~|A|B\r", "delimiters"),
    ("MSH|^^\\&|A|B\r", "delimiters"),
    ("MSH|ab&\\|A|B\r", "delimiters"),
    ("MSH|^~\\&|A|B\rMSH|^~\\&|C|D\r", "more than one MSH"),
])
def test_parse_says_why_the_text_is_not_hl7(text: str, reason: str):
    with pytest.raises(Hl7ParseError, match=reason):
        parse(text)


def test_parse_returns_a_python_hl7_message():
    message = parse(decode(M2, "ascii"))
    assert isinstance(message, hl7.Message)
    assert str(message["OBX.F5"]) == "5,4"


# --- ACK -------------------------------------------------------------------------------------

def _segments(raw: bytes, charset: str = "ascii") -> hl7.Message:
    return hl7.parse(raw.decode(charset))


def test_ae_with_two_errors():
    original = (
        b"MSH|^~\\&|LIS^1.2.3^ISO|Lab Fac|ZDRAV|GW Fac|20240102030405+0300||ORU^R01^ORU_R01|CTRL-77|P^T|2.5.1\r"
        b"PID|1||123\rOBR|1\rOBX|1|NM|GLU\rOBX|2|NM|K\rOBX|3|NM|NA||abc\r"
    )
    errors = [
        AckError("OBX", 3, 5, None, "102", "not a number: a|b^c~d\\e&f"),
        AckError("PID", 1, 3, None, "101", "patient identifier missing", "W"),
    ]
    before = datetime.now().astimezone().strftime("%Y%m%d%H%M")
    reply = ack(original, "AE", errors, "see ERR", charset="ascii")
    assert reply.endswith(b"\r") and b"\n" not in reply
    message = _segments(reply)
    assert [str(s[0]) for s in message] == ["MSH", "MSA", "ERR", "ERR"]
    msh = message.segment("MSH")
    assert str(msh(3)) == "ZDRAV" and str(msh(4)) == "GW Fac"
    assert str(msh(5)) == "LIS^1.2.3^ISO" and str(msh(6)) == "Lab Fac"
    assert str(msh(7))[:12] >= before and len(str(msh(7))) == 19  # YYYYMMDDHHMMSS+ZZZZ
    assert str(msh(9)) == "ACK^R01^ACK"
    assert str(msh(10)) not in ("", "CTRL-77")
    assert str(msh(11)) == "P^T" and str(msh(12)) == "2.5.1"
    msa = message.segment("MSA")
    assert (str(msa(1)), str(msa(2)), str(msa(3))) == ("AE", "CTRL-77", "see ERR")
    first, second = message.segments("ERR")
    assert str(first(1)) == ""  # ERR-1 is for receivers before v2.5 only
    assert str(first(2)) == "OBX^3^5"
    assert str(first(3)) == "102^Data type error^HL70357"
    assert str(first(4)) == "E"
    assert str(first(8)) == "not a number: a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert message.unescape(str(first(8))) == "not a number: a|b^c~d\\e&f"
    assert str(second(2)) == "PID^1^3"
    assert str(second(3)) == "101^Required field missing^HL70357"
    assert str(second(4)) == "W"
    # Two ACKs of one message differ in their own control ID only.
    assert str(_segments(ack(original, "AE", errors, charset="ascii"))["MSH.F10"]) != str(msh(10))


def test_err_location_with_a_component_names_the_repetition_first():
    reply = ack(M1, "AE", [AckError("PID", 1, 5, 2, "101", "given name missing")], charset="ascii")
    assert str(_segments(reply).segment("ERR")(2)) == "PID^1^5^1^2"


def test_err_without_location_and_segment_level():
    reply = ack(M1, "AR", [AckError("", 0, 0, None, "207", "boom"), AckError("OBR", 1, 0, None, "100", "no OBR")],
                charset="ascii")
    first, second = _segments(reply).segments("ERR")
    assert str(first(2)) == "" and str(first(3)) == "207^Application internal error^HL70357"
    assert str(second(2)) == "OBR^1"


def test_aa_has_msh_and_msa_only_and_no_trailing_empty_fields():
    reply = ack(M1, "AA", charset="ascii")
    lines = reply.split(b"\r")
    assert lines[0].endswith(b"|P|2.5")
    assert lines[1] == b"MSA|AA|A1"
    assert lines[2:] == [b""]


def test_pre_v25_receivers_also_get_err1():
    old = M1.replace(b"|2.5\r", b"|2.3.1\r")
    err = _segments(ack(old, "AE", [AckError("OBX", 2, 5, 1, "102", "bad")], charset="ascii")).segment("ERR")
    assert str(err(1)) == "OBX^2^5^102&Data type error&HL70357"
    assert str(err(2)) == "OBX^2^5^1^1"


def test_ack_uses_the_senders_delimiters():
    odd = b"MSH$!*#@$LAB$L1$GW$G1$2024$$ORU!R01$Q9$P$2.5\rPID$1\r"
    reply = ack(odd, "AE", [AckError("PID", 1, 3, None, "101", "x$y!z")], charset="ascii")
    lines = reply.split(b"\r")
    assert lines[0].startswith(b"MSH$!*#@$GW$G1$LAB$L1$")
    assert b"$ACK!R01!ACK$" in lines[0]
    assert lines[1] == b"MSA$AE$Q9"
    assert lines[2] == b"ERR$$PID!1!3$101!Required field missing!HL70357$E$$$$x#F#y#S#z"


def test_ack_copies_msh18_and_answers_in_that_charset():
    raw = "MSH|^~\\&|LIS|Łódź|GW|Gdańsk|2024||ORU^R01|PL1|P|2.5||||||WINDOWS-1250\rPID|1\r".encode("cp1250")
    reply = ack(raw, "AE", [AckError("PID", 1, 5, None, "101", "brak nazwiska: Żółć")], charset=charset_of(raw))
    message = _segments(reply, "cp1250")
    msh = message.segment("MSH")
    assert str(msh(4)) == "Gdańsk" and str(msh(6)) == "Łódź" and str(msh(18)) == "WINDOWS-1250"
    assert str(message.segment("ERR")(8)) == "brak nazwiska: Żółć"
    assert "Żółć".encode("cp1250") in reply
    with pytest.raises(UnicodeDecodeError):
        reply.decode("utf-8")



@pytest.mark.parametrize("label,codec,expected", [
    ("WINDOWS-1250", "cp1250", "SNILS fails its check digits; «ENP» — Shchelkovo"),  # cp1250 has « » and —
    ("8859/1", "latin-1", "SNILS fails its check digits; «ENP» - Shchelkovo"),
    ("ASCII", "ascii", 'SNILS fails its check digits; "ENP" - Shchelkovo'),
])
def test_our_cyrillic_reason_is_transliterated_for_a_sender_whose_charset_lacks_it(label, codec, expected):
    raw = f"MSH|^~\\&|LIS|LAB|GW|G|2024||ORU^R01|PL2|P|2.5||||||{label}\rPID|1\r".encode(codec)
    reason = "PATIENT_ID_INVALID: СНИЛС fails its check digits; «ЕНП» — Щёлково"
    reply = ack(raw, "AE", [AckError("PID", 1, 3, None, "102", reason)], charset=charset_of(raw))
    assert b"?" not in reply
    text = str(_segments(reply, codec).segment("ERR")(8))
    assert text == "PATIENT_ID_INVALID: " + expected


def test_a_reason_that_cannot_be_transliterated_falls_back_to_its_code():
    raw = b"MSH|^~\\&|LIS|LAB|GW|G|2024||ORU^R01|PL3|P|2.5||||||ASCII\rPID|1\r"
    reply = ack(raw, "AE", [AckError("OBX", 1, 5, None, "102", "VALUE_INVALID: 血糖 is not a number")],
                text="結果", charset="ascii")
    message = _segments(reply, "ascii")
    assert b"?" not in reply
    assert str(message.segment("ERR")(8)) == "VALUE_INVALID" and len(message.segment("MSA")) == 3


def test_what_fits_is_left_alone_letter_by_letter():
    from adapters.hl7v2.ack_text import fit

    assert fit("Łódź: СНИЛС", "cp1250") == "Łódź: SNILS"
    assert fit("café «Ёж» ЖЭК", "latin-1") == "café «Ezh» ZHEK"
    assert fit("Гемоглобин", "utf-8") == "Гемоглобин"

def test_ack_rejects_codes_outside_the_tables():
    with pytest.raises(ValueError, match="0008"):
        ack(M1, "OK", charset="ascii")
    with pytest.raises(ValueError, match="0357"):
        AckError("PID", 1, 3, None, "999", "x")
    with pytest.raises(ValueError, match="severity"):
        AckError("PID", 1, 3, None, "101", "x", "X")  # type: ignore[arg-type]


def test_ack_of_msh9_without_trigger_and_short_msh():
    # python-hl7's own create_ack raises on both; these are real-world shapes.
    reply = _segments(ack(b"MSH|^~\\&|A|B|C|D|2024||ORU|7\r", "AA", charset="ascii"))
    assert str(reply.segment("MSH")(9)) == "ACK^^ACK"
    assert str(reply.segment("MSA")(2)) == "7"


def test_ack_for_unparseable_without_any_msh():
    reply = _segments(ack_for_unparseable(b"\x00\x01 not hl7 at all"))
    msa = reply.segment("MSA")
    assert str(msa(1)) == "AR" and str(msa(2)) == ""
    assert str(reply.segment("ERR")(3)).startswith("100^")
    assert str(reply.segment("MSH")(9)) == "ACK^^ACK"


def test_ack_for_unparseable_salvages_a_readable_msh():
    raw = "MSH|^~\\&|LIS|Łódź|GW|G|2024||ORU^R01|U8|P|2.5||||||UNICODE UTF-8\rPID|1||".encode() + b"\xff\xfe\r"
    with pytest.raises(Hl7ParseError) as info:
        ack(raw, "AA", charset=charset_of(raw))
    reply = ack_for_unparseable(raw, info.value.error)
    assert "Łódź".encode() in reply  # the sender's bytes go back unchanged
    message = _segments(reply, "latin-1")
    assert str(message.segment("MSA")(2)) == "U8" and str(message.segment("MSA")(1)) == "AR"
    assert str(message.segment("ERR")(3)).startswith("102^")
    assert "is not valid utf-8" in str(message.segment("ERR")(8))


def test_ack_for_error_reports_an_unknown_charset_as_table_value_not_found():
    raw = _with_msh18("EBCDIC-XYZ")
    with pytest.raises(UnknownCharset) as info:
        charset_of(raw)
    message = _segments(ack_for_error(raw, info.value))
    assert str(message.segment("MSA")(1)) == "AR" and str(message.segment("MSA")(2)) == "9"
    err = message.segment("ERR")
    assert str(err(2)) == "MSH^1^18" and str(err(3)).startswith("103^")


def test_ack_for_error_hides_internal_details():
    message = _segments(ack_for_error(M1, RuntimeError("secret patient Ivanov")))
    assert str(message.segment("MSA")(1)) == "AR" and str(message.segment("MSA")(2)) == "A1"
    assert str(message.segment("ERR")(3)).startswith("207^")
    assert b"Ivanov" not in ack_for_error(M1, RuntimeError("secret patient Ivanov"))

"""Hardened JSON: what plain json.loads lets through is refused with a code and a JSON place."""
from __future__ import annotations

import json

import pytest

from gateway import jsonsafe
from gateway.errors import Rejection


def refused(body: bytes) -> tuple[str, str | None]:
    with pytest.raises(Rejection) as exc:
        jsonsafe.loads(body)
    return exc.value.code, exc.value.field


def test_ordinary_documents_pass_unchanged() -> None:
    doc = {"a": [1, {"b": "Иванов И. И."}], "c": None, "d": 1.5, "e": "tab\tand\nnewline"}
    assert jsonsafe.loads(json.dumps(doc).encode()) == doc


def test_depth_is_bounded_with_and_without_the_recursion_limit() -> None:
    assert refused(b"[" * 100_000 + b"]" * 100_000) == ("JSON_TOO_DEEP", "body")
    assert refused(json.dumps({"a": {"b": [[[[0]]]]}}).encode().replace(b"0", b"[" * 70 + b"]" * 70))[0] \
        == "JSON_TOO_DEEP"
    ok = json.dumps(json.loads("[" * 63 + "]" * 63)).encode()
    assert jsonsafe.loads(ok)


def test_a_key_twice_in_one_object_is_refused_but_in_two_objects_is_fine() -> None:
    assert refused(b'{"a": 1, "b": {"c": 1, "c": 2}}') == ("JSON_DUPLICATE_KEY", "c")
    assert jsonsafe.loads(b'[{"c": 1}, {"c": 2}]') == [{"c": 1}, {"c": 2}]


@pytest.mark.parametrize("escape", ["\\u0000", "\\u0001", "\\u001f", "\\ud800", "\\udfff", "\\uffff"])
def test_characters_xml_and_utf8_cannot_carry_are_refused_where_they_are(escape: str) -> None:
    body = f'{{"outer": {{"list": ["fine", "bad{escape}"]}}}}'.encode()
    assert refused(body) == ("INVALID_CHARACTER", "outer.list[1]")


def test_a_surrogate_pair_written_as_escapes_is_one_good_character() -> None:
    assert jsonsafe.loads(b'{"emoji": "\\ud83d\\ude00"}') == {"emoji": "\U0001F600"}


def test_not_json_is_malformed() -> None:
    assert refused(b'{"a": ') == ("MALFORMED_JSON", "body")
    assert refused(b"\xff\xfe") == ("MALFORMED_JSON", "body")

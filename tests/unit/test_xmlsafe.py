from __future__ import annotations

import pytest
from lxml import etree

from gateway.errors import Rejection
from gateway.masking import mask_text
from gateway.xmlsafe import free_prefix, parse_xml


@pytest.mark.parametrize(
    "doc",
    [
        b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>',
        b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:9/evil.dtd"><a/>',
        b'<!doctype a><a/>',
    ],
)
def test_any_dtd_is_refused(doc: bytes) -> None:
    with pytest.raises(Rejection) as exc:
        parse_xml(doc)
    assert exc.value.code == "XML_DTD_FORBIDDEN"


def test_malformed_xml_names_the_line() -> None:
    with pytest.raises(Rejection) as exc:
        parse_xml(b"<a>\n<b></a>", field="payload")
    assert exc.value.code == "MALFORMED_XML" and exc.value.field == "payload" and "line 2" in exc.value.detail


def test_cyrillic_and_escapes_survive() -> None:
    root = parse_xml("<a>Анализ &amp; &lt;результат&gt;</a>".encode())
    assert root.text == "Анализ & <результат>"


def test_masking_hides_identifiers_and_dates_but_keeps_shape() -> None:
    text = mask_text("Element 'SNILS': The value '1122334459X' is not accepted; ЕНП 7700000000000011, born 1980-05-17")
    assert "1122334459X" not in text and "7700000000000011" not in text and "1980-05-17" not in text
    assert "'*********9X'" in text and "**************11" in text


def test_free_prefix_gives_way_only_to_a_guest_declaring_it_for_another_namespace():
    guest = etree.fromstring(b'<zl:R xmlns:zl="urn:a"><zl1:S xmlns:zl1="urn:b"/><e:T xmlns:e="urn:ours"/></zl:R>')
    assert free_prefix("zl", "urn:ours", guest) == "zl2"  # zl and zl1 are the guest's
    assert free_prefix("zl", "urn:a", guest) == "zl"  # the guest's zl is urn:a already: sharing it is harmless
    assert free_prefix("e", "urn:ours", guest) == "e"
    assert free_prefix("zl", "urn:ours", None) == "zl"
    # A guest cut from a larger tree brings what it has in scope from there, declared or not on itself.
    assert free_prefix("zl", "urn:ours", guest[0]) == "zl2"

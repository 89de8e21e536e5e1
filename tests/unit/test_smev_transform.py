"""The SMEV transform against the published vectors, and well-formed output for any input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from signing.smev_transform import TransformError, transform
from tests.support.cli import zdravlink

# A copy of ../shared/reference/smev3/transform-vectors, so a clone tests without the shared tree.
VECTORS = Path(__file__).resolve().parents[1] / "data/smev-transform-vectors"
CASES = json.loads((VECTORS / "vectors.json").read_text())["vectors"]


@pytest.mark.parametrize("vector", CASES, ids=[v["name"] for v in CASES])
def test_reproduces_every_vector_byte_for_byte(vector):
    root = etree.fromstring((VECTORS / vector["input_file"]).read_bytes())
    expected = (VECTORS / vector["expected_file"]).read_bytes()
    assert transform(root) == expected
    assert len(expected) == vector["expected_utf8_bytes"]


def test_attribute_order_and_per_subtree_prefixes():
    root = etree.fromstring(
        '<a:r xmlns:a="urn:a" xmlns:b="urn:b" xmlns:c="urn:c" z="1" b:y="2" c:x="3" a="4" xml:lang="ru">'
        '<a:s/><a:s b:q=""/><a:s xmlns:d="urn:d" d:q=""/><a:s xmlns:d="urn:d" d:q=""/></a:r>')
    assert transform(root) == (
        b'<ns1:r xmlns:ns1="urn:a" xmlns:ns2="urn:b" xmlns:ns3="urn:c" xml:lang="ru" ns2:y="2" ns3:x="3"'
        b' a="4" z="1"><ns1:s></ns1:s><ns1:s ns2:q=""></ns1:s>'
        b'<ns1:s xmlns:ns4="urn:d" ns4:q=""></ns1:s><ns1:s xmlns:ns5="urn:d" ns5:q=""></ns1:s></ns1:r>')


def test_escapes_text_and_attributes_and_drops_comments_keeping_their_tails():
    root = etree.fromstring('<a:r xmlns:a="urn:a" t="&quot;1 &amp; 2 &lt; 3&gt;"> <!-- c --> x &amp; &lt;y&gt; <?pi?>z</a:r>')
    out = transform(root)
    assert out == b'<ns1:r xmlns:ns1="urn:a" t="&quot;1 &amp; 2 &lt; 3&gt;"> x &amp; &lt;y&gt; z</ns1:r>'
    etree.fromstring(out)


def test_elements_without_a_namespace_are_refused():
    with pytest.raises(TransformError, match="<child> has no namespace"):
        transform(etree.fromstring('<a:r xmlns:a="urn:a"><child/></a:r>'))


XML_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff")
                   | st.sampled_from(list("&<>\"'\n\t ]")), max_size=20)
NS = st.sampled_from(["urn:a", "urn:b", "http://x/y?q=1&r=2", "urn:c:&lt"])
LOCAL = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,6}", fullmatch=True)


@st.composite
def trees(draw):
    """Built top down with SubElement in one document, never by appending a tree parsed on its own.

    lxml's append of a parsed subtree keeps the subtree's own prefixes and re-points its attributes
    at the new parent's declarations: a child declaring ns0="urn:b", with {urn:b}A and {urn:a}A, moved
    under a parent whose ns0 is urn:a, serialises as ``ns0:A="1" ns0:A="2"``. Seen in one run of the
    suite (lxml 6.1.3): the test failed while making its input, not in the transform.
    """
    root = etree.Element(f"{{{draw(NS)}}}{draw(LOCAL)}")
    _fill(draw, root, 0)
    return etree.fromstring(etree.tostring(root))


def _fill(draw, el: etree._Element, depth: int) -> None:
    for ns, local in draw(st.lists(st.tuples(st.none() | NS, LOCAL), max_size=4, unique=True)):
        el.set(f"{{{ns}}}{local}" if ns else local, draw(XML_TEXT))
    el.text = draw(XML_TEXT)
    if depth < 3:
        for _ in range(draw(st.integers(0, 3))):
            child = etree.SubElement(el, f"{{{draw(NS)}}}{draw(LOCAL)}")
            _fill(draw, child, depth + 1)
            child.tail = draw(XML_TEXT)


@settings(max_examples=200, deadline=None)
@given(trees())
def test_output_is_always_well_formed_and_a_fixed_point(root):
    out = transform(root)
    again = etree.fromstring(out)  # raises if not well-formed
    # Like the JDK writer, \t \n \r in attribute values are written raw, and a parser turns
    # them into spaces: only without them is the output a fixed point.
    if not any(c in v for el in root.iter() for v in el.attrib.values() for c in "\t\n\r"):
        assert transform(again) == out


def test_cli_writes_the_transform_to_stdout():
    vector = CASES[3]
    result = zdravlink("transform", str(VECTORS / vector["input_file"]), cwd=Path(__file__).resolve().parents[2])
    assert result.exit_code == 0, result.stderr_bytes
    assert result.stdout_bytes == (VECTORS / vector["expected_file"]).read_bytes()

"""Derived MessageIDs: UUID v1 as the envelope schema wants, and the same for every resend."""
from __future__ import annotations

import datetime as dt
import re
import uuid

from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from adapters.hl7v2.message_ids import derived_uuid1, message_id_for
from gateway.schemas import schemas_dir

_GREGORIAN = dt.datetime(1582, 10, 15)


def envelope_uuid_v1_pattern() -> str:
    """The pattern of the envelope schema's UUIDv1 type, read from the schema itself."""
    schema = etree.parse(str(schemas_dir() / "envelope-1.0.xsd"))
    xs = {"xs": "http://www.w3.org/2001/XMLSchema"}
    return schema.xpath("//xs:simpleType[@name='UUIDv1']//xs:pattern/@value", namespaces=xs)[0]


@given(st.text(min_size=1, max_size=40), st.text(min_size=0, max_size=60))
def test_every_derived_id_is_a_lower_case_uuid_v1_the_envelope_schema_accepts(lab, control):
    mid = message_id_for(lab, control)
    assert re.fullmatch(envelope_uuid_v1_pattern(), mid), mid
    parsed = uuid.UUID(mid)
    assert (parsed.version, parsed.variant) == (1, uuid.RFC_4122)
    assert parsed.node & 0x010000000000, "RFC 4122 §4.5: a node that is no MAC address has the multicast bit"
    assert _GREGORIAN + dt.timedelta(microseconds=parsed.time / 10) < dt.datetime(1812, 1, 1)


def test_the_same_lab_and_control_id_give_the_same_id_and_nothing_else_does():
    assert message_id_for("nist-lab", "NIST-1") == message_id_for("nist-lab", "NIST-1")
    ids = {message_id_for(lab, control) for lab in ("nist-lab", "abl-lab") for control in ("NIST-1", "NIST-2", "")}
    assert len(ids) == 6


def test_the_id_is_fixed_across_releases():
    """A resend after an upgrade must land on the same id: the derivation is part of the journal's data."""
    assert message_id_for("nist-lab", "NIST-100929110701660") == "1959b8d3-a3a1-1006-90c8-8bb94f4abb3b"
    assert str(derived_uuid1("x")) == "42b726b0-7116-102d-9100-637ca9fbac32"

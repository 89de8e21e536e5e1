"""Every envelope the gateway delivers must pass its own published schema (schemas_xsd/envelope-1.0.xsd).

A clinic that validates what it receives against the schema the gateway publishes would
refuse anything else — the UUID v5 MessageIDs of HL7 results once were such a thing — so
the integration tests put every delivered envelope of their flows through it, its
payload through the payload's schema too.
"""
from __future__ import annotations

from lxml import etree

from gateway import schemas
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.xmlsafe import parse_xml


def assert_valid_envelope(body: bytes) -> Envelope:
    """The delivered envelope, after checking it and its payload against their schemas."""
    root = parse_xml(body)
    try:
        schemas.validate_envelope(root)
        env = Envelope.from_element(root)
        schemas.validate_payload(env.message_type, env.payload)
    except Rejection as exc:
        raise AssertionError(f"a delivered envelope breaks its schema: {exc}\n"
                             f"{etree.tostring(root, encoding='unicode')[:2000]}") from None
    return env

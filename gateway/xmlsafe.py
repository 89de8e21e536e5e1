"""Hardened XML parsing: no DTD, no entities, no network, bounded size.

Partners are not trusted. A DOCTYPE is refused outright rather than parsed with
entities off, because an internal subset is the vehicle of both the entity bomb
(billion laughs) and external-entity reads, and no message format we accept needs one.
"""
from __future__ import annotations

import re

from lxml import etree

from gateway import errors
from gateway.errors import Rejection

_DTD_MARK = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        collect_ids=False,
    )


def parse_xml(data: bytes, *, field: str = "body") -> etree._Element:
    """Parse untrusted XML bytes into an element, or raise a Rejection naming what is wrong."""
    if _DTD_MARK.search(data):
        raise Rejection(errors.XML_DTD_FORBIDDEN, "a DOCTYPE or ENTITY declaration is not allowed", field)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise Rejection(errors.MALFORMED_XML, f"not well-formed XML: {exc}", field) from None
    # lxml-stubs leave DocInfo.doctype out; lxml has it ("" when there is no DOCTYPE).
    if root.getroottree().docinfo.doctype:  # type: ignore[union-attr]
        raise Rejection(errors.XML_DTD_FORBIDDEN, "a DOCTYPE declaration is not allowed", field)
    return root

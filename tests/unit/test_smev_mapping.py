"""The SMEV data blocks built around a partner's payload stay well-formed whatever prefixes it declares."""
from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from lxml import etree

from adapters.soap.smev_mapping import request_data, response_data
from adapters.soap.smev_schema import B, T
from gateway.envelope import Envelope

NS = "urn://zdravlink/types/notice/1.0"


@pytest.mark.parametrize("build", [request_data, response_data])
@pytest.mark.parametrize("declared", ["ns0", "ns1", "t", "b"])
def test_a_payload_declaring_a_prefix_the_block_might_use_keeps_its_attributes_apart(
        build: Callable[[Envelope], etree._Element], declared: str) -> None:
    """A payload written by a tool that names its namespaces ``ns0``, ``ns1`` …, with attributes in
    SMEV's namespaces too: lxml's own ``ns0``/``ns1`` for SMEV's gave ``ns0:Id`` twice, bytes no parser takes."""
    payload = etree.fromstring(
        f'<n:Notice xmlns:n="{NS}" xmlns:{declared}="urn:theirs" xmlns:x="{T[1:-1]}" xmlns:y="{B[1:-1]}" '
        f'{declared}:Id="1" x:Id="2" y:Id="3"/>'.encode())
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic", message_type=NS, payload=payload)
    block = etree.fromstring(etree.tostring(build(env)))  # raises on a repeated attribute
    got = block.find(f"{B}MessagePrimaryContent/{{{NS}}}Notice")
    assert [got.get(f"{{{ns}}}Id") for ns in ("urn:theirs", T[1:-1], B[1:-1])] == ["1", "2", "3"]


@pytest.mark.parametrize("declared", ["ns", "b", "soapenv"])
def test_the_smev_client_keeps_a_payloads_own_prefixes_apart_from_its_own(declared: str) -> None:
    from adapters.soap import smev_client
    from adapters.soap.smev_schema import SOAP_ENV_NS

    payload = (f'<n:Notice xmlns:n="{NS}" xmlns:{declared}="urn:theirs" xmlns:x="{T[1:-1]}" xmlns:y="{B[1:-1]}" '
               f'xmlns:z="{SOAP_ENV_NS}" {declared}:Id="1" x:Id="2" y:Id="3" z:Id="4"/>')
    for request in (smev_client.send_request(payload), smev_client.send_response("x", payload)):
        sent = etree.fromstring(smev_client.soap(request))  # raises on a repeated attribute
        got = sent.find(f".//{B}MessagePrimaryContent/{{{NS}}}Notice")
        assert [got.get(f"{{{ns}}}Id") for ns in ("urn:theirs", T[1:-1], B[1:-1], SOAP_ENV_NS)] == ["1", "2", "3", "4"]

"""The SMEV schemas the gateway ships are the operator's files, unmodified, and they compile."""
from __future__ import annotations

import pytest
from lxml import etree

from adapters.soap.smev_faults import SmevFault
from adapters.soap.smev_schema import FILES, WSDL_FILE, compile_schema, smev_dir, validation_errors
from gateway.errors import Rejection
from signing import errors as sig
from tests.support.references import SMEV_REFERENCE as REFERENCE


@pytest.mark.skipif(not REFERENCE.exists(), reason="no ../shared/reference in this checkout")
@pytest.mark.parametrize("name", [*FILES.values(), WSDL_FILE])
def test_shipped_copy_is_byte_identical_to_the_reference(name):
    assert (smev_dir() / name).read_bytes() == (REFERENCE / name).read_bytes()


def test_schema_compiles_and_refuses_an_upper_case_uuid():
    schema = compile_schema(smev_dir())
    t = "urn://x-artefacts-smev-gov-ru/services/message-exchange/types/basic/1.1"
    ok = etree.fromstring(f'<b:AckTargetMessage xmlns:b="{t}" Id="A" accepted="true">'
                          'a0eebc99-9c0b-11d1-8b5c-0800200c9a66</b:AckTargetMessage>')
    bad = etree.fromstring(f'<b:AckTargetMessage xmlns:b="{t}" Id="A" accepted="true">'
                           'A0EEBC99-9C0B-11D1-8B5C-0800200C9A66</b:AckTargetMessage>')
    assert validation_errors(ok, schema) == []
    assert validation_errors(bad, schema) and "pattern" in validation_errors(bad, schema)[0][1]


@pytest.mark.parametrize("code,operation,name", [
    (sig.SIGNATURE_DIGEST_MISMATCH, "SendRequest", "SignatureVerificationFault"),
    ("ROUTE_FORBIDDEN", "SendRequest", "AccessDenied"),
    ("ROUTE_FORBIDDEN", "SendResponse", "IncorrectResponseContentType"),
    ("UNKNOWN_MESSAGE_TYPE", "GetRequest", "UnknownMessageType"),
    ("MESSAGE_ID_REUSED", "Ack", "InvalidContent"),   # not in Ack's WSDL fault list
    ("GATEWAY_FAILURE", "SendRequest", "SMEVFailure"),
    ("SOMETHING_NEW", "SendRequest", "InvalidContent"),
])
def test_each_operation_answers_only_faults_its_wsdl_lists(code, operation, name):
    fault = SmevFault.from_rejection(Rejection(code, "why", "Field"), operation)
    assert fault.name == name
    envelope = fault.envelope()
    assert envelope[0][0].findtext("faultcode") == ("soap:Server" if name == "SMEVFailure" else "soap:Client")
    assert validation_errors(envelope[0][0].find("detail")[0]) == []

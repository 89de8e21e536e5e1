"""The SMEV 3 service over the wire: every operation, every answer and fault checked against the official XSD.

The service runs in this process on a real HTTP server on 127.0.0.1 with a real journal
(SQLite and PostgreSQL); the answers are validated with lxml against the files in
../shared/reference/smev3/1.1 when they are there (a copy of ours otherwise, which
tests/unit/test_smev_schemas.py proves identical).
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from lxml import etree

from adapters.intake import Intake
from adapters.soap import smev_client as smev
from adapters.soap.smev_exchange import SmevExchange
from adapters.soap.smev_mapping import ANSWER_NS
from adapters.soap.smev_schema import SOAP_ENV_NS, B, F, T, compile_schema, smev_dir
from adapters.soap.smev_service import SmevWsgi
from demo.ca import demo_signer
from gateway.accept import AcceptPipeline
from gateway.config import hash_token, load_config
from gateway.journal import Journal, Status
from gateway.journal.inbox import Inbox
from gateway.keyring import load_keyring
from gateway.message_ids import message_id_time
from gateway.schemas import known_message_types
from gateway.service_records import SERVICE_RECORD_NS
from signing import sign
from tests.support.gateway_proc import NOTICE_NS, notice
from tests.support.ids import uuid1_at
from tests.support.references import SMEV_REFERENCE
from tests.unit.test_service_records import TARIFFS, record

LAB_TOKEN, CLINIC_TOKEN = "lab-soap-token", "clinic-soap-token"
OFFICIAL = SMEV_REFERENCE if SMEV_REFERENCE.exists() else smev_dir()
SCHEMA = compile_schema(OFFICIAL)


def official_errors(element: etree._Element) -> list[str]:
    return [] if SCHEMA.validate(element) else [f"{e.line}: {e.message}" for e in SCHEMA.error_log]


def fault_detail(body: etree._Element) -> etree._Element:
    assert body.tag == f"{{{SOAP_ENV_NS}}}Fault", etree.tostring(body)
    detail = body.find("detail")[0]
    assert official_errors(detail) == [], etree.tostring(detail)
    return detail


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def write_config(directory: Path, keys: Path) -> Path:
    directory.mkdir()
    def certs(name: str) -> str:
        return f'["{keys / f"{name}-gost2012-256.pem"}", "{keys / f"{name}-rsa.pem"}"]'
    (directory / "gateway.yaml").write_text(
        f'signing: {{key: "{keys / "gateway-gost2012-256.key"}", certificate: "{keys / "gateway-gost2012-256.pem"}", '
        f'trust_store: "{keys / "trust"}"}}\nsmev: {{pull_lock_seconds: 3.0}}\n')
    (directory / "participants.yaml").write_text(f"""
participants:
  - {{mnemonic: lab, name: Лаборатория, kind: lis, delivery: {{mode: pull}}, signature_required: true,
     credentials: {{api_token_sha256: ["{hash_token(LAB_TOKEN)}"]}}, certificates: {certs("lab")}}}
  - {{mnemonic: clinic, name: Поликлиника, kind: mis, delivery: {{mode: pull}},
     credentials: {{api_token_sha256: ["{hash_token(CLINIC_TOKEN)}"]}}, certificates: {certs("clinic")}}}
  - {{mnemonic: insurer, name: СМО, kind: insurer, delivery: {{mode: pull}}, certificates: {certs("insurer")}}}
""")
    (directory / "routes.yaml").write_text(f"""
routes:
  - {{name: lab-to-clinic, sender: lab, message_type: "{NOTICE_NS}", recipient: clinic}}
  - {{name: clinic-to-lab, sender: clinic, message_type: "{NOTICE_NS}", recipient: lab}}
  - {{name: clinic-answers-lab, sender: clinic, message_type: "{ANSWER_NS}", recipient: lab}}
  - {{name: records, sender: clinic, message_type: "{SERVICE_RECORD_NS}", recipient: insurer}}
""")
    (directory / "tariffs").mkdir()
    (directory / "tariffs" / "t.yaml").write_text(TARIFFS, encoding="utf-8")
    return directory


class Smev:
    """The service and what stands behind it, for assertions on the journal."""

    def __init__(self, url: str, journal: Journal, inbox: Inbox, keys: Path) -> None:
        self.url, self.journal, self.inbox, self.keys = url, journal, inbox, keys
        self.lab = demo_signer(keys, "lab")
        self.clinic = demo_signer(keys, "clinic")

    def call(self, request: etree._Element, **kw: object) -> tuple[int, etree._Element]:
        status, body = smev.call(self.url, request, **kw)  # type: ignore[arg-type]
        if body.tag != f"{{{SOAP_ENV_NS}}}Fault":
            assert official_errors(body) == [], etree.tostring(body)
        return status, body

    def deliver_all(self) -> None:
        """What the delivery worker does for a pull recipient: park every accepted message."""
        for mid in self.journal.with_status(Status.ACCEPTED):
            self.inbox.park(self.journal.get(mid), "test-delivery", "default")


@pytest.fixture
def service(tmp_path: Path, demo_keys: Path, db_url: str) -> Iterator[Smev]:
    config = load_config(write_config(tmp_path / "config", demo_keys), known_message_types=known_message_types())
    journal = Journal(db_url)
    journal.migrate()
    keyring = load_keyring(config)
    intake = Intake(AcceptPipeline(config, journal, keyring), journal)
    inbox = Inbox(journal)
    app = SmevWsgi(SmevExchange(config, intake, inbox, keyring), max_body_bytes=200_000)
    server = make_server("127.0.0.1", 0, app, server_class=_Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Smev(f"http://127.0.0.1:{server.server_port}/smev/1.1", journal, inbox, demo_keys)
    finally:
        server.shutdown()
        server.server_close()
        journal.engine.dispose()


# ---- WSDL ---------------------------------------------------------------------

def test_wsdl_is_the_official_one_with_our_address_and_linked_schemas(service):
    wsdl = httpx.get(service.url + "?wsdl").text
    official = (OFFICIAL / "smev-message-exchange-service-1.1.wsdl").read_text(encoding="utf-8")
    assert f'location="{service.url}"' in wsdl and "localhost:8080" not in wsdl
    assert f'schemaLocation="{service.url}?xsd=types"' in wsdl
    ours = etree.fromstring(wsdl.encode())
    theirs = etree.fromstring(official.encode())
    ops = "{http://schemas.xmlsoap.org/wsdl/}portType/{http://schemas.xmlsoap.org/wsdl/}operation"
    assert [o.get("name") for o in ours.iterfind(ops)] == [o.get("name") for o in theirs.iterfind(ops)]
    types = httpx.get(service.url + "?xsd=types").text
    assert f'schemaLocation="{service.url}?xsd=basic"' in types
    assert httpx.get(service.url + "?xsd=../../etc/passwd").status_code == 404


def test_zeep_builds_a_client_from_our_wsdl_and_calls_it(service):
    """A stub generated from what we serve works unchanged (zeep cannot sign with GOST: a token identifies)."""
    import zeep

    service.call(smev.send_request(notice(), by=service.lab))
    service.deliver_all()
    client = zeep.Client(service.url + "?wsdl")
    client.transport.session.headers["Authorization"] = f"Bearer {CLINIC_TOKEN}"
    answer = client.service.GetIncomingQueueStatistics(Timestamp={"_value_1": datetime.now(UTC)})
    assert [(q.queueName, q.pendingMessageNumber) for q in answer] == [(f"request:{NOTICE_NS}", 1)]


# ---- SendRequest ----------------------------------------------------------------

def test_signed_send_request_is_journalled_and_answered_with_signed_metadata(service):
    mid = str(uuid.uuid1())
    status, body = service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    assert status == 200 and body.tag == T + "SendRequestResponse"
    md = body.find(T + "MessageMetadata")
    assert md.findtext(T + "MessageId") == mid and md.findtext(T + "MessageType") == "REQUEST"
    assert md.findtext(f"{T}Sender/{T}Mnemonic") == "lab" and md.findtext(f"{T}Recipient/{T}Mnemonic") == "clinic"
    assert md.findtext(T + "Status") == "requestIsQueued"
    from signing import Certificate, TrustStore, verify
    verified = verify(body.find(f"{T}SMEVSignature")[0], document=body, expected=md,
                      trust=TrustStore.from_directory(service.keys / "trust"),
                      signers=[Certificate.load(service.keys / "gateway-gost2012-256.pem")])
    assert verified.algorithm.name == "gost2012-256"
    rec = service.journal.get(mid)
    assert (rec.status, rec.sender, rec.recipient, rec.source) == ("ACCEPTED", "lab", "clinic", "soap")
    evidence = service.journal.trail(mid)[0].detail["signature"]
    assert evidence["algorithm"] == "gost2012-256" and "lab" in evidence["subject"]
    assert evidence["element"] == "SenderProvidedRequestData"


def test_rsa_signature_and_test_message_flag(service):
    mid = str(uuid.uuid1())
    status, _ = service.call(smev.send_request(notice(), message_id=mid, by=demo_signer(service.keys, "lab", "rsa"),
                                               test=True))
    assert status == 200
    assert b"<zl:TestMessage/>" in service.journal.get(mid).envelope


def test_resend_of_the_same_message_id_is_message_is_already_sent(service):
    request = smev.send_request(notice(), by=service.lab)
    assert service.call(request)[0] == 200
    status, body = service.call(request)
    assert status == 500 and fault_detail(body).tag == F + "MessageIsAlreadySent"
    other = smev.send_request(notice(code="RESULT_READY"), message_id=request.findtext(f"{T}SenderProvidedRequestData/{T}MessageID"),
                              by=service.lab)
    assert fault_detail(service.call(other)[1]).tag == F + "MessageIsAlreadySent"


@pytest.mark.parametrize("message_id", [
    str(uuid.uuid4()),                       # random, not time-based
    str(uuid.uuid1()).upper(),               # upper case
    "not-a-uuid",
], ids=["uuid4", "upper-case-uuid1", "not-a-uuid"])
def test_message_id_must_be_a_lower_case_uuid_v1(service, message_id):
    status, body = service.call(smev.send_request(notice(), message_id=message_id, by=service.lab))
    assert status == 500 and body.findtext("faultcode") == "soap:Client"
    assert fault_detail(body).tag == F + "InvalidMessageIdFormat"
    assert "MessageID" in body.findtext("faultstring")
    assert service.journal.rejections(1)[0]["code"] == "INVALID_MESSAGE_ID_FORMAT"


def test_message_id_time_is_read_back():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert abs((message_id_time(uuid1_at(when)) - when).total_seconds()) < 1e-3


@pytest.mark.parametrize("age", [timedelta(days=3), timedelta(hours=-1)])
def test_stale_or_future_message_id(service, age):
    mid = uuid1_at(datetime.now(UTC) - age)
    status, body = service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    assert fault_detail(body).tag == F + "StaleMessageId"


def test_unsigned_request_without_token_is_no_signature_found(service):
    status, body = service.call(smev.send_request(notice()))
    detail = fault_detail(body)
    assert detail.tag == F + "SignatureVerificationFault"
    assert detail.findtext(F + "SignatureVerificationFault") == "NoSignatureFound"
    assert detail.findtext(B + "Code") == "SIGNATURE_REQUIRED"


def test_token_without_signature_when_the_route_requires_one(service):
    status, body = service.call(smev.send_request(notice()), token=LAB_TOKEN)
    detail = fault_detail(body)
    assert detail.findtext(F + "SignatureVerificationFault") == "NoSignatureFound"


def test_tampered_request_is_signature_is_invalid_and_journalled_rejected(service):
    request = smev.send_request(notice(text="Образец получен"), by=service.lab)
    request.find(f".//{{{NOTICE_NS}}}Text").text = "Образец утерян"
    status, body = service.call(request)
    detail = fault_detail(body)
    assert detail.findtext(F + "SignatureVerificationFault") == "SignatureIsInvalid"
    assert detail.findtext(B + "Code") == "SIGNATURE_DIGEST_MISMATCH"
    assert service.journal.rejections(1)[0]["code"] == "SIGNATURE_DIGEST_MISMATCH"


def test_certificate_of_another_participant_with_a_token(service):
    status, body = service.call(smev.send_request(notice(), by=service.clinic), token=LAB_TOKEN)
    detail = fault_detail(body)
    assert detail.findtext(F + "SignatureVerificationFault") == "CertificateIsNotFound"


def test_signature_over_another_element_is_incorrect_signature_target(service):
    request = smev.send_request(notice(), by=service.lab)
    data = request.find(T + "SenderProvidedRequestData")
    data.set("Id", "OTHER")  # the reference now points at nothing
    detail = fault_detail(service.call(request)[1])
    assert detail.findtext(F + "SignatureVerificationFault") == "IncorrectSignatureTarget"


def test_clinic_may_not_send_to_anyone_on_a_type_it_has_no_route_for(service):
    status, body = service.call(smev.send_request(notice(), by=demo_signer(service.keys, "insurer")))
    assert fault_detail(body).tag == F + "AccessDenied"


def test_unknown_business_type(service):
    payload = '<x:Thing xmlns:x="urn://example/unknown/1.0"><x:A>1</x:A></x:Thing>'
    detail = fault_detail(service.call(smev.send_request(payload, by=service.lab))[1])
    assert detail.tag == F + "BusinessDataTypeIsNotSupported"
    assert detail.findtext(F + "RootElementLocalName") == "Thing"
    assert detail.findtext(F + "RootElementNamespaceURI") == "urn://example/unknown/1.0"


def test_payload_invalid_against_its_schema_is_invalid_content(service):
    payload = f'<n:Notice xmlns:n="{NOTICE_NS}"><n:Code>X</n:Code></n:Notice>'
    detail = fault_detail(service.call(smev.send_request(payload, by=service.lab))[1])
    assert detail.tag == F + "InvalidContent" and detail.findtext(B + "Code") == "PAYLOAD_INVALID"
    assert detail.find(F + "ValidationError") is not None


def test_envelope_against_the_official_xsd_is_invalid_content_with_positions(service):
    request = smev.send_request(notice(), by=service.lab)
    etree.SubElement(request.find(T + "SenderProvidedRequestData"), T + "Unexpected").text = "x"
    detail = fault_detail(service.call(request)[1])
    assert detail.tag == F + "InvalidContent" and detail.findtext(B + "Code") == "SOAP_REQUEST_INVALID"
    assert "Unexpected" in detail.findtext(F + "ValidationError")
    assert int(detail.find(F + "ValidationError").get("errorPosition")) > 0


def test_end_of_life_passed(service):
    eol = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert fault_detail(service.call(smev.send_request(notice(), eol=eol, by=service.lab))[1]).tag == \
        F + "EndOfLifeReached"


def test_doctype_and_garbage_and_soap_action_mismatch(service):
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><x>&e;</x>'
    resp = httpx.post(service.url, content=evil, headers={"Content-Type": "text/xml", "SOAPAction": "urn:SendRequest"})
    body = etree.fromstring(resp.content).find(f"{{{SOAP_ENV_NS}}}Body")[0]
    assert resp.status_code == 500 and fault_detail(body).findtext(B + "Code") == "XML_DTD_FORBIDDEN"
    resp = httpx.post(service.url, content=b"<unclosed", headers={"Content-Type": "text/xml"})
    assert fault_detail(etree.fromstring(resp.content)[0][0]).findtext(B + "Code") == "MALFORMED_XML"
    status, body = service.call(smev.send_request(notice(), by=service.lab), action="urn:GetRequest")
    assert fault_detail(body).findtext(B + "Code") == "SOAP_REQUEST_INVALID" and "SOAPAction" in body.findtext("faultstring")


@pytest.mark.parametrize("body, why", [
    (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>',
     "exactly one request element, not 0"),
    (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header/></soap:Envelope>',
     "no soap:Body"),
    (b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><a/><b/></soap:Body>'
     b'</soap:Envelope>', "exactly one request element, not 2"),
    (b"<Envelope/>", "not a SOAP 1.1 Envelope"),
])
def test_a_request_without_one_body_element_is_a_fault_not_a_crash(service, body, why):
    resp = httpx.post(service.url, content=body, headers={"Content-Type": "text/xml"})
    assert resp.status_code == 500 and resp.headers["content-type"].startswith("text/xml")
    fault = etree.fromstring(resp.content).find(f"{{{SOAP_ENV_NS}}}Body")[0]
    assert official_errors(fault_detail(fault)) == []
    assert fault_detail(fault).findtext(B + "Code") == "SOAP_REQUEST_INVALID" and why in fault.findtext("faultstring")
    assert service.journal.rejections(1)[0]["code"] == "SOAP_REQUEST_INVALID"


def test_oversized_body_is_refused_before_parsing(service):
    big = notice(text="я" * 150_000)
    status, body = service.call(smev.send_request(big, by=service.lab))
    assert fault_detail(body).findtext(B + "Code") == "BODY_TOO_LARGE"


# ---- pull: GetRequest, Ack, GetResponse, GetStatus, statistics -------------------

def test_get_request_returns_one_message_locked_until_ack(service):
    mids = [str(uuid.uuid1()) for _ in range(2)]
    for mid in mids:
        assert service.call(smev.send_request(notice(), message_id=mid, by=service.lab))[0] == 200
    service.deliver_all()
    assert service.journal.get(mids[0]).status == "AWAITING_PICKUP"

    _, first = service.call(smev.get_request(NOTICE_NS, "Notice", by=service.clinic))
    request = first.find(f"{T}RequestMessage/{T}Request")
    got = request.findtext(f"{T}SenderProvidedRequestData/{T}MessageID")
    assert got == mids[0] and request.findtext(T + "ReplyTo") == mids[0]
    assert request.find(f"{T}SenderProvidedRequestData/{B}MessagePrimaryContent/{{{NOTICE_NS}}}Notice") is not None
    _, second = service.call(smev.get_request(NOTICE_NS, "Notice", by=service.clinic))
    assert second.findtext(f"{T}RequestMessage/{T}Request/{T}SenderProvidedRequestData/{T}MessageID") == mids[1]
    _, empty = service.call(smev.get_request(NOTICE_NS, "Notice", by=service.clinic))
    assert len(empty) == 0, "both are locked: the queue looks empty"

    _, ok = service.call(smev.ack(mids[0], by=service.clinic))
    assert ok.tag == T + "AckResponse"
    assert service.journal.get(mids[0]).status == "DELIVERED"
    assert [e.kind for e in service.journal.trail(mids[0])][-2:] == ["TAKEN", "ACKNOWLEDGED"]
    detail = fault_detail(service.call(smev.ack(mids[0], by=service.clinic))[1])
    assert detail.tag == F + "TargetMessageIsNotFound"


def test_a_payload_declaring_the_answers_own_prefixes_is_fetched_well_formed(service):
    """lxml's append gave two attributes one name when the payload declared ``t``, ``b`` (or the SOAP
    wrapper's ``soap``) for a namespace of its own and carried attributes in SMEV's (``t:Id="1" t:Id="2"``): the clinic got
    bytes no parser takes. The payload is journalled directly: the notice XSD would refuse such
    attributes at intake, a type whose XSD allows any attribute would not."""
    from gateway.envelope import Envelope

    payload = etree.fromstring(
        f'<t:Notice xmlns:t="{NOTICE_NS}" xmlns:b="urn:other" xmlns:x="{T[1:-1]}" xmlns:y="{B[1:-1]}" '
        f'xmlns:soap="urn:other-soap" xmlns:s="{SOAP_ENV_NS}" '
        f't:Id="1" x:Id="2" y:Id="3" b:Id="4" soap:Id="5" s:Id="6"><t:Code>SAMPLE_RECEIVED</t:Code></t:Notice>'.encode())
    env = Envelope(message_id=str(uuid.uuid1()), sender="lab", recipient="clinic", message_type=NOTICE_NS,
                   payload=payload)
    service.journal.accept(env, source="rest", actor="test", route="lab-to-clinic")
    service.deliver_all()
    status, answer = service.call(smev.get_request(NOTICE_NS, "Notice", by=service.clinic))  # parses the bytes
    assert status == 200
    got = answer.find(f"{T}RequestMessage/{T}Request/{T}SenderProvidedRequestData/{B}MessagePrimaryContent")[0]
    assert [got.get(f"{{{ns}}}Id") for ns in (NOTICE_NS, T[1:-1], B[1:-1], "urn:other", "urn:other-soap",
                                                SOAP_ENV_NS)] == ["1", "2", "3", "4", "5", "6"]


def test_unacked_message_is_delivered_again_after_the_lock(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    service.deliver_all()
    assert service.call(smev.get_request(by=service.clinic))[1].find(f".//{T}MessageID").text == mid
    import time
    time.sleep(3.2)  # pull_lock_seconds is 3.0 in this configuration (1.0 expired between two calls on a loaded machine)
    again = service.call(smev.get_request(by=service.clinic))[1]
    assert again.find(f".//{T}MessageID").text == mid
    assert [e.detail.get("delivery") for e in service.journal.trail(mid) if e.kind == "TAKEN"] == [1, 2]


def test_selector_filters_and_other_recipients_see_nothing(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    service.deliver_all()
    assert len(service.call(smev.get_request(NOTICE_NS, "Other", by=service.clinic))[1]) == 0
    assert len(service.call(smev.get_request(by=service.lab))[1]) == 0
    detail = fault_detail(service.call(smev.get_request("urn://example/unknown/1.0", "X", by=service.clinic))[1])
    assert detail.tag == F + "UnknownMessageType"
    assert fault_detail(service.call(smev.ack(mid, by=service.lab))[1]).tag == F + "TargetMessageIsNotFound"


def test_ack_refused_is_recorded_as_failed(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    service.deliver_all()
    service.call(smev.get_request(by=service.clinic))
    assert service.call(smev.ack(mid, accepted=False, by=service.clinic))[1].tag == T + "AckResponse"
    rec = service.journal.get(mid)
    assert rec.status == "FAILED" and "accepted=false" in rec.last_error
    assert service.journal.trail(mid)[-1].kind == "ACK_REFUSED"


def test_response_round_trip_and_status(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    service.deliver_all()
    service.call(smev.get_request(by=service.clinic))
    service.call(smev.ack(mid, by=service.clinic))

    answer_id = str(uuid.uuid1())
    status, sent = service.call(smev.send_response(mid, notice(code="RESULT_READY"), message_id=answer_id,
                                                   by=service.clinic))
    assert status == 200 and sent.findtext(f"{T}MessageMetadata/{T}MessageType") == "RESPONSE"
    assert service.journal.get(answer_id).recipient == "lab"
    service.deliver_all()
    assert len(service.call(smev.get_request(by=service.lab))[1]) == 0, "a response is not a request"
    _, got = service.call(smev.get_response(NOTICE_NS, "Notice", by=service.lab))
    response = got.find(f"{T}ResponseMessage/{T}Response")
    assert response.findtext(T + "OriginalMessageId") == mid
    assert response.findtext(f"{T}SenderProvidedResponseData/{T}MessageID") == answer_id
    service.call(smev.ack(answer_id, by=service.lab))

    _, st = service.call(smev.get_status(by=service.lab))
    status_el = st.find(f"{T}SmevAsyncProcessingMessage/{T}AsyncProcessingStatusData/{T}AsyncProcessingStatus")
    assert status_el.findtext(T + "OriginalMessageId") == mid
    assert status_el.findtext(T + "StatusCategory") == "underProcessing"
    assert len(service.call(smev.get_status(by=service.lab))[1]) == 0, "each status is reported once"


def test_response_to_a_request_not_addressed_to_the_responder(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    detail = fault_detail(service.call(smev.send_response(mid, notice(), by=service.lab))[1])
    assert detail.tag == F + "RecipientIsNotFound"
    detail = fault_detail(service.call(smev.send_response(str(uuid.uuid1()), notice(), by=service.clinic))[1])
    assert detail.tag == F + "RecipientIsNotFound"


def test_incoming_queue_statistics_count_waiting_messages(service):
    for _ in range(3):
        service.call(smev.send_request(notice(), by=service.lab))
    service.deliver_all()
    _, stats = service.call(smev.queue_statistics(by=service.clinic))
    queues = {q.get("queueName"): int(q.get("pendingMessageNumber")) for q in stats}
    assert queues == {f"request:{NOTICE_NS}": 3}
    _, none = service.call(smev.queue_statistics(by=service.lab))
    assert len(none) == 0


def test_every_refusal_is_audited_with_the_soap_source(service):
    service.call(smev.send_request(notice()))
    service.call(smev.get_request(by=None))
    codes = [(r["source"], r["code"]) for r in service.journal.rejections(2)]
    assert codes == [("soap", "SIGNATURE_REQUIRED"), ("soap", "SIGNATURE_REQUIRED")]


def test_attachments_are_refused_until_supported(service):
    request = smev.send_request(notice(), by=None)
    data = request.find(T + "SenderProvidedRequestData")
    headers = etree.SubElement(data, B + "AttachmentHeaderList")
    header = etree.SubElement(headers, B + "AttachmentHeader")
    etree.SubElement(header, B + "contentId").text = "att-1"
    etree.SubElement(header, B + "MimeType").text = "application/pdf"
    etree.SubElement(request, T + "CallerInformationSystemSignature").append(sign(data, service.lab))
    detail = fault_detail(service.call(request)[1])
    assert detail.tag == F + "InvalidContent" and detail.findtext(B + "Code") == "ATTACHMENTS_UNSUPPORTED"


def rejection_response(to: str, by) -> etree._Element:
    request = smev.send_response(to, notice(), by=None)
    data = request.find(T + "SenderProvidedResponseData")
    data.remove(data.find(B + "MessagePrimaryContent"))
    for code, text in (("NO_DATA", "Нет данных о пациенте"), ("FAILURE", "Сбой <регистра> & повтор")):
        rejected = etree.SubElement(data, T + "RequestRejected")
        etree.SubElement(rejected, T + "RejectionReasonCode").text = code
        etree.SubElement(rejected, T + "RejectionReasonDescription").text = text
    if by is not None:
        etree.SubElement(request, T + "CallerInformationSystemSignature").append(sign(data, by))
    return request


def test_request_rejected_travels_back_to_the_requester_as_smev_elements(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    status, _ = service.call(rejection_response(mid, service.clinic))
    assert status == 200
    service.deliver_all()
    _, got = service.call(smev.get_response(by=service.lab))
    data = got.find(f"{T}ResponseMessage/{T}Response/{T}SenderProvidedResponseData")
    assert data.find(B + "MessagePrimaryContent") is None
    reasons = [(r.findtext(T + "RejectionReasonCode"), r.findtext(T + "RejectionReasonDescription"))
               for r in data.iterfind(T + "RequestRejected")]
    assert reasons == [("NO_DATA", "Нет данных о пациенте"), ("FAILURE", "Сбой <регистра> & повтор")]
    assert got.findtext(f"{T}ResponseMessage/{T}Response/{T}OriginalMessageId") == mid


def test_request_status_travels_back_and_async_status_is_refused(service):
    mid = str(uuid.uuid1())
    service.call(smev.send_request(notice(), message_id=mid, by=service.lab))
    request = smev.send_response(mid, notice(), by=None)
    data = request.find(T + "SenderProvidedResponseData")
    data.remove(data.find(B + "MessagePrimaryContent"))
    status_el = etree.SubElement(data, T + "RequestStatus")
    etree.SubElement(status_el, T + "StatusCode").text = "3"
    param = etree.SubElement(status_el, T + "StatusParameter")
    etree.SubElement(param, T + "Key").text = "queue"
    etree.SubElement(param, T + "Value").text = "12"
    etree.SubElement(status_el, T + "StatusDescription").text = "В обработке"
    etree.SubElement(request, T + "CallerInformationSystemSignature").append(sign(data, service.clinic))
    assert service.call(request)[0] == 200
    service.deliver_all()
    _, got = service.call(smev.get_response(by=service.lab))
    back = got.find(f".//{T}SenderProvidedResponseData/{T}RequestStatus")
    assert (back.findtext(T + "StatusCode"), back.findtext(f"{T}StatusParameter/{T}Value"),
            back.findtext(T + "StatusDescription")) == ("3", "12", "В обработке")

    request = smev.send_response(mid, notice(), by=None)
    data = request.find(T + "SenderProvidedResponseData")
    data.remove(data.find(B + "MessagePrimaryContent"))
    apst = etree.SubElement(data, T + "AsyncProcessingStatus")
    etree.SubElement(apst, T + "OriginalMessageId").text = mid
    etree.SubElement(apst, T + "StatusCategory").text = "underProcessing"
    etree.SubElement(request, T + "CallerInformationSystemSignature").append(sign(data, service.clinic))
    status, body = service.call(request)
    detail = fault_detail(body)
    assert detail.tag == F + "IncorrectResponseContentType" and "AsyncProcessingStatus" in body.findtext("faultstring")



def test_service_records_over_smev_are_checked_like_rest_ones(service):
    mid = str(uuid.uuid1())
    status, answer = service.call(smev.send_request(record(id="SOAP-1", insurer="insurer"), message_id=mid, by=service.clinic))
    assert status == 200 and answer.findtext(f"{T}MessageMetadata/{T}Recipient/{T}Mnemonic") == "insurer"
    assert service.journal.get(mid).message_type == SERVICE_RECORD_NS
    detail = fault_detail(service.call(smev.send_request(record(id="SOAP-2", tariff="1.00", insurer="insurer"), by=service.clinic))[1])
    assert detail.tag == F + "InvalidContent" and detail.findtext(B + "Code") == "TARIFF_MISMATCH"
    detail = fault_detail(service.call(smev.send_request(record(id="SOAP-1", insurer="insurer"), by=service.clinic))[1])
    assert detail.findtext(B + "Code") == "SERVICE_RECORD_DUPLICATE"

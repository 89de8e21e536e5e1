"""Every kind of bad input gets a clear 4xx with its code and field, an audit row, and nothing queued."""
from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from demo.emulators.rest_recipient import RecipientServer
from tests.support import configs
from tests.support.configs import CLINIC_TOKEN, LAB_TOKEN
from tests.support.gateway_proc import envelope_json, notice
from tests.support.ids import uuid1_at

pytestmark = pytest.mark.broker

XML_ENVELOPE = """<?xml version="1.0" encoding="UTF-8"?>
<zl:Envelope xmlns:zl="urn://zdravlink/envelope/1.0"><zl:SenderProvidedData Id="SIGNED_BY_CONSUMER">
<zl:MessageID>{mid}</zl:MessageID><zl:Sender>lab</zl:Sender><zl:Recipient>clinic</zl:Recipient>
<zl:MessageType>urn://zdravlink/types/notice/1.0</zl:MessageType>
<zl:MessagePrimaryContent>{payload}</zl:MessagePrimaryContent></zl:SenderProvidedData></zl:Envelope>"""

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<zl:Envelope xmlns:zl="urn://zdravlink/envelope/1.0">&lol3;</zl:Envelope>"""

XXE = """<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<zl:Envelope xmlns:zl="urn://zdravlink/envelope/1.0">&xxe;</zl:Envelope>"""


@pytest.fixture(scope="module")
def clinic():
    server = RecipientServer(name="clinic").start()
    yield server
    server.stop()


@pytest.fixture
def gw(gateway_factory, clinic):
    return gateway_factory(configs.participants(clinic.url), configs.routes(),
                           settings=configs.settings(max_body_bytes=64 * 1024))


def xml(payload: str | None = None, mid: str | None = None) -> bytes:
    return XML_ENVELOPE.format(mid=mid or uuid.uuid1(), payload=payload or notice()).encode()


CASES = [
    # name, body, content type, token, status, code, field
    ("malformed JSON", b'{"messageId": ', "application/json", LAB_TOKEN, 400, "MALFORMED_JSON", "body"),
    ("malformed XML", b"<zl:Envelope><unclosed>", "application/xml", LAB_TOKEN, 400, "MALFORMED_XML", "body"),
    ("entity bomb", BOMB.encode(), "application/xml", LAB_TOKEN, 400, "XML_DTD_FORBIDDEN", "body"),
    ("external entity", XXE.encode(), "application/xml", LAB_TOKEN, 400, "XML_DTD_FORBIDDEN", "body"),
    ("schema-invalid payload",
     xml(notice(code="lower-case")), "application/xml", LAB_TOKEN, 422, "PAYLOAD_INVALID", "/n:Notice/n:Code"),
    ("envelope missing a field",
     json.dumps({k: v for k, v in envelope_json("lab", "clinic").items() if k != "recipient"}).encode(),
     "application/json", LAB_TOKEN, 400, "ENVELOPE_INVALID", "recipient"),
    ("MessageID not a UUID v1",
     json.dumps(envelope_json("lab", "clinic", message_id=str(uuid.uuid4()))).encode(),
     "application/json", LAB_TOKEN, 400, "ENVELOPE_INVALID", "/zl:Envelope/zl:SenderProvidedData/zl:MessageID"),
    ("unknown sender",
     json.dumps(envelope_json("ghost-lab", "clinic")).encode(), "application/json", LAB_TOKEN, 403,
     "UNKNOWN_SENDER", "Sender"),
    ("sender impersonated",
     json.dumps(envelope_json("clinic", "lab")).encode(), "application/json", LAB_TOKEN, 403,
     "SENDER_MISMATCH", "Sender"),
    ("unknown recipient",
     json.dumps(envelope_json("lab", "nobody")).encode(), "application/json", LAB_TOKEN, 422,
     "UNKNOWN_RECIPIENT", "Recipient"),
    ("forbidden route",
     json.dumps(envelope_json("clinic", "lab")).encode(), "application/json", CLINIC_TOKEN, 403,
     "ROUTE_FORBIDDEN", "Recipient"),
    ("message type differs from the payload",
     json.dumps({**envelope_json("lab", "clinic"), "messageType": "urn://zdravlink/types/other/1.0"}).encode(),
     "application/json", LAB_TOKEN, 422, "MESSAGE_TYPE_MISMATCH", "MessageType"),
    ("wrong token", json.dumps(envelope_json("lab", "clinic")).encode(), "application/json", "not-a-token", 401,
     "INVALID_TOKEN", "Authorization"),
    ("no token", json.dumps(envelope_json("lab", "clinic")).encode(), "application/json", None, 401,
     "AUTHENTICATION_REQUIRED", "Authorization"),
    ("unsupported media type", b"hello", "text/plain", LAB_TOKEN, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
    ("oversized body", xml(notice(text="я" * 40_000)), "application/xml", LAB_TOKEN, 413, "BODY_TOO_LARGE", "body"),
    ("JSON nested 5,000 deep", b'{"messageId": ' + b"[" * 5000 + b"]" * 5000 + b"}", "application/json", LAB_TOKEN,
     400, "JSON_TOO_DEEP", "body"),
    ("JSON nested 100 deep", json.dumps({**envelope_json("lab", "clinic"), "x": json.loads("[" * 100 + "]" * 100)})
     .encode(), "application/json", LAB_TOKEN, 400, "JSON_TOO_DEEP", "x" + "[0]" * 63),
    ("NUL in messageId", json.dumps({**envelope_json("lab", "clinic"), "messageId": "c5d00674-e67e-11f1-81ba\x00"})
     .encode(), "application/json", LAB_TOKEN, 400, "INVALID_CHARACTER", "messageId"),
    ("lone surrogate", json.dumps(envelope_json("lab", "clinic", payload=notice(text="PLACEHOLDER"))).encode()
     .replace(b"PLACEHOLDER", b"\\ud800"), "application/json", LAB_TOKEN, 400, "INVALID_CHARACTER", "payload"),
    ("duplicate key", json.dumps(envelope_json("lab", "clinic"))[:-1].encode() + b', "recipient": "lab"}',
     "application/json", LAB_TOKEN, 400, "JSON_DUPLICATE_KEY", "recipient"),
    ("MessageID three days old", json.dumps(envelope_json(
        "lab", "clinic", message_id=uuid1_at(datetime.now(UTC) - timedelta(days=3)))).encode(),
     "application/json", LAB_TOKEN, 400, "STALE_MESSAGE_ID", "MessageID"),
    ("MessageID an hour ahead", json.dumps(envelope_json(
        "lab", "clinic", message_id=uuid1_at(datetime.now(UTC) + timedelta(hours=1)))).encode(),
     "application/json", LAB_TOKEN, 400, "STALE_MESSAGE_ID", "MessageID"),
    ("MessageID dated in the year 4000", json.dumps(envelope_json(
        "lab", "clinic", message_id=uuid1_at(datetime(4000, 1, 1, tzinfo=UTC)))).encode(),
     "application/json", LAB_TOKEN, 400, "STALE_MESSAGE_ID", "MessageID"),
]


def post(gw, body: bytes, content_type: str, token: str | None):
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return gw.http.post("/api/v1/messages", content=body, headers=headers)


def test_each_bad_input_is_refused_with_its_code_and_nothing_is_queued(gw, clinic):
    for name, body, ctype, token, status, code, field in CASES:
        r = post(gw, body, ctype, token)
        assert r.status_code == status, (name, r.text)
        assert r.headers["content-type"] == "application/problem+json", name
        problem = r.json()
        assert (problem["code"], problem["field"]) == (code, field), (name, problem)
        assert problem["type"] == f"urn:zdravlink:problem:{code}" and problem["detail"], name

    # A MessageID reused with another body is refused; the first message is untouched.
    first = envelope_json("lab", "clinic")
    assert gw.post(first, LAB_TOKEN).status_code == 202
    other = {**first, "payload": notice(text="другой текст")}
    r = gw.post(other, LAB_TOKEN)
    assert r.status_code == 409 and r.json()["code"] == "MESSAGE_ID_REUSED" and r.json()["field"] == "MessageID"
    gw.wait_status(first["messageId"], LAB_TOKEN, "DELIVERED")

    engine = sa.create_engine(gw.db_url)
    with engine.connect() as conn:
        audited = [row[0] for row in conn.execute(sa.text("SELECT code FROM rejections ORDER BY id"))]
        statuses = dict(conn.execute(sa.text("SELECT message_id, status FROM messages")).all())
    engine.dispose()
    assert audited == [c[5] for c in CASES] + ["MESSAGE_ID_REUSED"]
    # Only the one good message was journalled for delivery; authenticated senders' refused
    # envelopes are kept as REJECTED, and nothing but the good message reached the recipient.
    assert [mid for mid, st in statuses.items() if st != "REJECTED"] == [first["messageId"]]
    assert set(statuses.values()) == {"REJECTED", "DELIVERED"}
    assert list(clinic.accepted) == [first["messageId"]]
    text = gw.metrics()
    assert 'zl_messages_rejected_total{code="XML_DTD_FORBIDDEN",source="rest"} 2.0' in text


def test_a_rejected_message_id_can_be_sent_again_corrected(gw, clinic):
    mid = str(uuid.uuid1())
    bad = post(gw, xml(notice(code="bad code"), mid=mid), "application/xml", LAB_TOKEN)
    assert bad.status_code == 422
    assert gw.status(mid, LAB_TOKEN)["status"] == "REJECTED"
    good = post(gw, xml(mid=mid), "application/xml", LAB_TOKEN)
    assert good.status_code == 202, good.text
    st = gw.wait_status(mid, LAB_TOKEN, "DELIVERED")
    assert [e["event"] for e in st["trail"]][:2] == ["REJECTED", "ACCEPTED"]


def test_patient_data_is_masked_in_audit_and_logs(gw):
    snils = "11223344595"
    r = post(gw, xml(notice(snils=snils, code="bad code")), "application/xml", LAB_TOKEN)
    assert r.status_code == 422
    engine = sa.create_engine(gw.db_url)
    with engine.connect() as conn:
        details = " ".join(row[0] for row in conn.execute(sa.text("SELECT detail FROM rejections")))
        events = " ".join(row[0] for row in conn.execute(sa.text("SELECT detail FROM events")))
    engine.dispose()
    bad_snils = post(gw, xml(notice(snils="1122334459X")), "application/xml", LAB_TOKEN)
    assert bad_snils.status_code == 422
    # The sender sees its own value; the operator's records and logs do not.
    assert "1122334459X" in bad_snils.json()["detail"]
    engine = sa.create_engine(gw.db_url)
    with engine.connect() as conn:
        details += " ".join(row[0] for row in conn.execute(sa.text("SELECT detail FROM rejections")))
    engine.dispose()
    for text in (details, events, gw.log("api")):
        assert snils not in text and "1122334459X" not in text
    assert "*********9X" in details


def test_lab_json_with_a_nul_or_a_repeated_key_is_refused_before_mapping(gw):
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {LAB_TOKEN}"}
    nul = json.dumps({"messageId": "LAB-0001\x00", "results": []}).encode()
    r = gw.http.post("/api/v1/labs/lab/results", content=nul, headers=headers)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (400, "INVALID_CHARACTER", "messageId")
    twice = b'{"messageId": "LAB-0001", "messageId": "LAB-0002"}'
    r = gw.http.post("/api/v1/labs/lab/results", content=twice, headers=headers)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (400, "JSON_DUPLICATE_KEY", "messageId")
    engine = sa.create_engine(gw.db_url)
    with engine.connect() as conn:
        audited = [row[0] for row in conn.execute(sa.text("SELECT code FROM rejections ORDER BY id"))]
    engine.dispose()
    assert audited == ["INVALID_CHARACTER", "JSON_DUPLICATE_KEY"]

"""Every kind of bad input gets a clear 4xx with its code and field, an audit row, and nothing queued.

One gateway and one clinic serve the whole module (a gateway is 4-5 processes and seconds to
start). So a test looks only at what it caused: the refusals audited after its ``rejection_mark``,
the journal rows and deliveries of its own MessageIDs, and the change its requests made to a
counter. Refusals are audited before they are answered and the module's tests run one after
another, so the rows after a test's mark are its own.
"""
from __future__ import annotations

import json
import re
import uuid
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa

from demo.emulators.rest_recipient import RecipientServer
from tests.conftest import module_gateway
from tests.support import configs
from tests.support.configs import CLINIC_TOKEN, LAB_TOKEN
from tests.support.gateway_proc import GatewayProcesses, envelope_json, notice
from tests.support.ids import uuid1_at

# xdist_group: under `pytest -n … --dist loadgroup` one worker runs the module, whose tests share one gateway.
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("bad_input")]

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
def clinic() -> Iterator[RecipientServer]:
    """The recipient of the module's few good messages: tests look for their own MessageIDs in it."""
    server = RecipientServer(name="clinic").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(clinic: RecipientServer, amqp_url: str,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcesses]:
    """One gateway for the module, built as ``gateway_factory`` builds one (that fixture is per test):
    nothing a test here does changes its configuration or its state beyond the test's own messages."""
    yield from module_gateway(tmp_path_factory.mktemp("bad-input") / "gw", configs.participants(clinic.url),
                              configs.routes(), settings=configs.settings(max_body_bytes=64 * 1024), amqp_url=amqp_url)


def query(gw: GatewayProcesses, sql: str, **params: object) -> list[sa.Row]:
    """Rows of the shared gateway's journal, read with an engine of the test's own (closed at once: the
    gateway's processes keep writing to the same SQLite file)."""
    engine = sa.create_engine(gw.db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()


def rejection_mark(gw: GatewayProcesses) -> int:
    """The newest audited refusal so far: the rows after it are the refusals of the test that took it."""
    return query(gw, "SELECT coalesce(max(id), 0) FROM rejections")[0][0]


def refusals_after(gw: GatewayProcesses, mark: int) -> list[sa.Row]:
    """The refusals audited after ``mark`` (code, detail, message_id), oldest first."""
    return query(gw, "SELECT code, detail, message_id FROM rejections WHERE id > :mark ORDER BY id", mark=mark)


def statuses_of(gw: GatewayProcesses, message_ids: Collection[str]) -> dict[str, str]:
    """The journalled status of each of these MessageIDs that the journal has."""
    return {mid: status for mid, status in query(gw, "SELECT message_id, status FROM messages")
            if mid in message_ids}


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


def post(gw: GatewayProcesses, body: bytes, content_type: str, token: str | None) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return gw.http.post("/api/v1/messages", content=body, headers=headers)


UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_each_bad_input_is_refused_with_its_code_and_nothing_is_queued(gw, clinic):
    mark = rejection_mark(gw)
    dtd_refused = gw.counted("zl_messages_rejected_total", code="XML_DTD_FORBIDDEN", source="rest")
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

    refused = refusals_after(gw, mark)
    assert [row.code for row in refused] == [c[5] for c in CASES] + ["MESSAGE_ID_REUSED"]
    # This test's messages: every MessageID its bodies carry, and any the gateway audited them under.
    ours = {m.decode() for c in CASES for m in UUID.findall(c[1])} | {row.message_id for row in refused
                                                                       if row.message_id} | {first["messageId"]}
    statuses = statuses_of(gw, ours)
    # Only the one good message was journalled for delivery; authenticated senders' refused
    # envelopes are kept as REJECTED, and nothing but the good message reached the recipient.
    assert [mid for mid, st in statuses.items() if st != "REJECTED"] == [first["messageId"]]
    assert set(statuses.values()) == {"REJECTED", "DELIVERED"}
    assert [mid for mid in clinic.accepted if mid in ours] == [first["messageId"]]
    assert gw.counted("zl_messages_rejected_total", code="XML_DTD_FORBIDDEN", source="rest") \
        == dtd_refused + 2


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
    mark = rejection_mark(gw)
    snils = "11223344595"
    ours = [str(uuid.uuid1()), str(uuid.uuid1())]
    r = post(gw, xml(notice(snils=snils, code="bad code"), mid=ours[0]), "application/xml", LAB_TOKEN)
    assert r.status_code == 422
    bad_snils = post(gw, xml(notice(snils="1122334459X"), mid=ours[1]), "application/xml", LAB_TOKEN)
    assert bad_snils.status_code == 422
    # The sender sees its own value; the operator's records and logs do not.
    assert "1122334459X" in bad_snils.json()["detail"]
    details = " ".join(row.detail for row in refusals_after(gw, mark))
    events = " ".join(detail for mid, detail in query(gw, "SELECT message_id, detail FROM events") if mid in ours)
    for text in (details, events, gw.log("api")):
        assert snils not in text and "1122334459X" not in text
    assert "*********9X" in details


def test_lab_json_with_a_nul_or_a_repeated_key_is_refused_before_mapping(gw):
    mark = rejection_mark(gw)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {LAB_TOKEN}"}
    nul = json.dumps({"messageId": "LAB-0001\x00", "results": []}).encode()
    r = gw.http.post("/api/v1/labs/lab/results", content=nul, headers=headers)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (400, "INVALID_CHARACTER", "messageId")
    twice = b'{"messageId": "LAB-0001", "messageId": "LAB-0002"}'
    r = gw.http.post("/api/v1/labs/lab/results", content=twice, headers=headers)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (400, "JSON_DUPLICATE_KEY", "messageId")
    assert [row.code for row in refusals_after(gw, mark)] == ["INVALID_CHARACTER", "JSON_DUPLICATE_KEY"]

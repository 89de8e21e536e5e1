"""Service records over the wire: submitted over REST, refused with problem+json, their state readable."""
from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from gateway.config import hash_token
from gateway.service_records import SERVICE_RECORD_NS
from tests.unit.test_service_records import TARIFFS, record

pytestmark = pytest.mark.broker
CLINIC, SMO = "clinic-sr-token", "smo-sr-token"


@pytest.fixture
def gw(gateway_factory, tmp_path: Path):
    tariffs = tmp_path / "tariffs"
    tariffs.mkdir()
    (tariffs / "t.yaml").write_text(TARIFFS, encoding="utf-8")
    participants = (
        "participants:\n"
        f"  - {{mnemonic: clinic, name: Clinic, kind: mis, delivery: {{mode: pull}}, "
        f"credentials: {{api_token_sha256: [\"{hash_token(CLINIC)}\"]}}}}\n"
        f"  - {{mnemonic: smo, name: SMO, kind: insurer, delivery: {{mode: pull}}, signature_required: false, "
        f"credentials: {{api_token_sha256: [\"{hash_token(SMO)}\"]}}}}\n")
    routes = f'routes:\n  - {{name: records, sender: clinic, message_type: "{SERVICE_RECORD_NS}", recipient: smo}}\n'
    return gateway_factory(participants, routes, tariffs=tariffs)


def post(gw, payload: str):
    return gw.post({"messageId": str(uuid.uuid1()), "sender": "clinic", "recipient": "smo",
                    "messageType": SERVICE_RECORD_NS, "payload": payload}, CLINIC)


def test_record_accepted_refused_and_its_state(gw):
    ok = post(gw, record(id="R-10"))
    assert ok.status_code == 202, ok.text
    bad = post(gw, record(id="R-11", code="X99"))
    assert bad.status_code == 422 and bad.json()["code"] == "SERVICE_CODE_UNKNOWN" \
        and bad.json()["field"] == "Service/Code"
    dup = post(gw, record(id="R-10"))
    assert dup.status_code == 409 and dup.json()["code"] == "SERVICE_RECORD_DUPLICATE"

    state = gw.http.get("/api/v1/service-records/R-10", params={"codeMO": "770001"},
                        headers={"Authorization": f"Bearer {CLINIC}"})
    assert state.status_code == 200 and state.json()["outcome"] == "pending"
    assert state.json()["messageId"] == ok.json()["messageId"]
    assert gw.http.get("/api/v1/service-records/R-10", params={"codeMO": "770001"},
                       headers={"Authorization": f"Bearer {SMO}"}).status_code == 200
    missing = gw.http.get("/api/v1/service-records/R-11", params={"codeMO": "770001"},
                          headers={"Authorization": f"Bearer {CLINIC}"})
    assert missing.status_code == 404 and missing.json()["code"] == "SERVICE_RECORD_NOT_FOUND"

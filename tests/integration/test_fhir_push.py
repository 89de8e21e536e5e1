"""A recipient that asks for FHIR gets an R4 Bundle of the lab result, over the wire."""
from __future__ import annotations

import json
from pathlib import Path

import hl7
import httpx

from adapters.fhir.validation import STRICT, validate_bundle
from adapters.hl7v2.oru import LAB_RESULT_NS, map_message
from adapters.mapping.lab_mapping import load_mapping
from adapters.rest.push import push
from demo.emulators.rest_recipient import RecipientServer
from gateway.envelope import Envelope
from gateway.xmlsafe import parse_xml
from tests.support.gateway_proc import notice

DATA = Path(__file__).resolve().parents[1] / "data"


def lab_result_envelope() -> Envelope:
    mapping = load_mapping(DATA / "mappings" / "abl-lab.yaml", [])
    text = next((DATA / "hl7v2").glob("13_*.hl7")).read_bytes().decode().replace("\n", "\r").strip("\r")
    mapped = map_message(hl7.parse(text), mapping)
    return Envelope(message_id=mapped.message_id, sender="abl-lab", recipient="clinic", message_type=LAB_RESULT_NS,
                    payload=mapped.payload)


def test_fhir_recipient_gets_a_valid_bundle():
    env = lab_result_envelope()
    server = RecipientServer(name="fhir-mis").start()
    try:
        with httpx.Client() as client:
            res = push(client, server.url, env.to_xml(), env.message_id, "fhir", 1)
    finally:
        server.stop()
    assert res.delivered, res.detail
    got = server.requests[0]
    assert got.content_type == "application/fhir+json"
    bundle = json.loads(got.body)
    validate_bundle(bundle, mode=STRICT)
    kinds = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert kinds.count("Observation") == 21 and "DiagnosticReport" in kinds
    hb = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
              and any(c.get("code") == "1017128" for c in e["resource"]["code"]["coding"]))
    assert hb["valueQuantity"]["value"] == 173 and hb["code"]["coding"][0]["system"] == "urn:oid:1.2.643.5.1.13.13.11.1080"


def test_a_type_without_a_fhir_form_is_a_permanent_failure():
    env = Envelope(message_id="4b1c7a8e-c85e-11f1-9c3a-02fc00000001", sender="lab", recipient="clinic",
                   message_type="urn://zdravlink/types/notice/1.0", payload=parse_xml(notice().encode()))
    server = RecipientServer(name="fhir-mis").start()
    try:
        with httpx.Client() as client:
            res = push(client, server.url, env.to_xml(), env.message_id, "fhir", 1)
    finally:
        server.stop()
    assert server.requests == []
    assert not res.delivered and not res.retryable and "no FHIR form" in res.detail

"""The collected real-world messages over MLLP with real sockets, through the whole spine to a test MIS.

Each message gets the ACK its manifest says (AA, AA with ERR warnings, AE with the ERR location
of each gap, AR for an empty MSH-10); each accepted one arrives at the MIS signed, in an envelope
that passes the published envelope schema, carrying the expected lab result field by field.

Real feeds reuse control ids (the HL7 ELR examples all say 1234567890, the ESKULAP ones 26590),
and the gateway rightly refuses a reused MSH-10 with other content (MESSAGE_ID_REUSED); so the
messages go in batches, each to a gateway of its own, with no control id twice in a batch.
"""
from __future__ import annotations

import json
from pathlib import Path

import hl7
import pytest
from lxml import etree

from adapters.hl7v2.ack import charset_of
from adapters.hl7v2.message_ids import message_id_for
from adapters.hl7v2.oru import LAB_RESULT_NS
from demo.emulators.rest_recipient import RecipientServer
from gateway.config import hash_token
from signing import Certificate, TrustStore
from tests.integration.test_lab_hl7 import exchange, wait_for
from tests.support.envelopes import assert_valid_envelope
from tests.support.field_diff import xml_differences

pytestmark = pytest.mark.broker
DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = DATA / "lab-result-goldens"
MANIFEST = {k: v for k, v in json.loads((GOLDEN / "manifest.json").read_text(encoding="utf-8")).items()
            if not k.startswith("_")}
LABS = sorted({entry["lab"] for entry in MANIFEST.values()})
BATCHES = [["14", "15", "16", "17", "18", "19", "21", "22", "23", "24", "28", "29", "30"], ["20", "25"], ["26"], ["27"]]


def raw(prefix: str) -> bytes:
    return next((DATA / "hl7v2-collected").glob(f"{prefix}_*.hl7")).read_bytes()


def control_id(message: bytes) -> str:
    """MSH-10 read with python-hl7 alone."""
    text = message.decode(charset_of(message)).lstrip("\ufeff").replace("\r\n", "\r").replace("\n", "\r")
    return str(hl7.parse(text).segment("MSH")(10))


@pytest.fixture
def clinic(demo_keys: Path):
    server = RecipientServer(name="clinic", trust=TrustStore.from_directory(demo_keys / "trust"),
                             gateway=Certificate.load(demo_keys / "gateway-gost2012-256.pem")).start()
    yield server
    server.stop()


@pytest.fixture
def gw(gateway_factory, clinic, demo_keys, tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for lab in LABS:
        (mappings / f"{lab}.yaml").write_bytes((DATA / "mappings" / f"{lab}.yaml").read_bytes())
    people = "".join(f"  - {{mnemonic: {lab}, name: {lab}, kind: lis, delivery: {{mode: pull}}, "
                     f"signature_required: false, credentials: {{api_token_sha256: [\"{hash_token(lab)}\"]}}}}\n"
                     for lab in LABS)
    people += f"  - {{mnemonic: clinic, name: Поликлиника, kind: mis, delivery: {{mode: rest, url: \"{clinic.url}\"}}}}\n"
    routes = "routes:\n" + "".join(
        f"  - {{name: {lab}-results, sender: {lab}, message_type: \"{LAB_RESULT_NS}\", recipient: clinic}}\n"
        for lab in LABS)
    settings = (f'signing: {{key: "{demo_keys / "gateway-gost2012-256.key"}", '
                f'certificate: "{demo_keys / "gateway-gost2012-256.pem"}", trust_store: "{demo_keys / "trust"}"}}\n'
                "relay: {batch_size: 200, poll_interval_seconds: 0.1}\n")
    return gateway_factory(f"participants:\n{people}", routes, settings=settings, mappings=mappings)


def test_every_collected_message_is_in_a_batch_and_no_batch_accepts_a_control_id_twice():
    """18 and 19 share one: 18 is refused (and kept), so 19 comes as the lab's corrected resend would."""
    assert sorted(p for batch in BATCHES for p in batch) == sorted(MANIFEST)
    for batch in BATCHES:
        ids = [(MANIFEST[p]["lab"], control_id(raw(p))) for p in batch if MANIFEST[p]["ack"] == "AA"]
        assert len(ids) == len(set(ids)), batch


@pytest.mark.parametrize("batch", BATCHES, ids=["-".join(b) for b in BATCHES])
def test_each_message_gets_its_ack_and_each_accepted_one_arrives_as_expected(gw, clinic, batch):
    acks = exchange(gw.mllp_port, [raw(p) for p in batch], chunk=900)
    for prefix, ack in zip(batch, acks):
        expected = MANIFEST[prefix]
        msa = ack.segment("MSA")
        assert (str(msa[1]), str(msa[2])) == (expected["ack"], control_id(raw(prefix))), prefix
        errs = [f"{err[2]} {err[4]}" for err in ack.segments("ERR")] if expected["err"] else []
        assert errs == expected["err"], (prefix, [str(e) for e in ack.segments("ERR")])
    accepted = {message_id_for(MANIFEST[p]["lab"], control_id(raw(p))): p for p in batch
                if MANIFEST[p]["ack"] == "AA"}
    wait_for(lambda: len(clinic.requests) >= len(accepted), timeout=60)
    delivered = {}
    for request in clinic.requests:
        env = assert_valid_envelope(request.body)
        assert request.signature == "OK gost2012-256"
        delivered[env.message_id] = env
    assert set(delivered) == set(accepted)
    for message_id, prefix in accepted.items():
        golden = etree.parse(str(GOLDEN / f"{prefix}.lab-result.xml")).getroot()
        assert xml_differences(golden, delivered[message_id].payload, frozenset({"Replaces"})) == [], prefix

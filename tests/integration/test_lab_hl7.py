"""Laboratories over HL7 v2 / MLLP through the whole spine, to a test MIS on 127.0.0.1.

Every reference message in tests/data/hl7v2 goes over a real socket to the gateway's
MLLP listener (its own process), with the mapping file written for its lab; each
comes out at the MIS as a lab result that passes the XSD and carries the gateway's
signature, or, where the message is malformed, as a precise NAK.

One gateway and one MIS serve the whole module (a gateway is 4-5 processes and seconds to
start). So each test sends messages of its own — its own control ids, JSON messageIds and
orders, never another test's — and looks only at what became of those: the deliveries,
kept records and refusal audits of its own MessageIDs, and the change its messages made
to a counter. Another test's result, however late it arrives, neither fails nor passes it.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest
from lxml import etree

from adapters.hl7v2.mllp import FrameReader, frame
from adapters.hl7v2.oru import LAB_RESULT_NS, message_id_for
from demo.emulators.rest_recipient import RecipientServer
from gateway.envelope import Envelope
from gateway.journal import Journal
from gateway.xmlsafe import parse_xml
from signing import Certificate, TrustStore
from tests.conftest import module_gateway
from tests.support.envelopes import assert_valid_envelope
from tests.support.gateway_proc import GatewayProcesses, delivered

# xdist_group: under `pytest -n … --dist loadgroup` one worker runs the module, whose tests share one gateway
# (pytest stays at 9.1 for it, see pyproject.toml; spread over workers, each would start a gateway of its own).
pytestmark = [pytest.mark.broker, pytest.mark.xdist_group("lab_hl7")]
DATA = Path(__file__).resolve().parents[1] / "data"
LABS = ["nist-lab", "realm-lab", "cerner-lab", "ghh-lab", "renal-lab", "abl-lab"]
SCHEMA = etree.XMLSchema(etree.parse(str(Path(__file__).resolve().parents[2] / "schemas_xsd/payloads/lab-result-1.0.xsd")))


GAP_TOKEN = "gap-lab-token"
#: A lab like gap-lab whose mapping file the test of kept messages fixes on disk. A lab of that test's
#: own: `replay --kept` maps again every message its lab ever had kept, and the gaps other tests leave
#: with gap-lab (a patient without an id, a Polish lab's unmapped unit) stay gaps after any fix.
KEPT_LAB = "kept-lab"


def participants(clinic_url: str) -> str:
    from gateway.config import hash_token

    labs = "".join(f"  - {{mnemonic: {lab}, name: {lab}, kind: lis, delivery: {{mode: pull}}, signature_required: false,"
                   f" credentials: {{api_token_sha256: [\"{hash_token(lab + '-token')}\"]}}}}\n"
                   for lab in [*LABS, "gap-lab", KEPT_LAB])
    return (f"participants:\n{labs}"
            f"  - {{mnemonic: clinic, name: Поликлиника, kind: mis, delivery: {{mode: rest, url: \"{clinic_url}\"}}}}\n")


def routes() -> str:
    return "routes:\n" + "".join(
        f"  - {{name: {lab}-results, sender: {lab}, message_type: \"{LAB_RESULT_NS}\", recipient: clinic}}\n"
        for lab in [*LABS, "gap-lab", KEPT_LAB])


def gap_mapping(lab: str, facility: str) -> str:
    """A mapping that knows HGB in g/L only: an unknown code or a unit it has no conversion for is a gap."""
    return (f"lab: {lab}\nidentify: {{sending_facility: [{facility}]}}\nrecipient: {{fixed: clinic}}\n"
            "fields: {patient: {local_id: PID-3.1}}\n"
            "tests: {HGB: {fsli: '1017128', display: Гемоглобин общий, unit: {code: g/L}}}\n")


@pytest.fixture(scope="module")
def clinic(demo_keys: Path) -> Iterator[RecipientServer]:
    """The MIS every lab result goes to, for the whole module: tests pick their own deliveries with ``delivered``."""
    server = RecipientServer(name="clinic", trust=TrustStore.from_directory(demo_keys / "trust"),
                             gateway=Certificate.load(demo_keys / "gateway-gost2012-256.pem")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(clinic: RecipientServer, demo_keys: Path, amqp_url: str,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcesses]:
    """One gateway for the module, built as ``gateway_factory`` builds one (that fixture is per test).

    Its processes load the mapping files once, at start; only the test of kept messages changes
    one on disk, that of ``KEPT_LAB``, and reads it back only through ``zdravlink replay``.
    """
    where = tmp_path_factory.mktemp("lab-hl7")
    mappings = where / "mappings"
    mappings.mkdir()
    for lab in LABS:
        (mappings / f"{lab}.yaml").write_bytes((DATA / "mappings" / f"{lab}.yaml").read_bytes())
    (mappings / "gap-lab.yaml").write_text(gap_mapping("gap-lab", "GAPLAB"), encoding="utf-8")
    (mappings / f"{KEPT_LAB}.yaml").write_text(gap_mapping(KEPT_LAB, "KEPTLAB"), encoding="utf-8")
    settings = (f'signing: {{key: "{demo_keys / "gateway-gost2012-256.key"}", '
                f'certificate: "{demo_keys / "gateway-gost2012-256.pem"}", trust_store: "{demo_keys / "trust"}"}}\n'
                "relay: {batch_size: 200, poll_interval_seconds: 0.1}\n")
    yield from module_gateway(where / "gw", participants(clinic.url), routes(), settings=settings, amqp_url=amqp_url,
                              mappings=mappings, mllp=True)


def gaps_counted(gw: GatewayProcesses, lab: str, code: str, lab_code: str) -> float:
    """zl_mapping_gaps_total for one lab and code as the gateway exposes it now (0 before the first).

    The counter grows over the module (the JSON gaps count too): a test compares it before and after.
    """
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(gw.metrics()):
        for sample in family.samples:
            if sample.name == "zl_mapping_gaps_total" and sample.labels == {
                    "code": code, "lab": lab, "lab_code": lab_code}:
                return sample.value
    return 0.0


def exchange(port: int, messages: list[bytes], chunk: int | None = None, charset: str = "utf-8") -> list[hl7.Message]:
    """Send framed messages on one connection (optionally in small pieces) and read one ACK each."""
    reader = FrameReader()
    acks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        data = b"".join(frame(m) for m in messages)
        step = chunk or len(data)
        for i in range(0, len(data), step):
            sock.sendall(data[i:i + step])
            if chunk:
                time.sleep(0.01)
        while len(acks) < len(messages):
            got = sock.recv(4096)
            assert got, "connection closed before every ACK came"
            acks += reader.feed(got)
    return [hl7.parse(a.decode(charset, "replace")) for a in acks]


def reference(prefix: str) -> bytes:
    return next((DATA / "hl7v2").glob(f"{prefix}_*.hl7")).read_bytes()


def reference_as(prefix: str, tag: str) -> bytes:
    """The reference message with ``-tag`` after its control id (MSH-10) and its filler order number (OBR-3.1).

    For a test that sends a reference message the module's gateway may have had already: under the
    same control id it would be a resend (acknowledged, never delivered again), and for the same order
    a later version naming the earlier one in Replaces. Everything else in it stays as it is.
    """
    segments = reference(prefix).split(b"\r")
    for i, segment in enumerate(segments):
        fields = segment.split(b"|")
        if fields[0] == b"MSH":
            fields[9] += b"-" + tag.encode()  # MSH-1 is the field separator itself: MSH-10 is fields[9]
        elif fields[0] == b"OBR":
            number, _, rest = fields[3].partition(b"^")
            fields[3] = number + b"-" + tag.encode() + (b"^" + rest if rest else b"")
        segments[i] = b"|".join(fields)
    return b"\r".join(segments)


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_every_reference_message_becomes_a_result_at_the_mis_or_a_precise_nak(gw, clinic):
    prefixes = ["01", "02", "03", "04", "05", "07", "08", "09", "11", "13"]
    acks = exchange(gw.mllp_port, [reference(p) for p in prefixes], chunk=700)
    codes = {p: str(a.segment("MSA")[1]) for p, a in zip(prefixes, acks)}
    assert codes == {**{p: "AA" for p in prefixes}, "09": "AE", "11": "AE"}, codes
    controls = []
    for p, a in zip(prefixes, acks):
        sent = hl7.parse(reference(p).decode().replace("\n", "\r").strip("\r"))
        assert str(a.segment("MSA")[2]) == str(sent.segment("MSH")[10])
        controls.append(str(sent.segment("MSH")[10]))
    err = acks[prefixes.index("09")].segment("ERR")
    assert str(err[2]) == "PID^1^7" and "VALUE_INVALID" in str(err[8])
    renal = [(str(e[2]), str(e[8]).split(":")[0]) for e in acks[prefixes.index("11")].segments("ERR")]
    assert renal == [("OBX^1^5", "VALUE_MISSING"), ("OBX^4^5", "VALUE_MISSING")]
    # realm's OBR-25 says F over a preliminary test: accepted, with a warning the result carries too
    (warning,) = acks[prefixes.index("07")].segments("ERR")
    assert (str(warning[2]), str(warning[4])) == ("OBR^1^25", "W") and "STATUS_LOWERED" in str(warning[8])
    # whichever lab took it: a NAKed message delivered after all would show up among the senders below
    ours = {message_id_for(lab, control) for lab in LABS for control in controls}
    wait_for(lambda: len(delivered(clinic, ours)) >= 8)
    results = delivered(clinic, ours)
    for got in results:
        assert_valid_envelope(got.body)
        env = Envelope.from_element(parse_xml(got.body))
        assert env.message_type == LAB_RESULT_NS and env.recipient == "clinic"
        assert SCHEMA.validate(env.payload), SCHEMA.error_log
        assert got.signature == "OK gost2012-256"
    labs = sorted(Envelope.from_element(parse_xml(r.body)).sender for r in results)
    assert labs == sorted(["nist-lab"] * 5 + ["realm-lab", "cerner-lab", "abl-lab"])


def test_resent_message_is_acknowledged_again_and_delivered_once(gw, clinic):
    message = reference_as("01", "resent")
    mid = message_id_for("nist-lab", "NIST-100929110701660-resent")
    first = exchange(gw.mllp_port, [message])
    again = exchange(gw.mllp_port, [message])
    assert str(first[0].segment("MSA")[1]) == str(again[0].segment("MSA")[1]) == "AA"
    wait_for(lambda: len(delivered(clinic, [mid])) >= 1)
    time.sleep(1.0)
    assert len(delivered(clinic, [mid])) == 1


def test_gaps_are_nak_ae_audited_counted_and_masked(gw, clinic):
    msg = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|G-1|P|2.5.1\r"
           "PID|||^^^^MR||Иванов^Иван^^^^^L||19800101|M\r"
           "OBR|1|P1|F1|CBC\r"
           "OBX|1|NM|HGB^Гемоглобин||13.5|g/dL|||||F\r"
           "OBX|2|NM|XYZ^Unknown||1.0|mmol/L|||||F\r").encode()
    mid = message_id_for("gap-lab", "G-1")
    counted = gaps_counted(gw, "gap-lab", "UNMAPPED_TEST_CODE", "XYZ")
    (ack,) = exchange(gw.mllp_port, [msg])
    assert str(ack.segment("MSA")[1]) == "AE" and str(ack.segment("MSA")[2]) == "G-1"
    errs = {str(seg[2]): str(seg[8]) for seg in ack.segments("ERR")}
    assert set(errs) == {"PID^1^3^1^1", "OBX^1^6", "OBX^2^3^1^1"}, errs
    assert "UNMAPPED_TEST_CODE" in errs["OBX^2^3^1^1"] and "UNMAPPED_UNIT" in errs["OBX^1^6"]
    journal = Journal(gw.db_url)
    audits = [(a["source"], a["code"]) for a in journal.rejections() if a["message_id"] == mid]
    journal.engine.dispose()
    assert audits == [("hl7", "PATIENT_ID_MISSING")]
    metrics = gw.metrics()
    assert f'zl_mapping_gaps_total{{code="UNMAPPED_TEST_CODE",lab="gap-lab",lab_code="XYZ"}} {counted + 1}' in metrics
    for name in ("mllp", "api"):
        assert "Иванов" not in gw.log(name)
    assert delivered(clinic, [mid]) == []


def test_unknown_sender_and_wrong_message_type_are_ar(gw):
    unknown = b"MSH|^~\\&|APP|NOBODY|GW|GW|20261123101500||ORU^R01|U-1|P|2.5.1\rPID|||1\rOBR|1\rOBX|1|NM|HGB||1|g/L\r"
    adt = b"MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ADT^A01|A-1|P|2.5.1\rPID|||1\r"
    a, b = exchange(gw.mllp_port, [unknown, adt])
    assert (str(a.segment("MSA")[1]), str(a.segment("ERR")[2])) == ("AR", "MSH^1^4")
    assert (str(b.segment("MSA")[1]), str(b.segment("ERR")[2])) == ("AR", "MSH^1^9")


def test_windows_1251_message_round_trips(gw, clinic):
    text = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|W-1|P|2.5.1||||||WINDOWS-1251\r"
            "PID|||П-123^^^^MR||Петров^Пётр||19800101|M\r"
            "OBR|1|P1|F1|CBC\r"
            "OBX|1|NM|HGB^Гемоглобин||135|g/L|120-160|N|||F\r")
    mid = message_id_for("gap-lab", "W-1")
    (ack,) = exchange(gw.mllp_port, [text.encode("cp1251")])
    assert str(ack.segment("MSA")[1]) == "AA", str(ack)
    wait_for(lambda: len(delivered(clinic, [mid])) >= 1)
    env = Envelope.from_element(parse_xml(delivered(clinic, [mid])[0].body))
    ns = {"lr": LAB_RESULT_NS}
    assert env.payload.findtext("lr:Patient/lr:LocalId", namespaces=ns) == "П-123"
    assert env.payload.findtext("lr:Order/lr:Test/lr:LocalCode/lr:Display", namespaces=ns) == "Гемоглобин"


def test_message_kept_after_a_gap_becomes_a_result_once_the_mapping_is_fixed(gw, clinic):
    from adapters.hl7v2.lab_intake import KEPT_NS

    msg = ("MSH|^~\\&|APP|KEPTLAB|GW|GW|20261123101500||ORU^R01|K-1|P|2.5.1\r"
           "PID|||K-77^^^^MR||Сидорова^Анна||19700101|F\r"
           "OBR|1|P1|F1|CBC\r"
           "OBX|1|NM|HGB^Гемоглобин||13.5|g/dL|||||F\r"
           "OBX|2|NM|XYZ^Новый тест||1.0|mmol/L|||||F\r").encode()
    (ack,) = exchange(gw.mllp_port, [msg])
    assert str(ack.segment("MSA")[1]) == "AE"
    mid = message_id_for(KEPT_LAB, "K-1")
    journal = Journal(gw.db_url)
    kept = journal.get(mid)
    assert (kept.status, kept.message_type) == ("REJECTED", KEPT_NS)
    assert "lab test code «XYZ»" in kept.last_error

    still = gw.cli("replay", "--kept", KEPT_LAB)
    assert still.returncode == 1 and "still refused" in still.stdout and "XYZ" in still.stdout
    (gw.dir / "mappings" / f"{KEPT_LAB}.yaml").write_text(
        f"lab: {KEPT_LAB}\nidentify: {{sending_facility: [KEPTLAB]}}\nrecipient: {{fixed: clinic}}\n"
        "fields: {patient: {local_id: PID-3.1}}\n"
        "tests:\n  HGB: {fsli: '1017128', display: Гемоглобин общий, unit: {code: g/L}, convert: {g/dL: 10}}\n"
        "  XYZ: {fsli: '1016999', display: Новый тест, unit: {code: mmol/L}}\n", encoding="utf-8")
    fixed = gw.cli("replay", "--kept", KEPT_LAB)
    assert fixed.returncode == 0 and f"mapped {mid}" in fixed.stdout, fixed.stdout + fixed.stderr
    wait_for(lambda: len(delivered(clinic, [mid])) >= 1)
    env = Envelope.from_element(parse_xml(delivered(clinic, [mid])[0].body))
    assert env.message_id == mid and env.message_type == LAB_RESULT_NS
    # DELIVERED is committed by the worker's group commit just after the recipient answered.
    wait_for(lambda: journal.get(mid).status == "DELIVERED")
    trail = [e.kind for e in journal.trail(mid)]
    journal.engine.dispose()
    # refused, then accepted as a result, then delivered; the router's ROUTED may land after the worker's
    # DELIVERED (routing/router.py records it after publishing), so the rest is compared as a set
    assert trail[:2] == ["REJECTED", "ACCEPTED"] and {"ROUTED", "DELIVERED"} <= set(trail[2:]), trail


def test_corrected_result_names_the_message_it_replaces(gw, clinic):
    first_id = message_id_for("nist-lab", "NIST-100929110701660-corrected")
    corrected_id = message_id_for("nist-lab", "NIST-100929110828087-corrected")
    first, corrected = exchange(gw.mllp_port, [reference_as("01", "corrected"), reference_as("02", "corrected")])
    assert str(first.segment("MSA")[1]) == str(corrected.segment("MSA")[1]) == "AA"
    wait_for(lambda: len(delivered(clinic, [first_id, corrected_id])) >= 2)
    ns = {"lr": LAB_RESULT_NS}
    results = {Envelope.from_element(parse_xml(r.body)).payload.findtext("lr:Order/lr:Status", namespaces=ns):
               Envelope.from_element(parse_xml(r.body)).payload for r in delivered(clinic, [first_id, corrected_id])}
    assert results["C"].findtext("lr:Order/lr:Replaces", namespaces=ns) == first_id
    assert results["F"].find("lr:Order/lr:Replaces", ns) is None
    assert results["C"].findtext("lr:Order/lr:OrderId", namespaces=ns) == results["F"].findtext(
        "lr:Order/lr:OrderId", namespaces=ns)



def lab_json(message_id: str, **result: object) -> dict:
    return {"messageId": message_id,
            "patient": {"snils": "112-233-445 95", "birthDate": "1980-01-01", "sex": "F"},
            "order": {"placer": "ORD-9", "filler": "LAB-9", "service": {"code": "CBC", "text": "Общий анализ"}},
            "reportedAt": "2026-11-23T10:00:00+03:00",
            "results": [{"code": "HGB", "text": "Гемоглобин", "type": "NM", "value": "135", "unit": "g/L",
                         "range": "120-160", "flags": ["N"], **result}]}


def test_json_results_over_rest_use_the_same_mapping(gw, clinic):
    auth = {"Authorization": f"Bearer {GAP_TOKEN}"}
    r = gw.http.post("/api/v1/labs/gap-lab/results", json=lab_json("J-1"), headers=auth)
    assert r.status_code == 202, r.text
    mid = r.json()["messageId"]
    again = gw.http.post("/api/v1/labs/gap-lab/results", json=lab_json("J-1"), headers=auth)
    assert again.status_code == 202 and again.json()["duplicate"] is True and again.json()["messageId"] == mid
    wait_for(lambda: len(delivered(clinic, [mid])) >= 1)
    time.sleep(0.5)
    ours = delivered(clinic, [mid])
    assert len(ours) == 1
    env = Envelope.from_element(parse_xml(ours[0].body))
    ns = {"lr": LAB_RESULT_NS}
    assert SCHEMA.validate(env.payload), SCHEMA.error_log
    assert_valid_envelope(ours[0].body)
    assert env.payload.findtext("lr:Patient/lr:SNILS", namespaces=ns) == "11223344595"
    assert env.payload.findtext("lr:Order/lr:Test/lr:Code/lr:Code", namespaces=ns) == "1017128"
    assert env.payload.findtext("lr:Order/lr:ReportedAt", namespaces=ns) == "2026-11-23T10:00:00+03:00"


def test_json_gaps_are_listed_with_their_json_places(gw, clinic):
    auth = {"Authorization": f"Bearer {GAP_TOKEN}"}
    doc = lab_json("J-2", unit="g/dL")
    doc["results"].append({"code": "XYZ", "value": "1,5", "unit": "mmol/L"})
    r = gw.http.post("/api/v1/labs/gap-lab/results", json=doc, headers=auth)
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    errs = {(e["code"], e["field"]) for e in r.json()["errors"]}
    assert errs == {("UNMAPPED_UNIT", "results[0].unit"), ("UNMAPPED_TEST_CODE", "results[1].code")}
    other = gw.http.post("/api/v1/labs/gap-lab/results", json=lab_json("J-3"),
                         headers={"Authorization": "Bearer nist-lab-token"})
    assert other.status_code == 403 and other.json()["code"] == "SENDER_MISMATCH"
    bad = gw.http.post("/api/v1/labs/gap-lab/results", json={"messageId": "J-4", "patient": {}, "results": []},
                       headers=auth)
    assert bad.status_code == 422 and bad.json()["field"] == "results"
    # what any of the three would be delivered under, had it been taken (J-3 as either lab's)
    assert delivered(clinic, {message_id_for(lab, j) for lab in ("gap-lab", "nist-lab")
                              for j in ("J-2", "J-3", "J-4")}) == []


def json_order(filler: str, status: str, value: str) -> dict:
    return {"placer": f"P-{filler}", "filler": filler, "service": {"code": "CBC"}, "status": status,
            "results": [{"code": "HGB", "type": "NM", "value": value, "unit": "g/L"}]}


def test_json_orders_keep_their_statuses_and_a_final_replaces_only_its_own_order(gw, clinic):
    auth = {"Authorization": f"Bearer {GAP_TOKEN}"}
    patient = {"snils": "112-233-445 95"}
    first = gw.http.post("/api/v1/labs/gap-lab/results", headers=auth, json={
        "messageId": "J-ORD-1", "patient": patient,
        "orders": [json_order("A-1", "F", "135"), json_order("B-1", "P", "120")]})
    assert first.status_code == 202, first.text
    ids = [first.json()["messageId"]]
    wait_for(lambda: len(delivered(clinic, ids)) >= 1)
    second = gw.http.post("/api/v1/labs/gap-lab/results", headers=auth, json={
        "messageId": "J-ORD-2", "patient": patient, "orders": [json_order("B-1", "F", "121")]})
    assert second.status_code == 202, second.text
    ids.append(second.json()["messageId"])
    wait_for(lambda: len(delivered(clinic, ids)) >= 2)
    ns = {"lr": LAB_RESULT_NS}
    by_id = {}
    for request in delivered(clinic, ids):
        assert_valid_envelope(request.body)
        env = Envelope.from_element(parse_xml(request.body))
        assert SCHEMA.validate(env.payload), SCHEMA.error_log
        by_id[env.message_id] = env.payload
    one, two = by_id[first.json()["messageId"]], by_id[second.json()["messageId"]]
    assert one.findtext("lr:Status", namespaces=ns) == "P"
    assert [(o.findtext("lr:OrderId", namespaces=ns), o.findtext("lr:Status", namespaces=ns))
            for o in one.findall("lr:Order", ns)] == [("gap-lab:A-1", "F"), ("gap-lab:B-1", "P")]
    assert one.find("lr:Order/lr:Replaces", ns) is None
    (order,) = two.findall("lr:Order", ns)
    assert order.findtext("lr:OrderId", namespaces=ns) == "gap-lab:B-1"
    assert order.findtext("lr:Replaces", namespaces=ns) == first.json()["messageId"]
    assert two.findtext("lr:Status", namespaces=ns) == "F"


def lab_report_xml(message_id: str, unit: str = "g/L") -> str:
    return (f'<lab:LabReport xmlns:lab="urn://zdravlink/types/lab-report/1.0"><lab:messageId>{message_id}</lab:messageId>'
            "<lab:patient><lab:snils>11223344595</lab:snils><lab:sex>F</lab:sex></lab:patient>"
            "<lab:order><lab:filler>LAB-S1</lab:filler></lab:order>"
            "<lab:reportedAt>2026-11-23T10:00:00+03:00</lab:reportedAt>"
            "<lab:results><lab:result><lab:code>HGB</lab:code><lab:text>Гемоглобин</lab:text><lab:type>NM</lab:type>"
            f"<lab:value>135</lab:value><lab:unit>{unit}</lab:unit><lab:flag>N</lab:flag></lab:result></lab:results>"
            "</lab:LabReport>")


def test_lab_report_inside_smev_is_mapped_by_the_same_file(gw, clinic):
    import uuid

    from adapters.soap import smev_client as smev
    from adapters.soap.smev_schema import SOAP_ENV_NS, B, F, T

    url = gw.base + "/smev/1.1"
    mid = str(uuid.uuid1())
    status, answer = smev.call(url, smev.send_request(lab_report_xml("S-1"), message_id=mid), token=GAP_TOKEN)
    assert status == 200 and answer.findtext(f"{T}MessageMetadata/{T}Recipient/{T}Mnemonic") == "clinic", \
        etree.tostring(answer)
    wait_for(lambda: len(delivered(clinic, [mid])) >= 1)
    got = delivered(clinic, [mid])[0]
    assert_valid_envelope(got.body)
    env = Envelope.from_element(parse_xml(got.body))
    assert env.message_id == mid and env.message_type == LAB_RESULT_NS
    assert env.payload.findtext("lr:Order/lr:Test/lr:Code/lr:Code", namespaces={"lr": LAB_RESULT_NS}) == "1017128"

    status, fault = smev.call(url, smev.send_request(lab_report_xml("S-2", unit="g/dL")), token=GAP_TOKEN)
    assert fault.tag == f"{{{SOAP_ENV_NS}}}Fault"
    detail = fault.find("detail")[0]
    assert detail.tag == F + "InvalidContent" and detail.findtext(B + "Code") == "UNMAPPED_UNIT"
    assert "results[0].unit" in detail.findtext(F + "ValidationError")


def test_an_empty_msh_10_is_refused_with_ar_kept_and_never_delivered(gw, clinic):
    from adapters.hl7v2.lab_intake import KEPT_NS, kept_message
    from gateway.journal import Status

    msg = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01||P|2.5.1\r"
           "PID|||E-1^^^^MR||Петров^Пётр||19800101|M\r"
           "OBR|1|P1|F1|CBC\r"
           "OBX|1|NM|HGB^Гемоглобин||135|g/L|||||F\r").encode()
    first, again = exchange(gw.mllp_port, [msg, msg])
    for ack in (first, again):
        assert (str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])) == ("AR", "")
        (err,) = ack.segments("ERR")
        assert (str(err[2]), str(err[3]).split("^")[0]) == ("MSH^1^10", "101")
        assert "CONTROL_ID_MISSING" in str(err[8])
    journal = Journal(gw.db_url)
    # this test's copies among every kept message of the module: those whose kept bytes are the ones sent
    kept = [r for r in journal.get_many(journal.with_status(Status.REJECTED)).values()
            if r.message_type == KEPT_NS and kept_message(r) == msg]
    kept_ids = {r.message_id for r in kept}
    audit = [a for a in journal.rejections() if a["message_id"] in kept_ids]
    journal.engine.dispose()
    assert len(kept) == 2 and all(r.sender == "gap-lab" for r in kept)  # each copy kept, as it arrived
    assert len(audit) == 2 and all(a["code"] == "CONTROL_ID_MISSING" for a in audit)
    time.sleep(1.0)
    # under a kept copy's own id, or under the one its (empty) control id would derive, had it been mapped
    assert delivered(clinic, kept_ids | {message_id_for("gap-lab", "")}) == []


def test_a_cyrillic_reason_reaches_a_windows_1250_lab_transliterated_not_as_question_marks(gw):
    msg = ("MSH|^~\\&|APP|GAPLAB|GW|GW|20261123101500||ORU^R01|PL-1|P|2.5.1||||||WINDOWS-1250\r"
           "PID|||||Wójcik^Zofia||19800101|F\r"
           "OBR|1|P1|F1|CBC\r"
           "OBX|1|NM|HGB^Hemoglobina||135|g/L|||||F\r").encode("cp1250")
    (ack,) = exchange(gw.mllp_port, [msg], charset="cp1250")
    assert str(ack.segment("MSA")[1]) == "AE"
    reason = str(ack.segment("ERR")[8])
    assert "SNILS, ENP" in reason and "?" not in reason, reason


@pytest.mark.parametrize("role,variable,setting", [
    (("serve", "--no-migrate"), "ZL_API_PORT", "api.host, api.port"),
    (("worker", "mllp"), "ZL_MLLP_PORT", "hl7.host, hl7.port"),
])
def test_a_taken_listening_port_is_named_as_the_gateways_own_setting_not_a_peer(
        gw: GatewayProcesses, role: tuple[str, ...], variable: str, setting: str) -> None:
    """Errno 98 is an OSError, and pika's errors include OSError: an API once exited saying "cannot reach the
    broker" when its port was taken. Here a second API or listener of the running gateway meets a held port."""
    with socket.socket() as holder:  # no SO_REUSEPORT: the gateway's listener cannot share it
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        done = gw.cli(*role, env={variable: str(port)})
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot listen on 127.0.0.1:{port} ({setting}): Address already in use" in done.stderr, done.stderr
    assert "broker" not in done.stderr and "Traceback" not in done.stderr, done.stderr

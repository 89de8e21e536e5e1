"""The insurer emulator over the wire: register archives in by SOAP, answers out through a gateway's REST API.

Everything runs as real servers on 127.0.0.1: the insurer's spyne service and a REST
recipient standing in for the gateway. The registers are built here by hand in the OMS
layout (or are region 75's own), independently of the gateway's builder, packed and signed.
"""
from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from lxml import etree

from adapters.soap.push import SoapPusher
from demo.ca import demo_signer
from demo.emulators.insurer import ACT_PROTOCOL_NS, FLK_PROTOCOL_NS, INSURER_NS, REGISTER_NS, InsurerEmulator
from demo.emulators.rest_recipient import RecipientServer
from gateway.config import Channel
from gateway.envelope import DSIG_NS, Envelope
from gateway.oms.archive import pack, to_bytes
from gateway.oms.flk import read_protocol_file
from gateway.schemas import ENVELOPE_NS, schemas_dir, validate_envelope, validate_payload
from signing import Certificate, PrivateKey, Signer, TrustStore, verify
from signing.cms import sign_detached

R, P, Z, DS = "{%s}" % REGISTER_NS, "{%s}" % ACT_PROTOCOL_NS, "{%s}" % ENVELOPE_NS, "{%s}" % DSIG_NS
F = "{%s}" % FLK_PROTOCOL_NS
REAL = Path(__file__).resolve().parents[1] / "data" / "oms" / "region75"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSDL_SOAP11 = "http://schemas.xmlsoap.org/wsdl/soap/"
PROTOCOL_XSD = etree.XMLSchema(etree.parse(str(schemas_dir() / "payloads" / "act-protocol-1.0.xsd")))
TARIFFS = {"B01.001.001": Decimal("1250.00"), "A09.05.083.002": Decimal("310.50")}
INSURER_TOKEN = "insurer-secret-token"


def usl(idserv: str, code: str, kol: str, tarif: str, sumv: str, date_in: str = "2024-03-05",
        date_out: str | None = None) -> dict[str, str]:
    return {"IDSERV": idserv, "CODE_USL": code, "KOL_USL": kol, "TARIF": tarif, "SUMV_USL": sumv,
            "DATE_IN": date_in, "DATE_OUT": date_out or date_in}


def act_envelope(services: list[dict[str, str]], summav: str | None = None, number: str = "17-0324",
                 sender: str = "clinic") -> Envelope:
    """A register for March 2024: one ZAP per service, as a clinic's MIS would bill them, zipped with its
    L-file (an insurer answering act-protocols checks no signature here)."""
    def sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
        el = etree.SubElement(parent, tag)
        el.text = text
        return el

    total = summav if summav is not None else str(sum(Decimal(s["SUMV_USL"]) for s in services))
    zl = etree.Element("ZL_LIST")
    zglv = sub(zl, "ZGLV")
    for tag, value in (("VERSION", "3.1"), ("DATA", "2024-04-02"), ("FILENAME", "HM770001S77001_24031"),
                       ("SD_Z", str(len(services)))):
        sub(zglv, tag, value)
    schet = sub(zl, "SCHET")
    for tag, value in (("CODE", "1"), ("CODE_MO", "770001"), ("YEAR", "2024"), ("MONTH", "3"),
                       ("NSCHET", number), ("DSCHET", "2024-04-02"), ("PLAT", "77001"), ("SUMMAV", total)):
        sub(schet, tag, value)
    for n, service in enumerate(services, 1):
        zap = sub(zl, "ZAP")
        sub(zap, "N_ZAP", str(n))
        sub(zap, "PR_NOV", "0")
        pacient = sub(zap, "PACIENT")
        sub(pacient, "ID_PAC", f"pac-{n}")
        sub(pacient, "VPOLIS", "3")
        sub(pacient, "NPOLIS", "7700000000000000")
        z_sl = sub(zap, "Z_SL")
        sub(z_sl, "IDCASE", str(n))
        sub(z_sl, "SUMV", service["SUMV_USL"])
        sl = sub(z_sl, "SL")
        sub(sl, "SL_ID", f"sl-{n}")
        sub(sl, "SUM_M", service["SUMV_USL"])
        u = sub(sl, "USL")
        for tag in ("IDSERV", "DATE_IN", "DATE_OUT", "CODE_USL", "KOL_USL", "TARIF", "SUMV_USL"):
            if service.get(tag) is not None:
                sub(u, tag, service[tag])
    pers = etree.Element("PERS_LIST")
    for n in range(1, len(services) + 1):
        p = sub(pers, "PERS")
        sub(p, "ID_PAC", f"pac-{n}")
    return register_envelope("HM770001S77001_24031", to_bytes(zl), to_bytes(pers), sender)


def register_envelope(name: str, h_file: bytes, l_file: bytes | None, sender: str = "clinic",
                      signer: Signer | None = None) -> Envelope:
    files = [(f"{name}.xml", h_file)] + ([("L" + name[1:] + ".xml", l_file)] if l_file is not None else [])
    archive = pack(files, date(2024, 4, 2))
    signature = sign_detached(archive, signer) if signer is not None else b"no signature"
    payload = etree.Element(R + "RegisterArchive", nsmap={"rg": REGISTER_NS})
    etree.SubElement(payload, R + "FileName").text = f"{name}.zip"
    etree.SubElement(payload, R + "Content").text = base64.b64encode(archive).decode()
    sig = etree.SubElement(payload, R + "Signature")
    etree.SubElement(sig, R + "FileName").text = f"{name}.zip.sig"
    etree.SubElement(sig, R + "Content").text = base64.b64encode(signature).decode()
    return Envelope(message_id=str(uuid.uuid1()), sender=sender, recipient="insurer", message_type=REGISTER_NS,
                    payload=payload)


def soap_action(insurer: InsurerEmulator) -> str:
    """The SOAPAction of Deliver as the insurer's own WSDL states it."""
    wsdl = etree.fromstring(httpx.get(insurer.wsdl_url, timeout=5).content)
    return wsdl.find(f".//{{{WSDL_SOAP11}}}operation").get("soapAction")


def deliver(insurer: InsurerEmulator, env: Envelope | etree._Element, key: str | None = None) -> httpx.Response:
    """POST Deliver by hand, as zeep would: the zl:Envelope is the content of the operation's one part."""
    root = env.to_element() if isinstance(env, Envelope) else env
    message = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS, "ins": INSURER_NS})
    operation = etree.SubElement(etree.SubElement(message, f"{{{SOAP_NS}}}Body"), f"{{{INSURER_NS}}}Deliver")
    etree.SubElement(operation, f"{{{INSURER_NS}}}envelope").append(root)
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{soap_action(insurer)}"',
               "Idempotency-Key": key or str(uuid.uuid4())}
    return httpx.post(insurer.url, content=etree.tostring(message, xml_declaration=True, encoding="UTF-8"),
                      headers=headers, timeout=5)


def deliver_result(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return etree.fromstring(resp.content).findtext(f".//{{{INSURER_NS}}}DeliverResult")


def outcomes(protocol: etree._Element) -> dict[str, tuple[str, str | None]]:
    return {r.findtext(P + "RecordId"): (r.findtext(P + "Outcome"), r.findtext(f"{P}Reason/{P}Code"))
            for r in protocol.iterfind(P + "Record")}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture(scope="module")
def insurer_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from demo.ca import create_demo_keys

    out = tmp_path_factory.mktemp("insurer-keys")
    create_demo_keys(out, ["insurer"], ("gost2012-256",))
    return out


@pytest.fixture
def gateway_stub() -> Iterator[RecipientServer]:
    """Stands in for the gateway's REST API: takes any POST and keeps the body."""
    server = RecipientServer(name="gateway-stub").start()
    yield server
    server.stop()


def test_act_is_checked_per_record(tmp_path):
    services = [
        usl("r-ok-1", "B01.001.001", "1", "1250.00", "1250.00"),
        usl("r-ok-2", "A09.05.083.002", "3", "310.50", "931.50"),
        usl("r-ok-rounded", "A09.05.083.002", "0.333", "310.50", "103.40"),  # 103.3965 to the kopeck
        usl("r-unknown", "A99.99.999", "1", "100.00", "100.00"),
        usl("r-tariff", "B01.001.001", "1", "1300.00", "1300.00"),
        usl("r-uninsured", "A09.05.083.002", "1", "310.50", "310.50"),
        usl("r-arith", "A09.05.083.002", "2", "310.50", "600.00"),
        usl("r-feb", "A09.05.083.002", "1", "310.50", "310.50", date_in="2024-02-29"),
        usl("r-backwards", "A09.05.083.002", "1", "310.50", "310.50", date_in="2024-03-10", date_out="2024-03-09"),
    ]
    env = act_envelope(services)
    with InsurerEmulator(TARIFFS, reject={"r-uninsured"}) as insurer:
        assert soap_action(insurer) == "Deliver"
        assert deliver_result(deliver(insurer, env)) == "accepted"

    assert [(a.message_id, a.act_number) for a in insurer.acts] == [(env.message_id, "17-0324")]
    protocol = insurer.acts[0].answer
    assert PROTOCOL_XSD.validate(protocol), PROTOCOL_XSD.error_log
    assert outcomes(protocol) == {
        "r-ok-1": ("accepted", None),
        "r-ok-2": ("accepted", None),
        "r-ok-rounded": ("accepted", None),
        "r-unknown": ("rejected", "5.4.1"),
        "r-tariff": ("rejected", "5.4.2"),
        "r-uninsured": ("rejected", "5.2.4"),
        "r-arith": ("rejected", "5.1.4"),
        "r-feb": ("rejected", "5.1.4"),
        "r-backwards": ("rejected", "5.1.4"),
    }
    assert [r.findtext(P + "RecordId") for r in protocol.iterfind(P + "Record")] == [s["IDSERV"] for s in services]
    texts = {r.findtext(P + "RecordId"): r.findtext(f"{P}Reason/{P}Text") for r in protocol.iterfind(P + "Record")}
    assert "A99.99.999" in texts["r-unknown"] and "1250.00" in texts["r-tariff"]
    assert "621.00" in texts["r-arith"] and "2024-03" in texts["r-feb"] and "DATE_IN" in texts["r-backwards"]
    assert (protocol.findtext(P + "ActMessageId"), protocol.findtext(P + "ActNumber"),
            protocol.findtext(P + "Insurer")) == (env.message_id, "17-0324", "insurer")
    assert (protocol.findtext(P + "Accepted"), protocol.findtext(P + "Rejected")) == ("3", "6")
    assert protocol.findtext(P + "SumAccepted") == "2284.90"  # 1250.00 + 931.50 + 103.40
    assert insurer.replies == []  # no gateway given: nothing is posted

    # The schema holds the protocol to one answer per record.
    doubled = etree.fromstring(etree.tostring(protocol))
    doubled.append(etree.fromstring(etree.tostring(doubled.find(P + "Record"))))
    assert not PROTOCOL_XSD.validate(doubled)


def test_protocol_is_posted_back_signed_and_referring_to_the_act(gateway_stub, insurer_keys):
    signer = Signer.create(PrivateKey.load(insurer_keys / "insurer-gost2012-256.key"),
                           Certificate.load(insurer_keys / "insurer-gost2012-256.pem"))
    env = act_envelope([usl("r-1", "B01.001.001", "2", "1250.00", "2500.00"),
                        usl("r-2", "A99.99.999", "1", "10.00", "10.00")])
    with InsurerEmulator(TARIFFS, mnemonic="smo-77001", gateway_url=f"http://127.0.0.1:{gateway_stub.port}/",
                         token=INSURER_TOKEN, reply_to="clinic-mis", signer=signer) as insurer:
        assert deliver_result(deliver(insurer, env)) == "accepted"
        assert wait_for(lambda: len(insurer.replies) == 1), "no protocol posted"

    reply = insurer.replies[0]
    assert (reply.status, reply.act_message_id) == (200, env.message_id)
    assert len(gateway_stub.requests) == 1
    got = gateway_stub.requests[0]
    assert got.content_type.startswith("application/json") and got.idempotency_key == reply.message_id
    doc = json.loads(got.body)
    assert (doc["messageId"], doc["sender"], doc["recipient"], doc["messageType"], doc["referenceMessageId"]) == (
        reply.message_id, "smo-77001", "clinic-mis", ACT_PROTOCOL_NS, env.message_id)
    assert uuid.UUID(doc["messageId"]).version == 1

    answer = Envelope.from_json(doc)
    validate_envelope(answer.to_element())
    validate_payload(ACT_PROTOCOL_NS, answer.payload)  # the gateway's own registry knows the type
    assert PROTOCOL_XSD.validate(answer.payload), PROTOCOL_XSD.error_log
    assert outcomes(answer.payload) == {"r-1": ("accepted", None), "r-2": ("rejected", "5.4.1")}
    assert answer.payload.findtext(P + "Insurer") == "smo-77001"
    assert answer.payload.findtext(P + "SumAccepted") == "2500.00"

    rebuilt = answer.to_element()
    by_insurer = verify(rebuilt.find(f"{Z}SenderSignature/{DS}Signature"), document=rebuilt,
                        trust=TrustStore.from_directory(insurer_keys / "trust"),
                        expected=rebuilt.find(Z + "SenderProvidedData"),
                        signers=[Certificate.load(insurer_keys / "insurer-gost2012-256.pem")])
    assert "CN=insurer" in by_insurer.certificate.subject


def test_repeat_delivery_is_acknowledged_and_processed_once(gateway_stub):
    first = act_envelope([usl("r-1", "B01.001.001", "1", "1250.00", "1250.00")], number="A-1")
    second = act_envelope([usl("r-2", "B01.001.001", "1", "1250.00", "1250.00")], number="A-2", sender="mis-2")
    with InsurerEmulator(TARIFFS, gateway_url=f"http://127.0.0.1:{gateway_stub.port}", token=INSURER_TOKEN) as ins:
        assert deliver_result(deliver(ins, first, key=first.message_id)) == "accepted"
        assert deliver_result(deliver(ins, first, key=first.message_id)) == "duplicate"
        # A later act marks the time by which a reply to the repeat would have been posted.
        assert deliver_result(deliver(ins, second, key=second.message_id)) == "accepted"
        assert wait_for(lambda: len(gateway_stub.requests) >= 2)
        time.sleep(0.2)

    assert [a.act_number for a in ins.acts] == ["A-1", "A-2"]
    posted = [json.loads(r.body) for r in gateway_stub.requests]
    assert sorted((d["referenceMessageId"], d["recipient"]) for d in posted) == sorted(
        [(first.message_id, "clinic"), (second.message_id, "mis-2")])  # reply_to defaults to the act's sender
    assert [r.status for r in ins.replies] == [200, 200]


def test_summav_mismatch_rejects_every_record():
    env = act_envelope([usl("r-1", "B01.001.001", "1", "1250.00", "1250.00"),
                        usl("r-2", "A09.05.083.002", "1", "310.50", "310.50")], summav="1560.51")
    with InsurerEmulator(TARIFFS) as insurer:
        assert deliver_result(deliver(insurer, env)) == "accepted"

    protocol = insurer.acts[0].answer
    assert PROTOCOL_XSD.validate(protocol), PROTOCOL_XSD.error_log
    assert outcomes(protocol) == {"r-1": ("rejected", "5.1.2"), "r-2": ("rejected", "5.1.2")}
    for text in protocol.iterfind(f"{P}Record/{P}Reason/{P}Text"):
        assert "SUMMAV 1560.51" in text.text and "1560.50" in text.text
    assert [protocol.findtext(P + t) for t in ("Accepted", "Rejected", "SumAccepted")] == ["0", "2", "0.00"]


def test_unreadable_act_is_a_client_fault_and_its_key_stays_free():
    env = act_envelope([usl("r-1", "B01.001.001", "1", "1250.00", "1250.00")])
    services = [usl("r-1", "B01.001.001", "1", "1250.00", "1250.00")]
    broken = act_envelope([{**services[0], "IDSERV": None}])  # type: ignore[dict-item]
    broken.message_id = env.message_id
    with InsurerEmulator(TARIFFS) as insurer:
        resp = deliver(insurer, broken, key=env.message_id)
        assert resp.status_code == 500
        fault = etree.fromstring(resp.content).find(f".//{{{SOAP_NS}}}Fault")
        assert fault.findtext("faultcode").endswith("Client") and "IDSERV" in fault.findtext("faultstring")
        assert insurer.acts == []
        # The refusal did not use up the key: the corrected act under the same key is checked.
        assert deliver_result(deliver(insurer, env, key=env.message_id)) == "accepted"
        assert len(insurer.acts) == 1


def test_gateways_soap_pusher_delivers_an_act():
    env = act_envelope([usl("r-1", "A09.05.083.002", "2", "310.50", "621.00")])
    pusher = SoapPusher(timeout=5.0)
    try:
        with InsurerEmulator(TARIFFS) as insurer:
            res = pusher.push(Channel(mode="soap", wsdl=insurer.wsdl_url, operation="Deliver"), env.to_xml(),
                              env.message_id, 1)
            assert (res.delivered, res.status_code) == (True, 200), res
    finally:
        pusher.close()
    assert outcomes(insurer.acts[0].answer) == {"r-1": ("accepted", None)}
    assert insurer.acts[0].idempotency_key == env.message_id


def test_stop_is_quick_even_while_a_reply_hangs():
    hang = 5.0
    slow_gateway = RecipientServer(name="slow-gateway", delay=hang).start()
    try:
        insurer = InsurerEmulator(TARIFFS, gateway_url=f"http://127.0.0.1:{slow_gateway.port}",
                                  token=INSURER_TOKEN).start()
        env = act_envelope([usl("r-1", "B01.001.001", "1", "1250.00", "1250.00")])
        started = time.monotonic()
        assert deliver_result(deliver(insurer, env)) == "accepted"
        # Shorter than the hang: the answer did not wait for the reply's post (not a speed limit: a loaded
        # machine took 1.2 s here, where a bound of 1 s failed).
        assert time.monotonic() - started < hang
        time.sleep(0.2)  # the reply's post is now waiting on the slow gateway
        started = time.monotonic()
        insurer.stop()
        assert time.monotonic() - started < hang - 0.2  # stop() did not wait for the hanging reply
        assert insurer.replies == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", insurer.port), 0.5).close()
    finally:
        slow_gateway.stop()



# ---- a ФЛК insurer ------------------------------------------------------------------------

def _region75():
    from tests.unit.test_service_act import profile

    return profile("zabaykalsky")


def flk_answer(act) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """The protocols of a ФЛК answer: per file answered, (OSHIB, element, IDSERV) of each error."""
    name = act.answer.findtext(F + "FileName")
    content = base64.b64decode(act.answer.findtext(F + "Content"))
    return {p.answers: [(e.oshib, e.element, e.idserv) for e in p.errors] for p in read_protocol_file(name, content)}


def test_a_flk_insurer_checks_the_pair_by_its_region_and_answers_naming_each_error(demo_keys, gateway_stub):
    from tests.unit.test_register_checks import L_FILE

    h_file = (REAL / "tfoms75-test-H_VALID.XML").read_bytes()
    signer = demo_signer(demo_keys, "gateway")
    good = register_envelope("HM750096T75_21041", h_file, L_FILE, signer=signer)
    with InsurerEmulator({}, answer="flk", profile=_region75(), specialties={"17"}, mnemonic="tfoms-75",
                         trust=TrustStore.from_directory(demo_keys / "trust"), senders=[signer.certificate],
                         gateway_url=f"http://127.0.0.1:{gateway_stub.port}", token=INSURER_TOKEN,
                         signer=demo_signer(demo_keys, "insurer")) as insurer:
        assert deliver_result(deliver(insurer, good)) == "accepted"
        assert wait_for(lambda: len(insurer.replies) == 1)
        insurer.specialties = frozenset({"76"})
        assert deliver_result(deliver(insurer, register_envelope("HM750096T75_21041", h_file, L_FILE,
                                                                 signer=signer))) == "accepted"
        assert deliver_result(deliver(insurer, register_envelope("HM750096T75_21041", h_file, None,
                                                                 signer=signer))) == "accepted"
    passed, unknown_specialty, without_l = insurer.acts
    assert passed.answer.findtext(F + "FileName") == "VM750096T75_21041.zip"
    assert flk_answer(passed) == {"HM750096T75_21041": [], "LM750096T75_21041": []}
    assert flk_answer(unknown_specialty)["HM750096T75_21041"] == [
        ("001F.00.0310", "SL/PRVS", None), ("001F.00.0661", "USL/PRVS", "477246")]
    assert ("ZL.PAIR", "ZGLV/FILENAME", None) in flk_answer(without_l)["HM750096T75_21041"]

    posted = Envelope.from_json(json.loads(gateway_stub.requests[0].body))
    assert (posted.message_type, posted.sender, posted.reference_message_id) == (
        FLK_PROTOCOL_NS, "tfoms-75", good.message_id)
    validate_payload(FLK_PROTOCOL_NS, posted.payload)


def test_a_register_whose_signature_does_not_hold_is_refused_as_a_whole(demo_keys):
    h_file = (REAL / "tfoms75-test-H_VALID.XML").read_bytes()
    gateway = demo_signer(demo_keys, "gateway")
    by_someone_else = register_envelope("HM750096T75_21041", h_file, b"<PERS_LIST/>", signer=demo_signer(demo_keys, "lab"))
    with InsurerEmulator({}, answer="flk", profile=_region75(), trust=TrustStore.from_directory(demo_keys / "trust"),
                         senders=[gateway.certificate]) as insurer:
        resp = deliver(insurer, by_someone_else)
        assert resp.status_code == 500
        fault = etree.fromstring(resp.content).find(f".//{{{SOAP_NS}}}Fault")
        assert fault.findtext("faultcode").endswith("Client") and "CERTIFICATE_SENDER_MISMATCH" in \
            fault.findtext("faultstring")
        unsigned = register_envelope("HM750096T75_21041", h_file, b"<PERS_LIST/>")
        assert "SIGNATURE_MALFORMED" in etree.fromstring(deliver(insurer, unsigned).content).findtext(
            f".//{{{SOAP_NS}}}Fault/faultstring")
    assert insurer.acts == []

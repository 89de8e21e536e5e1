"""Service acts end to end: a month of records → one act per clinic, insurer and period → the insurer's
SOAP service (emulator) → its protocol back through the gateway → each record marked at the MIS.

Real gateway processes, real RabbitMQ, three insurer emulators on 127.0.0.1 receiving by zeep.
"""
from __future__ import annotations

import random
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from adapters.acts.builder import ACT_NS, validate_act
from adapters.emulators.insurer import InsurerEmulator
from gateway.config import hash_token
from gateway.envelope import Envelope
from gateway.identifiers import enp_valid
from gateway.service_records import ACT_PROTOCOL_NS, SERVICE_RECORD_NS
from gateway.schemas import ENVELOPE_NS
from gateway.xmlsafe import parse_xml
from signing import Certificate, TrustStore, verify
from tests.support import configs
from tests.unit.test_service_records import record

pytestmark = pytest.mark.broker
PERIOD = "2026-10"
CLINICS = {"clinic-a": "770001", "clinic-b": "770002"}
INSURERS = ["smo-1", "smo-2", "smo-3"]
PRICES = {"B01.047.001": Decimal("1300.00"), "B03.016.002": Decimal("321.00"), "A09.05.083.002": Decimal("456.78")}
TARIFFS = "tariffs:\n" + "".join(f'  - {{code: "{c}", name: "{c}", price: {p}, from: 2026-01-01}}\n'
                                 for c, p in PRICES.items())


def enp(rng: random.Random) -> str:
    while True:
        value = "".join(rng.choice("0123456789") for _ in range(16))
        if enp_valid(value):
            return value


@pytest.fixture
def insurers(gateway_factory):
    emulators = {}
    for name in INSURERS:
        emulators[name] = InsurerEmulator(PRICES, mnemonic=name, reject={"clinic-a-R-3"}).start()
    yield emulators
    for e in emulators.values():
        e.stop()


@pytest.fixture
def gw(gateway_factory, insurers, tmp_path: Path, demo_keys: Path):
    tariffs = tmp_path / "tariffs"
    tariffs.mkdir()
    (tariffs / "t.yaml").write_text(TARIFFS)
    people = "".join(
        f"  - {{mnemonic: {c}, name: {c}, kind: mis, delivery: {{mode: pull}}, "
        f"credentials: {{api_token_sha256: [\"{hash_token(c + '-token')}\"]}}}}\n" for c in CLINICS)
    people += "".join(
        f"  - {{mnemonic: {i}, name: {i}, kind: insurer, oms_code: \"{k + 1}\", signature_required: false, "
        f"delivery: {{mode: soap, wsdl: \"{insurers[i].wsdl_url}\"}}, "
        f"credentials: {{api_token_sha256: [\"{hash_token(i + '-token')}\"]}}}}\n" for k, i in enumerate(INSURERS))
    routes = "".join(
        f'  - {{name: rec-{c}-{i}, sender: {c}, message_type: "{SERVICE_RECORD_NS}", recipient: {i}, channels: [{{mode: pull}}]}}\n'
        f'  - {{name: act-{c}-{i}, sender: {c}, message_type: "{ACT_NS}", recipient: {i}}}\n'
        f'  - {{name: proto-{i}-{c}, sender: {i}, message_type: "{ACT_PROTOCOL_NS}", recipient: {c}}}\n'
        for c in CLINICS for i in INSURERS)
    g = gateway_factory(f"participants:\n{people}", f"routes:\n{routes}", tariffs=tariffs,
                        settings=configs.settings(keys=demo_keys))
    for name, e in insurers.items():
        e.answer_through(g.base, f"{name}-token")
    return g


def month_of_records(gw) -> dict[tuple[str, str], Decimal]:
    """Post a month of records; the expected SUMMAV per (clinic, insurer), computed independently."""
    rng = random.Random(7)
    expected: dict[tuple[str, str], Decimal] = {}
    for clinic, mo in CLINICS.items():
        for n in range(24):
            insurer = INSURERS[n % 3]
            code = rng.choice(sorted(PRICES))
            qty = rng.choice([Decimal("1"), Decimal("2"), Decimal("0.5")])
            day = f"{PERIOD}-{rng.randint(1, 28):02d}"
            payload = record(id=f"{clinic}-R-{n}", mo=mo, enp=enp(rng), insurer=insurer, code=code, din=day, dout=day,
                             qty=str(qty), tariff=str(PRICES[code]))
            r = gw.post({"messageId": str(uuid.uuid1()), "sender": clinic, "recipient": insurer,
                         "messageType": SERVICE_RECORD_NS, "payload": payload}, f"{clinic}-token")
            assert r.status_code == 202, r.text
            key = (clinic, insurer)
            expected[key] = expected.get(key, Decimal(0)) + (qty * PRICES[code]).quantize(Decimal("0.01"),
                                                                                          ROUND_HALF_UP)
    return expected


def wait_for(predicate, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_month_becomes_one_act_per_clinic_and_insurer_and_the_protocol_comes_back(gw, insurers, demo_keys):
    expected = month_of_records(gw)
    built = gw.cli("acts", "build", "--period", PERIOD)
    assert built.returncode == 0, built.stdout + built.stderr
    assert built.stdout.count("sent") == 6
    wait_for(lambda: sum(len(e.acts) for e in insurers.values()) == 6)
    for name, e in insurers.items():
        assert len(e.acts) == 2  # one per clinic, delivered once
        for act in e.acts:
            env = Envelope.from_element(parse_xml(act.envelope))
            assert env.message_type == ACT_NS and env.recipient == name
            assert validate_act(env.payload) == []
            summav = Decimal(env.payload.findtext(f"{{{ACT_NS}}}SCHET/{{{ACT_NS}}}SUMMAV"))
            assert summav == expected[(env.sender, name)]
            doc = parse_xml(act.envelope)
            verified = verify(doc.find(f"{{{ENVELOPE_NS}}}GatewaySignature")[0], document=doc, expected=doc[0],
                              trust=TrustStore.from_directory(demo_keys / "trust"),
                              signers=[Certificate.load(demo_keys / "gateway-gost2012-256.pem")])
            assert verified.algorithm.name == "gost2012-256"
    wait_for(lambda: all(len(e.replies) == 2 for e in insurers.values()))
    assert all(r.status == 202 for e in insurers.values() for r in e.replies), \
        [(r.status, r.error) for e in insurers.values() for r in e.replies]

    def state(clinic: str, n: int) -> dict:
        return gw.http.get(f"/api/v1/service-records/{clinic}-R-{n}", params={"codeMO": CLINICS[clinic]},
                           headers={"Authorization": f"Bearer {clinic}-token"}).json()

    wait_for(lambda: state("clinic-a", 3)["outcome"] != "pending")
    rejected = state("clinic-a", 3)
    assert rejected["outcome"] == "rejected" and rejected["reason"].startswith("5.2.4")
    assert state("clinic-b", 3)["outcome"] == "accepted"
    assert state("clinic-a", 4)["outcome"] == "accepted"

    # the clinic also receives the protocol itself in its inbox
    def take_protocol():
        return gw.http.get("/api/v1/inbox", params={"messageType": ACT_PROTOCOL_NS, "kind": "response"},
                           headers={"Authorization": "Bearer clinic-a-token"})

    wait_for(lambda: take_protocol().status_code == 200)

    # building again sends nothing; a correction is a new version naming the first
    again = gw.cli("acts", "build", "--period", PERIOD)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 6
    fix = gw.cli("acts", "build", "--period", PERIOD, "--insurer", "smo-1", "--correction")
    assert fix.returncode == 0 and fix.stdout.count("sent") == 2, fix.stdout + fix.stderr
    wait_for(lambda: len(insurers["smo-1"].acts) == 4)
    assert len(insurers["smo-2"].acts) == 2


def test_the_running_gateway_sends_the_previous_months_acts_on_schedule(gateway_factory, insurers, tmp_path, demo_keys):
    import datetime as dt

    from adapters.acts.schedule import previous_period

    period = previous_period(dt.date.today())
    tariffs = tmp_path / "tariffs"
    tariffs.mkdir()
    (tariffs / "t.yaml").write_text("tariffs:\n" + "".join(
        f'  - {{code: "{c}", name: "{c}", price: {p}, from: 2000-01-01}}\n' for c, p in PRICES.items()))
    people = ("  - {mnemonic: clinic-a, name: A, kind: mis, delivery: {mode: pull}, "
              f"credentials: {{api_token_sha256: [\"{hash_token('clinic-a-token')}\"]}}}}\n"
              f"  - {{mnemonic: smo-1, name: S, kind: insurer, oms_code: \"1\", signature_required: false, "
              f"delivery: {{mode: soap, wsdl: \"{insurers['smo-1'].wsdl_url}\"}}}}\n")
    routes = (f'  - {{name: rec, sender: clinic-a, message_type: "{SERVICE_RECORD_NS}", recipient: smo-1, '
              'channels: [{mode: pull}]}\n'
              f'  - {{name: act, sender: clinic-a, message_type: "{ACT_NS}", recipient: smo-1}}\n')
    settings = configs.settings(keys=demo_keys) + "acts: {schedule_day: 1, schedule_hour: 0}\n"
    gw = gateway_factory(f"participants:\n{people}", f"routes:\n{routes}", tariffs=tariffs, settings=settings)
    day = f"{period}-10"
    r = gw.post({"messageId": str(uuid.uuid1()), "sender": "clinic-a", "recipient": "smo-1",
                 "messageType": SERVICE_RECORD_NS,
                 "payload": record(id="S-1", mo="770001", insurer="smo-1", din=day, dout=day, period=period)},
                "clinic-a-token")
    assert r.status_code == 202, r.text
    gw.env["ZL_ACTS_INTERVAL"] = "0.5"
    gw.spawn("acts")
    wait_for(lambda: len(insurers["smo-1"].acts) == 1)
    time.sleep(1.5)  # several more checks of the schedule: the act is not sent again
    assert len(insurers["smo-1"].acts) == 1
    assert f"acts {period} 770001 → smo-1: sent" in gw.log("acts")

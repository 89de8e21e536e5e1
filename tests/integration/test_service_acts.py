"""Service acts end to end: a month of records → one register archive per clinic, insurer and period → the
insurer's SOAP service (emulator), which unpacks the ZIP, checks the signature and the pair against its
region's schemas and answers → each record marked at the MIS.

Real gateway processes, real RabbitMQ, three insurer emulators on 127.0.0.1 receiving by zeep: smo-1 runs
region 75's ФЛК (with its own V021, which lacks one specialty the clinics use), smo-2 Bashkortostan's, smo-3
still answers with Zdravlink's own act-protocol.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from adapters.acts.archive import read_archive_payload
from demo.emulators.insurer import InsurerEmulator
from gateway.config import hash_token
from gateway.envelope import Envelope
from gateway.identifiers import enp_valid
from gateway.oms.archive import unpack_register
from gateway.schemas import ENVELOPE_NS
from gateway.service_records import ACT_PROTOCOL_NS, FLK_PROTOCOL_NS, REGISTER_NS, SERVICE_RECORD_NS
from gateway.xmlsafe import parse_xml
from signing import Certificate, TrustStore, verify
from signing.cms import verify_detached
from tests.support import configs
from tests.unit.test_service_act import profile, reference_valid
from tests.unit.test_service_records import record

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parents[2]
PERIOD = "2024-10"
CLINICS = {"clinic-a": "770001", "clinic-b": "770002"}
INSURERS = ["smo-1", "smo-2", "smo-3"]
CODES = {"smo-1": "75001", "smo-2": "02001", "smo-3": "77003"}
PRICES = {"B01.047.001": Decimal("1300.00"), "B03.016.002": Decimal("321.00"), "A09.05.083.002": Decimal("456.78")}
TARIFFS = "tariffs:\n" + "".join(f'  - {{code: "{c}", name: "{c}", price: {p}, from: 2024-01-01}}\n'
                                 for c, p in PRICES.items())
V021 = {"76", "27"}          # smo-1's directory of specialties
UNKNOWN_SPECIALTY = "49"     # a V021 code smo-1's directory lacks
BAD = {"clinic-a-R-6", "clinic-a-R-9"}  # smo-1's records with that specialty, each its patient's only one
BINDINGS = """insurers:
  smo-1: {profile: zabaykalsky}
  smo-2: {profile: bashkortostan, values: {ZL_LIST/SCHET/PODR: "7", PERS_LIST/PERS/STATUS: "1"},
          editions: [{from: 2019-01, h: "3.1", l: "3.2"}]}   # Bashkortostan's 3.1, by agreement
  smo-3: {profile: zabaykalsky}
"""
SCHEMAS = {"smo-1": ("region75/tfoms75-actual-MP-3.2.xsd", "region75/tfoms75-actual-PERS-3.2.xsd", None, None),
           "smo-3": ("region75/tfoms75-actual-MP-3.2.xsd", "region75/tfoms75-actual-PERS-3.2.xsd", None, None),
           "smo-2": ("bashkortostan/promed-ufa-OMS-D1-1-NEW.xsd", "bashkortostan/promed-ufa-OMS-D2-NEW.xsd",
                     "OMS-D1", "OMS-D2")}


def enp(rng: random.Random) -> str:
    while True:
        value = "".join(rng.choice("0123456789") for _ in range(16))
        if enp_valid(value):
            return value


@pytest.fixture
def insurers(gateway_factory, demo_keys: Path):
    from demo.ca import demo_signer
    from gateway.oms.profiles import Edition

    trust = TrustStore.from_directory(demo_keys / "trust")
    gateway = [Certificate.load(demo_keys / "gateway-gost2012-256.pem")]
    emulators = {
        "smo-1": InsurerEmulator({}, answer="flk", profile=profile("zabaykalsky"), specialties=V021, mnemonic="smo-1",
                                 trust=trust, senders=gateway, signer=demo_signer(demo_keys, "insurer")),
        "smo-2": InsurerEmulator({}, answer="flk", profile=profile("bashkortostan"), mnemonic="smo-2",
                                 editions=[Edition.model_validate({"from": "2019-01", "h": "3.1", "l": "3.2"})],
                                 trust=trust, senders=gateway, signer=demo_signer(demo_keys, "insurer")),
        "smo-3": InsurerEmulator(PRICES, answer="act-protocol", mnemonic="smo-3", reject={"clinic-a-R-5"},
                                 signer=demo_signer(demo_keys, "insurer")),
    }
    for e in emulators.values():
        e.start()
    yield emulators
    for e in emulators.values():
        e.stop()


def oms_config(tmp_path: Path, bindings: str = BINDINGS) -> Path:
    folder = tmp_path / "oms-config"
    shutil.copytree(ROOT / "config" / "oms" / "profiles", folder / "profiles")
    (folder / "insurers.yaml").write_text(bindings)
    return folder


def tariffs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "tariffs"
    folder.mkdir(exist_ok=True)
    (folder / "t.yaml").write_text(TARIFFS)
    return folder


@pytest.fixture
def gw(gateway_factory, insurers, tmp_path: Path, demo_keys: Path):
    people = "".join(
        f"  - {{mnemonic: {c}, name: {c}, kind: mis, delivery: {{mode: pull}}, "
        f"credentials: {{api_token_sha256: [\"{hash_token(c + '-token')}\"]}}}}\n" for c in CLINICS)
    people += "".join(
        f"  - {{mnemonic: {i}, name: {i}, kind: insurer, oms_code: \"{CODES[i]}\", "
        f"certificates: [\"{demo_keys / 'insurer-gost2012-256.pem'}\"], "
        f"delivery: {{mode: soap, wsdl: \"{insurers[i].wsdl_url}\"}}, "
        f"credentials: {{api_token_sha256: [\"{hash_token(i + '-token')}\"]}}}}\n" for i in INSURERS)
    routes = "".join(
        f'  - {{name: rec-{c}-{i}, sender: {c}, message_type: "{SERVICE_RECORD_NS}", recipient: {i}, channels: [{{mode: pull}}]}}\n'
        f'  - {{name: act-{c}-{i}, sender: {c}, message_type: "{REGISTER_NS}", recipient: {i}}}\n'
        f'  - {{name: flk-{i}-{c}, sender: {i}, message_type: "{FLK_PROTOCOL_NS}", recipient: {c}}}\n'
        f'  - {{name: proto-{i}-{c}, sender: {i}, message_type: "{ACT_PROTOCOL_NS}", recipient: {c}}}\n'
        for c in CLINICS for i in INSURERS)
    g = gateway_factory(f"participants:\n{people}", f"routes:\n{routes}", tariffs=tariffs_dir(tmp_path),
                        oms=oms_config(tmp_path), settings=configs.settings(keys=demo_keys))
    for name, e in insurers.items():
        e.answer_through(g.base, f"{name}-token")
    return g


def month_of_records(gw) -> dict[tuple[str, str], Decimal]:
    """Post a month of records; the expected SUMMAV per (clinic, insurer), computed independently."""
    rng = random.Random(7)
    expected: dict[tuple[str, str], Decimal] = {}
    patients = [enp(rng) for _ in range(8)]
    for clinic, mo in CLINICS.items():
        for n in range(24):
            insurer = INSURERS[n % 3]
            code = rng.choice(sorted(PRICES))
            qty = rng.choice([Decimal("1"), Decimal("2"), Decimal("0.5")])
            day = f"{PERIOD}-{rng.randint(1, 28):02d}"
            record_id = f"{clinic}-R-{n}"
            bad = record_id in BAD
            payload = record(id=record_id, period=PERIOD, mo=mo, enp=enp(rng) if bad else patients[n % 8],
                             insurer=insurer, code=code, din=day, dout=day, qty=str(qty), tariff=str(PRICES[code]),
                             dept=str(1 + n % 4), spec=UNKNOWN_SPECIALTY if bad else "76",
                             okatog="80401000000", okatop="80401000000", ds="J06.9" if n % 2 else "I10")
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


def test_a_month_becomes_one_register_per_clinic_and_insurer_and_the_flk_comes_back(gw, insurers, demo_keys,
                                                                                    tmp_path):
    expected = month_of_records(gw)
    out = tmp_path / "handover"
    written = gw.cli("acts", "build", "--period", PERIOD, "--out", str(out))
    assert written.returncode == 0 and written.stdout.count("written") == 6, written.stdout + written.stderr
    assert len(list(out.glob("*.zip"))) == len(list(out.glob("*.zip.sig"))) == 6
    assert all(e.acts == [] for e in insurers.values())  # --out sends nothing

    built = gw.cli("acts", "build", "--period", PERIOD)
    assert built.returncode == 0 and built.stdout.count("sent") == 6, built.stdout + built.stderr
    wait_for(lambda: sum(len(e.acts) for e in insurers.values()) == 6)
    for name, e in insurers.items():
        assert len(e.acts) == 2  # one per clinic, delivered once
        h_xsd, l_xsd, h_ns, l_ns = SCHEMAS[name]
        for act in e.acts:
            doc = parse_xml(act.envelope)
            env = Envelope.from_element(doc)
            assert env.message_type == REGISTER_NS and env.recipient == name
            archive = read_archive_payload(env.payload)
            h_name = f"HM{CLINICS[env.sender]}S{CODES[name]}_24101"
            assert (archive.file_name, archive.signature_name) == (f"{h_name}.zip", f"{h_name}.zip.sig")
            assert (out / archive.file_name).read_bytes() == archive.content  # what --out wrote is what went
            pair = unpack_register(archive.content, archive.file_name)
            assert pair.l_file is not None
            assert reference_valid(pair.h_file, h_xsd, h_ns) == [] and reference_valid(pair.l_file, l_xsd, l_ns) == []
            assert (pair.h_file.findtext("ZGLV/FILENAME"), pair.l_file.findtext("ZGLV/FILENAME"),
                    pair.l_file.findtext("ZGLV/FILENAME1")) == (h_name, "L" + h_name[1:], h_name)
            assert {z.findtext("PACIENT/ID_PAC") for z in pair.h_file.iterfind("ZAP")} == \
                {p.findtext("ID_PAC") for p in pair.l_file.iterfind("PERS")}
            assert Decimal(pair.h_file.findtext("SCHET/SUMMAV")) == expected[(env.sender, name)]
            verify_detached(archive.content, archive.signature, trust=TrustStore.from_directory(demo_keys / "trust"),
                            signers=[Certificate.load(demo_keys / "gateway-gost2012-256.pem")])
            verified = verify(doc.find(f"{{{ENVELOPE_NS}}}GatewaySignature")[0], document=doc, expected=doc[0],
                              trust=TrustStore.from_directory(demo_keys / "trust"),
                              signers=[Certificate.load(demo_keys / "gateway-gost2012-256.pem")])
            assert verified.algorithm.name == "gost2012-256"
    sig = out / f"HM770001S{CODES['smo-1']}_24101.zip.sig"
    check = subprocess.run(["openssl", "cms", "-verify", "-engine", "gost", "-binary", "-inform", "DER", "-in", sig,
                            "-content", sig.with_suffix(""), "-CAfile", demo_keys / "trust" / "zdravlink-demo-ca.pem",
                            "-purpose", "any", "-out", "/dev/null"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    wait_for(lambda: all(len(e.replies) == 2 for e in insurers.values()))
    assert all(r.status == 202 for e in insurers.values() for r in e.replies), \
        [(r.status, r.detail) for e in insurers.values() for r in e.replies]

    def state(clinic: str, n: int) -> dict:
        return gw.http.get(f"/api/v1/service-records/{clinic}-R-{n}", params={"codeMO": CLINICS[clinic]},
                           headers={"Authorization": f"Bearer {clinic}-token"}).json()

    every = [(c, n) for c in CLINICS for n in range(24)]
    wait_for(lambda: all(state(c, n)["outcome"] != "pending" for c, n in every))
    outcomes = {f"{c}-R-{n}": state(c, n) for c, n in every}
    rejected = {rid for rid, s in outcomes.items() if s["outcome"] == "rejected"}
    assert rejected == BAD | {"clinic-a-R-5"}, {rid: outcomes[rid]["reason"] for rid in rejected}
    for rid in BAD:  # ФЛК: the code and the element, as the insurer named them
        assert {(e["code"], e["element"]) for e in outcomes[rid]["errors"]} >= {("001F.00.0663", "MR_USL_N/PRVS")}
        assert outcomes[rid]["reason"].startswith("001F.00.0310 SL/PRVS")
    assert outcomes["clinic-a-R-5"]["reason"].startswith("5.2.4")  # the act-protocol insurer, as before

    # the clinic also receives the ФЛК protocol itself in its inbox
    inbox = gw.http.get("/api/v1/inbox", params={"messageType": FLK_PROTOCOL_NS, "kind": "response"},
                        headers={"Authorization": "Bearer clinic-a-token"})
    assert inbox.status_code == 200, inbox.text

    # building again sends nothing; a correction is a new pack naming the first
    again = gw.cli("acts", "build", "--period", PERIOD)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 6
    fix = gw.cli("acts", "build", "--period", PERIOD, "--insurer", "smo-1", "--correction")
    assert fix.returncode == 0 and fix.stdout.count("sent") == 2, fix.stdout + fix.stderr
    wait_for(lambda: len(insurers["smo-1"].acts) == 4)
    assert {a.file_name[-6:] for a in insurers["smo-1"].acts[2:]} == {"02.zip"}
    assert len(insurers["smo-2"].acts) == 2


def test_a_period_needing_an_edition_we_do_not_write_is_refused_at_intake_by_name(gw):
    r = gw.post({"messageId": str(uuid.uuid1()), "sender": "clinic-a", "recipient": "smo-1",
                 "messageType": SERVICE_RECORD_NS,
                 "payload": record(id="R-2025", period="2025-10", din="2025-10-06", dout="2025-10-06", mo="770001",
                                   insurer="smo-1", dept="1", tariff="1300.00")}, "clinic-a-token")
    assert r.status_code == 422 and r.json()["code"] == "REGISTER_EDITION_UNSUPPORTED"
    assert "version 5.1" in r.json()["detail"] and r.json()["field"] == "Period"


def test_the_running_gateway_sends_the_previous_months_acts_on_schedule(gateway_factory, insurers, tmp_path, demo_keys):
    import datetime as dt

    from adapters.acts.schedule import previous_period

    period = previous_period(dt.date.today())
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "t.yaml").write_text("tariffs:\n" + "".join(
        f'  - {{code: "{c}", name: "{c}", price: {p}, from: 2000-01-01}}\n' for c, p in PRICES.items()))
    people = ("  - {mnemonic: clinic-a, name: A, kind: mis, delivery: {mode: pull}, "
              f"credentials: {{api_token_sha256: [\"{hash_token('clinic-a-token')}\"]}}}}\n"
              f"  - {{mnemonic: smo-3, name: S, kind: insurer, oms_code: \"77003\", signature_required: false, "
              f"delivery: {{mode: soap, wsdl: \"{insurers['smo-3'].wsdl_url}\"}}}}\n")
    routes = (f'  - {{name: rec, sender: clinic-a, message_type: "{SERVICE_RECORD_NS}", recipient: smo-3, '
              'channels: [{mode: pull}]}\n'
              f'  - {{name: act, sender: clinic-a, message_type: "{REGISTER_NS}", recipient: smo-3}}\n')
    # smo-3 takes region 75's 3.2 by agreement: the current period's federal edition (5.1) is not written
    bindings = 'insurers:\n  smo-3: {profile: zabaykalsky, editions: [{from: 2019-01, h: "3.2", l: "3.2"}]}\n'
    settings = configs.settings(keys=demo_keys) + "acts: {schedule_day: 1, schedule_hour: 0}\n"
    gw = gateway_factory(f"participants:\n{people}", f"routes:\n{routes}", tariffs=tmp_path / "tariffs",
                         oms=oms_config(tmp_path, bindings), settings=settings)
    day = f"{period}-10"
    r = gw.post({"messageId": str(uuid.uuid1()), "sender": "clinic-a", "recipient": "smo-3",
                 "messageType": SERVICE_RECORD_NS,
                 "payload": record(id="S-1", mo="770001", insurer="smo-3", din=day, dout=day, period=period,
                                   dept="1")},
                "clinic-a-token")
    assert r.status_code == 202, r.text
    gw.env["ZL_ACTS_INTERVAL"] = "0.5"
    gw.spawn("acts")
    wait_for(lambda: len(insurers["smo-3"].acts) == 1)
    time.sleep(1.5)  # several more checks of the schedule: the act is not sent again
    assert len(insurers["smo-3"].acts) == 1
    assert f"acts {period} 770001 → smo-3: sent" in gw.log("acts")


def test_an_insurer_receiving_by_rest_gets_the_same_archive_in_json(gateway_factory, tmp_path, demo_keys):
    import json

    from demo.emulators.rest_recipient import RecipientServer

    insurer = RecipientServer(name="smo-rest").start()
    try:
        people = ("  - {mnemonic: clinic-a, name: A, kind: mis, delivery: {mode: pull}, "
                  f"credentials: {{api_token_sha256: [\"{hash_token('clinic-a-token')}\"]}}}}\n"
                  "  - {mnemonic: smo-1, name: S, kind: insurer, oms_code: \"75001\", signature_required: false, "
                  f"delivery: {{mode: rest, url: \"{insurer.url}\", format: json}}}}\n")
        routes = (f'  - {{name: rec, sender: clinic-a, message_type: "{SERVICE_RECORD_NS}", recipient: smo-1, '
                  'channels: [{mode: pull}]}\n'
                  f'  - {{name: act, sender: clinic-a, message_type: "{REGISTER_NS}", recipient: smo-1}}\n')
        gw = gateway_factory(f"participants:\n{people}", f"routes:\n{routes}", tariffs=tariffs_dir(tmp_path),
                             oms=oms_config(tmp_path, "insurers:\n  smo-1: {profile: zabaykalsky}\n"),
                             settings=configs.settings(keys=demo_keys))
        r = gw.post({"messageId": str(uuid.uuid1()), "sender": "clinic-a", "recipient": "smo-1",
                     "messageType": SERVICE_RECORD_NS,
                     "payload": record(id="REST-1", period=PERIOD, din=f"{PERIOD}-07", dout=f"{PERIOD}-07", mo="770001",
                                       insurer="smo-1", dept="3", tariff="1300.00")}, "clinic-a-token")
        assert r.status_code == 202, r.text
        built = gw.cli("acts", "build", "--period", PERIOD)
        assert built.returncode == 0 and "sent" in built.stdout, built.stdout + built.stderr
        wait_for(lambda: len(insurer.requests) == 1)
        env = Envelope.from_json(json.loads(insurer.requests[0].body))
        archive = read_archive_payload(env.payload)
        pair = unpack_register(archive.content, archive.file_name)
        assert archive.file_name == "HM770001S75001_24101.zip"
        assert reference_valid(pair.h_file, SCHEMAS["smo-1"][0], None) == []
        assert [u.findtext("IDSERV") for u in pair.h_file.iterfind(".//USL")] == ["REST-1"]
        verify_detached(archive.content, archive.signature, trust=TrustStore.from_directory(demo_keys / "trust"),
                        signers=[Certificate.load(demo_keys / "gateway-gost2012-256.pem")])
    finally:
        insurer.stop()

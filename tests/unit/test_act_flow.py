"""The gateway's side of an act, without a broker, on SQLite and PostgreSQL: records in, the register archive
out (journalled), the insurer's ФЛК protocol in, each record marked; the same for a protocol left as a file,
and `--out`.

The insurer's checks run in-process here (``check_archive`` of the emulator); over the wire they
run in tests/integration/test_service_acts.py.
"""
from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import uuid
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import select

from adapters.acts.archive import read_archive_payload
from adapters.acts.protocol_file import import_protocol
from adapters.acts.runner import ActRunner
from adapters.intake import Intake
from demo.ca import demo_signer
from demo.emulators.insurer import check_archive, protocol_file
from gateway.accept import AcceptPipeline
from gateway.config import load_config
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.journal.tables import acts, rejections
from gateway.keyring import KeyRing
from gateway.oms.archive import pack, unpack_register
from gateway.oms.flk import FlkError, FlkProtocol, write_flk
from gateway.oms.profiles import InsurerBinding
from gateway.schemas import known_message_types
from gateway.service_records import ACT_PROTOCOL_NS, FLK_PROTOCOL_NS, REGISTER_NS, SERVICE_RECORD_NS
from gateway.xmlsafe import parse_xml
from signing import Certificate, Signer, TrustStore, sign
from signing.cms import sign_detached, verify_detached
from tests.unit.test_service_act import profile
from tests.unit.test_service_records import TARIFFS, record

ROOT = Path(__file__).resolve().parents[2]
PERIOD = "2024-10"
F = "{%s}" % FLK_PROTOCOL_NS
BAD_SPECIALTY = "9999"  # outside the insurer's V021 in these tests
V021 = {"76", "27"}


@pytest.fixture
def gateway(tmp_path: Path, demo_keys: Path, db_url: str):
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "t.yaml").write_text(TARIFFS.replace("2026-01-01", "2024-01-01"), encoding="utf-8")
    (tmp_path / "participants.yaml").write_text(
        "participants:\n"
        "  - {mnemonic: clinic, name: Clinic, kind: mis, delivery: {mode: pull}}\n"
        f"  - {{mnemonic: smo, name: SMO, kind: insurer, oms_code: '75001', delivery: {{mode: pull}}, "
        f"certificates: ['{demo_keys / 'insurer-gost2012-256.pem'}']}}\n")
    (tmp_path / "routes.yaml").write_text(
        "routes:\n"
        f'  - {{name: records, sender: clinic, message_type: "{SERVICE_RECORD_NS}", recipient: smo}}\n'
        f'  - {{name: acts, sender: clinic, message_type: "{REGISTER_NS}", recipient: smo}}\n'
        f'  - {{name: flk, sender: smo, message_type: "{FLK_PROTOCOL_NS}", recipient: clinic}}\n'
        f'  - {{name: proto, sender: smo, message_type: "{ACT_PROTOCOL_NS}", recipient: clinic}}\n')
    shutil.copytree(ROOT / "config" / "oms" / "profiles", tmp_path / "oms" / "profiles")
    (tmp_path / "oms" / "insurers.yaml").write_text(
        f"insurers:\n  smo: {{profile: zabaykalsky, drop_directory: {tmp_path / 'drop'}}}\n")
    config = load_config(tmp_path, known_message_types=known_message_types())
    journal = Journal(db_url)
    journal.migrate()
    keyring = KeyRing(trust=TrustStore.from_directory(demo_keys / "trust"), signer=demo_signer(demo_keys, "gateway"),
                      certificates={"smo": [Certificate.load(demo_keys / "insurer-gost2012-256.pem")]})
    pipeline = AcceptPipeline(config, journal, keyring)
    pipeline.service_records.today = lambda: dt.date(2024, 11, 20)
    runner = ActRunner(config, journal, Intake(pipeline, journal), today=lambda: dt.date(2024, 11, 5))
    yield runner
    journal.engine.dispose()


def post(runner: ActRunner, sender: str, recipient: str, message_type: str, payload: etree._Element | str,
         reference: str | None = None, signer: Signer | None = None):
    env = Envelope(message_id=str(uuid.uuid1()), sender=sender, recipient=recipient, message_type=message_type,
                   payload=parse_xml(payload.encode()) if isinstance(payload, str) else payload,
                   reference_message_id=reference)
    if signer is not None:
        env.sender_signature = sign(env.sender_data_element(), signer)
    return runner.intake.receive_envelope(env, runner.config.participants[sender], source="rest")


def answer(runner: ActRunner, keys: Path, name: str, content: bytes, reference: str | None) -> None:
    """The insurer's ФЛК protocol file, posted as it would post it: signed with its key."""
    post(runner, "smo", "clinic", FLK_PROTOCOL_NS, flk_payload(name, content), reference,
         demo_signer(keys, "insurer"))


def month(runner: ActRunner) -> list[str]:
    """Six records, two patients with one record each whose doctor's specialty the insurer does not know."""
    ids = []
    for n in range(6):
        enp = {0: "1234567890123452", 1: "1234567890123452", 2: "7700000000000011", 3: "7700000000000029",
               4: "7700000000000037", 5: "1234567890123452"}[n]
        rid = f"R-{n}"
        post(runner, "clinic", "smo", SERVICE_RECORD_NS, record(
            id=rid, period=PERIOD, din=f"{PERIOD}-{n + 3:02d}", dout=f"{PERIOD}-{n + 3:02d}", enp=enp, dept="12",
            code="B03.016.002", tariff="321.00", spec=BAD_SPECIALTY if n in (2, 4) else "76",
            psnils="" if n == 3 else "11223344595"))
        ids.append(rid)
    return ids


def state(runner: ActRunner, record_id: str) -> dict:
    return runner.intake.pipeline.service_records.state(record_id, "770001")


def sent_archive(runner: ActRunner, message_id: str):
    rec = runner.journal.get(message_id)
    return read_archive_payload(Envelope.from_element(parse_xml(rec.envelope)).payload)


def flk_payload(name: str, content: bytes) -> etree._Element:
    payload = etree.Element(F + "ProtocolFile", nsmap={"fp": FLK_PROTOCOL_NS})
    etree.SubElement(payload, F + "FileName").text = name
    etree.SubElement(payload, F + "Content").text = base64.b64encode(content).decode()
    return payload


def test_records_become_one_signed_register_and_the_flk_protocol_marks_them(gateway: ActRunner, demo_keys: Path,
                                                                             tmp_path: Path) -> None:
    ids = month(gateway)
    (outcome,) = gateway.build(PERIOD)
    assert outcome.state == "sent" and outcome.file_name == "HM770001S75001_24101", outcome
    archive = sent_archive(gateway, outcome.message_id)
    assert archive.file_name == "HM770001S75001_24101.zip"
    verify_detached(archive.content, archive.signature, trust=TrustStore.from_directory(demo_keys / "trust"),
                    signers=[demo_signer(demo_keys, "gateway").certificate])
    dropped = tmp_path / "drop" / archive.file_name
    assert dropped.read_bytes() == archive.content
    assert (tmp_path / "drop" / archive.signature_name).read_bytes() == archive.signature
    with gateway.journal.engine.connect() as conn:
        row = conn.execute(select(acts)).one()
    assert (row.file_name, row.records, row.total) == ("HM770001S75001_24101", 6, "1926.00")

    pair = unpack_register(archive.content, archive.file_name)
    protocols = check_archive(pair, profile("zabaykalsky"), specialties=V021)
    name, content = protocol_file(protocols, dt.date(2024, 11, 6))
    assert name == "VM770001S75001_24101.zip"
    answer(gateway, demo_keys, name, content, outcome.message_id)

    rejected = {r: state(gateway, r) for r in ids if state(gateway, r)["outcome"] == "rejected"}
    assert set(rejected) == {"R-2", "R-4"}
    for got in rejected.values():
        assert {(e["code"], e["element"]) for e in got["errors"]} == {("001F.00.0310", "SL/PRVS"),
                                                                      ("001F.00.0663", "MR_USL_N/PRVS")}
        assert got["reason"].startswith("001F.00.0310 SL/PRVS")
    assert all(state(gateway, r)["outcome"] == "accepted" and state(gateway, r)["errors"] == []
               for r in set(ids) - set(rejected))

    again = gateway.build(PERIOD)
    assert [o.state for o in again] == ["unchanged"]


def test_an_error_about_a_patient_or_the_whole_file_marks_all_its_records(gateway: ActRunner, demo_keys: Path) -> None:
    ids = month(gateway)
    (outcome,) = gateway.build(PERIOD)
    l_protocol = FlkProtocol("FM770001S75001_24101", "LM770001S75001_24101.xml",
                             (FlkError("003F.00.1530", "FAM", "PERS", id_pac="1234567890123452", comment="нет"),))
    content = pack([("FM770001S75001_24101.xml", write_flk(l_protocol))], dt.date(2024, 11, 6))
    answer(gateway, demo_keys, "FM770001S75001_24101.zip", content, outcome.message_id)
    assert {r for r in ids if state(gateway, r)["outcome"] == "rejected"} == {"R-0", "R-1", "R-5"}
    whole = write_flk(FlkProtocol("VM770001S75001_24101", "HM770001S75001_24101", (FlkError("904"),)))
    answer(gateway, demo_keys, "VM770001S75001_24101.xml", whole, outcome.message_id)
    assert {state(gateway, r)["outcome"] for r in ids} == {"rejected"}


@pytest.mark.parametrize("protocol,reference,code,detail", [
    (FlkProtocol("VM770001S75001_24101", "HM770001S75001_24102", ()), "act", "PROTOCOL_INVALID", "answers"),
    (FlkProtocol("VM770001S75001_24101", "HM770001S75001_24101", (FlkError("1", n_zap="99"),)), "act",
     "PROTOCOL_INVALID", "N_ZAP 99"),
    (FlkProtocol("VM770001S75001_24101", "HM770001S75001_24101", ()), None, "PROTOCOL_INVALID",
     "ReferenceMessageID"),
    (FlkProtocol("VM770001S75001_24101", "HM770001S75001_24101", ()), "other", "MESSAGE_NOT_FOUND", "no act"),
])
def test_a_protocol_that_does_not_fit_its_act_is_refused_whole(gateway: ActRunner, demo_keys: Path,
                                                                protocol: FlkProtocol, reference: str | None,
                                                                code: str, detail: str) -> None:
    month(gateway)
    (outcome,) = gateway.build(PERIOD)
    ref = {"act": outcome.message_id, "other": str(uuid.uuid1()), None: None}[reference]
    with pytest.raises(Rejection) as exc:
        answer(gateway, demo_keys, "V.xml", write_flk(protocol), ref)
    assert exc.value.code == code and detail in exc.value.detail
    assert {state(gateway, f"R-{n}")["outcome"] for n in range(6)} == {"pending"}


def test_a_protocol_left_as_a_file_is_taken_with_its_signature(gateway: ActRunner, demo_keys: Path,
                                                                tmp_path: Path) -> None:
    month(gateway)
    (outcome,) = gateway.build(PERIOD)
    file = tmp_path / "VM770001S75001_24101.xml"
    file.write_bytes(write_flk(FlkProtocol("VM770001S75001_24101", "HM770001S75001_24101.XML",
                                           (FlkError("001F.00.0310", "PRVS", "SL", n_zap="2", sl_id="2"),))))
    garbage = tmp_path / "VM770001S75001_24101.zip"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(Rejection) as exc:
        import_protocol(gateway, garbage, None)
    assert exc.value.code == "PROTOCOL_INVALID" and "not a readable ZIP" in exc.value.detail
    with pytest.raises(Rejection) as exc:  # the route wants the insurer's signature: none came
        import_protocol(gateway, file, None)
    assert exc.value.code == "SIGNATURE_REQUIRED"
    forged = tmp_path / "forged.sig"
    forged.write_bytes(sign_detached(file.read_bytes(), demo_signer(demo_keys, "clinic")))
    with pytest.raises(Rejection) as exc:
        import_protocol(gateway, file, forged)
    assert exc.value.code == "CERTIFICATE_SENDER_MISMATCH"
    sig = tmp_path / f"{file.name}.sig"
    sig.write_bytes(sign_detached(file.read_bytes(), demo_signer(demo_keys, "insurer")))
    with gateway.journal.engine.connect() as conn:  # every refusal is in the audit table
        assert [r.code for r in conn.execute(select(rejections).order_by(rejections.c.id))] == [
            "PROTOCOL_INVALID", "SIGNATURE_REQUIRED", "CERTIFICATE_SENDER_MISMATCH"]
    accepted = import_protocol(gateway, file, sig)
    assert (accepted.envelope.sender, accepted.envelope.recipient, accepted.envelope.reference_message_id) == (
        "smo", "clinic", outcome.message_id)
    evidence = gateway.journal.trail(accepted.outcome.message_id)[0].detail
    assert "cms-detached" in json.dumps(evidence, ensure_ascii=False)
    archive = sent_archive(gateway, outcome.message_id)
    h_file = unpack_register(archive.content, archive.file_name).h_file
    second_case = {u.findtext("IDSERV") for zap in h_file.iterfind("ZAP") if zap.findtext("N_ZAP") == "2"
                   for u in zap.iterfind("Z_SL/SL/USL")}
    assert {f"R-{n}" for n in range(6) if state(gateway, f"R-{n}")["outcome"] == "rejected"} == second_case


def test_out_writes_the_archive_and_sends_nothing_then_a_copy_of_what_was_sent(gateway: ActRunner,
                                                                               tmp_path: Path) -> None:
    month(gateway)
    (written,) = gateway.build(PERIOD, out=tmp_path / "out")
    assert written.state == "written" and "not sent" in written.detail
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["HM770001S75001_24101.zip",
                                                                    "HM770001S75001_24101.zip.sig"]
    with gateway.journal.engine.connect() as conn:
        assert conn.execute(select(acts)).all() == []
    assert {state(gateway, f"R-{n}")["actMessageId"] for n in range(6)} == {None}
    (sent,) = gateway.build(PERIOD)
    (copy,) = gateway.build(PERIOD, out=tmp_path / "copy")
    assert copy.state == "written" and sent.message_id in copy.detail
    assert (tmp_path / "copy" / "HM770001S75001_24101.zip").read_bytes() == \
        sent_archive(gateway, sent.message_id).content


def test_a_period_needing_an_edition_we_do_not_write_fails_by_name(gateway: ActRunner) -> None:
    month(gateway)
    gateway.oms.insurers["smo"] = InsurerBinding(profile="zabaykalsky",
                                                 editions=[{"from": "2024-01", "h": "5.0", "l": "3.2"}])
    (outcome,) = gateway.build(PERIOD)
    assert outcome.state == "failed" and "version 5.0" in outcome.detail


def test_a_register_whose_act_row_fails_is_not_sent_and_the_next_build_sends_it_once(gateway: ActRunner) -> None:
    """The act's row and its records' links commit with the register message or not at all: committed apart,
    a database error (or a kill) between the two left a register in the outbox with no act behind it, whose
    protocol was then refused, and the next build sent version 1 again under a new MessageID."""
    import sqlalchemy as sa

    class Refused(Exception):
        pass

    def refuse(conn, cursor, statement: str, *_: object) -> None:  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO acts"):
            raise Refused(statement)

    month(gateway)
    engine = gateway.journal.engine
    sa.event.listen(engine, "before_cursor_execute", refuse)
    try:
        with pytest.raises(Refused):
            gateway.build(PERIOD)
    finally:
        sa.event.remove(engine, "before_cursor_execute", refuse)
    with engine.connect() as conn:
        registers = conn.execute(sa.text("SELECT message_id FROM messages WHERE message_type = :t"),
                                 {"t": REGISTER_NS}).scalars().all()
    assert registers == [], "a register went to the outbox without its act"
    (outcome,) = gateway.build(PERIOD)
    assert outcome.state == "sent" and outcome.version == 1
    with engine.connect() as conn:
        assert conn.execute(select(acts.c.message_id)).scalars().all() == [outcome.message_id]
        assert conn.execute(sa.text("SELECT count(*) FROM messages WHERE message_type = :t"),
                            {"t": REGISTER_NS}).scalar() == 1

"""Service records at intake: each rule refuses with its code and field; good records are kept for acts."""
from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import pytest

from gateway.accept import AcceptPipeline
from gateway.config import ConfigError, ConfigProblem, load_config
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.schemas import known_message_types
from gateway.service_records import SERVICE_RECORD_NS
from gateway.tariffs import load_tariffs
from gateway.xmlsafe import parse_xml

ROOT = Path(__file__).resolve().parents[2]
TARIFFS = """tariffs:
  - {code: "B01.047.001", name: Приём терапевта, price: 1234.56, from: 2026-01-01, to: 2026-06-30}
  - {code: "B01.047.001", name: Приём терапевта, price: 1300.00, from: 2026-07-01}
  - {code: "B03.016.002", name: ОАК, price: 321.00, from: 2026-01-01}
"""


def person(**over: str) -> str:
    """The Person block; a value of "" leaves its element out."""
    v = {"fam": "Иванова", "im": "Анна", "ot": "Петровна", "sex": "2", "born": "1980-04-12", "place": "",
         "doctype": "14", "docser": "45 06", "docnum": "123456", "docdate": "2005-05-20",
         "docorg": "ОВД Тверского р-на г. Москвы", "psnils": "11223344595", "okatog": "", "okatop": "", **over}
    tags = [("FamilyName", "fam"), ("GivenName", "im"), ("Patronymic", "ot"), ("Sex", "sex"), ("BirthDate", "born"),
            ("BirthPlace", "place")]
    doc = [("Type", "doctype"), ("Series", "docser"), ("Number", "docnum"), ("IssueDate", "docdate"),
           ("IssuedBy", "docorg")]
    out = "".join(f"<sr:{t}>{v[k]}</sr:{t}>" for t, k in tags if v[k])
    if v["doctype"] or v["docnum"]:
        out += "<sr:IdentityDocument>" + "".join(f"<sr:{t}>{v[k]}</sr:{t}>" for t, k in doc if v[k]) + \
            "</sr:IdentityDocument>"
    out += "".join(f"<sr:{t}>{v[k]}</sr:{t}>" for t, k in (("SNILS", "psnils"), ("ResidenceOKATO", "okatog"),
                                                           ("StayOKATO", "okatop")) if v[k])
    return f"<sr:Person>{out}</sr:Person>"


def record(**over: str) -> str:
    """A service record; keys of ``person`` change the patient's personal data, "" leaves an element out."""
    base = {"id": "R-1", "period": "2026-10", "oid": "1.2.643.5.1.13.13.12.2.77.1", "mo": "770001",
            "enp": "1234567890123452", "policy": "3", "npolis": "", "insurer": "smo", "code": "B01.047.001",
            "din": "2026-10-05", "dout": "2026-10-05", "qty": "1", "tariff": "1300.00", "ds": "J06.9", "dept": "",
            "snils": "11223344595", "spec": "76"}
    v = {**base, **over}
    personal = person(**{k: val for k, val in over.items() if k not in base})
    return (f'<sr:ServiceRecord xmlns:sr="{SERVICE_RECORD_NS}"><sr:RecordId>{v["id"]}</sr:RecordId>'
            f'<sr:Period>{v["period"]}</sr:Period><sr:Organisation><sr:Oid>{v["oid"]}</sr:Oid>'
            f'<sr:CodeMO>{v["mo"]}</sr:CodeMO></sr:Organisation><sr:Patient><sr:ENP>{v["enp"]}</sr:ENP>'
            f'<sr:PolicyType>{v["policy"]}</sr:PolicyType>'
            + (f'<sr:PolicyNumber>{v["npolis"]}</sr:PolicyNumber>' if v["npolis"] else "")
            + f'<sr:Insurer>{v["insurer"]}</sr:Insurer>{personal}</sr:Patient>'
            f'<sr:Service><sr:Code>{v["code"]}</sr:Code><sr:DateIn>{v["din"]}</sr:DateIn>'
            f'<sr:DateOut>{v["dout"]}</sr:DateOut><sr:Quantity>{v["qty"]}</sr:Quantity>'
            f'<sr:Tariff>{v["tariff"]}</sr:Tariff><sr:Diagnosis>{v["ds"]}</sr:Diagnosis>'
            + (f'<sr:Department>{v["dept"]}</sr:Department>' if v["dept"] else "")
            + f'</sr:Service><sr:Doctor><sr:SNILS>{v["snils"]}</sr:SNILS>'
            f'<sr:Specialty>{v["spec"]}</sr:Specialty></sr:Doctor></sr:ServiceRecord>')


def make_pipeline(tmp_path: Path, db_url: str, oms: str | None = None) -> AcceptPipeline:
    """A pipeline on clinic → smo; with ``oms`` (insurers.yaml text) smo takes a region's register."""
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "t.yaml").write_text(TARIFFS, encoding="utf-8")
    (tmp_path / "participants.yaml").write_text(
        "participants:\n"
        "  - {mnemonic: clinic, name: Clinic, kind: mis, delivery: {mode: pull}}\n"
        "  - {mnemonic: smo, name: SMO, kind: insurer, oms_code: '75001', delivery: {mode: pull}, "
        "signature_required: false}\n"
        "  - {mnemonic: lab, name: Lab, kind: lis, delivery: {mode: pull}}\n")
    (tmp_path / "routes.yaml").write_text(
        f'routes:\n  - {{name: records, sender: clinic, message_type: "{SERVICE_RECORD_NS}", recipient: smo}}\n')
    if oms is not None:
        shutil.copytree(ROOT / "config" / "oms" / "profiles", tmp_path / "oms" / "profiles")
        (tmp_path / "oms" / "insurers.yaml").write_text(oms)
    config = load_config(tmp_path, known_message_types=known_message_types())
    journal = Journal(db_url)
    journal.migrate()
    p = AcceptPipeline(config, journal)
    p.service_records.today = lambda: dt.date(2026, 11, 23)
    return p


@pytest.fixture
def pipeline(tmp_path: Path, db_url: str):
    p = make_pipeline(tmp_path, db_url)
    yield p
    p.journal.engine.dispose()


def send(pipeline: AcceptPipeline, payload: str, message_id: str | None = None):
    env = Envelope(message_id=message_id or str(uuid.uuid1()), sender="clinic", recipient="smo",
                   message_type=SERVICE_RECORD_NS, payload=parse_xml(payload.encode()))
    return pipeline.accept(env, pipeline.config.participants["clinic"], source="rest")


def test_a_good_record_is_accepted_and_kept_for_its_act(pipeline):
    accepted = send(pipeline, record())
    state = pipeline.service_records.state("R-1", "770001")
    assert state["messageId"] == accepted.outcome.message_id and state["outcome"] == "pending"
    assert (state["insurer"], state["period"], state["messageStatus"]) == ("smo", "2026-10", "ACCEPTED")


@pytest.mark.parametrize("change,code,field", [
    ({"code": "X99.999"}, "SERVICE_CODE_UNKNOWN", "Service/Code"),
    ({"tariff": "1234.56"}, "TARIFF_MISMATCH", "Service/Tariff"),          # the old price, after it changed
    ({"din": "2026-06-30", "dout": "2026-06-30", "tariff": "1234.56"}, "DATE_INVALID", "Service/DateIn"),
    ({"din": "2026-10-06", "dout": "2026-10-05"}, "DATE_INVALID", "Service/DateOut"),
    ({"period": "2026-12", "din": "2026-12-01", "dout": "2026-12-01"}, "DATE_INVALID", "Service/DateOut"),
    ({"snils": "11223344596"}, "SNILS_INVALID", "Doctor/SNILS"),
    ({"insurer": "lab"}, "UNKNOWN_INSURER", "Patient/Insurer"),
    ({"insurer": "nobody"}, "UNKNOWN_INSURER", "Patient/Insurer"),
    ({"psnils": "11223344596"}, "SNILS_INVALID", "Patient/Person/SNILS"),
    ({"born": "2026-10-06"}, "DATE_INVALID", "Patient/Person/BirthDate"),            # born after the visit
    ({"born": "1899-12-31"}, "DATE_INVALID", "Patient/Person/BirthDate"),
    ({"policy": "1"}, "FIELD_REQUIRED", "Patient/PolicyNumber"),                      # Q015 003F.00.2170
    ({"policy": "2", "npolis": "770000123", "docdate": ""}, "FIELD_REQUIRED",
     "Patient/Person/IdentityDocument/IssueDate"),
    ({"policy": "1", "npolis": "770000123", "docser": ""}, "FIELD_REQUIRED", "Patient/Person/IdentityDocument/Series"),
    ({"doctype": "19"}, "IDENTITY_DOCUMENT_INVALID", "Patient/Person/IdentityDocument/Type"),   # not in F011
    ({"docdate": "1979-01-01"}, "DATE_INVALID", "Patient/Person/IdentityDocument/IssueDate"),  # before birth
    ({"docdate": "2026-11-24"}, "DATE_INVALID", "Patient/Person/IdentityDocument/IssueDate"),  # tomorrow
    ({"sex": "3"}, "PAYLOAD_INVALID", None),
    ({"born": ""}, "PAYLOAD_INVALID", None),
])
def test_each_rule_refuses_with_its_code_and_field(pipeline, change, code, field):
    with pytest.raises(Rejection) as info:
        send(pipeline, record(**change))
    assert info.value.code == code and (field is None or info.value.field == field), info.value
    assert pipeline.service_records.state(change.get("id", "R-1"), "770001") is None


def test_the_tariff_in_force_on_the_service_date_applies(pipeline):
    send(pipeline, record(id="R-old", din="2026-06-30", dout="2026-06-30", period="2026-06", tariff="1234.56"))
    send(pipeline, record(id="R-new", din="2026-07-01", dout="2026-07-01", period="2026-07", tariff="1300.00"))
    assert pipeline.service_records.state("R-old", "770001") and pipeline.service_records.state("R-new", "770001")


def test_the_same_record_twice_is_refused_but_a_resend_of_its_message_is_a_duplicate(pipeline):
    first = send(pipeline, record())
    again = send(pipeline, record(), message_id=first.outcome.message_id)
    assert again.outcome.duplicate
    with pytest.raises(Rejection) as info:
        send(pipeline, record())
    assert info.value.code == "SERVICE_RECORD_DUPLICATE" and info.value.status == 409
    assert first.outcome.message_id in info.value.detail
    send(pipeline, record(mo="770002"))  # the same RecordId at another organisation is another record


def test_an_enp_failing_its_check_digit_is_a_warning_in_the_trail(pipeline):
    accepted = send(pipeline, record(enp="1234567898765432"))
    detail = pipeline.journal.trail(accepted.outcome.message_id)[0].detail
    assert any("ЕНП" in w for w in detail["warnings"])


def test_overlapping_tariff_periods_are_a_configuration_problem(tmp_path):
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "a.yaml").write_text(TARIFFS + '  - {code: "B03.016.002", name: x, price: 1, from: 2026-05-01}\n',
                                                  encoding="utf-8")
    (tmp_path / "tariffs" / "b.yaml").write_text('tariffs:\n  - {code: "Z", name: z, price: -1, from: 2026-01-01}\n')
    problems: list[ConfigProblem] = []
    load_tariffs(tmp_path, problems)
    rules = {(Path(p.file).name, p.key): p.rule for p in problems}
    assert "overlaps another period" in rules[("a.yaml", "tariffs[3]")]
    assert rules[("b.yaml", "tariffs[0].price")].startswith("must be ≥ 0")


def test_a_broken_tariff_file_stops_the_pipeline(tmp_path, db_url):
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "a.yaml").write_text("tariffs: [{code: X}]\n")
    (tmp_path / "participants.yaml").write_text(
        "participants:\n  - {mnemonic: clinic, name: C, kind: mis, delivery: {mode: pull}}\n")
    (tmp_path / "routes.yaml").write_text("routes: []\n")
    with pytest.raises(ConfigError):
        AcceptPipeline(load_config(tmp_path), Journal(db_url))


def test_an_old_style_policy_with_its_number_and_document_in_full_is_accepted(pipeline):
    send(pipeline, record(policy="1", npolis="770000123", ot=""))
    assert pipeline.service_records.state("R-1", "770001")["outcome"] == "pending"


def test_without_a_region_profile_a_record_is_kept_with_a_warning(pipeline):
    accepted = send(pipeline, record())
    warnings = pipeline.journal.trail(accepted.outcome.message_id)[0].detail["warnings"]
    assert any("no register profile is configured for 'smo'" in w for w in warnings)


@pytest.mark.parametrize("oms,change,code,field", [
    ("insurers:\n  smo: {profile: zabaykalsky}\n", {"period": "2024-10", "din": "2024-10-05", "dout": "2024-10-05",
                                                     "code": "B03.016.002", "tariff": "321.00"},
     "FIELD_REQUIRED", "Service/Department"),                               # SL/PODR, USL/PODR in region 75
    ("insurers:\n  smo: {profile: zabaykalsky}\n", {}, "REGISTER_EDITION_UNSUPPORTED", "Period"),  # 2026: 5.1
    ("insurers:\n  smo: {profile: bashkortostan, values: {ZL_LIST/SCHET/PODR: '1', PERS_LIST/PERS/STATUS: '1'}, "
     "editions: [{from: 2019-01, h: '3.1', l: '3.2'}]}\n", {"dept": "12", "okatop": "80401000000"},
     "FIELD_REQUIRED", "Patient/Person/ResidenceOKATO"),                    # OKATOG in Bashkortostan
    ("insurers:\n  smo: {profile: bashkortostan, values: {ZL_LIST/SCHET/PODR: '1', PERS_LIST/PERS/STATUS: '1'}, "
     "editions: [{from: 2019-01, h: '3.1', l: '3.2'}]}\n", {"dept": "12", "fam": "", "okatog": "80401000000",
                                                            "okatop": "80401000000"},
     "FIELD_REQUIRED", "Patient/Person/FamilyName"),                        # FAM is T40NN there
])
def test_what_the_insurers_region_requires_is_refused_at_intake(tmp_path, db_url, oms, change, code, field):
    p = make_pipeline(tmp_path, db_url, oms)
    try:
        with pytest.raises(Rejection) as info:
            send(p, record(**change))
        assert (info.value.code, info.value.field) == (code, field), info.value
        if code == "FIELD_REQUIRED":
            assert "schema requires" in info.value.detail
        else:
            assert "5.1" in info.value.detail
    finally:
        p.journal.engine.dispose()


def test_a_refusal_audits_no_personal_data(tmp_path, db_url, caplog):
    import logging

    from sqlalchemy import select

    from adapters.intake import Intake
    from gateway.journal.tables import rejections

    p = make_pipeline(tmp_path, db_url)
    intake = Intake(p, p.journal)
    env = Envelope(message_id=str(uuid.uuid1()), sender="clinic", recipient="smo", message_type=SERVICE_RECORD_NS,
                   payload=parse_xml(record(born="2026-10-07", psnils="11223344596").encode()))
    with caplog.at_level(logging.INFO, logger="zdravlink.intake"), pytest.raises(Rejection):
        intake.receive_envelope(env, p.config.participants["clinic"], source="rest")
    with p.journal.engine.connect() as conn:
        audited = " ".join(str(v) for row in conn.execute(select(rejections)).all() for v in row)
    p.journal.engine.dispose()
    assert "SNILS_INVALID" in audited and "Patient/Person/SNILS" in audited
    for personal in ("Иванова", "Анна", "1980-04-12", "2026-10-07", "11223344596", "123456", "45 06"):
        assert personal not in audited and personal not in caplog.text, personal

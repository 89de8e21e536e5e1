"""Service records at intake: each rule refuses with its code and field; good records are kept for acts."""
from __future__ import annotations

import datetime as dt
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

TARIFFS = """tariffs:
  - {code: "B01.047.001", name: Приём терапевта, price: 1234.56, from: 2026-01-01, to: 2026-06-30}
  - {code: "B01.047.001", name: Приём терапевта, price: 1300.00, from: 2026-07-01}
  - {code: "B03.016.002", name: ОАК, price: 321.00, from: 2026-01-01}
"""


def record(**over: str) -> str:
    v = {"id": "R-1", "period": "2026-10", "oid": "1.2.643.5.1.13.13.12.2.77.1", "mo": "770001",
         "enp": "1234567890123452", "insurer": "smo", "code": "B01.047.001", "din": "2026-10-05", "dout": "2026-10-05",
         "qty": "1", "tariff": "1300.00", "ds": "J06.9", "snils": "11223344595", "spec": "76", **over}
    return (f'<sr:ServiceRecord xmlns:sr="{SERVICE_RECORD_NS}"><sr:RecordId>{v["id"]}</sr:RecordId>'
            f'<sr:Period>{v["period"]}</sr:Period><sr:Organisation><sr:Oid>{v["oid"]}</sr:Oid>'
            f'<sr:CodeMO>{v["mo"]}</sr:CodeMO></sr:Organisation><sr:Patient><sr:ENP>{v["enp"]}</sr:ENP>'
            f'<sr:PolicyType>3</sr:PolicyType><sr:Insurer>{v["insurer"]}</sr:Insurer></sr:Patient>'
            f'<sr:Service><sr:Code>{v["code"]}</sr:Code><sr:DateIn>{v["din"]}</sr:DateIn>'
            f'<sr:DateOut>{v["dout"]}</sr:DateOut><sr:Quantity>{v["qty"]}</sr:Quantity>'
            f'<sr:Tariff>{v["tariff"]}</sr:Tariff><sr:Diagnosis>{v["ds"]}</sr:Diagnosis></sr:Service><sr:Doctor><sr:SNILS>{v["snils"]}</sr:SNILS>'
            f'<sr:Specialty>{v["spec"]}</sr:Specialty></sr:Doctor></sr:ServiceRecord>')


@pytest.fixture
def pipeline(tmp_path: Path, db_url: str):
    (tmp_path / "tariffs").mkdir()
    (tmp_path / "tariffs" / "t.yaml").write_text(TARIFFS, encoding="utf-8")
    (tmp_path / "participants.yaml").write_text(
        "participants:\n"
        "  - {mnemonic: clinic, name: Clinic, kind: mis, delivery: {mode: pull}}\n"
        "  - {mnemonic: smo, name: SMO, kind: insurer, delivery: {mode: pull}, signature_required: false}\n"
        "  - {mnemonic: lab, name: Lab, kind: lis, delivery: {mode: pull}}\n")
    (tmp_path / "routes.yaml").write_text(
        f'routes:\n  - {{name: records, sender: clinic, message_type: "{SERVICE_RECORD_NS}", recipient: smo}}\n')
    config = load_config(tmp_path, known_message_types=known_message_types())
    journal = Journal(db_url)
    journal.migrate()
    p = AcceptPipeline(config, journal)
    p.service_records.today = lambda: dt.date(2026, 11, 23)
    yield p
    journal.engine.dispose()


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
])
def test_each_rule_refuses_with_its_code_and_field(pipeline, change, code, field):
    with pytest.raises(Rejection) as info:
        send(pipeline, record(**change))
    assert (info.value.code, info.value.field) == (code, field)
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

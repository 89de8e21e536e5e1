"""Verdicts from what the registries return over the wire (emulators on 127.0.0.1, the shared dataset)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
import zeep
from lxml import etree
from zeep.helpers import serialize_object

from adapters.registries.verdicts import ORGANISATION_NS, WORKER_NS, organisation_answer, worker_answer
from demo.emulators.registries import DEMO_DATASET, FrmoEmulator, FrmrEmulator, load_dataset

XSD = Path(__file__).resolve().parents[2] / "schemas_xsd" / "payloads"
TODAY = dt.date(2026, 11, 23)
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
WORKERS = etree.XMLSchema(etree.parse(str(XSD / "worker-verification-1.0.xsd")))
ORGS = etree.XMLSchema(etree.parse(str(XSD / "organisation-verification-1.0.xsd")))


@pytest.fixture(scope="module")
def frmr():
    emulator = FrmrEmulator(load_dataset(DEMO_DATASET), token="frmr-token").start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def frmo():
    emulator = FrmoEmulator(load_dataset(DEMO_DATASET)).start()
    yield emulator
    emulator.stop()


def ask_frmr(frmr, snils: str, **kw) -> etree._Element:
    r = httpx.get(f"{frmr.url}/person", params={"snils": snils}, headers={"Authorization": "Bearer frmr-token"})
    content = r.json()["content"] if r.status_code == 200 else None
    answer = worker_answer(snils, content, on=TODAY, checked_at=NOW, **kw)
    assert WORKERS.validate(answer), WORKERS.error_log
    return answer


@pytest.mark.parametrize("snils,kw,verdict", [
    ("11223344595", {}, "valid"),
    ("11223344595", {"specialty": "Терапия"}, "valid"),
    ("11223344595", {"specialty": "Хирургия"}, "expired"),
    ("12345678964", {}, "expired"),               # certificate and accreditation ended
    ("34567891226", {}, "expired"),               # no longer employed
    ("45678912344", {}, "revoked"),               # accreditation excluded
    ("56789123453", {"organisation": "1.2.643.5.1.13.13.12.2.77.1002"}, "expired"),  # card there ended
    ("10987654321", {}, "not-found"),
])
def test_worker_verdicts(frmr, snils, kw, verdict):
    answer = ask_frmr(frmr, snils, **kw)
    assert answer.findtext(f"{{{WORKER_NS}}}Verdict") == verdict, answer.findtext(f"{{{WORKER_NS}}}Reason")


def test_worker_answer_carries_the_records(frmr):
    answer = ask_frmr(frmr, "11223344595")
    ns = {"wv": WORKER_NS}
    assert answer.findtext("wv:Employment/wv:OrganisationOid", namespaces=ns) == "1.2.643.5.1.13.13.12.2.77.1001"
    assert answer.find("wv:Certificate/wv:ValidTo", ns) is not None


@pytest.mark.parametrize("key,value,verdict", [
    ("oid", "1.2.643.5.1.13.13.12.2.77.1001", "valid"),
    ("oid", "1.2.643.5.1.13.13.12.2.77.1002", "closed"),
    ("oid", "1.2.643.5.1.13.13.12.2.77.1003", "revoked"),
    ("oid", "1.2.643.5.1.13.13.12.2.77.1004", "expired"),
    ("oid", "1.2.643.5.1.13.13.12.2.77.9999", "not-found"),
])
def test_organisation_verdicts(frmo, key, value, verdict):
    client = zeep.Client(frmo.wsdl_url)
    try:
        mo = serialize_object(client.service.GetMos(**{key: value}), dict)
    except zeep.exceptions.Fault as fault:
        assert "not found" in fault.message
        mo = None
    answer = organisation_answer(mo, on=TODAY, checked_at=NOW)
    assert ORGS.validate(answer), ORGS.error_log
    assert answer.findtext(f"{{{ORGANISATION_NS}}}Verdict") == verdict

"""ФРМР (REST) and ФРМО (SOAP) emulators over the wire on 127.0.0.1, with httpx and a real zeep client."""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import zeep
import zeep.exceptions

from demo.emulators.registries import DEMO_DATASET, Dataset, FrmoEmulator, FrmrEmulator, load_dataset
from gateway.identifiers import snils_valid

DATASET = DEMO_DATASET
TOKEN = "test-jwt-not-a-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MO_VALID, MO_CLOSED = "1.2.643.5.1.13.13.12.2.77.1001", "1.2.643.5.1.13.13.12.2.77.1002"
MO_REVOKED, MO_EXPIRED = "1.2.643.5.1.13.13.12.2.77.1003", "1.2.643.5.1.13.13.12.2.77.1004"
TODAY = dt.date(2026, 11, 23)  # fixed, so "expired" and "valid" do not drift with the calendar
UNKNOWN_SNILS = "23456789100"  # valid check number, nobody in the dataset


def ogrn_valid(value: str) -> bool:
    """ОГРН: 13 digits, check = (first 12 as a number mod 11) mod 10."""
    return len(value) == 13 and value.isdigit() and int(value[:12]) % 11 % 10 == int(value[12])


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return load_dataset(DATASET)


@pytest.fixture
def frmr(dataset: Dataset) -> Iterator[FrmrEmulator]:
    with FrmrEmulator(dataset, TOKEN) as emulator:
        yield emulator


@pytest.fixture
def frmo(dataset: Dataset) -> Iterator[FrmoEmulator]:
    with FrmoEmulator(dataset) as emulator:
        yield emulator


def person(frmr: FrmrEmulator, snils: str, timeout: float = 5.0, **extra: str) -> httpx.Response:
    return httpx.get(frmr.url + "/person", params={"snils": snils, **extra}, headers=AUTH, timeout=timeout)


def valid_on(start: str, end: str | None, day: dt.date = TODAY) -> bool:
    return dt.date.fromisoformat(start) <= day and (end is None or day <= dt.date.fromisoformat(end))


# ---------------------------------------------------------------- dataset

def test_dataset_identifiers_pass_their_check_digits(dataset: Dataset) -> None:
    assert len(dataset.workers) >= 6 and len(dataset.organizations) >= 4
    assert [w.snils for w in dataset.workers if not snils_valid(w.snils)] == []
    assert [o.ogrn for o in dataset.organizations if not ogrn_valid(o.ogrn)] == []
    assert snils_valid(UNKNOWN_SNILS) and dataset.worker(UNKNOWN_SNILS) is None
    assert not ogrn_valid("1027700001011")  # the check itself can fail


def test_every_card_points_to_an_organisation_in_the_dataset(dataset: Dataset) -> None:
    known = {o.oid for o in dataset.organizations}
    assert {c.organization for w in dataset.workers for c in w.cards} <= known


def test_load_dataset_refuses_unknown_fields(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DATASET.read_text(encoding="utf-8").replace("    postName: врач-хирург", "    postNam: x", 1),
                   encoding="utf-8")
    with pytest.raises(ValueError):
        load_dataset(bad)


# ---------------------------------------------------------------- ФРМР

def test_frmr_found_in_wire_shape(frmr: FrmrEmulator) -> None:
    r = person(frmr, "11223344595")
    assert r.status_code == 200
    content = r.json()["content"]
    assert (content["snils"], content["lastName"], content["firstName"]) == ("11223344595", "Иванова", "Анна")
    card = content["cards"][0]
    assert card["organization"] == MO_VALID and card["postName"] == "врач-терапевт" and card["endDate"] is None
    assert valid_on(card["beginDate"], card["endDate"])
    cert = content["educationCerts"][0]
    assert cert["specName"] == "Терапия" and valid_on(cert["passDate"], cert["endDate"])
    proc = content["accreditation"]["accreditationProcedures"][0]
    assert proc["passed"] is True and proc["excluded"] is False and valid_on(proc["passDate"], proc["endDate"])
    assert frmr.requests[-1].path == "/person" and frmr.requests[-1].query == {"snils": "11223344595"}
    assert frmr.requests[-1].status == 200


def test_frmr_not_found(frmr: FrmrEmulator) -> None:
    r = person(frmr, UNKNOWN_SNILS)
    assert r.status_code == 404
    assert r.json() == {"content": None, "message": "not found"}


def test_frmr_needs_the_bearer_token(frmr: FrmrEmulator) -> None:
    url, params = frmr.url + "/person", {"snils": "11223344595"}
    assert httpx.get(url, params=params).status_code == 401
    wrong = httpx.get(url, params=params, headers={"Authorization": "Bearer something-else"})
    assert wrong.status_code == 401 and wrong.json()["content"] is None
    assert "Bearer" in wrong.headers["WWW-Authenticate"]
    assert [c.status for c in frmr.requests] == [401, 401]


@pytest.mark.parametrize("snils", ["1122334459", "112233445951", "1122334459a", "11223344596", ""])
def test_frmr_malformed_snils_is_400(frmr: FrmrEmulator, snils: str) -> None:
    r = person(frmr, snils)
    assert r.status_code == 400 and r.json()["content"] is None


def test_frmr_expired_certificate_and_accreditation_are_visible_in_dates(frmr: FrmrEmulator) -> None:
    content = person(frmr, "12345678964").json()["content"]
    cert = content["educationCerts"][0]
    assert cert["endDate"] == "2023-02-28" and not valid_on(cert["passDate"], cert["endDate"])
    proc = content["accreditation"]["accreditationProcedures"][0]
    assert not valid_on(proc["passDate"], proc["endDate"])
    assert valid_on(content["cards"][0]["beginDate"], content["cards"][0]["endDate"])  # still employed


def test_frmr_ended_card(frmr: FrmrEmulator) -> None:
    card = person(frmr, "34567891226").json()["content"]["cards"][0]
    assert card["endDate"] == "2024-03-31" and not valid_on(card["beginDate"], card["endDate"])


def test_frmr_revoked_accreditation_flag(frmr: FrmrEmulator) -> None:
    proc = person(frmr, "45678912344").json()["content"]["accreditation"]["accreditationProcedures"][0]
    assert proc["excluded"] is True and proc["passed"] is True
    assert valid_on(proc["passDate"], proc["endDate"])  # in date, yet revoked: dates alone would mislead


def test_frmr_mo_scopes_the_cards(frmr: FrmrEmulator) -> None:
    both = person(frmr, "56789123453").json()["content"]["cards"]
    assert {c["organization"] for c in both} == {MO_CLOSED, MO_EXPIRED}
    scoped = person(frmr, "56789123453", mo=MO_EXPIRED).json()["content"]["cards"]
    assert [c["organization"] for c in scoped] == [MO_EXPIRED]
    assert person(frmr, "56789123453", mo=MO_VALID).status_code == 404


def test_frmr_script_503_then_ok(dataset: Dataset) -> None:
    with FrmrEmulator(dataset, TOKEN, script=["http-503"]) as frmr:
        first, second = person(frmr, "11223344595"), person(frmr, "11223344595")
    assert (first.status_code, second.status_code) == (503, 200)
    assert second.json()["content"]["snils"] == "11223344595"
    assert [(c.answer, c.status) for c in frmr.requests] == [("http-503", 503), ("ok", 200)]


def test_frmr_drop_makes_the_client_raise(frmr: FrmrEmulator) -> None:
    frmr.set_script(["drop"])
    with pytest.raises(httpx.TransportError):
        person(frmr, "11223344595")
    assert person(frmr, "11223344595").status_code == 200  # the next one is answered
    assert [c.status for c in frmr.requests] == [None, 200]


def test_frmr_slow_times_out_on_the_client(frmr: FrmrEmulator) -> None:
    frmr.set_script(["slow:5"])
    started = time.monotonic()
    with pytest.raises(httpx.TimeoutException):
        person(frmr, "11223344595", timeout=0.3)
    assert time.monotonic() - started < 5  # the client gave up before the answer


# ---------------------------------------------------------------- ФРМО

def test_frmo_by_oid_and_by_ogrn(frmo: FrmoEmulator) -> None:
    client = zeep.Client(frmo.wsdl_url)
    by_oid = client.service.GetMos(oid=MO_VALID)
    assert (by_oid.oid, by_oid.ogrn, by_oid.inn) == (MO_VALID, "1027700001010", "7701001012")
    assert "Городская поликлиника № 1" in by_oid.nameFull
    assert by_oid.deleteDate is None
    assert by_oid.licence.number == "Л041-01151-77/00000001" and by_oid.licence.revoked is False
    assert by_oid.licence.issuedAt == dt.date(2019, 2, 11) and by_oid.licence.validTo is None
    by_ogrn = client.service.GetMos(ogrn="1037700004044")
    assert by_ogrn.oid == MO_EXPIRED and by_ogrn.licence.validTo == dt.date(2024, 5, 31)
    assert by_ogrn.licence.validTo < TODAY
    assert [(c.oid, c.ogrn, c.outcome) for c in frmo.requests] == [(MO_VALID, None, "found"),
                                                                   (None, "1037700004044", "found")]


def test_frmo_not_found_is_a_client_fault(frmo: FrmoEmulator) -> None:
    client = zeep.Client(frmo.wsdl_url)
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client.service.GetMos(oid="1.2.643.5.1.13.13.12.2.77.9999")
    assert fault.value.message == "not found" and "Client" in (fault.value.code or "")
    with pytest.raises(zeep.exceptions.Fault, match="not found"):  # a known oid with another's ogrn
        client.service.GetMos(oid=MO_VALID, ogrn="1037700004044")
    with pytest.raises(zeep.exceptions.Fault, match="oid or ogrn required"):
        client.service.GetMos()


def test_frmo_closed_organisation_has_delete_date(frmo: FrmoEmulator) -> None:
    mo = zeep.Client(frmo.wsdl_url).service.GetMos(oid=MO_CLOSED)
    assert mo.deleteDate == dt.date(2023, 1, 1) and mo.deleteReason


def test_frmo_revoked_licence_flag(frmo: FrmoEmulator) -> None:
    mo = zeep.Client(frmo.wsdl_url).service.GetMos(ogrn="1227700003035")
    assert mo.oid == MO_REVOKED and mo.licence.revoked is True and mo.deleteDate is None


def test_frmo_script_server_fault_then_ok(dataset: Dataset) -> None:
    with FrmoEmulator(dataset, script=["server-fault", "http-502"]) as frmo:
        client = zeep.Client(frmo.wsdl_url)
        with pytest.raises(zeep.exceptions.Fault) as fault:
            client.service.GetMos(oid=MO_VALID)
        assert "Server" in (fault.value.code or "")
        with pytest.raises(zeep.exceptions.TransportError) as transport:
            client.service.GetMos(oid=MO_VALID)
        assert transport.value.status_code == 502
        assert client.service.GetMos(oid=MO_VALID).oid == MO_VALID
    assert [c.outcome for c in frmo.requests] == ["server-fault", "502", "found"]


def test_frmo_wsdl_names_the_operation(frmo: FrmoEmulator) -> None:
    wsdl = httpx.get(frmo.wsdl_url).text
    assert "GetMos" in wsdl and "MedicalOrganization" in wsdl and "deleteDate" in wsdl


# ---------------------------------------------------------------- lifecycle

@pytest.mark.parametrize("kind", ["frmr", "frmo"])
def test_stop_within_two_seconds_even_with_a_slow_request_in_flight(dataset: Dataset, kind: str) -> None:
    emulator: FrmrEmulator | FrmoEmulator
    if kind == "frmr":
        emulator = FrmrEmulator(dataset, TOKEN, script=["slow:30"]).start()
        with pytest.raises(httpx.TimeoutException):
            person(emulator, "11223344595", timeout=0.3)
    else:
        emulator = FrmoEmulator(dataset, script=["slow:30"]).start()
        client = zeep.Client(emulator.wsdl_url, transport=zeep.Transport(operation_timeout=0.3))
        with pytest.raises(requests.exceptions.Timeout):  # zeep rides on requests
            client.service.GetMos(oid=MO_VALID)
    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 20  # not held by the 30 s answer in flight
    with pytest.raises(httpx.ConnectError):
        httpx.get(emulator.url, timeout=1.0)

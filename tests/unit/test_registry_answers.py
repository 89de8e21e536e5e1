"""TIMEOUT and cached answers are valid answers of their request type."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from lxml import etree

from adapters.registries.channel import cache_key
from adapters.registries.verdicts import ORGANISATION_NS, WORKER_NS, from_cache, timeout_answer, worker_answer

XSD = Path(__file__).resolve().parents[2] / "schemas_xsd" / "payloads"
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
WORKER_REQUEST = f'<wv:WorkerVerificationRequest xmlns:wv="{WORKER_NS}"><wv:SNILS>11223344595</wv:SNILS></wv:WorkerVerificationRequest>'
ORG_REQUEST = f'<ov:OrganisationVerificationRequest xmlns:ov="{ORGANISATION_NS}"><ov:OGRN>1027700000001</ov:OGRN></ov:OrganisationVerificationRequest>'


@pytest.mark.parametrize("request_xml,xsd", [(WORKER_REQUEST, "worker-verification-1.0.xsd"),
                                             (ORG_REQUEST, "organisation-verification-1.0.xsd")])
def test_timeout_answer_is_valid_and_says_why(request_xml, xsd):
    answer = timeout_answer(etree.fromstring(request_xml), "no answer from ФРМР within 60 s", NOW)
    schema = etree.XMLSchema(etree.parse(str(XSD / xsd)))
    assert schema.validate(answer), schema.error_log
    ns = etree.QName(answer).namespace
    assert answer.findtext(f"{{{ns}}}Verdict") == "timeout"
    assert answer.findtext(f"{{{ns}}}Reason") == "no answer from ФРМР within 60 s"


def test_timeout_answer_refuses_what_is_not_a_verification_request():
    with pytest.raises(ValueError):
        timeout_answer(etree.fromstring("<x/>"), "r", NOW)


def test_cached_answer_says_so_and_keeps_when_the_registry_was_asked():
    original = worker_answer("11223344595", None, on=NOW.date(), checked_at=NOW)
    cached = from_cache(from_cache(original))  # marking twice keeps one flag
    schema = etree.XMLSchema(etree.parse(str(XSD / "worker-verification-1.0.xsd")))
    assert schema.validate(cached), schema.error_log
    assert cached.findall(f"{{{WORKER_NS}}}FromCache")[0].text == "true"
    assert len(cached.findall(f"{{{WORKER_NS}}}FromCache")) == 1
    assert cached.findtext(f"{{{WORKER_NS}}}CheckedAt") == NOW.isoformat()
    assert original.find(f"{{{WORKER_NS}}}FromCache") is None  # the stored answer is not changed


def test_cache_key_separates_registries_dates_and_questions():
    request = etree.fromstring(WORKER_REQUEST)
    today = dt.date(2026, 11, 23)
    same = etree.fromstring(WORKER_REQUEST.replace('xmlns:wv', 'xmlns:x').replace("wv:", "x:"))
    assert cache_key("frmr", request, today) == cache_key("frmr", same, today)  # prefixes do not matter
    assert cache_key("frmr", request, today) != cache_key("frmr-2", request, today)
    assert cache_key("frmr", request, today) != cache_key("frmr", request, today + dt.timedelta(days=1))
    other = etree.fromstring(WORKER_REQUEST.replace("11223344595", "12345678964"))
    assert cache_key("frmr", request, today) != cache_key("frmr", other, today)

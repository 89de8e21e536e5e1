"""Masking hides the values of patient data and keeps the names an operator acts on.

The messages below are what lxml's XSD validator, Python and the gateway really say
(made by validating service records against schemas_xsd/payloads/service-record-1.0.xsd
and by the failing calls themselves), not strings written to suit the masker.
"""
from __future__ import annotations

import pytest
from lxml import etree

from gateway import schemas
from gateway.errors import Rejection
from gateway.masking import mask_text

SR = "urn://zdravlink/types/service-record/1.0"


def _record(enp: str = "1234567890123452", birth: str = "1980-01-01", sex: str = "1", snils: str = "11223344595",
            family: str = "Демо") -> bytes:
    return (f'<sr:ServiceRecord xmlns:sr="{SR}"><sr:RecordId>R1</sr:RecordId><sr:Period>2026-10</sr:Period>'
            "<sr:Organisation><sr:Oid>1.2.643.5.1.13.13.12.2.77.7701</sr:Oid><sr:CodeMO>770001</sr:CodeMO>"
            f"</sr:Organisation><sr:Patient><sr:ENP>{enp}</sr:ENP><sr:PolicyType>3</sr:PolicyType>"
            f"<sr:Insurer>insurer-demo</sr:Insurer><sr:Person><sr:FamilyName>{family}</sr:FamilyName>"
            f"<sr:GivenName>Пациент</sr:GivenName><sr:Sex>{sex}</sr:Sex><sr:BirthDate>{birth}</sr:BirthDate>"
            "</sr:Person></sr:Patient><sr:Service><sr:Code>B01.001.001</sr:Code><sr:DateIn>2026-10-01</sr:DateIn>"
            "<sr:DateOut>2026-10-01</sr:DateOut><sr:Quantity>1</sr:Quantity><sr:Tariff>100.00</sr:Tariff>"
            "<sr:Diagnosis>J06.9</sr:Diagnosis><sr:Department>1</sr:Department></sr:Service><sr:Doctor>"
            f"<sr:SNILS>{snils}</sr:SNILS><sr:Specialty>76</sr:Specialty></sr:Doctor></sr:ServiceRecord>").encode()


def _validator_says(**fields: str) -> str:
    with pytest.raises(Rejection) as exc:
        schemas.validate_payload(SR, etree.fromstring(_record(**fields)))
    return exc.value.detail


def test_a_pattern_error_keeps_element_facet_and_pattern_and_masks_the_enp() -> None:
    said = _validator_says(enp="770000000000001X")
    masked = mask_text(said)
    assert "770000000000001X" not in masked and "'**************1X'" in masked
    assert f"Element '{{{SR}}}ENP'" in masked and "[facet 'pattern']" in masked and "'[0-9]{16}'" in masked


def test_a_bad_birth_date_is_masked_and_the_xsd_type_stays() -> None:
    masked = mask_text(_validator_says(birth="1980-13-45"))
    assert "1980-13-45" not in masked and "BirthDate'" in masked and "atomic type 'xs:date'" in masked


def test_an_enumeration_keeps_the_schema_values_and_masks_the_one_sent() -> None:
    masked = mask_text(_validator_says(sex="7"))
    assert "The value '*'" in masked and "the set {'1', '2'}" in masked and "[facet 'enumeration']" in masked


def test_a_snils_is_masked_and_a_length_facet_is_readable() -> None:
    masked = mask_text(_validator_says(snils="1122334459"))
    assert "1122334459" not in masked and "SNILS'" in masked
    too_long = mask_text(_validator_says(family="Щ" * 300))
    assert "[facet 'maxLength']" in too_long and "allowed maximum length of '40'" in too_long


def test_charset_and_python_type_names_are_not_values() -> None:
    try:
        b"\xff\xfe".decode("utf-8")
    except UnicodeDecodeError as exc:
        assert "'utf-8' codec" in mask_text(str(exc))
    try:
        _ = 1.5 + "a"  # type: ignore[operator]
    except TypeError as exc:
        assert mask_text(str(exc)) == str(exc) and "'float'" in str(exc)
    try:
        float("Иванов")
    except ValueError as exc:
        assert "Иванов" not in mask_text(str(exc)) and "to float" in mask_text(str(exc))


def test_message_ids_digests_and_moments_stay_but_identifiers_and_dates_do_not() -> None:
    mid, digest = "c5d00674-e67e-11f1-81ba-02fc00000001", "ab" * 32
    text = f"message {mid} fingerprint {digest} issued 2026-11-22T10:00:00Z; ЕНП 7700000000000011 born 1980-05-17"
    masked = mask_text(text)
    assert mid in masked and digest in masked and "2026-11-22T10:00:00Z" in masked
    assert "7700000000000011" not in masked and "1980-05-17" not in masked


def test_an_unknown_context_masks_by_default() -> None:
    assert "Петров" not in mask_text("patient 'Петров' has no policy") and "'****ов'" in mask_text("x 'Петров'")

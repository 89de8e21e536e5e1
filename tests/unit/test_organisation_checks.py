"""ОГРН, ОГРНИП and ИНН where organisations appear at intake: a verification request and ФРМО's answer."""
from __future__ import annotations

import pytest
from lxml import etree

from gateway import schemas
from gateway.config import ORGANISATION_VERIFICATION_NS as NS
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.flows import RegistryVerificationFlow


def envelope(payload: str) -> Envelope:
    root = etree.fromstring(payload.encode())
    schemas.validate_payload(NS, root)  # what the pipeline checks before these rules
    return Envelope(message_id="c5d00674-e67e-11f1-81ba-02fc00000001", sender="clinic", recipient="frmo",
                    message_type=NS, payload=root)


def request(ogrn: str) -> Envelope:
    return envelope(f'<ov:OrganisationVerificationRequest xmlns:ov="{NS}"><ov:OGRN>{ogrn}</ov:OGRN>'
                    "</ov:OrganisationVerificationRequest>")


def answer(ogrn: str, inn: str) -> Envelope:
    return envelope(f'<ov:OrganisationVerificationAnswer xmlns:ov="{NS}"><ov:Verdict>valid</ov:Verdict>'
                    "<ov:CheckedAt>2026-11-23T10:00:00+03:00</ov:CheckedAt><ov:Organisation>"
                    "<ov:Oid>1.2.643.5.1.13.13.12.2.77.1001</ov:Oid><ov:NameFull>ГБУЗ</ov:NameFull>"
                    f"<ov:OGRN>{ogrn}</ov:OGRN><ov:INN>{inn}</ov:INN></ov:Organisation>"
                    "</ov:OrganisationVerificationAnswer>")


@pytest.mark.parametrize("number", ["1027700132195", "304500116000157"])
def test_a_request_by_ogrn_or_ogrnip_passes(number):
    assert RegistryVerificationFlow._check_organisation(request(number)) == []


@pytest.mark.parametrize("number", ["1027700132194", "0022500001325", "304500116000158"])
def test_a_request_whose_number_fails_its_check_is_refused_naming_the_field(number):
    with pytest.raises(Rejection) as info:
        RegistryVerificationFlow._check_organisation(request(number))
    assert (info.value.code, info.value.field, info.value.status) == ("OGRN_INVALID", "OGRN", 422)


def test_the_registers_own_numbers_are_never_refused_only_warned_about():
    assert RegistryVerificationFlow._check_organisation(answer("1027700132195", "7707083893")) == []
    warnings = RegistryVerificationFlow._check_organisation(answer("1027700132194", "7707083894"))
    assert warnings == ["Organisation/OGRN: the register's ОГРН/ОГРНИП fails its check",
                        "Organisation/INN: the register's ИНН fails its check digits"]

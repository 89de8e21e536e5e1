"""Message flows: what a message type adds to the accept pipeline, through one interface.

The pipeline itself knows envelopes, schemas, routes and signatures; a business flow
(service records, insurers' protocols, registry verification) knows its own rules.
Like zeep's plugins, each flow hooks into two points: ``check`` refuses or warns before
anything is journalled, and ``side_writes`` are written in the same transaction as the
accepted message. The pipeline asks each flow that ``handles`` a message's type and never
branches on message types itself.
"""
from __future__ import annotations

from typing import Protocol

from lxml import etree

from gateway import errors
from gateway.config import ORGANISATION_VERIFICATION_NS, WORKER_VERIFICATION_NS, GatewayConfig, Route
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.identifiers import inn_valid, registration_number_valid, snils_valid
from gateway.journal import SideWrite
from gateway.journal.correlation import RegistryRequests
from gateway.service_records import PROTOCOL_TYPES, SERVICE_RECORD_NS, ServiceRecordRules


class MessageFlow(Protocol):
    def handles(self, message_type: str) -> bool:
        """Does this flow take part in accepting messages of this type?"""

    def check(self, env: Envelope) -> list[str]:
        """Raise the Rejection that refuses the message, or return the warnings it carries into the journal."""

    def side_writes(self, env: Envelope, route: Route) -> list[SideWrite]:
        """What accepting it must also record, in the transaction that journals it."""


class ServiceRecordFlow:
    """A clinic's record of a service rendered: checked against tariffs and the register's needs, kept for its act."""

    def __init__(self, rules: ServiceRecordRules) -> None:
        self.rules = rules

    def handles(self, message_type: str) -> bool:
        return message_type == SERVICE_RECORD_NS

    def check(self, env: Envelope) -> list[str]:
        return self.rules.check(env)

    def side_writes(self, env: Envelope, route: Route) -> list[SideWrite]:
        return [self.rules.record_write(env)]


class ProtocolFlow:
    """An insurer's answer to an act (act-protocol or a ФЛК protocol): it must answer an act sent to it, and it
    marks that act's records accepted or rejected."""

    def __init__(self, rules: ServiceRecordRules) -> None:
        self.rules = rules

    def handles(self, message_type: str) -> bool:
        return message_type in PROTOCOL_TYPES

    def check(self, env: Envelope) -> list[str]:
        self.rules.check_protocol(env)
        return []

    def side_writes(self, env: Envelope, route: Route) -> list[SideWrite]:
        return [self.rules.protocol_write(env)]


class RegistryVerificationFlow:
    """Requests to ФРМР and ФРМО, and their answers: identifiers checked now, the answer deadline started at once."""

    def __init__(self, config: GatewayConfig, requests: RegistryRequests) -> None:
        self.config = config
        self.requests = requests

    def handles(self, message_type: str) -> bool:
        return message_type in (WORKER_VERIFICATION_NS, ORGANISATION_VERIFICATION_NS)

    def check(self, env: Envelope) -> list[str]:
        if env.message_type == WORKER_VERIFICATION_NS:
            # A СНИЛС that fails its check digits is the MIS's typo: say so now, not as a registry error later.
            snils = env.payload.findtext("{%s}SNILS" % WORKER_VERIFICATION_NS)
            if snils is not None and not snils_valid(snils):
                raise Rejection(errors.SNILS_INVALID, "the СНИЛС fails its check digits", "SNILS", status=422)
            return []
        return self._check_organisation(env)

    @staticmethod
    def _check_organisation(env: Envelope) -> list[str]:
        """A request's ОГРН/ОГРНИП that fails its check is refused now, not sent on to ФРМО as a "not found".

        An answer carries what ФРМО holds; the register's own data is not refused (the MIS
        would get no answer at all), but a number failing its check travels with a warning.
        """
        ns = "{%s}" % ORGANISATION_VERIFICATION_NS
        ogrn = env.payload.findtext(ns + "OGRN")
        if etree.QName(env.payload).localname == "OrganisationVerificationRequest":
            if ogrn is not None and not registration_number_valid(ogrn):
                raise Rejection(errors.OGRN_INVALID, "the ОГРН (13 digits, first 1 or 5) or ОГРНИП (15 digits, "
                                "first 3) fails its check", "OGRN", status=422)
            return []
        warnings = []
        org_ogrn = env.payload.findtext(f"{ns}Organisation/{ns}OGRN")
        inn = env.payload.findtext(f"{ns}Organisation/{ns}INN")
        if org_ogrn is not None and not registration_number_valid(org_ogrn):
            warnings.append("Organisation/OGRN: the register's ОГРН/ОГРНИП fails its check")
        if inn is not None and not inn_valid(inn):
            warnings.append("Organisation/INN: the register's ИНН fails its check digits")
        return warnings

    def side_writes(self, env: Envelope, route: Route) -> list[SideWrite]:
        if route.channels[0].mode != "registry":
            return []  # an answer going back to the MIS, not a request going to a registry
        # The answer deadline counts from acceptance, whatever happens to delivery.
        deadline = self.config.settings.registries.for_type(env.message_type).deadline_seconds
        return [self.requests.open_write(env.message_id, env.sender, env.recipient, env.message_type, deadline)]

"""The accept pipeline: from untrusted bytes to a journalled message, or a Rejection.

Order matters. The caller is authenticated first, so anonymous traffic costs no
parsing; then the envelope is parsed safely and checked against the XSD, the payload
against the schema of its message type, and the route table decides whether this
sender may send this type to this recipient. Only then is the message journalled,
and only after that does the partner get its acknowledgement.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from lxml import etree

from gateway import errors, jsonsafe, schemas
from gateway.config import (
    ORGANISATION_VERIFICATION_NS,
    WORKER_VERIFICATION_NS,
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    Participant,
    Route,
    hash_token,
)
from gateway.envelope import Envelope
from gateway.identifiers import inn_valid, registration_number_valid, snils_valid
from gateway.errors import Rejection
from gateway.journal import Journal
from gateway.journal.correlation import RegistryRequests
from gateway.journal.store import AcceptOutcome, SideWrite
from gateway.keyring import KeyRing
from gateway.message_ids import check_message_id
from gateway.service_records import PROTOCOL_TYPES, SERVICE_RECORD_NS, ServiceRecordRules
from gateway.tariffs import load_tariffs
from gateway.xmlsafe import parse_xml
from signing import errors as signature_errors
from signing.errors import SignatureError

XML_TYPES = ("application/xml", "text/xml")
JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class Accepted:
    outcome: AcceptOutcome
    envelope: Envelope
    route: str


class AcceptPipeline:
    def __init__(self, config: GatewayConfig, journal: Journal, keyring: KeyRing | None = None) -> None:
        self.config = config
        self.journal = journal
        self.keyring = keyring or KeyRing()
        schemas.prepare()
        problems: list[ConfigProblem] = []
        self.service_records = ServiceRecordRules(config, journal, load_tariffs(config.directory, problems))
        if problems:
            raise ConfigError(problems)
        self._routes = {r.name: r for r in config.routes}
        self.registry_requests = RegistryRequests(journal)
        self._by_token = {
            digest: p for p in config.participants.values() for digest in p.api_token_sha256
        }

    def authenticate(self, token: str | None) -> Participant:
        if not token:
            raise Rejection(errors.AUTHENTICATION_REQUIRED, "an API token is required (Authorization: Bearer …)",
                            "Authorization", status=401)
        participant = self._by_token.get(hash_token(token))
        if participant is None:
            raise Rejection(errors.INVALID_TOKEN, "the API token is not valid", "Authorization", status=401)
        return participant

    @staticmethod
    def parse(body: bytes, content_type: str) -> Envelope:
        """Parse either wire form and check the envelope XSD (the JSON form is checked as XML)."""
        media = content_type.split(";", 1)[0].strip().lower()
        if media in JSON_TYPES:
            env = Envelope.from_json(jsonsafe.loads(body))
            schemas.validate_envelope(env.to_element())
            return env
        if media in XML_TYPES:
            root = parse_xml(body)
            schemas.validate_envelope(root)
            return Envelope.from_element(root)
        raise Rejection(errors.UNSUPPORTED_MEDIA_TYPE, f"send application/json or application/xml, not {media!r}",
                        "Content-Type", status=415)

    def check_message_id(self, env: Envelope) -> None:
        """SMEV's MessageID rules (UUID v1, age, clock skew) for what a partner sent itself.

        Not for envelopes the gateway derives (HL7 results, acts, registry answers): those
        take their ids from the source, whose age is not the sender's clock.
        """
        s = self.config.settings.smev
        check_message_id(env.message_id, datetime.now(timezone.utc), s.message_id_max_age_hours,
                         s.clock_skew_seconds)

    def check(self, env: Envelope, caller: Participant, *, signature_verified: bool = False) -> tuple[str, list[str]]:
        """Business and access checks; returns the route name the message will take and any warnings.

        ``signature_verified`` says an adapter has already checked the sender's signature
        over the data as its protocol carries it (SMEV's CallerInformationSystemSignature
        over SenderProvidedRequestData), which the canonical envelope cannot re-check.
        """
        if env.sender not in self.config.participants:
            raise Rejection(errors.UNKNOWN_SENDER, f"unknown sender {env.sender!r}", "Sender", status=403)
        if env.sender != caller.mnemonic:
            raise Rejection(errors.SENDER_MISMATCH, f"the token belongs to {caller.mnemonic!r}, not {env.sender!r}",
                            "Sender", status=403)
        if env.recipient not in self.config.participants:
            raise Rejection(errors.UNKNOWN_RECIPIENT, f"unknown recipient {env.recipient!r}", "Recipient", status=422)
        root_ns = etree.QName(env.payload).namespace
        if root_ns != env.message_type:
            raise Rejection(errors.MESSAGE_TYPE_MISMATCH,
                            f"MessageType is {env.message_type!r} but the payload root is in {root_ns!r}",
                            "MessageType", status=422)
        schemas.validate_payload(env.message_type, env.payload)
        warnings = self.service_records.check(env) if env.message_type == SERVICE_RECORD_NS else []
        if env.message_type in PROTOCOL_TYPES:
            self.service_records.check_protocol(env)
        if env.message_type == WORKER_VERIFICATION_NS:
            self._check_worker_request(env)
        if env.message_type == ORGANISATION_VERIFICATION_NS:
            warnings += self._check_organisation(env)
        if not self.config.routes_for(env.sender, env.message_type, env.recipient):
            raise Rejection(errors.ROUTE_FORBIDDEN,
                            f"{env.sender!r} may not send {env.message_type!r} to {env.recipient!r}",
                            "Recipient", status=403)
        route = self.config.resolve_route(env.sender, env.message_type, env.recipient, env.payload)
        if route is None:
            raise Rejection(errors.ROUTE_FORBIDDEN, "no route condition matches this payload",
                            "MessagePrimaryContent", status=403)
        if not signature_verified:
            self.check_signature(env, route)
        return route.name, warnings

    @staticmethod
    def _check_worker_request(env: Envelope) -> None:
        """A СНИЛС that fails its check digits is the MIS's typo: say so now, not as a registry error later."""
        snils = env.payload.findtext("{%s}SNILS" % WORKER_VERIFICATION_NS)
        if snils is not None and not snils_valid(snils):
            raise Rejection(errors.SNILS_INVALID, "the СНИЛС fails its check digits", "SNILS", status=422)

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
                raise Rejection(errors.OGRN_INVALID, "the ОГРН (13 digits, first 1 or 5) or ОГРНИП (15 digits, first 3) "
                                "fails its check", "OGRN", status=422)
            return []
        warnings = []
        org_ogrn, inn = env.payload.findtext(f"{ns}Organisation/{ns}OGRN"), env.payload.findtext(f"{ns}Organisation/{ns}INN")
        if org_ogrn is not None and not registration_number_valid(org_ogrn):
            warnings.append("Organisation/OGRN: the register's ОГРН/ОГРНИП fails its check")
        if inn is not None and not inn_valid(inn):
            warnings.append("Organisation/INN: the register's ИНН fails its check digits")
        return warnings

    def check_signature(self, env: Envelope, route: Route) -> None:
        """Verify the sender's signature (required or not: a bad one is never let through)."""
        try:
            self.keyring.verify_sender(env, route.requires_signature(self.config.participants[env.sender]))
        except SignatureError as exc:
            forbidden = exc.code in signature_errors.CERTIFICATE_CODES or exc.code == signature_errors.SIGNATURE_REQUIRED
            raise Rejection(exc.code, exc.detail, "SenderSignature", status=403 if forbidden else 422) from None

    def accept(self, env: Envelope, caller: Participant, *, source: str,
               verified_signature: dict[str, str] | None = None) -> Accepted:
        """Check and journal; ``verified_signature`` is what an adapter's own check found (see ``check``),
        kept in the ACCEPTED event as the evidence of who signed."""
        route, warnings = self.check(env, caller, signature_verified=verified_signature is not None)
        outcome = self.journal.accept(env, source=source, actor=f"{source}-adapter", route=route,
                                      evidence=verified_signature, warnings=warnings,
                                      side_writes=self._side_writes(env, route))
        return Accepted(outcome, env, route)

    def _side_writes(self, env: Envelope, route: str) -> list[SideWrite]:
        """What accepting this message must also record, in the same transaction as the message."""
        if env.message_type == SERVICE_RECORD_NS:
            return [self.service_records.record_write(env)]
        if env.message_type in PROTOCOL_TYPES:
            return [self.service_records.protocol_write(env)]
        if self._routes[route].channels[0].mode == "registry":
            # The answer deadline counts from acceptance, whatever happens to delivery.
            deadline = self.config.settings.registries.for_type(env.message_type).deadline_seconds
            return [self.registry_requests.open_write(env.message_id, env.sender, env.recipient, env.message_type,
                                                      deadline)]
        return []

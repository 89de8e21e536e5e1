"""The accept pipeline: from untrusted bytes to a journalled message, or a Rejection.

Order matters. The caller is authenticated first, so anonymous traffic costs no
parsing; then the envelope is parsed safely and checked against the XSD, the payload
against the schema of its message type, and the route table decides whether this
sender may send this type to this recipient. Only then is the message journalled,
and only after that does the partner get its acknowledgement. What a message type
adds (its business checks, the rows written with it) comes from its flow
(``gateway.flows``); the pipeline never branches on message types.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from lxml import etree

from gateway import errors, jsonsafe, schemas
from gateway.config import (
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    Participant,
    Route,
)
from gateway.credentials import Authenticator
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.flows import MessageFlow, ProtocolFlow, RegistryVerificationFlow, ServiceRecordFlow
from gateway.journal import AcceptOutcome, Journal, SideWrite
from gateway.journal.correlation import RegistryRequests
from gateway.journal.group_commit import GroupAccept
from gateway.journal.messages import AcceptRequest
from gateway.keyring import KeyRing
from gateway.message_ids import check_message_id
from gateway.service_records import ServiceRecordRules
from gateway.tariffs import load_tariffs
from gateway.tls import PeerCertificate
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
        self._group = GroupAccept(journal)
        self.flows: list[MessageFlow] = [ServiceRecordFlow(self.service_records), ProtocolFlow(self.service_records),
                                         RegistryVerificationFlow(config, RegistryRequests(journal))]
        self.authenticator = Authenticator(config.participants, config.directory)

    def authenticate(self, token: str | None, peer: PeerCertificate | None = None) -> Participant:
        """The caller by its API token and, on TLS with client certificates, its certificate (gateway.credentials)."""
        return self.authenticator.authenticate(token, peer)

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
        check_message_id(env.message_id, datetime.now(UTC), s.message_id_max_age_hours,
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
        warnings = [w for flow in self.flows if flow.handles(env.message_type) for w in flow.check(env)]
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

    def check_signature(self, env: Envelope, route: Route) -> None:
        """Verify the sender's signature (required or not: a bad one is never let through)."""
        try:
            self.keyring.verify_sender(env, route.requires_signature(self.config.participants[env.sender]))
        except SignatureError as exc:
            forbidden = (exc.code in signature_errors.CERTIFICATE_CODES
                         or exc.code == signature_errors.SIGNATURE_REQUIRED)
            explanation = self.keyring.explain_sender(env)  # the signature doctor's, for the audit record
            raise Rejection(exc.code, exc.detail, "SenderSignature", status=403 if forbidden else 422,
                            extra={"explanation": explanation} if explanation else {}) from None

    def accept(self, env: Envelope, caller: Participant, *, source: str,
               verified_signature: dict[str, str] | None = None, side_writes: Sequence[SideWrite] = ()) -> Accepted:
        """Check and journal; ``verified_signature`` is what an adapter's own check found (see ``check``),
        kept in the ACCEPTED event as the evidence of who signed. ``side_writes``: what the caller must
        record with the message (an act's row for the register it sends), after the flows' own."""
        route, warnings = self.check(env, caller, signature_verified=verified_signature is not None)
        outcome = self._group.accept(AcceptRequest(env, source, f"{source}-adapter", route, verified_signature,
                                                   warnings, [*self._side_writes(env, route), *side_writes]))
        return Accepted(outcome, env, route)

    def _side_writes(self, env: Envelope, route: str) -> list[SideWrite]:
        """What accepting this message must also record, in the same transaction as the message."""
        return [w for flow in self.flows if flow.handles(env.message_type)
                for w in flow.side_writes(env, self._routes[route])]

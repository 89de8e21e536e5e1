"""The registry channel: delivering a verification request means asking the registry and answering the MIS.

The delivery worker treats a registry like any endpoint: this channel's outcome is a
DeliveryResult, so retries with backoff, the circuit breaker, failover to the next registry
endpoint and the dead letter channel all apply unchanged. "Delivered" here means the
registry answered (found or not found, its signature verified) and the answer was
journalled as a message to the requester.

A request whose answer is already journalled (a redelivered copy, a replay of an
answered request) is not asked again. With a cache time-to-live for its type, an
identical request inside it is answered from the cache without calling the registry;
the request's trail shows CACHE_HIT and which earlier answer it repeats.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import ssl
import threading
from pathlib import Path

import httpx
from lxml import etree

from adapters.intake import Intake
from adapters.registries.clients import FrmoClient, FrmrClient, RegistryCallFailed, RegistryReply
from adapters.registries.replies import ReplySender
from adapters.registries.verdicts import (
    ORGANISATION_NS,
    WORKER_NS,
    from_cache,
    organisation_answer,
    worker_answer,
)
from adapters.tls_clients import HttpClients
from gateway.config import Channel, GatewayConfig
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.journal import Journal, MessageRecord
from gateway.keyring import KeyRing
from gateway.masking import mask_text
from gateway.tls import ClientContexts
from gateway.xmlsafe import parse_xml
from monitoring import metrics
from routing.channels import DeliveryResult
from signing import transform

log = logging.getLogger(__name__)
_W = "{%s}" % WORKER_NS
_O = "{%s}" % ORGANISATION_NS


def cache_key(registry: str, request: etree._Element, today: dt.date) -> str:
    """Identical questions share a key; one without OnDate is asked about today, so today is part of it.

    The SMEV transform normalises namespace prefixes and whitespace, so two MISes writing the same
    question differently still share the answer.
    """
    on = request.findtext(_W + "OnDate") or today.isoformat()
    return hashlib.sha256(b"\0".join([registry.encode(), on.encode(), transform(request)])).hexdigest()


class RegistryChannel:
    """The registry channel (``routing.channels.DeliveryChannel``): it sends the registry a query, not the envelope."""

    sends_envelope = False

    def __init__(self, config: GatewayConfig, journal: Journal, intake: Intake, keyring: KeyRing,
                 timeout: float) -> None:
        self.config = config
        self.journal = journal
        self.keyring = keyring
        self.timeout = timeout
        self.replies = ReplySender(journal, intake)
        self.requests = self.replies.requests
        self.tls = ClientContexts(config.directory)

        def make(context: ssl.SSLContext | None) -> httpx.Client:
            return httpx.Client(timeout=timeout, follow_redirects=False, limits=httpx.Limits(max_connections=64),
                                **({"verify": context} if context is not None else {}))

        self.clients = HttpClients(self.tls, make)
        self.http = self.clients.default
        self._frmo: dict[tuple[str, str], FrmoClient] = {}
        self._lock = threading.Lock()
        self.actor = f"registry-adapter:{os.getpid()}"

    def close(self) -> None:
        self.clients.close()
        for client in self._frmo.values():
            client.close()

    def deliver(self, channel: Channel, signed: bytes, rec: MessageRecord, attempt: int) -> DeliveryResult:
        request = Envelope.from_element(parse_xml(rec.envelope))
        settings = self.config.settings.registries.for_type(request.message_type)
        pending = self.requests.get(rec.message_id)
        if pending is None:  # accepted before this gateway tracked deadlines, or opening it failed at intake
            self.requests.open(rec.message_id, request.sender, request.recipient, request.message_type,
                               rec.created_at, settings.deadline_seconds)
        elif pending.answer_id and self.journal.get(pending.answer_id) is not None:
            return DeliveryResult(True, False, f"answered before: {pending.answer_id}")
        today = dt.date.today()
        key = cache_key(request.recipient, request.payload, today) if settings.cache_ttl_seconds > 0 else None
        try:
            if key is not None:
                hit = self.requests.cached(key)
                if hit is not None:
                    return self._answer_from_cache(request, hit.answer, hit.answer_id, hit.stored_at)
                metrics.REGISTRY_CACHE.labels(request.recipient, "miss").inc()
            try:
                reply = self._ask(channel, request)
            except RegistryCallFailed as exc:
                return DeliveryResult(False, exc.retryable, exc.detail, retry_after=exc.retry_after)
            answer = self._verdict(request.payload, reply, today)
            evidence = {"registry": channel.registry or "", "channel": channel.name, **reply.signed_by}
            answer_id, _ = self.replies.answer(request, answer, "registry", evidence)
        except Rejection as rej:
            # journalled and dead-lettered: validator messages quote values, so mask them
            return DeliveryResult(False, False,
                                  f"the answer was refused: {rej.code} [{rej.field}] {mask_text(rej.detail)}")
        if key is not None:
            self.requests.store(key, request.message_type, etree.tostring(answer), answer_id,
                                settings.cache_ttl_seconds)
        return DeliveryResult(True, False, f"answered by {channel.registry}")

    def _answer_from_cache(self, request: Envelope, cached: bytes, answer_id: str,
                           stored_at: dt.datetime) -> DeliveryResult:
        self.journal.record(request.message_id, "CACHE_HIT", self.actor,
                            {"repeats": answer_id, "stored_at": stored_at.isoformat()})
        metrics.REGISTRY_CACHE.labels(request.recipient, "hit").inc()
        self.replies.answer(request, from_cache(parse_xml(cached)), "cache",
                            {"origin": "cache", "repeats": answer_id})
        return DeliveryResult(True, False, "answered from the cache")

    def _ask(self, channel: Channel, request: Envelope) -> RegistryReply:
        registry = self.config.participants[request.recipient]
        trust, signers = self.keyring.trust, self.keyring.certificates.get(registry.mnemonic, [])
        required = registry.signs_by_default
        payload = request.payload
        if channel.registry == "frmr":
            client = FrmrClient(self.clients.get(channel.tls), channel.url or "", self._frmr_token(channel),
                                trust=trust, signers=signers, signature_required=required)
            return client.person(payload.findtext(_W + "SNILS") or "", payload.findtext(_W + "OrganisationOid"))
        with self._lock:
            key = (channel.url or "", self.tls.key(channel.tls))
            frmo = self._frmo.get(key)
            if frmo is None:
                frmo = self._frmo[key] = FrmoClient(
                    channel.url or "", timeout=self.timeout, trust=trust, signers=signers, signature_required=required,
                    tls=self.tls.get(channel.tls) if channel.tls is not None else None)
        return frmo.organisation(oid=payload.findtext(_O + "Oid"), ogrn=payload.findtext(_O + "OGRN"))

    def _frmr_token(self, channel: Channel) -> str:
        return frmr_token(channel, self.config.directory)

    @staticmethod
    def _verdict(request: etree._Element, reply: RegistryReply, today: dt.date) -> etree._Element:
        now = dt.datetime.now(dt.UTC)
        if etree.QName(request).namespace == WORKER_NS:
            on = request.findtext(_W + "OnDate")
            return worker_answer(request.findtext(_W + "SNILS") or "", reply.record,
                                 specialty=request.findtext(_W + "Specialty"),
                                 organisation=request.findtext(_W + "OrganisationOid"),
                                 on=dt.date.fromisoformat(on) if on else today, checked_at=now)
        return organisation_answer(reply.record, on=today, checked_at=now)


def frmr_token(channel: Channel, base: Path) -> str:
    """ФРМР's bearer token, from the environment (token_env) or a file (token_file, relative to the configuration
    directory), read at each call so that a rotated secret is picked up without a restart."""
    if channel.token_file:
        path = Path(channel.token_file)
        path = path if path.is_absolute() else base / path
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise RegistryCallFailed(f"ФРМР token: cannot read {path} ({exc.strerror})", retryable=False) from None
        if not token:
            raise RegistryCallFailed(f"ФРМР token: {path} is empty", retryable=False)
        return token
    token = os.environ.get(channel.token_env or "", "")
    if not token:
        raise RegistryCallFailed(f"ФРМР token: environment variable {channel.token_env} is not set",
                                 retryable=False)
    return token

"""Outbound REST push: POST the envelope to the recipient's URL with httpx.

Every delivery carries the MessageID as ``Idempotency-Key``: delivery is
at-least-once, and the key lets the recipient drop a repeat (for instance after a
worker died between the recipient's 200 and the broker ack).
"""
from __future__ import annotations

import json
import ssl

import httpx

from adapters.tls_clients import HttpClients
from gateway.config import Channel
from gateway.envelope import Envelope
from gateway.journal import MessageRecord
from gateway.tls import ClientContexts
from routing.channels import RETRYABLE_4XX, DeliveryResult

LAB_RESULT_NS = "urn://zdravlink/types/lab-result/1.0"

def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def fhir_body(env_xml: bytes) -> bytes:
    """The FHIR R4 Bundle of a lab result envelope, validated; ValueError for any other message type.

    A recipient that asks for FHIR gets the payload's FHIR form, not the envelope: the
    gateway's XML signature covers the envelope's XML and cannot travel inside it.
    """
    from adapters.fhir.lab_result import to_bundle, to_json_bytes
    from adapters.fhir.validation import STRICT, FhirInvalid, validate_bundle
    from gateway.xmlsafe import parse_xml

    env = Envelope.from_element(parse_xml(env_xml))
    if env.message_type != LAB_RESULT_NS:
        raise ValueError(f"message type {env.message_type!r} has none (only lab results do)")
    bundle = to_bundle(env.payload, message_id=env.message_id)
    try:
        validate_bundle(bundle, mode=STRICT)
    except FhirInvalid as exc:
        raise ValueError(f"the Bundle does not validate: {'; '.join(exc.errors[:3])}") from None
    return to_json_bytes(bundle)


def push(client: httpx.Client, url: str, env_xml: bytes, message_id: str, fmt: str, attempt: int,
         headers: dict[str, str] | None = None) -> DeliveryResult:
    if fmt == "fhir":
        try:
            body = fhir_body(env_xml)
        except ValueError as exc:
            return DeliveryResult(False, False, f"no FHIR form: {exc}")
        content_type = "application/fhir+json"
    elif fmt == "json":
        from gateway.xmlsafe import parse_xml

        body = json.dumps(Envelope.from_element(parse_xml(env_xml)).to_json(), ensure_ascii=False).encode("utf-8")
        content_type = "application/json"
    else:
        body, content_type = env_xml, "application/xml; charset=utf-8"
    try:
        resp = client.post(
            url,
            content=body,
            headers={
                "Content-Type": content_type,
                "Idempotency-Key": message_id,
                "X-Zdravlink-Message-Id": message_id,
                "X-Zdravlink-Attempt": str(attempt),
                **(headers or {}),
            },
        )
    except httpx.TimeoutException as exc:
        return DeliveryResult(False, True, f"timeout: {type(exc).__name__}")
    except httpx.TransportError as exc:
        return DeliveryResult(False, True, f"connection error: {type(exc).__name__}: {exc}")
    if 200 <= resp.status_code < 300:
        return DeliveryResult(True, False, f"HTTP {resp.status_code}", resp.status_code)
    retryable = resp.status_code >= 500 or resp.status_code in RETRYABLE_4XX
    return DeliveryResult(False, retryable, f"HTTP {resp.status_code}", resp.status_code, _retry_after(resp))


class RestChannel:
    """The REST push channel (``routing.channels.DeliveryChannel``): one httpx client for every recipient,
    and one per distinct ``tls`` setting of a channel (its CAs, client certificate, pins: adapters.tls_clients)."""

    sends_envelope = True

    def __init__(self, timeout: float, tls: ClientContexts | None = None) -> None:
        def make(context: ssl.SSLContext | None) -> httpx.Client:
            return httpx.Client(timeout=timeout, follow_redirects=False, limits=httpx.Limits(max_connections=64),
                                **({"verify": context} if context is not None else {}))

        self.clients = HttpClients(tls, make)
        self.client = self.clients.default

    def deliver(self, channel: Channel, signed: bytes, rec: MessageRecord, attempt: int) -> DeliveryResult:
        assert channel.url is not None  # the configuration requires a url for rest channels
        return push(self.clients.get(channel.tls), channel.url, signed, rec.message_id, channel.format, attempt)

    def close(self) -> None:
        self.clients.close()

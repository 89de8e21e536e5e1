"""The gateway's client side of ФРМР (REST) and ФРМО (SOAP): ask, check the registry's signature, classify.

The delivery worker calls these under its own policy (retries with backoff, failover,
the circuit breaker, dead letters), so a client never retries; it only says what
happened. A registry record comes back as a RegistryReply, a "not found" too (record
None), since that is an answer the MIS gets a verdict for. Everything else raises
RegistryCallFailed, ``retryable`` when asking again later may help: the network, a
timeout, HTTP 5xx/408/425/429 (with Retry-After), a soap:Server fault. A request the
registry refuses (4xx, a soap:Client fault) and a signature that does not hold are
permanent: asking again gets the same refusal.

Signatures (issue 7, item 5): an answer the gateway acts on, a record or a "not
found", must carry the registry's valid signature when ``signature_required``; a
signature that is present is verified in any case, and one that fails is permanent
whatever the answer was, because the answer can then not be told from a forgery.
ФРМР signs the JSON body's bytes in headers (signing.detached); ФРМО signs the
soap:Body with a ds:Signature in soap:Header, checked on the very tree zeep then reads.

Details never quote the СНИЛС or other patient data: they end up in the journal and
the operator's log. Registry messages are passed through gateway.masking.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
import requests
import zeep
import zeep.exceptions
from lxml import etree
from zeep.helpers import serialize_object

from adapters.soap.push import WSDL_TIMEOUT
from adapters.tls_clients import tls_session
from gateway.masking import mask_text
from routing.channels import RETRYABLE_4XX
from signing import SignatureError, TrustStore, Verified, verify, verify_octets
from signing import errors as sigerrors
from signing.detached import SIGNATURE_HEADER
from signing.keys import Certificate
from signing.xmldsig import DS_NS
from zdravlink.errors import ExchangeError

SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
NOT_FOUND_FAULT = "not found"  # ФРМО's faultstring for an organisation it does not have
_MESSAGE_LIMIT = 200


@dataclass(frozen=True)
class RegistryReply:
    """The registry's answer: ``record`` None means it has no such worker or organisation.

    ``signed_by`` is the evidence of the verified signature (subject, serial,
    fingerprint, algorithm), empty only when none came and none was required.
    """

    record: dict[str, Any] | None
    signed_by: dict[str, str]


class RegistryCallFailed(ExchangeError):
    """No answer to act on; ``retryable`` says whether asking again later may give one."""

    def __init__(self, detail: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


# ---------------------------------------------------------------- shared

def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds, given as seconds or as an HTTP date (RFC 9110 §10.2.3)."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, without saying where it was written (RFC 5322 §3.3)
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def _status_failure(registry: str, status: int, headers: Mapping[str, str], message: str) -> RegistryCallFailed:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    said = mask_text(" ".join(message.split())[:_MESSAGE_LIMIT])
    detail = f"{registry} answered HTTP {status} {phrase}".rstrip() + (f": {said}" if said and said != phrase else "")
    if status >= 500 or status in RETRYABLE_4XX:
        return RegistryCallFailed(detail, retryable=True, retry_after=_retry_after(headers))
    return RegistryCallFailed(detail, retryable=False)


def _signature_failure(registry: str, exc: SignatureError) -> RegistryCallFailed:
    """Not masked: a SignatureError speaks of headers, Ids and certificates, never of the body's data."""
    return RegistryCallFailed(f"{exc.code}: {registry} answer: {exc.detail}", retryable=False)


@dataclass(frozen=True)
class _SignaturePolicy:
    """Whose signature a registry's answers must carry, and whether they must carry one at all."""

    registry: str
    trust: TrustStore | None
    signers: tuple[Certificate, ...]
    required: bool

    def check(self, present: bool, verify_with: Callable[[TrustStore, list[Certificate]], Verified]) -> dict[str, str]:
        """Evidence of a verified signature; SignatureError if it fails, SIGNATURE_REQUIRED if there is none.

        Whether a missing signature matters is decided by ``accept``: a fault the
        gateway does not act on need not be signed.
        """
        if not present:
            raise SignatureError(sigerrors.SIGNATURE_REQUIRED, "it carries no signature")
        if self.trust is None:
            raise SignatureError(sigerrors.CERTIFICATE_UNTRUSTED,
                                 "it is signed, but no trust store is configured to check the signature")
        verified = verify_with(self.trust, list(self.signers))
        cert = verified.certificate
        return {"subject": cert.subject, "serial": str(cert.serial), "fingerprint": cert.fingerprint,
                "algorithm": verified.algorithm.name}

    def accept(self, outcome: dict[str, str] | SignatureError, acted_upon: bool) -> dict[str, str]:
        """The evidence to keep, or RegistryCallFailed when the outcome rules the answer out."""
        if not isinstance(outcome, SignatureError):
            return outcome
        if outcome.code == sigerrors.SIGNATURE_REQUIRED and not (acted_upon and self.required):
            return {}
        raise _signature_failure(self.registry, outcome)


# ---------------------------------------------------------------- ФРМР

class FrmrClient:
    """``GET {base_url}/person?snils=&mo=`` with the bearer token; the caller owns ``http`` (and its timeout)."""

    registry = "ФРМР"

    def __init__(self, http: httpx.Client, base_url: str, token: str, *, trust: TrustStore | None,
                 signers: Sequence[Certificate], signature_required: bool = True) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/person"
        self._token = token
        self._policy = _SignaturePolicy(self.registry, trust, tuple(signers), signature_required)

    def person(self, snils: str, organisation: str | None = None) -> RegistryReply:
        """The worker's record (only ``organisation``'s cards when given), or record None if ФРМР has none."""
        params = {"snils": snils} | ({"mo": organisation} if organisation else {})
        try:
            response = self._http.get(self._url, params=params, headers={"Authorization": f"Bearer {self._token}"})
        except httpx.TransportError as exc:
            # Our own URL or request being wrong is not cured by waiting; the network and timeouts may be.
            ours = isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError))
            raise RegistryCallFailed(f"{self.registry} not reached: {type(exc).__name__}: {mask_text(str(exc))}",
                                     retryable=not ours) from None
        status = response.status_code
        acted_upon = status in (200, 404)
        try:
            outcome: dict[str, str] | SignatureError = self._policy.check(
                SIGNATURE_HEADER in response.headers,
                lambda trust, signers: verify_octets(response.content, response.headers, trust=trust, signers=signers))
        except SignatureError as exc:
            outcome = exc
        signed_by = self._policy.accept(outcome, acted_upon)
        if status == 200:
            return RegistryReply(self._content(response), signed_by)
        if status == 404:
            return RegistryReply(None, signed_by)
        raise _status_failure(self.registry, status, response.headers, self._message(response))

    def _content(self, response: httpx.Response) -> dict[str, Any]:
        try:
            content = response.json().get("content")
        except (ValueError, AttributeError):
            content = None
        if not isinstance(content, dict):
            raise RegistryCallFailed(f"{self.registry} answered HTTP 200 without a JSON content object",
                                     retryable=False)
        return content

    @staticmethod
    def _message(response: httpx.Response) -> str:
        try:
            data = response.json()
        except ValueError:
            return response.text
        return str(data.get("message") or "") if isinstance(data, dict) else ""


# ---------------------------------------------------------------- ФРМО

class _BodySignature(zeep.Plugin):
    """Checks the soap:Body signature of every reply, on the tree zeep is about to read.

    zeep hands ingress plugins the parsed envelope before it looks for a Fault, so
    faults pass here too. The outcome (evidence or the SignatureError) is kept per
    thread, because one client serves all the delivery threads, and taken by the
    caller, who alone knows whether the answer is one the gateway acts on.
    """

    def __init__(self, policy: _SignaturePolicy) -> None:
        self._policy = policy
        self._local = threading.local()

    def ingress(self, envelope: etree._Element, http_headers: Any, operation: Any) -> tuple[etree._Element, Any]:
        body = envelope.find(f"{{{SOAP11_NS}}}Body")
        signature = envelope.find(f"{{{SOAP11_NS}}}Header/{{{DS_NS}}}Signature")
        try:
            self._local.outcome = self._policy.check(
                signature is not None and body is not None,
                lambda trust, signers: verify(signature, document=envelope, trust=trust, expected=body,
                                              signers=signers))
        except SignatureError as exc:
            self._local.outcome = exc
        return envelope, http_headers

    def reset(self) -> None:
        self._local.outcome = None

    def settle(self, *, acted_upon: bool) -> dict[str, str]:
        """The evidence for this thread's last reply, or RegistryCallFailed (see _SignaturePolicy.accept)."""
        outcome = getattr(self._local, "outcome", None)
        self._local.outcome = None
        if outcome is None:  # no reply reached ingress: nothing was verified
            outcome = SignatureError(sigerrors.SIGNATURE_REQUIRED, "no SOAP reply was read")
        return self._policy.accept(outcome, acted_upon)


class _StatusFirst(zeep.Transport):
    """HTTP statuses other than 200 and 500 are classified before zeep reads the body as SOAP.

    SOAP 1.1 sends results with 200 and faults with 500; anything else came from
    something in between (a proxy's 503 with an HTML page, a 429 with Retry-After) and
    must not be mistaken for a registry fault, nor lose its Retry-After.
    """

    registry = "ФРМО"

    def post_xml(self, address: str, envelope: etree._Element, headers: dict[str, str]) -> requests.Response:
        response = super().post_xml(address, envelope, headers)
        if response.status_code not in (200, 500):
            raise _status_failure(self.registry, response.status_code, response.headers, response.text)
        return response


class FrmoClient:
    """``GetMos(oid?, ogrn?)`` at ``url``; the zeep client is built on first use and shared by all threads.

    A WSDL that cannot be loaded is a retryable failure and is not remembered, so the
    next call tries again once the registry is back.
    """

    registry = "ФРМО"

    def __init__(self, url: str, *, timeout: float, trust: TrustStore | None, signers: Sequence[Certificate],
                 signature_required: bool = True, wsdl: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self._url = url
        self._wsdl = wsdl or url + "?wsdl"
        self._check = _BodySignature(_SignaturePolicy(self.registry, trust, tuple(signers), signature_required))
        # The WSDL gets at least WSDL_TIMEOUT, as a SOAP push's does: a slow first fetch must not fail a call
        # that would answer in time; the call itself keeps the channel's timeout.
        self._transport = _StatusFirst(timeout=max(timeout, WSDL_TIMEOUT), operation_timeout=timeout)
        if tls is not None:  # the channel's CAs, client certificate and pins (adapters.tls_clients)
            tls_session(tls, self._transport.session)
        # zeep mounts file:// on its session; what a WSDL imports must not make the gateway read its own disk.
        self._transport.session.adapters.pop("file://", None)
        self._service: Any = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._service = None
        self._transport.session.close()

    def _proxy(self) -> Any:
        with self._lock:
            if self._service is None:
                try:
                    client = zeep.Client(self._wsdl, transport=self._transport, plugins=[self._check],
                                         settings=zeep.Settings(forbid_dtd=True))
                    binding = next(port.binding for service in client.wsdl.services.values()
                                   for port in service.ports.values())
                except (requests.RequestException, zeep.exceptions.Error, etree.XMLSyntaxError, OSError,
                        StopIteration) as exc:
                    raise RegistryCallFailed(f"{self.registry} WSDL not loaded: {type(exc).__name__}: {exc}",
                                             retryable=True) from None
                # The configured URL, not the WSDL's soap:address: a registry behind a proxy names its inside.
                self._service = client.create_service(binding.name, self._url)
            return self._service

    def organisation(self, oid: str | None = None, ogrn: str | None = None) -> RegistryReply:
        """The MedicalOrganization as a JSON-shaped dict (camelCase, ISO dates), or record None if ФРМО has none."""
        service = self._proxy()
        self._check.reset()
        try:
            result = service.GetMos(oid=oid, ogrn=ogrn)
        except zeep.exceptions.Fault as fault:
            return self._fault(fault)
        except requests.RequestException as exc:  # refused, reset, dropped, timed out
            raise RegistryCallFailed(f"{self.registry} not reached: {type(exc).__name__}: {mask_text(str(exc))}",
                                     retryable=True) from None
        except zeep.exceptions.TransportError as exc:  # a 200 or 500 whose body is no SOAP envelope
            raise _status_failure(self.registry, exc.status_code, {}, "no SOAP reply") from None
        except zeep.exceptions.Error as exc:  # a reply that does not fit the WSDL (unless it was forged)
            self._check.settle(acted_upon=False)
            raise RegistryCallFailed(f"{self.registry} reply not readable: {type(exc).__name__}: {exc}",
                                     retryable=False) from None
        signed_by = self._check.settle(acted_upon=True)
        return RegistryReply(_plain(serialize_object(result, dict)), signed_by)

    def _fault(self, fault: zeep.exceptions.Fault) -> RegistryReply:
        code = fault.code or ""
        kind = code.rpartition(":")[2].partition(".")[0]
        not_found = kind == "Client" and (fault.message or "").strip() == NOT_FOUND_FAULT
        signed_by = self._check.settle(acted_upon=not_found)
        if not_found:
            return RegistryReply(None, signed_by)
        detail = f"{self.registry} fault {code}: {mask_text((fault.message or '')[:_MESSAGE_LIMIT])}"
        raise RegistryCallFailed(detail, retryable=kind == "Server")


def _plain(value: Any) -> Any:
    """zeep's object as JSON would carry it (ISO dates), the shape ФРМР's records have too."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value

"""Outbound SOAP push: call the operation a partner's WSDL describes, with the envelope as its input.

The envelope goes as XML inside the operation's single input part. zeep cannot be
asked to do that directly: an lxml element given for an ``xs:anyType`` part is
rendered as its ``str()`` (``&lt;Element …&gt;``), and the partner receives text in
place of a signed document. So zeep builds the SOAP message around a placeholder
string, the envelope's serialisation replaces the placeholder's text in zeep's, and
the message is posted with zeep's transport and its reply read by zeep's binding. The
envelope is never re-serialised through a schema, so every byte the signatures cover
arrives as it was signed.

The envelope goes in as bytes, not by lxml's ``append``: the append re-points an
attribute of the moved tree at the host's declaration of its namespace, even where the
moved tree declares that prefix for another one. A payload written by a tool that
names its namespaces ``ns0``, ``ns1`` … (zeep's own names for the partner's) came out
with ``ns0:A`` twice, and the partner refused the message for good. Serialised alone,
the envelope declares every prefix it uses on itself, and those declarations shadow
the host's (zeep declares no default namespace that could catch its unprefixed names).

Only SOAP 1.1 ports are used: SMEV 3 is SOAP 1.1, and the faults are classified by
the SOAP 1.1 codes (Client: the message is at fault, permanent; Server: retry).
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import requests
from lxml import etree
from zeep import Client, Settings, Transport
from zeep.exceptions import Fault, TransportError
from zeep.proxy import ServiceProxy
from zeep.wsdl.bindings.soap import Soap11Binding, SoapOperation

from adapters.tls_clients import tls_session
from gateway.config import Channel
from gateway.journal import MessageRecord
from gateway.tls import ClientContexts, ClientTls
from gateway.xmlsafe import parse_xml
from routing.channels import RETRYABLE_4XX, DeliveryResult
from zdravlink.errors import ExchangeError

#: SOAP 1.1 fault codes (local parts) that blame the request itself, so a retry cannot help.
PERMANENT_FAULTS = ("Client", "VersionMismatch", "MustUnderstand")


class WsdlUnusable(ExchangeError):
    """The WSDL loaded but offers no way to deliver: no SOAP 1.1 port, or no such operation."""


@dataclass(frozen=True)
class _Partner:
    client: Client
    binding: Soap11Binding
    proxy: ServiceProxy  # what zeep's create_message wants; its address is not used
    address: str | None


#: Seconds a partner's WSDL (and its XSDs) may take to load, at least.
WSDL_TIMEOUT = 10.0


def _http_result(status: int, detail: str, retry_after: float | None = None) -> DeliveryResult:
    if 200 <= status < 300:
        return DeliveryResult(True, False, detail, status)
    retryable = status >= 500 or status in RETRYABLE_4XX
    return DeliveryResult(False, retryable, detail, status, retry_after)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def _fault_result(fault: Fault, resp: requests.Response) -> DeliveryResult:
    code = fault.code or ""
    local = code.rpartition(":")[2]
    detail = f"SOAP fault {code}: {fault.message}"
    permanent = any(local.startswith(p) for p in PERMANENT_FAULTS)
    return DeliveryResult(False, not permanent, detail, resp.status_code, _retry_after(resp))


class SoapPusher:
    """The SOAP push channel (``routing.channels.DeliveryChannel``): zeep Clients per WSDL URL, shared by the
    delivery threads.

    Loading and parsing a WSDL costs far more than a delivery, so a partner's client
    is built once and kept; a failed load is not kept, so the next delivery tries again
    once the partner is back. Loads of different WSDLs do not wait for each other:
    one partner that hangs must not stall deliveries to the rest.
    """

    def __init__(self, timeout: float = 10.0, tls: ClientContexts | None = None) -> None:
        self._timeout = timeout
        self._tls = tls
        # forbid_dtd: replies come from partners, who are not trusted (as in gateway.xmlsafe).
        self._settings = Settings(forbid_dtd=True)
        self._transports: dict[str, Transport] = {}
        self._transport = self._transport_for(None)
        self._session = self._transport.session
        self._partners: dict[tuple[str, str], _Partner] = {}
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    sends_envelope = True

    def _transport_for(self, tls: ClientTls | None) -> Transport:
        """zeep's transport for a channel's TLS setting (WSDL loads and calls alike); one per distinct setting."""
        key = self._tls.key(tls) if self._tls is not None and tls is not None else ""
        transport = self._transports.get(key)
        if transport is None:
            session = requests.Session()
            if key and self._tls is not None:
                tls_session(self._tls.get(tls), session)
            # zeep mounts file:// on the session; a partner's WSDL must not make the gateway read its own disk.
            # The WSDL is fetched once per partner: a slow fetch must not fail a delivery whose own call
            # would answer in time, so it gets at least WSDL_TIMEOUT (zeep's ``timeout``); the call
            # itself keeps the channel's (``operation_timeout``).
            transport = Transport(session=session, timeout=max(self._timeout, WSDL_TIMEOUT),
                                  operation_timeout=self._timeout)
            session.adapters.pop("file://", None)
            self._transports[key] = transport
        return transport

    def close(self) -> None:
        with self._lock:
            self._partners.clear()
            for transport in self._transports.values():
                transport.session.close()

    def deliver(self, channel: Channel, signed: bytes, rec: MessageRecord, attempt: int) -> DeliveryResult:
        return self.push(channel, signed, rec.message_id, attempt)

    def _partner(self, wsdl: str, tls: ClientTls | None = None) -> _Partner:
        with self._lock:
            transport = self._transport_for(tls)
            key = (wsdl, self._tls.key(tls) if self._tls is not None and tls is not None else "")
            known = self._partners.get(key)
            if known is not None:
                return known
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                known = self._partners.get(key)
            if known is not None:
                return known  # another thread loaded it while this one waited
            partner = self._load(wsdl, transport)
            with self._lock:
                self._partners[key] = partner
            return partner

    def _load(self, wsdl: str, transport: Transport) -> _Partner:
        client = Client(wsdl, transport=transport, settings=self._settings)
        for service in client.wsdl.services.values():
            for port in service.ports.values():
                if isinstance(port.binding, Soap11Binding):
                    address = port.binding_options.get("address")
                    return _Partner(client, port.binding, client.create_service(port.binding.name, address), address)
        raise WsdlUnusable(f"no SOAP 1.1 port in the WSDL {wsdl}")

    def push(self, channel: Channel, env_xml: bytes, message_id: str, attempt: int) -> DeliveryResult:
        wsdl = channel.wsdl
        if wsdl is None:
            return DeliveryResult(False, False, "the channel has no wsdl")
        try:
            partner = self._partner(wsdl, channel.tls)
        except WsdlUnusable as exc:
            return DeliveryResult(False, False, str(exc))
        except Exception as exc:  # anything from a partner that is down to a half-written WSDL: try later
            return DeliveryResult(False, True, f"WSDL not loaded from {wsdl}: {type(exc).__name__}: {exc}")
        address = channel.url or partner.address
        if address is None:
            return DeliveryResult(False, False, f"no service address in the WSDL {wsdl} and no url in the channel")
        try:
            operation = partner.binding.get(channel.operation)
            message = self._message(partner, operation, parse_xml(env_xml))
        except (ValueError, WsdlUnusable) as exc:  # zeep says ValueError for an unknown operation
            return DeliveryResult(False, False, str(exc))
        headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"{operation.soapaction or ""}"',
            "Idempotency-Key": message_id,
            "X-Zdravlink-Message-Id": message_id,
            "X-Zdravlink-Attempt": str(attempt),
        }
        try:
            resp = partner.client.transport.post(address, message, headers)
        except requests.Timeout as exc:
            return DeliveryResult(False, True, f"timeout: {type(exc).__name__}")
        except requests.RequestException as exc:
            return DeliveryResult(False, True, f"connection error: {type(exc).__name__}: {exc}")
        return self._classify(partner, operation, resp)

    @staticmethod
    def _message(partner: _Partner, operation: SoapOperation, root: etree._Element) -> bytes:
        """The SOAP message with ``root`` as the content of the operation's input part (see the module's note)."""
        placeholder = f"zdravlink-envelope-{uuid.uuid4()}"
        try:
            message = partner.client.create_message(partner.proxy, operation.name, placeholder)
        except TypeError as exc:  # zeep's way of saying the input does not take exactly one value
            raise WsdlUnusable(f"operation {operation.name!r} does not take the envelope as its input: {exc}") from None
        slot = next((el for el in message.iter() if el.text == placeholder), None)
        if slot is None:
            raise WsdlUnusable(f"operation {operation.name!r} has no input part for the envelope")
        host = etree.tostring(message, xml_declaration=True, encoding="utf-8")
        return host.replace(placeholder.encode(), etree.tostring(root, encoding="utf-8", xml_declaration=False), 1)

    def _classify(self, partner: _Partner, operation: SoapOperation, resp: requests.Response) -> DeliveryResult:
        try:
            partner.binding.process_reply(partner.client, operation, resp)
        except Fault as fault:
            if fault.code:
                return _fault_result(fault, resp)
            # A non-200 answer that is XML but no fault: only its HTTP status speaks.
            return _http_result(resp.status_code, f"HTTP {resp.status_code}", _retry_after(resp))
        except TransportError:
            # An empty or non-XML body: HTTP 503 from a proxy, or a 200 whose reply is unreadable.
            return _http_result(resp.status_code, f"HTTP {resp.status_code} without a SOAP reply",
                                _retry_after(resp))
        except Exception as exc:  # a 200 whose reply does not match the WSDL: the partner took the message
            return DeliveryResult(True, False, f"HTTP {resp.status_code} (reply not as the WSDL says: {exc})",
                              resp.status_code)
        return DeliveryResult(True, False, f"HTTP {resp.status_code}", resp.status_code)

"""A small SMEV 3 client: the requests a partner's information system sends, signed with its key.

Used by ``zdravlink demo send --soap``, the tests and the benchmark, and a starting point for a
partner integrating with the gateway from Python. Each builder returns the request element
with its CallerInformationSystemSignature (when given a signer); ``soap`` wraps it in a SOAP 1.1
envelope and ``call`` posts it with the SOAPAction the WSDL names.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
from lxml import etree

from adapters.soap.smev_schema import SOAP_ENV_NS, B, T, smev_element
from gateway.xmlsafe import free_prefix
from signing import Signer, sign


def soap(request: etree._Element) -> bytes:
    env = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={free_prefix("soapenv", SOAP_ENV_NS, request): SOAP_ENV_NS})
    etree.SubElement(env, f"{{{SOAP_ENV_NS}}}Body").append(request)
    return etree.tostring(env, encoding="UTF-8", xml_declaration=True)


def _signed(request: etree._Element, target: etree._Element, by: Signer | None) -> etree._Element:
    if by is not None:
        etree.SubElement(request, T + "CallerInformationSystemSignature").append(sign(target, by))
    return request


def send_request(payload: str, *, message_id: str | None = None, by: Signer | None = None, test: bool = False,
                 eol: str | None = None, data_id: str = "SIGNED_BY_CONSUMER") -> etree._Element:
    content = etree.fromstring(payload)
    req = smev_element("SendRequestRequest", content, types="ns")
    data = etree.SubElement(req, T + "SenderProvidedRequestData", Id=data_id)
    etree.SubElement(data, T + "MessageID").text = message_id or str(uuid.uuid1())
    if eol:
        etree.SubElement(data, T + "EOL").text = eol
    etree.SubElement(data, B + "MessagePrimaryContent").append(content)
    if test:
        etree.SubElement(data, T + "TestMessage")
    return _signed(req, data, by)


def send_response(to: str, payload: str, *, message_id: str | None = None, by: Signer | None = None) -> etree._Element:
    content = etree.fromstring(payload)
    req = smev_element("SendResponseRequest", content, types="ns")
    data = etree.SubElement(req, T + "SenderProvidedResponseData", Id="SIGNED_BY_PROVIDER")
    etree.SubElement(data, T + "MessageID").text = message_id or str(uuid.uuid1())
    etree.SubElement(data, T + "To").text = to
    etree.SubElement(data, B + "MessagePrimaryContent").append(content)
    return _signed(req, data, by)


def _selector(tag: str, namespace: str | None, local: str | None, by: Signer | None) -> etree._Element:
    req = smev_element(tag, types="ns")
    sel = etree.SubElement(req, B + "MessageTypeSelector", Id="SIGNED_BY_CALLER")
    if namespace:
        etree.SubElement(sel, B + "NamespaceURI").text = namespace
        etree.SubElement(sel, B + "RootElementLocalName").text = local or "Notice"
    etree.SubElement(sel, B + "Timestamp").text = datetime.now(UTC).isoformat()
    return _signed(req, sel, by)


def get_request(namespace: str | None = None, local: str | None = None, by: Signer | None = None) -> etree._Element:
    return _selector("GetRequestRequest", namespace, local, by)


def get_response(namespace: str | None = None, local: str | None = None, by: Signer | None = None) -> etree._Element:
    return _selector("GetResponseRequest", namespace, local, by)


def ack(message_id: str, accepted: bool = True, by: Signer | None = None) -> etree._Element:
    req = smev_element("AckRequest", types="ns")
    target = etree.SubElement(req, B + "AckTargetMessage", Id="SIGNED_BY_CALLER", accepted=str(accepted).lower())
    target.text = message_id
    return _signed(req, target, by)


def _timestamped(tag: str, by: Signer | None) -> etree._Element:
    req = smev_element(tag, types="ns")
    ts = etree.SubElement(req, B + "Timestamp", Id="SIGNED_BY_CALLER")
    ts.text = datetime.now(UTC).isoformat()
    return _signed(req, ts, by)


def get_status(by: Signer | None = None) -> etree._Element:
    return _timestamped("GetStatusRequest", by)


def queue_statistics(by: Signer | None = None) -> etree._Element:
    return _timestamped("GetIncomingQueueStatisticsRequest", by)


def call(url: str, request: etree._Element, token: str | None = None, action: str | None = None
         ) -> tuple[int, etree._Element]:
    """POST one request; the HTTP status and the SOAP body's child (answer or soap:Fault)."""
    name = etree.QName(request).localname.removesuffix("Request")
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": action or f"urn:{name}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    resp = httpx.post(url, content=soap(request), headers=headers, timeout=15)
    root = etree.fromstring(resp.content)
    return resp.status_code, root.find(f"{{{SOAP_ENV_NS}}}Body")[0]


def describe(answer: etree._Element) -> str:
    """One line for a person: the fault's string, or what the answer says about the message."""
    if answer.tag == f"{{{SOAP_ENV_NS}}}Fault":
        return f"fault {answer.findtext('faultcode')}: {answer.findtext('faultstring')}"
    metadata = answer.find(T + "MessageMetadata")
    if metadata is not None:
        return (f"{etree.QName(answer).localname}: MessageId {metadata.findtext(T + 'MessageId')} "
                f"{metadata.findtext(T + 'Status') or ''} -> {metadata.findtext(f'{T}Recipient/{T}Mnemonic')}")
    return f"{etree.QName(answer).localname} ({len(answer)} child elements)"

"""Between SMEV 3 elements and the canonical envelope, both ways.

SMEV's SenderProvidedRequestData/ResponseData and the envelope's SenderProvidedData
hold the same facts (they were modelled on each other), so the mapping is field for
field. SMEV routes by message type where the envelope names its recipient: the
recipient comes from the route table, and ReplyTo carries the request's MessageID so
that a response finds its way back.
"""
from __future__ import annotations

import copy
from datetime import datetime

from lxml import etree

from adapters.soap.smev_schema import B, T, smev_element
from gateway.config import Participant
from gateway.envelope import DEFAULT_DATA_ID, Envelope

#: The canonical form of SMEV's RequestRejected and RequestStatus answers (schemas_xsd/payloads/smev-answer-1.0.xsd).
ANSWER_NS = "urn://zdravlink/types/smev-answer/1.0"
A = "{%s}" % ANSWER_NS


def _text(parent: etree._Element, tag: str) -> str | None:
    el = parent.find(tag)
    return None if el is None else (el.text or "").strip()


def payload_of(data: etree._Element) -> etree._Element:
    """The business root element under MessagePrimaryContent (the XSD guarantees exactly one)."""
    content = data.find(B + "MessagePrimaryContent")
    return next(iter(content.iterchildren(etree.Element)))


def response_payload(data: etree._Element) -> etree._Element | None:
    """What a SenderProvidedResponseData answers, as a payload: its content, or RequestRejected /
    RequestStatus in the smev-answer type; None for AsyncProcessingStatus, which has no canonical form."""
    if data.find(B + "MessagePrimaryContent") is not None:
        return payload_of(data)
    rejected = data.findall(T + "RequestRejected")
    if rejected:
        root = etree.Element(A + "RequestRejection", nsmap={"a": ANSWER_NS})
        for r in rejected:
            item = etree.SubElement(root, A + "Rejected")
            etree.SubElement(item, A + "Code").text = r.findtext(T + "RejectionReasonCode")
            etree.SubElement(item, A + "Description").text = r.findtext(T + "RejectionReasonDescription")
        return root
    status = data.find(T + "RequestStatus")
    if status is not None:
        root = etree.Element(A + "RequestStatus", nsmap={"a": ANSWER_NS})
        etree.SubElement(root, A + "StatusCode").text = status.findtext(T + "StatusCode")
        for p in status.iterfind(T + "StatusParameter"):
            param = etree.SubElement(root, A + "StatusParameter")
            etree.SubElement(param, A + "Key").text = p.findtext(T + "Key")
            etree.SubElement(param, A + "Value").text = p.findtext(T + "Value")
        etree.SubElement(root, A + "StatusDescription").text = status.findtext(T + "StatusDescription")
        return root
    return None


def envelope_from_request_data(data: etree._Element, sender: str, recipient: str) -> Envelope:
    payload = payload_of(data)
    return Envelope(
        message_id=_text(data, T + "MessageID") or "",
        reference_message_id=_text(data, T + "ReferenceMessageID"),
        transaction_code=_text(data, T + "TransactionCode"),
        sender=sender,
        recipient=recipient,
        message_type=etree.QName(payload).namespace or "",
        payload=_standalone(payload),
        test_message=data.find(T + "TestMessage") is not None,
        data_id=data.get("Id") or DEFAULT_DATA_ID,
    )


def envelope_from_response_data(data: etree._Element, payload: etree._Element, sender: str,
                                original: Envelope) -> Envelope:
    return Envelope(
        message_id=_text(data, T + "MessageID") or "",
        reference_message_id=original.message_id,
        transaction_code=original.transaction_code,
        sender=sender,
        recipient=original.sender,
        message_type=etree.QName(payload).namespace or "",
        payload=_standalone(payload),
        data_id=data.get("Id") or "SIGNED_BY_PROVIDER",
    )


def _standalone(element: etree._Element) -> etree._Element:
    dup = copy.deepcopy(element)
    dup.tail = None
    return dup


def request_data(env: Envelope) -> etree._Element:
    data = smev_element("SenderProvidedRequestData", env.payload, Id=env.data_id)
    etree.SubElement(data, T + "MessageID").text = env.message_id
    if env.reference_message_id:
        etree.SubElement(data, T + "ReferenceMessageID").text = env.reference_message_id
    if env.transaction_code:
        etree.SubElement(data, T + "TransactionCode").text = env.transaction_code
    etree.SubElement(data, B + "MessagePrimaryContent").append(_standalone(env.payload))
    if env.test_message:
        etree.SubElement(data, T + "TestMessage")
    return data


def response_data(env: Envelope) -> etree._Element:
    data = smev_element("SenderProvidedResponseData", env.payload, Id=env.data_id)
    etree.SubElement(data, T + "MessageID").text = env.message_id
    etree.SubElement(data, T + "To").text = env.reference_message_id or env.recipient
    root = env.payload
    if root.tag == A + "RequestRejection":
        for item in root.iterfind(A + "Rejected"):
            r = etree.SubElement(data, T + "RequestRejected")
            etree.SubElement(r, T + "RejectionReasonCode").text = item.findtext(A + "Code")
            etree.SubElement(r, T + "RejectionReasonDescription").text = item.findtext(A + "Description")
    elif root.tag == A + "RequestStatus":
        status = etree.SubElement(data, T + "RequestStatus")
        etree.SubElement(status, T + "StatusCode").text = root.findtext(A + "StatusCode")
        for p in root.iterfind(A + "StatusParameter"):
            param = etree.SubElement(status, T + "StatusParameter")
            etree.SubElement(param, T + "Key").text = p.findtext(A + "Key")
            etree.SubElement(param, T + "Value").text = p.findtext(A + "Value")
        etree.SubElement(status, T + "StatusDescription").text = root.findtext(A + "StatusDescription")
    else:
        etree.SubElement(data, B + "MessagePrimaryContent").append(_standalone(root))
    return data


def metadata(message_id: str, kind: str, sender: Participant, recipient: Participant, sent: datetime, *,
             delivered: datetime | None = None, status: str | None = None, element_id: str | None = None
             ) -> etree._Element:
    """MessageMetadata as SMEV fills it in (the order is the XSD's sequence)."""
    md = etree.Element(T + "MessageMetadata")
    if element_id:
        md.set("Id", element_id)
    etree.SubElement(md, T + "MessageId").text = message_id
    etree.SubElement(md, T + "MessageType").text = kind
    s = etree.SubElement(md, T + "Sender")
    etree.SubElement(s, T + "Mnemonic").text = sender.mnemonic
    etree.SubElement(s, T + "HumanReadableName").text = sender.name[:500]
    etree.SubElement(md, T + "SendingTimestamp").text = sent.isoformat()
    etree.SubElement(md, T + "DestinationName").text = recipient.mnemonic
    r = etree.SubElement(md, T + "Recipient")
    etree.SubElement(r, T + "Mnemonic").text = recipient.mnemonic
    etree.SubElement(r, T + "HumanReadableName").text = recipient.name[:500]
    etree.SubElement(etree.SubElement(md, T + "SupplementaryData"), T + "InteractionType").text = "other"
    if delivered is not None:
        etree.SubElement(md, T + "DeliveryTimestamp").text = delivered.isoformat()
    if status is not None:
        etree.SubElement(md, T + "Status").text = status
    return md

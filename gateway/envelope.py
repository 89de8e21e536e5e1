"""The canonical envelope and its two wire forms, XML and JSON.

Every adapter translates to this one shape, so routing, journal and delivery never
care where a message came from. Both forms carry exactly the same information: the
JSON form holds the business payload and any signature as canonical XML strings,
because the payload's namespaces and the signatures' bytes must survive a trip
through JSON unchanged.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import errors
from gateway.errors import Rejection
from gateway.schemas import ENVELOPE_NS
from gateway.xmlsafe import free_prefix, parse_xml

DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
DEFAULT_DATA_ID = "SIGNED_BY_CONSUMER"
_Z = "{%s}" % ENVELOPE_NS


@dataclass(frozen=True)
class AttachmentHeader:
    content_id: str
    mime_type: str
    size: int
    digest_algorithm: str
    digest_value: str


def canonical(element: etree._Element) -> bytes:
    """Exclusive C14N of a subtree, keeping the namespaces the subtree itself declares.

    Exclusive C14N alone would drop a declaration used only inside attribute values
    (``xsi:type="ns:T"``), so those prefixes are listed as inclusive.
    """
    own_prefixes: set[str] = set()
    for el in element.iter():
        parent = el.getparent()
        parent_map = parent.nsmap if parent is not None and el is not element else {}
        for prefix, uri in el.nsmap.items():
            if prefix is not None and parent_map.get(prefix) != uri:
                own_prefixes.add(prefix)
    return etree.tostring(
        element,
        method="c14n",
        exclusive=True,
        with_comments=True,
        inclusive_ns_prefixes=sorted(own_prefixes) or None,
    )


def _detached(element: etree._Element) -> etree._Element:
    """A copy that stands alone, so later edits of the source tree cannot reach it."""
    dup = copy.deepcopy(element)
    dup.tail = None
    return dup


def _child(parent: etree._Element, tag: str) -> etree._Element:
    """A child the envelope XSD requires; its absence means the XSD was not applied, so say which one."""
    el = parent.find(_Z + tag)
    if el is None:
        raise Rejection(errors.ENVELOPE_INVALID, f"zl:{tag} is missing in zl:{etree.QName(parent).localname}", tag)
    return el


def _text(parent: etree._Element, tag: str) -> str:
    """The text of a required child; an empty element reads as "" (what ``findtext`` gives)."""
    return _child(parent, tag).text or ""


def _attribute(el: etree._Element, name: str) -> str:
    """An attribute the envelope XSD requires (``use="required"``)."""
    value = el.get(name)
    if value is None:
        raise Rejection(errors.ENVELOPE_INVALID, f"@{name} is missing on zl:{etree.QName(el).localname}", name)
    return value


@dataclass(eq=False)
class Envelope:
    message_id: str
    sender: str
    recipient: str
    message_type: str
    payload: etree._Element
    reference_message_id: str | None = None
    transaction_code: str | None = None
    test_message: bool = False
    attachments: tuple[AttachmentHeader, ...] = ()
    sender_signature: etree._Element | None = None
    gateway_signature: etree._Element | None = None
    data_id: str = DEFAULT_DATA_ID
    #: The parsed document this envelope was read from, kept so signatures are checked on what was sent.
    wire: etree._Element | None = field(default=None, repr=False)
    _fingerprint: str | None = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Envelope) and self.to_json() == other.to_json()

    # ---- XML form -------------------------------------------------------

    def _own_prefix(self) -> str:
        return free_prefix("zl", ENVELOPE_NS, self.payload, self.sender_signature, self.gateway_signature)

    def sender_data_element(self, prefix: str | None = None) -> etree._Element:
        data = etree.Element(_Z + "SenderProvidedData", nsmap={prefix or self._own_prefix(): ENVELOPE_NS})
        data.set("Id", self.data_id)
        etree.SubElement(data, _Z + "MessageID").text = self.message_id
        if self.reference_message_id is not None:
            etree.SubElement(data, _Z + "ReferenceMessageID").text = self.reference_message_id
        if self.transaction_code is not None:
            etree.SubElement(data, _Z + "TransactionCode").text = self.transaction_code
        etree.SubElement(data, _Z + "Sender").text = self.sender
        etree.SubElement(data, _Z + "Recipient").text = self.recipient
        etree.SubElement(data, _Z + "MessageType").text = self.message_type
        if self.test_message:
            etree.SubElement(data, _Z + "TestMessage")
        content = etree.SubElement(data, _Z + "MessagePrimaryContent")
        content.append(_detached(self.payload))
        if self.attachments:
            headers = etree.SubElement(data, _Z + "AttachmentHeaderList")
            for att in self.attachments:
                h = etree.SubElement(headers, _Z + "AttachmentHeader")
                etree.SubElement(h, _Z + "ContentId").text = att.content_id
                etree.SubElement(h, _Z + "MimeType").text = att.mime_type
                etree.SubElement(h, _Z + "Size").text = str(att.size)
                d = etree.SubElement(h, _Z + "Digest", Algorithm=att.digest_algorithm)
                d.text = att.digest_value
        return data

    def to_element(self) -> etree._Element:
        prefix = self._own_prefix()
        root = etree.Element(_Z + "Envelope", nsmap={prefix: ENVELOPE_NS})
        root.append(self.sender_data_element(prefix))
        for tag, sig in (("SenderSignature", self.sender_signature), ("GatewaySignature", self.gateway_signature)):
            if sig is not None:
                etree.SubElement(root, _Z + tag).append(_detached(sig))
        return root

    def to_xml(self) -> bytes:
        return etree.tostring(self.to_element(), encoding="UTF-8", xml_declaration=True)

    @classmethod
    def from_element(cls, root: etree._Element) -> Envelope:
        """Read an envelope that has already passed the envelope XSD."""
        data = _child(root, "SenderProvidedData")

        def optional_text(tag: str) -> str | None:
            el = data.find(_Z + tag)
            return None if el is None else (el.text or "")

        attachments = tuple(
            AttachmentHeader(
                content_id=_text(h, "ContentId"),
                mime_type=_text(h, "MimeType"),
                size=int(_text(h, "Size")),
                digest_algorithm=_attribute(_child(h, "Digest"), "Algorithm"),
                digest_value=_text(h, "Digest"),
            )
            for h in data.iterfind(f"{_Z}AttachmentHeaderList/{_Z}AttachmentHeader")
        )
        payload = next(iter(_child(data, "MessagePrimaryContent").iterchildren(etree.Element)))

        def signature(tag: str) -> etree._Element | None:
            holder = root.find(_Z + tag)
            return None if holder is None else _detached(holder[0])

        return cls(
            message_id=_text(data, "MessageID"),
            reference_message_id=optional_text("ReferenceMessageID"),
            transaction_code=optional_text("TransactionCode"),
            sender=_text(data, "Sender"),
            recipient=_text(data, "Recipient"),
            message_type=_text(data, "MessageType"),
            test_message=data.find(_Z + "TestMessage") is not None,
            payload=_detached(payload),
            attachments=attachments,
            sender_signature=signature("SenderSignature"),
            gateway_signature=signature("GatewaySignature"),
            data_id=_attribute(data, "Id"),
            wire=root,
        )

    # ---- JSON form ------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        def xml_text(el: etree._Element | None) -> str | None:
            return None if el is None else canonical(el).decode("utf-8")

        return {
            "messageId": self.message_id,
            "referenceMessageId": self.reference_message_id,
            "transactionCode": self.transaction_code,
            "sender": self.sender,
            "recipient": self.recipient,
            "messageType": self.message_type,
            "testMessage": self.test_message,
            "payload": xml_text(self.payload),
            "attachments": [
                {
                    "contentId": a.content_id,
                    "mimeType": a.mime_type,
                    "size": a.size,
                    "digest": {"algorithm": a.digest_algorithm, "value": a.digest_value},
                }
                for a in self.attachments
            ],
            "senderSignature": xml_text(self.sender_signature),
            "gatewaySignature": xml_text(self.gateway_signature),
            "dataId": self.data_id,
        }

    @classmethod
    def from_json(cls, data: Any) -> Envelope:
        """Build from the JSON form; structural errors name the JSON field."""
        try:
            doc = EnvelopeDocument.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise Rejection(errors.ENVELOPE_INVALID, first["msg"], where) from None

        def xml_field(value: str | None, name: str) -> etree._Element | None:
            return None if value is None else parse_xml(value.encode("utf-8"), field=name)

        return cls(
            message_id=doc.messageId,
            reference_message_id=doc.referenceMessageId,
            transaction_code=doc.transactionCode,
            sender=doc.sender,
            recipient=doc.recipient,
            message_type=doc.messageType,
            test_message=doc.testMessage,
            payload=parse_xml(doc.payload.encode("utf-8"), field="payload"),
            attachments=tuple(
                AttachmentHeader(a.contentId, a.mimeType, a.size, a.digest.algorithm, a.digest.value)
                for a in doc.attachments
            ),
            sender_signature=xml_field(doc.senderSignature, "senderSignature"),
            gateway_signature=xml_field(doc.gatewaySignature, "gatewaySignature"),
            data_id=doc.dataId,
        )

    # ---- identity -------------------------------------------------------

    def fingerprint(self) -> str:
        """SHA-256 of the sender's canonical data: equal for the same message in either form."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(canonical(self.sender_data_element())).hexdigest()
        return self._fingerprint


class _Digest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    algorithm: str
    value: str


class _Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contentId: str
    mimeType: str
    size: int = Field(ge=0)
    digest: _Digest


class EnvelopeDocument(BaseModel):
    """The JSON form's shape; the XSD then checks the same rules as for XML."""

    model_config = ConfigDict(extra="forbid", strict=True)
    messageId: str
    referenceMessageId: str | None = None
    transactionCode: str | None = None
    sender: str
    recipient: str
    messageType: str
    testMessage: bool = False
    payload: str
    attachments: list[_Attachment] = []
    senderSignature: str | None = None
    gatewaySignature: str | None = None
    dataId: str = DEFAULT_DATA_ID

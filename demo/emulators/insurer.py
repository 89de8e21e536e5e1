"""An insurer (СМО, ТФОМС) that takes register archives through its SOAP service and answers each one.

Used by the tests and the demo as a real server on 127.0.0.1, so the whole loop of billing
runs over the wire: the gateway pushes a clinic's register archive with its SOAP channel
(``operation: Deliver``), the insurer unpacks the ZIP, checks the detached signature (when
it is given a trust store), and answers through the gateway's REST API as any participant
would, addressed to the clinic's MIS and referring to the archive's message. Answering the
SOAP call never waits for that post: a real insurer acknowledges the file first and sends
its protocol later.

Two kinds of insurer, by ``answer``:

* ``flk`` — what insurers really do: the ФЛК. The pair is validated against the schemas of
  the insurer's region for the period (``profile``), with the ФЛК-side checks of
  ``gateway.oms.checks`` and its own directory of specialties (V021), and the answer is a
  ФЛК protocol (FLK_P) naming each error's record: a ZIP ``V<name>.zip`` with the H-file's
  protocol ``V<name>.xml`` and the L-file's ``F<name>.xml``.
* ``act-protocol`` — Zdravlink's own per-record answer, checking each service the way an
  insurer's МЭК does. Reason codes in the style of the federal directory F014 (the numbers
  follow F014 as commonly cited, not checked against its current edition: the codes are
  the insurer's anyway):

  * ``5.1.2`` SCHET/SUMMAV differs from the sum of SUMV_USL: every record is refused;
  * ``5.1.3`` a field the check needs (CODE_USL, KOL_USL, TARIF, SUMV_USL, DATE_IN, DATE_OUT) is empty;
  * ``5.1.4`` a field is filled wrongly: not a number or a date, SUMV_USL is not KOL_USL × TARIF to
    the kopeck, DATE_IN after DATE_OUT, a date outside the act's SCHET YEAR/MONTH;
  * ``5.4.1`` no tariff for CODE_USL; ``5.4.2`` TARIF is not the agreed price;
  * ``5.2.4`` the record is on the ``reject`` list (the patient is not insured with this insurer).

An archive it cannot read at all (not a ZIP, no H-file, a USL without IDSERV, a signature
that does not verify) gets a soap:Client fault: there is nothing to answer per record, and
the gateway then treats the delivery as permanently failed. Repeats with a known
``Idempotency-Key`` are answered as accepted and not checked or answered again. Nothing it
logs carries a patient's data: names, numbers and file contents stay out of the log.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, Literal

import httpx
from lxml import etree
from spyne import Application, ServiceBase, rpc
from spyne.model.fault import Fault
from spyne.model.primitive import AnyXml, Unicode
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from demo.emulators.serving import ServedInThread, wsgi_server
from gateway.envelope import Envelope
from gateway.errors import Rejection
from gateway.oms import OmsFileError
from gateway.oms.archive import RegisterPair, pack, unpack_register
from gateway.oms.checks import check_register
from gateway.oms.flk import FlkError, FlkProtocol, write_flk
from gateway.oms.profiles import Edition, InsurerBinding, RegionProfile, resolve
from gateway.schemas import validate_envelope
from signing import Certificate, Signer, TrustStore, sign
from signing.cms import verify_detached
from signing.errors import SignatureError
from zdravlink.errors import RefusedError

log = logging.getLogger("zdravlink.emulator")

INSURER_NS = "urn://zdravlink/insurer/1.0"
REGISTER_NS = "urn://zdravlink/types/oms-register/1.0"
ACT_PROTOCOL_NS = "urn://zdravlink/types/act-protocol/1.0"
FLK_PROTOCOL_NS = "urn://zdravlink/types/oms-protocol/1.0"
_R, _P, _F = "{%s}" % REGISTER_NS, "{%s}" % ACT_PROTOCOL_NS, "{%s}" % FLK_PROTOCOL_NS
_CENT = Decimal("0.01")
_REPLY = "zdravlink.reply"  # the answer's envelope, handed from the spyne method to the WSGI layer

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ActUnreadable(RefusedError, ValueError):
    """The archive lacks what an answer needs; the insurer refuses the file as a whole."""


@dataclass(frozen=True)
class Reason:
    code: str
    text: str


@dataclass
class ReceivedAct:
    """One archive checked: the first delivery per idempotency key, and the answer made for it."""

    message_id: str
    idempotency_key: str
    act_number: str
    file_name: str
    archive: bytes
    signature: bytes
    answer: etree._Element  # the ActProtocol or ProtocolFile payload
    envelope: bytes = b""  # the delivered envelope as the insurer parsed it, signatures included
    at: float = field(default_factory=time.time)


@dataclass
class Reply:
    """One post of an answer to the gateway; ``status`` is None when no HTTP answer came."""

    message_id: str
    act_message_id: str
    status: int | None
    detail: str
    at: float = field(default_factory=time.time)


class _Refused(RefusedError):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.reason = Reason(code, text)


# ---- the ФЛК -------------------------------------------------------------------

def check_archive(pair: RegisterPair, profile: RegionProfile, *, editions: list[Edition] | None = None,
                  specialties: Iterable[str] | None = None) -> list[FlkProtocol]:
    """The H-file's protocol (``V…``) and the L-file's (``F…``) for a register pair, by the region's rules."""
    name = pair.name
    h_errors: list[FlkError] = []
    l_errors: list[FlkError] = []
    try:
        period = f"{int(pair.h_file.findtext('SCHET/YEAR') or '')}-{int(pair.h_file.findtext('SCHET/MONTH') or ''):02d}"
        edition = resolve(profile, InsurerBinding(profile=profile.name, editions=editions), period)
    except ValueError as exc:  # an unreadable period, or an EditionError
        h_errors.append(FlkError("ZL.EDITION", "VERSION", "ZGLV", comment=f"no edition to check against: {exc}"))
    else:
        if pair.l_file is None:
            h_errors.append(FlkError("ZL.PAIR", "FILENAME", "ZGLV", comment=f"{name.paired('L').xml} is not in the "
                                     "archive"))
        found = check_register(pair.h_file, pair.l_file, h_schema=edition.h_layout.source,
                               l_schema=edition.l_layout.source, specialties=specialties)
        h_errors += found.h
        l_errors += found.l
    l_name = name.paired("L")
    return [FlkProtocol(name.protocol, str(name), tuple(h_errors)),
            FlkProtocol(l_name.protocol, str(l_name), tuple(l_errors))]


def protocol_file(protocols: list[FlkProtocol], when: date) -> tuple[str, bytes]:
    """The protocols zipped under the first one's name, as the answer travels."""
    return f"{protocols[0].fname}.zip", pack([(f"{p.fname}.xml", write_flk(p)) for p in protocols], when)


# ---- the МЭК of an act-protocol insurer ------------------------------------------

def _text(parent: etree._Element, tag: str) -> str | None:
    value = parent.findtext(tag)
    return value.strip() if value is not None and value.strip() else None


def _field(usl: etree._Element, tag: str) -> str:
    value = _text(usl, tag)
    if value is None:
        raise _Refused("5.1.3", f"{tag} is empty")
    return value


def _amount(usl: etree._Element, tag: str) -> Decimal:
    value = _field(usl, tag)
    try:
        number = Decimal(value)
    except InvalidOperation:
        number = Decimal("NaN")
    if not number.is_finite():  # Decimal reads "NaN" and "Infinity" too
        raise _Refused("5.1.4", f"{tag} {value!r} is not a number")
    return number


def _day(usl: etree._Element, tag: str) -> date:
    value = _field(usl, tag)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise _Refused("5.1.4", f"{tag} {value!r} is not a date") from None


def _header(schet: etree._Element, tag: str) -> str:
    value = _text(schet, tag)
    if value is None:
        raise ActUnreadable(f"SCHET/{tag} is empty")
    return value


def _record_reason(usl: etree._Element, record_id: str, period: tuple[int, int], tariffs: Mapping[str, Decimal],
                   reject: set[str]) -> Reason | None:
    """The first thing wrong with one USL, in the order an insurer's checks run; None if it is payable."""
    try:
        code = _field(usl, "CODE_USL")
        count, price, total = _amount(usl, "KOL_USL"), _amount(usl, "TARIF"), _amount(usl, "SUMV_USL")
        first, last = _day(usl, "DATE_IN"), _day(usl, "DATE_OUT")
    except _Refused as exc:
        return exc.reason
    if count <= 0 or price < 0:
        return Reason("5.1.4", f"KOL_USL {count} must be positive and TARIF {price} not negative")
    agreed = tariffs.get(code)
    if agreed is None:
        return Reason("5.4.1", f"no tariff for service {code} in the tariff agreement")
    if price != agreed:
        return Reason("5.4.2", f"TARIF {price} for service {code} is not the agreed {agreed}")
    expected = (count * price).quantize(_CENT, ROUND_HALF_UP)
    if total != expected:
        return Reason("5.1.4", f"SUMV_USL {total} is not KOL_USL × TARIF = {expected}")
    if first > last:
        return Reason("5.1.4", f"DATE_IN {first} is after DATE_OUT {last}")
    for tag, day in (("DATE_IN", first), ("DATE_OUT", last)):
        if (day.year, day.month) != period:
            return Reason("5.1.4", f"{tag} {day} is outside the act's period {period[0]}-{period[1]:02d}")
    if record_id in reject:
        return Reason("5.2.4", "the patient is not insured with this insurer")
    return None


def _sum_presented(usls: list[etree._Element]) -> Decimal:
    """Σ SUMV_USL over the records where it is a number; the others are refused on their own anyway."""
    total = Decimal(0)
    for usl in usls:
        try:
            total += _amount(usl, "SUMV_USL")
        except _Refused:
            continue
    return total


def check_act(act: etree._Element, *, act_message_id: str, insurer: str, tariffs: Mapping[str, Decimal],
              reject: Iterable[str] = ()) -> etree._Element:
    """The ActProtocol for one H-file (ZL_LIST); ActUnreadable if there is nothing to answer per record."""
    if act.tag != "ZL_LIST":
        raise ActUnreadable(f"the H-file's root is {act.tag}, not ZL_LIST")
    schet = act.find("SCHET")
    if schet is None:
        raise ActUnreadable("the act has no SCHET")
    number = _header(schet, "NSCHET")
    try:
        presented = Decimal(_header(schet, "SUMMAV"))
        period = (int(_header(schet, "YEAR")), int(_header(schet, "MONTH")))
    except (InvalidOperation, ValueError) as exc:
        raise ActUnreadable(f"SCHET is unreadable: {exc}") from None
    if not presented.is_finite():
        raise ActUnreadable(f"SCHET/SUMMAV {presented} is not an amount")
    usls = list(act.iterfind("ZAP/Z_SL/SL/USL"))
    ids: list[str] = []
    for usl in usls:
        record_id = _text(usl, "IDSERV")
        if record_id is None:
            raise ActUnreadable("a USL has no IDSERV, so it cannot be answered")
        ids.append(record_id)
    if len(set(ids)) != len(ids):
        raise ActUnreadable("two USL have the same IDSERV")

    summed = _sum_presented(usls)
    whole_act: Reason | None = None
    if presented != summed:
        whole_act = Reason("5.1.2", f"SUMMAV {presented} is not the sum of SUMV_USL {summed}: the act is refused")
    refused = set(reject)
    outcomes: list[tuple[str, Reason | None]] = []
    accepted_sum = Decimal(0)
    for record_id, usl in zip(ids, usls):
        reason = whole_act or _record_reason(usl, record_id, period, tariffs, refused)
        if reason is None:
            accepted_sum += _amount(usl, "SUMV_USL")
        outcomes.append((record_id, reason))

    protocol = etree.Element(_P + "ActProtocol", nsmap={None: ACT_PROTOCOL_NS})
    rejected = sum(1 for _, reason in outcomes if reason is not None)
    for tag, value in (("ActMessageId", act_message_id), ("ActNumber", number), ("Insurer", insurer),
                       ("CheckedAt", datetime.now(UTC).isoformat(timespec="seconds")),
                       ("Accepted", str(len(outcomes) - rejected)), ("Rejected", str(rejected)),
                       ("SumAccepted", str(accepted_sum.quantize(_CENT, ROUND_HALF_UP)))):
        etree.SubElement(protocol, _P + tag).text = value
    for record_id, reason in outcomes:
        record = etree.SubElement(protocol, _P + "Record")
        etree.SubElement(record, _P + "RecordId").text = record_id
        etree.SubElement(record, _P + "Outcome").text = "accepted" if reason is None else "rejected"
        if reason is not None:
            holder = etree.SubElement(record, _P + "Reason")
            etree.SubElement(holder, _P + "Code").text = reason.code
            etree.SubElement(holder, _P + "Text").text = reason.text
    return protocol


class _ThenCall:
    """A WSGI body that runs ``then`` once the server has written it (PEP 3333 calls close() after sending)."""

    def __init__(self, body: Iterable[bytes], then: Callable[[], None]) -> None:
        self._body, self._then = body, then

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._then()


class InsurerEmulator(ServedInThread):
    def __init__(self, tariffs: Mapping[str, Decimal], *, answer: Literal["flk", "act-protocol"] = "act-protocol",
                 profile: RegionProfile | None = None, editions: list[Edition] | None = None,
                 specialties: Iterable[str] | None = None, reject: Iterable[str] = (), mnemonic: str = "insurer",
                 gateway_url: str | None = None, token: str | None = None, reply_to: str | None = None,
                 signer: Signer | None = None, trust: TrustStore | None = None,
                 senders: Iterable[Certificate] | None = None, port: int = 0, host: str = "127.0.0.1",
                 reply_timeout: float = 5.0) -> None:
        if (gateway_url is None) != (token is None):
            raise ValueError("answering through the gateway needs both gateway_url and token")
        if answer == "flk" and profile is None:
            raise ValueError("a ФЛК insurer checks against its region's profile: give profile")
        super().__init__()
        self.mnemonic = mnemonic
        self.name = f"{mnemonic}-soap"
        self.answer = answer
        self.profile = profile
        self.editions = editions
        self.specialties = None if specialties is None else frozenset(specialties)
        self.tariffs: dict[str, Decimal] = dict(tariffs)
        self.reject: set[str] = set(reject)
        self.trust = trust
        self.senders = None if senders is None else list(senders)
        self.acts: list[ReceivedAct] = []   # first delivery per idempotency key, with its answer
        self.replies: list[Reply] = []      # every post of an answer to the gateway
        self.other: list[bytes] = []        # envelopes of other message types, taken as they are
        self._gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self._token = token
        self._reply_to = reply_to
        self._signer = signer
        self._reply_timeout = reply_timeout
        self._keys: set[str] = set()
        app = Application([self._service()], tns=INSURER_NS, name="ZdravlinkInsurer",
                          in_protocol=Soap11(validator="soft"), out_protocol=Soap11())
        self._httpd = wsgi_server(host, port, self._replying(WsgiApplication(app)))

    def answer_through(self, gateway_url: str, token: str) -> None:
        """Post answers to this gateway from now on; a test learns the gateway's address only after
        the gateway's configuration (which names this emulator's WSDL) is written."""
        self._gateway_url, self._token = gateway_url.rstrip("/"), token

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/insurer/soap"

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"

    # ---- taking an archive ----------------------------------------------

    def _deliver(self, root: etree._Element | None, environ: dict[str, Any]) -> str:
        if root is None:
            raise Fault(faultcode="Client", faultstring="no envelope in the Deliver request")
        key = environ.get("HTTP_IDEMPOTENCY_KEY", "")
        with self._lock:
            if key and key in self._keys:
                return "duplicate"  # acknowledged, not checked or answered again
            if key:
                self._keys.add(key)  # held while checking, so a concurrent repeat is a duplicate too
        try:
            env, act = self._check(root, key)
        except Exception:
            with self._lock:
                self._keys.discard(key)  # not taken, so a retry under the same key is checked again
            raise
        if act is None:  # not a register: an insurer takes other messages (notices) as they come
            with self._lock:
                self.other.append(etree.tostring(root, encoding="UTF-8"))
            log.info("%s: message %s (%s) -> accepted", self.mnemonic, env.message_id, env.message_type)
            return "accepted"
        with self._lock:
            self.acts.append(act)
        log.info("%s: register %s (message %s) checked: %s", self.mnemonic, act.file_name, env.message_id,
                 self._summary(act.answer))
        if self._gateway_url is not None:
            environ[_REPLY] = self._reply_envelope(env, act.answer)
        return "accepted"

    def _check(self, root: etree._Element, key: str) -> tuple[Envelope, ReceivedAct | None]:
        try:
            validate_envelope(root)
        except Rejection as exc:
            raise Fault(faultcode="Client", faultstring=f"not a Zdravlink envelope: {exc}") from None
        env = Envelope.from_element(root)
        if env.message_type != REGISTER_NS:
            return env, None
        name = env.payload.findtext(_R + "FileName") or ""
        try:
            archive = base64.b64decode(env.payload.findtext(_R + "Content") or "", validate=True)
            signature = base64.b64decode(env.payload.findtext(f"{_R}Signature/{_R}Content") or "", validate=True)
            if self.trust is not None:
                verify_detached(archive, signature, trust=self.trust, signers=self.senders)
            pair = unpack_register(archive, name)
            if self.answer == "flk":
                assert self.profile is not None
                answer_name, content = protocol_file(
                    check_archive(pair, self.profile, editions=self.editions, specialties=self.specialties),
                    date.today())
                answer = etree.Element(_F + "ProtocolFile", nsmap={"fp": FLK_PROTOCOL_NS})
                etree.SubElement(answer, _F + "FileName").text = answer_name
                etree.SubElement(answer, _F + "Content").text = base64.b64encode(content).decode("ascii")
            else:
                answer = check_act(pair.h_file, act_message_id=env.message_id, insurer=self.mnemonic,
                                   tariffs=self.tariffs, reject=self.reject)
        except (ValueError, OmsFileError, SignatureError, ActUnreadable) as exc:
            raise Fault(faultcode="Client", faultstring=f"register refused: {exc}") from None
        return env, ReceivedAct(env.message_id, key, pair.h_file.findtext("SCHET/NSCHET") or "", name, archive,
                                signature, answer, etree.tostring(root, encoding="UTF-8"))

    @staticmethod
    def _summary(answer: etree._Element) -> str:
        if answer.tag == _P + "ActProtocol":
            return f"{answer.findtext(_P + 'Accepted')} accepted, {answer.findtext(_P + 'Rejected')} rejected"
        return f"ФЛК protocol {answer.findtext(_F + 'FileName')}"

    def _service(self) -> type[ServiceBase]:
        insurer = self

        class InsurerService(ServiceBase):
            @rpc(AnyXml, _returns=Unicode)
            def Deliver(ctx: Any, envelope: etree._Element | None) -> str:
                return insurer._deliver(envelope, ctx.transport.req_env)

        return InsurerService

    # ---- answering through the gateway ----------------------------------

    def _reply_envelope(self, act: Envelope, answer: etree._Element) -> Envelope:
        reply = Envelope(message_id=str(uuid.uuid1()), sender=self.mnemonic, recipient=self._reply_to or act.sender,
                         message_type=etree.QName(answer).namespace or "", payload=answer,
                         reference_message_id=act.message_id, test_message=act.test_message)
        if self._signer is not None:
            reply.sender_signature = sign(reply.sender_data_element(), self._signer)
        return reply

    def _replying(self, soap: WsgiApp) -> WsgiApp:
        """The protocol is posted once the SOAP answer is on the wire, so the delivery is never held open."""
        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            def then() -> None:
                reply = environ.get(_REPLY)
                if reply is not None:
                    threading.Thread(target=self._post, args=(reply,), name=f"{self.mnemonic}-reply",
                                     daemon=True).start()

            return _ThenCall(soap(environ, start_response), then)

        return app

    def _post(self, reply: Envelope) -> None:
        act_id = reply.reference_message_id or ""
        try:
            resp = httpx.post(f"{self._gateway_url}/api/v1/messages", json=reply.to_json(),
                              headers={"Authorization": f"Bearer {self._token}", "Idempotency-Key": reply.message_id},
                              timeout=self._reply_timeout)
            result = Reply(reply.message_id, act_id, resp.status_code, resp.text[:2000])
        except Exception as exc:  # an emulator reports, it does not crash: a refused URL, a gateway that is down
            result = Reply(reply.message_id, act_id, None, f"{type(exc).__name__}: {exc}")
        log.info("%s: protocol %s for act message %s -> %s", self.mnemonic, reply.message_id, act_id,
                 result.status if result.status is not None else result.detail)
        with self._lock:
            self.replies.append(result)

"""Emulators of the federal registries ФРМР (medical workers, REST) and ФРМО (medical organisations, SOAP).

The real registries sit behind the EGISZ integration platform and have no public test
stand we can reach from CI, so the gateway's registry adapter is tested against these:
real servers on 127.0.0.1, in the wire shapes of research/formats.md §4, both driven by
one dataset file (``registry_dataset.yaml`` beside this module, fictitious) so a worker's card and the
organisation it points to can never disagree between the two emulators.

ФРМР (``FrmrEmulator``): ``GET /person?snils=<11 digits>[&mo=<OID>]`` with
``Authorization: Bearer <token>``; answers ``{"content": {...person, "cards": [...],
"educationCerts": [...], "accreditation": {...} | null}}`` (camelCase, ISO dates),
``404 {"content": null, "message": "not found"}``, 401 without the right token, 400 for a
СНИЛС that is not 11 digits or fails its check digit. With ``mo`` only that
organisation's cards are returned and a person who never had a card there is 404, as a
registry scoped to the asking organisation would answer.

ФРМО (``FrmoEmulator``): a spyne SOAP 1.1 service, operation ``GetMos(oid?, ogrn?)``
returning a typed ``MedicalOrganization`` (a spyne ComplexModel, so the WSDL describes it
and zeep hands back an object rather than a raw tree). An unknown organisation is a
``soap:Client`` fault "not found", never an empty result: the adapter must not mistake a
registry miss for an organisation without a licence.

Scripts (one answer per request, then ``ok`` for ever) make both misbehave on cue:
ФРМР ``ok``, ``http-NNN``, ``slow:SECONDS`` (wait, then answer), ``drop`` (close the
connection without a response); ФРМО ``ok``, ``server-fault``, ``http-NNN``, ``slow:SECONDS``;
both ``bad-signature`` (the normal answer, changed after it was signed) and
``http-NNN:SECONDS`` (the status with ``Retry-After: SECONDS``).

Given a ``signer``, both sign what the gateway acts on, as the registries' answers are
to be signed (issue 7): ФРМР every 200 and 404 JSON body, by a detached signature over
its bytes in ``X-Signature*`` headers (signing.detached); ФРМО every SOAP reply, results
and faults alike, by a ds:Signature over the soap:Body (``wsu:Id``, as WS-Security
references it) placed in soap:Header. Scripted HTTP statuses, 400 and 401 stay unsigned,
as a proxy's or a gatekeeper's answers would be. Without a signer nothing is signed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from lxml import etree
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from spyne import Application, ServiceBase, rpc
from spyne.model.complex import ComplexModel
from spyne.model.fault import Fault
from spyne.model.primitive import Boolean, Date, Unicode
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from demo.emulators.serving import (
    ServedInThread,
    StartResponse,
    ThreadingHttpServer,
    WsgiApp,
    wsgi_server,
)
from gateway.identifiers import snils_valid
from signing import Signer, sign, sign_octets

log = logging.getLogger("zdravlink.emulator")

FRMO_NS = "urn://zdravlink/emulator/frmo/1.0"
#: The fictitious people and organisations the tests and the demo use.
DEMO_DATASET = Path(__file__).with_name("registry_dataset.yaml")
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
WSU_ID = "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd}Id"
BAD_SIGNATURE = "bad-signature"
_OGRN = re.compile(r"^\d{13}(\d{2})?$")  # ОГРН, or ОГРНИП of a private practitioner


# ---------------------------------------------------------------- dataset

class _Wire(BaseModel):
    """Snake-case attributes for Python, the registries' camelCase on the wire and in the YAML.

    ``extra="forbid"``: a typo in the dataset must fail loading, not silently drop a field
    the tests then believe is there.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Card(_Wire):
    organization: str
    nr_pmu_depart_name: str | None = None
    post_id: int | None = None
    post_name: str
    spec_id: int | None = None
    spec_name: str | None = None
    position_type_name: str | None = None
    rate: float | None = None
    begin_date: dt.date
    end_date: dt.date | None = None
    fire_reason_id: int | None = None


class EducationCert(_Wire):
    cert_serial: str | None = None
    cert_number: str
    exam_date: dt.date | None = None
    pass_date: dt.date
    end_date: dt.date
    spec_id: int | None = None
    spec_name: str
    institution_name: str | None = None


class AccreditationProcedure(_Wire):
    accreditation_kind: str | None = None
    post: str | None = None
    spec: str
    pass_date: dt.date
    end_date: dt.date
    passed: bool
    excluded: bool
    protocol_number: str | None = None


class Accreditation(_Wire):
    reg_number: str
    protocol_date: dt.date | None = None
    protocol_number: str | None = None
    accreditation_procedures: list[AccreditationProcedure] = []


class Worker(_Wire):
    oid: str
    mr: bool = True
    student: bool = False
    snils: str
    last_name: str
    first_name: str
    patronymic: str | None = None
    gender: str | None = None
    birth_date: dt.date | None = None
    cards: list[Card] = []
    education_certs: list[EducationCert] = []
    accreditation: Accreditation | None = None


class Licence(_Wire):
    number: str
    issued_at: dt.date
    valid_to: dt.date | None = None
    revoked: bool = False


class Organization(_Wire):
    oid: str
    name_full: str
    name_short: str | None = None
    ogrn: str
    inn: str
    kpp: str | None = None
    region_id: int | None = None
    delete_date: dt.date | None = None
    delete_reason: str | None = None
    licence: Licence | None = None


class Dataset(_Wire):
    workers: list[Worker]
    organizations: list[Organization]

    def worker(self, snils: str) -> Worker | None:
        return next((w for w in self.workers if w.snils == snils), None)

    def organization(self, oid: str | None = None, ogrn: str | None = None) -> Organization | None:
        """Both keys given must both match: a mismatched pair is a caller's error, not a hit."""
        for org in self.organizations:
            if (oid is None or org.oid == oid) and (ogrn is None or org.ogrn == ogrn):
                return org
        return None


def load_dataset(path: str | Path) -> Dataset:
    """Load and validate the YAML; duplicate keys are refused because lookups take the first."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    ds = Dataset.model_validate(data)
    for what, keys in (("snils", [w.snils for w in ds.workers]), ("oid", [o.oid for o in ds.organizations]),
                       ("ogrn", [o.ogrn for o in ds.organizations])):
        if len(keys) != len(set(keys)):
            raise ValueError(f"duplicate {what} in {path}")
    return ds


def _scripted_status(answer: str) -> tuple[HTTPStatus, list[tuple[str, str]]]:
    """``http-NNN`` or ``http-NNN:SECONDS``: the status, and the Retry-After header for the second form."""
    code, _, retry_after = answer.removeprefix("http-").partition(":")
    return HTTPStatus(int(code)), [("Retry-After", retry_after)] if retry_after else []


# ---------------------------------------------------------------- ФРМР (REST)

@dataclass
class FrmrCall:
    """One request to the ФРМР emulator; ``status`` is None when the script dropped it."""

    path: str
    query: dict[str, str]
    status: int | None
    answer: str
    at: float = field(default_factory=time.time)


class FrmrEmulator(ServedInThread):
    def __init__(self, dataset: Dataset, token: str, port: int = 0, script: Iterable[str] = (),
                 host: str = "127.0.0.1", name: str = "frmr", signer: Signer | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.dataset, self.token, self.name, self.signer = dataset, token, name, signer
        self.script: deque[str] = deque(script)
        self.requests: list[FrmrCall] = []
        self._httpd = ThreadingHttpServer((host, port), self._handler())
        #: Over TLS (a server context; requiring a client certificate makes it an mTLS registry): its URL
        #: names "localhost", the name a demo server certificate carries.
        self.tls = tls
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        """Base URL, as ``BASE_URL_FRMR`` would be configured: endpoints hang below it."""
        return f"https://localhost:{self.port}" if self.tls is not None else f"http://127.0.0.1:{self.port}"

    def _next_answer(self) -> str:
        with self._lock:
            return self.script.popleft() if self.script else "ok"

    def _record(self, call: FrmrCall) -> None:
        with self._lock:
            self.requests.append(call)
        log.info("%s: %s %s -> %s (%s)", self.name, call.path, sorted(call.query), call.status, call.answer)

    def answer(self, path: str, query: dict[str, str], authorization: str) -> tuple[int, dict[str, Any]]:
        """The registry's logic, apart from the transport, so a misbehaving script cannot hide a bug in it."""
        if authorization != f"Bearer {self.token}":
            return 401, {"content": None, "message": "unauthorized"}
        if path != "/person":
            return 404, {"content": None, "message": f"no endpoint {path}"}
        snils = query.get("snils", "")
        if not snils_valid(snils):
            return 400, {"content": None, "message": "snils: 11 digits with a valid check number expected"}
        worker = self.dataset.worker(snils)
        if worker is None:
            return 404, {"content": None, "message": "not found"}
        content = worker.wire()
        mo = query.get("mo")
        if mo is not None:
            content["cards"] = [c for c in content["cards"] if c["organization"] == mo]
            if not content["cards"]:
                return 404, {"content": None, "message": "not found"}
        return 200, {"content": content}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        frmr = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                answer = frmr._next_answer()
                if answer == "drop":
                    frmr._record(FrmrCall(parts.path, query, None, answer))
                    self.close_connection = True
                    return  # the server closes the socket: the client sees no status line at all
                if answer.startswith("slow:"):
                    frmr._sleep(answer)
                extra: list[tuple[str, str]] = []
                if answer.startswith("http-"):
                    status, extra = _scripted_status(answer)
                    code, data = status.value, {"content": None, "message": status.phrase}
                else:
                    code, data = frmr.answer(parts.path, query, self.headers.get("Authorization", ""))
                frmr._record(FrmrCall(parts.path, query, code, answer))
                raw = json.dumps(data, ensure_ascii=False).encode()
                signature: dict[str, str] = {}
                if frmr.signer is not None and code in (200, 404) and not answer.startswith("http-"):
                    signature = sign_octets(raw, frmr.signer)
                    if answer == BAD_SIGNATURE:
                        raw = json.dumps({**data, "message": "altered after signing"}, ensure_ascii=False).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(raw)))
                for header, value in [*signature.items(), *extra]:
                    self.send_header(header, value)
                if code == 401:
                    self.send_header("WWW-Authenticate", 'Bearer realm="frmr"')
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: object) -> None:
                pass  # the emulator logs through logging, without personal data

        return Handler


# ---------------------------------------------------------------- ФРМО (SOAP)

class MoLicence(ComplexModel):
    __namespace__ = FRMO_NS
    __type_name__ = "Licence"
    _type_info = [
        ("number", Unicode(min_occurs=1)),
        ("issuedAt", Date(min_occurs=1)),
        ("validTo", Date(min_occurs=0, nillable=True)),
        ("revoked", Boolean(min_occurs=1)),
    ]


class MedicalOrganization(ComplexModel):
    """The 1461 record fields the gateway checks, plus the licence that 1461 itself lacks (formats.md §4.2)."""

    __namespace__ = FRMO_NS
    _type_info = [
        ("oid", Unicode(min_occurs=1)),
        ("nameFull", Unicode(min_occurs=1)),
        ("nameShort", Unicode(min_occurs=0)),
        ("ogrn", Unicode(min_occurs=1)),
        ("inn", Unicode(min_occurs=1)),
        ("kpp", Unicode(min_occurs=0)),
        ("deleteDate", Date(min_occurs=0, nillable=True)),
        ("deleteReason", Unicode(min_occurs=0, nillable=True)),
        ("licence", MoLicence.customize(min_occurs=0, nillable=True)),
    ]


def _sign_body(reply: bytes, signer: Signer, alter: bool) -> bytes:
    """The SOAP reply with a ds:Signature over its soap:Body in soap:Header; ``alter`` then changes the Body."""
    envelope = etree.fromstring(reply, etree.XMLParser(resolve_entities=False, no_network=True))
    body = envelope.find(f"{{{SOAP11_NS}}}Body")
    if body is None:
        raise ValueError("spyne's reply has no soap:Body")
    body.set(WSU_ID, f"body-{uuid.uuid4().hex}")
    header = envelope.find(f"{{{SOAP11_NS}}}Header")
    if header is None:
        header = etree.Element(f"{{{SOAP11_NS}}}Header")
        envelope.insert(0, header)
    header.append(sign(body, signer, smev=False))
    if alter:
        text = next(el for el in body.iter() if (el.text or "").strip())
        text.text = f"{text.text} (altered after signing)"
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _mo(org: Organization) -> MedicalOrganization:
    lic = org.licence
    return MedicalOrganization(
        oid=org.oid, nameFull=org.name_full, nameShort=org.name_short, ogrn=org.ogrn, inn=org.inn, kpp=org.kpp,
        deleteDate=org.delete_date, deleteReason=org.delete_reason,
        licence=None if lic is None else MoLicence(number=lic.number, issuedAt=lic.issued_at,
                                                   validTo=lic.valid_to, revoked=lic.revoked))


@dataclass
class FrmoCall:
    """One POST to the ФРМО emulator; oid/ogrn/outcome stay empty when the script answered before SOAP."""

    answer: str
    oid: str | None = None
    ogrn: str | None = None
    outcome: str = ""
    at: float = field(default_factory=time.time)


_CALL = "zdravlink.frmo.call"  # the FrmoCall, handed from the WSGI layer to the spyne method


class FrmoEmulator(ServedInThread):
    def __init__(self, dataset: Dataset, port: int = 0, script: Iterable[str] = (),
                 host: str = "127.0.0.1", name: str = "frmo", signer: Signer | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.dataset, self.name, self.signer = dataset, name, signer
        self.script: deque[str] = deque(script)
        self.requests: list[FrmoCall] = []
        app = Application([self._service()], tns=FRMO_NS, name="FrmoEmulator",
                          in_protocol=Soap11(validator="soft"), out_protocol=Soap11())
        self._httpd = wsgi_server(host, port, self._scripted(WsgiApplication(app)))
        self.tls = tls  # as FrmrEmulator's; the WSDL's own address still says http: clients call url
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/frmo/soap"
        return f"http://127.0.0.1:{self.port}/frmo/soap"

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"

    def _scripted(self, soap: WsgiApp) -> WsgiApp:
        """Answers no SOAP stack would give itself (bare HTTP statuses, delays) happen before spyne, signing after."""
        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            if environ["REQUEST_METHOD"] != "POST":
                return soap(environ, start_response)  # the WSDL
            with self._lock:
                call = FrmoCall(self.script.popleft() if self.script else "ok")
                self.requests.append(call)
            if call.answer.startswith("http-"):
                status, extra = _scripted_status(call.answer)
                body = status.phrase.encode()
                call.outcome = str(status.value)
                start_response(f"{status.value} {status.phrase}",
                               [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra])
                return [body]
            if call.answer.startswith("slow:"):
                self._sleep(call.answer)
            environ[_CALL] = call
            if self.signer is None:
                return soap(environ, start_response)
            return self._signed(soap, environ, start_response, self.signer, call.answer == BAD_SIGNATURE)

        return app

    @staticmethod
    def _signed(soap: WsgiApp, environ: dict[str, Any], start_response: StartResponse, signer: Signer,
                alter: bool) -> Iterable[bytes]:
        """spyne's reply with its soap:Body signed: spyne has no hook between serialising and sending.

        The whole reply is collected (spyne may call start_response only while its
        iterable is consumed), signed, re-serialised, and sent with a new Content-Length.
        """
        head: list[Any] = []
        chunks: list[bytes] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            head[:] = [status, headers]
            return chunks.append

        result = soap(environ, capture)
        try:
            chunks.extend(result)
        finally:
            getattr(result, "close", lambda: None)()
        body = _sign_body(b"".join(chunks), signer, alter)
        status, headers = head
        start_response(status, [(k, v) for k, v in headers if k.lower() != "content-length"]
                       + [("Content-Length", str(len(body)))])
        return [body]

    def _lookup(self, call: FrmoCall, oid: str | None, ogrn: str | None) -> MedicalOrganization:
        call.oid, call.ogrn = oid or None, ogrn or None
        if call.answer == "server-fault":
            call.outcome = "server-fault"
            raise Fault(faultcode="Server", faultstring="registry unavailable, try again later")
        if not call.oid and not call.ogrn:
            call.outcome = "client-fault"
            raise Fault(faultcode="Client", faultstring="oid or ogrn required")
        if call.ogrn is not None and not _OGRN.match(call.ogrn):
            call.outcome = "client-fault"
            raise Fault(faultcode="Client", faultstring="ogrn: 13 digits expected (15 for an ОГРНИП)")
        org = self.dataset.organization(call.oid, call.ogrn)
        if org is None:
            call.outcome = "not found"
            raise Fault(faultcode="Client", faultstring="not found")
        call.outcome = "found"
        log.info("%s: GetMos -> %s", self.name, org.oid)
        return _mo(org)

    def _service(self) -> type[ServiceBase]:
        frmo = self

        class FrmoService(ServiceBase):
            @rpc(Unicode(min_occurs=0), Unicode(min_occurs=0), _returns=MedicalOrganization,
                 _out_variable_name="mo")
            def GetMos(ctx: Any, oid: str | None, ogrn: str | None) -> MedicalOrganization:
                return frmo._lookup(ctx.transport.req_env[_CALL], oid, ogrn)

        return FrmoService

"""The SMEV 3 SOAP service at ``/smev/1.1``: spyne for SOAP, the official WSDL for clients.

spyne reads the SOAP 1.1 envelope and dispatches on the body element; each operation
hands that element to ``SmevExchange`` and returns its answer element as the body, so
answers are the schema's own elements rather than spyne's models (``SmevSoap11``).
The WSDL served at ``?wsdl`` is the operator's file with only the address and schema
links rewritten, because clients generate their stubs from it and must get exactly
what real SMEV publishes. Before spyne sees a request, the WSGI front caps its size
and parses it with the hardened parser (no DTD, no entities), which spyne's own
parser is not configured to refuse.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import Any

from lxml import etree
from spyne import AnyXml, Application, ServiceBase, rpc
from spyne.model.fault import Fault
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from adapters.rest.tls import peer_of_scope
from adapters.soap.smev_exchange import OPERATIONS, Audited, SmevExchange
from adapters.soap.smev_faults import SmevFault
from adapters.soap.smev_schema import FILES, SERVICE_NS, SOAP_ENV_NS, TYPES_NS, WSDL_FILE, smev_dir
from gateway import errors
from gateway.errors import Rejection
from gateway.masking import mask_text
from gateway.xmlsafe import free_prefix, parse_xml
from zdravlink.errors import Interrupt

log = logging.getLogger("zdravlink.soap")

StartResponse = Callable[..., Any]
_XML = "text/xml; charset=utf-8"


class SmevSoapFault(Fault, Interrupt):
    """A spyne Fault that carries the SMEV fault to send."""

    def __init__(self, smev: SmevFault) -> None:
        super().__init__(faultcode="Server" if smev.server else "Client", faultstring=smev.faultstring)
        self.smev = smev


class SmevSoap11(Soap11):
    """SOAP 1.1 whose body is the exchange's answer element, and whose faults are SMEV's."""

    def serialize(self, ctx: Any, message: Any) -> None:
        self.event_manager.fire_event("before_serialize", ctx)
        if ctx.out_error is not None:
            error = ctx.out_error
            smev = error.smev if isinstance(error, SmevSoapFault) else SmevFault(
                "InvalidContent" if str(error.faultcode).startswith("Client") else "SMEVFailure",
                errors.SOAP_REQUEST_INVALID if str(error.faultcode).startswith("Client") else errors.GATEWAY_FAILURE,
                None, str(error.faultstring))
            ctx.out_document = smev.envelope()
        else:
            answer = ctx.out_object[0]  # may carry a payload that declares ``soap`` for a namespace of its own
            soap = free_prefix("soap", SOAP_ENV_NS, answer)
            envelope = etree.Element(f"{{{SOAP_ENV_NS}}}Envelope", nsmap={soap: SOAP_ENV_NS})
            etree.SubElement(envelope, f"{{{SOAP_ENV_NS}}}Body").append(answer)
            ctx.out_document = envelope
        self.event_manager.fire_event("after_serialize", ctx)

    def fault_to_http_response_code(self, fault: Any) -> str:
        return "500 Internal Server Error"  # SOAP 1.1 over HTTP: every fault is a 500


def _operation(ctx: Any, name: str) -> Any:
    """Run one operation for spyne: the exchange's answer, or a SmevSoapFault."""
    exchange: SmevExchange = ctx.app.exchange
    env = ctx.transport.req_env
    remote = env.get("REMOTE_ADDR")
    action = env.get("HTTP_SOAPACTION", "").strip().strip('"')
    try:
        if action and action != f"urn:{name}":
            rej = Rejection(errors.SOAP_REQUEST_INVALID, f"SOAPAction {action!r} does not match the body element "
                            f"{name}Request (urn:{name})", "SOAPAction")
            exchange.intake.refused(rej, source="soap", remote=remote, caller=None, env=None)
            raise Audited(rej)
        scheme, _, token = env.get("HTTP_AUTHORIZATION", "").partition(" ")
        size = int(env["CONTENT_LENGTH"]) if str(env.get("CONTENT_LENGTH", "")).isdigit() else 0
        return exchange.handle(name, ctx.in_body_doc, token.strip() if scheme.lower() == "bearer" else None, remote,
                               peer=peer_of_scope(env.get("asgi.scope")), size=size)
    except Audited as exc:
        if exc.rejection.extra.get("retry_after"):  # RATE_LIMITED: the fault, and when to send again
            ctx.transport.resp_headers["Retry-After"] = str(exc.rejection.extra["retry_after"])
        raise SmevSoapFault(SmevFault.from_rejection(exc.rejection, name)) from None
    except Exception as exc:  # a fault, never a crash: the caller retries SMEVFailure
        log.exception("SMEV %s failed", name)
        rej = Rejection(errors.GATEWAY_FAILURE, f"the gateway could not process the request: {type(exc).__name__}",
                        None, status=500)
        try:
            exchange.intake.refused(rej, source="soap", remote=remote, caller=None, env=None)
        except Exception:
            log.exception("could not audit the failure")
        raise SmevSoapFault(SmevFault.from_rejection(rej, name)) from None


def _service_class() -> type[ServiceBase]:
    """One spyne method per SMEV operation, named by its request and response elements."""
    def bind(name: str) -> Any:
        def method(ctx: Any, _body: Any) -> Any:
            return _operation(ctx, name)
        method.__name__ = name
        return rpc(AnyXml, _body_style="bare", _in_message_name=f"{name}Request", _returns=AnyXml,
                   _out_message_name=f"{name}Response", _operation_name=name)(method)

    return type("SMEVMessageExchangeService", (ServiceBase,), {name: bind(name) for name in OPERATIONS})


class SmevWsgi:
    """The WSGI application: WSDL and XSD on GET, SOAP on POST (through spyne)."""

    def __init__(self, exchange: SmevExchange, max_body_bytes: int) -> None:
        app = Application([_service_class()], tns=TYPES_NS, name="SMEVMessageExchangeService",
                          in_protocol=SmevSoap11(), out_protocol=SmevSoap11())
        app.exchange = exchange
        self.exchange = exchange
        self.spyne = WsgiApplication(app)
        self.max_body_bytes = max_body_bytes
        self._wsdl = (smev_dir() / WSDL_FILE).read_text(encoding="utf-8")
        self._xsd = {name: (smev_dir() / file).read_text(encoding="utf-8") for name, file in FILES.items()}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        query = environ.get("QUERY_STRING", "")
        if method == "GET":
            return self._document(environ, query, start_response)
        if method != "POST":
            start_response("405 Method Not Allowed", [("Allow", "GET, POST"), ("Content-Type", "text/plain")])
            return [b"POST SOAP 1.1 requests here; GET ?wsdl for the WSDL\n"]
        try:
            body = self._read(environ)
            operation = _operation_of(parse_xml(body, field="soap:Envelope"))
        except Rejection as rej:
            self.exchange.intake.refused(rej, source="soap", remote=environ.get("REMOTE_ADDR"), caller=None, env=None)
            log.info("refused SOAP request: %s %s", rej.code, mask_text(rej.detail))
            return _fault(SmevFault.from_rejection(rej, "SendRequest"), start_response)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        try:
            return list(self.spyne(environ, start_response))
        except Exception as exc:  # spyne's own failures: a fault of the official schema, never a bare 500
            log.exception("SMEV %s failed inside spyne", operation)
            rej = Rejection(errors.GATEWAY_FAILURE, f"the gateway could not process the request: "
                            f"{type(exc).__name__}", None, status=500)
            return _fault(SmevFault.from_rejection(rej, operation), start_response, exc_info=True)

    def _read(self, environ: dict[str, Any]) -> bytes:
        declared = environ.get("CONTENT_LENGTH") or ""
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise Rejection(errors.BODY_TOO_LARGE, f"body of {declared} bytes exceeds the limit of "
                            f"{self.max_body_bytes}", "body", status=413)
        # Read exactly the declared length: a server's input stream need not end at the body's end.
        data = environ["wsgi.input"].read(int(declared) if declared.isdigit() else self.max_body_bytes + 1)
        if len(data) > self.max_body_bytes:
            raise Rejection(errors.BODY_TOO_LARGE, f"body exceeds the limit of {self.max_body_bytes} bytes", "body",
                            status=413)
        return data

    def _document(self, environ: dict[str, Any], query: str, start_response: StartResponse) -> Iterable[bytes]:
        base = self._address(environ)
        if query.lower() == "wsdl":
            text = self._wsdl.replace('location="http://localhost:8080/transport_1_0_1/"', f'location="{base}"')
            text = _link_schemas(text, base)
        elif query.startswith("xsd=") and query[4:] in self._xsd:
            text = _link_schemas(self._xsd[query[4:]], base)
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"GET {base}?wsdl for the WSDL of {SERVICE_NS}\n".encode()]
        start_response("200 OK", [("Content-Type", _XML)])
        return [text.encode("utf-8")]

    @staticmethod
    def _address(environ: dict[str, Any]) -> str:
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path}"


def _operation_of(root: etree._Element) -> str:
    """The operation a SOAP 1.1 request asks for: its Body must hold exactly one element, ``<Op>Request``."""
    if root.tag != f"{{{SOAP_ENV_NS}}}Envelope":
        raise Rejection(errors.SOAP_REQUEST_INVALID, f"the root is {root.tag}, not a SOAP 1.1 Envelope",
                        "soap:Envelope")
    body = root.find(f"{{{SOAP_ENV_NS}}}Body")
    if body is None:
        raise Rejection(errors.SOAP_REQUEST_INVALID, "the Envelope has no soap:Body", "soap:Body")
    children = [c for c in body if isinstance(c.tag, str)]
    if len(children) != 1:
        raise Rejection(errors.SOAP_REQUEST_INVALID, f"soap:Body must hold exactly one request element, "
                        f"not {len(children)}", "soap:Body")
    name = etree.QName(children[0]).localname
    return name.removesuffix("Request") if name.removesuffix("Request") in OPERATIONS else "SendRequest"


def _fault(fault: SmevFault, start_response: StartResponse, exc_info: bool = False) -> list[bytes]:
    import sys

    start_response("500 Internal Server Error", [("Content-Type", _XML)], sys.exc_info() if exc_info else None)
    return [etree.tostring(fault.envelope(), encoding="UTF-8", xml_declaration=True)]


def _link_schemas(text: str, base: str) -> str:
    for name, file in FILES.items():
        text = text.replace(f'schemaLocation="{file}"', f'schemaLocation="{base}?xsd={name}"')
    return text

"""A partner system that takes pushed envelopes through its own SOAP 1.1 service.

Used by the demo and by the tests as a real server on 127.0.0.1: a spyne service
with a WSDL at ``?wsdl``, so the gateway's zeep client meets the WSDL, the SOAPAction
and the faults of a real SOAP stack rather than a hand-written imitation. Like the
REST recipient it drops repeats by ``Idempotency-Key`` and answers them as accepted.
A script of answers misbehaves on cue, one answer per delivery, then ``ok`` for ever:

``ok``, ``server-fault`` (soap:Server), ``client-fault`` (soap:Client),
``http-NNN`` (a bare HTTP status, no SOAP at all, as a proxy in front would answer),
``slow:SECONDS`` (wait, then accept: the gateway's timeout fires first).
"""
from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from lxml import etree
from spyne import Application, ServiceBase, rpc
from spyne.model.fault import Fault
from spyne.model.primitive import AnyXml, Unicode
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from demo.emulators.serving import ServedInThread, wsgi_server

log = logging.getLogger("zdravlink.emulator")

PARTNER_NS = "urn://zdravlink/partner/1.0"
_ANSWER = "zdravlink.answer"  # the scripted answer, handed from the WSGI layer to the spyne method

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass
class Call:
    """One POST to the service, whatever it was answered."""

    message_id: str
    idempotency_key: str
    attempt: str
    answer: str
    at: float = field(default_factory=time.time)


@dataclass
class Received:
    """One accepted delivery: the envelope element as the partner's SOAP stack parsed it."""

    message_id: str
    idempotency_key: str
    attempt: str
    soap_action: str
    envelope: bytes
    at: float = field(default_factory=time.time)


class SoapPartner(ServedInThread):
    def __init__(self, port: int = 0, script: Iterable[str] = (), name: str = "soap-partner",
                 host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.name = name
        self.script: deque[str] = deque(script)
        self.calls: list[Call] = []          # every POST, repeats and misbehaviour included
        self.received: list[Received] = []   # first accepted delivery per idempotency key
        self.wsdl_fetches = 0                # GETs; the WSDL is all the service serves to them
        self._keys: set[str] = set()
        app = Application([self._service()], tns=PARTNER_NS, name="ZdravlinkPartner",
                          in_protocol=Soap11(validator="soft"), out_protocol=Soap11())
        self._httpd = wsgi_server(host, port, self._scripted(WsgiApplication(app)))
        #: Over TLS (a server context; one that requires a client certificate makes an mTLS partner), its
        #: URL names "localhost", the name a demo server certificate carries. The WSDL's own address still
        #: says http (wsgiref does not know it is behind TLS): give the channel the url.
        self.tls = tls
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/partner/soap"
        return f"http://127.0.0.1:{self.port}/partner/soap"

    @property
    def wsdl_url(self) -> str:
        return self.url + "?wsdl"

    def _next_answer(self, environ: dict[str, Any]) -> str:
        with self._lock:
            answer = self.script.popleft() if self.script else "ok"
            self.calls.append(Call(environ.get("HTTP_X_ZDRAVLINK_MESSAGE_ID", ""),
                                   environ.get("HTTP_IDEMPOTENCY_KEY", ""),
                                   environ.get("HTTP_X_ZDRAVLINK_ATTEMPT", ""), answer))
        return answer

    def _scripted(self, soap: WsgiApp) -> WsgiApp:
        """Misbehaviour that no SOAP stack would produce itself happens here, before spyne sees the request."""
        def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            if environ["REQUEST_METHOD"] != "POST":
                with self._lock:
                    self.wsdl_fetches += 1
                return soap(environ, start_response)
            answer = self._next_answer(environ)
            log.info("%s: message %s attempt %s -> %s", self.name, environ.get("HTTP_X_ZDRAVLINK_MESSAGE_ID"),
                     environ.get("HTTP_X_ZDRAVLINK_ATTEMPT"), answer)
            if answer.startswith("http-"):
                status = HTTPStatus(int(answer.removeprefix("http-")))
                body = status.phrase.encode()
                start_response(f"{status.value} {status.phrase}",
                               [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
                return [body]
            if answer.startswith("slow:"):
                time.sleep(float(answer.removeprefix("slow:")))
                answer = "ok"
            environ[_ANSWER] = answer
            return soap(environ, start_response)

        return app

    def _accept(self, envelope: etree._Element | None, env: dict[str, Any]) -> str:
        if envelope is None:
            raise Fault(faultcode="Client", faultstring="no envelope in the Deliver request")
        item = Received(message_id=env.get("HTTP_X_ZDRAVLINK_MESSAGE_ID", ""),
                        idempotency_key=env.get("HTTP_IDEMPOTENCY_KEY", ""),
                        attempt=env.get("HTTP_X_ZDRAVLINK_ATTEMPT", ""),
                        soap_action=env.get("HTTP_SOAPACTION", ""),
                        envelope=etree.tostring(envelope, encoding="UTF-8"))
        with self._lock:
            if item.idempotency_key and item.idempotency_key in self._keys:
                return "duplicate"  # acknowledged, not processed again
            self._keys.add(item.idempotency_key)
            self.received.append(item)
        return "accepted"

    def _service(self) -> type[ServiceBase]:
        partner = self

        class PartnerService(ServiceBase):
            @rpc(AnyXml, _returns=Unicode)
            def Deliver(ctx: Any, envelope: etree._Element | None) -> str:
                env = ctx.transport.req_env
                answer = env[_ANSWER]
                if answer == "server-fault":
                    raise Fault(faultcode="Server", faultstring="partner database unavailable, try again later")
                if answer == "client-fault":
                    raise Fault(faultcode="Client", faultstring="envelope refused: unknown message type")
                return partner._accept(envelope, env)

        return PartnerService

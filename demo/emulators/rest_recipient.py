"""A recipient system (an MIS, an insurer) that takes pushed envelopes over HTTP.

Used by the demo and by the tests as a real server on 127.0.0.1. It behaves as a
well-made recipient should: it drops repeats by ``Idempotency-Key`` and answers 200
to them again. A script of answers (``503, 503, 200``) makes it misbehave on cue.
Given a trust store and the gateway's certificate, it checks the gateway's signature
on every message with the public API of ``signing``, as a real recipient would.
"""
from __future__ import annotations

import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from demo.emulators.serving import ServedInThread, ThreadingHttpServer
from gateway.envelope import DSIG_NS, Envelope
from gateway.schemas import ENVELOPE_NS
from gateway.xmlsafe import parse_xml
from signing import Certificate, SignatureError, TrustStore, verify

log = logging.getLogger("zdravlink.emulator")


@dataclass
class Received:
    message_id: str
    idempotency_key: str
    content_type: str
    body: bytes
    attempt: str
    signature: str = "not checked"
    at: float = field(default_factory=time.time)


def check_gateway_signature(body: bytes, content_type: str, trust: TrustStore, gateway: Certificate) -> str:
    """"OK <algorithm>" or the refusal code, for the signature the gateway put on a delivery."""
    try:
        if content_type.startswith("application/json"):
            doc = Envelope.from_json(json.loads(body)).to_element()
        else:
            doc = parse_xml(body)
    except Exception as exc:  # an emulator reports, it does not crash
        return f"UNREADABLE: {exc}"
    z, ds = "{%s}" % ENVELOPE_NS, "{%s}" % DSIG_NS
    sig = doc.find(f"{z}GatewaySignature/{ds}Signature")
    if sig is None:
        return "UNSIGNED"
    try:
        v = verify(sig, document=doc, trust=trust, expected=doc.find(z + "SenderProvidedData"), signers=[gateway])
    except SignatureError as exc:
        return exc.code
    return f"OK {v.algorithm.name}"


class RecipientServer(ServedInThread):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "recipient",
                 script: Iterable[int] = (), delay: float = 0.0, trust: TrustStore | None = None,
                 gateway: Certificate | None = None, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.name = name
        self.trust, self.gateway = trust, gateway
        self.script: deque[int] = deque(script)
        self.delay = delay
        #: While set, every request is answered with this status (a recipient in trouble for a while).
        self.answer_with: int | None = None
        self.requests: list[Received] = []      # every request, repeats included
        self.accepted: dict[str, Received] = {}  # first delivery per idempotency key
        self.repeats = 0  # deliveries acknowledged again for a key already accepted
        self._httpd = ThreadingHttpServer((host, port), self._handler())
        #: Over TLS (a server context; one that requires a client certificate makes an mTLS recipient), its
        #: URL names "localhost", the name a demo server certificate carries.
        self.tls = tls
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True, do_handshake_on_connect=False)
        #: The subject of the client certificate of each request (TLS), in order.
        self.client_subjects: list[str | None] = []

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://localhost:{self.port}/zdravlink/inbox"
        return f"http://127.0.0.1:{self.port}/zdravlink/inbox"

    def drain_accepted(self) -> list[str]:
        """The keys accepted since the last call, forgotten here with their bodies: a long run keeps no
        bodies (a million signed 2 KB messages would be gigabytes). A repeat after a drain counts again."""
        with self._lock:
            keys = list(self.accepted)
            self.accepted.clear()
            self.requests.clear()
            return keys

    def _answer(self, item: Received) -> int:
        with self._lock:
            self.requests.append(item)
            code = self.answer_with or (self.script.popleft() if self.script else 200)
            if code < 300:
                if item.idempotency_key in self.accepted:
                    self.repeats += 1
                    return 200  # a repeat: acknowledged, not processed again
                self.accepted[item.idempotency_key] = item
            return code

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):  # the handshake in this request's thread
                    self.request.settimeout(10)
                    self.request.do_handshake()
                super().setup()

            def do_POST(self) -> None:
                if isinstance(self.connection, ssl.SSLSocket):
                    peer = self.connection.getpeercert()
                    server.client_subjects.append(
                        ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn) if peer else None)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if server.delay:
                    time.sleep(server.delay)
                item = Received(
                    message_id=self.headers.get("X-Zdravlink-Message-Id", ""),
                    idempotency_key=self.headers.get("Idempotency-Key", ""),
                    content_type=self.headers.get("Content-Type", ""),
                    body=body,
                    attempt=self.headers.get("X-Zdravlink-Attempt", ""),
                )
                if server.trust is not None and server.gateway is not None:
                    item.signature = check_gateway_signature(body, item.content_type, server.trust, server.gateway)
                code = server._answer(item)
                log.info("%s: message %s attempt %s -> %d (%d bytes, gateway signature: %s)", server.name,
                         item.message_id, item.attempt, code, len(body), item.signature)
                self._reply(code, {"received": item.message_id, "status": code})

            def do_GET(self) -> None:
                with server._lock:
                    data = {"accepted": sorted(server.accepted), "requests": len(server.requests)}
                self._reply(200, data)

            def _reply(self, code: int, data: dict[str, object]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: object) -> None:
                pass  # the emulator logs through logging, without bodies

        return Handler

"""A recipient system (an MIS, an insurer) that takes pushed envelopes over HTTP.

Used by the demo and by the tests as a real server on 127.0.0.1. It behaves as a
well-made recipient should: it drops repeats by ``Idempotency-Key`` and answers 200
to them again. A script of answers (``503, 503, 200``) makes it misbehave on cue.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable

log = logging.getLogger("zdravlink.emulator")


@dataclass
class Received:
    message_id: str
    idempotency_key: str
    content_type: str
    body: bytes
    attempt: str
    at: float = field(default_factory=time.time)


class RecipientServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "recipient",
                 script: Iterable[int] = (), delay: float = 0.0) -> None:
        self.name = name
        self.script: deque[int] = deque(script)
        self.delay = delay
        self.requests: list[Received] = []      # every request, repeats included
        self.accepted: dict[str, Received] = {}  # first delivery per idempotency key
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/zdravlink/inbox"

    def set_script(self, codes: Iterable[int]) -> None:
        with self._lock:
            self.script = deque(codes)

    def start(self) -> "RecipientServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, item: Received) -> int:
        with self._lock:
            self.requests.append(item)
            code = self.script.popleft() if self.script else 200
            if code < 300:
                if item.idempotency_key in self.accepted:
                    return 200  # a repeat: acknowledged, not processed again
                self.accepted[item.idempotency_key] = item
            return code

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
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
                code = server._answer(item)
                log.info("%s: message %s attempt %s -> %d (%d bytes)", server.name, item.message_id, item.attempt,
                         code, len(body))
                self._reply(code, {"received": item.message_id, "status": code})

            def do_GET(self) -> None:  # noqa: N802
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

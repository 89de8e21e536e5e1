"""Running an emulator's server in a thread: what every partner emulator needs, once.

The short poll interval keeps stop() well under a second; handler threads are daemons
so stop() never waits for a scripted ``slow:`` answer, and ``_stopping`` wakes such a
sleep early. The listen backlog is 64, not socketserver's 5: under a few dozen
concurrent calls the default resets connections, which a test would misread as the
gateway's fault. Accepted connections have Nagle's algorithm off (TCP_NODELAY), as every
production HTTP server has: http.server writes the headers and the body in two sends, and with
Nagle on the body waited for the client's delayed ACK of the headers — 44 ms on every answer, which
benchmarks read as the gateway's delivery latency.
"""
from __future__ import annotations

import socket
import threading
from collections import deque
from collections.abc import Callable, Iterable
from http.server import ThreadingHTTPServer
from socketserver import ThreadingMixIn
from typing import Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

BACKLOG = 64

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _NoDelay:
    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()  # type: ignore[misc]
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


class ThreadingWsgiServer(_NoDelay, ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = BACKLOG


class ThreadingHttpServer(_NoDelay, ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = BACKLOG


class QuietWsgiHandler(WSGIRequestHandler):
    def log_message(self, *_: object) -> None:
        pass  # emulators log through logging, without bodies


def wsgi_server(host: str, port: int, app: WsgiApp) -> ThreadingWsgiServer:
    return make_server(host, port, app, server_class=ThreadingWsgiServer, handler_class=QuietWsgiHandler)


class ServedInThread:
    """start/stop/context manager for the socketserver a subclass puts in ``_httpd``, served in a thread
    named ``name``."""

    _httpd: Any
    _thread: threading.Thread | None = None
    name = "emulator"
    script: deque[Any]  # what to answer next, one entry per request, then normal answers

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def set_script(self, answers: Iterable[Any]) -> None:
        with self._lock:
            self.script = deque(answers)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> Self:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(1.0)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _sleep(self, answer: str) -> None:
        """A scripted ``slow:SECONDS`` answer, cut short by stop()."""
        self._stopping.wait(float(answer.removeprefix("slow:")))

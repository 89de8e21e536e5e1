"""MLLP (Minimal Lower Layer Protocol, release 1): how HL7 v2 messages travel over TCP.

A message is framed as ``0x0B`` + message + ``0x1C 0x0D``; the peer waits for the ACK
of each message on the same connection before it sends the next one. MLLP has no
length prefix, so a reader must scan for the end bytes, and must survive what real
senders put on the wire: frames cut anywhere by TCP, several frames in one read,
stray NUL/CR/LF between frames, and a sender that restarts a frame it never finished.

Logs here name the peer and byte counts only: a message carries patient data.

The listener is open to anyone who reaches its port before a lab is recognised, so
it keeps its memory bounded whatever peers do: at most ``max_connections`` at once, a
frame no larger than ``max_frame_bytes`` (by default the API's body limit), a frame
begun must end within ``frame_timeout`` seconds, a silent connection is closed after
``idle_timeout``, and all unfinished frames together may hold ``max_buffered_bytes``.
Each refusal closes the connection, is logged with the peer, and is counted in
``zl_mllp_refused_total{reason}``.

Over TLS (``tls``), the client's certificate is checked by ``on_connect`` right after the
handshake (a refused one closes the connection), and is the connection's
``CONNECTION_PEER`` while its messages are handled, so that the lab a message names
can be held to its own certificate (``adapters.hl7v2.lab_intake``).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import Awaitable, Callable
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass

from gateway.tls import PeerCertificate, ServerContext
from zdravlink.errors import ExchangeError

log = logging.getLogger(__name__)

START, END, CR = b"\x0b", b"\x1c", b"\x0d"
_TERMINATOR = END + CR

#: Well above any laboratory message, low enough that one peer cannot exhaust memory.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Small on purpose: large frames then span reads, the path that must be right anyway.
READ_BYTES = 4096

#: ``handle(message, peer)`` returns the unframed ACK for one unframed message.
Handler = Callable[[bytes, str], Awaitable[bytes]]
#: ``on_error(message, exc)`` returns the ACK (an AR) when the handler raised.
ErrorFallback = Callable[[bytes, Exception], bytes]


#: The TLS client certificate of the connection whose message is being handled (None: none, or plain MLLP).
CONNECTION_PEER: ContextVar[PeerCertificate | None] = ContextVar("zl_mllp_peer", default=None)
#: ``on_connect(peer, certificate)``: False closes the connection (the callee audits why).
ConnectCheck = Callable[[str, PeerCertificate | None], bool]


def frame(message: bytes) -> bytes:
    return START + message + _TERMINATOR


class FrameTooLarge(ExchangeError):
    """A frame outgrew ``max_frame_bytes``; the stream cannot be resynchronised safely."""


class FrameReader:
    """Splits an MLLP byte stream into messages; pure, so every cut point can be tested.

    ``discarded`` counts bytes thrown away (between frames, or in a frame abandoned
    because a new ``0x0B`` began before it ended) and ``abandoned`` the frames lost
    that way, so that the caller can log that a sender misbehaves. A lone ``0x1C``
    not followed by ``0x0D`` is message content: only the pair ends a frame.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.discarded = 0
        self.abandoned = 0
        self._frame = bytearray()
        self._in_frame = False

    @property
    def buffered(self) -> int:
        """Bytes of the unfinished frame held now."""
        return len(self._frame)

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Complete messages found so far, in order; a partial frame stays buffered."""
        messages: list[bytes] = []
        pos, size = 0, len(data)
        while pos < size:
            if not self._in_frame:
                start = data.find(START, pos)
                if start < 0:
                    self.discarded += size - pos
                    break
                self.discarded += start - pos
                self._in_frame = True
                pos = start + 1
                continue
            # The end pair may have been cut by the previous read: 0x1C then, 0x0D now.
            if pos == 0 and data[:1] == CR and self._frame.endswith(END):
                del self._frame[-1]
                messages.append(self._finish())
                pos = 1
                continue
            end = data.find(_TERMINATOR, pos)
            restart = data.find(START, pos, end if end >= 0 else size)
            if restart >= 0:
                self.abandoned += 1
                self.discarded += len(self._frame) + restart - pos
                self._frame.clear()
                pos = restart + 1
                continue
            if end < 0:
                self._append(data[pos:])
                break
            self._append(data[pos:end])
            messages.append(self._finish())
            pos = end + len(_TERMINATOR)
        return messages

    def _append(self, chunk: bytes) -> None:
        self._frame += chunk
        # A trailing 0x1C may be the first half of the end pair, so it is not counted yet.
        held = len(self._frame) - (1 if self._frame.endswith(END) else 0)
        if held > self.max_frame_bytes:
            self._frame.clear()
            self._in_frame = False
            raise FrameTooLarge(f"MLLP frame exceeds {self.max_frame_bytes} bytes")

    def _finish(self) -> bytes:
        message = bytes(self._frame)
        self._frame.clear()
        self._in_frame = False
        return message


def _where(exc: BaseException) -> str:
    """Where an exception was raised, for a log line that must not carry its text.

    Exception messages from parsers often quote the offending segment, i.e. patient data.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"


@dataclass(eq=False)  # identity, to live in a set
class _Connection:
    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    busy: bool = False  # a message is being handled or its ACK written


class MllpServer:
    """An asyncio MLLP listener that answers every message with the handler's ACK.

    Messages of one connection are handled strictly one after another, each ACK
    written before the next message is looked at: a sender relies on that order,
    and a result must not overtake its own correction. Different connections run
    concurrently. The handler runs on the event loop, so blocking work in it
    belongs in ``asyncio.to_thread``.
    """

    def __init__(
        self,
        handle: Handler,
        on_error: ErrorFallback,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout: float = 300.0,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_connections: int = 100,
        frame_timeout: float = 60.0,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        on_refused: Callable[[str], None] | None = None,
        tls: ServerContext | None = None,
        on_connect: ConnectCheck | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._handle = handle
        self._on_error = on_error
        self.idle_timeout = idle_timeout
        self.max_frame_bytes = max_frame_bytes
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        self.max_buffered_bytes = max_buffered_bytes
        self._on_refused = on_refused or (lambda reason: None)
        self.tls = tls
        self._on_connect = on_connect
        self._buffered: dict[int, int] = {}  # unfinished-frame bytes per connection
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port, also when 0 was asked for; only after ``start()``."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._stopping = False
        self._server = await asyncio.start_server(self._serve, self.host, self._requested_port,
                                                  ssl=self.tls.context if self.tls else None)
        log.info("MLLP listening on %s:%d", self.host, self.port)

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, close idle connections, let in-flight handlers finish up to ``timeout``.

        A message whose handler is cut off gets no ACK; its sender resends it, so the
        handler must treat a repeated MSH-10 as the same message.
        """
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for conn in list(self._connections):
            if not conn.busy:
                conn.writer.close()  # its pending read then ends with EOF
        tasks = [conn.task for conn in self._connections]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("MLLP listener stopped")

    def _refuse(self, peer: str, reason: str, text: str, *args: object) -> None:
        self._on_refused(reason)
        log.warning("MLLP %s: " + text + ", closing", peer, *args)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if len(self._connections) >= self.max_connections:
            self._refuse(peer, "too_many_connections", "%d connections are open already", len(self._connections))
            writer.close()
            return
        if not self._accept_peer(peer, writer):
            writer.close()
            return
        conn = _Connection(task, writer)
        self._connections.add(conn)
        frames = FrameReader(self.max_frame_bytes)
        frame_started = 0.0
        log.info("MLLP connection from %s", peer)
        try:
            while not self._stopping:
                loop = asyncio.get_running_loop()
                wait = self.idle_timeout
                if frames.in_frame:
                    wait = min(wait, max(0.0, frame_started + self.frame_timeout - loop.time()))
                try:
                    data = await asyncio.wait_for(reader.read(READ_BYTES), wait)
                except TimeoutError:
                    if frames.in_frame:
                        self._refuse(peer, "frame_timeout", "a frame begun %.0f s ago has not ended",
                                     self.frame_timeout)
                    else:
                        log.info("MLLP connection from %s idle for %.0f s, closing", peer, self.idle_timeout)
                    return
                if not data or self._stopping:
                    return
                discarded, abandoned = frames.discarded, frames.abandoned
                was_in_frame = frames.in_frame
                try:
                    messages = frames.feed(data)
                except FrameTooLarge:
                    self._refuse(peer, "frame_too_large", "a frame exceeds %d bytes", self.max_frame_bytes)
                    return
                if frames.in_frame and (not was_in_frame or messages):
                    frame_started = loop.time()
                self._buffered[id(conn)] = frames.buffered
                if sum(self._buffered.values()) > self.max_buffered_bytes:
                    self._refuse(peer, "memory_budget", "unfinished frames of all connections exceed %d bytes",
                                 self.max_buffered_bytes)
                    return
                if frames.discarded != discarded:
                    log.warning("MLLP %s: discarded %d bytes outside frames (%d frame(s) restarted)",
                                peer, frames.discarded - discarded, frames.abandoned - abandoned)
                for message in messages:
                    conn.busy = True
                    reply = await self._answer(message, peer)
                    if reply is None:
                        return
                    writer.write(frame(reply))
                    await writer.drain()
                    conn.busy = False
                    if self._stopping:
                        return
        except ConnectionError as exc:
            log.info("MLLP connection from %s lost: %s", peer, type(exc).__name__)
        except asyncio.CancelledError:
            # stop() cancels after its grace period (or the loop is shutting down). Ending
            # normally keeps asyncio's done-callback, which calls task.exception(), quiet.
            log.warning("MLLP connection from %s cancelled%s", peer,
                        ", a message left without ACK" if conn.busy else "")
        finally:
            self._connections.discard(conn)
            self._buffered.pop(id(conn), None)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()
            log.info("MLLP connection from %s closed", peer)

    def _accept_peer(self, peer: str, writer: asyncio.StreamWriter) -> bool:
        """Over TLS: the client's certificate becomes the connection's, if ``on_connect`` accepts it."""
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or self.tls is None:
            return True
        der = ssl_object.getpeercert(binary_form=True)
        cert = PeerCertificate(der, self.tls.client_trust) if der else None
        CONNECTION_PEER.set(cert)  # this connection's task and what it hands to threads
        if self._on_connect is not None and not self._on_connect(peer, cert):
            self._refuse(peer, "client_certificate", "the client certificate is refused")
            return False
        return True

    async def _answer(self, message: bytes, peer: str) -> bytes | None:
        """The ACK for one message; None when not even the fallback could make one."""
        try:
            return await self._handle(message, peer)
        except Exception as exc:
            log.error("MLLP handler failed on a %d-byte message from %s: %s at %s",
                      len(message), peer, type(exc).__name__, _where(exc))
            try:
                return self._on_error(message, exc)
            except Exception as fallback_exc:
                log.error("MLLP error fallback failed too (%s at %s); closing the connection from %s",
                          type(fallback_exc).__name__, _where(fallback_exc), peer)
                return None


class ThreadedMllpServer:
    """Runs an ``MllpServer`` on its own event loop in a daemon thread.

    For a process that is otherwise synchronous, and for tests that talk to the
    listener with plain blocking sockets.
    """

    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self, timeout: float = 10.0) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="mllp-server", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), loop).result(timeout)
        except BaseException:
            self._halt(loop, thread)
            raise
        self._loop, self._thread = loop, thread

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None or self._thread is None:
            return
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        try:
            # The extra seconds cover the cancellation that follows a timed-out wait.
            asyncio.run_coroutine_threadsafe(self.server.stop(timeout), loop).result(timeout + 5.0)
        finally:
            self._halt(loop, thread)

    @staticmethod
    def _halt(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10.0)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> ThreadedMllpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

"""The MLLP listener on a real socket, fed the reference ORU^R01 messages.

The messages are copies (tests/data/hl7v2/) of shared/reference/hl7v2/, so that a
clone without the shared tree still has them; a test checks the copies are exact.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import hl7
import pytest

from adapters.hl7v2.ack import ack, ack_for_error, charset_of, decode, parse
from adapters.hl7v2.mllp import CR, END, START, FrameReader, MllpServer, ThreadedMllpServer, frame
from tests.support.references import SHARED

DATA = Path(__file__).resolve().parents[1] / "data" / "hl7v2"
REFERENCE = SHARED / "hl7v2"
SAMPLES = sorted(DATA.glob("*.hl7"))


async def answer_aa(message: bytes, peer: str) -> bytes:
    return ack(message, "AA", charset=charset_of(message))


class Client:
    """A blocking MLLP sender that keeps every byte it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = FrameReader()
        self.received = b""
        self._pending: list[bytes] = []

    def send(self, data: bytes, chunk: int = 0, pause: float = 0.0) -> None:
        if not chunk:
            self.sock.sendall(data)
            return
        for i in range(0, len(data), chunk):
            self.sock.sendall(data[i:i + chunk])
            time.sleep(pause)

    def receive(self, count: int) -> list[bytes]:
        while len(self._pending) < count:
            data = self.sock.recv(4096)
            assert data, f"connection closed after {len(self._pending)} of {count} ACKs"
            self.received += data
            self._pending += self.frames.feed(data)
        got, self._pending = self._pending[:count], self._pending[count:]
        return got

    def nothing_more(self, wait: float = 0.3) -> bool:
        """True when no further byte arrives within ``wait`` seconds (and the peer did not close)."""
        if self._pending:
            return False
        self.sock.settimeout(wait)
        try:
            self.received += self.sock.recv(1)
            return False  # a byte, or the end of the stream
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5)

    def closed_by_server(self, wait: float = 3.0) -> bool:
        self.sock.settimeout(wait)
        try:
            while data := self.sock.recv(4096):
                self.received += data
                self._pending += self.frames.feed(data)
            return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@contextmanager
def running(
    handle: Callable[[bytes, str], Awaitable[bytes]] = answer_aa, **options: float
) -> Iterator[ThreadedMllpServer]:
    server = ThreadedMllpServer(MllpServer(handle, ack_for_error, "127.0.0.1", 0, **options))  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def connected(port: int) -> Iterator[Client]:
    client = Client(port)
    try:
        yield client
    finally:
        client.close()


def control_id(raw: bytes) -> str:
    """MSH-10 read by python-hl7 on its own, not through the module under test."""
    return str(hl7.parse(raw.decode(charset_of(raw))).segment("MSH")(10))


def msa(reply: bytes, charset: str = "utf-8") -> tuple[str, str]:
    segment = hl7.parse(reply.decode(charset)).segment("MSA")
    return str(segment(1)), str(segment(2))


# --- reference data -------------------------------------------------------------------------

def test_the_reference_samples_are_here():
    assert len(SAMPLES) >= 10
    assert (DATA / "SOURCES.md").is_file()


def test_the_copies_equal_the_reference():
    if not REFERENCE.is_dir():
        pytest.skip(f"no shared reference tree beside this checkout ({REFERENCE})")
    names = {p.name for p in REFERENCE.iterdir()}
    assert names == {p.name for p in DATA.iterdir()}
    for name in names:
        assert (DATA / name).read_bytes() == (REFERENCE / name).read_bytes(), name


# --- one ACK per message --------------------------------------------------------------------

def test_every_reference_message_gets_one_aa_on_one_connection():
    with running() as server, connected(server.port) as client:
        expected = b""
        for path in SAMPLES:
            raw = path.read_bytes()
            client.send(frame(raw))
            (reply,) = client.receive(1)
            assert msa(reply) == ("AA", control_id(raw)), path.name
            assert str(hl7.parse(reply.decode()).segment("MSH")(9)) == "ACK^R01^ACK"
            expected += frame(reply)
        assert client.nothing_more()
        assert client.received == expected  # framed exactly, nothing between the ACKs


def test_split_writes_with_pauses():
    raws = [p.read_bytes() for p in SAMPLES]
    with running() as server, connected(server.port) as client:
        for raw in raws:
            framed = frame(raw)
            client.send(framed[:-1], chunk=97, pause=0.002)
            time.sleep(0.05)  # the 0x1C has arrived, the 0x0D not yet
            assert client.nothing_more(0.05)
            client.send(framed[-1:])
            assert msa(client.receive(1)[0]) == ("AA", control_id(raw))


def test_all_messages_in_one_write_are_answered_in_order():
    raws = [p.read_bytes() for p in SAMPLES]
    with running() as server, connected(server.port) as client:
        client.send(b"".join(frame(raw) for raw in raws))
        replies = client.receive(len(raws))
        assert [msa(r)[1] for r in replies] == [control_id(raw) for raw in raws]
        assert client.nothing_more()


def test_two_messages_in_one_write_give_two_acks_in_order():
    first, second = SAMPLES[0].read_bytes(), SAMPLES[-1].read_bytes()
    with running() as server, connected(server.port) as client:
        client.send(frame(first) + frame(second))
        replies = client.receive(2)
        assert [msa(r) for r in replies] == [("AA", control_id(first)), ("AA", control_id(second))]
        assert client.nothing_more()


def test_stray_bytes_between_frames_and_a_frame_far_larger_than_a_read():
    base = SAMPLES[0].read_bytes()
    big = base + b"NTE|1||" + b"long report text " * 6000 + b"\r"  # ~100 KB, many 4 KiB reads
    with running() as server, connected(server.port) as client:
        client.send(b"\x00\n" + frame(big) + b"\r\n\x00junk" + frame(base) + b"\n")
        replies = client.receive(2)
        assert [msa(r) for r in replies] == [("AA", control_id(base))] * 2


def test_messages_in_a_central_european_charset_are_answered_in_it():
    seen: list[str] = []

    async def echo_name(message: bytes, peer: str) -> bytes:
        charset = charset_of(message)
        name = parse(decode(message, charset)).segment("PID")(5)
        seen.append(str(name))
        return ack(message, "AA", text=f"{name(1)(2)} {name(1)(1)}", charset=charset)

    sample = SAMPLES[[p.name for p in SAMPLES].index("09_hl7v24_spec_ghh_lab_glucose_sn_fn.hl7")].read_bytes()
    text = sample.decode("ascii").replace("EVERYWOMAN^EVE^E", "Żółć^Łukasz^Ń").replace("|ELAB-3|", "|Łódź LAB|")
    with running(echo_name) as server, connected(server.port) as client:
        for label, codec in (("WINDOWS-1250", "cp1250"), ("8859/2", "iso8859-2")):
            msh, rest = text.split("\r", 1)
            raw = (f"{msh}||||||{label}\r{rest}").encode(codec)
            assert charset_of(raw) == codec
            client.send(frame(raw))
            (reply,) = client.receive(1)
            with pytest.raises(UnicodeDecodeError):
                reply.decode("utf-8")
            parsed = hl7.parse(reply.decode(codec))
            assert str(parsed.segment("MSA")(3)) == "Łukasz Żółć"
            assert "Łukasz Żółć".encode(codec) in reply
            assert str(parsed.segment("MSH")(6)) == "Łódź LAB" and str(parsed.segment("MSH")(18)) == label
            assert str(parsed.segment("MSA")(2)) == "CNTRL-3456"
    assert seen == ["Żółć^Łukasz^Ń^^^^L"] * 2


def test_a_failing_handler_gets_an_ar_and_the_server_goes_on(caplog: pytest.LogCaptureFixture):
    bad, good = SAMPLES[1].read_bytes(), SAMPLES[2].read_bytes()

    async def fragile(message: bytes, peer: str) -> bytes:
        if message == bad:
            raise KeyError("PID-5 of EVERYMAN ADAM")  # exception text with patient data
        return await answer_aa(message, peer)

    caplog.set_level(logging.INFO, logger="adapters.hl7v2.mllp")
    with running(fragile) as server, connected(server.port) as client:
        client.send(frame(bad))
        (reply,) = client.receive(1)
        assert msa(reply) == ("AR", control_id(bad))
        assert str(hl7.parse(reply.decode()).segment("ERR")(3)).startswith("207^")
        client.send(frame(good))
        assert msa(client.receive(1)[0]) == ("AA", control_id(good))
    failures = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert len(failures) == 1 and "KeyError" in failures[0].getMessage()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "EVERYMAN" not in logged and "ADAM" not in logged and "MSH|" not in logged


def test_a_garbled_message_gets_an_ar_from_the_handler_error_path():
    async def strict(message: bytes, peer: str) -> bytes:
        parse(decode(message, charset_of(message)))  # raises for the garbled one
        return await answer_aa(message, peer)

    good = SAMPLES[0].read_bytes()
    with running(strict) as server, connected(server.port) as client:
        client.send(frame(b"this is not HL7\r") + frame(good))
        first, second = client.receive(2)
        assert msa(first) == ("AR", "")
        assert msa(second) == ("AA", control_id(good))


# --- connection limits and shutdown -----------------------------------------------------------

def test_an_oversized_frame_closes_that_connection_only():
    raw = SAMPLES[0].read_bytes()
    with running(max_frame_bytes=1000) as server:
        with connected(server.port) as client:
            client.send(START + b"x" * 3000)
            assert client.closed_by_server()
            assert client.received == b""
        with connected(server.port) as client:
            client.send(frame(raw[:900]))
            assert msa(client.receive(1)[0])[0] == "AA"


def test_an_idle_connection_is_closed():
    with running(idle_timeout=0.3) as server, connected(server.port) as client:
        started = time.monotonic()
        assert client.closed_by_server(wait=3)
        assert time.monotonic() - started > 0.2  # by the idle timeout, not at once


def test_stop_returns_quickly_with_connections_open():
    raw = SAMPLES[0].read_bytes()
    server = ThreadedMllpServer(MllpServer(answer_aa, ack_for_error))
    server.start()
    port = server.port
    with connected(port) as idle, connected(port) as half:
        idle.send(frame(raw))
        idle.receive(1)
        half.send(START + raw[:200])
        time.sleep(0.1)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 4  # the open connections did not hold it for its 5 s timeout
        assert idle.closed_by_server(1) and half.closed_by_server(1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_stop_lets_an_in_flight_handler_answer():
    raw = SAMPLES[0].read_bytes()

    async def slow(message: bytes, peer: str) -> bytes:
        await asyncio.sleep(0.5)
        return await answer_aa(message, peer)

    server = ThreadedMllpServer(MllpServer(slow, ack_for_error))
    server.start()
    with connected(server.port) as client:
        client.send(frame(raw))
        time.sleep(0.1)
        started = time.monotonic()
        server.stop(timeout=5)
        assert 0.3 < time.monotonic() - started < 4.5  # the handler's 0.5 s, not the 5 s timeout
        assert msa(client.receive(1)[0]) == ("AA", control_id(raw))
        assert client.closed_by_server(1)


def test_stop_cuts_off_a_hung_handler_after_its_timeout():
    async def hung(message: bytes, peer: str) -> bytes:
        await asyncio.sleep(60)
        return b""

    server = ThreadedMllpServer(MllpServer(hung, ack_for_error))
    server.start()
    with connected(server.port) as client:
        client.send(frame(SAMPLES[0].read_bytes()))
        time.sleep(0.1)
        started = time.monotonic()
        server.stop(timeout=0.3)
        assert time.monotonic() - started < 30  # not the handler's 60 s
        assert client.closed_by_server(1)
        assert client.received == b""


def test_connections_are_served_concurrently():
    raw_a, raw_b = SAMPLES[0].read_bytes(), SAMPLES[1].read_bytes()

    b_answered = threading.Event()

    async def a_waits_for_b(message: bytes, peer: str) -> bytes:
        if message == raw_a:  # served one at a time, b would never be answered, and a never released
            await asyncio.to_thread(b_answered.wait, 10)
        return await answer_aa(message, peer)

    with running(a_waits_for_b) as server, connected(server.port) as a, connected(server.port) as b:
        a.send(frame(raw_a))
        time.sleep(0.05)
        b.send(frame(raw_b))
        assert msa(b.receive(1)[0])[1] == control_id(raw_b)  # within the socket's 5 s
        assert a.received == b"", "a was answered before its handler was released"
        b_answered.set()
        assert msa(a.receive(1)[0])[1] == control_id(raw_a)


def test_end_bytes_are_the_mllp_ones():
    # Guards the framing constants the peers depend on, independently of frame().
    raw = SAMPLES[0].read_bytes()
    with running() as server, connected(server.port) as client:
        client.send(b"\x0b" + raw + b"\x1c\x0d")
        client.receive(1)
        assert client.received[:1] == START and client.received[-2:] == END + CR

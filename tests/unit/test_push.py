"""Which recipient answers are retried, and what every push carries (httpx mock transport)."""
from __future__ import annotations

import httpx
import pytest

from adapters.rest.push import push

ENV = (b'<zl:Envelope xmlns:zl="urn://zdravlink/envelope/1.0"><zl:SenderProvidedData Id="SIGNED_BY_CONSUMER">'
       b"<zl:MessageID>6c1e2f0a-e67e-11f1-81ba-02fc00000001</zl:MessageID><zl:Sender>lab</zl:Sender>"
       b"<zl:Recipient>clinic</zl:Recipient><zl:MessageType>urn:x</zl:MessageType><zl:MessagePrimaryContent>"
       b'<x:A xmlns:x="urn:x">1</x:A></zl:MessagePrimaryContent></zl:SenderProvidedData></zl:Envelope>')


def client_answering(status: int, headers: dict[str, str] | None = None, seen: list | None = None) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(status, headers=headers)
    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status,delivered,retryable", [
    (200, True, False), (202, True, False), (204, True, False),
    (301, False, False), (400, False, False), (401, False, False), (404, False, False), (422, False, False),
    (408, False, True), (425, False, True), (429, False, True),
    (500, False, True), (501, False, True), (502, False, True), (503, False, True), (504, False, True),
])
def test_status_classification(status, delivered, retryable):
    res = push(client_answering(status), "http://r/inbox", ENV, "m-1", "xml", 1)
    assert (res.delivered, res.retryable, res.status_code) == (delivered, retryable, status)


def test_retry_after_is_read_and_headers_are_sent():
    seen: list[httpx.Request] = []
    res = push(client_answering(429, {"Retry-After": "7"}, seen), "http://r/inbox", ENV, "m-1", "xml", 3)
    assert res.retry_after == 7.0
    req = seen[0]
    assert (req.headers["Idempotency-Key"], req.headers["X-Zdravlink-Attempt"]) == ("m-1", "3")
    assert req.headers["Content-Type"].startswith("application/xml") and req.content == ENV


def test_json_recipients_get_the_json_form():
    seen: list[httpx.Request] = []
    push(client_answering(200, seen=seen), "http://r/inbox", ENV, "m-1", "json", 1)
    assert seen[0].headers["Content-Type"] == "application/json"
    assert b'"messageId":"6c1e2f0a-e67e-11f1-81ba-02fc00000001"' in seen[0].content.replace(b" ", b"")


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow")])
def test_transport_failures_are_retryable(exc):
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc
    res = push(httpx.Client(transport=httpx.MockTransport(handler)), "http://r/inbox", ENV, "m-1", "xml", 1)
    assert (res.delivered, res.retryable, res.status_code) == (False, True, None)

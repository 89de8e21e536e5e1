"""The API's last line: an escaping exception is a 503 (journal out of reach) or an audited 500 with an id."""
from __future__ import annotations

import asyncio
import logging

import httpx
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from adapters.rest.incidents import IncidentMiddleware


def post(exc: Exception, path: str, audit, soap_paths: tuple[str, ...] = ()) -> httpx.Response:
    """POST to an app whose every route raises ``exc``, with the middleware placed as create_app places it."""
    def boom(_request):
        raise exc

    app = Starlette(routes=[Route(path, boom, methods=["POST"])],
                    middleware=[Middleware(IncidentMiddleware, audit=audit, soap_paths=soap_paths)])

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app, raise_app_exceptions=False),
                                     base_url="http://test") as client:
            return await client.post(path)

    return asyncio.run(call())


def test_an_unreachable_journal_is_503_with_retry_after_and_no_incident() -> None:
    audited: list = []
    exc = sa.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    r = post(exc, "/api/v1/messages", lambda *a: audited.append(a))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "JOURNAL_UNAVAILABLE" and audited == []


def test_a_bug_is_a_500_problem_whose_incident_id_is_in_the_log_and_the_audit(caplog) -> None:
    audited: list = []
    with caplog.at_level(logging.ERROR, logger="zdravlink.api"):
        r = post(KeyError("oops"), "/api/v1/messages", lambda *a: audited.append(a))
    body = r.json()
    assert r.status_code == 500 and body["code"] == "INTERNAL_ERROR" and len(body["incident"]) == 16
    assert body["incident"] in caplog.text and "KeyError" in caplog.text
    (rej, source, _remote), = audited
    assert source == "rest" and rej.code == "INTERNAL_ERROR" and body["incident"] in rej.detail


def test_a_soap_caller_gets_a_soap_fault_and_an_audit_failure_does_not_change_the_answer() -> None:
    def audit(*_a) -> None:
        raise RuntimeError("audit table gone")

    r = post(ValueError("x"), "/smev/1.1", audit, soap_paths=("/smev/1.1",))
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/xml")
    assert b"Fault" in r.content and b"GATEWAY_FAILURE" in r.content

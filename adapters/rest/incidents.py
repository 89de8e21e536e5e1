"""The last line of the API: no request ever gets a bare, unaudited 500.

An exception that escapes a handler is one of two things. The journal's database out
of reach is the gateway's trouble, not the caller's, and is temporary: 503 with
``Retry-After`` (nothing was accepted, so sending again is safe). Anything else is a
bug: 500 as problem+json with an incident id, the same id in the log with the
traceback and in the audit table, so the operator can find the one from the other.
A SOAP caller gets the same as a SOAP fault of the official schema.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.rest.problems import problem
from adapters.soap.smev_faults import SmevFault
from gateway import errors
from gateway.errors import Rejection
from gateway.journal import unavailable

log = logging.getLogger("zdravlink.api")

#: Seconds a caller is asked to wait when the journal is out of reach.
RETRY_AFTER = 5

#: Writes an incident to the audit table: (rejection, source, remote).
Audit = Callable[[Rejection, str, str | None], None]


class IncidentMiddleware:
    def __init__(self, app: ASGIApp, audit: Audit, soap_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.audit = audit
        self.soap_paths = soap_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if started:
                raise  # the answer is half sent; nothing better can be done than to drop the connection
            response = await self._answer(scope, exc)
            await response(scope, receive, send)

    async def _answer(self, scope: Scope, exc: Exception) -> Response:
        path = str(scope.get("path", ""))
        remote = scope["client"][0] if scope.get("client") else None
        source = "soap" if path.startswith(self.soap_paths) and self.soap_paths else "rest"
        if unavailable(exc):
            log.warning("%s %s: the journal is out of reach (%s); answered 503", scope.get("method"), path,
                        type(exc).__name__)
            rej = Rejection(errors.JOURNAL_UNAVAILABLE, "the gateway's journal is out of reach; nothing was "
                            f"accepted: send again in {RETRY_AFTER} s", None, status=503)
            return self._render(rej, source, {"Retry-After": str(RETRY_AFTER)})
        incident = uuid.uuid4().hex[:16]
        log.error("incident %s: %s %s failed", incident, scope.get("method"), path, exc_info=exc)
        rej = Rejection(errors.INTERNAL_ERROR, f"incident {incident}: the gateway failed on this request "
                        f"({type(exc).__name__}); the operator can find it by this id", None, status=500,
                        extra={"incident": incident})
        try:
            await run_in_threadpool(self.audit, rej, source, remote)
        except Exception:
            log.exception("incident %s: could not write it to the audit table", incident)
        return self._render(rej, source, {})

    @staticmethod
    def _render(rej: Rejection, source: str, headers: dict[str, Any]) -> Response:
        if source == "soap":
            fault = SmevFault.from_rejection(Rejection(errors.GATEWAY_FAILURE, rej.detail, None, status=500),
                                             "SendRequest")
            return Response(etree.tostring(fault.envelope(), encoding="UTF-8", xml_declaration=True),
                            status_code=500 if rej.status == 500 else 503, headers=headers,
                            media_type="text/xml; charset=utf-8")
        response = problem(rej)
        response.headers.update(headers)
        return response

"""The REST API: post an envelope, read its status and trail; health and metrics.

The request body is read as raw bytes with a hard size cap before anything parses
it, so an oversized or hostile body costs at most ``max_body_bytes`` of memory.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.intake import Intake
from adapters.mapping.lab_json import LabResultsDocument
from adapters.mapping.lab_service import LabResults
from adapters.rest.incidents import IncidentMiddleware
from adapters.rest.problems import problem
from adapters.rest.tls import peer_of
from gateway import errors, jsonsafe
from gateway.config import MetricsSettings, Participant, hash_token
from gateway.envelope import Envelope, EnvelopeDocument
from gateway.errors import Rejection
from gateway.journal import Journal, MessageRecord
from gateway.journal.inbox import Inbox
from gateway.keyring import KeyRing
from gateway.xmlsafe import parse_xml
from monitoring.exposition import GatewayStateCollector, render

if TYPE_CHECKING:
    from adapters.console.web import Console

API = "/api/v1"


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _caller(intake: Intake, request: Request, source: str = "rest") -> Participant:
    """Who calls: the bearer token and the TLS client certificate; a refusal is audited."""
    remote = request.client.host if request.client else None
    return intake.authenticate(_bearer(request), peer_of(request), source=source, remote=remote)


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise Rejection(errors.BODY_TOO_LARGE, f"body of {declared} bytes exceeds the limit of {limit}", "body",
                        status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(errors.BODY_TOO_LARGE, f"body exceeds the limit of {limit} bytes", "body", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(*, intake: Intake, journal: Journal, max_body_bytes: int,
               readiness: Callable[[], dict[str, bool]], state: GatewayStateCollector,
               inbox: Inbox | None = None, keyring: KeyRing | None = None, lock_seconds: float = 300.0,
               soap: dict[str, Any] | None = None, lab_results: LabResults | None = None,
               metrics: MetricsSettings | None = None, console: Console | None = None) -> FastAPI:
    """The ASGI app; ``soap`` maps paths (``/smev/1.1``) to ASGI apps mounted beside the REST API."""
    app = FastAPI(
        title="Zdravlink gateway",
        version="1.0",
        description="Accepts canonical envelopes (JSON or XML), journals them and delivers them with retries, "
                    "failover and dead letters. Every refusal is application/problem+json with a stable `code` "
                    "and the offending `field`.",
    )
    _error_shapes(app, journal, tuple(soap or {}))
    _message_routes(app, intake, journal, max_body_bytes)
    if inbox is not None:
        _inbox_routes(app, intake, inbox, keyring or KeyRing(), lock_seconds)
    if lab_results is not None:
        _lab_routes(app, intake, lab_results, max_body_bytes)
    if console is not None:
        console.mount(app)
    for path, asgi in (soap or {}).items():
        app.router.routes.append(Route(path, endpoint=asgi, methods=["GET", "POST"], include_in_schema=False))
    _operations_routes(app, readiness, state, metrics or MetricsSettings())
    return app


def _error_shapes(app: FastAPI, journal: Journal, soap_paths: tuple[str, ...]) -> None:
    """Every refusal as problem+json; what escapes a handler as 503 or an audited 500 (``incidents``)."""

    @app.exception_handler(Rejection)
    async def _rejection(_: Request, exc: Rejection) -> Response:
        return problem(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return problem(Rejection("HTTP_" + str(exc.status_code), str(exc.detail), None, status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        return problem(Rejection("REQUEST_INVALID", first["msg"], ".".join(map(str, first["loc"]))))

    app.add_middleware(IncidentMiddleware, soap_paths=soap_paths,
                       audit=lambda rej, source, remote: journal.reject(rej, source=source, remote=remote))


def _message_routes(app: FastAPI, intake: Intake, journal: Journal, max_body_bytes: int) -> None:
    """Submit a message, read its status and trail, read a service record's state."""
    envelope_schema = EnvelopeDocument.model_json_schema()

    @app.post(
        f"{API}/messages",
        status_code=202,
        summary="Submit a message",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": envelope_schema},
                    "application/xml": {"schema": {"type": "string",
                                                   "description": "zl:Envelope, see schemas_xsd/envelope-1.0.xsd"}},
                },
            },
            "responses": {"4XX": {"description": "Refused", "content": {"application/problem+json": {}}}},
        },
    )
    async def submit(request: Request) -> JSONResponse:
        token = _bearer(request)
        remote = request.client.host if request.client else None
        try:
            body = await _read_capped(request, max_body_bytes)
        except Rejection as rej:
            intake.refused(rej, source="rest", remote=remote, caller=None, env=None)
            raise
        accepted = await run_in_threadpool(
            intake.receive, body, request.headers.get("content-type", ""), token, source="rest", remote=remote,
            peer=peer_of(request)
        )
        mid = accepted.outcome.message_id
        url = f"{API}/messages/{mid}"
        return JSONResponse(
            {"messageId": mid, "status": accepted.outcome.status, "duplicate": accepted.outcome.duplicate,
             "route": accepted.route, "statusUrl": url},
            status_code=202,
            headers={"Location": url},
        )

    @app.get(f"{API}/messages/{{message_id}}", summary="Status and event trail of a message")
    def status(message_id: str, request: Request) -> dict[str, Any]:
        caller = _caller(intake, request)
        rec = journal.get(message_id)
        if rec is None or caller.mnemonic not in (rec.sender, rec.recipient):
            raise Rejection(errors.MESSAGE_NOT_FOUND, f"no message {message_id} visible to {caller.mnemonic}",
                            "message_id", status=404)
        return _status_document(journal, rec)

    @app.get(f"{API}/service-records/{{record_id}}", summary="State of a service record: accepted, in an act, "
             "and what the insurer said")
    def service_record(record_id: str, codeMO: str, request: Request) -> dict[str, Any]:
        caller = _caller(intake, request)
        state = intake.pipeline.service_records.state(record_id, codeMO)
        if state is None or caller.mnemonic not in (state["sender"], state["insurer"]):
            raise Rejection(errors.SERVICE_RECORD_NOT_FOUND, f"no record {record_id} of {codeMO} visible to "
                            f"{caller.mnemonic}", "record_id", status=404)
        return state


def _status_document(journal: Journal, rec: MessageRecord) -> dict[str, Any]:
    return {
        "messageId": rec.message_id,
        "status": rec.status,
        "sender": rec.sender,
        "recipient": rec.recipient,
        "messageType": rec.message_type,
        "route": rec.route,
        "channel": rec.channel,
        "attempts": rec.attempts,
        "replays": rec.replays,
        "lastError": rec.last_error,
        "createdAt": rec.created_at.isoformat(),
        "deliveredAt": rec.delivered_at.isoformat() if rec.delivered_at else None,
        "trailIntact": journal.verify_trail(rec.message_id),
        "trail": [
            {"at": e.at.isoformat(), "status": e.status, "event": e.kind, "actor": e.actor, "detail": e.detail}
            for e in journal.trail(rec.message_id)
        ],
    }


def _operations_routes(app: FastAPI, readiness: Callable[[], dict[str, bool]], state: GatewayStateCollector,
                       scrape: MetricsSettings) -> None:
    """Liveness, readiness and /metrics: what an orchestrator and Prometheus ask."""

    @app.get("/healthz", summary="Liveness: the process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the journal and the broker answer")
    def readyz() -> JSONResponse:
        checks = readiness()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    def metrics_endpoint(request: Request) -> Response:
        _check_scrape(request, scrape)
        body, content_type = render(state, request.headers.get("accept", ""))
        return Response(body, media_type=content_type)


def _check_scrape(request: Request, scrape: MetricsSettings) -> None:
    """``/metrics`` names participants, queues and certificates: only for whom the settings allow."""
    local_port = (request.scope.get("server") or ("", 0))[1]
    if scrape.port is not None and local_port != scrape.port:
        raise Rejection("HTTP_404", "metrics are served on their own port", None, status=404)
    if scrape.token_sha256:
        token = _bearer(request)
        if not token:
            raise Rejection(errors.AUTHENTICATION_REQUIRED, "a scrape token is required (Authorization: Bearer …)",
                            "Authorization", status=401)
        if hash_token(token) not in scrape.token_sha256:
            raise Rejection(errors.INVALID_TOKEN, "the scrape token is not valid", "Authorization", status=401)
    elif scrape.port is None:
        client = request.client.host if request.client else ""
        if not ipaddress.ip_address(client or "0.0.0.0").is_loopback:
            raise Rejection(errors.METRICS_FORBIDDEN, "metrics are readable from this host only, unless "
                            "metrics.token_sha256 or metrics.port is configured", None, status=403)


def _lab_document(lab: str, caller_mnemonic: str, body: bytes) -> LabResultsDocument:
    if caller_mnemonic != lab:
        raise Rejection(errors.SENDER_MISMATCH, f"the token belongs to {caller_mnemonic!r}, not {lab!r}", "lab",
                        status=403)
    jsonsafe.loads(body)  # depth, duplicate keys and characters, before the model reads it
    try:
        return LabResultsDocument.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        code = errors.MALFORMED_JSON if first["type"] == "json_invalid" else errors.ENVELOPE_INVALID
        raise Rejection(code, first["msg"], ".".join(map(str, first["loc"])) or "body",
                        status=400 if code == errors.MALFORMED_JSON else 422) from None


def _lab_routes(app: FastAPI, intake: Intake, labs: LabResults, max_body_bytes: int) -> None:
    @app.post(f"{API}/labs/{{lab}}/results", status_code=202,
              summary="A laboratory's results as JSON, mapped by its mapping file (docs/onboarding-a-lab.md)",
              responses={"4XX": {"description": "Refused; a 422 lists every mapping gap in `errors`",
                                 "content": {"application/problem+json": {}}}})
    async def submit_lab_results(lab: str, request: Request) -> JSONResponse:
        remote = request.client.host if request.client else None
        caller = _caller(intake, request, "rest-lab")
        try:
            body = await _read_capped(request, max_body_bytes)
            intake.admit(caller, len(body), source="rest-lab", remote=remote)
        except Rejection as rej:
            if rej.code != errors.RATE_LIMITED:  # admit audits its own
                intake.refused(rej, source="rest-lab", remote=remote, caller=caller.mnemonic, env=None)
            raise
        try:
            doc = _lab_document(lab, caller.mnemonic, body)
        except Rejection as rej:
            intake.refused(rej, source="rest-lab", remote=remote, caller=caller.mnemonic, env=None)
            raise
        answer = await run_in_threadpool(labs.submit, doc, caller, source="rest-lab", remote=remote)
        return JSONResponse(answer, status_code=202, headers={"Location": answer["statusUrl"]})


class AckBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    accepted: bool = True


def _inbox_routes(app: FastAPI, intake: Intake, inbox: Inbox, keyring: KeyRing, lock_seconds: float) -> None:
    """The pull inbox over REST, with SMEV's rules: one message per call, locked until its ack."""

    @app.get(f"{API}/inbox", summary="Take the next message waiting for the caller (204 when none)",
             responses={204: {"description": "Nothing waiting"}})
    def take(request: Request, kind: Literal["request", "response"] = "request",
             messageType: str | None = None) -> Response:
        caller = _caller(intake, request)
        taken = inbox.take(caller.mnemonic, kind, lock_seconds, messageType)
        if taken is None:
            return Response(status_code=204)
        signed = keyring.sign_envelope(taken.record.envelope)
        headers = {"X-Zdravlink-Message-Id": taken.record.message_id, "X-Zdravlink-Delivery": str(taken.deliveries)}
        if "application/xml" in request.headers.get("accept", ""):
            return Response(signed, media_type="application/xml", headers=headers)
        env = Envelope.from_element(parse_xml(signed))
        return JSONResponse({"messageId": taken.record.message_id, "kind": taken.kind, "delivery": taken.deliveries,
                             "lockedForSeconds": lock_seconds,
                             "ackUrl": f"{API}/inbox/{taken.record.message_id}/ack", "envelope": env.to_json()},
                            headers=headers)

    @app.post(f"{API}/inbox/{{message_id}}/ack", summary="Confirm (or refuse) a message taken from the inbox")
    def ack(message_id: str, request: Request, body: AckBody | None = None) -> dict[str, Any]:
        caller = _caller(intake, request)
        accepted = body.accepted if body is not None else True
        outcome = inbox.ack(caller.mnemonic, message_id, accepted, f"rest:{caller.mnemonic}")
        if outcome == "unknown":
            raise Rejection(errors.TARGET_MESSAGE_NOT_FOUND, f"{message_id} was never handed to {caller.mnemonic!r}",
                            "message_id", status=404)
        if outcome == "already":
            raise Rejection(errors.TARGET_MESSAGE_NOT_FOUND, f"{message_id} was already acknowledged", "message_id",
                            status=409)
        return {"messageId": message_id, "accepted": accepted}


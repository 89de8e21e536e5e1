"""RFC 9457 problem details: every refusal the REST API gives has this one shape."""
from __future__ import annotations

from starlette.responses import JSONResponse

from gateway.errors import Rejection

PROBLEM_JSON = "application/problem+json"


def problem(rej: Rejection) -> JSONResponse:
    body: dict[str, object] = {
        "type": f"urn:zdravlink:problem:{rej.code}",
        "title": rej.code.replace("_", " ").capitalize(),
        "status": rej.status,
        "code": rej.code,
        "field": rej.field,
        "detail": rej.detail,
    }
    if rej.extra.get("incident"):
        body["incident"] = rej.extra["incident"]  # the id of the failure in the log and the audit table
    if rej.extra.get("errors"):
        body["errors"] = rej.extra["errors"]  # every problem at once, each with its field and rule
    headers = {"Retry-After": str(rej.extra["retry_after"])} if rej.extra.get("retry_after") else None
    return JSONResponse(body, status_code=rej.status, media_type=PROBLEM_JSON, headers=headers)
